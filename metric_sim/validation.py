"""Boundary checks that raise ``InvalidArgumentError`` / ``InvalidArgumentTypeError`` (a ``ValueError`` /
``TypeError`` too) naming the argument, what was expected and what came.

Every public entry point validates its arguments here so a bad value fails at the
call site with a readable message instead of deep inside torch, FAISS or sklearn.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from metric_sim.errors import InvalidArgumentError, InvalidArgumentTypeError


def yaml_number(value: Any) -> Any:
    """``value`` as a float when it is a string that parses as one, else unchanged.

    YAML 1.1 reads ``1e-3`` (no dot) as a string; in a recipe the number was meant.
    """
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def require_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """Return ``value`` if it is one of ``choices``; otherwise raise listing them."""
    options = list(choices)
    if value not in options:
        raise InvalidArgumentError(f"{name} must be one of {options}, got {value!r}")
    return value


def require_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise InvalidArgumentError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def require_non_negative_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise InvalidArgumentError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def require_positive_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise InvalidArgumentTypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if not np.isfinite(value) or value <= 0:
        raise InvalidArgumentError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def require_probability(name: str, value: Any, *, open_interval: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise InvalidArgumentTypeError(f"{name} must be a probability, got {type(value).__name__} {value!r}")
    value = float(value)
    ok = (0.0 < value < 1.0) if open_interval else (0.0 <= value <= 1.0)
    if not ok:
        bounds = "(0, 1)" if open_interval else "[0, 1]"
        raise InvalidArgumentError(f"{name} must be in {bounds}, got {value!r}")
    return value


def require_texts(name: str, texts: Any) -> list[str]:
    """A non-string sequence of strings; each element must be a ``str``."""
    if isinstance(texts, (str, bytes)) or not isinstance(texts, (Sequence, np.ndarray)):
        raise InvalidArgumentTypeError(f"{name} must be a list of strings, got {type(texts).__name__}")
    out = list(texts)
    for i, text in enumerate(out):
        if not isinstance(text, str):
            raise InvalidArgumentTypeError(f"{name}[{i}] must be a str, got {type(text).__name__} {text!r}")
    return out


def require_same_length(name_a: str, a: Sequence[Any], name_b: str, b: Sequence[Any]) -> None:
    if len(a) != len(b):
        raise InvalidArgumentError(f"{name_a} and {name_b} must have the same length, got {len(a)} and {len(b)}")


def require_matrix(name: str, value: Any, *, columns: int | None = None) -> np.ndarray:
    """A finite 2-D float array, optionally with a fixed number of columns."""
    array = np.asarray(value)
    if array.ndim != 2:
        raise InvalidArgumentError(f"{name} must be a 2-D array (n, dim), got shape {array.shape}")
    if columns is not None and array.shape[1] != columns:
        raise InvalidArgumentError(f"{name} must have {columns} columns, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number):
        raise InvalidArgumentTypeError(f"{name} must be numeric, got dtype {array.dtype}")
    if not np.all(np.isfinite(array)):
        raise InvalidArgumentError(f"{name} contains NaN or infinite values")
    return array


def as_distances(name: str, values: Any) -> np.ndarray:
    """A 1-D float64 array of finite, non-negative distances (raises naming ``name``)."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise InvalidArgumentError(f"{name} must be a 1-D array of distances, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise InvalidArgumentError(f"{name} contains NaN or infinite values")
    if np.any(array < 0):
        raise InvalidArgumentError(f"{name} must be non-negative distances, got minimum {array.min()!r}")
    return array


def as_binary_labels(name: str, values: Any, size: int) -> np.ndarray:
    """A 1-D int64 array of 0/1 labels of length ``size`` (1 = similar)."""
    array = np.asarray(values)
    if array.shape != (size,):
        raise InvalidArgumentError(f"{name} must be a 1-D array of {size} labels (one per distance), got shape {array.shape}")
    if not np.isin(array, (0, 1)).all():
        raise InvalidArgumentError(f"{name} must be 0/1, got values {sorted(set(np.unique(array).tolist()))[:10]}")
    return array.astype(np.int64)
