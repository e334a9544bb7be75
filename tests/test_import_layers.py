"""The import-layer contract of ``src/tumorseg``: no module imports a layer above its own.

Layers, bottom to top (a module may import its own layer and the ones below)::

    conventions, io, io_dicom, ranks (and the package root, for __version__)
    data, transforms
    metrics, networks, losses
    training, inference, tracking
    viewer, demo
    cli (and __main__)

Every ``import`` statement counts, at module level, inside functions and under
``TYPE_CHECKING`` alike: a function-level import hides a cycle from the interpreter, not from
the layering. Subpackages of one layer may import each other, but never both ways: the graph
of subpackages must have no cycle.

Run as a script (``python tests/test_import_layers.py [src/tumorseg]``) it prints the
offending imports and exits 1.
"""

from __future__ import annotations

import ast
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "src" / "tumorseg"

#: Bottom to top; the names are the first component after ``tumorseg.`` ("" is the root).
LAYERS: tuple[tuple[str, ...], ...] = (
    (
        "",
        "conventions",
        "io",
        "io_dicom",
        "ranks",
        "checkpoint_meta",
        "config_errors",
        "bundle_run",
    ),
    ("data", "transforms"),
    ("metrics", "networks", "losses"),
    ("training", "inference", "tracking"),
    ("viewer", "demo"),
    ("cli", "__main__"),
)
_LAYER_OF = {unit: level for level, units in enumerate(LAYERS) for unit in units}


def _module_name(path: Path, package_dir: Path) -> str:
    parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(tree: ast.AST, module: str, is_package: bool) -> Iterator[tuple[int, str]]:
    """``(line, imported module)`` of every import of ``tree``, relative ones made absolute."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: len(module.split(".")) - node.level + is_package]
                parent = ".".join(base + ([node.module] if node.module else []))
            else:
                parent = node.module or ""
            for alias in node.names:
                # `from tumorseg import training` imports a subpackage; `from tumorseg import
                # __version__` a name of the package itself.
                yield node.lineno, f"{parent}.{alias.name}" if parent == "tumorseg" else parent


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _unit_cycle(edges: dict[str, dict[str, str]]) -> list[str]:
    """One cycle of the subpackage graph (``[a, b, a]``), or ``[]``."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, {})):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return []


def layer_violations(package_dir: Path = PACKAGE_DIR) -> list[str]:
    """Every import of ``package_dir`` that breaks the contract, one line each, naming it.

    Args:
        package_dir: the ``tumorseg`` package folder to scan (every ``*.py`` below it).

    Returns:
        ``"<file>:<line>: <module> imports <module> (...)"`` lines; empty when the contract holds.
    """
    package = package_dir.name
    units = {p.stem for p in package_dir.glob("*.py")} | {
        p.parent.name for p in package_dir.glob("*/__init__.py")
    }
    problems: list[str] = []
    # unit -> imported unit -> where, for the cycle check among units of one layer
    edges: dict[str, dict[str, str]] = {}
    for path in sorted(package_dir.rglob("*.py")):
        module = _module_name(path, package_dir)
        unit = _unit(module)
        where = path.relative_to(package_dir.parent)
        if unit not in _LAYER_OF:
            problems.append(f"{where}: {module} is in no layer; add {unit!r} to LAYERS")
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for line, target in _imports(tree, module, path.name == "__init__.py"):
            if target != package and not target.startswith(f"{package}."):
                continue
            target_unit = _unit(target)
            if target_unit not in units:  # a name of the package root: __version__
                target_unit = ""
            if target_unit == unit or target_unit not in _LAYER_OF:
                continue  # the latter is reported once, as a module in no layer
            if _LAYER_OF[target_unit] > _LAYER_OF[unit]:
                problems.append(
                    f"{where}:{line}: {module} imports {target}: layer "
                    f"{'/'.join(LAYERS[_LAYER_OF[target_unit]])} is above "
                    f"{'/'.join(LAYERS[_LAYER_OF[unit]])}"
                )
            elif unit and target_unit:
                edges.setdefault(unit, {}).setdefault(target_unit, f"{where}:{line}")
    cycle = _unit_cycle(edges)
    if cycle:
        steps = [f"{a} -> {b} ({edges[a][b]})" for a, b in zip(cycle, cycle[1:], strict=False)]
        problems.append("subpackages import each other: " + "; ".join(steps))
    return problems


# ----------------------------------------------------------------------------- tests


def test_every_module_keeps_to_its_layer() -> None:
    problems = layer_violations()
    assert not problems, "import-layer contract broken:\n" + "\n".join(problems)


def _copy(tmp_path: Path) -> Path:
    copy = tmp_path / "tumorseg"
    shutil.copytree(PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def _append(path: Path, code: str) -> None:
    path.write_text(path.read_text(encoding="utf-8") + "\n\n" + code + "\n", encoding="utf-8")


def test_an_upward_import_inside_a_function_is_named(tmp_path: Path) -> None:
    copy = _copy(tmp_path)
    late = "def _late():\n    from tumorseg.inference.lgg import segment_kaggle_3m_folder\n"
    _append(copy / "data" / "lgg.py", late)
    problems = layer_violations(copy)
    assert len(problems) == 1, problems
    assert problems[0].startswith("tumorseg/data/lgg.py:")
    assert "tumorseg.data.lgg imports tumorseg.inference.lgg" in problems[0]
    assert "training/inference/tracking is above data/transforms" in problems[0]


@pytest.mark.parametrize(
    "code",
    ["import tumorseg.cli", "from tumorseg import viewer", "from .. import training"],
)
def test_every_spelling_of_an_upward_import_is_caught(tmp_path: Path, code: str) -> None:
    copy = _copy(tmp_path)
    _append(copy / "metrics" / "regions.py", code)
    problems = layer_violations(copy)
    assert len(problems) == 1 and "tumorseg.metrics.regions imports" in problems[0], problems


def test_subpackages_of_one_layer_importing_each_other_are_a_cycle(tmp_path: Path) -> None:
    copy = _copy(tmp_path)
    # inference already imports training (the weight loader); the way back closes a cycle.
    _append(copy / "training" / "outputs.py", "from tumorseg.inference import Predictor")
    problems = layer_violations(copy)
    assert len(problems) == 1 and problems[0].startswith("subpackages import each other"), problems
    assert "training -> inference (tumorseg/training/outputs.py:" in problems[0]


def test_a_module_outside_every_layer_is_reported(tmp_path: Path) -> None:
    copy = _copy(tmp_path)
    (copy / "plugins").mkdir()
    (copy / "plugins" / "__init__.py").write_text("")
    assert layer_violations(copy) == [
        "tumorseg/plugins/__init__.py: tumorseg.plugins is in no layer; add 'plugins' to LAYERS"
    ]


if __name__ == "__main__":
    found = layer_violations(Path(sys.argv[1]) if len(sys.argv) > 1 else PACKAGE_DIR)
    print("\n".join(found) or "import-layer contract holds")
    sys.exit(1 if found else 0)
