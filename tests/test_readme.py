"""The README as a test: every shell block of ``README.md`` and ``bundles/*/docs/README.md``.

Rules (also in README's *Contributing: documentation* section):

* every fenced block has a language; ``bash``/``sh``/``shell``/``console`` blocks are
  commands, anything else (``text``, ``json``, ``python``) is not run;
* a command block runs as written on synthetic data, unless the line just before its fence is
  ``<!-- readme-test: illustrative: <reason> -->`` (a reason is required): a multi-node or
  SLURM job, real data or weights that cannot be made up, a syntax summary;
* placeholders are replaced by :data:`PLACEHOLDERS` (a path under ``/data/``, ``/weights/`` or
  a ``<...>`` left after that makes the block fail the fast test: map it here or mark the
  block illustrative);
* the same tiny settings (:data:`TINY`: one epoch, small patches and network, no workers) are
  put on every bundle run, replacing the block's own values of those ids: a
  ``monai.bundle``/``tumorseg.bundle_run`` command, ``make train|train-ddp|finetune``'s
  ``ARGS``, the overrides after ``tumorseg launch ... --``; process counts become 2 and
  ``make`` takes its install step as done (``-o install``).

The fast tests (in ``make test``) check the rules, the placeholders and that every ``make``
target and ``tumorseg`` verb a block names exists. The slow test (``make test-slow``) runs the
blocks, file by file in README order, in one scratch copy of the repository
(``tests/_scratch.py``), so a block may use what an earlier
one made (a trained model, an MLflow store).
"""

from __future__ import annotations

import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from _scratch import REPO, scratch_checkout, scratch_env

#: The documents whose shell blocks are tested.
DOCUMENTS = (
    "README.md",
    *sorted(str(p.relative_to(REPO)) for p in REPO.glob("bundles/*/docs/README.md")),
)
SHELL = ("bash", "sh", "shell", "console")
MARKER = re.compile(r"<!--\s*readme-test:\s*illustrative:\s*(?P<reason>\S.*?)\s*-->")
_FENCE = re.compile(r"^```(?P<lang>[\w+-]*)\s*$")

#: Placeholder -> what the test substitutes (``{data}``: the synthetic data folder).
PLACEHOLDERS: dict[str, str] = {
    "/data/MICCAI_BraTS2020_TrainingData": "{data}/brats",
    "/data/BraTS2021": "{data}/brats",
    "/data/new_studies": "{data}/new_studies",
    "/data/new_kaggle_3m": "{data}/kaggle_3m",
    "/data/kaggle_3m": "{data}/kaggle_3m",
    "/tmp/phantoms": "{data}/phantoms",
    # The committed manifests list the real datasets' case ids: a manifest of the synthetic set.
    "data_manifests/brats2020.json": "{data}/brats_manifest.json",
    "data_manifests/brats2021.json": "{data}/brats_manifest.json",
}
#: Bundle overrides every bundle run gets, per bundle (the 3D bundle by default).
TINY: dict[str, dict[str, str]] = {
    "brats_mri_segmentation": {
        "epochs": "1",
        "roi_size": "[32,32,32]",
        "filters": "[8,16,32,64,128]",
        "num_workers": "0",
        "cache_rate": "0",
        "batch_size": "1",
        "num_samples": "1",
    },
    "brats_slice_segmentation_2d": {"epochs": "1", "num_workers": "0", "cache_rate": "0"},
    "lgg_flair_segmentation_2d": {"epochs": "1", "num_workers": "0", "cache_rate": "0"},
}
_UNMAPPED = re.compile(r"(^|[\s='\"])(/data/|/weights/)|<[a-z_ ]+>|\.\.\.")
_BUNDLE_RUN = ("monai.bundle", "tumorseg.bundle_run")


@dataclass(frozen=True)
class Block:
    """One fenced block of a document."""

    document: str
    line: int
    lang: str
    text: str
    illustrative: str | None  # the reason, when marked

    @property
    def name(self) -> str:
        return f"{self.document}:{self.line}"


def readme_blocks(document: str) -> list[Block]:
    """The fenced blocks of ``document`` (relative to the repository), in order."""
    lines = (REPO / document).read_text().splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        start = i
        j = i + 1
        while j < len(lines) and lines[j].strip() != "```":
            j += 1
        marker = MARKER.search(lines[start - 1]) if start > 0 else None
        text = "\n".join(lines[start + 1 : j])
        reason = marker.group("reason") if marker else None
        blocks.append(Block(document, start + 1, match.group("lang"), text, reason))
        i = j + 1
    return blocks


def _all_blocks() -> list[Block]:
    return [b for doc in DOCUMENTS for b in readme_blocks(doc)]


def _shell_blocks() -> list[Block]:
    return [b for b in _all_blocks() if b.lang in SHELL]


def _logical_lines(text: str) -> list[str]:
    """Commands of a block: continuation lines joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    out = []
    for line in joined.splitlines():
        tokens = shlex.split(line, comments=True)
        if tokens:
            out.append(line)
    return out


def _bundle_of(tokens: list[str]) -> str:
    for token in tokens:
        found = re.search(r"bundles/(\w+)", token)
        if found and found.group(1) in TINY:
            return found.group(1)
    return "brats_mri_segmentation"


def _with_tiny(args: list[str], bundle: str) -> list[str]:
    """``--key value`` overrides with :data:`TINY`'s ids replaced and appended."""
    tiny = TINY[bundle]
    out: list[str] = []
    i = 0
    while i < len(args):
        key = args[i][2:].split("=")[0] if args[i].startswith("--") else None
        if key in tiny:
            i += 1 if "=" in args[i] else 2
            continue
        out.append(args[i])
        i += 1
    for key, value in tiny.items():
        out += [f"--{key}", value]
    return out


def prepare_command(line: str, variables: dict[str, str]) -> str:
    """One README command as the test runs it (see the module docstring)."""
    for name, value in variables.items():
        line = line.replace(f"${name}", value)
    tokens = shlex.split(line, comments=True)
    if len(tokens) == 1 and re.fullmatch(r"[A-Z_]+=\S*", tokens[0]):
        name, _, value = tokens[0].partition("=")
        variables[name] = value
        return line
    bundle = _bundle_of(tokens)
    head = [Path(t).name for t in tokens[:3]]
    if "-m" in tokens and any(t in _BUNDLE_RUN for t in tokens[:4]):
        tokens = _with_tiny(tokens, bundle)
    elif head[:1] == ["make"]:
        tokens = ["make", "-o", "install", *tokens[1:]]
        target = next((t for t in tokens[3:] if "=" not in t), "")
        if target in ("train", "train-ddp", "finetune"):
            args = next((t for t in tokens if t.startswith("ARGS=")), "ARGS=")
            new = "ARGS=" + " ".join(_with_tiny(shlex.split(args[5:]), bundle))
            tokens = [t for t in tokens if not t.startswith("ARGS=")] + [new]
        tokens = [re.sub(r"^NPROC=\d+$", "NPROC=2", t) for t in tokens]
    elif head[:2] == ["tumorseg", "launch"]:
        if "--" in tokens:
            cut = tokens.index("--")
            tokens = tokens[: cut + 1] + _with_tiny(tokens[cut + 1 :], bundle)
        else:
            tokens = [*tokens, "--", *_with_tiny([], bundle)]
        if "--nproc-per-node" in tokens:
            tokens[tokens.index("--nproc-per-node") + 1] = "2"
    return shlex.join(tokens)


def prepare_block(block: Block, data: Path, variables: dict[str, str] | None = None) -> str:
    """The block's text as the slow test runs it; ``variables`` (``B=...`` lines) carry over
    from the earlier blocks of the document."""
    # One pass, longest placeholder first: a path already substituted is never matched again.
    pattern = "|".join(re.escape(p) for p in sorted(PLACEHOLDERS, key=len, reverse=True))
    text = re.sub(pattern, lambda m: PLACEHOLDERS[m.group(0)].format(data=data), block.text)
    variables = {} if variables is None else variables
    return "\n".join(prepare_command(line, variables) for line in _logical_lines(text))


# ----------------------------------------------------------------------------- fast checks


def test_every_block_has_a_language() -> None:
    untagged = [b.name for b in _all_blocks() if not b.lang]
    assert not untagged, (
        f"fenced blocks without a language (bash to run them, text if they are not commands): "
        f"{untagged}"
    )


def test_every_shell_block_is_runnable_or_marked_illustrative(tmp_path: Path) -> None:
    problems = []
    for block in _shell_blocks():
        if block.illustrative is not None:
            continue
        prepared = prepare_block(block, tmp_path)
        left = sorted({m.group(0).strip() for m in _UNMAPPED.finditer(prepared)})
        if left:
            problems.append(f"{block.name}: placeholders {left} not in PLACEHOLDERS")
    assert not problems, (
        "README blocks the test cannot run: add the placeholder to tests/test_readme.py's "
        "PLACEHOLDERS, or put <!-- readme-test: illustrative: <reason> --> before the block:\n"
        + "\n".join(problems)
    )


def test_blocks_name_existing_make_targets_and_verbs() -> None:
    from tumorseg.cli import build_parser

    targets = set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), re.M))
    verbs = set(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    problems = []
    for block in _shell_blocks():
        for line in _logical_lines(block.text):
            tokens = shlex.split(line, comments=True)
            names = [Path(t).name for t in tokens]
            if names[:1] == ["make"]:
                target = next((t for t in tokens[1:] if "=" not in t), "")
                if target not in targets:
                    problems.append(f"{block.name}: make {target}")
            if "tumorseg" in names[:1] and len(tokens) > 1 and tokens[1] not in verbs:
                problems.append(f"{block.name}: tumorseg {tokens[1]}")
    assert not problems, f"blocks naming what does not exist: {problems}"


def test_markers_need_a_reason_and_a_block() -> None:
    for document in DOCUMENTS:
        lines = (REPO / document).read_text().splitlines()
        for number, line in enumerate(lines, 1):
            if "readme-test" in line:
                assert MARKER.search(line), f"{document}:{number}: malformed marker {line!r}"
                following = lines[number] if number < len(lines) else ""
                assert _FENCE.match(following), f"{document}:{number}: marker not before a fence"


def test_prepare_command_applies_the_tiny_settings_once() -> None:
    variables: dict[str, str] = {}
    cmd = prepare_command(
        "python -m monai.bundle run training --bundle_root bundles/brats_mri_segmentation "
        "--epochs 300 --fold 0",
        variables,
    )
    tokens = shlex.split(cmd)
    assert tokens.count("--epochs") == 1 and tokens[tokens.index("--epochs") + 1] == "1"
    assert "--fold" in tokens and tokens[tokens.index("--filters") + 1] == "[8,16,32,64,128]"
    make = shlex.split(prepare_command('make train-ddp NPROC=4 ARGS="--epochs 300"', variables))
    assert make[:4] == ["make", "-o", "install", "train-ddp"] and "NPROC=2" in make
    assert make[-1].startswith("ARGS=") and "--epochs 1" in make[-1] and "300" not in make[-1]
    lgg = prepare_command(
        "tumorseg launch --nproc-per-node 4 --bundle bundles/lgg_flair_segmentation_2d -- "
        "--epochs 100",
        variables,
    )
    assert "--filters" not in lgg and "--nproc-per-node 2" in lgg


def test_each_placeholder_is_replaced_once(tmp_path: Path) -> None:
    """A substituted path that ends like another placeholder is not substituted again
    (``/data/new_kaggle_3m`` became ``<data>/kaggle_3m``, then ``<data><data>/kaggle_3m``)."""
    data = tmp_path / "data"  # as in the slow test: the folder itself ends in /data
    block = Block("README.md", 1, "bash", "infer --input /data/new_kaggle_3m /data/kaggle_3m", None)
    tokens = shlex.split(prepare_block(block, data))
    assert tokens[-2:] == [f"{data}/kaggle_3m", f"{data}/kaggle_3m"]


# ----------------------------------------------------------------------------- running them


def _synthetic_data(root: Path) -> Path:
    from tumorseg.data.manifest import build_manifest, write_manifest
    from tumorseg.data.synthetic import generate_dataset
    from tumorseg.data.synthetic_lgg import generate_kaggle_3m

    generate_dataset(root / "brats", num_cases=6, shape=(32, 32, 32), seed=1)
    generate_dataset(root / "new_studies", num_cases=2, shape=(32, 32, 32), seed=2)
    generate_kaggle_3m(root / "kaggle_3m", num_patients=4, shape=(64, 64, 16), seed=3)
    write_manifest(build_manifest(root / "brats", num_folds=3), root / "brats_manifest.json")
    return root


@pytest.mark.slow
@pytest.mark.timeout(7200)
def test_readme_blocks_run(tmp_path: Path) -> None:
    """Every runnable block, documents in :data:`DOCUMENTS` order, in one scratch checkout
    where a short ``make demo`` has run (the README's fine-tuning starts from its model)."""
    work = scratch_checkout(tmp_path / "repo")
    data = _synthetic_data(tmp_path / "data")
    demo = ["tumorseg", "demo", "--workdir", "demo", "--epochs", "1", "--num-train", "4"]
    subprocess.run([*demo, "--size", "32"], cwd=work, env=scratch_env(), check=True)
    for document in DOCUMENTS:
        _run_document(document, work, data)


def _run_document(document: str, work: Path, data: Path) -> None:
    variables: dict[str, str] = {}
    for block in readme_blocks(document):
        if block.lang not in SHELL:
            continue
        script = prepare_block(block, data, variables)
        if block.illustrative is not None:
            continue
        done = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", script],
            cwd=work,
            env=scratch_env(),
            capture_output=True,
            text=True,
            timeout=3600,
            check=False,
        )
        assert done.returncode == 0, (
            f"{block.name} failed (exit {done.returncode}):\n{script}\n{done.stderr[-3000:]}"
        )


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_device_cpu_override_of_the_readme_trains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--device cpu`` (a string, as MONAI's command line passes it) through a whole epoch
    with validation and checkpointing: it once failed with ``'str' object has no attribute
    'type'``."""
    from tumorseg.bundle_run import main as bundle_main
    from tumorseg.checkpoint_meta import read_meta
    from tumorseg.data.synthetic import generate_dataset

    generate_dataset(tmp_path / "data", num_cases=2, shape=(32, 32, 32), seed=5)
    monkeypatch.chdir(tmp_path)
    cfg = REPO / "bundles" / "brats_mri_segmentation" / "configs"
    args = ["run", "training", "--meta_file", str(cfg / "metadata.json")]
    args += ["--config_file", str(cfg / "train.json"), "--bundle_root", str(cfg.parent)]
    args += ["--dataset_dir", str(tmp_path / "data"), "--num_folds", "2", "--device", "cpu"]
    args += ["--ckpt_dir", str(tmp_path / "models"), "--log_mlflow", "false"]
    for key, value in TINY["brats_mri_segmentation"].items():
        args += [f"--{key}", value]
    args[args.index("--filters") + 1] = "[4,8,16,32,64]"
    assert bundle_main(args) == 0
    meta = read_meta(tmp_path / "models" / "model.pt")
    assert meta is not None and meta.network_settings == {"filters": [4, 8, 16, 32, 64]}
    assert meta.roi_size == [32, 32, 32] and meta.label_convention == "brats2021"
