"""Loss registry: a name -> a pytorch-metric-learning loss (+ miner) on *raw* Lp distance.

Every loss measures distance with :func:`metric_sim.distances.pml_distance`
(``normalize_embeddings=False``), so training optimises exactly the distance that
the calibrator thresholds and the FAISS index searches.

Batches arrive de-duplicated: each *unique* text of a batch is embedded once
(QQP questions repeat across pairs), and a pair batch is described by indices
into that unique-text embedding matrix:

* ``idx_a[i]``, ``idx_b[i]``: rows of the two texts of pair ``i``;
* ``pair_labels[i]``: 1 = similar, 0 = not;
* ``text_labels[u]``: the cluster id of unique text ``u`` (union-find over the
  positive pairs of the whole training set, from :meth:`PairDataset.pair_cluster_labels`).

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

Margins and temperatures are in units of the chosen metric. The defaults assume a
unit-normalised encoder (all-MiniLM-L6-v2's default) and are given in Euclidean
units; for Manhattan they are multiplied by ``sqrt(2 * dim / pi)``, the ratio of
L1 to L2 norms of a random ``dim``-dimensional difference (15.6 for 384 dims; the
measured median ratio on QQP dev pairs is 15.55).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from metric_sim import distributed
from metric_sim._validation import require_choice
from metric_sim.distances import Metric, pml_distance

__all__ = [
    "LOSSES",
    "CrossRankLoss",
    "MergedBatch",
    "LossResult",
    "LossSpec",
    "MetricLoss",
    "build_loss",
    "count_usable",
    "default_loss_params",
    "label_masks",
    "list_losses",
    "manhattan_scale",
    "masks_to_pairs",
    "merge_batches",
    "pair_indices_tuple",
]

IndicesTuple = tuple[torch.Tensor, ...]


# --------------------------------------------------------------------------- tuple builders


def pair_indices_tuple(idx_a: torch.Tensor, idx_b: torch.Tensor, pair_labels: torch.Tensor) -> IndicesTuple:
    """``(a1, p, a2, n)`` of the explicit pairs: ``(a[pos], b[pos], a[neg], b[neg])``.

    With unique-text rows this is PML's ``(pos, pos + B, neg, neg + B)`` for
    ``cat([A, B])`` without embedding a repeated text twice. Pairs of a text with
    itself are dropped: their distance is 0 and cannot be changed.
    """
    idx_a, idx_b, pair_labels = _check_pairs(idx_a, idx_b, pair_labels)
    keep = idx_a != idx_b
    pos = keep & (pair_labels == 1)
    neg = keep & (pair_labels == 0)
    return idx_a[pos], idx_b[pos], idx_a[neg], idx_b[neg]


def label_masks(
    text_labels: torch.Tensor, idx_a: torch.Tensor, idx_b: torch.Tensor, pair_labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(positive, negative)`` boolean ``(U, U)`` masks over the unique texts of a batch.

    Same cluster -> positive, different cluster -> negative, diagonal neither. Explicit
    pairs override the clusters: a labelled non-duplicate is a negative even inside
    one cluster, and a labelled duplicate is a positive.
    """
    idx_a, idx_b, pair_labels = _check_pairs(idx_a, idx_b, pair_labels)
    if text_labels.ndim != 1:
        raise ValueError(f"text_labels must be 1-D (one cluster id per unique text), got shape {tuple(text_labels.shape)}")
    n = text_labels.shape[0]
    if idx_a.numel() and int(torch.maximum(idx_a, idx_b).max()) >= n:
        raise ValueError(f"pair indices must be < len(text_labels)={n}, got max {int(torch.maximum(idx_a, idx_b).max())}")
    same = text_labels.unsqueeze(0) == text_labels.unsqueeze(1)
    eye = torch.eye(n, dtype=torch.bool, device=text_labels.device)
    pos = same & ~eye
    neg = ~same
    for label, on, off in ((0, neg, pos), (1, pos, neg)):
        a, b = idx_a[pair_labels == label], idx_b[pair_labels == label]
        for x, y in ((a, b), (b, a)):
            on[x, y] = True
            off[x, y] = False
    pos &= ~eye
    neg &= ~eye
    return pos, neg


def masks_to_pairs(pos: torch.Tensor, neg: torch.Tensor) -> IndicesTuple:
    """``(a1, p, a2, n)`` listing every marked cell (both orders of each pair)."""
    a1, p = torch.where(pos)
    a2, n = torch.where(neg)
    return a1, p, a2, n


def pairs_to_triplets(indices_tuple: IndicesTuple) -> IndicesTuple:
    """``(a, p, n)`` for every positive and negative pair that share an anchor (PML's own rule)."""
    from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

    return lmu.convert_to_triplets(indices_tuple, labels=None)


def _check_pairs(idx_a: Any, idx_b: Any, pair_labels: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    idx_a, idx_b, pair_labels = (torch.as_tensor(x) for x in (idx_a, idx_b, pair_labels))
    for name, x in (("idx_a", idx_a), ("idx_b", idx_b), ("pair_labels", pair_labels)):
        if x.ndim != 1:
            raise ValueError(f"{name} must be 1-D, got shape {tuple(x.shape)}")
    if not (idx_a.shape == idx_b.shape == pair_labels.shape):
        raise ValueError(
            f"idx_a, idx_b and pair_labels must have the same length, got {idx_a.numel()}, {idx_b.numel()}, {pair_labels.numel()}"
        )
    if pair_labels.numel() and not bool(((pair_labels == 0) | (pair_labels == 1)).all()):
        raise ValueError(f"pair_labels must be 0/1, got values {sorted(set(pair_labels.tolist()))[:10]}")
    return idx_a.long(), idx_b.long(), pair_labels.long()


# --------------------------------------------------------------------------- usable-tuple counts


def _count_pairs(t: IndicesTuple) -> int:
    return len(t[0]) + len(t[2])


def _count_ntxent(t: IndicesTuple) -> int:
    a1, _, a2, _ = t
    return int(torch.isin(a1, a2).sum())  # positive pairs with a negative for the same anchor


def _count_supcon(t: IndicesTuple) -> int:
    a1, _, a2, _ = t
    return int(torch.isin(torch.unique(a1), a2).sum())  # anchors with a positive and a negative


def _avoid_single_pair_shortcut(t: IndicesTuple) -> IndicesTuple:
    """PML's GenericPairLoss returns 0 when every index tensor has at most one element
    (one positive and one negative pair, say). Listing each pair twice leaves every
    mean-reduced loss unchanged and keeps that lone pair in the loss."""
    if len(t) == 4 and any(len(x) for x in t) and all(len(x) <= 1 for x in t):
        return tuple(torch.cat([x, x]) for x in t)
    return t


def _count_triplets(t: IndicesTuple) -> int:
    return len(t[0])


def count_usable(kind_or_name: str, indices_tuple: IndicesTuple) -> int:
    """How many tuples of ``indices_tuple`` the named loss turns into a non-trivial loss term."""
    counter = _COUNTERS.get(kind_or_name) or _COUNTERS[LOSSES[kind_or_name].counter]
    return counter(indices_tuple)


_COUNTERS: dict[str, Callable[[IndicesTuple], int]] = {
    "pairs": _count_pairs,
    "ntxent": _count_ntxent,
    "supcon": _count_supcon,
    "triplets": _count_triplets,
}


# --------------------------------------------------------------------------- miners on explicit pairs


def hard_pairs(mat: torch.Tensor, indices_tuple: IndicesTuple) -> IndicesTuple:
    """sentence-transformers' ``OnlineContrastiveLoss`` rule on a batch of explicit pairs.

    Keep negatives closer than the farthest positive, and positives farther than the
    closest negative (with one pair or none on the other side, compare with the mean
    of the own side instead).
    """
    a1, p, a2, n = indices_tuple
    with torch.no_grad():
        poss, negs = mat[a1, p], mat[a2, n]
        if len(negs):
            neg_cut = poss.max() if len(poss) > 1 else negs.mean()
            keep_n = negs < neg_cut
        else:
            keep_n = torch.zeros(0, dtype=torch.bool, device=mat.device)
        if len(poss):
            pos_cut = negs.min() if len(negs) > 1 else poss.mean()
            keep_p = poss > pos_cut
        else:
            keep_p = torch.zeros(0, dtype=torch.bool, device=mat.device)
    return a1[keep_p], p[keep_p], a2[keep_n], n[keep_n]


def _restrict_to_masks(
    mined: IndicesTuple, pos: torch.Tensor, neg: torch.Tensor, same_cluster: torch.Tensor
) -> IndicesTuple:
    """Keep the miner's tuples that agree with the corrected masks, and add the explicit
    negatives inside one cluster that a label-only miner cannot see."""
    conflict = neg & same_cluster
    if len(mined) == 4:
        a1, p, a2, n = mined
        keep_p, keep_n = pos[a1, p], neg[a2, n]
        c_a, c_n = torch.where(conflict)
        return a1[keep_p], p[keep_p], torch.cat([a2[keep_n], c_a]), torch.cat([n[keep_n], c_n])
    a, p, n = mined
    keep = pos[a, p] & neg[a, n]
    extra = pairs_to_triplets((*torch.where(pos), *torch.where(conflict)))
    return tuple(torch.cat([x[keep], y]) for x, y in zip((a, p, n), extra, strict=True))


# --------------------------------------------------------------------------- registry


def manhattan_scale(embedding_dim: int) -> float:
    """Typical ``L1 / L2`` ratio of a ``dim``-dimensional difference vector: ``sqrt(2 dim / pi)``."""
    return math.sqrt(2.0 * embedding_dim / math.pi)


@dataclass(frozen=True)
class LossSpec:
    """One registry entry. ``distance_params`` scale with the metric; the rest do not,
    except ``inverse_params`` (weights multiplying a distance) which scale inversely."""

    name: str
    kind: str  # "pairs" | "labels" | "triplets"
    counter: str  # key of _COUNTERS
    description: str
    defaults: Mapping[str, Any]
    distance_params: tuple[str, ...] = ()
    inverse_params: tuple[str, ...] = ()
    miners: tuple[str | None, ...] = (None,)


def _contrastive(distance, p):
    from pytorch_metric_learning.losses import ContrastiveLoss

    return ContrastiveLoss(pos_margin=p["pos_margin"], neg_margin=p["neg_margin"], distance=distance)


def _triplet(distance, p):
    from pytorch_metric_learning.losses import TripletMarginLoss

    return TripletMarginLoss(margin=p["margin"], distance=distance, triplets_per_anchor="all")


def _multi_similarity(distance, p):
    from pytorch_metric_learning.losses import MultiSimilarityLoss

    return MultiSimilarityLoss(alpha=p["alpha"], beta=p["beta"], base=p["base"], distance=distance)


def _ntxent(distance, p):
    from pytorch_metric_learning.losses import NTXentLoss

    return NTXentLoss(temperature=p["temperature"], distance=distance)


def _supcon(distance, p):
    from pytorch_metric_learning.losses import SupConLoss

    return SupConLoss(temperature=p["temperature"], distance=distance)


def _miner(name: str | None, distance, p: Mapping[str, Any]):
    from pytorch_metric_learning import miners

    if name is None or name == "hard_pairs":
        return None
    if name == "batch_hard":
        return miners.BatchHardMiner(distance=distance)
    if name == "triplet_margin":
        return miners.TripletMarginMiner(margin=p["margin"], type_of_triplets="semihard", distance=distance)
    if name == "multi_similarity":
        return miners.MultiSimilarityMiner(epsilon=p["epsilon"], distance=distance)
    raise AssertionError(name)  # validated against LossSpec.miners before


LOSSES: dict[str, LossSpec] = {
    spec.name: spec
    for spec in (
        LossSpec(
            "contrastive",
            "pairs",
            "pairs",
            "ContrastiveLoss on the explicit pairs: relu(d - pos_margin) for duplicates, relu(neg_margin - d) for the rest",
            {"pos_margin": 0.0, "neg_margin": 0.8, "miner": None},
            distance_params=("pos_margin", "neg_margin"),
        ),
        LossSpec(
            "online_contrastive",
            "pairs",
            "pairs",
            "ContrastiveLoss on the hard explicit pairs of each batch (sentence-transformers' OnlineContrastiveLoss rule)",
            {"pos_margin": 0.0, "neg_margin": 0.8, "miner": "hard_pairs"},
            distance_params=("pos_margin", "neg_margin"),
            miners=("hard_pairs", None),
        ),
        LossSpec(
            "triplet",
            "triplets",
            "triplets",
            "TripletMarginLoss over anchors with a positive and a negative (explicit pairs + in-batch cluster negatives)",
            {"margin": 0.2, "miner": None},
            distance_params=("margin",),
            miners=(None, "batch_hard", "triplet_margin"),
        ),
        LossSpec(
            "multi_similarity",
            "labels",
            "pairs",
            "MultiSimilarityLoss over all in-batch pairs by cluster label, explicit non-duplicates kept negative",
            {"alpha": 2.0, "beta": 50.0, "base": 0.8, "epsilon": 0.1, "miner": None},
            distance_params=("base", "epsilon"),
            inverse_params=("alpha", "beta"),
            miners=(None, "multi_similarity"),
        ),
        LossSpec(
            "ntxent",
            "labels",
            "ntxent",
            "NTXentLoss (InfoNCE) with -distance / temperature as the logit; in-batch negatives by cluster label",
            {"temperature": 0.05, "miner": None},
            distance_params=("temperature",),
        ),
        LossSpec(
            "supcon",
            "labels",
            "supcon",
            "SupConLoss with -distance / temperature as the logit; all same-cluster texts of the batch are positives",
            {"temperature": 0.1, "miner": None},
            distance_params=("temperature",),
        ),
    )
}
_BUILDERS = {
    "contrastive": _contrastive,
    "online_contrastive": _contrastive,
    "triplet": _triplet,
    "multi_similarity": _multi_similarity,
    "ntxent": _ntxent,
    "supcon": _supcon,
}


def list_losses() -> list[str]:
    return sorted(LOSSES)


def _spec(name: Any) -> LossSpec:
    if not isinstance(name, str) or name not in LOSSES:
        raise ValueError(f"loss must be one of {list_losses()}, got {name!r}")
    return LOSSES[name]


def default_loss_params(name: str, metric: Metric | str, embedding_dim: int) -> dict[str, Any]:
    """The defaults of loss ``name`` in units of ``metric`` for ``embedding_dim``-dimensional embeddings."""
    spec = _spec(name)
    metric = Metric.parse(metric)
    scale = 1.0 if metric is Metric.EUCLIDEAN else manhattan_scale(embedding_dim)
    params = dict(spec.defaults)
    for key in spec.distance_params:
        params[key] = params[key] * scale
    for key in spec.inverse_params:
        params[key] = params[key] / scale
    return params


def _resolve_params(spec: LossSpec, metric: Metric, embedding_dim: int, params: Mapping[str, Any] | None) -> dict[str, Any]:
    resolved = default_loss_params(spec.name, metric, embedding_dim)
    given = dict(params or {})
    unknown = sorted(set(given) - set(resolved))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for loss {spec.name!r}; valid: {sorted(resolved)}")
    for key, value in given.items():
        if key == "miner":
            require_choice(f"miner of loss {spec.name!r}", value, spec.miners)
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise TypeError(f"loss parameter {key!r} must be a finite number, got {value!r}")
        elif value < 0 or (value == 0 and key not in ("pos_margin",)):
            raise ValueError(f"loss parameter {key!r} must be {'>= 0' if key == 'pos_margin' else '> 0'}, got {value!r}")
        resolved[key] = value if key == "miner" else float(value)
    if {"pos_margin", "neg_margin"} <= set(resolved) and resolved["pos_margin"] >= resolved["neg_margin"]:
        raise ValueError(
            f"pos_margin must be smaller than neg_margin, got {resolved['pos_margin']} and {resolved['neg_margin']}"
        )
    return resolved


@dataclass
class LossResult:
    """The loss of one batch plus how many tuples fed it.

    ``tuples`` counts the usable tuples before mining (0 means the batch *cannot*
    give a loss: a data problem); ``mined`` counts those left after mining (0 means
    every tuple was already easy, which is fine).
    """

    loss: torch.Tensor
    tuples: int
    mined: int


class MetricLoss(nn.Module):
    """A registry loss bound to a metric: ``loss_fn(embeddings, idx_a, idx_b, pair_labels, text_labels)``."""

    def __init__(self, name: str, metric: Metric | str, params: Mapping[str, Any], embedding_dim: int) -> None:
        super().__init__()
        self.spec = _spec(name)
        self.name = name
        self.metric = Metric.parse(metric)
        self.embedding_dim = embedding_dim
        self.params = _resolve_params(self.spec, self.metric, embedding_dim, params)
        self.distance = pml_distance(self.metric)
        self.loss = _BUILDERS[name](self.distance, self.params)
        self.miner = _miner(self.params.get("miner"), self.distance, self.params)

    @property
    def needs_labels(self) -> bool:
        return self.spec.kind != "pairs"

    def extra_repr(self) -> str:
        return f"name={self.name!r}, metric={self.metric.value!r}, params={self.params}"

    def indices_tuple(
        self,
        idx_a: torch.Tensor,
        idx_b: torch.Tensor,
        pair_labels: torch.Tensor,
        text_labels: torch.Tensor | None = None,
    ) -> IndicesTuple:
        """The candidate tuples of a batch before mining (see the module docstring)."""
        if self.spec.kind == "pairs":
            return pair_indices_tuple(idx_a, idx_b, pair_labels)
        if text_labels is None:
            raise ValueError(f"loss {self.name!r} is label-based: pass text_labels (cluster id of each unique text)")
        pairs = masks_to_pairs(*label_masks(text_labels, idx_a, idx_b, pair_labels))
        return pairs_to_triplets(pairs) if self.spec.kind == "triplets" else pairs

    def forward(
        self,
        embeddings: torch.Tensor,
        idx_a: torch.Tensor,
        idx_b: torch.Tensor,
        pair_labels: torch.Tensor,
        text_labels: torch.Tensor | None = None,
    ) -> LossResult:
        if embeddings.ndim != 2:
            raise ValueError(f"embeddings must be 2-D (unique texts, dim), got shape {tuple(embeddings.shape)}")
        device = embeddings.device
        idx_a, idx_b, pair_labels = (torch.as_tensor(x, device=device) for x in (idx_a, idx_b, pair_labels))
        if text_labels is not None:
            text_labels = torch.as_tensor(text_labels, device=device)
            if text_labels.shape[0] != embeddings.shape[0]:
                raise ValueError(
                    f"text_labels has {text_labels.shape[0]} entries for {embeddings.shape[0]} embedded texts"
                )
        candidates = self.indices_tuple(idx_a, idx_b, pair_labels, text_labels)
        tuples = count_usable(self.spec.counter, candidates)
        mined = candidates
        miner_name = self.params.get("miner")
        if tuples and miner_name == "hard_pairs":
            mined = hard_pairs(self.distance(embeddings), candidates)
        elif tuples and self.miner is not None:
            pos, neg = label_masks(text_labels, idx_a, idx_b, pair_labels)
            same = text_labels.unsqueeze(0) == text_labels.unsqueeze(1)
            mined = _restrict_to_masks(self.miner(embeddings, text_labels), pos, neg, same)
        n_mined = count_usable(self.spec.counter, mined) if tuples else 0
        # PML gives a zero that keeps the graph (sum(embeddings * 0)) for an empty tuple.
        loss = self.loss(embeddings, indices_tuple=_avoid_single_pair_shortcut(mined))
        return LossResult(loss=loss, tuples=tuples, mined=n_mined)


def build_loss(
    name: str, metric: Metric | str, *, embedding_dim: int, params: Mapping[str, Any] | None = None
) -> MetricLoss:
    """The registry loss ``name`` on raw ``metric`` distance; ``params`` override the metric's defaults.

    Unknown names or parameters raise ``ValueError`` listing the valid ones.
    """
    if isinstance(embedding_dim, bool) or not isinstance(embedding_dim, int) or embedding_dim <= 0:
        raise ValueError(f"embedding_dim must be a positive integer, got {embedding_dim!r}")
    return MetricLoss(name, metric, params or {}, embedding_dim)


# --------------------------------------------------------------------------- several ranks


@dataclass
class MergedBatch:
    """Several ranks' batches as one: ``rows`` picks the gathered embedding row of each unique text."""

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
    of its unique texts (rows of its embedding matrix), ``idx_a``/``idx_b`` pair rows into
    it. A text on several ranks keeps one row (its first), and the unique texts come in
    ascending id order, which is exactly the batch one process would collate from all
    the pairs (``PairCollator`` sorts by id too), so the loss and its miners see the same batch.
    """
    sizes = [int(t.shape[0]) for t in text_ids]
    if [int(t.shape[0]) for t in text_labels] != sizes:
        raise ValueError(f"text_labels sizes {[int(t.shape[0]) for t in text_labels]} differ from text_ids sizes {sizes}")
    all_ids = torch.cat(text_ids)
    unique, inverse = torch.unique(all_ids, sorted=True, return_inverse=True)
    positions = torch.arange(all_ids.shape[0], device=all_ids.device)
    first = torch.full((unique.shape[0],), all_ids.shape[0], dtype=torch.long, device=all_ids.device)
    first = first.scatter_reduce(0, inverse, positions, reduce="amin")
    labels = torch.cat(text_labels)
    if not torch.equal(labels, labels[first][inverse]):
        raise ValueError("the same text has different cluster labels on different ranks")
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
        if not distributed.is_distributed():
            return self.loss(embeddings, idx_a, idx_b, pair_labels, text_labels)
        if text_ids is None:
            raise ValueError("several ranks: pass text_ids (the global id of each unique text) to merge their batches")
        device = embeddings.device
        as_long = [torch.as_tensor(x, device=device).long() for x in (text_ids, text_labels, idx_a, idx_b, pair_labels)]
        texts = torch.stack(as_long[:2], dim=1)  # one gather for the (id, cluster) of each unique text
        pairs = torch.stack(as_long[2:], dim=1)  # and one for (a, b, label) of each pair
        gathered, _ = distributed.gather_rows(embeddings, grad_scale=float(distributed.world_size()))
        text_parts = distributed.all_gather_varlen(texts)
        pair_parts = distributed.all_gather_varlen(pairs)
        merged = merge_batches([t[:, 0] for t in text_parts], [p[:, 0] for p in pair_parts],
                               [p[:, 1] for p in pair_parts], [p[:, 2] for p in pair_parts],
                               [t[:, 1] for t in text_parts])
        return self.loss(gathered[merged.rows], merged.idx_a, merged.idx_b, merged.pair_labels, merged.text_labels)
