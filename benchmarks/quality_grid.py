"""quality.py's fair-peer protocol: the tuned (learning rate, margin factor) grid of every
fine-tuned system, each cell keeping its best dev checkpoint, the choice on dev, the tuned rows
scored on test, and the paired bootstrap of the test-AP difference between the two best.

The pure parts (the choice rule, names, margins, the bootstrap itself) are in fair_peers.py;
this module trains the cells (``grid_cell``), prunes their checkpoints and writes the rows.
"""

from __future__ import annotations

import json
import logging
import shutil
import statistics
import sys
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fair_peers import (  # noqa: E402
    cell_name,
    choose_lr,
    grid_summary,
    grid_tag,
    lr_tag,
    margin_text,
    ms_margin,
    paired_bootstrap_ap_difference,
    scaled_loss_params,
    st_margin,
)
from quality_data import Context, Store, Task, base_model_location, encoder_distances  # noqa: E402
from quality_st import st_mined_triplets, train_sentence_transformers  # noqa: E402
from quality_systems import SYSTEMS, _ms_config, ms_train_data  # noqa: E402

from metric_sim import Encoder, Metric, SimilarityModel, TrainConfig, train  # noqa: E402

logger = logging.getLogger("quality")


def tunable(name: str) -> bool:
    """Fine-tuned systems that take the learning-rate grid (the frozen head's 1e-3 is a head-only lr)."""
    return name in SYSTEMS and (name.startswith("st_") or (name.startswith("ms_") and name != "ms_frozen_head"))


def _ms_checkpoint_curve(run_dir: Path) -> list[list[float]]:
    """(step, dev AP) of every periodic evaluation, from the newest checkpoint's trainer state."""
    states = sorted((run_dir / "checkpoints").glob("checkpoint-*/trainer_state.json"),
                    key=lambda f: int(f.parent.name.rsplit("-", 1)[1]))
    if not states:
        return []
    history = json.loads(states[-1].read_text()).get("log_history", [])
    return [[e["step"], e["eval_average_precision"]] for e in history if "eval_average_precision" in e]


def prune_checkpoints(run_dir: Path) -> int:
    """Delete a finished cell's Trainer checkpoints but their ``trainer_state.json`` (the dev-AP
    curve): the kept model is in ``RUN_DIR/model``; 36 cells would otherwise hold ~20 GB."""
    removed = 0
    for folder in (run_dir / "checkpoints").glob("checkpoint-*"):
        for path in sorted(folder.rglob("*"), reverse=True):  # files before their folders
            if path.name == "trainer_state.json" and path.parent == folder:
                continue
            if path.is_dir():
                path.rmdir()
            else:
                removed += path.stat().st_size
                path.unlink()
    return removed


def ms_cell_config(task: Task, name: str, lr: float, seed: int, factor: float = 1.0) -> TrainConfig:
    """The TrainConfig of one metric-sim grid cell: the variant's at ``lr`` and ``seed``, keeping its
    best dev checkpoint, its margin-like loss parameter times ``factor`` (``scaled_loss_params``)."""
    config = _ms_config(task, name[3:]).replace(seed=seed, learning_rate=lr, load_best_model_at_end=True)
    if factor == 1.0:  # exactly the config of the cells made before the margin grid
        return config
    return config.replace(loss_params=scaled_loss_params(config.loss, config.loss_params, factor))


def grid_cell(ctx: Context, name: str, lr: float, seed: int, factor: float = 1.0) -> dict[str, Any]:
    """One (system, lr, margin factor, seed) cell, trained if needed; its checkpoints pruned unless kept."""
    record = _grid_cell(ctx, name, lr, seed, factor)
    if not ctx.keep_checkpoints:
        prune_checkpoints(ctx.store.work / "runs" / record["cell"])
    return record


def _grid_cell(ctx: Context, name: str, lr: float, seed: int, factor: float = 1.0) -> dict[str, Any]:
    """Train one (system, lr, margin factor, seed) cell into ``WORK/runs/NAME@lrLR@sSEED`` (factor 1)
    or ``NAME@lrLR@mFACTOR@sSEED`` (skipped when finished) and return its record: the kept
    checkpoint's dev AP, the dev-AP curve, timings, the model path, the factor and margin values.

    Both systems evaluate dev AP of their raw distance every ``eval_steps`` steps (the task
    recipe's) and keep the best checkpoint; the cell's dev AP is that checkpoint's figure as the
    trainer recorded it (metric-sim: ``best_step_average_precision``; sentence-transformers:
    ``state.best_metric`` of the Euclidean-AP evaluator), so no extra encoding pass is needed.
    """
    cell = cell_name(name, lr, seed, factor)
    run_dir = ctx.store.work / "runs" / cell
    c = ctx.task.config
    if name.startswith("ms_"):
        config = ms_cell_config(ctx.task, name, lr, seed, factor)
        if not (run_dir / "model" / "metric_sim.json").is_file():
            from metric_sim.training.resume import last_complete_checkpoint

            resume = last_complete_checkpoint(run_dir / "checkpoints") is not None  # a crashed cell continues
            if not resume and run_dir.exists():
                shutil.rmtree(run_dir)  # interrupted before its first checkpoint: start again
            logger.info("%s: %s %d steps into %s", cell, "resuming" if resume else "training", ctx.task.steps, run_dir)
            train(config, run_dir, resume=resume, train_data=ms_train_data(ctx.task, name), dev_data=ctx.task.dev, show_progress=False)
        info = json.loads((run_dir / "train_config.json").read_text())
        dev = json.loads((run_dir / "metrics.json").read_text())["dev"]
        r = info["run"]
        return {"cell": cell, "system": name, "learning_rate": lr, "seed": seed, "model": str(run_dir / "model"),
                "margin_factor": factor, "margin": ms_margin(config.loss, config.loss_params),
                "dev_ap": dev.get("best_step_average_precision") or dev["average_precision"],
                "best_checkpoint": dev.get("best_checkpoint"), "dev_curve": _ms_checkpoint_curve(run_dir),
                "eval_steps": config.eval_steps, "steps": r["steps"], "metric": str(config.metric),
                "loss": info["loss"], "loss_params": r.get("loss_params_resolved", info["loss_params"]),
                "batch_size": info["batch_size"], "sampler": r.get("sampler"),
                "train_s": round(r["train_runtime_s"] - r.get("dev_eval_time_s", 0.0), 1), "wall_s": r["wall_time_s"],
                "mining_s": (r.get("hard_negatives") or {}).get("seconds"),
                "mined_negatives": (r.get("hard_negatives") or {}).get("count")}
    loss_name = name[3:]
    if not (run_dir / "st_train.json").is_file():
        logger.info("%s: training %d steps into %s", cell, ctx.task.steps, run_dir)
        if run_dir.exists():
            shutil.rmtree(run_dir)  # a crashed cell trains again from the start
        train_sentence_transformers(loss_name, ctx.task.train, run_dir, steps=ctx.task.steps, batch_size=c.batch_size,
                                    max_length=c.max_length, seed=seed, learning_rate=lr, dev=ctx.task.dev,
                                    eval_steps=c.eval_steps, margin_factor=factor, lr_scheduler=c.lr_scheduler,
                                    model_path=base_model_location(ctx.task),
                                    triplets=st_mined_triplets(ctx) if loss_name == "mnrl_hn" else None)
    info = json.loads((run_dir / "st_train.json").read_text())
    extra = {}
    if loss_name == "mnrl_hn":
        mined = st_mined_triplets(ctx)
        extra = {"mining_s": mined["mining_s"], "mined_triplets": mined["triplets"], "mining_options": mined["options"]}
    return {"cell": cell, "system": name, "model": str(run_dir / "model"), "metric": "euclidean", **info, **extra,
            "margin_factor": factor, "margin": st_margin(loss_name, factor)}  # also for cells older than the grid


def run_tuned(ctx: Context, name: str, label: str, grid: Sequence[float], seeds: Sequence[int],
              select_seeds: Sequence[int] | None = None, margin_grid: Sequence[float] | None = None) -> dict[str, Any]:
    """The (lr, margin factor, seed) cells of ``name`` for every lr, every factor of ``margin_grid``
    (None: factor 1 only, the plain lr grid) and every seed of ``select_seeds`` (default: ``seeds``);
    the (lr, factor) with the best mean dev AP over them; then the remaining ``seeds`` at that pair
    only, and for every seed rows ``NAME_tuned@sSEED`` with dev/test/test-swapped distances (test is
    encoded for no other cell). Returns the tuning record: the choice and the grid's dev figures."""
    select = list(select_seeds) if select_seeds else list(seeds)
    factors = list(margin_grid) if margin_grid else [1.0]
    cells = {(lr, f, seed): grid_cell(ctx, name, lr, seed, f) for lr in grid for f in factors for seed in select}
    table: dict[Any, dict[int, float | None]] = {}
    for (lr, f, seed), cell in cells.items():  # plain lr keys without a margin grid: the old tags and JSON
        table.setdefault((lr, f) if margin_grid else lr, {})[seed] = cell.get("dev_ap")
    choice = choose_lr(table, select)
    summary = grid_summary(table, select)
    for entry in summary.values():  # best step per seed, so RESULTS.md can show where each run peaked
        lr, f = entry["learning_rate"], entry.get("margin_factor", 1.0)
        entry["best_step"] = [_best_step(cells[(lr, f, seed)]) for seed in select]
        entry["dev_curve"] = [cells[(lr, f, seed)].get("dev_curve") for seed in select]
        entry["train_s"] = [cells[(lr, f, seed)].get("train_s") for seed in select]
        # the margin-like value is recorded at factor 1 too, so the grid table names it for every cell
        entry["margin"] = cells[(lr, f, select[0])].get("margin")
    chosen, factor = (None, None) if choice is None else (choice if margin_grid else (choice, 1.0))
    rule = (f"highest mean dev AP over seeds {select} (complete (lr, margin factor) pairs only); "
            "ties -> margin factor 1, then smaller lr" if margin_grid else
            f"highest mean dev AP over seeds {select} (complete lrs only); ties -> smaller lr")
    record = {"label": label, "learning_rate": chosen, "margin_factor": factor,
              "margin_grid": list(margin_grid) if margin_grid else None, "seeds": list(seeds), "select_seeds": select,
              "grid": summary, "rule": rule}
    if chosen is None:
        logger.warning("%s: no grid cell has a dev AP for every seed; no tuned row", name)
        return record
    for seed in seeds:  # the chosen pair's other seeds, trained only now
        if (chosen, factor, seed) not in cells:
            cells[(chosen, factor, seed)] = grid_cell(ctx, name, chosen, seed, factor)
    record["margin"] = cells[(chosen, factor, seeds[0])].get("margin")
    if set(seeds) != set(select):  # dev AP of every tuned seed at the chosen pair
        chosen_dev = [cells[(chosen, factor, seed)].get("dev_ap") for seed in seeds]
        present = [float(v) for v in chosen_dev if v is not None]
        record["chosen_dev_ap"] = {"dev_ap": chosen_dev, "dev_ap_mean": statistics.fmean(present) if present else None,
                                   "dev_ap_std": statistics.stdev(present) if len(present) > 1 else None}
    tuned = f"lr {lr_tag(chosen)}" + (f", {margin_text(record.get('margin'), factor)}" if margin_grid else "")
    for seed in seeds:
        row, cell = f"{name}_tuned@s{seed}", cells[(chosen, factor, seed)]
        if ctx.store.has(row) and ctx.store.load(row)[1].get("cell") == cell["cell"]:
            continue
        if name.startswith("ms_"):
            model = SimilarityModel.from_pretrained(cell["model"])
            encoder, metric = model.encoder, model.metric
        else:  # the sentence-transformers layout: mean pooling + Normalize; Euclidean ranks as cosine
            encoder, metric = Encoder.from_pretrained(cell["model"], max_length=ctx.task.config.max_length), Metric.EUCLIDEAN
        started = time.perf_counter()
        arrays = encoder_distances(encoder, [metric], ctx.task)[metric]
        ctx.store.save(row, arrays, {**cell, "kind": "distance", "metric": metric.value,
                                     "label": f"{label}, {tuned} tuned on dev, best dev checkpoint",
                                     "eval_s": round(time.perf_counter() - started, 1)})
    return record


def _best_step(cell: dict[str, Any]) -> int | None:
    checkpoint = cell.get("best_checkpoint")
    if not checkpoint:
        return None
    try:
        return int(str(checkpoint).rstrip("/").rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return None


def tuned_bootstrap(store: Store, task: Task, tuning: dict[str, Any], *, resamples: int, seed: int = 0,
                    systems: Collection[str] | None = None) -> dict[str, Any] | None:
    """Paired bootstrap of the test-AP difference, our best tuned row vs the best tuned peer row,
    "best" by mean dev AP at the chosen lr and margin (test does not pick the rows it is then scored on).
    ``systems``: the candidates (default: every tuned system), so that a one-seed probe row kept in the
    same folder does not stand in for a several-seed row by a dev AP a single seed happened to reach."""
    def dev_mean(name: str) -> float:
        info = tuning[name]
        if "chosen_dev_ap" in info:  # every tuned seed's dev AP, not only the selection seeds'
            return info["chosen_dev_ap"]["dev_ap_mean"]
        return info["grid"][grid_tag(info["learning_rate"], info.get("margin_factor") or 1.0)]["dev_ap_mean"]

    chosen = [n for n in tuning if tuning[n].get("learning_rate") is not None and (systems is None or n in systems)]
    ours = [n for n in chosen if n.startswith("ms_")]
    peers = [n for n in chosen if n.startswith("st_")]
    if not ours or not peers:
        return None
    best_ours, best_peer = max(ours, key=dev_mean), max(peers, key=dev_mean)

    def scores(name: str) -> list[np.ndarray]:
        rows = [f"{name}_tuned@s{s}" for s in tuning[name]["seeds"]]
        return [-store.load(r)[0]["test"] for r in rows if store.has(r)]  # distance rows: higher score = closer

    out = paired_bootstrap_ap_difference(task.test.labels, scores(best_ours), scores(best_peer), resamples=resamples,
                                         seed=seed)
    return {"ours": f"{best_ours}_tuned", "peer": f"{best_peer}_tuned", "selected_by": "mean dev AP at the chosen lr",
            "statistic": "mean over seeds of test AP (ours) - mean over seeds of test AP (peer); the same test-pair "
                         "resamples for every seed of both systems; percentile interval", **out}
