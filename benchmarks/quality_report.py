"""quality.py's scoring and reporting: test metrics of every cached row, grouped over seeds, the
quality targets, and the markdown tables (systems, and the fair-peer grid with its bootstrap).

Distance rows are calibrated with the library's ``Calibrator`` fitted on dev (``squared`` unless a
``calibration_feature`` is given, the same for every row), logit rows with a Platt fit on their dev
logit; symmetry compares the probabilities of the swapped test pairs.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, mean_std  # noqa: E402
from fair_peers import tuning_table  # noqa: E402
from quality_data import Store, Task  # noqa: E402

from metric_sim import (  # noqa: E402
    Calibrator,
    expected_calibration_error,
    in_sample_thresholds,
    pair_metrics,
)
from metric_sim.calibration import DEFAULT_FEATURE  # noqa: E402


def score_row(arrays: dict[str, np.ndarray], meta: dict[str, Any], dev_labels: np.ndarray, test_labels: np.ndarray,
              calibration_feature: str = DEFAULT_FEATURE) -> dict[str, Any]:
    """Test metrics of one system from its cached dev/test outputs.

    Distance systems: the library ``Calibrator`` fitted on dev distances, ``pair_metrics`` on
    test. Logit systems: Platt scaling on dev, decision ``p >= 0.5``. Both: ECE (15 bins) of the
    calibrated test probabilities; symmetry from the probabilities of the swapped test pairs.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, average_precision_score, f1_score, roc_auc_score

    if meta["kind"] == "distance":
        calibrator = Calibrator.fit(arrays["dev"], dev_labels, meta["metric"], fitted_on="dev", feature=calibration_feature)
        pm = pair_metrics(arrays["test"], test_labels, calibrator)
        p, p_rev = calibrator.predict_proba(arrays["test"]), calibrator.predict_proba(arrays["test_rev"])
        out = {"average_precision": pm["average_precision"], "roc_auc": pm["roc_auc"], "accuracy": pm["accuracy"],
               "f1": pm["f1"], "best_accuracy_in_sample": pm["in_sample"]["accuracy"], "threshold": pm["threshold"],
               "calibration_feature": calibrator.feature}
    elif meta["kind"] == "logit":
        platt = LogisticRegression(C=np.inf, max_iter=1000).fit(arrays["dev"].reshape(-1, 1), dev_labels)
        p = platt.predict_proba(arrays["test"].reshape(-1, 1))[:, 1]
        p_rev = platt.predict_proba(arrays["test_rev"].reshape(-1, 1))[:, 1]
        predicted = (p >= 0.5).astype(int)
        logit = arrays["test"]
        out = {"average_precision": float(average_precision_score(test_labels, logit)),
               "roc_auc": float(roc_auc_score(test_labels, logit)),
               "accuracy": float(accuracy_score(test_labels, predicted)), "f1": float(f1_score(test_labels, predicted)),
               # in_sample_thresholds ranks by a non-negative "distance": max logit - logit.
               "best_accuracy_in_sample": in_sample_thresholds(logit.max() - logit, test_labels)["accuracy"],
               "threshold": None}
    else:
        raise ValueError(f"unknown output kind {meta['kind']!r}")
    gap = np.abs(p - p_rev)
    dev_score = -arrays["dev"] if meta["kind"] == "distance" else arrays["dev"]
    out["dev_average_precision"] = float(average_precision_score(dev_labels, dev_score))
    out.update({"accuracy_gap_to_in_sample": out["best_accuracy_in_sample"] - out["accuracy"],
                "ece": expected_calibration_error(test_labels, p),
                "symmetry_max": float(gap.max()), "symmetry_mean": float(gap.mean()),
                "train_s": meta.get("train_s"), "wall_s": _wall_seconds(meta)})
    return out


def _wall_seconds(meta: dict[str, Any]) -> float | None:
    """The whole training call; for MLP heads the fit plus the shared frozen-embedding pass."""
    if meta.get("wall_s") is not None:
        return meta["wall_s"]
    if meta.get("train_s") is None:
        return None
    return round(meta["train_s"] + meta.get("embed_s", 0.0), 1)


METRIC_KEYS = ("average_precision", "roc_auc", "accuracy", "f1", "best_accuracy_in_sample", "accuracy_gap_to_in_sample",
               "ece", "symmetry_max", "symmetry_mean", "train_s", "wall_s", "dev_average_precision")


def score_all(store: Store, task: Task, calibration_feature: str = DEFAULT_FEATURE) -> dict[str, Any]:
    """Group rows ``name@sSEED`` over seeds: per-seed metrics, mean and standard deviation."""
    groups: dict[str, list[tuple[dict, dict]]] = {}
    for row in store.rows():
        arrays, meta = store.load(row)
        scored = score_row(arrays, meta, task.dev.labels, task.test.labels, calibration_feature)
        groups.setdefault(row.split("@")[0], []).append((scored, meta))
    results = {}
    for name, runs in groups.items():
        summary = {}
        for key in METRIC_KEYS:
            mean, std = mean_std([m[key] for m, _ in runs])
            summary[key] = {"mean": mean, "std": std}
        results[name] = {"label": runs[0][1]["label"], "metric": runs[0][1].get("metric"), "kind": runs[0][1]["kind"],
                         "seeds": len(runs), "summary": summary, "runs": [m for m, _ in runs], "meta": [meta for _, meta in runs]}
    return results


def targets(results: dict[str, Any]) -> dict[str, Any]:
    """The issue's quality targets, evaluated on these results (None where a row is missing)."""
    def ap(name: str) -> float:
        return results[name]["summary"]["average_precision"]["mean"]

    ours = [n for n in results if n.startswith("ms_")]
    peers = [n for n in results if n.startswith("st_")]
    tuned_ours, tuned_peers = [n for n in ours if n.endswith("_tuned")], [n for n in peers if n.endswith("_tuned")]
    if tuned_ours and tuned_peers:  # fair-peer mode: tuned rows against tuned rows only
        ours, peers = tuned_ours, tuned_peers
    out: dict[str, Any] = {}
    if ours and peers:
        best_ours, best_peer = max(ours, key=ap), max(peers, key=ap)
        out["best_recipe_ap_vs_st"] = {"ours": best_ours, "ours_ap": ap(best_ours), "st": best_peer, "st_ap": ap(best_peer),
                                       "met": ap(best_ours) >= ap(best_peer)}
        gap = results[best_ours]["summary"]["accuracy_gap_to_in_sample"]["mean"]
        out["accuracy_within_half_point"] = {"system": best_ours, "gap_points": 100 * gap, "met": gap <= 0.005}
    ms_sym = {n: results[n]["summary"]["symmetry_max"]["mean"] for n in results if n.startswith(("ms_", "zero_shot"))}
    if ms_sym:
        out["metric_sim_symmetry_exactly_zero"] = {"max": max(ms_sym.values()), "met": max(ms_sym.values()) == 0.0}
    if "mlp_concat" in results:
        s = results["mlp_concat"]["summary"]
        out["baseline_a_asymmetric"] = {"max": s["symmetry_max"]["mean"], "mean": s["symmetry_mean"]["mean"],
                                        "met": (s["symmetry_max"]["mean"] or 0.0) > 0.0}
    return out


def _cell(stat: dict[str, float | None], digits: int = 4, scale: float = 1.0) -> str | None:
    if stat["mean"] is None:
        return None
    text = f"{stat['mean'] * scale:.{digits}f}"
    return text + (f" ± {stat['std'] * scale:.{digits}f}" if stat["std"] is not None else "")


ORDER = ("zero_shot_l2", "zero_shot_l1", "ms_contrastive_l2", "ms_contrastive_l2_tuned", "ms_contrastive_l1",
         "ms_contrastive_l1_tuned", "ms_contrastive_l2_ntxent", "ms_contrastive_l2_ntxent_tuned", "ms_triplet", "ms_triplet_tuned", "ms_ntxent", "ms_ntxent_tuned", "ms_frozen_head",
         "st_online_contrastive", "st_online_contrastive_tuned", "st_mnrl", "st_mnrl_tuned", "st_mnrl_hn",
         "st_mnrl_hn_tuned", "st_multitask", "st_multitask_tuned", "mlp_concat", "mlp_concat_avg", "mlp_diff_prod", "mlp_diff", "tfidf")


def results_table(results: dict[str, Any]) -> str:
    """The markdown table of one task (mean ± sample std over seeds where there are several)."""
    names = sorted(results, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))
    header = ["system", "AP", "ROC-AUC", "acc @ tau", "F1 @ tau", "best acc (in-sample)", "ECE",
              "sym. max", "sym. mean", "train s", "wall s", "seeds"]
    rows = []
    for name in names:
        r, s = results[name], results[name]["summary"]
        sym_max, sym_mean = s["symmetry_max"]["mean"], s["symmetry_mean"]["mean"]
        train_s, wall_s = s["train_s"]["mean"], s["wall_s"]["mean"]
        rows.append([r["label"], _cell(s["average_precision"]), _cell(s["roc_auc"]), _cell(s["accuracy"]), _cell(s["f1"]),
                     _cell(s["best_accuracy_in_sample"]), _cell(s["ece"]),
                     "0" if sym_max == 0 else f"{sym_max:.2g}", "0" if sym_mean == 0 else f"{sym_mean:.2g}",
                     None if train_s is None else f"{train_s:.0f}", None if wall_s is None else f"{wall_s:.0f}", r["seeds"]])
    return markdown_table(header, rows)


def tuning_markdown(tuning: dict[str, Any], bootstrap: dict[str, Any] | None) -> str:
    """The grid's dev figures (every lr, and margin factor, of every tuned system) and the bootstrap interval."""
    header, rows = tuning_table(tuning)
    grid = "Learning-rate x margin grid" if "margin" in header else "Learning-rate grid"
    text = f"{grid}, dev AP of each run's best dev checkpoint:\n\n" + markdown_table(header, rows)
    if bootstrap:
        b = bootstrap
        text += (f"\n\nTest AP difference {b['ours']} - {b['peer']} (mean over seeds): {b['difference']:+.4f}, "
                 f"paired bootstrap {100 * b['level']:.0f} % interval [{b['low']:+.4f}, {b['high']:+.4f}] "
                 f"({b['resamples']} resamples of the test pairs, the same for both systems and every seed).")
    return text
