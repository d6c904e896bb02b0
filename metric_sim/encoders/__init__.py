"""Encoders: the contract (:mod:`.base`), the registry of kinds (:mod:`.registry`) and the
built-in kinds, ``transformers`` (:class:`.text.Encoder`) and ``onnx`` (:class:`.onnx.OnnxEncoder`).

Importing this package does not import torch or onnxruntime; the implementations load
on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from metric_sim.encoders.base import ItemEncoder, TrainableEncoder
from metric_sim.encoders.registry import (
    encoder_class,
    list_encoders,
    load_encoder,
    register_encoder,
)

if TYPE_CHECKING:
    from metric_sim.encoders.onnx import OnnxEncoder
    from metric_sim.encoders.text import Encoder

__all__ = [
    "Encoder",
    "ItemEncoder",
    "OnnxEncoder",
    "TrainableEncoder",
    "encoder_class",
    "list_encoders",
    "load_encoder",
    "register_encoder",
]


def __getattr__(name: str) -> Any:
    if name == "Encoder":
        from metric_sim.encoders.text import Encoder

        return Encoder
    if name == "OnnxEncoder":
        from metric_sim.encoders.onnx import OnnxEncoder

        return OnnxEncoder
    raise AttributeError(f"module 'metric_sim.encoders' has no attribute {name!r}")
