"""``train``: one fine-tuning run, from config to run folder, as a sequence of named steps.

A run folder (``train(config, out_dir=RUN_DIR)``)::

    RUN_DIR/train_config.json   resolved TrainConfig + "run" section
    RUN_DIR/model/              final SimilarityModel (calibrator fitted on dev)
    RUN_DIR/model_finetuned/    with ``interpolate``: the fine-tuned model; model/ is its WiSE-FT mix
    RUN_DIR/metrics.json        {"dev": {...}, "zero_shot_dev": {...}, "hard_negatives": {...}}
    RUN_DIR/hard_negatives.tsv  mined negatives added to train (+ .json sidecar), with hard_negatives
    RUN_DIR/hard_negatives_refreshed.tsv  the latest re-mining, with hard_negatives.refresh_steps
    RUN_DIR/checkpoints/        transformers.Trainer checkpoints

The encoder is any :class:`~metric_sim.encoders.base.TrainableEncoder`: the run uses
only the contract (``collate``, ``forward``, ``item_sizes``, ``encode``,
``base_encoder``, ``projection``, ``normalize``). Under torchrun every rank runs these
steps; rank 0 alone scores dev, calibrates and writes the run folder.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Sampler
from transformers import TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from metric_sim.calibration import Calibrator
from metric_sim.data import PairDataset
from metric_sim.distances import Metric
from metric_sim.distributed import broadcast_object, is_main_process, quiet_replicas
from metric_sim.encoders.base import TrainableEncoder
from metric_sim.encoders.starting import MULTIMODAL_STARTING_POINT, encoder_from_start
from metric_sim.errors import TrainingError
from metric_sim.layout import (
    CHECKPOINT_DIR,
    METRICS_FILE,
    MODEL_DIR,
    MODEL_FINETUNED_DIR,
    TRAIN_CONFIG_FILE,
)
from metric_sim.losses.composite import build_loss_with_auxiliaries
from metric_sim.losses.loss import MetricLoss
from metric_sim.metrics import ranking_metrics
from metric_sim.model import SimilarityModel
from metric_sim.storage import package_versions, write_json_atomic
from metric_sim.training.batches import PairCollator, PairRows, PreparedPairs, prepare_pairs
from metric_sim.training.config import TrainConfig
from metric_sim.training.data import add_hard_negatives, add_mix_pairs, load_training_data
from metric_sim.training.dev import DevEvaluator, calibrate_on_dev
from metric_sim.training.frozen import ProjectionHead, base_embeddings, identity_projection
from metric_sim.training.guards import ZeroLossGuard, check_margins, preflight
from metric_sim.training.interpolate_step import InterpolationStep, prepare_interpolation
from metric_sim.training.layers import layer_lr_scales
from metric_sim.training.mixing import MixedBatchSampler, MixPlan, main_rows
from metric_sim.training.refresh import HardNegativeRefresh
from metric_sim.training.regularizers import (
    L2SP,
    REFERENCE_KEY,
    build_l2sp,
    check_l2sp_reference,
    freeze_lower_layers,
    starting_parameter_ids,
)
from metric_sim.training.resume import checkpoint_step, start_or_resume
from metric_sim.training.samplers import (
    ClusterPairSampler,
    LengthGroupedPairSampler,
    RandomPairSampler,
)
from metric_sim.training.trainer import MetricTrainer, ProgressAndLog, training_arguments

__all__ = ["TrainResult", "finish_run", "starting_encoder", "train"]

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What :func:`train` returns; the same figures are in ``RUN_DIR/metrics.json``."""

    model: SimilarityModel
    run_dir: Path
    metrics: dict[str, Any]
    steps: int
    wall_time_s: float


@dataclass
class _BatchPlan:
    """How the pairs are ordered into batches, and how many optimiser steps that makes."""

    sampler: str
    make_sampler: Callable[[], Sampler[int]]
    steps_per_epoch: int
    planned_steps: int


def train(
    config: TrainConfig | None,
    out_dir: str | os.PathLike[str],
    *,
    resume: bool = False,
    encoder: TrainableEncoder | None = None,
    train_data: PairDataset | None = None,
    dev_data: PairDataset | None = None,
    show_progress: bool = True,
    callbacks: Sequence[TrainerCallback] = (),
) -> TrainResult:
    """Fine-tune per ``config`` and write the run folder ``out_dir`` (see the module docstring).

    ``resume=True`` continues from the last checkpoint in ``out_dir/checkpoints`` with
    the saved config (``config`` may be None, or must equal it). ``encoder`` (any
    :class:`~metric_sim.encoders.base.TrainableEncoder`), ``train_data`` and ``dev_data``
    replace what the config would load (tests, notebooks).

    Under ``torchrun`` every rank calls this with the same arguments; ``batch_size`` is
    per rank. Rank 0 writes the run folder; every rank returns the same result.
    """
    with quiet_replicas():  # one rank logs for the job
        return _train(config, out_dir, resume=resume, encoder=encoder, train_data=train_data, dev_data=dev_data,
                      show_progress=show_progress, callbacks=callbacks)


def _train(config: TrainConfig | None, out_dir: str | os.PathLike[str], *, resume: bool,
           encoder: TrainableEncoder | None, train_data: PairDataset | None, dev_data: PairDataset | None,
           show_progress: bool, callbacks: Sequence[TrainerCallback]) -> TrainResult:
    started = time.perf_counter()
    run_dir = Path(out_dir).expanduser().resolve()
    config, resume_from = start_or_resume(config, run_dir, resume)
    metric = Metric.parse(config.metric)
    run_dir.mkdir(parents=True, exist_ok=True)
    train_data, dev_data = _training_data(config, train_data, dev_data)
    wise = prepare_interpolation(config, lambda: starting_encoder(config))  # guard sets load (or fail) now
    # The multimodal starting point initialises its fusion head here: no pretrained value for L2-SP to keep.
    fresh_head = encoder is None and config.model == MULTIMODAL_STARTING_POINT
    given = encoder is not None
    encoder = starting_encoder(config, encoder)
    if wise is not None and given:  # a caller's encoder cannot be rebuilt from the config: keep a copy of its start
        wise.keep_start(encoder)
    starting = starting_parameter_ids(encoder, fresh_head=fresh_head)  # before a head is added below
    frozen = freeze_lower_layers(encoder, config.freeze_layers)  # before the optimiser: no state for them
    # Every exit path below gives the caller's encoder back trainable: a failed setup or run as well.
    try:
        run = _set_up_run(config, metric, run_dir, encoder, train_data, dev_data, starting, resume=resume,
                          show_progress=show_progress, callbacks=callbacks)
        output_metrics = _fit(run.trainer, resume_from)
    except BaseException:
        if config.freeze_encoder:  # _model_to_train froze the base; a finished run unfreezes it in _attach_head
            _unfreeze_base(encoder)
        raise
    finally:
        if frozen is not None:  # the returned encoder trains every layer again if trained further
            frozen.release()
    if config.freeze_encoder:
        _attach_head(encoder, run.model)
    similarity = SimilarityModel(encoder, metric)
    trainer, mix = run.trainer, run.mix
    record = {
        "world_size": run.world, "train_pairs": len(run.pairs), "dev_pairs": len(dev_data),
        "sampler": run.plan.sampler, "loss_params_resolved": run.metric_loss.params,
        **({"auxiliary_losses_resolved": auxiliaries} if (auxiliaries := run.metric_loss.describe_auxiliaries()) else {}),
        "batches_without_tuple": run.guard.total_empty, "batches_all_easy": run.guard.total_easy, "resumed": resume,
        "hard_negatives": run.hard_negatives,
        "data_summary": {"train": run.train_data.summary(), "dev": dev_data.summary()}, **run.reference,
        **({"mix_pairs": mix.record(mix.batches_trained(trainer.state.global_step, config.gradient_accumulation_steps,
                                                          run.world))} if mix is not None else {}),
    } if is_main_process() else {}
    return _finish(config, run_dir, similarity, trainer, run.evaluator, dev_data, run.metric_loss, run.zero_shot,
                   output_metrics, record, started, wise)


@dataclass
class _RunSetup:
    """What :func:`_set_up_run` built: the Trainer and what the run record and the finish need."""

    world: int
    train_data: PairDataset  # with mined negatives and mixed pairs, as trained on
    hard_negatives: dict[str, Any] | None
    pairs: PreparedPairs
    evaluator: DevEvaluator
    model: nn.Module
    zero_shot: dict[str, Any]
    metric_loss: MetricLoss
    mix: MixPlan | None
    plan: _BatchPlan
    guard: ZeroLossGuard
    reference: dict[str, Any]
    trainer: MetricTrainer


def _set_up_run(config: TrainConfig, metric: Metric, run_dir: Path, encoder: TrainableEncoder,
                train_data: PairDataset, dev_data: PairDataset, starting: set[int], *, resume: bool,
                show_progress: bool, callbacks: Sequence[TrainerCallback]) -> _RunSetup:
    """Everything between the starting encoder and the first step: distributed setup, mined and mixed
    pairs, the model to train, the zero-shot score, the loss, the batch plan, and the Trainer."""
    # Opens the process group under torchrun (the Trainer's own DDP setup: gloo on CPU, NCCL on GPU).
    args = training_arguments(config, run_dir / CHECKPOINT_DIR, show_progress)
    world = args.world_size
    if world > 1:
        logger.info("torchrun: %d processes (%s), %d pairs per rank per step, %d in all", world,
                    args.device.type, config.batch_size, config.batch_size * world)
    split_train = train_data  # what mining runs on, first and at every refresh
    if config.hard_negatives is not None:
        encoder.to(args.device)  # mining embeds the train items with the starting encoder
        train_data, hard_negatives = add_hard_negatives(config, train_data, dev_data, encoder, run_dir,
                                                        resume=resume)
    else:
        hard_negatives = None
    main_pairs = len(train_data)  # rows 0.. of the prepared pairs; the mixed sets follow
    train_data, mix_sources = add_mix_pairs(config, train_data, dev_data)
    torch.manual_seed(config.seed)
    pairs = prepare_pairs(train_data)
    evaluator = DevEvaluator(dev_data, metric, config.eval_batch_size)
    logger.info("train pairs %d (%d unique items, %d positives), dev pairs %d",
                len(pairs), len(pairs.items), int(pairs.labels.sum()), len(dev_data))

    model, collator = _model_to_train(config, encoder, pairs, evaluator, run_dir, args, show_progress)
    l2sp = _l2sp(config, model, starting, run_dir, resume)
    zero_shot = _zero_shot(config, model, evaluator, args)
    embedding_dim = config.projection_dim or encoder.embedding_dim
    # Without auxiliary losses this is the plain MetricLoss of build_loss (bit-identical runs).
    metric_loss = build_loss_with_auxiliaries(config.loss, metric, embedding_dim=embedding_dim,
                                              params=config.loss_params, auxiliaries=config.auxiliary_losses)
    logger.info("loss %s on raw %s distance, params %s", config.loss, metric.value, metric_loss.params)
    if metric_loss.auxiliary_terms:
        logger.info("plus auxiliary losses (weight * loss, same batch): %s", metric_loss.describe_auxiliaries())
    if zero_shot:
        for loss in (metric_loss, *(auxiliary for auxiliary, _ in metric_loss.auxiliary_terms)):
            check_margins(loss, zero_shot)
    mix = MixPlan(config.batch_size, main_pairs, mix_sources) if mix_sources else None
    plan = _batch_plan(config, metric_loss, encoder, pairs, world, mix)
    if mix is not None:
        mix.log(mix.batches_trained(plan.planned_steps, config.gradient_accumulation_steps, world))
    preflight(metric_loss, pairs, plan.make_sampler(), config.batch_size * world,
              plan.planned_steps * config.gradient_accumulation_steps)

    reference = {REFERENCE_KEY: l2sp.record()} if l2sp is not None and is_main_process() else {}
    if is_main_process():
        write_json_atomic(run_dir / TRAIN_CONFIG_FILE,
                          {**config.to_dict(), "run": {"status": "running", **reference}})
    guard = ZeroLossGuard(config.loss)
    # The refresh rewrites mined rows of the main data: it sees those rows alone (views: writes reach pairs).
    refresh = _refresh_callbacks(config, encoder, split_train, main_rows(pairs, main_pairs), run_dir,
                                 hard_negatives)
    lr_scales = layer_lr_scales(model, config.layer_lr_decay)
    if lr_scales:
        logger.info("layer_lr_decay %g: the lowest layer group at lr x %.3g, the top one (and any head) at lr",
                    config.layer_lr_decay, min(lr_scales.values()))
    trainer = _make_trainer(model, args, pairs, collator, metric_loss, evaluator, plan, guard,
                            [*refresh, *callbacks], show_progress, l2sp, lr_scales)
    logger.info("training: %d steps planned (%d per epoch), batch %d%s, sampler %s, lr %.2g",
                plan.planned_steps, plan.steps_per_epoch, config.batch_size,
                f" x {world} ranks" if world > 1 else "", plan.sampler, config.learning_rate)
    return _RunSetup(world, train_data, hard_negatives, pairs, evaluator, model, zero_shot, metric_loss, mix, plan,
                     guard, reference, trainer)


def _l2sp(config: TrainConfig, model: nn.Module, starting: set[int], run_dir: Path, resume: bool) -> L2SP | None:
    """The L2-SP penalty, its reference snapshotted now: before a resumed run's Trainer loads the checkpoint."""
    l2sp = build_l2sp(config.l2sp_weight, model, starting)
    if l2sp is not None:
        logger.info("L2-SP: weight %g over %d starting tensors", l2sp.weight, len(l2sp.names))
        if resume:
            check_l2sp_reference(l2sp, run_dir)
    return l2sp


def _refresh_callbacks(config: TrainConfig, encoder: TrainableEncoder, split_train: PairDataset,
                       pairs: PreparedPairs, run_dir: Path, record: dict[str, Any] | None) -> list[TrainerCallback]:
    """The hard-negative refresh, when the config asks for one (before the caller's callbacks: they see its swap)."""
    if record is None or config.hard_negatives is None or config.hard_negatives.get("refresh_steps") is None:
        return []
    # add_hard_negatives appended the mined pairs after the train split: they are the last rows.
    first_slot = len(split_train)
    if len(pairs) - first_slot != record["count"]:  # a change to how the pairs are prepared broke the slot layout
        raise TrainingError(f"hard negatives refresh: expected the {record['count']} mined pairs as the last rows of "
                            f"{len(pairs)} prepared pairs, found {len(pairs) - first_slot}")
    return [HardNegativeRefresh(config, encoder, split_train, pairs, first_slot, run_dir, record)]


def _training_data(config: TrainConfig, train_data: PairDataset | None,
                   dev_data: PairDataset | None) -> tuple[PairDataset, PairDataset]:
    if train_data is None or dev_data is None:
        loaded_train, loaded_dev = load_training_data(config)
        train_data = train_data if train_data is not None else loaded_train
        dev_data = dev_data if dev_data is not None else loaded_dev
    return train_data, dev_data


def starting_encoder(config: TrainConfig, encoder: TrainableEncoder | None = None) -> TrainableEncoder:
    """``encoder`` with the config's settings applied, or the encoder ``config.model`` names.

    An encoder with a ``max_length`` setting (texts) is capped at ``config.max_length``.
    """
    if encoder is None:
        encoder = encoder_from_start(config.model, config.encoder_options, seed=config.seed,
                                     normalize=config.normalize, max_length=config.max_length, pooling=config.pooling)
        if not isinstance(encoder, TrainableEncoder):
            raise TrainingError(f"the encoder {config.model!r} ({type(encoder).__name__}) cannot be trained: "
                                "training needs a TrainableEncoder (a PyTorch module)")
        return encoder
    if not isinstance(encoder, TrainableEncoder):
        raise TrainingError(f"encoder must be a TrainableEncoder to be trained, got {type(encoder).__name__}")
    max_length = getattr(encoder, "max_length", None)
    if isinstance(max_length, int):
        encoder.max_length = min(max_length, config.max_length)
    if config.normalize is not None:
        encoder.normalize = config.normalize
    return encoder


def _model_to_train(config: TrainConfig, encoder: TrainableEncoder, pairs: PreparedPairs, evaluator: DevEvaluator,
                    run_dir: Path, args: TrainingArguments, show_progress: bool) -> tuple[nn.Module, PairCollator]:
    """The whole encoder, or (frozen mode) a projection head on cached base embeddings."""
    if not config.freeze_encoder:
        if config.projection_dim is not None and encoder.projection is None:
            encoder.projection = identity_projection(encoder.pooled_dim, config.projection_dim, config.seed)
        return encoder, PairCollator(pairs, encoder=encoder)
    base = encoder.base_encoder()
    for parameter in base.parameters():
        parameter.requires_grad_(False)
    pooled = encoder.pooled_dim
    head = encoder.projection
    out_dim = config.projection_dim or (head.out_features if head is not None else pooled)
    if head is None or head.out_features != out_dim:  # otherwise continue from the saved head
        head = identity_projection(pooled, out_dim, config.seed)
    cache = run_dir / "cache"
    # The first process of each machine fills the cache; the others then read it.
    with args.main_process_first(local=True, desc="frozen-encoder embeddings"):
        train_base = base_embeddings(base, pairs.items, cache, "train", config.eval_batch_size, show_progress)
        evaluator.base = base_embeddings(base, evaluator.items, cache, "dev", config.eval_batch_size, show_progress)
    return ProjectionHead(head, encoder.normalize), PairCollator(pairs, embeddings=train_base)


def _attach_head(encoder: TrainableEncoder, model: nn.Module) -> None:
    """Frozen mode is over: the trained head becomes the encoder's projection."""
    assert isinstance(model, ProjectionHead)
    encoder.projection = model.projection
    _unfreeze_base(encoder)


def _unfreeze_base(encoder: TrainableEncoder) -> None:
    """Undo the freezing of frozen mode: the encoder given back trains every layer if trained further."""
    for parameter in encoder.base_encoder().parameters():
        parameter.requires_grad_(True)


def _zero_shot(config: TrainConfig, model: nn.Module, evaluator: DevEvaluator,
               args: TrainingArguments) -> dict[str, Any]:
    """Dev figures before training (frozen mode scores the untrained head: the same numbers, no second encode)."""
    if not config.zero_shot_eval:
        return {}
    model.to(args.device)
    zero_shot = broadcast_object(evaluator(model) if is_main_process() else None)
    logger.info("zero-shot dev AP (%s) %.4f; median distance similar %.4g, dissimilar %.4g", evaluator.metric.value,
                zero_shot["average_precision"], zero_shot["median_distance_similar"],
                zero_shot["median_distance_dissimilar"])
    return zero_shot


def _batch_plan(config: TrainConfig, metric_loss: MetricLoss, encoder: TrainableEncoder, pairs: PreparedPairs,
                world: int, mix: MixPlan | None = None) -> _BatchPlan:
    """The sampler and step count; with ``mix``, the run's sampler orders the main rows and a
    :class:`MixedBatchSampler` wraps it (an epoch is then one pass over the main data)."""
    kind = config.sampler
    if kind == "auto":
        kind = "cluster" if metric_loss.needs_labels else "length"
    main = pairs if mix is None else main_rows(pairs, mix.main_pairs)
    # Every rank draws the same seeded order; the loss sees world * batch_size pairs per micro-batch.
    step_pairs = config.batch_size * config.gradient_accumulation_steps * world
    group_pairs = step_pairs if mix is None else mix.main_per_batch * config.gradient_accumulation_steps * world
    pair_sizes: list[int] = []
    if kind == "length" and not config.freeze_encoder:  # cached embeddings have no padding to save
        sizes = encoder.item_sizes(main.items)
        if int(sizes.max(initial=0)) > 0:  # all zero: every item costs the same, nothing to group
            pair_sizes = np.maximum(sizes[main.tid_a], sizes[main.tid_b]).tolist()

    def main_sampler() -> Sampler[int]:
        if kind == "cluster":
            return ClusterPairSampler(main.text_labels[main.tid_a], config.samples_per_cluster, config.seed)
        if pair_sizes:
            # Group by the (main) pairs of one optimiser step over all ranks: accelerate cuts that into per-rank batches.
            return LengthGroupedPairSampler(pair_sizes, group_pairs, config.seed)
        return RandomPairSampler(len(main), config.seed)

    def make_sampler() -> Sampler[int]:
        return main_sampler() if mix is None else MixedBatchSampler(main_sampler(), mix, config.seed)

    epoch_pairs = len(pairs) if mix is None else mix.epoch_pairs
    steps_per_epoch = math.ceil(epoch_pairs / step_pairs)
    planned = config.max_steps or math.ceil(steps_per_epoch * config.epochs)
    return _BatchPlan(kind, make_sampler, steps_per_epoch, planned)


def _make_trainer(model: nn.Module, args: TrainingArguments, pairs: PreparedPairs, collator: PairCollator,
                  metric_loss: MetricLoss, evaluator: DevEvaluator, plan: _BatchPlan, guard: ZeroLossGuard,
                  callbacks: Sequence[TrainerCallback], show_progress: bool, l2sp: L2SP | None,
                  lr_scales: dict[str, float]) -> MetricTrainer:
    trainer = MetricTrainer(
        model=model,
        args=args,
        train_dataset=PairRows(pairs),
        eval_dataset=PairRows(pairs),  # not iterated: evaluate() scores the dev split itself
        data_collator=collator,
        metric_loss=metric_loss,
        dev_evaluator=evaluator,
        sampler_factory=plan.make_sampler,
        guard=guard,
        l2sp=l2sp,
        lr_scales=lr_scales,
        callbacks=[guard, *callbacks],
    )
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(ProgressAndLog(trainer, show_progress))
    return trainer


def _fit(trainer: MetricTrainer, resume_from: Path | None) -> dict[str, float]:
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm():  # log lines print above the progress bar instead of through it
        output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    return dict(output.metrics)


def _finish(config: TrainConfig, run_dir: Path, similarity: SimilarityModel, trainer: MetricTrainer,
            evaluator: DevEvaluator, dev_data: PairDataset, metric_loss: MetricLoss, zero_shot: dict[str, Any],
            output_metrics: dict[str, float], record: dict[str, Any], started: float,
            wise: InterpolationStep | None) -> TrainResult:
    """Rank 0 calibrates, saves and writes the run files; every rank returns the same result."""
    shared: tuple[dict[str, Any], dict[str, Any] | None, float, dict[str, Any] | None] | None = None
    final = similarity
    if is_main_process():
        metrics = finish_run(config, run_dir, similarity, trainer, evaluator, dev_data, metric_loss, zero_shot,
                             hard_negatives=record.get("hard_negatives"), interpolation=wise)
        final = wise.model if wise is not None and wise.model is not None else similarity
        wall = time.perf_counter() - started
        runtime = float(output_metrics.get("train_runtime", float("nan")))
        run = {
            "status": "finished",
            "steps": trainer.state.global_step,
            "epochs": trainer.state.epoch,
            "wall_time_s": round(wall, 1),
            "train_runtime_s": round(runtime, 1),
            "dev_eval_time_s": round(trainer.eval_seconds, 1),  # inside train_runtime_s
            "train_pairs_per_s": round(trainer.pairs_seen / max(1e-9, output_metrics.get("train_runtime", 0.0)
                                                                - trainer.eval_seconds), 2),
            **record,
            "hardware": _hardware(),
            "versions": _versions(),
        }
        write_json_atomic(run_dir / TRAIN_CONFIG_FILE, {**config.to_dict(), "run": run})
        logger.info("dev AP %.4f (zero-shot %s) after %d steps in %.0f s; model saved to %s",
                    metrics["dev"]["average_precision"],
                    f"{zero_shot['average_precision']:.4f}" if zero_shot else "not measured",
                    trainer.state.global_step, wall, run_dir / MODEL_DIR)
        calibrator = final.calibrator
        shared = (metrics, calibrator.to_dict() if calibrator is not None else None, wall, final.weight_interpolation)
    # The other ranks wait here until rank 0 has written the run folder, then return the same result.
    metrics, calibrator_dict, wall, mixed = broadcast_object(shared)
    if not is_main_process():
        if wise is not None:  # the alpha rank 0 chose, applied to this rank's copy
            final = wise.replica(similarity, mixed)
        if calibrator_dict is not None:
            final.calibrator = Calibrator.from_dict(calibrator_dict)
    return TrainResult(final, run_dir, metrics, trainer.state.global_step, wall)


def finish_run(config: TrainConfig, run_dir: Path, similarity: SimilarityModel, trainer: MetricTrainer,
               evaluator: DevEvaluator, dev_data: PairDataset, metric_loss: MetricLoss,
               zero_shot: dict[str, Any], *, hard_negatives: dict[str, Any] | None = None,
               interpolation: InterpolationStep | None = None) -> dict[str, Any]:
    """Calibrate ``similarity`` on dev, save it to ``RUN_DIR/model`` and write ``metrics.json``
    (with what ``hard_negatives`` records: source, count, seconds, when the run added some).

    With ``interpolation`` the fine-tuned model goes to ``RUN_DIR/model_finetuned`` (its dev
    figures to ``finetuned_dev``) and ``RUN_DIR/model`` is its WiSE-FT mix (``dev``, ``interpolation``)."""
    metric = similarity.metric
    # Final model: the best checkpoint's weights (load_best_model_at_end), calibrated on dev.
    final_step = checkpoint_step(trainer.state.best_model_checkpoint) if config.load_best_model_at_end else None
    final_step = trainer.state.global_step if final_step is None else final_step
    distances = evaluator.distances_in_input_order(final_step)
    if distances is None:  # e.g. the best step was evaluated before a resume
        distances = similarity.distance(dev_data.texts_a, dev_data.texts_b, batch_size=config.eval_batch_size)
    dev_labels = dev_data.labels
    calibration = calibrate_on_dev(similarity, distances, dev_labels, feature=config.calibration_feature)
    extra = {"training": {"loss": config.loss, "loss_params": metric_loss.params, "steps": trainer.state.global_step}}
    if auxiliaries := metric_loss.describe_auxiliaries():  # absent without any: the metadata saves as before
        extra["training"]["auxiliary_losses"] = auxiliaries
    similarity.save(run_dir / (MODEL_DIR if interpolation is None else MODEL_FINETUNED_DIR), extra=extra)
    dev_metrics = {**ranking_metrics(distances, dev_labels),
                   **calibration,
                   "best_checkpoint": trainer.state.best_model_checkpoint,
                   "best_step_average_precision": trainer.state.best_metric}
    metrics: dict[str, Any] = {"metric": metric.value, "dev": dev_metrics}
    if interpolation is not None:
        metrics["dev"], metrics["interpolation"] = interpolation.finish(similarity, dev_data, run_dir, extra=extra,
                                                                       batch_size=config.eval_batch_size)
        metrics["finetuned_dev"] = dev_metrics
    if zero_shot:
        metrics["zero_shot_dev"] = zero_shot
    if hard_negatives is not None:
        metrics["hard_negatives"] = hard_negatives
    write_json_atomic(run_dir / METRICS_FILE, metrics)
    return metrics


def _versions() -> dict[str, str]:
    packages = ("metric-sim", "torch", "transformers", "pytorch-metric-learning", "datasets", "accelerate",
                "scikit-learn", "numpy")
    return {"python": platform.python_version(), **package_versions(packages)}


def _hardware() -> dict[str, Any]:
    info: dict[str, Any] = {
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
