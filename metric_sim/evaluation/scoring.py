"""Score one model on one split: :class:`Evaluation` holds the arrays and the metrics.

The calibrator is fitted on another split (never the scored one) or taken from the
model; the metrics themselves come from :mod:`metric_sim.metrics`. Retrieval runs
over the split's distinct items, labelled by the dataset's own cluster rule
(``PairDataset.cluster_labels()``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from metric_sim.calibration import DEFAULT_FEATURE, Calibrator
from metric_sim.distances import Metric
from metric_sim.errors import CalibrationError, InvalidArgumentError, InvalidArgumentTypeError
from metric_sim.metrics import calibration_metrics, pair_metrics, retrieval_metrics, symmetry_gap
from metric_sim.model import PairEmbeddings, SimilarityModel

logger = logging.getLogger(__name__)


def describe_split(pairs: Any, split: str | None) -> str:
    """``"split 'dev' of FILE (N pairs)"``: what a calibrator's ``fitted_on`` records."""
    where = f"split {split!r} of {pairs.report.source}" if split else str(pairs.report.source)
    return f"{where} ({len(pairs):,} pairs)"


@dataclass
class Evaluation:
    """One model scored on one split: raw arrays (for the figures) and the metrics."""

    name: str
    source: str
    metric: Metric
    calibrator: Calibrator
    calibrator_origin: str
    labels: np.ndarray
    distances: np.ndarray
    probabilities: np.ndarray
    probabilities_reversed: np.ndarray
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "metric": self.metric.value,
            "calibrator": {**self.calibrator.to_dict(), "origin": self.calibrator_origin},
            "max_probability": float(self.calibrator.predict_proba([0.0])[0]),
            **self.metrics,
        }


def dataset_retrieval(pairs: Any, embedded: PairEmbeddings, metric: Metric) -> dict[str, Any]:
    """Retrieval over the distinct items (by id) of ``pairs``, labelled by the dataset's clusters."""
    ids, texts = pairs.unique_texts()
    clusters = pairs.cluster_labels()
    row = embedded.row_of()
    embeddings = embedded.embeddings[np.fromiter((row[t] for t in texts), dtype=np.int64, count=len(texts))]
    return retrieval_metrics(embeddings, [clusters[i] for i in ids], metric)


def _check_not_scored_split(pairs: Any, calibration_pairs: Any) -> list[str]:
    """Refuse calibrating on the scored pairs; return warnings for partial overlap."""
    scored = set(zip(pairs.texts_a, pairs.texts_b, strict=True))
    shared = sum(1 for pair in zip(calibration_pairs.texts_a, calibration_pairs.texts_b, strict=True) if pair in scored)
    if shared and shared == len(calibration_pairs) == len(pairs):
        raise CalibrationError(
            "the calibration pairs are the scored pairs: fit the calibrator on another split "
            "(e.g. --calibrate-on dev while scoring --split test)"
        )
    if shared:
        return [f"{shared} of the {len(calibration_pairs)} calibration pairs also occur in the scored split"]
    return []


def evaluate(
    model: SimilarityModel,
    pairs: Any,
    *,
    calibration_pairs: Any = None,
    calibration_name: str | None = None,
    calibration_feature: str = DEFAULT_FEATURE,
    name: str = "model",
    retrieval: bool = True,
    batch_size: int = 64,
    show_progress: bool = False,
) -> Evaluation:
    """Score ``model`` on ``pairs`` (a ``PairDataset``).

    The calibrator is fitted on ``calibration_pairs`` when given (never the scored
    pairs), in the form ``calibration_feature`` (see ``Calibrator.fit``); otherwise the
    model's stored one is used, whatever its form. The model itself is not changed.
    """
    if not isinstance(model, SimilarityModel):
        raise InvalidArgumentTypeError(f"model must be a SimilarityModel, got {type(model).__name__}")
    if len(pairs) == 0:
        raise InvalidArgumentError("the scored split has no pairs")
    started = time.perf_counter()
    warnings_: list[str] = []
    if calibration_pairs is not None:
        warnings_ += _check_not_scored_split(pairs, calibration_pairs)
        logger.info("%s: fitting the calibrator on %s", name, calibration_name or f"{len(calibration_pairs)} calibration pairs")
        calibrator = model.fit_calibrator(calibration_pairs, fitted_on=calibration_name, batch_size=batch_size,
                                          show_progress=show_progress, feature=calibration_feature)
        origin = f"fitted on {calibration_name or 'the calibration split'} for this report"
    elif model.calibrator is not None:
        calibrator = model.calibrator
        origin = "stored with the model" + (f" (fitted on {calibrator.fitted_on})" if calibrator.fitted_on else "")
    else:
        raise CalibrationError(
            f"{name} has no stored calibrator: pass calibration pairs (--calibrate-on SPLIT, e.g. dev) "
            "or fit and store one first with `metric-sim calibrate`"
        )
    fitted = time.perf_counter()
    scored = SimilarityModel(model.encoder, model.metric, calibrator)
    labels = pairs.labels
    logger.info("%s: encoding %d scored pairs", name, len(pairs))
    embedded = scored.embed_pairs(pairs.texts_a, pairs.texts_b, batch_size=batch_size, show_progress=show_progress)
    distances = scored.pair_distances(embedded)
    probabilities = calibrator.predict_proba(distances)
    encoded = time.perf_counter()
    # The reverse order goes through the public API again, re-encoding: the figure
    # then measures what a user calling predict_proba(b, a) gets, not an identity.
    logger.info("%s: symmetry check, scoring every pair again as (b, a)", name)
    reversed_ = scored.predict_proba(pairs.texts_b, pairs.texts_a, batch_size=batch_size, show_progress=show_progress)
    metrics: dict[str, Any] = {
        "pairs": pair_metrics(distances, labels, calibrator),
        "calibration": calibration_metrics(labels, probabilities),
        "symmetry": {
            "max_abs_difference": symmetry_gap(probabilities, reversed_),
            "bitwise_equal": bool(np.array_equal(probabilities, reversed_)),
            "pairs": len(pairs),
        },
    }
    if retrieval:
        metrics["retrieval"] = dataset_retrieval(pairs, embedded, scored.metric)
    metrics["timing_s"] = {
        "calibrate": round(fitted - started, 3),
        "encode": round(encoded - fitted, 3),
        "total": round(time.perf_counter() - started, 3),
    }
    metrics["warnings"] = warnings_
    source = str(getattr(model.encoder, "source", None) or name)
    return Evaluation(name, source, scored.metric, calibrator, origin, labels, distances, probabilities, reversed_, metrics)
