"""Other pair sets mixed into every batch (``mix_pairs``): :class:`MixPlan` and :class:`MixedBatchSampler`.

Training on general paraphrase pairs next to the target data keeps what the base model
knew. Each batch of ``batch_size`` pairs holds ``k_i = round(share_i * batch_size)`` pairs
(halves up) of each mixed set and the other ``batch_size - sum(k_i)`` from the main data,
so every batch has the stated make-up, not only the epoch on average.

* The prepared pairs hold the main data first (the train split, then any mined hard
  negatives), then each mixed set in config order (:func:`metric_sim.training.data.mix_into`).
* The main rows come from the run's own sampler (random, length-grouped or cluster-aware),
  built over the main rows alone and wrapped, not replaced: its order is cut into the main
  part of each batch.
* Each mixed set is drawn by cycling through seeded permutations of its rows, a new one
  for each pass: a small set repeats rather than running out, and a large one shows other
  pairs in each epoch.
* An epoch is one pass over the main data: ``ceil(main pairs / main pairs per batch)``
  batches, the last one's main part completed from the start of that epoch's main order.
  The optimiser steps follow from that length exactly as without mixing, so a mixed run
  takes more steps per epoch than an unmixed one: the mixed pairs come on top.
* The order depends only on (seed, epoch), so a resumed run replays the same batches.
* Under torchrun every rank builds the same sampler and reads the same order; accelerate
  gives rank r the batches r, r + W, r + 2W, ... of ``batch_size`` consecutive indices (and
  completes a last round with whole batches from the start), so each rank's batch is one
  block with the exact make-up, and the ranks' blocks are disjoint slices of one stream.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from metric_sim.errors import TrainingError
from metric_sim.training.batches import PreparedPairs
from metric_sim.training.mix_config import MixSource, pairs_per_batch

__all__ = ["MixPlan", "MixedBatchSampler", "main_rows"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MixPlan:
    """How each batch is made up: ``main_pairs`` main rows (``0 ..``) and the ``sources`` after them."""

    batch_size: int
    main_pairs: int
    sources: tuple[MixSource, ...]

    def __post_init__(self) -> None:
        start = self.main_pairs
        for source in self.sources:  # the layout mix_into builds: a change to it must not pass silently
            if source.start != start or source.pairs < 1:
                raise TrainingError(f"mix_pairs: {source.name} expected at rows {start}.. with at least one pair, "
                                    f"found {source.pairs} pairs at {source.start}")
            start += source.pairs
        if self.main_pairs < 1 or min(self.per_batch, default=1) < 1 or self.main_per_batch < 1:
            raise TrainingError(f"mix_pairs: a batch of {self.batch_size} pairs cannot hold {list(self.per_batch)} "
                                f"mixed pairs and at least one of the {self.main_pairs} main pairs")

    @property
    def per_batch(self) -> tuple[int, ...]:
        """Pairs of each mixed set in every batch."""
        return tuple(pairs_per_batch(source.share, self.batch_size) for source in self.sources)

    @property
    def main_per_batch(self) -> int:
        return self.batch_size - sum(self.per_batch)

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(self.main_pairs / self.main_per_batch)

    @property
    def epoch_pairs(self) -> int:
        """Indices the sampler yields per epoch (all ranks together)."""
        return self.batches_per_epoch * self.batch_size

    def batches_trained(self, steps: int, accumulation: int, world: int) -> int:
        """Batches (blocks of ``batch_size``, all ranks) that ``steps`` optimiser steps trained on.

        The Trainer's count: each rank reads ``ceil(batches_per_epoch / world)`` batches an
        epoch, in ``ceil(that / accumulation)`` steps, the last of which may take fewer.
        """
        per_rank = math.ceil(self.batches_per_epoch / world)
        steps_per_epoch = math.ceil(per_rank / accumulation)
        epochs, rest = divmod(steps, steps_per_epoch)
        return (epochs * per_rank + min(rest * accumulation, per_rank)) * world

    def record(self, batches: int) -> dict[str, Any]:
        """Per source (the main data first): pairs available, pairs per batch, share, pairs drawn in ``batches``."""
        rows = [("main", self.main_pairs, self.main_per_batch, 1.0 - math.fsum(s.share for s in self.sources))]
        rows += [(s.name, s.pairs, k, s.share) for s, k in zip(self.sources, self.per_batch, strict=True)]
        return {
            "batch_size": self.batch_size,
            "batches_per_epoch": self.batches_per_epoch,
            "batches_trained": batches,
            "sources": [{"source": name, "pairs_available": available, "pairs_per_batch": k, "share": round(share, 6),
                         "batch_share": round(k / self.batch_size, 6), "pairs_drawn": batches * k}
                        for name, available, k, share in rows],
        }

    def log(self, planned_batches: int) -> None:
        """One line for the batch make-up, one per source with what the planned steps draw of it."""
        parts = " + ".join([f"{self.main_per_batch} main"] + [f"{k} {s.name}" for s, k in
                                                               zip(self.sources, self.per_batch, strict=True)])
        logger.info("mix_pairs: each batch of %d = %s; %d batches per epoch, %d planned", self.batch_size, parts,
                    self.batches_per_epoch, planned_batches)
        for entry in self.record(planned_batches)["sources"]:
            logger.info("mix_pairs: %s: %d pairs available, %d per batch (share %g), %d draws planned (%.2f passes)",
                        entry["source"], entry["pairs_available"], entry["pairs_per_batch"], entry["share"],
                        entry["pairs_drawn"], entry["pairs_drawn"] / entry["pairs_available"])


class MixedBatchSampler(Sampler[int]):
    """Every ``batch_size`` consecutive indices are one batch of the stated make-up (see the module docstring).

    ``main`` is the run's sampler over the main rows ``0 .. plan.main_pairs - 1``; within a
    batch the main rows come first, then each mixed set's in config order.
    """

    def __init__(self, main: Sampler[int], plan: MixPlan, seed: int) -> None:
        if len(main) != plan.main_pairs:
            raise TrainingError(f"mix_pairs: the main sampler orders {len(main)} pairs, the plan has "
                                f"{plan.main_pairs} main pairs")
        self.main = main
        self.plan = plan
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:  # called by the Trainer / accelerate each epoch
        self.epoch = int(epoch)
        if hasattr(self.main, "set_epoch"):
            self.main.set_epoch(epoch)

    def __len__(self) -> int:
        return self.plan.epoch_pairs

    def __iter__(self) -> Iterator[int]:
        plan = self.plan
        blocks = plan.batches_per_epoch
        order = np.asarray(list(iter(self.main)), dtype=np.int64)
        batches = np.empty((blocks, plan.batch_size), dtype=np.int64)
        # np.resize repeats the order from its start: the last batch's main part is completed with the first pairs.
        batches[:, : plan.main_per_batch] = np.resize(order, blocks * plan.main_per_batch).reshape(blocks, -1)
        column = plan.main_per_batch
        for i, (source, k) in enumerate(zip(plan.sources, plan.per_batch, strict=True)):
            batches[:, column : column + k] = self._draws(i, source, blocks * k).reshape(blocks, k)
            column += k
        return iter(batches.reshape(-1).tolist())

    def _draws(self, i: int, source: MixSource, count: int) -> np.ndarray:
        """``count`` rows of source ``i``: seeded permutations of its rows one after another."""
        rng = np.random.default_rng([self.seed, self.epoch, i])
        passes = math.ceil(count / source.pairs)
        rows = np.concatenate([rng.permutation(source.pairs) for _ in range(passes)])[:count]
        return rows + source.start


def main_rows(pairs: PreparedPairs, count: int) -> PreparedPairs:
    """The first ``count`` pairs (the main data) as views of ``pairs``' arrays, so writes reach ``pairs``.

    The unique items and their cluster labels are shared whole: the ids index into them.
    """
    return PreparedPairs(pairs.texts, pairs.tid_a[:count], pairs.tid_b[:count], pairs.labels[:count],
                         pairs.text_labels)
