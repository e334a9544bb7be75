"""``python -m tumorseg.bundle_run run training ...``: MONAI's bundle CLI with one-line errors.

Takes exactly the arguments of ``python -m monai.bundle`` (``run``, ``run_workflow``,
``ckpt_export``, ``verify_metadata``, ``verify_net_in_out``) and runs the same functions; a
failure inside the bundle's config is reported in at most three lines by
:func:`tumorseg.config_errors.format_config_error` (the original message, the config id, the
fix) with exit code 1, instead of MONAI's nested traceback. ``--debug`` (anywhere on the
command line) or ``TUMORSEG_DEBUG=1`` shows the full traceback. ``make train``, ``make
finetune`` and ``make demo`` run the bundle through it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import fire
from monai.bundle import scripts

from tumorseg.config_errors import debug_enabled, format_config_error

__all__ = ["COMMANDS", "main"]

#: The subcommands of ``python -m monai.bundle`` this wrapper offers.
COMMANDS = ("run", "run_workflow", "ckpt_export", "verify_metadata", "verify_net_in_out")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one MONAI bundle command; returns the exit code (1: a config failure, reported)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or debug_enabled()
    args = [a for a in args if a != "--debug"]
    commands = {name: getattr(scripts, name) for name in COMMANDS}
    try:
        fire.Fire(commands, command=args, name="tumorseg.bundle_run")
    except Exception as err:
        message = None if debug else format_config_error(err, prefix="bundle run: error")
        if message is None:
            raise
        print(message, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
