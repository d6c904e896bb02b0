"""Encoders: the contract (:mod:`.base`), the registry of kinds (:mod:`.registry`) and the
built-in kinds: ``transformers`` (:class:`.text.Encoder`), ``onnx`` (:class:`.onnx.OnnxEncoder`),
``image`` (:class:`.image.ImageEncoder`) and ``multimodal`` (:class:`.multimodal.ProductEncoder`).

Importing this package does not import torch or onnxruntime; the implementations load
on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from metric_sim.encoders.base import ItemEncoder, TrainableEncoder
from metric_sim.encoders.registry import (
    encoder_class,
    list_encoders,
    load_encoder,
    register_encoder,
)

if TYPE_CHECKING:
    from metric_sim.encoders.image import ImageEncoder, image_encoder_from_name
    from metric_sim.encoders.multimodal import ProductEncoder, product_encoder_from_names
    from metric_sim.encoders.onnx import OnnxEncoder
    from metric_sim.encoders.text import Encoder

__all__ = [
    "Encoder",
    "ImageEncoder",
    "ItemEncoder",
    "OnnxEncoder",
    "ProductEncoder",
    "TrainableEncoder",
    "encoder_class",
    "image_encoder_from_name",
    "list_encoders",
    "load_encoder",
    "product_encoder_from_names",
    "register_encoder",
]

# Lazily served names -> the module that defines them (each imports torch or onnxruntime).
_LAZY = {
    "Encoder": "metric_sim.encoders.text",
    "OnnxEncoder": "metric_sim.encoders.onnx",
    "ImageEncoder": "metric_sim.encoders.image",
    "image_encoder_from_name": "metric_sim.encoders.image",
    "ProductEncoder": "metric_sim.encoders.multimodal",
    "product_encoder_from_names": "metric_sim.encoders.multimodal",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'metric_sim.encoders' has no attribute {name!r}")
