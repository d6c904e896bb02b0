"""The ONNX benchmark's quality figures: a dev-fitted calibrator scored on test, per backend.

Oracles: scikit-learn (average precision and ROC-AUC of -distance, an unregularised logistic
regression on d² for the calibrator), a hand-binned ECE and a brute-force best threshold; end
to end, the same figures recomputed from the exported tiny model's PyTorch vectors.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score

from metric_sim import Encoder, SimilarityModel, expected_calibration_error, paired_distances_numpy
from metric_sim.metrics import ECE_BINS
from tests.conftest import DEMO_FILE, build_tiny_encoder

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import onnx_speed  # noqa: E402


def _split(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Similar pairs nearer than dissimilar ones, overlapping (no perfect separation)."""
    y = (rng.random(n) < 0.4).astype(np.int64)
    d = np.where(y == 1, rng.normal(1.0, 0.4, n), rng.normal(1.8, 0.5, n))
    return np.abs(d), y


def _oracle(dev_d: np.ndarray, dev_y: np.ndarray, test_d: np.ndarray, test_y: np.ndarray) -> dict[str, float]:
    lr = LogisticRegression(C=np.inf, tol=1e-10, max_iter=10000).fit((dev_d**2).reshape(-1, 1), dev_y)
    w, b = float(lr.coef_[0, 0]), float(lr.intercept_[0])
    p = 1.0 / (1.0 + np.exp(-(w * test_d**2 + b)))
    bins = np.clip(np.ceil(p * ECE_BINS).astype(int) - 1, 0, ECE_BINS - 1)  # (lo, hi], the first also holds 0
    ece = sum(np.sum(bins == k) / p.size * abs(test_y[bins == k].mean() - p[bins == k].mean())
              for k in range(ECE_BINS) if np.any(bins == k))
    cuts = np.concatenate([[-np.inf], np.unique(test_d)])
    best = max(np.mean((test_d <= t) == test_y) for t in cuts)
    return {"average_precision": average_precision_score(test_y, -test_d), "roc_auc": roc_auc_score(test_y, -test_d),
            "ece": ece, "best_accuracy_in_sample": best, "threshold": float(np.sqrt(-b / w)), "probabilities": p}


def test_quality_figures_match_sklearn_and_hand_computed():
    rng = np.random.default_rng(0)
    (dev_d, dev_y), (test_d, test_y) = _split(rng, 300), _split(rng, 400)
    got = onnx_speed.quality_figures(dev_d, dev_y, test_d, test_y, "euclidean")
    want = _oracle(dev_d, dev_y, test_d, test_y)
    assert got["average_precision"] == pytest.approx(want["average_precision"], abs=1e-12)
    assert got["roc_auc"] == pytest.approx(want["roc_auc"], abs=1e-12)
    assert got["best_accuracy_in_sample"] == pytest.approx(want["best_accuracy_in_sample"], abs=1e-12)
    assert got["threshold"] == pytest.approx(want["threshold"], rel=1e-5)
    assert got["ece"] == pytest.approx(want["ece"], abs=1e-5)
    assert got["ece"] == pytest.approx(expected_calibration_error(test_y, want["probabilities"]), abs=1e-5)
    # The decision is d <= the dev-fitted threshold, scored on test.
    assert got["accuracy"] == np.mean((test_d <= got["threshold"]) == test_y)
    assert got["calibrator"]["fitted_on"] == "qqp:dev" and got["calibrator"]["n_fit"] == dev_d.size
    # Fitted on dev, not on test: the test-fitted threshold is another one.
    assert got["threshold"] != pytest.approx(_oracle(test_d, test_y, test_d, test_y)["threshold"], rel=1e-3)


def test_score_backends_reports_the_int8_changes():
    rng = np.random.default_rng(1)
    (dev_d, dev_y), (test_d, test_y) = _split(rng, 300), _split(rng, 300)
    noise = {"pytorch": 0.0, "pytorch_bf16": 0.01, "onnx_fp32": 1e-7, "onnx_int8": 0.08}
    distances = {name: {"dev": np.abs(dev_d + s * rng.standard_normal(dev_d.size)),
                        "test": np.abs(test_d + s * rng.standard_normal(test_d.size))} for name, s in noise.items()}
    scored = onnx_speed.score_backends(distances, {"dev": dev_y, "test": test_y}, "manhattan")
    figures = scored["backends"]
    for name, d in distances.items():
        assert figures[name]["average_precision"] == pytest.approx(average_precision_score(test_y, -d["test"]), abs=1e-12)
        assert figures[name] == onnx_speed.quality_figures(d["dev"], dev_y, d["test"], test_y, "manhattan")
    changes = scored["changes"]
    assert set(changes) == {"int8_minus_fp32", "int8_minus_pytorch", "bf16_minus_pytorch"}
    for name, backend, reference in (("int8_minus_fp32", "onnx_int8", "onnx_fp32"),
                                     ("int8_minus_pytorch", "onnx_int8", "pytorch"),
                                     ("bf16_minus_pytorch", "pytorch_bf16", "pytorch")):
        for key in ("average_precision", "ece"):
            assert changes[name][key] == figures[backend][key] - figures[reference][key]
    assert changes["int8_minus_fp32"]["average_precision"] != 0.0  # the noise changed the ranking
    assert onnx_speed.quality_changes({"pytorch": figures["pytorch"]}) == {}


# ----------------------------------------------------------------------------- end to end, tiny model
def _questions() -> list[str]:
    lines = DEMO_FILE.read_text(encoding="utf-8").splitlines()[1:]
    fields = [f for line in lines for f in line.split("\t") if len(f) > 15 and not f.replace(".", "").isdigit()]
    return list(dict.fromkeys(fields))


def _fake_split(questions: list[str], offset: int, n: int) -> SimpleNamespace:
    """Similar: a question and itself with a word appended; dissimilar: two other questions; every
    fourth pair is two other questions labelled similar, so the classes overlap as real pairs do."""
    a, b, y = [], [], []
    for i in range(n):
        q = questions[offset + i]
        if i % 2 == 0:
            a.append(q), b.append(q + " please"), y.append(1)
        else:
            a.append(q), b.append(questions[offset + i + 7]), y.append(int(i % 4 == 3))
    return SimpleNamespace(texts_a=a, texts_b=b, labels=np.array(y))


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("onnx_bench")
    SimilarityModel(build_tiny_encoder(normalize=True), "euclidean").save(root / "run" / "model")
    return root / "run"


def test_main_end_to_end_on_a_tiny_exported_run(run_folder, tmp_path, monkeypatch, capsys):
    pytest.importorskip("onnxruntime", reason="pip install 'metric-sim[onnx]'")
    pytest.importorskip("onnxscript", reason="pip install 'metric-sim[onnx]'")
    questions = _questions()
    # dev and test share a text, which must be encoded once
    sets = {"dev": _fake_split(questions, 0, 24), "test": _fake_split(questions, 20, 24)}
    calls = []

    def fake_load_preset(name, split=None, on_bad_row="error"):
        calls.append((name, split, on_bad_row))
        return sets[split]

    monkeypatch.setattr(onnx_speed, "load_preset", fake_load_preset)
    out, threads = tmp_path / "result.json", torch.get_num_threads()
    try:
        assert onnx_speed.main(["--model", str(run_folder), "--export", str(tmp_path / "export"), "--skip-speed",
                                "--skip-parity", "--threads", "1", "--limit", "20", "--json", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    assert sorted(calls) == [("qqp", "dev", "skip"), ("qqp", "test", "skip")]
    result = json.loads(out.read_text())
    limited = {s: (v.texts_a[:20], v.texts_b[:20], v.labels[:20]) for s, v in sets.items()}
    texts = {t for a, b, _ in limited.values() for t in (*a, *b)}
    assert result["pairs"] == {"dev": 20, "test": 20} and result["texts"] == len(texts)
    assert "speed_sentences_per_s" not in result and "parity" not in result
    assert set(result["onnx_bytes"]) == {"model.onnx", "model_int8.onnx"}
    assert set(result["quality"]) == {"pytorch", "pytorch_bf16", "onnx_fp32", "onnx_int8"}
    for figures in result["quality"].values():
        assert {"average_precision", "roc_auc", "ece", "accuracy", "best_accuracy_in_sample", "threshold",
                "calibrator", "max_abs_diff_vs_pytorch"} <= set(figures)
    q, changes = result["quality"], result["quality_changes"]
    assert 0.5 < q["pytorch"]["average_precision"] < 1.0 and q["pytorch"]["ece"] > 0.01  # not a degenerate case
    assert changes["int8_minus_fp32"]["ece"] == pytest.approx(q["onnx_int8"]["ece"] - q["onnx_fp32"]["ece"], abs=1e-15)
    assert changes["int8_minus_pytorch"]["average_precision"] == pytest.approx(
        q["onnx_int8"]["average_precision"] - q["pytorch"]["average_precision"], abs=1e-15)
    assert q["pytorch"]["max_abs_diff_vs_pytorch"] == 0.0 and q["onnx_fp32"]["max_abs_diff_vs_pytorch"] <= 1e-4
    assert 0.0 < q["pytorch_bf16"]["max_abs_diff_vs_pytorch"] < 0.05  # bfloat16 products: close, not equal
    assert changes["bf16_minus_pytorch"]["average_precision"] == pytest.approx(
        q["pytorch_bf16"]["average_precision"] - q["pytorch"]["average_precision"], abs=1e-15)

    # Oracle: the PyTorch row recomputed from the exported encoder, each split's pairs encoded on their own.
    encoder = Encoder.from_pretrained(tmp_path / "export")
    d = {s: paired_distances_numpy(encoder.encode(a), encoder.encode(b), "euclidean") for s, (a, b, _) in limited.items()}
    want = onnx_speed.quality_figures(d["dev"], limited["dev"][2], d["test"], limited["test"][2], "euclidean")
    for key in ("average_precision", "roc_auc", "ece", "accuracy", "threshold"):
        assert q["pytorch"][key] == pytest.approx(want[key], abs=1e-5), key
    printed = capsys.readouterr().out
    assert "| pytorch | – | – | " in printed and "int8 minus fp32: AP " in printed

    # The card says the fused fp32 graph needs ONNX Runtime.
    fusion = json.loads((tmp_path / "export" / "metric_sim.json").read_text())["export"]["onnx"]["optimizations"]["fp32"]
    card = (tmp_path / "export" / "README.md").read_text()
    if fusion["applied"]:
        assert "nodes are `com.microsoft` contrib ops, so it runs in ONNX Runtime only, not in other ONNX runtimes" in card
        assert ", ".join(fusion["fused_ops"]) in card and "Attention" in fusion["fused_ops"]
    else:
        assert "com.microsoft" not in card
