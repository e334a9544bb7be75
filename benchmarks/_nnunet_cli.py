"""nnU-Net v2's own ``nnUNetv2_train`` / ``nnUNetv2_predict`` with its short trainers reachable.

nnU-Net finds the trainer named by ``-tr`` (and, when predicting, the one a checkpoint names) by
importing the modules under ``nnunetv2/training/nnUNetTrainer`` until one holds the class. The
default ``nnUNetTrainer`` is found before that search goes into sub-packages; a short variant
such as ``nnUNetTrainer_1epoch`` (``variants/training_length``) is not, and the search first
imports ``primus/``, which needs ``timm``, which needs ``torchvision``: this project installs
nnunetv2 without them (they would replace the pinned torch). This script runs nnU-Net's own
entry points unchanged except for that lookup: the ``nnUNetTrainer_<N>epochs`` classes are
imported from their module, ``nnUNetTrainer_smoke`` is defined here, any other name goes
through nnU-Net's search as before.

``nnUNetTrainer_smoke`` is nnU-Net's ``nnUNetTrainer_250epochs_NoMirroring`` (the default
trainer without mirroring, in training and at inference) cut to one epoch of
``SMOKE_ITERATIONS`` training and 2 validation iterations (nnU-Net's own data loading,
augmentation, loss, checkpoint and final validation): on this project's shared 2-core test
machine ``nnUNetTrainer_1epoch`` (250 iterations) did not finish its epoch in 10 minutes, so
the tests use this one to show that the pipeline runs; it does not train a useful model.

Usage (the arguments of ``nnUNetv2_train`` / ``nnUNetv2_predict``)::

    python benchmarks/_nnunet_cli.py train 17 3d_fullres 0 -tr nnUNetTrainer_1epoch -device cpu
    python benchmarks/_nnunet_cli.py predict -i IN -o OUT -d 17 -c 3d_fullres -f 0 \\
        -tr nnUNetTrainer_1epoch -device cpu
"""

from __future__ import annotations

import sys
from typing import Any

#: Training iterations of ``nnUNetTrainer_smoke``'s one epoch.
SMOKE_ITERATIONS = 10


def _smoke_trainer() -> type:
    import torch
    from nnunetv2.training.nnUNetTrainer.variants.training_length.nnUNetTrainer_Xepochs_NoMirroring import (  # noqa: E501
        nnUNetTrainer_250epochs_NoMirroring,
    )

    class nnUNetTrainer_smoke(nnUNetTrainer_250epochs_NoMirroring):  # noqa: N801 - nnU-Net's naming
        # nnU-Net records its constructor's arguments by name: the signature stays its own.
        def __init__(
            self,
            plans: dict,
            configuration: str,
            fold: int,
            dataset_json: dict,
            device: torch.device = torch.device("cuda"),  # noqa: B008 - nnU-Net's default
        ) -> None:
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_epochs = 1
            self.num_iterations_per_epoch = SMOKE_ITERATIONS
            self.num_val_iterations_per_epoch = 2

    return nnUNetTrainer_smoke


def _find_trainer(original: Any) -> Any:
    def find(trainer_name: str) -> Any:
        from nnunetv2.training.nnUNetTrainer.variants.training_length import (
            nnUNetTrainer_Xepochs as short,
        )

        if trainer_name == "nnUNetTrainer_smoke":
            return _smoke_trainer()
        found = getattr(short, trainer_name, None)
        return found if isinstance(found, type) else original(trainer_name)

    return find


def main(argv: list[str]) -> int:
    """Run nnU-Net's ``train`` or ``predict`` entry point on ``argv[1:]``."""
    if not argv or argv[0] not in ("train", "predict"):
        print("usage: _nnunet_cli.py {train,predict} <nnUNetv2_train/predict arguments>")
        return 2
    if argv[0] == "train":
        from nnunetv2.run import run_training as module

        entry = module.run_training_entry
    else:
        from nnunetv2.inference import predict_from_raw_data as module

        entry = module.predict_entry_point
    module.recursive_find_trainer_class_by_name = _find_trainer(  # type: ignore[attr-defined]
        module.recursive_find_trainer_class_by_name
    )
    sys.argv = [f"nnUNetv2_{argv[0]}", *argv[1:]]
    entry()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
