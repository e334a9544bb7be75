"""Overlay PNGs of validation slices: FLAIR with the reference and predicted regions.

A training run logs a few of these for its best epoch, so a reviewer browsing MLflow sees what
a Dice of 0.7 on ET looks like without opening a viewer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CaseSlice", "REGION_COLOURS", "pick_slice", "render_overlay"]

#: RGB of each region channel, drawn outermost first so inner regions stay visible.
REGION_COLOURS = ((0.1, 0.8, 0.2), (0.95, 0.85, 0.1), (0.9, 0.1, 0.1))


@dataclass(frozen=True)
class CaseSlice:
    """One axial slice of one case: what an overlay PNG shows.

    Args:
        case_id: the case, used in the file name and title.
        index: slice index along the last (superior-inferior after RAS) axis.
        image: ``(H, W)`` intensities of the first image channel (FLAIR).
        pred: ``(C, H, W)`` binary predicted region channels.
        ref: ``(C, H, W)`` binary reference region channels, or None when unlabelled.
    """

    case_id: str
    index: int
    image: np.ndarray
    pred: np.ndarray
    ref: np.ndarray | None


def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def pick_slice(case_id: str, image: Any, pred: Any, ref: Any | None = None) -> CaseSlice:
    """The axial slice with the most reference whole tumour (else predicted), as a CaseSlice.

    Args:
        case_id: name of the case.
        image: ``(M, H, W, D)`` image channels.
        pred: ``(C, H, W, D)`` predicted region channels.
        ref: ``(C, H, W, D)`` reference region channels, or None.

    Raises:
        ValueError: when the arrays are not channel-first 3D volumes of one spatial shape.
    """
    img, prd = _numpy(image), _numpy(pred) > 0.5
    lab = None if ref is None else _numpy(ref) > 0.5
    if img.ndim != 4 or prd.ndim != 4 or img.shape[1:] != prd.shape[1:]:
        raise ValueError(
            f"expected channel-first 3D image and prediction of one shape, got {img.shape} "
            f"and {prd.shape}"
        )
    outer = lab[0] if lab is not None and lab[0].any() else prd[0]
    area = outer.reshape(-1, outer.shape[-1]).sum(axis=0)
    index = int(np.argmax(area)) if area.any() else outer.shape[-1] // 2
    return CaseSlice(
        case_id=str(case_id),
        index=index,
        image=img[0, ..., index].astype(np.float32),
        pred=prd[..., index].astype(np.uint8),
        ref=None if lab is None else lab[..., index].astype(np.uint8),
    )


def _blend(ax: Any, image: np.ndarray, masks: np.ndarray | None, title: str) -> None:
    ax.imshow(np.rot90(image), cmap="gray")
    if masks is not None:
        for channel, colour in zip(masks, REGION_COLOURS, strict=False):
            rgba = np.zeros((*channel.shape, 4), dtype=np.float32)
            rgba[channel > 0] = (*colour, 0.45)
            ax.imshow(np.rot90(rgba))
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def render_overlay(case: CaseSlice, path: str | os.PathLike, *, title: str = "") -> Path:
    """Write a PNG: the image with reference regions (if any) beside the predicted ones.

    Colours: whole tumour green, tumour core yellow, enhancing tumour red.

    Returns:
        The written path.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    panels = [("reference", case.ref)] if case.ref is not None else []
    panels.append(("prediction", case.pred))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), squeeze=False)
    for ax, (name, masks) in zip(axes[0], panels, strict=True):
        _blend(ax, case.image, masks, name)
    fig.suptitle(title or f"{case.case_id}  slice {case.index}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
