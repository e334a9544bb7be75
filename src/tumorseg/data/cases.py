"""A case and what can be wrong with it: the types that discovery and validation share."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "IMAGE_EXTENSIONS",
    "NIFTI_EXTENSIONS",
    "Case",
    "CaseProblem",
    "DatasetError",
    "split_extension",
]

#: Extensions of the built-in layouts (BraTS and MSD ship NIfTI only).
NIFTI_EXTENSIONS: tuple[str, ...] = (".nii.gz", ".nii")

#: Extensions accepted with an explicit ``modality_suffixes`` mapping (read with ITK).
IMAGE_EXTENSIONS: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass(frozen=True)
class CaseProblem:
    """One thing wrong with one file of one case.

    Args:
        case_id: the case the file belongs to.
        file: the file, as ``<folder>/<name>`` (enough to find it under the dataset root).
        reason: what is wrong, with the values found.
    """

    case_id: str
    file: str
    reason: str

    def __str__(self) -> str:
        return f"{self.case_id}: {self.file}: {self.reason}"


class DatasetError(ValueError):
    """A dataset that cannot be used as it is.

    The message lists every problem, one ``<case_id>: <file>: <reason>`` per line, after a
    one-line summary, so that all bad cases can be fixed in one go.

    Attributes:
        problems: the problems found, in case order (empty for folder-level errors).
    """

    def __init__(self, problems: Iterable[CaseProblem] = (), *, message: str | None = None):
        self.problems: list[CaseProblem] = list(problems)
        if message is None:
            n_cases = len({p.case_id for p in self.problems})
            message = (
                f"{len(self.problems)} problem(s) in {n_cases} case(s); fix them or leave the "
                "cases out (skip_bad=True, CLI --skip-bad):"
            )
        self.summary = message
        lines = [message, *(str(p) for p in self.problems)]
        super().__init__("\n".join(lines))

    def __reduce__(self) -> tuple[Any, ...]:
        # The default rebuilds from args (the joined text), which would lose .problems when the
        # error crosses a process boundary (data-loader workers, multiprocessing pools).
        return (_rebuild_dataset_error, (self.problems, self.summary))


def _rebuild_dataset_error(problems: list[CaseProblem], summary: str) -> DatasetError:
    return DatasetError(problems, message=summary)


@dataclass(frozen=True)
class Case:
    """One study: its images in :data:`CHANNEL_ORDER` and its optional label map.

    Args:
        case_id: the case folder name (BraTS) or file name without extension (MSD).
        images: four files in :data:`CHANNEL_ORDER` (FLAIR, T1, T1ce, T2), or one 4D file
            for MSD. A missing modality appears as the path it was expected at.
        label: the label map, or None when the case has none (a test case).
        layout: ``brats2021``, ``brats2023``, ``msd`` or ``custom``.
        issues: problems seen while listing the folder (for example two files for one
            modality); :func:`validate_case` reports them.
    """

    case_id: str
    images: tuple[Path, ...]
    label: Path | None
    layout: str
    issues: tuple[CaseProblem, ...] = field(default=(), compare=False, repr=False)


def split_extension(name: str, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> tuple[str, str]:
    """Split a file name into stem and image extension (``a.nii.gz`` -> ``("a", ".nii.gz")``).

    Returns:
        ``(stem, extension)``, or ``(name, "")`` when the name has none of ``extensions``.
    """
    lower = name.lower()
    for ext in sorted(extensions, key=len, reverse=True):
        if lower.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)], name[-len(ext) :]
    return name, ""


def _short(path: Path) -> str:
    """``<parent>/<name>``: unique within a case, short enough for one line per problem."""
    return "/".join(path.parts[-2:])
