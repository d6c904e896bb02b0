"""A toy encoder of non-text items: small float vectors through a linear map.

It implements the whole encoder contract (inference, save/load through the registry,
training hooks) with nothing text-like in it, so a suite that passes with it proves
that nothing downstream assumes the items are strings.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from metric_sim.encoders import TrainableEncoder, register_encoder
from metric_sim.encoders.batching import embed_in_order
from metric_sim.errors import EncoderLoadError, InvalidArgumentTypeError
from metric_sim.layout import ModelSource
from metric_sim.storage import atomic_dir

WEIGHTS_FILE = "toy_weights.safetensors"


@register_encoder("toy-vectors")
class ToyVectorEncoder(nn.Module, TrainableEncoder):
    """Items are 1-D float vectors of length ``in_dim``; ``f(x) = W x + b`` (+ head, + L2 norm)."""

    def __init__(self, in_dim: int = 6, dim: int = 4, *, seed: int = 0, normalize: bool = False,
                 projection: nn.Linear | None = None, linear: nn.Linear | None = None) -> None:
        super().__init__()
        if linear is None:
            torch.manual_seed(seed)
            linear = nn.Linear(in_dim, dim)
        self.linear = linear
        self.in_dim, self.dim = int(linear.in_features), int(linear.out_features)
        self.normalize = normalize
        self.projection = projection
        self.source = None

    @property
    def embedding_dim(self) -> int:
        return int(self.projection.out_features) if self.projection is not None else self.dim

    @property
    def pooled_dim(self) -> int:
        return self.dim

    def check_items(self, items: Any, name: str = "items") -> list[np.ndarray]:
        if isinstance(items, (str, bytes)) or not isinstance(items, (Sequence, np.ndarray)):
            raise InvalidArgumentTypeError(f"{name} must be a list of vectors, got {type(items).__name__}")
        out = []
        for i, item in enumerate(items):
            if isinstance(item, str) or np.asarray(item).shape != (self.in_dim,):
                raise InvalidArgumentTypeError(
                    f"{name}[{i}] must be a vector of {self.in_dim} floats, got {type(item).__name__} {item!r}"
                )
            out.append(np.asarray(item, dtype=np.float32))
        return out

    def item_sizes(self, items: Sequence[Any]) -> np.ndarray:
        return np.zeros(len(items), dtype=np.int64)  # every vector costs the same

    def collate(self, items: Sequence[Any]) -> dict[str, torch.Tensor]:
        return {"vectors": torch.from_numpy(np.stack(self.check_items(items)))}

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        out = self.linear(vectors)
        if self.projection is not None:
            out = self.projection(out)
        return nn.functional.normalize(out, p=2, dim=-1) if self.normalize else out

    def encode(self, items: Sequence[Any], *, batch_size: int = 64, show_progress: bool = False) -> np.ndarray:
        vectors = self.check_items(items)
        stacked = np.stack(vectors) if vectors else np.zeros((0, self.in_dim), np.float32)

        def embed_rows(rows: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return self(torch.from_numpy(stacked[rows])).float().numpy()

        return embed_in_order(len(vectors), self.item_sizes(vectors), embed_rows, dim=self.embedding_dim,
                              batch_size=batch_size, show_progress=show_progress)

    def base_encoder(self) -> ToyVectorEncoder:
        return ToyVectorEncoder(linear=self.linear)

    def config_dict(self) -> dict[str, Any]:
        config: dict[str, Any] = {"in_dim": self.in_dim, "dim": self.dim, "normalize": self.normalize}
        if self.projection is not None:
            config["projection"] = {"in_features": self.projection.in_features,
                                    "out_features": self.projection.out_features}
        return config

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}

    def fingerprint(self) -> str:
        digest = hashlib.sha256(json.dumps(self.config_dict(), sort_keys=True).encode())
        for name, tensor in sorted(self._tensors().items()):
            digest.update(name.encode())
            digest.update(tensor.numpy().tobytes())
        return digest.hexdigest()

    def save(self, directory: str | os.PathLike[str], extra: dict[str, Any] | None = None) -> Path:
        from safetensors.torch import save_file

        target = Path(directory).expanduser().resolve()
        with atomic_dir(target) as staging:
            save_file(self._tensors(), str(staging / WEIGHTS_FILE))
            self.write_model_config(staging, extra)
        return target

    @classmethod
    def from_source(cls, source: ModelSource, settings: dict[str, Any], **kwargs: Any) -> ToyVectorEncoder:
        from safetensors.torch import load_file

        if source.folder is None or not (source.folder / WEIGHTS_FILE).is_file():
            raise EncoderLoadError(f"{source.name}: no {WEIGHTS_FILE}")
        head = settings.get("projection")
        projection = nn.Linear(head["in_features"], head["out_features"]) if head else None
        encoder = cls(int(settings["in_dim"]), int(settings["dim"]), normalize=bool(settings["normalize"]),
                      projection=projection)
        encoder.load_state_dict(load_file(str(source.folder / WEIGHTS_FILE)), strict=True)
        encoder.source = source.name
        return encoder


def toy_items(n: int, in_dim: int = 6, seed: int = 0) -> list[np.ndarray]:
    """``n`` distinct vectors in a few loose groups (so neighbours and thresholds mean something)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3.0, (max(2, n // 4), in_dim))
    return [(centres[i % len(centres)] + rng.normal(0, 0.5, in_dim)).astype(np.float32) for i in range(n)]
