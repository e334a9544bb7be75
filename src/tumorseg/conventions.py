"""Label conventions, tumour regions, modalities and file layouts: the single source.

Every other module takes its tables from here, so a new convention or layout is added once.

Label classes are named by what they are, not by their number, because the numbers differ
between datasets:

========== ============================ ======== ======== ========
class      meaning                      brats2021 brats2023 msd
========== ============================ ======== ======== ========
``NCR``    necrotic / non-enhancing core    1        1        2
``ED``     peritumoural edema (SNFH)        2        2        1
``ET``     enhancing tumour                 4        3        3
========== ============================ ======== ======== ========

``brats2021`` covers the BraTS 2018-2021 challenges, ``brats2023`` the BraTS 2023+ ones and
``msd`` the Medical Segmentation Decathlon Task01 (1 edema, 2 non-enhancing, 3 enhancing).
Training is region based: whole tumour ``WT = NCR+ED+ET``, tumour core ``TC = NCR+ET`` and
``ET``, as sigmoid channels in that order.

The manifest fixes one channel order for the four modalities, :data:`CHANNEL_ORDER`
(FLAIR, T1, T1ce, T2: the MSD order, so MSD 4D files need no reordering); the bundle's
``metadata.json`` records it in its channel definitions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "CHANNEL_ORDER",
    "DEFAULT_BUNDLE",
    "CLASSES",
    "CONVENTIONS",
    "LAYOUTS",
    "REGIONS",
    "REGION_CLASSES",
    "FileLayout",
    "LabelConvention",
    "get_convention",
    "get_layout",
]

#: The 3D bundle the CLI verbs use when ``--bundle`` is not given (relative to the repo root).
DEFAULT_BUNDLE = "bundles/brats_mri_segmentation"

#: Canonical modality names, in the channel order every manifest and bundle uses.
CHANNEL_ORDER: tuple[str, ...] = ("flair", "t1", "t1ce", "t2")

#: Tumour label classes, by name.
CLASSES: tuple[str, ...] = ("NCR", "ED", "ET")

#: Region channels predicted by the 3D bundle, in output-channel order.
REGIONS: tuple[str, ...] = ("WT", "TC", "ET")

#: Which label classes each region is made of.
REGION_CLASSES: dict[str, tuple[str, ...]] = {
    "WT": ("NCR", "ED", "ET"),
    "TC": ("NCR", "ET"),
    "ET": ("ET",),
}


@dataclass(frozen=True)
class LabelConvention:
    """Integer values of the tumour classes in one dataset family.

    Args:
        name: canonical name (``brats2021``, ``brats2023``, ``msd``).
        classes: class name (``NCR``, ``ED``, ``ET``) to integer label.
        description: human-readable provenance.
    """

    name: str
    classes: dict[str, int]
    description: str

    @property
    def legal_values(self) -> frozenset[int]:
        """Values a label map in this convention may contain (background 0 included)."""
        return frozenset({0, *self.classes.values()})

    def region_values(self, region: str) -> tuple[int, ...]:
        """Integer labels that make up ``region`` (``WT``, ``TC`` or ``ET``)."""
        if region not in REGION_CLASSES:
            raise ValueError(f"unknown region {region!r}; expected one of {list(REGIONS)}")
        return tuple(self.classes[c] for c in REGION_CLASSES[region])


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
}

_CONVENTION_ALIASES = {
    "brats2018": "brats2021",
    "brats2019": "brats2021",
    "brats2020": "brats2021",
    "brats2024": "brats2023",
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
