"""Patient-level cross-validation folds: which patient a case belongs to, and its fold.

Folds are assigned per patient, so the timepoints of one patient never straddle training and
validation. The patient of a case is, by default, its BraTS 2023+ id without the timepoint;
custom datasets pass a :data:`PatientKey`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping
from typing import TypeAlias

__all__ = [
    "PatientKey",
    "assign_folds",
    "brats_patient_id",
    "patient_key",
]

# BraTS 2023+ ids are <challenge>-<patient>-<timepoint>, e.g. BraTS-GLI-00001-000 / -001.
_BRATS_TIMEPOINT = re.compile(r"^(BraTS-[A-Za-z]+-\d+)-\d{3}$")

#: How a case id maps to its patient: a function, a ``{case_id: patient}`` mapping, a regular
#: expression (its group ``patient``, else its first group, else the whole match) or None for
#: :func:`brats_patient_id`.
PatientKey: TypeAlias = Callable[[str], str] | Mapping[str, str] | str | re.Pattern[str] | None


def brats_patient_id(case_id: str) -> str:
    """The patient of a case: BraTS 2023+ ids lose their timepoint, other ids are patients.

    ``"BraTS-GLI-00001-001"`` -> ``"BraTS-GLI-00001"``; ``"BraTS2021_00000"`` is unchanged.
    """
    match = _BRATS_TIMEPOINT.match(case_id)
    return match.group(1) if match else case_id


def patient_key(key: PatientKey = None) -> Callable[[str], str]:
    r"""The case-id -> patient function of a :data:`PatientKey`.

    Args:
        key: None (:func:`brats_patient_id`); a function; a mapping ``{case_id: patient}``
            (every case must be in it); or a regular expression searched in the case id,
            whose named group ``patient`` (else group 1, else the whole match) is the patient,
            e.g. ``r"^(sub-\d+)_ses-"`` for ``sub-01_ses-2``.

    Returns:
        A function that raises ``ValueError`` naming the case when it has no patient.

    Raises:
        ValueError: ``key`` is an invalid regular expression.
        TypeError: ``key`` is of another type.
    """
    if key is None:
        return brats_patient_id
    if isinstance(key, str | re.Pattern):
        try:
            pattern = re.compile(key)
        except re.error as err:
            raise ValueError(
                f"patient_id {key!r} is not a valid regular expression: {err}"
            ) from err
        group: str | int = (
            "patient" if "patient" in pattern.groupindex else (1 if pattern.groups else 0)
        )

        def from_regex(case_id: str) -> str:
            match = pattern.search(case_id)
            if match is None or not match.group(group):
                raise ValueError(
                    f"case {case_id!r}: patient_id pattern {pattern.pattern!r} does not match it"
                )
            return str(match.group(group))

        return from_regex
    if isinstance(key, Mapping):
        table = dict(key)

        def from_mapping(case_id: str) -> str:
            if case_id not in table:
                raise ValueError(f"case {case_id!r} has no entry in the patient_id mapping")
            return str(table[case_id])

        return from_mapping
    if callable(key):
        return key
    raise TypeError(
        f"patient_id must be a function, a mapping, a regular expression or None, got "
        f"{type(key).__name__}"
    )


def _order_key(seed: int, patient: str) -> str:
    # A hash rather than random.shuffle: the order of a patient does not depend on which other
    # patients exist or on the Python version, only on (seed, patient id).
    return hashlib.sha256(f"{seed}:{patient}".encode()).hexdigest()


def assign_folds(
    case_ids: Iterable[str],
    *,
    num_folds: int = 5,
    seed: int = 0,
    patient_id: PatientKey = None,
) -> dict[str, int]:
    """Seeded, patient-level, balanced cross-validation folds.

    Patients are put in a seeded pseudo-random order (SHA-256 of ``"<seed>:<patient>"``), the
    largest first, and each goes to the fold that holds the fewest cases so far (the lowest
    index on ties). All cases of one patient share a fold; fold sizes differ by at most one
    when every patient has one case. The result depends only on the set of ids and the seed,
    not on their order.

    Args:
        case_ids: the case ids (unique).
        num_folds: number of folds (at least 1).
        seed: changes the assignment.
        patient_id: maps a case id to its patient (see :func:`patient_key`); default
            :func:`brats_patient_id`.

    Returns:
        Case id to fold index in ``range(num_folds)``, keys sorted.

    Raises:
        ValueError: ``num_folds`` < 1, a repeated case id, or cases the patient key does not
            cover (all of them listed).
    """
    if isinstance(num_folds, bool) or not isinstance(num_folds, int) or num_folds < 1:
        raise ValueError(f"num_folds must be an integer >= 1, got {num_folds!r}")
    ids = list(case_ids)
    repeated = sorted({c for c in ids if ids.count(c) > 1}) if len(set(ids)) < len(ids) else []
    if repeated:
        raise ValueError(f"case ids must be unique; repeated: {repeated[:10]}")
    patients: dict[str, list[str]] = {}
    for case_id, patient in _patients(ids, patient_id).items():
        patients.setdefault(patient, []).append(case_id)
    order = sorted(patients, key=lambda p: (-len(patients[p]), _order_key(seed, p)))
    sizes = [0] * num_folds
    folds: dict[str, int] = {}
    for patient in order:
        fold = min(range(num_folds), key=lambda f: (sizes[f], f))
        for case_id in patients[patient]:
            folds[case_id] = fold
        sizes[fold] += len(patients[patient])
    return dict(sorted(folds.items()))


def _patients(case_ids: Iterable[str], key: PatientKey) -> dict[str, str]:
    """``{case_id: patient}`` in case-id order; every uncovered case named in one error."""
    to_patient = patient_key(key)
    out: dict[str, str] = {}
    failures: list[str] = []
    for case_id in sorted(case_ids):
        try:
            out[case_id] = str(to_patient(case_id))
        except (KeyError, ValueError) as err:
            failures.append(str(err.args[0]) if err.args else case_id)
    if failures:
        more = f" (and {len(failures) - 10} more)" if len(failures) > 10 else ""
        raise ValueError(
            f"{len(failures)} case(s) without a patient: " + "; ".join(failures[:10]) + more
        )
    return out
