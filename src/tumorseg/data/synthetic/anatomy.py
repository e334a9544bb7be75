"""Anatomy of the synthetic phantoms: smooth noise, the brain's tissues and the gliomas.

Everything here works in RAS voxel order on float64 geometry and draws from the caller's
:class:`numpy.random.Generator`; :mod:`tumorseg.data.synthetic.phantom` turns the tissue
map into images.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

__all__ = ["TISSUES"]

#: Tissue classes of the phantom, in the order :data:`DEFAULT_CONTRAST` lists them.
TISSUES: tuple[str, ...] = ("CSF", "GM", "WM", "NCR", "ED", "ET")

# Brain semi-axes proportions (RAS order) and the fraction of the field of view it may fill.
_BRAIN_PROPORTIONS = np.array([0.82, 1.0, 0.76])
_BRAIN_FILL = 0.82

_ORIENTATION_AXES = {"L": 0, "R": 0, "P": 1, "A": 1, "I": 2, "S": 2}
_TISSUE_CODE = {name: i + 1 for i, name in enumerate(TISSUES)}  # 0 is background

_Vector = Sequence[float] | np.ndarray


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


def _resection_cavity(
    rng: np.random.Generator,
    brain: np.ndarray,
    centre: np.ndarray,
    core_radius: float,
) -> np.ndarray:
    """A post-operative resection cavity over part of a tumour: the mask of its voxels.

    An ellipsoid of 0.6-0.8 core radii centred one core radius from the tumour's centre, in a
    random direction, inside the brain: it takes the resected side of the core and leaves
    residual enhancing tumour, necrosis and edema around it, as in BraTS 2024 post-operative
    studies. The caller fills it with fluid (CSF contrast) and labels it ``RC``.
    """
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction) + 1e-9
    cavity_centre = np.asarray(centre, dtype=np.float64) + direction * core_radius
    semi = core_radius * rng.uniform(0.6, 0.8, 3)
    inside = _ellipsoid(_grid(brain.shape, np.zeros(3)), cavity_centre, semi) < 1.0
    return np.asarray(inside & brain)


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


def _reorient_from_ras(array: np.ndarray, orientation: str) -> np.ndarray:
    """RAS-ordered spatial axes (the last three) -> voxel order of ``orientation``."""
    lead = array.ndim - 3
    perm = [*range(lead), *(lead + _ORIENTATION_AXES[c] for c in orientation)]
    out = array.transpose(perm)
    flips = [lead + k for k, c in enumerate(orientation) if c in "LPI"]
    if flips:
        out = np.flip(out, axis=tuple(flips))
    return np.ascontiguousarray(out)
