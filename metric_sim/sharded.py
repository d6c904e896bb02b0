"""Old import path of sharded corpus encoding; the code lives in :mod:`metric_sim.index.sharded`."""

from __future__ import annotations

from metric_sim.index.sharded import (
    FORMAT_VERSION,
    PLAN_FILE,
    SHARD_SIZE,
    ShardedBuild,
    ShardedEncoding,
    ShardError,
    ShardPlan,
    build_index_sharded,
    corpus_fingerprint,
    default_work_dir,
    encode_sharded,
    encode_shards,
    merge_shards,
    plan_shards,
)

__all__ = [
    "FORMAT_VERSION",
    "PLAN_FILE",
    "SHARD_SIZE",
    "ShardError",
    "ShardPlan",
    "ShardedBuild",
    "ShardedEncoding",
    "build_index_sharded",
    "corpus_fingerprint",
    "default_work_dir",
    "encode_shards",
    "encode_sharded",
    "merge_shards",
    "plan_shards",
]
