"""ONNX Runtime fusions in the text export, on the tiny random BERT.

Oracles: PyTorch ``Encoder.encode`` of the exported model (within the export's own
tolerance), the op types counted in the written graph files, and an int8 graph
quantised by hand from a fresh unfused export (bit-for-bit equal vectors).
"""

from __future__ import annotations

import copy
import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from metric_sim.encoders.onnx import OnnxEncoder
from metric_sim.errors import ExportError
from tests.conftest import build_tiny_encoder

onnx = pytest.importorskip("onnx", reason="pip install 'metric-sim[onnx]'")
pytest.importorskip("onnxruntime", reason="pip install 'metric-sim[onnx]'")
pytest.importorskip("onnxscript", reason="pip install 'metric-sim[onnx]'")

import metric_sim.export.onnx as export_module  # noqa: E402  (needs the optional packages above)

try:
    from onnxscript.rewriter.ort_fusions import optimize_for_ort  # noqa: F401
except ImportError:
    FUSION_SUPPORTED = False
else:
    FUSION_SUPPORTED = True
needs_fusion = pytest.mark.skipif(not FUSION_SUPPORTED, reason="this onnxscript has no ort_fusions.optimize_for_ort")

LAYERS = 2  # build_tiny_encoder: 2 layers, 2 heads, hidden 32, max_length 32
TOL = export_module.ONNX_TOLERANCE
# One token up to past max_length (truncated), so batches mix heavy padding and none.
TEXTS = [
    "a",
    "why",
    "how do i learn python",
    "what is the best way to learn python code",
    "how can i save money when i buy a car and a phone",
    "which city is the capital of the country with the best population",
    " ".join(["how do i cook rice and bake bread"] * 6),
]


def _encoder(*, token_type_ids: bool = False):
    """The tiny BERT with random biases and LayerNorm weights: freshly initialised ones are all
    0 or 1, so the exporter shares one initializer among them, which no trained model does."""
    encoder = build_tiny_encoder(normalize=True)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, parameter in encoder.model.named_parameters():
            if name.endswith("bias") or "LayerNorm.weight" in name:
                parameter.add_(0.1 * torch.randn_like(parameter))
    if token_type_ids:  # as BERT's own tokenizer (all-MiniLM-L6-v2's included) does
        encoder.tokenizer.model_input_names = ["input_ids", "token_type_ids", "attention_mask"]
    return encoder.eval()


def _ops(path: Path) -> Counter:
    return Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def _contrib_ops(path: Path) -> dict[str, int]:
    return dict(sorted(Counter(n.op_type for n in onnx.load(str(path)).graph.node if n.domain == "com.microsoft").items()))


def _write(encoder, folder: Path, quantize: str | None = None) -> dict:
    meta = export_module.write_onnx(encoder, folder, opset=export_module.DEFAULT_OPSET, quantize=quantize)
    json.dumps(meta)  # goes into metric_sim.json as is
    return meta


@pytest.fixture(scope="module")
def fused(tmp_path_factory):
    encoder = _encoder()
    folder = tmp_path_factory.mktemp("fused")
    meta = _write(encoder, folder, quantize="int8")
    return {"encoder": encoder, "folder": folder, "meta": meta, "reference": encoder.encode(TEXTS)}


def _assert_parity(encoder, model_file: Path, reference: np.ndarray, tol: float = TOL) -> None:
    runner = OnnxEncoder.from_file(model_file, encoder.tokenizer, encoder.config_dict())
    for batch_size in (1, 3, len(TEXTS)):  # sorted batches: from no padding to most rows padded
        got = runner.encode(TEXTS, batch_size=batch_size)
        assert np.max(np.abs(got - reference)) <= tol, batch_size
    # Every row padded to max_length in one batch, fed to the session directly.
    batch = encoder.tokenizer(TEXTS, padding="max_length", truncation=True, max_length=encoder.max_length, return_tensors="np")
    got = runner.session.run(None, {name: batch[name].astype(np.int64) for name in runner.input_names})[0]
    assert np.max(np.abs(got - reference)) <= tol


@needs_fusion
def test_fp32_graph_holds_the_fused_ops(fused):
    path = fused["folder"] / "onnx/model.onnx"
    ops = _ops(path)
    assert ops["Attention"] == LAYERS and ops["SkipLayerNormalization"] == 2 * LAYERS and ops["BiasGelu"] == LAYERS
    assert ops["Softmax"] == 0 and ops["Erf"] == 0 and ops["LayerNormalization"] == 1  # only the embeddings' is left
    heads = {a.i for n in onnx.load(str(path)).graph.node if n.op_type == "Attention" for a in n.attribute if a.name == "num_heads"}
    assert heads == {fused["encoder"].model.config.num_attention_heads}
    record = fused["meta"]["optimizations"]
    assert record["fp32"] == {"applied": True, "tool": export_module.FUSION_TOOL, "fused_ops": _contrib_ops(path)}
    assert record["int8"]["applied"] is False and "unfused" in record["int8"]["reason"]
    assert sorted(p.name for p in (fused["folder"] / "onnx").iterdir()) == ["model.onnx", "model_int8.onnx"]
    for name in ("model.onnx", "model_int8.onnx"):  # the exporter's stack traces are not shipped
        assert not any(n.metadata_props for n in onnx.load(str(fused["folder"] / "onnx" / name)).graph.node), name


@needs_fusion
def test_fused_graph_matches_pytorch(fused):
    _assert_parity(fused["encoder"], fused["folder"] / "onnx/model.onnx", fused["reference"])
    assert fused["meta"]["files"]["fp32"]["max_abs_diff_vs_torch"] <= TOL


@needs_fusion
def test_fused_graph_with_token_type_ids(tmp_path):
    encoder = _encoder(token_type_ids=True)
    meta = _write(encoder, tmp_path)
    assert meta["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert meta["optimizations"]["fp32"]["applied"] is True
    assert _ops(tmp_path / "onnx/model.onnx")["Attention"] == LAYERS
    _assert_parity(encoder, tmp_path / "onnx/model.onnx", encoder.encode(TEXTS))


def test_int8_is_quantised_from_the_unfused_graph(fused, tmp_path):
    int8 = fused["folder"] / "onnx/model_int8.onnx"
    ops = _ops(int8)
    # Every linear layer quantised (query, key, value, output, two feed-forward per layer); no fused attention.
    assert ops["MatMulInteger"] == 6 * LAYERS and ops["Attention"] == 0
    encoder = fused["encoder"]
    got = OnnxEncoder.from_file(int8, encoder.tokenizer, encoder.config_dict()).encode(TEXTS)
    diff = np.max(np.abs(got - fused["reference"]))
    assert 0 < diff < 0.05  # the bound test_export.py holds int8 to
    export_module.export_onnx(encoder, tmp_path / "unfused.onnx")
    export_module.quantize_int8(tmp_path / "unfused.onnx", tmp_path / "by_hand.onnx")
    by_hand = OnnxEncoder.from_file(tmp_path / "by_hand.onnx", encoder.tokenizer, encoder.config_dict()).encode(TEXTS)
    np.testing.assert_array_equal(got, by_hand)


def _assert_unfused_fallback(encoder, folder: Path, meta: dict, reason: str, caplog) -> None:
    path = folder / "onnx/model.onnx"
    assert meta["optimizations"]["fp32"]["applied"] is False and reason in meta["optimizations"]["fp32"]["reason"]
    assert _contrib_ops(path) == {} and _ops(path)["Softmax"] == LAYERS
    assert sorted(p.name for p in (folder / "onnx").iterdir()) == ["model.onnx"]  # no fused file left behind
    assert any("ONNX Runtime fusions not applied" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    _assert_parity(encoder, path, encoder.encode(TEXTS))
    assert meta["files"]["fp32"]["max_abs_diff_vs_torch"] <= TOL


def test_fallback_when_the_optimizer_raises(tmp_path, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("rewriter crashed")

    monkeypatch.setattr(export_module, "fuse_for_ort", broken)
    encoder = _encoder()
    with caplog.at_level(logging.WARNING, logger=export_module.__name__):
        meta = _write(encoder, tmp_path)
    _assert_unfused_fallback(encoder, tmp_path, meta, "RuntimeError: rewriter crashed", caplog)


def test_fallback_when_the_optimizer_is_missing(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(__import__("sys").modules, "onnxscript.rewriter.ort_fusions", None)
    encoder = _encoder()
    with caplog.at_level(logging.WARNING, logger=export_module.__name__):
        meta = _write(encoder, tmp_path)
    _assert_unfused_fallback(encoder, tmp_path, meta, "import of onnxscript.rewriter.ort_fusions halted", caplog)


def test_fallback_when_the_fused_graph_misses_the_tolerance(tmp_path, monkeypatch, caplog):
    encoder = _encoder()
    changed = copy.deepcopy(encoder)
    with torch.no_grad():
        changed.model.embeddings.word_embeddings.weight.mul_(1.5)

    def fuse_other_weights(source, target, **kwargs):
        export_module.export_onnx(changed, target)  # a "fused" graph that computes other vectors
        return {"Attention": LAYERS}

    monkeypatch.setattr(export_module, "fuse_for_ort", fuse_other_weights)
    with caplog.at_level(logging.WARNING, logger=export_module.__name__):
        meta = _write(encoder, tmp_path)
    _assert_unfused_fallback(encoder, tmp_path, meta, "the fused graph differs from PyTorch", caplog)


@needs_fusion
def test_fusion_refuses_a_head_count_other_than_the_config(tmp_path):
    source = tmp_path / "unfused.onnx"
    export_module.export_onnx(_encoder(), source)
    with pytest.raises(ExportError, match=r"fused attention has num_heads \[2\], the model config says 4"):
        export_module.fuse_for_ort(source, tmp_path / "fused.onnx", num_heads=4)
    assert not (tmp_path / "fused.onnx").exists()
    assert export_module.fuse_for_ort(source, tmp_path / "fused.onnx", num_heads=2)["Attention"] == LAYERS
