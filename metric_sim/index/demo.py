"""The quickstart's neighbour demo: index the bundled demo questions and search them."""

from __future__ import annotations

from collections.abc import Sequence

from metric_sim.index.neighbor_index import NeighborIndex
from metric_sim.index.results import SearchResult
from metric_sim.layout import demo_pairs_path
from metric_sim.model import SimilarityModel

__all__ = ["demo_neighbors"]


def demo_neighbors(
    model: SimilarityModel, *, queries: Sequence[str] | None = None, k: int = 3, kind: str = "flat"
) -> tuple[NeighborIndex, list[SearchResult]]:
    """Index the bundled demo questions and search them: the quickstart's neighbour demo.

    Without ``queries``, the first question of the first three duplicate pairs is the
    query and is left out of the index, so its top neighbour should be its duplicate.
    Print with :func:`metric_sim.index.format_results`.
    """
    from metric_sim.data import load_pairs  # datasets / pyarrow: only when the demo runs

    pairs = load_pairs(demo_pairs_path(), text_a="question1", text_b="question2", label="is_duplicate")
    _, texts = pairs.unique_texts()
    if queries is None:
        positives = [
            a for a, label in zip(pairs.texts_a, pairs.labels.tolist(), strict=True) if label == 1
        ]
        queries = list(dict.fromkeys(positives))[:3]
    queries = model.encoder.check_items(queries, "queries")
    held_out = set(queries)
    stored = [t for t in texts if t not in held_out]
    index = NeighborIndex.build(model, stored, kind=kind)
    return index, index.search(queries, k=k)
