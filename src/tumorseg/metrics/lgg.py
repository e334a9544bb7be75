"""LGG scores: Dice and IoU per kaggle_3m slice and per patient, and their ignite metric.

A patient's score is computed on its slices re-stacked into a volume
(:func:`tumorseg.data.lgg.stack_patient`), optionally after the 3D clean-up
(:func:`tumorseg.transforms.post.remove_isolated_false_positives`), so a 2D network is scored
like the 3D ones. :func:`score_mask_folders` scores what ``tumorseg infer`` wrote for held-out
patients the way the published anchor does (Buda et al. 2019): one 3D Dice per patient, and a
patient whose reference and prediction are both empty scores 1.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch.distributed as dist
from ignite.metrics import Metric
from PIL import Image, UnidentifiedImageError

from tumorseg.data.lgg import (
    LGGDatasetError,
    parse_slice_name,
    resolve_kaggle_3m_root,
    stack_patient,
)
from tumorseg.io import atomic_write_text
from tumorseg.ranks import is_rank0, process_group
from tumorseg.transforms.post import remove_isolated_false_positives

__all__ = [
    "LGGOverlapMetric",
    "institution_of",
    "overlap_scores",
    "read_mask_folder",
    "score_mask_folders",
    "score_patients",
    "summarise_patient_dice",
]


def overlap_scores(pred: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(Dice, IoU) of two binary masks of any dimension.

    Both empty scores (1, 1): a tumour-free slice predicted tumour-free is right, the usual
    LGG convention, so per-slice means reward the absence of false positives.
    """
    p = np.asarray(pred, bool)
    r = np.asarray(ref, bool)
    if p.shape != r.shape:
        raise ValueError(f"prediction {p.shape} and reference {r.shape} differ in shape")
    inter = float(np.count_nonzero(p & r))
    total = float(np.count_nonzero(p) + np.count_nonzero(r))
    if total == 0:
        return 1.0, 1.0
    return 2.0 * inter / total, inter / (total - inter)


def score_patients(
    preds: Mapping[str, Mapping[int, np.ndarray]],
    refs: Mapping[str, Mapping[int, np.ndarray]],
    *,
    min_slices: int = 0,
) -> dict[str, Any]:
    """Per-slice and per-patient Dice and IoU of 2D predictions re-stacked per patient.

    Args:
        preds: patient -> slice index -> binary (H, W) prediction.
        refs: the references, same keys.
        min_slices: when > 0, :func:`remove_isolated_false_positives` is applied to each
            patient's stacked prediction first.

    Returns:
        ``{"slice": {case_id: (dice, iou)}, "patient": {patient: (dice, iou)},
        "slice_dice", "slice_iou", "patient_dice", "patient_iou"}`` (the last four are means).

    Raises:
        ValueError: a patient or slice missing from ``refs``.
    """
    per_slice: dict[str, tuple[float, float]] = {}
    per_patient: dict[str, tuple[float, float]] = {}
    for patient in sorted(preds):
        if patient not in refs or set(refs[patient]) != set(preds[patient]):
            raise ValueError(f"patient {patient!r}: predictions and references differ in slices")
        pred = stack_patient(preds[patient])
        ref = stack_patient(refs[patient])
        if min_slices > 0:
            pred = remove_isolated_false_positives(pred, min_slices=min_slices)
        for k, index in enumerate(sorted(preds[patient])):
            per_slice[f"{patient}_{index}"] = overlap_scores(pred[k], ref[k])
        per_patient[patient] = overlap_scores(pred, ref)

    def mean(values: Iterable[tuple[float, float]], k: int) -> float:
        picked = [v[k] for v in values]
        return float(np.mean(picked)) if picked else float("nan")

    return {
        "slice": per_slice,
        "patient": per_patient,
        "slice_dice": mean(per_slice.values(), 0),
        "slice_iou": mean(per_slice.values(), 1),
        "patient_dice": mean(per_patient.values(), 0),
        "patient_iou": mean(per_patient.values(), 1),
    }


def _to_numpy(x: Any) -> np.ndarray:
    return np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x)


def _slice_of(item: Mapping[str, Any]) -> tuple[str, int]:
    image = item.get("image")
    meta = getattr(image, "meta", None) or {}
    name = meta.get("filename_or_obj")
    parsed = parse_slice_name(Path(str(name)).name) if name else None
    if parsed is None:
        raise ValueError(
            "LGGOverlapMetric needs the image's file name <patient>_<n>.tif in its metadata "
            f"(MetaTensor 'filename_or_obj'), got {name!r}"
        )
    return parsed[0], parsed[1]


def _unpack(bits: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The boolean mask of ``shape`` that ``np.packbits`` turned into ``bits``."""
    return np.unpackbits(bits, count=int(np.prod(shape))).reshape(shape) > 0


class LGGOverlapMetric(Metric):
    """Ignite metric: mean Dice or IoU per slice or per patient (slices re-stacked).

    Attach as a MONAI evaluator metric; it reads the evaluator's decollated output (a list of
    dicts with ``pred``, ``label`` and ``image``, whose metadata names the slice file), keeps
    each slice's binary masks, and scores when the epoch completes.

    Args:
        level: ``slice`` or ``patient``.
        kind: ``dice`` or ``iou``.
        min_slices: > 0 applies :func:`remove_isolated_false_positives` per patient first.
        save_path: optional CSV of the per-slice or per-patient scores, written atomically
            every time the metric is computed.
        output_transform: ignite's output transform (default: the engine output as is).
    """

    def __init__(
        self,
        *,
        level: str = "patient",
        kind: str = "dice",
        min_slices: int = 0,
        save_path: str | os.PathLike[str] | None = None,
        output_transform: Callable[[Any], Any] = lambda x: x,
    ) -> None:
        if level not in ("slice", "patient"):
            raise ValueError(f"level must be 'slice' or 'patient', got {level!r}")
        if kind not in ("dice", "iou"):
            raise ValueError(f"kind must be 'dice' or 'iou', got {kind!r}")
        self.level = level
        self.kind = kind
        self.min_slices = int(min_slices)
        self.save_path = Path(save_path) if save_path else None
        self._preds: dict[str, dict[int, np.ndarray]] = {}
        self._refs: dict[str, dict[int, np.ndarray]] = {}
        super().__init__(output_transform=output_transform)

    def reset(self) -> None:
        """Forget the slices of the previous epoch."""
        self._preds = {}
        self._refs = {}

    def update(self, output: Any) -> None:
        """Keep the binary masks of a batch of slices (channel 0 of ``pred`` and ``label``)."""
        items = output if isinstance(output, Sequence) else [output]
        for item in items:
            patient, index = _slice_of(item)
            pred = _to_numpy(item["pred"])
            ref = _to_numpy(item["label"])
            self._preds.setdefault(patient, {})[index] = pred.reshape(pred.shape[-2:]) > 0.5
            self._refs.setdefault(patient, {})[index] = ref.reshape(ref.shape[-2:]) > 0.5

    def _gathered(
        self,
    ) -> tuple[dict[str, dict[int, np.ndarray]], dict[str, dict[int, np.ndarray]]]:
        """The masks of every rank's slices (this rank's alone without a process group).

        Under DDP each rank validates only its shard of the slices, and a patient's slices
        land on several ranks, so per-patient scores need everyone's slices. Masks travel
        bit-packed (8x smaller than bool arrays) through ``all_gather_object``, which every
        backend supports for Python objects.
        """
        _, world_size = process_group()
        if world_size < 2:
            return self._preds, self._refs
        mine = {
            patient: {
                index: (pred.shape, np.packbits(pred), np.packbits(self._refs[patient][index]))
                for index, pred in slices.items()
            }
            for patient, slices in self._preds.items()
        }
        parts: list[Any] = [None] * world_size
        dist.all_gather_object(parts, mine)
        preds: dict[str, dict[int, np.ndarray]] = {}
        refs: dict[str, dict[int, np.ndarray]] = {}
        for part in parts:
            for patient, slices in part.items():
                for index, (shape, pred, ref) in slices.items():
                    # A padding sampler repeats slices on some ranks: keyed by (patient,
                    # slice), a repeat replaces its identical twin, so nothing counts twice.
                    preds.setdefault(patient, {})[index] = _unpack(pred, shape)
                    refs.setdefault(patient, {})[index] = _unpack(ref, shape)
        return preds, refs

    def compute(self) -> float:
        """The mean score over the slices or patients seen this epoch, by every rank.

        Under ``torch.distributed`` every rank must call it (the evaluator does, at the end of
        each epoch): the slices are all-gathered first. Only rank 0 writes ``save_path``.
        """
        preds, refs = self._gathered()
        if not preds:
            return float("nan")
        scores = score_patients(preds, refs, min_slices=self.min_slices)
        if self.save_path is not None and is_rank0():
            column = 0 if self.kind == "dice" else 1
            lines = io.StringIO()
            writer = csv.writer(lines, lineterminator="\n")
            writer.writerow([self.level, self.kind])
            for key, value in scores[self.level].items():
                writer.writerow([key, f"{value[column]:.6f}"])
            atomic_write_text(self.save_path, lines.getvalue())
        return float(scores[f"{self.level}_{self.kind}"])


def institution_of(patient: str) -> str:
    """The TCGA tissue-source site of a kaggle_3m patient id (``TCGA_CS_4941_...`` -> ``CS``)."""
    parts = patient.split("_")
    return parts[1] if len(parts) > 2 and parts[0] == "TCGA" else "?"


def read_mask_folder(
    root: str | os.PathLike[str], patients: Iterable[str]
) -> dict[str, dict[int, np.ndarray]]:
    """The binary masks ``<patient>/<patient>_<n>_mask.tif`` of ``patients`` under ``root``.

    Raises:
        LGGDatasetError: a patient folder without any mask, or an unreadable mask; the
            message names the path.
    """
    base = resolve_kaggle_3m_root(root)
    out: dict[str, dict[int, np.ndarray]] = {}
    for patient in patients:
        masks: dict[int, np.ndarray] = {}
        folder = base / patient
        for path in sorted(folder.glob("*_mask.tif*")) if folder.is_dir() else []:
            parsed = parse_slice_name(path.name)
            if parsed is None or parsed[0] != patient:
                continue
            try:
                with Image.open(path) as img:
                    masks[parsed[1]] = np.asarray(img) > 0
            except (OSError, UnidentifiedImageError) as err:
                raise LGGDatasetError(f"{path}: unreadable mask: {err}") from None
        if not masks:
            raise LGGDatasetError(f"{folder}: no {patient}_<n>_mask.tif found")
        out[patient] = masks
    return out


def score_mask_folders(
    pred_dir: str | os.PathLike[str],
    ref_dir: str | os.PathLike[str],
    patients: Iterable[str],
    *,
    min_slices: int = 0,
) -> dict[str, Any]:
    """Per-patient (3D) and per-slice Dice / IoU of predicted masks against references.

    Args:
        pred_dir: the predictions (``tumorseg infer`` output for a kaggle_3m folder).
        ref_dir: the kaggle_3m folder holding the reference masks.
        patients: the patients to score; each must be in both folders with the same slices.
        min_slices: > 0 applies the 3D clean-up to the predictions first (already applied by
            ``tumorseg infer`` unless its post-processing was turned off).

    Returns:
        :func:`score_patients`'s result.

    Raises:
        LGGDatasetError: a patient missing from either folder, or slices that differ.
    """
    chosen = sorted(set(patients))
    refs = read_mask_folder(ref_dir, chosen)
    preds = read_mask_folder(pred_dir, chosen)
    for patient in chosen:
        missing = sorted(set(refs[patient]) - set(preds[patient]))
        if missing:
            raise LGGDatasetError(
                f"{Path(pred_dir) / patient}: no prediction for slice(s) {missing[:10]}"
            )
        preds[patient] = {i: preds[patient][i] for i in refs[patient]}
    return score_patients(preds, refs, min_slices=min_slices)


def summarise_patient_dice(per_patient: dict[str, tuple[float, float]]) -> dict[str, Any]:
    """Mean, median, count, and the mean per institution, of per-patient Dice values."""
    dice = {p: v[0] for p, v in per_patient.items()}
    sites: dict[str, list[float]] = {}
    for patient, value in dice.items():
        sites.setdefault(institution_of(patient), []).append(value)
    return {
        "n": len(dice),
        "mean": float(np.mean(list(dice.values()))),
        "median": float(np.median(list(dice.values()))),
        "per_institution": {
            s: {"n": len(v), "mean": float(np.mean(v))} for s, v in sorted(sites.items())
        },
    }
