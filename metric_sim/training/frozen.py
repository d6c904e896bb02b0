"""Frozen-encoder training: a linear head learnt on base embeddings computed once and cached on disk."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from metric_sim.encoders.base import TrainableEncoder
from metric_sim.storage import atomic_file

__all__ = ["ProjectionHead", "base_embeddings", "identity_projection"]

logger = logging.getLogger(__name__)


class ProjectionHead(nn.Module):
    """Frozen mode: the trainable part on top of cached base embeddings."""

    def __init__(self, projection: nn.Linear, normalize: bool) -> None:
        super().__init__()
        self.projection = projection
        self.normalize = normalize

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        out = self.projection(embeddings)
        return nn.functional.normalize(out, p=2, dim=-1) if self.normalize else out


def identity_projection(in_features: int, out_features: int, seed: int) -> nn.Linear:
    """Identity when square (training starts from the zero-shot model), orthonormal rows otherwise."""
    projection = nn.Linear(in_features, out_features, bias=True)
    with torch.no_grad():
        if in_features == out_features:
            projection.weight.copy_(torch.eye(in_features))
        else:
            generator = torch.Generator().manual_seed(seed)
            q, _ = torch.linalg.qr(torch.randn(max(in_features, out_features), min(in_features, out_features),
                                               generator=generator))
            projection.weight.copy_(q[:out_features, :in_features] if out_features > in_features
                                    else q.T[:out_features, :in_features])
        projection.bias.zero_()
    return projection


def _item_bytes(encoder: TrainableEncoder, item: Any) -> bytes:
    if isinstance(item, str):
        return item.encode("utf-8", "surrogatepass")
    return encoder.item_id(item).encode()


def base_embeddings(base: TrainableEncoder, items: list[Any], cache_dir: Path, name: str, batch_size: int,
                    show_progress: bool) -> torch.Tensor:
    """``base.encode(items)`` (the encoder without head and normalisation), cached on disk by
    the encoder's fingerprint and the items, so a resumed or repeated run embeds them once."""
    digest = hashlib.sha256(base.fingerprint().encode())
    for item in items:
        digest.update(_item_bytes(base, item) + b"\0")
    path = cache_dir / f"{name}-{digest.hexdigest()[:16]}.npy"
    if path.is_file():
        logger.info("frozen encoder: using cached %s embeddings %s", name, path)
        return torch.from_numpy(np.load(path))
    logger.info("frozen encoder: embedding %d %s items once", len(items), name)
    array = base.encode(items, batch_size=batch_size, show_progress=show_progress)
    with atomic_file(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array)
    return torch.from_numpy(array)
