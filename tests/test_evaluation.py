from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from metric_sim.calibration import CalibrationError, Calibrator, SimilarityModel
from metric_sim.cli import main
from metric_sim.data import load_pairs
from metric_sim.distances import Metric
from metric_sim.evaluation import (
    FIGURES,
    calibration_metrics,
    evaluate,
    example_pair_lines,
    expected_calibration_error,
    in_sample_thresholds,
    pair_metrics,
    reliability_bins,
    retrieval_metrics,
    symmetry_gap,
)
from tests.conftest import BASE_WORDS

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------- synthetic pairs
def write_pairs(folder: Path, groups: int = 60, seed: int = 0) -> tuple[Path, Path]:
    """Pairs the tiny random BERT separates imperfectly: a duplicate changes 2-3 of 8 words,
    a hard non-duplicate 5, an easy one is another group's sentence. Even groups go to
    dev, odd to test, and non-duplicates stay inside their split, so no text is shared."""
    rng = np.random.default_rng(seed)
    words = list(dict.fromkeys(BASE_WORDS))

    def mutate(tokens: list[str], n: int) -> str:
        out = list(tokens)
        for i in rng.choice(len(out), n, replace=False):
            out[i] = str(rng.choice(words))
        return " ".join(out)

    bases = [[str(w) for w in rng.choice(words, 8)] for _ in range(groups)]
    rows, splits = [], []
    for g, base in enumerate(bases):
        split = "dev" if g % 2 == 0 else "test"
        a = " ".join(base)
        rows += [(a, mutate(base, 2), 1), (a, mutate(base, 3), 1), (a, mutate(base, 5), 0), (a, " ".join(bases[(g + 2) % groups]), 0)]
        splits += [split] * 4
    pairs = folder / "pairs.tsv"
    pairs.write_text("q1\tq2\tdup\n" + "".join(f"{a}\t{b}\t{y}\n" for a, b, y in rows), encoding="utf-8")
    split_file = folder / "split.tsv"  # pair id = the line number (header is line 1)
    split_file.write_text("id\tsplit\n" + "".join(f"{i + 2}\t{s}\n" for i, s in enumerate(splits)), encoding="utf-8")
    return pairs, split_file


@pytest.fixture()
def pair_files(tmp_path):
    return write_pairs(tmp_path)


def _splits(pair_files):
    pairs_file, split_file = pair_files
    full = load_pairs(pairs_file, text_a="q1", text_b="q2", label="dup")
    return full.split_from_file(split_file, "test"), full.split_from_file(split_file, "dev")


COLUMNS = ["--text-a", "q1", "--text-b", "q2", "--label", "dup"]


# ---------------------------------------------------------------------------- pair metrics
HAND_D = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
HAND_Y = np.array([1, 1, 0, 1, 0, 0])


def test_pair_metrics_hand_example():
    cal = Calibrator(weight=-10.0, bias=3.5, metric="euclidean", feature="linear")  # tau = 0.35
    m = pair_metrics(HAND_D, HAND_Y, cal)
    # Ranked by distance: + + - + - -  -> precision at the hits 1, 1, 3/4.
    assert m["average_precision"] == pytest.approx((1 + 1 + 0.75) / 3)
    # 8 of the 9 (similar, dissimilar) pairs put the similar one closer.
    assert m["roc_auc"] == pytest.approx(8 / 9)
    assert m["threshold"] == pytest.approx(0.35)
    # d <= 0.35 -> predicted 1 1 1 0 0 0: TP 2, FP 1, FN 1, TN 2.
    assert (m["accuracy"], m["precision"], m["recall"], m["f1"]) == pytest.approx((4 / 6, 2 / 3, 2 / 3, 2 / 3))
    assert m["predicted_similar"] == 3 and m["pairs"] == 6 and m["positives"] == 3
    ins = m["in_sample"]
    # Best accuracy 5/6 first reached by cutting after 0.2; reported halfway to the next distance.
    assert ins["accuracy"] == pytest.approx(5 / 6) and ins["accuracy_threshold"] == pytest.approx(0.25)
    # Best F1: cut after 0.4 -> P 3/4, R 1 -> 6/7.
    assert ins["f1"] == pytest.approx(6 / 7) and ins["f1_threshold"] == pytest.approx(0.45)
    assert ins["precision_at_f1_threshold"] == pytest.approx(0.75) and ins["recall_at_f1_threshold"] == 1.0
    assert "in-sample" not in m and "scored split itself" in ins["note"]


def test_pair_metrics_agree_with_sklearn_on_random_data():
    from sklearn.metrics import accuracy_score, average_precision_score, f1_score, roc_auc_score

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 500)
    d = np.abs(rng.normal(1.0 - 0.5 * y, 0.4))
    cal = Calibrator.fit(d, y, "manhattan")
    m = pair_metrics(d, y, cal)
    assert m["average_precision"] == pytest.approx(average_precision_score(y, -d))
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, -d))
    assert m["accuracy"] == pytest.approx(accuracy_score(y, d <= cal.threshold))
    assert m["f1"] == pytest.approx(f1_score(y, d <= cal.threshold))


def _brute_force_best(d, y):
    best_acc, best_f1 = (y == 0).mean(), 0.0
    for cut in np.unique(d):
        pred = d <= cut
        tp = np.sum(pred & (y == 1))
        best_acc = max(best_acc, np.mean(pred == y))
        if tp:
            p, r = tp / pred.sum(), tp / y.sum()
            best_f1 = max(best_f1, 2 * p * r / (p + r))
    return best_acc, best_f1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_in_sample_thresholds_match_brute_force_even_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    d = np.round(np.abs(rng.normal(1.0 - 0.4 * y, 0.5)), 1)  # rounded: many ties
    got = in_sample_thresholds(d, y)
    acc, f1 = _brute_force_best(d, y)
    assert got["accuracy"] == pytest.approx(acc) and got["f1"] == pytest.approx(f1)
    # The reported thresholds reproduce the reported scores.
    if got["accuracy_threshold"] is not None:
        assert np.mean((d <= got["accuracy_threshold"]) == y) == pytest.approx(got["accuracy"])
    pred = d <= got["f1_threshold"]
    tp = np.sum(pred & (y == 1))
    assert 2 * tp / (pred.sum() + y.sum()) == pytest.approx(got["f1"])


def test_pair_metrics_reject_bad_input():
    cal = Calibrator(weight=-1.0, bias=1.0, metric="euclidean", feature="linear")
    with pytest.raises(ValueError, match="only class 1"):
        pair_metrics([0.1, 0.2], [1, 1], cal)
    with pytest.raises(ValueError, match="labels must be a 1-D array of 3 labels"):
        pair_metrics([0.1, 0.2, 0.3], [1, 0], cal)
    with pytest.raises(ValueError, match="non-negative"):
        pair_metrics([-0.1, 0.2], [1, 0], cal)
    with pytest.raises(TypeError, match="calibrator must be a Calibrator, got float"):
        pair_metrics([0.1, 0.2], [1, 0], 0.5)


# ---------------------------------------------------------------------------- calibration metrics
def test_ece_hand_example_with_15_bins():
    p = np.array([0.05, 0.1, 0.5, 0.9, 0.95, 1.0])
    y = np.array([0, 0, 1, 1, 1, 0])
    # Bins of width 1/15: 0.05 -> bin 0, 0.1 -> 1, 0.5 -> 7, 0.9 -> 13, 0.95 and 1.0 -> 14.
    # |gaps|: 0.05, 0.1, 0.5, 0.1 (one pair each) and |0.5 - 0.975| (two pairs).
    expected = (0.05 + 0.1 + 0.5 + 0.1 + 2 * 0.475) / 6
    assert expected_calibration_error(y, p) == pytest.approx(expected)
    bins = reliability_bins(y, p)
    assert bins["count"] == [1, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 2]
    assert bins["mean_probability"][2] is None and bins["fraction_similar"][14] == 0.5
    m = calibration_metrics(y, p)
    assert m["brier"] == pytest.approx(np.mean((p - y) ** 2))
    assert m["n_bins"] == 15 and m["ece"] == pytest.approx(expected)
    assert m["log_loss"] > 5  # p = 1.0 for a dissimilar pair: clipped, but costs ~36 / 6
    m = calibration_metrics([0, 1, 0], [0.2, 0.7, 0.9])
    assert m["log_loss"] == pytest.approx(-(np.log(0.8) + np.log(0.7) + np.log(0.1)) / 3)
    assert m["brier"] == pytest.approx((0.04 + 0.09 + 0.81) / 3)


def test_reliability_bins_match_sklearn_calibration_curve():
    from sklearn.calibration import calibration_curve

    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, 2000)
    p[:15] = np.linspace(0, 1, 15)  # values on bin edges go where sklearn puts them
    y = (rng.uniform(0, 1, 2000) < p**1.3).astype(int)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=15, strategy="uniform")
    bins = reliability_bins(y, p)
    filled = [i for i, c in enumerate(bins["count"]) if c]
    np.testing.assert_allclose([bins["fraction_similar"][i] for i in filled], prob_true)
    np.testing.assert_allclose([bins["mean_probability"][i] for i in filled], prob_pred)
    # ECE from sklearn's per-bin numbers and our counts.
    counts = np.array([bins["count"][i] for i in filled])
    assert expected_calibration_error(y, p) == pytest.approx(np.sum(counts / counts.sum() * np.abs(prob_true - prob_pred)))
    with pytest.raises(ValueError, match=r"lie in \[0, 1\]"):
        reliability_bins([0, 1], [0.5, 1.5])


# ---------------------------------------------------------------------------- retrieval metrics
def test_retrieval_hand_example():
    emb = np.array([[0.0], [1.0], [3.0], [10.0], [11.0], [30.0]])
    labels = [0, 0, 1, 2, 2, 1]
    # Ranks of the one duplicate of each query: 1, 1, 5 (3 -> 30), 1, 1, 3 (30 -> 3).
    m = retrieval_metrics(emb, labels, "euclidean")
    assert m["queries"] == 6 and m["gallery"] == 6
    assert m["recall_at_1"] == pytest.approx(4 / 6)
    assert m["recall_at_5"] == m["recall_at_10"] == 1.0
    assert m["mrr_at_10"] == pytest.approx((4 + 1 / 5 + 1 / 3) / 6)
    assert m["map_at_r"] == pytest.approx(4 / 6)  # R = 1: hit at rank 1 or nothing
    # A singleton is never a query, but stays in the gallery as a distractor.
    m2 = retrieval_metrics(np.vstack([emb, [[0.4]]]), labels + [7], "manhattan")
    assert m2["queries"] == 6 and m2["gallery"] == 7
    assert m2["recall_at_1"] == pytest.approx(2 / 6)  # 0.0 and 1.0 now find 0.4 first
    none = retrieval_metrics(emb[:2], [0, 1], "euclidean")
    assert none["queries"] == 0 and none["map_at_r"] is None


def test_retrieval_map_at_r_hand_example_with_bigger_cluster():
    emb = np.array([[0.0], [1.0], [2.0], [2.5], [9.0]])
    labels = [0, 0, 1, 0, 1]
    m = retrieval_metrics(emb, labels, "euclidean", ks=(1,), mrr_k=3)
    # q0 (R=2): 1.0 hit, 2.0 miss -> (1/1) / 2 = 0.5.  q1 (R=2): 0.0 hit, 2.0 miss (tie with 0.0 broken
    # by index: 0 first) -> 0.5.  q3 (R=2): 2.0 miss, 1.0 hit -> (1/2) / 2 = 0.25.
    # q2 (R=1): 2.5 miss -> 0.  q4 (R=1): 2.5 miss -> 0.
    assert m["map_at_r"] == pytest.approx((0.5 + 0.5 + 0.25 + 0 + 0) / 5)
    # MRR@3: q0 1, q1 1, q3 1/2; q2's top 3 (2.5, 1.0, 0.0) hold no duplicate -> 0; q4: 2.5, then 2.0 -> 1/2.
    assert m["mrr_at_3"] == pytest.approx((1 + 1 + 0.5 + 0 + 0.5) / 5)


@pytest.mark.parametrize("metric", list(Metric))
def test_retrieval_matches_pytorch_metric_learning(metric):
    """Cross-check against PML's AccuracyCalculator with a raw-Lp kNN (no normalisation)."""
    import torch
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from pytorch_metric_learning.utils.inference import CustomKNN

    from metric_sim.distances import pml_distance

    rng = np.random.default_rng(7)
    labels = rng.integers(0, 70, 240)  # sizes 1..~9, some singletons
    centers = rng.normal(0, 1, (70, 16))
    emb = (centers[labels] + rng.normal(0, 0.9, (240, 16))).astype(np.float32)
    ours = retrieval_metrics(emb, labels, metric, ks=(1, 5, 10), mrr_k=10)
    knn = CustomKNN(pml_distance(metric))
    # The oracle gets float64: in float32 PML's cdist (matrix-multiply form) misorders
    # near-ties by ~1e-6, which made this comparison flaky under different thread counts.
    emb64 = emb.astype(np.float64)
    at_r = AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r"), k="max_bin_count",
                              knn_func=knn, device=torch.device("cpu")).get_accuracy(emb64, labels)
    # PML 2.9 leaves mean_reciprocal_rank out of requires_knn(): ask for precision_at_1 too.
    mrr = AccuracyCalculator(include=("mean_reciprocal_rank", "precision_at_1"), k=10, knn_func=knn,
                             device=torch.device("cpu")).get_accuracy(emb64, labels)
    assert ours["recall_at_1"] == pytest.approx(at_r["precision_at_1"])
    assert ours["map_at_r"] == pytest.approx(at_r["mean_average_precision_at_r"])
    assert ours["mrr_at_10"] == pytest.approx(mrr["mean_reciprocal_rank"])
    # Recall@k by brute force (any duplicate in the k nearest, itself excluded).
    d = np.abs(emb[:, None, :] - emb[None, :, :])
    d = np.sqrt((d**2).sum(-1)) if metric is Metric.EUCLIDEAN else d.sum(-1)
    np.fill_diagonal(d, np.inf)
    queries = [i for i in range(240) if np.sum(labels == labels[i]) > 1]
    for k in (5, 10):
        hit = [np.any(labels[np.argsort(d[i])[:k]] == labels[i]) for i in queries]
        assert ours[f"recall_at_{k}"] == pytest.approx(np.mean(hit))


def test_retrieval_rejects_bad_input():
    with pytest.raises(ValueError, match="one label per embedding"):
        retrieval_metrics(np.zeros((3, 2)), [0, 1], "euclidean")
    with pytest.raises(ValueError, match="2-D array"):
        retrieval_metrics(np.zeros(3), [0, 1, 2], "euclidean")
    with pytest.raises(ValueError, match="metric must be one of"):
        retrieval_metrics(np.zeros((2, 2)), [0, 0], "cosine")


def test_symmetry_gap():
    assert symmetry_gap([0.1, 0.5], [0.1, 0.5]) == 0.0
    assert symmetry_gap([0.1, 0.5], [0.1, 0.25]) == 0.25
    with pytest.raises(ValueError, match="same length"):
        symmetry_gap([0.1], [0.1, 0.2])


# ---------------------------------------------------------------------------- whole model
def test_evaluate_model_symmetry_is_exactly_zero_and_self_pairs_are_max(tiny_encoder, pair_files):
    test, dev = _splits(pair_files)
    model = SimilarityModel(tiny_encoder, "manhattan")
    ev = evaluate(model, test, calibration_pairs=dev, calibration_name="dev", batch_size=7)
    assert model.calibrator is None  # evaluating does not change the model
    assert ev.metrics["symmetry"] == {"max_abs_difference": 0.0, "bitwise_equal": True, "pairs": len(test)}
    assert np.array_equal(ev.probabilities, ev.probabilities_reversed)
    p_max = ev.to_dict()["max_probability"]
    assert p_max == ev.calibrator.predict_proba([0.0])[0] and np.all(ev.probabilities <= p_max)
    # The calibrator is the one fitted on dev, not on the scored pairs.
    ref = Calibrator.fit(model.distance(dev.texts_a, dev.texts_b), dev.labels, "manhattan")
    assert (ev.calibrator.weight, ev.calibrator.bias) == pytest.approx((ref.weight, ref.bias))
    assert ev.metrics["pairs"]["average_precision"] > 0.8  # the synthetic task is learnable without training
    assert ev.metrics["retrieval"]["queries"] == 3 * len(test) // 4  # base + 2 duplicates per group of 4 pairs


def test_evaluate_refuses_the_scored_split_and_missing_calibrator(tiny_encoder, pair_files):
    test, _ = _splits(pair_files)
    model = SimilarityModel(tiny_encoder)
    with pytest.raises(CalibrationError, match="calibration pairs are the scored pairs"):
        evaluate(model, test, calibration_pairs=test)
    with pytest.raises(CalibrationError, match="no stored calibrator"):
        evaluate(model, test)


def test_example_pair_lines_show_both_orders_equal(tiny_encoder, pair_files):
    test, dev = _splits(pair_files)
    model = SimilarityModel(tiny_encoder)
    with pytest.raises(CalibrationError, match="no calibrator"):
        example_pair_lines(model, [("a", "b")])
    model.calibrate(dev)
    lines = example_pair_lines(model, test, limit=4)
    assert lines[0].startswith("euclidean distance, tau = ")
    assert len(lines) == 5
    assert [int(re.search(r"label=(\d)", line).group(1)) for line in lines[1:]] == [1, 1, 0, 0]
    for line in lines[1:]:
        p_ab, p_ba = re.search(r"p\(a,b\)=([\d.]+)\s+p\(b,a\)=([\d.]+) \(equal\)", line).groups()
        assert p_ab == p_ba
    tuples = example_pair_lines(model, [("how do i cook rice", "how to cook rice"), ("buy a car", "sell a phone")])
    assert len(tuples) == 3 and all("(equal)" in line and "label" not in line for line in tuples[1:])
    with pytest.raises(TypeError, match=r"pairs\[0\] must be a \(text_a, text_b\) tuple"):
        example_pair_lines(model, ["just one text"])


# ---------------------------------------------------------------------------- CLI: evaluate / calibrate
def _check_png(path: Path) -> None:
    from matplotlib.image import imread

    assert path.is_file(), path
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200
    assert image[..., :3].std() > 0.05  # not a blank canvas


def _check_schema(payload: dict, model_names: list[str]) -> None:
    assert payload["schema_version"] == 1
    assert set(payload) >= {"created", "data", "models", "figures", "warnings", "versions"}
    assert set(payload["data"]) >= {"source", "split", "pairs", "positives", "calibration_split", "calibration_pairs", "split_file"}
    assert list(payload["models"]) == model_names
    for m in payload["models"].values():
        assert set(m) >= {"source", "metric", "calibrator", "max_probability", "pairs", "calibration", "retrieval", "symmetry", "timing_s"}
        assert set(m["calibrator"]) >= {"weight", "bias", "threshold", "metric", "n_fit", "fitted_on", "origin", "feature"}
        pairs = m["pairs"]
        for key in ("average_precision", "roc_auc", "threshold", "accuracy", "f1", "precision", "recall"):
            assert isinstance(pairs[key], float) and (0 <= pairs[key] <= 1 or key == "threshold"), key
        assert set(pairs["in_sample"]) >= {"accuracy", "accuracy_threshold", "f1", "f1_threshold", "note"}
        assert set(m["calibration"]) >= {"ece", "brier", "log_loss", "n_bins", "bins"}
        assert m["calibration"]["n_bins"] == 15 and len(m["calibration"]["bins"]["count"]) == 15
        assert set(m["retrieval"]) >= {"recall_at_1", "recall_at_5", "recall_at_10", "mrr_at_10", "map_at_r", "queries", "gallery"}
        assert m["symmetry"]["max_abs_difference"] == 0.0 and m["symmetry"]["bitwise_equal"] is True


def test_cli_evaluate_writes_report_metrics_and_valid_pngs(tiny_encoder, pair_files, tmp_path, capsys):
    pairs_file, split_file = pair_files
    model_dir = SimilarityModel(tiny_encoder).save(tmp_path / "model")
    baseline_dir = SimilarityModel(build_other_encoder()).save(tmp_path / "baseline")
    report = tmp_path / "report"
    args = ["evaluate", "--model", str(model_dir), "--data", str(pairs_file), *COLUMNS, "--split-file", str(split_file),
            "--split", "test", "--calibrate-on", "dev", "--baseline", str(baseline_dir), "--report", str(report), "--batch-size", "16"]
    assert main([*args, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    payload = json.loads((report / "metrics.json").read_text())
    assert printed == payload
    _check_schema(payload, ["model", "baseline"])
    assert payload["models"]["baseline"]["source"] == str(baseline_dir)
    assert payload["data"]["split"] == "test" and payload["data"]["pairs"] == 120 and payload["data"]["calibration_pairs"] == 120
    assert "split 'dev'" in payload["models"]["model"]["calibrator"]["fitted_on"]
    # The two models really differ (the baseline is another random encoder).
    aps = [m["pairs"]["average_precision"] for m in payload["models"].values()]
    assert aps[0] != aps[1]
    md = (report / "report.md").read_text()
    named = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert sorted(named) == sorted(FIGURES.values()) == sorted(payload["figures"].values())
    for name in named:
        _check_png(report / name)
    assert "## Closing note" in md and md.index("## Pair classification") < md.index("## Calibration") < md.index("## Closing note")
    closing = md[md.index("## Closing note"):]
    for m in payload["models"].values():
        assert f"AP {m['pairs']['average_precision']:.4f}" in closing and f"ECE {m['calibration']['ece']:.4f}" in closing
    assert "(equal)" in md and "in-sample" in md
    # Human-readable mode prints a table and the report path.
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "average precision" in out and str(report / "report.md") in out


def build_other_encoder():
    from tests.conftest import build_tiny_encoder

    return build_tiny_encoder(seed=1)


def test_cli_calibrate_stores_calibrator_then_evaluate_uses_it(tiny_encoder, pair_files, tmp_path, capsys):
    pairs_file, split_file = pair_files
    run_dir = tmp_path / "run"
    model_dir = SimilarityModel(tiny_encoder, "manhattan").save(run_dir / "model")
    (run_dir / "train_config.json").write_text("{}")
    weights = model_dir / "model.safetensors"
    before = weights.read_bytes()
    source = ["--data", str(pairs_file), *COLUMNS, "--split-file", str(split_file)]
    # --model may be the run folder; the calibrator lands in RUN_DIR/model.
    assert main(["calibrate", "--model", str(run_dir), *source, "--split", "dev", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == str(model_dir) and result["replaced"] is None
    saved = json.loads((model_dir / "metric_sim.json").read_text())
    assert saved["calibrator"] == result["calibrator"] and saved["metric"] == "manhattan"
    assert saved["encoder"]["pooling"] == "mean"  # the rest of the file is kept
    assert weights.read_bytes() == before  # only metric_sim.json was rewritten
    loaded = SimilarityModel.from_pretrained(run_dir)
    test, dev = _splits(pair_files)
    ref = Calibrator.fit(loaded.distance(dev.texts_a, dev.texts_b), dev.labels, "manhattan")
    assert loaded.calibrator.threshold == pytest.approx(ref.threshold)
    assert "split 'dev'" in loaded.calibrator.fitted_on
    # Without --calibrate-on, evaluate uses the stored calibrator.
    report = tmp_path / "report"
    assert main(["evaluate", "--model", str(run_dir), *source, "--split", "test", "--report", str(report), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    cal = payload["models"]["model"]["calibrator"]
    assert cal["origin"].startswith("stored with the model") and cal["threshold"] == pytest.approx(ref.threshold)
    assert payload["data"]["calibration_split"] is None


@pytest.mark.parametrize("feature", ["quadratic", "auto"])
def test_cli_calibrate_feature_stores_the_library_fit_and_loads_back(tiny_encoder, pair_files, tmp_path, capsys, feature):
    pairs_file, split_file = pair_files
    model_dir = SimilarityModel(tiny_encoder, "euclidean").save(tmp_path / "model")
    source = ["--data", str(pairs_file), *COLUMNS, "--split-file", str(split_file)]
    assert main(["calibrate", "--model", str(model_dir), *source, "--split", "dev", "--feature", feature, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    _, dev = _splits(pair_files)
    loaded = SimilarityModel.from_pretrained(model_dir)
    oracle = Calibrator.fit(loaded.distance(dev.texts_a, dev.texts_b), dev.labels, "euclidean", feature=feature)
    # The result may be a nested form (see Calibrator.fit); whichever it is, it is the library's fit.
    assert result["calibrator"]["feature"] == oracle.feature
    assert (loaded.calibrator.weight, loaded.calibrator.linear_weight, loaded.calibrator.bias) == pytest.approx(
        (oracle.weight, oracle.linear_weight, oracle.bias))
    assert main(["calibrate", "--model", str(model_dir), *source, "--split", "dev", "--feature", "cubic"]) == 2
    assert "invalid choice: 'cubic'" in capsys.readouterr().err
    if feature == "auto":  # the text output says which form was chosen, and why
        assert main(["calibrate", "--model", str(model_dir), *source, "--split", "dev", "--feature", "auto"]) == 0
        assert f"form {oracle.feature!r}: the lowest 5-fold held-out log-loss" in capsys.readouterr().out


@pytest.mark.parametrize("feature", ["linear", "quadratic", "auto"])
def test_cli_evaluate_calibration_feature_fits_model_and_baseline_in_that_form(tiny_encoder, pair_files, tmp_path, capsys, feature):
    pairs_file, split_file = pair_files
    model_dir = SimilarityModel(tiny_encoder).save(tmp_path / "model")
    baseline_dir = SimilarityModel(build_other_encoder()).save(tmp_path / "baseline")
    assert main(["evaluate", "--model", str(model_dir), "--data", str(pairs_file), *COLUMNS, "--split-file", str(split_file),
                 "--split", "test", "--calibrate-on", "dev", "--calibration-feature", feature, "--baseline", str(baseline_dir),
                 "--report", str(tmp_path / "report"), "--batch-size", "16", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    _, dev = _splits(pair_files)
    for name, folder in (("model", model_dir), ("baseline", baseline_dir)):
        loaded = SimilarityModel.from_pretrained(folder)
        oracle = Calibrator.fit(loaded.distance(dev.texts_a, dev.texts_b), dev.labels, "euclidean", feature=feature)
        saved = payload["models"][name]["calibrator"]
        assert saved["feature"] == oracle.feature and (feature != "linear" or oracle.feature == "linear")
        assert (saved["weight"], saved.get("linear_weight", 0.0), saved["bias"]) == pytest.approx(
            (oracle.weight, oracle.linear_weight, oracle.bias), rel=1e-9)
        assert loaded.calibrator is None  # fitted for the report only, never stored


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--split", "test", "--calibration-feature", "linear"], "--calibration-feature 'linear' is the form of a calibrator fitted"),
        (["--split", "test", "--calibrate-on", "test"], "is the scored --split"),
        (["--calibrate-on", "dev"], "needs --split"),
        (["--split", "test"], "no stored calibrator"),
        (["--split", "nope", "--calibrate-on", "dev"], "split must be one of ['dev', 'test']"),
    ],
)
def test_cli_evaluate_bad_arguments_exit_2(tiny_encoder, pair_files, tmp_path, capsys, extra, message):
    pairs_file, split_file = pair_files
    model_dir = SimilarityModel(tiny_encoder).save(tmp_path / "model")
    code = main(["evaluate", "--model", str(model_dir), "--data", str(pairs_file), *COLUMNS, "--split-file", str(split_file),
                 *extra, "--report", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "r" / "metrics.json").exists()


def test_cli_split_needs_split_file_and_calibrate_refuses_default(pair_files, tmp_path, capsys):
    pairs_file, _ = pair_files
    assert main(["calibrate", "--model", str(tmp_path), "--data", str(pairs_file), *COLUMNS, "--split", "dev"]) == 2
    assert "--split 'dev' needs --split-file" in capsys.readouterr().err
    assert main(["calibrate", "--model", "default", "--data", str(pairs_file), *COLUMNS]) == 2
    assert "'default' is the packaged encoder" in capsys.readouterr().err
