""":class:`PairRankingLoss`: every similar pair of a batch ranked closer than every dissimilar one.

``log(1 + sum_{i similar, j dissimilar} exp((d_i - d_j) / temperature))`` over the explicit
pairs of a batch, ``d`` the raw distance of each pair. This is the CoSENT loss (Su 2022;
sentence-transformers' ``CoSENTLoss``) with the pair's negated raw distance as its score
instead of a cosine. Unlike a contrastive loss it has no absolute margin: it orders pairs
*across* the batch, which is what average precision over pairs measures.

Hand-written because neither library has it on raw distance: sentence-transformers' loss
reads cosine scores only, and pytorch-metric-learning's pair losses (``CircleLoss`` the
nearest) compare pairs that share an anchor, which explicit pairs (most QQP questions occur
in one pair) rarely do.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from metric_sim.errors import InvalidArgumentError

__all__ = ["PairRankingLoss"]


class PairRankingLoss(nn.Module):
    """CoSENT on raw distance, called like a pytorch-metric-learning loss with pair ``indices_tuple``."""

    def __init__(self, temperature: float, distance: Any) -> None:
        super().__init__()
        if not temperature > 0:
            raise InvalidArgumentError(f"temperature must be > 0, got {temperature!r}")
        self.temperature = float(temperature)
        self.distance = distance

    def forward(self, embeddings: torch.Tensor, labels: Any = None, indices_tuple: Any = None) -> torch.Tensor:
        if indices_tuple is None or len(indices_tuple) != 4:
            raise InvalidArgumentError("PairRankingLoss reads explicit pairs: pass indices_tuple=(a1, p, a2, n)")
        a1, p, a2, n = indices_tuple
        if len(a1) == 0 or len(a2) == 0:
            # Nothing to order; a zero that keeps the graph, as pytorch-metric-learning returns.
            return torch.sum(embeddings * 0)
        mat = self.distance(embeddings)
        positive, negative = mat[a1, p], mat[a2, n]
        gaps = (positive.unsqueeze(1) - negative.unsqueeze(0)).flatten() / self.temperature
        # log(1 + sum exp(gaps)): the leading 0 is the "1", logsumexp keeps it stable.
        return torch.logsumexp(torch.cat([gaps.new_zeros(1), gaps]), dim=0)
