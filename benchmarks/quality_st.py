"""quality.py's sentence-transformers peer: its own trainer and losses, at the task's budget.

``train_sentence_transformers`` fine-tunes with ``SentenceTransformerTrainer`` (also used by
speed.py, finetune_qqp.py, profile_speed.py and train_memory.py through quality.py);
``st_loss`` builds the loss at a margin factor; ``st_mined_triplets`` mines the hard negatives of
the ``st_mnrl_hn`` row; ``_rows_sentence_transformers`` is the row producer of the ``st_*`` systems.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_json  # noqa: E402
from fair_peers import st_margin  # noqa: E402
from quality_data import Context, base_model_location, encoder_distances  # noqa: E402

from metric_sim import Encoder, Metric, PairDataset, default_model_path  # noqa: E402

logger = logging.getLogger("quality")

ST_LR = 2e-5  # sentence-transformers' documented default, as in ANCHORS.md
ST_WARMUP = 0.1
ST_BEST_METRIC = "eval_dev_euclidean_ap"  # BinaryClassificationEvaluator(name="dev", similarity_fn_names=["euclidean"])
# util.mine_hard_negatives options: its docstring's example (rank window 10-50, max cosine 0.8,
# relative margin 0.05, random sampling), one negative per (anchor, positive) pair so that the
# step budget sees as many positives as the plain MNRL row.
ST_MINING = {"range_min": 10, "range_max": 50, "max_score": 0.8, "relative_margin": 0.05, "num_negatives": 1,
             "sampling_strategy": "random"}


def train_sentence_transformers(loss_name: str, train_pairs: PairDataset, out_dir: Path, *, steps: int,
                                batch_size: int, max_length: int, seed: int, callbacks: Sequence[Any] = (),
                                learning_rate: float = ST_LR, dev: PairDataset | None = None, eval_steps: int | None = None,
                                triplets: dict[str, list[str]] | None = None, margin_factor: float = 1.0,
                                model_path: str | Path | None = None, lr_scheduler: str = "linear") -> dict[str, Any]:
    """Fine-tune with sentence-transformers' own trainer; save ``out_dir/model`` + ``st_train.json``.

    ``online_contrastive``: OnlineContrastiveLoss (cosine distance, margin 0.5) on all labelled
    pairs. ``mnrl``: MultipleNegativesRankingLoss on the similar pairs only, batches without
    duplicate texts (its recommended sampler). ``mnrl_hn``: the same loss on ``triplets``
    (anchor, positive, negative) from ``util.mine_hard_negatives``. ``multitask``: both losses,
    alternating batches (``st_training_data``). ``margin_factor`` scales the
    loss's margin (see ``st_loss``). Warmup 0.1, fp32, lr, schedule (``lr_scheduler``, the trainer's
    ``lr_scheduler_type``, linear decay by default as metric-sim's recipes) and seed as given. Without ``dev`` the
    final weights are kept (the trainer's default). With ``dev`` and ``eval_steps``: a
    ``BinaryClassificationEvaluator`` scores dev AP of the Euclidean distance of the (normalised)
    embeddings every ``eval_steps`` steps, a checkpoint is saved at each, and the trainer's
    ``load_best_model_at_end`` keeps the best one, as metric-sim's trainer does. ``model_path``: the
    base model to start from (default: the packaged all-MiniLM-L6-v2, ``default_model_path()``).
    """
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )

    model = SentenceTransformer(str(model_path or default_model_path()), device="cpu")
    model.max_seq_length = max_length
    data, loss, samplers = st_training_data(model, loss_name, train_pairs, margin_factor, triplets)
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
        learning_rate=learning_rate, lr_scheduler_type=lr_scheduler, seed=seed, report_to="none", logging_steps=50,
        disable_tqdm=True, **samplers, **select, **warmup)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=data, loss=loss, evaluator=evaluator,
                                         callbacks=list(callbacks))
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    model.save(str(out_dir / "model"))
    rows = sum(len(d) for d in data.values()) if isinstance(data, dict) else len(data)
    info = {"loss": loss_name, "steps": steps, "batch_size": batch_size, "train_rows": rows,
            "epochs": round(steps * batch_size / rows, 3), "learning_rate": learning_rate, "warmup": ST_WARMUP,
            "lr_scheduler": lr_scheduler,
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


def st_training_data(model: Any, loss_name: str, pairs: PairDataset, margin_factor: float = 1.0,
                     triplets: dict[str, list[str]] | None = None) -> tuple[Any, Any, dict[str, Any]]:
    """``(train_dataset, loss, sampler arguments)`` of one sentence-transformers row, as its docs
    prescribe for each loss.

    ``multitask`` is sentence-transformers' own Quora multi-task recipe
    (examples/training/quora_duplicate_questions/training_multi-task-learning.py): a dict of two
    datasets with a loss each, OnlineContrastiveLoss on every labelled pair and MNRL on the
    duplicates in both orders, batches alternating between them (round robin), so each optimiser
    step sees one batch of one task, at the same step budget as every other row.
    """
    from datasets import Dataset

    try:
        from sentence_transformers.sentence_transformer.training_args import (
            BatchSamplers,
            MultiDatasetBatchSamplers,
        )
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers.training_args import BatchSamplers, MultiDatasetBatchSamplers

    a, b, y = pairs.texts_a, pairs.texts_b, pairs.labels.tolist()
    duplicates = [i for i, label in enumerate(y) if label == 1]
    loss = st_loss(model, loss_name, margin_factor)
    if loss_name == "online_contrastive":
        return (Dataset.from_dict({"sentence1": a, "sentence2": b, "label": y}), loss,
                {"batch_sampler": BatchSamplers.BATCH_SAMPLER})
    if loss_name == "cosent":  # a float score per pair; 0/1 labels order every duplicate above every non-duplicate
        return (Dataset.from_dict({"sentence1": a, "sentence2": b, "score": [float(v) for v in y]}), loss,
                {"batch_sampler": BatchSamplers.BATCH_SAMPLER})
    if loss_name == "mnrl":
        data = Dataset.from_dict({"anchor": [a[i] for i in duplicates], "positive": [b[i] for i in duplicates]})
        return data, loss, {"batch_sampler": BatchSamplers.NO_DUPLICATES}
    if loss_name == "multitask":
        # A is a duplicate of B and B of A: the example adds both orders to the MNRL set.
        both = {"anchor": [a[i] for i in duplicates] + [b[i] for i in duplicates],
                "positive": [b[i] for i in duplicates] + [a[i] for i in duplicates]}
        data = {"pairs": Dataset.from_dict({"sentence1": a, "sentence2": b, "label": y}),
                "duplicates": Dataset.from_dict(both)}
        # one sampler for both datasets: no repeated text in a batch matters for MNRL (a repeat
        # would be a false in-batch negative) and only thins the pair batches a little
        return data, loss, {"batch_sampler": BatchSamplers.NO_DUPLICATES,
                            "multi_dataset_batch_sampler": MultiDatasetBatchSamplers.ROUND_ROBIN}
    if triplets is None:  # mnrl_hn (st_loss refused any other name)
        raise ValueError("mnrl_hn needs the mined (anchor, positive, negative) triplets")
    data = Dataset.from_dict({k: triplets[k] for k in ("anchor", "positive", "negative")})
    return data, loss, {"batch_sampler": BatchSamplers.NO_DUPLICATES}


def st_loss(model: Any, loss_name: str, factor: float = 1.0) -> Any:
    """The sentence-transformers loss of ``loss_name`` with its margin for ``factor`` (``st_margin``):
    OnlineContrastiveLoss(margin=0.5 * factor), MultipleNegativesRankingLoss and CoSENTLoss(scale=20 / factor);
    factor 1 is the library's default, as before the margin grid. ``multitask``: a dict of both
    (the margin on the contrastive term), keyed as ``st_training_data``'s datasets."""
    try:
        from sentence_transformers.sentence_transformer import losses
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers import losses

    margin = st_margin(loss_name, factor)
    if loss_name == "online_contrastive":
        return losses.OnlineContrastiveLoss(model, **margin)
    if loss_name == "cosent":
        return losses.CoSENTLoss(model, **margin)
    if loss_name == "multitask":  # one loss per dataset of st_training_data
        return {"pairs": losses.OnlineContrastiveLoss(model, **margin),
                "duplicates": losses.MultipleNegativesRankingLoss(model)}
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
                                    max_length=c.max_length, seed=seed, lr_scheduler=c.lr_scheduler,
                                    model_path=base_model_location(ctx.task), triplets=st_mined_triplets(ctx) if loss_name == "mnrl_hn" else None)
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

    model = SentenceTransformer(str(base_model_location(ctx.task)), device="cpu")
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
