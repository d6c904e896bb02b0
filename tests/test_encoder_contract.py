"""One conformance suite, run on every encoder kind: the transformers text encoder, its ONNX
export, the image encoder and the product (title + image) encoder on tiny random networks, and
a toy encoder of float vectors (``tests/toy_encoder.py``).

Whatever passes here for the toy encoder works downstream without assuming strings:
encoding order, save/load through the registry, fingerprints, calibration, symmetric
probabilities, the neighbour index (against exact NumPy search), sharded builds.
"""

from __future__ import annotations

import numpy as np
import pytest

from metric_sim import Calibrator, NeighborIndex, SimilarityModel, build_index_sharded
from metric_sim.distances import all_pairs_distances_numpy
from metric_sim.encoders import ItemEncoder, list_encoders, load_encoder
from metric_sim.errors import ExportError, InvalidArgumentTypeError, MetricSimError
from tests.conftest import build_tiny_encoder
from tests.test_image_encoders import (
    image_items,
    product_items,
    tiny_image_encoder,
    tiny_product_encoder,
)
from tests.test_index import TEXTS
from tests.test_legacy_formats import LEGACY
from tests.toy_encoder import ToyVectorEncoder, toy_items

KINDS = ("transformers", "onnx", "toy-vectors", "image", "multimodal")


def _encoder(kind: str) -> ItemEncoder:
    if kind == "transformers":
        return build_tiny_encoder()
    if kind == "onnx":
        pytest.importorskip("onnxruntime")
        return load_encoder(LEGACY / "export", backend="onnx")
    if kind == "image":
        return tiny_image_encoder()
    if kind == "multimodal":
        return tiny_product_encoder()
    return ToyVectorEncoder()


def _items(kind: str) -> list:
    if kind == "image":
        return image_items(len(TEXTS))
    if kind == "multimodal":
        return product_items(list(TEXTS))
    return list(TEXTS) if kind != "toy-vectors" else toy_items(len(TEXTS))


def _bad_item(kind: str):
    return 3.5 if kind != "toy-vectors" else "not a vector"


@pytest.fixture(params=KINDS)
def case(request):
    kind = request.param
    return kind, _encoder(kind), _items(kind)


def test_every_kind_is_registered(case):
    kind, encoder, _ = case
    assert encoder.kind == kind and kind in list_encoders()


def test_encode_shape_dtype_and_input_order(case):
    _, encoder, items = case
    vectors = encoder.encode(items, batch_size=5)
    assert vectors.dtype == np.float32 and vectors.shape == (len(items), encoder.embedding_dim)
    one_by_one = np.stack([encoder.encode([item], batch_size=1)[0] for item in items])
    np.testing.assert_allclose(vectors, one_by_one, atol=1e-5)
    order = np.random.default_rng(0).permutation(len(items))
    np.testing.assert_allclose(encoder.encode([items[i] for i in order], batch_size=5), vectors[order], atol=1e-5)
    assert encoder.encode([], batch_size=5).shape == (0, encoder.embedding_dim)


def test_item_sizes_are_one_int_per_item(case):
    _, encoder, items = case
    sizes = encoder.item_sizes(items)
    assert sizes.dtype == np.int64 and sizes.shape == (len(items),)


def test_bad_item_names_its_position(case):
    kind, encoder, items = case
    with pytest.raises(InvalidArgumentTypeError, match=r"items\[1\]") as info:
        encoder.check_items([items[0], _bad_item(kind)])
    assert isinstance(info.value, MetricSimError) and isinstance(info.value, TypeError)


def test_save_load_round_trip_through_the_registry(case, tmp_path):
    kind, encoder, items = case
    folder = SimilarityModel(encoder, "manhattan").save(tmp_path / "model")
    loaded = load_encoder(folder)
    assert type(loaded) is type(encoder) and loaded.kind == kind
    assert loaded.fingerprint() == encoder.fingerprint()
    np.testing.assert_array_equal(loaded.encode(items), encoder.encode(items))
    again = SimilarityModel.from_pretrained(folder)
    assert again.metric.value == "manhattan" and again.encoder.fingerprint() == encoder.fingerprint()


def test_fingerprint_is_stable_and_tells_weights_apart(case):
    kind, encoder, _ = case
    assert encoder.fingerprint() == encoder.fingerprint()
    other = {"transformers": lambda: build_tiny_encoder(seed=1), "toy-vectors": lambda: ToyVectorEncoder(seed=1),
             "onnx": build_tiny_encoder, "image": lambda: tiny_image_encoder(seed=1),
             "multimodal": lambda: tiny_product_encoder(seed=1)}[kind]()
    assert other.fingerprint() != encoder.fingerprint()


@pytest.mark.parametrize("metric", ["euclidean", "manhattan"])
def test_calibrate_and_exactly_symmetric_probabilities(case, metric):
    _, encoder, items = case
    model = SimilarityModel(encoder, metric)
    n = len(items)
    a, b = np.triu_indices(n, 1)
    distances = all_pairs_distances_numpy(encoder.encode(items), encoder.encode(items), metric)[a, b]
    labels = (distances < np.median(distances)).astype(np.int64)
    labels[::5] = 1 - labels[::5]  # noise, so the classes overlap and the fit is finite
    pairs = _Pairs([items[i] for i in a], [items[j] for j in b], labels)
    calibrator = model.calibrate(pairs, fitted_on="all pairs")
    assert calibrator.weight < 0 and calibrator.metric.value == metric
    p_ab = model.predict_proba(pairs.texts_a, pairs.texts_b)
    p_ba = model.predict_proba(pairs.texts_b, pairs.texts_a)
    np.testing.assert_array_equal(p_ab, p_ba)
    np.testing.assert_allclose(model.distance(pairs.texts_a, pairs.texts_b), distances, rtol=1e-4, atol=1e-4)


class _Pairs:
    """The three columns ``SimilarityModel.calibrate`` reads from a PairDataset."""

    def __init__(self, texts_a, texts_b, labels):
        self.texts_a, self.texts_b, self.labels = texts_a, texts_b, labels

    def __len__(self):
        return len(self.labels)


def _model(encoder) -> SimilarityModel:
    return SimilarityModel(encoder, "euclidean", Calibrator(weight=-1.0, bias=1.0, metric="euclidean"))


def test_index_search_matches_exact_search(case, tmp_path):
    _, encoder, items = case
    model = _model(encoder)
    ids = [f"item{i}" for i in range(len(items))]
    index = NeighborIndex.build(model, items, ids, kind="flat")
    vectors = encoder.encode(items)
    exact = all_pairs_distances_numpy(vectors, vectors, "euclidean")
    found = index.search(items[:4], k=3)
    for row, result in enumerate(found):
        np.testing.assert_allclose(result.distances, np.sort(exact[row])[:3], atol=1e-4)
        assert result.ids[0] == ids[row]
        assert result.probabilities is not None
    radius = float(np.median(exact))
    within = index.range_search(items[:2], max_distance=radius)
    for row, result in enumerate(within):
        assert sorted(result.ids) == sorted(ids[j] for j in np.flatnonzero(exact[row] <= radius))
    loaded = NeighborIndex.load(index.save(tmp_path / "index"), model=model)
    assert [r.ids for r in loaded.search(items[:4], k=3)] == [r.ids for r in found]


def test_dedupe_joins_identical_items(case):
    _, encoder, items = case
    model = _model(encoder)
    corpus = items[:5] + [items[0], items[3]]
    result = NeighborIndex.build(model, corpus, kind="flat").dedupe(min_prob=0.7)
    cluster = result.cluster_of()
    assert cluster["0"] == cluster["5"] and cluster["3"] == cluster["6"]


def test_sharded_build_is_bit_identical_to_one_process(case, tmp_path):
    _, encoder, items = case
    model = _model(encoder)
    ids = [f"item{i}" for i in range(len(items))]
    built = build_index_sharded(model, items, ids, tmp_path / "index", batch_size=2, shard_size=4)
    single = NeighborIndex.build(model, items, ids, batch_size=2)
    np.testing.assert_array_equal(built.index.embeddings(), single.embeddings())


def test_export_applies_to_text_image_and_product_encoders(case, tmp_path):
    from metric_sim.export import export_model

    kind, encoder, items = case
    folder = _model(encoder).save(tmp_path / "model")
    if kind not in ("transformers", "image", "multimodal"):
        with pytest.raises(ExportError, match="transformers"):
            export_model(folder, tmp_path / "export")
        return
    exported = SimilarityModel.from_pretrained(export_model(folder, tmp_path / "export"))
    np.testing.assert_allclose(exported.embed(items), encoder.encode(items), atol=1e-6)
    assert exported.encoder.fingerprint() == encoder.fingerprint()
