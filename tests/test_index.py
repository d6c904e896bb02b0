"""NeighborIndex against exact NumPy search, refusals, persistence and the CLI.

The oracle is ``distances.all_pairs_distances_numpy`` (float64 brute force). Neighbour
ids must match it except where two candidates are within ``TIE`` of each other.
"""

from __future__ import annotations

import json
import shutil
import sqlite3

import numpy as np
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from metric_sim import (
    Calibrator,
    DataError,
    IndexConfigError,
    IndexLoadError,
    NeighborIndex,
    SimilarityModel,
    demo_neighbors,
    format_results,
    load_corpus,
)
from metric_sim.calibration import CalibrationError
from metric_sim.cli import main
from metric_sim.distances import Metric, all_pairs_distances_numpy
from metric_sim.index import parse_index_kind
from tests.conftest import DATA_DIR, build_tiny_encoder, requires_data

METRICS = ("euclidean", "manhattan")
KINDS = ("flat", "hnsw", "ivf")
TIE = 1e-4  # true-distance units: closer candidates count as tied
TEXTS = [
    "how do i learn python",
    "what is the best way to learn python",
    "how to cook rice",
    "how do i cook rice",
    "how to bake bread",
    "what is the capital city of the country",
    "which city is the capital",
    "how can i save money",
    "where to invest money",
    "buy a car or sell my car",
    "my phone battery is bad",
    "how do i train my dog",
]


def _clustered(n, dim=32, seed=0, scale=6.0, n_dups=20):
    """Gaussian clusters far from the origin (large norms stress FAISS' float32 L2),
    plus exact duplicate rows (distance 0)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, scale, (max(2, n // 20), dim)) + scale
    x = centres[rng.integers(0, len(centres), n)] + rng.normal(0, 1.0, (n, dim))
    if n_dups:
        x[-n_dups:] = x[:n_dups]
    return x.astype(np.float32)


def _calibrator(metric, d):
    """A calibrator whose 0.5 threshold is the distance ``d``."""
    return Calibrator(weight=-4.0 / d, bias=4.0, metric=metric, feature="linear")


def _check_knn(result_ids, result_d, oracle_row, ids, k):
    """Reported distances are the true ones, and the ids are the oracle's top-k up to ties."""
    pos = {i: n for n, i in enumerate(ids)}
    top = np.sort(oracle_row)[:k]
    np.testing.assert_allclose(result_d, top, atol=TIE, rtol=0)
    np.testing.assert_allclose(result_d, oracle_row[[pos[i] for i in result_ids]], atol=TIE, rtol=0)
    must = {ids[j] for j in np.flatnonzero(oracle_row < top[-1] - TIE)}
    assert must <= set(result_ids)
    assert np.all(np.diff(result_d) >= 0)


@pytest.fixture(scope="module")
def tiny_model_factory():
    encoder = build_tiny_encoder()

    def make(metric="euclidean", threshold=None):
        calibrator = None if threshold is None else _calibrator(metric, threshold)
        return SimilarityModel(encoder, metric, calibrator)

    return make


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, tiny_model_factory):
    """A calibrated tiny model saved to disk, inside a RUN_DIR layout."""
    run_dir = tmp_path_factory.mktemp("run")
    tiny_model_factory("euclidean", threshold=1.0).save(run_dir / "model")
    return run_dir


# ---------------------------------------------------------------------------- exact search


@pytest.mark.parametrize("metric", METRICS)
def test_flat_search_matches_numpy_oracle(metric):
    x = _clustered(800)
    queries = np.concatenate([x[:30], x[100:130] + 0.01, _clustered(30, seed=1)])
    ids = [f"doc{i}" for i in range(len(x))]
    index = NeighborIndex.from_embeddings(x, [f"t{i}" for i in range(len(x))], ids, metric=metric)
    oracle = all_pairs_distances_numpy(queries, x, metric)
    results = index.search_embeddings(queries, k=10)
    assert len(results) == len(queries)
    for q, result in enumerate(results):
        assert len(result) == 10 and result.probabilities is None
        _check_knn(result.ids, result.distances, oracle[q], ids, 10)
    # A stored vector finds itself (and its exact duplicate) at distance 0.
    assert results[0].distances[0] == 0.0 and set(results[0].ids[:2]) == {"doc0", f"doc{len(x) - 20}"}


@pytest.mark.parametrize("metric", METRICS)
def test_flat_search_of_texts_matches_oracle_and_probabilities(metric, tiny_model_factory):
    model = tiny_model_factory(metric, threshold=2.0)
    index = NeighborIndex.build(model, TEXTS, ids=[f"q{i}" for i in range(len(TEXTS))])
    stored = model.embed(TEXTS)
    queries = ["how do i learn java", "cook rice", TEXTS[4]]
    oracle = all_pairs_distances_numpy(model.embed(queries), stored, metric)
    results = index.search(queries, k=4)
    for q, result in enumerate(results):
        _check_knn(result.ids, result.distances, oracle[q], index.ids, 4)
        assert result.query == queries[q]
        assert result.texts == [TEXTS[int(i[1:])] for i in result.ids]
        np.testing.assert_allclose(result.probabilities, model.calibrator.predict_proba(result.distances), rtol=1e-6)
    assert results[2].ids[0] == "q4" and results[2].distances[0] < 1e-5
    # Filters keep exactly the neighbours over the probability / under the distance.
    cut = float(results[0].distances[1])
    filtered = index.search(queries[:1], k=4, max_distance=cut)[0]
    assert filtered.ids == [i for i, d in zip(results[0].ids, results[0].distances, strict=True) if d <= cut]
    p = float(results[0].probabilities[1])
    by_prob = index.search(queries[:1], k=4, min_prob=p - 1e-9)[0]
    assert by_prob.ids == results[0].ids[: len(by_prob)] and len(by_prob) >= 2


def test_search_edge_cases(tiny_model_factory):
    index = NeighborIndex.build(tiny_model_factory(), TEXTS[:3])
    assert [len(r) for r in index.search(["rice", "python"], k=10)] == [3, 3]  # k > n: all
    assert index.search([], k=2) == []
    with pytest.raises(ValueError, match="k must be a positive integer, got 0"):
        index.search(["rice"], k=0)
    with pytest.raises(TypeError, match="queries must be a list of strings"):
        index.search("rice", k=1)
    with pytest.raises(CalibrationError, match="no calibrator"):
        index.search(["rice"], k=1, min_prob=0.5)
    with pytest.raises(ValueError, match="exactly one of min_prob and max_distance"):
        index.range_search(["rice"])
    with pytest.raises(ValueError, match="max_distance must be a finite number >= 0, got -1"):
        index.range_search(["rice"], max_distance=-1)
    with pytest.raises(ValueError, match="query embeddings must have 32 columns"):
        index.search_embeddings(np.zeros((1, 5)), k=1)
    # Above p(d=0) no distance qualifies: an empty answer, not an error.
    calibrated = NeighborIndex.build(SimilarityModel(index.model.encoder, "euclidean", Calibrator(-1.0, 1.0, "euclidean")), TEXTS[:3])
    assert len(calibrated.range_search(["rice"], min_prob=0.9)[0]) == 0


# ---------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("PQ8", "wrong neighbours WITHOUT an error"),
        ("IVF16,PQ8", "wrong neighbours WITHOUT an error"),
        ("OPQ8,IVF16,PQ8", "wrong neighbours WITHOUT an error"),
        ("SQ8", "scalar quantizer has no L1"),
        ("IVF16,SQ8", "scalar quantizer has no L1"),
        ("HNSW32,SQ8", "aborts the whole process"),
        ("IVF16,PQ8x4fs", "fast-scan"),
        ("PQ16x4fs", "fast-scan"),
        ("LSH", "LSH"),
    ],
)
def test_l1_combinations_faiss_mishandles_are_refused_by_name(spec, message, monkeypatch):
    import faiss

    def never(*args, **kwargs):  # the check must happen before FAISS sees the string
        raise AssertionError("FAISS was called")

    monkeypatch.setattr(faiss, "index_factory", never)
    with pytest.raises(IndexConfigError, match=message) as info:
        NeighborIndex(16, "manhattan", spec)
    assert repr(spec) in str(info.value) and "manhattan" in str(info.value) and "METRIC_L1" in str(info.value)
    # With L2 the same lossy codes are refused too (approximate distances -> wrong probabilities).
    with pytest.raises(IndexConfigError, match="lossy codes"):
        NeighborIndex(16, "euclidean", spec)


@pytest.mark.parametrize(
    ("spec", "kind", "fixed"),
    [
        ("flat", "flat", {}),
        ("HNSW", "hnsw", {}),
        ("Flat", "flat", {}),
        ("IDMap2,Flat", "flat", {}),
        ("HNSW16", "hnsw", {"M": 16}),
        ("HNSW16,Flat", "hnsw", {"M": 16}),
        ("IVF64,Flat", "ivf", {"nlist": 64}),
    ],
)
@pytest.mark.parametrize("metric", METRICS)
def test_supported_kinds_and_factory_strings(spec, kind, fixed, metric):
    assert parse_index_kind(spec, metric) == (kind, fixed)


def test_bad_kinds_and_params_are_refused():
    with pytest.raises(IndexConfigError, match="unknown index kind 'IVF16,Foo'"):
        NeighborIndex(8, "euclidean", "IVF16,Foo")
    with pytest.raises(IndexConfigError, match=r"unknown parameter\(s\) \['nlist'\] for kind 'hnsw'"):
        NeighborIndex(8, "euclidean", "hnsw", nlist=4)
    with pytest.raises(IndexConfigError, match="M is given twice"):
        NeighborIndex(8, "euclidean", "HNSW16", M=32)
    with pytest.raises(ValueError, match="efSearch must be a positive integer, got 0"):
        NeighborIndex(8, "euclidean", "hnsw", efSearch=0)
    with pytest.raises(IndexConfigError, match="needs at least 50 vectors to train, got 10"):
        NeighborIndex.from_embeddings(_clustered(10, n_dups=0), ["t"] * 10, metric="euclidean", kind="ivf", nlist=50)


def test_model_and_calibrator_must_match_the_index(tiny_model_factory):
    with pytest.raises(ValueError, match="fitted for metric 'manhattan'"):
        NeighborIndex(32, "euclidean", calibrator=_calibrator("manhattan", 1.0))
    with pytest.raises(IndexLoadError, match="uses metric 'euclidean'"):
        NeighborIndex(32, "manhattan", model=tiny_model_factory("euclidean"))
    with pytest.raises(IndexLoadError, match="dimension 32, but the index holds dimension 8"):
        NeighborIndex(8, "euclidean", model=tiny_model_factory("euclidean"))


# ---------------------------------------------------------------------------- range search / dedupe


@pytest.mark.parametrize("metric", METRICS)
def test_range_search_matches_brute_force(metric):
    x = _clustered(600, seed=3)
    queries = np.concatenate([x[:20], _clustered(20, seed=4)])
    oracle = all_pairs_distances_numpy(queries, x, metric)
    radius = float(np.quantile(oracle, 0.02))
    cal = Calibrator(weight=-2.0, bias=2.0 * radius, metric=metric, feature="linear")  # p = 0.5 exactly at radius
    index = NeighborIndex.from_embeddings(x, [str(i) for i in range(len(x))], metric=metric, calibrator=cal)
    by_distance = index.range_search_embeddings(queries, max_distance=radius)
    by_prob = index.range_search_embeddings(queries, min_prob=0.5)
    assert sum(len(r) for r in by_distance) > 50
    for q, (a, b) in enumerate(zip(by_distance, by_prob, strict=True)):
        clear_in = {str(j) for j in np.flatnonzero(oracle[q] <= radius - TIE)}
        maybe = {str(j) for j in np.flatnonzero(oracle[q] <= radius + TIE)}
        assert clear_in <= set(a.ids) <= maybe
        assert a.ids == b.ids
        np.testing.assert_allclose(a.distances, oracle[q][[int(i) for i in a.ids]], atol=TIE, rtol=0)
        assert np.all(np.diff(a.distances) >= 0) and np.all(b.probabilities >= 0.5 - 1e-6)


@pytest.mark.parametrize("metric", METRICS)
def test_dedupe_matches_brute_force_pairs_and_components(metric):
    x = _clustered(400, seed=5, n_dups=30)
    oracle = all_pairs_distances_numpy(x, x, metric)
    radius = float(np.quantile(oracle[np.triu_indices(len(x), 1)], 0.003))
    index = NeighborIndex.from_embeddings(x, [f"text {i}" for i in range(len(x))], metric=metric, calibrator=_calibrator(metric, radius))
    result = index.dedupe(min_prob=0.5)
    assert result.max_distance == pytest.approx(radius)
    found = {(int(p.id_a), int(p.id_b)) for p in result.pairs}
    iu, ju = np.triu_indices(len(x), 1)
    clear = {(int(i), int(j)) for i, j in zip(iu, ju, strict=True) if oracle[i, j] <= radius - TIE}
    maybe = {(int(i), int(j)) for i, j in zip(iu, ju, strict=True) if oracle[i, j] <= radius + TIE}
    assert len(clear) > 30 and clear <= found <= maybe
    for p in result.pairs:
        assert p.distance == pytest.approx(oracle[int(p.id_a), int(p.id_b)], abs=TIE)
        assert p.probability == pytest.approx(float(index.calibrator.predict_proba([p.distance])[0]))
        assert p.text_a == f"text {p.id_a}"
    # Clusters are the connected components of the found pairs (scipy, not our union-find).
    rows, cols = zip(*found, strict=True)
    graph = coo_matrix((np.ones(len(found)), (rows, cols)), shape=(len(x), len(x)))
    _, labels = connected_components(graph, directed=False)
    expected = {frozenset(str(i) for i in np.flatnonzero(labels == c)) for c in np.unique(labels)}
    assert {frozenset(c) for c in result.clusters} == {c for c in expected if len(c) > 1}
    assert [len(c) for c in result.clusters] == sorted((len(c) for c in result.clusters), reverse=True)
    assert result.to_dict()["pairs"] == len(found)


def test_dedupe_writes_clusters_tsv_readable_as_corpus(tmp_path):
    x = np.array([[0.0, 0.0], [0.0, 0.1], [5.0, 5.0], [5.0, 5.05], [9.0, 0.0]], dtype=np.float32)
    texts = ["a\tb", 'say "hi"', "multi\nline", "plain", "alone"]
    index = NeighborIndex.from_embeddings(x, texts, ["i0", "i1", "i2", "i3", "i4"], metric="euclidean")
    result = index.dedupe(max_distance=0.5)
    assert result.clusters == [["i0", "i1"], ["i2", "i3"]]
    assert [(p.id_a, p.id_b) for p in result.pairs] == [("i2", "i3"), ("i0", "i1")]  # nearest first
    assert [p.probability for p in result.pairs] == [None, None]
    back = load_corpus(result.write_tsv(tmp_path / "clusters.tsv"), id_column="id")
    assert back.ids == ["i0", "i1", "i2", "i3"] and back.texts == texts[:4]
    pairs_file = result.write_pairs_tsv(tmp_path / "pairs.tsv")
    assert pairs_file.read_text(encoding="utf-8").splitlines()[1].startswith("i2\ti3\t0.05")


# ---------------------------------------------------------------------------- approximate kinds


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_kinds_recall_at_10(kind, metric):
    # Clustered data, like real embeddings (IVF's lists follow the clusters).
    x = _clustered(4000, seed=7, n_dups=0, scale=2.0)
    queries = x[:200] + np.random.default_rng(8).normal(0, 0.5, (200, 32)).astype(np.float32)
    texts = [str(i) for i in range(len(x))]
    flat = NeighborIndex.from_embeddings(x, texts, metric=metric)
    approx = NeighborIndex.from_embeddings(x, texts, metric=metric, kind=kind)
    truth = [set(r.ids) for r in flat.search_embeddings(queries, k=10)]
    found = approx.search_embeddings(queries, k=10)
    recall = np.mean([len(t & set(r.ids)) / 10 for t, r in zip(truth, found, strict=True)])
    assert recall >= 0.95, f"{kind} {metric} recall@10 = {recall:.3f}"
    oracle = all_pairs_distances_numpy(queries[:5], x, metric)
    for q in range(5):  # whatever it finds, it reports true distances
        np.testing.assert_allclose(found[q].distances, oracle[q][[int(i) for i in found[q].ids]], atol=TIE, rtol=0)
    # A weaker search setting measurably lowers recall: the parameter reaches FAISS.
    approx.set_search_params(**({"efSearch": 1} if kind == "hnsw" else {"nprobe": 1}))
    weak = np.mean([len(t & set(r.ids)) / 10 for t, r in zip(truth, approx.search_embeddings(queries, k=10), strict=True)])
    assert weak < recall
    with pytest.raises(IndexConfigError, match="not a search-time parameter"):
        approx.set_search_params(M=8)


@pytest.mark.parametrize("kind", KINDS)
def test_add_and_remove(kind):
    x = _clustered(200, seed=9, n_dups=0)
    index = NeighborIndex.from_embeddings(x[:150], [f"t{i}" for i in range(150)], metric="manhattan", kind=kind)
    assert index.add_embeddings(x[150:], [f"t{i}" for i in range(150, 200)]) == [str(i) for i in range(150, 200)]
    removed = [str(i) for i in range(0, 200, 3)]
    assert index.remove(removed) == len(removed)
    assert len(index) == 200 - len(removed) and "0" not in index and "1" in index
    keep = np.array([i for i in range(200) if str(i) not in set(removed)])
    oracle = all_pairs_distances_numpy(x[keep], x[keep], "manhattan")
    results = index.search_embeddings(x[keep], k=5)
    assert not set(removed) & {i for r in results for i in r.ids}
    ids = [str(i) for i in keep]
    assert np.mean([r.ids[0] == ids[q] for q, r in enumerate(results)]) >= 0.95  # each finds itself
    if kind == "flat":
        for q, r in enumerate(results):
            _check_knn(r.ids, r.distances, oracle[q], ids, 5)
    with pytest.raises(KeyError, match=r"1 id\(s\) are not in the index, e.g. \['0'\]"):
        index.remove(["1", "0"])
    assert "1" in index  # nothing removed when one id is unknown
    with pytest.raises(ValueError, match="'1' is already in the index"):
        index.add_embeddings(x[:1], ["again"], ["1"])
    with pytest.raises(ValueError, match=r"ids\[1\] = 'z' repeats ids\[0\]"):
        index.add_embeddings(x[:2], ["a", "b"], ["z", "z"])
    assert index.add_embeddings(x[:1], ["new"]) == ["200"]  # default ids never reuse a key


# ---------------------------------------------------------------------------- persistence


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip(kind, metric, tmp_path, tiny_model_factory):
    model = tiny_model_factory(metric, threshold=3.0)
    params = {"efSearch": 40} if kind == "hnsw" else {"nprobe": 2} if kind == "ivf" else {}
    texts = TEXTS * 5
    index = NeighborIndex.build(model, texts, kind=kind, **params)
    index.remove(["3", "17"])
    before = index.search(TEXTS[:4], k=6)
    out = index.save(tmp_path / "idx")
    assert sorted(p.name for p in out.iterdir()) == ["index.faiss", "metadata.json", "store.sqlite"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind
    meta = json.loads((out / "metadata.json").read_text())
    assert (meta["kind"], meta["metric"], meta["dim"], meta["count"]) == (kind, metric, 32, len(texts) - 2)
    assert meta["encoder_fingerprint"] == model.encoder.fingerprint()
    assert meta["calibrator"] == model.calibrator.to_dict() and "faiss" in meta["versions"]
    loaded = NeighborIndex.load(out, model=model)
    assert loaded.params == index.params and loaded.ids == index.ids and loaded.texts == index.texts
    after = loaded.search(TEXTS[:4], k=6)
    for a, b in zip(before, after, strict=True):
        assert a.ids == b.ids
        np.testing.assert_array_equal(a.distances, b.distances)
        np.testing.assert_array_equal(a.probabilities, b.probabilities)
    assert loaded.add(["a brand new question"]) == [str(len(texts))]  # keys continue after load
    assert loaded.dedupe(max_distance=1e-6).clusters == index.dedupe(max_distance=1e-6).clusters != []


def test_save_replaces_an_index_but_never_other_folders(tmp_path, tiny_model_factory, monkeypatch):
    import faiss

    model = tiny_model_factory()
    NeighborIndex.build(model, TEXTS).save(tmp_path / "idx")
    NeighborIndex.build(model, TEXTS[:4]).save(tmp_path / "idx")
    assert len(NeighborIndex.load(tmp_path / "idx", model=model)) == 4
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a saved NeighborIndex"):
        NeighborIndex.build(model, TEXTS).save(precious)
    assert (precious / "notes.txt").read_text() == "keep me"

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(faiss, "write_index", crash)
    with pytest.raises(OSError, match="disk full"):
        NeighborIndex.build(model, TEXTS).save(tmp_path / "idx")
    monkeypatch.undo()
    assert len(NeighborIndex.load(tmp_path / "idx", model=model)) == 4  # the old index is intact
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.fixture()
def saved_index(tmp_path, tiny_model_factory):
    model = tiny_model_factory("euclidean", threshold=1.0)
    return NeighborIndex.build(model, TEXTS, kind="hnsw").save(tmp_path / "idx"), model


def _rewrite_meta(folder, **changes):
    meta = json.loads((folder / "metadata.json").read_text())
    meta.update(changes)
    (folder / "metadata.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: (f / "index.faiss").unlink(), "index.faiss is missing"),
        (lambda f: (f / "store.sqlite").unlink(), "store.sqlite is missing"),
        (lambda f: (f / "metadata.json").unlink(), "metadata.json is missing"),
        (lambda f: (f / "index.faiss").write_bytes((f / "index.faiss").read_bytes()[:-100]), "truncated"),
        (lambda f: (f / "store.sqlite").write_bytes((f / "store.sqlite").read_bytes()[:512]), "truncated"),
        (lambda f: (f / "index.faiss").write_bytes(_flip((f / "index.faiss").read_bytes())), "checksum"),
        (lambda f: (f / "metadata.json").write_text("{not json"), "not valid JSON"),
        (lambda f: _rewrite_meta(f, format_version=99), "format_version must be 1, got 99"),
        (lambda f: _rewrite_meta(f, dim=64), "holds dimension 32, but metadata.json says 64: the dimension changed"),
        (lambda f: _rewrite_meta(f, metric="manhattan"), "metadata.json says 'manhattan'"),
        (lambda f: _rewrite_meta(f, count=5), "holds 12 vectors, but metadata.json says 5"),
        (lambda f: _rewrite_meta(f, kind="flat", params={}), "holds a IndexHNSWFlat, but metadata.json says kind 'flat'"),
    ],
)
def test_damaged_index_folders_are_refused(saved_index, damage, message):
    folder, model = saved_index
    damage(folder)
    with pytest.raises(IndexLoadError, match=message):
        NeighborIndex.load(folder, model=model)


def _flip(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]


def test_store_that_disagrees_with_the_vectors_is_refused(saved_index):
    folder, model = saved_index
    with sqlite3.connect(folder / "store.sqlite") as connection:
        connection.execute("UPDATE items SET key = 99 WHERE key = 0")
    connection.close()
    meta = json.loads((folder / "metadata.json").read_text())
    from metric_sim.storage import sha256_file

    meta["files"]["store.sqlite"] = {"size": (folder / "store.sqlite").stat().st_size, "sha256": sha256_file(folder / "store.sqlite")}
    (folder / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(IndexLoadError, match="do not match the vectors"):
        NeighborIndex.load(folder, model=model)


def test_mismatched_models_are_refused(saved_index, tiny_model_factory):
    folder, _ = saved_index
    other_weights = SimilarityModel(build_tiny_encoder(seed=1), "euclidean")
    with pytest.raises(IndexLoadError, match="different encoder from the one that built this index"):
        NeighborIndex.load(folder, model=other_weights)
    with pytest.raises(IndexLoadError, match="uses metric 'manhattan', but the index uses 'euclidean'"):
        NeighborIndex.load(folder, model=tiny_model_factory("manhattan"))
    from transformers import BertConfig, BertModel

    from metric_sim.encoder import Encoder

    base = build_tiny_encoder()
    wide = BertModel(BertConfig(vocab_size=len(base.tokenizer), hidden_size=48, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, max_position_embeddings=64), add_pooling_layer=False)
    with pytest.raises(IndexLoadError, match="dimension 48, but the index holds dimension 32"):
        NeighborIndex.load(folder, model=SimilarityModel(Encoder(wide, base.tokenizer, max_length=32), "euclidean"))


def test_load_without_model_uses_recorded_path_or_vectors_only(tmp_path, saved_model):
    model = SimilarityModel.from_pretrained(saved_model / "model")
    out = NeighborIndex.build(model, TEXTS).save(tmp_path / "idx")
    assert json.loads((out / "metadata.json").read_text())["model_path"] == str((saved_model / "model").resolve())
    reloaded = NeighborIndex.load(out)  # finds and verifies the recorded model
    assert reloaded.search([TEXTS[2]], k=1)[0].ids == ["2"]
    moved = NeighborIndex.load(out, load_model=False)
    with pytest.raises(ValueError, match="has no model, so it cannot embed text queries"):
        moved.search(["rice"], k=1)
    assert moved.search_embeddings(model.embed([TEXTS[5]]), k=1)[0].ids == ["5"]
    assert moved.calibrator == model.calibrator  # saved with the index


# ---------------------------------------------------------------------------- corpus files


def test_load_corpus_formats(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "c.txt").write_text("first text\nsecond text\n", encoding="utf-8")
    c = load_corpus(tmp_path / "c.txt")
    assert (c.ids, c.texts) == (["1", "2"], ["first text", "second text"])
    (tmp_path / "c.csv").write_text('key,body\nk1,"has, comma"\nk2,"two\nlines"\n', encoding="utf-8")
    c = load_corpus(tmp_path / "c.csv", text_column="body", id_column="key")
    assert (c.ids, c.texts) == (["k1", "k2"], ["has, comma", "two\nlines"])
    (tmp_path / "c.jsonl").write_text('{"text": "a"}\n{"text": "b"}\n', encoding="utf-8")
    assert load_corpus(tmp_path / "c.jsonl").texts == ["a", "b"]
    pq.write_table(pa.table({"q": ["x", "y"], "id": [10, 11]}), tmp_path / "c.parquet")
    c = load_corpus(tmp_path / "c.parquet", text_column="q", id_column="id")
    assert (c.ids, c.texts) == (["10", "11"], ["x", "y"])


@pytest.mark.parametrize(
    ("name", "content", "kwargs", "message"),
    [
        ("c.txt", "a\n\nb\n", {}, "c.txt, line 2: text is empty"),
        ("c.tsv", "id\ttext\n1\ta\n2\t \n", {"id_column": "id"}, "c.tsv, line 3, column 'text': text is empty"),
        ("c.tsv", "id\ttext\n1\ta\n1\tb\n", {"id_column": "id"}, "line 3, column 'id': id '1' was already used on line 2"),
        ("c.tsv", "id\tbody\n1\ta\n", {}, "missing column 'text'; columns found: \\['id', 'body'\\]"),
        ("c.tsv", "id\ttext\n1\ta\textra\n", {}, "line 2: expected 2 fields, got 3"),
        ("c.jsonl", '{"text": "a"}\n{"text": 5}\n', {}, "line 2, column 'text': text must be a string"),
        ("c.txt", "", {}, "no texts"),
        ("c.doc", "a\n", {}, "unknown corpus file type '.doc'"),
    ],
)
def test_load_corpus_bad_rows_name_file_and_line(tmp_path, name, content, kwargs, message):
    (tmp_path / name).write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        load_corpus(tmp_path / name, **kwargs)


def test_load_corpus_argument_errors(tmp_path):
    (tmp_path / "c.txt").write_text("a\n", encoding="utf-8")
    with pytest.raises(ValueError, match="one-text-per-line corpus has no columns"):
        load_corpus(tmp_path / "c.txt", text_column="text")
    with pytest.raises(FileNotFoundError, match="corpus file not found"):
        load_corpus(tmp_path / "missing.txt")


# ---------------------------------------------------------------------------- CLI and quickstart hook


def test_cli_index_build_query_and_dedupe(tmp_path, saved_model, capsys):
    corpus = tmp_path / "corpus.tsv"
    rows = [f"id{i}\t{t}" for i, t in enumerate(TEXTS + [TEXTS[0]])]
    corpus.write_text("id\tquestion\n" + "\n".join(rows) + "\n", encoding="utf-8")
    common = ["--model", str(saved_model), "--corpus", str(corpus), "--text-column", "question", "--id-column", "id"]
    assert main(["index", "build", *common, "--kind", "HNSW16", "--out", str(tmp_path / "idx"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["items"], summary["kind"], summary["params"]["M"], summary["calibrated"]) == (13, "hnsw", 16, True)

    assert main(["query", str(tmp_path / "idx"), TEXTS[2], "how to cook", "-k", "3", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    first = payload["results"][0]["neighbors"]
    assert [n["rank"] for n in first] == [1, 2, 3] and first[0]["id"] == "id2" and first[0]["distance"] < 1e-5
    assert first[0]["probability"] > 0.5
    assert main(["query", str(tmp_path / "idx"), TEXTS[2], "--min-prob", "0.999"]) == 0
    assert "(no neighbours)" in capsys.readouterr().out

    out = tmp_path / "clusters.tsv"
    assert main(["dedupe", *common, "--max-distance", "1e-6", "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["cluster_members"] == [["id0", "id12"]] and result["pairs"] == 1
    assert out.read_text(encoding="utf-8").splitlines() == ["cluster\tid\ttext", f"0\tid0\t{TEXTS[0]}", f"0\tid12\t{TEXTS[0]}"]


def test_cli_bad_input_exits_2_with_a_clear_message(tmp_path, saved_model, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_text("one\n\nthree\n", encoding="utf-8")
    assert main(["index", "build", "--model", str(saved_model), "--corpus", str(bad), "--out", str(tmp_path / "i")]) == 2
    assert "bad.txt, line 2: text is empty" in capsys.readouterr().err
    good = tmp_path / "good.txt"
    good.write_text("one\ntwo\n", encoding="utf-8")
    assert main(["index", "build", "--model", str(saved_model), "--corpus", str(good), "--out", str(tmp_path / "i"), "--kind", "IVF4,SQ8"]) == 2
    assert "lossy codes" in capsys.readouterr().err
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    assert main(["index", "build", "--model", str(saved_model), "--corpus", str(good), "--out", str(tmp_path / "taken")]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert main(["query", str(tmp_path / "nowhere"), "x"]) == 2
    assert "index folder not found" in capsys.readouterr().err
    uncalibrated = tmp_path / "plain"
    SimilarityModel(build_tiny_encoder(), "euclidean").save(uncalibrated)
    assert main(["dedupe", "--model", str(uncalibrated), "--corpus", str(good), "--out", str(tmp_path / "c.tsv")]) == 2
    assert "no calibrator" in capsys.readouterr().err
    assert main(["index", "build", "--model", str(uncalibrated), "--corpus", str(good), "--out", str(tmp_path / "i")]) == 0
    shutil.rmtree(uncalibrated)
    capsys.readouterr()
    assert main(["query", str(tmp_path / "i"), "x"]) == 2
    assert "pass --model DIR" in capsys.readouterr().err


def test_demo_neighbors_hook(tiny_model_factory):
    model = tiny_model_factory("euclidean", threshold=2.0)
    index, results = demo_neighbors(model, k=3)
    assert len(results) == 3 and all(len(r) == 3 for r in results)
    assert not {r.query for r in results} & set(index.texts)  # queries are held out of the index
    text = format_results(results)
    assert text.count("query: ") == 3 and "p=" in text and " 1. d=" in text


# ---------------------------------------------------------------------------- real model (slow)


@pytest.mark.slow
@requires_data
def test_default_model_flat_matches_oracle_on_qqp_questions():
    from metric_sim import Encoder, load_preset

    pairs = load_preset("qqp", split="test", data_dir=DATA_DIR)
    ids, texts = (part[:200] for part in pairs.unique_texts())
    encoder = Encoder.from_pretrained("default")
    built = NeighborIndex.build(SimilarityModel(encoder, "euclidean"), texts, ids)
    stored = built.embeddings()
    queries = texts[:20]
    query_vectors = encoder.encode(queries)
    for metric in METRICS:
        model = SimilarityModel(encoder, metric)
        index = NeighborIndex.from_embeddings(stored, texts, ids, metric=metric, model=model)
        oracle = all_pairs_distances_numpy(query_vectors, stored, Metric.parse(metric))
        for q, result in enumerate(index.search(queries, k=10)):  # text queries go through model.embed
            _check_knn(result.ids, result.distances, oracle[q], ids, 10)
            assert result.distances[0] < 1e-3  # each stored question finds itself
