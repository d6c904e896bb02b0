"""Weight-space interpolation between a fine-tuned encoder and the weights it started from (WiSE-FT).

Wortsman et al. (2022), "Robust fine-tuning of zero-shot models": the encoder with weights

    theta(alpha) = (1 - alpha) * theta_base + alpha * theta_finetuned,    0 <= alpha <= 1

often keeps most of what fine-tuning gained on the target data (alpha near 1) while
recovering much of what the starting model knew elsewhere (alpha near 0). Both encoders
must be the same kind with the same tensors (names and shapes): the fine-tuned one must
have started from ``base``.

:func:`interpolate_weights` returns the new encoder; :func:`interpolate_model` wraps it in a
:class:`~metric_sim.model.SimilarityModel` that records the coefficient and the base's
identity in ``metric_sim.json`` (``weight_interpolation``) and refits the calibrator,
since distances change with the weights. :func:`choose_alpha` picks the coefficient on held-out
data by a fixed rule (:func:`select_alpha`, the rule alone on a table of figures).
``docs/robust-fine-tuning.md`` is the user guide.
"""

from __future__ import annotations

import copy
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from metric_sim.calibration import DEFAULT_FEATURE
from metric_sim.encoders.base import TrainableEncoder
from metric_sim.errors import InvalidArgumentError, InvalidArgumentTypeError
from metric_sim.metrics import average_precision
from metric_sim.model import SimilarityModel, pair_set_distances
from metric_sim.validation import require_probability

__all__ = [
    "DEFAULT_ALPHAS",
    "DEFAULT_TOLERANCE",
    "AlphaChoice",
    "choose_alpha",
    "interpolate_model",
    "interpolate_weights",
    "interpolation_record",
    "select_alpha",
]

logger = logging.getLogger(__name__)


def _head_prefixes(finetuned: Any, base: Any) -> tuple[str, ...]:
    """State-dict prefixes of projection heads the fine-tuned encoder has and the base lacks (at the same place)."""
    prefixes = []
    base_modules = dict(base.named_modules())
    for name, module in finetuned.named_modules():
        if not isinstance(module, TrainableEncoder) or getattr(module, "projection", None) is None:
            continue
        counterpart = base_modules.get(name)
        if isinstance(counterpart, TrainableEncoder) and getattr(counterpart, "projection", None) is None:
            prefixes.append(f"{name}.projection." if name else "projection.")
    return tuple(prefixes)


def _check_pair(finetuned: Any, base: Any) -> None:
    for name, encoder in (("finetuned", finetuned), ("base", base)):
        if not isinstance(encoder, TrainableEncoder) or not hasattr(encoder, "state_dict"):
            raise InvalidArgumentTypeError(
                f"{name} must be a TrainableEncoder (a PyTorch encoder: text, image, multimodal), "
                f"got {type(encoder).__name__}"
            )
    if finetuned.kind != base.kind:
        raise InvalidArgumentError(f"finetuned is an encoder of kind {finetuned.kind!r} but base is of kind "
                                   f"{base.kind!r}: only an encoder and the weights it started from can be interpolated")


def _interpolated_state(finetuned: Any, base: Any, alpha: float) -> tuple[dict[str, Any], list[str]]:
    """(the new state dict, the tensor names kept from the fine-tuned model at every alpha)."""
    import torch

    ft_state, base_state = finetuned.state_dict(), base.state_dict()
    heads = _head_prefixes(finetuned, base)
    kept = [name for name in ft_state if name not in base_state and name.startswith(heads)]
    missing = [name for name in ft_state if name not in base_state and name not in kept]
    if missing:
        raise InvalidArgumentError(f"tensor {missing[0]!r} of finetuned is not in base ({len(missing)} such tensors): "
                                   "the two encoders have different architectures")
    extra = [name for name in base_state if name not in ft_state]
    if extra:
        raise InvalidArgumentError(f"tensor {extra[0]!r} of base is not in finetuned ({len(extra)} such tensors): "
                                   "the two encoders have different architectures")
    state: dict[str, Any] = {}
    for name, tuned in ft_state.items():
        if name in kept:
            state[name] = tuned.detach().clone()
            continue
        start = base_state[name]
        if tuple(tuned.shape) != tuple(start.shape):
            raise InvalidArgumentError(f"tensor {name!r} has shape {tuple(tuned.shape)} in finetuned but "
                                       f"{tuple(start.shape)} in base: the two encoders have different architectures")
        if tuned.dtype != start.dtype:
            raise InvalidArgumentError(f"tensor {name!r} is {tuned.dtype} in finetuned but {start.dtype} in base; "
                                       "load both in the same precision")
        if not tuned.is_floating_point():  # counters such as BatchNorm's num_batches_tracked
            state[name] = tuned.detach().clone()
        elif alpha == 0.0:  # the endpoints are copies, so they reproduce either model bit for bit
            state[name] = start.detach().clone()
        elif alpha == 1.0:
            state[name] = tuned.detach().clone()
        else:
            # float64 on the CPU, rounded once to the tensor's dtype (MPS has no float64).
            mixed = (1.0 - alpha) * start.detach().to("cpu", torch.float64) \
                + alpha * tuned.detach().to("cpu", torch.float64)
            state[name] = mixed.to(tuned.dtype)
    return state, kept


def _warn_about_settings(finetuned: Any, base: Any, kept: list[str]) -> None:
    """Log what makes the result differ from a plain mix of the two models' functions."""
    ignored = {"projection", "augment"}  # the head is handled above; augmentation does not change vectors
    ft_config, base_config = finetuned.config_dict(), base.config_dict()
    differing = sorted(k for k in set(ft_config) | set(base_config)
                       if k not in ignored and ft_config.get(k) != base_config.get(k))
    if differing:
        logger.warning("interpolation: the encoders' settings differ (%s); the result uses the fine-tuned "
                       "encoder's, so alpha=0 does not reproduce the base's vectors", ", ".join(differing))
    if kept:
        logger.info("interpolation: the projection head (%s) exists only in the fine-tuned encoder and is kept "
                    "from it at every alpha", ", ".join(kept))


def _nothing_to_interpolate(finetuned: Any, base: Any, kept: list[str]) -> bool:
    """True when every shared floating tensor is equal (a frozen-encoder run changed only its head)."""
    import torch

    base_state = base.state_dict()
    return all(torch.equal(t.detach().cpu(), base_state[n].detach().cpu())
               for n, t in finetuned.state_dict().items() if n not in kept and t.is_floating_point())


def interpolate_weights(finetuned: TrainableEncoder, base: TrainableEncoder, alpha: float) -> TrainableEncoder:
    """A new encoder with weights ``(1 - alpha) * base + alpha * finetuned`` (WiSE-FT); inputs untouched.

    ``alpha`` is in ``[0, 1]``: 0 gives the base's weights, 1 the fine-tuned ones; both
    endpoints are copies of the tensors (no arithmetic), so the vectors are the same bit for bit.
    In between, every floating-point tensor of the state dict (parameters and floating buffers
    such as BatchNorm's running mean and variance) is mixed in float64 and rounded once to its
    dtype; integer buffers (BatchNorm's ``num_batches_tracked``) come from the fine-tuned model.

    The two must be the same ``kind`` with the same tensor names, shapes and dtypes (an
    ``InvalidArgumentError`` names the first tensor that differs), except for one case:

    **A projection head only the fine-tuned encoder has** (training with ``projection_dim``
    adds one to a starting model that had none) has no starting value to mix with, so it is
    **kept from the fine-tuned encoder at every alpha**. The rest of the encoder is mixed as
    usual; at ``alpha=0`` the result is then the base's network *followed by the fine-tuned
    head* (its vectors have the fine-tuned dimension), not the base's own vectors. A head only
    the base has is refused. A frozen-encoder run (``freeze_encoder: true``) trains nothing
    but such a head, so every alpha gives the same model; a warning says so.

    The result is a deep copy of ``finetuned`` (on its device, in its train/eval mode) with
    the new weights: it computes with the fine-tuned encoder's settings (pooling,
    normalisation, max length, preprocessing), so ``alpha=0`` reproduces the base's vectors
    when the base has the same settings, as it has when loaded the way the training run
    loaded it (``metric-sim interpolate`` does that); a warning names settings that differ.
    """
    _check_pair(finetuned, base)
    alpha = require_probability("alpha", alpha)
    result, kept = _mixed_encoder(finetuned, base, alpha)
    _warn_once(finetuned, base, kept)
    return result


def _mixed_encoder(finetuned: Any, base: Any, alpha: float) -> tuple[Any, list[str]]:
    """(a deep copy of ``finetuned`` with the mixed weights, the tensor names kept from it); no checks, no warnings."""
    state, kept = _interpolated_state(finetuned, base, alpha)
    result = copy.deepcopy(finetuned)
    result.load_state_dict(state, strict=True)
    return result, kept


def _warn_once(finetuned: Any, base: Any, kept: list[str]) -> None:
    _warn_about_settings(finetuned, base, kept)
    if _nothing_to_interpolate(finetuned, base, kept):
        logger.warning("interpolation: the fine-tuned and base encoders have the same weights%s, so every alpha "
                       "gives the same encoder", " outside the projection head" if kept else "")


def _display_name(name: str | os.PathLike[str] | None) -> str | None:
    """How a base is named in a saved folder: a local folder by its last component (no local paths in a
    model that may be shared, as in an export), anything else (``"default"``, a hub id) as given."""
    if name is None:
        return None
    text = os.fspath(name)
    path = Path(text).expanduser()
    return (path.resolve().name or text) if path.exists() else text


def interpolation_record(finetuned: TrainableEncoder, base: TrainableEncoder, alpha: float, *,
                         base_name: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The ``weight_interpolation`` entry of ``metric_sim.json``: alpha, the base's name and fingerprint,
    the fine-tuned encoder's fingerprint, and the tensors kept from the fine-tuned model at every alpha."""
    _check_pair(finetuned, base)
    heads = _head_prefixes(finetuned, base)
    kept = [name for name in finetuned.state_dict() if name.startswith(heads)] if heads else []
    return {
        "alpha": require_probability("alpha", alpha),
        "base": _display_name(base_name if base_name is not None else base.source),
        "base_fingerprint": base.fingerprint(),
        "finetuned_fingerprint": finetuned.fingerprint(),
        "kept_from_finetuned": kept,
    }


def interpolate_model(
    finetuned_model: SimilarityModel,
    base_encoder: TrainableEncoder,
    alpha: float,
    calibration_pairs: Any = None,
    *,
    base_name: str | os.PathLike[str] | None = None,
    fitted_on: str | None = None,
    batch_size: int = 64,
    show_progress: bool = False,
) -> SimilarityModel:
    """A :class:`SimilarityModel` whose encoder is :func:`interpolate_weights` of the model's encoder and
    ``base_encoder``, with the same metric.

    The old calibrator is **not** carried over: it was fitted on the fine-tuned model's
    distances, and the interpolated weights give other distances. With ``calibration_pairs``
    (a held-out ``PairDataset``: never the pairs you will score on) a new one is fitted, with
    the old one's feature (``squared``/``linear``) when there was one; **without them the
    model is returned uncalibrated**: distances and nearest neighbours work, ``predict_proba``
    and ``predict`` raise ``CalibrationError`` until you call ``model.calibrate(pairs)``.

    The result carries ``weight_interpolation`` (:func:`interpolation_record`): ``alpha``,
    ``base`` (``base_name``, else the base encoder's ``source``; a local folder by its last
    component), ``base_fingerprint`` and ``finetuned_fingerprint``. ``model.save(folder)``
    writes it into ``metric_sim.json``; ``SimilarityModel.from_pretrained`` and
    ``metric-sim export`` keep it.
    """
    if not isinstance(finetuned_model, SimilarityModel):
        raise InvalidArgumentTypeError(f"finetuned_model must be a SimilarityModel, got {type(finetuned_model).__name__}")
    finetuned = finetuned_model.encoder
    encoder = interpolate_weights(finetuned, base_encoder, alpha)  # every check before the fingerprints' cost
    record = interpolation_record(finetuned, base_encoder, alpha, base_name=base_name)
    model = SimilarityModel(encoder, finetuned_model.metric, weight_interpolation=record)
    if calibration_pairs is not None:
        previous = finetuned_model.calibrator
        model.calibrate(calibration_pairs, fitted_on=fitted_on, batch_size=batch_size, show_progress=show_progress,
                        feature=previous.feature if previous is not None else DEFAULT_FEATURE)
    return model


DEFAULT_ALPHAS: tuple[float, ...] = tuple(i / 10 for i in range(11))  # 0, 0.1, ..., 1
DEFAULT_TOLERANCE = 0.005
_RULE = ("among the alphas whose average precision on every guard set is at least the base's (alpha 0) minus "
         "{tolerance:g}, the one with the highest in-domain dev AP; ties go to the larger alpha (closer to the "
         "fine-tuned model); when no alpha above 0 passes, alpha 0 (the base), flagged guard_met=false")


@dataclass(frozen=True)
class AlphaChoice:
    """The alpha :func:`select_alpha` chose and every figure behind it.

    ``table``: one row per alpha, ascending, ``{"alpha", "in_domain_ap", "guard_ap": {set: AP}, "passes"}``.
    ``guard_floor``: the least AP each guard set may keep (the base's, at alpha 0, minus ``tolerance``).
    ``guard_met``: False when no alpha above 0 passes; ``alpha`` is then 0 (the base).
    ``in_domain_cost``: the best in-domain AP of any alpha minus the chosen one's (what the guard costs).
    """

    alpha: float
    guard_met: bool
    in_domain_cost: float
    tolerance: float
    guard_floor: dict[str, float]
    table: list[dict[str, Any]]
    rule: str

    @property
    def chosen(self) -> dict[str, Any]:
        """The table row of the chosen alpha."""
        return next(row for row in self.table if row["alpha"] == self.alpha)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy (``metric-sim interpolate --alpha auto`` saves it as ``weight_interpolation.selection``)."""
        return copy.deepcopy({"alpha": self.alpha, "guard_met": self.guard_met, "in_domain_cost": self.in_domain_cost,
                              "tolerance": self.tolerance, "guard_floor": self.guard_floor, "table": self.table,
                              "rule": self.rule})


def _require_number(name: str, value: Any, *, minimum: float = 0.0, maximum: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InvalidArgumentTypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if not (math.isfinite(value) and minimum <= value <= maximum):
        raise InvalidArgumentError(f"{name} must be a finite number in [{minimum:g}, {maximum:g}], got {value!r}")
    return float(value)


def _table_row(i: int, row: Any) -> dict[str, Any]:
    if not isinstance(row, Mapping):
        raise InvalidArgumentTypeError(f"table[{i}] must be a mapping, got {type(row).__name__}")
    missing = [key for key in ("alpha", "in_domain_ap", "guard_ap") if key not in row]
    if missing:
        raise InvalidArgumentError(f"table[{i}] has no {missing[0]!r} (a row holds alpha, in_domain_ap and guard_ap)")
    guard = row["guard_ap"]
    if not isinstance(guard, Mapping) or not guard:
        raise InvalidArgumentError(f"table[{i}]['guard_ap'] must be a non-empty mapping guard set -> AP, got {guard!r}")
    return {
        "alpha": require_probability(f"table[{i}]['alpha']", row["alpha"]) + 0.0,  # no -0.0
        "in_domain_ap": _require_number(f"table[{i}]['in_domain_ap']", row["in_domain_ap"], maximum=1.0),
        "guard_ap": {str(name): _require_number(f"table[{i}]['guard_ap'][{name!r}]", ap, maximum=1.0)
                     for name, ap in guard.items()},
    }


def select_alpha(table: Iterable[Mapping[str, Any]], tolerance: float = DEFAULT_TOLERANCE) -> AlphaChoice:
    """The selection rule alone, on figures already measured (:func:`choose_alpha` measures them).

    ``table`` holds one mapping per alpha: ``alpha``, ``in_domain_ap`` (AP on the in-domain dev
    pairs) and ``guard_ap`` (``{guard set: AP}``, the same sets in every row). It must include
    alpha 0, the zero-shot base, which the guard is measured against. The rule:

    1. an alpha *passes* when its AP on **every** guard set is at least the base's AP on that
       set minus ``tolerance`` (alpha 0 always passes);
    2. among the passing alphas, the one with the highest in-domain AP is chosen; on a tie
       (equal AP), the larger alpha, which is closer to the fine-tuned model;
    3. when no alpha above 0 passes, the result is alpha 0 with ``guard_met=False``, and
       ``in_domain_cost`` says how much in-domain AP that gives up.
    """
    tolerance = _require_number("tolerance", tolerance)
    if isinstance(table, (str, bytes, Mapping)) or not isinstance(table, Iterable):
        raise InvalidArgumentTypeError(f"table must be a list of rows (one mapping per alpha), got {type(table).__name__}")
    rows = sorted((_table_row(i, row) for i, row in enumerate(table)), key=lambda row: row["alpha"])
    alphas = [row["alpha"] for row in rows]
    if len(set(alphas)) != len(alphas):
        raise InvalidArgumentError(f"table holds alpha {next(a for a in alphas if alphas.count(a) > 1)!r} twice")
    if not rows or alphas[0] != 0.0:
        raise InvalidArgumentError(f"table must include alpha 0 (the base the guard is measured against), got alphas {alphas}")
    names = list(rows[0]["guard_ap"])
    for row in rows:
        if set(row["guard_ap"]) != set(names):
            raise InvalidArgumentError(f"table row alpha={row['alpha']!r} has guard sets {sorted(row['guard_ap'])}, "
                                       f"alpha 0 has {sorted(names)}: every row needs the same sets")
    floor = {name: rows[0]["guard_ap"][name] - tolerance for name in names}
    for row in rows:
        row["passes"] = all(row["guard_ap"][name] >= floor[name] for name in names)
    best = max((row for row in rows if row["passes"]), key=lambda row: (row["in_domain_ap"], row["alpha"]))
    return AlphaChoice(
        alpha=best["alpha"],
        guard_met=any(row["passes"] for row in rows[1:]),
        in_domain_cost=max(row["in_domain_ap"] for row in rows) - best["in_domain_ap"],
        tolerance=tolerance,
        guard_floor=floor,
        table=rows,
        rule=_RULE.format(tolerance=tolerance),
    )


def _alpha_grid(alphas: Any) -> list[float]:
    """Sorted distinct alphas, with 0 (the base, the guard's reference) added when missing."""
    if isinstance(alphas, (str, bytes)) or not isinstance(alphas, Iterable):
        raise InvalidArgumentTypeError(f"alphas must be a sequence of numbers in [0, 1], got {type(alphas).__name__}")
    values = {require_probability(f"alphas[{i}]", a) + 0.0 for i, a in enumerate(alphas)}
    if not any(a > 0 for a in values):
        raise InvalidArgumentError(f"alphas must hold at least one value above 0 (0 is the base), got {sorted(values)}")
    return sorted(values | {0.0})


def _scorable_labels(name: str, pairs: Any) -> np.ndarray:
    if not all(hasattr(pairs, attr) for attr in ("texts_a", "texts_b", "labels")):
        raise InvalidArgumentTypeError(f"{name} must be a PairDataset, got {type(pairs).__name__}")
    labels = np.asarray(pairs.labels)
    if labels.size == 0 or np.unique(labels).size < 2:
        raise InvalidArgumentError(f"{name} holds {labels.size:,} pairs of {np.unique(labels).size} class(es): "
                                   "AP needs both similar (1) and dissimilar (0) pairs")
    return labels


def choose_alpha(
    finetuned_model: SimilarityModel,
    base_encoder: TrainableEncoder,
    in_domain_dev: Any,
    guard_sets: Mapping[str, Any],
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    tolerance: float = DEFAULT_TOLERANCE,
    *,
    batch_size: int = 64,
    show_progress: bool = False,
) -> AlphaChoice:
    """Pick alpha on held-out pairs: measure every alpha, then apply :func:`select_alpha`'s rule.

    For each alpha of ``alphas`` (0 is added when missing: it is the zero-shot base the guard
    compares with) the encoder :func:`interpolate_weights` gives is scored by the average
    precision of its raw distance (no calibrator) on ``in_domain_dev`` (in-domain held-out
    pairs, never the test split) and on each set of ``guard_sets`` (``{name: PairDataset}``,
    held-out pairs of the other data the model must not forget). Then, as :func:`select_alpha`:
    among the alphas whose AP on every guard set is at least the base's minus ``tolerance``,
    the one with the highest in-domain AP; ties go to the larger alpha; when no alpha above 0
    passes, alpha 0 with ``guard_met=False``.

    The items of all the sets together are encoded once per alpha (an item in several sets once).
    """
    if not isinstance(finetuned_model, SimilarityModel):
        raise InvalidArgumentTypeError(f"finetuned_model must be a SimilarityModel, got {type(finetuned_model).__name__}")
    finetuned = finetuned_model.encoder
    _check_pair(finetuned, base_encoder)
    tolerance = _require_number("tolerance", tolerance)
    grid = _alpha_grid(alphas)
    if not isinstance(guard_sets, Mapping) or not guard_sets:
        raise InvalidArgumentError(f"guard_sets must be a non-empty mapping of set name -> PairDataset, got {guard_sets!r}")
    if not all(isinstance(name, str) and name for name in guard_sets):
        raise InvalidArgumentError(f"guard set names must be non-empty strings, got {list(guard_sets)}")
    # Keyed by the name each set has in errors; the guard names cannot collide with "in_domain_dev".
    sets = {"in_domain_dev": in_domain_dev, **{f"guard_sets[{n!r}]": pairs for n, pairs in guard_sets.items()}}
    labels = {name: _scorable_labels(name, pairs) for name, pairs in sets.items()}
    rows = []
    for alpha in grid:
        encoder, kept = _mixed_encoder(finetuned, base_encoder, alpha)
        if not rows:
            _warn_once(finetuned, base_encoder, kept)
        model = SimilarityModel(encoder, finetuned_model.metric)
        distances = pair_set_distances(model, sets, batch_size=batch_size, show_progress=show_progress)
        aps = [average_precision(distances[name], y) for name, y in labels.items()]
        rows.append({"alpha": alpha, "in_domain_ap": aps[0], "guard_ap": dict(zip(guard_sets, aps[1:], strict=True))})
        logger.info("alpha %g: in-domain AP %.4f, guard AP %s", alpha, aps[0], ", ".join(f"{a:.4f}" for a in aps[1:]))
    return select_alpha(rows, tolerance)
