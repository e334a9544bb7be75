"""Fixtures of the tracking tests: a real `mlflow server` per module, tiny synthetic data."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from _tracking_utils import Server, mlflow_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with mlflow_server(tmp_path_factory.mktemp("mlflow_server")) as srv:
        yield srv


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tumorseg.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("tracking_data")
    generate_dataset(root, num_cases=6, shape=(32, 32, 32), seed=3, layout="brats2023")
    return root
