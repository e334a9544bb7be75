"""The package's lazy subpackage access, which bundle configs rely on (`$tumorseg.x.y(...)`)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import tumorseg

SUBMODULES = sorted(
    m.name
    for m in pkgutil.iter_modules([str(Path(tumorseg.__file__).parent)])
    if m.name != "__main__"
)


def test_every_submodule_is_reachable_as_an_attribute_in_one_fresh_process() -> None:
    # The fast check: one interpreter reaches every submodule in turn (an earlier one may have
    # imported a later one; the slow test below gives each its own interpreter).
    code = "import tumorseg, types\n" + "".join(
        f"assert isinstance(tumorseg.{name}, types.ModuleType), {name!r}\n" for name in SUBMODULES
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.slow  # one interpreter start (torch, MONAI) per submodule: minutes on 2 cores
@pytest.mark.parametrize("name", SUBMODULES)
def test_every_submodule_is_reachable_as_an_attribute_in_a_fresh_process(name: str) -> None:
    # A fresh interpreter: in this one, other tests may already have imported the module.
    code = f"import tumorseg, types; assert isinstance(tumorseg.{name}, types.ModuleType)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = tumorseg.nope  # type: ignore[attr-defined]
