"""Forgetting benchmark: what each robust fine-tuning option gains on QQP and keeps elsewhere.

Every method fine-tunes the QQP recipe exactly as the fair-peer cells of ``quality.py`` do
(the recipe's data, one epoch, best dev checkpoint, ``--lr``), once per seed:

* ``finetune``  the recipe;
* ``wiseft``    the ``finetune`` runs, weights interpolated toward the zero-shot base (WiSE-FT);
                alpha chosen per seed on held-out pairs by ``choose_alpha``'s rule: best QQP dev
                AP among the alphas that keep every guard set (``--guard``) within
                ``--tolerance`` of the base's AP; nothing is retrained;
* ``l2sp``      the recipe + ``l2sp_weight`` (``--l2sp-weight``);
* ``freeze``    the recipe + ``freeze_layers`` (``--freeze-layers``);
* ``mix``       the recipe + ``mix_pairs`` (``--mix PRESET:SPLIT:SHARE``); the mixed set is then
                no longer out-of-domain for this method, and the tables say so.

Each model and the zero-shot base are scored the same way: a calibrator fitted on QQP dev,
then AP, ROC-AUC, ECE and accuracy at the calibrated threshold on QQP test and on each
out-of-domain test set (``--also``). The guard sets used to choose alpha are never test splits.
Runs and scores are cached under ``--work``; ``--reuse-finetune`` points the ``finetune``
method at existing runs (e.g. the fair-peer cells) instead of training them again.

    PYTHONPATH=$PWD python benchmarks/forgetting.py --work runs/bench/forgetting --seeds 0 1 2 \\
        --reuse-finetune 'runs/bench/qqp_fair/runs/ms_contrastive_l2@lr0.0001@s{seed}' \\
        --json benchmarks/results_forgetting_qqp.json --markdown benchmarks/results_forgetting_qqp.md \\
        --plot benchmarks/forgetting_tradeoff_qqp.png
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, markdown_table, mean_std, write_json, write_outputs  # noqa: E402
from quality import Task, _subsample, load_task  # noqa: E402

from metric_sim import (  # noqa: E402
    Calibrator,
    SimilarityModel,
    TrainConfig,
    expected_calibration_error,
    load_preset,
    pair_metrics,
    pair_set_distances,
    train,
)
from metric_sim.evaluation.out_of_domain import load_base_model  # noqa: E402
from metric_sim.interpolation import (  # noqa: E402
    DEFAULT_ALPHAS,
    DEFAULT_TOLERANCE,
    choose_alpha,
    interpolate_weights,
)
from metric_sim.metrics import average_precision  # noqa: E402
from metric_sim.storage import atomic_file  # noqa: E402

logger = logging.getLogger("forgetting")

METHODS = ("finetune", "wiseft", "l2sp", "freeze", "mix")
IN_DOMAIN = "qqp:test"
DEFAULT_ALSO = ("stsb:test", "sick:test", "mrpc:test")
# Held-out pairs of the other sets for choosing alpha; MRPC has no dev split and is never trained on here.
DEFAULT_GUARDS = ("stsb:dev", "sick:trial", "mrpc:train")
AP_TOLERANCE = 0.005  # the bar: within 0.005 AP of the best fine-tune, and of zero-shot out of domain


def load_set(spec: str, quick: bool = False) -> Any:
    """``PRESET:SPLIT`` as ``metric-sim evaluate --also`` loads it (each preset's default binarisation)."""
    preset, _, split = spec.partition(":")
    pairs = load_preset(preset, split=split or "test")
    return _subsample(pairs, 160, 3) if quick else pairs


# ----------------------------------------------------------------------------- scoring
class Scorer:
    """Distances of a model on QQP dev (for the calibrator), on every scored test set, and on the
    dev-side sets (QQP dev and the guards) that choose the recipe."""

    def __init__(self, task: Task, also: Sequence[str], guards: Sequence[str] = (), batch_size: int = 64,
                 quick: bool = False) -> None:
        self.sets: dict[str, Any] = {"qqp:dev": task.dev, IN_DOMAIN: task.test,
                                     **{name: load_set(name, quick) for name in also}}
        self.guards: dict[str, Any] = {name: load_set(name, quick) for name in guards}
        self.batch_size = batch_size

    def dev_aps(self, model: SimilarityModel) -> dict[str, float]:
        """AP of the raw distance on QQP dev and each guard set: the figures ``choose_alpha`` ranks by."""
        sets = {"qqp:dev": self.sets["qqp:dev"], **self.guards}
        distances = pair_set_distances(model, sets, batch_size=self.batch_size)
        return {name: average_precision(distances[name], np.asarray(pairs.labels)) for name, pairs in sets.items()}

    def distances(self, model: SimilarityModel, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        return pair_set_distances(model, {n: self.sets[n] for n in names or self.sets}, batch_size=self.batch_size)

    def figures(self, distances: Mapping[str, np.ndarray], metric: Any) -> dict[str, dict[str, float]]:
        calibrator = Calibrator.fit(distances["qqp:dev"], self.sets["qqp:dev"].labels, metric, fitted_on="qqp:dev")
        out = {}
        for name, d in distances.items():
            if name == "qqp:dev":
                continue
            labels = np.asarray(self.sets[name].labels)
            pm = pair_metrics(d, labels, calibrator)
            out[name] = {"average_precision": pm["average_precision"], "roc_auc": pm["roc_auc"],
                         "accuracy": pm["accuracy"], "best_accuracy_in_sample": pm["in_sample"]["accuracy"],
                         "ece": expected_calibration_error(labels, calibrator.predict_proba(d))}
        return out


# ----------------------------------------------------------------------------- methods
def method_config(task: Task, method: str, seed: int, args: argparse.Namespace) -> TrainConfig:
    """The fair-peer cell's config (recipe, lr, best dev checkpoint) plus the method's one option."""
    config = task.config.replace(seed=seed, learning_rate=args.lr, load_best_model_at_end=True)
    if method == "l2sp":
        return config.replace(l2sp_weight=args.l2sp_weight)
    if method == "freeze":
        return config.replace(freeze_layers=args.freeze_layers)
    if method == "mix":
        preset, split, share = args.mix.split(":")
        return config.replace(mix_pairs=[{"preset": preset, "split": split, "share": float(share)}])
    return config


def run_dir(work: Path, method: str, seed: int, args: argparse.Namespace) -> Path:
    if method in ("finetune", "wiseft") and args.reuse_finetune:
        return Path(args.reuse_finetune.format(seed=seed))
    return work / "runs" / f"{'finetune' if method == 'wiseft' else method}@s{seed}"


def trained_model(task: Task, method: str, seed: int, args: argparse.Namespace) -> tuple[SimilarityModel, Path, float | None]:
    folder = run_dir(args.work, method, seed, args)
    seconds = None
    if not (folder / "model" / "metric_sim.json").is_file():
        logger.info("%s@s%d: training %d steps into %s", method, seed, task.steps, folder)
        started = time.perf_counter()
        train(method_config(task, method, seed, args), folder, train_data=task.train, dev_data=task.dev, show_progress=False)
        seconds = round(time.perf_counter() - started, 1)
    return SimilarityModel.from_pretrained(folder / "model"), folder, seconds


def wiseft(model: SimilarityModel, folder: Path, task: Task, args: argparse.Namespace) -> tuple[SimilarityModel, dict[str, Any]]:
    base, _ = load_base_model(folder, model)
    guards = {name: load_set(name, args.quick) for name in args.guard}
    started = time.perf_counter()
    choice = choose_alpha(model, base.encoder, task.dev, guards, alphas=args.alphas, tolerance=args.tolerance)
    record = {**choice.to_dict(), "choose_s": round(time.perf_counter() - started, 1)}
    logger.info("wiseft: alpha %g chosen (guard met: %s)", choice.alpha, choice.guard_met)
    return SimilarityModel(interpolate_weights(model.encoder, base.encoder, choice.alpha), model.metric), record


def test_curve(model: SimilarityModel, folder: Path, scorer: Scorer, alphas: Sequence[float]) -> list[dict[str, Any]]:
    """AP on every test set at each alpha: the trade-off as the coefficient moves (reported, never used to choose)."""
    base, _ = load_base_model(folder, model)
    rows = []
    for alpha in alphas:
        mixed = SimilarityModel(interpolate_weights(model.encoder, base.encoder, alpha), model.metric)
        figures = scorer.figures(scorer.distances(mixed), model.metric)
        rows.append({"alpha": alpha, **{name: f["average_precision"] for name, f in figures.items()},
                     "qqp_test_ece": figures[IN_DOMAIN]["ece"]})
        logger.info("test curve alpha %g: %s", alpha, {k: round(v, 4) for k, v in rows[-1].items() if k != "alpha"})
    return rows


def _with_dev_aps(record: dict[str, Any], scorer: Scorer, model: Any, cache: Path) -> dict[str, Any]:
    """Add the dev-side APs to a cell (older caches lack them); WiSE-FT's come from its alpha table."""
    if "dev_ap" in record:
        return record
    choice = record.get("alpha_choice")
    if choice is not None:
        chosen = next(row for row in choice["table"] if row["alpha"] == choice["alpha"])
        record["dev_ap"] = {"qqp:dev": chosen["in_domain_ap"], **chosen["guard_ap"]}
    else:
        record["dev_ap"] = scorer.dev_aps(model())
    write_json(cache, record)
    return record


def score_cell(task: Task, scorer: Scorer, method: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    cache = args.work / "outputs" / f"{method}@s{seed}.json"
    if cache.is_file():
        record = json.loads(cache.read_text())
        return _with_dev_aps(record, scorer, lambda: trained_model(task, method, seed, args)[0], cache)
    model, folder, train_s = trained_model(task, method, seed, args)
    record: dict[str, Any] = {"method": method, "seed": seed, "run": str(folder), "train_s": train_s}
    if method == "wiseft":
        if seed in args.test_curve_seeds:
            record["test_curve"] = test_curve(model, folder, scorer, args.curve_alphas)
        model, record["alpha_choice"] = wiseft(model, folder, task, args)
    record["figures"] = scorer.figures(scorer.distances(model), model.metric)
    return _with_dev_aps(record, scorer, lambda: model, cache)


def zero_shot(task: Task, scorer: Scorer, args: argparse.Namespace) -> dict[str, Any]:
    cache = args.work / "outputs" / "zero_shot.json"
    # The base exactly as the interpolation rebuilds it (alpha 0), from a fine-tuned run's record.
    folder = run_dir(args.work, "finetune", args.seeds[0], args)

    def base_model() -> SimilarityModel:
        return load_base_model(folder, SimilarityModel.from_pretrained(folder / "model"))[0]

    if cache.is_file():
        return _with_dev_aps(json.loads(cache.read_text()), scorer, base_model, cache)
    model = base_model()
    record = {"method": "zero_shot", "figures": scorer.figures(scorer.distances(model), model.metric)}
    return _with_dev_aps(record, scorer, lambda: model, cache)


# ----------------------------------------------------------------------------- summary
def summarize(cells: Mapping[str, list[dict[str, Any]]], base: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Mean ± sd over seeds per method and set, the change against zero-shot, and the issue's three bars."""
    sets = [IN_DOMAIN, *args.also]
    trained_on = {"mix": args.mix.split(":")[0]} if "mix" in cells else {}
    summary: dict[str, Any] = {}
    for method, records in cells.items():
        row: dict[str, Any] = {"seeds": [r["seed"] for r in records], "sets": {}}
        for name in sets:
            aps = [r["figures"][name]["average_precision"] for r in records]
            mean, sd = mean_std(aps)
            row["sets"][name] = {"ap": aps, "ap_mean": mean, "ap_sd": sd,
                                 "delta_vs_zero_shot": mean - base["figures"][name]["average_precision"]}
        ece = [r["figures"][IN_DOMAIN]["ece"] for r in records]
        gap = [r["figures"][IN_DOMAIN]["best_accuracy_in_sample"] - r["figures"][IN_DOMAIN]["accuracy"] for r in records]
        row["qqp_test_ece"], row["qqp_acc_gap_to_in_sample"] = mean_std(ece)[0], mean_std(gap)[0]
        row["dev_ap"] = {name: mean_std([r["dev_ap"][name] for r in records])[0] for name in records[0]["dev_ap"]}
        if method == "wiseft":
            row["alphas"] = [r["alpha_choice"]["alpha"] for r in records]
            row["guard_met"] = [r["alpha_choice"]["guard_met"] for r in records]
        summary[method] = row
    best = summary.get("finetune", {}).get("sets", {}).get(IN_DOMAIN, {}).get("ap_mean")
    for method, row in summary.items():
        ood = {name: row["sets"][name]["ap_mean"] >= base["figures"][name]["average_precision"] - AP_TOLERANCE
               for name in args.also if not name.startswith(trained_on.get(method, "\0") + ":")}
        row["bars"] = {"in_domain_within_0.005_of_finetune": None if best is None else row["sets"][IN_DOMAIN]["ap_mean"] >= best - AP_TOLERANCE,
                       "out_of_domain_within_0.005_of_zero_shot": ood, "qqp_ece_at_most_0.02": row["qqp_test_ece"] <= 0.02,
                       "trained_on": trained_on.get(method)}
        row["meets_all"] = bool(row["bars"]["in_domain_within_0.005_of_finetune"]) and all(ood.values()) and row["bars"]["qqp_ece_at_most_0.02"]
    return summary


def choose_method(summary: Mapping[str, Any], base: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The recipe's method, chosen on dev only, by WiSE-FT's alpha rule applied across methods.

    A method *passes* when its mean raw-distance AP on every guard set (dev-side pairs of the
    other data sets) is at least zero-shot's minus ``--tolerance``; a guard drawn from the data a
    method trains on does not count for it. Among the passing methods the highest mean QQP dev AP
    wins; zero-shot always passes, so "none" means every method forgets on some guard set.
    """
    trained_on = {"mix": args.mix.split(":")[0]}
    floor = {name: ap - args.tolerance for name, ap in base["dev_ap"].items() if name != "qqp:dev"}
    rows = []
    for method, row in summary.items():
        guards = {name: ap for name, ap in row["dev_ap"].items()
                  if name != "qqp:dev" and not name.startswith(trained_on.get(method, "\0") + ":")}
        failing = sorted(name for name, ap in guards.items() if ap < floor[name])
        rows.append({"method": method, "seeds": row["seeds"], "qqp_dev_ap": row["dev_ap"]["qqp:dev"], "guard_ap": guards,
                     "passes": not failing, "fails_on": failing})
    passing = [r for r in rows if r["passes"]]
    chosen = max(passing, key=lambda r: r["qqp_dev_ap"]) if passing else None
    return {"rule": f"highest mean QQP dev AP among methods whose mean AP on every guard set ({', '.join(floor)}) is at "
                    f"least zero-shot's minus {args.tolerance:g}; guards from a method's own training data excluded",
            "floor": floor, "zero_shot_qqp_dev_ap": base["dev_ap"]["qqp:dev"], "table": rows,
            "chosen": None if chosen is None else chosen["method"]}


def _ap(mean: float | None, sd: float | None) -> str:
    return "–" if mean is None else f"{mean:.4f}" + (f" ± {sd:.4f}" if sd is not None else "")


def markdown(summary: Mapping[str, Any], base: dict[str, Any], cells: Mapping[str, list[dict[str, Any]]], args: argparse.Namespace) -> str:
    sets = [IN_DOMAIN, *args.also]
    header = ["method", "seeds", *[f"{s} AP (Δ zero-shot)" for s in sets], "QQP ECE", "all bars"]
    rows = [["zero-shot", "–", *[f"{base['figures'][s]['average_precision']:.4f}" for s in sets],
             f"{base['figures'][IN_DOMAIN]['ece']:.4f}", "–"]]
    for method, row in summary.items():
        cells_ = []
        for s in sets:
            f = row["sets"][s]
            mark = " (trained on)" if row["bars"]["trained_on"] and s.startswith(row["bars"]["trained_on"] + ":") else ""
            cells_.append(f"{_ap(f['ap_mean'], f['ap_sd'])} ({f['delta_vs_zero_shot']:+.4f}){mark}")
        rows.append([method, " ".join(str(seed) for seed in row["seeds"]), *cells_, f"{row['qqp_test_ece']:.4f}", "yes" if row["meets_all"] else "no"])
    lines = [markdown_table(header, rows), ""]
    choice = choose_method(summary, base, args)
    lines += [f"Dev-side figures (raw-distance AP, mean over the seeds), which choose the recipe: {choice['rule']}.", ""]
    dev_rows = [["zero-shot", "–", f"{choice['zero_shot_qqp_dev_ap']:.4f}",
                 ", ".join(f"{k} {v:.4f}" for k, v in base["dev_ap"].items() if k != "qqp:dev"), "–"]]
    for r in choice["table"]:
        dev_rows.append([r["method"], " ".join(str(seed) for seed in r["seeds"]), f"{r['qqp_dev_ap']:.4f}",
                         ", ".join(f"{k} {v:.4f}" for k, v in r["guard_ap"].items()),
                         "yes" if r["passes"] else "no: " + ", ".join(r["fails_on"])])
    lines += [markdown_table(["method", "seeds", "QQP dev AP", "guard AP", "guard met"], dev_rows), "",
              f"Chosen on dev: **{choice['chosen'] or 'none (every method fails a guard)'}**.", ""]
    if "wiseft" in cells:
        lines += ["WiSE-FT alpha chosen on dev per seed (guards: " + ", ".join(args.guard) + f", tolerance {args.tolerance:g}):", ""]
        alpha_rows = []
        for r in cells["wiseft"]:
            c = r["alpha_choice"]
            chosen = next(t for t in c["table"] if t["alpha"] == c["alpha"])
            alpha_rows.append([r["seed"], f"{c['alpha']:g}", "yes" if c["guard_met"] else "no", f"{chosen['in_domain_ap']:.4f}",
                               ", ".join(f"{k} {v:.4f}" for k, v in chosen["guard_ap"].items()), f"{c['in_domain_cost']:.4f}"])
        lines += [markdown_table(["seed", "alpha", "guard met", "QQP dev AP", "guard dev AP", "in-domain cost"], alpha_rows), ""]
        curves = [r["test_curve"] for r in cells["wiseft"] if r.get("test_curve")]
        if curves:
            lines += [f"Test AP as alpha moves (seeds {', '.join(str(r['seed']) for r in cells['wiseft'] if r.get('test_curve'))}; "
                      "reported, never used to choose):", ""]
            lines += [markdown_table(["alpha", *sets, "QQP ECE"], [
                [f"{point['alpha']:g}", *[f"{np.mean([c[i][s] for c in curves]):.4f}" for s in sets],
                 f"{np.mean([c[i]['qqp_test_ece'] for c in curves]):.4f}"] for i, point in enumerate(curves[0])]), ""]
    return "\n".join(lines)


def plot(summary: Mapping[str, Any], base: dict[str, Any], cells: Mapping[str, list[dict[str, Any]]], args: argparse.Namespace, path: Path) -> None:
    """QQP test AP against each out-of-domain set's test AP: the WiSE-FT curve, each method, zero-shot, and the bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(args.also), figsize=(5 * len(args.also), 4.2), squeeze=False)
    curves = [r["test_curve"] for r in cells.get("wiseft", []) if r.get("test_curve")]
    best = summary.get("finetune", {}).get("sets", {}).get(IN_DOMAIN, {}).get("ap_mean")
    for ax, name in zip(axes[0], args.also, strict=True):
        if curves:
            xs = [np.mean([c[i][name] for c in curves]) for i in range(len(curves[0]))]
            ys = [np.mean([c[i][IN_DOMAIN] for c in curves]) for i in range(len(curves[0]))]
            ax.plot(xs, ys, "-", color="tab:blue", alpha=0.6, label="WiSE-FT, alpha 0..1")
            for point, x, y in zip(curves[0], xs, ys, strict=True):
                ax.annotate(f"{point['alpha']:g}", (x, y), fontsize=7, xytext=(3, -8), textcoords="offset points")
        for method, row in summary.items():
            ax.plot(row["sets"][name]["ap_mean"], row["sets"][IN_DOMAIN]["ap_mean"], "o", label=method)
        zx, zy = base["figures"][name]["average_precision"], base["figures"][IN_DOMAIN]["average_precision"]
        ax.plot(zx, zy, "k*", markersize=10, label="zero-shot")
        ax.axvline(zx - AP_TOLERANCE, color="grey", linestyle="--", linewidth=0.8)
        if best is not None:
            ax.axhline(best - AP_TOLERANCE, color="grey", linestyle=":", linewidth=0.8)
        ax.set_xlabel(f"{name} AP")
        ax.set_ylabel(f"{IN_DOMAIN} AP")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.suptitle("Fine-tuning on QQP: in-domain against out-of-domain test AP (dashed: zero-shot − 0.005; dotted: fine-tune − 0.005)", fontsize=9)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="cache of runs and scores")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--one-seed", nargs="*", choices=METHODS, default=[],
                        help="methods trained at the first seed only (to fit a budget; the tables say so)")
    parser.add_argument("--lr", type=float, default=1e-4, help="learning rate of every method (the fair grid's choice)")
    parser.add_argument("--reuse-finetune", default=None, metavar="PATTERN", help="existing run folders for finetune, with {seed}")
    parser.add_argument("--also", nargs="+", default=list(DEFAULT_ALSO), help="out-of-domain test sets, PRESET:SPLIT")
    parser.add_argument("--guard", nargs="+", default=list(DEFAULT_GUARDS), help="held-out sets that choose alpha, PRESET:SPLIT")
    parser.add_argument("--alphas", nargs="+", type=float, default=list(DEFAULT_ALPHAS))
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE)
    parser.add_argument("--test-curve-seeds", nargs="*", type=int, default=[0], help="seeds whose test AP is also measured at every --curve-alphas")
    parser.add_argument("--curve-alphas", nargs="+", type=float, default=[0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    parser.add_argument("--l2sp-weight", type=float, default=0.01)
    parser.add_argument("--freeze-layers", type=int, default=3)
    parser.add_argument("--mix", default="stsb:train:0.25", metavar="PRESET:SPLIT:SHARE")
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 steps, 160-pair sets")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    bad = [s for s in [*args.guard] if s.endswith(":test")]
    if bad:
        parser.error(f"--guard {bad[0]!r}: alpha is chosen on held-out pairs, never on a test split")

    task = load_task("qqp", quick=args.quick)
    scorer = Scorer(task, args.also, args.guard, quick=args.quick)
    cells: dict[str, list[dict[str, Any]]] = {}
    for method in args.methods:
        for seed in args.seeds[:1] if method in args.one_seed else args.seeds:
            started = time.perf_counter()
            cells.setdefault(method, []).append(score_cell(task, scorer, method, seed, args))
            logger.info("%s@s%d done in %.0f s", method, seed, time.perf_counter() - started)
    base = zero_shot(task, scorer, args)
    summary = summarize(cells, base, args)
    text = markdown(summary, base, cells, args)
    print(text)
    payload = ({"environment": environment(), "lr": args.lr, "seeds": args.seeds, "also": args.also,
                "guard": args.guard, "tolerance": args.tolerance, "zero_shot": base, "summary": summary,
                "choice_on_dev": choose_method(summary, base, args), "cells": cells} if args.json else None)
    write_outputs(args.json, payload, args.markdown, text)
    if args.plot:
        plot(summary, base, cells, args, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
