"""Encoder kinds by name, and the one function that loads any saved encoder.

A saved folder's ``metric_sim.json`` names its encoder kind (``encoder.kind``);
:func:`load_encoder` resolves the model name (``"default"``, a model or run folder, a
hub id) through :func:`metric_sim.layout.resolve_model_source`, reads the settings and
hands them to the registered class. Built-in kinds are listed as import paths, so
looking one up imports only that implementation (the ONNX path never imports torch).
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from metric_sim.encoders.base import LEGACY_KIND, ItemEncoder, read_encoder_settings
from metric_sim.errors import (
    EncoderLoadError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
)
from metric_sim.layout import ModelSource, resolve_model_source

BACKENDS = ("torch", "onnx")
_BUILTIN: dict[str, str] = {
    "transformers": "metric_sim.encoders.text:Encoder",
    "onnx": "metric_sim.encoders.onnx:OnnxEncoder",
    "image": "metric_sim.encoders.image:ImageEncoder",
    "multimodal": "metric_sim.encoders.multimodal:ProductEncoder",
}
_REGISTERED: dict[str, type[ItemEncoder]] = {}


def register_encoder(kind: str):
    """Class decorator: make ``kind`` (as saved in ``metric_sim.json``) load with this class."""
    if not isinstance(kind, str) or not kind:
        raise InvalidArgumentError(f"encoder kind must be a non-empty string, got {kind!r}")

    def decorate(cls: type[ItemEncoder]) -> type[ItemEncoder]:
        if not (isinstance(cls, type) and issubclass(cls, ItemEncoder)):
            raise InvalidArgumentTypeError(f"only ItemEncoder subclasses can be registered, got {cls!r}")
        if kind in _BUILTIN:
            raise InvalidArgumentError(f"encoder kind {kind!r} is built in; choose another name")
        cls.kind = kind
        _REGISTERED[kind] = cls
        return cls

    return decorate


def list_encoders() -> list[str]:
    return sorted(set(_BUILTIN) | set(_REGISTERED))


def encoder_class(kind: str) -> type[ItemEncoder]:
    """The class registered for ``kind``; an unknown kind lists the known ones."""
    if kind in _REGISTERED:
        return _REGISTERED[kind]
    if kind in _BUILTIN:
        module, name = _BUILTIN[kind].split(":")
        return getattr(importlib.import_module(module), name)
    raise EncoderLoadError(
        f"unknown encoder kind {kind!r}; known kinds: {list_encoders()} "
        "(a custom kind must be registered with metric_sim.encoders.register_encoder before loading)"
    )


def load_encoder(
    name_or_path: str | os.PathLike[str] | ModelSource = "default", *, backend: str | None = None, **kwargs: Any
) -> ItemEncoder:
    """Load any saved encoder: its kind comes from the folder (legacy folders: transformers).

    ``backend="onnx"`` runs an exported folder's ``onnx/model.onnx`` with ONNX Runtime
    whatever kind it records; ``backend="torch"`` insists on a trainable PyTorch encoder.
    ``kwargs`` go to the implementation (``pooling``, ``max_length``, ``quantized``, ...).
    """
    if backend is not None and backend not in BACKENDS:
        raise InvalidArgumentError(f"backend must be one of {list(BACKENDS)} or None, got {backend!r}")
    source = name_or_path if isinstance(name_or_path, ModelSource) else resolve_model_source(name_or_path)
    settings = read_encoder_settings(source)
    kind = settings.pop("kind", LEGACY_KIND)
    if backend == "onnx":
        if kind in ("image", "multimodal"):
            raise EncoderLoadError(f"{source.name}: backend='onnx' runs exported text models only; this {kind} "
                                   "model's onnx/model.onnx takes preprocessed pixels (see preprocessing.json and "
                                   "README.md); load it with backend='torch'")
        kind = "onnx"
    elif backend == "torch" and kind == "onnx":
        raise EncoderLoadError(f"{source.name} holds an ONNX encoder (no PyTorch weights); load it with backend='onnx'")
    return encoder_class(kind).from_source(source, settings, **kwargs)
