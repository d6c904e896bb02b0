"""Turn a raw label value into 0/1: binary labels, mapped labels, thresholded scores.

A parser returns 0 or 1, ``None`` for a row dropped by design (a score between the
thresholds), or raises :class:`BadLabel`, which the loader counts as a ``bad_label`` row.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from metric_sim.errors import InvalidArgumentError, InvalidArgumentTypeError

__all__ = ["BadLabel", "MappedLabel", "ScoreLabel", "parse_binary_label"]


class BadLabel(Exception):
    """A label value the parser does not accept; the message says what was expected."""


def parse_binary_label(value: Any) -> int:
    """0/1 from a bool, 0/1 int or float, or the strings "0", "1", "0.0", "1.0"."""
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return int(value)
    if isinstance(value, (float, np.floating)) and value in (0.0, 1.0):
        return int(value)
    if isinstance(value, str) and value.strip() in ("0", "1", "0.0", "1.0"):
        return int(float(value))
    raise BadLabel(f"label must be 0 or 1, got {value!r}")


class MappedLabel:
    """Only the keys of ``label_map`` are accepted (strict: a typo must not pass as 0/1)."""

    def __init__(self, label_map: Mapping[Any, int]) -> None:
        if not isinstance(label_map, Mapping) or not label_map:
            raise InvalidArgumentTypeError(f"label_map must be a non-empty dict raw -> 0/1, got {label_map!r}")
        for key, v in label_map.items():
            if isinstance(v, bool) or v not in (0, 1):
                raise InvalidArgumentError(f"label_map values must be 0 or 1, got {key!r}: {v!r}")
        self.label_map = dict(label_map)

    def __call__(self, value: Any) -> int:
        for key in (value, value.strip() if isinstance(value, str) else value):
            try:
                if key in self.label_map:
                    return int(self.label_map[key])
            except TypeError:  # unhashable raw value (a list from JSON)
                break
        raise BadLabel(f"label must be one of {list(self.label_map)}, got {value!r}")


class ScoreLabel:
    """Binarise a similarity score: 1 if >= high, 0 if <= low, None (dropped) in between."""

    def __init__(self, low: float, high: float) -> None:
        for name, v in (("low", low), ("high", high)):
            if (
                isinstance(v, bool)
                or not isinstance(v, (int, float, np.integer, np.floating))
                or not math.isfinite(v)
            ):
                raise InvalidArgumentError(f"{name} must be a finite number, got {v!r}")
        if not low < high:
            raise InvalidArgumentError(f"low must be < high, got low={low!r} high={high!r}")
        self.low, self.high = float(low), float(high)

    def __call__(self, value: Any) -> int | None:
        score: float | None = None
        if isinstance(value, str):
            try:
                score = float(value.strip())
            except ValueError:
                score = None
        elif isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
            value, bool
        ):
            score = float(value)
        if score is None or not math.isfinite(score):
            raise BadLabel(f"score must be a finite number, got {value!r}")
        if score >= self.high:
            return 1
        if score <= self.low:
            return 0
        return None
