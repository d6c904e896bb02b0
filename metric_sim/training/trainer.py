"""``MetricTrainer``: ``transformers.Trainer`` with a metric-learning loss, dev-AP evaluation and pair samplers.

What the Trainer already does is left to it (optimiser, schedule, accumulation, mixed
precision, checkpoints, ``report_to``, seeds, torchrun). Three hooks are replaced, a fourth extended:
``compute_loss`` (embed the batch's unique items once, then the registry loss on raw
Lp distance, plus the L2-SP penalty when the run has one), ``evaluate`` (dev average
precision, the figure that picks the best checkpoint) and ``_get_train_sampler``
(length-grouped or cluster-aware batches); ``create_optimizer`` splits the Trainer's parameter groups
by learning-rate multiplier when the run has ``layer_lr_decay``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Sampler
from transformers import Trainer, TrainingArguments
from transformers.trainer_callback import ProgressCallback

from metric_sim.distributed import broadcast_object, is_main_process, world_size
from metric_sim.losses.cross_rank import CrossRankLoss
from metric_sim.losses.loss import MetricLoss
from metric_sim.training.config import TrainConfig
from metric_sim.training.dev import DevEvaluator
from metric_sim.training.guards import ZeroLossGuard
from metric_sim.training.regularizers import L2SP

__all__ = ["MetricTrainer", "ProgressAndLog", "training_arguments"]

logger = logging.getLogger(__name__)


def training_arguments(config: TrainConfig, checkpoints: Path, show_progress: bool) -> TrainingArguments:
    """The ``TrainingArguments`` of a config; creating them opens the process group under torchrun."""
    # transformers 5 folds warmup_ratio into warmup_steps (a float < 1 is a fraction); 4.x has both.
    fields = getattr(TrainingArguments, "__dataclass_fields__", {})
    warmup = {"warmup_ratio": config.warmup_ratio} if "warmup_ratio" in fields else {"warmup_steps": config.warmup_ratio}
    return TrainingArguments(
        **warmup,
        output_dir=str(checkpoints),
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.eval_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        lr_scheduler_type=config.lr_scheduler,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps if config.max_steps is not None else -1,
        max_grad_norm=config.max_grad_norm,
        eval_strategy="steps",
        eval_steps=config.eval_steps,
        save_strategy="steps",
        save_steps=config.eval_steps,  # every evaluated step is a candidate for the best model
        save_total_limit=config.save_total_limit,
        load_best_model_at_end=config.load_best_model_at_end,
        metric_for_best_model="average_precision",
        greater_is_better=True,
        logging_strategy="steps",
        logging_steps=config.logging_steps,
        report_to=config.report_to,
        seed=config.seed,
        data_seed=config.seed,
        bf16=config.bf16,
        fp16=config.fp16,
        remove_unused_columns=False,  # rows are {tid_a, tid_b, label}; the collator builds the model inputs
        dataloader_num_workers=config.dataloader_num_workers,
        dataloader_pin_memory=torch.cuda.is_available(),
        # accelerate runs several CPU processes (gloo DDP) only when told to use the CPU; alone, it keeps its default
        use_cpu=world_size() > 1 and not torch.cuda.is_available(),
        disable_tqdm=not show_progress,
    )


class MetricTrainer(Trainer):
    """``transformers.Trainer`` with a metric-learning loss, dev-AP evaluation and pair samplers."""

    # The loss is a per-batch mean: let the Trainer divide it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, *args: Any, metric_loss: MetricLoss, dev_evaluator: DevEvaluator,
                 sampler_factory: Any, guard: ZeroLossGuard, l2sp: L2SP | None = None,
                 lr_scales: Mapping[str, float] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.l2sp = l2sp
        self.lr_scales = dict(lr_scales or {})  # parameter name -> learning-rate multiplier (absent: 1)
        self.l2sp_since_log: list[float] = []  # the penalty of each micro-batch since the last log line
        self.metric_loss = metric_loss
        self.cross_rank_loss = CrossRankLoss(metric_loss)  # = metric_loss in one process
        self.dev_evaluator = dev_evaluator
        self.sampler_factory = sampler_factory
        self.guard = guard
        self.pairs_seen = 0
        self.eval_seconds = 0.0
        self.recent_loss = float("nan")

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """The Trainer's optimiser; with ``lr_scales``, each of its parameter groups split by multiplier.

        The Trainer's own groups (weight decay or not) are kept, and so are its optimiser class and
        arguments; a group's ``lr`` is the multiplier times ``learning_rate``, and the schedule then
        scales every group alike, so the ratios between layers hold for the whole run. The groups at the
        full rate come first: the Trainer logs the first group's rate, which is then ``learning_rate``'s.
        """
        if not self.lr_scales or self.optimizer is not None:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        decay_names = set(self.get_decay_parameter_names(opt_model))
        groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
        for name, parameter in opt_model.named_parameters():
            if parameter.requires_grad:
                key = (self.lr_scales.get(name, 1.0), name in decay_names)
                groups.setdefault(key, []).append(parameter)
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        base_lr = optimizer_kwargs.get("lr", self.args.learning_rate)
        self.optimizer = optimizer_cls(
            [{"params": params, "lr": base_lr * scale, "weight_decay": self.args.weight_decay if decays else 0.0}
             for (scale, decays), params in sorted(groups.items(), key=lambda item: (-item[0][0], item[0][1]))],
            **optimizer_kwargs)
        return self.optimizer

    def _get_train_sampler(self, train_dataset: Any = None) -> Sampler[int]:
        return self.sampler_factory()

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        embeddings = model(**inputs["features"])
        # Under torchrun the loss sees every rank's pairs (the same value on every rank).
        result = self.cross_rank_loss(embeddings, inputs["idx_a"], inputs["idx_b"], inputs["pair_labels"],
                                      inputs["text_labels"], inputs.get("text_ids"))
        loss = result.loss
        if model.training:
            self.guard.record(result)
            if self.l2sp is not None:
                # On each rank's own replica (identical weights on every rank): DDP averages W equal gradients,
                # so the step is the one-process one (unlike the metric loss, the penalty is not rescaled by W).
                penalty = self.l2sp()
                loss = loss + penalty
                self.l2sp_since_log.append(float(penalty.detach()))
            # accelerate gives every rank a batch of the same size (even_batches): count all ranks' pairs
            self.pairs_seen += int(inputs["pair_labels"].shape[0]) * world_size()
            value = float(loss.detach())
            self.recent_loss = value if math.isnan(self.recent_loss) else 0.9 * self.recent_loss + 0.1 * value
        return (loss, {"embeddings": embeddings}) if return_outputs else loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """The Trainer's log, with ``l2sp``: the mean penalty since the last line (the ``loss`` includes it)."""
        if "loss" in logs and self.l2sp_since_log:
            logs = {**logs, "l2sp": sum(self.l2sp_since_log) / len(self.l2sp_since_log)}
            self.l2sp_since_log = []
        super().log(logs, *args, **kwargs)

    def evaluate(self, eval_dataset: Any = None, ignore_keys: Any = None, metric_key_prefix: str = "eval") -> dict[str, float]:
        started = time.perf_counter()
        model = self.accelerator.unwrap_model(self.model)
        # Rank 0 scores dev; every rank needs the figures (best-checkpoint bookkeeping).
        raw = self.dev_evaluator(model, step=self.state.global_step) if is_main_process() else None
        raw = broadcast_object(raw)
        metrics = {f"{metric_key_prefix}_{k}": v for k, v in raw.items()}
        elapsed = time.perf_counter() - started
        self.eval_seconds += elapsed
        metrics[f"{metric_key_prefix}_runtime"] = round(elapsed, 3)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


class ProgressAndLog(ProgressCallback):
    """tqdm bar with loss and pairs/s; one log line per logging step (step, loss, lr, throughput)."""

    def __init__(self, trainer: MetricTrainer, show_bar: bool) -> None:
        super().__init__()
        self.trainer = trainer
        self.show_bar = show_bar
        self.started = time.perf_counter()
        self.pairs_at_start = 0
        self.eval_at_start = 0.0

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001
        if self.show_bar:
            super().on_train_begin(args, state, control, **kwargs)
            if self.training_bar is not None:
                self.training_bar.set_description("train")
                self.training_bar.update(state.global_step)
        self.current_step = state.global_step
        self.started = time.perf_counter()
        self.pairs_at_start = self.trainer.pairs_seen
        self.eval_at_start = self.trainer.eval_seconds

    def pairs_per_second(self) -> float:
        # Training throughput: time spent in dev evaluation is not training time.
        elapsed = time.perf_counter() - self.started - (self.trainer.eval_seconds - self.eval_at_start)
        return (self.trainer.pairs_seen - self.pairs_at_start) / elapsed if elapsed > 0 else 0.0

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
        if self.show_bar and self.training_bar is not None:
            super().on_step_end(args, state, control, **kwargs)
            self.training_bar.set_postfix(loss=f"{self.trainer.recent_loss:.4f}", pairs_s=f"{self.pairs_per_second():.1f}")

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
        logs = logs or {}
        if not state.is_world_process_zero:
            return
        if "loss" in logs:
            penalty = f" (l2sp {logs['l2sp']:.4g})" if "l2sp" in logs else ""
            message = (f"step {state.global_step}/{state.max_steps} loss {logs['loss']:.4f}{penalty} "
                       f"lr {logs.get('learning_rate', float('nan')):.2e} {self.pairs_per_second():.1f} pairs/s")
        elif "eval_average_precision" in logs:
            message = (f"step {state.global_step}/{state.max_steps} dev AP {logs['eval_average_precision']:.4f} "
                       f"ROC-AUC {logs['eval_roc_auc']:.4f}")
        else:
            return
        logger.info(message)

    def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001
        if self.show_bar:
            super().on_train_end(args, state, control, **kwargs)
