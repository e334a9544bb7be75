"""Test helper: a scratch copy of the repository's top level for ``make`` and README commands.

``Makefile``, ``src``, ``data_manifests`` and the package files are linked; the bundles are
copied (without generated data, outputs or trained files but the LGG bundle's released
``model.pt``), so what a command writes under ``bundles/*/models`` stays out of the checkout;
``.venv`` links the running interpreter's virtual environment (``make -o install`` takes the
install step as done).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def scratch_env() -> dict[str, str]:
    """The environment of a scratch command: this checkout's ``src`` first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env["PATH"]])
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def scratch_checkout(root: Path) -> Path:
    """A folder that looks like the repository's top level to ``make`` and the README."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("Makefile", "src", "data_manifests", "setup.cfg", "pyproject.toml"):
        (root / name).symlink_to(REPO / name)
    # The running interpreter's virtual environment (a venv is found by its own folder).
    (root / ".venv").symlink_to(Path(sys.executable).parent.parent)
    (root / "bundles").mkdir()
    for bundle in (REPO / "bundles").iterdir():
        if bundle.is_dir():
            shutil.copytree(bundle, root / "bundles" / bundle.name, ignore=_models_and_data)
        else:
            shutil.copy2(bundle, root / "bundles" / bundle.name)
    return root


def _models_and_data(folder: str, names: list[str]) -> list[str]:
    """What a bundle copy leaves out: generated data, outputs, and every trained file but the
    released ``model.pt`` (the LGG bundle's, which the README's commands use)."""
    skipped = [n for n in names if n in ("data", "eval")]
    if Path(folder).name == "models":
        skipped += [n for n in names if n != "model.pt"]
    return skipped
