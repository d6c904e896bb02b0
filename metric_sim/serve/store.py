"""The live index a server answers from: one lock, the index, and its data folder.

Every index operation (search, get, add, delete, snapshot) holds one lock, so a search
never sees half of an add; FAISS search is fast next to encoding, which happens before
the lock is taken. Writes are appended to the log (fsynced) before they touch the index.

The server encodes items itself (micro-batched) and hands the index vectors and stored
descriptions (``encoder.describe_item``), so the index is used without its model attached
(``index.model = None`` after the fingerprint check): what it stores is exactly what the log
replays, for texts, images and product records alike.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from metric_sim.errors import IndexLoadError, MetricSimError
from metric_sim.index import NeighborIndex, SearchResult
from metric_sim.model import SimilarityModel
from metric_sim.serve.durability import DataDir, decode_vectors, encode_vectors
from metric_sim.serve.errors import ApiError

__all__ = ["LiveIndex", "open_live_index"]

logger = logging.getLogger(__name__)


def _detached(index: NeighborIndex) -> NeighborIndex:
    index.model = None  # fingerprint checked already; the server embeds and describes items itself
    return index


def _base_index(model: SimilarityModel, index_dir: str | None) -> NeighborIndex:
    if index_dir is not None:
        return _detached(NeighborIndex.load(index_dir, model=model))
    return _detached(NeighborIndex(model.encoder.embedding_dim, model.metric, "flat", model=model))


def _replay(index: NeighborIndex, record: dict[str, Any]) -> None:
    op = record.get("op")
    try:
        if op == "add":
            ids, items = record["ids"], record["items"]
            vectors = decode_vectors(record["vectors"], len(ids), index.dim)
            index.add_embeddings(vectors, items, ids)
        elif op == "delete":
            index.remove([record["id"]])
        else:
            raise ValueError(f"unknown operation {op!r}")
    except (KeyError, ValueError, TypeError, MetricSimError) as exc:
        raise IndexLoadError(f"write {record.get('seq')} of the log does not apply to the snapshot: {exc}") from exc


def open_live_index(model: SimilarityModel, *, index_dir: str | None, data_dir: str | None,
                    snapshot_every: int = 1000, on_snapshot: Callable[[], None] | None = None) -> LiveIndex:
    """The index to serve: the data folder's newest snapshot plus its log, or ``index_dir``
    (or a new empty flat index) when the folder is new (then saved as its first snapshot).
    Without ``data_dir`` the index is read-only."""
    if data_dir is None:
        return LiveIndex(_base_index(model, index_dir), None, snapshot_every, on_snapshot)
    data = DataDir(data_dir)
    snapshot = data.latest_snapshot()
    if snapshot is None:
        index = _base_index(model, index_dir)
        data.write_snapshot(index)
        logger.info("new data folder %s: %d items in its first snapshot", data.folder, len(index))
    else:
        if index_dir is not None:
            logger.warning("--index %s is not read: %s has its own snapshot", index_dir, data.folder)
        index = _detached(NeighborIndex.load(snapshot, model=model))
        records = data.pending_records()
        for record in records:
            _replay(index, record)
        data.open_log()
        logger.info("loaded %s and replayed %d logged writes: %d items", snapshot.name, len(records), len(index))
    return LiveIndex(index, data, snapshot_every, on_snapshot)


class LiveIndex:
    """Thread-safe search, get, add and delete over one ``NeighborIndex``; writes durable first."""

    def __init__(self, index: NeighborIndex, data: DataDir | None, snapshot_every: int = 1000,
                 on_snapshot: Callable[[], None] | None = None) -> None:
        self.index = index
        self.data = data
        self.snapshot_every = snapshot_every
        self._on_snapshot = on_snapshot
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.index)

    @property
    def writable(self) -> bool:
        return self.data is not None

    @property
    def records_since_snapshot(self) -> int:
        return 0 if self.data is None else self.data.records_since_snapshot

    def search(self, vectors: np.ndarray, k: int, min_prob: float | None,
               max_distance: float | None) -> list[SearchResult]:
        with self._lock:
            return self.index.search_embeddings(vectors, k, min_prob=min_prob, max_distance=max_distance)

    def get(self, item_id: str) -> str:
        with self._lock:
            if item_id not in self.index:
                raise _unknown(item_id)
            return self.index.text_of(item_id)

    def add(self, ids: Sequence[str], descriptions: Sequence[str], vectors: np.ndarray) -> int:
        """Add the items (all or none); returns the index size. 409 when an id is taken."""
        data = self.require_writable()
        with self._lock:
            seen: set[str] = set()
            for i, item_id in enumerate(ids):
                if item_id in seen or item_id in self.index:
                    where = "twice in this request" if item_id in seen else "already in the index"
                    raise ApiError(409, "duplicate_id", f"id {item_id!r} is {where}; nothing was added",
                                   f"items[{i}].id")
                seen.add(item_id)
            vectors = np.ascontiguousarray(vectors, dtype=np.float32)
            _durably(data, {"op": "add", "ids": list(ids), "items": list(descriptions),
                            "vectors": encode_vectors(vectors)})
            self.index.add_embeddings(vectors, list(descriptions), list(ids))
            self._maybe_snapshot()
            return len(self.index)

    def delete(self, item_id: str) -> int:
        """Remove one item; returns the index size. 404 when the id is unknown."""
        data = self.require_writable()
        with self._lock:
            if item_id not in self.index:
                raise _unknown(item_id)
            _durably(data, {"op": "delete", "id": item_id})
            self.index.remove([item_id])
            self._maybe_snapshot()
            return len(self.index)

    def snapshot(self) -> None:
        """Save a snapshot now (when there are writes it does not cover yet)."""
        if self.data is None:
            return
        with self._lock:
            if self.data.records_since_snapshot:
                self._write_snapshot()

    def close(self) -> None:
        """Snapshot what the log holds and close the log (a clean shutdown)."""
        if self.data is None:
            return
        try:
            self.snapshot()
        finally:
            self.data.close()

    def require_writable(self) -> DataDir:
        if self.data is None:
            raise ApiError(409, "read_only", "this server has no data folder: start it with --data-dir to add "
                                             "or delete items")
        return self.data

    def _maybe_snapshot(self) -> None:
        if self.data is not None and self.data.records_since_snapshot >= self.snapshot_every:
            try:
                self._write_snapshot()
            except Exception:  # the write itself is durable in the log; try again after the next one
                logger.exception("snapshot failed; the log keeps every write")

    def _write_snapshot(self) -> None:
        path = self.data.write_snapshot(self.index)
        logger.info("snapshot %s: %d items", path.name, len(self.index))
        if self._on_snapshot is not None:
            self._on_snapshot()


def _durably(data: DataDir, record: dict[str, Any]) -> None:
    try:
        data.append(record)
    except OSError as exc:
        logger.exception("a write could not be logged")
        raise ApiError(503, "storage_error", "the write could not be made durable, so nothing changed "
                                         "(the server log says why)") from exc


def _unknown(item_id: str) -> ApiError:
    return ApiError(404, "unknown_id", f"id {item_id!r} is not in the index", "id")
