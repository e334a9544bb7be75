"""DICOM Segmentation output: one SEG object per case, on the source series' own frames.

:func:`write_dicom_seg` turns a label map predicted on a DICOM study's grid
(:mod:`tumorseg.inference.dicom_input`) into a DICOM Segmentation (``highdicom``), which 3D
Slicer, OHIF and PACS viewers display over the source images:

* one segment per tumour class of the label convention (NCR, ED, ET; RC in ``brats2024``),
  each with coded concepts (category SNOMED CT *Morphologically abnormal structure*; type
  SNOMED CT *Necrosis*, *Edema*, *Neoplasm*, and for the resection cavity the private code
  of :data:`RESECTION_CAVITY`), the viewer's colour (:data:`~tumorseg.conventions.CLASS_COLOURS`)
  and the algorithm that made it (name, tumorseg version, bundle version and backend as
  parameters);
* frames referencing the FLAIR series instance by instance (``source_images``: the mask has
  FLAIR's grid), and the T1, T1ce and T2 series as further sources, so the SEG names the
  Study, Series and SOP Instance UIDs of all four inputs;
* written atomically (:func:`tumorseg.io.atomic_path`), so "the SEG exists" means "the case
  is done", as for NIfTI masks.

``highdicom`` and ``pydicom`` come with the ``dicom`` extra (``pip install 'tumorseg[dicom]'``);
without them the writer says so.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tumorseg import __version__
from tumorseg.conventions import CLASS_COLOURS, LabelConvention, get_convention
from tumorseg.inference.dicom_input import DicomStudy
from tumorseg.io import atomic_path, read_json
from tumorseg.io_dicom import LPS_TO_RAS

__all__ = [
    "DICOM_SEG_SUFFIX",
    "PRIVATE_SCHEME",
    "RESECTION_CAVITY",
    "SEGMENT_TYPES",
    "SegAlgorithm",
    "import_dicom_packages",
    "read_dicom_seg_labels",
    "write_dicom_seg",
]

#: File name of a case's SEG: ``<case_id>.seg.dcm``.
DICOM_SEG_SUFFIX = ".seg.dcm"

#: tumorseg's private coding scheme: DICOM PS3.3 section 8.2 reserves designators that begin
#: with ``99`` for private schemes; a SEG that uses it names it in its Coding Scheme
#: Identification Sequence.
PRIVATE_SCHEME = "99TUMORSEG"

#: The resection cavity's segmented property type ``(code, scheme, meaning)``. No standard
#: code for it was found: not in pydicom's code dictionary (``pydicom.sr.codedict``, every
#: scheme, pydicom 3.0.2), nor in DICOM's Segmentation Property Type or Lesion Segmentation
#: Type context groups (CID 7151, 7159), nor in highdicom. Rather than invent a SNOMED CT
#: code it is tumorseg's private code, with the BraTS 2024 name as its meaning.
RESECTION_CAVITY = ("RC", PRIVATE_SCHEME, "Resection cavity")

#: Class -> segmented property type ``(code, coding scheme, meaning)``.
SEGMENT_TYPES: dict[str, tuple[str, str, str]] = {
    "NCR": ("6574001", "SCT", "Necrosis"),
    "ED": ("79654002", "SCT", "Edema"),
    "ET": ("108369006", "SCT", "Neoplasm"),
    "RC": RESECTION_CAVITY,
}


_CLASS_NAMES = {
    "NCR": "necrotic / non-enhancing tumour core",
    "ED": "peritumoural edema",
    "ET": "enhancing tumour",
    "RC": "resection cavity",
}
_CATEGORY = ("49755003", "Morphologically abnormal structure")


def import_dicom_packages() -> tuple[Any, Any]:
    """``(highdicom, pydicom)``, or an error naming the extra to install."""
    try:
        import highdicom
        import pydicom
    except ImportError as err:
        raise ImportError(
            f"DICOM-SEG output needs highdicom and pydicom ({err.name} is missing); install "
            "them with: pip install 'tumorseg[dicom]'"
        ) from None
    return highdicom, pydicom


@dataclass(frozen=True)
class SegAlgorithm:
    """The algorithm a SEG names as its source.

    Attributes:
        name: the bundle's name.
        bundle_version: the bundle's ``metadata.json`` version.
        backend: what ran the network (``pytorch``, ``onnxruntime``).
        version: tumorseg's version.
    """

    name: str = "tumorseg"
    bundle_version: str = "unknown"
    backend: str = "pytorch"
    version: str = __version__

    @classmethod
    def from_bundle(
        cls, bundle: str | os.PathLike[str], *, backend: str = "pytorch"
    ) -> SegAlgorithm:
        """Name and version from ``<bundle>/configs/metadata.json`` (defaults when absent)."""
        path = Path(bundle) / "configs" / "metadata.json"
        meta = read_json(path, what="bundle metadata") if path.is_file() else {}
        return cls(
            name=str(meta.get("name") or Path(bundle).name),
            bundle_version=str(meta.get("version", "unknown")),
            backend=backend,
        )


def _read_headers(pydicom: Any, files: tuple[Path, ...]) -> list[Any]:
    return [pydicom.dcmread(str(f), stop_before_pixels=True) for f in files]


def _private_schemes(hd: Any, descriptions: list[Any]) -> list[Any] | None:
    """The Coding Scheme Identification items of the private schemes the segments use."""
    used = {d.segmented_property_type.scheme_designator for d in descriptions}
    if PRIVATE_SCHEME not in used:
        return None
    from highdicom.coding_schemes import CodingSchemeIdentificationItem

    return [
        CodingSchemeIdentificationItem(
            PRIVATE_SCHEME,
            name="tumorseg label classes without a standard code",
            responsible_organization="tumorseg",
            version=__version__,
        )
    ]


def write_dicom_seg(
    path: str | os.PathLike[str],
    label: np.ndarray,
    label_convention: str | LabelConvention,
    study: DicomStudy,
    *,
    algorithm: SegAlgorithm | None = None,
) -> Path:
    """Write ``label`` (on the study's FLAIR grid) as a DICOM Segmentation, atomically.

    Args:
        path: the SEG file (``<case_id>.seg.dcm``).
        label: ``(X, Y, Z)`` label map in ``label_convention``, ``Z`` in the order of
            ``study.reference.files``.
        label_convention: the numbers of ``label``'s classes.
        study: the DICOM study the label was predicted on.
        algorithm: the algorithm named in the SEG; default tumorseg with an unknown bundle.

    Returns:
        ``path``.

    Raises:
        ImportError: highdicom or pydicom missing (the extra to install is named).
        ValueError: the label's shape is not the source series' grid.
    """
    hd, pydicom = import_dicom_packages()
    from pydicom.sr.coding import Code

    conv = get_convention(label_convention)
    algorithm = algorithm or SegAlgorithm()
    source = _read_headers(pydicom, study.reference.files)
    rows, columns = int(source[0].Rows), int(source[0].Columns)
    expected = (columns, rows, len(source))
    if tuple(label.shape) != expected:
        raise ValueError(
            f"label shape {tuple(label.shape)} is not the grid of series "
            f"{study.reference.description!r} {expected} (columns, rows, slices)"
        )
    further = [
        ds
        for series in study.series.values()
        if series is not study.reference
        for ds in _read_headers(pydicom, series.files)
    ]
    identification = hd.AlgorithmIdentificationSequence(
        name=algorithm.name,
        family=pydicom.sr.codedict.codes.cid7162.ArtificialIntelligence,
        version=algorithm.version,
        parameters={"bundle_version": algorithm.bundle_version, "backend": algorithm.backend},
    )
    segments = np.zeros((len(source), rows, columns), np.uint8)
    voxels = np.asarray(label).transpose(2, 1, 0)  # (slice, row, column)
    descriptions = []
    for number, (name, value) in enumerate(conv.classes.items(), start=1):
        if name not in SEGMENT_TYPES:
            raise ValueError(
                f"no DICOM coded concept for label class {name!r} (value {value}) of label "
                f"convention {conv.name!r}; DICOM-SEG output takes the classes "
                f"{sorted(SEGMENT_TYPES)}"
            )
        segments[voxels == value] = number
        code, scheme, meaning = SEGMENT_TYPES[name]
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=name,
                segmented_property_category=Code(_CATEGORY[0], "SCT", _CATEGORY[1]),
                segmented_property_type=Code(code, scheme, meaning),
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=identification,
                tracking_id=f"{name}: {_CLASS_NAMES[name]}",
                tracking_uid=hd.UID(),
                display_color=hd.color.CIELabColor.from_rgb(*CLASS_COLOURS[name]),
            )
        )
    seg = hd.seg.Segmentation(
        source_images=source,
        pixel_array=segments,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=int(getattr(source[0], "SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="tumorseg",
        manufacturer_model_name=algorithm.name,
        software_versions=f"tumorseg {algorithm.version}",
        device_serial_number="none",
        series_description=f"{algorithm.name} tumour segmentation",
        further_source_images=further,
        omit_empty_frames=True,
        coding_schemes=_private_schemes(hd, descriptions),
    )
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
    return Path(path)


def read_dicom_seg_labels(
    path: str | os.PathLike[str], label_convention: str | LabelConvention
) -> tuple[np.ndarray, np.ndarray]:
    """A SEG written by :func:`write_dicom_seg`, back as a label map and its RAS affine.

    Returns:
        ``(label, affine)``: the label map in ``label_convention`` on the SEG's volume grid
        (highdicom's, which may order the slices differently from the source; the volumes of
        the regions are the same) and its voxel-to-world affine in RAS mm.
    """
    hd, _ = import_dicom_packages()
    conv = get_convention(label_convention)
    seg = hd.seg.segread(str(path))
    numbers = seg.get_segment_numbers()
    volume = seg.get_volume(combine_segments=True, relabel=False)
    array = np.asarray(volume.array)
    label = np.zeros(array.shape, np.uint8)
    for number in numbers:
        name = seg.get_segment_description(number).segment_label
        label[array == number] = conv.classes[name]
    lps = np.asarray(volume.affine, np.float64)
    return label, LPS_TO_RAS @ lps
