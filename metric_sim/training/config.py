"""``TrainConfig``: everything a training run needs, from a recipe YAML, ``--set`` overrides or a dict.

Light on purpose: importing this module loads neither torch, transformers nor
datasets (the CLI validates a recipe before any of them is needed). Every field is
checked when the config is built, loss parameters included, so a bad recipe fails
before any data is read or model loaded.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metric_sim.calibration import DEFAULT_FEATURE, FIT_FEATURES
from metric_sim.distances import Metric
from metric_sim.errors import (
    ConfigError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    MissingFileError,
)
from metric_sim.losses.registry import list_losses
from metric_sim.training.interpolate_config import check_interpolate
from metric_sim.training.layers import check_layer_lr_decay
from metric_sim.training.loss_config import check_auxiliary_losses, check_loss_params
from metric_sim.training.mix_config import check_mix_pairs
from metric_sim.validation import (
    require_choice,
    require_positive_float,
    require_positive_int,
    require_probability,
    yaml_number,
)

__all__ = ["HARD_NEGATIVE_KEYS", "LR_SCHEDULERS", "SAMPLERS", "TrainConfig", "merge_overrides", "parse_overrides"]

SAMPLERS = ("auto", "random", "length", "cluster")
ITEM_KINDS = ("text", "image")
LR_SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# The mining options a ``hard_negatives`` block may set (besides file / mine): named as in mine_hard_negatives.
_MINING_KEYS = ("num_negatives", "range_min", "range_max", "relative_margin", "max_probability",
                "sampling_strategy", "index_kind", "seed", "anchors")
# refresh_steps: re-mine every N optimiser steps with the model being trained (never passed to mining).
HARD_NEGATIVE_KEYS = ("file", "mine", "refresh_steps", *_MINING_KEYS)
_FLOAT_FIELDS = {"dev_fraction", "score_low", "score_high", "learning_rate", "weight_decay", "warmup_ratio",
                 "epochs", "max_grad_norm", "l2sp_weight", "layer_lr_decay"}
# Keys added later, with their off value: saved only when set, so older configs save as they did.
_SAVED_WHEN_SET: dict[str, Any] = {"auxiliary_losses": [], "layer_lr_decay": 1.0, "calibration_feature": DEFAULT_FEATURE}


@dataclass
class TrainConfig:
    """Everything a run needs; saved as ``train_config.json`` so it can be reproduced.

    Data comes from ``preset`` (a :func:`metric_sim.list_presets` name, files under
    ``data_dir``, default ``$METRIC_SIM_DATA``) or from ``train_file`` (+ ``dev_file``)
    with the ``text_a``/``text_b``/``label`` columns. Without a dev split, ``dev_fraction``
    of the training pairs is held out by a leakage-free group split.
    Margins in ``loss_params`` are in units of ``metric`` (see :mod:`metric_sim.losses`).
    ``auxiliary_losses`` (``[{loss: NAME, weight: W, loss_params: {...}}, ...]``) adds ``W * NAME`` to the
    main loss on the same batch embeddings: :mod:`.loss_config`, :class:`~metric_sim.losses.composite.CompositeLoss`.

    ``hard_negatives`` adds mined label-0 pairs to the training pairs (never to dev): either
    ``{file: PATH}``, negatives saved by ``metric-sim mine`` with the starting model, or
    ``{mine: true, ...}`` with :func:`metric_sim.mining.mine_hard_negatives` options
    (``num_negatives``, ``range_min``, ``range_max``, ``relative_margin``,
    ``sampling_strategy``, ``index_kind``, ``seed``; ``seed`` defaults to the config's), plus
    ``refresh_steps: N`` to mine again every N optimiser steps with the encoder being trained.

    ``layer_lr_decay`` trains each encoder layer at that multiple of the rate of the layer above it
    (the top layer and any head at ``learning_rate``): :mod:`metric_sim.training.layers`.

    ``freeze_layers`` (the embeddings/stem + the lowest N layers stay fixed) and ``l2sp_weight``
    (a penalty pulling the weights towards the starting ones) keep what the base model knew:
    :mod:`metric_sim.training.regularizers`; so do ``mix_pairs`` (``[{preset: NAME, split: SPLIT, share: S} or
    {file: PATH, share: S}, ...]``: other pair sets, each its share of every batch): :mod:`.mixing`.
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
    items: str = "text"  # what train_file/dev_file columns hold: "text", or "image" (paths relative to the file)
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
    freeze_layers: int = 0  # the embeddings (stem) + the lowest N layers (stages) are not trained
    l2sp_weight: float = 0.0  # loss += l2sp_weight / 2 * ||theta - theta_start||^2 (L2-SP); 0: off
    # settings for the encoder ``model`` names when it is built from a starting point rather than a saved
    # folder (images: size, mode, augment, ...); checked by that encoder's builder when the run starts
    encoder_options: dict[str, Any] = field(default_factory=dict)
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
    # hard negatives mined on the training pairs
    hard_negatives: dict[str, Any] | None = None
    mix_pairs: list[dict[str, Any]] = field(default_factory=list)  # checked in mix_config
    interpolate: dict[str, Any] | None = None  # WiSE-FT at the end of the run; checked in interpolate_config
    auxiliary_losses: list[dict[str, Any]] = field(default_factory=list)  # loss_config; saved only when set
    layer_lr_decay: float = 1.0  # each layer's lr = this x the lr of the layer above (layers.py); 1: off
    calibration_feature: str = DEFAULT_FEATURE  # form of the calibrator fitted on dev, or auto: Calibrator.fit(feature=...)

    def __post_init__(self) -> None:
        self._check_data_and_names()
        self._check_flags()
        self._check_numbers()
        self._check_score_thresholds()
        check_loss_params(self.loss, self.metric, self.loss_params, self.projection_dim)  # before any data is read
        self.auxiliary_losses = check_auxiliary_losses(self.auxiliary_losses, self.metric, self.projection_dim)
        if self.hard_negatives is not None:
            check_hard_negatives(self.hard_negatives, self.metric, self.seed)
            self._check_refresh(self.hard_negatives.get("refresh_steps"))
        self.mix_pairs = check_mix_pairs(self.mix_pairs, self)
        self.interpolate = check_interpolate(self.interpolate, self)

    def _check_refresh(self, refresh: int | None) -> None:
        # A refresh rewrites the mined pairs in the training process: a loader worker keeps its own copy of them,
        # and a frozen encoder never changes (the head trains on cached embeddings), so mining again finds the same.
        if refresh is not None and self.dataloader_num_workers:
            raise ConfigError(f"hard_negatives.refresh_steps={refresh!r} needs dataloader_num_workers: 0 (worker "
                              f"processes would keep serving the old negatives), got {self.dataloader_num_workers!r}")
        if refresh is not None and self.freeze_encoder:
            raise ConfigError(f"hard_negatives.refresh_steps={refresh!r} needs freeze_encoder: false: a frozen "
                              "encoder does not change, so mining again would find the same negatives")

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
        try:
            self.metric = Metric.parse(self.metric).value
        except ValueError as exc:  # Metric.parse raises a bare ValueError
            raise InvalidArgumentError(str(exc)) from None
        require_choice("loss", self.loss, list_losses())
        if not isinstance(self.loss_params, dict):
            raise InvalidArgumentTypeError(f"loss_params must be a mapping of parameter -> value, got {self.loss_params!r}")
        require_choice("items", self.items, ITEM_KINDS)
        if not isinstance(self.encoder_options, dict) or not all(isinstance(k, str) for k in self.encoder_options):
            raise InvalidArgumentTypeError(
                f"encoder_options must be a mapping of option name -> value, got {self.encoder_options!r}"
            )
        require_choice("sampler", self.sampler, SAMPLERS)
        require_choice("lr_scheduler", self.lr_scheduler, LR_SCHEDULERS)
        require_choice("calibration_feature", self.calibration_feature, FIT_FEATURES)
        if self.pooling is not None:
            # loads torch: only when pooling is set
            from metric_sim.encoders.text import POOLING_MODES

            require_choice("pooling", self.pooling, POOLING_MODES)
        report_to = [self.report_to] if isinstance(self.report_to, str) else self.report_to
        if not isinstance(report_to, list) or not all(isinstance(r, str) and r for r in report_to):
            raise InvalidArgumentTypeError(
                f"report_to must be a non-empty string or a list of them, got {self.report_to!r}"
            )

    def _check_flags(self) -> None:
        if self.normalize is not None and not isinstance(self.normalize, bool):
            hint = " (a string: write true, false or null without quotes)" if isinstance(self.normalize, str) else ""
            raise InvalidArgumentTypeError(f"normalize must be true, false or null, got {self.normalize!r}{hint}")
        for name in ("freeze_encoder", "bf16", "fp16", "load_best_model_at_end", "zero_shot_eval"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                hint = " (a string: write true or false without quotes)" if isinstance(value, str) else ""
                raise InvalidArgumentTypeError(f"{name} must be true or false, got {value!r}{hint}")
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
        self._check_robust()
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
            if value is not None and not math.isfinite(value):
                raise InvalidArgumentError(f"{name} must be a finite number or null, got {value!r}")

    def _check_robust(self) -> None:
        layers, weight = self.freeze_layers, self.l2sp_weight
        if isinstance(layers, bool) or not isinstance(layers, int) or layers < 0:
            raise ConfigError(f"freeze_layers must be a non-negative integer (0: train every layer), got {layers!r}")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise ConfigError(f"l2sp_weight must be a finite number >= 0 (0: off), got {weight!r}")
        if layers and self.freeze_encoder:  # freeze_encoder already freezes every layer (and caches embeddings)
            raise ConfigError(f"freeze_layers={layers!r} and freeze_encoder: true exclude each other: set one")
        decay = check_layer_lr_decay(self.layer_lr_decay)
        if decay != 1 and self.freeze_encoder:  # only the head trains: there are no layers to spread rates over
            raise ConfigError(f"layer_lr_decay={decay!r} and freeze_encoder: true exclude each other: set one")

    def _check_score_thresholds(self) -> None:
        # Only the score presets binarise a score; anywhere else the thresholds would be silently ignored.
        given = {name: getattr(self, name) for name in ("score_low", "score_high") if getattr(self, name) is not None}
        if not given:
            return
        defaults = None
        if self.preset is not None:
            from metric_sim.data import PRESETS  # already loaded by the preset check

            defaults = PRESETS[self.preset].score_thresholds
        if defaults is None:
            source = f"preset {self.preset!r}" if self.preset is not None else "train_file (0/1 labels)"
            shown = ", ".join(f"{name}={value!r}" for name, value in given.items())
            raise InvalidArgumentError(
                f"score_low/score_high apply only to the score presets (stsb, sick), got {shown} with {source}"
            )
        low = defaults[0] if self.score_low is None else self.score_low
        high = defaults[1] if self.score_high is None else self.score_high
        if not low < high:
            note = {name: " (the preset's default)" if getattr(self, name) is None else ""
                    for name in ("score_low", "score_high")}
            raise InvalidArgumentError(
                f"score_low must be smaller than score_high, got score_low={low!r}{note['score_low']} "
                f"and score_high={high!r}{note['score_high']}"
            )

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
            raise InvalidArgumentTypeError(f"a training config must be a mapping of key -> value, got {type(payload).__name__}")
        valid = cls.field_names()
        unknown = sorted((key for key in payload if key not in valid), key=repr)
        if unknown:
            raise InvalidArgumentError(f"unknown config key(s) {unknown}; valid keys: {sorted(valid)}")
        for key, value in payload.items():
            _require_shallow(key, value)
        kwargs = {key: _coerce(key, _expand_env(key, value)) for key, value in payload.items()}
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        # Keys saved only when set: without them a config saves exactly as it did before they existed.
        return {key: value for key, value in dataclasses.asdict(self).items()
                if key not in _SAVED_WHEN_SET or value != _SAVED_WHEN_SET[key]}

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str], overrides: Mapping[str, Any] | None = None) -> TrainConfig:
        """Load a recipe; ``overrides`` (e.g. from ``--set``) replace its values before validation.

        A recipe that is not valid YAML, or holds a wrong key or value, raises
        :class:`~metric_sim.errors.ConfigError` naming the file (and the overrides, if any).
        """
        import yaml

        path = Path(path)
        if not path.exists():
            raise MissingFileError(f"config file not found: {path}")
        if not path.is_file():
            raise ConfigError(f"{path}: not a file: a config is a YAML file of key: value")
        try:
            payload = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise ConfigError(f"{path}: cannot be read: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text: byte {exc.start} cannot be decoded ({exc.reason})") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(exc)}") from None
        except RecursionError:
            raise ConfigError(f"{path}: not a config: nested too deeply to read") from None
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


def check_hard_negatives(block: Any, metric: str, seed: int) -> dict[str, Any]:
    """A ``hard_negatives`` block checked (``ConfigError`` naming ``hard_negatives.<key>`` and the value).

    Returns the :class:`~metric_sim.mining.MiningOptions` fields for ``mine: true`` (``seed``
    filled in from the config), or an empty dict for ``file``.
    """
    if not isinstance(block, Mapping):
        raise ConfigError(f"hard_negatives must be a mapping (file: PATH, or mine: true with mining options), got {block!r}")
    unknown = sorted((key for key in block if key not in HARD_NEGATIVE_KEYS), key=repr)
    if unknown:
        raise ConfigError(f"unknown hard_negatives key(s) {[f'hard_negatives.{k}' for k in unknown]}; "
                          f"valid keys: {list(HARD_NEGATIVE_KEYS)}")
    mine = block.get("mine", False)
    if not isinstance(mine, bool):
        hint = " (a string: write true or false without quotes)" if isinstance(mine, str) else ""
        raise ConfigError(f"hard_negatives.mine must be true or false, got {mine!r}{hint}")
    path = block.get("file")
    if path is not None and (not isinstance(path, str) or not path):
        raise ConfigError(f"hard_negatives.file must be the path of a saved negatives TSV, got {path!r}")
    refresh = block.get("refresh_steps")
    if refresh is not None:
        try:
            require_positive_int("hard_negatives.refresh_steps", refresh)
        except InvalidArgumentError as exc:
            raise ConfigError(f"{exc} (or null: never refresh)") from None
        if not mine:  # re-mining needs the mining options; a file was mined elsewhere, once
            raise ConfigError(f"hard_negatives.refresh_steps={refresh!r} applies only with mine: true (it mines "
                              f"again with the model being trained), got mine={mine!r} and file={path!r}")
    if (path is not None) == mine:
        raise ConfigError("hard_negatives needs exactly one of file (negatives saved by `metric-sim mine`) or "
                          f"mine: true, got file={path!r} and mine={mine!r}")
    given = {key: block[key] for key in _MINING_KEYS if key in block}
    if path is not None:
        if given:  # they would be silently ignored: the file was mined already
            raise ConfigError(f"hard_negatives.{next(iter(given))} applies only with mine: true, not with file "
                              f"(the file was mined with its own options), got {given}")
        return {}
    if given.get("max_probability") is not None:
        raise ConfigError(f"hard_negatives.max_probability={given['max_probability']!r} needs a calibrated model, "
                          "but mining before training uses the uncalibrated starting encoder: mine with "
                          "`metric-sim mine` on a calibrated model and give its file, or leave it out")
    # Mining's own checks (mining is light: numpy and the index kinds, no torch).
    from metric_sim.index.kinds import parse_index_kind
    from metric_sim.mining import MiningOptions

    try:
        options = MiningOptions.checked(**{"seed": seed, **given})
    except (InvalidArgumentError, InvalidArgumentTypeError) as exc:
        raise ConfigError(f"hard_negatives.{exc}") from exc
    try:
        parse_index_kind(options.index_kind, metric)
    except ValueError as exc:
        raise ConfigError(f"hard_negatives.index_kind={options.index_kind!r}: {exc}") from exc
    return options.to_dict()


def _yaml_problem(exc: Exception) -> str:
    """The parser's message with its ``<unicode string>`` position written as line and column."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if mark is None or problem is None:
        return str(exc)
    context = getattr(exc, "context", None)
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" + (f" ({context})" if context else "")


def _require_shallow(key: str, value: Any) -> None:
    """A config value is a scalar, a list of scalars or a mapping of scalars (loss_params).

    Deeper values are refused before anything walks them: no config key takes one, and
    YAML aliases can make a small file expand into an exponentially large nest.
    """
    if key in ("mix_pairs", "auxiliary_losses") and isinstance(value, list):  # a list of mappings
        for i, entry in enumerate(value):
            _require_shallow(f"{key}[{i}]", entry)
        return
    if (key in ("encoder_options", "interpolate") or re.fullmatch(r"auxiliary_losses\[\d+\]", key)) and isinstance(value, Mapping):
        # one level more: an image augmentation ({hflip: false}), interpolate's guard list, an auxiliary loss_params
        for name, child in value.items():
            _require_shallow(f"{key}.{name}", child)
        return
    children = value.values() if isinstance(value, Mapping) else value if isinstance(value, list) else ()
    if key.startswith("encoder_options.") and isinstance(value, Mapping):
        # an option's own mapping may hold short lists of scalars (a crop scale [0.8, 1.0], an image size)
        for name, child in value.items():
            _require_shallow(f"{key}.{name}", child)
        return
    for child in children:
        if isinstance(child, (Mapping, list)):
            raise InvalidArgumentTypeError(
                f"config key {key!r} holds a nested {type(child).__name__} ({_short(child)}); "
                "its values must be plain numbers, strings, booleans or null"
            )


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _coerce(key: str, value: Any) -> Any:
    if key in _FLOAT_FIELDS and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise InvalidArgumentError(f"{key} must be a number, got {value!r}") from None
    if key in _FLOAT_FIELDS and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if key == "loss_params" and isinstance(value, Mapping):
        return {k: yaml_number(v) for k, v in value.items()}
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
        if any(not part.strip() for part in key.split(".")):
            raise ConfigError(f"--set {item!r}: the key {key!r} has an empty part (write e.g. loss_params.neg_margin=0.9)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw  # not YAML: the text itself (e.g. a path with a colon)
        except RecursionError:
            raise ConfigError(f"--set {item!r}: the value is nested too deeply to read") from None
        target = out
        parts = [part.strip() for part in key.split(".")]
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is set both as a value and as a mapping")
        if isinstance(target.get(parts[-1]), dict) and not isinstance(value, dict):
            # An earlier --set gave keys inside it: replacing them silently would drop them.
            raise ConfigError(f"--set {item!r}: {parts[-1]!r} is set both as a value and as a mapping")
        if isinstance(target.get(parts[-1]), dict) and isinstance(value, dict):
            value = {**target[parts[-1]], **value}  # loss_params.x=1 then loss_params={y: 2}: keep both
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
