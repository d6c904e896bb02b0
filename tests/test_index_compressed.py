"""Compressed kinds (ivfpq, opq-ivfpq): PQ codes propose candidates, the full vectors kept
on disk give the true distances.

The oracle is NumPy brute force in float64 (``all_pairs_distances_numpy`` /
``paired_distances_numpy``) over the same vectors; saved vectors are compared bit for bit.
"""

from __future__ import annotations

import json
import shutil

import faiss
import numpy as np
import pytest

from metric_sim import IndexConfigError, IndexLoadError, NeighborIndex, SimilarityModel
from metric_sim.cli import main
from metric_sim.distances import all_pairs_distances_numpy
from metric_sim.errors import InvalidArgumentError
from metric_sim.layout import INDEX_FILE, METADATA_FILE, VECTORS_FILE
from metric_sim.storage import sha256_file
from tests.conftest import BASE_WORDS, build_tiny_encoder

METRICS = ("euclidean", "manhattan")
N, DIM = 3000, 32


def _data(n=N, n_queries=100, seed=0):
    """Clustered Gaussian vectors (30 clusters) and held-out queries from the same clusters."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4.0, (30, DIM))
    x = centres[rng.integers(0, 30, n)] + rng.normal(0, 1.0, (n, DIM))
    q = centres[rng.integers(0, 30, n_queries)] + rng.normal(0, 1.0, (n_queries, DIM))
    return x.astype(np.float32), q.astype(np.float32)


X, Q = _data()
IDS = [f"v{i}" for i in range(N)]


def _exact(a, b, metric):
    """float64 distances of the rows of a to the rows of b (the oracle, not the code under test)."""
    out = np.empty((len(a), len(b)))
    for start in range(0, len(a), 64):  # bounded memory: 64 x len(b) x DIM float64s
        diff = np.abs(a[start : start + 64].astype(np.float64)[:, None, :] - b.astype(np.float64)[None, :, :])
        out[start : start + 64] = np.sqrt((diff**2).sum(-1)) if metric == "euclidean" else diff.sum(-1)
    return out


def _build(metric, kind="ivfpq", x=X, **params):
    params = {"m": 16, "nbits": 8, "rerank": 200, **params}
    ids = [f"v{i}" for i in range(len(x))]
    return NeighborIndex.from_embeddings(x, ids, ids, metric=metric, kind=kind, **params)


@pytest.fixture(scope="module", params=METRICS)
def built(request):
    return request.param, _build(request.param)


def _rows(ids):
    return np.array([int(i[1:]) for i in ids])


def test_returned_distances_are_the_true_distances_sorted(built):
    metric, index = built
    results = index.search_embeddings(Q, k=10)
    for q, result in zip(Q, results, strict=True):
        assert len(result) == 10
        rows = _rows(result.ids)
        truth = _exact(q[None], X[rows], metric)[0]
        np.testing.assert_allclose(result.distances, truth, rtol=1e-5, atol=0)
        assert np.all(np.diff(result.distances) >= 0)
    if metric == "manhattan":  # re-ranked in L1, not left as the L2 of the codes
        l2 = _exact(Q[:1], X[_rows(results[0].ids)], "euclidean")[0]
        assert np.all(results[0].distances > l2 * 1.5)


def test_recall_against_brute_force_on_clustered_data(built):
    metric, index = built
    truth = np.argsort(all_pairs_distances_numpy(Q, X, metric), axis=1, kind="stable")[:, :10]
    results = index.search_embeddings(Q, k=10)
    recall = np.mean([len(set(_rows(r.ids)) & set(t)) / 10 for r, t in zip(results, truth, strict=True)])
    assert recall >= 0.9
    recorded = index.info()["compressed"]["recall"]
    assert recorded["queries"] == 200 and recorded["items"] == N and 0.9 <= recorded["recall_at_10"] <= 1.0


def test_measured_recall_equals_a_numpy_oracle_across_blocks(built, monkeypatch):
    from metric_sim.index import compressed

    metric, index = built
    monkeypatch.setattr(compressed, "_RECALL_CHUNK", 700)  # several blocks whose shortlists are merged
    measured = index.measure_recall()
    picked = np.sort(np.random.default_rng(compressed.RECALL_SEED).choice(N, 200, replace=False))
    exact = _exact(X[picked], X, metric)
    exact[np.arange(len(picked)), picked] = np.inf  # each query leaves itself out
    truth = np.argsort(exact, axis=1, kind="stable")[:, :10]
    found = index.search_embeddings(X[picked], k=11)
    hits = sum(len(set(t) & set([i for i in _rows(r.ids) if i != p][:10]))
               for t, r, p in zip(truth, found, picked, strict=True))
    assert measured == hits / (10 * len(picked))


def test_reranking_every_item_in_every_list_is_exact(built):
    metric, index = built
    index.set_search_params(rerank=N, nprobe=index.params["nlist"])
    try:
        results = index.search_embeddings(Q, k=10)
        assert index.measure_recall() == 1.0
    finally:
        index.set_search_params(rerank=200, nprobe=16)
    exact = _exact(Q, X, metric)
    truth = np.argsort(exact, axis=1, kind="stable")[:, :10]
    for i, result in enumerate(results):
        assert _rows(result.ids).tolist() == truth[i].tolist()
        np.testing.assert_allclose(result.distances, exact[i, truth[i]], rtol=1e-5)


def test_bytes_per_item_come_from_faiss_and_are_small(built, tmp_path):
    _, index = built
    folder = index.save(tmp_path / "idx")
    loaded = faiss.read_index(str(folder / INDEX_FILE))
    code_size = faiss.downcast_index(faiss.extract_index_ivf(loaded)).code_size
    meta = json.loads((folder / METADATA_FILE).read_text())
    assert meta["kind"] == "ivfpq" and meta["params"]["m"] == 16 and meta["params"]["nbits"] == 8
    assert code_size == 16
    assert meta["compressed"]["ram_bytes_per_item"] == code_size + 8 < 64
    assert index.info()["compressed"]["ram_bytes_per_item"] == code_size + 8


def test_save_load_gives_bit_identical_mapped_vectors_and_results(built, tmp_path):
    metric, index = built
    before = index.search_embeddings(Q, k=10)
    folder = index.save(tmp_path / "idx")
    loaded = NeighborIndex.load(folder)
    assert loaded.info()["vector_file"] == str(folder / VECTORS_FILE)
    mapped = np.memmap(folder / VECTORS_FILE, dtype="<f4", mode="r", shape=(N, DIM))
    assert mapped.tobytes() == X.tobytes()
    assert loaded.embeddings().tobytes() == X.tobytes()
    after = loaded.search_embeddings(Q, k=10)
    for a, b in zip(before, after, strict=True):
        assert a.ids == b.ids and a.distances.tobytes() == b.distances.tobytes()
    assert loaded.info()["compressed"] == index.info()["compressed"]
    assert loaded.params == index.params


def test_add_appends_to_codes_and_vectors_and_remove_stays_correct(tmp_path):
    metric = "euclidean"
    index = _build(metric, x=X[:2500])
    folder = index.save(tmp_path / "idx")
    saved_sha = sha256_file(folder / VECTORS_FILE)
    loaded = NeighborIndex.load(folder)
    loaded.add_embeddings(X[2500:], IDS[2500:], IDS[2500:])
    assert sha256_file(folder / VECTORS_FILE) == saved_sha  # the saved folder changes only by save
    assert loaded.info()["compressed"]["vector_rows"] == N
    assert loaded.embeddings().tobytes() == X.tobytes()
    hit = loaded.search_embeddings(X[2990:2991], k=1)[0]
    assert hit.ids == ["v2990"] and hit.distances[0] == 0.0
    gone = ["v2990", "v5", "v17"]
    assert loaded.remove(gone) == 3
    results = loaded.search_embeddings(X[[2990, 5, 17]], k=10)
    keep = np.setdiff1d(np.arange(N), _rows(gone))
    for q, result in zip(X[[2990, 5, 17]], results, strict=True):
        assert not set(result.ids) & set(gone)
        np.testing.assert_allclose(result.distances, _exact(q[None], X[_rows(result.ids)], metric)[0], rtol=1e-5)
        assert _rows(result.ids)[0] == keep[np.argmin(_exact(q[None], X[keep], metric)[0])]
    again = NeighborIndex.load(loaded.save(tmp_path / "idx2"))
    assert len(again) == N - 3 and again.info()["compressed"]["vector_rows"] == N
    assert again.embeddings().tobytes() == X[keep].tobytes()


@pytest.mark.parametrize("nbits", [6, 4], ids=["pq", "fast-scan"])
@pytest.mark.parametrize("metric", METRICS)
def test_range_search_and_dedupe_match_brute_force_when_every_list_is_probed(metric, nbits):
    x, q = X[:1000], Q[:20]
    index = _build(metric, x=x, m=8, nbits=nbits, nlist=8, nprobe=8)
    exact = _exact(q, x, metric)
    radius = float(np.quantile(exact, 0.01))
    for i, result in enumerate(index.range_search_embeddings(q, max_distance=radius)):
        truth = np.flatnonzero(exact[i] <= radius)
        assert sorted(_rows(result.ids).tolist()) == truth.tolist()
        np.testing.assert_allclose(result.distances, exact[i, _rows(result.ids)], rtol=1e-5)
    within = _exact(x[:200], x, metric)
    small = float(np.quantile(within[within > 0], 0.002))
    pairs = {(int(a), int(b)) for a, b in zip(*np.nonzero(np.triu(_exact(x, x, metric) <= small, 1)), strict=True)}
    found = {tuple(sorted((int(p.id_a[1:]), int(p.id_b[1:])))) for p in index.dedupe(None, max_distance=small).pairs}
    assert found == pairs and pairs


def test_opq_ivfpq_returns_true_distances_and_round_trips(tmp_path):
    x = X[:1200]
    index = _build("manhattan", kind="opq-ivfpq", x=x, m=8, nbits=5, nlist=8, rerank=100)
    results = index.search_embeddings(Q[:20], k=10)
    for q, result in zip(Q[:20], results, strict=True):
        np.testing.assert_allclose(result.distances, _exact(q[None], x[_rows(result.ids)], "manhattan")[0], rtol=1e-5)
    assert index.info()["compressed"]["ram_bytes_per_item"] == 5 + 8  # 8 codes of 5 bits
    loaded = NeighborIndex.load(index.save(tmp_path / "opq"))
    assert loaded.kind == "opq-ivfpq" and loaded.embeddings().tobytes() == x.tobytes()
    assert [r.ids for r in loaded.search_embeddings(Q[:20], k=10)] == [r.ids for r in results]


@pytest.mark.parametrize(
    ("metric", "kind", "params", "error", "message"),
    [
        ("manhattan", "IVF16,PQ8", {}, IndexConfigError, "wrong neighbours WITHOUT an error"),
        ("manhattan", "OPQ8,IVF16,PQ8", {}, IndexConfigError, "wrong neighbours WITHOUT an error"),
        ("euclidean", "IVF16,PQ8", {}, IndexConfigError, "lossy codes"),
        ("euclidean", "ivfpq", {"m": 5}, IndexConfigError, "m=5 sub-quantizers must divide the dimension dim=32"),
        ("euclidean", "ivfpq", {"nbits": 17}, IndexConfigError, "nbits must be at most 16, got 17"),
        ("euclidean", "ivfpq", {"nbits": 0}, ValueError, "nbits must be a positive integer, got 0"),
        ("euclidean", "ivfpq", {"efSearch": 8}, IndexConfigError, r"unknown parameter\(s\) \['efSearch'\]"),
    ],
)
def test_refused_combinations_raise(metric, kind, params, error, message):
    with pytest.raises(error, match=message):
        NeighborIndex(DIM, metric, kind, **params)


def test_too_few_vectors_to_train_names_nlist_and_count():
    with pytest.raises(IndexConfigError, match=r"nlist=100 and nbits=8 needs at least 256 vectors to train.*got 200"):
        _build("euclidean", x=X[:200], nlist=100)
    with pytest.raises(IndexConfigError, match=r"nlist=300 and nbits=4 needs at least 300 vectors to train.*got 299"):
        _build("euclidean", x=X[:299], nlist=300, nbits=4)


def test_search_without_rerank_and_bad_search_params_are_refused(built):
    _, index = built
    with pytest.raises(InvalidArgumentError, match="rerank=False is refused for kind 'ivfpq'"):
        index.search_embeddings(Q[:1], k=5, rerank=False)
    with pytest.raises(ValueError, match="rerank must be a positive integer, got 0"):
        index.set_search_params(rerank=0)
    with pytest.raises(IndexConfigError, match="'rerank' is not a search-time parameter of kind 'ivf'"):
        NeighborIndex(DIM, "euclidean", "ivf").set_search_params(rerank=10)


def test_k_above_rerank_still_returns_k(built):
    _, index = built
    index.set_search_params(rerank=5)
    try:
        result = index.search_embeddings(Q[:1], k=20)[0]
    finally:
        index.set_search_params(rerank=200)
    assert len(result) == 20


def test_damaged_vector_file_is_refused(built, tmp_path):
    _, index = built
    # A copy: the fixture maps the folder it saved, and a file changed in place under a map is lost.
    folder = shutil.copytree(index.save(tmp_path / "idx"), tmp_path / "copy")
    data = (folder / VECTORS_FILE).read_bytes()
    (folder / VECTORS_FILE).write_bytes(data[:-4])
    with pytest.raises(IndexLoadError, match="vectors.f32 has .* bytes, but metadata.json says"):
        NeighborIndex.load(folder)
    (folder / VECTORS_FILE).write_bytes(data[:4] + bytes([data[4] ^ 1]) + data[5:])
    with pytest.raises(IndexLoadError, match="vectors.f32 does not match the checksum"):
        NeighborIndex.load(folder)
    (folder / VECTORS_FILE).unlink()
    with pytest.raises(IndexLoadError, match="vectors.f32 is missing"):
        NeighborIndex.load(folder)


def test_cli_index_info_shows_bytes_per_item_and_recall(built, tmp_path, capsys):
    _, index = built
    folder = index.save(tmp_path / "idx")
    assert main(["index", "info", str(folder), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["kind"] == "ivfpq" and shown["compressed"]["ram_bytes_per_item"] == 24
    assert shown["compressed"]["recall"]["recall_at_10"] >= 0.9
    assert main(["index", "info", str(folder)]) == 0
    assert "24 bytes per item" in capsys.readouterr().out


def test_cli_builds_and_queries_an_ivfpq_index(tmp_path, capsys):
    model_dir = tmp_path / "model"
    SimilarityModel(build_tiny_encoder(), "manhattan").save(model_dir)
    words = BASE_WORDS[:12]
    texts = [f"how do i {a} {b}" for a in words for b in words if a != b][:60]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(texts) + "\n", encoding="utf-8")
    index_dir = tmp_path / "idx"
    build = ["index", "build", "--model", str(model_dir), "--corpus", str(corpus), "--out", str(index_dir),
             "--kind", "ivfpq", "--nlist", "2", "--nbits", "4", "--rerank", "30", "--json"]
    assert main(build) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["kind"] == "ivfpq" and summary["params"]["nbits"] == 4 and summary["params"]["rerank"] == 30
    assert summary["compressed"]["ram_bytes_per_item"] == summary["compressed"]["code_size"] + 8
    assert main(["query", str(index_dir), texts[7], "-k", "3", "--nprobe", "2", "--rerank", "60", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)["results"][0]["neighbors"]
    index = NeighborIndex.load(index_dir)
    vectors, query = index.embeddings(), index.model.embed([texts[7]])
    exact = np.abs(vectors.astype(np.float64) - query.astype(np.float64)).sum(1)
    assert [n["id"] for n in found] == [index.ids[i] for i in np.argsort(exact, kind="stable")[:3]]
    np.testing.assert_allclose([n["distance"] for n in found], np.sort(exact)[:3], rtol=1e-5, atol=1e-6)


def test_saved_folder_moved_or_deleted_after_save_keeps_the_index_working(tmp_path):
    x = X[:600]
    index = _build("euclidean", x=x[:500], m=8, nbits=6, nlist=4, nprobe=4, rerank=600)
    folder = index.save(tmp_path / "staging")
    folder.rename(tmp_path / "snapshot")  # what the server does with its snapshots
    shutil.rmtree(tmp_path / "snapshot")
    assert index.embeddings().tobytes() == x[:500].tobytes()  # still mapped
    index.add_embeddings(x[500:], IDS[500:600], IDS[500:600])
    again = NeighborIndex.load(index.save(tmp_path / "again"))
    assert again.embeddings().tobytes() == x.tobytes()
    result = again.search_embeddings(x[550:551], k=1)[0]
    assert result.ids == ["v550"] and result.distances[0] == 0.0


@pytest.mark.parametrize("kind", ["ivfpq", "opq-ivfpq"])
def test_fast_scan_table_rounding_bounds_faiss_own_distances(kind):
    """nbits=4 uses FAISS' fast-scan layout, whose 8-bit lookup tables make its distances differ
    from exact product-quantizer distances |q - decode(x)|^2 (NumPy, float64, the oracle). The
    bound that widens range search must cover that difference for every query and candidate,
    and the difference must be real (else the bound tests nothing)."""
    index = _build("euclidean", kind=kind, x=X[:1500], m=8, nbits=4, nlist=4, nprobe=4)
    vectors = index._vectors
    assert vectors.fast_scan and isinstance(
        faiss.downcast_index(faiss.extract_index_ivf(vectors.index)), faiss.IndexIVFPQFastScan)
    decoded = vectors.index.sa_decode(vectors.index.sa_encode(X[:1500])).astype(np.float64)
    worst = 0.0
    for q in Q[:40]:
        found_sq, keys = vectors.index.search(q[None, :], 50)
        adc = np.sum((decoded[keys[0]] - q.astype(np.float64)) ** 2, axis=1)
        gap = float(np.max(np.abs(found_sq[0] - adc)))
        bound = vectors._table_rounding(q[None, :]) / 2  # FAISS' own worst case; the radius adds twice it
        assert gap <= bound + 1e-4 * float(np.max(adc)), (gap, bound)
        worst = max(worst, gap)
    assert worst > 1e-3


def test_fast_scan_is_recorded_and_its_layout_checked_on_load(tmp_path):
    index = _build("euclidean", x=X[:1200], m=8, nbits=4, nlist=4)
    assert index.info()["compressed"]["fast_scan"] is True
    assert index.info()["compressed"]["ram_bytes_per_item"] == 8 * 4 // 8 + 8  # 8 nibbles + the int64 id
    index.save(tmp_path / "fs")
    again = NeighborIndex.load(tmp_path / "fs")
    np.testing.assert_array_equal(_rows(again.search_embeddings(Q[:5], k=5)[0].ids),
                                  _rows(index.search_embeddings(Q[:5], k=5)[0].ids))
    assert _build("euclidean", x=X[:1200], m=8, nbits=8, nlist=4).info()["compressed"]["fast_scan"] is False
    # A metadata file that says 8-bit codes over a fast-scan FAISS file is refused by name.
    meta_path = tmp_path / "fs" / METADATA_FILE
    meta = json.loads(meta_path.read_text())
    meta["params"]["nbits"] = 8
    meta.pop("metadata_sha256", None)
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(IndexLoadError, match="IndexIVFPQFastScan|nbits"):
        NeighborIndex.load(tmp_path / "fs")


def test_default_m_keeps_about_one_bit_of_code_per_dimension():
    assert _build("euclidean", x=X[:1200], m=None, nbits=4, nlist=4).params["m"] == DIM // 4
    assert _build("euclidean", x=X[:1200], m=None, nbits=8, nlist=4).params["m"] == DIM // 8
