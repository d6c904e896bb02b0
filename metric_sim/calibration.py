"""Turn a distance into a decision and a probability.

``Calibrator`` is a logistic regression on the single feature ``d``:
``p(similar | d) = sigmoid(w * d + b)`` with ``w < 0``; its threshold is
``tau = -b / w``. Because ``d(x, y) == d(y, x)`` exactly, so is ``p``.

``SimilarityModel`` bundles encoder + metric + calibrator: one saved folder is the
whole classifier (weights, tokenizer and ``metric_sim.json``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import expit

from metric_sim._validation import require_probability, require_same_length, require_texts
from metric_sim.distances import Metric, paired_distances_numpy
from metric_sim.encoder import CONFIG_FILE, Encoder, read_json


class CalibrationError(ValueError):
    """The calibration data cannot give a meaningful distance threshold."""


def _as_distances(name: str, values: Any) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of distances, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values")
    if np.any(array < 0):
        raise ValueError(f"{name} must be non-negative distances, got minimum {array.min()!r}")
    return array


@dataclass(frozen=True)
class Calibrator:
    """``p(similar | d) = sigmoid(weight * d + bias)``; similar when ``d <= threshold``."""

    weight: float
    bias: float
    metric: Metric
    n_fit: int = 0
    fitted_on: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "metric", Metric.parse(self.metric))
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
    ) -> Calibrator:
        """Fit on held-out pairs: ``labels`` 1 = similar. Never fit on the split you score on."""
        from sklearn.linear_model import LogisticRegression

        d = _as_distances("distances", distances)
        y = np.asarray(labels)
        if y.shape != d.shape:
            raise ValueError(f"labels must have the same shape as distances, got {y.shape} and {d.shape}")
        if not np.isin(y, (0, 1)).all():
            raise ValueError(f"labels must be 0/1, got values {sorted(set(np.unique(y).tolist()))[:10]}")
        classes = np.unique(y)
        if classes.size < 2:
            raise CalibrationError(
                f"the calibration split has only one class (label {int(classes[0]) if classes.size else 'none'}, "
                f"{d.size} pairs); it needs both similar and dissimilar pairs"
            )
        # Unregularised (C=inf): with one feature there is nothing to overfit, and a
        # penalty would bias the slope differently for Euclidean and Manhattan scales.
        model = LogisticRegression(C=np.inf, max_iter=1000).fit(d.reshape(-1, 1), y.astype(int))
        weight = float(model.coef_[0, 0])
        if weight >= 0:
            raise CalibrationError(
                f"fitted weight is {weight:.4g} >= 0 on {d.size} pairs: similar pairs are not closer than "
                "dissimilar ones, so distance does not separate the classes (is the model trained? the labels inverted?)"
            )
        return cls(weight=weight, bias=float(model.intercept_[0]), metric=Metric.parse(metric), n_fit=int(d.size), fitted_on=fitted_on)

    @property
    def threshold(self) -> float:
        """``tau = -b / w``: pairs at distance ``d <= tau`` are predicted similar (p >= 0.5)."""
        return -self.bias / self.weight

    def logits(self, distances: Any) -> np.ndarray:
        return self.weight * _as_distances("distances", distances) + self.bias

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
        return (math.log(probability / (1.0 - probability)) - self.bias) / self.weight

    def to_dict(self) -> dict[str, Any]:
        return {
            "weight": self.weight,
            "bias": self.bias,
            "threshold": self.threshold,
            "metric": self.metric.value,
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
        )


class SimilarityModel:
    """Encoder + metric + calibrator: distances, probabilities and decisions for text pairs."""

    def __init__(self, encoder: Encoder, metric: Metric | str = Metric.EUCLIDEAN, calibrator: Calibrator | None = None) -> None:
        self.encoder = encoder
        self.metric = Metric.parse(metric)
        if calibrator is not None and calibrator.metric is not self.metric:
            raise ValueError(f"calibrator was fitted for metric {calibrator.metric.value!r}, but the model uses {self.metric.value!r}")
        self.calibrator = calibrator

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str], *, metric: Metric | str | None = None, **encoder_kwargs: Any) -> SimilarityModel:
        """Load a saved model folder (or any encoder source; then uncalibrated, Euclidean unless given)."""
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

    # ------------------------------------------------------------------ distances
    def embed(self, texts: Sequence[str], *, batch_size: int = 64, show_progress: bool = False) -> np.ndarray:
        return self.encoder.encode(texts, batch_size=batch_size, show_progress=show_progress)

    def distance(self, texts_a: Sequence[str], texts_b: Sequence[str], *, batch_size: int = 64, show_progress: bool = False) -> np.ndarray:
        """``d(a[i], b[i])`` for each i.

        The union of both sides is encoded once, in one canonical (sorted) order, so
        swapping the arguments feeds the encoder exactly the same batches: the
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
        return paired_distances_numpy(embeddings[ia], embeddings[ib], self.metric)

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

    def calibrate(self, pairs: Any, *, fitted_on: str | None = None, batch_size: int = 64, show_progress: bool = False) -> Calibrator:
        """Fit and attach the calibrator on a held-out ``PairDataset`` (never the one you score on)."""
        distances = self.distance(pairs.texts_a, pairs.texts_b, batch_size=batch_size, show_progress=show_progress)
        self.calibrator = Calibrator.fit(distances, pairs.labels, self.metric, fitted_on=fitted_on)
        return self.calibrator
