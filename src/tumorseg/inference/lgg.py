"""Segment a kaggle_3m folder with an LGG network: 2D slices in, 0/255 mask TIFs out.

:class:`tumorseg.inference.Predictor` calls this for a bundle whose ``data_format`` is
``kaggle_3m`` (``bundles/lgg_flair_segmentation_2d``).

Each patient's predicted slices are stacked into a volume before the optional 3D clean-up
(:func:`tumorseg.transforms.post.remove_isolated_false_positives`), and written in the input's
layout (:mod:`tumorseg.data.lgg`). Bad files and failed patients are reported, never fatal.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tumorseg.data.lgg import LGGDatasetError, discover_kaggle_3m, stack_patient, write_tif
from tumorseg.transforms.post import remove_isolated_false_positives

__all__ = [
    "LGGInferenceReport",
    "segment_kaggle_3m_folder",
]

logger = logging.getLogger(__name__)


@dataclass
class LGGInferenceReport:
    """What :func:`segment_kaggle_3m_folder` wrote and what went wrong."""

    written: list[Path] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def raise_for_failures(self) -> LGGInferenceReport:
        """Raise :class:`LGGDatasetError` listing every failure; else return ``self``."""
        if self.failures:
            raise LGGDatasetError(
                f"{len(self.failures)} problem(s) while segmenting (the other slices were "
                "written):\n" + "\n".join(self.failures)
            )
        return self


def _call(inputs: torch.Tensor, network: Callable[..., Any]) -> Any:
    return network(inputs)


def segment_kaggle_3m_folder(
    input_dir: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    network: Any,
    preprocessing: Callable[[dict[str, Any]], dict[str, Any]],
    inferer: Callable[..., Any] | None = None,
    postprocessing: Callable[[np.ndarray], np.ndarray] | None = None,
    device: Any = "cpu",
    threshold: float = 0.5,
    min_slices: int = 0,
    max_components: int = 0,
    flip_tta: bool = False,
    batch_size: int = 16,
    overwrite: bool = False,
) -> LGGInferenceReport:
    """Segment every slice of a kaggle_3m folder; write ``<patient>/<patient>_<n>_mask.tif``.

    Masks are 0/255 uint8 TIFs of the image's size, in the input's layout. Each patient's
    predictions are stacked by slice index before the optional 3D clean-up. Bad files are
    reported (never fatal); a patient whose slices fail is reported and the others go on.

    Args:
        input_dir: kaggle_3m folder (masks there are ignored).
        output_dir: where the mask TIFs go.
        network: the 2D network (sigmoid logits, channel 0 is the abnormality).
        preprocessing: the bundle's validation preprocessing, applied to ``{"image": path}``.
        inferer: ``inferer(batch, network)`` gives the logits; None calls the network.
        postprocessing: a clean-up of each patient's stacked ``(slices, H, W)`` binary masks
            (the bundle's ``postprocessing``), applied before ``min_slices`` /
            ``max_components``; None for none.
        device: torch device to run on.
        threshold: probability threshold.
        min_slices: > 0 drops 3D components spanning fewer slices
            (:func:`remove_isolated_false_positives`, per patient).
        max_components: > 0 keeps only that many of each patient's 3D components, largest
            first.
        flip_tta: average the probabilities of each slice and of its left-right mirror image
            (twice the network time).
        batch_size: slices per forward pass.
        overwrite: replace existing masks (otherwise a patient already done is skipped).

    Returns:
        The report; call ``raise_for_failures()`` to turn problems into an error.
    """
    found = discover_kaggle_3m(input_dir)
    report = LGGInferenceReport(failures=list(found.problems))
    infer = inferer if inferer is not None else _call
    out_root = Path(output_dir).expanduser()
    network.eval()
    for patient in found.patients:
        targets = {
            s.index: out_root / patient.patient_id / f"{s.case_id}_mask.tif" for s in patient.slices
        }
        if not overwrite and all(t.exists() for t in targets.values()):
            logger.info("%s: masks exist, skipped (overwrite=False)", patient.patient_id)
            continue
        try:
            masks: dict[int, np.ndarray] = {}
            height, width = patient.size
            for start in range(0, len(patient.slices), batch_size):
                chunk = patient.slices[start : start + batch_size]
                batch = torch.stack(
                    [
                        torch.as_tensor(preprocessing({"image": str(s.image)})["image"])
                        for s in chunk
                    ]
                )
                batch = batch.to(device)
                with torch.no_grad():
                    probs = torch.sigmoid(infer(batch, network))
                    if flip_tta:
                        mirrored = torch.sigmoid(infer(batch.flip(-1), network)).flip(-1)
                        probs = (probs + mirrored) / 2
                # Padding added by the preprocessing (DivisiblePad) is at the end: crop it away.
                binary = (probs[:, 0, :height, :width] > threshold).cpu().numpy()
                for s, mask in zip(chunk, binary, strict=True):
                    masks[s.index] = mask
            volume = stack_patient(masks)
            if postprocessing is not None:
                volume = np.asarray(postprocessing(volume), dtype=bool)
            if min_slices > 0 or max_components > 0:
                volume = remove_isolated_false_positives(
                    volume, min_slices=min_slices, max_components=max_components
                )
            for k, index in enumerate(sorted(masks)):
                write_tif(np.where(volume[k], 255, 0).astype(np.uint8), targets[index])
                report.written.append(targets[index])
        except Exception as err:  # noqa: BLE001 - one bad patient must not stop the others
            report.failures.append(f"{patient.folder}: segmentation failed: {err}")
            logger.error("%s: segmentation failed: %s", patient.patient_id, err)
    return report
