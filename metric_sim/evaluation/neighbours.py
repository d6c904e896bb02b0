"""The picture a person wants next to the numbers for images: queries and their nearest neighbours.

For a model whose items are images or product records, the report shows a few items of the
scored split, each with its ``k`` nearest other items of that split (raw distance and the
calibrated probability under each), wrong matches marked. "Right" means the two items are in
one cluster of the split's positive pairs (the one cluster rule), the same truth the pair
metrics use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from metric_sim.distances import all_pairs_distances_numpy
from metric_sim.evaluation.image_grid import plot_neighbour_grid
from metric_sim.model import SimilarityModel

__all__ = ["IMAGE_KINDS", "NEIGHBOURS_FIGURE", "write_neighbour_grid"]

IMAGE_KINDS = ("image", "multimodal")
NEIGHBOURS_FIGURE = "neighbours.png"
# Enough items that most queries have their true matches among them; few enough to embed quickly.
_MAX_ITEMS = 400


def write_neighbour_grid(model: SimilarityModel, pairs: Any, folder: Path, *, queries: int = 6, k: int = 4,
                         seed: int = 0, batch_size: int = 64) -> Path | None:
    """Write ``folder/neighbours.png`` for an image or product model; ``None`` for other kinds."""
    if getattr(model.encoder, "kind", None) not in IMAGE_KINDS or len(pairs) == 0:
        return None
    clusters = pairs.cluster_labels()
    ids, items = pairs.unique_texts()
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.permutation(len(items))[:_MAX_ITEMS]) if len(items) > _MAX_ITEMS else np.arange(len(items))
    items = [items[i] for i in chosen]
    labels = np.array([clusters[ids[i]] for i in chosen])
    vectors = model.embed(items, batch_size=batch_size)
    distances = all_pairs_distances_numpy(vectors, vectors, model.metric)
    np.fill_diagonal(distances, np.inf)
    # Queries that have a true match among the shown items, so a right answer is possible.
    has_match = np.array([(labels == label).sum() > 1 for label in labels])
    candidates = np.flatnonzero(has_match) if has_match.any() else np.arange(len(items))
    picked = np.sort(rng.choice(candidates, size=min(queries, len(candidates)), replace=False))
    rows = []
    for q in picked:
        nearest = np.argsort(distances[q], kind="stable")[: min(k, len(items) - 1)]
        d = distances[q, nearest]
        p = model.calibrator.predict_proba(d) if model.calibrator is not None else [None] * len(nearest)
        rows.append((items[q], [(items[j], float(dj), None if pj is None else float(pj), bool(labels[j] == labels[q]))
                                for j, dj, pj in zip(nearest, d, p, strict=True)]))
    if not rows:
        return None
    title = f"nearest neighbours ({model.metric.value}); green: same cluster, red: wrong match"
    return plot_neighbour_grid(rows, folder / NEIGHBOURS_FIGURE, title=title)
