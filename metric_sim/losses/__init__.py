"""Metric-learning losses: a name -> a pytorch-metric-learning loss (+ miner) on *raw* Lp distance.

Every loss measures distance with :func:`metric_sim.distances.pml_distance`
(``normalize_embeddings=False``), so training optimises exactly the distance that
the calibrator thresholds and the FAISS index searches.

Batches arrive de-duplicated: each *unique* item (text) of a batch is embedded once
(QQP questions repeat across pairs), and a pair batch is described by indices
into that unique-item embedding matrix:

* ``idx_a[i]``, ``idx_b[i]``: rows of the two items of pair ``i``;
* ``pair_labels[i]``: 1 = similar, 0 = not;
* ``text_labels[u]``: the cluster id of unique item ``u`` (the one cluster rule of
  :mod:`metric_sim.clusters` over the whole training set: positive pairs join, and
  identical items are one).

Three kinds of loss use these differently:

``pairs``     the explicit pairs only: ``indices_tuple = (a[pos], b[pos], a[neg], b[neg])``.
``labels``    every pair of unique texts in the batch: same cluster -> positive,
              different cluster -> negative (in-batch negatives), *and* every
              explicit non-duplicate pair stays a negative even when the clusters
              say otherwise (QQP's labels are not transitive).
``triplets``  ``(anchor, positive, negative)`` from the ``labels`` pairs that share an
              anchor: anchors with an explicit positive and negative, plus in-batch negatives.

Under torchrun, :class:`CrossRankLoss` rebuilds the union of every rank's batch
(re-indexing each rank's pairs into the gathered unique-text matrix) and applies
the same loss to it, so in-batch negatives, label-based pairs and miners see all
ranks, exactly as one process with the whole batch would.

A training run may add weighted auxiliary losses to its main one (``auxiliary_losses``):
:class:`CompositeLoss` computes ``main + sum(weight_i * auxiliary_i)`` on the same batch
embeddings, and reports the main loss's tuple counts.

Modules: :mod:`.registry` (one :class:`LossSpec` per loss; no torch), :mod:`.tuples`
(candidate tuples and miners' filters), :mod:`.loss` (:class:`MetricLoss`, :func:`build_loss`),
:mod:`.composite` (:class:`CompositeLoss`, :func:`build_loss_with_auxiliaries`),
:mod:`.cross_rank` (:class:`CrossRankLoss`). ``import metric_sim.losses`` loads the registry
only; the torch-based names load on first use.

Margins and temperatures are in units of the chosen metric. The defaults assume a
unit-normalised encoder (all-MiniLM-L6-v2's default) and are given in Euclidean
units; for Manhattan they are multiplied by ``sqrt(2 * dim / pi)``, the ratio of
L1 to L2 norms of a random ``dim``-dimensional difference (15.6 for 384 dims; the
measured median ratio on QQP dev pairs is 15.55).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from metric_sim.lazy import lazy_attributes
from metric_sim.losses.registry import (
    AUXILIARY_KEYS,
    LOSSES,
    LossSpec,
    count_usable,
    default_loss_params,
    list_losses,
    loss_spec,
    manhattan_scale,
)

if TYPE_CHECKING:
    from metric_sim.losses.composite import CompositeLoss, build_loss_with_auxiliaries
    from metric_sim.losses.cross_rank import CrossRankLoss, MergedBatch, merge_batches
    from metric_sim.losses.loss import LossResult, MetricLoss, build_loss
    from metric_sim.losses.tuples import label_masks, masks_to_pairs, pair_indices_tuple

__all__ = [
    "AUXILIARY_KEYS",
    "LOSSES",
    "CompositeLoss",
    "CrossRankLoss",
    "LossResult",
    "LossSpec",
    "MergedBatch",
    "MetricLoss",
    "build_loss",
    "build_loss_with_auxiliaries",
    "count_usable",
    "default_loss_params",
    "label_masks",
    "list_losses",
    "loss_spec",
    "manhattan_scale",
    "masks_to_pairs",
    "merge_batches",
    "pair_indices_tuple",
]

# torch-based names -> the submodule that defines them (imported on first use)
_LAZY = {
    "CompositeLoss": "metric_sim.losses.composite",
    "build_loss_with_auxiliaries": "metric_sim.losses.composite",
    "CrossRankLoss": "metric_sim.losses.cross_rank",
    "MergedBatch": "metric_sim.losses.cross_rank",
    "merge_batches": "metric_sim.losses.cross_rank",
    "LossResult": "metric_sim.losses.loss",
    "MetricLoss": "metric_sim.losses.loss",
    "build_loss": "metric_sim.losses.loss",
    "IndicesTuple": "metric_sim.losses.tuples",
    "hard_pairs": "metric_sim.losses.tuples",
    "label_masks": "metric_sim.losses.tuples",
    "masks_to_pairs": "metric_sim.losses.tuples",
    "pair_indices_tuple": "metric_sim.losses.tuples",
    "pairs_to_triplets": "metric_sim.losses.tuples",
    "restrict_to_masks": "metric_sim.losses.tuples",
}


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())
