"""The network call of the predictor, by backend: the bundle's PyTorch module or ONNX Runtime.

:class:`~tumorseg.inference.Predictor` calls its network through the bundle's inferer
(``inferer(window, network)``), so a backend is a ``torch.nn.Module`` whose ``forward`` maps a
``(B, 4, X, Y, Z)`` float tensor to ``(B, 3, X, Y, Z)`` region logits. PyTorch is the
bundle's network itself; :class:`OnnxRuntimeNetwork` runs a network exported by
``tumorseg export`` (:mod:`tumorseg.inference.export`) in an ONNX Runtime session instead.
Preprocessing, sliding window, inversion and writing are the same code for both:
``tumorseg infer --backend onnxruntime --model model.onnx``.

ONNX Runtime comes with the ``onnx`` extra (``pip install 'tumorseg[onnx]'``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["BACKENDS", "OnnxRuntimeNetwork", "import_onnxruntime"]

#: What ``tumorseg infer --backend`` takes.
BACKENDS = ("pytorch", "onnxruntime")


def import_onnxruntime() -> Any:
    """The ``onnxruntime`` module, or an error naming the extra to install."""
    try:
        import onnxruntime
    except ImportError:
        raise ImportError(
            "the onnxruntime backend needs onnxruntime; install it with: "
            "pip install 'tumorseg[onnx]'"
        ) from None
    return onnxruntime


class OnnxRuntimeNetwork(torch.nn.Module):
    """An exported network run by ONNX Runtime, called like the PyTorch network it replaces.

    Args:
        model: the ``.onnx`` file (``tumorseg export --format onnx``).
        device: ``cuda`` uses ONNX Runtime's CUDA provider when it has one; anything else
            (default) runs on the CPU.
        num_threads: intra-op threads; default ONNX Runtime's (all cores).
        memory_arena: keep ONNX Runtime's CPU memory arena (faster allocation, but it keeps
            the largest activations of every window size reserved: off by default, since a
            whole-case run with it peaked over 5.5 GB and was killed for memory).

    Raises:
        FileNotFoundError: no file at ``model``.
        ValueError: the file is not an ONNX model ONNX Runtime can load (its reason shown).
        ImportError: onnxruntime missing (the extra to install is named).
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        device: str | torch.device | None = None,
        num_threads: int | None = None,
        memory_arena: bool = False,
    ) -> None:
        super().__init__()
        ort = import_onnxruntime()
        self.model = Path(model)
        if not self.model.is_file():
            raise FileNotFoundError(
                f"ONNX model {str(self.model)!r} does not exist (make one with tumorseg export "
                "--format onnx)"
            )
        options = ort.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = int(num_threads)
        options.enable_cpu_mem_arena = bool(memory_arena)
        providers = ["CPUExecutionProvider"]
        if str(device or "").startswith("cuda") and (
            "CUDAExecutionProvider" in ort.get_available_providers()
        ):
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(self.model), options, providers=providers)
        except Exception as err:  # ONNX Runtime raises its own exception types
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ValueError(
                f"ONNX Runtime cannot load {str(self.model)!r}: {first}; export the network "
                "again with tumorseg export --format onnx"
            ) from None
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Region logits of a batch of windows, as a tensor on ``x``'s device."""
        self.calls += 1
        array = np.ascontiguousarray(x.detach().float().cpu().numpy())
        (logits,) = self.session.run([self.output_name], {self.input_name: array})
        return torch.from_numpy(np.asarray(logits)).to(x.device)
