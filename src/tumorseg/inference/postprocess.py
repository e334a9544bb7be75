"""Post-processing as data: a small JSON rule set applied to the region masks of a prediction.

BraTS rules cost a full Dice point for any false positive on a case without that region (an ET
voxel on an ET-free case scores ET Dice 0), so strong pipelines remove small connected
components and turn a tiny predicted enhancing tumour into necrosis. Which of these helps is
an empirical question answered on the out-of-fold predictions of a cross-validation
(:func:`search_rules`, ``tumorseg postprocess --search``); the answer is a JSON file
(:data:`RULES_FILE`) written next to the models, which inference applies by default
(:func:`rules_next_to`).

The file::

    {"format": "tumorseg-postprocess/1",
     "regions": {"WT": {"min_component_mm3": 0, "keep_largest": false},
                 "TC": {"min_component_mm3": 0, "keep_largest": false},
                 "ET": {"min_component_mm3": 50, "keep_largest": false}},
     "et_to_ncr_below_mm3": 100,
     "oof": {...}}                    # optional: the search's evidence, not read back

Applied in the order WT, TC, ET: components (26-connected) smaller than
``min_component_mm3`` are removed, then with ``keep_largest`` only the largest remains; an
inner region is cut to its outer region after the outer one's rules (a removed WT component
takes the core inside it). Last, when the whole ET left is below ``et_to_ncr_below_mm3`` it
becomes necrosis (it stays in TC, leaves ET). The component clean-up is
:func:`tumorseg.transforms.post.remove_isolated_false_positives`, the one the LGG 2D bundle uses.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from tumorseg.conventions import REGIONS, LabelConvention
from tumorseg.io import atomic_write_text, read_json
from tumorseg.metrics.regions import dice
from tumorseg.transforms import regions_to_labels
from tumorseg.transforms.post import remove_isolated_false_positives

__all__ = [
    "RULES_FILE",
    "RULES_FORMAT",
    "PostprocessRules",
    "RegionRule",
    "apply_rules",
    "brats_region_dice",
    "label_map",
    "load_rules",
    "rules_next_to",
    "search_rules",
    "voxel_volume_mm3",
]

#: Name of the rule file beside a checkpoint or in a cross-validation folder.
RULES_FILE = "postprocess.json"
#: Value of the file's ``format`` key.
RULES_FORMAT = "tumorseg-postprocess/1"

#: Candidate minimum component volumes (mm³) of the search; 0 keeps every component.
MIN_VOLUMES_MM3: tuple[float, ...] = (0.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0)
#: Candidate ET→NCR volumes (mm³) of the search; 0 never converts.
ET_TO_NCR_MM3: tuple[float, ...] = (0.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0)


@dataclass(frozen=True)
class RegionRule:
    """The clean-up of one region.

    Attributes:
        min_component_mm3: remove connected components smaller than this (0: keep all).
        keep_largest: keep only the largest remaining component.
    """

    min_component_mm3: float = 0.0
    keep_largest: bool = False

    @property
    def is_identity(self) -> bool:
        return self.min_component_mm3 <= 0 and not self.keep_largest


@dataclass(frozen=True)
class PostprocessRules:
    """Rules per region (``WT``, ``TC``, ``ET``) and the ET→NCR volume.

    Attributes:
        regions: region name -> :class:`RegionRule`; a region not named is left as it is.
        et_to_ncr_below_mm3: a predicted ET whose total volume is below this becomes NCR.
        oof: what the search measured (informative; written, not used).
    """

    regions: Mapping[str, RegionRule] = field(default_factory=dict)
    et_to_ncr_below_mm3: float = 0.0
    oof: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        # every region named, so equal rules compare equal
        full = {r: self.regions.get(r, RegionRule()) for r in REGIONS}
        object.__setattr__(self, "regions", full)

    @property
    def is_identity(self) -> bool:
        """True when the rules change nothing."""
        return self.et_to_ncr_below_mm3 <= 0 and all(r.is_identity for r in self.regions.values())

    def rule(self, region: str) -> RegionRule:
        return self.regions.get(region, RegionRule())

    def to_json(self) -> dict[str, Any]:
        """The rule file's content."""
        out: dict[str, Any] = {
            "format": RULES_FORMAT,
            "regions": {r: asdict(self.rule(r)) for r in REGIONS},
            "et_to_ncr_below_mm3": self.et_to_ncr_below_mm3,
        }
        if self.oof:
            out["oof"] = dict(self.oof)
        return out

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the rule file atomically."""
        import json

        return atomic_write_text(path, json.dumps(self.to_json(), indent=2) + "\n")

    def describe(self) -> str:
        """One line: the rules that do something."""
        parts = []
        for region in REGIONS:
            rule = self.rule(region)
            if rule.min_component_mm3 > 0:
                parts.append(f"{region}: drop components < {rule.min_component_mm3:g} mm³")
            if rule.keep_largest:
                parts.append(f"{region}: keep the largest component")
        if self.et_to_ncr_below_mm3 > 0:
            parts.append(f"ET -> NCR below {self.et_to_ncr_below_mm3:g} mm³")
        return "; ".join(parts) or "no post-processing"


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{where} must be a number >= 0, got {value!r}")
    if value < 0:
        raise ValueError(f"{where} must be >= 0, got {value!r}")
    return float(value)


def _from_json(data: Any, source: str) -> PostprocessRules:
    if not isinstance(data, dict) or data.get("format") != RULES_FORMAT:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ValueError(
            f"{source}: not a post-processing rule file (format must be {RULES_FORMAT!r}, got "
            f"{got!r}); write one with `tumorseg postprocess --search`"
        )
    regions_in = data.get("regions", {})
    if not isinstance(regions_in, dict):
        raise ValueError(f"{source}: 'regions' must be an object, got {regions_in!r}")
    unknown = sorted(set(regions_in) - set(REGIONS))
    if unknown:
        raise ValueError(f"{source}: unknown region(s) {unknown}; expected some of {REGIONS}")
    regions: dict[str, RegionRule] = {}
    for name, rule in regions_in.items():
        where = f"{source}: regions.{name}"
        if not isinstance(rule, dict):
            raise ValueError(f"{where} must be an object, got {rule!r}")
        extra = sorted(set(rule) - {"min_component_mm3", "keep_largest"})
        if extra:
            raise ValueError(
                f"{where} has unknown key(s) {extra}; expected min_component_mm3, keep_largest"
            )
        keep = rule.get("keep_largest", False)
        if not isinstance(keep, bool):
            raise ValueError(f"{where}.keep_largest must be true or false, got {keep!r}")
        volume = _number(rule.get("min_component_mm3", 0), f"{where}.min_component_mm3")
        regions[name] = RegionRule(volume, keep)
    et_ncr = _number(data.get("et_to_ncr_below_mm3", 0), f"{source}: et_to_ncr_below_mm3")
    oof = data.get("oof", {})
    return PostprocessRules(regions, et_ncr, oof if isinstance(oof, dict) else {})


def load_rules(path: str | os.PathLike[str]) -> PostprocessRules:
    """Read a rule file.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a rule file, or a bad value (the key and the value are named).
    """
    return _from_json(read_json(path, what="post-processing rule file"), str(path))


def rules_next_to(checkpoint: str | os.PathLike[str] | None) -> PostprocessRules | None:
    """The rules inference applies by default: :data:`RULES_FILE` in the checkpoint's folder,
    or in the folder itself when ``checkpoint`` is a folder (a cross-validation folder)."""
    if checkpoint is None:
        return None
    path = Path(checkpoint)
    candidate = path / RULES_FILE if path.is_dir() else path.parent / RULES_FILE
    return load_rules(candidate) if candidate.is_file() else None


def voxel_volume_mm3(affine: np.ndarray | None) -> float:
    """Volume of one voxel in mm³ from a voxel-to-world affine (1 without one)."""
    if affine is None:
        return 1.0
    return abs(float(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3])))


def _clean(mask: np.ndarray, rule: RegionRule, voxel_mm3: float) -> np.ndarray:
    if rule.is_identity or not mask.any():
        return mask
    min_voxels = math.ceil(rule.min_component_mm3 / voxel_mm3 - 1e-9)
    return remove_isolated_false_positives(
        mask, min_slices=1, min_voxels=max(min_voxels, 0), max_components=int(rule.keep_largest)
    )


def apply_rules(masks: np.ndarray, rules: PostprocessRules, *, voxel_mm3: float) -> np.ndarray:
    """Apply ``rules`` to region masks.

    The masks are first made nested the way the label map reads them (innermost region wins:
    TC is TC or ET, WT is any region), so rules that do nothing give the same label map.

    Args:
        masks: ``(3, X, Y, Z)`` binary ``WT, TC, ET`` masks.
        rules: the rule set.
        voxel_mm3: volume of one voxel (:func:`voxel_volume_mm3`).

    Returns:
        ``(3, X, Y, Z)`` boolean masks, nested (ET in TC in WT).
    """
    regions = np.asarray(masks).astype(bool, copy=False)
    if regions.ndim != 4 or regions.shape[0] != len(REGIONS):
        raise ValueError(f"expected (3, X, Y, Z) region masks {REGIONS}, got {regions.shape}")
    if not voxel_mm3 > 0:
        raise ValueError(f"voxel_mm3 must be > 0, got {voxel_mm3!r}")
    et = regions[2]
    tc = regions[1] | et
    wt = regions[0] | tc
    wt = _clean(wt, rules.rule("WT"), voxel_mm3)
    tc = _clean(tc & wt, rules.rule("TC"), voxel_mm3)
    et = _clean(et & tc, rules.rule("ET"), voxel_mm3)
    if rules.et_to_ncr_below_mm3 > 0 and 0 < et.sum() * voxel_mm3 < rules.et_to_ncr_below_mm3:
        et = np.zeros_like(et)  # those voxels stay in TC: necrosis
    return np.stack([wt, tc, et])


def brats_region_dice(pred: np.ndarray, ref: np.ndarray) -> tuple[float, ...]:
    """Dice of ``WT, TC, ET`` under the BraTS rules (1 when both are empty, 0 when one is).

    Args:
        pred: ``(3, ...)`` boolean region masks.
        ref: ``(3, ...)`` boolean region masks.
    """
    return tuple(dice(pred[i], ref[i]) for i in range(len(REGIONS)))


def _region_dice(
    cases: Sequence[tuple[np.ndarray, np.ndarray, float]], rules: PostprocessRules
) -> np.ndarray:
    """Mean over cases of each region's BraTS-rule Dice, ``(3,)``."""
    scores = [brats_region_dice(apply_rules(p, rules, voxel_mm3=v), r) for p, r, v in cases]
    return np.mean(np.asarray(scores, dtype=np.float64), axis=0)


def search_rules(
    cases: Iterable[tuple[np.ndarray, np.ndarray, float]],
    *,
    min_volumes_mm3: Sequence[float] = MIN_VOLUMES_MM3,
    et_to_ncr_mm3: Sequence[float] = ET_TO_NCR_MM3,
) -> PostprocessRules:
    """The rules that maximise the mean BraTS-rule Dice over ``cases`` (greedy, as nnU-Net).

    One knob at a time, in the order WT, TC, ET rules then ET→NCR: every candidate value is
    scored with the knobs chosen so far, and a value is kept only when it raises the mean Dice
    (ties keep doing nothing).

    Args:
        cases: ``(prediction, reference, voxel_mm3)``: ``(3, X, Y, Z)`` boolean region masks
            of the out-of-fold prediction and the reference, and the voxel volume in mm³.
        min_volumes_mm3: candidate minimum component volumes.
        et_to_ncr_mm3: candidate ET→NCR volumes.

    Returns:
        The chosen rules; ``oof`` holds ``cases``, the mean Dice ``dice_without`` and
        ``dice_with`` (the rules), and per region ``dice_WT_without`` ...

    Raises:
        ValueError: no cases.
    """
    data = list(cases)
    if not data:
        raise ValueError("the search needs at least one out-of-fold case with its reference")
    best = PostprocessRules({r: RegionRule() for r in REGIONS})
    before = _region_dice(data, best)
    score = float(before.mean())
    for region in REGIONS:
        options = itertools.product(min_volumes_mm3, (False, True))
        for volume, largest in options:
            regions = {**best.regions, region: RegionRule(float(volume), largest)}
            candidate = replace(best, regions=regions)
            value = float(_region_dice(data, candidate).mean())
            if value > score + 1e-12:
                best, score = candidate, value
    for volume in et_to_ncr_mm3:
        candidate = replace(best, et_to_ncr_below_mm3=float(volume))
        value = float(_region_dice(data, candidate).mean())
        if value > score + 1e-12:
            best, score = candidate, value
    after = _region_dice(data, best)
    oof: dict[str, Any] = {"cases": len(data)}
    for name, values in (("without", before), ("with", after)):
        oof[f"dice_{name}"] = float(values.mean())
        oof.update({f"dice_{r}_{name}": float(v) for r, v in zip(REGIONS, values, strict=True)})
    return replace(best, oof=oof)


def label_map(
    probabilities: np.ndarray,
    convention: str | LabelConvention,
    threshold: float,
    rules: PostprocessRules | None,
    affine: np.ndarray | None,
    regions: Sequence[str] = REGIONS,
) -> np.ndarray:
    """Probabilities -> label map, with ``rules`` applied to the thresholded regions.

    The rules clean the tumour regions ``WT, TC, ET``; a resection-cavity channel after them
    (``regions``) is left as it is and written where no tumour is
    (:func:`tumorseg.transforms.regions_to_labels`).
    """
    masks = np.asarray(probabilities) > threshold
    if rules is not None and not rules.is_identity:
        tumour = apply_rules(masks[: len(REGIONS)], rules, voxel_mm3=voxel_volume_mm3(affine))
        masks = np.concatenate([tumour, masks[len(REGIONS) :]])
    labels = regions_to_labels(masks, convention, region_names=regions)
    return np.asarray(labels, dtype=np.uint8)
