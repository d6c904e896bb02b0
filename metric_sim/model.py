"""``SimilarityModel``: encoder + metric + calibrator, one saved folder for the whole classifier.

The encoder is any :class:`~metric_sim.encoders.base.ItemEncoder` (a transformers text
encoder, its ONNX export, or another kind of item); the model only needs the contract.
Distances are exactly symmetric: both sides of a pair list are embedded together, once,
in one canonical order, so swapping the two lists feeds the encoder the same batches.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from metric_sim.calibration import DEFAULT_FEATURE, Calibrator
from metric_sim.distances import Metric, paired_distances_numpy
from metric_sim.encoders.base import ItemEncoder
from metric_sim.encoders.registry import BACKENDS, load_encoder
from metric_sim.errors import (
    CalibrationError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    MissingFileError,
)
from metric_sim.layout import (
    CONFIG_FILE,
    FORMAT_VERSION,
    HF_CONFIG_FILE,
    resolve_model_dir,
    resolve_model_source,
)
from metric_sim.storage import read_json_object, write_json_atomic
from metric_sim.validation import require_same_length

__all__ = ["BACKENDS", "PairEmbeddings", "SimilarityModel"]


@dataclass(frozen=True)
class PairEmbeddings:
    """The union of the items of a pair list, embedded once, with each side's row in it.

    ``texts`` holds the unique items (texts for a text encoder) in embedding order.
    """

    texts: list[Any]
    embeddings: np.ndarray
    rows_a: np.ndarray
    rows_b: np.ndarray
    ids: list[str] | None = None  # content id of each unique item, when items are not strings

    @property
    def items(self) -> list[Any]:
        return self.texts

    def row_of(self) -> dict[Any, int]:
        """Item (its content id when items are not strings) -> row in ``embeddings``."""
        keys = self.texts if self.ids is None else self.ids
        return {key: i for i, key in enumerate(keys)}


class SimilarityModel:
    """Encoder + metric + calibrator: distances, probabilities and decisions for pairs of items."""

    def __init__(self, encoder: ItemEncoder, metric: Metric | str = Metric.EUCLIDEAN,
                 calibrator: Calibrator | None = None) -> None:
        if not isinstance(encoder, ItemEncoder):
            raise InvalidArgumentTypeError(
                f"encoder must implement metric_sim.encoders.ItemEncoder, got {type(encoder).__name__}"
            )
        self.encoder = encoder
        self.metric = Metric.parse(metric)
        if calibrator is not None and calibrator.metric is not self.metric:
            raise InvalidArgumentError(
                f"calibrator was fitted for metric {calibrator.metric.value!r}, but the model uses {self.metric.value!r}"
            )
        self.calibrator = calibrator

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike[str],
        *,
        metric: Metric | str | None = None,
        backend: str | None = None,
        **encoder_kwargs: Any,
    ) -> SimilarityModel:
        """Load a saved model folder or a training run folder (its ``model/``); any other
        encoder source (``"default"``, a Hugging Face folder or id) loads uncalibrated,
        Euclidean unless given.

        The folder's ``metric_sim.json`` names the encoder kind. ``backend="onnx"`` encodes
        with ONNX Runtime from an exported folder's ``onnx/model.onnx`` (``quantized=True``:
        ``model_int8.onnx``) and never imports torch; ``backend="torch"`` insists on the
        PyTorch encoder.
        """
        if backend is not None and backend not in BACKENDS:
            raise InvalidArgumentError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
        source = resolve_model_source(path)
        encoder = load_encoder(source, backend=backend, **encoder_kwargs)
        cfg = read_json_object(source.config_file) if source.config_file is not None else {}
        saved_metric = cfg.get("metric")
        if metric is not None and saved_metric is not None and Metric.parse(metric) is not Metric.parse(saved_metric):
            raise InvalidArgumentError(f"{path} was trained for metric {saved_metric!r}; got metric={metric!r}")
        chosen = Metric.parse(metric or saved_metric or Metric.EUCLIDEAN)
        calibrator = Calibrator.from_dict(cfg["calibrator"]) if cfg.get("calibrator") else None
        return cls(encoder, chosen, calibrator)

    def save(self, directory: str | os.PathLike[str], extra: dict[str, Any] | None = None) -> Path:
        payload: dict[str, Any] = {"metric": self.metric.value,
                                   "calibrator": self.calibrator.to_dict() if self.calibrator else None}
        payload.update(extra or {})
        return self.encoder.save(directory, extra=payload)

    def save_calibrator(self, directory: str | os.PathLike[str]) -> Path:
        """Store metric + calibrator in an existing model folder's ``metric_sim.json``.

        Only that one file changes (written to a temporary file, then renamed), so the
        weights are not rewritten. A folder without ``metric_sim.json`` gets one that
        also pins this encoder's settings.
        """
        calibrator = self._require_calibrator()
        folder = resolve_model_dir(directory)
        cfg_file = folder / CONFIG_FILE
        if not (folder / HF_CONFIG_FILE).is_file() and not cfg_file.is_file():
            raise MissingFileError(
                f"{folder} is not a model folder (no {HF_CONFIG_FILE} or {CONFIG_FILE}); "
                "save the model first with model.save(folder)"
            )
        payload = read_json_object(cfg_file) if cfg_file.is_file() else self.encoder.model_config()
        payload.setdefault("format_version", FORMAT_VERSION)
        saved_metric = payload.get("metric")
        if saved_metric is not None and Metric.parse(saved_metric) is not self.metric:
            raise InvalidArgumentError(
                f"{folder} holds a model for metric {saved_metric!r}; this calibrator is for {self.metric.value!r}"
            )
        payload["metric"] = self.metric.value
        payload["calibrator"] = calibrator.to_dict()
        write_json_atomic(cfg_file, payload)
        return cfg_file

    def embed(self, texts: Sequence[Any], *, batch_size: int = 64, show_progress: bool = False) -> np.ndarray:
        """float32 vectors of ``texts`` (any items the encoder accepts), in input order."""
        return self.encoder.encode(texts, batch_size=batch_size, show_progress=show_progress)

    def embed_pairs(self, texts_a: Sequence[Any], texts_b: Sequence[Any], *, batch_size: int = 64,
                    show_progress: bool = False) -> PairEmbeddings:
        """Embed the union of both sides once, in one canonical (sorted) order.

        Swapping the arguments feeds the encoder exactly the same batches, so the
        embeddings, and hence the distances, are identical bit for bit. Texts are sorted
        by text; other items by their content id.
        """
        items_a = self.encoder.check_items(texts_a, "texts_a")
        items_b = self.encoder.check_items(texts_b, "texts_b")
        require_same_length("texts_a", items_a, "texts_b", items_b)
        if all(isinstance(x, str) for x in items_a) and all(isinstance(x, str) for x in items_b):
            unique = sorted(set(items_a) | set(items_b))
            row = {text: i for i, text in enumerate(unique)}
            keys_a, keys_b, ids = items_a, items_b, None
        else:
            keys_a = [self.encoder.item_id(x) for x in items_a]
            keys_b = [self.encoder.item_id(x) for x in items_b]
            by_id = dict(zip(keys_a, items_a, strict=True)) | dict(zip(keys_b, items_b, strict=True))
            ids = sorted(by_id)
            unique = [by_id[i] for i in ids]
            row = {key: i for i, key in enumerate(ids)}
        embeddings = self.embed(unique, batch_size=batch_size, show_progress=show_progress)
        ia = np.fromiter((row[k] for k in keys_a), dtype=np.int64, count=len(keys_a))
        ib = np.fromiter((row[k] for k in keys_b), dtype=np.int64, count=len(keys_b))
        return PairEmbeddings(unique, embeddings, ia, ib, ids)

    def pair_distances(self, embedded: PairEmbeddings) -> np.ndarray:
        """``d(a[i], b[i])`` from :meth:`embed_pairs` output."""
        return paired_distances_numpy(embedded.embeddings[embedded.rows_a], embedded.embeddings[embedded.rows_b],
                                      self.metric)

    def distance(self, texts_a: Sequence[Any], texts_b: Sequence[Any], *, batch_size: int = 64,
                 show_progress: bool = False) -> np.ndarray:
        """``d(a[i], b[i])`` for each i; ``distance(a, b) == distance(b, a)`` bit for bit."""
        return self.pair_distances(self.embed_pairs(texts_a, texts_b, batch_size=batch_size,
                                                    show_progress=show_progress))

    def _require_calibrator(self) -> Calibrator:
        if self.calibrator is None:
            raise CalibrationError(
                "this model has no calibrator: fit one with model.calibrate(pairs) or `metric-sim calibrate`"
            )
        return self.calibrator

    def predict_proba(self, texts_a: Sequence[Any], texts_b: Sequence[Any], **kwargs: Any) -> np.ndarray:
        """Calibrated ``p(similar)``; exactly symmetric in its two arguments."""
        calibrator = self._require_calibrator()
        return calibrator.predict_proba(self.distance(texts_a, texts_b, **kwargs))

    def predict(self, texts_a: Sequence[Any], texts_b: Sequence[Any], **kwargs: Any) -> np.ndarray:
        calibrator = self._require_calibrator()
        return calibrator.predict(self.distance(texts_a, texts_b, **kwargs))

    @property
    def threshold(self) -> float:
        return self._require_calibrator().threshold

    def fit_calibrator(self, pairs: Any, *, fitted_on: str | None = None, batch_size: int = 64,
                       show_progress: bool = False, feature: str = DEFAULT_FEATURE) -> Calibrator:
        """Fit a calibrator on held-out pairs (a ``PairDataset``) without attaching it."""
        if len(pairs) == 0:
            raise CalibrationError("the calibration split is empty: it needs both similar and dissimilar pairs")
        distances = self.distance(pairs.texts_a, pairs.texts_b, batch_size=batch_size, show_progress=show_progress)
        return Calibrator.fit(distances, pairs.labels, self.metric, fitted_on=fitted_on, feature=feature)

    def calibrate(self, pairs: Any, *, fitted_on: str | None = None, batch_size: int = 64,
                  show_progress: bool = False, feature: str = DEFAULT_FEATURE) -> Calibrator:
        """Fit and attach the calibrator on held-out pairs (never the ones you score on)."""
        self.calibrator = self.fit_calibrator(pairs, fitted_on=fitted_on, batch_size=batch_size,
                                              show_progress=show_progress, feature=feature)
        return self.calibrator
