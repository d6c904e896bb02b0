"""Quality benchmark: metric-sim recipes vs sentence-transformers and the naive pair classifiers.

Train on ``train``, select and calibrate on ``dev``, report on ``test``. Every trained system
starts from the packaged all-MiniLM-L6-v2 and gets the same step budget, batch size and max
length (the task recipe's). Systems (``--systems`` picks some; ``--list`` shows them):

* ``zero_shot``              the base model, Euclidean and Manhattan rows;
* ``ms_contrastive_l2/_l1``  metric-sim online contrastive (the task recipe, Manhattan variant);
* ``ms_triplet``, ``ms_ntxent``, ``ms_frozen_head``  other metric-sim losses / frozen encoder;
* ``st_online_contrastive``, ``st_mnrl``  sentence-transformers' own trainer and losses;
* ``baselines``              MLP heads on frozen base embeddings: (a) concat, (b) (a) averaged
                             over both orders, (c) [|x-y|, x*y], (d) |x-y|; one row per seed;
* ``tfidf``                  TF-IDF cosine (fitted on train texts).

Distance systems are calibrated with the library's ``Calibrator`` fitted on dev; MLP heads
with a Platt (one-feature logistic) fit on their dev logit. Symmetry scores every test pair in
both orders. Expensive outputs (trained runs, embeddings, per-system distances or logits) are
cached under ``--work`` so a crashed run resumes and ``--rescore`` only recomputes the tables.

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
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, markdown_table, mean_std, write_json  # noqa: E402

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
    config = TrainConfig.from_yaml(RECIPES / TASKS[name])
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
                                batch_size: int, max_length: int, seed: int, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Fine-tune with sentence-transformers' own trainer; save ``out_dir/model`` + ``st_train.json``.

    ``online_contrastive``: OnlineContrastiveLoss (cosine distance, margin 0.5) on all labelled
    pairs. ``mnrl``: MultipleNegativesRankingLoss on the similar pairs only, batches without
    duplicate texts (its recommended sampler). lr 2e-5, warmup 0.1, fp32, seed as given.
    """
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
        losses,
    )
    from sentence_transformers.training_args import BatchSamplers

    model = SentenceTransformer(str(default_model_path()), device="cpu")
    model.max_seq_length = max_length
    a, b, y = train_pairs.texts_a, train_pairs.texts_b, train_pairs.labels.tolist()
    if loss_name == "online_contrastive":
        data = Dataset.from_dict({"sentence1": a, "sentence2": b, "label": y})
        loss, sampler = losses.OnlineContrastiveLoss(model), BatchSamplers.BATCH_SAMPLER
    elif loss_name == "mnrl":
        keep = [i for i, label in enumerate(y) if label == 1]
        data = Dataset.from_dict({"anchor": [a[i] for i in keep], "positive": [b[i] for i in keep]})
        loss, sampler = losses.MultipleNegativesRankingLoss(model), BatchSamplers.NO_DUPLICATES
    else:
        raise ValueError(f"unknown sentence-transformers loss {loss_name!r}")
    from transformers import TrainingArguments

    # transformers 5 folds warmup_ratio into warmup_steps (a float < 1 is a fraction); 4.x has both.
    fields = TrainingArguments.__dataclass_fields__
    warmup = {"warmup_ratio": ST_WARMUP} if "warmup_ratio" in fields else {"warmup_steps": ST_WARMUP}
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out_dir / "checkpoints"), per_device_train_batch_size=batch_size, max_steps=steps,
        learning_rate=ST_LR, seed=seed, save_strategy="no", report_to="none", logging_steps=50,
        batch_sampler=sampler, disable_tqdm=True, **warmup)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=data, loss=loss, callbacks=list(callbacks))
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    model.save(str(out_dir / "model"))
    info = {"loss": loss_name, "steps": steps, "batch_size": batch_size, "train_rows": len(data),
            "epochs": round(steps * batch_size / len(data), 3), "learning_rate": ST_LR, "warmup": ST_WARMUP,
            "seed": seed, "train_s": round(seconds, 1), "pairs_per_s": round(steps * batch_size / seconds, 2)}
    write_json(out_dir / "st_train.json", info)
    return info


def _rows_sentence_transformers(loss_name: str, label: str) -> Callable[[Context], None]:
    def run(ctx: Context) -> None:
        name = f"st_{loss_name}"
        for row, seed in ctx.fine_tune_rows(name):
            if not ctx.store.has(row):
                _sentence_transformers_row(ctx, loss_name, name, row, seed, label)
    return run


def _sentence_transformers_row(ctx: Context, loss_name: str, name: str, row: str, seed: int, label: str) -> None:
    run_dir = (ctx.reuse.get(name) if row == name else None) or ctx.store.work / "runs" / row
    if not (run_dir / "st_train.json").is_file():
        logger.info("%s: training %d steps into %s", row, ctx.task.steps, run_dir)
        c = ctx.task.config
        train_sentence_transformers(loss_name, ctx.task.train, run_dir, steps=ctx.task.steps, batch_size=c.batch_size,
                                    max_length=c.max_length, seed=seed)
    info = json.loads((run_dir / "st_train.json").read_text())
    # Our Encoder reads the sentence-transformers layout (mean pooling + Normalize): on unit
    # vectors Euclidean distance is sqrt(2 - 2 cos), so ranking equals its cosine ranking.
    encoder = Encoder.from_pretrained(run_dir / "model", max_length=ctx.task.config.max_length)
    started = time.perf_counter()
    arrays = encoder_distances(encoder, [Metric.EUCLIDEAN], ctx.task)[Metric.EUCLIDEAN]
    ctx.store.save(row, arrays, {"kind": "distance", "metric": "euclidean", "label": label, "run": str(run_dir),
                                 **info, "wall_s": info["train_s"], "eval_s": round(time.perf_counter() - started, 1)})


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
    "ms_triplet": (_rows_metric_sim("triplet", "metric-sim triplet (margin 0.2), Euclidean"), ("qqp",)),
    "ms_ntxent": (_rows_metric_sim("ntxent", "metric-sim NT-Xent in-batch negatives (t 0.05), Euclidean"), ("qqp",)),
    "ms_frozen_head": (_rows_metric_sim("frozen_head", "metric-sim frozen encoder + linear head, Euclidean"), ("qqp",)),
    "st_online_contrastive": (_rows_sentence_transformers("online_contrastive", "sentence-transformers OnlineContrastiveLoss (cosine)"), ("qqp", "stsb", "mrpc")),
    "st_mnrl": (_rows_sentence_transformers("mnrl", "sentence-transformers MultipleNegativesRankingLoss (positives)"), ("qqp",)),
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
               "ece", "symmetry_max", "symmetry_mean", "train_s", "wall_s")


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


ORDER = ("zero_shot_l2", "zero_shot_l1", "ms_contrastive_l2", "ms_contrastive_l1", "ms_triplet", "ms_ntxent",
         "ms_frozen_head", "st_online_contrastive", "st_mnrl", "mlp_concat", "mlp_concat_avg", "mlp_diff_prod", "mlp_diff", "tfidf")


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
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=sorted(TASKS), default="qqp")
    parser.add_argument("--work", required=True, help="cache folder: trained runs, embeddings, per-system outputs")
    parser.add_argument("--systems", nargs="+", help=f"subset of {sorted(SYSTEMS)} (default: the task's set)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the MLP baselines")
    parser.add_argument("--train-seeds", type=int, nargs="+", default=None,
                        help="seeds of the fine-tuned systems (default: the recipe's seed only); rows NAME@sSEED")
    parser.add_argument("--reuse", nargs="*", default=[], metavar="SYSTEM=RUN_DIR",
                        help="take a finished run folder for a trained system instead of training it")
    parser.add_argument("--quick", action="store_true", help="smoke run: 256 train pairs, 4 steps")
    parser.add_argument("--rescore", action="store_true", help="only rescore the cached outputs")
    parser.add_argument("--json", help="write the raw results here")
    parser.add_argument("--markdown", help="write the markdown table here")
    parser.add_argument("--list", action="store_true", help="list the systems and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.list:
        for name, (_, tasks) in SYSTEMS.items():
            print(f"{name:24s} default on {', '.join(tasks)}")
        return 0
    reuse = {}
    for item in args.reuse:
        name, sep, path = item.partition("=")
        if not sep or name not in SYSTEMS:
            parser.error(f"--reuse expects SYSTEM=RUN_DIR with SYSTEM in {sorted(SYSTEMS)}, got {item!r}")
        reuse[name] = Path(path)
    systems = args.systems or [n for n, (_, tasks) in SYSTEMS.items() if args.task in tasks]
    unknown = sorted(set(systems) - set(SYSTEMS))
    if unknown:
        parser.error(f"unknown --systems {unknown}; valid: {sorted(SYSTEMS)}")

    task = load_task(args.task, quick=args.quick)
    store = Store(Path(args.work))
    ctx = Context(task, store, args.seeds, reuse, args.train_seeds)
    logger.info("%s: train %d / dev %d / test %d pairs; budget %d steps, batch %d, max length %d",
                task.name, len(task.train), len(task.dev), len(task.test), task.steps, task.config.batch_size,
                task.config.max_length)
    if not args.rescore:
        for name in systems:  # each producer skips the rows already in the cache
            started = time.perf_counter()
            SYSTEMS[name][0](ctx)
            logger.info("%s: done in %.0f s", name, time.perf_counter() - started)
    results = score_all(store, task)
    payload = {"task": task.name, "quick": args.quick, "recipe": TASKS[task.name], "steps": task.steps,
               "batch_size": task.config.batch_size, "max_length": task.config.max_length,
               "pairs": {"train": len(task.train), "dev": len(task.dev), "test": len(task.test)},
               "test_positives": int(task.test.labels.sum()), "environment": environment(),
               "results": results, "targets": targets(results)}
    table = results_table(results)
    print(table)
    print(json.dumps(payload["targets"], indent=2))
    if args.json:
        write_json(args.json, payload)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
