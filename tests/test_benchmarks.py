"""Smoke tests of the benchmark scripts' pure parts (no real model, no training, tiny data)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.special import expit
from sklearn.metrics import average_precision_score, roc_auc_score

from metric_sim import PairDataset
from tests.conftest import MemoryRowStore, pair_dataset

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import quality  # noqa: E402
import quality_grid  # noqa: E402
import quality_systems  # noqa: E402
import speed  # noqa: E402


@pytest.fixture
def xy() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.standard_normal((50, 8)), rng.standard_normal((50, 8))


# ----------------------------------------------------------------------------- baselines
def test_symmetric_features_are_exactly_symmetric_and_concat_is_not(xy):
    x, y = xy
    for kind in ("diff_prod", "diff"):
        assert np.array_equal(quality.pair_features(kind, x, y), quality.pair_features(kind, y, x))
    assert not np.array_equal(quality.pair_features("concat", x, y), quality.pair_features("concat", y, x))
    assert quality.pair_features("diff_prod", x, y).shape == (50, 16)
    assert np.array_equal(quality.pair_features("diff", x, y), np.abs(x - y))
    with pytest.raises(ValueError, match="unknown feature kind 'sum'"):
        quality.pair_features("sum", x, y)


def test_mlp_logits_match_sklearn_probabilities_and_early_stopping_keeps_best_dev_epoch(xy):
    x, y = xy
    rng = np.random.default_rng(1)
    features = quality.pair_features("diff", x, y)
    labels = (features.sum(axis=1) < np.median(features.sum(axis=1))).astype(int)  # close pairs are similar
    dev_x, dev_y = features[:20] + 0.01 * rng.standard_normal((20, 8)), labels[:20]
    clf, info = quality.fit_mlp(features, labels, dev_x, dev_y, seed=0, max_epochs=6, patience=2, hidden=8)
    # Oracle: sklearn's own predict_proba is the sigmoid of our hand-computed logit.
    np.testing.assert_allclose(expit(quality.mlp_logits(clf, features)), clf.predict_proba(features)[:, 1], rtol=1e-10)
    assert info["dev_ap"] == max(info["dev_ap_history"])
    assert info["dev_ap_history"][info["best_epoch"] - 1] == info["dev_ap"]
    assert info["dev_ap"] == round(average_precision_score(dev_y, quality.mlp_logits(clf, dev_x)), 4)


def test_tfidf_distance_is_one_minus_cosine_and_symmetric():
    train = ["how do i learn python", "what is the capital of france", "how to cook rice"]
    a = ["how do i learn python", "capital of france", "zzz unknown"]
    b = ["how do i learn python", "how to cook rice", "how to cook rice"]
    d_ab, d_ba = quality.tfidf_distances(train, [(a, b), (b, a)])
    assert np.array_equal(d_ab, d_ba)
    assert d_ab[0] == pytest.approx(0.0, abs=1e-7)
    assert d_ab[1] == pytest.approx(np.sqrt(2.0))  # no shared word: cos 0
    assert d_ab[2] == pytest.approx(np.sqrt(2.0))  # no known word at all
    # squared distance = 2 (1 - cos), checked against sklearn's cosine_similarity
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.metrics.pairwise import cosine_similarity

    v = TfidfVectorizer().fit(train)
    cos = cosine_similarity(v.transform(["learn python now"]), v.transform(["how do i learn python"]))[0, 0]
    (d,) = quality.tfidf_distances(train, [(["learn python now"], ["how do i learn python"])])
    assert d[0] ** 2 == pytest.approx(2 * (1 - cos))


# ----------------------------------------------------------------------------- scoring
def _distance_row(seed: int = 0, n: int = 200) -> tuple[dict, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y_dev, y_test = rng.integers(0, 2, n), rng.integers(0, 2, n)
    dev = np.abs(rng.normal(1.0 - 0.5 * y_dev, 0.2))
    test = np.abs(rng.normal(1.0 - 0.5 * y_test, 0.2))
    return {"dev": dev, "test": test, "test_rev": test.copy()}, y_dev, y_test


def test_score_row_distance_system_uses_the_library_calibrator_and_is_symmetric():
    arrays, y_dev, y_test = _distance_row()
    meta = {"kind": "distance", "metric": "euclidean", "train_s": 12.0}
    out = quality.score_row(arrays, meta, y_dev, y_test)
    assert out["average_precision"] == pytest.approx(average_precision_score(y_test, -arrays["test"]))
    assert out["roc_auc"] == pytest.approx(roc_auc_score(y_test, -arrays["test"]))
    calibrator = quality.Calibrator.fit(arrays["dev"], y_dev, "euclidean")
    assert out["threshold"] == pytest.approx(calibrator.threshold)
    assert out["accuracy"] == pytest.approx(np.mean(calibrator.predict(arrays["test"]) == y_test))
    assert out["symmetry_max"] == 0.0 and out["symmetry_mean"] == 0.0
    assert out["best_accuracy_in_sample"] >= out["accuracy"]
    assert out["accuracy_gap_to_in_sample"] == pytest.approx(out["best_accuracy_in_sample"] - out["accuracy"])
    assert 0.0 <= out["ece"] <= 1.0 and out["train_s"] == 12.0


def test_score_row_fits_the_requested_calibrator_form():
    from metric_sim import expected_calibration_error

    arrays, y_dev, y_test = _distance_row()
    meta = {"kind": "distance", "metric": "euclidean"}
    default = quality.score_row(arrays, meta, y_dev, y_test)
    for feature in ("linear", "quadratic"):
        out = quality.score_row(arrays, meta, y_dev, y_test, calibration_feature=feature)
        calibrator = quality.Calibrator.fit(arrays["dev"], y_dev, "euclidean", feature=feature)
        assert out["calibration_feature"] == calibrator.feature
        assert out["threshold"] == pytest.approx(calibrator.threshold)
        assert out["ece"] == pytest.approx(expected_calibration_error(y_test, calibrator.predict_proba(arrays["test"])))
        assert out["average_precision"] == default["average_precision"]  # the ranking does not depend on the form
    assert default["calibration_feature"] == "squared"
    assert quality.parse_args(["--work", "w", "--calibration-feature", "quadratic"]).calibration_feature == "quadratic"


def test_score_row_logit_system_measures_asymmetry_through_platt_probabilities():
    rng = np.random.default_rng(3)
    y_dev, y_test = rng.integers(0, 2, 300), rng.integers(0, 2, 300)
    dev, test = rng.normal(2.0 * y_dev - 1.0, 1.0), rng.normal(2.0 * y_test - 1.0, 1.0)
    test_rev = test + 0.5  # the swapped order scores higher by a fixed amount
    out = quality.score_row({"dev": dev, "test": test, "test_rev": test_rev}, {"kind": "logit"}, y_dev, y_test)
    from sklearn.linear_model import LogisticRegression

    platt = LogisticRegression(C=np.inf, max_iter=1000).fit(dev.reshape(-1, 1), y_dev)
    p = platt.predict_proba(test.reshape(-1, 1))[:, 1]
    p_rev = platt.predict_proba(test_rev.reshape(-1, 1))[:, 1]
    assert out["symmetry_max"] == pytest.approx(np.max(np.abs(p - p_rev)))
    assert out["symmetry_mean"] == pytest.approx(np.mean(np.abs(p - p_rev)))
    assert out["symmetry_max"] > 0.05
    assert out["accuracy"] == pytest.approx(np.mean((p >= 0.5) == y_test))
    assert out["average_precision"] == pytest.approx(average_precision_score(y_test, test))
    with pytest.raises(ValueError, match="unknown output kind 'ranking'"):
        quality.score_row({"dev": dev, "test": test, "test_rev": test}, {"kind": "ranking"}, y_dev, y_test)


class _Labels:
    def __init__(self, labels: np.ndarray) -> None:
        self.labels = labels


def test_store_score_all_groups_seeds_and_table_and_targets(tmp_path):
    store = quality.Store(tmp_path)
    arrays, y_dev, y_test = _distance_row()
    store.save("ms_contrastive_l2", arrays, {"kind": "distance", "metric": "euclidean", "label": "ours", "train_s": 10.0})
    peer = {**arrays, "test": arrays["test"][::-1].copy(), "test_rev": arrays["test"][::-1].copy()}  # scrambled: worse
    store.save("st_online_contrastive", peer, {"kind": "distance", "metric": "euclidean", "label": "peer", "train_s": 20.0})
    for seed, shift in ((0, 0.1), (1, 0.3)):
        logits = {"dev": 1.0 - arrays["dev"], "test": 1.0 - arrays["test"], "test_rev": 1.0 - arrays["test"] + shift}
        store.save(f"mlp_concat@s{seed}", logits, {"kind": "logit", "label": "(a)", "train_s": float(seed + 1)})
    loaded, meta = store.load("ms_contrastive_l2")
    assert np.array_equal(loaded["test"], arrays["test"]) and meta["label"] == "ours"
    assert store.rows() == ["mlp_concat@s0", "mlp_concat@s1", "ms_contrastive_l2", "st_online_contrastive"]

    task = type("T", (), {"dev": _Labels(y_dev), "test": _Labels(y_test)})()
    results = quality.score_all(store, task)
    assert set(results) == {"ms_contrastive_l2", "st_online_contrastive", "mlp_concat"}
    mlp = results["mlp_concat"]
    assert mlp["seeds"] == 2
    assert mlp["summary"]["train_s"] == {"mean": 1.5, "std": pytest.approx(np.std([1.0, 2.0], ddof=1))}
    table = quality.results_table(results)
    lines = table.splitlines()
    assert lines[0].startswith("| system | AP |") and len(lines) == 5
    assert lines[2].startswith("| ours |")  # table order: metric-sim before the peer and baselines
    assert " ± " in lines[4] and lines[4].endswith("| 2 |")
    assert results["ms_contrastive_l2"]["summary"]["wall_s"]["mean"] == 10.0  # no wall_s recorded: the training time
    t = quality.targets(results)
    assert t["best_recipe_ap_vs_st"]["met"] is True and t["best_recipe_ap_vs_st"]["ours"] == "ms_contrastive_l2"
    assert t["metric_sim_symmetry_exactly_zero"] == {"max": 0.0, "met": True}
    assert t["baseline_a_asymmetric"]["met"] is True


# ----------------------------------------------------------------------------- fair peers
import fair_peers  # noqa: E402


def test_choose_lr_highest_mean_dev_ap_over_complete_seeds_ties_to_the_smaller_lr():
    table = {2e-5: {0: 0.80, 1: 0.82}, 5e-5: {0: 0.83, 1: 0.79}, 1e-4: {0: 0.90, 1: None}}
    # 1e-4 has the best cell but a missing seed: it does not compete; 2e-5 and 5e-5 tie at 0.81 -> smaller
    assert fair_peers.choose_lr(table) == 2e-5
    assert fair_peers.choose_lr({**table, 5e-5: {0: 0.84, 1: 0.81}}) == 5e-5
    # float summation order does not break a tie: 0.1 + 0.2 vs 0.3 + 0.0
    assert fair_peers.choose_lr({1e-4: {0: 0.1, 1: 0.2}, 5e-5: {0: 0.3, 1: 0.0}}) == 5e-5
    # an absent seed key and a NaN (a diverged run) are missing cells too; nothing complete -> None
    assert fair_peers.choose_lr({2e-5: {0: 0.7}, 5e-5: {0: 0.9, 1: float("nan")}}, seeds=[0, 1]) is None
    assert fair_peers.choose_lr({}) is None
    assert fair_peers.choose_lr({2e-5: {0: 0.7}, 5e-5: {0: 0.9, 1: 0.95}}, seeds=[0]) == 5e-5
    summary = fair_peers.grid_summary(table, [0, 1])
    assert list(summary) == ["2e-05", "5e-05", "0.0001"]
    assert summary["0.0001"] == {"learning_rate": 1e-4, "dev_ap": [0.90, None], "dev_ap_mean": 0.90,
                                 "dev_ap_std": None, "complete": False}
    assert summary["2e-05"]["dev_ap_mean"] == pytest.approx(0.81)
    assert summary["2e-05"]["dev_ap_std"] == pytest.approx(np.std([0.80, 0.82], ddof=1))
    header, rows = fair_peers.tuning_table({"ms_x": {"learning_rate": 2e-5, "grid": summary}})
    assert header[0] == "system" and [r[1] for r in rows] == ["2e-05", "5e-05", "0.0001"]
    assert rows[0][4] == "**yes**" and rows[2][4] == "incomplete" and rows[2][2] == "0.9000, –"


def test_weighted_average_precision_matches_sklearn_with_ties_and_resample_counts():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    scores = np.round(rng.normal(y, 1.0), 1)  # rounded: many ties
    assert fair_peers.average_precision(y, scores) == pytest.approx(average_precision_score(y, scores), abs=1e-12)
    idx = rng.integers(0, 300, 300)
    counts = np.bincount(idx, minlength=300)
    expected = average_precision_score(y[idx], scores[idx])  # resampling with replacement = integer weights
    assert fair_peers.average_precision(y, scores, counts) == pytest.approx(expected, abs=1e-12)
    assert fair_peers.average_precision(y, scores, counts) == pytest.approx(
        average_precision_score(y, scores, sample_weight=counts), abs=1e-12)
    assert np.isnan(fair_peers.average_precision(np.zeros(3, int), np.arange(3.0)))


def test_paired_bootstrap_identical_systems_give_zero_and_a_dominating_system_excludes_zero():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 400)
    noisy = [rng.normal(y, 2.0) for _ in range(3)]
    same = fair_peers.paired_bootstrap_ap_difference(y, noisy, [s.copy() for s in noisy], resamples=200)
    # paired: every resample scores both systems on the same pairs, so every difference is exactly 0
    assert same["difference"] == 0.0 and same["low"] == 0.0 and same["high"] == 0.0
    assert same["excludes_zero"] is False and same["seeds_ours"] == 3
    perfect = [y + 0.1 * rng.random(400) for _ in range(2)]  # every positive above every negative: AP 1
    out = fair_peers.paired_bootstrap_ap_difference(y, perfect, noisy, resamples=200, seed=3)
    mean_noisy = np.mean([average_precision_score(y, s) for s in noisy])
    assert out["difference"] == pytest.approx(1.0 - mean_noisy)
    assert 0 < out["low"] <= out["difference"] <= out["high"] and out["excludes_zero"] is True
    flipped = fair_peers.paired_bootstrap_ap_difference(y, noisy, perfect, resamples=200, seed=3)
    assert flipped["low"] == pytest.approx(-out["high"]) and flipped["high"] == pytest.approx(-out["low"])
    again = fair_peers.paired_bootstrap_ap_difference(y, perfect, noisy, resamples=200, seed=3)
    assert again == out  # a fixed seed: the same resamples
    with pytest.raises(ValueError, match="at least one seed"):
        fair_peers.paired_bootstrap_ap_difference(y, [], noisy)


def test_parse_args_lr_grid_seeds_and_bootstrap():
    args = quality.parse_args(["--work", "w"])
    assert args.lr_grid is None and args.fine_tune_seeds == [0, 1, 2] and args.bootstrap == 2000
    assert args.systems == [n for n, (_, tasks) in quality.SYSTEMS.items() if "qqp" in tasks]
    # the compared rows run by default, the one-lever probes only when named
    assert {"ms_contrastive_l2", "ms_contrastive_l2_hn", "ms_pair_ranking", "st_cosent", "st_online_contrastive",
            "st_mnrl_hn"} <= set(args.systems)
    assert not {"ms_pair_ranking_random", "ms_pair_ranking_ntxent", "ms_pair_ranking_llrd", "ms_contrastive_l2_ntxent",
                "st_multitask"} & set(args.systems)
    assert quality.parse_args(["--work", "w", "--systems", "ms_pair_ranking_random"]).systems == ["ms_pair_ranking_random"]
    assert quality.parse_args(["--work", "w", "--lr-grid"]).lr_grid == [2e-5, 5e-5, 1e-4]
    args = quality.parse_args(["--work", "w", "--lr-grid", "1e-4", "2e-5", "1e-4", "--seeds", "0", "1",
                               "--bootstrap", "500", "--systems", "ms_contrastive_l2", "st_mnrl_hn"])
    assert args.lr_grid == [2e-5, 1e-4] and args.fine_tune_seeds == [0, 1] and args.bootstrap == 500
    assert quality.parse_args(["--work", "w", "--seeds", "0", "--train-seeds", "7", "8"]).fine_tune_seeds == [7, 8]
    for bad in (["--lr-grid", "-1e-5"], ["--lr-grid", "nan"], ["--bootstrap", "-1"], ["--seeds", "1", "1"],
                ["--systems", "st_nope"], ["--lr-grid", "fast"]):
        with pytest.raises(SystemExit):
            quality.parse_args(["--work", "w", *bad])
    args = quality.parse_args(["--work", "w", "--lr-grid", "--seeds", "0", "1", "2", "--select-seeds", "0"])
    assert args.select_seeds == [0] and args.fine_tune_seeds == [0, 1, 2]
    for bad in (["--select-seeds", "0"], ["--lr-grid", "--seeds", "0", "1", "--select-seeds", "5"],
                ["--lr-grid", "--select-seeds", "0", "0"]):
        with pytest.raises(SystemExit):
            quality.parse_args(["--work", "w", *bad])
    assert quality.tunable("ms_contrastive_l2") and quality.tunable("st_mnrl_hn")
    assert not quality.tunable("ms_frozen_head") and not quality.tunable("baselines") and not quality.tunable("zero_shot")


def test_tuned_rows_compete_with_tuned_rows_and_bootstrap_picks_by_dev(tmp_path):
    store = quality.Store(tmp_path)
    arrays, y_dev, y_test = _distance_row()
    scrambled = {**arrays, "test": arrays["test"][::-1].copy(), "test_rev": arrays["test"][::-1].copy()}
    store.save("ms_contrastive_l2", scrambled, {"kind": "distance", "metric": "euclidean", "label": "untuned"})
    for seed in (0, 1):
        store.save(f"ms_contrastive_l2_tuned@s{seed}", arrays, {"kind": "distance", "metric": "euclidean", "label": "ours"})
        store.save(f"st_online_contrastive_tuned@s{seed}", scrambled,
                   {"kind": "distance", "metric": "euclidean", "label": "peer"})
    task = type("T", (), {"dev": _Labels(y_dev), "test": _Labels(y_test)})()
    results = quality.score_all(store, task)
    assert results["ms_contrastive_l2_tuned"]["seeds"] == 2
    assert results["ms_contrastive_l2_tuned"]["summary"]["dev_average_precision"]["mean"] == pytest.approx(
        average_precision_score(y_dev, -arrays["dev"]))
    t = quality.targets(results)
    assert t["best_recipe_ap_vs_st"]["ours"] == "ms_contrastive_l2_tuned"
    assert t["best_recipe_ap_vs_st"]["st"] == "st_online_contrastive_tuned"
    grid = {"ms_contrastive_l2": {0: 0.8, 1: 0.8}, "st_online_contrastive": {0: 0.7, 1: 0.7}}
    tuning = {name: {"learning_rate": 5e-5, "seeds": [0, 1], "grid": fair_peers.grid_summary({5e-5: g}, [0, 1])}
              for name, g in grid.items()}
    boot = quality.tuned_bootstrap(store, task, tuning, resamples=100)
    assert boot["ours"] == "ms_contrastive_l2_tuned" and boot["peer"] == "st_online_contrastive_tuned"
    assert boot["difference"] == pytest.approx(t["best_recipe_ap_vs_st"]["ours_ap"] - t["best_recipe_ap_vs_st"]["st_ap"])
    assert boot["excludes_zero"] is True
    text = quality.tuning_markdown(tuning, boot)
    assert "| ms_contrastive_l2 | 5e-05 | 0.8000, 0.8000 | 0.8000 ± 0.0000 | **yes** |" in text
    assert "paired bootstrap 95 % interval" in text


def test_prune_checkpoints_keeps_only_the_trainer_state(tmp_path):
    folder = tmp_path / "checkpoints" / "checkpoint-100"
    (folder / "1_Pooling").mkdir(parents=True)
    for name in ("model.safetensors", "optimizer.pt", "trainer_state.json", "1_Pooling/config.json"):
        (folder / name).write_text("x" * 10)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.safetensors").write_text("kept")
    assert quality.prune_checkpoints(tmp_path) == 30
    assert sorted(p.name for p in folder.iterdir()) == ["trainer_state.json"]
    assert (tmp_path / "model" / "model.safetensors").read_text() == "kept"
    assert quality.prune_checkpoints(tmp_path / "absent") == 0


# ----------------------------------------------------------------------------- speed helpers
def test_encoder_flops_per_token_matches_the_anchor_for_minilm():
    assert speed.encoder_flops_per_token(384, 1536, 6, 0) == 21_233_664  # "21.23 M"
    assert speed.encoder_flops_per_token(384, 1536, 6, 10) - speed.encoder_flops_per_token(384, 1536, 6, 9) == 9_216
    # one sentence of n tokens at its own length: n * (21.23 M + 9,216 n)
    assert speed.sentence_flops(np.array([16]), 384, 1536, 6)[0] == 16 * speed.encoder_flops_per_token(384, 1536, 6, 16)


def test_interleaving_summary_and_recall():
    assert [speed.interleaved_order(["a", "b"], r) for r in range(3)] == [["a", "b"], ["b", "a"], ["a", "b"]]
    s = speed.summarise({"ours": [3.0, 1.0, 2.0], "peer": [1.0, 1.0, 4.0]}, "peer")
    assert s["ours"]["median"] == 2.0 and s["ours"]["ratio"] == 2.0 and s["peer"]["ratio"] == 1.0
    truth = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    found = np.array([[4, 3, 2, 1], [5, 6, 9, 10]])
    assert speed.recall_at_k(truth, found) == pytest.approx(0.75)


def test_speed_tables_and_plots(tmp_path):
    results = {
        "training": {"pairs_per_s": speed.summarise({"metric_sim": [60.0], "sentence_transformers": [30.0]},
                                                    "sentence_transformers"),
                     "peak_rss_mib": {"metric_sim": 900.0, "sentence_transformers": 1000.0}},
        "index": {"rows": [{"kind": k, "size": n, "build_s": 0.1, "qps": 1e3, "latency_ms": 0.1 * n / 1e3,
                            "recall_at_10": 1.0 if k == "flat" else 0.9, "peak_rss_mib": 300.0}
                           for n in (1000, 10000) for k in ("flat", "hnsw")]},
        "scaling": {"rows": [{"system": "metric_sim", "pairs": n, "steps": n // 32, "seconds": n / 60, "pairs_per_s": 60.0,
                              "peak_rss_mib": 900.0} for n in (256, 512)]},
    }
    results["ceiling"] = {"matmul": {"n": 2048, "gflops": 100.0, "best_gflops": 110.0},
                          "matmul_bf16": {"n": 2048, "gflops": 200.0}, "flops_per_token_constant": 2e7,
                          "flops_per_token_per_length": 9216, "mean_tokens": 16.0,
                          "ceiling_sentences_per_s": 400.0, "ceiling_sentences_per_s_bf16": 800.0}
    results["encoding"] = {"sentences_per_s": speed.summarise({"metric_sim_torch": [200.0],
                                                               "metric_sim_torch_bf16": [400.0]}, "metric_sim_torch"),
                           "peak_rss_mib": {"metric_sim_torch": 500.0, "metric_sim_torch_bf16": 480.0}}
    text = speed.tables(results)
    assert "| metric_sim | 60.0 | 60.0 | 2.00x | 900 |" in text
    # each PyTorch row against the ceiling of its own precision: 200/400 and 400/800
    assert "| metric_sim_torch | 200 | 200 | 1.00x | 50% | 500 |" in text
    assert "| metric_sim_torch_bf16 | 400 | 400 | 2.00x | 50% | 480 |" in text
    assert "bf16 ceiling 800 sentences/s" in text
    assert "| hnsw | 10,000 |" in text
    assert speed.plot_scaling(results, tmp_path) == ["speed_training_scaling.png", "speed_index_scaling.png"]
    for name in ("speed_training_scaling.png", "speed_index_scaling.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_markdown_table_escapes_pipes_and_marks_missing_cells():
    from _common import markdown_table

    table = markdown_table(["system", "AP"], [["(d) MLP(|f(x)-f(y)|)", None]])
    assert table.splitlines()[2] == "| (d) MLP(\\|f(x)-f(y)\\|) | – |"


def test_write_json_is_atomic_and_readable(tmp_path):
    from _common import write_json

    path = write_json(tmp_path / "sub" / "r.json", {"a": np.float32(1.5)})
    assert json.loads(path.read_text()) == {"a": 1.5}
    assert not list(path.parent.glob(".*tmp"))


def test_peak_rss_is_this_process_not_the_parent():
    import subprocess

    ballast = np.ones(40_000_000)  # 305 MiB resident in this process
    here = speed.peak_rss_mib()
    code = f"import sys; sys.path.insert(0, {str(BENCH)!r}); import speed; print(speed.peak_rss_mib())"
    child = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()[-1])
    assert 0 < child and 0 < here
    # ru_maxrss would hand the child this process's pre-exec peak; VmHWM does not
    assert child < here - 250
    del ballast




def test_run_tuned_with_select_seeds_trains_every_lr_on_those_seeds_and_the_rest_at_the_chosen_lr_only(monkeypatch):
    dev_ap = {(2e-5, 0): 0.80, (5e-5, 0): 0.83, (1e-4, 0): 0.82, (5e-5, 1): 0.81, (5e-5, 2): 0.85,
              (2e-5, 1): 0.99, (1e-4, 2): 0.99}  # cells the selection must never train
    trained = []

    def fake_cell(ctx, name, lr, seed, factor=1.0):
        trained.append((lr, seed))
        return {"cell": f"{name}@lr{quality.lr_tag(lr)}@s{seed}", "dev_ap": dev_ap[(lr, seed)]}

    monkeypatch.setattr(quality_grid, "grid_cell", fake_cell)
    store = MemoryRowStore()  # every tuned row cached: run_tuned encodes nothing
    for seed in (0, 1, 2):
        store.rows[f"ms_x_tuned@s{seed}"] = {"cell": f"ms_x@lr5e-05@s{seed}"}
    ctx = type("Ctx", (), {"store": store})()
    record = quality.run_tuned(ctx, "ms_x", "x", [2e-5, 5e-5, 1e-4], [0, 1, 2], select_seeds=[0])
    assert sorted(trained) == sorted([(2e-5, 0), (5e-5, 0), (1e-4, 0), (5e-5, 1), (5e-5, 2)])
    assert record["learning_rate"] == 5e-5 and record["select_seeds"] == [0] and record["seeds"] == [0, 1, 2]
    assert record["chosen_dev_ap"]["dev_ap"] == [0.83, 0.81, 0.85]
    assert record["chosen_dev_ap"]["dev_ap_mean"] == pytest.approx(np.mean([0.83, 0.81, 0.85]))
    header, rows = fair_peers.tuning_table({"ms_x": record})
    assert [r[1] for r in rows] == ["2e-05", "5e-05", "0.0001", "5e-05, seeds [0, 1, 2]"]
    assert rows[-1][4] == "lr chosen on seeds [0]" and rows[1][4] == "**yes**"
    trained.clear()  # without select_seeds every seed trains at every lr
    dev_ap.update({(2e-5, 2): 0.5, (1e-4, 1): 0.5})
    record = quality.run_tuned(ctx, "ms_x", "x", [2e-5, 5e-5, 1e-4], [0, 1, 2])
    assert len(trained) == 9 and "chosen_dev_ap" not in record and record["learning_rate"] == 5e-5


def test_hard_negative_variant_is_the_recipe_plus_mining_at_the_same_step_budget():
    recipe = quality.TrainConfig.from_yaml(quality.RECIPES / "quora_duplicates.yaml")
    task = quality.Task("qqp", recipe, None, None, None, steps=511)  # type: ignore[arg-type]
    config = quality._ms_config(task, "contrastive_l2_hn")
    assert config.max_steps == 511 and config.hard_negatives == quality.HARD_NEGATIVES
    assert config.hard_negatives["anchors"] == "with_positives"
    assert config.replace(hard_negatives=None, max_steps=recipe.max_steps) == recipe
    assert quality.tunable("ms_contrastive_l2_hn")
    far = quality._ms_config(task, "contrastive_l2_hn_far")  # the same with the 10 nearest skipped
    assert far.hard_negatives == {**quality.HARD_NEGATIVES, "range_min": 10, "range_max": 30}
    assert far.replace(hard_negatives=config.hard_negatives) == config


def test_auxiliary_ntxent_variant_is_the_recipe_plus_one_weighted_term():
    from quality_systems import NTXENT_AUXILIARY

    recipe = quality.TrainConfig.from_yaml(quality.RECIPES / "quora_duplicates.yaml")
    task = quality.Task("qqp", recipe, None, None, None, steps=511)  # type: ignore[arg-type]
    config = quality._ms_config(task, "contrastive_l2_ntxent")
    assert config.auxiliary_losses == [NTXENT_AUXILIARY] and config.loss == recipe.loss
    assert config.replace(auxiliary_losses=[]) == recipe
    assert quality.tunable("ms_contrastive_l2_ntxent")
    # the margin grid scales the main loss's margin and leaves the auxiliary term as it is
    cell = quality.ms_cell_config(task, "ms_contrastive_l2_ntxent", 1e-4, 0, factor=2.0)
    assert cell.loss_params["neg_margin"] == pytest.approx(2 * recipe.loss_params["neg_margin"])
    assert cell.auxiliary_losses == [NTXENT_AUXILIARY]


def test_pair_ranking_variants_change_only_the_loss_and_scale_its_temperature():
    from quality_systems import PAIR_RANKING_AUXILIARY, PAIR_RANKING_PARAMS

    recipe = quality.TrainConfig.from_yaml(quality.RECIPES / "quora_duplicates.yaml")
    task = quality.Task("qqp", recipe, None, None, None, steps=511)  # type: ignore[arg-type]
    alone = quality._ms_config(task, "pair_ranking")
    assert alone.loss == "pair_ranking" and alone.loss_params == PAIR_RANKING_PARAMS
    assert alone.replace(loss=recipe.loss, loss_params=recipe.loss_params) == recipe
    added = quality._ms_config(task, "contrastive_l2_pair_ranking")
    assert added.auxiliary_losses == [PAIR_RANKING_AUXILIARY] and added.replace(auxiliary_losses=[]) == recipe
    assert quality.tunable("ms_pair_ranking") and quality.tunable("ms_contrastive_l2_pair_ranking")
    cell = quality.ms_cell_config(task, "ms_pair_ranking", 1e-4, 0, factor=0.5)  # the margin grid's knob
    assert cell.loss_params["temperature"] == pytest.approx(0.5 * PAIR_RANKING_PARAMS["temperature"])
    shuffled = quality._ms_config(task, "pair_ranking_random")
    assert shuffled.sampler == "random" != recipe.sampler and shuffled.replace(sampler=recipe.sampler) == alone
    decayed = quality._ms_config(task, "pair_ranking_llrd")
    assert decayed.layer_lr_decay == quality_systems.LAYER_LR_DECAY < 1 and decayed.replace(layer_lr_decay=1.0) == alone
    with_ntxent = quality._ms_config(task, "pair_ranking_ntxent")  # the recipe row's auxiliary term, as it is
    assert with_ntxent.auxiliary_losses == [quality_systems.NTXENT_AUXILIARY]
    assert with_ntxent.replace(auxiliary_losses=[]) == alone and quality.tunable("ms_pair_ranking_ntxent")
    cell = quality.ms_cell_config(task, "ms_pair_ranking_ntxent", 1e-4, 0, factor=0.5)
    assert cell.loss_params["temperature"] == pytest.approx(0.1) and cell.auxiliary_losses == [quality_systems.NTXENT_AUXILIARY]
    for variant, negatives in (("pair_ranking_hn", quality.HARD_NEGATIVES),
                               ("pair_ranking_hn_far", {**quality.HARD_NEGATIVES, "range_min": 10, "range_max": 30})):
        mined = quality._ms_config(task, variant)  # the ranking loss + the contrastive rows' mined negatives
        assert mined.hard_negatives == negatives and mined.max_steps == 511
        assert mined.replace(hard_negatives=None, max_steps=recipe.max_steps) == alone
        assert quality.tunable(f"ms_{variant}")
        assert quality.ms_cell_config(task, f"ms_{variant}", 1e-4, 0, factor=0.5).hard_negatives == negatives


def test_a_tuned_rerun_that_would_drop_seeds_is_refused(tmp_path, capsys):
    """Adding a grid cell on seed 0 to a 3-seed row must not shrink the row to 1 seed in the tables."""
    tuning = {"ms_contrastive_l2": {"seeds": [0, 1, 2], "learning_rate": 1e-4}}
    (tmp_path / "tuning.json").write_text(json.dumps(tuning))
    with pytest.raises(SystemExit) as info:
        quality.main(["--task", "qqp", "--work", str(tmp_path), "--systems", "ms_contrastive_l2",
                      "--lr-grid", "1e-4", "2e-4", "--seeds", "0"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "ms_contrastive_l2: [1, 2]" in err and str(tmp_path / "tuning.json") in err and "--seeds" in err
    assert json.loads((tmp_path / "tuning.json").read_text()) == tuning  # nothing rewritten
    assert quality.seeds_left_out(tuning, ["ms_contrastive_l2"], [0, 1, 2, 3]) == {}  # more seeds: fine
    assert quality.seeds_left_out(tuning, ["st_online_contrastive", "zero_shot"], [0]) == {}  # other systems


def _pairs(rows: list[tuple[str, str, int]], texts: dict[str, str] | None = None) -> PairDataset:
    """Pairs of ids; an id's text is ``texts[id]``, or ``"text ID"``."""
    texts = texts or {}
    return pair_dataset([(texts.get(a, f"text {a}"), texts.get(b, f"text {b}"), y, a, b) for a, b, y in rows])


def test_transitive_pairs_add_what_the_labels_imply_and_nothing_labelled():
    from quality_data import with_transitive_pairs

    # clusters {a, b, c, g} (g carries a's text: one item) and {d, e}; h and k are singletons
    rows = [("a", "b", 1), ("b", "c", 1), ("a", "c", 0), ("d", "e", 1), ("c", "d", 0), ("g", "h", 0),
            ("h", "k", 0)]
    data = _pairs(rows, texts={"g": "text a"})
    out = with_transitive_pairs(data)
    assert out.pair_ids[:len(rows)] == data.pair_ids and out.labels[:len(rows)].tolist() == [y for *_, y in rows]
    new = len(rows)
    added = {frozenset((a, b)): y for a, b, y in zip(out.ids_a[new:], out.ids_b[new:], out.labels[new:].tolist(),
                                                     strict=True)}
    assert len(added) == len(out) - len(rows)  # no pair twice
    positives = {frozenset(p) for p in [("b", "g"), ("c", "g")]}  # (a, c) is labelled 0; (a, g) one text
    negatives = {frozenset((x, z)) for x in "abcg" for z in "de"} | {frozenset((x, "h")) for x in "abc"}
    negatives -= {frozenset(("c", "d"))}  # labelled
    assert {p for p, y in added.items() if y == 1} == positives
    assert {p for p, y in added.items() if y == 0} == negatives  # (h, k): both singletons, nothing implied
    assert not set(added) & {frozenset(r[:2]) for r in rows}
    assert out.pair_ids[len(rows):] == [f"implied-{k}" for k in range(len(added))]


def test_another_batch_size_keeps_the_epochs_and_the_evaluations_per_epoch(tmp_path):
    from quality_data import at_batch_size

    recipe = quality.TrainConfig.from_yaml(quality.RECIPES / "quora_duplicates.yaml")  # batch 32, eval every 100
    assert at_batch_size(recipe, 16_327, 32) == recipe
    wider = at_batch_size(recipe, 16_327, 64)  # 256 steps an epoch, 5.11 evaluations as at 511 steps
    assert (wider.batch_size, wider.eval_steps) == (64, 50)
    assert wider.replace(batch_size=32, eval_steps=100) == recipe
    assert at_batch_size(recipe, 16_327, 128).eval_steps == 25
    assert at_batch_size(recipe, 16_327, 8192).eval_steps == 1  # 2 steps an epoch: never 0

    store = quality.Store(tmp_path)
    task = quality.Task("qqp", recipe, None, None, None, steps=511)  # type: ignore[arg-type]
    store.check_budget(task)
    store.check_budget(task)  # the same budget again: fine
    other = quality.Task("qqp", wider, None, None, None, steps=256)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"budget\.json records the budget .*'batch_size': 32.*'batch_size': 64"):
        store.check_budget(other)


def test_a_budget_names_its_lr_schedule_and_older_folders_read_as_linear(tmp_path):
    recipe = quality.TrainConfig.from_yaml(quality.RECIPES / "quora_duplicates.yaml")
    assert recipe.lr_scheduler == "linear"
    (tmp_path / "budget.json").write_text(json.dumps(  # as written before the schedule was recorded
        {"task": "qqp", "batch_size": 32, "steps": 511, "eval_steps": 100, "max_length": 128}))
    store = quality.Store(tmp_path)
    store.check_budget(quality.Task("qqp", recipe, None, None, None, steps=511))  # type: ignore[arg-type]
    cosine = quality.Task("qqp", recipe.replace(lr_scheduler="cosine"), None, None, None, steps=511)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"'lr_scheduler': 'linear'.*'lr_scheduler': 'cosine'.*lr schedule"):
        store.check_budget(cosine)
    fresh = quality.Store(tmp_path / "cosine")
    fresh.check_budget(cosine)
    assert json.loads((tmp_path / "cosine" / "budget.json").read_text())["lr_scheduler"] == "cosine"


def test_epochs_multiply_the_step_budget_and_a_folder_keeps_one(tmp_path, monkeypatch):
    import quality_data

    rows = [(f"question {k}", f"other {k}", k % 2, f"a{k}", f"b{k}") for k in range(100)]
    monkeypatch.setattr(quality_data, "load_preset", lambda *args, **kwargs: pair_dataset(rows))
    recipe = quality_data.load_task("qqp")  # batch 32: 4 steps an epoch of 100 pairs
    longer = quality_data.load_task("qqp", epochs=3)
    assert (recipe.steps, recipe.config.max_steps, recipe.config.epochs) == (4, 4, 1)
    assert (longer.steps, longer.config.max_steps, longer.config.epochs) == (12, 12, 3)
    assert longer.config.replace(epochs=1, max_steps=4) == recipe.config  # nothing else changes
    store = quality.Store(tmp_path)
    store.check_budget(recipe)
    with pytest.raises(ValueError, match=r"'steps': 4.*'steps': 12"):
        store.check_budget(longer)
    assert quality.parse_args(["--work", "w", "--epochs", "3"]).epochs == 3
    with pytest.raises(SystemExit):
        quality.parse_args(["--work", "w", "--epochs", "0"])


def test_list_needs_no_work_folder_and_every_other_run_does(capsys):
    assert quality.main(["--list"]) == 0
    listing = capsys.readouterr().out
    assert "ms_pair_ranking_ntxent" in listing and "only when named" in listing
    with pytest.raises(SystemExit):
        quality.parse_args(["--systems", "zero_shot"])
    assert "--work" in capsys.readouterr().err


def test_parse_args_lr_scheduler():
    assert quality.parse_args(["--work", "w"]).lr_scheduler is None
    assert quality.parse_args(["--work", "w", "--lr-scheduler", "constant_with_warmup"]).lr_scheduler == "constant_with_warmup"
    with pytest.raises(SystemExit):
        quality.parse_args(["--work", "w", "--lr-scheduler", "exponential"])


def test_parse_args_batch_size():
    assert quality.parse_args(["--work", "w"]).batch_size is None
    assert quality.parse_args(["--work", "w", "--batch-size", "64"]).batch_size == 64
    with pytest.raises(SystemExit):
        quality.parse_args(["--work", "w", "--batch-size", "1"])


def test_the_closure_row_trains_pair_ranking_on_the_implied_pairs_too():
    from quality_systems import ms_train_data

    recipe = quality.TrainConfig.from_yaml(quality.RECIPES / "quora_duplicates.yaml")
    data = _pairs([("a", "b", 1), ("b", "c", 1), ("c", "d", 0)])
    task = quality.Task("qqp", recipe, data, None, None, steps=511)  # type: ignore[arg-type]
    assert ms_train_data(task, "ms_pair_ranking") is data
    closure = ms_train_data(task, "ms_pair_ranking_closure")
    assert len(closure) == 3 + 1 + 2  # (a, c) similar; (a, d), (b, d) dissimilar
    assert quality._ms_config(task, "pair_ranking_closure") == quality._ms_config(task, "pair_ranking")
    assert quality.tunable("ms_pair_ranking_closure")


def test_a_base_model_starts_every_system_and_a_folder_keeps_one(tmp_path, monkeypatch, tiny_encoder):
    import dataclasses

    import quality_data
    import quality_st

    rows = [(f"how do i cook rice {k}", f"what is the best way to cook {k}", k % 2, f"a{k}", f"b{k}") for k in range(40)]
    monkeypatch.setattr(quality_data, "load_preset", lambda *args, **kwargs: pair_dataset(rows))
    folder = tiny_encoder.save(tmp_path / "tiny-base")
    recipe = quality_data.load_task("qqp")
    task = quality_data.load_task("qqp", base_model=str(folder))
    assert task.config.model == str(folder) and task.config.replace(model="default") == recipe.config
    assert quality_data.base_model_location(recipe) == quality.default_model_path()
    assert quality_data.base_model_location(task) == folder
    assert quality_data.base_model_name(recipe) == "all-MiniLM-L6-v2"
    assert quality_data.base_model_name(task) == "tiny-base"
    for name in ("ms_pair_ranking", "ms_contrastive_l2", "ms_triplet"):  # every metric-sim cell starts from it
        assert quality.ms_cell_config(task, name, 5e-5, 0).model == str(folder)

    # the zero-shot rows encode with the base model: its distances, its name in the label
    task = dataclasses.replace(task, config=task.config.replace(max_length=32))  # the tiny model's positions
    store = MemoryRowStore()
    ctx = quality_data.Context(task, store, [0], {})  # type: ignore[arg-type]
    quality_systems._rows_zero_shot(ctx)
    assert store.rows["zero_shot_l2"]["label"] == "zero-shot tiny-base (L2)"
    expected = quality_data.encoder_distances(tiny_encoder, [quality.Metric.EUCLIDEAN], task)[quality.Metric.EUCLIDEAN]
    saved = {}
    monkeypatch.setattr(store, "save", lambda row, arrays, meta: saved.setdefault(row, arrays))
    store.rows.clear()
    quality_systems._rows_zero_shot(ctx)
    np.testing.assert_allclose(saved["zero_shot_l2"]["test"], expected["test"], rtol=1e-5)

    # sentence-transformers' rows and grid cells are handed the same folder
    handed = []
    ctx = quality_data.Context(task, quality.Store(tmp_path / "work"), [0], {})
    monkeypatch.setattr(quality_st, "train_sentence_transformers", lambda *a, **k: handed.append(k["model_path"]))
    monkeypatch.setattr(quality_grid, "train_sentence_transformers", lambda *a, **k: handed.append(k["model_path"]))
    for call in (lambda: quality_st._sentence_transformers_row(ctx, "cosent", "st_cosent", "st_cosent", 0, "x"),
                 lambda: quality_grid._grid_cell(ctx, "st_cosent", 5e-5, 0)):
        with pytest.raises(FileNotFoundError):  # the stub trains nothing, so its st_train.json is missing
            call()
    assert handed == [folder, folder]

    # one base model per folder; folders written before the model was recorded read as the default
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "budget.json").write_text(json.dumps(
        {"task": "qqp", "batch_size": 32, "steps": recipe.steps, "eval_steps": 100, "max_length": 128}))
    quality.Store(tmp_path / "old").check_budget(recipe)
    with pytest.raises(ValueError, match=r"'model': 'default'.*'model': '.*tiny-base'.*base model"):
        quality.Store(tmp_path / "old").check_budget(task)
    assert quality.parse_args(["--work", "w", "--base-model", str(folder)]).base_model == str(folder)
    with pytest.raises(SystemExit):
        quality.parse_args(["--work", "w", "--base-model", str(tmp_path / "missing")])


def test_calibration_floor_scores_cached_distance_rows_against_the_library_and_sklearn(tmp_path, monkeypatch, capsys):
    import calibration_floor
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    from metric_sim import Calibrator, expected_calibration_error

    arrays, y_dev, y_test = _distance_row(n=400)

    class Split(_Labels):
        def __len__(self) -> int:
            return len(self.labels)

    task = type("T", (), {"name": "qqp", "dev": Split(y_dev), "test": Split(y_test)})()
    monkeypatch.setattr(calibration_floor, "load_task", lambda name: task)
    store = quality.Store(tmp_path)
    store.save("ms_pair_ranking_tuned@s0", arrays, {"kind": "distance", "metric": "euclidean", "label": "ours"})
    store.save("mlp_concat@s0", {k: 1.0 - v for k, v in arrays.items()}, {"kind": "logit", "label": "(a)"})
    out = tmp_path / "floor.json"
    assert calibration_floor.main(["--work", str(tmp_path), "--json", str(out), "--draws", "200"]) == 0
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"ms_pair_ranking_tuned@s0"}  # logit rows have no distance to calibrate
    row = results["ms_pair_ranking_tuned@s0"]
    p = Calibrator.fit(arrays["dev"], y_dev, "euclidean").predict_proba(arrays["test"])
    assert row["ece"] == pytest.approx(expected_calibration_error(y_test, p), abs=1e-12)  # what quality.py reports
    on_test = Calibrator.fit(arrays["test"], y_test, "euclidean").predict_proba(arrays["test"])
    assert row["ece_fitted_on_test"] == pytest.approx(expected_calibration_error(y_test, on_test), abs=1e-12)
    assert 0 < row["floor_mean"] < row["floor_p95"] and row["floor_draws"] == 200
    # the held-out log-loss equals sklearn's own cross-validation of the same logistic fit
    for feature, x in (("squared", arrays["dev"] ** 2), ("linear", arrays["dev"])):
        scores = cross_val_score(LogisticRegression(C=np.inf, tol=1e-8, max_iter=1000), (x / np.median(x)).reshape(-1, 1),
                                 y_dev, cv=StratifiedKFold(5, shuffle=True, random_state=0), scoring="neg_log_loss")
        assert row["dev_cv_log_loss"][feature] == pytest.approx(-scores.mean(), abs=1e-6)
    for feature in ("linear", "quadratic"):
        fitted = Calibrator.fit(arrays["dev"], y_dev, "euclidean", feature=feature).predict_proba(arrays["test"])
        assert row[f"ece_{feature}"] == pytest.approx(expected_calibration_error(y_test, fitted), abs=1e-12)
    # the dev rule picks the form with the lowest held-out log-loss, and reports that form's test ECE
    assert row["dev_choice"] == min(row["dev_cv_log_loss"], key=row["dev_cv_log_loss"].get)
    assert set(row["dev_cv_log_loss"]) == {"squared", "linear", "quadratic"}
    assert row["ece_dev_choice"] == row["ece" if row["dev_choice"] == "squared" else f"ece_{row['dev_choice']}"]
    assert "| ms_pair_ranking_tuned@s0 |" in capsys.readouterr().out

    with pytest.raises(SystemExit):
        calibration_floor.main(["--work", str(tmp_path), "--rows", "st_cosent_tuned@s0"])
    assert "st_cosent_tuned@s0 not in" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        calibration_floor.main(["--work", str(tmp_path), "--rows", "mlp_concat@s0"])
    assert "holds logit outputs, not distances" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        calibration_floor.main(["--work", str(tmp_path / "missing")])
    assert "no outputs/ folder" in capsys.readouterr().err
