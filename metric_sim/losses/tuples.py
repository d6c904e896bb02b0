"""The candidate tuples of a de-duplicated batch: explicit pairs, label masks, triplets, hard pairs.

A batch is described by indices into its unique-item embedding matrix (see
:mod:`metric_sim.losses`): ``idx_a``/``idx_b`` the rows of each pair, ``pair_labels``
1 = similar, and ``text_labels`` the cluster id of each unique item. The functions here
turn that into PML ``indices_tuple`` s (``(a1, p, a2, n)`` pairs or ``(a, p, n)``
triplets) and filter them (hard-pair mining, agreement with the explicit labels).
"""

from __future__ import annotations

from typing import Any

import torch

from metric_sim.errors import InvalidArgumentError

__all__ = [
    "IndicesTuple",
    "avoid_single_pair_shortcut",
    "check_pairs",
    "hard_pairs",
    "label_masks",
    "masks_to_pairs",
    "pair_indices_tuple",
    "pairs_to_triplets",
    "restrict_to_masks",
]

IndicesTuple = tuple[torch.Tensor, ...]


def check_pairs(idx_a: Any, idx_b: Any, pair_labels: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The three pair tensors as 1-D int64 of one length, labels 0/1; else InvalidArgumentError."""
    idx_a, idx_b, pair_labels = (torch.as_tensor(x) for x in (idx_a, idx_b, pair_labels))
    for name, x in (("idx_a", idx_a), ("idx_b", idx_b), ("pair_labels", pair_labels)):
        if x.ndim != 1:
            raise InvalidArgumentError(f"{name} must be 1-D, got shape {tuple(x.shape)}")
    if not (idx_a.shape == idx_b.shape == pair_labels.shape):
        raise InvalidArgumentError(
            f"idx_a, idx_b and pair_labels must have the same length, got {idx_a.numel()}, {idx_b.numel()}, {pair_labels.numel()}"
        )
    if pair_labels.numel() and not bool(((pair_labels == 0) | (pair_labels == 1)).all()):
        raise InvalidArgumentError(f"pair_labels must be 0/1, got values {sorted(set(pair_labels.tolist()))[:10]}")
    return idx_a.long(), idx_b.long(), pair_labels.long()


def pair_indices_tuple(idx_a: torch.Tensor, idx_b: torch.Tensor, pair_labels: torch.Tensor) -> IndicesTuple:
    """``(a1, p, a2, n)`` of the explicit pairs: ``(a[pos], b[pos], a[neg], b[neg])``.

    With unique-item rows this is PML's ``(pos, pos + B, neg, neg + B)`` for
    ``cat([A, B])`` without embedding a repeated item twice. Pairs of an item with
    itself are dropped: their distance is 0 and cannot be changed.
    """
    idx_a, idx_b, pair_labels = check_pairs(idx_a, idx_b, pair_labels)
    keep = idx_a != idx_b
    pos = keep & (pair_labels == 1)
    neg = keep & (pair_labels == 0)
    return idx_a[pos], idx_b[pos], idx_a[neg], idx_b[neg]


def label_masks(
    text_labels: torch.Tensor, idx_a: torch.Tensor, idx_b: torch.Tensor, pair_labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(positive, negative)`` boolean ``(U, U)`` masks over the unique items of a batch.

    Same cluster -> positive, different cluster -> negative, diagonal neither. Explicit
    pairs override the clusters: a labelled non-duplicate is a negative even inside
    one cluster, and a labelled duplicate is a positive.
    """
    idx_a, idx_b, pair_labels = check_pairs(idx_a, idx_b, pair_labels)
    if text_labels.ndim != 1:
        raise InvalidArgumentError(
            f"text_labels must be 1-D (one cluster id per unique text), got shape {tuple(text_labels.shape)}"
        )
    n = text_labels.shape[0]
    if idx_a.numel() and int(torch.maximum(idx_a, idx_b).max()) >= n:
        raise InvalidArgumentError(
            f"pair indices must be < len(text_labels)={n}, got max {int(torch.maximum(idx_a, idx_b).max())}"
        )
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


def avoid_single_pair_shortcut(t: IndicesTuple) -> IndicesTuple:
    """PML's GenericPairLoss returns 0 when every index tensor has at most one element
    (one positive and one negative pair, say). Listing each pair twice leaves every
    mean-reduced loss unchanged and keeps that lone pair in the loss."""
    if len(t) == 4 and any(len(x) for x in t) and all(len(x) <= 1 for x in t):
        return tuple(torch.cat([x, x]) for x in t)
    return t


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


def restrict_to_masks(
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
