"""NeighborIndex and sharded encoding through the encoder contract only, with items that are not texts.

A toy :class:`ItemEncoder` embeds small float vectors (the item *is* its own embedding,
scaled), so every expected answer is plain NumPy. Nothing here loads torch.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

from metric_sim.distances import Metric, all_pairs_distances_numpy
from metric_sim.encoders.base import ItemEncoder
from metric_sim.encoders.batching import embed_in_order, encoding_order
from metric_sim.errors import IndexLoadError, InvalidArgumentTypeError
from metric_sim.index import NeighborIndex, SearchResult, format_results
from metric_sim.index.sharded import corpus_fingerprint, encode_shards, merge_shards, plan_shards
from metric_sim.index.store import ItemStore
from metric_sim.index.vectors import FaissVectors, stored_keys
from metric_sim.items import describe_item
from metric_sim.model import SimilarityModel

DIM = 4


class VectorEncoder(ItemEncoder):
    """Items are float vectors of length DIM; the embedding is ``scale * item``."""

    kind = "toy-vector"

    def __init__(self, scale: float = 2.0) -> None:
        self.scale = scale
        self.calls: list[list[int]] = []  # item sizes of every batch encode() ran

    @property
    def embedding_dim(self) -> int:
        return DIM

    def check_items(self, items, name="items"):
        if isinstance(items, (str, bytes)) or not isinstance(items, (list, tuple)):
            raise InvalidArgumentTypeError(f"{name} must be a list of vectors, got {type(items).__name__}")
        out = []
        for i, item in enumerate(items):
            array = np.asarray(item, dtype=np.float32)
            if array.shape != (DIM,):
                raise InvalidArgumentTypeError(f"{name}[{i}] must be a vector of length {DIM}, got {array.shape}")
            out.append(array)
        return out

    def item_sizes(self, items):
        # A size that varies, so encoding order is not input order.
        return np.array([int(np.count_nonzero(np.round(np.asarray(x)))) for x in items], dtype=np.int64)

    def encode(self, items, *, batch_size=64, show_progress=False):
        items = self.check_items(items)
        sizes = self.item_sizes(items)

        def run(rows):
            self.calls.append(sizes[rows].tolist())
            return self.scale * np.stack([items[i] for i in rows])

        return embed_in_order(len(items), sizes, run, dim=DIM, batch_size=batch_size)

    def fingerprint(self):
        return hashlib.sha256(f"toy-vector {self.scale}".encode()).hexdigest()

    def config_dict(self):
        return {"scale": self.scale}

    def save(self, directory, extra=None):  # pragma: no cover - not needed here
        raise NotImplementedError

    @classmethod
    def from_source(cls, source, settings, **kwargs):  # pragma: no cover - not needed here
        return cls(**settings)


def _items(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return list(rng.normal(0, 3.0, (n, DIM)).astype(np.float32))


@pytest.fixture()
def model():
    return SimilarityModel(VectorEncoder(), "manhattan")


def test_vector_items_are_indexed_searched_and_described(model):
    items = _items(60)
    index = NeighborIndex.build(model, items, kind="flat")
    # The store keeps describe_item(item): a JSON list for vectors.
    assert index.texts[0] == describe_item(items[0]) and json.loads(index.texts[0]) == pytest.approx(items[0].tolist())
    queries = items[:3]
    results = index.search(queries, k=5)
    oracle = all_pairs_distances_numpy(2.0 * np.stack(queries), 2.0 * np.stack(items), "manhattan")
    for q, result in enumerate(results):
        assert isinstance(result, SearchResult) and result.query == describe_item(queries[q])
        assert result.ids[0] == str(q) and result.distances[0] == 0.0
        np.testing.assert_allclose(result.distances, np.sort(oracle[q])[:5], atol=1e-5)
    within = index.range_search(queries[:1], max_distance=float(results[0].distances[2]))[0]
    assert within.ids == results[0].ids[:3]
    assert "query: [" in format_results(results)
    with pytest.raises(InvalidArgumentTypeError, match=r"queries\[0\] must be a vector of length 4"):
        index.search([np.zeros(3)], k=1)
    with pytest.raises(TypeError, match="texts must be a list of vectors"):
        index.add("not a list")


def test_vector_index_dedupe_and_round_trip(model, tmp_path):
    items = _items(40)
    items[39] = items[5].copy()  # an exact duplicate item
    index = NeighborIndex.build(model, items, ids=[f"v{i}" for i in range(40)], kind="hnsw")
    assert index.dedupe(max_distance=1e-6).clusters == [["v5", "v39"]]
    folder = index.save(tmp_path / "idx")
    loaded = NeighborIndex.load(folder, model=model)
    assert loaded.ids == index.ids and loaded.texts == index.texts
    assert [r.ids for r in loaded.search(items[:4], k=3)] == [r.ids for r in index.search(items[:4], k=3)]
    with pytest.raises(IndexLoadError, match="different encoder"):
        NeighborIndex.load(folder, model=SimilarityModel(VectorEncoder(scale=3.0), "manhattan"))


def test_from_embeddings_without_a_model_describes_any_item():
    vectors = np.eye(3, dtype=np.float32)
    index = NeighborIndex.from_embeddings(vectors, [{"name": "a"}, "plain text", b"\x00\x01"], metric="euclidean")
    assert index.texts == ['{"name":"a"}', "plain text", describe_item(b"\x00\x01")]
    with pytest.raises(TypeError, match="texts must be a list of items"):
        index.add_embeddings(vectors[:1], "abc")


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_stored_keys_are_read_back_from_faiss(kind):
    x = np.random.default_rng(1).normal(0, 1, (200, DIM)).astype(np.float32)
    vectors = FaissVectors(kind, DIM, Metric.EUCLIDEAN, {"nlist": 4, "nprobe": None} if kind == "ivf" else {})
    vectors.add(x, np.arange(200, dtype=np.int64))
    gone = np.array([3, 150], dtype=np.int64)
    assert vectors.remove(gone, np.setdiff1d(np.arange(200), gone)) == 2
    assert np.sort(stored_keys(vectors.index)).tolist() == [k for k in range(200) if k not in (3, 150)]


def test_item_store_ids_are_checked_before_anything_is_added():
    store = ItemStore()
    assert store.check_new_ids(2, None) == ["0", "1"]
    with pytest.raises(ValueError, match=r"ids\[1\] = 'a' repeats ids\[0\]"):
        store.check_new_ids(2, ["a", "a"])
    with pytest.raises(ValueError, match="ids and texts must have the same length, got 1 and 2"):
        store.check_new_ids(2, ["a"])


def test_shard_plan_follows_the_encoding_order_of_encode(model, tmp_path):
    items = _items(50, seed=2)
    plan = plan_shards(model, items, batch_size=4, shard_size=10)
    sizes = model.encoder.item_sizes(items)
    assert np.array_equal(plan.order, encoding_order(sizes)) and plan.shard_size == 12
    assert plan.max_length == 0  # the toy encoder has no max_length setting
    assert plan.corpus_fingerprint == corpus_fingerprint([describe_item(x) for x in items])
    model.encoder.calls.clear()
    for rank in (0, 1):
        encode_shards(model, items, plan, tmp_path, rank=rank, world_size=2)
    sharded_batches = sorted(model.encoder.calls)
    model.encoder.calls.clear()
    one_process = model.embed(items, batch_size=4)
    assert sorted(model.encoder.calls) == sharded_batches  # the same batches, cut the same way
    assert np.array_equal(merge_shards(tmp_path, plan), one_process)


def test_import_is_light():
    code = (
        "import sys, metric_sim.index, metric_sim.sharded; "
        "print(sorted(m for m in ('datasets', 'pyarrow', 'faiss', 'torch', 'transformers') if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
