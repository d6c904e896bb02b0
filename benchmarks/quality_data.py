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


def load_task(name: str, *, quick: bool = False) -> Task:
    """Train/dev/test of a task, formed exactly as its recipe forms train/dev (test: held out)."""
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
    if quick:
        train_data, dev, test = _subsample(train_data, 256, 0), _subsample(dev, 160, 1), _subsample(test, 160, 2)
        config = config.replace(eval_steps=4, logging_steps=2, batch_size=16)
        steps = 4
    else:
        steps = math.ceil(len(train_data) / config.batch_size) * int(math.ceil(config.epochs))
    return Task(name, config.replace(max_steps=steps), train_data, dev, test, steps)


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
