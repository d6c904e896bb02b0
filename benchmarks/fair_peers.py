"""Pure helpers of quality.py's fair-peer mode: the (learning rate, margin factor) choice on dev,
the margin-like loss parameter each system scales, a fast weighted average precision, and the
paired bootstrap of a test-AP difference.

No torch, no model: everything here works on plain arrays and dicts and is tested on tiny,
hand-computable cases in ``tests/test_benchmarks.py``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

DEFAULT_LR_GRID = (2e-5, 5e-5, 1e-4)
TIE_DIGITS = 10  # mean dev APs equal to this many decimals are a tie (float summation order aside)


def lr_tag(lr: float) -> str:
    """The learning rate as it appears in row and run names: ``5e-05``."""
    return f"{lr:g}"


def grid_tag(lr: float, factor: float = 1.0) -> str:
    """A grid cell's (lr, margin factor) as in run names and tuning keys: ``5e-05`` at factor 1
    (the tag of every run made before the margin grid, so those are found again), else ``5e-05@m1.5``."""
    return lr_tag(lr) if factor == 1.0 else f"{lr_tag(lr)}@m{factor:g}"


def cell_name(name: str, lr: float, seed: int, factor: float = 1.0) -> str:
    """The run folder of one grid cell: ``NAME@lrLR@sSEED``, ``NAME@lrLR@mFACTOR@sSEED`` off factor 1."""
    return f"{name}@lr{grid_tag(lr, factor)}@s{seed}"


# The margin-like loss parameter(s) that --margin-grid multiplies, per metric-sim loss. The
# contrastive pos_margin is scaled with neg_margin so that the pair stays ordered; it is 0 in
# every recipe here, so in practice only neg_margin moves.
MS_MARGIN_KEYS: dict[str, tuple[str, ...]] = {
    "contrastive": ("neg_margin", "pos_margin"), "online_contrastive": ("neg_margin", "pos_margin"),
    "triplet": ("margin",), "ntxent": ("temperature",), "pair_ranking": ("temperature",)}
# sentence-transformers: (argument, library default, divided by the factor?). OnlineContrastiveLoss'
# margin is a cosine distance and scales as metric-sim's neg_margin; MNRL's scale is 1 / temperature,
# so it is divided by the factor, as metric-sim's NT-Xent temperature is multiplied by it.
# The multi-task row scales its OnlineContrastiveLoss margin (its MNRL term keeps the default scale).
# CoSENTLoss's scale is 1 / temperature too, as metric-sim's pair_ranking temperature.
ST_MARGINS: dict[str, tuple[str, float, bool]] = {
    "online_contrastive": ("margin", 0.5, False), "mnrl": ("scale", 20.0, True), "mnrl_hn": ("scale", 20.0, True),
    "multitask": ("margin", 0.5, False), "cosent": ("scale", 20.0, True)}


def scaled_loss_params(loss: str, params: Mapping[str, Any], factor: float) -> dict[str, Any]:
    """metric-sim ``loss_params`` with the loss's margin-like parameters (``MS_MARGIN_KEYS``) times
    ``factor``; the first of them must be given explicitly (its default depends on the metric)."""
    keys = MS_MARGIN_KEYS.get(loss)
    if keys is None:
        raise ValueError(f"loss {loss!r} has no margin-like parameter to scale; known: {sorted(MS_MARGIN_KEYS)}")
    if keys[0] not in params:
        raise ValueError(f"loss {loss!r}: the margin grid scales loss_params[{keys[0]!r}], which is not set in {dict(params)}")
    return {k: (v * factor if k in keys else v) for k, v in params.items()}


def ms_margin(loss: str, params: Mapping[str, Any]) -> dict[str, float]:
    """The margin-like values of metric-sim ``loss_params`` (for labels and the tuning table)."""
    return {k: float(params[k]) for k in MS_MARGIN_KEYS.get(loss, ()) if k in params}


def st_margin(loss_name: str, factor: float = 1.0) -> dict[str, float]:
    """The sentence-transformers loss argument for a margin ``factor``: ``{"margin": 0.5 * f}`` or
    ``{"scale": 20 / f}``; factor 1 gives the library default, as every run before the grid had."""
    if loss_name not in ST_MARGINS:
        raise ValueError(f"unknown sentence-transformers loss {loss_name!r}; known: {sorted(ST_MARGINS)}")
    key, default, inverse = ST_MARGINS[loss_name]
    return {key: default / factor if inverse else default * factor}


def margin_text(margin: Mapping[str, float] | None, factor: float) -> str:
    """``neg_margin 1.2, pos_margin 0 (x1.5)``: the actual values and the factor that gave them.
    Cells recorded before the values were kept at factor 1 read ``default (x1)``: the system's own."""
    values = ", ".join(f"{k} {v:.4g}" for k, v in (margin or {}).items()) or "default"
    return f"{values} (x{factor:g})"


def _present(value: Any) -> bool:
    return value is not None and isinstance(value, (int, float)) and math.isfinite(value)


GridKey = float | tuple[float, float]  # a learning rate, or (learning rate, margin factor)


def _lr_factor(key: GridKey) -> tuple[float, float]:
    return (float(key[0]), float(key[1])) if isinstance(key, tuple) else (float(key), 1.0)


def grid_summary(table: Mapping[GridKey, Mapping[int, float | None]], seeds: Sequence[int]) -> dict[str, dict[str, Any]]:
    """Per grid key (an lr, or an (lr, margin factor) pair; key ``grid_tag``): the dev AP of every
    seed (None where missing), their mean and sample sd over the present seeds, and whether every
    seed is there. Pair keys also record ``margin_factor``; plain lr keys keep the old entries."""
    out = {}
    for key in sorted(table, key=_lr_factor):
        lr, factor = _lr_factor(key)
        cells = [table[key].get(seed) for seed in seeds]
        present = [float(v) for v in cells if _present(v)]
        entry: dict[str, Any] = {"learning_rate": lr}
        if isinstance(key, tuple):
            entry["margin_factor"] = factor
        entry.update({
            "dev_ap": [float(v) if _present(v) else None for v in cells],
            "dev_ap_mean": statistics.fmean(present) if present else None,
            "dev_ap_std": statistics.stdev(present) if len(present) > 1 else None,
            "complete": len(present) == len(seeds),
        })
        out[grid_tag(lr, factor)] = entry
    return out


def choose_lr(table: Mapping[Any, Mapping[int, float | None]], seeds: Sequence[int] | None = None) -> Any:
    """The grid key (an lr, or an (lr, margin factor) pair) with the highest mean dev AP over
    ``seeds`` (default: every seed in the table).

    Only keys with a finite dev AP for *every* seed compete: a mean over fewer seeds is not
    comparable, so a missing or NaN cell (a crashed or diverged run) drops that key. None when
    no key is complete. Ties (equal to ``TIE_DIGITS`` decimals) go to margin factor 1 (the
    recipe's own margin), then to the smaller learning rate, the more conservative and the
    cheaper to reproduce; then to the factor nearer 1, then the smaller factor.
    """
    if seeds is None:
        seeds = sorted({seed for cells in table.values() for seed in cells})
    if not seeds:
        return None
    best: tuple[tuple[Any, ...], Any] | None = None
    for key, cells in table.items():
        values = [cells.get(seed) for seed in seeds]
        if not all(_present(v) for v in values):
            continue
        lr, factor = _lr_factor(key)
        # max picks the higher mean, then factor 1, then the smaller lr, the factor nearer 1, the smaller factor
        rank = (round(statistics.fmean(float(v) for v in values), TIE_DIGITS), factor == 1.0, -lr,  # type: ignore[arg-type]
                -abs(math.log(factor)), -factor)
        if best is None or rank > best[0]:
            best = (rank, key)
    return None if best is None else best[1]


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


def _same_command(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Two tuning records of one system from the same grid: the same cells chosen on the same seeds."""
    return list(a["grid"]) == list(b["grid"]) and a.get("select_seeds") == b.get("select_seeds")


def with_earlier_grids(record: Mapping[str, Any], previous: Mapping[str, Any] | None) -> dict[str, Any]:
    """``record``, a system's latest tuning record, with the records of the earlier tuning commands
    of that system in the same work folder under ``earlier`` (oldest first).

    Tuning often goes in steps (an lr grid, then a margin grid at the chosen lr); the latest step
    makes the choice, but the table must still show the cells the earlier steps chose from. A rerun
    of the same grid (say, with more seeds at the chosen cell) replaces its earlier record.
    """
    if not previous:
        return dict(record)
    earlier = [*previous.get("earlier", []), {k: v for k, v in previous.items() if k != "earlier"}]
    return {**record, "earlier": [e for e in earlier if not _same_command(e, record)]}


def system_grid_cells(info: Mapping[str, Any]) -> Iterator[tuple[Mapping[str, Any], str, Mapping[str, Any]]]:
    """``(record, tag, cell)`` for every grid cell of one system's tuning record: its latest grid
    first, then its earlier ones (``with_earlier_grids``); a cell that a later grid holds again is
    given once, from the later grid."""
    shown: set[str] = set()
    for record in (info, *info.get("earlier", [])):
        for tag, cell in record["grid"].items():
            if tag not in shown:
                shown.add(tag)
                yield record, tag, cell


def grid_cells(tuning: Mapping[str, Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Every grid cell of every system's tuning records, the earlier grids' included."""
    return [cell for info in tuning.values() for _, _, cell in system_grid_cells(info)]


def tuning_table(tuning: Mapping[str, Mapping[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Header and rows of the markdown grid table: one row per (system, learning rate), or per
    (system, learning rate, margin factor) with a ``margin`` column once any grid has factors.
    Cells only an earlier grid of a system holds (``with_earlier_grids``) follow its latest grid,
    as system ``NAME (earlier grid)``."""
    margins = any("margin_factor" in cell for cell in grid_cells(tuning))
    header = ["system", "lr", *(["margin"] if margins else []), "dev AP per seed", "dev AP mean ± sd", "chosen"]

    def figures(cell: Mapping[str, Any]) -> tuple[str, str | None]:
        per_seed = ", ".join("–" if v is None else f"{v:.4f}" for v in cell["dev_ap"])
        mean = None if cell["dev_ap_mean"] is None else f"{cell['dev_ap_mean']:.4f}" + (
            f" ± {cell['dev_ap_std']:.4f}" if cell["dev_ap_std"] is not None else "")
        return per_seed, mean

    def choice_tag(record: Mapping[str, Any]) -> str | None:
        lr = record.get("learning_rate")
        return None if lr is None else grid_tag(lr, record.get("margin_factor") or 1.0)

    rows = []
    for name, info in tuning.items():
        lr, factor = info.get("learning_rate"), info.get("margin_factor") or 1.0
        for record, tag, cell in system_grid_cells(info):
            label, mark = (name, "**yes**") if record is info else (f"{name} (earlier grid)", "chosen by that grid")
            margin = [margin_text(cell.get("margin"), cell.get("margin_factor", 1.0))] if margins else []
            rows.append([label, lr_tag(cell["learning_rate"]), *margin, *figures(cell),
                         mark if tag == choice_tag(record) else ("incomplete" if not cell["complete"] else "")])
        tuned = info.get("chosen_dev_ap")
        if tuned:  # the lr was chosen on a subset of seeds: every tuned seed at that lr (and margin)
            margin = [margin_text(info.get("margin"), factor)] if margins else []
            what = "lr and margin" if margins else "lr"
            rows.append([name, f"{lr_tag(lr)}, seeds {info['seeds']}", *margin, *figures(tuned),
                         f"{what} chosen on seeds {info['select_seeds']}"])
    return header, rows
