""":class:`MetricLoss`: a registry loss bound to a metric, applied to one de-duplicated batch."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from metric_sim.distances import Metric, pml_distance
from metric_sim.errors import InvalidArgumentError
from metric_sim.losses.registry import build_miner, loss_spec, resolve_loss_params
from metric_sim.losses.tuples import (
    IndicesTuple,
    avoid_single_pair_shortcut,
    hard_pairs,
    label_masks,
    masks_to_pairs,
    pair_indices_tuple,
    pairs_to_triplets,
    restrict_to_masks,
)

__all__ = ["LossResult", "MetricLoss", "build_loss"]


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
        self.spec = loss_spec(name)
        self.name = name
        self.metric = Metric.parse(metric)
        self.embedding_dim = embedding_dim
        self.params = resolve_loss_params(self.spec, self.metric, embedding_dim, params)
        self.distance = pml_distance(self.metric)
        self.loss = self.spec.build(self.distance, self.params)
        self.miner = build_miner(self.params.get("miner"), self.distance, self.params)

    @property
    def needs_labels(self) -> bool:
        return self.spec.kind != "pairs"

    @property
    def auxiliary_terms(self) -> tuple[tuple[MetricLoss, float], ...]:
        """``(loss, weight)`` pairs added to this loss on the same batch: none here (see ``CompositeLoss``)."""
        return ()

    def describe_auxiliaries(self) -> list[dict[str, Any]]:
        """``[{loss, weight, loss_params}, ...]`` with each auxiliary loss's resolved parameters; ``[]`` for none."""
        return [{"loss": loss.name, "weight": weight, "loss_params": dict(loss.params)}
                for loss, weight in self.auxiliary_terms]

    def extra_repr(self) -> str:
        return f"name={self.name!r}, metric={self.metric.value!r}, params={self.params}"

    def count_usable(self, indices_tuple: IndicesTuple) -> int:
        """Tuples of ``indices_tuple`` that give this loss a non-trivial term."""
        return self.spec.count(indices_tuple)

    def indices_tuple(
        self,
        idx_a: torch.Tensor,
        idx_b: torch.Tensor,
        pair_labels: torch.Tensor,
        text_labels: torch.Tensor | None = None,
    ) -> IndicesTuple:
        """The candidate tuples of a batch before mining (see :mod:`metric_sim.losses`)."""
        if self.spec.kind == "pairs":
            return pair_indices_tuple(idx_a, idx_b, pair_labels)
        if text_labels is None:
            raise InvalidArgumentError(
                f"loss {self.name!r} is label-based: pass text_labels (cluster id of each unique text)"
            )
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
            raise InvalidArgumentError(
                f"embeddings must be 2-D (unique texts, dim), got shape {tuple(embeddings.shape)}"
            )
        device = embeddings.device
        idx_a, idx_b, pair_labels = (torch.as_tensor(x, device=device) for x in (idx_a, idx_b, pair_labels))
        if text_labels is not None:
            text_labels = torch.as_tensor(text_labels, device=device)
            if text_labels.shape[0] != embeddings.shape[0]:
                raise InvalidArgumentError(
                    f"text_labels has {text_labels.shape[0]} entries for {embeddings.shape[0]} embedded texts"
                )
        candidates = self.indices_tuple(idx_a, idx_b, pair_labels, text_labels)
        tuples = self.count_usable(candidates)
        mined = candidates
        miner_name = self.params.get("miner")
        if tuples and miner_name == "hard_pairs":
            mined = hard_pairs(self.distance(embeddings), candidates)
        elif tuples and self.miner is not None:
            pos, neg = label_masks(text_labels, idx_a, idx_b, pair_labels)
            same = text_labels.unsqueeze(0) == text_labels.unsqueeze(1)
            mined = restrict_to_masks(self.miner(embeddings, text_labels), pos, neg, same)
        n_mined = self.count_usable(mined) if tuples else 0
        # PML gives a zero that keeps the graph (sum(embeddings * 0)) for an empty tuple.
        loss = self.loss(embeddings, indices_tuple=avoid_single_pair_shortcut(mined))
        return LossResult(loss=loss, tuples=tuples, mined=n_mined)


def build_loss(
    name: str, metric: Metric | str, *, embedding_dim: int, params: Mapping[str, Any] | None = None
) -> MetricLoss:
    """The registry loss ``name`` on raw ``metric`` distance; ``params`` override the metric's defaults.

    Unknown names or parameters raise ``InvalidArgumentError`` (a ``ValueError``) listing the valid ones.
    """
    if isinstance(embedding_dim, bool) or not isinstance(embedding_dim, int) or embedding_dim <= 0:
        raise InvalidArgumentError(f"embedding_dim must be a positive integer, got {embedding_dim!r}")
    return MetricLoss(name, metric, params or {}, embedding_dim)
