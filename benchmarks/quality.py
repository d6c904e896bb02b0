"""Quality benchmark: metric-sim recipes vs sentence-transformers and the naive pair classifiers.

Train on ``train``, select and calibrate on ``dev``, report on ``test``. Every trained system
starts from the packaged all-MiniLM-L6-v2 and gets the same step budget, batch size and max
length (the task recipe's). Systems (``--systems`` picks some; ``--list`` shows them):

* ``zero_shot``              the base model, Euclidean and Manhattan rows;
* ``ms_contrastive_l2/_l1``  metric-sim online contrastive (the task recipe, Manhattan variant);
* ``ms_triplet``, ``ms_ntxent``, ``ms_frozen_head``  other metric-sim losses / frozen encoder;
* ``st_online_contrastive``, ``st_mnrl``  sentence-transformers' own trainer and losses;
* ``st_mnrl_hn``             MNRL on triplets from sentence-transformers' ``util.mine_hard_negatives``;
* ``baselines``              MLP heads on frozen base embeddings: (a) concat, (b) (a) averaged
                             over both orders, (c) [|x-y|, x*y], (d) |x-y|; one row per seed;
* ``tfidf``                  TF-IDF cosine (fitted on train texts).

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
import copy
import json
import logging
import math
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, markdown_table, mean_std, write_json, write_outputs  # noqa: E402
from fair_peers import (  # noqa: E402
    DEFAULT_LR_GRID,
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
    tuning_table,
)

from metric_sim import (  # noqa: E402
    Calibrator,
    Encoder,
    Metric,
    PairDataset,
    SimilarityModel,
    TrainConfig,
    default_model_path,
    expected_calibration_error,
    in_sample_thresholds,
    load_preset,
    pair_metrics,
    train,
)

logger = logging.getLogger("quality")
RECIPES = Path(__file__).resolve().parent.parent / "recipes"
TASKS = {"qqp": "quora_duplicates.yaml", "stsb": "stsb_binary.yaml", "mrpc": "mrpc.yaml"}
ST_LR = 2e-5  # sentence-transformers' documented default, as in ANCHORS.md
ST_WARMUP = 0.1
ST_BEST_METRIC = "eval_dev_euclidean_ap"  # BinaryClassificationEvaluator(name="dev", similarity_fn_names=["euclidean"])
# util.mine_hard_negatives options: its docstring's example (rank window 10-50, max cosine 0.8,
# relative margin 0.05, random sampling), one negative per (anchor, positive) pair so that the
# step budget sees as many positives as the plain MNRL row.
# metric-sim's hard_negatives block for ms_contrastive_l2_hn: one negative per question with a
# duplicate, among its 20 nearest non-duplicates, skipping any closer than 0.95x its duplicate's
# distance (the false-negative guard). Chosen on dev at 300 steps: 0.807 against 0.784 with
# negatives for every question (naive mining hurt).
HARD_NEGATIVES = {"mine": True, "num_negatives": 1, "anchors": "with_positives", "relative_margin": 0.05,
                  "range_max": 20}
ST_MINING = {"range_min": 10, "range_max": 50, "max_score": 0.8, "relative_margin": 0.05, "num_negatives": 1,
             "sampling_strategy": "random"}


# ----------------------------------------------------------------------------- data
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


# ----------------------------------------------------------------------------- cached outputs
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


# ----------------------------------------------------------------------------- systems
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


def _rows_zero_shot(ctx: Context) -> None:
    if ctx.store.has("zero_shot_l2") and ctx.store.has("zero_shot_l1"):
        return
    encoder = Encoder.from_pretrained("default", max_length=ctx.task.config.max_length)
    started = time.perf_counter()
    outputs = encoder_distances(encoder, [Metric.EUCLIDEAN, Metric.MANHATTAN], ctx.task)
    for metric, arrays in outputs.items():
        ctx.store.save(f"zero_shot_{_short(metric)}", arrays, {
            "kind": "distance", "metric": metric.value, "label": f"zero-shot all-MiniLM-L6-v2 ({_short(metric).upper()})",
            "train_s": None, "eval_s": round(time.perf_counter() - started, 1)})


def _short(metric: Metric) -> str:
    return "l2" if metric is Metric.EUCLIDEAN else "l1"


def _ms_config(task: Task, variant: str) -> TrainConfig:
    """metric-sim configs at the task's budget; variants derive from the task recipe."""
    base = task.config
    if variant == "contrastive_l2":
        return base
    if variant == "contrastive_l1":
        if task.name != "qqp":
            raise ValueError("the Manhattan recipe exists for qqp only")
        return TrainConfig.from_yaml(RECIPES / "quora_duplicates_manhattan.yaml").replace(
            max_steps=task.steps, batch_size=base.batch_size, eval_steps=base.eval_steps, logging_steps=base.logging_steps)
    if variant == "contrastive_l2_hn":
        # The recipe plus negatives mined once with the starting model on raw Euclidean distance,
        # for questions that have a duplicate only (most QQP questions have none, and their
        # negatives would dilute the positives); at the same step budget as every other row, so
        # the mined pairs replace plain pairs rather than adding steps. Mining time is reported.
        return base.replace(hard_negatives=dict(HARD_NEGATIVES), max_steps=task.steps)
    if variant == "triplet":  # PML TripletMarginLoss, margin 0.2 (Euclidean units), cluster-aware batches
        return base.replace(loss="triplet", loss_params={"margin": 0.2}, sampler="auto")
    if variant == "ntxent":  # InfoNCE on -distance / 0.05 with in-batch negatives by cluster label
        return base.replace(loss="ntxent", loss_params={"temperature": 0.05}, sampler="auto")
    if variant == "frozen_head":  # the frozen_head recipe's loss and lr, at this task's budget and batch
        frozen = TrainConfig.from_yaml(RECIPES / "frozen_head.yaml")
        return base.replace(freeze_encoder=True, learning_rate=frozen.learning_rate, loss=frozen.loss,
                            loss_params=frozen.loss_params, warmup_ratio=frozen.warmup_ratio)
    raise ValueError(f"unknown metric-sim variant {variant!r}")


def _rows_metric_sim(variant: str, label: str) -> Callable[[Context], None]:
    def run(ctx: Context) -> None:
        name = f"ms_{variant}"
        for row, seed in ctx.fine_tune_rows(name):
            if not ctx.store.has(row):
                _metric_sim_row(ctx, name, row, _ms_config(ctx.task, variant).replace(seed=seed), label)
    run.label = label  # type: ignore[attr-defined]  # the fair-peer mode names its tuned rows after it
    return run


def _metric_sim_row(ctx: Context, name: str, row: str, config: TrainConfig, label: str) -> None:
    run_dir = (ctx.reuse.get(name) if row == name else None) or ctx.store.work / "runs" / row
    if not (run_dir / "model" / "metric_sim.json").is_file():
        logger.info("%s: training %d steps into %s", name, ctx.task.steps, run_dir)
        train(config, run_dir, train_data=ctx.task.train, dev_data=ctx.task.dev, show_progress=False)
    info = json.loads((run_dir / "train_config.json").read_text())
    model = SimilarityModel.from_pretrained(run_dir / "model")
    started = time.perf_counter()
    arrays = encoder_distances(model.encoder, [model.metric], ctx.task)[model.metric]
    r = info["run"]
    ctx.store.save(row, arrays, {
        "kind": "distance", "metric": model.metric.value, "label": label, "run": str(run_dir), "seed": config.seed,
        "loss": info["loss"], "loss_params": r.get("loss_params_resolved", info["loss_params"]),
        "learning_rate": info["learning_rate"], "batch_size": info["batch_size"], "steps": r["steps"],
        "epochs": r["epochs"], "sampler": r.get("sampler"),
        # Training proper: the Trainer's runtime minus metric-sim's periodic dev evaluations
        # (sentence-transformers runs none); wall_s is the whole train() call.
        "train_s": round(r["train_runtime_s"] - r.get("dev_eval_time_s", 0.0), 1), "wall_s": r["wall_time_s"],
        "eval_s": round(time.perf_counter() - started, 1)})


def train_sentence_transformers(loss_name: str, train_pairs: PairDataset, out_dir: Path, *, steps: int,
                                batch_size: int, max_length: int, seed: int, callbacks: Sequence[Any] = (),
                                learning_rate: float = ST_LR, dev: PairDataset | None = None, eval_steps: int | None = None,
                                triplets: dict[str, list[str]] | None = None, margin_factor: float = 1.0) -> dict[str, Any]:
    """Fine-tune with sentence-transformers' own trainer; save ``out_dir/model`` + ``st_train.json``.

    ``online_contrastive``: OnlineContrastiveLoss (cosine distance, margin 0.5) on all labelled
    pairs. ``mnrl``: MultipleNegativesRankingLoss on the similar pairs only, batches without
    duplicate texts (its recommended sampler). ``mnrl_hn``: the same loss on ``triplets``
    (anchor, positive, negative) from ``util.mine_hard_negatives``. ``margin_factor`` scales the
    loss's margin (see ``st_loss``). Warmup 0.1, fp32, lr and seed as given. Without ``dev`` the
    final weights are kept (the trainer's default). With ``dev`` and ``eval_steps``: a
    ``BinaryClassificationEvaluator`` scores dev AP of the Euclidean distance of the (normalised)
    embeddings every ``eval_steps`` steps, a checkpoint is saved at each, and the trainer's
    ``load_best_model_at_end`` keeps the best one, as metric-sim's trainer does.
    """
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.training_args import BatchSamplers

    model = SentenceTransformer(str(default_model_path()), device="cpu")
    model.max_seq_length = max_length
    a, b, y = train_pairs.texts_a, train_pairs.texts_b, train_pairs.labels.tolist()
    loss = st_loss(model, loss_name, margin_factor)
    if loss_name == "online_contrastive":
        data = Dataset.from_dict({"sentence1": a, "sentence2": b, "label": y})
        sampler = BatchSamplers.BATCH_SAMPLER
    elif loss_name == "mnrl":
        keep = [i for i, label in enumerate(y) if label == 1]
        data = Dataset.from_dict({"anchor": [a[i] for i in keep], "positive": [b[i] for i in keep]})
        sampler = BatchSamplers.NO_DUPLICATES
    else:  # mnrl_hn (st_loss refused any other name)
        if triplets is None:
            raise ValueError("mnrl_hn needs the mined (anchor, positive, negative) triplets")
        data = Dataset.from_dict({k: triplets[k] for k in ("anchor", "positive", "negative")})
        sampler = BatchSamplers.NO_DUPLICATES
    from transformers import TrainingArguments

    # transformers 5 folds warmup_ratio into warmup_steps (a float < 1 is a fraction); 4.x has both.
    fields = TrainingArguments.__dataclass_fields__
    warmup = {"warmup_ratio": ST_WARMUP} if "warmup_ratio" in fields else {"warmup_steps": ST_WARMUP}
    evaluator, select = None, {"save_strategy": "no"}
    if dev is not None and eval_steps:
        try:
            from sentence_transformers.sentence_transformer.evaluation import (
                BinaryClassificationEvaluator,
            )
        except ImportError:  # sentence-transformers < 6
            from sentence_transformers.evaluation import BinaryClassificationEvaluator
        evaluator = BinaryClassificationEvaluator(dev.texts_a, dev.texts_b, dev.labels.tolist(), name="dev",
                                                  batch_size=64, write_csv=False, similarity_fn_names=["euclidean"])
        select = {"eval_strategy": "steps", "eval_steps": eval_steps, "save_strategy": "steps", "save_steps": eval_steps,
                  "save_total_limit": 2, "load_best_model_at_end": True, "metric_for_best_model": ST_BEST_METRIC,
                  "greater_is_better": True}
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out_dir / "checkpoints"), per_device_train_batch_size=batch_size, max_steps=steps,
        learning_rate=learning_rate, seed=seed, report_to="none", logging_steps=50,
        batch_sampler=sampler, disable_tqdm=True, **select, **warmup)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=data, loss=loss, evaluator=evaluator,
                                         callbacks=list(callbacks))
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    model.save(str(out_dir / "model"))
    info = {"loss": loss_name, "steps": steps, "batch_size": batch_size, "train_rows": len(data),
            "epochs": round(steps * batch_size / len(data), 3), "learning_rate": learning_rate, "warmup": ST_WARMUP,
            "seed": seed, "train_s": round(seconds, 1), "pairs_per_s": round(steps * batch_size / seconds, 2),
            "margin_factor": margin_factor, "margin": st_margin(loss_name, margin_factor)}
    if evaluator is not None:
        curve = [[e["step"], e[ST_BEST_METRIC]] for e in trainer.state.log_history if ST_BEST_METRIC in e]
        eval_s = sum(e.get("eval_runtime", 0.0) for e in trainer.state.log_history if ST_BEST_METRIC in e)
        info.update({"selection": "best dev checkpoint (load_best_model_at_end, " + ST_BEST_METRIC + ")",
                     "eval_steps": eval_steps, "dev_ap": trainer.state.best_metric, "dev_curve": curve,
                     "best_checkpoint": trainer.state.best_model_checkpoint, "wall_s": round(seconds, 1),
                     # training proper, as metric-sim's train_s: the periodic dev evaluations taken out
                     "train_s": round(seconds - eval_s, 1), "dev_eval_time_s": round(eval_s, 1)})
    write_json(out_dir / "st_train.json", info)
    return info


def st_loss(model: Any, loss_name: str, factor: float = 1.0) -> Any:
    """The sentence-transformers loss of ``loss_name`` with its margin for ``factor`` (``st_margin``):
    OnlineContrastiveLoss(margin=0.5 * factor), MultipleNegativesRankingLoss(scale=20 / factor);
    factor 1 is the library's default, as before the margin grid."""
    try:
        from sentence_transformers.sentence_transformer import losses
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers import losses

    margin = st_margin(loss_name, factor)
    if loss_name == "online_contrastive":
        return losses.OnlineContrastiveLoss(model, **margin)
    return losses.MultipleNegativesRankingLoss(model, **margin)  # mnrl, mnrl_hn


def _rows_sentence_transformers(loss_name: str, label: str) -> Callable[[Context], None]:
    def run(ctx: Context) -> None:
        name = f"st_{loss_name}"
        for row, seed in ctx.fine_tune_rows(name):
            if not ctx.store.has(row):
                _sentence_transformers_row(ctx, loss_name, name, row, seed, label)
    run.label = label  # type: ignore[attr-defined]
    return run


def _sentence_transformers_row(ctx: Context, loss_name: str, name: str, row: str, seed: int, label: str) -> None:
    run_dir = (ctx.reuse.get(name) if row == name else None) or ctx.store.work / "runs" / row
    if not (run_dir / "st_train.json").is_file():
        logger.info("%s: training %d steps into %s", row, ctx.task.steps, run_dir)
        c = ctx.task.config
        train_sentence_transformers(loss_name, ctx.task.train, run_dir, steps=ctx.task.steps, batch_size=c.batch_size,
                                    max_length=c.max_length, seed=seed,
                                    triplets=st_mined_triplets(ctx) if loss_name == "mnrl_hn" else None)
    info = json.loads((run_dir / "st_train.json").read_text())
    # Our Encoder reads the sentence-transformers layout (mean pooling + Normalize): on unit
    # vectors Euclidean distance is sqrt(2 - 2 cos), so ranking equals its cosine ranking.
    encoder = Encoder.from_pretrained(run_dir / "model", max_length=ctx.task.config.max_length)
    started = time.perf_counter()
    arrays = encoder_distances(encoder, [Metric.EUCLIDEAN], ctx.task)[Metric.EUCLIDEAN]
    ctx.store.save(row, arrays, {"kind": "distance", "metric": "euclidean", "label": label, "run": str(run_dir),
                                 **info, "wall_s": info["train_s"], "eval_s": round(time.perf_counter() - started, 1)})


def st_mined_triplets(ctx: Context) -> dict[str, list[str]]:
    """sentence-transformers' ``util.mine_hard_negatives`` with the base model on the train
    duplicates as (anchor, positive) pairs (its corpus: their positives), ``ST_MINING`` options;
    cached in ``WORK/st_hard_negatives.json`` with the mining time and counts."""
    path = ctx.store.work / "st_hard_negatives.json"
    keep = np.flatnonzero(ctx.task.train.labels == 1)
    anchors = [ctx.task.train.texts_a[i] for i in keep]
    if path.is_file():
        cached = json.loads(path.read_text())
        if cached.get("pairs") == len(anchors) and cached.get("options") == ST_MINING:
            return cached
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives

    model = SentenceTransformer(str(default_model_path()), device="cpu")
    model.max_seq_length = ctx.task.config.max_length
    pairs = Dataset.from_dict({"anchor": anchors, "positive": [ctx.task.train.texts_b[i] for i in keep]})
    started = time.perf_counter()
    mined = mine_hard_negatives(pairs, model, anchor_column_name="anchor", positive_column_name="positive",
                                output_format="triplet", batch_size=64, verbose=False, **ST_MINING)
    seconds = time.perf_counter() - started
    out = {"options": ST_MINING, "pairs": len(anchors), "triplets": len(mined), "mining_s": round(seconds, 1),
           **{k: list(mined[k]) for k in ("anchor", "positive", "negative")}}
    write_json(path, out)
    logger.info("st_mnrl_hn: mined %d triplets from %d duplicate pairs in %.0f s", len(mined), len(anchors), seconds)
    return out


# ----------------------------------------------------------------------------- fair peers: lr grid, best dev checkpoint
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
            train(config, run_dir, resume=resume, train_data=ctx.task.train, dev_data=ctx.task.dev, show_progress=False)
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
                                    eval_steps=c.eval_steps, margin_factor=factor,
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
        if margin_grid:
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
    if margin_grid:
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


def tuned_bootstrap(store: Store, task: Task, tuning: dict[str, Any], *, resamples: int, seed: int = 0) -> dict[str, Any] | None:
    """Paired bootstrap of the test-AP difference, our best tuned row vs the best tuned peer row,
    "best" by mean dev AP at the chosen lr and margin (test does not pick the rows it is then scored on)."""
    def dev_mean(name: str) -> float:
        info = tuning[name]
        if "chosen_dev_ap" in info:  # every tuned seed's dev AP, not only the selection seeds'
            return info["chosen_dev_ap"]["dev_ap_mean"]
        return info["grid"][grid_tag(info["learning_rate"], info.get("margin_factor") or 1.0)]["dev_ap_mean"]

    chosen = [n for n in tuning if tuning[n].get("learning_rate") is not None]
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


# ----------------------------------------------------------------------------- frozen-embedding baselines
def base_embeddings(ctx: Context) -> tuple[dict[str, int], np.ndarray, float]:
    """Frozen all-MiniLM-L6-v2 embeddings of every text of train/dev/test (cached)."""
    path = ctx.store.work / "base_embeddings.npz"
    texts = sorted({t for part in (ctx.task.train, ctx.task.dev, ctx.task.test) for t in (*part.texts_a, *part.texts_b)})
    if path.is_file():
        with np.load(path) as f:
            if f["texts"].tolist() == texts:
                return {t: i for i, t in enumerate(texts)}, f["vectors"], float(f["seconds"])
    encoder = Encoder.from_pretrained("default", max_length=ctx.task.config.max_length)
    started = time.perf_counter()
    vectors = encoder.encode(texts, batch_size=64, show_progress=True)
    seconds = time.perf_counter() - started
    tmp = path.with_name(".base_embeddings.tmp.npz")
    np.savez(tmp, texts=np.array(texts), vectors=vectors, seconds=seconds)
    os.replace(tmp, path)
    return {t: i for i, t in enumerate(texts)}, vectors, seconds


def pair_features(kind: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Head inputs: ``concat`` [x, y] (order-dependent), ``diff_prod`` [|x-y|, x*y], ``diff`` |x-y|."""
    if kind == "concat":
        return np.concatenate([x, y], axis=1)
    if kind == "diff_prod":
        return np.concatenate([np.abs(x - y), x * y], axis=1)
    if kind == "diff":
        return np.abs(x - y)
    raise ValueError(f"unknown feature kind {kind!r}; expected concat, diff_prod or diff")


def mlp_logits(clf: Any, features: np.ndarray) -> np.ndarray:
    """The pre-sigmoid output of a fitted ``MLPClassifier`` (ReLU hidden layers, from its public
    ``coefs_``/``intercepts_``): unlike ``predict_proba`` it does not saturate to ties at 1.0."""
    h = features
    for weight, bias in zip(clf.coefs_[:-1], clf.intercepts_[:-1], strict=True):
        h = np.maximum(h @ weight + bias, 0.0)
    return (h @ clf.coefs_[-1] + clf.intercepts_[-1]).ravel()


def fit_mlp(train_x: np.ndarray, train_y: np.ndarray, dev_x: np.ndarray, dev_y: np.ndarray, *, seed: int,
            max_epochs: int = 40, patience: int = 5, hidden: int = 256) -> tuple[Any, dict[str, Any]]:
    """sklearn MLPClassifier (Adam, minibatches of 256), one epoch per ``partial_fit``; the epoch
    with the best dev average precision is kept (early stopping with ``patience``)."""
    from sklearn.metrics import average_precision_score
    from sklearn.neural_network import MLPClassifier

    clf = MLPClassifier(hidden_layer_sizes=(hidden,), alpha=1e-4, batch_size=256, learning_rate_init=1e-3,
                        random_state=seed, shuffle=True)
    best, best_ap, best_epoch, history = None, -1.0, 0, []
    for epoch in range(1, max_epochs + 1):
        clf.partial_fit(train_x, train_y, classes=np.array([0, 1]))
        ap = float(average_precision_score(dev_y, mlp_logits(clf, dev_x)))
        history.append(round(ap, 4))
        if ap > best_ap:
            best, best_ap, best_epoch = copy.deepcopy(clf), ap, epoch
        elif epoch - best_epoch >= patience:
            break
    assert best is not None
    return best, {"best_epoch": best_epoch, "epochs_run": len(history), "dev_ap": round(best_ap, 4), "dev_ap_history": history}


def _rows_baselines(ctx: Context) -> None:
    row_of, vectors, embed_s = base_embeddings(ctx)

    def side(part: PairDataset) -> tuple[np.ndarray, np.ndarray]:
        return (vectors[[row_of[t] for t in part.texts_a]], vectors[[row_of[t] for t in part.texts_b]])

    (tr_a, tr_b), (dv_a, dv_b), (te_a, te_b) = side(ctx.task.train), side(ctx.task.dev), side(ctx.task.test)
    common = {"kind": "logit", "embed_s": round(embed_s, 1), "calibration": "Platt: 1-feature logistic on the dev logit"}
    for seed in ctx.seeds:
        for kind, label in (("concat", "(a) MLP(concat(f(x), f(y)))"), ("diff_prod", "(c) MLP(|f(x)-f(y)|, f(x)*f(y))"),
                            ("diff", "(d) MLP(|f(x)-f(y)|)")):
            row = f"mlp_{kind}@s{seed}"
            if ctx.store.has(row) and (kind != "concat" or ctx.store.has(f"mlp_concat_avg@s{seed}")):
                continue
            started = time.perf_counter()
            clf, info = fit_mlp(pair_features(kind, tr_a, tr_b), ctx.task.train.labels, pair_features(kind, dv_a, dv_b),
                                ctx.task.dev.labels, seed=seed)
            fit_s = round(time.perf_counter() - started, 1)

            def logits(x: np.ndarray, y: np.ndarray, kind: str = kind, clf: Any = clf) -> np.ndarray:
                return mlp_logits(clf, pair_features(kind, x, y))

            arrays = {"dev": logits(dv_a, dv_b), "test": logits(te_a, te_b), "test_rev": logits(te_b, te_a)}
            meta = {**common, **info, "seed": seed, "train_s": fit_s, "wall_s": round(fit_s + embed_s, 1), "label": label}
            ctx.store.save(row, arrays, meta)
            if kind == "concat":  # (b): the same network, logits averaged over both orders
                avg = {"dev": (logits(dv_a, dv_b) + logits(dv_b, dv_a)) / 2,
                       "test": (arrays["test"] + arrays["test_rev"]) / 2,
                       "test_rev": (arrays["test_rev"] + arrays["test"]) / 2}
                ctx.store.save(f"mlp_concat_avg@s{seed}", avg,
                               {**meta, "label": "(b) (a) averaged over both orders (mean logit)"})


def tfidf_distances(train_texts: Sequence[str], pairs: Sequence[tuple[Sequence[str], Sequence[str]]]) -> list[np.ndarray]:
    """TF-IDF (sklearn defaults, fitted on ``train_texts``), rows L2-normalised; for each
    ``(texts_a, texts_b)`` the Euclidean distance ``sqrt(2 - 2 cos)``, a monotone map of
    ``1 - cos`` (its square is ``2 (1 - cos)``). Texts with no known word get distance sqrt(2)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer().fit(train_texts)
    out = []
    for texts_a, texts_b in pairs:
        va, vb = vectorizer.transform(texts_a), vectorizer.transform(texts_b)
        cos = np.asarray(va.multiply(vb).sum(axis=1)).ravel()  # elementwise product: the same in either order
        out.append(np.sqrt(np.clip(2.0 - 2.0 * cos, 0.0, None)))
    return out


def _rows_tfidf(ctx: Context) -> None:
    if ctx.store.has("tfidf"):
        return
    t = ctx.task
    started = time.perf_counter()
    train_texts = sorted(set(t.train.texts_a) | set(t.train.texts_b))
    dev, test, test_rev = tfidf_distances(train_texts, [(t.dev.texts_a, t.dev.texts_b), (t.test.texts_a, t.test.texts_b),
                                                         (t.test.texts_b, t.test.texts_a)])
    ctx.store.save("tfidf", {"dev": dev, "test": test, "test_rev": test_rev},
                   {"kind": "distance", "metric": "euclidean", "label": "TF-IDF cosine (fitted on train texts)",
                    "train_s": round(time.perf_counter() - started, 1)})


SYSTEMS: dict[str, tuple[Callable[[Context], None], tuple[str, ...]]] = {
    # name -> (producer, tasks it runs on by default)
    "zero_shot": (_rows_zero_shot, ("qqp", "stsb", "mrpc")),
    "ms_contrastive_l2": (_rows_metric_sim("contrastive_l2", "metric-sim online contrastive, Euclidean (task recipe)"), ("qqp", "stsb", "mrpc")),
    "ms_contrastive_l1": (_rows_metric_sim("contrastive_l1", "metric-sim online contrastive, Manhattan"), ("qqp",)),
    "ms_contrastive_l2_hn": (_rows_metric_sim("contrastive_l2_hn", "metric-sim online contrastive, Euclidean + mined hard negatives"), ("qqp",)),
    "ms_triplet": (_rows_metric_sim("triplet", "metric-sim triplet (margin 0.2), Euclidean"), ("qqp",)),
    "ms_ntxent": (_rows_metric_sim("ntxent", "metric-sim NT-Xent in-batch negatives (t 0.05), Euclidean"), ("qqp",)),
    "ms_frozen_head": (_rows_metric_sim("frozen_head", "metric-sim frozen encoder + linear head, Euclidean"), ("qqp",)),
    "st_online_contrastive": (_rows_sentence_transformers("online_contrastive", "sentence-transformers OnlineContrastiveLoss (cosine)"), ("qqp", "stsb", "mrpc")),
    "st_mnrl": (_rows_sentence_transformers("mnrl", "sentence-transformers MultipleNegativesRankingLoss (positives)"), ("qqp",)),
    "st_mnrl_hn": (_rows_sentence_transformers("mnrl_hn", "sentence-transformers MNRL + its mined hard negatives"), ("qqp",)),
    "baselines": (_rows_baselines, ("qqp", "stsb", "mrpc")),
    "tfidf": (_rows_tfidf, ("qqp", "stsb", "mrpc")),
}


# ----------------------------------------------------------------------------- scoring
def score_row(arrays: dict[str, np.ndarray], meta: dict[str, Any], dev_labels: np.ndarray, test_labels: np.ndarray) -> dict[str, Any]:
    """Test metrics of one system from its cached dev/test outputs.

    Distance systems: the library ``Calibrator`` fitted on dev distances, ``pair_metrics`` on
    test. Logit systems: Platt scaling on dev, decision ``p >= 0.5``. Both: ECE (15 bins) of the
    calibrated test probabilities; symmetry from the probabilities of the swapped test pairs.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, average_precision_score, f1_score, roc_auc_score

    if meta["kind"] == "distance":
        calibrator = Calibrator.fit(arrays["dev"], dev_labels, meta["metric"], fitted_on="dev")
        pm = pair_metrics(arrays["test"], test_labels, calibrator)
        p, p_rev = calibrator.predict_proba(arrays["test"]), calibrator.predict_proba(arrays["test_rev"])
        out = {"average_precision": pm["average_precision"], "roc_auc": pm["roc_auc"], "accuracy": pm["accuracy"],
               "f1": pm["f1"], "best_accuracy_in_sample": pm["in_sample"]["accuracy"], "threshold": pm["threshold"]}
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


def score_all(store: Store, task: Task) -> dict[str, Any]:
    """Group rows ``name@sSEED`` over seeds: per-seed metrics, mean and standard deviation."""
    groups: dict[str, list[tuple[dict, dict]]] = {}
    for row in store.rows():
        arrays, meta = store.load(row)
        groups.setdefault(row.split("@")[0], []).append((score_row(arrays, meta, task.dev.labels, task.test.labels), meta))
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
         "ms_contrastive_l1_tuned", "ms_triplet", "ms_triplet_tuned", "ms_ntxent", "ms_ntxent_tuned", "ms_frozen_head",
         "st_online_contrastive", "st_online_contrastive_tuned", "st_mnrl", "st_mnrl_tuned", "st_mnrl_hn",
         "st_mnrl_hn_tuned", "mlp_concat", "mlp_concat_avg", "mlp_diff_prod", "mlp_diff", "tfidf")


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


# ----------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=sorted(TASKS), default="qqp")
    parser.add_argument("--work", required=True, help="cache folder: trained runs, embeddings, per-system outputs")
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
    parser.add_argument("--quick", action="store_true", help="smoke run: 256 train pairs, 4 steps")
    parser.add_argument("--rescore", action="store_true", help="only rescore the cached outputs")
    parser.add_argument("--json", help="write the raw results here")
    parser.add_argument("--markdown", help="write the markdown table here")
    parser.add_argument("--list", action="store_true", help="list the systems and exit")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parsed and checked arguments; ``lr_grid`` None (no grid) or sorted distinct positive lrs,
    ``fine_tune_seeds`` the seeds of the tuned rows (``--train-seeds``, else ``--seeds``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.list:
        for name, (_, tasks) in SYSTEMS.items():
            print(f"{name:24s} default on {', '.join(tasks)}")
        return 0
    task = load_task(args.task, quick=args.quick)
    store = Store(Path(args.work))
    ctx = Context(task, store, args.seeds, args.reuse, args.train_seeds, keep_checkpoints=args.keep_checkpoints)
    logger.info("%s: train %d / dev %d / test %d pairs; budget %d steps, batch %d, max length %d",
                task.name, len(task.train), len(task.dev), len(task.test), task.steps, task.config.batch_size,
                task.config.max_length)
    tuning_file = store.work / "tuning.json"
    tuning: dict[str, Any] = json.loads(tuning_file.read_text()) if tuning_file.is_file() else {}
    if not args.rescore:
        for name in args.systems:  # each producer skips the rows already in the cache
            started = time.perf_counter()
            if args.lr_grid is not None and tunable(name):
                label = getattr(SYSTEMS[name][0], "label", name)
                tuning[name] = run_tuned(ctx, name, label, args.lr_grid, args.fine_tune_seeds, args.select_seeds,
                                         args.margin_grid)
                write_json(tuning_file, tuning)
            else:
                SYSTEMS[name][0](ctx)
            logger.info("%s: done in %.0f s", name, time.perf_counter() - started)
    results = score_all(store, task)
    for name, info in tuning.items():  # the chosen lr (and margin) next to the tuned row
        if f"{name}_tuned" in results:
            results[f"{name}_tuned"]["learning_rate"] = info["learning_rate"]
            if info.get("margin_grid"):
                results[f"{name}_tuned"].update(margin_factor=info["margin_factor"], margin=info.get("margin"))
    boot = (tuned_bootstrap(store, task, tuning, resamples=args.bootstrap) if tuning and args.bootstrap else None)
    payload = {"task": task.name, "quick": args.quick, "recipe": TASKS[task.name], "steps": task.steps,
               "batch_size": task.config.batch_size, "max_length": task.config.max_length,
               "eval_steps": task.config.eval_steps,
               "pairs": {"train": len(task.train), "dev": len(task.dev), "test": len(task.test)},
               "test_positives": int(task.test.labels.sum()), "environment": environment(),
               "results": results, "targets": targets(results)}
    if tuning:
        payload.update({"lr_grid": sorted({e["learning_rate"] for t in tuning.values() for e in t["grid"].values()}),
                        "tuning": tuning, "bootstrap": boot})
        factors = {e["margin_factor"] for t in tuning.values() for e in t["grid"].values() if "margin_factor" in e}
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
