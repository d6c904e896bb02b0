"""N-way one-shot classification (Lake et al.'s Omniglot protocol) on classes unseen in training.

A task shows one item of each of N distinct classes (the *support set*) and one OTHER
item of one of those classes (the *query*); the answer is the support item nearest to
the query by raw distance. Accuracy over many seeded tasks, with a Wilson score interval.

* :func:`sample_one_shot_tasks` draws the tasks (public, so a test or a second model can
  replay exactly the same tasks);
* :func:`one_shot_accuracy` scores one ``n_way``; :func:`one_shot_accuracies` several at once;
* :func:`wilson_interval` is the confidence interval used.

With ``groups`` (e.g. the alphabet of each Omniglot character) every task draws its N
classes from ONE group, as Lake et al. and Koch et al. do for within-alphabet tasks, which
are harder than tasks mixing alphabets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from metric_sim.distances import Metric, paired_distances_numpy
from metric_sim.errors import InvalidArgumentError, InvalidArgumentTypeError
from metric_sim.validation import require_matrix, require_positive_int

__all__ = [
    "ONE_SHOT_TIE_RULE",
    "OneShotTasks",
    "one_shot_accuracies",
    "one_shot_accuracy",
    "sample_one_shot_tasks",
    "wilson_interval",
]

ONE_SHOT_TIE_RULE = (
    "the support item drawn first wins a tie; the N classes are drawn in random order and the "
    "query's class sits at a uniform position, so tied distances score chance (1/N), not 0 or 1"
)
_TASK_BLOCK = 256  # tasks scored at once: bounds the (tasks x N x dim) gather


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``successes / trials``.

    Unlike the normal (Wald) interval it stays inside [0, 1] and is not degenerate at 0 or
    ``trials`` successes (Newcombe 1998, method 3; scipy's ``binomtest(...).proportion_ci("wilson")``).
    """
    trials = require_positive_int("trials", trials)
    if isinstance(successes, bool) or not isinstance(successes, (int, np.integer)) or not 0 <= successes <= trials:
        raise InvalidArgumentError(f"successes must be an integer in [0, trials={trials}], got {successes!r}")
    if not 0.0 < confidence < 1.0:
        raise InvalidArgumentError(f"confidence must be in (0, 1), got {confidence!r}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    p = successes / trials
    denominator = 1.0 + z * z / trials
    centre = (p + z * z / (2.0 * trials)) / denominator
    half = z / denominator * math.sqrt(p * (1.0 - p) / trials + z * z / (4.0 * trials * trials))
    # Exact endpoints at 0 / trials successes (the formula gives them up to rounding).
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return float(low), float(high)


@dataclass(frozen=True)
class OneShotTasks:
    """Seeded one-shot tasks, as row indices into the embeddings / labels.

    ``support[t]`` holds one item of each of the task's N classes, in the order they were
    drawn; ``query[t]`` is another item of the class at ``support[t, target[t]]``.
    """

    support: np.ndarray  # (n_tasks, n_way) int64
    query: np.ndarray  # (n_tasks,) int64
    target: np.ndarray  # (n_tasks,) int64, the position of the right answer in support[t]
    eligible_classes: int  # classes with >= 2 items (in groups with >= n_way such classes)
    eligible_groups: int | None  # None when tasks draw from all classes


def _as_label_vector(name: str, values: Any, n: int) -> np.ndarray:
    array = np.asarray(values)
    if array.shape != (n,):
        raise InvalidArgumentError(f"{name} must be 1-D with one entry per item ({n}), got shape {array.shape}")
    if array.dtype == object:
        raise InvalidArgumentTypeError(f"{name} must be integers or strings (one dtype), got dtype object")
    return array


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InvalidArgumentError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _class_groups(labels: np.ndarray, classes: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """The group code of each class; every item of a class must share one group."""
    _, group_codes = np.unique(groups, return_inverse=True)
    group_codes = group_codes.reshape(-1)
    _, first_item = np.unique(classes, return_index=True)
    class_group = group_codes[first_item]
    mixed = np.flatnonzero(class_group[classes] != group_codes)
    if mixed.size:
        i = int(mixed[0])
        j = int(first_item[classes[i]])
        raise InvalidArgumentError(
            f"groups: class {labels[i].tolist()!r} spans several groups (item {j} is in group "
            f"{groups[j].tolist()!r}, item {i} in group {groups[i].tolist()!r}); each class must belong to one group"
        )
    return class_group


def sample_one_shot_tasks(
    labels: Any,
    *,
    n_way: int,
    n_tasks: int = 400,
    seed: int = 0,
    groups: Any = None,
) -> OneShotTasks:
    """Draw ``n_tasks`` N-way one-shot tasks (see the module docstring), reproducibly from ``seed``.

    Per task, from ``numpy.random.default_rng(seed)`` in this order: (with ``groups``) a
    group uniformly among those with at least ``n_way`` classes of >= 2 items; ``n_way``
    distinct classes uniformly without replacement (in random order); the target position
    uniformly; then for each class in order one support item, and for the target class
    two distinct items (support, query). Only classes with at least two items take part.
    """
    label_array = np.asarray(labels)
    if label_array.ndim != 1:
        raise InvalidArgumentError(f"labels must be 1-D (one label per item), got shape {label_array.shape}")
    label_array = _as_label_vector("labels", label_array, label_array.shape[0])
    n_way = _check_int("n_way", n_way, 2)
    n_tasks = require_positive_int("n_tasks", n_tasks)
    seed = _check_int("seed", seed, 0)
    _, classes, counts = np.unique(label_array, return_inverse=True, return_counts=True)
    classes = classes.reshape(-1)
    order = np.argsort(classes, kind="stable")
    members = np.split(order, np.cumsum(counts)[:-1])  # item indices of each class, ascending
    usable = np.flatnonzero(counts >= 2)
    if groups is None:
        pools = [usable]
        if usable.size < n_way:
            raise InvalidArgumentError(
                f"n_way={n_way} needs at least {n_way} classes with >= 2 items, "
                f"labels have {usable.size} (of {counts.size} classes)"
            )
    else:
        group_array = _as_label_vector("groups", groups, label_array.shape[0])
        class_group = _class_groups(label_array, classes, group_array)
        pools = [p for g in np.unique(class_group[usable]) if (p := usable[class_group[usable] == g]).size >= n_way]
        if not pools:
            largest = max((int(np.sum(class_group[usable] == g)) for g in np.unique(class_group[usable])), default=0)
            raise InvalidArgumentError(
                f"n_way={n_way} with groups needs a group with at least {n_way} classes of >= 2 items; "
                f"the largest group has {largest}"
            )
    rng = np.random.default_rng(seed)
    support = np.empty((n_tasks, n_way), dtype=np.int64)
    query = np.empty(n_tasks, dtype=np.int64)
    target = np.empty(n_tasks, dtype=np.int64)
    for t in range(n_tasks):
        pool = pools[int(rng.integers(len(pools)))] if groups is not None else pools[0]
        chosen = rng.choice(pool, size=n_way, replace=False)
        target[t] = rng.integers(n_way)
        for position, c in enumerate(chosen):
            if position == target[t]:
                support[t, position], query[t] = rng.choice(members[c], size=2, replace=False)
            else:
                support[t, position] = members[c][rng.integers(members[c].size)]
    return OneShotTasks(
        support=support,
        query=query,
        target=target,
        eligible_classes=int(sum(p.size for p in pools)),
        eligible_groups=None if groups is None else len(pools),
    )


def one_shot_accuracy(
    embeddings: Any,
    labels: Any,
    *,
    n_way: int,
    metric: Metric | str,
    n_tasks: int = 400,
    seed: int = 0,
    groups: Any = None,
    return_correct: bool = False,
) -> dict[str, Any]:
    """N-way one-shot accuracy of raw ``metric`` distances over seeded tasks.

    ``embeddings`` (n, dim) and ``labels`` (n,) describe items of classes NOT seen in
    training; ``groups`` (n,), optional, keeps each task inside one group. The prediction
    is the support item at the smallest distance; ties: see :data:`ONE_SHOT_TIE_RULE`.
    Returns ``accuracy``, ``correct_tasks``, ``n_tasks``, ``n_way``, ``chance`` (1/N), the
    95 % Wilson score interval ``interval_95`` and the settings; with ``return_correct``
    also ``correct``, a bool array with one entry per task (not JSON: drop it before saving).
    """
    metric = Metric.parse(metric)
    emb = require_matrix("embeddings", embeddings)
    label_array = np.asarray(labels)
    if label_array.shape != (emb.shape[0],):
        raise InvalidArgumentError(
            f"labels must be 1-D with one label per embedding ({emb.shape[0]}), got shape {label_array.shape}"
        )
    tasks = sample_one_shot_tasks(label_array, n_way=n_way, n_tasks=n_tasks, seed=seed, groups=groups)
    correct = np.empty(tasks.query.size, dtype=bool)
    for start in range(0, tasks.query.size, _TASK_BLOCK):
        rows = slice(start, start + _TASK_BLOCK)
        supports = emb[tasks.support[rows]]  # (tasks, N, dim)
        queries = np.broadcast_to(emb[tasks.query[rows]][:, None, :], supports.shape)
        # Differences, not the |x|^2 + |y|^2 - 2xy expansion: equal points tie at exactly 0.
        distances = paired_distances_numpy(queries, supports, metric)
        predicted = np.argmin(distances, axis=1)  # the first of equal minima: the tie rule
        correct[rows] = predicted == tasks.target[rows]
    hits = int(correct.sum())
    low, high = wilson_interval(hits, int(correct.size))
    result: dict[str, Any] = {
        "accuracy": hits / correct.size,
        "correct_tasks": hits,
        "n_tasks": int(correct.size),
        "n_way": int(n_way),
        "chance": 1.0 / n_way,
        "interval_95": [low, high],
        "interval_method": "Wilson score interval for a binomial proportion (95 %)",
        "metric": metric.value,
        "ranked_by": f"raw {metric.value} distance",
        "sampling": "N classes from one group per task" if groups is not None else "N classes from all classes",
        "eligible_classes": tasks.eligible_classes,
        "eligible_groups": tasks.eligible_groups,
        "seed": int(seed),
        "ties": ONE_SHOT_TIE_RULE,
    }
    if return_correct:
        result["correct"] = correct
    return result


def one_shot_accuracies(
    embeddings: Any,
    labels: Any,
    *,
    n_ways: Sequence[int] = (5, 20),
    metric: Metric | str,
    n_tasks: int = 400,
    seed: int = 0,
    groups: Any = None,
) -> dict[str, dict[str, Any]]:
    """:func:`one_shot_accuracy` for each ``n_way`` (same seed), keyed ``"5_way"``, ``"20_way"``, ..."""
    if isinstance(n_ways, (str, bytes)) or not isinstance(n_ways, (Sequence, np.ndarray)) or len(n_ways) == 0:
        raise InvalidArgumentError(f"n_ways must be a non-empty sequence of integers >= 2, got {n_ways!r}")
    return {
        f"{int(n)}_way": one_shot_accuracy(
            embeddings, labels, n_way=n, metric=metric, n_tasks=n_tasks, seed=seed, groups=groups
        )
        for n in (_check_int(f"n_ways[{i}]", n, 2) for i, n in enumerate(n_ways))
    }
