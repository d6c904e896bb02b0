"""How good is a distance, and can its probabilities be trusted? Metrics and the report.

* **Pair metrics**: average precision and ROC-AUC of ranking by ``-d``; accuracy,
  F1, precision and recall at the calibrated threshold ``tau`` (fitted on another
  split). For comparison with sentence-transformers' ``BinaryClassificationEvaluator``
  the best accuracy and F1 thresholds picked on the scored split itself are given
  too, labelled ``in_sample``: they are optimistic by construction.
* **Calibration metrics**: expected calibration error over 15 equal-width bins,
  Brier score and log-loss of the calibrated probabilities.
* **Retrieval metrics** over the union-find cluster labels of the scored split,
  ranking every other text by raw distance: Recall@1/5/10, MRR@10 and mAP@R.
* **Symmetry**: the largest ``|p(a, b) - p(b, a)|``, computed through the public
  API in both orders (it is 0.0 by construction; the report shows that it is).

:func:`evaluate` scores one model; :func:`write_report` turns one or more
evaluations (the model and a baseline) into ``metrics.json``, ``report.md`` and PNG
figures; :func:`evaluate_and_report` does both.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from metric_sim._io import atomic_file, package_versions
from metric_sim._validation import require_matrix, require_positive_int
from metric_sim.calibration import (
    CalibrationError,
    Calibrator,
    PairEmbeddings,
    SimilarityModel,
    as_binary_labels,
    as_distances,
)
from metric_sim.distances import Metric, all_pairs_distances_numpy

logger = logging.getLogger(__name__)

__all__ = [
    "ECE_BINS",
    "FIGURES",
    "SCHEMA_VERSION",
    "Evaluation",
    "calibration_metrics",
    "describe_split",
    "evaluate",
    "evaluate_and_report",
    "example_pair_lines",
    "expected_calibration_error",
    "in_sample_thresholds",
    "pair_metrics",
    "reliability_bins",
    "retrieval_metrics",
    "symmetry_gap",
    "write_report",
]

SCHEMA_VERSION = 1
ECE_BINS = 15
RETRIEVAL_KS = (1, 5, 10)
MRR_K = 10
FIGURES = {
    "distance_histograms": "distance_histograms.png",
    "roc_pr": "roc_pr_curves.png",
    "reliability": "reliability_diagram.png",
}
IN_SAMPLE_NOTE = (
    "thresholds picked on the scored split itself, as sentence-transformers' "
    "BinaryClassificationEvaluator does; optimistic, for comparison only"
)


# ---------------------------------------------------------------------------- pair metrics
def _distances_and_labels(distances: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    d = as_distances("distances", distances)
    y = as_binary_labels("labels", labels, d.size)
    if np.unique(y).size < 2:
        raise ValueError(
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


def pair_metrics(distances: Any, labels: Any, calibrator: Calibrator) -> dict[str, Any]:
    """AP, ROC-AUC and the decision quality at the calibrator's ``tau`` (plus in-sample best).

    ``calibrator`` must have been fitted on other pairs than these.
    """
    from sklearn.metrics import (
        accuracy_score,
        average_precision_score,
        precision_recall_fscore_support,
        roc_auc_score,
    )

    if not isinstance(calibrator, Calibrator):
        raise TypeError(f"calibrator must be a Calibrator, got {type(calibrator).__name__}")
    d, y = _distances_and_labels(distances, labels)
    predicted = calibrator.predict(d)
    precision, recall, f1, _ = precision_recall_fscore_support(y, predicted, average="binary", zero_division=0)
    return {
        "pairs": int(y.size),
        "positives": int(y.sum()),
        "average_precision": float(average_precision_score(y, -d)),
        "roc_auc": float(roc_auc_score(y, -d)),
        "threshold": float(calibrator.threshold),
        "accuracy": float(accuracy_score(y, predicted)),
        "f1": float(f1),
        "precision": float(precision),
        "recall": float(recall),
        "predicted_similar": int(predicted.sum()),
        "in_sample": in_sample_thresholds(d, y),
    }


# ---------------------------------------------------------------------------- calibration metrics
def _probabilities_and_labels(labels: Any, probabilities: Any) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"probabilities must be a 1-D array, got shape {p.shape}")
    if not np.all(np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise ValueError(f"probabilities must lie in [0, 1], got min {np.nanmin(p)!r} max {np.nanmax(p)!r}")
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
        raise ValueError("expected_calibration_error needs at least one probability")
    return float(
        sum(
            c / total * abs(f - m)
            for c, f, m in zip(bins["count"], bins["fraction_similar"], bins["mean_probability"], strict=True)
            if c
        )
    )


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


# ---------------------------------------------------------------------------- retrieval metrics
def retrieval_metrics(
    embeddings: Any,
    labels: Any,
    metric: Metric | str,
    *,
    ks: Sequence[int] = RETRIEVAL_KS,
    mrr_k: int = MRR_K,
    block_size: int = 256,
) -> dict[str, Any]:
    """Leave-one-out retrieval: each text queries all the others, ranked by raw distance.

    A neighbour is relevant when it carries the query's label (cluster). Queries
    whose label has no other member are skipped (as pytorch-metric-learning's
    ``AccuracyCalculator`` does) but stay in the gallery as distractors. Exact: the
    full distance row of every query is sorted (stable, so ties go to the lower index).

    * ``recall_at_k``: fraction of queries with at least one relevant text in the top k;
    * ``mrr_at_10``: mean of ``1 / rank`` of the first relevant text in the top 10 (0 if none);
    * ``map_at_r``: mean average precision at R, R = the query's number of relevant texts.
    """
    metric = Metric.parse(metric)
    emb = require_matrix("embeddings", embeddings).astype(np.float32, copy=False)
    label_array = np.asarray(labels)
    if label_array.shape != (emb.shape[0],):
        raise ValueError(f"labels must be 1-D with one label per embedding ({emb.shape[0]}), got shape {label_array.shape}")
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


def _dataset_retrieval(pairs: Any, embedded: PairEmbeddings, metric: Metric) -> dict[str, Any]:
    """Retrieval over the distinct texts (by id) of ``pairs``, labelled by union-find cluster."""
    ids, texts = pairs.unique_texts()
    clusters = pairs.cluster_labels()
    row = embedded.row_of()
    embeddings = embedded.embeddings[np.fromiter((row[t] for t in texts), dtype=np.int64, count=len(texts))]
    return retrieval_metrics(embeddings, [clusters[i] for i in ids], metric)


# ---------------------------------------------------------------------------- symmetry
def symmetry_gap(p_ab: Any, p_ba: Any) -> float:
    """``max |p(a, b) - p(b, a)|`` over the pairs (0.0 for an exactly symmetric model)."""
    a = np.asarray(p_ab, dtype=np.float64)
    b = np.asarray(p_ba, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"p_ab and p_ba must be 1-D arrays of the same length, got shapes {a.shape} and {b.shape}")
    return float(np.max(np.abs(a - b))) if a.size else 0.0


# ---------------------------------------------------------------------------- one model
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
    name: str = "model",
    retrieval: bool = True,
    batch_size: int = 64,
    show_progress: bool = False,
) -> Evaluation:
    """Score ``model`` on ``pairs`` (a ``PairDataset``).

    The calibrator is fitted on ``calibration_pairs`` when given (never the scored
    pairs), otherwise the model's stored one is used. The model itself is not changed.
    """
    if not isinstance(model, SimilarityModel):
        raise TypeError(f"model must be a SimilarityModel, got {type(model).__name__}")
    if len(pairs) == 0:
        raise ValueError("the scored split has no pairs")
    started = time.perf_counter()
    warnings_: list[str] = []
    if calibration_pairs is not None:
        warnings_ += _check_not_scored_split(pairs, calibration_pairs)
        logger.info("%s: fitting the calibrator on %s", name, calibration_name or f"{len(calibration_pairs)} calibration pairs")
        calibrator = model.fit_calibrator(calibration_pairs, fitted_on=calibration_name, batch_size=batch_size, show_progress=show_progress)
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
        metrics["retrieval"] = _dataset_retrieval(pairs, embedded, scored.metric)
    metrics["timing_s"] = {
        "calibrate": round(fitted - started, 3),
        "encode": round(encoded - fitted, 3),
        "total": round(time.perf_counter() - started, 3),
    }
    metrics["warnings"] = warnings_
    source = str(getattr(model.encoder, "source", None) or name)
    return Evaluation(name, source, scored.metric, calibrator, origin, labels, distances, probabilities, reversed_, metrics)


# ---------------------------------------------------------------------------- example lines
def _shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _pair_line(a: str, b: str, p_ab: float, p_ba: float, d: float, label: int | None, width: int) -> str:
    same = "equal" if p_ab == p_ba else f"DIFFER by {abs(p_ab - p_ba):.3g}"
    tag = "" if label is None else f"  label={label}"
    return f"p(a,b)={p_ab:.4f}  p(b,a)={p_ba:.4f} ({same})  d={d:.4f}{tag}  a: {_shorten(a, width)!r}  b: {_shorten(b, width)!r}"


def _example_rows(labels: np.ndarray, probabilities: np.ndarray, limit: int) -> list[int]:
    """Typical pairs of each class: the 90th, 50th and 10th percentile of p within the class."""
    rows: list[int] = []
    per_class = max(1, limit // 2)
    for label in (1, 0):
        members = np.flatnonzero(labels == label)
        if not members.size:
            continue
        order = members[np.argsort(-probabilities[members], kind="stable")]
        picks = np.linspace(0.1, 0.9, per_class) if per_class > 1 else np.array([0.5])
        rows += list(dict.fromkeys(int(order[int(q * (order.size - 1))]) for q in picks))
    return rows[:limit]


def example_pair_lines(model: SimilarityModel, pairs: Any, *, limit: int = 6, width: int = 60) -> list[str]:
    """Printable lines showing ``p(a, b)`` and ``p(b, a)`` (equal, bit for bit) for a few pairs.

    ``pairs`` is a ``PairDataset`` (then a few typical similar and dissimilar pairs
    are picked and their labels shown) or a sequence of ``(text_a, text_b)`` tuples
    (the first ``limit``). Both orders go through ``model.predict_proba``.
    """
    limit = require_positive_int("limit", limit)
    if hasattr(pairs, "texts_a") and hasattr(pairs, "labels"):
        texts_a, texts_b, labels = pairs.texts_a, pairs.texts_b, pairs.labels
        rows = _example_rows(labels, model.predict_proba(texts_a, texts_b), limit)
        chosen = [(texts_a[i], texts_b[i], int(labels[i])) for i in rows]
    else:
        items = list(pairs)[:limit]
        for i, item in enumerate(items):
            if not (isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(t, str) for t in item)):
                raise TypeError(f"pairs[{i}] must be a (text_a, text_b) tuple of strings, got {item!r}")
        chosen = [(a, b, None) for a, b in items]
    if not chosen:
        return []
    a_side = [c[0] for c in chosen]
    b_side = [c[1] for c in chosen]
    p_ab = model.predict_proba(a_side, b_side)
    p_ba = model.predict_proba(b_side, a_side)
    d = model.distance(a_side, b_side)
    header = f"{model.metric.value} distance, tau = {model.threshold:.4f}, p(d=0) = {float(model.calibrator.predict_proba([0.0])[0]):.4f}"
    return [header] + [
        _pair_line(a, b, float(x), float(y), float(dist), label, width)
        for (a, b, label), x, y, dist in zip(chosen, p_ab, p_ba, d, strict=True)
    ]


# ---------------------------------------------------------------------------- figures
def _new_figure(width: float, height: float):
    # Object-oriented matplotlib on the Agg canvas: no pyplot global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save_figure(figure: Any, path: Path) -> None:
    with atomic_file(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)


_COLORS = ("tab:blue", "tab:red", "tab:green", "tab:purple")
# The model solid, a baseline dashed: identical curves (a zero-shot model against
# itself) stay visible as one dashed line over a solid one.
_STYLES = (("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"))


def _plot_histograms(evaluations: Sequence[Evaluation], split: str, path: Path) -> None:
    figure = _new_figure(6.2 * len(evaluations), 4.6)
    axes = figure.subplots(1, len(evaluations), squeeze=False)[0]
    for ax, ev in zip(axes, evaluations, strict=True):
        d = ev.distances
        tau = ev.calibrator.threshold
        upper = max(float(np.percentile(d, 99.5)), tau) * 1.05  # a few far outliers would squash the rest
        bins = np.linspace(0.0, upper if upper > 0 else 1.0, 60)
        similar, dissimilar = d[ev.labels == 1], d[ev.labels == 0]
        ax.hist(dissimilar, bins=bins, density=True, alpha=0.55, color="tab:orange", label=f"dissimilar pairs (n={dissimilar.size:,})")
        ax.hist(similar, bins=bins, density=True, alpha=0.55, color="tab:blue", label=f"similar pairs (n={similar.size:,})")
        ax.axvline(tau, color="black", linestyle="--", linewidth=1.5, label=f"threshold tau = {tau:.3f} (p = 0.5)")
        acc = ev.metrics["pairs"]["accuracy"]
        ax.set_title(f"{ev.name}: {ev.source}\naccuracy at tau {acc:.3f}, AP {ev.metrics['pairs']['average_precision']:.3f}", fontsize=10)
        ax.set_xlabel(f"{ev.metric.value} distance d(a, b)   (similar when d <= tau)")
        ax.set_ylabel("density")
        ax.legend(fontsize=8, loc="upper right")
    figure.suptitle(f"Distance histograms, similar vs dissimilar pairs ({split})", fontsize=12)
    _save_figure(figure, path)


def _plot_roc_pr(evaluations: Sequence[Evaluation], split: str, path: Path) -> None:
    from sklearn.metrics import precision_recall_curve, roc_curve

    figure = _new_figure(11.5, 5.0)
    roc_ax, pr_ax = figure.subplots(1, 2)
    for color, (line, marker), ev in zip(_COLORS, _STYLES, evaluations, strict=False):
        m = ev.metrics["pairs"]
        fpr, tpr, _ = roc_curve(ev.labels, -ev.distances)
        roc_ax.plot(fpr, tpr, line, color=color, label=f"{ev.name} (ROC-AUC {m['roc_auc']:.3f})")
        precision, recall, _ = precision_recall_curve(ev.labels, -ev.distances)
        pr_ax.plot(recall, precision, line, color=color, label=f"{ev.name} (AP {m['average_precision']:.3f})")
        # The operating point the calibrated classifier actually uses.
        predicted = ev.distances <= ev.calibrator.threshold
        positives = ev.labels == 1
        false_positive_rate = np.sum(predicted & ~positives) / max(1, np.sum(~positives))
        roc_ax.plot(false_positive_rate, m["recall"], marker, color=color, markeredgecolor="black", markersize=7)
        pr_ax.plot(m["recall"], m["precision"], marker, color=color, markeredgecolor="black", markersize=7)
    prevalence = float(evaluations[0].labels.mean())
    roc_ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
    pr_ax.axhline(prevalence, color="grey", linestyle=":", label=f"chance (prevalence {prevalence:.2f})")
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC curve (dots: the calibrated threshold tau)", xlim=(0, 1), ylim=(0, 1.01))
    pr_ax.set(xlabel="recall", ylabel="precision", title="Precision-recall curve (dots: tau)", xlim=(0, 1), ylim=(0, 1.01))
    roc_ax.legend(fontsize=8, loc="lower right")
    pr_ax.legend(fontsize=8, loc="lower left")
    figure.suptitle(f"Ranking pairs by raw distance ({split})", fontsize=12)
    _save_figure(figure, path)


def _plot_reliability(evaluations: Sequence[Evaluation], split: str, path: Path) -> None:
    figure = _new_figure(6.4, 7.0)
    top, bottom = figure.subplots(2, 1, height_ratios=(3, 1.2), sharex=True)
    top.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    n_bins = evaluations[0].metrics["calibration"]["n_bins"]
    edges = np.asarray(evaluations[0].metrics["calibration"]["bins"]["edges"])
    width = (edges[1] - edges[0]) / (len(evaluations) + 1)
    for k, (color, (line, marker), ev) in enumerate(zip(_COLORS, _STYLES, evaluations, strict=False)):
        bins = ev.metrics["calibration"]["bins"]
        filled = [i for i, c in enumerate(bins["count"]) if c]
        x = [bins["mean_probability"][i] for i in filled]
        y = [bins["fraction_similar"][i] for i in filled]
        ece = ev.metrics["calibration"]["ece"]
        top.plot(x, y, line, marker=marker, color=color, label=f"{ev.name} (ECE {ece:.3f})")
        bottom.bar(edges[:-1] + width * (k + 0.5), bins["count"], width=width, color=color, align="edge", label=ev.name)
    top.set(ylabel="observed fraction of similar pairs", xlim=(0, 1), ylim=(0, 1), title=f"Reliability diagram ({n_bins} equal-width bins, {split})")
    top.legend(fontsize=8, loc="upper left")
    bottom.set(xlabel="predicted probability p(similar)", ylabel="pairs per bin")
    _save_figure(figure, path)


# ---------------------------------------------------------------------------- report
def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return lines


def _versions() -> dict[str, str]:
    return package_versions(("metric-sim", "torch", "transformers", "scikit-learn", "pytorch-metric-learning", "matplotlib"))


def _report_markdown(payload: dict[str, Any], evaluations: Sequence[Evaluation], examples: list[str]) -> str:
    data = payload["data"]
    split = data["split"]
    main = evaluations[0]
    m = main.metrics
    names = [ev.name for ev in evaluations]
    lines = [f"# Evaluation report: {main.source}", ""]
    lines += [
        f"Scored on **{data['pairs']:,} pairs** ({data['positives']:,} similar) of `{data['source']}`, split **{split}**. "
        f"The decision is `similar when d(a, b) <= tau`, with `tau` and `p(similar | d) = {main.calibrator.formula}` from a "
        f"one-feature logistic calibrator {main.calibrator_origin}.",
        "",
        f"- At tau = {main.calibrator.threshold:.4f} the model is right on **{m['pairs']['accuracy']:.1%}** of the pairs "
        f"(F1 {m['pairs']['f1']:.4f}); ranking by distance gives AP {m['pairs']['average_precision']:.4f}, "
        f"ROC-AUC {m['pairs']['roc_auc']:.4f}.",
        f"- Its probabilities are off by {m['calibration']['ece']:.4f} on average (expected calibration error, "
        f"{m['calibration']['n_bins']} bins).",
        f"- Symmetry: the largest |p(a,b) - p(b,a)| over the {m['symmetry']['pairs']:,} pairs is "
        f"**{m['symmetry']['max_abs_difference']!r}** (bit-for-bit equal: {m['symmetry']['bitwise_equal']}).",
        "",
        "## Setup",
        "",
    ]
    setup_rows = [[ev.name, f"`{ev.source}`", ev.metric.value, f"{ev.calibrator.threshold:.4f}", f"{ev.calibrator.weight:.4f}",
                   f"{ev.calibrator.bias:.4f}", f"{float(ev.calibrator.predict_proba([0.0])[0]):.4f}", ev.calibrator_origin] for ev in evaluations]
    lines += _table(["", "model", "metric", "tau", "w", "b", "p(d=0), the maximum", "calibrator"], setup_rows)
    lines += ["", f"Data: `{data['source']}`" + (f", split file `{data['split_file']}`" if data.get("split_file") else "")
              + (f"; calibration split **{data['calibration_split']}** ({data['calibration_pairs']:,} pairs)" if data.get("calibration_split") else ""), ""]
    for warning in payload["warnings"]:
        lines += [f"> **Warning:** {warning}", ""]

    lines += ["## Pair classification", "", "Threshold-free ranking quality, then the decisions at the calibrated tau:", ""]
    keys = [("average precision", "average_precision"), ("ROC-AUC", "roc_auc"), ("accuracy at tau", "accuracy"),
            ("F1 at tau", "f1"), ("precision at tau", "precision"), ("recall at tau", "recall")]
    rows = [[label] + [ev.metrics["pairs"][key] for ev in evaluations] for label, key in keys]
    rows += [[f"{label} (in-sample best)"] + [ev.metrics["pairs"]["in_sample"][key] for ev in evaluations]
             for label, key in (("accuracy", "accuracy"), ("F1", "f1"))]
    rows += [[f"{label} (in-sample)"] + [ev.metrics["pairs"]["in_sample"][key] for ev in evaluations]
             for label, key in (("accuracy threshold", "accuracy_threshold"), ("F1 threshold", "f1_threshold"))]
    lines += _table(["metric"] + names, rows)
    lines += ["", f"*In-sample* rows: {IN_SAMPLE_NOTE}. The gap between them and the rows at tau is what choosing the "
              "threshold on held-out data costs. Note that tau is the p = 0.5 point, which aims at accuracy; the best-F1 "
              "threshold usually lies elsewhere (on QQP at a larger distance, trading precision for recall), so F1 at tau "
              "trails the in-sample F1 by more than accuracy does.", ""]
    lines += ["### Distances", "", f"![distance histograms]({FIGURES['distance_histograms']})", "",
              "Each panel shows how far apart similar (blue) and dissimilar (orange) pairs are; the dashed line is tau. "
              "The less the two humps overlap, the better one threshold works.", ""]
    lines += ["### ROC and precision-recall", "", f"![ROC and precision-recall curves]({FIGURES['roc_pr']})", "",
              "The dots mark the operating point of the calibrated threshold on each curve.", ""]

    lines += ["## Calibration", "", "Do the probabilities mean what they say? Lower is better for all three.", ""]
    rows = [[label] + [ev.metrics["calibration"][key] for ev in evaluations]
            for label, key in (("expected calibration error", "ece"), ("Brier score", "brier"), ("log-loss", "log_loss"),
                               ("mean predicted p", "mean_probability"), ("fraction similar", "fraction_similar"))]
    lines += _table(["metric"] + names, rows)
    lines += ["", f"![reliability diagram]({FIGURES['reliability']})", "",
              "Points on the dotted diagonal are perfectly calibrated: among pairs given p = 0.8, 80 % are similar. "
              "The lower panel shows how many pairs fall in each bin.", ""]

    if "retrieval" in m:
        r = m["retrieval"]
        lines += ["## Retrieval", "",
                  f"Each of the {r['queries']:,} texts that have a duplicate in this split looks for its duplicates among all "
                  f"the other {r['gallery'] - 1:,} distinct texts of the split, ranked by raw distance. Relevant = same duplicate cluster "
                  "(union-find over the similar pairs). Recall@k: at least one duplicate in the top k; MRR@10: 1/rank of the "
                  "first duplicate; mAP@R: average precision within the first R results, R = number of duplicates.", ""]
        keys = [k for k in r if k.startswith(("recall_at_", "mrr_at_"))] + ["map_at_r"]
        pretty = {k: k.replace("recall_at_", "Recall@").replace("mrr_at_", "MRR@").replace("map_at_r", "mAP@R") for k in keys}
        lines += _table(["metric"] + names, [[pretty[k]] + [ev.metrics.get("retrieval", {}).get(k) for ev in evaluations] for k in keys])
        lines += [""]

    lines += ["## Symmetry", "",
              "The probability depends on the pair only through d(a, b) = d(b, a), so swapping the texts cannot change it. "
              "Every pair was scored again as (b, a) through `predict_proba`:", ""]
    lines += _table(["", "max abs(p(a,b) - p(b,a))", "bit-for-bit equal", "pairs"],
                    [[ev.name, repr(ev.metrics["symmetry"]["max_abs_difference"]), str(ev.metrics["symmetry"]["bitwise_equal"]),
                      ev.metrics["symmetry"]["pairs"]] for ev in evaluations])
    lines += [""]
    if examples:
        lines += ["## Example pairs", "", "Typical similar (label=1) and dissimilar (label=0) pairs, with both orders:", "", "```"]
        lines += examples + ["```", ""]

    lines += ["## Closing note", ""]
    for ev in evaluations:
        p, c = ev.metrics["pairs"], ev.metrics["calibration"]
        lines.append(
            f"- **{ev.name}** (`{ev.source}`): AP {p['average_precision']:.4f}, ROC-AUC {p['roc_auc']:.4f}, "
            f"accuracy {p['accuracy']:.4f} and F1 {p['f1']:.4f} at tau = {ev.calibrator.threshold:.4f} "
            f"(in-sample best: accuracy {p['in_sample']['accuracy']:.4f}, F1 {p['in_sample']['f1']:.4f}); "
            f"ECE {c['ece']:.4f}; symmetry {ev.metrics['symmetry']['max_abs_difference']!r}."
        )
    lines += ["", "Files: `metrics.json` (all numbers), " + ", ".join(f"`{f}`" for f in FIGURES.values()) + ".", ""]
    return "\n".join(lines)


def write_report(
    directory: str | os.PathLike[str],
    evaluations: Sequence[Evaluation],
    *,
    data: dict[str, Any],
    examples: list[str] | None = None,
) -> dict[str, Any]:
    """Write ``metrics.json``, ``report.md`` and the PNG figures; return the metrics payload.

    ``evaluations[0]`` is the model; later ones (a baseline) are drawn beside it.
    ``data`` describes the scored split: at least ``source``, ``split``, ``pairs``, ``positives``.
    """
    if not evaluations:
        raise ValueError("write_report needs at least one Evaluation")
    missing = [k for k in ("source", "split", "pairs", "positives") if k not in data]
    if missing:
        raise ValueError(f"data is missing {missing}; got keys {sorted(data)}")
    names = [ev.name for ev in evaluations]
    if len(set(names)) != len(names):
        raise ValueError(f"evaluation names must be distinct, got {names}")
    out = Path(directory).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    split = str(data["split"])
    _plot_histograms(evaluations, split, out / FIGURES["distance_histograms"])
    _plot_roc_pr(evaluations, split, out / FIGURES["roc_pr"])
    _plot_reliability(evaluations, split, out / FIGURES["reliability"])
    payload = {
        "schema_version": SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "data": data,
        "models": {ev.name: ev.to_dict() for ev in evaluations},
        "figures": dict(FIGURES),
        "warnings": [w for ev in evaluations for w in ev.metrics.get("warnings", [])],
        "versions": _versions(),
    }
    with atomic_file(out / "metrics.json") as tmp:
        # Insertion order: the model before its baseline, summary before detail.
        tmp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    with atomic_file(out / "report.md") as tmp:
        tmp.write_text(_report_markdown(payload, evaluations, examples or []), encoding="utf-8")
    return payload


def _report_examples(ev: Evaluation, pairs: Any, limit: int = 6) -> list[str]:
    """Example lines from the arrays already computed (both orders came from predict_proba)."""
    texts_a, texts_b = pairs.texts_a, pairs.texts_b
    rows = _example_rows(ev.labels, ev.probabilities, limit)
    return [
        _pair_line(texts_a[i], texts_b[i], float(ev.probabilities[i]), float(ev.probabilities_reversed[i]),
                   float(ev.distances[i]), int(ev.labels[i]), 60)
        for i in rows
    ]


def evaluate_and_report(
    model: SimilarityModel,
    pairs: Any,
    report_dir: str | os.PathLike[str],
    *,
    split: str = "all",
    calibration_pairs: Any = None,
    calibration_split: str | None = None,
    baseline: SimilarityModel | None = None,
    baseline_name: str = "baseline",
    data: dict[str, Any] | None = None,
    batch_size: int = 64,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Evaluate ``model`` (and ``baseline``, calibrated the same way) and write the report."""
    if baseline is not None and calibration_pairs is None and baseline.calibrator is None:
        raise CalibrationError(
            "the baseline has no stored calibrator: give calibration pairs (--calibrate-on SPLIT) so it gets one like the model"
        )
    calibration_name = describe_split(calibration_pairs, calibration_split) if calibration_pairs is not None else None
    common = dict(calibration_pairs=calibration_pairs, calibration_name=calibration_name, batch_size=batch_size, show_progress=show_progress)
    evaluations = [evaluate(model, pairs, name="model", **common)]
    if baseline is not None:
        evaluations.append(evaluate(baseline, pairs, name=baseline_name, **common))
    info = {
        "source": pairs.report.source,
        "split": split,
        "pairs": len(pairs),
        "positives": int(pairs.labels.sum()),
        "calibration_split": calibration_split if calibration_pairs is not None else None,
        "calibration_pairs": len(calibration_pairs) if calibration_pairs is not None else None,
        **(data or {}),
    }
    return write_report(report_dir, evaluations, data=info, examples=_report_examples(evaluations[0], pairs))
