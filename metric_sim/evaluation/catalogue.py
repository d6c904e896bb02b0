"""Catalogue retrieval: each query (a shopper's photo) ranks a separate gallery (the catalogue).

Unlike :func:`metric_sim.metrics.retrieval_metrics` (leave-one-out inside one set), the
queries and the gallery are different sets, and a query is right when an entry carrying its
label (product) ranks high. Exact: every query's full distance row is used; ranks equal
those of a stable sort of the row (equal distances go to the lower gallery index).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from metric_sim.distances import Metric, all_pairs_distances_numpy
from metric_sim.errors import InvalidArgumentError
from metric_sim.validation import require_choice, require_matrix, require_positive_int

__all__ = ["CATALOGUE_KS", "MISSING_POLICIES", "catalogue_retrieval"]

CATALOGUE_KS = (1, 5)
MISSING_POLICIES = ("error", "skip")
# Manhattan distances broadcast (rows x gallery x dim) in float64: keep a block near 256 MB.
_BLOCK_ELEMENTS = 1 << 25


def _labels(name: str, values: Any, n: int, owner: str) -> np.ndarray:
    array = np.asarray(values)
    if array.shape != (n,):
        raise InvalidArgumentError(f"{name} must be 1-D with one label per row of {owner} ({n}), got shape {array.shape}")
    return array


def catalogue_retrieval(
    query_embeddings: Any,
    query_labels: Any,
    gallery_embeddings: Any,
    gallery_labels: Any,
    *,
    metric: Metric | str,
    ks: Sequence[int] = CATALOGUE_KS,
    missing: str = "error",
    block_size: int = 256,
) -> dict[str, Any]:
    """Recall@k, MRR and the rank of the right catalogue entry for each query.

    The rank of query q is 1 + the number of gallery entries before its first right
    entry (same label) when the gallery is sorted by raw ``metric`` distance, stable, so
    a tie goes to the lower gallery index. A gallery may hold several entries per label;
    the first right one counts.

    * ``recall_at_k``: share of queries whose rank is <= k (its label among the top k);
    * ``mrr``: mean of ``1 / rank`` (no cut-off: a catalogue is small enough to rank fully);
    * ``mean_rank``, ``median_rank``; ``ranks``: an int64 array, one per query (0 for a
      skipped query; not JSON: drop it before saving).

    A query whose label has no gallery entry cannot be right: with ``missing="error"``
    (default) that raises naming the first such query; with ``"skip"`` those queries are
    left out of every figure and counted in ``skipped_queries``.
    """
    metric = Metric.parse(metric)
    queries = require_matrix("query_embeddings", query_embeddings)
    gallery = require_matrix("gallery_embeddings", gallery_embeddings, columns=queries.shape[1])
    q_labels = _labels("query_labels", query_labels, queries.shape[0], "query_embeddings")
    g_labels = _labels("gallery_labels", gallery_labels, gallery.shape[0], "gallery_embeddings")
    ks = sorted({require_positive_int("ks[i]", k) for k in ks})
    if not ks:
        raise InvalidArgumentError("ks must hold at least one positive integer, got an empty sequence")
    require_choice("missing", missing, MISSING_POLICIES)
    block_size = require_positive_int("block_size", block_size)
    if gallery.shape[0] == 0:
        raise InvalidArgumentError("gallery_embeddings is empty (0 rows): there is nothing to retrieve")

    present = np.isin(q_labels, g_labels)
    if missing == "error" and not present.all():
        i = int(np.flatnonzero(~present)[0])
        raise InvalidArgumentError(
            f"query_labels[{i}] = {q_labels[i].tolist()!r} has no gallery entry ({int((~present).sum())} of "
            f"{q_labels.size} queries have none); pass missing='skip' to leave them out"
        )
    scored = np.flatnonzero(present)
    ranks = np.zeros(queries.shape[0], dtype=np.int64)
    rows_per_block = max(1, min(block_size, _BLOCK_ELEMENTS // max(1, gallery.shape[0] * gallery.shape[1])))
    gallery_index = np.arange(gallery.shape[0])
    for start in range(0, scored.size, rows_per_block):
        q = scored[start : start + rows_per_block]
        dist = all_pairs_distances_numpy(queries[q], gallery, metric)  # (block, gallery) float32
        right = g_labels[None, :] == q_labels[q][:, None]
        # The first right entry of the stable order: smallest distance, then lowest index.
        best = np.where(right, dist, np.inf).min(axis=1)
        first = np.argmax(right & (dist == best[:, None]), axis=1)
        before = (dist < best[:, None]) | ((dist == best[:, None]) & (gallery_index[None, :] < first[:, None]))
        ranks[q] = 1 + before.sum(axis=1)

    result: dict[str, Any] = {
        "queries": int(scored.size),
        "skipped_queries": int(queries.shape[0] - scored.size),
        "gallery": int(gallery.shape[0]),
        "gallery_labels": int(np.unique(g_labels).size),
        "ranked_by": f"raw {metric.value} distance",
        "ties": "equal distances go to the lower gallery index (stable sort)",
    }
    names = [f"recall_at_{k}" for k in ks] + ["mrr", "mean_rank", "median_rank"]
    if scored.size == 0:
        return {**result, **dict.fromkeys(names), "ranks": ranks}
    r = ranks[scored]
    for k in ks:
        result[f"recall_at_{k}"] = float(np.mean(r <= k))
    result["mrr"] = float(np.mean(1.0 / r))
    result["mean_rank"] = float(np.mean(r))
    result["median_rank"] = float(np.median(r))
    result["ranks"] = ranks
    return result
