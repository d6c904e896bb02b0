"""Turn a distance into a decision and a probability.

``Calibrator`` is a logistic regression on one feature of the distance ``d``: by
default ``p(similar | d) = sigmoid(w * d**2 + b)`` with ``w < 0`` (``feature="squared"``),
or the plain ``sigmoid(w * d + b)`` (``feature="linear"``). Its threshold is the
distance where ``p = 0.5``: ``tau = sqrt(-b / w)`` (squared) or ``-b / w`` (linear).
Because ``d(x, y) == d(y, x)`` exactly, so is ``p``; and ``p`` falls as ``d`` grows,
so ``d = 0`` gets the highest probability the model can give.

Why squared by default: for unit-normalised embeddings ``d**2 = 2 - 2 cos``, so the
squared form is the logistic on cosine similarity. On QQP the linear form is
misspecified: even fitted on the test split itself its ECE is 0.031 (fine-tuned
model), while the squared form fitted on dev scores 0.021 on test.

``SimilarityModel`` bundles encoder + metric + calibrator: one saved folder is the
whole classifier (weights, tokenizer and ``metric_sim.json``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.special import expit

from metric_sim._io import CONFIG_FILE, DEFAULT_MODEL, FORMAT_VERSION, read_json, write_json_atomic
from metric_sim._validation import (
    require_choice,
    require_probability,
    require_same_length,
    require_texts,
)
from metric_sim.distances import Metric, paired_distances_numpy

if TYPE_CHECKING:  # imported lazily: backend="onnx" must work without torch
    from metric_sim.encoder import Encoder
    from metric_sim.onnx_backend import OnnxEncoder

BACKENDS = ("torch", "onnx")
FEATURES = ("squared", "linear")
DEFAULT_FEATURE = "squared"
# metric_sim.json files written before the feature was recorded were fitted on d.
LEGACY_FEATURE = "linear"


class CalibrationError(ValueError):
    """The calibration data cannot give a meaningful distance threshold."""


def as_distances(name: str, values: Any) -> np.ndarray:
    """A 1-D float64 array of finite, non-negative distances (raises naming ``name``)."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of distances, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values")
    if np.any(array < 0):
        raise ValueError(f"{name} must be non-negative distances, got minimum {array.min()!r}")
    return array


def as_binary_labels(name: str, values: Any, size: int) -> np.ndarray:
    """A 1-D int64 array of 0/1 labels of length ``size`` (1 = similar)."""
    array = np.asarray(values)
    if array.shape != (size,):
        raise ValueError(f"{name} must be a 1-D array of {size} labels (one per distance), got shape {array.shape}")
    if not np.isin(array, (0, 1)).all():
        raise ValueError(f"{name} must be 0/1, got values {sorted(set(np.unique(array).tolist()))[:10]}")
    return array.astype(np.int64)


def _signed_sqrt(value: float) -> float:
    return math.copysign(math.sqrt(abs(value)), value)


@dataclass(frozen=True)
class Calibrator:
    """``p(similar | d) = sigmoid(weight * phi(d) + bias)`` with ``phi(d) = d**2`` (``feature="squared"``)
    or ``d`` (``"linear"``); similar when ``d <= threshold``."""

    weight: float
    bias: float
    metric: Metric
    n_fit: int = 0
    fitted_on: str | None = None
    feature: str = DEFAULT_FEATURE

    def __post_init__(self) -> None:
        object.__setattr__(self, "metric", Metric.parse(self.metric))
        require_choice("feature", self.feature, FEATURES)
        if not (math.isfinite(self.weight) and math.isfinite(self.bias)):
            raise CalibrationError(f"calibrator parameters must be finite, got weight={self.weight}, bias={self.bias}")
        if self.weight >= 0:
            raise CalibrationError(
                f"calibrator weight must be negative (larger distance -> less similar), got {self.weight}: "
                "the distance does not separate similar from dissimilar pairs"
            )

    @classmethod
    def fit(
        cls,
        distances: Any,
        labels: Any,
        metric: Metric | str,
        *,
        fitted_on: str | None = None,
        feature: str = DEFAULT_FEATURE,
    ) -> Calibrator:
        """Fit on held-out pairs: ``labels`` 1 = similar. Never fit on the split you score on."""
        from sklearn.linear_model import LogisticRegression

        require_choice("feature", feature, FEATURES)
        d = as_distances("distances", distances)
        y = as_binary_labels("labels", labels, d.size)
        classes = np.unique(y)
        if classes.size < 2:
            raise CalibrationError(
                f"the calibration split has only one class (label {int(classes[0]) if classes.size else 'none'}, "
                f"{d.size} pairs); it needs both similar and dissimilar pairs"
            )
        # Unregularised (C=inf): with one feature there is nothing to overfit, and a
        # penalty would bias the slope differently for Euclidean and Manhattan scales.
        # The feature is scaled to order 1 for the solver (Manhattan d**2 runs to hundreds)
        # and the slope scaled back, which leaves the maximum-likelihood fit unchanged.
        x = _feature_values(feature, d)
        scale = float(np.median(x)) or float(x.max()) or 1.0
        model = LogisticRegression(C=np.inf, tol=1e-8, max_iter=1000).fit((x / scale).reshape(-1, 1), y)
        weight = float(model.coef_[0, 0]) / scale
        if weight >= 0:
            raise CalibrationError(
                f"fitted weight is {weight:.4g} >= 0 on {d.size} pairs: similar pairs are not closer than "
                "dissimilar ones, so distance does not separate the classes (is the model trained? the labels inverted?)"
            )
        return cls(weight=weight, bias=float(model.intercept_[0]), metric=Metric.parse(metric), n_fit=int(d.size),
                   fitted_on=fitted_on, feature=feature)

    @property
    def threshold(self) -> float:
        """The distance where ``p = 0.5``: pairs at ``d <= tau`` are predicted similar.

        Negative when even ``d = 0`` has ``p < 0.5``: then no pair is predicted similar.
        """
        return self._distance_for_logit(0.0)

    @property
    def formula(self) -> str:
        """The fitted curve as a person reads it, e.g. ``sigmoid(-9.21 * d^2 + 2.99)``."""
        term = "d^2" if self.feature == "squared" else "d"
        return f"sigmoid({self.weight:.6g} * {term} + {self.bias:.6g})"

    def logits(self, distances: Any) -> np.ndarray:
        return self.weight * _feature_values(self.feature, as_distances("distances", distances)) + self.bias

    def predict_proba(self, distances: Any) -> np.ndarray:
        return expit(self.logits(distances))

    def predict(self, distances: Any) -> np.ndarray:
        """1 where ``p >= 0.5`` (equivalently ``d <= threshold``)."""
        return (self.logits(distances) >= 0).astype(np.int64)

    def distance_at(self, probability: float) -> float:
        """The distance whose probability is ``probability``: the radius for "p >= probability".

        Negative when ``probability`` exceeds ``p(d=0)``, the most this model can give:
        then no pair qualifies.
        """
        probability = require_probability("probability", probability, open_interval=True)
        return self._distance_for_logit(math.log(probability / (1.0 - probability)))

    def _distance_for_logit(self, logit: float) -> float:
        value = (logit - self.bias) / self.weight  # the feature value at this logit
        return _signed_sqrt(value) if self.feature == "squared" else value

    def to_dict(self) -> dict[str, Any]:
        return {
            "weight": self.weight,
            "bias": self.bias,
            "threshold": self.threshold,
            "metric": self.metric.value,
            "feature": self.feature,
            "n_fit": self.n_fit,
            "fitted_on": self.fitted_on,
        }

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> Calibrator:
        if not isinstance(payload, dict):
            raise TypeError(f"calibrator must be a dict, got {type(payload).__name__}")
        missing = [key for key in ("weight", "bias", "metric") if key not in payload]
        if missing:
            raise ValueError(f"calibrator dict is missing {missing}; got keys {sorted(payload)}")
        return cls(
            weight=float(payload["weight"]),
            bias=float(payload["bias"]),
            metric=Metric.parse(payload["metric"]),
            n_fit=int(payload.get("n_fit", 0)),
            fitted_on=payload.get("fitted_on"),
            feature=payload.get("feature", LEGACY_FEATURE),
        )


def _feature_values(feature: str, distances: np.ndarray) -> np.ndarray:
    return distances * distances if feature == "squared" else distances


def resolve_model_dir(path: str | os.PathLike[str]) -> Path:
    """A model folder, or the ``model/`` folder of a training run folder (``RUN_DIR``).

    A run folder is recognised by its ``train_config.json`` or by a ``model/`` child
    holding ``metric_sim.json`` while the folder itself holds no model.
    """
    folder = Path(path).expanduser()
    inner = folder / "model"
    is_model = (folder / "config.json").is_file() or (folder / CONFIG_FILE).is_file()
    if not is_model and inner.is_dir() and ((folder / "train_config.json").is_file() or (inner / CONFIG_FILE).is_file()):
        return inner
    return folder


@dataclass(frozen=True)
class PairEmbeddings:
    """The union of the texts of a pair list, embedded once, with each side's row in it."""

    texts: list[str]
    embeddings: np.ndarray
    rows_a: np.ndarray
    rows_b: np.ndarray

    def row_of(self) -> dict[str, int]:
        return {text: i for i, text in enumerate(self.texts)}


class SimilarityModel:
    """Encoder + metric + calibrator: distances, probabilities and decisions for text pairs."""

    def __init__(self, encoder: Encoder | OnnxEncoder, metric: Metric | str = Metric.EUCLIDEAN, calibrator: Calibrator | None = None) -> None:
        self.encoder = encoder
        self.metric = Metric.parse(metric)
        if calibrator is not None and calibrator.metric is not self.metric:
            raise ValueError(f"calibrator was fitted for metric {calibrator.metric.value!r}, but the model uses {self.metric.value!r}")
        self.calibrator = calibrator

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike[str],
        *,
        metric: Metric | str | None = None,
        backend: str = "torch",
        **encoder_kwargs: Any,
    ) -> SimilarityModel:
        """Load a saved model folder or a training run folder (its ``model/``); any other
        encoder source (``"default"``, a Hugging Face folder) loads uncalibrated, Euclidean unless given.

        ``backend="onnx"`` encodes with ONNX Runtime from an exported folder's
        ``onnx/model.onnx`` (``quantized=True``: ``model_int8.onnx``) and never imports torch.
        """
        if str(path) != DEFAULT_MODEL:
            path = resolve_model_dir(path)
        if require_choice("backend", backend, BACKENDS) == "onnx":
            from metric_sim.onnx_backend import OnnxEncoder

            encoder: Encoder | OnnxEncoder = OnnxEncoder.from_pretrained(path, **encoder_kwargs)
        else:
            from metric_sim.encoder import Encoder

            encoder = Encoder.from_pretrained(path, **encoder_kwargs)
        cfg_file = Path(str(path)).expanduser() / CONFIG_FILE
        cfg = read_json(cfg_file) if cfg_file.is_file() else {}
        saved_metric = cfg.get("metric")
        if metric is not None and saved_metric is not None and Metric.parse(metric) is not Metric.parse(saved_metric):
            raise ValueError(f"{path} was trained for metric {saved_metric!r}; got metric={metric!r}")
        chosen = Metric.parse(metric or saved_metric or Metric.EUCLIDEAN)
        calibrator = Calibrator.from_dict(cfg["calibrator"]) if cfg.get("calibrator") else None
        return cls(encoder, chosen, calibrator)

    def save(self, directory: str | os.PathLike[str], extra: dict[str, Any] | None = None) -> Path:
        payload: dict[str, Any] = {"metric": self.metric.value, "calibrator": self.calibrator.to_dict() if self.calibrator else None}
        payload.update(extra or {})
        return self.encoder.save(directory, extra=payload)

    def save_calibrator(self, directory: str | os.PathLike[str]) -> Path:
        """Store metric + calibrator in an existing model folder's ``metric_sim.json``.

        Only that one file changes (written to a temporary file, then renamed), so the
        weights are not rewritten. A folder without ``metric_sim.json`` gets one that
        also pins this encoder's pooling settings.
        """
        calibrator = self._require_calibrator()
        folder = resolve_model_dir(directory)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{folder} is not a model folder (no config.json); save the model first with model.save(folder)")
        cfg_file = folder / CONFIG_FILE
        payload = read_json(cfg_file) if cfg_file.is_file() else {"format_version": FORMAT_VERSION, "encoder": self.encoder.config_dict()}
        saved_metric = payload.get("metric")
        if saved_metric is not None and Metric.parse(saved_metric) is not self.metric:
            raise ValueError(f"{folder} holds a model for metric {saved_metric!r}; this calibrator is for {self.metric.value!r}")
        payload["metric"] = self.metric.value
        payload["calibrator"] = calibrator.to_dict()
        write_json_atomic(cfg_file, payload)
        return cfg_file

    # ------------------------------------------------------------------ distances
    def embed(self, texts: Sequence[str], *, batch_size: int = 64, show_progress: bool = False) -> np.ndarray:
        return self.encoder.encode(texts, batch_size=batch_size, show_progress=show_progress)

    def embed_pairs(self, texts_a: Sequence[str], texts_b: Sequence[str], *, batch_size: int = 64, show_progress: bool = False) -> PairEmbeddings:
        """Embed the union of both sides once, in one canonical (sorted) order.

        Swapping the arguments feeds the encoder exactly the same batches, so the
        embeddings, and hence the distances, are identical bit for bit.
        """
        texts_a = require_texts("texts_a", texts_a)
        texts_b = require_texts("texts_b", texts_b)
        require_same_length("texts_a", texts_a, "texts_b", texts_b)
        unique = sorted(set(texts_a) | set(texts_b))
        embeddings = self.embed(unique, batch_size=batch_size, show_progress=show_progress)
        row = {text: i for i, text in enumerate(unique)}
        ia = np.fromiter((row[t] for t in texts_a), dtype=np.int64, count=len(texts_a))
        ib = np.fromiter((row[t] for t in texts_b), dtype=np.int64, count=len(texts_b))
        return PairEmbeddings(unique, embeddings, ia, ib)

    def pair_distances(self, embedded: PairEmbeddings) -> np.ndarray:
        """``d(a[i], b[i])`` from :meth:`embed_pairs` output."""
        return paired_distances_numpy(embedded.embeddings[embedded.rows_a], embedded.embeddings[embedded.rows_b], self.metric)

    def distance(self, texts_a: Sequence[str], texts_b: Sequence[str], *, batch_size: int = 64, show_progress: bool = False) -> np.ndarray:
        """``d(a[i], b[i])`` for each i; ``distance(a, b) == distance(b, a)`` bit for bit."""
        return self.pair_distances(self.embed_pairs(texts_a, texts_b, batch_size=batch_size, show_progress=show_progress))

    def _require_calibrator(self) -> Calibrator:
        if self.calibrator is None:
            raise CalibrationError(
                "this model has no calibrator: fit one with model.calibrate(pairs) or `metric-sim calibrate`"
            )
        return self.calibrator

    def predict_proba(self, texts_a: Sequence[str], texts_b: Sequence[str], **kwargs: Any) -> np.ndarray:
        """Calibrated ``p(similar)``; exactly symmetric in its two arguments."""
        calibrator = self._require_calibrator()
        return calibrator.predict_proba(self.distance(texts_a, texts_b, **kwargs))

    def predict(self, texts_a: Sequence[str], texts_b: Sequence[str], **kwargs: Any) -> np.ndarray:
        calibrator = self._require_calibrator()
        return calibrator.predict(self.distance(texts_a, texts_b, **kwargs))

    @property
    def threshold(self) -> float:
        return self._require_calibrator().threshold

    def fit_calibrator(self, pairs: Any, *, fitted_on: str | None = None, batch_size: int = 64, show_progress: bool = False,
                       feature: str = DEFAULT_FEATURE) -> Calibrator:
        """Fit a calibrator on a held-out ``PairDataset`` without attaching it."""
        if len(pairs) == 0:
            raise CalibrationError("the calibration split is empty: it needs both similar and dissimilar pairs")
        distances = self.distance(pairs.texts_a, pairs.texts_b, batch_size=batch_size, show_progress=show_progress)
        return Calibrator.fit(distances, pairs.labels, self.metric, fitted_on=fitted_on, feature=feature)

    def calibrate(self, pairs: Any, *, fitted_on: str | None = None, batch_size: int = 64, show_progress: bool = False,
                  feature: str = DEFAULT_FEATURE) -> Calibrator:
        """Fit and attach the calibrator on a held-out ``PairDataset`` (never the one you score on)."""
        self.calibrator = self.fit_calibrator(pairs, fitted_on=fitted_on, batch_size=batch_size, show_progress=show_progress,
                                              feature=feature)
        return self.calibrator
