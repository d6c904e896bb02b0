"""What an export starts from, and what it records about it: the source, library versions, config digest."""

from __future__ import annotations

import hashlib
import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metric_sim.encoders.base import check_model_config
from metric_sim.errors import ConfigError, ExportError
from metric_sim.layout import (
    CONFIG_FILE,
    DEFAULT_MODEL,
    HF_CONFIG_FILE,
    METRICS_FILE,
    TRAIN_CONFIG_FILE,
    default_model_path,
    resolve_model_source,
)
from metric_sim.schema import SavedFields, read_json_file
from metric_sim.storage import package_versions

# The encoder kinds (``encoder.kind`` in metric_sim.json) an export can write: a transformers text
# encoder (the full layout), an image encoder and a title + image product encoder (metric_sim.export.image).
EXPORTABLE_KIND = "transformers"
IMAGE_KINDS = ("image", "multimodal")
EXPORTABLE_KINDS = (EXPORTABLE_KIND, *IMAGE_KINDS)
# Recorded in metric_sim.json as versions[name with "_" for "-"].
EXPORT_PACKAGES = ("torch", "transformers", "pytorch-metric-learning", "tokenizers", "safetensors")
ONNX_PACKAGES = ("onnx", "onnxruntime", "onnxscript")
IMAGE_PACKAGES = ("torchvision", "timm", "pillow")


@dataclass(frozen=True)
class ExportSource:
    """What an export starts from: a model folder, and the run around it when there is one."""

    model_dir: Path
    run_dir: Path | None = None
    train_config: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None


def not_exportable(where: str | os.PathLike[str], kind: str) -> ExportError:
    """The error for a model whose encoder is none of the exportable kinds."""
    return ExportError(
        f"{where} holds an encoder of kind {kind!r}; only text encoders of kind {EXPORTABLE_KIND!r} "
        "(a transformers model, metric_sim.encoders.text.Encoder), image encoders (kind 'image') and "
        "title + image product encoders (kind 'multimodal') can be exported"
    )


def _saved_encoder_kind(model_dir: Path) -> str | None:
    """``encoder.kind`` of the folder's metric_sim.json (None without one); a damaged file is a ``ConfigError``."""
    config_file = model_dir / CONFIG_FILE
    if not config_file.is_file():
        return None
    payload = read_json_file(config_file, ConfigError)
    check_model_config(payload, config_file)
    encoder = payload.get("encoder")
    return encoder.get("kind") if isinstance(encoder, dict) else None


def read_train_config(path: Path) -> dict[str, Any]:
    """A run's ``train_config.json``: an object whose ``run`` section, when present, is an object."""
    payload = read_json_file(path, ConfigError)
    SavedFields(payload, path, ConfigError).section("run", required=False)
    return payload


def read_run_metrics(path: Path) -> dict[str, Any]:
    """A run's ``metrics.json``: ``metric`` (a name) and one object of scalar figures per split."""
    payload = read_json_file(path, ConfigError)
    fields = SavedFields(payload, path, ConfigError)
    for name in payload:
        if name == "metric":
            fields.get(name, str)
            continue
        split = fields.section(name)
        assert split is not None
        for figure, value in split.payload.items():
            if isinstance(value, (dict, list)):
                split.fail(figure, f"must be a number, a string or null, got {type(value).__name__}")
    return payload


def resolve_source(source: str | os.PathLike[str]) -> ExportSource:
    """Accept a RUN_DIR (``model/`` + ``train_config.json``), a model folder, or ``"default"``.

    Unlike loading a model, an export never reads a hub id: the source is a local folder.
    """
    if str(source) == DEFAULT_MODEL:
        return ExportSource(model_dir=default_model_path())
    path = Path(source).expanduser().resolve()
    if not path.is_dir():
        raise ExportError(f"source {str(source)!r} is not a folder: expected a run folder (with model/) or a model folder")
    resolved = resolve_model_source(path)
    model_dir = resolved.folder
    assert model_dir is not None  # an existing folder is never a hub id
    kind = _saved_encoder_kind(model_dir)
    if kind not in (None, *EXPORTABLE_KINDS):  # before the config.json check: other kinds have none
        raise not_exportable(model_dir, kind)
    if kind not in IMAGE_KINDS and not (model_dir / HF_CONFIG_FILE).is_file():  # image kinds have no top config.json
        raise ExportError(
            f"source {str(source)!r} is neither a run folder (no model/{HF_CONFIG_FILE}) nor a model folder (no {HF_CONFIG_FILE})"
        )
    if resolved.run_dir is None:
        return ExportSource(model_dir=model_dir)
    run_dir = resolved.run_dir
    train_config = read_train_config(run_dir / TRAIN_CONFIG_FILE) if (run_dir / TRAIN_CONFIG_FILE).is_file() else None
    metrics = read_run_metrics(run_dir / METRICS_FILE) if (run_dir / METRICS_FILE).is_file() else None
    return ExportSource(model_dir=model_dir, run_dir=run_dir, train_config=train_config, metrics=metrics)


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


def library_versions(*, with_onnx: bool = False, with_images: bool = False) -> dict[str, str]:
    """``metric_sim``, ``python`` and the export's libraries; keys spell ``-`` as ``_`` (the file format)."""
    names = ["metric-sim", *EXPORT_PACKAGES, *(IMAGE_PACKAGES if with_images else ()), *(ONNX_PACKAGES if with_onnx else ())]
    installed = {name.replace("-", "_"): version for name, version in package_versions(names).items()}
    return {"metric_sim": installed.pop("metric_sim"), "python": platform.python_version(), **installed}
