"""Orders of the training pairs: random, length-grouped, or cluster-aware; seeded by (seed, epoch)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

__all__ = ["ClusterPairSampler", "EpochSampler", "LengthGroupedPairSampler", "RandomPairSampler"]


class EpochSampler(Sampler[int]):
    """Order depends only on (seed, epoch): a resumed run replays the same batches."""

    def __init__(self, n: int, seed: int) -> None:
        self.n = n
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:  # called by the Trainer / accelerate each epoch
        self.epoch = int(epoch)

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)

    def __len__(self) -> int:
        return self.n


class LengthGroupedPairSampler(EpochSampler):
    """transformers' length grouping on the larger item of each pair: batches pad less."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int) -> None:
        super().__init__(len(lengths), seed)
        self.lengths = list(lengths)
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[int]:
        from transformers.trainer_pt_utils import get_length_grouped_indices

        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=self._generator()))


class RandomPairSampler(EpochSampler):
    def __iter__(self) -> Iterator[int]:
        return iter(torch.randperm(self.n, generator=self._generator()).tolist())


class ClusterPairSampler(EpochSampler):
    """Puts up to ``per_cluster`` pairs of one cluster next to each other, so a batch holds
    several members of a cluster (label-based losses need in-batch positives).

    Pairs are keyed by the cluster of their first item (a duplicate pair and the
    non-duplicates of the same question share a key, giving anchors with both a positive
    and a negative). Chunks of at most ``per_cluster`` pairs are shuffled and concatenated.
    """

    def __init__(self, keys: Sequence[int], per_cluster: int, seed: int) -> None:
        super().__init__(len(keys), seed)
        self.keys = np.asarray(keys)
        self.per_cluster = per_cluster

    def __iter__(self) -> Iterator[int]:
        g = self._generator()
        order = torch.randperm(self.n, generator=g).numpy()
        by_key: dict[int, list[int]] = {}
        for i in order.tolist():
            by_key.setdefault(int(self.keys[i]), []).append(i)
        chunks = [rows[j : j + self.per_cluster] for rows in by_key.values() for j in range(0, len(rows), self.per_cluster)]
        out: list[int] = []
        for c in torch.randperm(len(chunks), generator=g).tolist():
            out.extend(chunks[c])
        return iter(out)
