"""The precision ``encode`` computes in: float32 (the default) or bfloat16 autocast.

Under bfloat16 autocast PyTorch runs matrix products and convolutions in bfloat16 (8-bit
mantissa, float32 range) and keeps reductions such as layer norm and softmax in float32.
CPUs with AVX512-BF16 or AMX (AMD Zen 4, Intel Sapphire Rapids and later) do those products at
about twice the float32 rate: the MiniLM text encoder encodes 1.57x faster here. Elsewhere
PyTorch emulates them and it is slower. Vectors move by about 1e-3 (cosine >= 0.9999 to the
float32 ones); the cost in test AP is measured in ``benchmarks/RESULTS.md``.

Only inference: training always runs in float32. Not part of the encoder fingerprint: like the
device, the precision is how an encoder's vectors are computed, not which encoder made them.
"""

from __future__ import annotations

import contextlib
from typing import Any

from metric_sim.errors import InvalidArgumentError

__all__ = ["PRECISIONS", "autocast", "parse_precision"]

PRECISIONS = ("float32", "bfloat16")
_ALIASES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16"}


def parse_precision(value: Any, name: str = "precision") -> str:
    """``value`` as one of :data:`PRECISIONS` (``fp32`` / ``bf16`` accepted), else an error naming it."""
    key = value.strip().lower() if isinstance(value, str) else None
    if key not in _ALIASES:
        raise InvalidArgumentError(f"{name} must be one of {list(PRECISIONS)} (or 'fp32' / 'bf16'), got {value!r}")
    return _ALIASES[key]


def autocast(precision: str, device_type: str) -> contextlib.AbstractContextManager[Any]:
    """The context ``encode`` runs its forward passes in: nothing for float32, bfloat16 autocast
    on ``device_type`` ('cpu', 'cuda') otherwise."""
    if parse_precision(precision) == "float32":
        return contextlib.nullcontext()
    import torch

    return torch.autocast(device_type=device_type, dtype=torch.bfloat16)
