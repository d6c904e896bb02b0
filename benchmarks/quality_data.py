"""quality.py's data side: the task splits, the per-row output cache and the run context.

``load_task`` forms train/dev/test of a task exactly as its recipe does; ``Store`` caches every
system row's dev/test/test-swapped outputs under ``WORK/outputs`` so a crashed run resumes and
``--rescore`` recomputes only the tables; ``encoder_distances`` is the one encoding pass every
distance row goes through; ``Context`` is what each row producer receives.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_json  # noqa: E402

from metric_sim import (  # noqa: E402
    Encoder,
    Metric,
    PairDataset,
    SimilarityModel,
    TrainConfig,
    load_preset,
)
from metric_sim.data.loader import pairs_from_columns  # noqa: E402
from metric_sim.data.report import LoadReport  # noqa: E402
from metric_sim.layout import resolve_model_source  # noqa: E402

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
TASKS = {"qqp": "quora_duplicates.yaml", "stsb": "stsb_binary.yaml", "mrpc": "mrpc.yaml"}


@dataclass
class Task:
    name: str
    config: TrainConfig  # the task's metric-sim recipe: budget, batch, max length, data
    train: PairDataset
    dev: PairDataset
    test: PairDataset
    steps: int


def _subsample(data: PairDataset, n: int, seed: int) -> PairDataset:
    """``n`` rows with both classes present (quick mode)."""
    if len(data) <= n:
        return data
    y = data.labels
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    k = max(1, round(n * pos.size / y.size))
    rows = np.concatenate([rng.choice(pos, k, replace=False), rng.choice(neg, n - k, replace=False)])
    return data.select(np.sort(rows))


def at_batch_size(config: TrainConfig, train_rows: int, batch_size: int) -> TrainConfig:
    """``config`` at another batch size, with dev evaluated as often per epoch as before.

    The recipe evaluates every ``eval_steps`` of its steps per epoch; keeping the number of
    evaluations per epoch gives the best-checkpoint rule as many candidates at any batch size.
    """
    if batch_size == config.batch_size:
        return config
    evals_per_epoch = math.ceil(train_rows / config.batch_size) / config.eval_steps
    return config.replace(batch_size=batch_size,
                          eval_steps=max(1, round(math.ceil(train_rows / batch_size) / evals_per_epoch)))


def load_task(name: str, *, quick: bool = False, batch_size: int | None = None,
              lr_scheduler: str | None = None, epochs: int | None = None, base_model: str | None = None) -> Task:
    """Train/dev/test of a task, formed exactly as its recipe forms train/dev (test: held out).

    ``batch_size`` replaces the recipe's for every fine-tuned system: the budget stays the recipe's
    epochs (so fewer steps of larger batches), and dev is evaluated as often per epoch as the recipe
    does, so the best-checkpoint rule sees the same number of candidates. ``lr_scheduler`` replaces
    the recipe's learning-rate schedule (one of ``LR_SCHEDULERS``, the same warmup) for every
    fine-tuned system, sentence-transformers' included. ``epochs`` replaces the recipe's epochs (the
    step budget grows with it; dev is still evaluated every ``eval_steps``), to measure how far a
    longer fine-tune goes beyond the recipe's budget. ``base_model`` (a model folder) replaces the
    recipe's base encoder for every system, the zero-shot rows and sentence-transformers' included.
    """
    # The task's own pairs only: the peers train on nothing else, so the recipe's robust fine-tuning
    # options (mixed-in pairs, frozen layers, L2-SP, weight interpolation) are switched off here;
    # forgetting.py measures them on top of this plain fine-tune.
    config = TrainConfig.from_yaml(RECIPES / TASKS[name]).replace(mix_pairs=[], freeze_layers=0, l2sp_weight=0.0,
                                                                   interpolate=None)
    low_high = {"low": config.score_low, "high": config.score_high} if config.preset in ("stsb", "sick") else {}
    train_data = load_preset(config.preset, split="train", **low_high)
    if config.dev_split:
        dev = load_preset(config.preset, split=config.dev_split, **low_high)
    else:  # MRPC: dev carved from train by the leakage-free group split, as TrainConfig does
        parts = train_data.group_split({"train": 1.0 - config.dev_fraction, "dev": config.dev_fraction}, seed=config.split_seed)
        train_data, dev = parts["train"], parts["dev"]
    test = load_preset(config.preset, split="test", **low_high)
    if batch_size is not None:
        config = at_batch_size(config, len(train_data), batch_size)
    if lr_scheduler is not None:
        config = config.replace(lr_scheduler=lr_scheduler)
    if epochs is not None:
        config = config.replace(epochs=epochs)
    if base_model is not None:
        config = config.replace(model=base_model)
    if quick:
        train_data, dev, test = _subsample(train_data, 256, 0), _subsample(dev, 160, 1), _subsample(test, 160, 2)
        config = config.replace(eval_steps=4, logging_steps=2, batch_size=batch_size or 16)
        steps = 4
    else:
        steps = math.ceil(len(train_data) / config.batch_size) * int(math.ceil(config.epochs))
    return Task(name, config.replace(max_steps=steps), train_data, dev, test, steps)


def with_transitive_pairs(data: PairDataset) -> PairDataset:
    """``data`` followed by the unlabelled pairs its labels imply, for the closure experiment.

    Positives: every two ids of one duplicate cluster (``data.cluster_labels()``, the library's
    cluster rule) that no row pairs and whose texts differ. Negatives: for each labelled
    non-duplicate whose two ids are in different clusters, every unlabelled pair of one member of
    each cluster. Labelled rows are kept as they are (QQP's labels are not always transitive: a
    labelled non-duplicate inside one cluster stays, and implies nothing). Deterministic order:
    positives cluster by cluster, then negatives row by row; new ``pair_id`` ``implied-K``.
    """
    ids = data.ids_a + data.ids_b
    text = dict(zip(ids, data.texts_a + data.texts_b, strict=True))
    cluster = data.cluster_labels()
    members: dict[int, list[str]] = {}
    for item in dict.fromkeys(ids):
        members.setdefault(cluster[item], []).append(item)
    paired = {frozenset(pair) for pair in zip(data.ids_a, data.ids_b, strict=True)}
    added: list[tuple[str, str, int]] = []

    def add(a: str, b: str, label: int) -> None:
        if text[a] != text[b] and frozenset((a, b)) not in paired:
            paired.add(frozenset((a, b)))
            added.append((a, b, label))

    for group in members.values():
        for i, a in enumerate(group):
            for b in group[i + 1:]:
                add(a, b, 1)
    for a, b, label in zip(data.ids_a, data.ids_b, data.labels.tolist(), strict=True):
        if label == 0 and cluster[a] != cluster[b]:
            for x in members[cluster[a]]:
                for z in members[cluster[b]]:
                    add(x, z, 0)
    columns = {"text_a": data.texts_a + [text[a] for a, _, _ in added],
               "text_b": data.texts_b + [text[b] for _, b, _ in added],
               "label": data.labels.tolist() + [label for *_, label in added],
               "id_a": data.ids_a + [a for a, _, _ in added], "id_b": data.ids_b + [b for _, b, _ in added],
               "pair_id": data.pair_ids + [f"implied-{k}" for k in range(len(added))]}
    n = len(columns["label"])
    return pairs_from_columns(columns, LoadReport(source=f"{data.report.source} + implied pairs", rows_read=n, pairs=n))


class Store:
    """``WORK/outputs/ROW.npz`` (dev, test, test_rev arrays) + ``ROW.json`` (kind, metric, timing)."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.outputs = work / "outputs"
        self.outputs.mkdir(parents=True, exist_ok=True)

    def has(self, row: str) -> bool:
        return (self.outputs / f"{row}.json").is_file()

    def save(self, row: str, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        tmp = self.outputs / f".{row}.tmp.npz"
        np.savez(tmp, **{k: np.asarray(v, dtype=np.float64) for k, v in arrays.items()})
        os.replace(tmp, self.outputs / f"{row}.npz")
        write_json(self.outputs / f"{row}.json", meta)  # written last: its presence means "done"

    def load(self, row: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        with np.load(self.outputs / f"{row}.npz") as f:
            arrays = {k: f[k] for k in f.files}
        return arrays, json.loads((self.outputs / f"{row}.json").read_text())

    def rows(self) -> list[str]:
        return sorted(p.stem for p in self.outputs.glob("*.json"))

    def check_budget(self, task: Task) -> None:
        """Record the task's training budget in ``WORK/budget.json``, or refuse a different one.

        Cached rows are named by system, lr and seed only, so a run at another batch size in the
        same folder would silently mix budgets in one table.
        """
        budget = {"task": task.name, "batch_size": task.config.batch_size, "steps": task.steps,
                  "eval_steps": task.config.eval_steps, "max_length": task.config.max_length,
                  "lr_scheduler": task.config.lr_scheduler, "model": task.config.model}
        path = self.work / "budget.json"
        if path.is_file():
            # folders made before the schedule and the model were recorded all ran the recipes' linear
            # schedule from the packaged default model
            recorded = {"lr_scheduler": "linear", "model": "default", **json.loads(path.read_text())}
            if recorded != budget:
                raise ValueError(f"{path} records the budget {recorded}, this run's is {budget}: "
                                 "use another --work for another task, batch size, lr schedule or base model")
        else:
            write_json(path, budget)


def base_model_name(task: Task) -> str:
    """The task's base encoder as the tables name it: the packaged default's name, else the folder's."""
    model = task.config.model
    return "all-MiniLM-L6-v2" if model == "default" else Path(model).name


def base_model_location(task: Task) -> Path:
    """The folder of the task's base encoder, for libraries that do not know metric-sim's ``default``."""
    return Path(resolve_model_source(task.config.model).location)


def encoder_distances(encoder: Encoder, metrics: Sequence[Metric], task: Task, batch_size: int = 64) -> dict[Metric, dict[str, np.ndarray]]:
    """Dev and test distances, and test distances with every pair swapped, scored again.

    ``SimilarityModel.embed_pairs(b, a)`` re-encodes the test texts in the swapped order;
    ``predict_proba(b, a)`` is ``calibrator.predict_proba`` of exactly these distances.
    """
    model = SimilarityModel(encoder, metrics[0])
    dev = model.embed_pairs(task.dev.texts_a, task.dev.texts_b, batch_size=batch_size)
    test = model.embed_pairs(task.test.texts_a, task.test.texts_b, batch_size=batch_size)
    swapped = model.embed_pairs(task.test.texts_b, task.test.texts_a, batch_size=batch_size)
    out = {}
    for metric in metrics:
        scorer = SimilarityModel(encoder, metric)
        out[metric] = {"dev": scorer.pair_distances(dev), "test": scorer.pair_distances(test),
                       "test_rev": scorer.pair_distances(swapped)}
    return out


@dataclass
class Context:
    task: Task
    store: Store
    seeds: list[int]
    reuse: dict[str, Path]
    train_seeds: list[int] | None = None  # fine-tune seeds; None: the recipe's seed only
    keep_checkpoints: bool = False  # fair-peer cells: keep the Trainer checkpoints (about 360 MB each)

    def fine_tune_rows(self, name: str) -> list[tuple[str, int]]:
        """``(row, seed)`` per fine-tune seed: the recipe's seed keeps the plain name."""
        default = self.task.config.seed
        return [(name if seed == default else f"{name}@s{seed}", seed) for seed in (self.train_seeds or [default])]
