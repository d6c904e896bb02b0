"""metric_sim.metrics: each figure against a value computed by hand, and each computed in one place."""

from __future__ import annotations

import numpy as np
import pytest

import metric_sim.evaluation as evaluation
import metric_sim.metrics as metrics
from metric_sim.calibration import Calibrator
from metric_sim.errors import InvalidArgumentError, InvalidArgumentTypeError, MetricSimError

# Ranked by distance: similar, dissimilar, similar, dissimilar.
DISTANCES = np.array([0.1, 0.2, 0.3, 0.4])
LABELS = np.array([1, 0, 1, 0])


def test_average_precision_against_a_hand_computed_value():
    # Precision at each similar pair's rank: 1/1 and 2/3; AP is their mean.
    assert metrics.average_precision(DISTANCES, LABELS) == pytest.approx((1 + 2 / 3) / 2, abs=1e-12)
    # The order of the pairs does not matter, only their distances.
    order = np.array([3, 1, 0, 2])
    assert metrics.average_precision(DISTANCES[order], LABELS[order]) == pytest.approx(5 / 6, abs=1e-12)
    assert metrics.average_precision([0.1, 0.2], [1, 0]) == 1.0


def test_roc_auc_against_a_hand_computed_value():
    # 3 of the 4 (similar, dissimilar) combinations have the similar pair closer.
    assert metrics.roc_auc(DISTANCES, LABELS) == pytest.approx(0.75, abs=1e-12)


def test_ranking_metrics_keys_and_values():
    result = metrics.ranking_metrics(DISTANCES, LABELS)
    assert set(result) == {
        "average_precision", "roc_auc", "pairs", "positives", "median_distance_similar", "median_distance_dissimilar",
    }
    assert result["average_precision"] == pytest.approx(5 / 6, abs=1e-12)
    assert result["roc_auc"] == pytest.approx(0.75, abs=1e-12)
    assert (result["pairs"], result["positives"]) == (4, 2)
    assert result["median_distance_similar"] == pytest.approx(0.2)
    assert result["median_distance_dissimilar"] == pytest.approx(0.3)


def test_average_precision_is_computed_in_one_function(monkeypatch):
    """pair_metrics and ranking_metrics both report what average_precision returns."""
    calls = []

    def counting(distances, labels):
        calls.append(len(distances))
        return -1.0

    monkeypatch.setattr(metrics, "average_precision", counting)
    calibrator = Calibrator(weight=-10.0, bias=2.5, metric="euclidean", feature="linear")  # tau = 0.25
    assert metrics.ranking_metrics(DISTANCES, LABELS)["average_precision"] == -1.0
    assert metrics.pair_metrics(DISTANCES, LABELS, calibrator)["average_precision"] == -1.0
    assert calls == [4, 4]


def test_pair_metrics_at_the_calibrated_threshold():
    calibrator = Calibrator(weight=-10.0, bias=2.5, metric="euclidean", feature="linear")  # tau = 0.25
    result = metrics.pair_metrics(DISTANCES, LABELS, calibrator)
    # d <= 0.25 predicts similar for the first two pairs: one right, one wrong; the 0.3 pair is missed.
    assert result["threshold"] == pytest.approx(0.25)
    assert result["predicted_similar"] == 2
    assert (result["accuracy"], result["precision"], result["recall"]) == (0.5, 0.5, 0.5)
    assert result["average_precision"] == pytest.approx(5 / 6, abs=1e-12)
    # In-sample: the threshold between 0.1 and 0.2 gets 3 of 4 right.
    assert result["in_sample"]["accuracy"] == pytest.approx(0.75)
    assert result["in_sample"]["accuracy_threshold"] == pytest.approx(0.15)


def test_expected_calibration_error_against_a_hand_computed_value():
    labels = [1, 0, 1, 1]
    probabilities = [0.9, 0.1, 0.8, 0.4]
    # Two bins: [0, 0.5] holds 0.1 and 0.4 (mean 0.25, half similar), (0.5, 1] holds 0.9 and 0.8 (mean 0.85, all similar).
    expected = 2 / 4 * abs(0.5 - 0.25) + 2 / 4 * abs(1.0 - 0.85)
    assert metrics.expected_calibration_error(labels, probabilities, n_bins=2) == pytest.approx(expected, abs=1e-12)
    bins = metrics.reliability_bins(labels, probabilities, n_bins=2)
    assert bins["count"] == [2, 2]
    assert metrics.calibration_metrics(labels, probabilities, n_bins=2)["ece"] == pytest.approx(expected, abs=1e-12)


def _expected_bin_gap(pairs: int, probability: float) -> float:
    """E|k / n - p| for k ~ Binomial(n, p): one bin's exact expected calibration gap."""
    from scipy.stats import binom

    k = np.arange(pairs + 1)
    return float(np.sum(binom.pmf(k, pairs, probability) * np.abs(k / pairs - probability)))


def test_ece_sampling_floor_matches_the_exact_binomial_expectation():
    # One bin (every p = 0.5): the ECE of a draw is |k/n - 0.5| with k ~ Binomial(n, 0.5).
    floor = metrics.ece_sampling_floor(np.full(100, 0.5), draws=4000, seed=1)
    assert floor["mean"] == pytest.approx(_expected_bin_gap(100, 0.5), abs=0.002)
    assert (floor["pairs"], floor["draws"]) == (100, 4000)
    assert floor["p95"] > floor["mean"] > 0
    # Two bins, weighted by their share of the pairs: 40 pairs at 0.1, 160 at 0.8.
    p = np.r_[np.full(40, 0.1), np.full(160, 0.8)]
    expected = 40 / 200 * _expected_bin_gap(40, 0.1) + 160 / 200 * _expected_bin_gap(160, 0.8)
    assert metrics.ece_sampling_floor(p, draws=4000)["mean"] == pytest.approx(expected, abs=0.002)
    # Each draw is scored like expected_calibration_error itself: one draw, same seed, same labels.
    rng = np.random.default_rng(3)
    labels = rng.random((1, p.size)) < p
    one = metrics.ece_sampling_floor(p, draws=1, seed=3)
    assert one["mean"] == pytest.approx(metrics.expected_calibration_error(labels[0].astype(int), p), abs=1e-12)


def test_ece_sampling_floor_rejects_bad_input():
    with pytest.raises(InvalidArgumentError, match="probabilities must lie in"):
        metrics.ece_sampling_floor([0.2, 1.2])
    with pytest.raises(InvalidArgumentError, match="at least one probability"):
        metrics.ece_sampling_floor([])
    with pytest.raises(InvalidArgumentError, match="draws"):
        metrics.ece_sampling_floor([0.5], draws=0)


def test_retrieval_metrics_against_hand_computed_values():
    # Two clusters found first by both members; the singleton is only a distractor.
    perfect = metrics.retrieval_metrics(np.array([[0.0], [1.0], [10.0], [11.0], [20.0]]), ["a", "a", "b", "b", "c"], "euclidean")
    assert (perfect["gallery"], perfect["queries"]) == (5, 4)
    assert perfect["recall_at_1"] == perfect["mrr_at_10"] == perfect["map_at_r"] == 1.0
    # Both members of "a" find the "b" item first and each other second.
    missed = metrics.retrieval_metrics(np.array([[0.0], [2.0], [1.0]]), ["a", "a", "b"], "manhattan")
    assert missed["queries"] == 2
    assert (missed["recall_at_1"], missed["recall_at_5"], missed["mrr_at_10"], missed["map_at_r"]) == (0.0, 1.0, 0.5, 0.0)


def test_symmetry_gap():
    assert metrics.symmetry_gap([0.2, 0.5], [0.2, 0.5]) == 0.0
    assert metrics.symmetry_gap([0.2, 0.5], [0.25, 0.5]) == pytest.approx(0.05)
    assert metrics.symmetry_gap([], []) == 0.0


def test_argument_errors_are_metric_sim_errors():
    with pytest.raises(InvalidArgumentError, match="labels hold only class 1"):
        metrics.pair_metrics([0.1, 0.2], [1, 1], Calibrator(weight=-1.0, bias=1.0, metric="euclidean"))
    with pytest.raises(InvalidArgumentTypeError, match="calibrator must be a Calibrator, got float"):
        metrics.pair_metrics(DISTANCES, LABELS, 0.5)
    with pytest.raises(InvalidArgumentError, match="probabilities must lie in"):
        metrics.expected_calibration_error([1, 0], [0.5, 1.5])
    with pytest.raises(InvalidArgumentError, match="p_ab and p_ba must be 1-D arrays of the same length"):
        metrics.symmetry_gap([0.1], [0.1, 0.2])
    with pytest.raises(InvalidArgumentError, match="one label per embedding"):
        metrics.retrieval_metrics(np.zeros((3, 2)), [0, 1], "euclidean")
    # Still the builtin families callers caught before.
    assert issubclass(InvalidArgumentError, (MetricSimError, ValueError))


def test_evaluation_re_exports_the_metrics():
    for name in ("pair_metrics", "in_sample_thresholds", "reliability_bins", "expected_calibration_error",
                 "calibration_metrics", "retrieval_metrics", "symmetry_gap", "ECE_BINS"):
        assert getattr(evaluation, name) is getattr(metrics, name), name
