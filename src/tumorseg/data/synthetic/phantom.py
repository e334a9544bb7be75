"""One synthetic study in memory: :func:`make_phantom` and its tissue contrasts.

The anatomy comes from :mod:`tumorseg.data.synthetic.anatomy`; this module checks the
arguments, renders intensities (texture, partial volume, bias field, gain, Rician noise) and
maps tissue classes to the label convention's values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np
from scipy import ndimage

from tumorseg.conventions import CHANNEL_ORDER, LabelConvention, conventions_with, get_convention
from tumorseg.data.synthetic.anatomy import (
    _ORIENTATION_AXES,
    _TISSUE_CODE,
    TISSUES,
    _brain_anatomy,
    _place_tumour,
    _reorient_from_ras,
    _resection_cavity,
    _smooth_noise,
)

__all__ = ["DEFAULT_CONTRAST", "make_phantom"]

#: Mean intensity of each tissue per sequence, in thousands (before gain, bias and noise).
#: Chosen from typical clinical appearance: FLAIR suppresses CSF and shows edema brightest;
#: T1ce shows the enhancing rim brightest and the necrotic core dark; T2 shows CSF, necrosis
#: and edema bright; on T1 the tumour is darker than white matter. Read-only; pass
#: ``contrast=`` to :func:`make_phantom` to change it.
DEFAULT_CONTRAST: Mapping[str, Mapping[str, float]] = MappingProxyType(
    {
        m: MappingProxyType(levels)
        for m, levels in {
            "flair": {"CSF": 0.15, "GM": 0.70, "WM": 0.55, "NCR": 0.85, "ED": 1.30, "ET": 1.05},
            "t1": {"CSF": 0.25, "GM": 0.65, "WM": 0.95, "NCR": 0.40, "ED": 0.72, "ET": 0.60},
            "t1ce": {"CSF": 0.25, "GM": 0.68, "WM": 0.95, "NCR": 0.30, "ED": 0.74, "ET": 1.60},
            "t2": {"CSF": 1.45, "GM": 0.65, "WM": 0.45, "NCR": 1.35, "ED": 1.10, "ET": 0.85},
        }.items()
    }
)

# Images are MRI-like integers: white matter ~950 on T1, the brightest tissue ~1600 before the
# bias field and gain; comfortably inside int16.
_INTENSITY_SCALE = 1000.0
# Relative texture amplitude per tissue: tumour is more heterogeneous than normal tissue.
_TEXTURE = {"CSF": 0.03, "GM": 0.05, "WM": 0.04, "NCR": 0.10, "ED": 0.06, "ET": 0.12}
# Share of the underlying tissue contrast that shows through edema (gyral pattern stays faintly
# visible, as on real FLAIR).
_EDEMA_TISSUE_SHARE = 0.2
_NOISE_SIGMA = 0.025  # of _INTENSITY_SCALE: SNR ~ 35 in white matter
_BIAS_AMPLITUDE = 0.10  # log-amplitude (1 sd) of the multiplicative bias field
_PARTIAL_VOLUME_SIGMA = 0.6  # voxels

_MIN_SIZE = 16


# --------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------


def _check_shape(shape: Any) -> tuple[int, int, int]:
    try:
        values = tuple(shape)
    except TypeError:
        values = ()
    ok = len(values) == 3 and all(
        isinstance(v, int | np.integer) and not isinstance(v, bool) and v >= _MIN_SIZE
        for v in values
    )
    if not ok:
        raise ValueError(f"shape must be 3 integers >= {_MIN_SIZE}, got {shape!r}")
    return (int(values[0]), int(values[1]), int(values[2]))


def _check_orientation(orientation: Any) -> str:
    code = orientation.upper() if isinstance(orientation, str) else ""
    if len(code) != 3 or any(c not in _ORIENTATION_AXES for c in code):
        raise ValueError(
            f"orientation must be 3 letters from L/R, A/P, S/I (e.g. 'LPS', 'RAS'), "
            f"got {orientation!r}"
        )
    if sorted(_ORIENTATION_AXES[c] for c in code) != [0, 1, 2]:
        raise ValueError(
            f"orientation must name each axis (L/R, A/P, S/I) exactly once, got {orientation!r}"
        )
    return code


def _check_seed(seed: Any) -> int:
    if not isinstance(seed, int | np.integer) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _check_num_tumours(num_tumours: Any) -> tuple[int, int]:
    def is_count(v: Any) -> bool:
        return isinstance(v, int | np.integer) and not isinstance(v, bool) and bool(v >= 0)

    if is_count(num_tumours):
        return int(num_tumours), int(num_tumours)
    if (
        isinstance(num_tumours, Sequence)
        and len(num_tumours) == 2
        and all(is_count(v) for v in num_tumours)
        and num_tumours[0] <= num_tumours[1]
    ):
        return int(num_tumours[0]), int(num_tumours[1])
    raise ValueError(
        f"num_tumours must be a count >= 0 or an inclusive range (low, high), got {num_tumours!r}"
    )


def _check_tumour_scale(tumour_scale: Any) -> float:
    if not (
        isinstance(tumour_scale, int | float | np.number)
        and not isinstance(tumour_scale, bool)
        and 0 < tumour_scale <= 3
    ):
        raise ValueError(f"tumour_scale must be in (0, 3], got {tumour_scale!r}")
    return float(tumour_scale)


def _check_contrast(contrast: Mapping[str, Mapping[str, float]] | None) -> dict[str, np.ndarray]:
    """Merge overrides into the default table; returns modality -> levels in TISSUES order."""
    table = {m: dict(levels) for m, levels in DEFAULT_CONTRAST.items()}
    if contrast is not None and not isinstance(contrast, Mapping):
        raise ValueError(
            f"contrast must be a mapping modality -> {{tissue: level}}, got {contrast!r}"
        )
    for modality, levels in (contrast or {}).items():
        if modality not in table:
            raise ValueError(
                f"contrast: unknown modality {modality!r}; expected one of {list(CHANNEL_ORDER)}"
            )
        if not isinstance(levels, Mapping):
            raise ValueError(
                f"contrast[{modality!r}] must be a mapping tissue -> level, got {levels!r}"
            )
        for tissue, value in levels.items():
            if tissue not in TISSUES:
                raise ValueError(
                    f"contrast[{modality!r}]: unknown tissue {tissue!r}; expected one of "
                    f"{list(TISSUES)}"
                )
            number = isinstance(value, int | float | np.number) and not isinstance(value, bool)
            if not (number and np.isfinite(value) and value > 0):
                raise ValueError(
                    f"contrast[{modality!r}][{tissue!r}] must be a positive number, got {value!r}"
                )
            table[modality][tissue] = float(value)
    return {m: np.array([table[m][t] for t in TISSUES]) for m in CHANNEL_ORDER}


def _check_resection_cavity(resection_cavity: bool, conv: LabelConvention) -> None:
    if resection_cavity and "RC" not in conv.classes:
        having = sorted(conventions_with(["RC"]))
        raise ValueError(
            f"resection_cavity needs a label convention with a resection cavity (one of "
            f"{having}), got label_convention={conv.name!r}"
        )


def make_phantom(
    shape: tuple[int, int, int] = (64, 64, 64),
    *,
    seed: int = 0,
    num_tumours: int | tuple[int, int] = (1, 2),
    label_convention: str = "brats2021",
    contrast: Mapping[str, Mapping[str, float]] | None = None,
    tumour_scale: float = 1.0,
    orientation: str = "RAS",
    resection_cavity: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic skull-stripped brain with glioma(s), in four MRI contrasts.

    Intensities are float32 on an MRI-like scale (white matter ~950 on T1, edema ~1150 on
    FLAIR, enhancing rim ~1600 on T1ce, times a per-sequence gain of 0.8-1.25 and a +-20 %
    bias field; nothing above ~3000), not normalised: real BraTS files hold raw scanner
    integers, and the pipeline's own normalisation should be what makes them comparable.
    :func:`write_case` stores them as int16, like real BraTS files, which also keeps the files
    small.

    Args:
        shape: voxels per axis of the returned arrays (each >= 16). The brain keeps real
            proportions and fills up to 82 % of the field of view along its tightest axis;
            sizes are in voxels, so pair anisotropic spacing with a matching shape.
        seed: non-negative seed; the same seed gives identical arrays.
        num_tumours: number of tumours, or an inclusive range ``(low, high)`` drawn per case.
            0 gives a healthy brain (empty label map).
        label_convention: convention whose numbers the label map uses (``brats2021``,
            ``brats2023``, ``msd`` or an alias).
        contrast: overrides of :data:`DEFAULT_CONTRAST`, e.g. ``{"t1ce": {"ET": 2.0}}``.
        tumour_scale: multiplies tumour sizes (core radius is 18-28 % of the brain's
            antero-posterior semi-axis, edema 1.5-2.2 times that).
        orientation: voxel order of the returned arrays as 3-letter axis codes (nibabel's
            convention: ``"LPS"`` means the first axis points left). The anatomy is laid out
            so that :func:`orientation_affine` with the same code puts it the right way up.
        resection_cavity: a post-operative study: a fluid-filled cavity (CSF contrast) over
            part of the first tumour, labelled ``RC``; needs a convention with a resection
            cavity (``brats2024``). A case without tumour has no cavity.

    Returns:
        ``(images, label)``: images float32 ``(4, *shape)`` in
        :data:`~tumorseg.conventions.CHANNEL_ORDER` (flair, t1, t1ce, t2), exactly 0 outside
        the brain and >= 1 inside; label uint8 ``shape`` with the convention's values.

    Raises:
        ValueError: for a bad shape, seed, count, convention, contrast or orientation, or a
            resection cavity asked of a convention without the ``RC`` class.
    """
    shape = _check_shape(shape)
    seed = _check_seed(seed)
    low, high = _check_num_tumours(num_tumours)
    conv = get_convention(label_convention)
    _check_resection_cavity(resection_cavity, conv)
    levels = _check_contrast(contrast)
    _check_tumour_scale(tumour_scale)
    orientation = _check_orientation(orientation)

    rng = np.random.default_rng(seed)
    ras_shape = [0, 0, 0]
    for k, c in enumerate(orientation):
        ras_shape[_ORIENTATION_AXES[c]] = shape[k]
    ras = (ras_shape[0], ras_shape[1], ras_shape[2])

    tissue, r_brain, s, centre = _brain_anatomy(rng, ras)
    brain = tissue > 0
    classes = tissue.copy()
    priority = np.zeros(ras, np.uint8)
    taken: list[tuple[np.ndarray, float]] = []
    count = int(rng.integers(low, high + 1))
    for i in range(count):
        # Satellite lesions of multifocal gliomas are smaller than the main one.
        scale = tumour_scale * (1.0 if i == 0 else rng.uniform(0.6, 0.9))
        _place_tumour(rng, tissue, r_brain, s, centre, scale, taken, priority, classes)
    cavity = np.zeros(ras, bool)
    if resection_cavity and taken:
        cavity = _resection_cavity(rng, brain, *taken[0])
        classes[cavity] = _TISSUE_CODE["CSF"]

    images = _render(rng, classes, tissue, brain, levels, s)

    label = np.zeros(ras, np.uint8)
    for name in ("NCR", "ED", "ET"):
        label[classes == _TISSUE_CODE[name]] = conv.classes[name]
    if resection_cavity:
        label[cavity] = conv.classes["RC"]
    return _reorient_from_ras(images, orientation), _reorient_from_ras(label, orientation)


def _render(
    rng: np.random.Generator,
    classes: np.ndarray,
    tissue: np.ndarray,
    brain: np.ndarray,
    levels: dict[str, np.ndarray],
    s: float,
) -> np.ndarray:
    """Intensities from tissue classes: texture, partial volume, bias, gain, Rician noise."""
    shape = classes.shape
    texture = _smooth_noise(rng, shape, max(0.025 * s, 0.8)).astype(np.float32)
    tex_amp = np.array([0.0, *(_TEXTURE[t] for t in TISSUES)], np.float32)[classes]
    edema = classes == _TISSUE_CODE["ED"]
    brain_idx = np.nonzero(brain)
    images = np.zeros((len(CHANNEL_ORDER), *shape), np.float32)
    for ch, modality in enumerate(CHANNEL_ORDER):
        lut = np.array([0.0, *levels[modality]], np.float32) * np.float32(_INTENSITY_SCALE)
        img = lut[classes]
        # Edema keeps a trace of the tissue it infiltrates.
        img[edema] = (1 - _EDEMA_TISSUE_SHARE) * img[edema] + _EDEMA_TISSUE_SHARE * lut[
            tissue[edema]
        ]
        img *= 1.0 + tex_amp * texture
        img = ndimage.gaussian_filter(img, _PARTIAL_VOLUME_SIGMA, truncate=3.0)
        gain = rng.uniform(0.8, 1.25)
        bias = np.exp(_BIAS_AMPLITUDE * _smooth_noise(rng, shape, 0.8 * s).astype(np.float32))
        signal = (img * bias * np.float32(gain))[brain_idx]
        sigma = np.float32(_NOISE_SIGMA * _INTENSITY_SCALE * gain)
        noise = rng.standard_normal((2, signal.size), dtype=np.float32) * sigma
        # Rician magnitude: positive, slightly biased upwards in dark tissue, like real MRI.
        magnitude = np.sqrt((signal + noise[0]) ** 2 + noise[1] ** 2)
        images[ch][brain_idx] = np.maximum(magnitude, 1.0)
    return images
