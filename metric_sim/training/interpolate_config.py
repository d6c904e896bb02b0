"""The ``interpolate`` block of a :class:`~metric_sim.training.config.TrainConfig`: WiSE-FT at the end of the run.

Light on purpose, like the config: no torch, transformers or datasets. The block only
says what to do; :mod:`metric_sim.training.interpolate_step` loads the guard sets when the
run starts and mixes the weights when it ends. ``docs/robust-fine-tuning.md`` ("In a
recipe") is the user guide.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from metric_sim.errors import ConfigError

__all__ = ["INTERPOLATE_KEYS", "check_interpolate"]

INTERPOLATE_KEYS = ("alpha", "guard", "alphas", "tolerance")
_AUTO_ONLY = ("guard", "alphas", "tolerance")
_TEST_SPLIT = "test"


class _RunSettings(Protocol):
    """What the checks read of the config: whether the encoder trains, and where train and dev pairs come from."""

    freeze_encoder: bool
    preset: str | None
    train_file: str | None
    dev_file: str | None
    train_split: str | None
    dev_split: str | None


def check_interpolate(block: Any, config: _RunSettings) -> dict[str, Any] | None:
    """The ``interpolate`` block checked (``ConfigError`` naming ``interpolate.<key>`` and the value); None is off.

    Returns ``{"alpha": A}`` for a fixed alpha, or ``{"alpha": "auto", "guard": [...],
    "alphas": [...] or None, "tolerance": T or None}`` (None: the library's default grid and
    tolerance). Guard sets are only checked for form here; the run loads them before training.
    """
    if block is None:
        return None
    if not isinstance(block, Mapping):
        raise ConfigError(f"interpolate must be a mapping (alpha: A in [0, 1] or auto, guard: [PRESET[:SPLIT] or "
                          f"FILE, ...]), got {block!r}")
    unknown = sorted((key for key in block if key not in INTERPOLATE_KEYS), key=repr)
    if unknown:
        raise ConfigError(f"unknown interpolate key(s) {[f'interpolate.{key}' for key in unknown]}; "
                          f"valid keys: {list(INTERPOLATE_KEYS)}")
    if config.freeze_encoder:  # the run trains only a head the base lacks: every alpha is the same model
        raise ConfigError("interpolate needs freeze_encoder: false: a frozen encoder keeps its starting weights, so "
                          "there is nothing to interpolate, got freeze_encoder=True")
    if "alpha" not in block:
        raise ConfigError("interpolate.alpha is required: a number in [0, 1] (0 = the starting model, 1 = the "
                          "fine-tuned one) or auto (chosen on dev with the guard sets)")
    alpha = _alpha(block["alpha"])
    if alpha != "auto":
        given = [key for key in _AUTO_ONLY if block.get(key) is not None]
        if given:
            raise ConfigError(f"interpolate.{given[0]} applies only with alpha: auto (choosing alpha on dev), got "
                              f"alpha={alpha!r} and {given[0]}={block[given[0]]!r}")
        return {"alpha": alpha}
    return {"alpha": "auto", "guard": _guards(block.get("guard"), config), "alphas": _alphas(block.get("alphas")),
            "tolerance": _tolerance(block.get("tolerance"))}


def _number(value: Any) -> float | None:
    """``value`` as a finite float, or None; YAML reads some numbers (``1e-3``) as strings."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _alpha(value: Any) -> float | str:
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    number = _number(value)
    if number is None or not 0 <= number <= 1:
        raise ConfigError(f"interpolate.alpha must be a number in [0, 1] (0 = the starting model, 1 = the fine-tuned "
                          f"one) or auto, got {value!r}")
    return number + 0.0  # no -0.0


def _guards(value: Any, config: _RunSettings) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if value is None or value == []:
        raise ConfigError(f"interpolate.guard is required with alpha: auto: held-out pairs of other data whose AP must "
                          f"not fall (PRESET[:SPLIT] or a pairs file, e.g. [stsb, sick:trial]), got {value!r}")
    if not isinstance(value, list):
        raise ConfigError(f"interpolate.guard must be a list of PRESET[:SPLIT] or pairs files, got {value!r}")
    for i, entry in enumerate(value):
        where = f"interpolate.guard[{i}]"
        if not isinstance(entry, str) or not entry.strip():
            raise ConfigError(f"{where} must be PRESET[:SPLIT] or the path of a pairs file, got {entry!r}")
        preset, _, split = entry.partition(":")
        if split.strip().lower() == _TEST_SPLIT:
            raise ConfigError(f"{where}={entry!r}: alpha must never be chosen on a test split; name a held-out split "
                              f"(e.g. {preset}:dev) or a pairs file")
        if value.index(entry) != i:
            raise ConfigError(f"{where}={entry!r} repeats interpolate.guard[{value.index(entry)}]: give each set once")
        _refuse_run_data(where, entry, preset, split or "dev", config)
    return list(value)


def _refuse_run_data(where: str, entry: str, preset: str, split: str, config: _RunSettings) -> None:
    """A guard set is other data: not the dev pairs alpha is chosen on, nor the pairs the run trains on."""
    if config.preset is not None and preset == config.preset:
        for role, run_split, own_file in (("dev", config.dev_split, config.dev_file),
                                          ("training", config.train_split, config.train_file)):
            if own_file is None and split == run_split:
                raise ConfigError(f"{where}={entry!r} is this run's {role} split ({role}_split={run_split!r}): a guard "
                                  "set is held-out pairs of other data")
    resolved = Path(entry).expanduser().resolve()
    for role, own_file in (("dev_file", config.dev_file), ("train_file", config.train_file)):
        if own_file is not None and Path(own_file).expanduser().resolve() == resolved:
            raise ConfigError(f"{where}={entry!r} is this run's {role}: a guard set is held-out pairs of other data")


def _alphas(value: Any) -> list[float] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise ConfigError(f"interpolate.alphas must be a list of numbers in [0, 1] (0, the base, is always tried), "
                          f"got {value!r}")
    alphas = []
    for i, entry in enumerate(value):
        number = _number(entry)
        if number is None or not 0 <= number <= 1:
            raise ConfigError(f"interpolate.alphas[{i}] must be a number in [0, 1], got {entry!r}")
        alphas.append(number + 0.0)
    if not any(a > 0 for a in alphas):
        raise ConfigError(f"interpolate.alphas must hold a value above 0 (0, the base, is always tried), got {value!r}")
    return alphas


def _tolerance(value: Any) -> float | None:
    if value is None:
        return None
    number = _number(value)
    if number is None or number < 0:
        raise ConfigError(f"interpolate.tolerance must be a finite number >= 0 (the AP each guard set may lose "
                          f"against the starting model), got {value!r}")
    return number
