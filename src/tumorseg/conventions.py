"""Label conventions, tumour regions, modalities and file layouts: the single source.

Every other module takes its tables from here, so a new convention or layout is added once.

Label classes are named by what they are, not by their number, because the numbers differ
between datasets:

========== ============================== ========= ========= ===== ========= ============
class      meaning                        brats2021 brats2023 msd   brats2024 brats2024ped
========== ============================== ========= ========= ===== ========= ============
``NCR``    necrotic / non-enhancing core  1         1         2     1 (NETC)  2 (NETC)
``ED``     peritumoural edema (SNFH)      2         2         1     2 (SNFH)  4 (ED)
``ET``     enhancing tumour               4         3         3     3         1
``RC``     resection cavity               -         -         -     4         -
``CC``     cystic component               -         -         -     -         3
========== ============================== ========= ========= ===== ========= ============

``brats2021`` covers the BraTS 2018-2021 challenges, ``brats2023`` the BraTS 2023 ones (and
the 2024+ tasks without a resection cavity: pre-operative meningioma, ``GoAT``), ``msd`` the
Medical Segmentation Decathlon Task01 (1 edema, 2 non-enhancing, 3 enhancing), ``brats2024``
the BraTS 2024+ post-operative adult glioma and metastasis tasks (label 4 is the resection
cavity, **not** enhancing tumour as in ``brats2021``), ``brats2024ped`` the BraTS 2024+
paediatric task and ``brats2024menrt`` the meningioma radiotherapy task (1 GTV).
Training is region based: whole tumour ``WT = NCR+ED+ET``, tumour core ``TC = NCR+ET`` and
``ET``, as sigmoid channels in that order; the resection cavity is part of no region, and the
paediatric cystic component is part of TC and WT. Where the labels have a resection cavity
(``brats2024``) a network may predict it as a fourth channel ``RC`` after the three
(:data:`OPTIONAL_REGIONS`, :func:`check_regions`); it is its own channel, not a tumour region,
so the conversion rule below still drops it on the way to an older convention.

:func:`convert_labels` moves a label map between conventions by class name. A class the target
lacks becomes background when it belongs to no region (the resection cavity going to
``brats2021``, ``brats2023`` or ``msd``: WT, TC and ET are unchanged) and is an error when it
belongs to one (the cystic component, the GTV), since dropping it would change a region.

The manifest fixes one channel order for the four modalities, :data:`CHANNEL_ORDER`
(FLAIR, T1, T1ce, T2: the MSD order, so MSD 4D files need no reordering); the bundle's
``metadata.json`` records it in its channel definitions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "CHALLENGE_CONVENTIONS",
    "CHANNEL_ORDER",
    "CLASS_COLOURS",
    "DEFAULT_BUNDLE",
    "CLASSES",
    "CONVENTIONS",
    "LAYOUTS",
    "REGIONS",
    "REGION_CLASSES",
    "FileLayout",
    "LabelConvention",
    "OPTIONAL_REGIONS",
    "check_regions",
    "conventions_with",
    "convert_labels",
    "get_convention",
    "region_output_conventions",
    "get_layout",
]

#: The 3D bundle the CLI verbs use when ``--bundle`` is not given (relative to the repo root).
DEFAULT_BUNDLE = "bundles/brats_mri_segmentation"

#: Canonical modality names, in the channel order every manifest and bundle uses.
CHANNEL_ORDER: tuple[str, ...] = ("flair", "t1", "t1ce", "t2")

#: Tumour label classes, by name.
CLASSES: tuple[str, ...] = ("NCR", "ED", "ET")

#: Display colour (RGB 0-255) of every label class any convention has: the usual BraTS viewer
#: colours for NCR/ED/ET; the viewer's overlays and the DICOM-SEG segments both use it.
CLASS_COLOURS: dict[str, tuple[int, int, int]] = {
    "NCR": (230, 30, 30),  # necrosis / non-enhancing core: red
    "ED": (40, 200, 60),  # edema / SNFH: green
    "ET": (250, 220, 20),  # enhancing: yellow
    "RC": (60, 130, 250),  # resection cavity: blue
    "CC": (200, 80, 220),  # cystic component (paediatric): magenta
    "GTV": (250, 140, 30),  # gross tumour volume (meningioma RT): orange
}

#: Region channels predicted by the 3D bundle, in output-channel order.
REGIONS: tuple[str, ...] = ("WT", "TC", "ET")

#: Which label classes each region is made of.
REGION_CLASSES: dict[str, tuple[str, ...]] = {
    "WT": ("NCR", "ED", "ET"),
    "TC": ("NCR", "ET"),
    "ET": ("ET",),
}


#: Channels a network may predict after :data:`REGIONS` where the labels have the class: the
#: resection cavity of ``brats2024``. Each is the class of its name only and belongs to no tumour
#: region (so it is not in :data:`REGION_CLASSES`, and :func:`convert_labels` may drop it).
OPTIONAL_REGIONS: dict[str, tuple[str, ...]] = {"RC": ("RC",)}


@dataclass(frozen=True)
class LabelConvention:
    """Integer values of the tumour classes in one dataset family.

    Args:
        name: canonical name (``brats2021``, ``brats2023``, ``msd``).
        classes: class name (``NCR``, ``ED``, ``ET``, ``RC``, ...) to integer label.
        description: human-readable provenance.
        regions: region name to the classes it is made of; default :data:`REGION_CLASSES`
            (classes the convention lacks are left out, so a region may be empty).
    """

    name: str
    classes: dict[str, int]
    description: str
    regions: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(REGION_CLASSES))

    @property
    def legal_values(self) -> frozenset[int]:
        """Values a label map in this convention may contain (background 0 included)."""
        return frozenset({0, *self.classes.values()})

    def region_values(self, region: str) -> tuple[int, ...]:
        """Integer labels that make up ``region`` (``WT``, ``TC``, ``ET``, or ``RC``).

        Raises:
            ValueError: for a region the convention does not define, or one none of whose
                classes it has (``brats2024menrt`` has only a GTV, ``brats2021`` no RC).
        """
        members = self.regions.get(region, OPTIONAL_REGIONS.get(region))
        if members is None:
            raise ValueError(
                f"unknown region {region!r} in convention {self.name!r}; expected one of "
                f"{[*self.regions, *OPTIONAL_REGIONS]}"
            )
        values = tuple(self.classes[c] for c in members if c in self.classes)
        if not values:
            raise ValueError(
                f"convention {self.name!r} has none of the classes of region {region!r} "
                f"({', '.join(members)}); its classes are {sorted(self.classes)}"
            )
        return values

    def in_region(self, cls: str) -> bool:
        """Whether class ``cls`` belongs to any region of this convention."""
        return any(cls in members for members in self.regions.values())


CONVENTIONS: dict[str, LabelConvention] = {
    "brats2021": LabelConvention(
        "brats2021",
        {"NCR": 1, "ED": 2, "ET": 4},
        "BraTS 2018-2021: 1 necrotic/non-enhancing core, 2 edema, 4 enhancing tumour",
    ),
    "brats2023": LabelConvention(
        "brats2023",
        {"NCR": 1, "ED": 2, "ET": 3},
        "BraTS 2023+: 1 necrotic core, 2 edema (SNFH), 3 enhancing tumour",
    ),
    "msd": LabelConvention(
        "msd",
        {"NCR": 2, "ED": 1, "ET": 3},
        "MSD Task01: 1 edema, 2 non-enhancing tumour, 3 enhancing tumour",
    ),
    "brats2024": LabelConvention(
        "brats2024",
        {"NCR": 1, "ED": 2, "ET": 3, "RC": 4},
        "BraTS 2024+ glioma and metastasis: 1 non-enhancing tumour core (NETC), 2 surrounding "
        "non-enhancing FLAIR hyperintensity (SNFH), 3 enhancing tumour, 4 resection cavity",
    ),
    "brats2024ped": LabelConvention(
        "brats2024ped",
        {"ET": 1, "NCR": 2, "CC": 3, "ED": 4},
        "BraTS 2024+ paediatric: 1 enhancing tumour, 2 non-enhancing tumour, 3 cystic "
        "component, 4 edema",
        regions={"WT": ("NCR", "ED", "ET", "CC"), "TC": ("NCR", "ET", "CC"), "ET": ("ET",)},
    ),
    "brats2024menrt": LabelConvention(
        "brats2024menrt",
        {"GTV": 1},
        "BraTS 2024+ meningioma radiotherapy: 1 gross tumour volume",
        regions={"GTV": ("GTV",)},
    ),
}

#: Label numbering each configuration of the official BraTS 2024+ scoring package
#: (``brats-evaluation``) expects, by configuration name.
CHALLENGE_CONVENTIONS: dict[str, str] = {
    "gli": "brats2024",
    "mets": "brats2024",
    "ped": "brats2024ped",
    "MenRT": "brats2024menrt",
    "MenPre": "brats2023",
    "GoAT": "brats2023",
}

_CONVENTION_ALIASES = {
    "brats2018": "brats2021",
    "brats2019": "brats2021",
    "brats2020": "brats2021",
    "brats2025": "brats2024",
    "task01": "msd",
}


def get_convention(name: str | LabelConvention) -> LabelConvention:
    """Look up a label convention by name (aliases such as ``brats2020`` are accepted).

    Raises:
        ValueError: for an unknown name, listing the valid ones.
    """
    if isinstance(name, LabelConvention):
        return name
    key = str(name).strip().lower()
    key = _CONVENTION_ALIASES.get(key, key)
    if key not in CONVENTIONS:
        valid = sorted([*CONVENTIONS, *_CONVENTION_ALIASES])
        raise ValueError(f"unknown label convention {name!r}; expected one of {valid}")
    return CONVENTIONS[key]


def check_regions(
    regions: Sequence[str] | str | None = None,
    convention: str | LabelConvention | None = None,
) -> tuple[str, ...]:
    """The output channels of a region network, checked: ``WT, TC, ET`` and optionally ``RC``.

    The three tumour regions come first, in :data:`REGIONS` order (label maps are rebuilt from
    them by position), then any of :data:`OPTIONAL_REGIONS`. With ``convention``, each optional
    channel must be a class of it: an ``RC`` channel trained on labels without a resection
    cavity would be empty.

    Args:
        regions: channel names (case-insensitive), e.g. ``["WT", "TC", "ET", "RC"]``, or one
            comma-separated string; None gives :data:`REGIONS`.
        convention: the label convention the channels are made from, when known.

    Returns:
        The names, upper case, as a tuple.

    Raises:
        ValueError: naming the value received, for channels other than the above, and for an
            optional channel the convention has no class for (the conventions that have it are
            named).
    """
    if regions is None:
        return REGIONS
    items = regions.split(",") if isinstance(regions, str) else list(regions)
    names = tuple(str(r).strip().upper() for r in items)
    extra = names[len(REGIONS) :]
    if (
        names[: len(REGIONS)] != REGIONS
        or any(r not in OPTIONAL_REGIONS for r in extra)
        or len(set(extra)) != len(extra)
    ):
        raise ValueError(
            f"regions {list(items)!r} are not region channels a network can predict; expected "
            f"{list(REGIONS)} followed by any of {list(OPTIONAL_REGIONS)}, e.g. "
            f"{[*REGIONS, *OPTIONAL_REGIONS]}"
        )
    if convention is not None:
        conv = get_convention(convention)
        for region in extra:
            lacking = [c for c in OPTIONAL_REGIONS[region] if c not in conv.classes]
            if lacking:
                having = list(conventions_with(OPTIONAL_REGIONS[region]))
                raise ValueError(
                    f"region {region} needs label class(es) {lacking}, which label convention "
                    f"{conv.name!r} does not have (its classes: {sorted(conv.classes)}); train "
                    f"{region} on labels in {having} (--label_convention) or leave it out of "
                    f"regions"
                )
    return names


def conventions_with(classes: Sequence[str]) -> tuple[str, ...]:
    """Names of the conventions that have every one of ``classes`` (``["RC"]``: ``brats2024``)."""
    return tuple(n for n, c in CONVENTIONS.items() if set(classes) <= set(c.classes))


def region_output_conventions() -> tuple[str, ...]:
    """Conventions a region network's output can be written in: those with NCR, ED and ET."""
    return conventions_with(CLASSES)


def convert_labels(
    label: np.ndarray,
    source: str | LabelConvention,
    target: str | LabelConvention,
    *,
    name: str = "label map",
) -> np.ndarray:
    """Renumber an integer label map from one convention to another, class by class.

    A class the target lacks becomes background when it belongs to no region of the source
    (the resection cavity ``RC`` of ``brats2024`` going to ``brats2021``, ``brats2023`` or
    ``msd``: WT, TC and ET stay as they were); one that belongs to a region (the paediatric
    cystic component, the meningioma GTV) is an error, since dropping it would change that
    region. Classes the source lacks are simply absent from the result.

    Args:
        label: integer label map (any shape).
        source: convention of ``label``.
        target: convention of the result.
        name: how to refer to the map in error messages (a file name, say).

    Returns:
        A ``uint8`` array of the same shape in ``target``'s numbering.

    Raises:
        ValueError: when ``label`` holds values that are not legal in ``source``, or a class
            present in it has no counterpart in ``target`` and belongs to a region.
    """
    src, dst = get_convention(source), get_convention(target)
    arr = np.asarray(label)
    integral = np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool
    if not integral and not np.array_equal(arr, np.rint(arr)):
        raise ValueError(
            f"{name} holds non-integer values (dtype {arr.dtype}); a label map must hold "
            f"the integers of convention {src.name!r}: {sorted(src.legal_values)}"
        )
    values = _present_values(arr, src.legal_values)
    illegal = sorted(values - src.legal_values)
    if illegal:
        shown = illegal
        raise ValueError(
            f"{name} holds {shown} that are not legal in convention {src.name!r} (legal: "
            f"{sorted(src.legal_values)}); is its label convention right?"
        )
    lut = np.zeros(max(src.legal_values) + 1, dtype=np.uint8)
    for cls, value in src.classes.items():
        if cls in dst.classes:
            lut[value] = dst.classes[cls]
        elif value in values and src.in_region(cls):
            raise ValueError(
                f"{name}: class {cls} (label {value} in {src.name!r}) has no counterpart in "
                f"convention {dst.name!r} and is part of a tumour region; it cannot be "
                f"converted without changing that region (classes of {dst.name!r}: "
                f"{sorted(dst.classes)})"
            )
    index = arr if arr.dtype in (np.uint8, np.uint16) else arr.astype(np.intp, copy=False)
    return lut[index]


def _present_values(arr: np.ndarray, expected: frozenset[int]) -> set[int]:
    """The integer values in an integral array.

    Counting each expected value is several times faster than ``np.unique`` on a
    240x240x155 map; ``np.unique`` only runs when other values are there, to name them.
    """
    counts = {v: int(np.count_nonzero(arr == v)) for v in sorted(expected)}
    if sum(counts.values()) == arr.size:
        return {v for v, n in counts.items() if n}
    return {int(v) for v in np.unique(arr)}


@dataclass(frozen=True)
class FileLayout:
    """How a dataset family names its files.

    Args:
        name: ``brats2021``, ``brats2023`` or ``msd``.
        label_convention: the convention its label maps use.
        modality_suffixes: canonical modality -> file-name suffix (without extension),
            appended to the case id (one folder per case); empty for 4D layouts.
        label_suffix: suffix of the label map, for one-folder-per-case layouts.
        four_d: True when the four modalities are one 4D file (MSD ``imagesTr/labelsTr``),
            stored in :data:`CHANNEL_ORDER` along the last axis.
        description: human-readable summary.
    """

    name: str
    label_convention: str
    modality_suffixes: dict[str, str] = field(default_factory=dict)
    label_suffix: str = ""
    four_d: bool = False
    description: str = ""


LAYOUTS: dict[str, FileLayout] = {
    "brats2021": FileLayout(
        "brats2021",
        "brats2021",
        {"flair": "_flair", "t1": "_t1", "t1ce": "_t1ce", "t2": "_t2"},
        "_seg",
        description="BraTS 2018-2021: <case>/<case>_flair.nii.gz, _t1, _t1ce, _t2, _seg",
    ),
    "brats2023": FileLayout(
        "brats2023",
        "brats2023",
        {"flair": "-t2f", "t1": "-t1n", "t1ce": "-t1c", "t2": "-t2w"},
        "-seg",
        description="BraTS 2023+: <case>/<case>-t2f.nii.gz, -t1n, -t1c, -t2w, -seg",
    ),
    "msd": FileLayout(
        "msd",
        "msd",
        four_d=True,
        description="MSD Task01: imagesTr/<case>.nii.gz (4D FLAIR,T1w,t1gd,T2w), labelsTr/, "
        "dataset.json",
    ),
}


def get_layout(name: str | FileLayout) -> FileLayout:
    """Look up a file layout by name.

    Raises:
        ValueError: for an unknown name, listing the valid ones.
    """
    if isinstance(name, FileLayout):
        return name
    key = str(name).strip().lower()
    key = _CONVENTION_ALIASES.get(key, key) if key != "task01" else "msd"
    if key not in LAYOUTS:
        raise ValueError(f"unknown file layout {name!r}; expected one of {sorted(LAYOUTS)}")
    return LAYOUTS[key]
