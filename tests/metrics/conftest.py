"""Fixtures of the metric tests: the independent reference packages and the real study."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from _real_case import ALGORITHMS, REAL_CASE
from scipy import ndimage


@pytest.fixture
def surface_distance() -> Iterator[ModuleType]:
    """DeepMind's ``surface-distance`` 0.1, the package BraTS 2023's official code calls.

    Its 0.1 release uses ``np.Inf``, removed in NumPy 2, on empty surfaces; the alias is put
    back for the duration of a test only (the package itself is left untouched).
    """
    sd = pytest.importorskip("surface_distance")
    had_inf = hasattr(np, "Inf")
    if not had_inf:
        np.Inf = np.inf  # type: ignore[attr-defined]
    try:
        yield sd
    finally:
        if not had_inf:
            del np.Inf  # type: ignore[attr-defined]


@pytest.fixture
def sd_hd95(surface_distance: ModuleType) -> Callable[..., float]:
    """HD95 exactly as the BraTS 2023 code computes it (``inf`` when one mask is empty)."""

    def compute(pred: np.ndarray, ref: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> float:
        dist = surface_distance.compute_surface_distances(
            ref.astype(bool), pred.astype(bool), tuple(float(s) for s in spacing)
        )
        return float(surface_distance.compute_robust_hausdorff(dist, 95))

    return compute


@pytest.fixture(scope="session")
def real_study(shared_data: Path) -> dict[str, np.ndarray]:
    """The reference ``_seg`` and the five BraTS 2020 algorithm segmentations (1 mm)."""
    nib = pytest.importorskip("nibabel")
    ref_path = shared_data / "brats2020_layout" / REAL_CASE / f"{REAL_CASE}_seg.nii.gz"
    seg_dir = shared_data / "reference_segmentations" / REAL_CASE
    if not ref_path.is_file() or not seg_dir.is_dir():
        pytest.skip(f"{REAL_CASE} reference or algorithm segmentations not in {shared_data}")
    out = {"ref": np.asanyarray(nib.load(str(ref_path)).dataobj).astype(np.uint8)}
    for algo in ALGORITHMS:
        out[algo] = np.asanyarray(nib.load(str(seg_dir / f"{algo}.nii.gz")).dataobj).astype(
            np.uint8
        )
    return out


@pytest.fixture
def lesionwise_oracle(sd_hd95: Callable[..., float]) -> Callable[..., tuple[float, float]]:
    """The BraTS 2023 lesion-wise procedure written out plainly on the whole array.

    Returns ``(lesion-wise Dice, lesion-wise HD95)`` for ``(pred, ref, spacing, params)``,
    with HD95 from DeepMind's package.
    """

    def compute(pred, ref, spacing, params) -> tuple[float, float]:
        cc26 = np.ones((3, 3, 3), dtype=bool)
        struct = ndimage.generate_binary_structure(3, 2)
        k = params.dilation_factor
        voxel = float(np.prod(spacing))
        pred_cc, n_pred = ndimage.label(pred, structure=cc26)
        dil_cc, n_dil = ndimage.label(
            ndimage.binary_dilation(ref, structure=struct, iterations=k), structure=cc26
        )
        merged = np.where(ref, dil_cc, 0)
        tp_ids: list[int] = []
        scores = []
        for lesion in range(1, n_dil + 1):
            gt = merged == lesion
            reach = ndimage.binary_dilation(gt, structure=struct, iterations=k)
            ids = [i for i in np.unique(pred_cc * reach) if i != 0]
            tp_ids += ids
            sel = np.isin(pred_cc, ids)
            dice = 2 * np.sum(sel & gt) / (sel.sum() + gt.sum())
            hd = sd_hd95(sel, gt, spacing) if ids else math.inf
            scores.append((gt.sum() * voxel, dice, 374.0 if math.isinf(hd) else hd))
        n_fp = len(set(range(1, n_pred + 1)) - set(tp_ids))
        kept = [s for s in scores if s[0] > params.volume_threshold_mm3]
        den = len(kept) + n_fp
        if den == 0:
            return 1.0, 0.0
        return (
            sum(s[1] for s in kept) / den,
            (sum(s[2] for s in kept) + 374.0 * n_fp) / den,
        )

    return compute
