"""Export bundle: one folder that metric-sim, sentence-transformers, transformers and ONNX Runtime load.

``export_model(RUN_DIR or model folder, OUT)`` writes, into a staging folder that is
renamed into place at the end (a crash never leaves a half-written export):

* transformers format: ``config.json``, ``model.safetensors``, tokenizer files;
* sentence-transformers layout: ``modules.json``, ``sentence_bert_config.json``,
  ``1_Pooling/config.json``, ``2_Dense/`` when the encoder has a projection head,
  ``N_Normalize/`` only when it normalises, and ``config_sentence_transformers.json``
  whose ``similarity_fn_name`` is the training metric (``euclidean``/``manhattan``).
  It is the format sentence-transformers 2.x-5.x write (``sentence_transformers.models.*``
  module names), which 6.x still loads (checked with 6.2.0);
* ``metric_sim.json``: pooling, normalisation, metric, calibrator, library versions and
  the sha256 of the training config, so ``SimilarityModel.from_pretrained(OUT)`` gives
  the same decisions as the run;
* ``README.md``: a model card filled in from the run's ``train_config.json`` and
  ``metrics.json``, with usage snippets for the four runtimes;
* ``onnx/model.onnx`` (``onnx=True``): one graph from token ids to the final
  embedding, pooling, projection and normalisation included, dynamic batch and
  sequence axes; ``onnx/model_int8.onnx`` (``quantize="int8"``) quantised dynamically.
  Each graph is checked against PyTorch on sample texts before the export is kept.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import hashlib
import json
import logging
import os
import platform
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from metric_sim._io import CONFIG_FILE, atomic_dir, package_versions, read_json, write_json_atomic
from metric_sim.calibration import SimilarityModel, resolve_model_dir
from metric_sim.distances import Metric
from metric_sim.encoder import DEFAULT_MODEL, Encoder, default_model_path
from metric_sim.onnx_backend import ONNX_DIR, ONNX_FP32, ONNX_INT8, OnnxEncoder

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
EXAMPLE_TEXTS = ("How do I learn Python?", "What is the best way to learn Python?", "How do I cook rice?")


class ExportError(ValueError):
    """The export cannot be written as asked; the message names the argument or file."""


@dataclass(frozen=True)
class ExportSource:
    """What an export starts from: a model folder, and the run around it when there is one."""

    model_dir: Path
    run_dir: Path | None = None
    train_config: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None


def resolve_source(source: str | os.PathLike[str]) -> ExportSource:
    """Accept a RUN_DIR (``model/`` + ``train_config.json``), a model folder, or ``"default"``."""
    if str(source) == DEFAULT_MODEL:
        return ExportSource(model_dir=default_model_path())
    path = Path(source).expanduser().resolve()
    if not path.is_dir():
        raise ExportError(f"source {str(source)!r} is not a folder: expected a run folder (with model/) or a model folder")
    model_dir = resolve_model_dir(path)
    if not (model_dir / "config.json").is_file():
        raise ExportError(
            f"source {str(source)!r} is neither a run folder (no model/config.json) nor a model folder (no config.json)"
        )
    if model_dir == path:
        return ExportSource(model_dir=path)
    train_config = read_json(path / "train_config.json") if (path / "train_config.json").is_file() else None
    metrics = read_json(path / "metrics.json") if (path / "metrics.json").is_file() else None
    return ExportSource(model_dir=model_dir, run_dir=path, train_config=train_config, metrics=metrics)


def default_model_path_or_none() -> Path | None:
    try:
        return default_model_path().resolve()
    except OSError:
        return None


def train_config_digest(train_config: dict[str, Any] | None) -> str | None:
    """sha256 of the resolved training config (the ``run`` results section left out), canonical JSON."""
    if train_config is None:
        return None
    config = {k: v for k, v in train_config.items() if k != "run"}
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def library_versions(*, with_onnx: bool = False) -> dict[str, str]:
    import metric_sim

    names = ["torch", "transformers", "pytorch-metric-learning", "tokenizers", "safetensors"]
    if with_onnx:
        names += ["onnx", "onnxruntime", "onnxscript"]
    found = {"metric_sim": metric_sim.__version__, "python": platform.python_version()}
    found.update({name.replace("-", "_"): v for name, v in package_versions(names).items()})
    return found


# ---------------------------------------------------------------------------- sentence-transformers layout
def _accepts_add_pooling_layer(encoder: Encoder) -> bool:
    import inspect

    return "add_pooling_layer" in inspect.signature(type(encoder.model).__init__).parameters


def _projection(encoder: Encoder) -> nn.Linear | None:
    """The encoder's projection head (frozen-encoder training adds one), if any."""
    head = getattr(encoder, "projection", None)
    if head is not None and not isinstance(head, nn.Linear):
        raise ExportError(f"cannot export a projection head of type {type(head).__name__}; only torch.nn.Linear is supported")
    return head


def write_sentence_transformers_layout(encoder: Encoder, metric: Metric, folder: Path) -> list[str]:
    """Write modules.json and the module folders next to the transformers files; returns module paths."""
    from safetensors.torch import save_file

    hidden = int(encoder.model.config.hidden_size)
    modules: list[dict[str, Any]] = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    (folder / "1_Pooling").mkdir()
    write_json_atomic(
        folder / "1_Pooling" / "config.json",
        {
            "word_embedding_dimension": hidden,
            "pooling_mode_cls_token": encoder.pooling == "cls",
            "pooling_mode_mean_tokens": encoder.pooling == "mean",
            "pooling_mode_max_tokens": encoder.pooling == "max",
            "pooling_mode_mean_sqrt_len_tokens": False,
        },
    )
    head = _projection(encoder)
    if head is not None:
        dense = f"{len(modules)}_Dense"
        modules.append({"idx": len(modules), "name": str(len(modules)), "path": dense, "type": "sentence_transformers.models.Dense"})
        (folder / dense).mkdir()
        write_json_atomic(
            folder / dense / "config.json",
            {
                "in_features": int(head.in_features),
                "out_features": int(head.out_features),
                "bias": head.bias is not None,
                "activation_function": "torch.nn.modules.linear.Identity",
            },
        )
        state = {f"linear.{k}": v.detach().to("cpu").contiguous() for k, v in head.state_dict().items()}
        save_file(state, str(folder / dense / "model.safetensors"), metadata={"format": "pt"})
    if encoder.normalize:
        norm = f"{len(modules)}_Normalize"
        modules.append({"idx": len(modules), "name": str(len(modules)), "path": norm, "type": "sentence_transformers.models.Normalize"})
        (folder / norm).mkdir()
        write_json_atomic(folder / norm / "config.json", {})  # a file keeps the folder through hub uploads
    write_json_atomic(folder / "modules.json", modules)
    st_config: dict[str, Any] = {"max_seq_length": encoder.max_length, "do_lower_case": False}
    if _accepts_add_pooling_layer(encoder):
        # The unused pooler is not exported; without this transformers reports it "newly initialized".
        st_config["model_args"] = {"add_pooling_layer": False}
    write_json_atomic(folder / "sentence_bert_config.json", st_config)
    versions = library_versions()
    st_versions = {"transformers": versions["transformers"], "pytorch": versions["torch"]}
    write_json_atomic(
        folder / "config_sentence_transformers.json",
        {
            "__version__": st_versions,
            "prompts": {},
            "default_prompt_name": None,
            # Raw distance is the model: sentence-transformers' similarity() returns -distance.
            "similarity_fn_name": metric.value,
        },
    )
    return [m["path"] for m in modules]


# ---------------------------------------------------------------------------- ONNX
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
    _check_opset(opset)
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


def _check_opset(opset: int) -> None:
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


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))


# ---------------------------------------------------------------------------- model card
def _get(mapping: dict[str, Any] | None, *keys: str) -> Any:
    """First present, non-empty key of ``mapping`` (run configs name things in more than one way)."""
    for key in keys:
        if mapping and mapping.get(key) not in (None, "", {}, []):
            return mapping[key]
    return None


def _fmt(value: Any) -> str:
    if value is None:
        return "unknown"
    if isinstance(value, float):
        if abs(value) >= 1e4:
            return f"{value:,.0f}"
        return f"{value:.3g}" if 0 < abs(value) < 1e-3 else f"{value:.4f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value)
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


def _metrics_table(metrics: dict[str, Any]) -> list[str]:
    splits = {name: values for name, values in metrics.items() if isinstance(values, dict)}
    columns = [(key, label) for key, label in _METRIC_COLUMNS if any(key in v for v in splits.values())]
    if not splits or not columns:
        return ["No evaluation figures were recorded for this run."]
    lines = ["| split | " + " | ".join(label for _, label in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, values in splits.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(values.get(key)) for key, _ in columns) + " |")
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
        f"model = AutoModel.from_pretrained(model_dir{', add_pooling_layer=False' if _accepts_add_pooling_layer(encoder) else ''}).eval()",
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
    run = cfg.get("run", {}) if isinstance(cfg.get("run"), dict) else {}
    metric = model.metric
    base = _get(cfg, "model", "base_model", "model_name_or_path")
    if base is None and source.model_dir == default_model_path_or_none():
        base = DEFAULT_MODEL
    if base == DEFAULT_MODEL:
        base = "all-MiniLM-L6-v2 (metric-sim's packaged default encoder)"
    elif base is None:  # a bare folder: its name, not the local path
        base = f"unknown (exported from a model folder named {source.model_dir.name!r})"
    data = _get(cfg, "preset", "train_file", "data")
    splits = ", ".join(f"{k}={cfg[k]}" for k in ("train_split", "dev_split", "dev_file") if cfg.get(k))
    loss = cfg.get("loss")
    loss_params = _get(run, "loss_params_resolved") or _get(cfg, "loss_params") or {}
    margins = {k: v for k, v in {**cfg, **loss_params}.items() if "margin" in k.lower() and v is not None}
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
        + (", plus a one-feature logistic calibrator on that distance." if model.calibrator is not None else "."),
        "",
        "## Model",
        "",
        f"- base model: {_fmt(base)}",
        f"- architecture: {encoder.model.config.model_type}, {encoder.model.config.num_hidden_layers} layers, "
        f"hidden size {encoder.model.config.hidden_size}; embedding dimension {encoder.embedding_dim}",
        f"- pooling: {encoder.pooling}; normalised: {'yes' if encoder.normalize else 'no'}; "
        f"projection head: {'yes' if _projection(encoder) is not None else 'no'}; max sequence length: {encoder.max_length} tokens",
        f"- metric: {metric.value} (L{metric.p}) on the raw embeddings",
    ]
    if model.calibrator is not None:
        cal = model.calibrator
        card += [
            f"- calibrator: p(similar | d) = {cal.formula}, fitted on "
            f"{_fmt(cal.fitted_on) if cal.fitted_on else 'held-out pairs'} ({cal.n_fit:,} pairs)",
            f"- **decision threshold: similar when d <= {cal.threshold:.6g}**",
        ]
    else:
        card.append("- calibrator: none (this model gives distances but no probabilities or decisions)")
    card += ["", "## Training", ""]
    if source.train_config is None:
        card.append(
            "Exported from a bare model folder: the training configuration, data, steps, hardware and "
            "evaluation figures are **unknown**."
        )
    else:
        card += [
            f"- data: {_fmt(data)}{f' ({splits})' if splits else ''}; training pairs: {_fmt(run.get('train_pairs'))}; "
            f"dev pairs: {_fmt(run.get('dev_pairs'))}",
            f"- loss: {_fmt(loss)}; margins: {_fmt(margins) if margins else 'none'}; metric: {_fmt(cfg.get('metric'))}",
            f"- steps: {_fmt(run.get('steps'))}; epochs: {_fmt(run.get('epochs'))}; batch size: {_fmt(cfg.get('batch_size'))}; "
            f"learning rate: {_fmt(cfg.get('learning_rate'))}; seed: {_fmt(cfg.get('seed'))}",
            f"- frozen encoder with projection head: {'yes' if cfg.get('freeze_encoder') else 'no'}",
            f"- wall time: {_fmt(run.get('wall_time_s'))} s; hardware: {_fmt(run.get('hardware'))}",
            f"- training config sha256: `{meta.get('train_config_sha256')}` (canonical JSON of "
            "`train_config.json` without its `run` section)",
        ]
    card += ["", "## Evaluation", ""]
    if source.metrics:
        card += _metrics_table(source.metrics)
        card += ["", "AP is the average precision of ranking pairs by -distance; thresholds are distances."]
    else:
        card.append("No evaluation figures were recorded (no metrics.json next to the model).")
    onnx_meta = meta.get("export", {}).get("onnx")
    if onnx_meta:
        card += ["", "## ONNX", ""]
        for kind, info in onnx_meta["files"].items():
            card.append(
                f"- `{info['path']}` ({kind}): inputs {', '.join(onnx_meta['inputs'])} -> `{ONNX_OUTPUT}`; "
                f"max abs difference from PyTorch on sample texts {info['max_abs_diff_vs_torch']:.2e}"
            )
        card.append(f"- opset {onnx_meta['opset']}; dynamic batch and sequence axes; pooling and normalisation are inside the graph")
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


# ---------------------------------------------------------------------------- the bundle
def _check_destination(out: Path, source: ExportSource, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {str(out)!r} is a file; expected a folder to create")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"--out {str(out)!r} already exists and is not empty; pass overwrite=True (--overwrite) to replace it")
    for src in filter(None, (source.model_dir, source.run_dir)):
        if out == src or src in out.parents or out in src.parents:
            raise ExportError(f"--out {str(out)!r} must not be inside or contain the source {str(src)!r}")


def export_model(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    onnx: bool = False,
    quantize: str | None = None,
    opset: int = DEFAULT_OPSET,
    overwrite: bool = False,
) -> Path:
    """Export a run (or a model folder, or ``"default"``) as a self-describing folder; returns its path.

    ``quantize="int8"`` implies ``onnx=True``. Raises ``ExportError`` on bad arguments, or
    when the ONNX graph does not reproduce PyTorch within ``ONNX_TOLERANCE``.
    """
    if quantize is not None and quantize not in QUANTIZE_MODES:
        raise ExportError(f"quantize must be one of {list(QUANTIZE_MODES)} or None, got {quantize!r}")
    onnx = onnx or quantize is not None
    if onnx:
        _check_opset(opset)
    started = time.perf_counter()
    resolved = resolve_source(source)
    target = Path(out).expanduser().resolve()
    _check_destination(target, resolved, overwrite)
    model = SimilarityModel.from_pretrained(resolved.model_dir)
    encoder = model.encoder.eval()
    with atomic_dir(target) as staging:
        meta: dict[str, Any] = {
            "versions": library_versions(with_onnx=onnx),
            "train_config_sha256": train_config_digest(resolved.train_config),
            "export": {
                "source": (resolved.run_dir or resolved.model_dir).name,  # the name only: no local paths in a shared model
                "source_kind": "run" if resolved.run_dir else "model",
                "exported_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "fingerprint": encoder.fingerprint(),
            },
        }
        logger.info("export: writing weights, tokenizer and %s", CONFIG_FILE)
        model.save(staging, extra=meta)
        modules = write_sentence_transformers_layout(encoder, model.metric, staging)
        meta["export"]["sentence_transformers_modules"] = modules
        if onnx:
            meta["export"]["onnx"] = _write_onnx(encoder, staging, opset=opset, quantize=quantize)
        config = read_json(staging / CONFIG_FILE)
        config.update(meta)
        write_json_atomic(staging / CONFIG_FILE, config)
        dense = next((m for m in modules if m.endswith("_Dense")), None)
        snippets = usage_snippets(encoder, model.metric, target.name, has_onnx=onnx, dense_dir=dense)
        card = render_model_card(resolved, model, name=target.name, meta=meta, snippets=snippets)
        (staging / "README.md").write_text(card, encoding="utf-8")
    logger.info("export: wrote %s in %.1f s", target, time.perf_counter() - started)
    return target


def _write_onnx(encoder: Encoder, folder: Path, *, opset: int, quantize: str | None) -> dict[str, Any]:
    """Export, then check every graph against PyTorch on ``CHECK_TEXTS`` (batch of several and of one)."""
    fp32 = folder / ONNX_DIR / ONNX_FP32
    started = time.perf_counter()
    names = export_onnx(encoder, fp32, opset=opset)
    logger.info("export: ONNX graph written in %.1f s; checking it against PyTorch", time.perf_counter() - started)
    reference = encoder.encode(list(CHECK_TEXTS), batch_size=len(CHECK_TEXTS))
    files: dict[str, dict[str, Any]] = {}
    kinds = [("fp32", fp32)]
    if quantize == "int8":
        int8 = folder / ONNX_DIR / ONNX_INT8
        quantize_int8(fp32, int8)
        kinds.append(("int8", int8))
    settings = encoder.config_dict()
    for kind, path in kinds:
        runner = OnnxEncoder.from_file(path, encoder.tokenizer, settings)
        got = np.concatenate([runner.encode(list(CHECK_TEXTS), batch_size=len(CHECK_TEXTS)), runner.encode(list(CHECK_TEXTS), batch_size=1)])
        diff = max_abs_diff(got, np.concatenate([reference, reference]))
        if kind == "fp32" and not diff <= ONNX_TOLERANCE:
            raise ExportError(f"the ONNX graph differs from PyTorch by {diff:.3g} (> {ONNX_TOLERANCE}) on sample texts; export refused")
        files[kind] = {"path": f"{ONNX_DIR}/{path.name}", "max_abs_diff_vs_torch": diff, "bytes": path.stat().st_size}
    return {"opset": opset, "inputs": names, "output": ONNX_OUTPUT, "files": files, "exporter": "torch.onnx.export(dynamo=True)"}
