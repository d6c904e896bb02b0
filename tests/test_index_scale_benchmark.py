"""The index-at-scale benchmark on tiny random data: corpus expansion, fits, and a full run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import index_scale  # noqa: E402


def _exact_top10(base: np.ndarray, queries: np.ndarray, metric: str) -> np.ndarray:
    """NumPy oracle in float64, ties by row."""
    b, q = base.astype(np.float64), queries.astype(np.float64)
    if metric == "euclidean":
        d = np.sqrt(((q[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    else:
        d = np.abs(q[:, None, :] - b[None, :, :]).sum(-1)
    return np.array([np.lexsort((np.arange(len(b)), row))[:10] for row in d])


@pytest.fixture
def real() -> np.ndarray:
    rng = np.random.default_rng(3)
    return index_scale.normalise_rows(rng.standard_normal((600, 16), dtype=np.float32))


def test_expansion_is_seeded_unit_norm_holds_no_query_and_copies_sit_by_their_source(real):
    queries, sources = index_scale.split_queries(real, 40, seed=1)
    assert len(queries) == 40 and len(sources) == 560
    nn = index_scale.median_nn_distance(sources, sample=10_000)
    d = np.sqrt(((sources[:, None, :].astype(np.float64) - sources[None]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    assert nn == pytest.approx(np.median(d.min(1)), rel=1e-9)

    sigma = 0.5 * nn / np.sqrt(16)
    size = 3100  # several copies per source
    index_scale.CHUNK, chunk = 1000, index_scale.CHUNK  # several generator chunks
    try:
        corpus = index_scale.expand_corpus(sources, size, sigma, seed=5)
        again = index_scale.expand_corpus(sources, size, sigma, seed=5)
        prefix = index_scale.expand_corpus(sources, 1500, sigma, seed=5)
        other = index_scale.expand_corpus(sources, size, sigma, seed=6)
    finally:
        index_scale.CHUNK = chunk
    assert corpus.dtype == np.float32 and corpus.shape == (size, 16)
    assert np.array_equal(corpus, again) and np.array_equal(corpus[:1500], prefix)
    assert not np.array_equal(corpus[560:], other[560:])
    assert np.array_equal(corpus[:560], sources)
    np.testing.assert_allclose(np.linalg.norm(corpus, axis=1), 1.0, atol=1e-6)
    # No held-out query is in the corpus.
    to_queries = np.sqrt(((corpus[:, None, :].astype(np.float64) - queries[None]) ** 2).sum(-1))
    assert to_queries.min() > 0
    # Copies: moved (not collapsed), by about the noise asked for, and nearest to their own source.
    src = index_scale.source_of(size, len(sources))
    copies = np.arange(560, size)
    moved = np.linalg.norm(corpus[copies] - sources[src[copies]], axis=1)
    assert moved.min() > 0.05 * nn
    assert np.median(moved) == pytest.approx(0.5 * nn, rel=0.15)
    to_sources = ((corpus[copies, None, :].astype(np.float64) - sources[None]) ** 2).sum(-1)
    assert np.mean(to_sources.argmin(1) == src[copies]) >= 0.99


def test_line_fit_recovers_a_known_slope_and_extrapolates():
    xs = [1e5, 1e6, 2e6]
    intercept, slope = index_scale.fit_line(xs, [3.0 + 2.5e-6 * x for x in xs])
    assert slope == pytest.approx(2.5e-6, rel=1e-9) and intercept == pytest.approx(3.0, rel=1e-6)
    assert index_scale.fit_power(xs, [7.0 * x**1.5 for x in xs]) == pytest.approx(1.5, rel=1e-9)
    rows = [{"kind": "flat", "metric": "euclidean", "size": n, "ram_bytes_per_item": 1536.0,
             "rss_growth_bytes": 1600.0 * n, "build_s": 1e-6 * n, "latency_ms": 0.5 + 2e-4 * n} for n in xs]
    fits = {e["quantity"]: e for e in index_scale.extrapolate(rows, 100_000_000)}
    assert fits["RAM bytes (FAISS)"]["at_target"] == pytest.approx(1536.0 * 1e8, rel=1e-9)
    assert fits["single-query ms"]["at_target"] == pytest.approx(0.5 + 2e-4 * 1e8, rel=1e-6)
    assert fits["build s"]["slope_per_item"] == pytest.approx(1e-6, rel=1e-9)
    assert index_scale.extrapolate(rows[:1], 100) == []  # one size: no slope


def test_full_run_writes_outputs_with_exact_flat_and_oracle_checked_compressed_recall(tmp_path, capsys, monkeypatch):
    from metric_sim import NeighborIndex
    from metric_sim.index import compressed

    made = []  # where the compressed kinds put their vector files: under --work, not /tmp
    mkdtemp = compressed.tempfile.mkdtemp
    monkeypatch.setattr(compressed.tempfile, "mkdtemp", lambda **kw: made.append(mkdtemp(**kw)) or made[-1])

    out = tmp_path / "out"
    argv = ["--source", "random", "--random-real", "700", "--dim", "16", "--sizes", "2000", "4000",
            "--kinds", "flat", "ivfpq", "--queries", "50", "--l1-queries", "20", "--latency-queries", "5",
            "--rounds", "1", "--sweep-nprobe", "2", "--sweep-rerank", "20", "--work", str(tmp_path / "work"),
            "--json", str(out / "r.json"), "--markdown", str(out / "r.md"), "--plot", str(out / "lat.png")]
    assert index_scale.main(argv) == 0
    report = json.loads((out / "r.json").read_text())
    assert (out / "lat.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    vector_dirs = [Path(m) for m in made if Path(m).name.startswith("metric-sim-vectors-")]
    assert len(vector_dirs) == 4 and all(m.parent.parent == tmp_path / "work" for m in vector_dirs)
    assert not list((tmp_path / "work").iterdir())  # each size's folder (the vector files) is gone
    assert sorted(p.name for p in out.iterdir()) == ["lat.png", "r.json", "r.md"]
    text = (out / "r.md").read_text()
    assert "Goal:" in text and "- manhattan, 4,000:" in text and "held-out real vectors" in text

    rows = {(r["size"], r["metric"], r["kind"]): r for r in report["rows"]}
    assert set(rows) == {(n, m, k) for n in (2000, 4000) for m in ("euclidean", "manhattan") for k in ("flat", "ivfpq")}
    assert len(report["sweep"]) == 4
    v = report["vectors"]
    real = index_scale.normalise_rows(np.random.default_rng(0).standard_normal((700, 16), dtype=np.float32))
    queries, sources = index_scale.split_queries(real, 50, 0)
    assert v["sources"] == 650 and v["noise_sd"] == pytest.approx(0.5 * index_scale.median_nn_distance(sources) / 4)
    corpus = index_scale.expand_corpus(sources, 4000, v["noise_sd"], 0)
    for (size, metric, kind), row in rows.items():
        assert row["ram_bytes_per_item"] == (64.0 if kind == "flat" else 2 + 8)  # 16 float32 | 2 codes + id
        if kind == "flat":
            assert row["recall_at_10"] == 1.0 and row["qps_ratio_to_flat"] == 1.0
            continue
        nq = 50 if metric == "euclidean" else 20
        truth = _exact_top10(corpus[:size], queries[:nq], metric)
        index = NeighborIndex.from_embeddings(corpus[:size], [str(i) for i in range(size)], metric=metric, kind=kind)
        found = index_scale.result_ids(index.search_embeddings(queries[:nq], k=10))
        expected = np.mean([len(set(t) & set(f)) / 10 for t, f in zip(truth.tolist(), found.tolist(), strict=True)])
        assert row["recall_at_10"] == pytest.approx(expected, abs=1e-12)
        assert row["build_recall_at_10"] == pytest.approx(index.info()["compressed"]["recall"]["recall_at_10"])
        assert row["disk_bytes_per_item"] == 64.0
    fits = {(e["kind"], e["metric"], e["quantity"]) for e in report["extrapolation"]}
    assert ("ivfpq", "manhattan", "single-query ms") in fits and len(fits) == 16
    assert "size 4,000, manhattan, 20 queries" in capsys.readouterr().out


def test_builds_name_one_compressed_index_per_code_width_and_leave_the_others_alone():
    assert index_scale.builds(["flat", "hnsw", "ivfpq"], None) == [
        ("flat", "flat", {}), ("hnsw", "hnsw", {}), ("ivfpq", "ivfpq", {})]
    assert index_scale.builds(["ivfpq", "hnsw", "opq-ivfpq"], [4, 8]) == [
        ("flat", "flat", {}), ("ivfpq nbits=4", "ivfpq", {"nbits": 4}), ("ivfpq nbits=8", "ivfpq", {"nbits": 8}),
        ("hnsw", "hnsw", {}), ("opq-ivfpq nbits=4", "opq-ivfpq", {"nbits": 4}),
        ("opq-ivfpq nbits=8", "opq-ivfpq", {"nbits": 8})]
