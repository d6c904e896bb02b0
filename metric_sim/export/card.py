"""The export's model card (``README.md``) and the usage snippets it shows for each runtime."""

from __future__ import annotations

from typing import Any

from metric_sim.distances import Metric
from metric_sim.encoders.text import Encoder
from metric_sim.export.onnx import ONNX_OUTPUT
from metric_sim.export.sentence_transformers import accepts_add_pooling_layer, projection_head
from metric_sim.export.source import ExportSource, default_model_path_or_none
from metric_sim.layout import CONFIG_FILE, DEFAULT_MODEL, ONNX_DIR, ONNX_FP32, ONNX_INT8
from metric_sim.model import SimilarityModel

EXAMPLE_TEXTS = ("How do I learn Python?", "What is the best way to learn Python?", "How do I cook rice?")


def first_value(mapping: dict[str, Any] | None, *keys: str) -> Any:
    """First present, non-empty key of ``mapping`` (run configs name things in more than one way)."""
    for key in keys:
        if mapping and mapping.get(key) not in (None, "", {}, []):
            return mapping[key]
    return None


def format_value(value: Any) -> str:
    if value is None:
        return "unknown"
    if isinstance(value, float):
        if abs(value) >= 1e4:
            return f"{value:,.0f}"
        return f"{value:.3g}" if 0 < abs(value) < 1e-3 else f"{value:.4f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {format_value(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(format_value(v) for v in value)
    return str(value)


_METRIC_COLUMNS = (
    ("average_precision", "AP"),
    ("roc_auc", "ROC-AUC"),
    ("accuracy", "accuracy"),
    ("accuracy_at_threshold", "accuracy at threshold"),
    ("f1", "F1"),
    ("f1_at_threshold", "F1 at threshold"),
    ("brier", "Brier"),
    ("ece", "ECE"),
    ("threshold", "threshold"),
    ("median_distance_similar", "median d (similar)"),
    ("median_distance_dissimilar", "median d (dissimilar)"),
    ("pairs", "pairs"),
)


def metrics_table(metrics: dict[str, Any]) -> list[str]:
    splits = {name: values for name, values in metrics.items() if isinstance(values, dict)}
    columns = [(key, label) for key, label in _METRIC_COLUMNS if any(key in v for v in splits.values())]
    if not splits or not columns:
        return ["No evaluation figures were recorded for this run."]
    lines = ["| split | " + " | ".join(label for _, label in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, values in splits.items():
        lines.append(f"| {name} | " + " | ".join(format_value(values.get(key)) for key, _ in columns) + " |")
    return lines


def _pooling_lines(pooling: str) -> list[str]:
    if pooling == "cls":
        return ["emb = hidden[:, 0]  # CLS pooling"]
    if pooling == "max":
        return [
            "mask = batch['attention_mask'].unsqueeze(-1).bool()",
            "emb = hidden.masked_fill(~mask, torch.finfo(hidden.dtype).min).max(1).values  # max pooling over real tokens",
        ]
    return [
        "mask = batch['attention_mask'].unsqueeze(-1).to(hidden.dtype)",
        "emb = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # mean pooling over real tokens",
    ]


def usage_snippets(encoder: Encoder, metric: Metric, name: str, *, has_onnx: bool, dense_dir: str | None) -> dict[str, str]:
    """Runnable snippets; each starts with ``model_dir = ...`` and ``texts = [...]`` lines."""
    head = [f'model_dir = "{name}"', f"texts = {list(EXAMPLE_TEXTS)!r}"]
    p = metric.p
    snippets = {
        "metric-sim": "\n".join(
            [
                "from metric_sim import SimilarityModel",
                "",
                *head,
                "model = SimilarityModel.from_pretrained(model_dir)  # backend='onnx' runs without torch",
                "embeddings = model.embed(texts)",
                "distance = model.distance(texts[:1], texts[1:2])",
                "probability = model.predict_proba(texts[:1], texts[1:2])  # calibrated p(similar)",
                "decision = model.predict(texts[:1], texts[1:2])  # 1 when distance <= threshold",
            ]
        ),
        "sentence-transformers": "\n".join(
            [
                "from sentence_transformers import SentenceTransformer",
                "",
                *head,
                "model = SentenceTransformer(model_dir, device='cpu')",
                "embeddings = model.encode(texts)",
                f"scores = model.similarity(embeddings, embeddings)  # -{metric.value} distance",
            ]
        ),
    }
    tf = [
        "import torch",
        "from transformers import AutoModel, AutoTokenizer",
        "",
        *head,
        "tokenizer = AutoTokenizer.from_pretrained(model_dir)",
        f"model = AutoModel.from_pretrained(model_dir{', add_pooling_layer=False' if accepts_add_pooling_layer(encoder) else ''}).eval()",
        f"batch = tokenizer(texts, padding=True, truncation=True, max_length={encoder.max_length}, return_tensors='pt')",
        "with torch.no_grad():",
        "    hidden = model(**batch).last_hidden_state",
        *_pooling_lines(encoder.pooling),
    ]
    if dense_dir is not None:
        tf += [
            "from safetensors.torch import load_file",
            "",
            f"dense = load_file(f'{{model_dir}}/{dense_dir}/model.safetensors')  # projection head",
            "emb = emb @ dense['linear.weight'].T + dense.get('linear.bias', 0)",
        ]
    if encoder.normalize:
        tf.append("emb = torch.nn.functional.normalize(emb, p=2, dim=-1)")
    tf.append(f"distances = torch.cdist(emb, emb, p={p})  # {metric.value}")
    snippets["transformers"] = "\n".join(tf)
    if has_onnx:
        snippets["onnxruntime"] = "\n".join(
            [
                "import numpy as np",
                "import onnxruntime as ort",
                "from transformers import AutoTokenizer  # works without torch",
                "",
                *head,
                "tokenizer = AutoTokenizer.from_pretrained(model_dir)",
                f"session = ort.InferenceSession(f'{{model_dir}}/{ONNX_DIR}/{ONNX_FP32}')  # or {ONNX_INT8}",
                f"batch = tokenizer(texts, padding=True, truncation=True, max_length={encoder.max_length}, return_tensors='np')",
                "emb = session.run(None, {i.name: batch[i.name].astype(np.int64) for i in session.get_inputs()})[0]",
                f"distances = np.linalg.norm(emb[:, None] - emb[None], ord={p}, axis=-1)  # {metric.value}",
            ]
        )
    return snippets


def calibrator_lines(model: SimilarityModel) -> list[str]:
    """The card's calibrator and decision-threshold bullets."""
    if model.calibrator is None:
        return ["- calibrator: none (this model gives distances but no probabilities or decisions)"]
    cal = model.calibrator
    return [
        f"- calibrator: p(similar | d) = {cal.formula}, fitted on "
        f"{format_value(cal.fitted_on) if cal.fitted_on else 'held-out pairs'} ({cal.n_fit:,} pairs)",
        f"- **decision threshold: similar when d <= {cal.threshold:.6g}**",
    ]


def run_sections(source: ExportSource, meta: dict[str, Any]) -> list[str]:
    """The card's "Training" and "Evaluation" sections, from the run's train_config.json and metrics.json."""
    cfg = source.train_config or {}
    run = cfg.get("run", {}) if isinstance(cfg.get("run"), dict) else {}
    data = first_value(cfg, "preset", "train_file", "data")
    splits = ", ".join(f"{k}={cfg[k]}" for k in ("train_split", "dev_split", "dev_file") if cfg.get(k))
    loss = cfg.get("loss")
    loss_params = first_value(run, "loss_params_resolved") or first_value(cfg, "loss_params") or {}
    margins = {k: v for k, v in {**cfg, **loss_params}.items() if "margin" in k.lower() and v is not None}
    card = ["", "## Training", ""]
    if source.train_config is None:
        card.append(
            "Exported from a bare model folder: the training configuration, data, steps, hardware and "
            "evaluation figures are **unknown**."
        )
    else:
        card += [
            f"- data: {format_value(data)}{f' ({splits})' if splits else ''}; training pairs: {format_value(run.get('train_pairs'))}; "
            f"dev pairs: {format_value(run.get('dev_pairs'))}",
            f"- loss: {format_value(loss)}; margins: {format_value(margins) if margins else 'none'}; metric: {format_value(cfg.get('metric'))}",
            f"- steps: {format_value(run.get('steps'))}; epochs: {format_value(run.get('epochs'))}; batch size: {format_value(cfg.get('batch_size'))}; "
            f"learning rate: {format_value(cfg.get('learning_rate'))}; seed: {format_value(cfg.get('seed'))}",
            f"- frozen encoder with projection head: {'yes' if cfg.get('freeze_encoder') else 'no'}",
            f"- wall time: {format_value(run.get('wall_time_s'))} s; hardware: {format_value(run.get('hardware'))}",
            f"- training config sha256: `{meta.get('train_config_sha256')}` (canonical JSON of "
            "`train_config.json` without its `run` section)",
        ]
    card += ["", "## Evaluation", ""]
    if source.metrics:
        card += metrics_table(source.metrics)
        card += ["", "AP is the average precision of ranking pairs by -distance; thresholds are distances."]
    else:
        card.append("No evaluation figures were recorded (no metrics.json next to the model).")
    return card


def render_model_card(
    source: ExportSource,
    model: SimilarityModel,
    *,
    name: str,
    meta: dict[str, Any],
    snippets: dict[str, str],
) -> str:
    encoder = model.encoder
    cfg = source.train_config or {}
    metric = model.metric
    base = first_value(cfg, "model", "base_model", "model_name_or_path")
    if base is None and source.model_dir == default_model_path_or_none():
        base = DEFAULT_MODEL
    if base == DEFAULT_MODEL:
        base = "all-MiniLM-L6-v2 (metric-sim's packaged default encoder)"
    elif base is None:  # a bare folder: its name, not the local path
        base = f"unknown (exported from a model folder named {source.model_dir.name!r})"
    card = [
        "---",
        "library_name: sentence-transformers",
        "pipeline_tag: sentence-similarity",
        "tags:",
        "- sentence-transformers",
        "- sentence-similarity",
        "- feature-extraction",
        "- metric-sim",
        f"- {metric.value}-distance",
        "---",
        "",
        f"# {name}",
        "",
        (
            f"A text encoder fine-tuned with [metric-sim](https://pypi.org/project/metric-sim/) so that the raw "
            f"**{metric.value}** distance between two embeddings tells whether two texts are similar"
            if source.train_config is not None
            else f"A text encoder exported by [metric-sim](https://pypi.org/project/metric-sim/) for use with the "
            f"raw **{metric.value}** distance between embeddings; no metric-sim training run came with it"
        )
        + (", plus a logistic calibrator on that distance." if model.calibrator is not None else "."),
        "",
        "## Model",
        "",
        f"- base model: {format_value(base)}",
        f"- architecture: {encoder.model.config.model_type}, {encoder.model.config.num_hidden_layers} layers, "
        f"hidden size {encoder.model.config.hidden_size}; embedding dimension {encoder.embedding_dim}",
        f"- pooling: {encoder.pooling}; normalised: {'yes' if encoder.normalize else 'no'}; "
        f"projection head: {'yes' if projection_head(encoder) is not None else 'no'}; max sequence length: {encoder.max_length} tokens",
        f"- metric: {metric.value} (L{metric.p}) on the raw embeddings",
    ]
    card += calibrator_lines(model)
    card += run_sections(source, meta)
    onnx_meta = meta.get("export", {}).get("onnx")
    if onnx_meta:
        card += ["", "## ONNX", ""]
        for kind, info in onnx_meta["files"].items():
            card.append(
                f"- `{info['path']}` ({kind}): inputs {', '.join(onnx_meta['inputs'])} -> `{ONNX_OUTPUT}`; "
                f"max abs difference from PyTorch on sample texts {info['max_abs_diff_vs_torch']:.2e}"
            )
        card.append(f"- opset {onnx_meta['opset']}; dynamic batch and sequence axes; pooling and normalisation are inside the graph")
        fusion = (onnx_meta.get("optimizations") or {}).get("fp32") or {}
        if fusion.get("applied"):
            # Users of other ONNX runtimes (onnx reference, TensorRT, web runtimes) would otherwise learn it from a load error.
            ops = ", ".join(fusion.get("fused_ops") or {}) or "fused"
            card.append(
                f"- `{ONNX_DIR}/{ONNX_FP32}` is fused for ONNX Runtime: its {ops} nodes are `com.microsoft` contrib ops, "
                "so it runs in ONNX Runtime only, not in other ONNX runtimes"
            )
    card += ["", "## Usage", ""]
    for runtime, code in snippets.items():
        card += [f"### {runtime}", "", "```python", code, "```", ""]
    versions = meta.get("versions", {})
    card += [
        "## Reproducibility",
        "",
        "Library versions at export: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
        f"`{CONFIG_FILE}` holds the pooling, normalisation, metric, calibrator, these versions and the "
        "sha256 of the training config.",
        "",
    ]
    return "\n".join(card)

