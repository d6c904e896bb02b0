"""Pairs as ids of unique items (:func:`prepare_pairs`) and batches in which each item appears once.

Items repeat across pairs (a QQP question is in many), so a batch embeds each of its
unique items once and describes its pairs by row indices into that matrix (see
:mod:`metric_sim.losses`).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from metric_sim.data import PairDataset
from metric_sim.encoders.base import TrainableEncoder
from metric_sim.errors import InvalidArgumentError
from metric_sim.items import item_id

__all__ = ["PairCollator", "PairRows", "PreparedPairs", "item_key", "prepare_pairs"]


def item_key(item: Any) -> Hashable:
    """What makes two items one: the text itself for texts, :func:`metric_sim.items.item_id` otherwise."""
    return item if isinstance(item, str) else item_id(item)


@dataclass
class PreparedPairs:
    """Pairs as integer ids of unique items (identical items share one id, whatever their source ids).

    ``texts`` holds the unique items in order of first appearance in ``texts_a + texts_b``
    (the name predates non-text items; :attr:`items` is the same list).
    """

    texts: list[Any]
    tid_a: np.ndarray
    tid_b: np.ndarray
    labels: np.ndarray
    text_labels: np.ndarray  # cluster id of each unique item

    @property
    def items(self) -> list[Any]:
        return self.texts

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def prepare_pairs(data: PairDataset) -> PreparedPairs:
    """Map each pair to unique-item ids and each item to its cluster.

    Clusters are the dataset's (:meth:`PairDataset.pair_cluster_labels`, the one
    cluster rule of :mod:`metric_sim.clusters`: positives join, and ids carrying an
    identical item are one item), renumbered ``0..`` by the first appearance of their
    items in ``texts_a + texts_b``.
    """
    items = data.texts_a + data.texts_b
    cluster_a, cluster_b = data.pair_cluster_labels()
    index: dict[Hashable, int] = {}
    unique: list[Any] = []
    tid = np.empty(len(items), dtype=np.int64)
    for i, item in enumerate(items):
        key = item_key(item)
        t = index.get(key)
        if t is None:
            t = index[key] = len(unique)
            unique.append(item)
        tid[i] = t
    clusters = np.concatenate([cluster_a, cluster_b])
    cluster_of_item = np.empty(len(unique), dtype=np.int64)
    cluster_of_item[tid] = clusters
    assert np.array_equal(cluster_of_item[tid], clusters), "the cluster rule puts every copy of an item in one cluster"
    numbers: dict[int, int] = {}
    text_labels = np.fromiter((numbers.setdefault(c, len(numbers)) for c in cluster_of_item.tolist()),
                              dtype=np.int64, count=len(unique))
    n = len(data)
    return PreparedPairs(unique, tid[:n], tid[n:], data.labels.astype(np.int64), text_labels)


class PairRows(Dataset):
    """Row i -> the ids of pair i; the collator turns a list of rows into a batch."""

    def __init__(self, pairs: PreparedPairs) -> None:
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict[str, int]:
        p = self.pairs
        return {"tid_a": int(p.tid_a[i]), "tid_b": int(p.tid_b[i]), "label": int(p.labels[i])}


class PairCollator:
    """Rows -> one batch in which every unique item appears once.

    ``features`` are the model inputs of the unique items: ``encoder.collate(items)``
    (for texts: token ids padded to the longest text of the batch), or, in frozen mode,
    ``{"embeddings": cached base embeddings}``. ``tokenizer=`` (+ ``max_length``) is the
    older way to say "tokenize the texts" and gives the same inputs as a text encoder.
    ``idx_a``/``idx_b`` index rows of the unique-item batch; ``text_labels`` are their
    cluster ids and ``text_ids`` their ids in :class:`PreparedPairs` (ascending), which
    let several ranks' batches be merged into one (:func:`metric_sim.losses.merge_batches`).
    """

    def __init__(self, pairs: PreparedPairs, *, encoder: TrainableEncoder | None = None,
                 embeddings: torch.Tensor | None = None, tokenizer: Any = None, max_length: int = 128) -> None:
        if sum(x is not None for x in (encoder, embeddings, tokenizer)) != 1:
            raise InvalidArgumentError("PairCollator needs exactly one of encoder=, embeddings= or tokenizer=")
        self.pairs = pairs
        self.encoder = encoder
        self.embeddings = embeddings
        self.tokenizer = tokenizer
        self.max_length = max_length

    def features(self, unique: np.ndarray) -> dict[str, torch.Tensor]:
        """Model inputs of the unique items ``unique`` (ids in :class:`PreparedPairs`)."""
        if self.embeddings is not None:
            return {"embeddings": self.embeddings[torch.from_numpy(unique)]}
        items = [self.pairs.texts[u] for u in unique.tolist()]
        if self.encoder is not None:
            return dict(self.encoder.collate(items))
        return dict(self.tokenizer(items, padding=True, truncation=True, max_length=self.max_length,
                                   return_tensors="pt"))

    def __call__(self, rows: Sequence[Mapping[str, int]]) -> dict[str, Any]:
        if not rows:
            raise InvalidArgumentError("cannot collate an empty batch")
        ids = np.array([r["tid_a"] for r in rows] + [r["tid_b"] for r in rows], dtype=np.int64)
        unique, inverse = np.unique(ids, return_inverse=True)
        b = len(rows)
        return {
            "features": self.features(unique),
            "idx_a": torch.from_numpy(inverse[:b].astype(np.int64)),
            "idx_b": torch.from_numpy(inverse[b:].astype(np.int64)),
            "pair_labels": torch.tensor([r["label"] for r in rows], dtype=torch.long),
            "text_labels": torch.from_numpy(self.pairs.text_labels[unique]),
            "text_ids": torch.from_numpy(unique.astype(np.int64)),
        }
