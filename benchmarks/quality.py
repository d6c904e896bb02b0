"""Quality benchmark: metric-sim recipes vs sentence-transformers and the naive pair classifiers.

Train on ``train``, select and calibrate on ``dev``, report on ``test``. Every trained system
starts from the packaged all-MiniLM-L6-v2 and gets the same step budget, batch size and max
length (the task recipe's). Systems (``--systems`` picks some; ``--list`` shows them):

* ``zero_shot``              the base model, Euclidean and Manhattan rows;
* ``ms_contrastive_l2/_l1``  metric-sim online contrastive (the task recipe, Manhattan variant);
* ``ms_contrastive_l2_hn``   the recipe + negatives mined on raw distance (``hard_negatives:``);
* ``ms_contrastive_l2_hn_far``  the same from each question's neighbours of ranks 11-30 only;
* ``ms_contrastive_l2_ntxent``  the recipe + 0.5 NT-Xent (t 0.1) as an auxiliary loss on the same batch;
* ``ms_pair_ranking``        pair ranking (CoSENT on raw distance); ``ms_contrastive_l2_pair_ranking``
                             the recipe + that term on the same batch; ``ms_pair_ranking_closure`` pair
                             ranking on the train pairs + the pairs their labels imply by transitivity;
                             ``ms_pair_ranking_hn``/``_hn_far`` + the mined negatives above;
                             ``ms_pair_ranking_ntxent`` + 0.5 NT-Xent (t 0.1) on the same batch;
                             ``ms_pair_ranking_random`` with uniform random batches, not length-grouped;
                             ``ms_pair_ranking_llrd`` with layer-wise lr decay 0.8 (``layer_lr_decay``);
* ``ms_triplet``, ``ms_ntxent``, ``ms_frozen_head``  other metric-sim losses / frozen encoder;
* ``st_online_contrastive``, ``st_mnrl``  sentence-transformers' own trainer and losses;
* ``st_cosent``              sentence-transformers' CoSENTLoss (cosine), the peer of ``ms_pair_ranking``;
* ``st_mnrl_hn``             MNRL on triplets from sentence-transformers' ``util.mine_hard_negatives``;
* ``st_multitask``           sentence-transformers' multi-task Quora recipe: OnlineContrastiveLoss on
                             the pairs + MNRL on the duplicates, alternating batches;
* ``baselines``              MLP heads on frozen base embeddings: (a) concat, (b) (a) averaged
                             over both orders, (c) [|x-y|, x*y], (d) |x-y|; one row per seed;
* ``tfidf``                  TF-IDF cosine (fitted on train texts).

The one-lever probes (``_hn_far``, ``_closure``, the ``ms_pair_ranking_*`` variants, the two auxiliary
rows, ``st_multitask``) run only when ``--systems`` names them; ``--list`` says which run by default.

Distance systems are calibrated with the library's ``Calibrator`` fitted on dev; MLP heads
with a Platt (one-feature logistic) fit on their dev logit. Symmetry scores every test pair in
both orders. Expensive outputs (trained runs, embeddings, per-system distances or logits) are
cached under ``--work`` so a crashed run resumes and ``--rescore`` only recomputes the tables.

Fair-peer mode (``--lr-grid``): every fine-tuned system runs each learning rate and seed, keeps
its best dev checkpoint, gets the lr with the best mean dev AP, and only then is scored on test
(rows ``NAME_tuned``, mean ± sd over seeds), with a paired bootstrap interval of the test-AP
difference between our best and the best peer (helpers in ``fair_peers.py``). ``--margin-grid``
multiplies each system's margin-like loss parameter (metric-sim neg_margin / triplet margin /
NT-Xent temperature; sentence-transformers OnlineContrastiveLoss margin / MNRL 1 / scale) by each
factor, and the (lr, factor) pair is chosen jointly, by the same rule for every system:

    PYTHONPATH=$PWD python benchmarks/quality.py --task mrpc --work runs/bench_mrpc \\
        --systems zero_shot ms_contrastive_l2 st_online_contrastive --lr-grid 5e-5 \\
        --margin-grid 0.5 1 1.5 --seeds 0 1 2 --select-seeds 0

    PYTHONPATH=$PWD python benchmarks/quality.py --task qqp --work runs/bench_qqp \\
        --json benchmarks/results_quality_qqp.json --markdown benchmarks/results_quality_qqp.md
    PYTHONPATH=$PWD python benchmarks/quality.py --task qqp --quick --work /tmp/q   # smoke run
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
# The implementation lives in the quality_* modules next to this file; the names below are
# re-exported so that the other benchmarks and the tests keep reaching them as ``quality.NAME``.
# A test that monkeypatches a name a function looks up at call time patches the module that
# function lives in (quality_grid for the grid cells), not this one.
from _common import environment, write_json, write_outputs  # noqa: E402
from fair_peers import DEFAULT_LR_GRID, grid_cells, lr_tag, with_earlier_grids  # noqa: E402
from quality_baselines import base_embeddings, fit_mlp, mlp_logits, pair_features, tfidf_distances  # noqa: E402
from quality_data import RECIPES, TASKS, Context, Store, Task, _subsample, load_task  # noqa: E402
from quality_grid import (  # noqa: E402
    _grid_cell,
    grid_cell,
    ms_cell_config,
    prune_checkpoints,
    run_tuned,
    tunable,
    tuned_bootstrap,
)
from quality_report import results_table, score_all, score_row, targets, tuning_markdown  # noqa: E402
from quality_st import (  # noqa: E402
    ST_LR,
    ST_MINING,
    st_loss,
    st_mined_triplets,
    st_training_data,
    train_sentence_transformers,
)
from quality_systems import HARD_NEGATIVES, SYSTEMS, _ms_config  # noqa: E402

from metric_sim import Calibrator, Metric, TrainConfig, default_model_path  # noqa: E402
from metric_sim.calibration import DEFAULT_FEATURE, FEATURES  # noqa: E402
from metric_sim.training.config import LR_SCHEDULERS  # noqa: E402

__all__ = [
    "HARD_NEGATIVES", "RECIPES", "ST_LR", "ST_MINING", "SYSTEMS", "TASKS", "Calibrator", "Context", "Metric",
    "Store", "Task", "TrainConfig", "_grid_cell", "_ms_config", "_subsample", "base_embeddings",
    "build_parser", "default_model_path", "fit_mlp", "grid_cell", "load_task", "lr_tag", "main",
    "mlp_logits", "ms_cell_config", "pair_features", "parse_args", "prune_checkpoints", "results_table", "run_tuned",
    "score_all", "score_row", "st_loss", "st_mined_triplets", "st_training_data", "targets", "tfidf_distances",
    "train_sentence_transformers", "tunable", "tuned_bootstrap", "tuning_markdown",
]

logger = logging.getLogger("quality")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=sorted(TASKS), default="qqp")
    parser.add_argument("--work", help="cache folder: trained runs, embeddings, per-system outputs (required but "
                                       "with --list)")
    parser.add_argument("--systems", nargs="+", help=f"subset of {sorted(SYSTEMS)} (default: the task's set)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="seeds of the MLP baselines, and with --lr-grid of the tuned fine-tunes too")
    parser.add_argument("--train-seeds", type=int, nargs="+", default=None,
                        help="seeds of the fine-tuned systems (default: the recipe's seed only; with --lr-grid: "
                             "--seeds); rows NAME@sSEED")
    parser.add_argument("--lr-grid", type=float, nargs="*", default=None, metavar="LR",
                        help="fair-peer mode: train every fine-tuned system (ms_* but the frozen head, st_*) at each "
                             "lr and seed, keep each run's best dev checkpoint, choose the lr per system on mean dev AP, "
                             "score test once for that lr (rows NAME_tuned@sSEED). Without values: "
                             + " ".join(lr_tag(lr) for lr in DEFAULT_LR_GRID))
    parser.add_argument("--margin-grid", type=float, nargs="+", default=None, metavar="F",
                        help="fair-peer mode, with --lr-grid: positive factors on each tuned system's margin-like "
                             "loss parameter, chosen jointly with the lr on mean dev AP (ties: factor 1, then the "
                             "smaller lr). metric-sim contrastive: neg_margin (and pos_margin, 0 in the recipes); "
                             "triplet: margin; NT-Xent: temperature; sentence-transformers OnlineContrastiveLoss: "
                             "margin 0.5 x F; MNRL: scale 20 / F (temperature x F). Runs NAME@lrLR@mF@sSEED, "
                             "NAME@lrLR@sSEED at F = 1 (default: 1 only)")
    parser.add_argument("--select-seeds", type=int, nargs="+", default=None,
                        help="fair-peer mode: seeds trained at every lr (and margin factor) to choose it (default: "
                             "all the tuned seeds); the other seeds are trained at the chosen one only")
    parser.add_argument("--keep-checkpoints", action="store_true",
                        help="fair-peer mode: keep each cell's Trainer checkpoints (default: pruned once the cell "
                             "is finished, but their trainer_state.json)")
    parser.add_argument("--bootstrap", type=int, default=2000, metavar="N",
                        help="paired bootstrap resamples of the test pairs (fair-peer mode; 0: none)")
    parser.add_argument("--reuse", nargs="*", default=[], metavar="SYSTEM=RUN_DIR",
                        help="take a finished run folder for a trained system instead of training it")
    parser.add_argument("--batch-size", type=int, default=None, metavar="N",
                        help="train every fine-tuned system at batch N for the recipe's epochs (fewer steps), dev "
                             "evaluated as often per epoch (default: the recipe's batch; one per --work folder)")
    parser.add_argument("--lr-scheduler", choices=LR_SCHEDULERS, default=None,
                        help="train every fine-tuned system (metric-sim and sentence-transformers) with this "
                             "learning-rate schedule after the recipe's warmup (default: the recipe's, linear decay; "
                             "one per --work folder)")
    parser.add_argument("--epochs", type=int, default=None, metavar="N",
                        help="train every fine-tuned system for N epochs of train instead of the recipe's (N times the "
                             "steps; dev still evaluated every eval_steps; default: the recipe's; one per --work "
                             "folder, recorded as its step budget)")
    parser.add_argument("--base-model", default=None, metavar="PATH",
                        help="start every system (metric-sim, sentence-transformers, the zero-shot and frozen rows) "
                             "from this model folder instead of the recipe's packaged all-MiniLM-L6-v2 (one per --work "
                             "folder, recorded in its budget)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 256 train pairs, 4 steps")
    parser.add_argument("--rescore", action="store_true", help="only rescore the cached outputs")
    parser.add_argument("--calibration-feature", choices=FEATURES, default=DEFAULT_FEATURE,
                        help="form of the dev calibrator of every distance row (Calibrator.fit(feature=...)); "
                             "the trained runs do not depend on it, so --rescore can compare forms")
    parser.add_argument("--json", help="write the raw results here")
    parser.add_argument("--markdown", help="write the markdown table here")
    parser.add_argument("--list", action="store_true", help="list the systems and exit")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parsed and checked arguments; ``lr_grid`` None (no grid) or sorted distinct positive lrs,
    ``fine_tune_seeds`` the seeds of the tuned rows (``--train-seeds``, else ``--seeds``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.work and not args.list:
        parser.error("the following arguments are required: --work")
    if args.lr_grid is not None:
        grid = sorted(set(args.lr_grid or DEFAULT_LR_GRID))
        if any(not (math.isfinite(lr) and lr > 0) for lr in grid):
            parser.error(f"--lr-grid takes positive learning rates, got {args.lr_grid}")
        args.lr_grid = grid
    if args.margin_grid is not None:
        if args.lr_grid is None:
            parser.error("--margin-grid applies only with --lr-grid")
        bad = [f for f in args.margin_grid if not (math.isfinite(f) and f > 0)]
        if bad:
            parser.error(f"--margin-grid takes positive finite factors, got {', '.join(f'{f:g}' for f in bad)}")
        args.margin_grid = sorted(set(args.margin_grid))
    if args.batch_size is not None and args.batch_size < 2:
        parser.error(f"--batch-size takes at least 2 pairs, got {args.batch_size}")
    if args.epochs is not None and args.epochs < 1:
        parser.error(f"--epochs takes at least 1 epoch, got {args.epochs}")
    if args.base_model is not None and not Path(args.base_model, "config.json").is_file():
        parser.error(f"--base-model expects a model folder holding config.json, got {args.base_model!r}")
    if args.bootstrap < 0:
        parser.error(f"--bootstrap takes a number of resamples >= 0, got {args.bootstrap}")
    seeds = args.train_seeds or args.seeds
    if len(set(seeds)) != len(seeds):
        parser.error(f"seeds must be distinct, got {seeds}")
    args.fine_tune_seeds = list(seeds)
    if args.select_seeds is not None:
        if args.lr_grid is None:
            parser.error("--select-seeds applies only with --lr-grid")
        if len(set(args.select_seeds)) != len(args.select_seeds) or not set(args.select_seeds) <= set(seeds):
            parser.error(f"--select-seeds must be distinct seeds among the tuned seeds {seeds}, got {args.select_seeds}")
    reuse = {}
    for item in args.reuse:
        name, sep, path = item.partition("=")
        if not sep or name not in SYSTEMS:
            parser.error(f"--reuse expects SYSTEM=RUN_DIR with SYSTEM in {sorted(SYSTEMS)}, got {item!r}")
        reuse[name] = Path(path)
    args.reuse = reuse
    args.systems = args.systems or [n for n, (_, tasks) in SYSTEMS.items() if args.task in tasks]
    unknown = sorted(set(args.systems) - set(SYSTEMS))
    if unknown:
        parser.error(f"unknown --systems {unknown}; valid: {sorted(SYSTEMS)}")
    return args


def seeds_left_out(tuning: dict[str, Any], systems: list[str], seeds: list[int]) -> dict[str, list[int]]:
    """Per tuned system of ``systems``, the seeds its saved record holds that ``seeds`` lacks.

    A tuned run rewrites its system's record with the seeds it is given, so running it with fewer
    (say, to add one grid cell on seed 0) would silently shrink a 5-seed row to 1 seed in every later
    rescore; the cached runs would stay, but the tables would not show them.
    """
    left_out = {name: sorted(set(tuning[name].get("seeds", [])) - set(seeds))
                for name in systems if name in tuning and tunable(name)}
    return {name: dropped for name, dropped in left_out.items() if dropped}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.list:
        for name, (_, tasks) in SYSTEMS.items():
            print(f"{name:31s} {'default on ' + ', '.join(tasks) if tasks else 'only when named'}")
        return 0
    tuning_file = Path(args.work) / "tuning.json"
    tuning: dict[str, Any] = json.loads(tuning_file.read_text()) if tuning_file.is_file() else {}
    if not args.rescore and args.lr_grid is not None:
        left_out = seeds_left_out(tuning, args.systems, args.fine_tune_seeds)
        if left_out:
            build_parser().error(
                f"{tuning_file} holds tuned runs of seeds the tuned seeds {args.fine_tune_seeds} leave out "
                f"({', '.join(f'{name}: {seeds}' for name, seeds in left_out.items())}); rerunning would drop them "
                "from the tables: add them to --seeds (their cached runs are reused), or use another --work")
    task = load_task(args.task, quick=args.quick, batch_size=args.batch_size, lr_scheduler=args.lr_scheduler,
                     epochs=args.epochs, base_model=args.base_model)
    store = Store(Path(args.work))
    try:
        store.check_budget(task)
    except ValueError as error:
        build_parser().error(str(error))
    ctx = Context(task, store, args.seeds, args.reuse, args.train_seeds, keep_checkpoints=args.keep_checkpoints)
    logger.info("%s: train %d / dev %d / test %d pairs; budget %d steps, batch %d, max length %d",
                task.name, len(task.train), len(task.dev), len(task.test), task.steps, task.config.batch_size,
                task.config.max_length)
    if not args.rescore:
        for name in args.systems:  # each producer skips the rows already in the cache
            started = time.perf_counter()
            if args.lr_grid is not None and tunable(name):
                label = getattr(SYSTEMS[name][0], "label", name)
                record = run_tuned(ctx, name, label, args.lr_grid, args.fine_tune_seeds, args.select_seeds,
                                   args.margin_grid)
                tuning[name] = with_earlier_grids(record, tuning.get(name))
                write_json(tuning_file, tuning)
            else:
                SYSTEMS[name][0](ctx)
            logger.info("%s: done in %.0f s", name, time.perf_counter() - started)
    results = score_all(store, task, args.calibration_feature)
    for name, info in tuning.items():  # the chosen lr (and margin) next to the tuned row
        if f"{name}_tuned" in results:
            results[f"{name}_tuned"]["learning_rate"] = info["learning_rate"]
            if info.get("margin_grid"):
                results[f"{name}_tuned"].update(margin_factor=info["margin_factor"], margin=info.get("margin"))
    boot = (tuned_bootstrap(store, task, tuning, resamples=args.bootstrap, systems=args.systems)
            if tuning and args.bootstrap else None)
    payload = {"task": task.name, "quick": args.quick, "recipe": TASKS[task.name], "steps": task.steps,
               "epochs": task.config.epochs,
               "batch_size": task.config.batch_size, "max_length": task.config.max_length,
               "lr_scheduler": task.config.lr_scheduler, "model": task.config.model,
               "eval_steps": task.config.eval_steps,
               "pairs": {"train": len(task.train), "dev": len(task.dev), "test": len(task.test)},
               "test_positives": int(task.test.labels.sum()), "calibration_feature": args.calibration_feature,
               "environment": environment(),
               "results": results, "targets": targets(results)}
    if tuning:
        payload.update({"lr_grid": sorted({e["learning_rate"] for e in grid_cells(tuning)}),
                        "tuning": tuning, "bootstrap": boot})
        factors = {e["margin_factor"] for e in grid_cells(tuning) if "margin_factor" in e}
        if factors:
            payload["margin_grid"] = sorted(factors)
    table = results_table(results)
    if tuning:
        table += "\n\n" + tuning_markdown(tuning, boot)
    print(table)
    print(json.dumps(payload["targets"], indent=2))
    write_outputs(args.json, payload, args.markdown, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
