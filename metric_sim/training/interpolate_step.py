"""A recipe's ``interpolate`` block: WiSE-FT weight interpolation as the last step of ``train``.

The run keeps the fine-tuned model (calibrated on dev) in ``RUN_DIR/model_finetuned`` and
writes ``RUN_DIR/model`` with the weights ``(1 - alpha) * start + alpha * fine-tuned``,
calibrated on dev. ``alpha: auto`` chooses alpha with
:func:`metric_sim.interpolation.choose_alpha`: the run's dev pairs are the in-domain set and
the ``guard`` sets are loaded by the rules of ``metric-sim interpolate --guard``
(:mod:`metric_sim.data.held_out`), when the run starts, so a bad one stops it before training.

The starting weights are rebuilt at the end exactly as the run built them (the same
``starting_encoder`` call: model, encoder options, seed, normalisation, pooling, max
length); an encoder the caller handed to ``train`` cannot be rebuilt, so a CPU copy of it
is kept from the start. Under torchrun rank 0 chooses alpha and writes the folder; every
rank mixes its own copy with the alpha and record rank 0 broadcasts.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metric_sim.calibration import DEFAULT_FEATURE
from metric_sim.data import PairDataset
from metric_sim.data.held_out import load_held_out_pairs
from metric_sim.encoders.base import TrainableEncoder
from metric_sim.errors import ConfigError
from metric_sim.interpolation import (
    DEFAULT_ALPHAS,
    DEFAULT_TOLERANCE,
    AlphaChoice,
    choose_alpha,
    interpolate_model,
)
from metric_sim.layout import MODEL_DIR, MODEL_FINETUNED_DIR
from metric_sim.metrics import ranking_metrics
from metric_sim.model import SimilarityModel
from metric_sim.training.config import TrainConfig
from metric_sim.training.dev import calibrate_on_dev

__all__ = ["SELECT_ON", "InterpolationStep", "prepare_interpolation"]

logger = logging.getLogger(__name__)

SELECT_ON = "dev"  # what the record names as the in-domain set: the run's own dev pairs


@dataclass
class InterpolationStep:
    """What the run needs at its end to interpolate: the fixed alpha (None: auto), the guard sets, the start."""

    alpha: float | None
    guard_sets: dict[str, PairDataset]
    guard_sources: dict[str, str]
    alphas: tuple[float, ...]
    tolerance: float
    base_name: str | None
    rebuild: Callable[[], TrainableEncoder]
    calibration_feature: str = DEFAULT_FEATURE  # the run's form, asked for again (a fit may fall back to a nested one)
    model: SimilarityModel | None = field(default=None, init=False)  # the mixed model, once finish() has run

    def keep_start(self, encoder: TrainableEncoder) -> None:
        """Use a CPU copy of ``encoder`` (a caller's encoder, not rebuildable from the config) as the start."""
        start = copy.deepcopy(encoder).to("cpu")
        self.rebuild, self.base_name = (lambda: start), None  # the record names it by its source

    def finish(self, finetuned: SimilarityModel, dev_data: PairDataset, run_dir: Path, *,
               extra: dict[str, Any], batch_size: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """Rank 0: choose alpha, save the mixed model calibrated on dev to ``RUN_DIR/model``;
        returns (its dev figures, the ``interpolation`` section of ``metrics.json``)."""
        base = self.rebuild()
        choice = None
        if self.alpha is None:
            logger.info("WiSE-FT: choosing alpha on the dev pairs with guard sets %s",
                        ", ".join(f"{name} ({source})" for name, source in self.guard_sources.items()))
            choice = choose_alpha(finetuned, base, dev_data, self.guard_sets, self.alphas, self.tolerance,
                                  batch_size=batch_size)
            _log_choice(choice)
        alpha = choice.alpha if choice is not None else self.alpha
        model = interpolate_model(finetuned, base, alpha, base_name=self.base_name)
        if choice is not None:
            model.weight_interpolation = {**model.weight_interpolation,
                                          "selection": {"select_on": SELECT_ON, **choice.to_dict()}}
        dev = _calibrate_on_dev(model, dev_data, batch_size, self.calibration_feature)
        model.save(run_dir / MODEL_DIR, extra=extra)
        self.model = model
        section: dict[str, Any] = {"alpha": alpha, "base": model.weight_interpolation["base"],
                                   "chosen_by": "auto" if choice is not None else "fixed in the config"}
        if choice is not None:
            section.update({"select_on": SELECT_ON, "guard_sets": dict(self.guard_sources), **choice.to_dict()})
        logger.info("WiSE-FT: alpha %g: dev AP %.4f; model saved to %s (the fine-tuned one to %s)", alpha,
                    dev["average_precision"], run_dir / MODEL_DIR, run_dir / MODEL_FINETUNED_DIR)
        return dev, section

    def replica(self, finetuned: SimilarityModel, record: dict[str, Any]) -> SimilarityModel:
        """Another rank: its copy of the fine-tuned model mixed with the alpha rank 0 chose, with rank 0's record."""
        model = interpolate_model(finetuned, self.rebuild(), record["alpha"], base_name=self.base_name)
        model.weight_interpolation = record
        return model


def prepare_interpolation(config: TrainConfig, rebuild: Callable[[], TrainableEncoder]) -> InterpolationStep | None:
    """The step a config's ``interpolate`` block asks for (None without one), its guard sets loaded now:
    a set that does not load or holds one class is a ``ConfigError`` before any model loads.

    ``rebuild`` builds the starting encoder as the run does (``starting_encoder(config)``).
    """
    block = config.interpolate
    if block is None:
        return None
    guards: dict[str, PairDataset] = {}
    sources: dict[str, str] = {}
    auto = block["alpha"] == "auto"
    for i, value in enumerate(block["guard"] if auto else []):
        where = f"interpolate.guard[{i}]"
        name, pairs, source = load_held_out_pairs(where, value, data_dir=config.data_dir, error=ConfigError)
        if name in guards:
            raise ConfigError(f"{where}={value!r} names the set {name!r} a second time: give each set once")
        guards[name], sources[name] = pairs, source
    alphas = block.get("alphas") if auto else None
    tolerance = block.get("tolerance") if auto else None
    return InterpolationStep(
        alpha=None if auto else float(block["alpha"]),
        guard_sets=guards,
        guard_sources=sources,
        alphas=tuple(alphas) if alphas is not None else DEFAULT_ALPHAS,
        tolerance=tolerance if tolerance is not None else DEFAULT_TOLERANCE,
        base_name=config.model,
        rebuild=rebuild,
        calibration_feature=config.calibration_feature,
    )


def _calibrate_on_dev(model: SimilarityModel, dev_data: PairDataset, batch_size: int, feature: str) -> dict[str, Any]:
    """Fit the model's calibrator on the dev pairs (as the fine-tuned model's was) and return its dev figures."""
    distances = model.distance(dev_data.texts_a, dev_data.texts_b, batch_size=batch_size)
    labels = dev_data.labels
    calibration = calibrate_on_dev(model, distances, labels, role="interpolated model", feature=feature)
    return {**ranking_metrics(distances, labels), **calibration}


def _log_choice(choice: AlphaChoice) -> None:
    guards = list(choice.guard_floor)
    logger.info("%6s  %10s%s  guard", "alpha", "AP dev", "".join(f"  {'AP ' + name:>16s}" for name in guards))
    for row in choice.table:
        logger.info("%6.3g  %10.4f%s  %s%s", row["alpha"], row["in_domain_ap"],
                    "".join(f"  {row['guard_ap'][name]:16.4f}" for name in guards),
                    "pass" if row["passes"] else "FAIL", "  <- chosen" if row["alpha"] == choice.alpha else "")
    logger.info("%6s  %10s%s", "floor", "", "".join(f"  {choice.guard_floor[name]:16.4f}" for name in guards))
    logger.info("rule: %s", choice.rule)
    if not choice.guard_met:
        logger.warning("WiSE-FT: no alpha above 0 keeps every guard set within %g AP of the starting model: alpha 0 "
                       "(the starting model) is written, giving up %.4f dev AP", choice.tolerance, choice.in_domain_cost)
