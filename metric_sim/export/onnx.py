"""The ONNX part of an export: one graph from token ids to the final embedding, int8 quantisation, parity checks.

Pooling, projection and normalisation are inside the graph, with dynamic batch and
sequence axes. The fp32 graph gets ONNX Runtime's transformer fusions (fused attention,
SkipLayerNormalization, BiasGelu) where they apply, the unfused graph otherwise. Every
graph written is run with ONNX Runtime on :data:`CHECK_TEXTS` and compared with PyTorch
before the export is kept.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from metric_sim.encoders.onnx import OnnxEncoder
from metric_sim.encoders.text import Encoder
from metric_sim.errors import ExportError
from metric_sim.layout import ONNX_DIR, ONNX_FP32, ONNX_INT8

logger = logging.getLogger(__name__)

QUANTIZE_MODES = ("int8",)
DEFAULT_OPSET = 18
ONNX_OUTPUT = "sentence_embedding"
# Graph inputs in this fixed order; token_type_ids only where the tokenizer produces them.
ONNX_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# fp32 ONNX Runtime vs PyTorch must agree this closely, or the export is refused.
ONNX_TOLERANCE = 1e-4
CHECK_TEXTS = (
    "How do I learn Python?",
    "What is the best way to learn Python code quickly and well?",
    "Why is the sky blue?",
    "a",
    "How can I save money when I buy a car, a phone and a new battery for my old phone?",
)
FUSION_TOOL = "onnxscript.rewriter.ort_fusions.optimize_for_ort"
ATTENTION_OPS = ("Attention", "MultiHeadAttention")
INT8_SOURCE = (
    "quantised from the unfused fp32 graph: quantize_dynamic leaves a fused Attention's "
    "query/key/value weights in fp32"
)


class _EmbeddingGraph(nn.Module):
    """Token ids -> final embedding (``Encoder.forward``: transformer, pooling, projection, normalisation)."""

    def __init__(self, encoder: Encoder, input_names: Sequence[str]) -> None:
        super().__init__()
        self.encoder = encoder
        self.input_names = tuple(input_names)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        features = dict(zip(self.input_names, inputs, strict=True))
        return self.encoder(**features)


def onnx_input_names(encoder: Encoder) -> list[str]:
    produced = encoder.tokenizer(["a"], truncation=True, max_length=encoder.max_length)
    return [name for name in ONNX_INPUTS if name in produced]


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter warns about optional torchvision ops and internal deprecations: noise here."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnx_ir", "onnxscript")]
    levels = [one.level for one in loggers]
    for one in loggers:  # onnx_ir logs one INFO line per deduplicated initializer
        one.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for one, level in zip(loggers, levels, strict=True):
            one.setLevel(level)


def export_onnx(encoder: Encoder, path: Path, *, opset: int = DEFAULT_OPSET) -> list[str]:
    """Export ``encoder`` as one ONNX graph with dynamic batch and sequence axes; returns its input names.

    Uses the ``torch.export``-based exporter (``dynamo=True``, which needs onnxscript),
    the default in torch 2.13; weights are stored inside the one .onnx file.
    """
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401  (the export is checked against PyTorch with it)
        import onnxscript  # noqa: F401  (the dynamo exporter's translator)
    except ImportError as exc:
        raise ExportError(f"--onnx needs onnx, onnxscript and onnxruntime ({exc}). Install them with: pip install 'metric-sim[onnx]'") from exc
    check_opset(opset)
    names = onnx_input_names(encoder)
    graph = _EmbeddingGraph(copy.deepcopy(encoder).to("cpu").eval(), names).eval()
    sample = encoder.tokenize(list(CHECK_TEXTS[:2]))
    args = tuple(sample[name] for name in names)
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    path.parent.mkdir(parents=True, exist_ok=True)
    with _quiet_exporter(), torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(
            graph,
            args,
            str(path),
            input_names=names,
            output_names=[ONNX_OUTPUT],
            dynamic_shapes={"inputs": tuple({0: batch, 1: sequence} for _ in names)},
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    return names


def check_opset(opset: int) -> None:
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < 17:
        raise ExportError(f"opset must be an integer >= 17 (LayerNormalization is one op from 17 on), got {opset!r}")


def quantize_int8(source: Path, target: Path) -> None:
    """Dynamic int8 quantisation (weights int8, activations quantised at run time) with ONNX Runtime.

    Per-channel weight scales: on QQP test pairs (all-MiniLM-L6-v2, first 1,000 pairs)
    per-tensor scales lost 0.0075 AP against fp32, per-channel 0.0002, at the same speed.
    ``quant_pre_process`` changed neither, so it is skipped.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    # The quantiser logs one INFO line per tensor, and a pre-processing hint, on the root logger.
    root.setLevel(max(level, logging.ERROR))
    try:
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True)
    finally:
        root.setLevel(level)
    _strip_node_metadata(target)


def _strip_node_metadata(path: Path) -> None:
    """Drop the exporter's per-node debug metadata (stack traces with the exporting machine's paths).

    It does not change what the graph computes; on small models it outweighs the int8 weights.
    """
    import onnx

    model = onnx.load(str(path))
    for nodes in [model.graph.node, *(function.node for function in model.functions)]:
        for node in nodes:
            del node.metadata_props[:]
    onnx.save(model, str(path))


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))


def fuse_for_ort(source: Path, target: Path, *, num_heads: int | None = None) -> dict[str, int]:
    """Write ``source`` with ONNX Runtime's transformer fusions to ``target``; returns the fused op counts.

    Uses onnxscript's ``optimize_for_ort``, whose patterns are written for the dynamo
    exporter's graphs. ``onnxruntime.transformers.optimizer.optimize_model`` (any
    ``opt_level``) and ONNX Runtime's own session optimisations fuse no attention in
    these graphs, only Gelu and SkipLayerNormalization. Raises when no attention is fused,
    or when a fused attention's head count differs from ``num_heads``: the caller then
    keeps the unfused graph.
    """
    from onnxscript import ir
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    with _quiet_exporter():
        model, _ = optimize_for_ort(ir.load(str(source)), clear_metadata=True)
    contrib = [node for node in model.graph if node.domain == "com.microsoft"]
    attention = [node for node in contrib if node.op_type in ATTENTION_OPS]
    if not attention:
        raise ExportError("no attention block was fused")
    heads = sorted({node.attributes["num_heads"].as_int() for node in attention})
    if num_heads is not None and heads != [num_heads]:
        raise ExportError(f"fused attention has num_heads {heads}, the model config says {num_heads}")
    ir.save(model, str(target))
    return dict(sorted(Counter(node.op_type for node in contrib).items()))


def _config_int(encoder: Encoder, name: str) -> int | None:
    value = getattr(getattr(encoder.model, "config", None), name, None)
    return value if isinstance(value, int) else None


def _fuse_in_place(encoder: Encoder, path: Path, diff_vs_torch: Callable[[Path], float]) -> tuple[dict[str, Any], float | None]:
    """Replace ``path`` by its fused graph if fusing works and the result passes the parity check.

    Returns the ``optimizations`` record and the fused graph's difference from PyTorch
    (None when the unfused graph is kept). The fusion is only a speed-up, so any
    failure is a warning, never a failed export.
    """
    fused = path.with_name(f"{path.stem}.fused{path.suffix}")
    try:
        try:
            ops = fuse_for_ort(path, fused, num_heads=_config_int(encoder, "num_attention_heads"))
            diff = diff_vs_torch(fused)
        except Exception as exc:  # noqa: BLE001  (optional optimisation: any error keeps the unfused graph)
            reason = f"{type(exc).__name__}: {exc}"
            logger.warning("export: ONNX Runtime fusions not applied (%s); keeping the unfused graph", reason)
            return {"applied": False, "reason": reason}, None
        if not diff <= ONNX_TOLERANCE:
            reason = f"the fused graph differs from PyTorch by {diff:.3g} (> {ONNX_TOLERANCE})"
            logger.warning("export: ONNX Runtime fusions not applied (%s); keeping the unfused graph", reason)
            return {"applied": False, "reason": reason}, None
        os.replace(fused, path)
        return {"applied": True, "tool": FUSION_TOOL, "fused_ops": ops}, diff
    finally:
        fused.unlink(missing_ok=True)


def write_onnx(encoder: Encoder, folder: Path, *, opset: int, quantize: str | None) -> dict[str, Any]:
    """Export, then check every graph against PyTorch on ``CHECK_TEXTS`` (batch of several and of one).

    The unfused fp32 graph must pass first; int8 is quantised from it; then the fp32
    file is replaced by its fused version if that passes the same tolerance.
    Returns the ``export.onnx`` section of ``metric_sim.json``.
    """
    fp32 = folder / ONNX_DIR / ONNX_FP32
    started = time.perf_counter()
    names = export_onnx(encoder, fp32, opset=opset)
    logger.info("export: ONNX graph written in %.1f s; checking it against PyTorch", time.perf_counter() - started)
    reference = np.concatenate([encoder.encode(list(CHECK_TEXTS), batch_size=len(CHECK_TEXTS))] * 2)
    settings = encoder.config_dict()

    def diff_vs_torch(path: Path) -> float:
        runner = OnnxEncoder.from_file(path, encoder.tokenizer, settings)
        got = np.concatenate([runner.encode(list(CHECK_TEXTS), batch_size=len(CHECK_TEXTS)), runner.encode(list(CHECK_TEXTS), batch_size=1)])
        return max_abs_diff(got, reference)

    diffs = {"fp32": diff_vs_torch(fp32)}
    if not diffs["fp32"] <= ONNX_TOLERANCE:
        raise ExportError(f"the ONNX graph differs from PyTorch by {diffs['fp32']:.3g} (> {ONNX_TOLERANCE}) on sample texts; export refused")
    kinds = [("fp32", fp32)]
    optimizations: dict[str, Any] = {}
    if quantize == "int8":
        int8 = folder / ONNX_DIR / ONNX_INT8
        quantize_int8(fp32, int8)
        diffs["int8"] = diff_vs_torch(int8)
        kinds.append(("int8", int8))
        optimizations["int8"] = {"applied": False, "reason": INT8_SOURCE}
    optimizations["fp32"], fused_diff = _fuse_in_place(encoder, fp32, diff_vs_torch)
    if fused_diff is not None:
        diffs["fp32"] = fused_diff
    files = {kind: {"path": f"{ONNX_DIR}/{path.name}", "max_abs_diff_vs_torch": diffs[kind], "bytes": path.stat().st_size}
             for kind, path in kinds}
    return {"opset": opset, "inputs": names, "output": ONNX_OUTPUT, "files": files,
            "exporter": "torch.onnx.export(dynamo=True)", "optimizations": dict(sorted(optimizations.items()))}
