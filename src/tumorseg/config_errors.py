"""Failures inside a bundle's config, told in at most three lines.

MONAI wraps an error raised while a config item is evaluated or instantiated in
``RuntimeError("Failed to evaluate ConfigExpression: ...")``, once per level of references,
so a wrong ``--dataset_dir`` or a checkpoint that does not fit arrives as a 40-line traceback
whose useful line is in the middle. :func:`format_config_error` finds the original error (the
end of the ``__cause__`` chain), the config id whose evaluation raised it (the innermost
MONAI config item on the traceback) and what that item reads (its ``@`` references), and says
what to change::

    error: FileNotFoundError: dataset_dir '/data/x' is not a folder; pass --dataset_dir ...
      in config id 'data' (reads dataset_dir, datalist, fold, num_folds, demo_dir)
      fix: correct the value of 'data' or of what it reads, e.g. --dataset_dir VALUE ...

``TUMORSEG_DEBUG=1`` (or ``--debug`` on ``tumorseg`` and :mod:`tumorseg.bundle_run`) shows the
full traceback instead.
"""

from __future__ import annotations

import os
import re
from types import TracebackType
from typing import Any

from monai.bundle.config_item import ConfigItem
from monai.bundle.config_parser import ConfigParser

__all__ = [
    "DEBUG_ENV",
    "ConfigFailure",
    "debug_enabled",
    "find_config_failure",
    "format_config_error",
]

#: Environment variable that turns on full tracebacks (any value but ``""``/``0``/``false``).
DEBUG_ENV = "TUMORSEG_DEBUG"

# ``@id`` in raw configs; ``__local_refs['id']`` once MONAI has substituted the references.
_REF = re.compile(r"@([A-Za-z_][\w#]*)|__local_refs\[['\"]([^'\"]+)['\"]\]")
_MAX_EXPR = 90


def debug_enabled() -> bool:
    """Whether :data:`DEBUG_ENV` asks for full tracebacks."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


class ConfigFailure:
    """Where a config failed: the original error, the config id and the item's text.

    Args:
        error: the original exception (the end of the ``__cause__`` chain).
        config_id: the id of the innermost config item being evaluated, or ``""``.
        source: that item's config (an expression string, a component's ``_target_``).
    """

    def __init__(self, error: BaseException, config_id: str, source: str) -> None:
        self.error = error
        self.config_id = config_id
        self.source = source

    @property
    def references(self) -> list[str]:
        """The top-level ids the failing item reads (``@epochs`` -> ``epochs``)."""
        seen: list[str] = []
        for at, local in _REF.findall(self.source):
            top = (at or local).split("#")[0]
            if top not in seen:
                seen.append(top)
        return seen


def _chain(err: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    current: BaseException | None = err
    while current is not None and current not in out:
        out.append(current)
        nxt = current.__cause__
        if nxt is None and not current.__suppress_context__:
            nxt = current.__context__
        current = nxt
    return out


def _frame_owners(tb: TracebackType | None) -> list[Any]:
    """``self`` of every method on a traceback, outermost first."""
    owners = []
    while tb is not None:
        owners.append(tb.tb_frame.f_locals.get("self"))
        tb = tb.tb_next
    return owners


def _source(item: ConfigItem, parsers: list[ConfigParser]) -> str:
    """The item's config as written (``@`` references kept) where its parser is known."""
    config: Any = item.get_config()
    for parser in parsers:
        try:
            config = parser.get(item.get_id(), config)
            break
        except Exception:  # noqa: S112 - a parser of another config: try the next
            continue
    if isinstance(config, dict):
        return " ".join(f"{k}={v}" for k, v in config.items())
    return str(config)


def find_config_failure(err: BaseException) -> ConfigFailure | None:
    """The config item and original error behind ``err``; None when no config item raised.

    A failure is a config failure when MONAI wrapped it (``err`` was raised from another
    error) and a MONAI config item is on the traceback. An error a caller already unwrapped
    (``raise cause from None``) is its own message and not reported here.
    """
    chain = _chain(err)
    if len(chain) < 2:
        return None
    owners = [owner for exc in chain for owner in _frame_owners(exc.__traceback__)]
    items = [o for o in owners if isinstance(o, ConfigItem)]
    if not items:
        return None
    parsers = [o for o in owners if isinstance(o, ConfigParser)]
    item = items[-1]
    return ConfigFailure(chain[-1], str(item.get_id()), _source(item, parsers))


def _message(error: BaseException) -> str:
    """The error's message on one line: its first line, and its last when they differ (the
    last line of a tumorseg message is its hint)."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    text = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
    if isinstance(error, ValueError | OSError):
        return text  # tumorseg's own messages say what went wrong; the type adds nothing
    return f"{type(error).__name__}: {text}"


def _fix(failure: ConfigFailure) -> str:
    top = failure.config_id.split("#")[0]
    names = [r for r in failure.references if r != top] + [top]
    options = " or ".join(f"--{name} VALUE" for name in names[:3])
    if isinstance(failure.error, FileNotFoundError):
        return f"point the path at an existing file or folder ({options} on the command line)"
    return (
        f"correct the value of {top!r} or of what it reads ({options} on the command line, "
        f"or the config file); run with {DEBUG_ENV}=1 for the full traceback"
    )


def format_config_error(err: BaseException, *, prefix: str = "error") -> str | None:
    """At most three lines for a failure inside a bundle config; None for other errors.

    Line 1 is the original error's type and message, line 2 the config id (and the item's
    expression, shortened, with the ids it reads), line 3 the fix.

    Args:
        err: the exception caught around a config's parsing or a workflow's run.
        prefix: the start of the first line (``"tumorseg infer: error"``).
    """
    failure = find_config_failure(err)
    if failure is None:
        return None
    source = " ".join(failure.source.split())
    if len(source) > _MAX_EXPR:
        source = source[: _MAX_EXPR - 3] + "..."
    refs = failure.references
    where = f"  in config id {failure.config_id!r}: {source}"
    if refs:
        where += f" (reads {', '.join(refs)})"
    return "\n".join([f"{prefix}: {_message(failure.error)}", where, f"  fix: {_fix(failure)}"])
