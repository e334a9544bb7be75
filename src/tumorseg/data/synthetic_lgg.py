"""Synthetic LGG slices: the 3D phantoms of :mod:`tumorseg.data.synthetic` cut into
kaggle_3m TIFs (:mod:`tumorseg.data.lgg` describes the layout)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from tumorseg.data.lgg import write_tif
from tumorseg.data.synthetic import make_phantom
from tumorseg.data.synthetic.phantom import _check_shape

__all__ = ["generate_kaggle_3m", "kaggle_3m_patient_id"]

# Phantom channels (flair, t1, t1ce, t2) -> kaggle_3m RGB (pre-contrast, FLAIR, post-contrast).
_PHANTOM_TO_RGB = (1, 0, 2)

# Like the real slices: rows run anterior -> posterior, columns right -> left (radiological
# view), slices from the skull base up.
_ORIENTATION = "PLS"
# The phantom fills up to 82 % of its tightest axis; drawn on this share of the slice and
# zero-padded, and deep enough that the in-plane field of view, not the slice count, sets
# its size (the brain's infero-superior axis is 0.76 of its antero-posterior one), the brain
# spans about 78 % of the slice antero-posteriorly and 62 % left-right at any size, as on the
# real kaggle_3m slices (head about 0.7-0.95 of the 256-pixel field antero-posteriorly and
# 0.55-0.8 left-right on their middle slices).
_FIELD_SHARE = 0.93
_DEPTH_PER_SIZE = 0.8


def _phantom_slices(shape: tuple[int, int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(4, h, w, n)`` and label ``(h, w, n)``: ``n`` evenly spaced axial slices of a
    brain that fills the ``h x w`` field of view, from below the brain to above it."""
    height, width, count = _check_shape(shape)  # each >= 16, as for the 3D phantoms
    inner = (max(16, round(_FIELD_SHARE * height)), max(16, round(_FIELD_SHARE * width)))
    depth = max(count, math.ceil(_DEPTH_PER_SIZE * max(inner)))
    images, label = make_phantom(
        (*inner, depth), seed=seed, num_tumours=1, orientation=_ORIENTATION
    )
    picked = np.rint(np.linspace(0, depth - 1, count)).astype(int)
    pad = [
        ((n - k) // 2, n - k - (n - k) // 2) for n, k in zip((height, width), inner, strict=True)
    ]
    return (
        np.pad(images[..., picked], [(0, 0), *pad, (0, 0)]),
        np.pad(label[..., picked], [*pad, (0, 0)]),
    )


def kaggle_3m_patient_id(prefix: str, index: int) -> str:
    """The id :func:`generate_kaggle_3m` gives its ``index``-th patient (TCGA-like, with a date)."""
    return f"{prefix}_{index:04d}_20000101"


def generate_kaggle_3m(
    out_dir: str | os.PathLike[str],
    *,
    num_patients: int = 4,
    shape: tuple[int, int, int] = (64, 64, 24),
    seed: int = 0,
    with_masks: bool = True,
    prefix: str = "TCGA_SY",
) -> list[str]:
    """Write a synthetic dataset in the kaggle_3m layout, from the 3D phantoms.

    Each patient is one :func:`tumorseg.data.synthetic.make_phantom` volume cut into axial
    slices: RGB uint8 TIFs of T1 (pre-contrast), FLAIR and T1ce (post-contrast), and masks of
    the whole tumour (the FLAIR abnormality) as 0/255. Intensities are scaled per patient and
    channel so that the 99.9th percentile of the brain is 255, like the Kaggle files. Slices
    above and below the tumour are tumour-free, as in the real data.

    The brain fills the field of view like a real one (about 78 % of the slice height
    antero-posteriorly, 62 % of its width left-right, at any size): the slices are evenly
    spaced axial cuts of a deeper phantom, from below the brain to above it.

    Args:
        out_dir: the kaggle_3m folder to write (created; existing files are replaced).
        num_patients: patients to write.
        shape: (height, width, slices) of each patient, each >= 16.
        seed: the same seed writes identical files.
        with_masks: write the ``_mask.tif`` files (``False``: an inference input folder).
        prefix: patient ids are :func:`kaggle_3m_patient_id` of it.

    Returns:
        The patient ids written.

    Raises:
        ValueError: ``num_patients`` < 1 or a bad shape.
    """
    if isinstance(num_patients, bool) or not isinstance(num_patients, int) or num_patients < 1:
        raise ValueError(f"num_patients must be an integer >= 1, got {num_patients!r}")
    root = Path(out_dir).expanduser()
    patients = []
    for i in range(num_patients):
        patient = kaggle_3m_patient_id(prefix, i)
        images, label = _phantom_slices(shape, seed * 10_007 + i)
        rgb = images[list(_PHANTOM_TO_RGB)]
        brain = rgb[1] > 0
        top = np.array([np.percentile(c[brain], 99.9) if brain.any() else 1.0 for c in rgb])
        scaled = np.clip(rgb / np.maximum(top, 1e-6)[:, None, None, None] * 255.0, 0, 255)
        volume = np.rint(scaled).astype(np.uint8)
        for k in range(shape[2]):
            stem = root / patient / f"{patient}_{k + 1}"
            write_tif(
                np.ascontiguousarray(np.moveaxis(volume[:, :, :, k], 0, -1)), Path(f"{stem}.tif")
            )
            if with_masks:
                mask = np.where(label[:, :, k] > 0, 255, 0).astype(np.uint8)
                write_tif(mask, Path(f"{stem}_mask.tif"))
        patients.append(patient)
    return patients
