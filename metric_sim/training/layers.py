"""An encoder's layers, bottom-up, as the training options that act per layer see them.

``freeze_layers`` (:func:`metric_sim.training.regularizers.freeze_lower_layers`) fixes the lowest
layers; ``layer_lr_decay`` (:func:`layer_lr_scales`) trains each layer at ``decay`` times the learning
rate of the layer above it (Howard & Ruder 2018, "Universal Language Model Fine-tuning"; Clark et al.
2020, ELECTRA), so the top layer moves at ``learning_rate`` and the embeddings least. transformers'
Trainer has no such option: it builds one learning rate for every parameter.

Layer groups come from the encoder's ``layer_groups()``: the embeddings (stem) first, then each
transformer layer (stage, conv block). A multimodal encoder has two towers, each split on its own.
Parameters outside every group (a projection head, a fusion head) are on top: they keep the full rate.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from metric_sim.errors import ConfigError

if TYPE_CHECKING:  # the config checks import this module, and must not load torch
    from torch import nn

__all__ = ["LAYERS_SUPPORTED", "check_layer_lr_decay", "layer_lr_scales", "layered_parts"]

LAYERS_SUPPORTED = "transformers text and vision models, timm models with stages, the small CNN"


def layered_parts(encoder: nn.Module) -> list[tuple[str, str, list[list[str]] | None]]:
    """(what, name prefix, layer groups bottom-up or None) of each tower: a multimodal encoder has two."""
    from metric_sim.encoders.multimodal import ProductEncoder

    if isinstance(encoder, ProductEncoder):
        return [(f"the multimodal encoder's {part} part ({type(tower).__name__})", f"{part}.", _groups(tower))
                for part, tower in (("text", encoder.text), ("image", encoder.image))]
    return [(f"the {getattr(encoder, 'kind', '') or type(encoder).__name__} encoder", "", _groups(encoder))]


def _groups(encoder: nn.Module) -> list[list[str]] | None:
    method = getattr(encoder, "layer_groups", None)
    return method() if callable(method) else None


def check_layer_lr_decay(decay: object) -> float:
    """``decay`` if it is a number in (0, 1], else ``ConfigError`` naming ``layer_lr_decay`` and the value."""
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not math.isfinite(decay) \
            or not 0 < decay <= 1:
        raise ConfigError(f"layer_lr_decay must be a number in (0, 1] (1: every layer at learning_rate), got {decay!r}")
    return float(decay)


def layer_lr_scales(encoder: nn.Module, decay: float) -> dict[str, float]:
    """Learning-rate multiplier of each layered parameter (by ``named_parameters`` name) under ``decay``.

    The top layer group of each tower gets 1, the one below ``decay``, then ``decay**2`` down to the
    embeddings (stem). Names absent from the result (heads) train at the full rate; ``decay == 1``
    returns ``{}``. Refused (``ConfigError`` naming ``layer_lr_decay`` and the value) when the encoder
    cannot be split into layers.
    """
    if check_layer_lr_decay(decay) == 1:
        return {}
    scales: dict[str, float] = {}
    for label, prefix, groups in layered_parts(encoder):
        if groups is None:
            raise ConfigError(f"layer_lr_decay={decay!r}: {label} cannot be split into layers (supported: "
                              f"{LAYERS_SUPPORTED})")
        top = len(groups) - 1
        for depth, group in enumerate(groups):
            for name in group:
                scales[prefix + name] = float(decay) ** (top - depth)
    return scales
