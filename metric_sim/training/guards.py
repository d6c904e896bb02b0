"""Guards against a run that cannot learn: batches without a usable tuple, margins on the wrong scale."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler
from transformers import TrainerCallback

from metric_sim.errors import TrainingError
from metric_sim.losses.loss import LossResult, MetricLoss
from metric_sim.losses.registry import LOSSES
from metric_sim.training.batches import PreparedPairs

__all__ = ["ZeroLossGuard", "check_margins", "preflight"]

logger = logging.getLogger(__name__)


def _hint(loss_name: str) -> str:
    spec = LOSSES.get(loss_name)
    return spec.no_tuple_hint if spec is not None else ""


class ZeroLossGuard(TrainerCallback):
    """Counts batches that gave no usable tuple; raises when a whole epoch had none."""

    def __init__(self, loss_name: str) -> None:
        self.loss_name = loss_name
        self.reset_epoch()
        self.total_batches = 0
        self.total_empty = 0
        self.total_easy = 0

    def reset_epoch(self) -> None:
        self.epoch_batches = 0
        self.epoch_empty = 0

    def record(self, result: LossResult) -> None:
        self.epoch_batches += 1
        self.total_batches += 1
        if result.tuples == 0:
            self.epoch_empty += 1
            self.total_empty += 1
            if self.total_empty <= 3 or self.total_empty % 100 == 0:
                logger.warning("batch without a usable tuple for loss %r (%d so far): it contributes zero loss",
                               self.loss_name, self.total_empty)
        elif result.mined == 0:
            self.total_easy += 1

    def check(self) -> None:
        if self.epoch_batches and self.epoch_empty == self.epoch_batches:
            raise TrainingError(
                f"no batch of this epoch ({self.epoch_batches} batches) gave a usable tuple for loss {self.loss_name!r}: "
                "the loss was zero throughout and nothing was learned. " + _hint(self.loss_name)
            )

    def on_epoch_end(self, args, state, control, **kwargs):  # noqa: ANN001 (Trainer callback API)
        self.check()
        self.reset_epoch()

    def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001
        self.check()


def preflight(loss: MetricLoss, pairs: PreparedPairs, sampler: Sampler[int], batch_size: int, max_batches: int) -> int:
    """Count the batches of the first epoch that can give a loss, before spending compute on them."""
    order = list(iter(sampler))
    usable = total = 0
    for start in range(0, min(len(order), max_batches * batch_size), batch_size):
        rows = np.asarray(order[start : start + batch_size])
        ids = np.concatenate([pairs.tid_a[rows], pairs.tid_b[rows]])
        unique, inverse = np.unique(ids, return_inverse=True)
        b = len(rows)
        t = loss.indices_tuple(torch.from_numpy(inverse[:b]), torch.from_numpy(inverse[b:]),
                               torch.from_numpy(pairs.labels[rows]), torch.from_numpy(pairs.text_labels[unique]))
        usable += loss.count_usable(t) > 0
        total += 1
    if total and usable == 0:
        raise TrainingError(
            f"none of the {total} batches of the first epoch has a usable tuple for loss {loss.name!r}, "
            "so the loss would be zero throughout. " + _hint(loss.name)
        )
    if total and usable < total:
        logger.warning("%d of %d batches of the first epoch have no usable tuple for loss %r (they give zero loss)",
                       total - usable, total, loss.name)
    return usable


def check_margins(loss: MetricLoss, zero_shot: Mapping[str, Any]) -> None:
    """Warn when a margin is on the wrong scale for the measured distances (e.g. Euclidean margins on L1)."""
    typical = zero_shot.get("median_distance_dissimilar")
    if not typical:
        return
    for key, low, high in (("neg_margin", 0.1, 4.0), ("base", 0.1, 4.0), ("margin", 0.005, 2.0)):
        value = loss.params.get(key)
        if value is not None and not low * typical <= value <= high * typical:
            logger.warning(
                "%s=%.4g looks off for %s distances: the zero-shot median distance of dissimilar dev pairs is %.4g "
                "(see docs: margins are in units of the metric)", key, value, loss.metric.value, typical)
