"""The report's PNG figures: distance histograms, ROC and precision-recall curves, reliability diagram.

Object-oriented matplotlib on the Agg canvas (no pyplot global state, no display);
matplotlib is imported only when a figure is drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from metric_sim.evaluation.scoring import Evaluation
from metric_sim.storage import atomic_file

FIGURES = {
    "distance_histograms": "distance_histograms.png",
    "roc_pr": "roc_pr_curves.png",
    "reliability": "reliability_diagram.png",
}


def write_figures(evaluations: Sequence[Evaluation], split: str, folder: Path) -> dict[str, str]:
    """Draw the three figures of ``evaluations`` into ``folder``; returns ``FIGURES`` (key -> file name)."""
    plot_histograms(evaluations, split, folder / FIGURES["distance_histograms"])
    plot_roc_pr(evaluations, split, folder / FIGURES["roc_pr"])
    plot_reliability(evaluations, split, folder / FIGURES["reliability"])
    return dict(FIGURES)


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


def plot_histograms(evaluations: Sequence[Evaluation], split: str, path: Path) -> None:
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


def plot_roc_pr(evaluations: Sequence[Evaluation], split: str, path: Path) -> None:
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


def plot_reliability(evaluations: Sequence[Evaluation], split: str, path: Path) -> None:
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

