"""The loss keys of a :class:`~metric_sim.training.config.TrainConfig`: ``loss_params`` and ``auxiliary_losses``.

Both are checked by the loss registry when the config is built, before any data is read.
Each ``auxiliary_losses`` entry ``{loss: NAME, weight: W, loss_params: {...}}`` adds
``W * NAME`` to the main loss on the same batch embeddings
(:class:`~metric_sim.losses.composite.CompositeLoss`). Light on purpose, like the config:
the registry check needs neither torch nor pytorch-metric-learning.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from metric_sim.errors import ConfigError, InvalidArgumentError, InvalidArgumentTypeError
from metric_sim.losses.registry import validate_auxiliary_loss, validate_loss_params
from metric_sim.validation import yaml_number

__all__ = ["check_auxiliary_losses", "check_loss_params"]

_SHAPE = "{loss: NAME, weight: W, loss_params: {...}}"


def check_loss_params(loss: str, metric: str, params: Any, embedding_dim: int | None) -> None:
    """The main ``loss_params`` checked by the registry (``ConfigError`` starting ``loss_params:``).

    The embedding size is known only with a projection head; without it a Manhattan default
    that scales with it is compared when the loss is built.
    """
    try:
        validate_loss_params(loss, metric, params, embedding_dim=embedding_dim)
    except (InvalidArgumentError, InvalidArgumentTypeError) as exc:
        raise ConfigError(f"loss_params: {exc}") from exc


def check_auxiliary_losses(entries: Any, metric: str, embedding_dim: int | None) -> list[dict[str, Any]]:
    """The entries checked (``ConfigError`` naming ``auxiliary_losses[i].<key>`` and the value received).

    Returns each as ``{loss, weight, loss_params}`` with ``weight`` a float and ``loss_params``
    (``{}`` when left out) checked by the registry for ``metric``, exactly like the main
    ``loss_params``; ``None`` is an empty list. Numbers YAML reads as strings (``1e-3``) are
    converted, as elsewhere in a recipe.
    """
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise ConfigError(f"auxiliary_losses must be a list of {_SHAPE} entries, got {entries!r}")
    return [_check_entry(i, entry, metric, embedding_dim) for i, entry in enumerate(entries)]


def _check_entry(i: int, entry: Any, metric: str, embedding_dim: int | None) -> dict[str, Any]:
    if isinstance(entry, Mapping):  # numbers YAML reads as strings, converted as elsewhere in a recipe
        entry = dict(entry)
        entry["weight"] = yaml_number(entry.get("weight"))
        if isinstance(entry.get("loss_params"), Mapping):
            entry["loss_params"] = {key: yaml_number(value) for key, value in entry["loss_params"].items()}
    try:
        return validate_auxiliary_loss(entry, metric, where=f"auxiliary_losses[{i}]", embedding_dim=embedding_dim)
    except (InvalidArgumentError, InvalidArgumentTypeError) as exc:
        raise ConfigError(str(exc)) from exc
