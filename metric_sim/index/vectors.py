"""The FAISS side of an index: exact vectors under int64 keys, for the three kinds.

``flat`` and ``hnsw`` wrap their index in ``IndexIDMap2`` (reconstruct by key); ``ivf``
stores keys natively with a hashtable direct map so it can ``remove`` and reconstruct,
and is trained on the first vectors it is given. FAISS HNSW cannot remove from its
graph: :meth:`FaissVectors.remove` rebuilds the graph from the remaining stored vectors
(no re-encoding; O(n log n), so batch removals).

FAISS is imported inside the methods, so ``import metric_sim.index`` does not load it.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np

from metric_sim.distances import Metric, faiss_metric, true_to_faiss_radius
from metric_sim.errors import IndexConfigError

__all__ = ["FaissVectors", "faiss_class_of_kind", "stored_keys"]

logger = logging.getLogger(__name__)

_FLOAT32_EPS = float(np.finfo(np.float32).eps)


def faiss_class_of_kind(kind: str) -> Any:
    """The FAISS class that holds the vectors of ``kind`` (inside the IDMap2 for flat / hnsw)."""
    import faiss

    return {"flat": faiss.IndexFlat, "hnsw": faiss.IndexHNSWFlat, "ivf": faiss.IndexIVFFlat}[kind]


def stored_keys(index: Any) -> np.ndarray:
    """Every int64 key a FAISS index holds (IDMap2 or IVF), in no particular order."""
    import faiss
    from faiss.contrib.inspect_tools import get_invlist, get_invlist_sizes

    if isinstance(index, faiss.IndexIDMap2):
        return faiss.vector_to_array(index.id_map)
    # get_invlist releases what it borrows from the inverted lists (on-disk lists need that).
    invlists = faiss.extract_index_ivf(index).invlists  # also inside an OPQ pre-transform
    lists = np.flatnonzero(get_invlist_sizes(invlists))
    found = [get_invlist(invlists, int(i))[0] for i in lists]
    return np.concatenate(found) if found else np.zeros(0, np.int64)


class FaissVectors:
    """One FAISS index of ``kind`` over ``dim``-dimensional vectors, with ``params`` (shared, mutable)."""

    compressed = False  # exact vectors in FAISS (see .compressed for the kinds that are not)

    def __init__(self, kind: str, dim: int, metric: Metric, params: dict[str, int | None]) -> None:
        self.kind = kind
        self.dim = dim
        self.metric = metric
        self.params = params  # the NeighborIndex's own dict: ivf fills in nlist / nprobe when trained
        self.index: Any = None if kind == "ivf" else self.new_index()
        self.max_sq_norm = 0.0  # bounds FAISS' float32 rounding in range search

    @property
    def faiss_metric_type(self) -> int:
        return faiss_metric(self.metric)

    def new_index(self, n_train: int = 0) -> Any:
        """An empty FAISS index of this kind (for ivf: sized for ``n_train`` training vectors)."""
        import faiss

        fm = faiss_metric(self.metric)
        if self.kind == "flat":
            return faiss.IndexIDMap2(faiss.IndexFlat(self.dim, fm))
        if self.kind == "hnsw":
            inner = faiss.IndexHNSWFlat(self.dim, int(self.params["M"]), fm)
            inner.hnsw.efConstruction = int(self.params["efConstruction"])
            return faiss.IndexIDMap2(inner)
        nlist = self.params["nlist"]
        auto = nlist is None
        if auto:  # ~4 sqrt(n) lists, but >= 39 training points each (FAISS' own minimum)
            nlist = max(1, min(int(4 * math.sqrt(n_train)), n_train // 39))
            self.params["nlist"] = nlist
        if self.params["nprobe"] is None:
            self.params["nprobe"] = max(16, -(-int(nlist) // 10))
        if n_train < nlist:
            raise IndexConfigError(
                f"ivf with nlist={nlist} needs at least {nlist} vectors to train, got {n_train}"
            )
        quantizer = faiss.IndexFlat(self.dim, fm)
        index = faiss.IndexIVFFlat(quantizer, self.dim, int(nlist), fm)
        index.set_direct_map_type(faiss.DirectMap.Hashtable)  # reconstruct + remove by key
        if auto and n_train < 39:  # one list over a tiny corpus: FAISS' warning is noise
            index.cp.min_points_per_centroid = 1
        return index

    def add(self, vectors: np.ndarray, keys: np.ndarray) -> None:
        """Add float32 rows under ``keys``; an untrained ivf is trained on them first."""
        if self.index is None:
            self.index = self.new_index(n_train=len(vectors))
            started = time.perf_counter()
            self.index.train(vectors)
            logger.info(
                "trained ivf (nlist=%d) on %d vectors in %.1f s",
                self.index.nlist,
                len(vectors),
                time.perf_counter() - started,
            )
        started = time.perf_counter()
        self.index.add_with_ids(vectors, keys)
        elapsed = time.perf_counter() - started
        if len(vectors) >= 1000:
            logger.info(
                "added %d vectors to %s index in %.1f s (%.0f vectors/s)",
                len(vectors),
                self.kind,
                elapsed,
                len(vectors) / max(elapsed, 1e-9),
            )
        self.max_sq_norm = max(
            self.max_sq_norm, float(np.max(np.einsum("ij,ij->i", vectors, vectors)))
        )

    def remove(self, keys: np.ndarray, keep: np.ndarray) -> int:
        """Remove ``keys``; ``keep`` are the keys that stay (hnsw rebuilds its graph from them)."""
        if self.kind != "hnsw":
            return int(self.index.remove_ids(keys))
        vectors = self.reconstruct(keep)
        rebuilt = self.new_index()
        if keep.size:
            rebuilt.add_with_ids(vectors, keep)
        self.index = rebuilt
        return len(keys)

    def reconstruct(self, keys: np.ndarray) -> np.ndarray:
        """The stored float32 vectors of ``keys``, in that order."""
        if not keys.size:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.index.reconstruct_batch(keys)

    def apply_search_params(self) -> None:
        """Push the search-time parameters (efSearch / nprobe) into FAISS before a search."""
        import faiss

        if self.kind == "hnsw":
            faiss.downcast_index(self.index.index).hnsw.efSearch = int(self.params["efSearch"])
        elif self.kind == "ivf" and self.index is not None:
            self.index.nprobe = min(int(self.params["nprobe"]), int(self.index.nlist))

    def faiss_radius(self, radius: float, queries: np.ndarray) -> float:
        """The FAISS radius for true ``radius``, widened past float32 rounding so no true hit
        is lost (the exact re-check then drops the extras)."""
        raw = true_to_faiss_radius(radius, self.metric)
        slack = 4.0 * self.dim * _FLOAT32_EPS
        if self.metric is Metric.EUCLIDEAN:  # |q|^2 + |x|^2 - 2 q.x: error scales with the norms
            q_sq = float(np.max(np.einsum("ij,ij->i", queries, queries))) if len(queries) else 0.0
            return raw * (1.0 + slack) + slack * (q_sq + self.max_sq_norm) + 1e-12
        return raw * (1.0 + slack) + 1e-12
