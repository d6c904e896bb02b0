"""The loss registry: one :class:`LossSpec` per loss name, carrying everything about that loss.

An entry holds the kind of tuples the loss reads, its builder, its default parameters
(in Euclidean units, and which of them scale with the metric), the counter of its
usable tuples and the miners it accepts. Nothing else is keyed by loss name.

Imports neither torch nor pytorch-metric-learning (they load when a loss is built or
a tuple counted), so a training config can validate its loss name cheaply.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from metric_sim.distances import Metric
from metric_sim.errors import InvalidArgumentError, InvalidArgumentTypeError
from metric_sim.validation import require_choice

if TYPE_CHECKING:
    from metric_sim.losses.tuples import IndicesTuple

__all__ = [
    "LOSSES",
    "LossSpec",
    "build_miner",
    "count_usable",
    "default_loss_params",
    "list_losses",
    "loss_spec",
    "manhattan_scale",
    "resolve_loss_params",
]


def _count_pairs(t: IndicesTuple) -> int:
    return len(t[0]) + len(t[2])


def _count_ntxent(t: IndicesTuple) -> int:
    import torch

    a1, _, a2, _ = t
    return int(torch.isin(a1, a2).sum())  # positive pairs with a negative for the same anchor


def _count_supcon(t: IndicesTuple) -> int:
    import torch

    a1, _, a2, _ = t
    return int(torch.isin(torch.unique(a1), a2).sum())  # anchors with a positive and a negative


def _count_triplets(t: IndicesTuple) -> int:
    return len(t[0])


def _contrastive(distance: Any, p: Mapping[str, Any]) -> Any:
    from pytorch_metric_learning.losses import ContrastiveLoss

    return ContrastiveLoss(pos_margin=p["pos_margin"], neg_margin=p["neg_margin"], distance=distance)


def _triplet(distance: Any, p: Mapping[str, Any]) -> Any:
    from pytorch_metric_learning.losses import TripletMarginLoss

    return TripletMarginLoss(margin=p["margin"], distance=distance, triplets_per_anchor="all")


def _multi_similarity(distance: Any, p: Mapping[str, Any]) -> Any:
    from pytorch_metric_learning.losses import MultiSimilarityLoss

    return MultiSimilarityLoss(alpha=p["alpha"], beta=p["beta"], base=p["base"], distance=distance)


def _ntxent(distance: Any, p: Mapping[str, Any]) -> Any:
    from pytorch_metric_learning.losses import NTXentLoss

    return NTXentLoss(temperature=p["temperature"], distance=distance)


def _supcon(distance: Any, p: Mapping[str, Any]) -> Any:
    from pytorch_metric_learning.losses import SupConLoss

    return SupConLoss(temperature=p["temperature"], distance=distance)


def build_miner(name: str | None, distance: Any, p: Mapping[str, Any]) -> Any:
    """The PML miner ``name`` (None for no miner and for ``hard_pairs``, which the loss applies itself)."""
    from pytorch_metric_learning import miners

    if name is None or name == "hard_pairs":
        return None
    if name == "batch_hard":
        return miners.BatchHardMiner(distance=distance)
    if name == "triplet_margin":
        return miners.TripletMarginMiner(margin=p["margin"], type_of_triplets="semihard", distance=distance)
    if name == "multi_similarity":
        return miners.MultiSimilarityMiner(epsilon=p["epsilon"], distance=distance)
    raise AssertionError(name)  # validated against LossSpec.miners before


@dataclass(frozen=True)
class LossSpec:
    """One registry entry.

    ``kind`` says which tuples the loss reads (``"pairs"``, ``"labels"`` or ``"triplets"``,
    see :mod:`metric_sim.losses`); ``build(distance, params)`` makes the PML loss;
    ``count(indices_tuple)`` counts the tuples that give a non-trivial loss term;
    ``miners`` are the accepted values of the ``miner`` parameter (the first is the
    default). ``distance_params`` scale with the metric, ``inverse_params`` (weights
    multiplying a distance) scale inversely, the rest do not.
    """

    name: str
    kind: str
    description: str
    defaults: Mapping[str, Any]
    build: Callable[[Any, Mapping[str, Any]], Any]
    count: Callable[[IndicesTuple], int]
    distance_params: tuple[str, ...] = ()
    inverse_params: tuple[str, ...] = ()
    miners: tuple[str | None, ...] = (None,)
    no_tuple_hint: str = ""  # what to change when no batch gives a usable tuple


_PAIR_COUNT_HINT = "needs at least two pairs per batch: increase batch_size."

LOSSES: dict[str, LossSpec] = {
    spec.name: spec
    for spec in (
        LossSpec(
            "contrastive",
            "pairs",
            "ContrastiveLoss on the explicit pairs: relu(d - pos_margin) for duplicates, relu(neg_margin - d) for the rest",
            {"pos_margin": 0.0, "neg_margin": 0.8, "miner": None},
            _contrastive,
            _count_pairs,
            distance_params=("pos_margin", "neg_margin"),
            no_tuple_hint="Contrastive loss " + _PAIR_COUNT_HINT,
        ),
        LossSpec(
            "online_contrastive",
            "pairs",
            "ContrastiveLoss on the hard explicit pairs of each batch (sentence-transformers' OnlineContrastiveLoss rule)",
            {"pos_margin": 0.0, "neg_margin": 0.8, "miner": "hard_pairs"},
            _contrastive,
            _count_pairs,
            distance_params=("pos_margin", "neg_margin"),
            miners=("hard_pairs", None),
            no_tuple_hint="Contrastive loss " + _PAIR_COUNT_HINT,
        ),
        LossSpec(
            "triplet",
            "triplets",
            "TripletMarginLoss over anchors with a positive and a negative (explicit pairs + in-batch cluster negatives)",
            {"margin": 0.2, "miner": None},
            _triplet,
            _count_triplets,
            distance_params=("margin",),
            miners=(None, "batch_hard", "triplet_margin"),
            no_tuple_hint="Triplets need an anchor with both a positive and a negative in one batch: use sampler: "
                          "cluster, a larger batch, or a pair loss (contrastive).",
        ),
        LossSpec(
            "multi_similarity",
            "labels",
            "MultiSimilarityLoss over all in-batch pairs by cluster label, explicit non-duplicates kept negative",
            {"alpha": 2.0, "beta": 50.0, "base": 0.8, "epsilon": 0.1, "miner": None},
            _multi_similarity,
            _count_pairs,
            distance_params=("base", "epsilon"),
            inverse_params=("alpha", "beta"),
            miners=(None, "multi_similarity"),
            no_tuple_hint="Multi-similarity loss " + _PAIR_COUNT_HINT,
        ),
        LossSpec(
            "ntxent",
            "labels",
            "NTXentLoss (InfoNCE) with -distance / temperature as the logit; in-batch negatives by cluster label",
            {"temperature": 0.05, "miner": None},
            _ntxent,
            _count_ntxent,
            distance_params=("temperature",),
            no_tuple_hint="NT-Xent needs positive pairs in the batch: does the data have duplicates (label 1)?",
        ),
        LossSpec(
            "supcon",
            "labels",
            "SupConLoss with -distance / temperature as the logit; all same-cluster texts of the batch are positives",
            {"temperature": 0.1, "miner": None},
            _supcon,
            _count_supcon,
            distance_params=("temperature",),
            no_tuple_hint="SupCon needs positive and negative pairs in the batch.",
        ),
    )
}


def list_losses() -> list[str]:
    return sorted(LOSSES)


def loss_spec(name: Any) -> LossSpec:
    """The registry entry of ``name``; an unknown name lists the known ones."""
    if not isinstance(name, str) or name not in LOSSES:
        raise InvalidArgumentError(f"loss must be one of {list_losses()}, got {name!r}")
    return LOSSES[name]


def count_usable(name: str, indices_tuple: IndicesTuple) -> int:
    """How many tuples of ``indices_tuple`` the loss ``name`` turns into a non-trivial loss term."""
    return loss_spec(name).count(indices_tuple)


def manhattan_scale(embedding_dim: int) -> float:
    """Typical ``L1 / L2`` ratio of a ``dim``-dimensional difference vector: ``sqrt(2 dim / pi)``."""
    return math.sqrt(2.0 * embedding_dim / math.pi)


def default_loss_params(name: str, metric: Metric | str, embedding_dim: int) -> dict[str, Any]:
    """The defaults of loss ``name`` in units of ``metric`` for ``embedding_dim``-dimensional embeddings."""
    spec = loss_spec(name)
    metric = Metric.parse(metric)
    scale = 1.0 if metric is Metric.EUCLIDEAN else manhattan_scale(embedding_dim)
    params = dict(spec.defaults)
    for key in spec.distance_params:
        params[key] = params[key] * scale
    for key in spec.inverse_params:
        params[key] = params[key] / scale
    return params


def resolve_loss_params(
    spec: LossSpec, metric: Metric, embedding_dim: int, params: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The metric's defaults of ``spec`` overridden by ``params``, each value checked."""
    resolved = default_loss_params(spec.name, metric, embedding_dim)
    given = dict(params or {})
    unknown = sorted(set(given) - set(resolved))
    if unknown:
        raise InvalidArgumentError(f"unknown parameter(s) {unknown} for loss {spec.name!r}; valid: {sorted(resolved)}")
    for key, value in given.items():
        if key == "miner":
            require_choice(f"miner of loss {spec.name!r}", value, spec.miners)
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InvalidArgumentTypeError(f"loss parameter {key!r} must be a finite number, got {value!r}")
        elif value < 0 or (value == 0 and key not in ("pos_margin",)):
            raise InvalidArgumentError(
                f"loss parameter {key!r} must be {'>= 0' if key == 'pos_margin' else '> 0'}, got {value!r}"
            )
        resolved[key] = value if key == "miner" else float(value)
    if {"pos_margin", "neg_margin"} <= set(resolved) and resolved["pos_margin"] >= resolved["neg_margin"]:
        raise InvalidArgumentError(
            f"pos_margin must be smaller than neg_margin, got {resolved['pos_margin']} and {resolved['neg_margin']}"
        )
    return resolved
