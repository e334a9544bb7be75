"""tumorseg.data: dataset discovery, validation and manifests.

:mod:`tumorseg.data.discovery` finds the cases of a dataset folder and checks them;
:mod:`tumorseg.data.manifest` turns them into manifest files and MONAI datalists.
"""

from tumorseg.data.discovery import (
    Case,
    CaseProblem,
    DatasetError,
    detect_layout,
    discover_cases,
    validate_case,
)
from tumorseg.data.manifest import (
    ManifestError,
    assign_folds,
    brats_patient_id,
    build_manifest,
    datalist_from_directory,
    load_datalist,
    load_manifest,
    manifest_from_case_ids,
    validate_manifest_against,
    write_manifest,
)

__all__ = [
    "Case",
    "CaseProblem",
    "DatasetError",
    "ManifestError",
    "assign_folds",
    "brats_patient_id",
    "build_manifest",
    "datalist_from_directory",
    "detect_layout",
    "discover_cases",
    "load_datalist",
    "load_manifest",
    "manifest_from_case_ids",
    "validate_case",
    "validate_manifest_against",
    "write_manifest",
]
