"""Segment a kaggle_3m folder with the LGG bundle: 2D slices in, 0/255 mask TIFs out.

Each patient's predicted slices are stacked into a volume before the optional 3D clean-up
(:func:`tumorseg.transforms.post.remove_isolated_false_positives`), and written in the input's
layout (:mod:`tumorseg.data.lgg`). Bad files and failed patients are reported, never fatal.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigParser

from tumorseg.data.lgg import LGGDatasetError, discover_kaggle_3m, stack_patient, write_tif
from tumorseg.io import read_json
from tumorseg.training.checkpoint import load_network_weights
from tumorseg.training.data import LGGData
from tumorseg.transforms.post import remove_isolated_false_positives

__all__ = [
    "LGGInferenceReport",
    "is_lgg_bundle",
    "segment_kaggle_3m_folder",
    "segment_with_bundle",
]

logger = logging.getLogger(__name__)


@dataclass
class LGGInferenceReport:
    """What :func:`segment_kaggle_3m_folder` wrote and what went wrong."""

    written: list[Path] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def raise_for_failures(self) -> LGGInferenceReport:
        """Raise :class:`LGGDatasetError` listing every failure; else return ``self``."""
        if self.failures:
            raise LGGDatasetError(
                f"{len(self.failures)} problem(s) while segmenting (the other slices were "
                "written):\n" + "\n".join(self.failures)
            )
        return self


def segment_kaggle_3m_folder(
    input_dir: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    network: Any,
    preprocessing: Callable[[dict[str, Any]], dict[str, Any]],
    device: Any = "cpu",
    threshold: float = 0.5,
    min_slices: int = 0,
    max_components: int = 0,
    flip_tta: bool = False,
    batch_size: int = 16,
    overwrite: bool = False,
) -> LGGInferenceReport:
    """Segment every slice of a kaggle_3m folder; write ``<patient>/<patient>_<n>_mask.tif``.

    Masks are 0/255 uint8 TIFs of the image's size, in the input's layout. Each patient's
    predictions are stacked by slice index before the optional 3D clean-up. Bad files are
    reported (never fatal); a patient whose slices fail is reported and the others go on.

    Args:
        input_dir: kaggle_3m folder (masks there are ignored).
        output_dir: where the mask TIFs go.
        network: the 2D network (sigmoid logits, channel 0 is the abnormality).
        preprocessing: the bundle's validation preprocessing, applied to ``{"image": path}``.
        device: torch device to run on.
        threshold: probability threshold.
        min_slices: > 0 drops 3D components spanning fewer slices
            (:func:`remove_isolated_false_positives`, per patient).
        max_components: > 0 keeps only that many of each patient's 3D components, largest
            first.
        flip_tta: average the probabilities of each slice and of its left-right mirror image
            (twice the network time).
        batch_size: slices per forward pass.
        overwrite: replace existing masks (otherwise a patient already done is skipped).

    Returns:
        The report; call ``raise_for_failures()`` to turn problems into an error.
    """
    found = discover_kaggle_3m(input_dir)
    report = LGGInferenceReport(failures=list(found.problems))
    out_root = Path(output_dir).expanduser()
    network.eval()
    for patient in found.patients:
        targets = {
            s.index: out_root / patient.patient_id / f"{s.case_id}_mask.tif" for s in patient.slices
        }
        if not overwrite and all(t.exists() for t in targets.values()):
            logger.info("%s: masks exist, skipped (overwrite=False)", patient.patient_id)
            continue
        try:
            masks: dict[int, np.ndarray] = {}
            height, width = patient.size
            for start in range(0, len(patient.slices), batch_size):
                chunk = patient.slices[start : start + batch_size]
                batch = torch.stack(
                    [
                        torch.as_tensor(preprocessing({"image": str(s.image)})["image"])
                        for s in chunk
                    ]
                )
                batch = batch.to(device)
                with torch.no_grad():
                    probs = torch.sigmoid(network(batch))
                    if flip_tta:
                        mirrored = torch.sigmoid(network(batch.flip(-1))).flip(-1)
                        probs = (probs + mirrored) / 2
                # Padding added by the preprocessing (DivisiblePad) is at the end: crop it away.
                binary = (probs[:, 0, :height, :width] > threshold).cpu().numpy()
                for s, mask in zip(chunk, binary, strict=True):
                    masks[s.index] = mask
            volume = stack_patient(masks)
            if min_slices > 0 or max_components > 0:
                volume = remove_isolated_false_positives(
                    volume, min_slices=min_slices, max_components=max_components
                )
            for k, index in enumerate(sorted(masks)):
                write_tif(np.where(volume[k], 255, 0).astype(np.uint8), targets[index])
                report.written.append(targets[index])
        except Exception as err:  # noqa: BLE001 - one bad patient must not stop the others
            report.failures.append(f"{patient.folder}: segmentation failed: {err}")
            logger.error("%s: segmentation failed: %s", patient.patient_id, err)
    return report


def is_lgg_bundle(bundle: str | os.PathLike[str]) -> bool:
    """True when the bundle's ``configs/train.json`` trains on kaggle_3m slices.

    That is, its ``data`` is :class:`LGGData`; ``tumorseg infer`` then segments a kaggle_3m
    folder (:func:`segment_with_bundle`) instead of 3D studies.

    Raises:
        ValueError: ``train.json`` is not valid JSON (the message names it).
    """
    train = Path(bundle).expanduser() / "configs" / "train.json"
    if not train.is_file():
        return False
    config = read_json(train, what="bundle config")
    data = config.get("data") if isinstance(config, dict) else None
    target = str(data.get("_target_", "")) if isinstance(data, dict) else ""
    return target.rsplit(".", 1)[-1] == LGGData.__name__


def segment_with_bundle(
    bundle: str | os.PathLike[str],
    input_dir: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    device: str | None = None,
    overwrite: bool = False,
    config_files: Sequence[str | os.PathLike[str]] = (),
    overrides: Mapping[str, Any] | None = None,
) -> LGGInferenceReport:
    """Segment a kaggle_3m folder with an LGG bundle, as its ``inference.json`` does.

    The bundle's ``train.json`` and ``inference.json`` (then ``config_files``) are parsed
    and their ``infer`` (:func:`segment_kaggle_3m_folder` with the bundle's network,
    validation preprocessing, threshold and 3D clean-up) is called, so this and
    ``monai.bundle run inferring`` make the same masks.

    Args:
        bundle: the bundle folder.
        input_dir: kaggle_3m folder to segment.
        output_dir: where ``<patient>/<patient>_<n>_mask.tif`` go.
        checkpoint: weights; default the bundle's ``checkpoint`` (``<ckpt_dir>/model.pt``).
        device: ``cpu``, ``cuda``, ``cuda:1`` ...; default the bundle's.
        overwrite: redo patients whose masks exist.
        config_files: more configs merged last (paths, or names under the bundle's
            ``configs/``, e.g. ``networks/transunet.json``).
        overrides: config ids -> values set after reading the configs.

    Returns:
        The report: masks written and every failure (bad files, failed patients).

    Raises:
        FileNotFoundError: a missing config file or checkpoint.
        ValueError: weights that do not fit the network; :class:`LGGDatasetError` for an
            input folder that is missing or holds no usable slice.
    """
    root = Path(bundle).expanduser()
    configs = root / "configs"
    files = [configs / "train.json", configs / "inference.json"]
    for name in config_files:
        path = Path(name)
        files.append(path if path.is_file() else configs / path)
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path} (bundle {str(root)!r})")
    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    if (configs / "metadata.json").is_file():
        parser.read_meta(str(configs / "metadata.json"))
    parser["bundle_root"] = str(root)
    for key, value in (overrides or {}).items():
        parser[key] = value
    parser["dataset_dir"] = str(input_dir)
    parser["output_dir"] = str(output_dir)
    parser["overwrite"] = bool(overwrite)
    if device is not None:
        parser["device"] = torch.device(device)
    if checkpoint is not None:
        parser["checkpoint"] = str(checkpoint)
    # The weights first: a missing checkpoint is reported before any input is read.
    try:
        network = parser.get_parsed_content("network")
    except RuntimeError as err:
        # MONAI says only "Failed to instantiate component"; the cause says what is wrong.
        cause = f": {err.__cause__}" if err.__cause__ is not None else ""
        raise ValueError(
            f"cannot build the network of bundle {str(root)!r} from "
            f"{[f.name for f in files]}{cause}"
        ) from None
    load_network_weights(
        network,
        parser.get_parsed_content("checkpoint"),
        settings=f"channels={parser.get_parsed_content('channels')}",
        hint="pass the same ones (e.g. --override channels=[...], a network file such as "
        "networks/transunet.json) or the matching --checkpoint",
    )
    infer = parser.get_parsed_content("infer")
    report: LGGInferenceReport = infer(
        parser.get_parsed_content("input_dir"), parser.get_parsed_content("output_dir")
    )
    return report
