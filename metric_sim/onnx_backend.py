"""Old import path of the ONNX Runtime encoder; it lives in :mod:`metric_sim.encoders.onnx` now."""

from __future__ import annotations

from metric_sim.encoders.onnx import OnnxEncoder
from metric_sim.errors import OnnxModelError
from metric_sim.layout import ONNX_DIR, ONNX_FP32, ONNX_INT8

__all__ = ["ONNX_DIR", "ONNX_FP32", "ONNX_INT8", "OnnxEncoder", "OnnxModelError"]
