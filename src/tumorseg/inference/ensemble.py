"""Ensembles: several checkpoints (or a cross-validation folder) averaged, in bounded memory.

Two ways, one averaging rule (the mean of the sigmoid region probabilities):

* :class:`EnsemblePredictor` (``tumorseg infer --checkpoint A --checkpoint B`` or
  ``--checkpoint CV_FOLDER``): one network of the bundle, the members' weights kept on the
  CPU and loaded in turn for every study; each member's probabilities are added to a running
  sum, so a study holds two probability volumes at any time whatever the number of members.
* :func:`ensemble_probability_folders` (``tumorseg ensemble``): saved
  ``probabilities/<case_id>.npz`` folders (``infer --save-probabilities``, or a cross-validation's
  ``oof``) combined case by case, one file in memory at a time, written as new probabilities
  and label maps.

Members must share the bundle's preprocessing and its WT/TC/ET outputs; the rule file of a
cross-validation folder (:mod:`.postprocess`) is applied by default.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigParser

from tumorseg.conventions import REGIONS, get_convention
from tumorseg.inference.postprocess import PostprocessRules, label_map, rules_next_to
from tumorseg.inference.predictor import Predictor
from tumorseg.inference.results import PROBABILITIES_DIR
from tumorseg.inference.writer import label_image, write_label_atomic, write_probabilities_atomic
from tumorseg.networks import ProbabilityMeanEnsemble
from tumorseg.training.checkpoint import load_network_weights
from tumorseg.training.cv import CV_STATE, fold_checkpoints

__all__ = [
    "EnsemblePredictor",
    "EnsembleReport",
    "ensemble_probability_folders",
    "ensemble_from_config",
    "read_probabilities",
    "resolve_checkpoints",
]


class EnsemblePredictor(Predictor):
    """A :class:`~tumorseg.inference.Predictor` that averages several checkpoints' probabilities.

    Args:
        *args: as :class:`~tumorseg.inference.Predictor`.
        checkpoints: the members' weights (two or more files).
        **kwargs: as :class:`~tumorseg.inference.Predictor`; its ``checkpoint`` is ignored.

    Raises:
        ValueError: fewer than two checkpoints, or one that does not fit the network.
        FileNotFoundError: a checkpoint that does not exist.
    """

    def __init__(self, *args: Any, checkpoints: Sequence[str | os.PathLike[str]], **kwargs: Any):
        paths = [Path(c) for c in checkpoints]
        if len(paths) < 2:
            raise ValueError(f"an ensemble needs two or more checkpoints, got {len(paths)}")
        kwargs["checkpoint"] = paths[0]
        super().__init__(*args, **kwargs)
        self.checkpoints = paths
        self._states: list[dict[str, torch.Tensor]] = []
        for path in paths:
            load_network_weights(
                self.network, path, settings=kwargs.get("network_settings", ""), hint=""
            )
            state = self.network.state_dict()
            self._states.append({k: v.detach().to("cpu", copy=True) for k, v in state.items()})
        if self.data_format == "kaggle_3m":
            # kaggle_3m slices go straight to self.network (not through _probabilities): the
            # members become one network averaging their probabilities.
            ensemble = ProbabilityMeanEnsemble(self.network, num_members=len(self._states))
            for member, state in zip(ensemble.members, self._states, strict=True):
                member.load_state_dict(state)
            self.network = ensemble.to(self.device).eval()
            self._states = []

    def _probabilities(self, image: Any) -> torch.Tensor:
        """Mean of the members' probabilities, summed member by member (bounded memory)."""
        total: torch.Tensor | None = None
        for state in self._states:
            self.network.load_state_dict(state)
            probs = super()._probabilities(image)
            total = probs if total is None else total.add_(probs)
        assert total is not None
        return total.div_(len(self._states))


def resolve_checkpoints(
    values: Sequence[str | os.PathLike[str]],
) -> tuple[list[Path], Path | None]:
    """Checkpoint files from ``--checkpoint`` values: files, or cross-validation folders (the
    ``model.pt`` of each finished fold).

    Returns:
        The files, and the folder whose rule file applies by default (the cross-validation
        folder when exactly one was given, else None).

    Raises:
        FileNotFoundError: a value that is neither a file nor a cross-validation folder.
    """
    files: list[Path] = []
    folders: list[Path] = []
    for value in values:
        path = Path(value).expanduser()
        if path.is_dir():
            if not (path / CV_STATE).is_file():
                raise FileNotFoundError(
                    f"--checkpoint {str(path)!r} is a folder without {CV_STATE}: pass a "
                    "checkpoint file or a `tumorseg cv` folder"
                )
            files += fold_checkpoints(path)
            folders.append(path)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(
                f"checkpoint not found: {path}; give --checkpoint a model.pt (or a tumorseg cv "
                "folder), or train the bundle first (make train)"
            )
    return files, folders[0] if len(folders) == 1 else None


def ensemble_from_config(
    config: ConfigParser,
    checkpoints: Sequence[str | os.PathLike[str]],
    **settings: Any,
) -> Predictor:
    """The bundle's predictor for ``--checkpoint`` values (:func:`resolve_checkpoints`): a plain
    :class:`~tumorseg.inference.Predictor` for one file, an :class:`EnsemblePredictor` for
    several; a cross-validation folder's rule file becomes the default post-processing.

    Args:
        config: from :func:`tumorseg.inference.load_bundle`.
        checkpoints: files or cross-validation folders.
        **settings: keyword arguments of :meth:`~tumorseg.inference.Predictor.from_config`.
    """
    files, folder = resolve_checkpoints(checkpoints)
    if len(files) == 1:
        predictor = Predictor.from_config(config, checkpoint=files[0], **settings)
    else:
        config["evaluator#_target_"] = f"{__name__}.EnsemblePredictor"
        config["evaluator#checkpoints"] = [str(f) for f in files]
        predictor = Predictor.from_config(config, **settings)
    if folder is not None:
        predictor.postprocess_rules = rules_next_to(folder)
    return predictor


def read_probabilities(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(probabilities float32 (3, X, Y, Z), affine)`` of a saved ``.npz``.

    Raises:
        ValueError: a file that is not a tumorseg probability file (the file named).
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            probs = np.asarray(data["probabilities"], dtype=np.float32)
            affine = np.asarray(data["affine"], dtype=np.float64)
            regions = tuple(str(r) for r in data["regions"])
    except (OSError, KeyError, ValueError) as err:
        raise ValueError(
            f"{path}: not a probability file of tumorseg infer --save-probabilities ({err})"
        ) from None
    if regions != tuple(REGIONS) or probs.ndim != 4:
        raise ValueError(f"{path}: holds regions {regions} of shape {probs.shape}, not {REGIONS}")
    return probs, affine


def _probability_files(folder: Path) -> dict[str, Path]:
    root = folder / PROBABILITIES_DIR if (folder / PROBABILITIES_DIR).is_dir() else folder
    if not root.is_dir():
        raise FileNotFoundError(f"probability folder {str(folder)!r} does not exist")
    files = {p.name[: -len(".npz")]: p for p in sorted(root.glob("*.npz"))}
    if not files:
        raise ValueError(
            f"{str(folder)!r} holds no <case_id>.npz (tumorseg infer --save-probabilities)"
        )
    return files


@dataclass
class EnsembleReport:
    """What :func:`ensemble_probability_folders` wrote."""

    output_dir: Path
    cases: list[str] = field(default_factory=list)


def ensemble_probability_folders(
    folders: Sequence[str | os.PathLike[str]],
    output_dir: str | os.PathLike[str],
    *,
    label_convention: str = "brats2021",
    rules: PostprocessRules | None = None,
    threshold: float = 0.5,
) -> EnsembleReport:
    """Average saved probability folders case by case into ``output_dir``.

    Writes ``probabilities/<case_id>.npz`` (the mean) and ``<case_id>.nii.gz`` (its label map,
    ``rules`` applied) per case, atomically, one input file in memory at a time.

    Args:
        folders: two or more folders of ``<case_id>.npz`` (or holding ``probabilities/``).
        output_dir: where the results go (created).
        label_convention: numbers of the written labels.
        rules: post-processing of the label maps, or None.
        threshold: probability threshold of a region.

    Raises:
        ValueError: fewer than two folders, folders with different cases, or files whose
            grids differ (the case and files named).
    """
    if len(folders) < 2:
        raise ValueError(f"ensembling needs two or more probability folders, got {len(folders)}")
    conv = get_convention(label_convention)
    indexes = [_probability_files(Path(f)) for f in folders]
    cases = sorted(indexes[0])
    for folder, index in zip(folders[1:], indexes[1:], strict=True):
        if set(index) != set(cases):
            missing = sorted(set(cases) ^ set(index))[:5]
            raise ValueError(
                f"{folder} and {folders[0]} hold different cases (e.g. {missing}); ensemble "
                "folders of the same studies"
            )
    out = Path(output_dir)
    report = EnsembleReport(out)
    for case in cases:
        total: np.ndarray | None = None
        affine: np.ndarray | None = None
        for index in indexes:
            probs, aff = read_probabilities(index[case])
            if total is None or affine is None:
                total, affine = probs, aff
            elif probs.shape != total.shape or not np.allclose(aff, affine, atol=1e-4):
                raise ValueError(
                    f"{case}: {index[case]} is on another grid ({probs.shape}) than "
                    f"{indexes[0][case]} ({total.shape})"
                )
            else:
                total += probs
        assert total is not None and affine is not None
        mean = total / len(indexes)
        write_probabilities_atomic(
            out / PROBABILITIES_DIR / f"{case}.npz", mean, affine=affine, regions=REGIONS
        )
        label = label_map(mean, conv, threshold, rules, affine)
        write_label_atomic(out / f"{case}.nii.gz", label_image(label, None, affine))
        report.cases.append(case)
    return report
