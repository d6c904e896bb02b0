"""Neighbour search over embedded items: :class:`NeighborIndex`, its results, and sharded building.

The parts, one concept each:

* :mod:`.kinds` - index kinds, FAISS factory strings, refused L1/lossy combinations, parameters;
* :mod:`.vectors` - the FAISS index holding the exact vectors under int64 keys;
* :mod:`.compressed` - ``ivfpq`` / ``opq-ivfpq``: PQ codes in FAISS, full vectors in a memory-mapped file;
* :mod:`.store` - key -> (id, stored description) and its SQLite file;
* :mod:`.search` - k-NN, range search and dedupe with exact float64 re-ranking;
* :mod:`.results` - ``SearchResult``, ``DuplicatePair``, ``DedupeResult``, printing, TSV files;
* :mod:`.persistence` - the saved folder: atomic write, checksums, refusal of damaged folders;
* :mod:`.model_link` - checking a model against an index, finding the recorded model again;
* :mod:`.neighbor_index` - the ``NeighborIndex`` facade that composes them;
* :mod:`.sharded` - encoding a corpus across torchrun ranks with resumable shards;
* :mod:`.demo` - the quickstart's neighbour demo.

Importing this package loads neither FAISS nor torch nor ``datasets``: FAISS loads on the
first index operation, torch when ranks communicate.
"""

from __future__ import annotations

from metric_sim.errors import IndexConfigError, IndexLoadError, ShardError
from metric_sim.index.demo import demo_neighbors
from metric_sim.index.kinds import (
    COMPRESSED_KINDS,
    DEFAULT_PARAMS,
    INDEX_KINDS,
    SEARCH_TIME_PARAMS,
    parse_index_kind,
)
from metric_sim.index.neighbor_index import NeighborIndex
from metric_sim.index.persistence import FORMAT_VERSION, check_save_target
from metric_sim.index.results import DedupeResult, DuplicatePair, SearchResult, format_results
from metric_sim.index.sharded import (
    SHARD_SIZE,
    ShardedBuild,
    ShardedEncoding,
    ShardPlan,
    build_index_sharded,
    corpus_fingerprint,
    default_work_dir,
    encode_sharded,
    encode_shards,
    merge_shards,
    plan_shards,
)
from metric_sim.layout import INDEX_FILE, METADATA_FILE, STORE_FILE, VECTORS_FILE

__all__ = [
    "COMPRESSED_KINDS",
    "DEFAULT_PARAMS",
    "FORMAT_VERSION",
    "INDEX_FILE",
    "INDEX_KINDS",
    "METADATA_FILE",
    "SEARCH_TIME_PARAMS",
    "SHARD_SIZE",
    "STORE_FILE",
    "VECTORS_FILE",
    "DedupeResult",
    "DuplicatePair",
    "IndexConfigError",
    "IndexLoadError",
    "NeighborIndex",
    "SearchResult",
    "ShardError",
    "ShardPlan",
    "ShardedBuild",
    "ShardedEncoding",
    "build_index_sharded",
    "check_save_target",
    "corpus_fingerprint",
    "default_work_dir",
    "demo_neighbors",
    "encode_sharded",
    "encode_shards",
    "format_results",
    "merge_shards",
    "parse_index_kind",
    "plan_shards",
]
