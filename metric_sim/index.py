"""``NeighborIndex``: FAISS k-NN and range search over texts embedded by a ``SimilarityModel``.

The index answers "which stored items are similar to this one?" with the same metric
the model was trained and calibrated on, and returns **true** distances (``IndexFlatL2``
gives squared L2; :mod:`metric_sim.distances` converts) plus calibrated probabilities.

Design choices
--------------
* **Exact vectors only.** Three kinds: ``flat`` (exact), ``hnsw`` and ``ivf`` (approximate
  candidate search over exactly stored vectors). Lossy codes (PQ, SQ, fast-scan, LSH, ...)
  are refused: with ``METRIC_L1`` FAISS mishandles them (PQ silently returns wrong
  neighbours, SQ/fast-scan/LSH fail, ``HNSW,SQ8`` aborts the process), and with L2 they
  give approximate distances that the calibrator would turn into wrong probabilities.
* **Exact re-ranking.** FAISS proposes candidates; their distances are then recomputed
  from the stored vectors in float64 (:func:`metric_sim.distances.paired_distances_numpy`).
  FAISS' BLAS path computes ``|q|^2 + |x|^2 - 2 q.x`` in float32, which is off by ~1e-3 in
  true units for near-duplicates after the square root; re-ranking makes every reported
  distance agree with brute force to float32 rounding.
* **Ids.** FAISS sees int64 keys ``0, 1, 2, ...`` (never reused); a sidecar maps each key
  to the caller's string id and text. ``flat`` and ``hnsw`` wrap their index in
  ``IndexIDMap2``; ``ivf`` stores keys natively with a hashtable direct map so it can
  ``remove`` and reconstruct. HNSW cannot remove from its graph: ``remove`` rebuilds the
  graph from the remaining stored vectors (no re-encoding; O(n log n), so batch removals).
* **Persistence.** ``save(dir)`` writes ``index.faiss``, ``store.sqlite`` (keys, ids, texts;
  never pickle) and ``metadata.json`` (dim, metric, kind, params, encoder fingerprint,
  calibrator, count, versions, size + sha256 of both data files) into a temporary folder
  that is renamed into place. ``load`` checks all of it and refuses on any mismatch.
* **Model on load.** ``load(dir, model=...)`` checks the given model's fingerprint; with no
  model, the model folder recorded at build time (``model_path``) is loaded and checked;
  without either, the index still loads but text queries raise (vector queries work).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
import sqlite3
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from metric_sim._io import atomic_dir, atomic_file, read_json, sha256_file, write_json_atomic
from metric_sim._validation import (
    require_matrix,
    require_positive_int,
    require_probability,
    require_texts,
)
from metric_sim.calibration import CalibrationError, Calibrator, SimilarityModel
from metric_sim.data import UnionFind
from metric_sim.distances import (
    Metric,
    faiss_metric,
    faiss_to_true_distance,
    paired_distances_numpy,
    true_to_faiss_radius,
)

logger = logging.getLogger(__name__)

__all__ = [
    "INDEX_KINDS",
    "DedupeResult",
    "DuplicatePair",
    "IndexConfigError",
    "IndexLoadError",
    "NeighborIndex",
    "SearchResult",
    "check_save_target",
    "demo_neighbors",
    "format_results",
    "parse_index_kind",
]

INDEX_KINDS = ("flat", "hnsw", "ivf")
INDEX_FILE = "index.faiss"
STORE_FILE = "store.sqlite"
METADATA_FILE = "metadata.json"
FORMAT_VERSION = 1
# Defaults chosen for recall@10 >= 0.95 against flat on 42k QQP questions embedded by
# all-MiniLM-L6-v2, both metrics (benchmarks/index_speed.py: hnsw 0.997, ivf ~0.96).
# None = chosen from the data: nlist about 4 * sqrt(n) with >= 39 training points per list
# (FAISS' minimum); nprobe max(16, nlist / 10), since ~8 % of lists are needed for 0.95.
DEFAULT_PARAMS: dict[str, dict[str, int | None]] = {
    "flat": {},
    "hnsw": {"M": 32, "efConstruction": 200, "efSearch": 64},
    "ivf": {"nlist": None, "nprobe": None},
}
SEARCH_TIME_PARAMS = ("efSearch", "nprobe")
_QUERY_CHUNK = 1024  # queries per FAISS call: bounds the memory of re-ranking
_RERANK_EXTRA = 4  # extra k-NN candidates fetched so exact re-ranking can reorder near-ties
_FLOAT32_EPS = float(np.finfo(np.float32).eps)


class IndexConfigError(ValueError):
    """An index kind, factory string or parameter that NeighborIndex refuses."""


class IndexLoadError(ValueError):
    """A saved index that is missing, damaged, or does not match the model it is loaded with."""


# ---------------------------------------------------------------------------- kinds


_SUPPORTED_FACTORY = (
    "Flat, HNSW<M>, HNSW<M>,Flat, IVF<nlist>,Flat (optionally prefixed by IDMap, / IDMap2,)"
)
# Known FAISS failures with METRIC_L1, most specific first (checked before FAISS sees the string).
_L1_FAILURES: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(r"HNSW\d*(_\w+)?,.*SQ", re.I),
        "aborts the whole process (HNSW over SQ codes has no L1 path)",
    ),
    (
        re.compile(r"(PQ\d+x\d+fs|fs\b|fastscan)", re.I),
        "raises an error: fast-scan kernels only support L2 and inner product",
    ),
    (
        re.compile(r"PQ|RQ|LSQ|RaBitQ", re.I),
        "returns wrong neighbours WITHOUT an error: product/additive quantizer distance tables ignore METRIC_L1",
    ),
    (re.compile(r"SQ", re.I), "raises an error: the scalar quantizer has no L1 distance"),
    (
        re.compile(r"LSH|ITQ", re.I),
        "raises an error: LSH encodes binary codes compared by Hamming distance",
    ),
)
_LOSSY = re.compile(r"PQ|SQ|RQ|LSQ|RaBitQ|LSH|ITQ|fs\b|PCA|OPQ|Residual|RR\d|Pad", re.I)
_FACTORY_PATTERNS: tuple[tuple[re.Pattern[str], str, str | None], ...] = (
    (re.compile(r"(?:IDMap2?,)?Flat"), "flat", None),
    (re.compile(r"(?:IDMap2?,)?HNSW(\d+)(?:,Flat)?"), "hnsw", "M"),
    (re.compile(r"(?:IDMap2?,)?IVF(\d+),Flat"), "ivf", "nlist"),
)


def parse_index_kind(kind: str, metric: Metric | str) -> tuple[str, dict[str, int]]:
    """``kind`` (``flat``/``hnsw``/``ivf`` or a FAISS factory string) -> (kind, params it fixes).

    Refuses, before FAISS sees it, any combination FAISS mishandles with ``METRIC_L1``
    and any lossy encoding (see the module docstring), naming the combination.
    """
    metric = Metric.parse(metric)
    if not isinstance(kind, str) or not kind.strip():
        raise IndexConfigError(
            f"kind must be one of {list(INDEX_KINDS)} or a FAISS factory string, got {kind!r}"
        )
    spec = kind.strip()
    if spec.lower() in INDEX_KINDS:
        return spec.lower(), {}
    compact = re.sub(r"\s+", "", spec)
    if metric is Metric.MANHATTAN:
        for pattern, failure in _L1_FAILURES:
            if pattern.search(compact):
                raise IndexConfigError(
                    f"index {spec!r} with metric 'manhattan' (faiss.METRIC_L1) is refused: FAISS {failure}. "
                    f"METRIC_L1 works on IndexFlat, IndexHNSWFlat and IndexIVFFlat only: use kind 'flat', "
                    f"'hnsw' or 'ivf' (factory strings {_SUPPORTED_FACTORY})"
                )
    if _LOSSY.search(compact):
        raise IndexConfigError(
            f"index {spec!r} with metric {metric.value!r} is refused: it stores lossy codes, so FAISS would "
            "return approximate distances and the calibrator would turn them into wrong probabilities. "
            f"NeighborIndex stores exact vectors: use kind 'flat', 'hnsw' or 'ivf' (factory strings {_SUPPORTED_FACTORY})"
        )
    for pattern, name, param in _FACTORY_PATTERNS:
        match = pattern.fullmatch(compact)
        if match:
            return name, (
                {param: require_positive_int(param, int(match.group(1)))} if param else {}
            )
    raise IndexConfigError(
        f"unknown index kind {spec!r}: use one of {list(INDEX_KINDS)} or a FAISS factory string "
        f"of the form {_SUPPORTED_FACTORY}"
    )


def _resolve_params(
    kind: str, fixed: dict[str, int], given: dict[str, Any]
) -> dict[str, int | None]:
    allowed = DEFAULT_PARAMS[kind]
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise IndexConfigError(
            f"unknown parameter(s) {unknown} for kind {kind!r}; valid: {sorted(allowed) or 'none'}"
        )
    twice = sorted(k for k in fixed if k in given and given[k] is not None and given[k] != fixed[k])
    if twice:
        raise IndexConfigError(
            f"{twice[0]} is given twice with different values: {fixed[twice[0]]} in the kind string and {given[twice[0]]} as a parameter"
        )
    params: dict[str, int | None] = dict(allowed)
    params.update(fixed)
    for name, value in given.items():
        if value is not None:
            params[name] = require_positive_int(name, value)
    return params


# ---------------------------------------------------------------------------- results


@dataclass
class SearchResult:
    """Neighbours of one query, nearest first. ``probabilities`` is None without a calibrator."""

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
        return _write_tsv_atomic(path, ["cluster", "id", "text"], rows)

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
        return _write_tsv_atomic(
            path, ["id_a", "id_b", "distance", "probability", "text_a", "text_b"], rows
        )


def _write_tsv_atomic(
    path: str | os.PathLike[str], header: list[str], rows: Iterator[list[Any]]
) -> Path:
    """Tab-separated with csv quoting (texts may hold tabs/newlines): temp file, then rename."""
    path = Path(path)
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


# ---------------------------------------------------------------------------- helpers


def _model_location(model: SimilarityModel) -> str | None:
    """Where ``load`` can find the model again: an absolute folder, a name like 'default', or None."""
    source = getattr(model.encoder, "source", None)
    if not source:
        return None
    path = Path(str(source)).expanduser()
    if path.is_dir():
        return str(path.resolve())
    return str(source) if str(source) == "default" else None


def _versions() -> dict[str, str]:
    from metric_sim import __version__

    return {
        "metric_sim": __version__,
        "faiss": faiss.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
    }


def check_save_target(directory: str | os.PathLike[str]) -> Path:
    """The resolved folder ``save`` may write: absent, empty, or a saved index (then replaced).

    Anything else raises ``FileExistsError``, so a typo can never wipe a folder of other files.
    """
    target = Path(directory).expanduser().resolve()
    if target.exists() and (
        not target.is_dir() or (any(target.iterdir()) and not (target / METADATA_FILE).is_file())
    ):
        raise FileExistsError(
            f"{target} exists and is not a saved NeighborIndex; refusing to overwrite it"
        )
    return target


# ---------------------------------------------------------------------------- the index


class NeighborIndex:
    """Texts, their ids and embeddings in FAISS, searched with the model's metric.

    Create with :meth:`build` (encode texts with a model), :meth:`from_embeddings`
    (vectors you already have) or :meth:`load`.
    """

    def __init__(
        self,
        dim: int,
        metric: Metric | str,
        kind: str = "flat",
        *,
        model: SimilarityModel | None = None,
        calibrator: Calibrator | None = None,
        **params: Any,
    ) -> None:
        self.dim = require_positive_int("dim", dim)
        self.metric = Metric.parse(metric)
        self.kind, fixed = parse_index_kind(kind, self.metric)
        self.params = _resolve_params(self.kind, fixed, params)
        self.model: SimilarityModel | None = None
        self.encoder_fingerprint: str | None = None
        self.model_path: str | None = None
        if model is not None:
            self._check_model(model, where="model")
            self.model = model
            # Taken now: it must describe the encoder that embeds the stored vectors.
            self.encoder_fingerprint = model.encoder.fingerprint()
            self.model_path = _model_location(model)
        if calibrator is None and model is not None:
            calibrator = model.calibrator
        if calibrator is not None and calibrator.metric is not self.metric:
            raise ValueError(
                f"calibrator was fitted for metric {calibrator.metric.value!r}, but the index uses {self.metric.value!r}"
            )
        self.calibrator = calibrator
        self._faiss: Any = None if self.kind == "ivf" else self._new_faiss_index()
        self._key_of: dict[str, int] = {}
        self._items: dict[int, tuple[str, str]] = {}  # key -> (id, text), in insertion order
        self._next_key = 0
        self._max_sq_norm = 0.0  # bounds FAISS' float32 rounding in range search

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(
        cls,
        model: SimilarityModel,
        texts: Sequence[str],
        ids: Sequence[str | int] | None = None,
        kind: str = "flat",
        *,
        batch_size: int = 64,
        show_progress: bool = False,
        **params: Any,
    ) -> NeighborIndex:
        """Encode ``texts`` with ``model.embed`` and index them (ids default to "0", "1", ...)."""
        if not isinstance(model, SimilarityModel):
            raise TypeError(f"model must be a SimilarityModel, got {type(model).__name__}")
        texts = require_texts("texts", texts)
        if not texts:
            raise ValueError("texts is empty: an index needs at least one text")
        index = cls(model.encoder.embedding_dim, model.metric, kind, model=model, **params)
        index._check_new_ids(texts, ids)  # fail before the (slow) encoding
        started = time.perf_counter()
        embeddings = model.embed(texts, batch_size=batch_size, show_progress=show_progress)
        elapsed = time.perf_counter() - started
        logger.info(
            "encoded %d texts in %.1f s (%.0f texts/s)",
            len(texts),
            elapsed,
            len(texts) / max(elapsed, 1e-9),
        )
        index.add_embeddings(embeddings, texts, ids)
        return index

    @classmethod
    def from_embeddings(
        cls,
        embeddings: Any,
        texts: Sequence[str],
        ids: Sequence[str | int] | None = None,
        *,
        metric: Metric | str,
        kind: str = "flat",
        model: SimilarityModel | None = None,
        calibrator: Calibrator | None = None,
        **params: Any,
    ) -> NeighborIndex:
        """Index vectors computed elsewhere. Text queries need ``model`` (the one that made them)."""
        embeddings = require_matrix("embeddings", embeddings)
        index = cls(embeddings.shape[1], metric, kind, model=model, calibrator=calibrator, **params)
        index.add_embeddings(embeddings, texts, ids)
        return index

    def _check_model(self, model: SimilarityModel, *, where: str) -> None:
        if not isinstance(model, SimilarityModel):
            raise TypeError(f"{where} must be a SimilarityModel, got {type(model).__name__}")
        if model.metric is not self.metric:
            raise IndexLoadError(
                f"{where} uses metric {model.metric.value!r}, but the index uses {self.metric.value!r}"
            )
        if model.encoder.embedding_dim != self.dim:
            raise IndexLoadError(
                f"{where} embeds into dimension {model.encoder.embedding_dim}, but the index holds dimension {self.dim}"
            )

    def _new_faiss_index(self, n_train: int = 0) -> Any:
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

    def _apply_search_params(self) -> None:
        if self.kind == "hnsw":
            faiss.downcast_index(self._faiss.index).hnsw.efSearch = int(self.params["efSearch"])
        elif self.kind == "ivf" and self._faiss is not None:
            self._faiss.nprobe = min(int(self.params["nprobe"]), int(self._faiss.nlist))

    def set_search_params(self, **params: int) -> None:
        """Change search-time parameters (``efSearch`` for hnsw, ``nprobe`` for ivf)."""
        allowed = [p for p in SEARCH_TIME_PARAMS if p in DEFAULT_PARAMS[self.kind]]
        for name, value in params.items():
            if name not in allowed:
                raise IndexConfigError(
                    f"{name!r} is not a search-time parameter of kind {self.kind!r}; valid: {allowed or 'none'}"
                )
            self.params[name] = require_positive_int(name, value)

    # ------------------------------------------------------------------ contents
    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, item_id: object) -> bool:
        return str(item_id) in self._key_of if isinstance(item_id, (str, int)) else False

    def __repr__(self) -> str:
        return f"NeighborIndex(kind={self.kind!r}, metric={self.metric.value!r}, dim={self.dim}, items={len(self)}, params={self.params})"

    @property
    def ids(self) -> list[str]:
        return [item_id for item_id, _ in self._items.values()]

    @property
    def texts(self) -> list[str]:
        return [text for _, text in self._items.values()]

    def text_of(self, item_id: str | int) -> str:
        key = self._key_of.get(str(item_id))
        if key is None:
            raise KeyError(f"id {item_id!r} is not in the index")
        return self._items[key][1]

    def embeddings(self) -> np.ndarray:
        """The stored vectors (float32, in :attr:`ids` order), reconstructed from FAISS."""
        if not self._items:
            return np.zeros((0, self.dim), dtype=np.float32)
        keys = np.fromiter(self._items, dtype=np.int64, count=len(self._items))
        return self._faiss.reconstruct_batch(keys)

    # ------------------------------------------------------------------ add / remove
    def _check_new_ids(self, texts: list[str], ids: Sequence[str | int] | None) -> list[str]:
        if ids is None:
            new_ids = [str(self._next_key + i) for i in range(len(texts))]
        else:
            if isinstance(ids, (str, bytes)) or not isinstance(ids, (Sequence, np.ndarray)):
                raise TypeError(f"ids must be a list of str or int, got {type(ids).__name__}")
            new_ids = []
            for i, item_id in enumerate(ids):
                if isinstance(item_id, bool) or not isinstance(item_id, (str, int, np.integer)):
                    raise TypeError(
                        f"ids[{i}] must be a str or int, got {type(item_id).__name__} {item_id!r}"
                    )
                if isinstance(item_id, str) and not item_id.strip():
                    raise ValueError(f"ids[{i}] is empty")
                new_ids.append(str(item_id))
            if len(new_ids) != len(texts):
                raise ValueError(
                    f"ids and texts must have the same length, got {len(new_ids)} and {len(texts)}"
                )
        seen: dict[str, int] = {}
        for i, item_id in enumerate(new_ids):
            if item_id in self._key_of:
                raise ValueError(
                    f"ids[{i}] = {item_id!r} is already in the index (remove it first)"
                )
            if item_id in seen:
                raise ValueError(
                    f"ids[{i}] = {item_id!r} repeats ids[{seen[item_id]}]; ids must be unique"
                )
            seen[item_id] = i
        return new_ids

    def add(
        self,
        texts: Sequence[str],
        ids: Sequence[str | int] | None = None,
        *,
        batch_size: int = 64,
        show_progress: bool = False,
    ) -> list[str]:
        """Encode and add ``texts``; returns their ids (as strings)."""
        model = self._require_model()
        texts = require_texts("texts", texts)
        self._check_new_ids(texts, ids)
        return self.add_embeddings(
            model.embed(texts, batch_size=batch_size, show_progress=show_progress), texts, ids
        )

    def add_embeddings(
        self, embeddings: Any, texts: Sequence[str], ids: Sequence[str | int] | None = None
    ) -> list[str]:
        """Add precomputed vectors (they must come from this index's encoder) with their texts."""
        texts = require_texts("texts", texts)
        vectors = np.ascontiguousarray(
            require_matrix("embeddings", embeddings, columns=self.dim), dtype=np.float32
        )
        if vectors.shape[0] != len(texts):
            raise ValueError(
                f"embeddings and texts must have the same length, got {vectors.shape[0]} and {len(texts)}"
            )
        new_ids = self._check_new_ids(texts, ids)
        if not texts:
            return []
        if self._faiss is None:  # ivf: trained on the first vectors it sees
            self._faiss = self._new_faiss_index(n_train=len(vectors))
            started = time.perf_counter()
            self._faiss.train(vectors)
            logger.info(
                "trained ivf (nlist=%d) on %d vectors in %.1f s",
                self._faiss.nlist,
                len(vectors),
                time.perf_counter() - started,
            )
        keys = np.arange(self._next_key, self._next_key + len(texts), dtype=np.int64)
        started = time.perf_counter()
        self._faiss.add_with_ids(vectors, keys)
        elapsed = time.perf_counter() - started
        if len(texts) >= 1000:
            logger.info(
                "added %d vectors to %s index in %.1f s (%.0f vectors/s)",
                len(texts),
                self.kind,
                elapsed,
                len(texts) / max(elapsed, 1e-9),
            )
        for key, item_id, text in zip(keys.tolist(), new_ids, texts, strict=True):
            self._key_of[item_id] = key
            self._items[key] = (item_id, text)
        self._next_key += len(texts)
        self._max_sq_norm = max(
            self._max_sq_norm, float(np.max(np.einsum("ij,ij->i", vectors, vectors)))
        )
        return new_ids

    def remove(self, ids: Sequence[str | int]) -> int:
        """Remove items by id; returns how many. Unknown ids raise ``KeyError`` (nothing removed).

        hnsw rebuilds its graph from the remaining stored vectors (FAISS HNSW has no removal).
        """
        if isinstance(ids, (str, bytes, int)):
            raise TypeError(f"ids must be a list of ids, got {type(ids).__name__} {ids!r}")
        wanted = list(dict.fromkeys(str(i) for i in ids))
        missing = [i for i in wanted if i not in self._key_of]
        if missing:
            raise KeyError(f"{len(missing)} id(s) are not in the index, e.g. {missing[:5]}")
        if not wanted:
            return 0
        keys = np.array([self._key_of[i] for i in wanted], dtype=np.int64)
        if self.kind == "hnsw":
            gone = set(keys.tolist())
            keep = np.array([k for k in self._items if k not in gone], dtype=np.int64)
            vectors = (
                self._faiss.reconstruct_batch(keep)
                if keep.size
                else np.zeros((0, self.dim), np.float32)
            )
            rebuilt = self._new_faiss_index()
            if keep.size:
                rebuilt.add_with_ids(vectors, keep)
            self._faiss = rebuilt
            removed = len(wanted)
        else:
            removed = int(self._faiss.remove_ids(keys))
        assert removed == len(wanted), f"FAISS removed {removed} of {len(wanted)} keys"
        for item_id, key in zip(wanted, keys.tolist(), strict=True):
            del self._key_of[item_id]
            del self._items[key]
        return removed

    # ------------------------------------------------------------------ search
    def _require_model(self) -> SimilarityModel:
        if self.model is None:
            raise ValueError(
                "this index has no model, so it cannot embed text queries: pass model= to NeighborIndex.load "
                f"(the index was built with encoder fingerprint {str(self.encoder_fingerprint)[:12]}...), "
                "or query with search_embeddings / range_search_embeddings"
            )
        return self.model

    def _embed_queries(
        self, queries: Sequence[str], batch_size: int
    ) -> tuple[list[str], np.ndarray]:
        queries = require_texts("queries", queries)
        # Through model.embed, exactly like the stored texts, so a stored text finds itself at ~0.
        return queries, self._require_model().embed(queries, batch_size=batch_size)

    def _query_matrix(self, vectors: Any) -> np.ndarray:
        return np.ascontiguousarray(
            require_matrix("query embeddings", vectors, columns=self.dim), dtype=np.float32
        )

    def _radius(self, min_prob: float | None, max_distance: float | None) -> float:
        if (min_prob is None) == (max_distance is None):
            raise ValueError(
                f"give exactly one of min_prob and max_distance, got min_prob={min_prob!r}, max_distance={max_distance!r}"
            )
        if max_distance is not None:
            if (
                isinstance(max_distance, bool)
                or not isinstance(max_distance, (int, float, np.integer, np.floating))
                or not math.isfinite(max_distance)
                or max_distance < 0
            ):
                raise ValueError(f"max_distance must be a finite number >= 0, got {max_distance!r}")
            return float(max_distance)
        min_prob = require_probability("min_prob", min_prob, open_interval=True)
        if self.calibrator is None:
            raise CalibrationError(
                f"min_prob={min_prob} needs a calibrated model, but this index has no calibrator: "
                "calibrate the model (model.calibrate / `metric-sim calibrate`) or pass max_distance"
            )
        return self.calibrator.distance_at(min_prob)  # negative: no pair can reach min_prob

    def _probabilities(self, distances: np.ndarray) -> np.ndarray | None:
        return (
            None
            if self.calibrator is None
            else self.calibrator.predict_proba(distances).astype(np.float64)
        )

    def _result(self, query: str | None, keys: np.ndarray, distances: np.ndarray) -> SearchResult:
        items = [self._items[k] for k in keys.tolist()]
        return SearchResult(
            query=query,
            ids=[item_id for item_id, _ in items],
            texts=[text for _, text in items],
            distances=distances.astype(np.float32),
            probabilities=self._probabilities(distances),
        )

    def _exact(
        self, query_rows: np.ndarray, keys: np.ndarray, vectors: np.ndarray | None = None
    ) -> np.ndarray:
        """True distances between query rows and stored keys, recomputed in float64."""
        if keys.size == 0:
            return np.zeros(0, dtype=np.float32)
        stored = self._faiss.reconstruct_batch(keys) if vectors is None else vectors
        return paired_distances_numpy(query_rows, stored, self.metric)

    def _order(self, keys: np.ndarray, exact: np.ndarray) -> np.ndarray:
        return np.lexsort((keys, exact))  # nearest first, ties by insertion order (deterministic)

    def search(
        self,
        queries: Sequence[str],
        k: int = 5,
        *,
        min_prob: float | None = None,
        max_distance: float | None = None,
        batch_size: int = 64,
        rerank: bool = True,
    ) -> list[SearchResult]:
        """The ``k`` nearest stored items of each query text, optionally only those with
        ``p >= min_prob`` (or ``d <= max_distance``).

        ``rerank=False`` skips the exact float64 re-ranking and reports FAISS' own distances
        (square-rooted for L2): faster, but off by float32 rounding (~1e-3 near distance 0).
        """
        queries, vectors = self._embed_queries(queries, batch_size)
        return self._knn(vectors, k, queries, min_prob, max_distance, rerank)

    def search_embeddings(
        self,
        vectors: Any,
        k: int = 5,
        *,
        min_prob: float | None = None,
        max_distance: float | None = None,
        rerank: bool = True,
    ) -> list[SearchResult]:
        """:meth:`search` for query vectors made by this index's encoder."""
        return self._knn(self._query_matrix(vectors), k, None, min_prob, max_distance, rerank)

    def _knn(
        self,
        vectors: np.ndarray,
        k: int,
        queries: list[str] | None,
        min_prob: float | None,
        max_distance: float | None,
        rerank: bool = True,
    ) -> list[SearchResult]:
        k = require_positive_int("k", k)
        vectors = self._query_matrix(vectors)
        limit = (
            None
            if min_prob is None and max_distance is None
            else self._radius(min_prob, max_distance)
        )
        n = len(self._items)
        if n == 0 or (limit is not None and limit < 0):
            return [
                self._result(
                    None if queries is None else queries[i], np.zeros(0, np.int64), np.zeros(0)
                )
                for i in range(len(vectors))
            ]
        self._apply_search_params()
        fetch = min(n, k + _RERANK_EXTRA if rerank else k)
        results: list[SearchResult] = []
        for start in range(0, len(vectors), _QUERY_CHUNK):
            chunk = vectors[start : start + _QUERY_CHUNK]
            raw, labels = self._faiss.search(chunk, fetch)
            valid = labels >= 0
            rows = np.repeat(np.arange(len(chunk)), valid.sum(1))
            keys = labels[valid]
            exact = (
                self._exact(chunk[rows], keys)
                if rerank
                else faiss_to_true_distance(raw[valid], self.metric)
            )
            bounds = np.concatenate([[0], np.cumsum(valid.sum(1))])
            for i in range(len(chunk)):
                kq, dq = keys[bounds[i] : bounds[i + 1]], exact[bounds[i] : bounds[i + 1]]
                order = self._order(kq, dq)[:k]
                kq, dq = kq[order], dq[order]
                if limit is not None:
                    keep = dq <= limit
                    kq, dq = kq[keep], dq[keep]
                results.append(
                    self._result(None if queries is None else queries[start + i], kq, dq)
                )
        return results

    def range_search(
        self,
        queries: Sequence[str],
        *,
        min_prob: float | None = None,
        max_distance: float | None = None,
        batch_size: int = 64,
    ) -> list[SearchResult]:
        """Every stored item with ``p(similar) >= min_prob`` (radius ``calibrator.distance_at``)
        or ``distance <= max_distance``, nearest first."""
        queries, vectors = self._embed_queries(queries, batch_size)
        radius = self._radius(min_prob, max_distance)
        return [
            self._result(queries[i], keys, dist) for i, keys, dist in self._range(vectors, radius)
        ]

    def range_search_embeddings(
        self, vectors: Any, *, min_prob: float | None = None, max_distance: float | None = None
    ) -> list[SearchResult]:
        """:meth:`range_search` for query vectors made by this index's encoder."""
        vectors = self._query_matrix(vectors)
        radius = self._radius(min_prob, max_distance)
        return [self._result(None, keys, dist) for _, keys, dist in self._range(vectors, radius)]

    def _faiss_radius(self, radius: float, vectors: np.ndarray) -> float:
        """The FAISS radius, widened past float32 rounding so no true hit is lost
        (the exact re-check then drops the extras)."""
        raw = true_to_faiss_radius(radius, self.metric)
        slack = 4.0 * self.dim * _FLOAT32_EPS
        if self.metric is Metric.EUCLIDEAN:  # |q|^2 + |x|^2 - 2 q.x: error scales with the norms
            q_sq = float(np.max(np.einsum("ij,ij->i", vectors, vectors))) if len(vectors) else 0.0
            return raw * (1.0 + slack) + slack * (q_sq + self._max_sq_norm) + 1e-12
        return raw * (1.0 + slack) + 1e-12

    def _range(
        self,
        vectors: np.ndarray,
        radius: float,
        *,
        stored: tuple[dict[int, int], np.ndarray] | None = None,
        progress: Any = None,
    ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Yield (query row, keys, exact distances) for every query row, nearest first."""
        if radius < 0 or not self._items:
            for i in range(len(vectors)):
                yield i, np.zeros(0, np.int64), np.zeros(0, np.float32)
            return
        self._apply_search_params()
        for start in range(0, len(vectors), _QUERY_CHUNK):
            chunk = vectors[start : start + _QUERY_CHUNK]
            lims, _, labels = self._faiss.range_search(chunk, self._faiss_radius(radius, chunk))
            lims, labels = (
                lims.astype(np.int64),
                labels.astype(np.int64),
            )  # FAISS gives uint64 limits
            rows = np.repeat(np.arange(len(chunk)), np.diff(lims))
            if stored is None:
                exact = self._exact(chunk[rows], labels)
            else:
                row_of, matrix = stored
                exact = self._exact(
                    chunk[rows],
                    labels,
                    matrix[
                        np.fromiter((row_of[k] for k in labels.tolist()), np.int64, len(labels))
                    ],
                )
            for i in range(len(chunk)):
                kq, dq = labels[lims[i] : lims[i + 1]], exact[lims[i] : lims[i + 1]]
                keep = dq <= radius
                kq, dq = kq[keep], dq[keep]
                order = self._order(kq, dq)
                yield start + i, kq[order], dq[order]
            if progress is not None:
                progress.update(len(chunk))

    def dedupe(
        self,
        min_prob: float | None = 0.5,
        *,
        max_distance: float | None = None,
        show_progress: bool = False,
    ) -> DedupeResult:
        """All pairs of stored items with ``p >= min_prob`` (or ``d <= max_distance``), found by
        range search with every stored vector as a query, joined into clusters by union-find.

        Exact for ``flat``; ``hnsw``/``ivf`` may miss pairs their candidate search misses.
        """
        if max_distance is not None:
            min_prob = None
        radius = self._radius(min_prob, max_distance)
        keys = np.fromiter(self._items, dtype=np.int64, count=len(self._items))
        vectors = self.embeddings()
        row_of = {k: i for i, k in enumerate(keys.tolist())}
        pairs: dict[tuple[int, int], float] = {}
        progress = None
        if show_progress:
            from tqdm.auto import tqdm

            progress = tqdm(total=len(keys), desc="dedupe", unit="item")
        started = time.perf_counter()
        try:
            for row, hits, dists in self._range(
                vectors, radius, stored=(row_of, vectors), progress=progress
            ):
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
        probs = self._probabilities(distances) if len(ordered) else None
        union = UnionFind(self._items[k][0] for k in keys.tolist())
        result_pairs = []
        for n, ((a, b), dist) in enumerate(ordered):
            (id_a, text_a), (id_b, text_b) = self._items[a], self._items[b]
            union.union(id_a, id_b)
            result_pairs.append(
                DuplicatePair(
                    id_a,
                    id_b,
                    text_a,
                    text_b,
                    float(dist),
                    None if probs is None else float(probs[n]),
                )
            )
        clusters = sorted(
            (members for members in union.groups().values() if len(members) > 1),
            key=len,
            reverse=True,
        )
        texts = {member: self.text_of(member) for members in clusters for member in members}
        return DedupeResult(result_pairs, clusters, len(keys), float(radius), min_prob, texts)

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``index.faiss``, ``store.sqlite`` and ``metadata.json`` atomically into ``directory``.

        An existing folder is replaced only if it holds a saved index (or nothing).
        """
        if self._faiss is None:
            raise ValueError("this ivf index is empty and untrained: add texts before saving")
        target = check_save_target(directory)
        with atomic_dir(target) as staging:
            faiss.write_index(self._faiss, str(staging / INDEX_FILE))
            self._write_store(staging / STORE_FILE)
            metadata = {
                "format_version": FORMAT_VERSION,
                "kind": self.kind,
                "params": self.params,
                "metric": self.metric.value,
                "dim": self.dim,
                "count": len(self),
                "next_key": self._next_key,
                "max_sq_norm": self._max_sq_norm,
                "encoder_fingerprint": self.encoder_fingerprint,
                "model_path": self.model_path,
                "calibrator": None if self.calibrator is None else self.calibrator.to_dict(),
                "files": {
                    name: {
                        "size": (staging / name).stat().st_size,
                        "sha256": sha256_file(staging / name),
                    }
                    for name in (INDEX_FILE, STORE_FILE)
                },
                "versions": _versions(),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            write_json_atomic(staging / METADATA_FILE, metadata)
        return target

    def _write_store(self, path: Path) -> None:
        connection = sqlite3.connect(path)
        try:
            connection.execute(
                "CREATE TABLE items (key INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, text TEXT NOT NULL)"
            )
            connection.executemany(
                "INSERT INTO items (key, id, text) VALUES (?, ?, ?)",
                ((k, i, t) for k, (i, t) in self._items.items()),
            )
            connection.commit()
        finally:
            connection.close()

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike[str],
        model: SimilarityModel | None = None,
        *,
        load_model: bool = True,
    ) -> NeighborIndex:
        """Load a saved index, refusing anything that could return wrong neighbours.

        ``model`` must be the encoder the index was built with (same fingerprint, metric and
        dimension). Without it, the model recorded at build time is loaded (``load_model=True``)
        when it is still there; otherwise the index loads without a model and only vector
        queries work.
        """
        folder = Path(directory).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"index folder not found: {folder}")
        meta_file = folder / METADATA_FILE
        if not meta_file.is_file():
            raise IndexLoadError(
                f"{folder} is not a saved NeighborIndex: {METADATA_FILE} is missing"
            )
        try:
            meta = read_json(meta_file)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise IndexLoadError(
                f"{meta_file} is not valid JSON ({exc}); the index folder is damaged"
            ) from None
        if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
            got = meta.get("format_version") if isinstance(meta, dict) else type(meta).__name__
            raise IndexLoadError(
                f"{meta_file}: format_version must be {FORMAT_VERSION}, got {got!r}"
            )
        required = ("kind", "params", "metric", "dim", "count", "next_key", "files")
        missing = [key for key in required if key not in meta]
        if missing:
            raise IndexLoadError(f"{meta_file} is missing {missing}; the index folder is damaged")
        for name in (INDEX_FILE, STORE_FILE):
            path = folder / name
            expected = meta["files"].get(name, {})
            if not path.is_file():
                raise IndexLoadError(f"{path} is missing; the index folder is incomplete")
            size = path.stat().st_size
            if size != expected.get("size"):
                raise IndexLoadError(
                    f"{path} has {size} bytes, expected {expected.get('size')}: the file is truncated or was replaced"
                )
            if sha256_file(path) != expected.get("sha256"):
                raise IndexLoadError(
                    f"{path} does not match the checksum in {METADATA_FILE}: the file is corrupted or was modified"
                )

        params = dict(meta["params"])
        index = cls(int(meta["dim"]), meta["metric"], meta["kind"], **params)
        index.encoder_fingerprint = meta.get("encoder_fingerprint")
        index.model_path = meta.get("model_path")
        index._next_key = int(meta["next_key"])
        index._max_sq_norm = float(meta.get("max_sq_norm", 0.0))
        if meta.get("calibrator"):
            index.calibrator = Calibrator.from_dict(meta["calibrator"])
        try:
            loaded = faiss.read_index(str(folder / INDEX_FILE))
        except RuntimeError as exc:
            raise IndexLoadError(
                f"FAISS cannot read {folder / INDEX_FILE}: {str(exc).splitlines()[0]}"
            ) from None
        index._faiss = index._check_faiss(loaded, meta, folder)
        index._read_store(folder / STORE_FILE, int(meta["count"]))
        index._attach_model(model, load_model)
        return index

    def _check_faiss(self, loaded: Any, meta: dict[str, Any], folder: Path) -> Any:
        where = folder / INDEX_FILE
        if loaded.d != self.dim:
            raise IndexLoadError(
                f"{where} holds dimension {loaded.d}, but {METADATA_FILE} says {self.dim}: the dimension changed"
            )
        if loaded.metric_type != faiss_metric(self.metric):
            raise IndexLoadError(
                f"{where} uses FAISS metric {loaded.metric_type}, but {METADATA_FILE} says {self.metric.value!r} (FAISS metric {faiss_metric(self.metric)})"
            )
        if loaded.ntotal != int(meta["count"]):
            raise IndexLoadError(
                f"{where} holds {loaded.ntotal} vectors, but {METADATA_FILE} says {meta['count']}"
            )
        expected = {
            "flat": faiss.IndexFlat,
            "hnsw": faiss.IndexHNSWFlat,
            "ivf": faiss.IndexIVFFlat,
        }[self.kind]
        inner = (
            faiss.downcast_index(loaded.index) if isinstance(loaded, faiss.IndexIDMap2) else loaded
        )
        if not isinstance(inner, expected):
            raise IndexLoadError(
                f"{where} holds a {type(inner).__name__}, but {METADATA_FILE} says kind {self.kind!r}"
            )
        if self.kind == "ivf" and loaded.nlist != self.params.get("nlist"):
            raise IndexLoadError(
                f"{where} has nlist={loaded.nlist}, but {METADATA_FILE} says {self.params.get('nlist')}"
            )
        return loaded

    def _read_store(self, path: Path, count: int) -> None:
        try:
            connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                rows = connection.execute("SELECT key, id, text FROM items ORDER BY key").fetchall()
            finally:
                connection.close()
        except sqlite3.DatabaseError as exc:
            raise IndexLoadError(f"{path} is not a readable SQLite store ({exc})") from None
        if len(rows) != count:
            raise IndexLoadError(
                f"{path} holds {len(rows)} items, but {METADATA_FILE} says {count}"
            )
        for key, item_id, text in rows:
            self._key_of[item_id] = key
            self._items[key] = (item_id, text)
        keys = np.fromiter(self._items, dtype=np.int64, count=len(self._items))
        if keys.size and (keys.max() >= self._next_key or not self._faiss_has(keys)):
            raise IndexLoadError(f"the ids in {path} do not match the vectors in {INDEX_FILE}")

    def _faiss_has(self, keys: np.ndarray) -> bool:
        if isinstance(self._faiss, faiss.IndexIDMap2):
            return bool(
                np.array_equal(np.sort(faiss.vector_to_array(self._faiss.id_map)), np.sort(keys))
            )
        invlists = self._faiss.invlists
        stored = [
            faiss.rev_swig_ptr(invlists.get_ids(i), invlists.list_size(i)).copy()
            for i in range(self._faiss.nlist)
            if invlists.list_size(i)
        ]
        found = np.concatenate(stored) if stored else np.zeros(0, np.int64)
        return bool(np.array_equal(np.sort(found), np.sort(keys)))

    def _attach_model(self, model: SimilarityModel | None, load_model: bool) -> None:
        source = "model"
        if model is None and load_model and self.model_path:
            if self.model_path != "default" and not Path(self.model_path).is_dir():
                logger.warning(
                    "the model this index was built with (%s) is gone; text queries need model=",
                    self.model_path,
                )
                return
            model = SimilarityModel.from_pretrained(self.model_path)
            source = f"the model recorded in {METADATA_FILE} ({self.model_path})"
        if model is None:
            return
        self._check_model(model, where=source)
        fingerprint = model.encoder.fingerprint()
        if self.encoder_fingerprint is not None and fingerprint != self.encoder_fingerprint:
            raise IndexLoadError(
                f"{source} is a different encoder from the one that built this index (fingerprint {fingerprint[:12]}... "
                f"vs {self.encoder_fingerprint[:12]}...): its query vectors would find wrong neighbours. "
                "Rebuild the index with this model, or load the original model"
            )
        self.model = model
        if model.calibrator is not None:
            if (
                self.calibrator is not None
                and model.calibrator.to_dict() != self.calibrator.to_dict()
            ):
                logger.info(
                    "using the model's calibrator (threshold %.4g) instead of the one saved with the index (%.4g)",
                    model.calibrator.threshold,
                    self.calibrator.threshold,
                )
            self.calibrator = model.calibrator


# ---------------------------------------------------------------------------- quickstart / display


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


def demo_neighbors(
    model: SimilarityModel, *, queries: Sequence[str] | None = None, k: int = 3, kind: str = "flat"
) -> tuple[NeighborIndex, list[SearchResult]]:
    """Index the bundled demo questions and search them: the quickstart's neighbour demo.

    Without ``queries``, the first question of the first three duplicate pairs is the
    query and is left out of the index, so its top neighbour should be its duplicate.
    Print with :func:`format_results`.
    """
    from metric_sim import demo_pairs_path
    from metric_sim.data import load_pairs

    pairs = load_pairs(
        demo_pairs_path(), text_a="question1", text_b="question2", label="is_duplicate"
    )
    _, texts = pairs.unique_texts()
    if queries is None:
        positives = [
            a for a, label in zip(pairs.texts_a, pairs.labels.tolist(), strict=True) if label == 1
        ]
        queries = list(dict.fromkeys(positives))[:3]
    queries = require_texts("queries", queries)
    held_out = set(queries)
    stored = [t for t in texts if t not in held_out]
    index = NeighborIndex.build(model, stored, kind=kind)
    return index, index.search(queries, k=k)
