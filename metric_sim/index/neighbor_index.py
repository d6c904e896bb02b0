"""``NeighborIndex``: FAISS k-NN and range search over items embedded by a ``SimilarityModel``.

The index answers "which stored items are similar to this one?" with the same metric
the model was trained and calibrated on, and returns **true** distances plus calibrated
probabilities. It talks to the encoder only through the contract
(:class:`~metric_sim.encoders.base.ItemEncoder`): items are whatever the encoder accepts
(texts for a text encoder), checked by ``check_items`` and stored as ``describe_item``.

This class composes the parts: the kinds and their parameters (:mod:`.kinds`), the FAISS
vectors (:mod:`.vectors`), the id/description store (:mod:`.store`; on disk for the
compressed kinds, :mod:`.disk_store`), search with exact
re-ranking (:mod:`.search`), the folder on disk (:mod:`.persistence`) and the model
checks (:mod:`.model_link`). Model on load: ``load(dir, model=...)`` checks the given
model's fingerprint; with no model, the model recorded at build time (``model_path``) is
loaded and checked; without either, the index still loads but item queries raise
(vector queries work).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from metric_sim.calibration import Calibrator
from metric_sim.distances import Metric
from metric_sim.errors import InvalidArgumentError, InvalidArgumentTypeError
from metric_sim.index import compressed, model_link, persistence, search
from metric_sim.index.disk_store import DiskItemStore
from metric_sim.index.kinds import check_search_params, parse_index_kind, resolve_params
from metric_sim.index.results import DedupeResult, SearchResult
from metric_sim.index.store import ItemStore, describe_items
from metric_sim.layout import STORE_FILE, VECTORS_FILE
from metric_sim.model import SimilarityModel
from metric_sim.validation import require_matrix, require_positive_int

__all__ = ["NeighborIndex"]

logger = logging.getLogger(__name__)


class NeighborIndex:
    """Items, their ids and embeddings in FAISS, searched with the model's metric.

    Create with :meth:`build` (encode items with a model), :meth:`from_embeddings`
    (vectors you already have) or :meth:`load`. Parameters named ``texts`` take any items
    the model's encoder accepts; :attr:`texts` and results hold their descriptions.
    """

    def __init__(self, dim: int, metric: Metric | str, kind: str = "flat", *, model: SimilarityModel | None = None,
                 calibrator: Calibrator | None = None, **params: Any) -> None:
        self.dim = require_positive_int("dim", dim)
        self.metric = Metric.parse(metric)
        self.kind, fixed = parse_index_kind(kind, self.metric)
        self._vectors = compressed.new_vectors(self.kind, self.dim, self.metric, resolve_params(self.kind, fixed, params))
        # Compressed kinds exist for corpora that outgrow RAM: their ids and descriptions stay on disk too.
        self._store: ItemStore | DiskItemStore = DiskItemStore() if self._vectors.compressed else ItemStore()
        self.model: SimilarityModel | None = None
        self.encoder_fingerprint: str | None = None
        self.model_path: str | None = None
        if model is not None:
            model_link.check_model(model, self.metric, self.dim, where="model")
            self.model = model
            # Taken now: it must describe the encoder that embeds the stored vectors.
            self.encoder_fingerprint = model.encoder.fingerprint()
            self.model_path = model_link.model_location(model)
        if calibrator is None and model is not None:
            calibrator = model.calibrator
        if calibrator is not None and calibrator.metric is not self.metric:
            raise InvalidArgumentError(
                f"calibrator was fitted for metric {calibrator.metric.value!r}, but the index uses {self.metric.value!r}"
            )
        self.calibrator = calibrator

    @classmethod
    def build(cls, model: SimilarityModel, texts: Sequence[Any], ids: Sequence[str | int] | None = None,
              kind: str = "flat", *, batch_size: int = 64, show_progress: bool = False, **params: Any) -> NeighborIndex:
        """Encode the items ``texts`` with ``model.embed`` and index them (ids default to "0", "1", ...)."""
        if not isinstance(model, SimilarityModel):
            raise InvalidArgumentTypeError(f"model must be a SimilarityModel, got {type(model).__name__}")
        items = model.encoder.check_items(texts, "texts")
        if not items:
            raise InvalidArgumentError("texts is empty: an index needs at least one text")
        index = cls(model.encoder.embedding_dim, model.metric, kind, model=model, **params)
        index.check_new_ids(items, ids)  # fail before the (slow) encoding
        started = time.perf_counter()
        embeddings = model.embed(items, batch_size=batch_size, show_progress=show_progress)
        elapsed = time.perf_counter() - started
        logger.info("encoded %d items in %.1f s (%.0f items/s)", len(items), elapsed, len(items) / max(elapsed, 1e-9))
        index.add_embeddings(embeddings, items, ids)
        return index

    @classmethod
    def from_embeddings(cls, embeddings: Any, texts: Sequence[Any], ids: Sequence[str | int] | None = None, *,
                        metric: Metric | str, kind: str = "flat", model: SimilarityModel | None = None,
                        calibrator: Calibrator | None = None, **params: Any) -> NeighborIndex:
        """Index vectors computed elsewhere. Item queries need ``model`` (the one that made them)."""
        embeddings = require_matrix("embeddings", embeddings)
        index = cls(embeddings.shape[1], metric, kind, model=model, calibrator=calibrator, **params)
        index.add_embeddings(embeddings, texts, ids)
        return index

    @property
    def params(self) -> dict[str, int | None]:
        """The kind's parameters (for ivf, nlist / nprobe are filled in when it is trained)."""
        return self._vectors.params

    def set_search_params(self, **params: int) -> None:
        """Change search-time parameters (``efSearch`` for hnsw, ``nprobe`` for ivf, ``nprobe`` and
        ``rerank`` for ivfpq / opq-ivfpq)."""
        self._vectors.params.update(check_search_params(self.kind, params))

    def __len__(self) -> int:
        return len(self._store)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._store

    def __repr__(self) -> str:
        return f"NeighborIndex(kind={self.kind!r}, metric={self.metric.value!r}, dim={self.dim}, items={len(self)}, params={self.params})"

    @property
    def ids(self) -> list[str]:
        return self._store.ids

    @property
    def texts(self) -> list[str]:
        """The stored description of every item (the texts themselves for texts), in :attr:`ids` order."""
        return self._store.texts

    def text_of(self, item_id: str | int) -> str:
        return self._store.text_of(item_id)

    def embeddings(self) -> np.ndarray:
        """The stored vectors (float32, in :attr:`ids` order), reconstructed from FAISS (read
        from the vector file for ivfpq / opq-ivfpq)."""
        return self._vectors.reconstruct(self._store.keys())

    def check_new_ids(self, texts: Sequence[Any], ids: Sequence[str | int] | None) -> list[str]:
        """The ids ``texts`` would get if added now; refuses bad, repeated or already stored ids."""
        return self._store.check_new_ids(len(texts), ids)

    def add(self, texts: Sequence[Any], ids: Sequence[str | int] | None = None, *, batch_size: int = 64,
            show_progress: bool = False) -> list[str]:
        """Encode and add the items ``texts``; returns their ids (as strings)."""
        model = self._require_model()
        items = model.encoder.check_items(texts, "texts")
        self.check_new_ids(items, ids)
        return self.add_embeddings(
            model.embed(items, batch_size=batch_size, show_progress=show_progress), items, ids
        )

    def add_embeddings(self, embeddings: Any, texts: Sequence[Any], ids: Sequence[str | int] | None = None) -> list[str]:
        """Add precomputed vectors (they must come from this index's encoder) with their items."""
        encoder = None if self.model is None else self.model.encoder
        items, descriptions = describe_items(encoder, texts, "texts")
        vectors = np.ascontiguousarray(require_matrix("embeddings", embeddings, columns=self.dim), dtype=np.float32)
        if vectors.shape[0] != len(items):
            raise InvalidArgumentError(
                f"embeddings and texts must have the same length, got {vectors.shape[0]} and {len(items)}"
            )
        new_ids = self.check_new_ids(items, ids)
        if not items:
            return []
        keys = self._store.next_keys(len(items))
        self._vectors.add(vectors, keys)
        self._store.insert(keys, new_ids, descriptions)
        if self._vectors.compressed and self._vectors.recall is None:  # just trained: measure what it costs
            self.measure_recall()
        return new_ids

    def measure_recall(self, queries: int = compressed.RECALL_QUERIES, seed: int = compressed.RECALL_SEED) -> float:
        """Recall@10 of :meth:`search_embeddings` against exact search, ``queries`` stored vectors
        (drawn with ``seed``) as queries, each leaving itself out. Compressed kinds record it
        (measured once when trained; call again after many adds or removals, which :meth:`info`
        reports as ``recall.stale``)."""
        measured = compressed.measure_recall(self._vectors, self._store, queries=queries, seed=seed)
        if self._vectors.compressed:
            self._vectors.recall = measured
        return float(measured["recall_at_10"])

    def info(self) -> dict[str, Any]:
        """Kind, metric, dimension, item count and parameters; for the compressed kinds also the
        RAM bytes per item (codes + int64 ids), the vector file, the recorded recall@10, the item
        store (``sqlite``: ids and descriptions on disk, int64 keys in RAM) and the RAM bytes per
        item of the whole index (codes + ids + the store's keys), from sizes, not measured.

        ``recall`` (compressed kinds, None until measured) sets the recorded recall@10 next to the
        item count it was measured at: ``stale`` once adds or removals changed the count since, with
        a ``note`` saying so (adds do not measure it again: :meth:`measure_recall` does)."""
        found: dict[str, Any] = {"kind": self.kind, "metric": self.metric.value, "dim": self.dim,
                                 "items": len(self), "params": dict(self.params)}
        if self._vectors.compressed:
            found["compressed"] = stats = self._vectors.stats()
            path = self._vectors.vector_file  # the file mapped (a saved folder's may since have moved)
            found["vector_file"] = None if path is None else str(path)
            found["vector_file_bytes"] = stats["vector_rows"] * self.dim * 4  # float32 rows, removed ones too
            store_file = getattr(self._store, "file", None)
            found["store"] = {"kind": self._store.kind, "ram_bytes_per_item": self._store.ram_bytes_per_item,
                              "file": None if store_file is None else str(store_file)}
            parts = (stats["ram_bytes_per_item"], self._store.ram_bytes_per_item)
            found["ram_bytes_per_item"] = None if None in parts else sum(parts)  # type: ignore[arg-type]
            found["recall"] = _recall_status(stats["recall"], len(self))
        return found

    def remove(self, ids: Sequence[str | int]) -> int:
        """Remove items by id; returns how many. Unknown ids raise ``KeyError`` (nothing removed).

        hnsw rebuilds its graph from the remaining stored vectors (FAISS HNSW has no removal).
        """
        if isinstance(ids, (str, bytes, int)):
            raise InvalidArgumentTypeError(f"ids must be a list of ids, got {type(ids).__name__} {ids!r}")
        wanted, keys = self._store.keys_of(ids)
        if not wanted:
            return 0
        gone = set(keys.tolist())
        keep = np.array([k for k in self._store.keys().tolist() if k not in gone], dtype=np.int64)
        removed = self._vectors.remove(keys, keep)
        assert removed == len(wanted), f"FAISS removed {removed} of {len(wanted)} keys"
        self._store.delete(wanted)
        return removed

    def _require_model(self) -> SimilarityModel:
        return model_link.require_model(self.model, self.encoder_fingerprint)

    def _embed_queries(self, queries: Sequence[Any], batch_size: int) -> tuple[list[str], np.ndarray]:
        model = self._require_model()
        items, descriptions = describe_items(model.encoder, queries, "queries")
        # Through model.embed, exactly like the stored items, so a stored item finds itself at ~0.
        return descriptions, model.embed(items, batch_size=batch_size)

    def _query_matrix(self, vectors: Any) -> np.ndarray:
        return np.ascontiguousarray(require_matrix("query embeddings", vectors, columns=self.dim), dtype=np.float32)

    def search(self, queries: Sequence[Any], k: int = 5, *, min_prob: float | None = None,
               max_distance: float | None = None, batch_size: int = 64, rerank: bool = True) -> list[SearchResult]:
        """The ``k`` nearest stored items of each query item, optionally only those with
        ``p >= min_prob`` (or ``d <= max_distance``).

        ``rerank=False`` skips the exact float64 re-ranking and reports FAISS' own distances
        (square-rooted for L2): faster, but off by float32 rounding (~1e-3 near distance 0).
        """
        labels, vectors = self._embed_queries(queries, batch_size)
        return self._knn(vectors, k, labels, min_prob, max_distance, rerank)

    def search_embeddings(self, vectors: Any, k: int = 5, *, min_prob: float | None = None,
                          max_distance: float | None = None, rerank: bool = True) -> list[SearchResult]:
        """:meth:`search` for query vectors made by this index's encoder."""
        return self._knn(self._query_matrix(vectors), k, None, min_prob, max_distance, rerank)

    def _knn(self, vectors: np.ndarray, k: int, labels: list[str] | None, min_prob: float | None,
             max_distance: float | None, rerank: bool) -> list[SearchResult]:
        return search.knn(self._vectors, self._store, self.calibrator, self._query_matrix(vectors), k, labels,
                          min_prob, max_distance, rerank)

    def range_search(self, queries: Sequence[Any], *, min_prob: float | None = None,
                     max_distance: float | None = None, batch_size: int = 64) -> list[SearchResult]:
        """Every stored item with ``p(similar) >= min_prob`` (radius ``calibrator.distance_at``)
        or ``distance <= max_distance``, nearest first."""
        labels, vectors = self._embed_queries(queries, batch_size)
        return self._range(vectors, labels, min_prob, max_distance)

    def range_search_embeddings(self, vectors: Any, *, min_prob: float | None = None,
                                max_distance: float | None = None) -> list[SearchResult]:
        """:meth:`range_search` for query vectors made by this index's encoder."""
        return self._range(self._query_matrix(vectors), None, min_prob, max_distance)

    def _range(self, vectors: np.ndarray, labels: list[str] | None, min_prob: float | None,
               max_distance: float | None) -> list[SearchResult]:
        radius = search.search_radius(self.calibrator, min_prob, max_distance)
        hits = list(search.range_hits(self._vectors, len(self._store), vectors, radius))
        return search.to_results(self._store, self.calibrator, [None if labels is None else labels[i] for i, _, _ in hits],
                                 [keys for _, keys, _ in hits], [dist for _, _, dist in hits])

    def dedupe(self, min_prob: float | None = 0.5, *, max_distance: float | None = None,
               show_progress: bool = False) -> DedupeResult:
        """All pairs of stored items with ``p >= min_prob`` (or ``d <= max_distance``), found by
        range search with every stored vector as a query, joined into clusters by union-find.

        Exact for ``flat``; ``hnsw``/``ivf`` may miss pairs their candidate search misses.
        """
        if max_distance is not None:
            min_prob = None
        radius = search.search_radius(self.calibrator, min_prob, max_distance)
        return search.find_duplicates(self._vectors, self._store, self.calibrator, radius, min_prob,
                                      show_progress=show_progress)

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``index.faiss``, ``store.sqlite`` and ``metadata.json`` (and, for ivfpq / opq-ivfpq,
        ``vectors.f32``) atomically into ``directory``.

        An existing folder is replaced only if it holds a saved index (or nothing).
        """
        if self._vectors.index is None:
            raise InvalidArgumentError(f"this {self.kind} index is empty and untrained: add texts before saving")
        provenance = {
            "encoder_fingerprint": self.encoder_fingerprint,
            "model_path": self.model_path,
            "calibrator": None if self.calibrator is None else self.calibrator.to_dict(),
        }
        target = persistence.write_index_folder(directory, self._vectors, self._store, provenance)
        if self._vectors.compressed:  # map the saved file from now on; our temporary copy goes
            self._vectors.attach(target / VECTORS_FILE, self._store.next_key)
        if isinstance(self._store, DiskItemStore):  # the same for the store's file
            self._store.attach(target / STORE_FILE)
        return target

    @classmethod
    def load(cls, directory: str | os.PathLike[str], model: SimilarityModel | None = None, *,
             load_model: bool = True) -> NeighborIndex:
        """Load a saved index, refusing anything that could return wrong neighbours.

        ``model`` must be the encoder the index was built with (same fingerprint, metric and
        dimension). Without it, the model recorded at build time is loaded (``load_model=True``)
        when it is still there; otherwise the index loads without a model and only vector
        queries work.
        """
        folder, meta = persistence.read_metadata(directory)
        index = cls(int(meta["dim"]), meta["metric"], meta["kind"], **dict(meta["params"]))
        index.encoder_fingerprint = meta.get("encoder_fingerprint")
        index.model_path = meta.get("model_path")
        index._vectors.max_sq_norm = float(meta.get("max_sq_norm", 0.0))
        if meta.get("calibrator"):
            index.calibrator = Calibrator.from_dict(meta["calibrator"])
        index._vectors.index = persistence.read_faiss_index(folder, meta, index._vectors)
        store_class = DiskItemStore if index._vectors.compressed else ItemStore
        index._store = store_class.read_sqlite(folder / STORE_FILE, count=int(meta["count"]),
                                               next_key=int(meta["next_key"]))
        persistence.check_store_matches(index._store, index._vectors.index, folder / STORE_FILE)
        if index._vectors.compressed:
            index._vectors.attach(folder / VECTORS_FILE, index._store.next_key)
            index._vectors.restore(meta["compressed"])
        persistence.verify_metadata_seal(meta, folder)  # last: the checks above say *what* disagrees
        index._attach_model(model, load_model)
        return index

    def _attach_model(self, model: SimilarityModel | None, load_model: bool) -> None:
        source = "model"
        if model is None and load_model and self.model_path:
            model = model_link.load_recorded_model(self.model_path)
            source = model_link.recorded_model_label(self.model_path)
        if model is None:
            return
        model_link.check_model(model, self.metric, self.dim, where=source)
        model_link.check_fingerprint(model, self.encoder_fingerprint, where=source)
        self.model = model
        self.calibrator = model_link.preferred_calibrator(model.calibrator, self.calibrator)


def _recall_status(recorded: dict[str, Any] | None, items: int) -> dict[str, Any] | None:
    """The recorded recall@10 and the item count it describes; stale when the index holds another count."""
    if recorded is None:
        return None
    measured_at = int(recorded["items"])
    stale = measured_at != items
    note = (f"recall@10 {float(recorded['recall_at_10']):.3f} was measured at {measured_at:,} items; the index now "
            f"holds {items:,}: call NeighborIndex.measure_recall() (then save()) to measure it again"
            if stale else None)
    return {"recall_at_10": float(recorded["recall_at_10"]), "measured_at_items": measured_at, "items": items,
            "stale": stale, "note": note}
