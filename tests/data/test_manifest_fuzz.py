"""Fuzz-style tests of the manifest reader (issue 18).

A manifest is a file people edit by hand and pass around. Whatever it holds (mutated text,
any JSON value in any field, deep nesting, bytes that are not UTF-8), reading it and taking a
split ends in ``ManifestError``/``ValueError`` naming the file, or ``FileNotFoundError``,
never a ``TypeError``/``KeyError``/``RecursionError`` from deep inside.
"""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

import pytest

from tumorseg.data import ManifestError, load_datalist, load_manifest

REPO = Path(__file__).resolve().parents[2]
PUBLIC = REPO / "data_manifests" / "brats2020.json"
ROUNDS = 300


def _small() -> dict[str, Any]:
    manifest = json.loads(PUBLIC.read_text())
    manifest["training"] = manifest["training"][:6]
    manifest["testing"] = manifest["testing"][:2]
    return manifest


def _read_all(path: Path) -> None:
    loaded = load_manifest(path)
    for split in ("train", "val", "test", "all"):
        for fold in (0, None):
            load_datalist(loaded, fold=fold, split=split, check_files=False)


def _expect_clean(path: Path) -> None:
    try:
        _read_all(path)
    except FileNotFoundError:
        pass
    except ValueError as err:  # ManifestError is one
        assert str(err), "a refusal says why"


_VALUES: list[Any] = [
    None,
    True,
    0,
    -1,
    7,
    2**70,
    1.5,
    float("nan"),
    "",
    "x",
    "../../../etc/passwd",
    [],
    [None],
    [1, 2, 3, 4],
    ["a", "b", "c", "d"],
    {},
    {"case_id": 1},
]


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            out += _paths(value, (*prefix, index))
    return out


def _replace(root: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    node = root
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return root


def test_any_value_in_any_field(tmp_path: Path) -> None:
    rng = random.Random(18)
    base = _small()
    _read_all_ok = tmp_path / "ok.json"
    _read_all_ok.write_text(json.dumps(base))
    _read_all(_read_all_ok)
    paths = _paths(base)
    target = tmp_path / "m.json"
    for _ in range(ROUNDS):
        mutated = copy.deepcopy(base)
        for _ in range(rng.randrange(1, 4)):
            path = rng.choice(paths)
            try:
                mutated = _replace(mutated, path, copy.deepcopy(rng.choice(_VALUES)))
            except (KeyError, IndexError, TypeError):
                continue  # the path went away with an earlier replacement
            if rng.random() < 0.2 and isinstance(mutated, dict) and path and path[0] in mutated:
                del mutated[path[0]]
        target.write_text(json.dumps(mutated, allow_nan=True))
        _expect_clean(target)


def test_mutated_text(tmp_path: Path) -> None:
    rng = random.Random(5)
    text = json.dumps(_small(), indent=1).encode()
    target = tmp_path / "t.json"
    for _ in range(ROUNDS):
        data = bytearray(text)
        for _ in range(rng.randrange(1, 6)):
            i = rng.randrange(len(data))
            if rng.random() < 0.5:
                data[i] = rng.randrange(256)
            else:
                del data[i : i + rng.randrange(1, 40)]
        target.write_bytes(bytes(data))
        _expect_clean(target)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\xff\xfe\x00garbage", "not valid"),
        (b"[" * 100_000 + b"]" * 100_000, "not valid"),
        (b"", "not valid JSON"),
        (json.dumps({"channel_order": 5}).encode(), "not a tumorseg manifest"),
    ],
)
def test_hostile_files_name_the_file(tmp_path: Path, content: bytes, message: str) -> None:
    target = tmp_path / "bad.json"
    target.write_bytes(content)
    with pytest.raises(ManifestError, match=message) as err:
        load_manifest(target)
    assert str(target) in str(err.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("channel_order", 5),
        ("channel_order", None),
        ("image", [1, 2, 3, 4]),
        ("image", ["a", None, "c", "d"]),
        ("label", 12),
        ("label", ["a"]),
    ],
)
def test_wrong_types_are_manifest_errors(tmp_path: Path, field: str, value: Any) -> None:
    manifest = _small()
    if field == "channel_order":
        manifest[field] = value
    else:
        manifest["training"][0][field] = value
    target = tmp_path / "m.json"
    target.write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match=str(target).replace("\\", "\\\\")):
        _read_all(target)
