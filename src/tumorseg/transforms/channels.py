"""Missing-sequence augmentation: a channel replaced by a copy of another.

In the LGG kaggle_3m data 10 of the 110 patients lack the pre- or post-contrast sequence and
carry FLAIR in its place (6 of them in both). A network trained on the other 100 never sees
that pattern, and on such a development patient it scored 0.31 Dice against 0.77 for the rest.
:class:`RandCopyChanneld` shows it during training: with probability ``prob`` it overwrites
one randomly chosen group of channels with a copy of ``source_channel``.

Put it after the intensity normalisation: a channel-wise z-score of a copy is the copy of the
z-score (same values, same non-zero mask), so copying normalised channels is the same as
copying the raw sequence before normalising it, which is what the real files hold.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform

__all__ = ["RandCopyChanneld", "copy_channel"]

ArrayLike = Any  # np.ndarray | torch.Tensor (MetaTensor included)


def copy_channel(
    image: ArrayLike, source_channel: int, target_channels: Sequence[int]
) -> ArrayLike:
    """Return ``image`` with each of ``target_channels`` replaced by ``source_channel``.

    Args:
        image: channel-first ``(C, *spatial)`` array (numpy or torch); not modified.
        source_channel: the channel copied.
        target_channels: the channels overwritten.

    Returns:
        A new array of the same type and shape.

    Raises:
        ValueError: a channel index is outside ``0..C-1`` (the index and ``C`` are shown).
    """
    n_channels = int(image.shape[0]) if image.ndim >= 2 else 0
    for channel in (source_channel, *target_channels):
        if not 0 <= channel < n_channels:
            raise ValueError(
                f"channel {channel} is outside the image's {n_channels} channels "
                f"(shape {tuple(image.shape)})"
            )
    out = image.clone() if isinstance(image, torch.Tensor) else np.array(image, copy=True)
    for channel in target_channels:
        out[channel] = image[source_channel]
    return out


class RandCopyChanneld(RandomizableTransform, MapTransform):
    """With probability ``prob``, overwrite one group of channels with ``source_channel``.

    Args:
        keys: the image keys (the same group is copied in each, so several modalities stacked
            under different keys stay consistent).
        source_channel: the channel copied (FLAIR, channel 1, in the kaggle_3m TIFs).
        target_groups: the groups to choose from, uniformly; each is a list of channels, e.g.
            ``[[2], [0, 2]]``: post-contrast alone, or pre- and post-contrast together.
        prob: probability of copying at all.
        allow_missing_keys: don't raise if a key is absent.

    Raises:
        ValueError: ``target_groups`` is empty, holds an empty group, or names the source.
    """

    def __init__(
        self,
        keys: KeysCollection,
        source_channel: int,
        target_groups: Sequence[Sequence[int]],
        prob: float = 0.1,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        groups = [tuple(int(c) for c in group) for group in target_groups]
        if not groups or any(not group or source_channel in group for group in groups):
            raise ValueError(
                "target_groups must be non-empty groups of channels other than the source "
                f"channel {source_channel}, got {target_groups!r}"
            )
        self.source_channel = int(source_channel)
        self.target_groups = groups
        self._group = groups[0]

    def randomize(self, data: Any = None) -> None:
        """Decide whether to copy, and which group."""
        super().randomize(None)
        if self._do_transform:
            self._group = self.target_groups[self.R.randint(len(self.target_groups))]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Copy the source channel into the drawn group of every key, or pass ``data`` through."""
        d = dict(data)
        self.randomize()
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            d[key] = copy_channel(d[key], self.source_channel, self._group)
        return d
