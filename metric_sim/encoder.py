"""Old import path of the text encoder; it lives in :mod:`metric_sim.encoders.text` now."""

from __future__ import annotations

from metric_sim.encoders.text import POOLING_MODES, Encoder, pool
from metric_sim.errors import EncoderLoadError
from metric_sim.layout import (
    CONFIG_FILE,
    DEFAULT_MODEL,
    FORMAT_VERSION,
    PROJECTION_FILE,
    default_model_path,
)
from metric_sim.storage import read_json, write_json_atomic

__all__ = [
    "CONFIG_FILE",
    "DEFAULT_MODEL",
    "FORMAT_VERSION",
    "POOLING_MODES",
    "PROJECTION_FILE",
    "Encoder",
    "EncoderLoadError",
    "default_model_path",
    "pool",
    "read_json",
    "write_json_atomic",
]
