"""A bundle's network exported to ONNX or TorchScript, checked against PyTorch as it is written.

:func:`export_network` writes the network of a predictor (weights loaded by the same code as
inference) to a file that runs without the training stack:

* ``onnx``: :func:`torch.onnx.export` (TorchScript-based exporter, opset 17) with the batch
  and the three spatial axes dynamic, so the sliding window may use any window size the
  network accepts; run it with ``tumorseg infer --backend onnxruntime --model model.onnx``
  (:class:`~tumorseg.inference.backends.OnnxRuntimeNetwork`);
* ``torchscript``: :func:`torch.jit.trace` (convolutions only: traced shapes generalise),
  loadable with :func:`torch.jit.load`.

Instance and group normalisation are exported as explicit reductions, one spatial axis at a
time (:class:`AxiswiseInstanceNorm`, :func:`onnx_ready`), not as ONNX
``InstanceNormalization``: ONNX Runtime's CPU kernel of that operator (and its ``ReduceMean``
over several axes at once) is as inaccurate as one float32 running sum over the whole window,
its error growing with the window's mean. On a 96^3 window that alone is off by 5e-5 (mean 0)
to 3e-4 (mean 100) against float64, against 3e-7 to 3e-6 for PyTorch; through the 22
normalisations of the bundle's DynUNet it put the probabilities of the real study TCGA-DU-7294
6.7e-3 from PyTorch's and changed 89 mask voxels, while PyTorch stayed within 2e-5 of float64
(``docs/benchmarks.md``). A mean of per-axis means is the same mean, but every sum has at most
one axis of terms.

The parity check runs the exported file and the PyTorch network on windows of the bundle's
``roi_size`` and of a second size (the first axis halved): random ones, and one shaped like a
normalised study (a positive-mean block on a zero background, the case a whole-window float32
sum gets wrong), and compares the sigmoid probabilities; beyond ``atol`` the file is not kept.
The file is written atomically.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tumorseg.inference.backends import OnnxRuntimeNetwork
from tumorseg.io import atomic_path

__all__ = ["EXPORT_FORMATS", "AxiswiseInstanceNorm", "ExportReport", "export_network", "onnx_ready"]

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


def _axiswise_mean(x: torch.Tensor, start: int) -> torch.Tensor:
    """The mean of ``x`` over its axes from ``start`` on (kept), one axis per reduction."""
    for dim in range(x.dim() - 1, start - 1, -1):
        x = x.mean(dim, keepdim=True)
    return x


class AxiswiseInstanceNorm(torch.nn.Module):
    """Instance (or group) normalisation whose statistics are reduced one axis at a time.

    The same function as :class:`torch.nn.InstanceNorm3d` without running statistics, or
    :class:`torch.nn.GroupNorm` (``num_groups``), written as means over single axes so that an
    ONNX export has no ``InstanceNormalization`` and no many-axis ``ReduceMean`` (see the
    module docstring for why).

    Args:
        num_channels: channels of the input.
        eps: added to the variance.
        num_groups: channels normalised together (instance normalisation: ``num_channels``).
        weight: per-channel scale, or None.
        bias: per-channel shift, or None.
    """

    def __init__(
        self,
        num_channels: int,
        eps: float,
        *,
        num_groups: int | None = None,
        weight: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.num_channels = int(num_channels)
        self.num_groups = int(num_groups or num_channels)
        self.eps = float(eps)
        self.weight = None if weight is None else torch.nn.Parameter(weight.detach().clone())
        self.bias = None if bias is None else torch.nn.Parameter(bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(N, C, *spatial)`` normalised per sample and channel (or group)."""
        grouped = self.num_groups != self.num_channels
        # (N, C, *S), or (N, G, C/G, *S) for groups: statistics over every axis from 2 on
        y = x.unflatten(1, (self.num_groups, -1)) if grouped else x
        centred = y - _axiswise_mean(y, 2)
        y = centred * torch.rsqrt(_axiswise_mean(centred * centred, 2) + self.eps)
        if grouped:
            y = y.flatten(1, 2)
        shape = (1, -1, *([1] * (x.dim() - 2)))
        if self.weight is not None:
            y = y * self.weight.view(shape)
        if self.bias is not None:
            y = y + self.bias.view(shape)
        return y


def _replacement(module: torch.nn.Module) -> AxiswiseInstanceNorm | None:
    if isinstance(module, torch.nn.modules.instancenorm._InstanceNorm):
        if module.track_running_stats:  # normalised by stored statistics: nothing to sum
            return None
        return AxiswiseInstanceNorm(
            module.num_features, module.eps, weight=module.weight, bias=module.bias
        )
    if isinstance(module, torch.nn.GroupNorm):
        return AxiswiseInstanceNorm(
            module.num_channels,
            module.eps,
            num_groups=module.num_groups,
            weight=module.weight,
            bias=module.bias,
        )
    return None


def onnx_ready(network: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``network`` with its instance and group normalisations made
    :class:`AxiswiseInstanceNorm` (``network`` itself is left as it is)."""
    network = copy.deepcopy(network)
    for name, module in list(network.named_modules()):
        new = _replacement(module)
        if new is None or not name:
            continue
        parent, _, child = name.rpartition(".")
        setattr(network.get_submodule(parent) if parent else network, child, new)
    return network


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
    inputs = [_window(shape, generator, kind) for shape in shapes for kind in ("random", "study")]
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
            shape = tuple(x.shape)
            report.max_abs_diff[shape] = max(diff, report.max_abs_diff.get(shape, 0.0))
            if not diff <= atol:
                raise ValueError(
                    f"the {export_format} export differs from PyTorch by {diff:.3g} in the "
                    f"probabilities of a {tuple(x.shape)} window (tolerance {atol}); "
                    f"{path} was not written"
                )
    return report


def _window(shape: tuple[int, ...], generator: torch.Generator, kind: str) -> torch.Tensor:
    """A check window: ``random`` (standard normal), or ``study``: like a normalised study,
    a block of positive-mean values (the brain) on zeros (the background), a quarter of
    the window's side from each border."""
    x = torch.randn(shape, generator=generator)
    if kind == "random":
        return x
    block: tuple[Any, ...] = (..., *(slice(s // 4, s - s // 4) for s in shape[2:]))
    inside = torch.zeros(shape, dtype=torch.bool)
    inside[block] = True
    return torch.where(inside, 1.0 + 0.5 * x, torch.zeros(()))


def _write(network: torch.nn.Module, example: torch.Tensor, path: Path, export_format: str) -> None:
    if export_format == "onnx":
        torch.onnx.export(
            onnx_ready(network),
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
