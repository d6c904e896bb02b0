"""Mined hard negatives refreshed during training with the encoder being trained.

The first mining (:func:`metric_sim.training.data.add_hard_negatives`) appends its pairs
after the train pairs, so they are the last rows of the :class:`PreparedPairs` the
Trainer draws from: fixed *slots*, each an (anchor, negative) pair of unique-item ids.
Every ``hard_negatives.refresh_steps`` optimiser steps :class:`HardNegativeRefresh`
mines again, with the same options, on the same train pairs (never dev), with the
encoder as it is at that step, and overwrites the slots' negative ids in place.
:class:`PairRows` reads the ids when a row is fetched, so the Trainer, its sampler
and collator stay as they are: no rebuild, no new dataloader.

What does not change: the slots' anchors (so the cluster sampler's keys stay right),
the unique-item table (a negative is always a train item, already in it) and the
cluster labels (label-0 pairs never join clusters). The length-grouped sampler keeps
the pair lengths of the first negatives: only its padding savings drift.

When a refresh takes effect: accelerate's loader collates one batch ahead, so the batch
fetched just before a refresh still carries the old negatives; every later one has the
new ones.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback

from metric_sim.data import PairDataset
from metric_sim.distributed import is_main_process
from metric_sim.encoders.base import TrainableEncoder
from metric_sim.errors import TrainingError
from metric_sim.layout import HARD_NEGATIVES_REFRESHED_FILE
from metric_sim.mining import MinedNegatives
from metric_sim.training.batches import PreparedPairs, item_key
from metric_sim.training.config import TrainConfig
from metric_sim.training.data import mine_train_negatives

__all__ = ["HardNegativeRefresh", "fill_slots"]

logger = logging.getLogger(__name__)


def fill_slots(slot_anchors: np.ndarray, slot_negatives: np.ndarray, new_anchors: np.ndarray,
               new_negatives: np.ndarray) -> tuple[np.ndarray, dict[str, int]]:
    """The slots' negatives after a refresh, and how they were filled.

    The number of slots is fixed, but a new mining may give an anchor fewer or more
    negatives than before (a guard skipped more candidates, or fewer). The rule, the same
    on every rank: the k-th slot of anchor ``a`` (slot order) takes ``a``'s k-th new
    negative (mined order: nearest first); a slot whose anchor has no k-th new negative
    keeps its previous one (still a valid negative: clusters do not change during
    training); new negatives beyond an anchor's slots are not used. Counts: ``changed``
    slots, ``kept`` (no new negative for them), ``unused`` (new pairs without a slot).
    """
    queues: dict[int, list[int]] = {}
    for anchor, negative in zip(new_anchors.tolist(), new_negatives.tolist(), strict=True):
        queues.setdefault(anchor, []).append(negative)
    filled = np.array(slot_negatives, dtype=np.int64, copy=True)
    taken: dict[int, int] = {}
    kept = 0
    for slot, anchor in enumerate(slot_anchors.tolist()):
        k = taken.get(anchor, 0)
        taken[anchor] = k + 1
        queue = queues.get(anchor, [])
        if k < len(queue):
            filled[slot] = queue[k]
        else:
            kept += 1
    unused = sum(max(0, len(queue) - taken.get(anchor, 0)) for anchor, queue in queues.items())
    return filled, {"changed": int((filled != slot_negatives).sum()), "kept": kept, "unused": unused}


class HardNegativeRefresh(TrainerCallback):
    """Re-mines the hard negatives every ``refresh_steps`` optimiser steps and swaps them into the slots.

    ``train`` is the train split without the mined pairs (what the first mining ran on);
    ``pairs`` the prepared pairs the Trainer draws from, whose rows ``first_slot:`` are the
    mined ones. Each refresh is appended to ``record["refreshes"]`` (step, count, seconds,
    and the :func:`fill_slots` counts), logged, and its mined set saved by rank 0 to
    ``RUN_DIR/hard_negatives_refreshed.tsv`` (+ sidecar), replacing the previous one.

    No refresh after the last step (nothing would train on it). A resumed run starts from
    the first mined set (``hard_negatives.tsv``), mines once at once with the checkpoint's
    weights (recorded with ``"resumed": true``), then refreshes at the same multiples of
    ``refresh_steps`` as before; its record lists the refreshes of this process only.
    """

    def __init__(self, config: TrainConfig, encoder: TrainableEncoder, train: PairDataset, pairs: PreparedPairs,
                 first_slot: int, run_dir: Path, record: dict[str, Any]) -> None:
        block = config.hard_negatives or {}
        if block.get("refresh_steps") is None:
            raise TrainingError("HardNegativeRefresh needs hard_negatives.refresh_steps in the config")
        self.every = int(block["refresh_steps"])
        self.config = config
        self.encoder = encoder
        self.train = train
        self.pairs = pairs
        self.slots = np.arange(first_slot, len(pairs))
        self.tid_of = {item_key(item): t for t, item in enumerate(pairs.items)}
        self.path = run_dir / HARD_NEGATIVES_REFRESHED_FILE
        self.refreshes: list[dict[str, Any]] = record.setdefault("refreshes", [])

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001
        if 0 < state.global_step < state.max_steps:  # resumed: the slots hold the first set, mined at step 0
            self.refresh(state.global_step, resumed=True)

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
        step = state.global_step
        if step % self.every == 0 and step < state.max_steps:
            self.refresh(step)

    def refresh(self, step: int, *, resumed: bool = False) -> None:
        """Mine with the current weights (eval mode, no gradient) and overwrite the slots' negatives."""
        started = time.perf_counter()
        was_training = self.encoder.training
        self.encoder.eval()
        try:
            with torch.no_grad():
                mined = mine_train_negatives(self.config, self.train, self.encoder)
        finally:
            self.encoder.train(was_training)
        seconds = time.perf_counter() - started
        anchors, negatives = self._item_ids(mined)
        filled, counts = fill_slots(self.pairs.tid_a[self.slots], self.pairs.tid_b[self.slots], anchors, negatives)
        self.pairs.tid_b[self.slots] = filled  # PairRows reads these when it fetches a row
        entry: dict[str, Any] = {"step": step, "count": len(mined), "seconds": round(seconds, 2), **counts}
        if resumed:
            entry["resumed"] = True
        self.refreshes.append(entry)
        if is_main_process():
            mined.save(self.path)
        logger.info("hard negatives refreshed at step %d%s: %d mined in %.1f s, %d of %d pairs changed; saved to %s",
                    step, " (resumed)" if resumed else "", len(mined), seconds, counts["changed"], len(self.slots),
                    self.path)

    def _item_ids(self, mined: MinedNegatives) -> tuple[np.ndarray, np.ndarray]:
        """Unique-item ids of the mined anchors and negatives (hard negatives are texts: their keys are the texts)."""
        ids = []
        for texts in (mined.anchor_texts, mined.negative_texts):
            try:
                ids.append(np.fromiter((self.tid_of[item_key(t)] for t in texts), dtype=np.int64, count=len(texts)))
            except KeyError as exc:  # mining ran on the train pairs, so this is a bug, not bad input
                raise TrainingError(f"hard negatives refresh: mined item {exc.args[0]!r} is not a training item") from None
        return ids[0], ids[1]
