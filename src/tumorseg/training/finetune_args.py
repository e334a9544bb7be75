"""The command behind ``make finetune``: the bundle's training set up from the pretrained file.

A self-describing checkpoint (:mod:`tumorseg.checkpoint_meta`) says which network it holds and
with which settings (``filters`` ...), ``pixdim`` and ``roi_size``; :func:`finetune_command`
puts them on the training's command line unless the user's own overrides set them, refuses an
override or ``NETWORK`` that contradicts the checkpoint (both values named), picks the
network file of the checkpoint's network when ``NETWORK`` is not given, and passes
``DATASET`` as ``--datalist`` (a ``.json`` manifest, which records its ``dataset_dir``) or
``--dataset_dir``. Plain weights (MedicalNet, ``model_swinvit.pt``, older files) change
nothing: the bundle's defaults and ``NETWORK`` apply, as before.

``python -m tumorseg.training.finetune_args --bundle B --pretrained P [--network N]
[--dataset D] -- ARGS...`` prints the command (one shell line) for the Makefile to run.
"""

from __future__ import annotations

import argparse
import ast
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tumorseg.checkpoint_meta import network_config_file, read_meta, resolve_settings

__all__ = ["DEFAULT_NETWORK", "finetune_command", "main", "parse_overrides"]

#: The network file of a fine-tuning from plain weights when ``NETWORK`` is not given.
DEFAULT_NETWORK = "unet"


def _value(text: str) -> Any:
    """A command-line value as MONAI's CLI reads it: JSON / a Python literal, else the text."""
    for parse in (json.loads, ast.literal_eval):
        try:
            return parse(text)
        except (ValueError, SyntaxError):
            continue
    return text


def parse_overrides(args: Sequence[str], where: str = "ARGS") -> dict[str, Any]:
    """``--key value`` / ``--key=value`` pairs of a bundle command line -> ``{key: value}``,
    each value read as MONAI's CLI reads it (JSON / a Python literal, else the text).

    Args:
        args: the command-line items.
        where: what the items are, for the error message (``make finetune``'s ``ARGS``,
            ``tumorseg cv``'s bundle overrides).

    Raises:
        ValueError: an argument that is not ``--key``, or a ``--key`` without its value.
    """
    out: dict[str, Any] = {}
    items = list(args)
    i = 0
    while i < len(items):
        item = items[i]
        if not item.startswith("--") or len(item) < 3:
            raise ValueError(f"bundle overrides look like --key VALUE, got {item!r} in {where}")
        key, sep, text = item[2:].partition("=")
        if not sep:
            if i + 1 >= len(items):
                raise ValueError(f"--{key} in {where} has no value")
            text = items[i + 1]
            i += 1
        out[key] = _value(text)
        i += 1
    return out


def _network_name(path: Path) -> str | None:
    declared = json.loads(path.read_text()).get("network_name")
    return declared if isinstance(declared, str) else None


def finetune_command(
    bundle: str | Path,
    pretrained: str | Path,
    *,
    network: str | None = None,
    dataset: str | Path | None = None,
    args: Sequence[str] = (),
    python: str = sys.executable,
) -> list[str]:
    """The training command of a fine-tuning from ``pretrained``.

    Args:
        bundle: the bundle folder (with ``configs/finetune.json``).
        pretrained: the pretrained checkpoint.
        network: a ``configs/networks/<network>.json`` name; None: the checkpoint's network
            (its ``network_name``), else :data:`DEFAULT_NETWORK`.
        dataset: a manifest (``.json``) or a data folder; None for the bundle's default.
        args: the user's own bundle overrides (``--key value``), passed last.
        python: the interpreter to run.

    Raises:
        FileNotFoundError: no such checkpoint, bundle or network file (the choices listed).
        ValueError: an override or network that contradicts the checkpoint (both values
            named), or malformed ``args``.
    """
    root = Path(bundle)
    cfg = root / "configs"
    if not (cfg / "finetune.json").is_file():
        raise FileNotFoundError(f"{cfg / 'finetune.json'} not found: BUNDLE={bundle} is no bundle")
    pretrained = Path(pretrained).expanduser()
    if not pretrained.is_file():
        raise FileNotFoundError(f"pretrained checkpoint not found: {pretrained}; PRETRAINED=path")
    meta = read_meta(pretrained)
    requested = parse_overrides(args)
    choices = sorted(p.stem for p in (cfg / "networks").glob("*.json"))
    if network:
        net_file = cfg / "networks" / f"{network}.json"
        if not net_file.is_file():
            raise FileNotFoundError(f"unknown NETWORK={network}; one of: {' '.join(choices)}")
        if meta is not None and _network_name(net_file) != meta.network_name:
            raise ValueError(
                f"NETWORK={network} builds {_network_name(net_file)} but {pretrained} holds a "
                f"{meta.network_name} network; drop NETWORK (the checkpoint's network is used) "
                "or pass weights of that network"
            )
    elif meta is not None:
        found = network_config_file(root, meta.network_name)
        if found is None:
            raise ValueError(
                f"{pretrained} holds a {meta.network_name} network, which bundle {root} has no "
                f"network file for (configs/networks: {' '.join(choices)})"
            )
        net_file = found
    else:
        net_file = cfg / "networks" / f"{DEFAULT_NETWORK}.json"
    files = [cfg / "train.json", net_file, cfg / "finetune.json"]
    cmd = [python, "-m", "tumorseg.bundle_run", "run", "training"]
    cmd += ["--meta_file", str(cfg / "metadata.json")]
    cmd += ["--config_file", json.dumps([str(f) for f in files], separators=(",", ":"))]
    cmd += ["--logging_file", str(cfg / "logging.conf"), "--bundle_root", str(root)]
    cmd += ["--pretrained", str(pretrained)]
    if dataset:
        cmd += ["--datalist" if str(dataset).endswith(".json") else "--dataset_dir", str(dataset)]
    if meta is not None:
        for key, value in resolve_settings(meta, requested, checkpoint=pretrained).items():
            cmd += [f"--{key}", json.dumps(value).replace(" ", "")]
    return cmd + list(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Print the fine-tuning command for the Makefile; exit 2 with one line on a bad input."""
    parser = argparse.ArgumentParser(prog="python -m tumorseg.training.finetune_args")
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--pretrained", required=True)
    parser.add_argument("--network", default="")
    parser.add_argument("--dataset", default="")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    ns = parser.parse_args(argv)
    extra = ns.args[1:] if ns.args[:1] == ["--"] else ns.args
    try:
        cmd = finetune_command(
            ns.bundle,
            ns.pretrained,
            network=ns.network or None,
            dataset=ns.dataset or None,
            args=extra,
        )
    except (FileNotFoundError, ValueError) as err:
        print(f"make finetune: error: {err}", file=sys.stderr)
        return 2
    print(shlex.join(cmd))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
