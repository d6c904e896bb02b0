"""Compressed kinds (``ivfpq``, ``opq-ivfpq``): PQ codes in memory, full vectors on disk.

FAISS holds only the codes and their int64 keys (``code_size + 8`` bytes per item). The
full float32 vectors live in one raw file (little-endian, row = key), memory-mapped
read-only; a search reads only the rows of its candidates and recomputes their distances
exactly (:mod:`.search`), so every returned distance is the true one.

The codes are always compared under L2: FAISS has no L1 on PQ codes (with ``METRIC_L1``
it silently returns wrong neighbours). A manhattan index therefore takes its candidates
from the L2-nearest codes and re-ranks them exactly in L1, so a true L1 neighbour the L2
candidates miss is missed. Recall@10 against exact search is measured when the index is
trained (:func:`measure_recall`) and recorded with the index.

With ``nbits=4`` the codes use FAISS' fast-scan layout (``PQ{m}x4fs``: codes packed in
blocks of 32 and scanned with SIMD shuffles), several times faster to scan than 8-bit codes of
the same size. Its lookup tables are rounded to 8 bits per entry, so its distances are off by
up to ``m * span / 510`` (``span``: the widest per-sub-quantizer table of the query); range
search widens its radius by twice that (:meth:`CompressedVectors.faiss_radius`). The codes are
not residuals of the coarse centroids (``by_residual`` off), so each query has one table and
the bound can be computed from the query and the codebooks alone.

Where the vector file lives: a private temporary file (under ``TMPDIR``) until ``save``,
then the saved folder's file, opened read-only. The first ``add`` after that copies it to
a private file again: the saved folder only ever changes through an atomic ``save``.
Removed rows stay in the file (keys are never reused) until the index is rebuilt.

FAISS is imported inside the functions, so importing this module does not load it.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from metric_sim.distances import (
    Metric,
    all_pairs_distances_numpy,
    faiss_metric,
    true_to_faiss_radius,
)
from metric_sim.errors import IndexConfigError, IndexLoadError
from metric_sim.index import search
from metric_sim.index.disk_store import DiskItemStore
from metric_sim.index.kinds import COMPRESSED_KINDS
from metric_sim.index.store import ItemStore
from metric_sim.index.vectors import FaissVectors
from metric_sim.layout import METADATA_FILE, VECTORS_FILE

__all__ = ["CompressedVectors", "measure_recall", "new_vectors"]

logger = logging.getLogger(__name__)

TRAIN_PER_LIST = 256  # training sample: min(n, 256 * nlist (or 2**nbits if more), 100k) rows ...
MAX_TRAIN = 100_000
TRAIN_SEED = 0  # ... drawn with a fixed seed, so a rebuild trains the same quantizer
RECALL_QUERIES = 200  # stored vectors used as queries when recall@10 is measured
RECALL_SEED = 0
MAX_NBITS = 16  # 2**nbits centroids per sub-quantizer, each trained by k-means
FAST_SCAN_NBITS = 4  # the only code width FAISS' fast-scan kernels take
_ROW_CHUNK = 65536  # rows per pass when encoding
_RECALL_CHUNK = 16384  # stored rows per block of exact distances to the recall queries
_DTYPE = np.dtype("<f4")
_FLOAT32_EPS = float(np.finfo(np.float32).eps)


def new_vectors(kind: str, dim: int, metric: Metric, params: dict[str, int | None]) -> Any:
    """The vector holder of ``kind``: :class:`CompressedVectors` or :class:`~.vectors.FaissVectors`."""
    if kind in COMPRESSED_KINDS:
        return CompressedVectors(kind, dim, metric, params)
    return FaissVectors(kind, dim, metric, params)


def _default_m(dim: int, nbits: int) -> int:
    # About one bit of code per dimension: 48 one-byte codes (or 96 fast-scan nibbles) for
    # 384-dim MiniLM vectors, so the code size stays dim / 8 bytes whatever nbits is.
    return max(m for m in range(1, max(1, dim // nbits) + 1) if dim % m == 0)


class CompressedVectors:
    """IVF-PQ codes (optionally OPQ-rotated) in FAISS; the full vectors in a memory-mapped file."""

    compressed = True

    def __init__(self, kind: str, dim: int, metric: Metric, params: dict[str, int | None]) -> None:
        self.kind = kind
        self.dim = dim
        self.metric = metric
        self.params = params  # the NeighborIndex's own dict: nlist / nprobe / m are filled in here
        if int(params["nbits"]) > MAX_NBITS:
            raise IndexConfigError(f"{kind}: nbits must be at most {MAX_NBITS}, got {params['nbits']}")
        if params["m"] is None:
            params["m"] = _default_m(dim, int(params["nbits"]))
        if dim % int(params["m"]):
            raise IndexConfigError(f"{kind}: m={params['m']} sub-quantizers must divide the dimension dim={dim}")
        self.index: Any = None  # trained on the first vectors added
        self.max_sq_norm = 0.0
        self.max_code_error = 0.0  # largest |x - decode(encode(x))|: widens range search
        self.train_size = 0
        self.recall: dict[str, Any] | None = None  # recall@10 as measure_recall recorded it
        self._path: Path | None = None  # the vector file in use
        self._rows = 0
        self._map: np.ndarray = np.zeros((0, dim), np.float32)
        self._private: Path | None = None  # our temporary folder, if the file in use is ours
        self._cleanup: Any = None

    @property
    def fast_scan(self) -> bool:
        """Whether the codes use FAISS' fast-scan layout (``nbits=4``)."""
        return int(self.params["nbits"]) == FAST_SCAN_NBITS

    @property
    def faiss_metric_type(self) -> int:
        import faiss

        return faiss.METRIC_L2  # the codes are compared under L2 whatever the index's metric

    @property
    def ram_bytes_per_item(self) -> int | None:
        """FAISS code bytes plus the int64 key stored beside each code in the inverted lists."""
        if self.index is None:
            return None
        return int(self._ivf().code_size) + np.dtype(np.int64).itemsize

    def _ivf(self) -> Any:
        import faiss

        return faiss.downcast_index(faiss.extract_index_ivf(self.index))

    def new_index(self, n_train: int) -> Any:
        """An untrained FAISS index for ``n_train`` vectors (nlist / nprobe chosen now if unset)."""
        import faiss

        if self.params["nlist"] is None:  # as for ivf: ~4 sqrt(n) lists, >= 39 points each
            self.params["nlist"] = max(1, min(int(4 * math.sqrt(n_train)), n_train // 39))
        nlist, m, nbits = int(self.params["nlist"]), int(self.params["m"]), int(self.params["nbits"])
        if self.params["nprobe"] is None:
            self.params["nprobe"] = max(16, -(-nlist // 10))
        need = max(nlist, 2**nbits)
        if n_train < need:
            raise IndexConfigError(
                f"{self.kind} with nlist={nlist} and nbits={nbits} needs at least {need} vectors to train "
                f"({nlist} lists and 2**{nbits} = {2**nbits} centroids per sub-quantizer), got {n_train}: "
                "add more vectors at once, or lower nlist / nbits"
            )
        spec = f"IVF{nlist},PQ{m}x{nbits}" + ("fs" if self.fast_scan else "")
        index = faiss.index_factory(self.dim, f"OPQ{m},{spec}" if self.kind == "opq-ivfpq" else spec, faiss.METRIC_L2)
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
        if self.fast_scan:
            ivf.by_residual = False  # one lookup table per query: what faiss_radius bounds
        else:
            ivf.do_polysemous_training = False  # only for Hamming filtering, which is not used; slow
        # Small samples: one warning from us instead of FAISS' line per sub-quantizer and iteration.
        ivf.cp.min_points_per_centroid = 1
        ivf.pq.cp.min_points_per_centroid = 1
        return index

    def _train(self, vectors: np.ndarray) -> None:
        import faiss

        index = self.new_index(len(vectors))
        nlist, nbits = int(self.params["nlist"]), int(self.params["nbits"])
        size = min(len(vectors), max(TRAIN_PER_LIST * nlist, 2**nbits), MAX_TRAIN)
        rows = np.sort(np.random.default_rng(TRAIN_SEED).choice(len(vectors), size, replace=False))
        sample = np.ascontiguousarray(vectors[rows], dtype=np.float32)
        if size < 39 * 2**nbits:
            logger.warning("%s: training PQ on %d vectors, FAISS advises >= %d (39 per centroid); "
                           "the recall measured after training tells the cost", self.kind, size, 39 * 2**nbits)
        opq_pq = None
        if self.kind == "opq-ivfpq":  # its own PQ, so the rotation is learnt for these nbits, quietly
            opq = faiss.downcast_VectorTransform(faiss.downcast_index(index).chain.at(0))
            opq_pq = faiss.ProductQuantizer(self.dim, int(self.params["m"]), nbits)
            opq_pq.cp.min_points_per_centroid = 1
            opq.pq = opq_pq
        index.train(sample)
        if opq_pq is not None:
            opq.pq = None  # not saved by FAISS; drop the pointer before opq_pq goes
        self.index, self.train_size = index, size

    def add(self, vectors: np.ndarray, keys: np.ndarray) -> None:
        """Append rows ``keys`` (the next keys, consecutive) to the vector file and their codes to FAISS."""
        if self.index is None:
            self._train(vectors)
        first = int(keys[0])
        if not np.array_equal(keys, np.arange(first, first + len(keys))) or first > self._rows:
            raise IndexConfigError(f"{self.kind}: keys must continue the vector file (row {self._rows}), got {first}...")
        self._append_rows(vectors, first)
        self.index.add_with_ids(vectors, keys)
        self.max_sq_norm = max(self.max_sq_norm, float(np.max(np.einsum("ij,ij->i", vectors, vectors))))
        for start in range(0, len(vectors), _ROW_CHUNK):
            chunk = vectors[start : start + _ROW_CHUNK]
            decoded = self.index.sa_decode(self.index.sa_encode(chunk))
            error = np.sqrt(np.max(np.sum((chunk.astype(np.float64) - decoded) ** 2, axis=1)))
            self.max_code_error = max(self.max_code_error, float(error))

    def remove(self, keys: np.ndarray, keep: np.ndarray) -> int:
        """Remove the codes of ``keys``; their rows stay in the vector file (keys are never reused)."""
        return int(self.index.remove_ids(keys))

    def reconstruct(self, keys: np.ndarray) -> np.ndarray:
        """The exact float32 vectors of ``keys``, read from the vector file (only those rows)."""
        if not keys.size:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.array(self._map[keys], dtype=np.float32)

    def apply_search_params(self) -> None:
        if self.index is not None:
            ivf = self._ivf()
            ivf.nprobe = min(int(self.params["nprobe"]), int(ivf.nlist))

    def rerank_count(self, k: int) -> int:
        """Candidates re-ranked per query for ``k`` neighbours: ``rerank`` (default 10 k), at least ``k``."""
        rerank = self.params["rerank"]
        return max(k, 10 * k if rerank is None else int(rerank))

    def faiss_radius(self, radius: float, queries: np.ndarray) -> float:
        """Squared L2 radius for true ``radius``: any stored x within ``radius`` (L2 <= L1 too) has
        |q - decode(x)| <= radius + max_code_error, so only the unprobed lists can lose a hit."""
        raw = true_to_faiss_radius(radius + self.max_code_error, Metric.EUCLIDEAN)
        slack = 16.0 * self.dim * _FLOAT32_EPS  # ADC sums m table entries in float32
        q_sq = float(np.max(np.einsum("ij,ij->i", queries, queries))) if len(queries) else 0.0
        widened = raw * (1.0 + slack) + slack * (q_sq + self.max_sq_norm) + 1e-12
        return widened + (self._table_rounding(queries) if self.fast_scan else 0.0)

    def _table_rounding(self, queries: np.ndarray) -> float:
        """Twice the largest error fast-scan's 8-bit lookup tables can add to a squared distance.

        FAISS rounds each query's table (m sub-quantizers x 16 entries) to integers in steps of
        ``span / 255``, ``span`` being the widest sub-table's max - min, and sums m entries: at
        most ``m * span / 510`` off. Computed here from the query (rotated first for OPQ) and
        the codebooks, exactly as FAISS builds the table for non-residual codes."""
        import faiss

        if not len(queries):
            return 0.0
        ivf = self._ivf()
        rows = np.ascontiguousarray(queries, dtype=np.float32)
        if isinstance(self.index, faiss.IndexPreTransform):
            rows = faiss.downcast_VectorTransform(self.index.chain.at(0)).apply(rows)
        pq = ivf.pq
        books = faiss.vector_to_array(pq.centroids).reshape(pq.M, pq.ksub, pq.dsub).astype(np.float64)
        parts = rows.reshape(len(rows), pq.M, 1, pq.dsub).astype(np.float64)
        tables = np.sum((parts - books[None]) ** 2, axis=-1)  # (queries, m, 16)
        span = float(np.max(tables.max(axis=2) - tables.min(axis=2)))
        return 2.0 * pq.M * span / 510.0

    # The vector file.

    def _open_map(self) -> None:
        if self._rows == 0 or self._path is None:
            self._map = np.zeros((0, self.dim), np.float32)
        else:
            self._map = np.memmap(self._path, dtype=_DTYPE, mode="r", shape=(self._rows, self.dim))

    def _private_file(self) -> Path:
        """The vector file, made ours first (a copy of a saved folder's file) so it can grow."""
        if self._private is None:
            self._private = Path(tempfile.mkdtemp(prefix="metric-sim-vectors-"))
            self._cleanup = weakref.finalize(self, shutil.rmtree, str(self._private), True)
            target = self._private / VECTORS_FILE
            self.write_file(target, self._rows)
            self._path = target
        assert self._path is not None
        return self._path

    def _append_rows(self, vectors: np.ndarray, first: int) -> None:
        path = self._private_file()
        self._map = np.zeros((0, self.dim), np.float32)  # unmap before the file changes
        os.truncate(path, first * self.dim * _DTYPE.itemsize)  # drops rows of an add that failed
        with open(path, "ab") as handle:
            np.ascontiguousarray(vectors, dtype=_DTYPE).tofile(handle)
        self._rows = first + len(vectors)
        self._open_map()

    def write_file(self, path: Path, rows: int) -> None:
        """Write the first ``rows`` rows of the vector file to ``path`` (a save's staging folder).

        Read through the map, not the path: a saved folder replaced or deleted since it was
        mapped still reads back as it was mapped."""
        assert rows <= self._rows, f"{rows} rows asked of a vector file of {self._rows}"
        with open(path, "wb") as out:
            for start in range(0, rows, _ROW_CHUNK):
                np.ascontiguousarray(self._map[start : min(rows, start + _ROW_CHUNK)], dtype=_DTYPE).tofile(out)

    def attach(self, path: Path, rows: int) -> None:
        """Use the saved file ``path`` (``rows`` rows), memory-mapped read-only; drop our private copy."""
        expected = rows * self.dim * _DTYPE.itemsize
        if path.stat().st_size != expected:
            raise IndexLoadError(
                f"{path} has {path.stat().st_size} bytes, but {METADATA_FILE} says next_key={rows} rows of "
                f"{self.dim} float32 ({expected} bytes)"
            )
        self._map = np.zeros((0, self.dim), np.float32)
        self._path, self._rows = path, rows
        self._open_map()
        if self._cleanup is not None:
            self._cleanup()
        self._private = self._cleanup = None

    @property
    def vector_file(self) -> Path | None:
        return self._path

    def stats(self) -> dict[str, Any]:
        """What ``metadata.json`` records under ``compressed`` (and ``NeighborIndex.info`` shows)."""
        return {
            "ram_bytes_per_item": self.ram_bytes_per_item,
            "code_size": None if self.index is None else int(self._ivf().code_size),
            "fast_scan": self.fast_scan,
            "id_bytes": np.dtype(np.int64).itemsize,
            "train_vectors": self.train_size,
            "max_code_error": self.max_code_error,
            "max_sq_norm": self.max_sq_norm,
            "vector_rows": self._rows,
            "recall": self.recall,
        }

    def restore(self, stats: dict[str, Any]) -> None:
        """Take back what :meth:`stats` recorded (after the FAISS index and the file are loaded)."""
        self.train_size = int(stats["train_vectors"])
        self.max_code_error = float(stats["max_code_error"])
        self.max_sq_norm = float(stats["max_sq_norm"])
        self.recall = stats["recall"]

    def check_loaded(self, loaded: Any, where: Path) -> None:
        """Refuse a FAISS index that is not this kind's IVF-PQ (fast-scan for ``nbits=4``) with the
        recorded nlist, m and nbits."""
        import faiss

        try:
            ivf = faiss.downcast_index(faiss.extract_index_ivf(loaded))
        except RuntimeError:
            ivf = None
        opq = isinstance(loaded, faiss.IndexPreTransform)
        layout = faiss.IndexIVFPQFastScan if self.fast_scan else faiss.IndexIVFPQ
        if not isinstance(ivf, layout) or opq != (self.kind == "opq-ivfpq"):
            raise IndexLoadError(f"{where} holds a {type(loaded).__name__}, but {METADATA_FILE} says kind {self.kind!r}")
        found = {"nlist": ivf.nlist, "m": ivf.pq.M, "nbits": ivf.pq.nbits}
        for name, value in found.items():
            if value != self.params.get(name):
                raise IndexLoadError(f"{where} has {name}={value}, but {METADATA_FILE} says {self.params.get(name)}")


def measure_recall(vectors: Any, store: ItemStore | DiskItemStore, *, queries: int = RECALL_QUERIES,
                   seed: int = RECALL_SEED) -> dict[str, Any]:
    """Recall@10 of the index's own search against exact search, for ``queries`` stored vectors
    drawn with ``seed``. Each query's own item is left out of both lists (it would be a free hit),
    so the index is searched with k = 11."""
    k = 10
    keys = store.keys()
    n = len(keys)
    picked = np.sort(np.random.default_rng(seed).choice(n, min(queries, n), replace=False))
    query_keys = keys[picked]
    rows = vectors.reconstruct(query_keys)
    # Exact neighbours: one pass over the stored vectors, keeping the k + 1 nearest (itself included).
    # FAISS's exact flat search shortlists each block (NumPy's L1 goes a couple of rows at a time,
    # minutes at a million items); the shortlist's distances are then recomputed in float64.
    import faiss

    best_d = np.full((len(rows), 0), np.inf)
    best_k = np.zeros((len(rows), 0), np.int64)
    shortlist = 2 * (k + 1)  # slack for float32 near-ties at the cut
    for start in range(0, n, _RECALL_CHUNK):
        chunk = keys[start : start + _RECALL_CHUNK]
        block = np.ascontiguousarray(vectors.reconstruct(chunk), dtype=np.float32)
        flat = faiss.IndexFlat(block.shape[1], faiss_metric(vectors.metric))
        flat.add(block)
        _, near = flat.search(np.ascontiguousarray(rows, dtype=np.float32), min(shortlist, len(chunk)))
        exact = np.stack([all_pairs_distances_numpy(rows[q : q + 1], block[near[q]], vectors.metric)[0]
                          for q in range(len(rows))])
        d = np.concatenate([best_d, exact], 1)
        c = np.concatenate([best_k, chunk[near]], 1)
        order = np.lexsort((c, d))[:, : k + 1]  # by distance, ties by key (as search does)
        best_d, best_k = np.take_along_axis(d, order, 1), np.take_along_axis(c, order, 1)
    found = search.knn(vectors, store, None, rows, k + 1, None, None, None)
    wanted = np.unique(np.concatenate([query_keys, best_k.ravel()]))
    id_of = {key: item[0] for key, item in zip(wanted.tolist(), store.items_of(wanted), strict=True)}
    hits = total = 0
    for q, result in enumerate(found):
        me = id_of[int(query_keys[q])]
        truth = [id_of[key] for key in best_k[q].tolist() if key != query_keys[q]][:k]
        got = [item_id for item_id in result.ids if item_id != me][:k]
        hits += len(set(truth) & set(got))
        total += len(truth)
    return {"recall_at_10": 1.0 if total == 0 else hits / total, "queries": len(rows), "items": n, "seed": seed}
