"""What each route does, without the web framework: parse items, encode (micro-batched), answer.

:class:`Service` is built once the model and index are loaded; every method is a coroutine
that returns the JSON body of its route or raises :class:`~metric_sim.serve.errors.ApiError`.
Encoding runs on the batcher's thread, index work on worker threads, image decoding (for
image and product models) on worker threads too: the event loop only routes.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from metric_sim.model import SimilarityModel
from metric_sim.serve.batching import MicroBatcher
from metric_sim.serve.config import Limits
from metric_sim.serve.errors import invalid, limit_exceeded
from metric_sim.serve.items import ItemParser, check_unicode
from metric_sim.serve.store import LiveIndex

__all__ = ["Service"]


class Service:
    """The loaded model, the live index and the batcher, answering the routes' requests."""

    def __init__(self, model: SimilarityModel, live: LiveIndex, batcher: MicroBatcher, parser: ItemParser,
                 limits: Limits, name: str) -> None:
        self.model = model
        self.live = live
        self.batcher = batcher
        self.parser = parser
        self.limits = limits
        self.name = name

    async def _parse(self, located: list[tuple[Any, str]]) -> list[Any]:
        """Library items of ``(JSON item, field path)`` pairs; images are decoded off the event loop."""
        if self.parser.decodes_images:
            return await asyncio.to_thread(self.parser.parse_each, located)
        return self.parser.parse_each(located)

    def _listed(self, values: Any, field: str) -> list[tuple[Any, str]]:
        values = self.parser.check_count(values, field)
        return [(value, f"{field}[{i}]") for i, value in enumerate(values)]

    async def embeddings(self, raw: Any) -> dict[str, Any]:
        items = await self._parse(self._listed(raw, "input") if isinstance(raw, list) else [(raw, "input")])
        rows, sizes = await self.batcher.encode(items, want_sizes=True)
        tokens = int(np.sum(sizes)) if sizes is not None else 0
        return {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": row.tolist()} for i, row in enumerate(rows)],
            "model": self.name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    async def similarity(self, pairs: list[list[Any]]) -> dict[str, Any]:
        self.parser.check_count(pairs, "pairs")
        flat = await self._parse([(x, f"pairs[{i}][{j}]") for i, pair in enumerate(pairs) for j, x in enumerate(pair)])
        side_a, side_b = flat[0::2], flat[1::2]
        model = self.model
        # One encoder call over the union of both sides in canonical order, as the library does,
        # so p(a, b) == p(b, a) bit for bit, whichever request or batch they come in.
        distances = await self.batcher.call(lambda: model.distance(side_a, side_b, batch_size=self.batcher.max_batch))
        calibrator = model.calibrator
        probs = None if calibrator is None else calibrator.predict_proba(distances)
        decisions = None if calibrator is None else calibrator.predict(distances)
        return {
            "metric": model.metric.value,
            "threshold": None if calibrator is None else float(calibrator.threshold),
            "results": [{"distance": float(d),
                         "probability": None if probs is None else float(probs[i]),
                         "similar": None if decisions is None else bool(decisions[i])}
                        for i, d in enumerate(distances)],
        }

    async def search(self, queries: list[Any], k: int, min_prob: float | None,
                     max_distance: float | None) -> dict[str, Any]:
        if k > self.limits.max_k:
            raise limit_exceeded("k", "k", self.limits.max_k, k)
        if min_prob is not None and max_distance is not None:
            raise invalid("max_distance", "give at most one of min_prob and max_distance")
        if min_prob is not None and self.model.calibrator is None and self.live.index.calibrator is None:
            raise invalid("min_prob", "min_prob needs a calibrated model; this one has no calibrator "
                                      "(use max_distance)", "no_calibrator")
        items = await self._parse(self._listed(queries, "queries"))
        rows, _ = await self.batcher.encode(items)
        results = await asyncio.to_thread(self.live.search, rows, k, min_prob, max_distance)
        return {"results": [[{"id": result.ids[j], "item": result.texts[j], "distance": float(result.distances[j]),
                              "probability": None if result.probabilities is None else float(result.probabilities[j])}
                             for j in range(len(result))] for result in results]}

    def _check_id(self, item_id: Any, field: str) -> str:
        if not isinstance(item_id, str) or not item_id.strip():
            raise invalid(field, f"{field} must be a non-empty string")
        if len(item_id) > self.limits.max_id_chars:
            raise limit_exceeded(field, "the id length in characters", self.limits.max_id_chars, len(item_id))
        check_unicode(item_id, field)
        return item_id

    async def add_items(self, entries: list[Any]) -> dict[str, Any]:
        self.parser.check_count(entries, "items")
        self.live.require_writable()
        ids = [self._check_id(entry.id, f"items[{i}].id") for i, entry in enumerate(entries)]
        items = await self._parse([(entry.item, f"items[{i}].item") for i, entry in enumerate(entries)])
        rows, _ = await self.batcher.encode(items)
        encoder = self.model.encoder
        descriptions = [encoder.describe_item(item) for item in items]
        size = await asyncio.to_thread(self.live.add, ids, descriptions, rows)
        return {"added": ids, "size": size}

    async def delete_item(self, item_id: str) -> dict[str, Any]:
        self._check_id(item_id, "id")
        size = await asyncio.to_thread(self.live.delete, item_id)
        return {"deleted": item_id, "size": size}

    async def get_item(self, item_id: str) -> dict[str, Any]:
        self._check_id(item_id, "id")
        return {"id": item_id, "item": await asyncio.to_thread(self.live.get, item_id)}
