"""Export bundle on the tiny model: every runtime gives the same vectors and the same decisions.

Oracles: the PyTorch ``Encoder.encode`` output of the model that was exported, and
the calibrator it was saved with. The usage snippets of the model card are executed
as written (only the folder and the texts are substituted), so the card cannot drift
from what the runtimes do.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import torch

from metric_sim import Calibrator, Encoder, OnnxModelError, SimilarityModel
from metric_sim.cli import main
from metric_sim.export import ExportError, export_model, train_config_digest
from tests.conftest import DEMO_FILE, REPO_ROOT, build_tiny_encoder

pytest.importorskip("onnxruntime", reason="pip install 'metric-sim[onnx]'")
pytest.importorskip("onnxscript", reason="pip install 'metric-sim[onnx]'")


def _demo_texts() -> list[str]:
    lines = DEMO_FILE.read_text(encoding="utf-8").splitlines()[1:]
    texts = []
    for line in lines[:12]:
        fields = line.split("\t")
        texts += [f for f in fields if len(f) > 12]
    return list(dict.fromkeys(texts))


# Demo questions (in the tiny vocabulary), a one-token text, and one longer than max_length (32).
TEXTS = _demo_texts()[:14] + ["a", " ".join(["how do i learn python"] * 10)]

TRAIN_CONFIG = {
    "preset": "qqp",
    "train_split": "train",
    "dev_split": "dev",
    "model": "default",
    "metric": "manhattan",
    "loss": "contrastive",
    "loss_params": {"pos_margin": 0.0, "neg_margin": 7.5},
    "batch_size": 32,
    "learning_rate": 2e-5,
    "seed": 42,
    "freeze_encoder": False,
    "run": {
        "steps": 510,
        "epochs": 1.0,
        "wall_time_s": 612.3,
        "train_pairs": 16327,
        "dev_pairs": 3572,
        "hardware": {"machine": "x86_64", "cpu_count": 2, "device": "cpu"},
        "loss_params_resolved": {"pos_margin": 0.0, "neg_margin": 7.5},
    },
}
METRICS = {
    "metric": "manhattan",
    "dev": {"average_precision": 0.8123, "roc_auc": 0.9012, "threshold": 1.5, "pairs": 3572},
    "zero_shot_dev": {"average_precision": 0.7681, "roc_auc": 0.8699, "pairs": 3572},
}
CALIBRATOR = Calibrator(weight=-2.0, bias=3.0, metric="manhattan", n_fit=3572, fitted_on="dev", feature="linear")


def _make_run(folder: Path, encoder: Encoder) -> Path:
    folder.mkdir(parents=True)
    SimilarityModel(encoder, "manhattan", CALIBRATOR).save(folder / "model")
    (folder / "train_config.json").write_text(json.dumps(TRAIN_CONFIG))
    (folder / "metrics.json").write_text(json.dumps(METRICS))
    return folder


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A run with a normalising tiny encoder, exported once with ONNX fp32 + int8."""
    root = tmp_path_factory.mktemp("export")
    encoder = build_tiny_encoder(normalize=True)
    run = _make_run(root / "run", encoder)
    out = export_model(run, root / "bundle", onnx=True, quantize="int8")
    return {"encoder": encoder.eval(), "run": run, "out": out, "reference": encoder.encode(TEXTS)}


def _snippet(card: str, runtime: str, folder: Path, texts: list[str]) -> str:
    block = card.split(f"### {runtime}\n", 1)[1].split("```python\n", 1)[1].split("\n```", 1)[0]
    block = re.sub(r'^model_dir = ".*"$', f"model_dir = {str(folder)!r}", block, count=1, flags=re.M)
    return re.sub(r"^texts = \[.*\]$", f"texts = {texts!r}", block, count=1, flags=re.M)


def _run_snippet(card: str, runtime: str, folder: Path, texts: list[str]) -> dict:
    namespace: dict = {}
    exec(compile(_snippet(card, runtime, folder, texts), f"<{runtime} snippet>", "exec"), namespace)  # noqa: S102
    return namespace


# ---------------------------------------------------------------------------- layout
def test_layout_files_and_metadata(exported):
    out = exported["out"]
    for name in ("config.json", "model.safetensors", "tokenizer.json", "modules.json", "sentence_bert_config.json",
                 "config_sentence_transformers.json", "1_Pooling/config.json", "README.md", "metric_sim.json",
                 "onnx/model.onnx", "onnx/model_int8.onnx"):
        assert (out / name).is_file(), name
    modules = json.loads((out / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[1] for m in modules] == ["Transformer", "Pooling", "Normalize"]
    assert (out / modules[2]["path"]).is_dir()
    pooling = json.loads((out / "1_Pooling/config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"] and not pooling["pooling_mode_cls_token"]
    assert json.loads((out / "sentence_bert_config.json").read_text())["max_seq_length"] == 32
    assert json.loads((out / "config_sentence_transformers.json").read_text())["similarity_fn_name"] == "manhattan"
    meta = json.loads((out / "metric_sim.json").read_text())
    assert meta["encoder"] == {"kind": "transformers", "pooling": "mean", "normalize": True, "max_length": 32}
    assert meta["metric"] == "manhattan"
    assert {"metric_sim", "torch", "transformers", "pytorch_metric_learning", "onnxruntime"} <= set(meta["versions"])
    assert meta["versions"]["torch"] == version("torch") and meta["versions"]["transformers"] == version("transformers")
    # Oracle for the digest: sha256 of the canonical JSON, written out by hand here.
    canonical = json.dumps({k: v for k, v in TRAIN_CONFIG.items() if k != "run"}, sort_keys=True, separators=(",", ":"))
    assert meta["train_config_sha256"] == hashlib.sha256(canonical.encode()).hexdigest()
    assert meta["export"]["onnx"]["inputs"] == ["input_ids", "attention_mask"]
    assert sorted(meta["export"]["onnx"]["optimizations"]) == ["fp32", "int8"]  # details: test_onnx_fusion.py
    assert sorted(p.name for p in (out / "onnx").iterdir()) == ["model.onnx", "model_int8.onnx"]
    # The staging folder was renamed into place: nothing else is left next to it.
    assert sorted(p.name for p in out.parent.iterdir()) == ["bundle", "run"]


def test_digest_ignores_run_results_but_not_settings():
    changed_run = {**TRAIN_CONFIG, "run": {"steps": 1}}
    changed_lr = {**TRAIN_CONFIG, "learning_rate": 3e-5}
    assert train_config_digest(changed_run) == train_config_digest(TRAIN_CONFIG)
    assert train_config_digest(changed_lr) != train_config_digest(TRAIN_CONFIG)
    assert train_config_digest(None) is None


def test_no_normalize_module_when_not_normalising(tmp_path):
    encoder = build_tiny_encoder(pooling="cls", normalize=False)
    out = export_model(encoder.save(tmp_path / "model"), tmp_path / "bundle")
    modules = json.loads((out / "modules.json").read_text())
    assert [m["path"] for m in modules] == ["", "1_Pooling"]
    assert not list(out.glob("*_Normalize"))
    assert not (out / "onnx").exists()
    # Bare model folder: no calibrator, Euclidean, and the card says the training facts are unknown.
    meta = json.loads((out / "metric_sim.json").read_text())
    assert meta["calibrator"] is None and meta["metric"] == "euclidean" and meta["train_config_sha256"] is None
    card = (out / "README.md").read_text()
    assert "training configuration, data, steps, hardware and evaluation figures are **unknown**" in card
    assert "calibrator: none" in card
    assert "no metric-sim training run came with it." in card and "fine-tuned" not in card
    assert "base model: unknown (exported from a model folder named 'model')" in card
    assert str(tmp_path) not in card and str(tmp_path) not in json.dumps(meta)  # no local paths leak
    with pytest.raises(OnnxModelError, match=r"no ONNX model at .*model.onnx: export with `metric-sim export \.\.\. --onnx`"):
        SimilarityModel.from_pretrained(out, backend="onnx")


# ---------------------------------------------------------------------------- parity
def test_metric_sim_loads_export_exactly(exported):
    out, original = exported["out"], exported["encoder"]
    loaded = Encoder.from_pretrained(out)
    assert loaded.fingerprint() == original.fingerprint()
    np.testing.assert_array_equal(loaded.encode(TEXTS), exported["reference"])


def test_sentence_transformers_parity(exported):
    st = pytest.importorskip("sentence_transformers")
    model = st.SentenceTransformer(str(exported["out"]), device="cpu")
    assert model.max_seq_length == 32
    assert model.similarity_fn_name == "manhattan"
    got = model.encode(TEXTS, batch_size=4)
    assert np.max(np.abs(got - exported["reference"])) <= 1e-5
    # similarity() is minus the Manhattan distance that metric-sim computes.
    scores = model.similarity(got[:3], got[:3]).numpy()
    expected = np.abs(exported["reference"][:3, None] - exported["reference"][None, :3]).sum(-1)
    np.testing.assert_allclose(-scores, expected, atol=1e-5)
    namespace = _run_snippet((exported["out"] / "README.md").read_text(), "sentence-transformers", exported["out"], TEXTS)
    assert np.max(np.abs(namespace["embeddings"] - exported["reference"])) <= 1e-5
    assert np.max(np.abs(-namespace["scores"].numpy() - np.abs(got[:, None] - got[None]).sum(-1))) <= 1e-4


@pytest.mark.parametrize("pooling", ["mean", "cls", "max"])
def test_sentence_transformers_and_automodel_parity_per_pooling(tmp_path, pooling):
    st = pytest.importorskip("sentence_transformers")
    encoder = build_tiny_encoder(pooling=pooling, normalize=pooling != "mean", seed=1)
    out = export_model(encoder.save(tmp_path / "model"), tmp_path / "bundle")
    reference = encoder.encode(TEXTS)
    got = st.SentenceTransformer(str(out), device="cpu").encode(TEXTS, batch_size=5)
    assert np.max(np.abs(got - reference)) <= 1e-5
    namespace = _run_snippet((out / "README.md").read_text(), "transformers", out, TEXTS)
    assert np.max(np.abs(namespace["emb"].numpy() - reference)) <= 1e-5


def test_automodel_with_documented_pooling(exported):
    out = exported["out"]
    namespace = _run_snippet((out / "README.md").read_text(), "transformers", out, TEXTS)
    emb = namespace["emb"].numpy()
    assert np.max(np.abs(emb - exported["reference"])) <= 1e-5
    expected = np.abs(exported["reference"][:, None] - exported["reference"][None]).sum(-1)
    np.testing.assert_allclose(namespace["distances"].numpy(), expected, atol=1e-4)


def test_onnx_fp32_parity_and_dynamic_axes(exported):
    from metric_sim import OnnxEncoder

    onnx_encoder = OnnxEncoder.from_pretrained(exported["out"])
    assert onnx_encoder.embedding_dim == exported["encoder"].embedding_dim
    reference = exported["reference"]
    # Batches of 1, 3 and all texts: the batch and sequence axes differ from the export sample's.
    for batch_size in (1, 3, len(TEXTS)):
        got = onnx_encoder.encode(TEXTS, batch_size=batch_size)
        assert np.max(np.abs(got - reference)) <= 1e-4, batch_size
    np.testing.assert_allclose(np.linalg.norm(reference, axis=1), 1.0, atol=1e-5)  # normalisation is in the graph
    namespace = _run_snippet((exported["out"] / "README.md").read_text(), "onnxruntime", exported["out"], TEXTS)
    assert np.max(np.abs(namespace["emb"] - reference)) <= 1e-4


def test_onnx_int8_is_close_and_smaller(exported):
    from metric_sim import OnnxEncoder

    out = exported["out"]
    assert (out / "onnx/model_int8.onnx").stat().st_size < (out / "onnx/model.onnx").stat().st_size
    got = OnnxEncoder.from_pretrained(out, quantized=True).encode(TEXTS)
    diff = np.max(np.abs(got - exported["reference"]))
    assert 0 < diff < 0.05  # quantised, so not bit-equal, but close
    meta = json.loads((out / "metric_sim.json").read_text())["export"]["onnx"]["files"]
    assert meta["fp32"]["max_abs_diff_vs_torch"] <= 1e-4 and meta["int8"]["max_abs_diff_vs_torch"] > 0


# ---------------------------------------------------------------------------- calibrator round trip
@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_calibrator_round_trip(exported, backend):
    model = SimilarityModel.from_pretrained(exported["out"], backend=backend)
    assert model.calibrator == CALIBRATOR
    assert model.metric.value == "manhattan" and model.threshold == 1.5
    original = SimilarityModel(exported["encoder"], "manhattan", CALIBRATOR)
    a, b = TEXTS[:6], TEXTS[6:12]
    tolerance = 0 if backend == "torch" else 1e-4
    np.testing.assert_allclose(model.predict_proba(a, b), original.predict_proba(a, b), atol=tolerance)
    np.testing.assert_array_equal(model.predict(a, b), original.predict(a, b))


def test_metric_sim_snippet_runs(exported):
    namespace = _run_snippet((exported["out"] / "README.md").read_text(), "metric-sim", exported["out"], TEXTS)
    original = SimilarityModel(exported["encoder"], "manhattan", CALIBRATOR)
    np.testing.assert_array_equal(namespace["probability"], original.predict_proba(TEXTS[:1], TEXTS[1:2]))


def test_onnx_backend_runs_without_torch(exported, tmp_path):
    """The ONNX path in a fresh interpreter where ``import torch`` fails, as if torch were not installed."""
    original = SimilarityModel(exported["encoder"], "manhattan", CALIBRATOR)
    a, b = TEXTS[:6], TEXTS[6:12]
    np.save(tmp_path / "expected.npy", original.predict_proba(a, b))
    script = f"""
import sys
sys.modules["torch"] = None  # import torch now raises ImportError; find_spec says it is absent
import numpy as np
from metric_sim import SimilarityModel
model = SimilarityModel.from_pretrained({str(exported["out"])!r}, backend="onnx")
got = model.predict_proba({a!r}, {b!r})
np.testing.assert_allclose(got, np.load({str(tmp_path / "expected.npy")!r}), atol=1e-4)
assert sys.modules["torch"] is None, "torch was imported"
print("ok", type(model.encoder).__name__)
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "ok OnnxEncoder"


# ---------------------------------------------------------------------------- model card
def test_model_card_states_the_run(exported):
    card = (exported["out"] / "README.md").read_text()
    for fact in (
        "A text encoder fine-tuned with [metric-sim]",
        "plus a logistic calibrator on that distance.",
        "base model: all-MiniLM-L6-v2",
        "data: qqp (train_split=train, dev_split=dev); training pairs: 16,327; dev pairs: 3,572",
        "loss: contrastive; margins: pos_margin: 0.0000, neg_margin: 7.5000; metric: manhattan",
        "steps: 510; epochs: 1.0000; batch size: 32; learning rate: 2e-05; seed: 42",
        "hardware: machine: x86_64, cpu_count: 2, device: cpu",
        "wall time: 612.3000 s",
        "sigmoid(-2 * d + 3), fitted on dev (3,572 pairs)",
        "decision threshold: similar when d <= 1.5**",
        "| dev | 0.8123 | 0.9012 | 1.5000 | 3,572 |",
        "| zero_shot_dev | 0.7681 | 0.8699 | unknown | 3,572 |",
    ):
        assert fact in card, fact
    for runtime in ("metric-sim", "sentence-transformers", "transformers", "onnxruntime"):
        assert f"### {runtime}\n" in card
    digest = json.loads((exported["out"] / "metric_sim.json").read_text())["train_config_sha256"]
    assert digest in card


# ---------------------------------------------------------------------------- projection head (frozen mode)
def test_projection_head_is_exported(tmp_path):
    import inspect

    if "projection" not in inspect.signature(Encoder.__init__).parameters:
        pytest.skip("this Encoder has no projection head support yet")
    st = pytest.importorskip("sentence_transformers")
    base = build_tiny_encoder(normalize=True)
    torch.manual_seed(3)
    encoder = Encoder(base.model, base.tokenizer, pooling="mean", normalize=True, max_length=32,
                      projection=torch.nn.Linear(32, 8))
    out = export_model(encoder.save(tmp_path / "model"), tmp_path / "bundle", onnx=True)
    reference = encoder.encode(TEXTS)
    assert reference.shape[1] == 8
    modules = [m["path"] for m in json.loads((out / "modules.json").read_text())]
    assert modules == ["", "1_Pooling", "2_Dense", "3_Normalize"]
    assert np.max(np.abs(st.SentenceTransformer(str(out), device="cpu").encode(TEXTS) - reference)) <= 1e-5
    namespace = _run_snippet((out / "README.md").read_text(), "transformers", out, TEXTS)
    assert np.max(np.abs(namespace["emb"].numpy() - reference)) <= 1e-5
    from metric_sim import OnnxEncoder

    assert np.max(np.abs(OnnxEncoder.from_pretrained(out).encode(TEXTS) - reference)) <= 1e-4


# ---------------------------------------------------------------------------- errors, atomicity, CLI
def test_refuses_existing_folder_and_overwrites_when_asked(exported, tmp_path):
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ExportError, match=r"--out .*bundle' already exists and is not empty"):
        export_model(exported["run"], out)
    assert (out / "keep.txt").is_file()
    export_model(exported["run"], out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "modules.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_failure_leaves_nothing_behind(exported, tmp_path, monkeypatch):
    import metric_sim.export.onnx as export_module  # write_onnx calls export_onnx from there

    def broken(*args, **kwargs):
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr(export_module, "export_onnx", broken)
    with pytest.raises(RuntimeError, match="exporter crashed"):
        export_model(exported["run"], tmp_path / "bundle", onnx=True)
    assert list(tmp_path.iterdir()) == []


def test_onnx_mismatch_is_refused(exported, tmp_path, monkeypatch):
    import metric_sim.export.onnx as export_module  # write_onnx calls export_onnx from there

    real = export_module.export_onnx

    def export_other_weights(encoder, path, **kwargs):
        changed = copy.deepcopy(encoder)
        with torch.no_grad():
            changed.model.embeddings.word_embeddings.weight.mul_(1.5)
        return real(changed, path, **kwargs)

    monkeypatch.setattr(export_module, "export_onnx", export_other_weights)
    with pytest.raises(ExportError, match="the ONNX graph differs from PyTorch"):
        export_model(exported["run"], tmp_path / "bundle", onnx=True)
    assert list(tmp_path.iterdir()) == []


def test_only_text_encoders_are_exported(exported, tmp_path, monkeypatch):
    import metric_sim.export.bundle as bundle_module

    onnx_model = SimilarityModel.from_pretrained(exported["out"], backend="onnx")

    class LoadsTheOnnxModel:
        @staticmethod
        def from_pretrained(path, **kwargs):
            return onnx_model

    monkeypatch.setattr(bundle_module, "SimilarityModel", LoadsTheOnnxModel)
    with pytest.raises(ExportError, match="holds an encoder of kind 'onnx'; only text encoders of kind 'transformers'"):
        export_model(exported["run"], tmp_path / "bundle")
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments(exported, tmp_path):
    with pytest.raises(ExportError, match="quantize must be one of \\['int8'\\] or None, got 'int4'"):
        export_model(exported["run"], tmp_path / "x", quantize="int4")
    with pytest.raises(ExportError, match="is not a folder"):
        export_model(tmp_path / "missing", tmp_path / "x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportError, match="neither a run folder"):
        export_model(tmp_path / "empty", tmp_path / "x")
    with pytest.raises(ExportError, match="must not be inside"):
        export_model(exported["run"], exported["run"] / "model" / "x")
    with pytest.raises(ExportError, match="opset must be an integer >= 17 .*, got 13"):
        export_model(exported["run"], tmp_path / "x", onnx=True, opset=13)
    with pytest.raises(ValueError, match="backend must be one of \\['torch', 'onnx'\\], got 'tf'"):
        SimilarityModel.from_pretrained(exported["out"], backend="tf")


def test_cli_export(exported, tmp_path, capsys):
    out = tmp_path / "cli_bundle"
    assert main(["export", str(exported["run"]), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"-> {out}" in printed and "threshold: 1.5" in printed
    assert (out / "modules.json").is_file() and not (out / "onnx").exists()
    assert main(["export", str(exported["run"]), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nope"), "--out", str(tmp_path / "y")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main(["export", str(exported["run"]), "--out", str(tmp_path / "z"), "--quantize", "int4"]) == 2


def test_public_api_is_lazy_and_complete():
    """Every public name resolves; importing the package and the calibrator does not import torch."""
    import metric_sim

    assert sorted(metric_sim.__all__) == sorted([*metric_sim._EXPORTS, "__version__"])
    for name in metric_sim.__all__:
        assert getattr(metric_sim, name) is not None, name
    script = (
        "import sys; import metric_sim; from metric_sim import Calibrator, Metric, SimilarityModel, OnnxEncoder; "
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
