from __future__ import annotations

import numpy as np
import pytest
import torch

from metric_sim.distances import (
    Metric,
    all_pairs_distances_numpy,
    all_pairs_distances_torch,
    faiss_metric,
    faiss_to_true_distance,
    paired_distances_numpy,
    paired_distances_torch,
    pml_distance,
    true_to_faiss_radius,
)


def test_metric_parse_and_aliases():
    assert Metric.parse("euclidean") is Metric.EUCLIDEAN
    assert Metric.parse("L1") is Metric.MANHATTAN
    assert Metric.parse(Metric.MANHATTAN) is Metric.MANHATTAN
    assert Metric.EUCLIDEAN.p == 2 and Metric.MANHATTAN.p == 1
    with pytest.raises(ValueError, match="metric must be one of .*'euclidean'.*got 'cosine'"):
        Metric.parse("cosine")


@pytest.mark.parametrize(("metric", "expected"), [("euclidean", 5.0), ("manhattan", 7.0)])
def test_hand_computed_distance_pinned(metric, expected):
    a = torch.tensor([[0.0, 0.0]])
    b = torch.tensor([[3.0, 4.0]])
    assert paired_distances_torch(a, b, metric).item() == expected
    assert paired_distances_numpy(a.numpy(), b.numpy(), metric)[0] == expected
    assert all_pairs_distances_torch(a, b, metric).item() == pytest.approx(expected)
    assert all_pairs_distances_numpy(a.numpy(), b.numpy(), metric)[0, 0] == pytest.approx(expected)


@pytest.mark.parametrize(("metric", "expected"), [("euclidean", 5.0), ("manhattan", 7.0)])
def test_pml_distance_is_raw_not_normalised(metric, expected):
    from pytorch_metric_learning.distances import LpDistance

    emb = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    matrix = pml_distance(metric)(emb)
    assert matrix[0, 1].item() == pytest.approx(expected)
    # The library default normalises first: the silent bug this module exists to avoid.
    assert LpDistance()(emb)[0, 1].item() == pytest.approx(1.0)


def test_paired_distance_is_bitwise_symmetric_and_zero_on_self():
    rng = np.random.default_rng(0)
    a = torch.from_numpy(rng.normal(size=(200, 64)).astype(np.float32))
    b = torch.from_numpy(rng.normal(size=(200, 64)).astype(np.float32))
    for metric in Metric:
        assert torch.equal(paired_distances_torch(a, b, metric), paired_distances_torch(b, a, metric))
        assert np.array_equal(
            paired_distances_numpy(a.numpy(), b.numpy(), metric), paired_distances_numpy(b.numpy(), a.numpy(), metric)
        )
        assert torch.count_nonzero(paired_distances_torch(a, a, metric)) == 0


def test_all_pairs_matches_paired_rows():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 8)).astype(np.float32)
    y = rng.normal(size=(20, 8)).astype(np.float32)
    for metric in Metric:
        full = all_pairs_distances_numpy(x, y, metric)
        for i in (0, 7, 29):
            np.testing.assert_allclose(full[i], paired_distances_numpy(np.repeat(x[i : i + 1], 20, 0), y, metric), rtol=1e-5)
        np.testing.assert_allclose(
            all_pairs_distances_torch(torch.from_numpy(x), torch.from_numpy(y), metric).numpy(), full, rtol=1e-4, atol=1e-4
        )


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match=r"same shape, got \(2, 3\) and \(2, 4\)"):
        paired_distances_torch(torch.zeros(2, 3), torch.zeros(2, 4), "euclidean")


def test_faiss_mappings():
    import faiss

    assert faiss_metric("euclidean") == faiss.METRIC_L2
    assert faiss_metric("manhattan") == faiss.METRIC_L1
    assert faiss_to_true_distance(np.array([25.0]), "euclidean")[0] == 5.0
    assert faiss_to_true_distance(np.array([7.0]), "manhattan")[0] == 7.0
    assert true_to_faiss_radius(5.0, "euclidean") == 25.0
    assert true_to_faiss_radius(7.0, "manhattan") == 7.0
