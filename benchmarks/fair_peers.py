"""Pure helpers of quality.py's fair-peer mode: the learning-rate choice on dev, a fast
weighted average precision, and the paired bootstrap of a test-AP difference.

No torch, no model: everything here works on plain arrays and dicts and is tested on tiny,
hand-computable cases in ``tests/test_benchmarks.py``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

DEFAULT_LR_GRID = (2e-5, 5e-5, 1e-4)
TIE_DIGITS = 10  # mean dev APs equal to this many decimals are a tie (float summation order aside)


def lr_tag(lr: float) -> str:
    """The learning rate as it appears in row and run names: ``5e-05``."""
    return f"{lr:g}"


def _present(value: Any) -> bool:
    return value is not None and isinstance(value, (int, float)) and math.isfinite(value)


def grid_summary(table: Mapping[float, Mapping[int, float | None]], seeds: Sequence[int]) -> dict[str, dict[str, Any]]:
    """Per learning rate (key ``lr_tag``): the dev AP of every seed (None where missing), their
    mean and sample sd over the present seeds, and whether every seed is there."""
    out = {}
    for lr in sorted(table):
        cells = [table[lr].get(seed) for seed in seeds]
        present = [float(v) for v in cells if _present(v)]
        out[lr_tag(lr)] = {
            "learning_rate": lr,
            "dev_ap": [float(v) if _present(v) else None for v in cells],
            "dev_ap_mean": statistics.fmean(present) if present else None,
            "dev_ap_std": statistics.stdev(present) if len(present) > 1 else None,
            "complete": len(present) == len(seeds),
        }
    return out


def choose_lr(table: Mapping[float, Mapping[int, float | None]], seeds: Sequence[int] | None = None) -> float | None:
    """The learning rate with the highest mean dev AP over ``seeds`` (default: every seed in the table).

    Only learning rates with a finite dev AP for *every* seed compete: a mean over fewer seeds
    is not comparable, so a missing or NaN cell (a crashed or diverged run) drops that learning
    rate. None when no learning rate is complete. Ties (equal to ``TIE_DIGITS`` decimals) go to
    the smaller learning rate, the more conservative and the cheaper to reproduce.
    """
    if seeds is None:
        seeds = sorted({seed for cells in table.values() for seed in cells})
    if not seeds:
        return None
    best: tuple[float, float] | None = None  # (rounded mean, -lr): max picks the higher mean, then the smaller lr
    for lr, cells in table.items():
        values = [cells.get(seed) for seed in seeds]
        if not all(_present(v) for v in values):
            continue
        key = (round(statistics.fmean(float(v) for v in values), TIE_DIGITS), -lr)  # type: ignore[arg-type]
        if best is None or key > best:
            best = key
    return None if best is None else -best[1]


# ----------------------------------------------------------------------------- average precision
class RankedScores:
    """One system's test scores (higher = more similar), sorted once, so that the average
    precision under any bootstrap resample (as per-pair counts) is a cumulative sum."""

    def __init__(self, labels: np.ndarray, scores: np.ndarray) -> None:
        labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
        if labels.shape != scores.shape or labels.ndim != 1:
            raise ValueError(f"labels and scores must be 1-d of the same length, got {labels.shape} and {scores.shape}")
        self.order = np.argsort(-scores, kind="mergesort")
        self.positive = (labels[self.order] == 1).astype(np.float64)
        s = scores[self.order]
        # the last position of each run of equal scores: a threshold, as sklearn's precision_recall_curve
        self.ends = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]

    def average_precision(self, weights: np.ndarray | None = None) -> float:
        """sklearn's ``average_precision_score(labels, scores, sample_weight=weights)``; NaN without positives."""
        w = np.ones(self.positive.size) if weights is None else np.asarray(weights, dtype=np.float64)[self.order]
        tp = np.cumsum(w * self.positive)[self.ends]
        seen = np.cumsum(w)[self.ends]
        if tp[-1] <= 0:
            return float("nan")
        precision = np.divide(tp, seen, out=np.zeros_like(tp), where=seen > 0)
        recall_step = np.diff(np.r_[0.0, tp]) / tp[-1]
        return float(np.sum(recall_step * precision))


def average_precision(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None) -> float:
    return RankedScores(labels, scores).average_precision(weights)


def paired_bootstrap_ap_difference(labels: np.ndarray, ours: Sequence[np.ndarray], peer: Sequence[np.ndarray], *,
                                   resamples: int = 2000, seed: int = 0, level: float = 0.95) -> dict[str, Any]:
    """Percentile bootstrap interval of ``mean_s AP(ours_s) - mean_s AP(peer_s)`` on the test pairs.

    ``ours`` and ``peer`` hold one score array per training seed (higher = more similar). Each
    resample draws the test pairs with replacement *once* and scores every seed of both systems
    on that same draw (paired), so the interval reflects test-set sampling of the difference of
    the seed-averaged APs that the tables report; the spread over training seeds is in the rows'
    ± sd. Resamples without a positive pair are dropped (counted in ``dropped``).
    """
    labels = np.asarray(labels)
    if not ours or not peer:
        raise ValueError("both systems need at least one seed's scores")
    systems = [[RankedScores(labels, s) for s in side] for side in (ours, peer)]

    def difference(weights: np.ndarray | None) -> float:
        a, b = ([r.average_precision(weights) for r in side] for side in systems)
        return float(np.mean(a) - np.mean(b))

    rng = np.random.default_rng(seed)
    n = labels.size
    draws = np.array([difference(np.bincount(rng.integers(0, n, n), minlength=n)) for _ in range(resamples)])
    kept = draws[np.isfinite(draws)]
    tail = 100 * (1 - level) / 2
    low, high = (np.percentile(kept, [tail, 100 - tail]) if kept.size else (float("nan"), float("nan")))
    return {"difference": difference(None), "low": float(low), "high": float(high), "level": level,
            "resamples": resamples, "dropped": int(draws.size - kept.size), "seed": seed,
            "seeds_ours": len(ours), "seeds_peer": len(peer),
            "excludes_zero": bool(kept.size and (low > 0 or high < 0))}


def tuning_table(tuning: Mapping[str, Mapping[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Header and rows of the markdown grid table: one row per (system, learning rate)."""
    header = ["system", "lr", "dev AP per seed", "dev AP mean ± sd", "chosen"]
    rows = []
    for name, info in tuning.items():
        for tag, cell in info["grid"].items():
            per_seed = ", ".join("–" if v is None else f"{v:.4f}" for v in cell["dev_ap"])
            mean = None if cell["dev_ap_mean"] is None else f"{cell['dev_ap_mean']:.4f}" + (
                f" ± {cell['dev_ap_std']:.4f}" if cell["dev_ap_std"] is not None else "")
            chosen = info.get("learning_rate") is not None and lr_tag(info["learning_rate"]) == tag
            rows.append([name, tag, per_seed, mean, "**yes**" if chosen else ("incomplete" if not cell["complete"] else "")])
        tuned = info.get("chosen_dev_ap")
        if tuned:  # the lr was chosen on a subset of seeds: every tuned seed at that lr
            per_seed = ", ".join("–" if v is None else f"{v:.4f}" for v in tuned["dev_ap"])
            mean = None if tuned["dev_ap_mean"] is None else f"{tuned['dev_ap_mean']:.4f}" + (
                f" ± {tuned['dev_ap_std']:.4f}" if tuned["dev_ap_std"] is not None else "")
            rows.append([name, f"{lr_tag(info['learning_rate'])}, seeds {info['seeds']}", per_seed, mean,
                         f"lr chosen on seeds {info['select_seeds']}"])
    return header, rows
