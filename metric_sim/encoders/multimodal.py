"""``ProductEncoder``: one vector for a product record (a title and a photo), kind ``multimodal``.

An item is a record: a mapping ``{"title": str, "image": <image item>, "description": str}``
(``description`` optional), or a ``str`` holding such a record as a JSON object (the form a
pair file stores; its image is then a location string). The text part (title, plus the
description when ``text_fields`` asks for it) goes through a text encoder (the project's
transformers :class:`~metric_sim.encoders.text.Encoder`, all-MiniLM-L6-v2 by default), the
image through an :class:`~metric_sim.encoders.image.ImageEncoder`. Each part is
L2-normalised, the two are concatenated, and a learned linear ``projection`` (the fusion)
maps them to one vector, L2-normalised when ``normalize``. The fusion starts as the identity,
so before any training the vector is the plain concatenation of the two unit vectors:
both parts weigh the same, and training learns how much each should.

Missing parts
-------------
A record with only a title, or only an image, still gets a vector: the missing part
contributes a **zero vector** in its half of the concatenation. Why zero: it adds no
direction of its own, so between two records that both lack the image the distance compares
the titles only (``|t1 - t2|`` in the text half, 0 in the image half), and between a record
with an image and one without, the image half adds the same amount (the image vector's unit
length) whatever the image is: a constant, not noise from some arbitrary stand-in picture.
A learned "missing" embedding would be a choice the model must be trained for; a zero is
right before training too. A record with neither a title nor an image is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from metric_sim.encoders.base import TrainableEncoder
from metric_sim.encoders.batching import embed_in_order
from metric_sim.encoders.image import DEFAULT_IMAGE_MODEL, ImageEncoder, image_encoder_from_name
from metric_sim.encoders.precision import autocast
from metric_sim.encoders.registry import load_encoder
from metric_sim.errors import (
    ConfigError,
    EncoderLoadError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
)
from metric_sim.images import IMAGE_FIELD, describe_record, is_image_item, record_id
from metric_sim.layout import (
    CONFIG_FILE,
    DEFAULT_MODEL,
    FUSION_FILE,
    PRODUCT_IMAGE_DIR,
    PRODUCT_TEXT_DIR,
    ModelSource,
)
from metric_sim.storage import atomic_dir

__all__ = ["TEXT_FIELDS", "ProductEncoder", "identity_fusion", "parse_record", "product_encoder_from_names"]

TEXT_FIELDS = ("title", "description")
TEXT_DIR, IMAGE_DIR = PRODUCT_TEXT_DIR, PRODUCT_IMAGE_DIR
_TEXT_PREFIX = "text_"  # collate's keys for the text encoder's inputs


def identity_fusion(in_features: int, out_features: int | None = None) -> nn.Linear:
    """A linear fusion that starts as the identity (the zero-shot concatenation); truncated when smaller."""
    out_features = in_features if out_features is None else int(out_features)
    layer = nn.Linear(in_features, out_features, bias=True)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(out_features, in_features))
        layer.bias.zero_()
    return layer


def parse_record(item: Any, label: str) -> dict[str, Any]:
    """``item`` (a mapping, or a str holding a JSON object) as a dict, every part checked."""
    if isinstance(item, str):
        try:
            record = json.loads(item)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            raise InvalidArgumentTypeError(
                f"{label} must be a record (a mapping with title/image) or its JSON object text, got the str {item!r:.80}"
            )
    elif isinstance(item, Mapping):
        record = dict(item)
    else:
        raise InvalidArgumentTypeError(f"{label} must be a record (a mapping with title/image) or its JSON text, "
                                       f"got {type(item).__name__}")
    for field in TEXT_FIELDS:
        if record.get(field) is not None and not isinstance(record[field], str):
            raise InvalidArgumentTypeError(f"{label}.{field} must be a str, got {type(record[field]).__name__}")
    image = record.get(IMAGE_FIELD)
    if image is not None and not is_image_item(image):
        raise InvalidArgumentTypeError(f"{label}.{IMAGE_FIELD} must be an image (a location, bytes, a PIL image or a "
                                       f"numpy array), got {type(image).__name__}")
    if not (record.get("title") or "").strip() and image is None:
        raise InvalidArgumentError(f"{label} has neither a title nor an image; a record needs at least one")
    return record


class ProductEncoder(nn.Module, TrainableEncoder):
    """Text part + image part, each L2-normalised, concatenated, fused by ``projection``, then ``normalize``."""

    kind = "multimodal"

    def __init__(
        self,
        text: TrainableEncoder,
        image: ImageEncoder,
        *,
        text_fields: Sequence[str] = ("title",),
        projection: nn.Linear | None = None,
        normalize: bool = True,
        source: str | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(text, TrainableEncoder) or not isinstance(text, nn.Module):
            raise InvalidArgumentTypeError(f"text must be a trainable (PyTorch) encoder, got {type(text).__name__}")
        if not isinstance(image, ImageEncoder):
            raise InvalidArgumentTypeError(f"image must be an ImageEncoder, got {type(image).__name__}")
        fields = list(text_fields)
        if not fields or fields[0] != "title" or not set(fields) <= set(TEXT_FIELDS) or len(set(fields)) != len(fields):
            raise InvalidArgumentError(f"text_fields must be ['title'] or ['title', 'description'], got {text_fields!r}")
        if not isinstance(normalize, bool):
            raise InvalidArgumentTypeError(f"normalize must be a bool, got {normalize!r}")
        self.text = text
        self.image = image
        self.text_fields = fields
        self.normalize = normalize
        if projection is not None:
            if not isinstance(projection, nn.Linear):
                raise InvalidArgumentTypeError(f"projection must be a torch.nn.Linear or None, got {type(projection).__name__}")
            if projection.in_features != self.pooled_dim:
                raise InvalidArgumentError(f"projection.in_features={projection.in_features} must equal the "
                                           f"concatenated size {self.pooled_dim}")
        self.projection = projection
        self.source = source

    @property
    def pooled_dim(self) -> int:
        return int(self.text.embedding_dim) + int(self.image.embedding_dim)

    @property
    def embedding_dim(self) -> int:
        return int(self.projection.out_features) if self.projection is not None else self.pooled_dim

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def check_items(self, items: Any, name: str = "items") -> list[dict[str, Any]]:
        if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Sequence):
            raise InvalidArgumentTypeError(f"{name} must be a list of records, got {type(items).__name__}")
        return [parse_record(item, f"{name}[{i}]") for i, item in enumerate(items)]

    def record_text(self, record: Mapping[str, Any]) -> str | None:
        """The text the text part encodes (the configured fields, present ones joined), or None."""
        parts = [record[f].strip() for f in self.text_fields if isinstance(record.get(f), str) and record[f].strip()]
        return "\n".join(parts) if parts else None

    def item_sizes(self, items: Sequence[Any]) -> np.ndarray:
        """Token count of the text part (0 without one): batches of similar lengths pad little."""
        records = self.check_items(items)
        texts = [self.record_text(r) for r in records]
        rows = [i for i, t in enumerate(texts) if t is not None]
        sizes = np.zeros(len(records), dtype=np.int64)
        if rows:
            sizes[rows] = self.text.item_sizes([texts[i] for i in rows])
        return sizes

    def item_id(self, item: Any) -> str:
        return record_id(parse_record(item, "item"))

    def describe_item(self, item: Any) -> str:
        return describe_record(parse_record(item, "item"))

    def _inputs(self, records: Sequence[dict[str, Any]], labels: Sequence[str], augmented: bool) -> dict[str, torch.Tensor]:
        texts = [self.record_text(r) for r in records]
        has_text = [t is not None for t in texts]
        has_image = [r.get(IMAGE_FIELD) is not None for r in records]
        rows = [i for i, present in enumerate(has_image) if present]
        pixels = self.image.pixels([records[i][IMAGE_FIELD] for i in rows], augmented=augmented,
                                   labels=[f"{labels[i]}.{IMAGE_FIELD}" for i in rows])
        inputs: dict[str, torch.Tensor] = {
            "text_present": torch.tensor(has_text, dtype=torch.bool),
            "image_present": torch.tensor(has_image, dtype=torch.bool),
            "pixels": pixels,
        }
        if any(has_text):
            tokens = self.text.collate([t for t in texts if t is not None])
            inputs.update({_TEXT_PREFIX + k: v for k, v in tokens.items()})
        return inputs

    def collate(self, items: Sequence[Any]) -> dict[str, torch.Tensor]:
        """Text inputs (``text_*``, present texts only), ``pixels`` (present images only) and the presence masks."""
        records = self.check_items(items)
        return self._inputs(records, [f"items[{i}]" for i in range(len(records))], augmented=self.training)

    @staticmethod
    def _scatter(values: torch.Tensor, present: torch.Tensor, rows: int) -> torch.Tensor:
        """Unit vectors in the present rows, zeros in the others (out of place: keeps gradients)."""
        out = values.new_zeros((rows, values.shape[1]))
        index = torch.nonzero(present.to(values.device), as_tuple=False).flatten()
        return out.index_copy(0, index, nn.functional.normalize(values, p=2, dim=-1))

    def forward(self, text_present: torch.Tensor, image_present: torch.Tensor, pixels: torch.Tensor,
                **text_inputs: torch.Tensor) -> torch.Tensor:
        rows = int(text_present.shape[0])
        text_dim, image_dim = int(self.text.embedding_dim), int(self.image.embedding_dim)
        if bool(text_present.any()):
            text_vecs = self.text(**{k[len(_TEXT_PREFIX):]: v for k, v in text_inputs.items()})
        else:
            text_vecs = pixels.new_zeros((0, text_dim))
        image_vecs = self.image(pixels) if pixels.shape[0] else text_vecs.new_zeros((0, image_dim))
        joined = torch.cat([self._scatter(text_vecs, text_present, rows), self._scatter(image_vecs, image_present, rows)],
                           dim=-1)
        if self.projection is not None:
            joined = self.projection(joined)
        return nn.functional.normalize(joined, p=2, dim=-1) if self.normalize else joined

    def encode(self, items: Sequence[Any], *, batch_size: int = 64, show_progress: bool = False) -> np.ndarray:
        """float32 ``(len(items), embedding_dim)`` in input order; eval mode (no augmentation)."""
        records = self.check_items(items)
        target = self.device

        def embed_rows(rows: np.ndarray) -> np.ndarray:
            inputs = self._inputs([records[i] for i in rows], [f"items[{i}]" for i in rows], augmented=False)
            return self(**{k: v.to(target) for k, v in inputs.items()}).float().cpu().numpy()

        was_training = self.training
        self.eval()
        try:
            with self.image.channels_last(), torch.inference_mode(), autocast(self.inference_precision, target.type):
                return embed_in_order(len(records), self.item_sizes(records), embed_rows, dim=self.embedding_dim,
                                      batch_size=batch_size, show_progress=show_progress, unit="record")
        finally:
            self.train(was_training)

    def base_encoder(self) -> ProductEncoder:
        """The concatenation of the two unit vectors: no fusion head, no final normalisation (shared weights)."""
        return ProductEncoder(self.text, self.image, text_fields=self.text_fields, projection=None, normalize=False,
                              source=self.source)

    def config_dict(self) -> dict[str, Any]:
        config: dict[str, Any] = {"text_fields": list(self.text_fields), "normalize": self.normalize,
                                  "parts": {"text": TEXT_DIR, "image": IMAGE_DIR}}
        if self.projection is not None:
            config["projection"] = {"in_features": int(self.projection.in_features),
                                    "out_features": int(self.projection.out_features),
                                    "bias": self.projection.bias is not None}
        return config

    def fingerprint(self) -> str:
        """sha256 of the settings, both parts' fingerprints and the fusion weights."""
        digest = hashlib.sha256(json.dumps(self.config_dict(), sort_keys=True).encode())
        digest.update(self.text.fingerprint().encode())
        digest.update(self.image.fingerprint().encode())
        if self.projection is not None:
            for name, tensor in sorted(self.projection.state_dict().items()):
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()

    def save(self, directory: str | os.PathLike[str], extra: dict[str, Any] | None = None) -> Path:
        """Both parts (subfolders ``text/`` and ``image/``), the fusion weights and ``metric_sim.json``, atomically."""
        from safetensors.torch import save_file

        target = Path(directory).expanduser().resolve()
        with atomic_dir(target) as staging:
            self.text.save(staging / TEXT_DIR)
            self.image.save(staging / IMAGE_DIR)
            if self.projection is not None:
                state = {k: v.detach().cpu().contiguous() for k, v in self.projection.state_dict().items()}
                save_file(state, str(staging / FUSION_FILE), metadata={"format": "pt"})
            self.write_model_config(staging, extra)
        return target

    @classmethod
    def from_source(cls, source: ModelSource, settings: dict[str, Any], *, device: str | torch.device | None = None,
                    **kwargs: Any) -> ProductEncoder:
        from safetensors.torch import load_file

        folder = source.folder
        if folder is None or not (folder / TEXT_DIR).is_dir() or not (folder / IMAGE_DIR).is_dir():
            raise EncoderLoadError(f"{source.name}: not a saved product encoder (needs {TEXT_DIR}/ and {IMAGE_DIR}/)")
        if kwargs:
            raise InvalidArgumentError(f"unknown options for a multimodal encoder: {sorted(kwargs)}")
        text = load_encoder(folder / TEXT_DIR, backend="torch")
        image = load_encoder(folder / IMAGE_DIR, backend="torch")
        head = settings.get("projection")
        projection = None
        if head:
            projection = nn.Linear(int(head["in_features"]), int(head["out_features"]), bias=bool(head.get("bias", True)))
            if not (folder / FUSION_FILE).is_file():
                raise EncoderLoadError(f"{folder / CONFIG_FILE} declares a fusion head, but {folder / FUSION_FILE} is missing")
            try:
                projection.load_state_dict(load_file(str(folder / FUSION_FILE)), strict=True)
            except RuntimeError as exc:
                raise EncoderLoadError(f"{folder / FUSION_FILE} does not match the declared fusion {head}: {exc}") from exc
        try:
            encoder = cls(text, image, text_fields=settings.get("text_fields", ["title"]), projection=projection,
                          normalize=bool(settings.get("normalize", True)), source=source.name)
        except (InvalidArgumentError, InvalidArgumentTypeError) as exc:
            raise ConfigError(f"{folder / CONFIG_FILE}: the encoder settings are invalid: {exc}") from exc
        if device is not None:
            encoder.to(device)
        return encoder.eval()


def product_encoder_from_names(
    text: str | os.PathLike[str] = DEFAULT_MODEL,
    image: str | os.PathLike[str] = DEFAULT_IMAGE_MODEL,
    *,
    include_description: bool = False,
    fusion_dim: int | None = None,
    normalize: bool = True,
    image_options: dict[str, Any] | None = None,
) -> ProductEncoder:
    """A product encoder from a text model name (``"default"``: all-MiniLM-L6-v2) and an image model name
    (:func:`~metric_sim.encoders.image.image_encoder_from_name`), with an identity-initialised fusion."""
    text_encoder = load_encoder(text, backend="torch")
    if not isinstance(text_encoder, TrainableEncoder):
        raise EncoderLoadError(f"{text!r} is not a trainable text encoder")
    image_encoder = image_encoder_from_name(image, **(image_options or {}))
    pooled = int(text_encoder.embedding_dim) + int(image_encoder.embedding_dim)
    return ProductEncoder(text_encoder, image_encoder,
                          text_fields=("title", "description") if include_description else ("title",),
                          projection=identity_fusion(pooled, fusion_dim), normalize=normalize, source=f"{text}+{image}")
