"""quality.py's systems: the metric-sim variants, the zero-shot rows and the ``SYSTEMS`` registry.

Each system is a row producer ``(Context) -> None`` that trains (or reuses) its model, encodes
dev/test once and saves the outputs in the ``Store``, skipping rows already cached. The
metric-sim variants derive from the task recipe (``_ms_config``); the sentence-transformers rows
come from quality_st.py, the frozen-embedding and TF-IDF baselines from quality_baselines.py.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality_baselines import _rows_baselines, _rows_tfidf  # noqa: E402
from quality_data import (  # noqa: E402
    RECIPES,
    Context,
    Task,
    base_model_name,
    encoder_distances,
    with_transitive_pairs,
)
from quality_st import _rows_sentence_transformers  # noqa: E402

from metric_sim import Encoder, Metric, PairDataset, SimilarityModel, TrainConfig, train  # noqa: E402

logger = logging.getLogger("quality")

# metric-sim's hard_negatives block for ms_contrastive_l2_hn: one negative per question with a
# duplicate, among its 20 nearest non-duplicates, skipping any closer than 0.95x its duplicate's
# distance (the false-negative guard). Chosen on dev at 300 steps: 0.807 against 0.784 with
# negatives for every question (naive mining hurt).
HARD_NEGATIVES = {"mine": True, "num_negatives": 1, "anchors": "with_positives", "relative_margin": 0.05,
                  "range_max": 20}
# ms_contrastive_l2_hn_far: the same, but skipping each question's 10 nearest non-duplicates.
# mined_negative_audit.py found a third of the negatives above called similar by a fine-tuned judge
# (43 % at rank 1), against 16 % of the labelled dev non-duplicates; from rank 11 on it is ~14 %.
HARD_NEGATIVES_FAR = {**HARD_NEGATIVES, "range_min": 10, "range_max": 30}
# The auxiliary term of ms_contrastive_l2_ntxent (weight 0.5: a little under the contrastive loss's own size).
NTXENT_AUXILIARY = {"loss": "ntxent", "weight": 0.5, "loss_params": {"temperature": 0.1}}
# The pair-ranking (CoSENT on raw distance) rows: temperature 0.2 in Euclidean units, chosen on QQP
# dev (seed 0, lr 1e-4) from 0.025 / 0.05 / 0.1 / 0.2 / 0.4: 0.8283 / 0.8338 / 0.8390 / 0.8458 / 0.8429.
PAIR_RANKING_PARAMS = {"temperature": 0.2}
# ms_pair_ranking_llrd: the decay common in BERT fine-tuning (ELECTRA used 0.8); the embeddings then train
# at 0.8**6 = 0.26 of the lr of all-MiniLM-L6-v2's top layer.
LAYER_LR_DECAY = 0.8
PAIR_RANKING_AUXILIARY = {"loss": "pair_ranking", "weight": 1.0, "loss_params": dict(PAIR_RANKING_PARAMS)}


def _rows_zero_shot(ctx: Context) -> None:
    if ctx.store.has("zero_shot_l2") and ctx.store.has("zero_shot_l1"):
        return
    encoder = Encoder.from_pretrained(ctx.task.config.model, max_length=ctx.task.config.max_length)
    started = time.perf_counter()
    outputs = encoder_distances(encoder, [Metric.EUCLIDEAN, Metric.MANHATTAN], ctx.task)
    for metric, arrays in outputs.items():
        ctx.store.save(f"zero_shot_{_short(metric)}", arrays, {
            "kind": "distance", "metric": metric.value, "label": f"zero-shot {base_model_name(ctx.task)} ({_short(metric).upper()})",
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
    if variant == "contrastive_l2_hn_far":  # as above, ranks 11-30 only: fewer unlabelled duplicates
        return base.replace(hard_negatives=dict(HARD_NEGATIVES_FAR), max_steps=task.steps)
    if variant == "contrastive_l2_ntxent":
        # The recipe plus InfoNCE with in-batch negatives as an auxiliary term on the same batch
        # (sentence-transformers' multi-task Quora recipe, on raw distance): temperature 0.1, the
        # best of NT-Xent's sweep on QQP dev; sampler auto then gives cluster batches.
        return base.replace(auxiliary_losses=[dict(NTXENT_AUXILIARY)])
    if variant in ("pair_ranking", "pair_ranking_closure"):
        # every duplicate pair of a batch ranked closer than every non-duplicate; the closure row
        # trains the same way on more pairs (ms_train_data), at the same step budget
        return base.replace(loss="pair_ranking", loss_params=dict(PAIR_RANKING_PARAMS))
    if variant in ("pair_ranking_hn", "pair_ranking_hn_far"):
        # the ranking loss with the mined negatives of the contrastive rows above (ranks 1-20 or
        # 11-30), as extra non-duplicate pairs in the same 511 steps: the ranking is over every pair of a
        # batch, so a hard negative is ranked against every duplicate of its batch
        negatives = HARD_NEGATIVES if variant == "pair_ranking_hn" else HARD_NEGATIVES_FAR
        return base.replace(loss="pair_ranking", loss_params=dict(PAIR_RANKING_PARAMS),
                            hard_negatives=dict(negatives), max_steps=task.steps)
    if variant == "pair_ranking_random":
        # uniform random batches instead of the length-grouped ones: a grouped batch holds pairs of
        # one length band, so the ranking loss never orders pairs of different lengths against each
        # other, which test AP (one ranking of every pair) does
        return base.replace(loss="pair_ranking", loss_params=dict(PAIR_RANKING_PARAMS), sampler="random")
    if variant == "pair_ranking_ntxent":
        # the ranking loss plus the recipe row's auxiliary InfoNCE: each duplicate also ranked
        # against the batch's other questions (random negatives), not only the labelled ones
        return base.replace(loss="pair_ranking", loss_params=dict(PAIR_RANKING_PARAMS),
                            auxiliary_losses=[dict(NTXENT_AUXILIARY)])
    if variant == "pair_ranking_llrd":
        # each layer at LAYER_LR_DECAY times the lr of the layer above (the top one at the lr): the lower
        # layers, which hold most of what the base model knew, move less
        return base.replace(loss="pair_ranking", loss_params=dict(PAIR_RANKING_PARAMS), layer_lr_decay=LAYER_LR_DECAY)
    if variant == "contrastive_l2_pair_ranking":  # the recipe plus the ranking term on the same batch
        return base.replace(auxiliary_losses=[dict(PAIR_RANKING_AUXILIARY)])
    if variant == "triplet":  # PML TripletMarginLoss, margin 0.2 (Euclidean units), cluster-aware batches
        return base.replace(loss="triplet", loss_params={"margin": 0.2}, sampler="auto")
    if variant == "ntxent":  # InfoNCE on -distance / 0.05 with in-batch negatives by cluster label
        return base.replace(loss="ntxent", loss_params={"temperature": 0.05}, sampler="auto")
    if variant == "frozen_head":  # the frozen_head recipe's loss and lr, at this task's budget and batch
        frozen = TrainConfig.from_yaml(RECIPES / "frozen_head.yaml")
        return base.replace(freeze_encoder=True, learning_rate=frozen.learning_rate, loss=frozen.loss,
                            loss_params=frozen.loss_params, warmup_ratio=frozen.warmup_ratio)
    raise ValueError(f"unknown metric-sim variant {variant!r}")


def ms_train_data(task: Task, name: str) -> PairDataset:
    """The train pairs of metric-sim system ``name``: the task's, plus the pairs the labels imply
    by transitivity for ``ms_pair_ranking_closure`` (so mixed into the same 511 steps, not added)."""
    return with_transitive_pairs(task.train) if name == "ms_pair_ranking_closure" else task.train


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
        train(config, run_dir, train_data=ms_train_data(ctx.task, name), dev_data=ctx.task.dev, show_progress=False)
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


SYSTEMS: dict[str, tuple[Callable[[Context], None], tuple[str, ...]]] = {
    # name -> (producer, tasks it runs on by default). The one-lever probes (a single change to a
    # recipe or a peer, kept so their RESULTS rows can be rerun) run only when named, so that a plain
    # ``quality.py --task qqp`` trains the rows of the comparison, not every experiment made since.
    "zero_shot": (_rows_zero_shot, ("qqp", "stsb", "mrpc")),
    "ms_contrastive_l2": (_rows_metric_sim("contrastive_l2", "metric-sim online contrastive, Euclidean (task recipe)"), ("qqp", "stsb", "mrpc")),
    "ms_contrastive_l1": (_rows_metric_sim("contrastive_l1", "metric-sim online contrastive, Manhattan"), ("qqp",)),
    "ms_contrastive_l2_hn": (_rows_metric_sim("contrastive_l2_hn", "metric-sim online contrastive, Euclidean + mined hard negatives"), ("qqp",)),
    "ms_contrastive_l2_hn_far": (_rows_metric_sim("contrastive_l2_hn_far", "metric-sim online contrastive, Euclidean + mined hard negatives of ranks 11-30"), ()),
    "ms_contrastive_l2_ntxent": (_rows_metric_sim("contrastive_l2_ntxent", "metric-sim online contrastive + 0.5 NT-Xent (t 0.1), Euclidean"), ()),
    "ms_pair_ranking": (_rows_metric_sim("pair_ranking", "metric-sim pair ranking (CoSENT on raw distance, t 0.2), Euclidean"), ("qqp",)),
    "ms_pair_ranking_closure": (_rows_metric_sim("pair_ranking_closure", "metric-sim pair ranking (t 0.2), Euclidean, + pairs implied by transitivity"), ()),
    "ms_pair_ranking_hn": (_rows_metric_sim("pair_ranking_hn", "metric-sim pair ranking (t 0.2), Euclidean + mined hard negatives"), ()),
    "ms_pair_ranking_hn_far": (_rows_metric_sim("pair_ranking_hn_far", "metric-sim pair ranking (t 0.2), Euclidean + mined hard negatives of ranks 11-30"), ()),
    "ms_pair_ranking_random": (_rows_metric_sim("pair_ranking_random", "metric-sim pair ranking (t 0.2), Euclidean, random batches"), ()),
    "ms_pair_ranking_llrd": (_rows_metric_sim("pair_ranking_llrd", f"metric-sim pair ranking (t 0.2), Euclidean, layer lr decay {LAYER_LR_DECAY}"), ()),
    "ms_pair_ranking_ntxent": (_rows_metric_sim("pair_ranking_ntxent", "metric-sim pair ranking (t 0.2) + 0.5 NT-Xent (t 0.1), Euclidean"), ()),
    "ms_contrastive_l2_pair_ranking": (_rows_metric_sim("contrastive_l2_pair_ranking", "metric-sim online contrastive + pair ranking (t 0.2), Euclidean"), ()),
    "ms_triplet": (_rows_metric_sim("triplet", "metric-sim triplet (margin 0.2), Euclidean"), ("qqp",)),
    "ms_ntxent": (_rows_metric_sim("ntxent", "metric-sim NT-Xent in-batch negatives (t 0.05), Euclidean"), ("qqp",)),
    "ms_frozen_head": (_rows_metric_sim("frozen_head", "metric-sim frozen encoder + linear head, Euclidean"), ("qqp",)),
    "st_online_contrastive": (_rows_sentence_transformers("online_contrastive", "sentence-transformers OnlineContrastiveLoss (cosine)"), ("qqp", "stsb", "mrpc")),
    "st_mnrl": (_rows_sentence_transformers("mnrl", "sentence-transformers MultipleNegativesRankingLoss (positives)"), ("qqp",)),
    "st_mnrl_hn": (_rows_sentence_transformers("mnrl_hn", "sentence-transformers MNRL + its mined hard negatives"), ("qqp",)),
    "st_cosent": (_rows_sentence_transformers("cosent", "sentence-transformers CoSENTLoss (cosine)"), ("qqp",)),
    "st_multitask": (_rows_sentence_transformers("multitask", "sentence-transformers multi-task: OnlineContrastiveLoss + MNRL (its Quora recipe)"), ()),
    "baselines": (_rows_baselines, ("qqp", "stsb", "mrpc")),
    "tfidf": (_rows_tfidf, ("qqp", "stsb", "mrpc")),
}
