"""The loss registry: one :class:`LossSpec` per loss name, carrying everything about that loss.

An entry holds the kind of tuples the loss reads, its builder, its default parameters
(in Euclidean units, and which of them scale with the metric), the rule each parameter
must follow, the counter of its usable tuples and the miners it accepts. Nothing else is
keyed by loss name.

:func:`validate_loss_params` is the one check of a loss's parameters: a training config
runs it when it is built (before any data is read) and :func:`resolve_loss_params`, which
every loss goes through, runs it again, so no path can skip it.

Imports neither torch nor pytorch-metric-learning (they load when a loss is built or
a tuple counted), so a training config can validate its loss cheaply.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from metric_sim.distances import Metric
from metric_sim.errors import InvalidArgumentError, InvalidArgumentTypeError

if TYPE_CHECKING:
    from metric_sim.losses.tuples import IndicesTuple

__all__ = [
    "AUXILIARY_KEYS",
    "LOSSES",
    "LossSpec",
    "ParamRule",
    "build_miner",
    "count_usable",
    "default_loss_params",
    "list_losses",
    "loss_spec",
    "manhattan_scale",
    "resolve_loss_params",
    "validate_loss_params",
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


def _count_ranked(t: IndicesTuple) -> int:
    return len(t[0]) * len(t[2])  # (similar, dissimilar) pairs of pairs to order


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


def _pair_ranking(distance: Any, p: Mapping[str, Any]) -> Any:
    from metric_sim.losses.pair_ranking import PairRankingLoss

    return PairRankingLoss(temperature=p["temperature"], distance=distance)


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
class ParamRule:
    """What a numeric loss parameter accepts: a finite number ``> low`` (``>= low`` when ``inclusive``).

    No upper bound: margins and temperatures are distances, and Manhattan distances (and
    those of an unnormalised encoder) are many times the Euclidean ones of a unit sphere.
    ``meaning`` is shown in error messages.
    """

    meaning: str
    low: float = 0.0
    inclusive: bool = False

    def bound(self) -> str:
        return f"{'>=' if self.inclusive else '>'} {self.low:g}"

    def accepts(self, value: float) -> bool:
        return value >= self.low if self.inclusive else value > self.low


_POS_MARGIN = ParamRule("the distance below which similar pairs cost nothing", inclusive=True)
_NEG_MARGIN = ParamRule("the distance dissimilar pairs are pushed beyond")
_TEMPERATURE = ParamRule("the distance scale of the logits")


@dataclass(frozen=True)
class LossSpec:
    """One registry entry.

    ``kind`` says which tuples the loss reads (``"pairs"``, ``"labels"`` or ``"triplets"``,
    see :mod:`metric_sim.losses`); ``build(distance, params)`` makes the PML loss;
    ``count(indices_tuple)`` counts the tuples that give a non-trivial loss term;
    ``miners`` are the accepted values of the ``miner`` parameter (the first is the
    default). ``distance_params`` scale with the metric, ``inverse_params`` (weights
    multiplying a distance) scale inversely, the rest do not. ``rules`` hold the
    :class:`ParamRule` of every numeric parameter, and ``ordered`` the pairs
    ``(smaller, larger)`` that must stay strictly ordered.
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
    rules: Mapping[str, ParamRule] = field(default_factory=dict)
    ordered: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        # A new entry must say how each of its parameters is checked: no parameter goes unvalidated.
        numeric = set(self.defaults) - {"miner"}
        if set(self.rules) != numeric:
            raise AssertionError(f"loss {self.name!r}: rules for {sorted(self.rules)}, parameters {sorted(numeric)}")
        if self.defaults.get("miner") not in self.miners:
            raise AssertionError(f"loss {self.name!r}: default miner {self.defaults.get('miner')!r} not in {self.miners}")


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
            rules={"pos_margin": _POS_MARGIN, "neg_margin": _NEG_MARGIN},
            ordered=(("pos_margin", "neg_margin"),),
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
            rules={"pos_margin": _POS_MARGIN, "neg_margin": _NEG_MARGIN},
            ordered=(("pos_margin", "neg_margin"),),
        ),
        LossSpec(
            "pair_ranking",
            "pairs",
            "CoSENT on raw distance: log(1 + sum exp((d_similar - d_dissimilar) / temperature)) over the batch's "
            "explicit pairs, every similar pair ranked closer than every dissimilar one",
            {"temperature": 0.2, "miner": None},  # QQP dev's best of 0.025-0.4 (benchmarks/RESULTS.md)
            _pair_ranking,
            _count_ranked,
            distance_params=("temperature",),
            no_tuple_hint="Pair ranking needs a similar and a dissimilar pair in one batch: increase batch_size.",
            rules={"temperature": _TEMPERATURE},
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
            rules={"margin": ParamRule("the distance gap wanted between positive and negative (also the "
                                       "triplet_margin miner's)")},
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
            rules={
                "alpha": ParamRule("the weight of positive pairs per unit of distance"),
                "beta": ParamRule("the weight of negative pairs per unit of distance"),
                "base": ParamRule("the pivot distance between positives and negatives"),
                "epsilon": ParamRule("the multi_similarity miner's distance margin"),
            },
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
            rules={"temperature": _TEMPERATURE},
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
            rules={"temperature": _TEMPERATURE},
        ),
    )
}


# The keys of one auxiliary loss (a training config's ``auxiliary_losses`` entry, :mod:`.composite`).
AUXILIARY_KEYS = ("loss", "weight", "loss_params")


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


def validate_loss_params(
    name: str, metric: Metric | str, params: Any, *, embedding_dim: int | None = None
) -> dict[str, Any]:
    """``params`` of loss ``name`` checked against its :class:`LossSpec`; numbers returned as floats.

    Refuses an unknown loss or parameter, a miner the loss does not accept, a value that
    is not a number (strings and booleans included), not finite or out of range, and an
    ordered pair out of order (``pos_margin < neg_margin``), each message naming the loss,
    the parameter, the value and what is valid. A parameter left out takes its default
    for the comparison when the default is known without ``embedding_dim`` (any Euclidean
    default, any zero); the rest is compared once ``embedding_dim`` is given.
    """
    spec = loss_spec(name)
    metric = Metric.parse(metric)
    if not isinstance(params, Mapping):
        raise InvalidArgumentTypeError(
            f"parameters of loss {spec.name!r} must be a mapping of parameter -> value, got {params!r}"
        )
    valid = sorted(spec.defaults)
    unknown = sorted((key for key in params if key not in spec.defaults), key=repr)
    if unknown:
        raise InvalidArgumentError(f"unknown parameter(s) {unknown} for loss {spec.name!r}; valid: {valid}")
    checked = {key: _checked_value(spec, metric, key, value) for key, value in params.items()}
    for smaller, larger in spec.ordered:
        low, high = (_known_value(spec, metric, embedding_dim, checked, key) for key in (smaller, larger))
        if low is not None and high is not None and not low[0] < high[0]:
            raise InvalidArgumentError(
                f"loss {spec.name!r}: {smaller} must be smaller than {larger}, got {smaller}={_shown(*low)} "
                f"and {larger}={_shown(*high)}"
            )
    return checked


def validate_auxiliary_loss(
    entry: Any, metric: Metric | str, *, where: str = "auxiliary loss", embedding_dim: int | None = None
) -> dict[str, Any]:
    """One auxiliary loss ``{loss, weight, loss_params}`` checked; returned with a float weight.

    ``loss`` must be a registry loss, ``weight`` a finite number > 0 (its factor in
    ``main + sum(weight * auxiliary)``), ``loss_params`` (``{}`` when left out) is checked by
    :func:`validate_loss_params` for ``metric``, exactly like the main loss's. Every message
    starts with ``where`` (``auxiliary_losses[1]`` in a recipe) and names the key and the value.
    """
    if not isinstance(entry, Mapping):
        raise InvalidArgumentTypeError(f"{where} must be a mapping {{loss, weight, loss_params}}, got {entry!r}")
    unknown = sorted((key for key in entry if key not in AUXILIARY_KEYS), key=repr)
    if unknown:
        raise InvalidArgumentError(f"unknown key(s) {[f'{where}.{key}' for key in unknown]}; valid keys: {list(AUXILIARY_KEYS)}")
    name = entry.get("loss")
    if not isinstance(name, str) or name not in LOSSES:
        raise InvalidArgumentError(f"{where}.loss must be one of {list_losses()}, got {name!r}")
    weight = entry.get("weight")
    if weight is None:
        raise InvalidArgumentError(f"{where}.weight is required: the factor of this loss in the total (a number > 0)")
    weight = validate_auxiliary_weight(weight, where=f"{where}.weight")
    params = entry.get("loss_params")
    params = {} if params is None else params
    if not isinstance(params, Mapping):
        raise InvalidArgumentTypeError(f"{where}.loss_params must be a mapping of parameter -> value, got {params!r}")
    try:
        validate_loss_params(name, metric, params, embedding_dim=embedding_dim)
    except (InvalidArgumentError, InvalidArgumentTypeError) as exc:
        raise type(exc)(f"{where}.loss_params: {exc}") from exc
    return {"loss": name, "weight": weight, "loss_params": dict(params)}


def validate_auxiliary_weight(weight: Any, *, where: str = "weight") -> float:
    """An auxiliary loss's weight as a float: a finite number > 0 (its factor in ``main + sum(weight * auxiliary)``)."""
    factor = "(the factor of this loss in the total main + sum(weight * auxiliary))"
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real):
        raise InvalidArgumentTypeError(f"{where} must be a finite number > 0 {factor}, got {weight!r}")
    if not math.isfinite(weight) or weight <= 0:
        raise InvalidArgumentError(f"{where} must be a finite number > 0 {factor}, got {weight!r}")
    return float(weight)


def _checked_value(spec: LossSpec, metric: Metric, key: str, value: Any) -> Any:
    if key == "miner":
        if value not in spec.miners:
            raise InvalidArgumentError(
                f"miner of loss {spec.name!r} must be one of {list(spec.miners)} (null: no miner), got {value!r}"
            )
        return value
    rule = spec.rules[key]
    units = f"in {metric.value} units" if key in spec.distance_params + spec.inverse_params else "a pure number"
    where = f"loss {spec.name!r}: parameter {key!r}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidArgumentTypeError(
            f"{where} must be a finite number, got {value!r} ({type(value).__name__}); it is {rule.meaning}, "
            f"{rule.bound()} ({units})"
        )
    if not math.isfinite(value):
        raise InvalidArgumentError(f"{where} must be a finite number {rule.bound()}, got {value!r}")
    if not rule.accepts(value):
        raise InvalidArgumentError(f"{where} must be {rule.bound()}, got {value!r}; it is {rule.meaning} ({units})")
    return float(value)


def _shown(value: float, origin: str) -> str:
    return repr(value) if origin == "given" else f"{value:.6g} ({origin})"


def _known_value(
    spec: LossSpec, metric: Metric, embedding_dim: int | None, checked: Mapping[str, Any], key: str
) -> tuple[float, str] | None:
    """``(value, note)`` of ``key``: the given one, or its default when it can be known; else None."""
    if key in checked:
        return checked[key], "given"
    default = spec.defaults[key]
    scaled = key in spec.distance_params + spec.inverse_params
    if embedding_dim is not None or metric is Metric.EUCLIDEAN or not scaled or default == 0:
        value = default_loss_params(spec.name, metric, embedding_dim or 1)[key]
        return value, f"the {metric.value} default{'' if embedding_dim is None else f' for {embedding_dim} dims'}"
    return None  # a Manhattan default depends on the embedding size: compared when the loss is built


def resolve_loss_params(
    spec: LossSpec, metric: Metric, embedding_dim: int, params: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The metric's defaults of ``spec`` overridden by ``params``, checked by :func:`validate_loss_params`."""
    checked = validate_loss_params(spec.name, metric, params or {}, embedding_dim=embedding_dim)
    return {**default_loss_params(spec.name, metric, embedding_dim), **checked}
