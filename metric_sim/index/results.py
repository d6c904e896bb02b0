"""What a neighbour search or a dedupe returns, and how it is printed and written to TSV.

Items are shown by their stored description (``ItemEncoder.describe_item``: the text
itself for texts), so these classes hold strings whatever kind of item was indexed.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from metric_sim.storage import atomic_file

__all__ = ["DedupeResult", "DuplicatePair", "SearchResult", "format_results", "write_tsv_atomic"]


@dataclass
class SearchResult:
    """Neighbours of one query, nearest first. ``probabilities`` is None without a calibrator.

    ``query`` is the query's description (the text for texts), None for a vector query;
    ``texts`` are the stored descriptions of the neighbours.
    """

    query: str | None
    ids: list[str]
    texts: list[str]
    distances: np.ndarray  # float32, true Lp distances, ascending
    probabilities: np.ndarray | None

    def __len__(self) -> int:
        return len(self.ids)

    def to_dict(self) -> dict[str, Any]:
        probs = self.probabilities
        return {
            "query": self.query,
            "neighbors": [
                {
                    "rank": rank + 1,
                    "id": self.ids[rank],
                    "text": self.texts[rank],
                    "distance": float(self.distances[rank]),
                    "probability": None if probs is None else float(probs[rank]),
                }
                for rank in range(len(self.ids))
            ],
        }


@dataclass(frozen=True)
class DuplicatePair:
    """Two stored items within the dedupe radius (``id_a`` was added before ``id_b``)."""

    id_a: str
    id_b: str
    text_a: str
    text_b: str
    distance: float
    probability: float | None


@dataclass
class DedupeResult:
    """Every pair within ``max_distance`` and the clusters union-find joins them into.

    ``clusters`` holds ids of clusters with at least two members, largest first (ties in
    order of first insertion); members are in insertion order.
    """

    pairs: list[DuplicatePair]
    clusters: list[list[str]]
    n_items: int
    max_distance: float
    min_prob: float | None
    texts: dict[str, str] = field(repr=False, default_factory=dict)

    def cluster_of(self) -> dict[str, int]:
        """id -> cluster number (index into ``clusters``) for items in a cluster."""
        return {member: c for c, members in enumerate(self.clusters) for member in members}

    def to_dict(self) -> dict[str, Any]:
        return {
            "items": self.n_items,
            "pairs": len(self.pairs),
            "clusters": len(self.clusters),
            "items_in_clusters": sum(len(c) for c in self.clusters),
            "largest_cluster": max((len(c) for c in self.clusters), default=0),
            "min_prob": self.min_prob,
            "max_distance": self.max_distance,
        }

    def write_tsv(self, path: str | os.PathLike[str]) -> Path:
        """Clusters as ``cluster<TAB>id<TAB>text`` rows, largest cluster first, written atomically."""
        rows = (
            [n, member, self.texts.get(member, "")]
            for n, members in enumerate(self.clusters)
            for member in members
        )
        return write_tsv_atomic(path, ["cluster", "id", "text"], rows)

    def write_pairs_tsv(self, path: str | os.PathLike[str]) -> Path:
        """Pairs as ``id_a, id_b, distance, probability, text_a, text_b`` rows, nearest first."""
        rows = (
            [
                p.id_a,
                p.id_b,
                f"{p.distance:.6g}",
                "" if p.probability is None else f"{p.probability:.6g}",
                p.text_a,
                p.text_b,
            ]
            for p in self.pairs
        )
        return write_tsv_atomic(
            path, ["id_a", "id_b", "distance", "probability", "text_a", "text_b"], rows
        )


def write_tsv_atomic(
    path: str | os.PathLike[str], header: list[str], rows: Iterator[list[Any]]
) -> Path:
    """Tab-separated with csv quoting (texts may hold tabs/newlines): temp file, then rename."""
    path = Path(path)
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


def format_results(results: Sequence[SearchResult], *, width: int = 80) -> str:
    """Readable neighbour lists: rank, distance, probability, id and text per line."""
    lines: list[str] = []
    for result in results:
        lines.append(f"query: {result.query}" if result.query is not None else "query: <vector>")
        if not len(result):
            lines.append("   (no neighbours)")
        for rank in range(len(result)):
            prob = "" if result.probabilities is None else f"  p={result.probabilities[rank]:.3f}"
            text = result.texts[rank]
            text = text if len(text) <= width else text[: width - 3] + "..."
            lines.append(
                f"  {rank + 1:>2}. d={result.distances[rank]:.4f}{prob}  [{result.ids[rank]}] {text}"
            )
    return "\n".join(lines)
