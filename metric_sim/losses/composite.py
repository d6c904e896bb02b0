""":class:`CompositeLoss`: a main loss plus weighted auxiliary losses on the same batch embeddings.

The total is ``main + sum(weight_i * auxiliary_i)``, every term computed on the same
de-duplicated batch (pytorch-metric-learning's ``MultipleLosses`` for one batch; what
sentence-transformers does when it trains ``OnlineContrastiveLoss`` and
``MultipleNegativesRankingLoss`` together on Quora duplicates). The composite *is* the
main :class:`MetricLoss` (its name, parameters, candidate tuples and counts), so the
zero-loss guard and the pre-flight check keep reading the main loss alone; only
``needs_labels`` and the value change. Under torchrun :class:`CrossRankLoss` hands it the
merged batch of every rank, and each term sees that batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from metric_sim.distances import Metric
from metric_sim.errors import InvalidArgumentError, InvalidArgumentTypeError
from metric_sim.losses.loss import LossResult, MetricLoss, build_loss
from metric_sim.losses.registry import validate_auxiliary_loss, validate_auxiliary_weight

__all__ = ["CompositeLoss", "build_loss_with_auxiliaries"]


class CompositeLoss(MetricLoss):
    """The registry loss ``name`` plus ``auxiliaries``: ``(MetricLoss, weight)`` pairs on the same metric."""

    def __init__(self, name: str, metric: Metric | str, params: Mapping[str, Any], embedding_dim: int,
                 auxiliaries: Sequence[tuple[MetricLoss, float]]) -> None:
        super().__init__(name, metric, params, embedding_dim)
        if not auxiliaries:
            raise InvalidArgumentError("CompositeLoss needs at least one auxiliary loss (without one, use MetricLoss)")
        for i, (loss, _) in enumerate(auxiliaries):
            if not isinstance(loss, MetricLoss) or isinstance(loss, CompositeLoss):
                raise InvalidArgumentTypeError(f"auxiliaries[{i}] must be a MetricLoss, got {type(loss).__name__}")
            if loss.metric is not self.metric or loss.embedding_dim != embedding_dim:
                raise InvalidArgumentError(
                    f"auxiliaries[{i}] ({loss.name!r}) is on {loss.metric.value} distance of {loss.embedding_dim} dims, "
                    f"the main loss on {self.metric.value} of {embedding_dim}: every term must measure the same distance"
                )
        self.auxiliaries = nn.ModuleList(loss for loss, _ in auxiliaries)
        self.weights = tuple(validate_auxiliary_weight(weight, where=f"auxiliaries[{i}].weight")
                             for i, (_, weight) in enumerate(auxiliaries))

    @property
    def needs_labels(self) -> bool:
        # An auxiliary label-based loss (ntxent) wants cluster batches even when the main one reads pairs only.
        return super().needs_labels or any(loss.needs_labels for loss in self.auxiliaries)

    @property
    def auxiliary_terms(self) -> tuple[tuple[MetricLoss, float], ...]:
        return tuple(zip(self.auxiliaries, self.weights, strict=True))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, weights={list(self.weights)}"

    def forward(
        self,
        embeddings: torch.Tensor,
        idx_a: torch.Tensor,
        idx_b: torch.Tensor,
        pair_labels: torch.Tensor,
        text_labels: torch.Tensor | None = None,
    ) -> LossResult:
        main = super().forward(embeddings, idx_a, idx_b, pair_labels, text_labels)
        total = main.loss
        for loss, weight in self.auxiliary_terms:
            total = total + weight * loss(embeddings, idx_a, idx_b, pair_labels, text_labels).loss
        # tuples / mined stay the main loss's: a batch the main loss cannot use is still a data problem.
        return LossResult(loss=total, tuples=main.tuples, mined=main.mined)


def build_loss_with_auxiliaries(
    name: str,
    metric: Metric | str,
    *,
    embedding_dim: int,
    params: Mapping[str, Any] | None = None,
    auxiliaries: Sequence[Mapping[str, Any]] = (),
) -> MetricLoss:
    """:func:`build_loss` for the main loss, plus ``auxiliaries`` (``{loss, weight, loss_params}`` mappings).

    Without auxiliaries this is exactly :func:`build_loss` (a plain :class:`MetricLoss`);
    with some, a :class:`CompositeLoss` whose value is ``main + sum(weight * auxiliary)``.
    Each auxiliary loss is built on ``metric`` with its own ``loss_params`` over that
    metric's defaults. Bad entries raise ``InvalidArgumentError`` naming ``auxiliaries[i]``.
    """
    if not auxiliaries:
        return build_loss(name, metric, embedding_dim=embedding_dim, params=params)
    built = []
    for i, entry in enumerate(auxiliaries):
        checked = validate_auxiliary_loss(entry, metric, where=f"auxiliaries[{i}]", embedding_dim=embedding_dim)
        loss = build_loss(checked["loss"], metric, embedding_dim=embedding_dim, params=checked["loss_params"])
        built.append((loss, checked["weight"]))
    return CompositeLoss(name, metric, params or {}, embedding_dim, built)
