"""`tumorseg <verb>`: argument parsing only; every verb calls a typed function of the package.

Each verb lives in its own module of this package and exposes ``register(subparsers)``,
which adds its parser and sets ``func`` (a callable taking the parsed namespace and
returning an exit code). Heavy imports (torch, monai) happen inside ``func`` so that
``tumorseg --help`` stays fast.

Errors a user can fix are one line (a failure inside a bundle's config: at most three, see
:mod:`tumorseg.config_errors`) and exit code 2; ``tumorseg --debug <verb>`` or
``TUMORSEG_DEBUG=1`` shows the full traceback instead.
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
_CV_VERBS = ("cv", "ensemble", "postprocess", "export-nnunet")  # cross-validation, nnU-Net


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
    parser.add_argument(
        "--debug", action="store_true", help="show full tracebacks (also TUMORSEG_DEBUG=1)"
    )
    sub = parser.add_subparsers(dest="verb", metavar="<verb>", required=True)
    for verb in (*_VERBS, *_CV_VERBS):
        try:
            module = importlib.import_module(f"tumorseg.cli.{verb.replace('-', '_')}")
        except ModuleNotFoundError as err:
            if err.name == f"tumorseg.cli.{verb.replace('-', '_')}":
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
    except KeyboardInterrupt:
        print(f"tumorseg {args.verb}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        # Imported here: `tumorseg --help` must not wait for MONAI.
        from tumorseg.config_errors import debug_enabled, format_config_error

        if args.debug or debug_enabled():
            raise
        # A failure inside a bundle's config: the original message, the config id, the fix.
        prefix = f"tumorseg {args.verb}: error"
        message = format_config_error(err, prefix=prefix) or _user_error(err, prefix)
        if message is None:
            raise
        print(message, file=sys.stderr)
        return 2


def _user_error(err: Exception, prefix: str) -> str | None:
    """One line for an expected user error, None for anything else (a bug: traceback)."""
    if isinstance(err, CliError | FileNotFoundError | ValueError):
        # Expected user errors: one clear line, no traceback from deep inside a library.
        return f"{prefix}: {err}"
    if isinstance(err, OSError):
        # A full disk, a read-only folder, a vanished mount: the path and what to do.
        return f"{prefix}: {_os_error(err)}"
    return None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
