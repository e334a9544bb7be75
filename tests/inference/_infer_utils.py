"""Test helpers: studies whose correct segmentation is known, and networks that find it.

A network with random weights says nothing about *where* a mask lands. Instead, an "encoded"
study carries its own answer: channel ``c`` (c = 0, 1, 2) is 10000 inside region
``REGIONS[c]`` (WT, TC, ET), 100 in the rest of the brain and 0 outside; channel 3 is 100 in
the brain. After the bundle's z-score normalisation (over non-zero voxels) a region voxel is
positive and any other brain voxel negative, whatever the region's size, so
:class:`EncodedRegions` (logits ``20 x - 1`` of channels 0-2, a pointwise map) recovers the
regions exactly on whatever grid the pipeline hands it. Any flip, transpose, shift or crop
error between input and output moves the mask away from the drawn label.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tumorseg.conventions import REGIONS, get_layout
from tumorseg.transforms import labels_to_regions

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "brats_mri_segmentation"
TINY_FILTERS = [4, 8, 16, 32, 64]
REGION_VALUE = 10000.0
BRAIN_VALUE = 100.0


class EncodedRegions(torch.nn.Module):
    """Stand-in network: region logits read off channels 0-2 of an encoded study.

    Args:
        delay: seconds to sleep per call (to make a batch slow enough to kill mid-way).
        interrupt_at: raise KeyboardInterrupt on this call number (1-based), to simulate a
            crash in the middle of a batch.
        wait_for: an event the first call waits on (up to 10 s), recording whether it came.

    Attributes:
        thresholds: per-region threshold on the normalised channel (default 0, the sign);
            :func:`midpoint_thresholds` puts it half-way between brain and region values,
            which keeps borders unbiased where the pipeline resamples.
    """

    def __init__(
        self,
        *,
        delay: float = 0.0,
        interrupt_at: int | None = None,
        wait_for: threading.Event | None = None,
    ) -> None:
        super().__init__()
        self.calls = 0
        self.delay = delay
        self.interrupt_at = interrupt_at
        self.wait_for = wait_for
        self.waited: bool | None = None
        self.thresholds: list[float] = [0.0, 0.0, 0.0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.wait_for is not None and self.waited is None:
            self.waited = self.wait_for.wait(timeout=10)
        if self.interrupt_at is not None and self.calls >= self.interrupt_at:
            raise KeyboardInterrupt
        if self.delay:
            time.sleep(self.delay)
        # Pointwise, so it serves 3D windows and the 2D slices of a slice-wise bundle alike.
        shape = (1, 3, *([1] * (x.ndim - 2)))
        t = torch.tensor(self.thresholds, dtype=x.dtype, device=x.device).view(shape)
        # Background (exactly 0 after normalisation) must stay below 0.5 for any threshold.
        return torch.where(x[:, :3] == 0, -10.0, 20.0 * (x[:, :3] - t) - 1.0)


def midpoint_thresholds(images: np.ndarray) -> list[float]:
    """Per region channel, the normalised value half-way between brain and region voxels.

    Mirrors the bundle's ``NormalizeIntensityd(nonzero=True, channel_wise=True)`` statistics
    on the input; resampling changes them slightly, which moves a threshold this far from
    both values by nothing that matters.
    """
    out = []
    for c in range(len(REGIONS)):
        values = images[c][images[c] != 0].astype(np.float64)
        std = values.std() or 1.0
        out.append(float(((REGION_VALUE + BRAIN_VALUE) / 2 - values.mean()) / std))
    return out


def sign_thresholds(images: np.ndarray) -> list[float]:
    """Per region channel of an :func:`encode` d study, the threshold for "region = positive".

    A present region normalises to positive and the rest of the brain to negative, so 0
    separates them. An absent region leaves its channel constant over the brain, and a
    constant z-scores to exactly +1 or -1 (the mean's rounding error divided by a standard
    deviation of the same size), its sign set by the summation order, i.e. by the thread
    count: 1.5 keeps such a channel negative whatever the sign.
    """
    return [0.0 if np.unique(c[c != 0]).size > 1 else 1.5 for c in images[: len(REGIONS)]]


def encode(label: np.ndarray, brain: np.ndarray, convention: str) -> np.ndarray:
    """``(4, *shape)`` images whose channels 0-2 encode the regions of ``label``."""
    regions = labels_to_regions(np.asarray(label), convention)
    images = np.zeros((4, *label.shape), np.float32)
    for c in range(len(REGIONS)):
        images[c] = np.where(regions[c] > 0, REGION_VALUE, np.where(brain, BRAIN_VALUE, 0.0))
    images[3] = np.where(brain, BRAIN_VALUE, 0.0)
    return images


def encoded_phantom(
    shape: tuple[int, int, int], *, seed: int, orientation: str, convention: str = "brats2021"
) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic brain and tumour, encoded: ``(images (4, *shape), label)``."""
    from tumorseg.data.synthetic import make_phantom

    images, label = make_phantom(
        shape, seed=seed, orientation=orientation, label_convention=convention, num_tumours=1
    )
    brain = images.max(axis=0) > 0
    return encode(label, brain, convention), label


def sphere_study(
    shape: tuple[int, int, int],
    affine: np.ndarray,
    *,
    offset_mm: tuple[float, float, float],
    radii_mm: tuple[float, float, float] = (9.0, 6.0, 4.0),
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A phantom brain with a spherical tumour drawn in world (mm) coordinates.

    The tumour is centred ``offset_mm`` (RAS) from the volume's centre: ET within
    ``radii_mm[2]``, necrosis out to ``radii_mm[1]``, edema out to ``radii_mm[0]``, all
    clipped to the brain, so where it must land is known in millimetres whatever the grid.

    Returns:
        ``(encoded images (4, *shape), brats2021 label, world centre (3,))``.
    """
    from tumorseg.data.synthetic import make_phantom

    images, _ = make_phantom(shape, seed=seed, num_tumours=0)
    brain = images.max(axis=0) > 0
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    centre_voxel = (np.array(shape, float) - 1) / 2
    centre = affine[:3, :3] @ centre_voxel + affine[:3, 3] + np.asarray(offset_mm, float)
    r = np.linalg.norm(world - centre, axis=-1)
    label = np.zeros(shape, np.uint8)
    label[(r <= radii_mm[0]) & brain] = 2
    label[(r <= radii_mm[1]) & brain] = 1
    label[(r <= radii_mm[2]) & brain] = 4
    return encode(label, brain, "brats2021"), label, centre


def write_encoded_dataset(
    root: Path,
    n: int,
    *,
    shape: tuple[int, int, int] = (32, 32, 32),
    orientation: str = "LPS",
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    oblique_degrees: float = 0.0,
    layout: str = "brats2021",
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Write ``n`` encoded studies (unlabelled, as for inference); returns case id -> label."""
    from tumorseg.data.synthetic import orientation_affine, write_case

    convention = get_layout(layout).label_convention  # each layout's own numbers
    affine = orientation_affine(
        orientation, shape=shape, spacing=spacing, oblique_degrees=oblique_degrees
    )
    labels = {}
    for i in range(n):
        case_id = {"brats2021": f"ENC_{i:03d}", "brats2023": f"BraTS-ENC-{i:05d}-000"}.get(
            layout, f"BRATS_{i:03d}"
        )
        images, label = encoded_phantom(
            shape, seed=seed + i, orientation=orientation, convention=convention
        )
        write_case(root, case_id, images, None, affine=affine, layout=layout)
        labels[case_id] = label
    if layout == "msd":
        import json

        (root / "dataset.json").write_text(
            json.dumps(
                {
                    "name": "enc",
                    "training": [],
                    "test": [f"./imagesTs/{c}.nii.gz" for c in labels],
                }
            )
        )
    return labels


def tiny_checkpoint(path: Path, *, filters: list[int] | None = None, seed: int = 0) -> Path:
    """Random weights of the bundle's DynUNet with small ``filters``, saved as ``model.pt``."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.json"))
    parser["filters"] = filters or TINY_FILTERS
    torch.manual_seed(seed)
    network = parser.get_parsed_content("network_def")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), path)
    return path


def decisive_tiny_network(seed: int = 3, output_scale: float = 10.0) -> torch.nn.Module:
    """The bundle's DynUNet with :data:`TINY_FILTERS` and random weights, in eval mode, its
    output block scaled by ``output_scale``: random weights give logits near 0 (probabilities
    near the 0.5 threshold); scaled, nearly every voxel is far from it, so the masks of two
    backends compare like a trained network's."""
    from tumorseg.inference import load_bundle

    config = load_bundle(BUNDLE, overrides={"filters": TINY_FILTERS})
    torch.manual_seed(seed)
    network = config.get_parsed_content("network_def").eval()
    with torch.no_grad():
        for param in network.output_block.parameters():
            param.mul_(output_scale)
    return network


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


def header_geometry(header: Any) -> dict[str, Any]:
    """The header fields that decide where a voxel is in the world."""
    return {
        "qform": header.get_qform(),
        "qform_code": int(header["qform_code"]),
        "sform": header.get_sform(),
        "sform_code": int(header["sform_code"]),
        "zooms": tuple(float(z) for z in header.get_zooms()[:3]),
        "quatern": tuple(float(header[k]) for k in ("quatern_b", "quatern_c", "quatern_d")),
        "qfac": float(header["pixdim"][0]),
        "xyzt_units": int(header["xyzt_units"]),
    }


def assert_same_geometry(output: Path, reference: Path, atol: float = 1e-5) -> None:
    """Output mask on the reference image's grid: shape, affine, qform/sform and codes."""
    import nibabel as nib

    out: Any = nib.load(str(output))
    ref: Any = nib.load(str(reference))
    assert out.shape == ref.shape[:3], (out.shape, ref.shape)
    np.testing.assert_allclose(out.affine, ref.affine, atol=atol, rtol=0)
    got, want = header_geometry(out.header), header_geometry(ref.header)
    for key in want:
        if isinstance(want[key], np.ndarray | tuple):
            np.testing.assert_allclose(got[key], want[key], atol=atol, rtol=0, err_msg=key)
        else:
            assert got[key] == want[key], (key, got[key], want[key])
    assert out.get_data_dtype() == np.uint8
