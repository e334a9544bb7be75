"""Fixtures of the viewer tests: a small labelled dataset, its "predictions", a running server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _viewer_utils import SHAPE, StubPredictor

from tumorseg.data import discover_cases
from tumorseg.data.synthetic import generate_dataset
from tumorseg.inference.writer import label_image, write_label_atomic


def _prediction_of(reference: Path, out: Path) -> None:
    """A plausible prediction: the reference with one slab removed (so Dice < 1)."""
    import nibabel as nib

    ref: Any = nib.load(str(reference))
    label = np.asarray(ref.dataobj, np.uint8).copy()
    label[:, :, label.shape[2] // 2 :: 3] = 0
    write_label_atomic(out, label_image(label, ref.header))


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("viewer-data")
    generate_dataset(root, num_cases=2, shape=SHAPE, seed=3)
    return root


@pytest.fixture(scope="session")
def new_study(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The four modality files of an unlabelled study, as a user would upload them."""
    root = tmp_path_factory.mktemp("viewer-upload")
    generate_dataset(root, num_cases=1, shape=SHAPE, seed=11, case_prefix="NEW")
    (case,) = discover_cases(root)
    return list(case.images)


@pytest.fixture
def outputs(tmp_path: Path, dataset: Path) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    for case in discover_cases(dataset):
        assert case.label is not None
        _prediction_of(case.label, out / f"{case.case_id}.nii.gz")
    return out


@pytest.fixture
def server(outputs: Path, dataset: Path) -> Iterator[Any]:
    """A viewer on a free loopback port with the stub predictor and a 1 MiB upload cap."""
    from tumorseg.viewer import make_server

    srv = make_server(
        str(outputs),
        data_dir=str(dataset),
        port=0,
        factories={"stub": StubPredictor},
        max_upload_mb=1,
    )
    srv.start_background()
    try:
        yield srv
    finally:
        srv.close()
