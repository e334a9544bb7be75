"""A bundle's network exported to ONNX or TorchScript, checked against PyTorch as it is written.

:func:`export_network` writes the network of a predictor (weights loaded by the same code as
inference) to a file that runs without the training stack:

* ``onnx``: :func:`torch.onnx.export` (TorchScript-based exporter, opset 17) with the batch
  and the three spatial axes dynamic, so the sliding window may use any window size the
  network accepts; run it with ``tumorseg infer --backend onnxruntime --model model.onnx``
  (:class:`~tumorseg.inference.backends.OnnxRuntimeNetwork`);
* ``torchscript``: :func:`torch.jit.trace` (convolutions only: traced shapes generalise),
  loadable with :func:`torch.jit.load`.

The parity check runs the exported file and the PyTorch network on random windows of the
bundle's ``roi_size`` and of a second size (the first axis halved), and compares the sigmoid
probabilities; beyond ``atol`` the file is not kept. The file is written atomically.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tumorseg.inference.backends import OnnxRuntimeNetwork
from tumorseg.io import atomic_path

__all__ = ["EXPORT_FORMATS", "ExportReport", "export_network"]

#: What ``tumorseg export --format`` takes.
EXPORT_FORMATS = ("onnx", "torchscript")

_OPSET = 17
_AXES = {0: "batch", 2: "x", 3: "y", 4: "z"}


@dataclass
class ExportReport:
    """What :func:`export_network` wrote and how close it is to PyTorch.

    Attributes:
        path: the exported file.
        export_format: ``onnx`` or ``torchscript``.
        max_abs_diff: per window shape checked, the largest difference of the sigmoid
            probabilities between the file and PyTorch.
        dynamic: whether a second window size was checked (the network accepted it).
    """

    path: Path
    export_format: str
    max_abs_diff: dict[tuple[int, ...], float] = field(default_factory=dict)
    dynamic: bool = False

    def summary(self) -> str:
        checks = ", ".join(
            f"{'x'.join(str(s) for s in shape[2:])}: {diff:.2g}"
            for shape, diff in self.max_abs_diff.items()
        )
        return (
            f"wrote {self.path} ({self.export_format}, "
            f"{'dynamic' if self.dynamic else 'fixed'} spatial size); largest probability "
            f"difference to PyTorch {checks}"
        )


def _check_shapes(network: torch.nn.Module, first: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The window shapes to check: the roi, and the roi with its first axis halved when the
    network accepts that (its strides may not)."""
    shapes = [first]
    half = (first[0], first[1], max(first[2] // 2, 1), *first[3:])
    if half != first:
        try:
            with torch.no_grad():
                network(torch.zeros(half))
            shapes.append(half)
        except Exception:  # a size the network's strides refuse: check the roi only
            pass
    return shapes


def _runner(path: Path, export_format: str) -> Any:
    if export_format == "onnx":
        return OnnxRuntimeNetwork(path)
    return torch.jit.load(str(path), map_location="cpu").eval()


def export_network(
    network: torch.nn.Module,
    path: str | os.PathLike[str],
    *,
    export_format: str,
    roi_size: Sequence[int],
    in_channels: int,
    atol: float = 1e-4,
    seed: int = 0,
) -> ExportReport:
    """Export ``network`` to ``path`` and check it against PyTorch.

    Args:
        network: the network with its weights (moved to the CPU, put in eval mode).
        path: the file to write (``.onnx``, ``.ts``/``.pt``).
        export_format: ``onnx`` or ``torchscript``.
        roi_size: the window size of the parity check (the bundle's ``roi_size``).
        in_channels: input channels of the network.
        atol: largest difference of the sigmoid probabilities accepted.
        seed: seed of the random check windows.

    Returns:
        The report of the export and its parity check.

    Raises:
        ValueError: an unknown format, a network that cannot be exported, or a file whose
            probabilities differ from PyTorch's by more than ``atol`` (nothing is kept).
    """
    if export_format not in EXPORT_FORMATS:
        raise ValueError(f"export format must be one of {EXPORT_FORMATS}, got {export_format!r}")
    path = Path(path)
    network = network.cpu().eval()
    first = (1, int(in_channels), *(int(s) for s in roi_size))
    shapes = _check_shapes(network, first)
    generator = torch.Generator().manual_seed(seed)
    inputs = [torch.randn(shape, generator=generator) for shape in shapes]
    report = ExportReport(path, export_format, dynamic=len(shapes) > 1)
    with atomic_path(path, keep_suffix=True) as tmp:
        try:
            _write(network, inputs[0], tmp, export_format)
        except Exception as err:
            first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ValueError(
                f"cannot export {type(network).__name__} to {export_format}: {first_line}"
            ) from None
        runner = _runner(tmp, export_format)
        for x in inputs:
            with torch.no_grad():
                expected = torch.sigmoid(network(x)).numpy()
                got = torch.sigmoid(runner(x)).numpy()
            diff = float(np.max(np.abs(got - expected)))
            report.max_abs_diff[tuple(x.shape)] = diff
            if not diff <= atol:
                raise ValueError(
                    f"the {export_format} export differs from PyTorch by {diff:.3g} in the "
                    f"probabilities of a {tuple(x.shape)} window (tolerance {atol}); "
                    f"{path} was not written"
                )
    return report


def _write(network: torch.nn.Module, example: torch.Tensor, path: Path, export_format: str) -> None:
    if export_format == "onnx":
        torch.onnx.export(
            network,
            (example,),
            str(path),
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": _AXES, "logits": _AXES},
            opset_version=_OPSET,
            dynamo=False,
        )
        return
    with torch.no_grad():
        traced = torch.jit.trace(network, example, check_trace=False)
    torch.jit.save(traced, str(path))
