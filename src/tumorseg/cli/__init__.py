"""`tumorseg <verb>`: argument parsing only; every verb calls a typed function of the package.

Each verb lives in its own module of this package and exposes ``register(subparsers)``,
which adds its parser and sets ``func`` (a callable taking the parsed namespace and
returning an exit code). Heavy imports (torch, monai) happen inside ``func`` so that
``tumorseg --help`` stays fast.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys
from collections.abc import Sequence

__all__ = ["main", "build_parser", "CliError"]

#: Verb modules, in the order `tumorseg --help` lists them.
_VERBS = (
    "synth",
    "manifest",
    "demo",
    "infer",
    "export",
    "evaluate",
    "compare",
    "launch",
    "view",
    "report",
)


class CliError(Exception):
    """An error to show the user as one line, without a traceback."""


_OS_FIXES = {
    errno.ENOSPC: "free space on that disk or choose another folder",
    errno.EDQUOT: "free space within your quota or choose another folder",
    errno.EROFS: "choose a writable folder",
    errno.EACCES: "check the permissions or choose another folder",
    errno.EPERM: "check the permissions or choose another folder",
}


def _os_error(err: OSError) -> str:
    """One line for an OS error: the path, the reason and the fix (messages of tumorseg's own
    errors, which already say all that, are kept)."""
    if not err.strerror or type(err).__str__ is not OSError.__str__:
        return str(err)
    where = f"{err.filename}: " if err.filename else ""
    fix = _OS_FIXES.get(err.errno or 0)
    return f"{where}{err.strerror}" + (f"; {fix}" if fix else "")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-parser per verb."""
    from tumorseg import __version__

    parser = argparse.ArgumentParser(
        prog="tumorseg", description="Brain-tumour segmentation in MRI on MONAI bundles."
    )
    parser.add_argument("--version", action="version", version=f"tumorseg {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="<verb>", required=True)
    for verb in _VERBS:
        try:
            module = importlib.import_module(f"tumorseg.cli.{verb}")
        except ModuleNotFoundError as err:
            if err.name == f"tumorseg.cli.{verb}":
                continue  # verb not built yet in this checkout
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tumorseg`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (CliError, FileNotFoundError, ValueError) as err:
        # Expected user errors: one clear line, no traceback from deep inside a library.
        print(f"tumorseg {args.verb}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        # A full disk, a read-only folder, a vanished mount: the path and what to do.
        print(f"tumorseg {args.verb}: error: {_os_error(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tumorseg {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
