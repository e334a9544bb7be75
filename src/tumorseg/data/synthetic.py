"""Deterministic synthetic BraTS-like studies: four MRI contrasts and a tumour label map.

The phantoms stand in for real studies wherever those are unavailable (tests, the demo, CI,
benchmarks at the real 240x240x155 size). Each one is a skull-stripped brain:

* a deformed ellipsoid with real-brain proportions (left-right : antero-posterior :
  infero-superior = 0.82 : 1 : 0.76), a convoluted grey/white-matter boundary, sulcal CSF,
  an interhemispheric fissure, deep grey nuclei and two lateral ventricles;
* one or more gliomas, each a blobby necrotic core (``NCR``) inside an enhancing rim (``ET``,
  at least two voxels thick) inside a shell of edema (``ED``) that spreads further along the
  white matter;
* tissue contrasts per sequence (:data:`DEFAULT_CONTRAST`): edema bright on FLAIR and T2,
  the rim bright on T1ce, necrosis dark on T1ce and bright on T2, tumour darker than white
  matter on T1, CSF dark on FLAIR and bright on T2;
* a fine tissue texture, a partial-volume blur, a smooth multiplicative bias field per
  sequence, a per-case scanner gain and Rician noise; background is exactly 0 and every brain
  voxel is at least 1, so MONAI's ``CropForeground`` and non-zero normalisation see exactly
  the brain.

All random structure comes from smooth noise defined on a lattice whose spacing is a fixed
fraction of the brain size, evaluated with separable Gaussian weights (three small matrix
products, no per-voxel Python loops), so a 64^3 case takes under 0.1 s of CPU and a
240x240x155 case about two seconds. Everything is drawn from one
:class:`numpy.random.Generator`, so a seed fixes a case bit for bit on a given platform (the
geometry is computed in float64, so last-bit differences between CPUs' vectorised maths are
very unlikely to move a label boundary elsewhere); case ``i`` of a dataset uses a seed derived
from ``(seed, i)``, so it does not depend on how many cases are generated.

Label values come from :func:`tumorseg.conventions.get_convention`; the file names from
:data:`tumorseg.conventions.LAYOUTS`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
from scipy import ndimage

from tumorseg.conventions import CHANNEL_ORDER, FileLayout, get_convention, get_layout
from tumorseg.io import atomic_path, atomic_write_text

__all__ = [
    "DEFAULT_CONTRAST",
    "TISSUES",
    "generate_dataset",
    "make_phantom",
    "orientation_affine",
    "write_case",
]

#: Tissue classes of the phantom, in the order :data:`DEFAULT_CONTRAST` lists them.
TISSUES: tuple[str, ...] = ("CSF", "GM", "WM", "NCR", "ED", "ET")

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

# Brain semi-axes proportions (RAS order) and the fraction of the field of view it may fill.
_BRAIN_PROPORTIONS = np.array([0.82, 1.0, 0.76])
_BRAIN_FILL = 0.82

_ORIENTATION_AXES = {"L": 0, "R": 0, "P": 1, "A": 1, "I": 2, "S": 2}
_CASE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")
_DEFAULT_PREFIX = {"brats2021": "SYN2021", "brats2023": "BraTS-SYN", "msd": "BRATS"}
_MIN_SIZE = 16
_TISSUE_CODE = {name: i + 1 for i, name in enumerate(TISSUES)}  # 0 is background

_Vector = Sequence[float] | np.ndarray


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


def _check_spacing(spacing: Any) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in spacing)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or not all(np.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"spacing must be 3 positive numbers (mm), got {spacing!r}")
    return (values[0], values[1], values[2])


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


# --------------------------------------------------------------------------------------------
# smooth noise
# --------------------------------------------------------------------------------------------


def _axis_weights(n: int, cell: float, start: float = 0.0) -> np.ndarray:
    """Gaussian weights from ``n`` voxel centres to lattice points ``cell`` apart.

    Rows are normalised to unit L2 norm so that, with i.i.d. unit lattice coefficients, every
    voxel of the field has unit variance (no brighter spots between lattice points).
    """
    x = np.arange(n, dtype=np.float64) + start
    points = np.arange(np.floor(x[0] / cell) - 2, np.ceil(x[-1] / cell) + 3) * cell
    w = np.exp(-0.5 * ((x[:, None] - points[None, :]) / (0.75 * cell)) ** 2)
    w /= np.sqrt((w**2).sum(axis=1, keepdims=True))
    return w


def _smooth_noise(
    rng: np.random.Generator,
    shape: Sequence[int],
    cell: float,
    start: Sequence[float] = (0.0, 0.0, 0.0),
) -> np.ndarray:
    """Unit-variance smooth Gaussian noise with a correlation length of about ``cell`` voxels.

    ``start`` is the voxel position of the first element, so a field evaluated on a sub-box
    lines up with the voxel grid of the volume it belongs to.
    """
    cell = max(float(cell), 0.75)
    wx, wy, wz = (_axis_weights(int(n), cell, float(s)) for n, s in zip(shape, start, strict=True))
    coef = rng.standard_normal((wx.shape[1], wy.shape[1], wz.shape[1]))
    # Contract one axis at a time, largest output last, so every step is a plain matmul.
    field = (wx @ coef.reshape(wx.shape[1], -1)).reshape(wx.shape[0], wy.shape[1], wz.shape[1])
    field = np.matmul(wy[None], field)
    return np.matmul(field, wz.T)


# --------------------------------------------------------------------------------------------
# anatomy
# --------------------------------------------------------------------------------------------


def _grid(shape: Sequence[int], centre: _Vector) -> list[np.ndarray]:
    """Broadcastable voxel offsets from ``centre`` along each axis (cheap: no full-size grid)."""
    return [
        (np.arange(n, dtype=np.float64) - c).reshape([-1 if a == i else 1 for a in range(3)])
        for i, (n, c) in enumerate(zip(shape, centre, strict=True))
    ]


def _ellipsoid(offsets: Sequence[np.ndarray], centre: _Vector, semi: _Vector) -> np.ndarray:
    """Normalised ellipsoid radius (1 on the surface) around ``centre`` in voxel offsets."""
    total: np.ndarray = np.zeros(())
    for off, c, s in zip(offsets, centre, semi, strict=True):
        total = total + ((off - c) / max(s, 0.5)) ** 2
    return np.sqrt(total)


def _window(
    offsets: Sequence[np.ndarray], low: _Vector, high: _Vector
) -> tuple[tuple[slice, ...], list[np.ndarray]]:
    """The box of voxels whose offsets lie in ``[low, high]``, and the offsets inside it.

    Small structures are evaluated on their box only, which is most of the speed at 240^3.
    """
    box = []
    for off, a, b in zip(offsets, low, high, strict=True):
        flat = off.ravel()
        box.append(slice(int(np.searchsorted(flat, a)), int(np.searchsorted(flat, b, "right"))))
    local = [
        off[tuple(box[i] if k == i else slice(None) for k in range(3))]
        for i, off in enumerate(offsets)
    ]
    return tuple(box), local


def _brain_anatomy(
    rng: np.random.Generator, shape: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
    """Tissue codes (0 background, CSF/GM/WM codes) of a brain in RAS voxel order.

    Geometry is float64 throughout: thresholds on float32 fields could flip boundary voxels
    between CPUs whose vectorised ``exp`` differ in the last bit.

    Returns:
        tissue (uint8), brain-normalised radius ``r`` (< 1 inside the brain), the brain scale
        ``s`` (antero-posterior semi-axis in voxels) and the brain centre (voxels).
    """
    half = np.array(shape, np.float64) / 2.0
    s = float(np.min(_BRAIN_FILL * half / _BRAIN_PROPORTIONS))
    semi = _BRAIN_PROPORTIONS * s * rng.uniform(0.95, 1.03, 3)
    centre = (np.array(shape) - 1) / 2.0 + rng.normal(0.0, 0.01 * s, 3)
    ox, oy, oz = _grid(shape, centre)

    # Narrower frontal pole, flatter base than vertex: reads as a brain, not an egg.
    yn = oy / semi[1]
    sx = semi[0] * (1.0 - 0.10 * yn)
    sz = np.where(oz < 0, semi[2] * 0.85, semi[2])
    r = np.sqrt((ox / sx) ** 2 + (yn) ** 2 + (oz / sz) ** 2)
    r = r * np.exp(0.05 * _smooth_noise(rng, shape, 0.35 * s))
    brain = r < 1.0

    # White matter reaches into the gyri: its boundary undulates at gyral scale.
    gyri = _smooth_noise(rng, shape, 0.08 * s)
    wm = (r + 0.07 * gyri) < 0.84
    tissue = np.where(brain, _TISSUE_CODE["GM"], 0).astype(np.uint8)
    tissue[wm & brain] = _TISSUE_CODE["WM"]

    # Deep grey nuclei (thalamus / basal ganglia) either side of the ventricles.
    for side in (-1.0, 1.0):
        at, semi_n = np.array([side * 0.20, -0.02, -0.02]) * s, np.full(3, 0.10 * s)
        box, local = _window((ox, oy, oz), at - semi_n - 1, at + semi_n + 1)
        nuclei = (_ellipsoid(local, at, semi_n) < 1.0) & brain[box]
        tissue[box][nuclei] = _TISSUE_CODE["GM"]

    csf = np.zeros(shape, bool)
    # Sulci: thin CSF sheets (a zero-level set of smooth noise) cutting in from the surface,
    # widest at the surface, between the gyri.
    sulci = _smooth_noise(rng, shape, 0.14 * s)
    depth = np.clip((r - 0.82) / 0.18, 0.0, 1.0)
    csf |= (np.abs(sulci) < 0.18 * depth) & (gyri > -0.3) & brain
    # Interhemispheric fissure above the corpus callosum.
    fissure_half_width = max(0.6, 0.012 * s)
    csf |= (np.abs(ox) < fissure_half_width) & (oz > 0.25 * s) & brain
    # Lateral ventricles: two bent ellipsoids, posterior horns curving down.
    vscale = rng.uniform(0.8, 1.3)
    vsemi = np.array([max(0.07 * s * vscale, 1.0), 0.30 * s, max(0.10 * s * vscale, 1.0)])
    for side in (-1.0, 1.0):
        at = np.array([side * 0.09, 0.03, 0.12]) * s
        low = at - vsemi - np.array([1.0, 1.0, 0.2 * s + 1.0])
        box, (lx, ly, lz) = _window((ox, oy, oz), low, at + vsemi + 1.0)
        bend = 0.12 * s * (ly / (0.30 * s)) ** 2
        ventricle = (_ellipsoid((lx, ly, lz + bend), at, vsemi) < 1.0) & brain[box]
        csf[box] |= ventricle
    tissue[csf] = _TISSUE_CODE["CSF"]
    return tissue, r, s, centre


def _place_tumour(
    rng: np.random.Generator,
    tissue: np.ndarray,
    r_brain: np.ndarray,
    s: float,
    brain_centre: np.ndarray,
    scale: float,
    taken: list[tuple[np.ndarray, float]],
    priority: np.ndarray,
    classes: np.ndarray,
) -> None:
    """Draw one tumour and paint its classes into ``classes`` (tissue codes), in place.

    The enhancing rim is an erosion of the core by a distance transform, so it is never thinner
    than ``rim`` voxels; the edema is the union of a wide blob (following white matter) and a
    guaranteed shell of ``ed_min`` voxels around the core, so ET and NCR are always enclosed by
    tumour. Candidate centres are rejected until that shell fits inside the brain.
    """
    shape = tissue.shape
    brain = tissue > 0
    # Two voxels from 32^3 up (the smallest size a rim is learnable at), thicker at real size.
    rim = max(2.0 if s >= 10 else 1.0, 0.045 * s)
    ed_min = max(rim, 0.04 * s)
    core_radius = max(rng.uniform(0.18, 0.28) * s * scale, rim + 2.0)
    ed_ratio = rng.uniform(1.5, 2.2)
    aspect = rng.uniform(0.8, 1.2, 3)
    rotation = _random_rotation(rng)
    ed_aspect = rng.uniform(0.8, 1.25, 3)
    ed_rotation = _random_rotation(rng)

    best: tuple[int, Any, np.ndarray, float] | None = None
    for attempt in range(40):
        if attempt < 30:
            # Uniform in a shrunken ellipsoid, off the midline (gliomas are hemispheric).
            direction = rng.normal(size=3)
            direction /= np.linalg.norm(direction) + 1e-9
            u = direction * rng.uniform(0.0, 1.0) ** (1 / 3) * 0.6
            u[0] = np.sign(u[0] or 1.0) * max(abs(u[0]), 0.2)
            centre = brain_centre + u * _BRAIN_PROPORTIONS * s
        else:
            # Small volumes: fall back to the deepest spots, shrinking the tumour.
            centre = brain_centre + rng.normal(0.0, 0.05 * s, 3)
            core_radius = max(core_radius * 0.9, rim + 1.5)
        # Keep multifocal lesions apart enough to read as separate cores.
        if any(np.linalg.norm(centre - c) < 1.2 * (core_radius + rc) + ed_min for c, rc in taken):
            continue
        drawn = _tumour_shape(rng, shape, centre, core_radius, aspect, rotation, rim, s)
        layers = _tumour_layers(drawn[1], drawn[2], rim, ed_min) if drawn else None
        if drawn is None or layers is None:
            continue
        missing = int(np.count_nonzero(layers[2] & ~brain[drawn[0]]))
        if best is None or missing < best[0]:
            best = (missing, drawn, centre, core_radius)
        if missing == 0:
            break
    if best is None:
        return
    missing, (box, core, thickness), centre, core_radius = best
    if missing:
        # No placement fitted (small volumes): cut the core back to where the edema shell fits
        # inside the brain, so the nesting guarantees still hold.
        core = core & _brain_interior(brain, box, ed_min + 1.0)
    layers = _tumour_layers(core, thickness, rim, ed_min)
    if layers is None:
        return
    ncr, shell, _ = layers
    inside = brain[box]
    core, ncr, shell = core & inside, ncr & inside, shell & inside
    taken.append((centre, core_radius))

    # Wide edema blob, offset from the core and more irregular, spreading along white matter.
    ed_centre = centre + rng.normal(0.0, 0.15 * core_radius, 3)
    ed_radius = core_radius * ed_ratio
    half = int(np.ceil(ed_radius * 1.6)) + 2
    lo = np.maximum(np.floor(ed_centre).astype(int) - half, 0)
    hi = np.minimum(np.floor(ed_centre).astype(int) + half + 1, shape)
    box_lo = np.array([sl.start for sl in box])
    box_hi = np.array([sl.stop for sl in box])
    lo, hi = np.minimum(lo, box_lo), np.maximum(hi, box_hi)
    ebox = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    eshape = tuple(int(b - a) for a, b in zip(lo, hi, strict=True))
    d = _rotated_radius(eshape, ed_centre - lo, ed_radius * ed_aspect, ed_rotation)
    d = d * np.exp(0.25 * np.clip(_smooth_noise(rng, eshape, 0.5 * core_radius, lo), -2.5, 2.5))
    white = tissue[ebox] == _TISSUE_CODE["WM"]
    edema = (d < 1.0) & (white | (d < 0.7)) & brain[ebox] & (r_brain[ebox] < 0.97)
    # Only edema connected to this core: detached specks would be label noise.
    inner = tuple(slice(int(a - b), int(c - b)) for a, b, c in zip(box_lo, lo, box_hi, strict=True))
    seed_mask = np.zeros(eshape, bool)
    seed_mask[inner] = core | shell
    components, _ = ndimage.label(edema | seed_mask)
    keep = np.unique(components[seed_mask])
    edema = np.isin(components, keep[keep > 0])

    _paint(priority, classes, ebox, edema, "ED")
    _paint(priority, classes, box, core & ~ncr, "ET")
    _paint(priority, classes, box, ncr, "NCR")


def _paint(
    priority: np.ndarray, classes: np.ndarray, box: tuple[slice, ...], mask: np.ndarray, name: str
) -> None:
    """Overlapping tumours: the inner class wins (ET > NCR > ED), so nesting survives overlap."""
    rank = {"ED": 1, "NCR": 2, "ET": 3}[name]
    sub_p, sub_c = priority[box], classes[box]
    where = mask & (sub_p < rank)
    sub_p[where] = rank
    sub_c[where] = _TISSUE_CODE[name]


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def _rotated_radius(
    shape: Sequence[int], centre: np.ndarray, semi: np.ndarray, rotation: np.ndarray
) -> np.ndarray:
    """Normalised radius of a rotated ellipsoid on a box of ``shape``."""
    offsets = _grid(shape, centre)
    total: np.ndarray = np.zeros(())
    for row, sa in zip(rotation, semi, strict=True):
        proj = offsets[0] * row[0] + offsets[1] * row[1] + offsets[2] * row[2]
        total = total + (proj / sa) ** 2
    return np.sqrt(total)


def _tumour_shape(
    rng: np.random.Generator,
    shape: Sequence[int],
    centre: np.ndarray,
    radius: float,
    aspect: np.ndarray,
    rotation: np.ndarray,
    rim: float,
    s: float,
) -> tuple[tuple[slice, ...], np.ndarray, np.ndarray] | None:
    """A lobulated core (ET+NCR) and its local rim thickness, on a box around ``centre``.

    The box leaves room for the edema shell around the core. Returns None when the core is
    empty.
    """
    half = int(np.ceil(radius * 1.2 * 1.46 + 0.04 * s + rim)) + 3
    c = np.floor(centre).astype(int)
    lo = np.maximum(c - half, 0)
    hi = np.minimum(c + half + 1, np.array(shape))
    if np.any(hi - lo < 3):
        return None
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    bshape = tuple(int(b - a) for a, b in zip(lo, hi, strict=True))
    d = _rotated_radius(bshape, centre - lo, radius * aspect, rotation)
    # Lobulated outline; clipping bounds the radius (x1.46) so the box always holds the core.
    d = d * np.exp(0.15 * np.clip(_smooth_noise(rng, bshape, 0.6 * radius, lo), -2.5, 2.5))
    core = d < 1.0
    if not core.any():
        return None
    # Thicker enhancement in places, as in real rims, but never below ``rim``.
    thickness = rim + 0.02 * s * np.clip(_smooth_noise(rng, bshape, 0.5 * radius, lo), 0, 1.5)
    return box, core, thickness


def _tumour_layers(
    core: np.ndarray, thickness: np.ndarray, rim: float, ed_min: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Necrosis, the guaranteed edema shell and its guard ring (shell plus one voxel).

    The rim is the part of the core less than ``thickness`` deep (a distance transform), so it
    is never thinner than ``rim``. Returns None when the core is too thin for any necrosis.
    """
    if not core.any():
        return None
    depth = ndimage.distance_transform_edt(core)
    ncr = depth > thickness
    if not ncr.any():
        if depth.max() <= rim:
            return None
        ncr = depth >= depth.max()  # small volumes: keep the deepest voxels necrotic
    outside = ndimage.distance_transform_edt(~core)
    shell = (outside > 0) & (outside <= ed_min)
    guard = outside <= ed_min + 1.0
    return ncr, shell, guard


def _brain_interior(brain: np.ndarray, box: tuple[slice, ...], margin: float) -> np.ndarray:
    """Voxels of ``box`` farther than ``margin`` from anything outside the brain.

    The distance transform runs on the box grown by the margin (padded with background past
    the volume's faces), so the result is exact inside the box.
    """
    pad = int(np.ceil(margin)) + 1
    lo = np.array([sl.start for sl in box]) - pad
    hi = np.array([sl.stop for sl in box]) + pad
    lo_in, hi_in = np.maximum(lo, 0), np.minimum(hi, brain.shape)
    grown = brain[tuple(slice(int(a), int(b)) for a, b in zip(lo_in, hi_in, strict=True))]
    grown = np.pad(grown, list(zip(lo_in - lo, hi - hi_in, strict=True)), constant_values=False)
    distance = ndimage.distance_transform_edt(grown)
    return distance[(slice(pad, -pad),) * 3] > margin


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------


def _reorient_from_ras(array: np.ndarray, orientation: str) -> np.ndarray:
    """RAS-ordered spatial axes (the last three) -> voxel order of ``orientation``."""
    lead = array.ndim - 3
    perm = [*range(lead), *(lead + _ORIENTATION_AXES[c] for c in orientation)]
    out = array.transpose(perm)
    flips = [lead + k for k, c in enumerate(orientation) if c in "LPI"]
    if flips:
        out = np.flip(out, axis=tuple(flips))
    return np.ascontiguousarray(out)


def make_phantom(
    shape: tuple[int, int, int] = (64, 64, 64),
    *,
    seed: int = 0,
    num_tumours: int | tuple[int, int] = (1, 2),
    label_convention: str = "brats2021",
    contrast: Mapping[str, Mapping[str, float]] | None = None,
    tumour_scale: float = 1.0,
    orientation: str = "RAS",
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

    Returns:
        ``(images, label)``: images float32 ``(4, *shape)`` in
        :data:`~tumorseg.conventions.CHANNEL_ORDER` (flair, t1, t1ce, t2), exactly 0 outside
        the brain and >= 1 inside; label uint8 ``shape`` with the convention's values.

    Raises:
        ValueError: for a bad shape, seed, count, convention, contrast or orientation.
    """
    shape = _check_shape(shape)
    seed = _check_seed(seed)
    low, high = _check_num_tumours(num_tumours)
    conv = get_convention(label_convention)
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

    images = _render(rng, classes, tissue, brain, levels, s)

    label = np.zeros(ras, np.uint8)
    for name in ("NCR", "ED", "ET"):
        label[classes == _TISSUE_CODE[name]] = conv.classes[name]
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


def orientation_affine(
    orientation: str = "LPS",
    *,
    shape: Sequence[int],
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    oblique_degrees: float = 0.0,
) -> np.ndarray:
    """A voxel-to-world (RAS+ mm, nibabel's convention) affine for an axis-code orientation.

    Args:
        orientation: 3-letter axis codes as in :func:`nibabel.aff2axcodes`: ``"LPS"`` makes
            the first voxel axis point left, the second posterior, the third superior.
        shape: voxels per axis; the volume's centre is put at the world origin.
        spacing: voxel size in mm per voxel axis.
        oblique_degrees: rotation about the world left-right axis (a head tilt, as in an
            AC-PC-angled acquisition), in (-45, 45) so the nearest axis codes stay
            ``orientation``.

    Returns:
        A float64 4x4 affine.

    Raises:
        ValueError: for a bad orientation, shape, spacing or angle (the value is shown).
    """
    code = _check_orientation(orientation)
    try:
        dims = tuple(int(n) for n in shape)
    except (TypeError, ValueError):
        dims = ()
    if len(dims) != 3 or min(dims) < 1:
        raise ValueError(f"shape must be 3 positive integers, got {shape!r}")
    zooms = _check_spacing(spacing)
    try:
        angle = float(oblique_degrees)
    except (TypeError, ValueError):
        angle = float("nan")
    if not (np.isfinite(angle) and abs(angle) < 45):
        raise ValueError(f"oblique_degrees must be in (-45, 45), got {oblique_degrees!r}")

    linear = np.zeros((3, 3))
    for k, c in enumerate(code):
        linear[_ORIENTATION_AXES[c], k] = zooms[k] * (1.0 if c in "RAS" else -1.0)
    theta = np.deg2rad(angle)
    tilt = np.array(
        [
            [1.0, 0.0, 0.0],
            [0.0, np.cos(theta), -np.sin(theta)],
            [0.0, np.sin(theta), np.cos(theta)],
        ]
    )
    linear = tilt @ linear
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = -linear @ ((np.array(dims, float) - 1.0) / 2.0)
    return affine


def _check_case_id(case_id: Any) -> str:
    if not isinstance(case_id, str) or not _CASE_ID_RE.match(case_id):
        raise ValueError(
            f"case id must be letters, digits, '.', '_' or '-' (not starting with '.', "
            f"'_' or '-'), got {case_id!r}"
        )
    return case_id


def _case_paths(out_dir: Path, case_id: str, layout: FileLayout, labelled: bool) -> dict[str, Any]:
    """Where one case's files go; ``targets`` must not exist yet (the folder, or the files)."""
    if layout.four_d:
        image = out_dir / ("imagesTr" if labelled else "imagesTs") / f"{case_id}.nii.gz"
        label = out_dir / "labelsTr" / f"{case_id}.nii.gz" if labelled else None
        return {"images": [image], "label": label, "targets": [p for p in (image, label) if p]}
    folder = out_dir / case_id
    images = [folder / f"{case_id}{layout.modality_suffixes[m]}.nii.gz" for m in CHANNEL_ORDER]
    label = folder / f"{case_id}{layout.label_suffix}.nii.gz" if labelled else None
    return {"images": images, "label": label, "targets": [folder], "folder": folder}


def _exists_error(path: Path, more: int = 0) -> FileExistsError:
    extra = f" (and {more} more)" if more else ""
    return FileExistsError(
        f"{path} already exists{extra}; pass overwrite=True / --overwrite to replace it"
    )


def _nifti(data: np.ndarray, affine: np.ndarray, zooms: Sequence[float]) -> Any:
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    # Scanner-anatomical (code 1) in both forms, as scanners' converters write; readers that
    # prefer either one then agree.
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_data_dtype(data.dtype)
    img.header.set_zooms(tuple(zooms))
    img.header.set_xyzt_units("mm", "sec")
    return img


def _save_atomic(img: Any, path: Path) -> None:
    """Write to a hidden temporary name in the same folder, then rename over ``path``."""
    import nibabel as nib

    with atomic_path(path, keep_suffix=True) as tmp:
        nib.save(img, tmp)


def _to_image_dtype(images: np.ndarray, image_dtype: str) -> np.ndarray:
    if image_dtype == "float32":
        return images.astype(np.float32)
    if image_dtype != "int16":
        raise ValueError(f"image_dtype must be 'int16' or 'float32', got {image_dtype!r}")
    if not np.all(np.isfinite(images)):
        raise ValueError("images contain NaN or infinite values; cannot store them as int16")
    lo, hi = float(images.min()), float(images.max())
    if lo < -32768 or hi > 32767:
        raise ValueError(
            f"image values span [{lo:g}, {hi:g}], outside int16; pass image_dtype='float32'"
        )
    return np.rint(images).astype(np.int16)


def write_case(
    out_dir: str | os.PathLike[str],
    case_id: str,
    images: np.ndarray,
    label: np.ndarray | None,
    *,
    affine: np.ndarray,
    layout: str = "brats2021",
    overwrite: bool = False,
    image_dtype: str = "int16",
) -> dict[str, Any]:
    """Write one case as NIfTI files in a dataset layout.

    ``brats2021`` / ``brats2023`` cases become a folder ``<out_dir>/<case_id>/`` with one file
    per modality (plus the label map when given), assembled in a hidden temporary folder and
    renamed into place, so the folder is either complete or absent. ``msd`` cases become a 4D
    ``imagesTr/<case_id>.nii.gz`` (modalities on the last axis in CHANNEL_ORDER) and
    ``labelsTr/<case_id>.nii.gz``, or ``imagesTs/`` when unlabelled, each file written under a
    temporary name and renamed. Both qform and sform hold ``affine`` with code 1 (scanner).

    Args:
        out_dir: dataset root (created if missing).
        case_id: case identifier (letters, digits, ``.``, ``_``, ``-``).
        images: ``(4, X, Y, Z)`` array in CHANNEL_ORDER (flair, t1, t1ce, t2).
        label: ``(X, Y, Z)`` integer label map (stored as uint8), or None for an unlabelled case.
        affine: 4x4 voxel-to-world affine (see :func:`orientation_affine`); the voxel sizes
            in the header are taken from it.
        layout: ``brats2021``, ``brats2023`` or ``msd``.
        overwrite: replace an existing case instead of raising.
        image_dtype: ``"int16"`` (rounded, like real BraTS files) or ``"float32"``.

    Returns:
        ``{"case_id": ..., "image": [paths], "label": path or None}`` with paths as strings
        (one 4D path for ``msd``, four paths in CHANNEL_ORDER otherwise).

    Raises:
        FileExistsError: when the case exists and ``overwrite`` is false (the path is named).
        ValueError: for bad shapes, affine, layout, case id or image values.
    """
    lay = get_layout(layout)
    case_id = _check_case_id(case_id)
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[0] != len(CHANNEL_ORDER):
        raise ValueError(
            f"images must be ({len(CHANNEL_ORDER)}, X, Y, Z) in order {CHANNEL_ORDER}, "
            f"got shape {images.shape}"
        )
    if label is not None:
        label = np.asarray(label)
        if label.shape != images.shape[1:]:
            raise ValueError(
                f"label shape {label.shape} does not match image shape {images.shape[1:]}"
            )
        if not np.issubdtype(label.dtype, np.integer) or label.min() < 0 or label.max() > 255:
            raise ValueError(
                f"label must hold integers in 0..255, got dtype {label.dtype} "
                f"with values {np.unique(label)[:8].tolist()}"
            )
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise ValueError(f"affine must be a finite 4x4 matrix, got {affine!r}")
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    if np.any(zooms <= 0):
        raise ValueError(f"affine has a zero-length voxel axis: {affine!r}")
    data = _to_image_dtype(images, image_dtype)

    out = Path(out_dir)
    paths = _case_paths(out, case_id, lay, label is not None)
    existing = [p for p in paths["targets"] if p.exists()]
    if existing and not overwrite:
        raise _exists_error(existing[0])

    label_img = _nifti(label.astype(np.uint8), affine, zooms) if label is not None else None
    if lay.four_d:
        # Label first: readers enumerate images, so a visible image always has its label.
        if label_img is not None:
            paths["label"].parent.mkdir(parents=True, exist_ok=True)
            _save_atomic(label_img, paths["label"])
        image_img = _nifti(np.moveaxis(data, 0, -1), affine, (*zooms, 1.0))
        paths["images"][0].parent.mkdir(parents=True, exist_ok=True)
        _save_atomic(image_img, paths["images"][0])
    else:
        _write_case_folder(paths, data, label_img, affine, zooms)
    return {
        "case_id": case_id,
        "image": [str(p) for p in paths["images"]],
        "label": str(paths["label"]) if paths["label"] is not None else None,
    }


def _write_case_folder(
    paths: dict[str, Any], data: np.ndarray, label_img: Any, affine: np.ndarray, zooms: Any
) -> None:
    import nibabel as nib

    folder: Path = paths["folder"]
    folder.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:8]
    staging = folder.with_name(f".{folder.name}.{token}.partial")
    old = folder.with_name(f".{folder.name}.{token}.old")
    staging.mkdir()
    try:
        for channel, path in zip(data, paths["images"], strict=True):
            nib.save(_nifti(channel, affine, zooms), staging / path.name)
        if label_img is not None:
            nib.save(label_img, staging / paths["label"].name)
        if folder.exists():
            # A directory cannot be renamed over a non-empty one: move the old one aside first.
            os.replace(folder, old)
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if old.exists() and not folder.exists():
            os.replace(old, folder)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _case_id(layout: str, index: int, prefix: str | None) -> str:
    name = get_layout(layout).name
    head = _DEFAULT_PREFIX[name] if prefix is None else prefix
    if name == "brats2023":
        return f"{head}-{index:05d}-000"
    return f"{head}_{index:03d}"


def _case_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _msd_dataset_json(
    training: list[str], test: list[str], convention: str, version: str
) -> dict[str, Any]:
    conv = get_convention(convention)
    names = {"ED": "edema", "NCR": "non-enhancing tumor", "ET": "enhancing tumour"}
    labels = {"0": "background"}
    for value, name in sorted((v, names[c]) for c, v in conv.classes.items()):
        labels[str(value)] = name
    return {
        "name": "BRATS",
        "description": "Synthetic glioma phantoms (tumorseg synth) in the MSD Task01 layout",
        "reference": "tumorseg.data.synthetic",
        "licence": "CC0-1.0",
        "release": f"tumorseg {version}",
        "tensorImageSize": "4D",
        "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
        "labels": labels,
        "numTraining": len(training),
        "numTest": len(test),
        "training": [
            {"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in training
        ],
        "test": [f"./imagesTs/{c}.nii.gz" for c in test],
    }


def generate_dataset(
    out_dir: str | os.PathLike[str],
    *,
    num_cases: int = 4,
    shape: tuple[int, int, int] = (64, 64, 64),
    seed: int = 0,
    layout: str = "brats2021",
    label_convention: str | None = None,
    orientation: str = "LPS",
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    oblique_degrees: float = 0.0,
    num_unlabelled: int = 0,
    case_prefix: str | None = None,
    contrast: Mapping[str, Mapping[str, float]] | None = None,
    tumour_scale: float = 1.0,
    overwrite: bool = False,
    progress: bool = False,
) -> list[str]:
    """Write a synthetic dataset in a BraTS or MSD layout.

    Labelled cases are numbered ``0..num_cases-1`` and unlabelled ones (written without a
    label map: for inference) continue the numbering. Case ``i`` depends only on ``(seed, i)``
    and the geometry, so adding cases never changes the existing ones. Case ids:
    ``SYN2021_000`` (brats2021), ``BraTS-SYN-00000-000`` (brats2023), ``BRATS_000`` (msd);
    ``case_prefix`` replaces the part before the number. For ``msd`` a ``dataset.json`` like
    the Task01 one is written last.

    Args:
        out_dir: dataset root (created if missing).
        num_cases: labelled cases (>= 1).
        shape: voxels per axis of every stored volume (each >= 16).
        seed: base seed (>= 0).
        layout: ``brats2021``, ``brats2023`` or ``msd``.
        label_convention: label numbers to use; None means the layout's own convention.
        orientation: voxel axis codes of the stored volumes (``LPS``, ``RAS``, ...).
        spacing: voxel size in mm.
        oblique_degrees: head tilt of the affine (see :func:`orientation_affine`).
        num_unlabelled: extra cases without label maps.
        case_prefix: replaces the default case-id prefix.
        contrast: tissue-level overrides for every case, passed to :func:`make_phantom`
            (e.g. a shifted set for transfer-learning experiments).
        tumour_scale: tumour size factor for every case, passed to :func:`make_phantom`.
        overwrite: replace existing cases (and ``dataset.json``) instead of raising.
        progress: show a tqdm progress bar.

    Returns:
        The case ids, labelled first.

    Raises:
        FileExistsError: when any target exists and ``overwrite`` is false; checked before
            anything is written.
        ValueError: for invalid arguments (the value received is shown).
    """
    lay = get_layout(layout)
    conv = get_convention(
        label_convention if label_convention is not None else lay.label_convention
    )
    shape = _check_shape(shape)
    seed = _check_seed(seed)
    orientation = _check_orientation(orientation)
    for name, value, minimum in (
        ("num_cases", num_cases, 1),
        ("num_unlabelled", num_unlabelled, 0),
    ):
        if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if case_prefix is not None and not _CASE_ID_RE.match(case_prefix):
        raise ValueError(
            f"case_prefix must be letters, digits, '.', '_' or '-' (not starting with "
            f"'.', '_' or '-'), got {case_prefix!r}"
        )
    # Checked here too, so a bad value fails before any case is written.
    _check_contrast(contrast)
    _check_tumour_scale(tumour_scale)
    affine = orientation_affine(
        orientation, shape=shape, spacing=spacing, oblique_degrees=oblique_degrees
    )

    out = Path(out_dir)
    total = int(num_cases) + int(num_unlabelled)
    ids = [_case_id(lay.name, i, case_prefix) for i in range(total)]
    if not overwrite:
        existing = [
            p
            for i, cid in enumerate(ids)
            for p in _case_paths(out, cid, lay, i < num_cases)["targets"]
            if p.exists()
        ]
        if lay.four_d and (out / "dataset.json").exists():
            existing.append(out / "dataset.json")
        if existing:
            raise _exists_error(existing[0], len(existing) - 1)

    from tqdm.auto import tqdm

    out.mkdir(parents=True, exist_ok=True)
    for i, cid in enumerate(tqdm(ids, desc="synth", unit="case", disable=not progress)):
        images, label = make_phantom(
            shape,
            seed=_case_seed(seed, i),
            label_convention=conv.name,
            contrast=contrast,
            tumour_scale=tumour_scale,
            orientation=orientation,
        )
        write_case(
            out,
            cid,
            images,
            label if i < num_cases else None,
            affine=affine,
            layout=lay.name,
            overwrite=overwrite,
        )
    if lay.four_d:
        from tumorseg import __version__

        meta = _msd_dataset_json(ids[:num_cases], ids[num_cases:], conv.name, __version__)
        atomic_write_text(out / "dataset.json", json.dumps(meta, indent=4) + "\n")
    return ids
