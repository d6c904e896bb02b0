"""The encoder contract: what every kind of encoder (text, ONNX, image, ...) promises.

Everything above this layer (the similarity model, calibration, the neighbour index,
sharded encoding, training, evaluation, the CLI) talks to an encoder only through
:class:`ItemEncoder`, and training additionally through :class:`TrainableEncoder`.
Nothing downstream assumes that items are strings: an item is whatever the encoder
accepts (a text, an image path, a record, a small vector in the tests).

The contract
------------
* ``encode(items)`` returns float32 rows ``(len(items), embedding_dim)`` in input order.
  It embeds items in *encoding order*: :meth:`ItemEncoder.item_sizes` descending, ties
  in input order (:func:`metric_sim.encoders.batching.encoding_order`), cut into
  batches of ``batch_size``. Sharded encoding relies on that to cut the very same
  batches and stay bit-identical to one process.
* ``fingerprint()`` identifies the function the encoder computes (weights and
  settings); an index or shard folder records it and refuses another encoder.
* ``save(folder, extra)`` writes a folder whose ``metric_sim.json`` names the
  implementation (``encoder.kind``), so :func:`metric_sim.encoders.registry.load_encoder`
  finds the class again; ``extra`` entries (metric, calibrator, ...) are merged in.
* ``from_source(source, settings)`` is the loading half, called by the registry.

Training hooks (:class:`TrainableEncoder`, a ``torch.nn.Module``):
``collate(items)`` turns a batch of unique items into model inputs and
``forward(**inputs)`` returns their embeddings (differentiable); the same
``item_sizes`` key groups similar sizes into batches; an optional linear
``projection`` head and ``normalize`` flag are what frozen-encoder training learns on
top of :meth:`TrainableEncoder.base_encoder`'s cached outputs.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from metric_sim.errors import ConfigError
from metric_sim.items import describe_item, item_id
from metric_sim.layout import CONFIG_FILE, FORMAT_VERSION
from metric_sim.schema import SavedFields, read_json_file
from metric_sim.storage import write_json_atomic

if TYPE_CHECKING:
    import torch

    from metric_sim.layout import ModelSource

# metric_sim.json files written before encoders recorded their kind hold a transformers encoder.
LEGACY_KIND = "transformers"
# The kinds that pool token states (the transformers encoder and its ONNX export), and their modes.
TEXT_KINDS = ("transformers", "onnx")
TEXT_POOLING_MODES = ("mean", "cls", "max")


class ItemEncoder(ABC):
    """Maps items to float32 vectors; see the module docstring for the full contract."""

    #: Registry name, recorded as ``encoder.kind`` in ``metric_sim.json``.
    kind: ClassVar[str] = ""
    #: Where the encoder was loaded from (for messages and provenance), if anywhere.
    source: str | None = None

    @property
    @abstractmethod
    def embedding_dim(self) -> int:
        """Length of every vector ``encode`` returns."""

    @abstractmethod
    def check_items(self, items: Any, name: str = "items") -> list[Any]:
        """``items`` as a list, or an ``InvalidArgumentTypeError`` naming ``name[i]`` and what came."""

    @abstractmethod
    def item_sizes(self, items: Sequence[Any]) -> np.ndarray:
        """int64 batching key per item (token count for texts; 0 when all items cost the same)."""

    @abstractmethod
    def encode(self, items: Sequence[Any], *, batch_size: int = 64, show_progress: bool = False) -> np.ndarray:
        """float32 ``(len(items), embedding_dim)`` in input order, computed in encoding order."""

    @abstractmethod
    def fingerprint(self) -> str:
        """Hex digest of everything that determines the vectors (weights and settings)."""

    @abstractmethod
    def config_dict(self) -> dict[str, Any]:
        """The settings saved under ``encoder`` in ``metric_sim.json`` (without ``kind``)."""

    @abstractmethod
    def save(self, directory: str | os.PathLike[str], extra: dict[str, Any] | None = None) -> Path:
        """Write a loadable folder atomically; ``extra`` is merged into ``metric_sim.json``."""

    @classmethod
    @abstractmethod
    def from_source(cls, source: ModelSource, settings: dict[str, Any], **kwargs: Any) -> ItemEncoder:
        """Load from a resolved source; ``settings`` is the folder's ``encoder`` section (may be empty)."""

    def item_id(self, item: Any) -> str:
        """Stable content id of ``item`` (identical items share it)."""
        return item_id(item)

    def describe_item(self, item: Any) -> str:
        """What an index stores and shows for ``item`` (the text itself for texts)."""
        return describe_item(item)

    def model_config(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """The ``metric_sim.json`` payload ``save`` writes: format, encoder settings + kind, ``extra``."""
        return {"format_version": FORMAT_VERSION, "encoder": {**self.config_dict(), "kind": self.kind}, **(extra or {})}

    def write_model_config(self, folder: Path, extra: dict[str, Any] | None = None) -> None:
        write_json_atomic(folder / CONFIG_FILE, self.model_config(extra))


class TrainableEncoder(ItemEncoder):
    """An :class:`ItemEncoder` that is also a ``torch.nn.Module`` the trainer can fine-tune.

    Implementations inherit from ``torch.nn.Module`` as well; ``forward(**collate(items))``
    must equal ``encode(items)`` (up to batching) and be differentiable. They also have
    two attributes (instance attributes, not declared here: a class attribute would hide
    ``nn.Module``'s registered submodule): ``projection``, an optional ``torch.nn.Linear``
    applied to the pooled vector before normalisation, and ``normalize``, whether the
    final vectors are L2-normalised.
    """

    #: Precision of ``encode`` (never of training): ``float32``, or ``bfloat16`` autocast (see
    #: :mod:`metric_sim.encoders.precision`). A plain attribute: set it with :meth:`set_inference_precision`.
    inference_precision: str = "float32"

    def set_inference_precision(self, precision: str) -> None:
        """Make ``encode`` compute in ``precision`` (``float32`` or ``bfloat16``; ``fp32`` / ``bf16`` too)."""
        from metric_sim.encoders.precision import parse_precision

        self.inference_precision = parse_precision(precision)

    @abstractmethod
    def collate(self, items: Sequence[Any]) -> dict[str, torch.Tensor]:
        """Model inputs for a batch of items (padded to the batch), as ``forward`` takes them."""

    @property
    @abstractmethod
    def pooled_dim(self) -> int:
        """Dimension of the vectors before the projection head (the head's ``in_features``)."""

    @abstractmethod
    def base_encoder(self) -> TrainableEncoder:
        """The same encoder without projection head and normalisation (shares the weights):
        what frozen-encoder training embeds once and caches."""


def check_model_config(payload: Any, config_file: Path) -> None:
    """Refuse a ``metric_sim.json`` whose format or encoder settings are damaged (``ConfigError`` naming the field).

    The shared settings every built-in kind reads (``kind``, ``pooling``, ``normalize``,
    ``max_length``, ``projection``) are checked here; an implementation checks its own others.
    """
    fields = SavedFields(payload, config_file, ConfigError)
    fields.get("format_version", int, required=False, choices=(FORMAT_VERSION,))
    encoder = fields.section("encoder", required=False)
    if encoder is None:
        return
    kind = encoder.get("kind", str, required=False, default=LEGACY_KIND)
    encoder.get("pooling", str, required=False, choices=TEXT_POOLING_MODES if kind in TEXT_KINDS else None)
    encoder.get("normalize", bool, required=False)
    encoder.get("max_length", int, required=False, minimum=1)
    projection = encoder.section("projection", required=False, nullable=True)
    if projection is not None:
        projection.get("in_features", int, minimum=1)
        projection.get("out_features", int, minimum=1)
        projection.get("bias", bool, required=False)


def read_encoder_settings(source: ModelSource) -> dict[str, Any]:
    """The ``encoder`` section of the source's ``metric_sim.json`` (empty when it has none), once it validates."""
    config_file = source.config_file
    if config_file is None:
        return {}
    payload = read_json_file(config_file, ConfigError)
    check_model_config(payload, config_file)
    return dict(payload.get("encoder", {}))
