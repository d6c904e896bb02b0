"""Forgetting: how a fine-tuned model does on *other* data sets, against the zero-shot model it started from.

A fine-tune that gains on its own pairs can lose on items unlike them. For each named
set, :func:`out_of_domain_report` scores the fine-tuned model and its base (the
zero-shot starting encoder) the same way and reports the difference, fine-tuned minus
base: AP and ROC-AUC of ranking by ``-distance`` (no calibrator involved), and ECE and
accuracy at ``tau`` of each model's own calibrated probability.

:func:`load_base_model` finds the base: the starting model a training run recorded in its
``train_config.json``, or the one the caller names.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from metric_sim.calibration import Calibrator
from metric_sim.errors import (
    CalibrationError,
    ConfigError,
    EncoderLoadError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
)
from metric_sim.layout import MODEL_DIR, TRAIN_CONFIG_FILE, resolve_model_source
from metric_sim.metrics import calibration_metrics, pair_metrics
from metric_sim.model import SimilarityModel, pair_set_distances
from metric_sim.schema import SavedFields, read_json_file

__all__ = [
    "BASE_MODEL_KEY",
    "check_out_of_domain_sets",
    "load_base_model",
    "out_of_domain_markdown",
    "out_of_domain_report",
    "out_of_domain_summary_lines",
    "recorded_starting_model",
]

logger = logging.getLogger(__name__)

BASE_MODEL_KEY = "base_model"  # the one key of the section that is not a set name
# Figures of each model on a set; all but "threshold" get a delta (fine-tuned minus base).
_COMPARED = ("average_precision", "roc_auc", "ece", "accuracy")


def check_out_of_domain_sets(datasets: Mapping[str, Any]) -> None:
    """Refuse what cannot be scored: no sets, a reserved or empty name, an empty set, a set with one class only."""
    if not isinstance(datasets, Mapping):
        raise InvalidArgumentTypeError(f"datasets must be a mapping of set name -> PairDataset, got {type(datasets).__name__}")
    if not datasets:
        raise InvalidArgumentError("datasets is empty: name at least one out-of-domain set")
    for name, pairs in datasets.items():
        if not isinstance(name, str) or not name or name == BASE_MODEL_KEY:
            raise InvalidArgumentError(f"out-of-domain set names must be non-empty strings other than {BASE_MODEL_KEY!r}, got {name!r}")
        if len(pairs) == 0:
            raise InvalidArgumentError(f"out-of-domain set {name!r} has no pairs")
        classes = np.unique(np.asarray(pairs.labels))
        if classes.size < 2:
            raise InvalidArgumentError(
                f"out-of-domain set {name!r} ({pairs.report.source}) holds only class {int(classes[0])} "
                f"({len(pairs):,} pairs): AP and ROC-AUC need both similar (1) and dissimilar (0) pairs"
            )


def _run_train_config(model_path: str | os.PathLike[str]) -> Path | None:
    """The ``train_config.json`` of the run ``model_path`` belongs to: the run folder itself, or ``RUN_DIR/model``."""
    source = resolve_model_source(model_path)
    if source.train_config_file is not None:
        return source.train_config_file
    folder = source.folder
    if source.kind == "folder" and folder is not None and folder.name == MODEL_DIR:
        candidate = folder.parent / TRAIN_CONFIG_FILE
        if candidate.is_file():
            return candidate
    return None


def recorded_starting_model(model_path: str | os.PathLike[str]) -> tuple[str, dict[str, Any], Path] | None:
    """``(name, settings, file)`` of the starting model a run recorded, or None.

    ``settings`` are the encoder settings training applied to it (``normalize``,
    ``pooling``, ``max_length``, ``encoder_options``, ``seed``), so the base is the very
    encoder the run began from. None when ``model_path`` is not part of a run folder or
    its ``train_config.json`` records no ``model``.
    """
    file = _run_train_config(model_path)
    if file is None:
        return None
    fields = SavedFields(read_json_file(file, ConfigError), file, ConfigError)
    name = fields.get("model", str, required=False, nullable=True)
    if name is None:
        return None
    settings = {
        "normalize": fields.get("normalize", bool, required=False, nullable=True),
        "pooling": fields.get("pooling", str, required=False, nullable=True),
        "max_length": fields.get("max_length", int, required=False, nullable=True, minimum=1),
        "options": fields.get("encoder_options", dict, required=False, nullable=True) or {},
        "seed": fields.get("seed", int, required=False, nullable=True, minimum=0),
    }
    return name, settings, file


def load_base_model(model_path: str | os.PathLike[str], model: SimilarityModel,
                    base: str | os.PathLike[str] | None = None) -> tuple[SimilarityModel, dict[str, Any]]:
    """The zero-shot base of ``model`` (loaded from ``model_path``), uncalibrated, and where it came from.

    ``base`` (a starting-point name, ``"default"``, or a folder) wins when given; it gets
    the model's token limit (texts), like ``evaluate --baseline``. Otherwise the starting
    model recorded in the run's ``train_config.json`` is rebuilt with the settings the
    run applied to it. Neither known is an :class:`InvalidArgumentError` that says to pass ``base``.
    The base always uses the model's metric.
    """
    from metric_sim.encoders.starting import encoder_from_start

    if base is not None:
        name = os.fspath(base)
        encoder = encoder_from_start(name, max_length=getattr(model.encoder, "max_length", None))
        return SimilarityModel(encoder, model.metric), {"source": name, "chosen_by": "given by --base"}
    recorded = recorded_starting_model(model_path)
    if recorded is None:
        raise InvalidArgumentError(
            f"the zero-shot base model of {os.fspath(model_path)!r} is not known: it is not a training run folder whose "
            f"{TRAIN_CONFIG_FILE} records its starting 'model'; pass --base NAME_OR_PATH (e.g. --base default)"
        )
    name, settings, file = recorded
    try:
        encoder = encoder_from_start(name, settings["options"], seed=settings["seed"], normalize=settings["normalize"],
                                     max_length=settings["max_length"], pooling=settings["pooling"])
    except (EncoderLoadError, ConfigError, InvalidArgumentError) as exc:
        raise EncoderLoadError(f"the starting model {name!r} recorded in {file} does not load ({exc}); "
                               "pass --base NAME_OR_PATH to name the zero-shot base model") from exc
    return SimilarityModel(encoder, model.metric), {"source": name, "chosen_by": f"the starting model recorded in {file}"}


def _model_figures(distances: np.ndarray, labels: np.ndarray, calibrator: Calibrator) -> dict[str, Any]:
    pairs = pair_metrics(distances, labels, calibrator)
    calibration = calibration_metrics(labels, calibrator.predict_proba(distances))
    return {"average_precision": pairs["average_precision"], "roc_auc": pairs["roc_auc"], "ece": calibration["ece"],
            "accuracy": pairs["accuracy"], "threshold": pairs["threshold"]}


def _calibrated(model: SimilarityModel, role: str, calibration_pairs: Any, calibration_name: str | None,
                batch_size: int, show_progress: bool) -> tuple[SimilarityModel, str]:
    if calibration_pairs is not None:
        calibrator = model.fit_calibrator(calibration_pairs, fitted_on=calibration_name, batch_size=batch_size,
                                          show_progress=show_progress)
        return SimilarityModel(model.encoder, model.metric, calibrator), f"fitted on {calibration_name or 'the calibration pairs'}"
    if model.calibrator is None:
        raise CalibrationError(f"the {role} has no calibrator: give calibration_pairs (in-domain held-out pairs) "
                               "so that both models get one fitted on the same pairs")
    fitted_on = model.calibrator.fitted_on
    return model, "given with the model" + (f" (fitted on {fitted_on})" if fitted_on else "")


def out_of_domain_report(
    model: SimilarityModel,
    base_model: SimilarityModel,
    datasets: Mapping[str, Any],
    *,
    calibration_pairs: Any = None,
    calibration_name: str | None = None,
    base_info: Mapping[str, Any] | None = None,
    batch_size: int = 64,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Score ``model`` (fine-tuned) and ``base_model`` (its zero-shot start) on each named set of ``datasets``.

    Calibration rule: with ``calibration_pairs`` (in-domain held-out pairs) each model
    gets its own calibrator fitted on those same pairs; without them each model's attached
    calibrator is used, and a model without one is a :class:`CalibrationError`. (``metric-sim
    evaluate`` follows the evaluate rule: both fitted on ``--calibrate-on SPLIT`` when given;
    otherwise the fine-tuned model keeps its stored calibrator and the base gets one fitted
    on the in-domain scored ``--split``; the out-of-domain sets are never used to fit either.)

    ``base_info`` (e.g. ``source`` and ``chosen_by`` from :func:`load_base_model`) goes into
    the ``base_model`` entry. Each distinct item of all the sets together is encoded once
    per model. Returns
    ``{"base_model": {...}, SET: {"source", "pairs", "positives", "model": {...}, "base": {...},
    "delta": {...}}}``, where ``model``/``base`` hold ``average_precision``, ``roc_auc``, ``ece``
    (15 bins), ``accuracy`` and ``threshold`` (the calibrated tau), and ``delta`` is fine-tuned
    minus base for all but the threshold (a positive ECE delta is worse calibration).
    """
    for role, candidate in (("model", model), ("base_model", base_model)):
        if not isinstance(candidate, SimilarityModel):
            raise InvalidArgumentTypeError(f"{role} must be a SimilarityModel, got {type(candidate).__name__}")
    if base_model.metric is not model.metric:
        raise InvalidArgumentError(f"base_model uses metric {base_model.metric.value!r}, the model {model.metric.value!r}: "
                                   "compare them with the same metric")
    check_out_of_domain_sets(datasets)
    scored_model, model_origin = _calibrated(model, "model", calibration_pairs, calibration_name, batch_size, show_progress)
    scored_base, base_origin = _calibrated(base_model, "base model", calibration_pairs, calibration_name, batch_size, show_progress)

    distances = {}
    for role, scored in (("model", scored_model), ("base", scored_base)):
        logger.info("out-of-domain: %s encoding %d pairs of %d sets", role, sum(map(len, datasets.values())), len(datasets))
        distances[role] = pair_set_distances(scored, datasets, batch_size=batch_size, show_progress=show_progress)

    report: dict[str, Any] = {
        BASE_MODEL_KEY: {
            "source": str(getattr(base_model.encoder, "source", None) or "base model"),
            "chosen_by": "given by the caller",
            **(base_info or {}),
            "metric": base_model.metric.value,
            "calibrator": {**scored_base.calibrator.to_dict(), "origin": base_origin},
            "model_calibrator": {**scored_model.calibrator.to_dict(), "origin": model_origin},
        }
    }
    for name, pairs in datasets.items():
        labels = np.asarray(pairs.labels)
        model_figures = _model_figures(distances["model"][name], labels, scored_model.calibrator)
        base_figures = _model_figures(distances["base"][name], labels, scored_base.calibrator)
        report[name] = {
            "source": str(pairs.report.source),
            "pairs": len(pairs),
            "positives": int(labels.sum()),
            "model": model_figures,
            "base": base_figures,
            "delta": {key: model_figures[key] - base_figures[key] for key in _COMPARED},
        }
    return report


def _signed(value: float) -> str:
    return f"{value:+.4f}"


def out_of_domain_summary_lines(section: Mapping[str, Any]) -> list[str]:
    """One printable line per set: pairs, AP and ECE of the base and the fine-tuned model, and the AP change."""
    lines = []
    for name, s in section.items():
        if name == BASE_MODEL_KEY:
            continue
        b, m, d = s["base"], s["model"], s["delta"]
        lines.append(f"{name} ({s['pairs']:,} pairs): AP {b['average_precision']:.4f} -> {m['average_precision']:.4f} "
                     f"({_signed(d['average_precision'])}), ROC-AUC {_signed(d['roc_auc'])}, "
                     f"ECE {b['ece']:.4f} -> {m['ece']:.4f}")
    return lines


def out_of_domain_markdown(section: Mapping[str, Any]) -> list[str]:
    """The report's "Out-of-domain" section: what was compared, then one table row per set."""
    base = section[BASE_MODEL_KEY]
    lines = [
        "## Out-of-domain: forgetting", "",
        f"The fine-tuned model against its zero-shot base `{base['source']}` ({base['chosen_by']}) "
        "on other data sets. Delta AP is fine-tuned minus base: negative means the fine-tune lost ranking quality there. "
        f"Each model's probabilities come from its own calibrator: the fine-tuned model's {base['model_calibrator']['origin']}, "
        f"the base's {base['calibrator']['origin']}.", "",
        "| set | pairs | AP base | AP fine-tuned | delta AP | ECE base | ECE fine-tuned |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in section.items():
        if name == BASE_MODEL_KEY:
            continue
        b, m = s["base"], s["model"]
        lines.append(f"| `{name}` | {s['pairs']:,} | {b['average_precision']:.4f} | {m['average_precision']:.4f} | "
                     f"{_signed(s['delta']['average_precision'])} | {b['ece']:.4f} | {m['ece']:.4f} |")
    lines += ["", "ROC-AUC, accuracy at each model's tau and every delta are in `metrics.json` under `out_of_domain`.", ""]
    for name, s in section.items():
        if name != BASE_MODEL_KEY and s.get("in_domain_pairs"):
            lines += [f"> **Warning:** `{name}` repeats {s['in_domain_pairs']:,} of its {s['pairs']:,} pairs from the "
                      "in-domain scored or calibration split: there it measures in-domain quality, not forgetting.", ""]
    return lines
