"""The encoder a training run (or a user) starts from, by name: one function for every kind.

A name is either a **saved folder** (any kind: its ``metric_sim.json`` says which), the
packaged text model ``"default"`` or a Hugging Face text model, or a **starting point**
of another kind:

* images: ``"efficientnet-lite0"`` (ImageNet weights, packaged), ``"small-cnn"`` (from
  scratch), ``"timm:NAME"``; a transformers *vision* folder needs ``kind: image``;
* title + image products: ``"multimodal"`` (all-MiniLM-L6-v2 + EfficientNet-Lite0 unless
  ``text_model`` / ``image_model`` say otherwise).

``options`` (a recipe's ``encoder_options``) go to that kind's builder; ``kind`` in them
forces the kind when the name alone cannot tell.
"""

from __future__ import annotations

import os
from typing import Any

from metric_sim.encoders.base import LEGACY_KIND, TEXT_KINDS, ItemEncoder, read_encoder_settings
from metric_sim.encoders.registry import load_encoder
from metric_sim.errors import ConfigError
from metric_sim.layout import resolve_model_source

__all__ = ["IMAGE_STARTING_POINTS", "MULTIMODAL_STARTING_POINT", "encoder_from_start", "starting_kind"]

IMAGE_STARTING_POINTS = ("efficientnet-lite0", "small-cnn")
MULTIMODAL_STARTING_POINT = "multimodal"
_KINDS = ("transformers", "image", "multimodal")


def starting_kind(name: str | os.PathLike[str], options: dict[str, Any] | None = None) -> str:
    """``"transformers"``, ``"image"`` or ``"multimodal"``: what ``name`` (+ ``options['kind']``) starts."""
    forced = (options or {}).get("kind")
    if forced is not None:
        if forced not in _KINDS:
            raise ConfigError(f"encoder_options.kind must be one of {list(_KINDS)}, got {forced!r}")
        return forced
    text = os.fspath(name)
    if text == MULTIMODAL_STARTING_POINT:
        return "multimodal"
    if text in IMAGE_STARTING_POINTS or text.startswith("timm:"):
        return "image"
    source = resolve_model_source(text)
    kind = read_encoder_settings(source).get("kind", LEGACY_KIND)
    return "transformers" if kind in TEXT_KINDS else kind


def encoder_from_start(
    name: str | os.PathLike[str],
    options: dict[str, Any] | None = None,
    *,
    seed: int | None = None,
    normalize: bool | None = None,
    max_length: int | None = None,
    pooling: str | None = None,
) -> ItemEncoder:
    """The encoder ``name`` starts from, with ``options`` for its kind's builder.

    Text settings (``max_length``, ``pooling``) apply to text encoders only; ``normalize``
    to every kind (``None`` keeps the starting point's own choice).
    """
    options = dict(options or {})
    kind = starting_kind(name, options)
    options.pop("kind", None)
    text = os.fspath(name)
    if kind == "transformers":
        if options:
            raise ConfigError(f"encoder_options {sorted(options)} do not apply to a text encoder ({text!r})")
        return load_encoder(text, backend="torch", max_length=max_length, pooling=pooling, normalize=normalize)
    source_kind = None if text in IMAGE_STARTING_POINTS or text.startswith("timm:") or text == "multimodal" \
        else read_encoder_settings(resolve_model_source(text)).get("kind")
    if source_kind in ("image", "multimodal"):  # a saved folder of that kind: continue from it
        extra = {"normalize": normalize} if normalize is not None else {}
        if kind == "image" and "augment" in options:
            extra["augment"] = options.pop("augment")
        if options:
            raise ConfigError(f"encoder_options {sorted(options)} cannot change a saved {source_kind} encoder "
                              f"({text!r}); only augment (images) and normalize can")
        return load_encoder(text, backend="torch", **extra)
    if kind == "image":
        from metric_sim.encoders.image import image_encoder_from_name

        return _build(image_encoder_from_name, text, options, seed=seed,
                      **({"normalize": normalize} if normalize is not None else {}))
    from metric_sim.encoders.multimodal import product_encoder_from_names

    if text != MULTIMODAL_STARTING_POINT:
        raise ConfigError(f"a multimodal encoder starts from 'multimodal' (with text_model / image_model options) "
                          f"or a saved multimodal folder, got {text!r}")
    text_model = options.pop("text_model", "default")
    image_model = options.pop("image_model", IMAGE_STARTING_POINTS[0])
    return _build(product_encoder_from_names, text_model, options, image=image_model,
                  **({"normalize": normalize} if normalize is not None else {}))


def _build(builder: Any, name: str, options: dict[str, Any], **fixed: Any) -> ItemEncoder:
    try:
        return builder(name, **fixed, **options)
    except TypeError as exc:  # an option the builder does not take: name it, not a traceback
        raise ConfigError(f"encoder_options for {name!r}: {exc}") from None
