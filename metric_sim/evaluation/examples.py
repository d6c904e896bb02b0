"""Printable example pairs showing ``p(a, b)`` and ``p(b, a)`` side by side (they are equal, bit for bit)."""

from __future__ import annotations

from typing import Any

import numpy as np

from metric_sim.errors import InvalidArgumentTypeError
from metric_sim.model import SimilarityModel
from metric_sim.validation import require_positive_int


def _shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def pair_line(a: str, b: str, p_ab: float, p_ba: float, d: float, label: int | None, width: int) -> str:
    """One pair: both probabilities, whether they are equal, the distance, the label and both texts."""
    same = "equal" if p_ab == p_ba else f"DIFFER by {abs(p_ab - p_ba):.3g}"
    tag = "" if label is None else f"  label={label}"
    return f"p(a,b)={p_ab:.4f}  p(b,a)={p_ba:.4f} ({same})  d={d:.4f}{tag}  a: {_shorten(a, width)!r}  b: {_shorten(b, width)!r}"


def example_rows(labels: np.ndarray, probabilities: np.ndarray, limit: int) -> list[int]:
    """Typical pairs of each class: the 90th, 50th and 10th percentile of p within the class."""
    rows: list[int] = []
    per_class = max(1, limit // 2)
    for label in (1, 0):
        members = np.flatnonzero(labels == label)
        if not members.size:
            continue
        order = members[np.argsort(-probabilities[members], kind="stable")]
        picks = np.linspace(0.1, 0.9, per_class) if per_class > 1 else np.array([0.5])
        rows += list(dict.fromkeys(int(order[int(q * (order.size - 1))]) for q in picks))
    return rows[:limit]


def example_pair_lines(model: SimilarityModel, pairs: Any, *, limit: int = 6, width: int = 60) -> list[str]:
    """Printable lines showing ``p(a, b)`` and ``p(b, a)`` (equal, bit for bit) for a few pairs.

    ``pairs`` is a ``PairDataset`` (then a few typical similar and dissimilar pairs
    are picked and their labels shown) or a sequence of ``(text_a, text_b)`` tuples
    (the first ``limit``). Both orders go through ``model.predict_proba``.
    """
    limit = require_positive_int("limit", limit)
    if hasattr(pairs, "texts_a") and hasattr(pairs, "labels"):
        texts_a, texts_b, labels = pairs.texts_a, pairs.texts_b, pairs.labels
        rows = example_rows(labels, model.predict_proba(texts_a, texts_b), limit)
        chosen = [(texts_a[i], texts_b[i], int(labels[i])) for i in rows]
    else:
        items = list(pairs)[:limit]
        for i, item in enumerate(items):
            if not (isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(t, str) for t in item)):
                raise InvalidArgumentTypeError(f"pairs[{i}] must be a (text_a, text_b) tuple of strings, got {item!r}")
        chosen = [(a, b, None) for a, b in items]
    if not chosen:
        return []
    a_side = [c[0] for c in chosen]
    b_side = [c[1] for c in chosen]
    p_ab = model.predict_proba(a_side, b_side)
    p_ba = model.predict_proba(b_side, a_side)
    d = model.distance(a_side, b_side)
    header = f"{model.metric.value} distance, tau = {model.threshold:.4f}, p(d=0) = {float(model.calibrator.predict_proba([0.0])[0]):.4f}"
    return [header] + [
        pair_line(a, b, float(x), float(y), float(dist), label, width)
        for (a, b, label), x, y, dist in zip(chosen, p_ab, p_ba, d, strict=True)
    ]
