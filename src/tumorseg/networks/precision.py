"""Reduced-precision forward passes on the CPU: bfloat16 autocast around any MONAI inferer.

MONAI's trainers and evaluators autocast only on CUDA (``torch.autocast("cuda")`` with their
``amp`` flag). A CPU with native bfloat16 (AVX-512 BF16 or AMX) runs convolutions about twice as
fast in bfloat16 as in float32 through oneDNN, so the CPU gets its autocast here, around the
inferer that both the trainer and the evaluator call. The network's output is handed back in
float32, so losses, sigmoids and metrics run at full precision, and gradients flow back through
the autocast region as usual.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from monai.inferers import Inferer, SimpleInferer
from torch import nn

__all__ = [
    "INFERENCE_PRECISIONS",
    "PRECISIONS",
    "AutocastInferer",
    "autocast_dtype",
    "cpu_bf16_supported",
    "float32_norms",
    "inference_dtype",
]

logger = logging.getLogger(__name__)

#: Values of a training bundle's ``precision`` key (CPU autocast; MONAI's engines do CUDA).
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")

#: Values of the inference ``precision`` key and of ``tumorseg infer --precision``.
INFERENCE_PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")


def cpu_bf16_supported() -> bool:
    """Whether this CPU computes bfloat16 natively (oneDNN with AVX-512 BF16 or AMX)."""
    return bool(
        torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


def autocast_dtype(device: torch.device | str, precision: str = "auto") -> torch.dtype | None:
    """The CPU autocast dtype for ``precision`` on ``device``, or None for plain float32.

    Args:
        device: where the network runs; on CUDA this is always None, since MONAI's engines
            already autocast there (their ``amp`` flag).
        precision: ``fp32``; ``bf16`` (refused on a CPU without native bfloat16, where it would
            be emulated and slower); ``auto`` (bfloat16 where the CPU has it natively).

    Raises:
        ValueError: an unknown ``precision``, or ``bf16`` on a CPU without native support.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if torch.device(device).type != "cpu" or precision == "fp32":
        return None
    native = cpu_bf16_supported()
    if precision == "bf16" and not native:
        raise ValueError(
            "precision 'bf16' asked for, but this CPU has no native bfloat16 (AVX-512 BF16 or "
            "AMX): use precision 'fp32' or 'auto'"
        )
    return torch.bfloat16 if native else None


def inference_dtype(device: torch.device | str, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype of an inference forward pass on ``device``, or None for float32.

    Unlike :func:`autocast_dtype` (training, CPU only) this covers CUDA too and never refuses a
    precision the hardware lacks: it falls back, with a warning, to what the device computes
    fast, since inference results hardly depend on it (measured in ``docs/benchmarks.md``).

    Args:
        device: where the network runs.
        precision: ``fp32``; ``bf16`` (CPU with AVX-512 BF16 or AMX, CUDA with bfloat16 support;
            else float32 on CPU, float16 on CUDA); ``fp16`` (CUDA; on a CPU float16 is slower
            than float32, so float32 there); ``auto``: bfloat16 where native (CPU or CUDA),
            float16 on older GPUs, else float32.

    Raises:
        ValueError: an unknown ``precision``.
    """
    if precision not in INFERENCE_PRECISIONS:
        raise ValueError(f"precision must be one of {INFERENCE_PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return None
    if torch.device(device).type == "cuda":
        if precision == "fp16":
            return torch.float16
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16
        if precision == "bf16":
            logger.warning("precision 'bf16' asked for, but this GPU has none: using float16")
        return torch.float16
    if precision == "bf16" or precision == "auto":
        if cpu_bf16_supported():
            return torch.bfloat16
        if precision == "bf16":
            logger.warning(
                "precision 'bf16' asked for, but this CPU has no native bfloat16 (AVX-512 BF16 "
                "or AMX): using float32"
            )
        return None
    logger.warning(
        "precision 'fp16' is for CUDA; on this CPU it is slower than float32: using float32"
    )
    return None


#: Normalisation layers :func:`float32_norms` runs in float32 (batch and instance norms share
#: ``_NormBase``).
NORM_LAYERS: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LayerNorm,
)


def _to_float32(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


@contextmanager
def float32_norms(network: nn.Module) -> Iterator[nn.Module]:
    """Within the block, ``network``'s normalisation layers take float32 inputs.

    Autocast runs convolutions in bfloat16/float16 and hands their low-precision outputs to the
    norm layers, which then compute statistics and normalise in that precision too. Feeding
    them float32 (the next convolution casts back down) keeps the fast convolutions and brings
    a synthetic-trained model's masks on two real studies from Dice 0.9945 to at least 0.9959
    of the float32 masks (``docs/benchmarks.md``). Forward pre-hooks, removed on exit: the
    network's modules and ``state_dict`` are unchanged. A network that is not a torch module
    (an ONNX Runtime session) is left as it is.
    """
    modules = network.modules() if isinstance(network, nn.Module) else ()
    handles = [
        m.register_forward_pre_hook(_to_float32, prepend=True)
        for m in modules
        if isinstance(m, NORM_LAYERS)
    ]
    try:
        yield network
    finally:
        for handle in handles:
            handle.remove()


class AutocastInferer(Inferer):
    """Runs ``inferer`` under CPU bfloat16 autocast and returns float32 outputs.

    Args:
        inferer: the inferer to wrap; default :class:`monai.inferers.SimpleInferer`.
        device: where the network runs (the bundle's ``device``).
        precision: see :func:`autocast_dtype`.
    """

    def __init__(
        self,
        inferer: Inferer | None = None,
        *,
        device: torch.device | str = "cpu",
        precision: str = "auto",
    ) -> None:
        super().__init__()
        self.inferer = inferer if inferer is not None else SimpleInferer()
        self.dtype = autocast_dtype(device, precision)

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> Any:
        """The wrapped inferer's output, computed in ``self.dtype`` where set, as float32."""
        if self.dtype is None:
            return self.inferer(inputs, network, *args, **kwargs)
        with torch.autocast("cpu", dtype=self.dtype):
            out = self.inferer(inputs, network, *args, **kwargs)
        return out.float() if isinstance(out, torch.Tensor) else out
