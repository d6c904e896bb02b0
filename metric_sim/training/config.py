"""``TrainConfig``: everything a training run needs, from a recipe YAML, ``--set`` overrides or a dict.

Light on purpose: importing this module loads neither torch, transformers nor
datasets (the CLI validates a recipe before any of them is needed).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metric_sim.distances import Metric
from metric_sim.errors import (
    ConfigError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    MissingFileError,
)
from metric_sim.losses.registry import list_losses
from metric_sim.validation import (
    require_choice,
    require_positive_float,
    require_positive_int,
    require_probability,
)

__all__ = ["LR_SCHEDULERS", "SAMPLERS", "TrainConfig", "merge_overrides", "parse_overrides"]

SAMPLERS = ("auto", "random", "length", "cluster")
LR_SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_FLOAT_FIELDS = {"dev_fraction", "score_low", "score_high", "learning_rate", "weight_decay", "warmup_ratio",
                 "epochs", "max_grad_norm"}


@dataclass
class TrainConfig:
    """Everything a run needs; saved as ``train_config.json`` so it can be reproduced.

    Data comes from ``preset`` (a :func:`metric_sim.list_presets` name, files under
    ``data_dir``, default ``$METRIC_SIM_DATA``) or from ``train_file`` (+ ``dev_file``)
    with the ``text_a``/``text_b``/``label`` columns. Without a dev split, ``dev_fraction``
    of the training pairs is held out by a leakage-free group split.
    Margins in ``loss_params`` are in units of ``metric`` (see :mod:`metric_sim.losses`).
    """

    # data
    preset: str | None = None
    train_file: str | None = None
    dev_file: str | None = None
    data_dir: str | None = None
    train_split: str | None = "train"
    dev_split: str | None = None
    dev_fraction: float = 0.15
    split_seed: int = 0
    text_a: str = "text_a"
    text_b: str = "text_b"
    label: str = "label"
    score_low: float | None = None
    score_high: float | None = None
    max_train_pairs: int | None = None
    max_dev_pairs: int | None = None
    # model
    model: str = "default"
    metric: str = "euclidean"
    pooling: str | None = None
    normalize: bool | None = None
    max_length: int = 128
    freeze_encoder: bool = False
    projection_dim: int | None = None
    # loss and batches
    loss: str = "online_contrastive"
    loss_params: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 32  # pairs per step of each process (under torchrun: per rank)
    sampler: str = "auto"
    samples_per_cluster: int = 4
    # optimisation (handed to transformers.TrainingArguments)
    learning_rate: float = 2e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    lr_scheduler: str = "linear"
    epochs: float = 1.0
    max_steps: int | None = None
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 1.0
    seed: int = 42
    bf16: bool = False
    fp16: bool = False
    # evaluation, checkpoints, logging
    eval_steps: int = 100
    eval_batch_size: int = 64
    save_total_limit: int | None = 2
    load_best_model_at_end: bool = True
    zero_shot_eval: bool = True
    logging_steps: int = 10
    report_to: str | list[str] = "none"
    dataloader_num_workers: int = 0

    def __post_init__(self) -> None:
        self._check_data_and_names()
        self._check_flags()
        self._check_numbers()

    def _check_data_and_names(self) -> None:
        if self.preset is None and self.train_file is None:
            raise InvalidArgumentError("give a data source: preset (e.g. 'qqp') or train_file")
        if self.preset is not None:
            from metric_sim.data import list_presets  # loads datasets: only when a preset is named

            require_choice("preset", self.preset, list_presets())
        for name in ("train_file", "dev_file", "data_dir", "train_split", "dev_split", "pooling"):
            _optional_str(name, getattr(self, name))
        for name in ("model", "text_a", "text_b", "label", "lr_scheduler", "sampler", "loss"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise InvalidArgumentTypeError(f"{name} must be a non-empty string, got {getattr(self, name)!r}")
        self.metric = Metric.parse(self.metric).value
        require_choice("loss", self.loss, list_losses())
        if not isinstance(self.loss_params, dict):
            raise InvalidArgumentTypeError(f"loss_params must be a mapping of parameter -> value, got {self.loss_params!r}")
        require_choice("sampler", self.sampler, SAMPLERS)
        require_choice("lr_scheduler", self.lr_scheduler, LR_SCHEDULERS)
        if self.pooling is not None:
            # loads torch: only when pooling is set
            from metric_sim.encoders.text import POOLING_MODES

            require_choice("pooling", self.pooling, POOLING_MODES)
        if not isinstance(self.report_to, (str, list)):
            raise InvalidArgumentTypeError(f"report_to must be a string or a list of strings, got {self.report_to!r}")

    def _check_flags(self) -> None:
        if self.normalize is not None and not isinstance(self.normalize, bool):
            raise InvalidArgumentTypeError(f"normalize must be true, false or null, got {self.normalize!r}")
        for name in ("freeze_encoder", "bf16", "fp16", "load_best_model_at_end", "zero_shot_eval"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidArgumentTypeError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.bf16 and self.fp16:
            raise InvalidArgumentError("bf16 and fp16 are exclusive: set at most one to true")

    def _check_numbers(self) -> None:
        for name in ("max_length", "batch_size", "samples_per_cluster", "gradient_accumulation_steps",
                     "eval_steps", "eval_batch_size", "logging_steps"):
            require_positive_int(name, getattr(self, name))
        for name in ("max_train_pairs", "max_dev_pairs", "max_steps", "projection_dim", "save_total_limit"):
            if getattr(self, name) is not None:
                require_positive_int(name, getattr(self, name))
        for name in ("split_seed", "seed", "dataloader_num_workers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidArgumentError(f"{name} must be a non-negative integer, got {value!r}")
        require_probability("dev_fraction", self.dev_fraction, open_interval=True)
        require_positive_float("learning_rate", self.learning_rate)
        require_positive_float("epochs", self.epochs)
        require_positive_float("max_grad_norm", self.max_grad_norm)
        for name in ("weight_decay", "warmup_ratio"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise InvalidArgumentError(f"{name} must be a number in [0, 1), got {value!r}")
        for name in ("score_low", "score_high"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise InvalidArgumentTypeError(f"{name} must be a number or null, got {value!r}")

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> TrainConfig:
        """Build from a plain mapping; unknown keys raise listing the valid ones.

        Numbers written as strings (YAML reads ``2e-5`` as a string) are converted
        for numeric fields; ``${VAR}`` in string values is expanded
        (``METRIC_SIM_DATA`` defaults to ``../shared/data``).
        """
        if not isinstance(payload, Mapping):
            raise InvalidArgumentTypeError(
                f"a training config must be a mapping of key -> value, got {type(payload).__name__}"
            )
        valid = cls.field_names()
        unknown = sorted(set(payload) - set(valid))
        if unknown:
            raise InvalidArgumentError(f"unknown config key(s) {unknown}; valid keys: {sorted(valid)}")
        kwargs = {key: _coerce(key, _expand_env(key, value)) for key, value in payload.items()}
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str], overrides: Mapping[str, Any] | None = None) -> TrainConfig:
        """Load a recipe; ``overrides`` (e.g. from ``--set``) replace its values before validation.

        A recipe that is not valid YAML, or holds a wrong key or value, raises
        :class:`~metric_sim.errors.ConfigError` naming the file (and the overrides, if any).
        """
        import yaml

        path = Path(path)
        if not path.is_file():
            raise MissingFileError(f"config file not found: {path}")
        try:
            payload = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(payload, dict):
            raise ConfigError(f"{path}: a config must be a YAML mapping of key: value, got {type(payload).__name__}")
        overrides = dict(overrides or {})
        try:
            return cls.from_dict(merge_overrides(payload, overrides))
        except (ValueError, TypeError) as exc:  # every validation error above: say where the value came from
            where = f"{path} with --set {' '.join(_flat_items(overrides))}" if overrides else str(path)
            raise ConfigError(f"{where}: {exc}") from exc

    def replace(self, **changes: Any) -> TrainConfig:
        return TrainConfig.from_dict({**self.to_dict(), **changes})


def _coerce(key: str, value: Any) -> Any:
    if key in _FLOAT_FIELDS and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise InvalidArgumentError(f"{key} must be a number, got {value!r}") from None
    if key in _FLOAT_FIELDS and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if key == "loss_params" and isinstance(value, Mapping):
        return {k: _number_or_str(v) for k, v in value.items()}
    return value


def _number_or_str(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _optional_str(name: str, value: Any) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        raise InvalidArgumentTypeError(f"{name} must be a non-empty string or null, got {value!r}")


def _expand_env(key: str, value: Any) -> Any:
    """Expand ``${VAR}`` in strings; ``METRIC_SIM_DATA`` falls back to the library default."""
    if isinstance(value, list):
        return [_expand_env(key, v) for v in value]
    if isinstance(value, dict):
        return {k: _expand_env(f"{key}.{k}", v) for k, v in value.items()}
    if not isinstance(value, str):
        return value

    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in os.environ:
            return os.environ[name]
        if name == "METRIC_SIM_DATA":
            from metric_sim.data import default_data_dir

            return str(default_data_dir())
        raise InvalidArgumentError(f"config key {key!r}: environment variable {name} is not set (in {value!r})")

    return _ENV.sub(sub, value)


def _flat_items(overrides: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``{"loss_params": {"margin": 1}}`` -> ``["loss_params.margin=1"]`` (for messages)."""
    items = []
    for key, value in overrides.items():
        if isinstance(value, Mapping):
            items.extend(_flat_items(value, f"{prefix}{key}."))
        else:
            items.append(f"{prefix}{key}={value}")
    return items


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["lr=1e-4", "loss_params.neg_margin=0.9"]`` -> a nested dict; values are parsed as YAML."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        target = out
        parts = key.split(".")
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is set both as a value and as a mapping")
        target[parts[-1]] = value
    return out


def merge_overrides(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` applied; nested mappings (loss_params) merge key by key."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged
