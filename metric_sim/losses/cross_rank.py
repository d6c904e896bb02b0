"""The loss over every rank's batch under torchrun: merge de-duplicated batches, scale the gradient."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from metric_sim.distributed import all_gather_varlen, gather_rows, is_distributed, world_size
from metric_sim.errors import InvalidArgumentError
from metric_sim.losses.loss import LossResult, MetricLoss

__all__ = ["CrossRankLoss", "MergedBatch", "merge_batches"]


@dataclass
class MergedBatch:
    """Several ranks' batches as one: ``rows`` picks the gathered embedding row of each unique item."""

    rows: torch.Tensor
    idx_a: torch.Tensor
    idx_b: torch.Tensor
    pair_labels: torch.Tensor
    text_labels: torch.Tensor


def merge_batches(
    text_ids: list[torch.Tensor],
    idx_a: list[torch.Tensor],
    idx_b: list[torch.Tensor],
    pair_labels: list[torch.Tensor],
    text_labels: list[torch.Tensor],
) -> MergedBatch:
    """Re-index per-rank de-duplicated batches into one batch over their concatenated rows.

    Element ``r`` of each list is rank ``r``'s batch: ``text_ids`` the global id of each
    of its unique items (rows of its embedding matrix), ``idx_a``/``idx_b`` pair rows into
    it. An item on several ranks keeps one row (its first), and the unique items come in
    ascending id order, which is exactly the batch one process would collate from all
    the pairs (``PairCollator`` sorts by id too), so the loss and its miners see the same batch.
    """
    sizes = [int(t.shape[0]) for t in text_ids]
    if [int(t.shape[0]) for t in text_labels] != sizes:
        raise InvalidArgumentError(
            f"text_labels sizes {[int(t.shape[0]) for t in text_labels]} differ from text_ids sizes {sizes}"
        )
    all_ids = torch.cat(text_ids)
    unique, inverse = torch.unique(all_ids, sorted=True, return_inverse=True)
    positions = torch.arange(all_ids.shape[0], device=all_ids.device)
    first = torch.full((unique.shape[0],), all_ids.shape[0], dtype=torch.long, device=all_ids.device)
    first = first.scatter_reduce(0, inverse, positions, reduce="amin")
    labels = torch.cat(text_labels)
    if not torch.equal(labels, labels[first][inverse]):
        raise InvalidArgumentError("the same text has different cluster labels on different ranks")
    offsets = [sum(sizes[:r]) for r in range(len(sizes))]
    ia = torch.cat([inverse[off + a.long()] for off, a in zip(offsets, idx_a, strict=True)])
    ib = torch.cat([inverse[off + b.long()] for off, b in zip(offsets, idx_b, strict=True)])
    return MergedBatch(first, ia, ib, torch.cat(pair_labels), labels[first])


class CrossRankLoss(nn.Module):
    """A :class:`MetricLoss` over the union of every rank's batch (torchrun / DDP).

    Each rank gathers all ranks' embeddings and pair structure, rebuilds the batch one
    process would see (:func:`merge_batches`) and computes the *same* loss on it, with
    the same mining: explicit pairs from other ranks, in-batch negatives across ranks
    and hard-pair mining over the whole batch.

    Gradient scaling: the loss value is the whole-batch loss ``L`` on every rank, but
    each rank can differentiate only its own rows (the gathered ones are constants).
    DDP then *averages* the ranks' gradients, i.e. ``(1/W) * sum_r dL/d(rows of r)``, which is
    ``1/W`` of the whole-batch gradient. So the local rows' gradient is multiplied by the
    world size ``W`` (the value is unchanged, so the logged loss stays comparable with one
    process): one step of ``W`` ranks x ``B`` pairs then equals one step of one process with
    ``W * B`` pairs. pytorch-metric-learning's ``DistributedLossWrapper`` scales the same way
    (``loss * world_size``), but it needs equally sized batches on every rank and does not
    gather ``indices_tuple``; ours are de-duplicated (sizes differ) and built from pairs.

    With one process this is the wrapped loss, unchanged.
    """

    def __init__(self, loss: MetricLoss) -> None:
        super().__init__()
        self.loss = loss

    def forward(
        self,
        embeddings: torch.Tensor,
        idx_a: torch.Tensor,
        idx_b: torch.Tensor,
        pair_labels: torch.Tensor,
        text_labels: torch.Tensor,
        text_ids: torch.Tensor | None = None,
    ) -> LossResult:
        if not is_distributed():
            return self.loss(embeddings, idx_a, idx_b, pair_labels, text_labels)
        if text_ids is None:
            raise InvalidArgumentError(
                "several ranks: pass text_ids (the global id of each unique text) to merge their batches"
            )
        device = embeddings.device
        as_long = [torch.as_tensor(x, device=device).long() for x in (text_ids, text_labels, idx_a, idx_b, pair_labels)]
        items = torch.stack(as_long[:2], dim=1)  # one gather for the (id, cluster) of each unique item
        pairs = torch.stack(as_long[2:], dim=1)  # and one for (a, b, label) of each pair
        gathered, _ = gather_rows(embeddings, grad_scale=float(world_size()))
        item_parts = all_gather_varlen(items)
        pair_parts = all_gather_varlen(pairs)
        merged = merge_batches([t[:, 0] for t in item_parts], [p[:, 0] for p in pair_parts],
                               [p[:, 1] for p in pair_parts], [p[:, 2] for p in pair_parts],
                               [t[:, 1] for t in item_parts])
        return self.loss(gathered[merged.rows], merged.idx_a, merged.idx_b, merged.pair_labels, merged.text_labels)
