"""k-NN, range search and dedupe over the stored vectors, with exact re-ranking.

FAISS proposes candidates; their distances are then recomputed from the stored vectors
(for the compressed kinds: read from their file on disk, ``rerank`` candidates per query) in float64 (:func:`metric_sim.distances.paired_distances_numpy`). FAISS' BLAS path
computes ``|q|^2 + |x|^2 - 2 q.x`` in float32, which is off by ~1e-3 in true units for
near-duplicates after the square root; re-ranking makes every reported distance agree
with brute force to float32 rounding. Ties are broken by insertion order, so results
are deterministic.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from metric_sim.calibration import Calibrator
from metric_sim.clusters import UnionFind
from metric_sim.distances import faiss_to_true_distance, paired_distances_numpy
from metric_sim.errors import CalibrationError, InvalidArgumentError
from metric_sim.index.disk_store import DiskItemStore
from metric_sim.index.results import DedupeResult, DuplicatePair, SearchResult
from metric_sim.index.store import ItemStore
from metric_sim.index.vectors import FaissVectors
from metric_sim.validation import require_positive_int, require_probability

__all__ = [
    "exact_distances",
    "find_duplicates",
    "knn",
    "probabilities",
    "range_hits",
    "search_radius",
    "to_result",
    "to_results",
]

logger = logging.getLogger(__name__)

QUERY_CHUNK = 1024  # queries per FAISS call: bounds the memory of re-ranking
RERANK_EXTRA = 4  # extra k-NN candidates fetched so exact re-ranking can reorder near-ties


def search_radius(calibrator: Calibrator | None, min_prob: float | None, max_distance: float | None) -> float:
    """The true distance bound of a filter given as ``min_prob`` or ``max_distance`` (exactly one).

    Negative when no distance can reach ``min_prob``.
    """
    if (min_prob is None) == (max_distance is None):
        raise InvalidArgumentError(
            f"give exactly one of min_prob and max_distance, got min_prob={min_prob!r}, max_distance={max_distance!r}"
        )
    if max_distance is not None:
        if (
            isinstance(max_distance, bool)
            or not isinstance(max_distance, (int, float, np.integer, np.floating))
            or not math.isfinite(max_distance)
            or max_distance < 0
        ):
            raise InvalidArgumentError(f"max_distance must be a finite number >= 0, got {max_distance!r}")
        return float(max_distance)
    min_prob = require_probability("min_prob", min_prob, open_interval=True)
    if calibrator is None:
        raise CalibrationError(
            f"min_prob={min_prob} needs a calibrated model, but this index has no calibrator: "
            "calibrate the model (model.calibrate / `metric-sim calibrate`) or pass max_distance"
        )
    return calibrator.distance_at(min_prob)


def probabilities(calibrator: Calibrator | None, distances: np.ndarray) -> np.ndarray | None:
    return None if calibrator is None else calibrator.predict_proba(distances).astype(np.float64)


def to_result(
    store: ItemStore | DiskItemStore, calibrator: Calibrator | None, query: str | None, keys: np.ndarray,
    distances: np.ndarray,
) -> SearchResult:
    return to_results(store, calibrator, [query], [keys], [distances])[0]


def to_results(
    store: ItemStore | DiskItemStore, calibrator: Calibrator | None, queries: list[str | None],
    keys: list[np.ndarray], distances: list[np.ndarray],
) -> list[SearchResult]:
    """One result per query, with one store lookup for all their neighbours (for a disk store,
    one SQLite pass per batch of queries rather than one per query)."""
    items = store.items_of(np.concatenate(keys)) if keys else []
    bounds = np.concatenate([[0], np.cumsum([len(k) for k in keys])]).tolist()
    return [
        SearchResult(
            query=query,
            ids=[item_id for item_id, _ in items[bounds[i] : bounds[i + 1]]],
            texts=[text for _, text in items[bounds[i] : bounds[i + 1]]],
            distances=dist.astype(np.float32),
            probabilities=probabilities(calibrator, dist),
        )
        for i, (query, dist) in enumerate(zip(queries, distances, strict=True))
    ]


def exact_distances(
    vectors: FaissVectors, query_rows: np.ndarray, keys: np.ndarray, stored: np.ndarray | None = None
) -> np.ndarray:
    """True distances between query rows and stored keys (or the given ``stored`` rows), in float64."""
    if keys.size == 0:
        return np.zeros(0, dtype=np.float32)
    stored = vectors.reconstruct(keys) if stored is None else stored
    return paired_distances_numpy(query_rows, stored, vectors.metric)


def _nearest_first(keys: np.ndarray, distances: np.ndarray) -> np.ndarray:
    return np.lexsort((keys, distances))  # ties by insertion order (keys grow with insertion)


def knn(
    vectors: FaissVectors,
    store: ItemStore | DiskItemStore,
    calibrator: Calibrator | None,
    queries: np.ndarray,
    k: int,
    labels: list[str] | None,
    min_prob: float | None,
    max_distance: float | None,
    rerank: bool = True,
) -> list[SearchResult]:
    """The ``k`` nearest stored items of each query row, only those with ``p >= min_prob``
    (or ``d <= max_distance``) when one is given.

    ``labels`` are the query descriptions the results carry (None for vector queries).
    ``rerank=False`` keeps FAISS' own distances (square-rooted for L2).
    """
    k = require_positive_int("k", k)
    limit = None if min_prob is None and max_distance is None else search_radius(calibrator, min_prob, max_distance)

    def label(row: int) -> str | None:
        return None if labels is None else labels[row]

    n = len(store)
    if n == 0 or (limit is not None and limit < 0):
        empty = np.zeros(0, np.int64)
        return [to_result(store, calibrator, label(i), empty, np.zeros(0)) for i in range(len(queries))]
    if vectors.compressed:
        if not rerank:
            raise InvalidArgumentError(
                f"rerank=False is refused for kind {vectors.kind!r}: its FAISS distances come from compressed "
                "L2 codes, not from the vectors (and are not even L1 for a manhattan index)"
            )
        fetch = min(n, vectors.rerank_count(k))
    else:
        fetch = min(n, k + RERANK_EXTRA if rerank else k)
    vectors.apply_search_params()
    results: list[SearchResult] = []
    for start in range(0, len(queries), QUERY_CHUNK):
        chunk = queries[start : start + QUERY_CHUNK]
        raw, found = vectors.index.search(chunk, fetch)
        valid = found >= 0
        rows = np.repeat(np.arange(len(chunk)), valid.sum(1))
        keys = found[valid]
        exact = (
            exact_distances(vectors, chunk[rows], keys)
            if rerank
            else faiss_to_true_distance(raw[valid], vectors.metric)
        )
        bounds = np.concatenate([[0], np.cumsum(valid.sum(1))])
        nearest_keys, nearest_distances = [], []
        for i in range(len(chunk)):
            kq, dq = keys[bounds[i] : bounds[i + 1]], exact[bounds[i] : bounds[i + 1]]
            order = _nearest_first(kq, dq)[:k]
            kq, dq = kq[order], dq[order]
            if limit is not None:
                keep = dq <= limit
                kq, dq = kq[keep], dq[keep]
            nearest_keys.append(kq)
            nearest_distances.append(dq)
        labels_of_chunk = [label(start + i) for i in range(len(chunk))]
        results += to_results(store, calibrator, labels_of_chunk, nearest_keys, nearest_distances)
    return results


def range_hits(
    vectors: FaissVectors,
    n_items: int,
    queries: np.ndarray,
    radius: float,
    *,
    stored: tuple[dict[int, int], np.ndarray] | None = None,
    progress: Any = None,
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield (query row, keys, exact distances) within ``radius`` for every query row, nearest first.

    ``stored`` = (key -> row, matrix of every stored vector) saves reconstructing them
    again when the caller already holds them (dedupe).
    """
    if radius < 0 or not n_items:
        for i in range(len(queries)):
            yield i, np.zeros(0, np.int64), np.zeros(0, np.float32)
        return
    vectors.apply_search_params()
    for start in range(0, len(queries), QUERY_CHUNK):
        chunk = queries[start : start + QUERY_CHUNK]
        lims, _, labels = vectors.index.range_search(chunk, vectors.faiss_radius(radius, chunk))
        lims, labels = lims.astype(np.int64), labels.astype(np.int64)  # FAISS gives uint64 limits
        rows = np.repeat(np.arange(len(chunk)), np.diff(lims))
        if stored is None:
            exact = exact_distances(vectors, chunk[rows], labels)
        else:
            row_of, matrix = stored
            picked = matrix[np.fromiter((row_of[k] for k in labels.tolist()), np.int64, len(labels))]
            exact = exact_distances(vectors, chunk[rows], labels, picked)
        for i in range(len(chunk)):
            kq, dq = labels[lims[i] : lims[i + 1]], exact[lims[i] : lims[i + 1]]
            keep = dq <= radius
            kq, dq = kq[keep], dq[keep]
            order = _nearest_first(kq, dq)
            yield start + i, kq[order], dq[order]
        if progress is not None:
            progress.update(len(chunk))


def _stored_range_hits(
    vectors: FaissVectors, keys: np.ndarray, radius: float, progress: Any
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """:func:`range_hits` with every stored vector as a query (row = position in ``keys``)."""
    if not vectors.compressed:  # exact kinds: all vectors at once, and no second reconstruct
        matrix = vectors.reconstruct(keys)
        row_of = {k: i for i, k in enumerate(keys.tolist())}
        yield from range_hits(vectors, len(keys), matrix, radius, stored=(row_of, matrix), progress=progress)
        return
    # Vectors on disk: read one block of queries at a time, never the whole file.
    for start in range(0, len(keys), QUERY_CHUNK):
        block = vectors.reconstruct(keys[start : start + QUERY_CHUNK])
        for row, hits, dists in range_hits(vectors, len(keys), block, radius, progress=progress):
            yield start + row, hits, dists


def find_duplicates(
    vectors: FaissVectors,
    store: ItemStore | DiskItemStore,
    calibrator: Calibrator | None,
    radius: float,
    min_prob: float | None,
    *,
    show_progress: bool = False,
) -> DedupeResult:
    """Every pair of stored items within ``radius``, found by range search with every stored
    vector as a query, joined into clusters by union-find."""
    keys = store.keys()
    pairs: dict[tuple[int, int], float] = {}
    progress = None
    if show_progress:
        from tqdm.auto import tqdm

        progress = tqdm(total=len(keys), desc="dedupe", unit="item")
    started = time.perf_counter()
    try:
        for row, hits, dists in _stored_range_hits(vectors, keys, radius, progress):
            me = int(keys[row])
            for other, dist in zip(hits.tolist(), dists.tolist(), strict=True):
                if other != me:
                    # Both directions are found (and, approximately, maybe only one): key the pair once.
                    pairs.setdefault((min(me, other), max(me, other)), dist)
    finally:
        if progress is not None:
            progress.close()
    logger.info(
        "dedupe: %d items, %d pairs within %.4g in %.1f s",
        len(keys),
        len(pairs),
        radius,
        time.perf_counter() - started,
    )
    ordered = sorted(pairs.items(), key=lambda item: (item[1], item[0]))
    distances = np.array([d for _, d in ordered], dtype=np.float64)
    probs = probabilities(calibrator, distances) if len(ordered) else None
    union = UnionFind(store.ids)  # in key order, as ``keys``
    paired = sorted({key for pair in pairs for key in pair})
    item_of = dict(zip(paired, store.items_of(paired), strict=True))  # batched: a disk store reads once
    result_pairs = []
    for n, ((a, b), dist) in enumerate(ordered):
        (id_a, text_a), (id_b, text_b) = item_of[a], item_of[b]
        union.union(id_a, id_b)
        result_pairs.append(
            DuplicatePair(id_a, id_b, text_a, text_b, float(dist), None if probs is None else float(probs[n]))
        )
    clusters = sorted(
        (members for members in union.groups().values() if len(members) > 1),
        key=len,
        reverse=True,
    )
    text_of = dict(item_of.values())  # every cluster member is in a pair
    texts = {member: text_of[member] for members in clusters for member in members}
    return DedupeResult(result_pairs, clusters, len(keys), float(radius), min_prob, texts)
