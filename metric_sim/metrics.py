"""Quality figures of a distance, each computed in one place.

Every figure ranks pairs by ``-distance`` (closer = more similar), so a model, a
baseline, the quickstart and a training run's dev check are always scored the same way.

* **Ranking**: :func:`average_precision` (the only AP computation in metric-sim),
  :func:`roc_auc`, and :func:`ranking_metrics` (both, plus the typical distances).
* **Pair decisions**: :func:`pair_metrics` scores the decisions of a calibrator fitted
  on other pairs; :func:`in_sample_thresholds` gives the best accuracy and F1 thresholds
  picked on the scored pairs themselves (optimistic, for comparison only).
* **Calibration**: :func:`reliability_bins`, :func:`expected_calibration_error` and
  :func:`calibration_metrics` (ECE, Brier score, log-loss); :func:`ece_sampling_floor`, the ECE
  that perfectly calibrated probabilities still score on a finite set of pairs.
* **Retrieval**: :func:`retrieval_metrics` (Recall@k, MRR@10, mAP@R, leave-one-out).
* **Symmetry**: :func:`symmetry_gap`, ``max |p(a, b) - p(b, a)|``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from metric_sim.distances import Metric, all_pairs_distances_numpy
from metric_sim.errors import InvalidArgumentError, InvalidArgumentTypeError
from metric_sim.validation import (
    as_binary_labels,
    as_distances,
    require_matrix,
    require_positive_int,
)

__all__ = [
    "ECE_BINS",
    "IN_SAMPLE_NOTE",
    "MRR_K",
    "RETRIEVAL_KS",
    "average_precision",
    "calibration_metrics",
    "ece_sampling_floor",
    "expected_calibration_error",
    "in_sample_thresholds",
    "pair_metrics",
    "ranking_metrics",
    "reliability_bins",
    "retrieval_metrics",
    "roc_auc",
    "symmetry_gap",
]

ECE_BINS = 15
RETRIEVAL_KS = (1, 5, 10)
MRR_K = 10
IN_SAMPLE_NOTE = (
    "thresholds picked on the scored split itself, as sentence-transformers' "
    "BinaryClassificationEvaluator does; optimistic, for comparison only"
)


def average_precision(distances: Any, labels: Any) -> float:
    """Average precision of ranking pairs by ``-distance`` (``labels`` 1 = similar)."""
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(np.asarray(labels), -np.asarray(distances, dtype=np.float64)))


def roc_auc(distances: Any, labels: Any) -> float:
    """ROC-AUC of ranking pairs by ``-distance`` (``labels`` 1 = similar)."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.asarray(labels), -np.asarray(distances, dtype=np.float64)))


def ranking_metrics(distances: Any, labels: Any) -> dict[str, float]:
    """Average precision and ROC-AUC of ranking by ``-distance``, plus the typical distances."""
    distances = np.asarray(distances, dtype=np.float64)
    labels = np.asarray(labels)
    return {
        "average_precision": average_precision(distances, labels),
        "roc_auc": roc_auc(distances, labels),
        "pairs": int(labels.size),
        "positives": int(labels.sum()),
        "median_distance_similar": float(np.median(distances[labels == 1])),
        "median_distance_dissimilar": float(np.median(distances[labels == 0])),
    }


def _distances_and_labels(distances: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    d = as_distances("distances", distances)
    y = as_binary_labels("labels", labels, d.size)
    if np.unique(y).size < 2:
        raise InvalidArgumentError(
            f"labels hold only class {int(y[0]) if y.size else 'none'} ({y.size} pairs); "
            "AP, ROC-AUC and F1 need both similar (1) and dissimilar (0) pairs"
        )
    return d, y


def _midpoint_threshold(distances: np.ndarray, cutoff: float) -> float | None:
    """Halfway between ``cutoff`` and the next larger distance: the same decisions, but
    a threshold that does not sit on a data point. ``None`` when no pair is predicted similar."""
    if not math.isfinite(cutoff):
        return None
    larger = distances[distances > cutoff]
    return float((cutoff + larger.min()) / 2) if larger.size else float(cutoff)


def in_sample_thresholds(distances: Any, labels: Any) -> dict[str, Any]:
    """Best accuracy and best F1 over every distance threshold, chosen on these pairs.

    Similar is predicted when ``d <= threshold``. Uses sklearn's ``roc_curve`` (every
    distinct distance is a candidate) and ``precision_recall_curve``.
    """
    from sklearn.metrics import precision_recall_curve, roc_curve

    d, y = _distances_and_labels(distances, labels)
    scores = -d  # larger score = more similar
    fpr, tpr, roc_thresholds = roc_curve(y, scores, drop_intermediate=False)
    positives = int(y.sum())
    negatives = y.size - positives
    accuracy = (tpr * positives + (1.0 - fpr) * negatives) / y.size
    i = int(np.argmax(accuracy))
    precision, recall, pr_thresholds = precision_recall_curve(y, scores)
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    j = int(np.argmax(f1[:-1]))  # the last point (recall 0) has no threshold
    return {
        "accuracy": float(accuracy[i]),
        "accuracy_threshold": _midpoint_threshold(d, -float(roc_thresholds[i])),
        "f1": float(f1[j]),
        "f1_threshold": _midpoint_threshold(d, -float(pr_thresholds[j])),
        "precision_at_f1_threshold": float(precision[j]),
        "recall_at_f1_threshold": float(recall[j]),
        "note": IN_SAMPLE_NOTE,
    }


def pair_metrics(distances: Any, labels: Any, calibrator: Any) -> dict[str, Any]:
    """AP, ROC-AUC and the decision quality at the calibrator's ``tau`` (plus in-sample best).

    ``calibrator`` is a :class:`metric_sim.calibration.Calibrator` (anything with its
    ``predict(distances)`` and ``threshold``) fitted on other pairs than these.
    """
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    # Checked by what it offers: a type check would tie this module to the calibration one.
    if not (callable(getattr(calibrator, "predict", None)) and hasattr(calibrator, "threshold")):
        raise InvalidArgumentTypeError(f"calibrator must be a Calibrator, got {type(calibrator).__name__}")
    d, y = _distances_and_labels(distances, labels)
    predicted = calibrator.predict(d)
    precision, recall, f1, _ = precision_recall_fscore_support(y, predicted, average="binary", zero_division=0)
    return {
        "pairs": int(y.size),
        "positives": int(y.sum()),
        "average_precision": average_precision(d, y),
        "roc_auc": roc_auc(d, y),
        "threshold": float(calibrator.threshold),
        "accuracy": float(accuracy_score(y, predicted)),
        "f1": float(f1),
        "precision": float(precision),
        "recall": float(recall),
        "predicted_similar": int(predicted.sum()),
        "in_sample": in_sample_thresholds(d, y),
    }


def _as_probabilities(probabilities: Any) -> np.ndarray:
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 1:
        raise InvalidArgumentError(f"probabilities must be a 1-D array, got shape {p.shape}")
    if not np.all(np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise InvalidArgumentError(f"probabilities must lie in [0, 1], got min {np.nanmin(p)!r} max {np.nanmax(p)!r}")
    return p


def _probabilities_and_labels(labels: Any, probabilities: Any) -> tuple[np.ndarray, np.ndarray]:
    p = _as_probabilities(probabilities)
    return as_binary_labels("labels", labels, p.size), p


def reliability_bins(labels: Any, probabilities: Any, n_bins: int = ECE_BINS) -> dict[str, list]:
    """Per equal-width bin of predicted probability: count, mean prediction, fraction similar.

    Bin assignment matches ``sklearn.calibration.calibration_curve(strategy="uniform")``:
    bins are ``(lo, hi]`` except the first, which also holds 0. Empty bins give ``None``.
    """
    n_bins = require_positive_int("n_bins", n_bins)
    y, p = _probabilities_and_labels(labels, probabilities)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bin_ids = np.searchsorted(edges[1:-1], p)
    count = np.bincount(bin_ids, minlength=n_bins)
    sum_p = np.bincount(bin_ids, weights=p, minlength=n_bins)
    sum_y = np.bincount(bin_ids, weights=y, minlength=n_bins)
    mean_p = [float(s / c) if c else None for s, c in zip(sum_p, count, strict=True)]
    frac_y = [float(s / c) if c else None for s, c in zip(sum_y, count, strict=True)]
    return {"edges": edges.tolist(), "count": count.tolist(), "mean_probability": mean_p, "fraction_similar": frac_y}


def expected_calibration_error(labels: Any, probabilities: Any, n_bins: int = ECE_BINS) -> float:
    """``sum_b (n_b / n) * |fraction similar in b - mean probability in b|`` over equal-width bins."""
    bins = reliability_bins(labels, probabilities, n_bins)
    total = sum(bins["count"])
    if total == 0:
        raise InvalidArgumentError("expected_calibration_error needs at least one probability")
    return float(
        sum(
            c / total * abs(f - m)
            for c, f, m in zip(bins["count"], bins["fraction_similar"], bins["mean_probability"], strict=True)
            if c
        )
    )


def ece_sampling_floor(probabilities: Any, n_bins: int = ECE_BINS, *, draws: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The ECE of perfectly calibrated probabilities on this many pairs: the figure's sampling noise.

    Binned ECE is not 0 for a calibrated model: each bin's fraction of similar pairs scatters
    around its mean probability. Labels are drawn ``draws`` times as ``Bernoulli(p)``, which makes
    ``probabilities`` exactly calibrated, and each draw is scored like
    :func:`expected_calibration_error`. An ECE inside this range is not evidence of miscalibration;
    one well above its ``p95`` is. Returns ``mean``, ``sd``, ``p95``, ``draws`` and ``pairs``.
    """
    n_bins = require_positive_int("n_bins", n_bins)
    draws = require_positive_int("draws", draws)
    p = _as_probabilities(probabilities)
    if p.size == 0:
        raise InvalidArgumentError("ece_sampling_floor needs at least one probability")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bin_ids = np.searchsorted(edges[1:-1], p)  # the same bins as reliability_bins
    count = np.bincount(bin_ids, minlength=n_bins)
    mean_p = np.bincount(bin_ids, weights=p, minlength=n_bins) / np.maximum(count, 1)
    in_bin = np.eye(n_bins)[bin_ids]  # pairs x bins, so one product counts each draw's similar pairs per bin
    rng = np.random.default_rng(seed)
    ece = np.empty(draws)
    for start in range(0, draws, 64):  # 64 draws at a time: memory stays at 64 x pairs
        labels = rng.random((min(64, draws - start), p.size)) < p
        similar = labels @ in_bin
        ece[start:start + len(labels)] = np.abs(similar - count * mean_p).sum(axis=1) / p.size
    return {"mean": float(ece.mean()), "sd": float(ece.std(ddof=1)) if draws > 1 else 0.0,
            "p95": float(np.percentile(ece, 95)), "draws": draws, "pairs": int(p.size)}


def calibration_metrics(labels: Any, probabilities: Any, n_bins: int = ECE_BINS) -> dict[str, Any]:
    """ECE (``n_bins`` equal-width bins), Brier score and log-loss (sklearn) of ``p(similar)``."""
    from sklearn.metrics import brier_score_loss, log_loss

    y, p = _probabilities_and_labels(labels, probabilities)
    return {
        "ece": expected_calibration_error(y, p, n_bins),
        "n_bins": int(n_bins),
        "brier": float(brier_score_loss(y, p)),
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "mean_probability": float(p.mean()),
        "fraction_similar": float(y.mean()),
        "bins": reliability_bins(y, p, n_bins),
    }


def retrieval_metrics(
    embeddings: Any,
    labels: Any,
    metric: Metric | str,
    *,
    ks: Sequence[int] = RETRIEVAL_KS,
    mrr_k: int = MRR_K,
    block_size: int = 256,
) -> dict[str, Any]:
    """Leave-one-out retrieval: each item queries all the others, ranked by raw distance.

    A neighbour is relevant when it carries the query's label (cluster). Queries
    whose label has no other member are skipped (as pytorch-metric-learning's
    ``AccuracyCalculator`` does) but stay in the gallery as distractors. Exact: the
    full distance row of every query is sorted (stable, so ties go to the lower index).

    * ``recall_at_k``: fraction of queries with at least one relevant item in the top k;
    * ``mrr_at_10``: mean of ``1 / rank`` of the first relevant item in the top 10 (0 if none);
    * ``map_at_r``: mean average precision at R, R = the query's number of relevant items.
    """
    metric = Metric.parse(metric)
    emb = require_matrix("embeddings", embeddings).astype(np.float32, copy=False)
    label_array = np.asarray(labels)
    if label_array.shape != (emb.shape[0],):
        raise InvalidArgumentError(
            f"labels must be 1-D with one label per embedding ({emb.shape[0]}), got shape {label_array.shape}"
        )
    ks = sorted({require_positive_int("ks[i]", k) for k in ks})
    mrr_k = require_positive_int("mrr_k", mrr_k)
    block_size = require_positive_int("block_size", block_size)
    _, inverse, counts = np.unique(label_array, return_inverse=True, return_counts=True)
    relevant = counts[inverse] - 1  # other members of the query's cluster
    queries = np.flatnonzero(relevant > 0)
    result: dict[str, Any] = {"gallery": int(emb.shape[0]), "queries": int(queries.size), "ranked_by": f"raw {metric.value} distance"}
    names = [f"recall_at_{k}" for k in ks] + [f"mrr_at_{mrr_k}", "map_at_r"]
    if queries.size == 0:
        return {**result, **dict.fromkeys(names)}
    depth = min(emb.shape[0] - 1, max(max(ks), mrr_k, int(relevant.max())))
    positions = np.arange(1, depth + 1, dtype=np.float64)
    sums = dict.fromkeys(names, 0.0)
    for start in range(0, queries.size, block_size):
        q = queries[start : start + block_size]
        dist = all_pairs_distances_numpy(emb[q], emb, metric)
        dist[np.arange(q.size), q] = np.inf  # the query itself is not a result
        ranked = np.argsort(dist, axis=1, kind="stable")[:, :depth]
        hits = inverse[ranked] == inverse[q][:, None]
        for k in ks:
            sums[f"recall_at_{k}"] += float(hits[:, :k].any(axis=1).sum())
        top = hits[:, :mrr_k]
        first = top.argmax(axis=1)
        sums[f"mrr_at_{mrr_k}"] += float(np.where(top.any(axis=1), 1.0 / (first + 1), 0.0).sum())
        r = relevant[q]
        within_r = positions[None, :] <= r[:, None]
        precision_at_i = np.cumsum(hits, axis=1) / positions[None, :]
        sums["map_at_r"] += float(((precision_at_i * hits * within_r).sum(axis=1) / r).sum())
    return {**result, **{name: value / queries.size for name, value in sums.items()}}


def symmetry_gap(p_ab: Any, p_ba: Any) -> float:
    """``max |p(a, b) - p(b, a)|`` over the pairs (0.0 for an exactly symmetric model)."""
    a = np.asarray(p_ab, dtype=np.float64)
    b = np.asarray(p_ba, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise InvalidArgumentError(
            f"p_ab and p_ba must be 1-D arrays of the same length, got shapes {a.shape} and {b.shape}"
        )
    return float(np.max(np.abs(a - b))) if a.size else 0.0
