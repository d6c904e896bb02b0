"""``SimilarityModel``: encoder + metric + calibrator, one saved folder for the whole classifier.

The encoder is any :class:`~metric_sim.encoders.base.ItemEncoder` (a transformers text
encoder, its ONNX export, or another kind of item); the model only needs the contract.
Distances are exactly symmetric: both sides of a pair list are embedded together, once,
in one canonical order, so swapping the two lists feeds the encoder the same batches.

``metric_sim.json`` is validated field by field (a ``ConfigError`` names the file and the
field) but carries no checksum: it is the model folder's one human-readable settings file,
several writers update it in place (``save_calibrator``, export), and what it determines is
already protected where it matters: an index or shard folder records the encoder's
fingerprint and refuses a model whose settings or weights changed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from metric_sim.calibration import DEFAULT_FEATURE, FEATURES, Calibrator
from metric_sim.distances import Metric, paired_distances_numpy
from metric_sim.encoders.base import ItemEncoder, check_model_config
from metric_sim.encoders.registry import BACKENDS, load_encoder
from metric_sim.errors import (
    CalibrationError,
    ConfigError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    MissingFileError,
)
from metric_sim.layout import (
    CONFIG_FILE,
    FORMAT_VERSION,
    HF_CONFIG_FILE,
    resolve_model_dir,
    resolve_model_source,
)
from metric_sim.schema import SavedFields, read_json_file
from metric_sim.storage import write_json_atomic
from metric_sim.validation import require_same_length

__all__ = ["BACKENDS", "PairEmbeddings", "SimilarityModel", "pair_set_distances", "read_model_config",
           "saved_calibrator", "saved_weight_interpolation"]

METRIC_NAMES = tuple(m.value for m in Metric)


def saved_calibrator(fields: SavedFields, name: str, metric: Metric, *, owner: str) -> Calibrator | None:
    """The calibrator saved in field ``name`` (None when absent or null), every field checked.

    It must be fitted for ``metric``, the metric of ``owner`` ("the model", "the index"):
    probabilities of another metric's distances would be wrong. Errors name the file and field.
    """
    section = fields.section(name, required=False, nullable=True)
    if section is None:
        return None
    weight = section.get("weight", float)
    section.get("bias", float)
    fitted_metric = section.get("metric", str, choices=METRIC_NAMES)
    if Metric.parse(fitted_metric) is not metric:
        section.fail("metric", f"is {fitted_metric!r}, but {fields.file.name} says {metric.value!r} for {owner}: "
                               "the calibrator was fitted for another metric")
    if weight >= 0:
        section.fail("weight", f"must be negative (a larger distance must mean less similar), got {weight!r}")
    feature = section.get("feature", str, required=False, choices=FEATURES)
    linear_weight = section.get("linear_weight", float, required=False)
    if feature == "quadratic" and (linear_weight is None or not linear_weight < 0):  # NaN fails too
        section.fail("linear_weight", f"must be negative for feature 'quadratic' (a larger distance must mean less "
                                      f"similar), got {linear_weight!r}")
    if feature != "quadratic" and linear_weight not in (None, 0.0):
        section.fail("linear_weight", f"is {linear_weight!r}, but only feature 'quadratic' has one (feature is {feature!r})")
    section.get("n_fit", int, required=False, minimum=0)
    section.get("fitted_on", str, required=False, nullable=True)
    calibrator = Calibrator.from_dict(section.payload)
    recorded = section.get("threshold", float, required=False)
    # The threshold is derived from weight and bias and never read back: an edit to it alone would be ignored.
    if recorded is not None and not math.isclose(recorded, calibrator.threshold, rel_tol=1e-9, abs_tol=1e-12):
        section.fail("threshold", f"is {recorded!r}, but weight and bias give {calibrator.threshold!r}: the threshold "
                                  "is derived from them (edit weight/bias, or delete threshold)")
    return calibrator


def saved_weight_interpolation(payload: dict[str, Any], config_file: Path) -> dict[str, Any] | None:
    """The ``weight_interpolation`` record of a model folder (None when absent or null), every field checked.

    Written by :func:`metric_sim.interpolation.interpolate_model`: provenance only (the
    weights are the interpolated ones), so folders without it load as before.
    """
    fields = SavedFields(payload, config_file, ConfigError)
    section = fields.section("weight_interpolation", required=False, nullable=True)
    if section is None:
        return None
    alpha = section.get("alpha", float, minimum=0)
    if alpha > 1:
        section.fail("alpha", f"must be a number in [0, 1], got {alpha!r}")
    section.get("base", str, nullable=True)
    section.get("base_fingerprint", str)
    section.get("finetuned_fingerprint", str, required=False)
    kept = section.get("kept_from_finetuned", list, required=False, default=[])
    if not all(isinstance(name, str) for name in kept):
        section.fail("kept_from_finetuned", f"must be a list of tensor names, got {kept!r}")
    selection = section.section("selection", required=False, nullable=True)
    if selection is not None:  # the table and rule of `metric-sim interpolate --alpha auto`; older records have none
        selection.get("rule", str)
        selection.get("select_on", str, required=False)
        selection.get("tolerance", float, minimum=0)
        selection.get("guard_met", bool)
        selection.get("in_domain_cost", float, minimum=0)
        floors = selection.get("guard_floor", dict)
        if not floors or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in floors.values()):
            selection.fail("guard_floor", f"must map each guard set to a number, got {floors!r}")
        alphas = []
        for i, row in enumerate(selection.get("table", list)):
            fields = SavedFields(row, config_file, ConfigError, f"{selection.prefix}.table[{i}]")
            alphas.append(fields.get("alpha", float, minimum=0))
            fields.get("in_domain_ap", float, minimum=0)
            fields.get("passes", bool)
            guard = fields.get("guard_ap", dict)
            if set(guard) != set(floors) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                    for v in guard.values()):
                fields.fail("guard_ap", f"must map the guard sets {sorted(floors)} to numbers, got {guard!r}")
        if selection.get("alpha", float) != alpha or alpha not in alphas:
            selection.fail("alpha", f"must be the recorded alpha {alpha!r}, one of the table's alphas {alphas}")
    return dict(section.payload)


def read_model_config(config_file: Path, metric: Metric | str | None = None, *,
                      with_calibrator: bool = True) -> tuple[dict[str, Any], Metric | None, Calibrator | None]:
    """(payload, saved metric, calibrator) of a model folder's ``metric_sim.json``, every field checked.

    ``metric`` is the one the caller asked for; a saved metric must agree with it. The
    calibrator must be fitted for the metric the model will use. ``with_calibrator=False``
    leaves the saved calibrator unchecked (it is about to be replaced).
    """
    payload = read_json_file(config_file, ConfigError)
    check_model_config(payload, config_file)
    fields = SavedFields(payload, config_file, ConfigError)
    saved = fields.get("metric", str, required=False, nullable=True, choices=METRIC_NAMES)
    saved_metric = None if saved is None else Metric.parse(saved)
    if metric is not None and saved_metric is not None and Metric.parse(metric) is not saved_metric:
        raise InvalidArgumentError(f"{config_file.parent} was trained for metric {saved!r}; got metric={metric!r}")
    chosen = saved_metric or Metric.parse(metric or Metric.EUCLIDEAN)
    calibrator = saved_calibrator(fields, "calibrator", chosen, owner="the model") if with_calibrator else None
    return payload, saved_metric, calibrator


@dataclass(frozen=True)
class PairEmbeddings:
    """The union of the items of a pair list, embedded once, with each side's row in it.

    ``texts`` holds the unique items (texts for a text encoder) in embedding order.
    """

    texts: list[Any]
    embeddings: np.ndarray
    rows_a: np.ndarray
    rows_b: np.ndarray
    ids: list[str] | None = None  # content id of each unique item, when items are not strings

    @property
    def items(self) -> list[Any]:
        return self.texts

    def row_of(self) -> dict[Any, int]:
        """Item (its content id when items are not strings) -> row in ``embeddings``."""
        keys = self.texts if self.ids is None else self.ids
        return {key: i for i, key in enumerate(keys)}


class SimilarityModel:
    """Encoder + metric + calibrator: distances, probabilities and decisions for pairs of items."""

    def __init__(self, encoder: ItemEncoder, metric: Metric | str = Metric.EUCLIDEAN,
                 calibrator: Calibrator | None = None, *,
                 weight_interpolation: dict[str, Any] | None = None) -> None:
        if not isinstance(encoder, ItemEncoder):
            raise InvalidArgumentTypeError(
                f"encoder must implement metric_sim.encoders.ItemEncoder, got {type(encoder).__name__}"
            )
        self.encoder = encoder
        self.metric = Metric.parse(metric)
        if calibrator is not None and calibrator.metric is not self.metric:
            raise InvalidArgumentError(
                f"calibrator was fitted for metric {calibrator.metric.value!r}, but the model uses {self.metric.value!r}"
            )
        self.calibrator = calibrator
        if weight_interpolation is not None and not isinstance(weight_interpolation, dict):
            raise InvalidArgumentTypeError(f"weight_interpolation must be a dict or None, got "
                                           f"{type(weight_interpolation).__name__}")
        # Provenance of an interpolated encoder (metric_sim.interpolation), saved as is in metric_sim.json.
        self.weight_interpolation = weight_interpolation

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike[str],
        *,
        metric: Metric | str | None = None,
        backend: str | None = None,
        **encoder_kwargs: Any,
    ) -> SimilarityModel:
        """Load a saved model folder or a training run folder (its ``model/``); any other
        encoder source (``"default"``, a Hugging Face folder or id) loads uncalibrated,
        Euclidean unless given.

        The folder's ``metric_sim.json`` names the encoder kind. ``backend="onnx"`` encodes
        with ONNX Runtime from an exported folder's ``onnx/model.onnx`` (``quantized=True``:
        ``model_int8.onnx``) and never imports torch; ``backend="torch"`` insists on the
        PyTorch encoder.
        """
        if backend is not None and backend not in BACKENDS:
            raise InvalidArgumentError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
        source = resolve_model_source(path)
        saved_metric, calibrator, interpolation = None, None, None
        if source.config_file is not None:  # checked before the (slow) encoder load
            payload, saved_metric, calibrator = read_model_config(source.config_file, metric)
            interpolation = saved_weight_interpolation(payload, source.config_file)
        try:
            encoder = load_encoder(source, backend=backend, **encoder_kwargs)
        except (InvalidArgumentError, InvalidArgumentTypeError) as exc:
            if source.config_file is None or encoder_kwargs:
                raise  # the caller's arguments, or a folder without settings of its own
            raise ConfigError(f"{source.config_file}: the saved encoder settings do not load: {exc}") from exc
        return cls(encoder, saved_metric or Metric.parse(metric or Metric.EUCLIDEAN), calibrator,
                   weight_interpolation=interpolation)

    def save(self, directory: str | os.PathLike[str], extra: dict[str, Any] | None = None) -> Path:
        payload: dict[str, Any] = {"metric": self.metric.value,
                                   "calibrator": self.calibrator.to_dict() if self.calibrator else None}
        if self.weight_interpolation is not None:  # only then: other folders stay as they were
            payload["weight_interpolation"] = self.weight_interpolation
        payload.update(extra or {})
        return self.encoder.save(directory, extra=payload)

    def save_calibrator(self, directory: str | os.PathLike[str]) -> Path:
        """Store metric + calibrator in an existing model folder's ``metric_sim.json``.

        Only that one file changes (written to a temporary file, then renamed), so the
        weights are not rewritten. A folder without ``metric_sim.json`` gets one that
        also pins this encoder's settings.
        """
        calibrator = self._require_calibrator()
        folder = resolve_model_dir(directory)
        cfg_file = folder / CONFIG_FILE
        if not (folder / HF_CONFIG_FILE).is_file() and not cfg_file.is_file():
            raise MissingFileError(
                f"{folder} is not a model folder (no {HF_CONFIG_FILE} or {CONFIG_FILE}); "
                "save the model first with model.save(folder)"
            )
        if cfg_file.is_file():
            # The old calibrator is replaced, so only the rest of the file must be sound.
            payload, saved_metric, _ = read_model_config(cfg_file, with_calibrator=False)
        else:
            payload, saved_metric = self.encoder.model_config(), None
        payload.setdefault("format_version", FORMAT_VERSION)
        if saved_metric is not None and saved_metric is not self.metric:
            raise InvalidArgumentError(
                f"{folder} holds a model for metric {saved_metric.value!r}; this calibrator is for {self.metric.value!r}"
            )
        payload["metric"] = self.metric.value
        payload["calibrator"] = calibrator.to_dict()
        write_json_atomic(cfg_file, payload)
        return cfg_file

    def embed(self, texts: Sequence[Any], *, batch_size: int = 64, show_progress: bool = False) -> np.ndarray:
        """float32 vectors of ``texts`` (any items the encoder accepts), in input order."""
        return self.encoder.encode(texts, batch_size=batch_size, show_progress=show_progress)

    def embed_pairs(self, texts_a: Sequence[Any], texts_b: Sequence[Any], *, batch_size: int = 64,
                    show_progress: bool = False) -> PairEmbeddings:
        """Embed the union of both sides once, in one canonical (sorted) order.

        Swapping the arguments feeds the encoder exactly the same batches, so the
        embeddings, and hence the distances, are identical bit for bit. Texts are sorted
        by text; other items by their content id.
        """
        items_a = self.encoder.check_items(texts_a, "texts_a")
        items_b = self.encoder.check_items(texts_b, "texts_b")
        require_same_length("texts_a", items_a, "texts_b", items_b)
        if all(isinstance(x, str) for x in items_a) and all(isinstance(x, str) for x in items_b):
            unique = sorted(set(items_a) | set(items_b))
            row = {text: i for i, text in enumerate(unique)}
            keys_a, keys_b, ids = items_a, items_b, None
        else:
            keys_a = [self.encoder.item_id(x) for x in items_a]
            keys_b = [self.encoder.item_id(x) for x in items_b]
            by_id = dict(zip(keys_a, items_a, strict=True)) | dict(zip(keys_b, items_b, strict=True))
            ids = sorted(by_id)
            unique = [by_id[i] for i in ids]
            row = {key: i for i, key in enumerate(ids)}
        embeddings = self.embed(unique, batch_size=batch_size, show_progress=show_progress)
        ia = np.fromiter((row[k] for k in keys_a), dtype=np.int64, count=len(keys_a))
        ib = np.fromiter((row[k] for k in keys_b), dtype=np.int64, count=len(keys_b))
        return PairEmbeddings(unique, embeddings, ia, ib, ids)

    def pair_distances(self, embedded: PairEmbeddings) -> np.ndarray:
        """``d(a[i], b[i])`` from :meth:`embed_pairs` output."""
        return paired_distances_numpy(embedded.embeddings[embedded.rows_a], embedded.embeddings[embedded.rows_b],
                                      self.metric)

    def distance(self, texts_a: Sequence[Any], texts_b: Sequence[Any], *, batch_size: int = 64,
                 show_progress: bool = False) -> np.ndarray:
        """``d(a[i], b[i])`` for each i; ``distance(a, b) == distance(b, a)`` bit for bit."""
        return self.pair_distances(self.embed_pairs(texts_a, texts_b, batch_size=batch_size,
                                                    show_progress=show_progress))

    def _require_calibrator(self) -> Calibrator:
        if self.calibrator is None:
            raise CalibrationError(
                "this model has no calibrator: fit one with model.calibrate(pairs) or `metric-sim calibrate`"
            )
        return self.calibrator

    def predict_proba(self, texts_a: Sequence[Any], texts_b: Sequence[Any], **kwargs: Any) -> np.ndarray:
        """Calibrated ``p(similar)``; exactly symmetric in its two arguments."""
        calibrator = self._require_calibrator()
        return calibrator.predict_proba(self.distance(texts_a, texts_b, **kwargs))

    def predict(self, texts_a: Sequence[Any], texts_b: Sequence[Any], **kwargs: Any) -> np.ndarray:
        calibrator = self._require_calibrator()
        return calibrator.predict(self.distance(texts_a, texts_b, **kwargs))

    @property
    def threshold(self) -> float:
        return self._require_calibrator().threshold

    def fit_calibrator(self, pairs: Any, *, fitted_on: str | None = None, batch_size: int = 64,
                       show_progress: bool = False, feature: str = DEFAULT_FEATURE) -> Calibrator:
        """Fit a calibrator on held-out pairs (a ``PairDataset``) without attaching it."""
        if len(pairs) == 0:
            raise CalibrationError("the calibration split is empty: it needs both similar and dissimilar pairs")
        distances = self.distance(pairs.texts_a, pairs.texts_b, batch_size=batch_size, show_progress=show_progress)
        return Calibrator.fit(distances, pairs.labels, self.metric, fitted_on=fitted_on, feature=feature)

    def calibrate(self, pairs: Any, *, fitted_on: str | None = None, batch_size: int = 64,
                  show_progress: bool = False, feature: str = DEFAULT_FEATURE) -> Calibrator:
        """Fit and attach the calibrator on held-out pairs (never the ones you score on)."""
        self.calibrator = self.fit_calibrator(pairs, fitted_on=fitted_on, batch_size=batch_size,
                                              show_progress=show_progress, feature=feature)
        return self.calibrator


def _pair_sides(model: SimilarityModel, name: str, pairs: Any) -> tuple[list[Any], list[Any]]:
    """Both sides of one named set, checked here so that an error names the set, not a row of the union."""
    if hasattr(pairs, "texts_a") and hasattr(pairs, "texts_b"):
        side_a, side_b = pairs.texts_a, pairs.texts_b
    elif isinstance(pairs, (tuple, list)) and len(pairs) == 2:
        side_a, side_b = pairs
    else:
        raise InvalidArgumentTypeError(f"sets[{name!r}] must be a PairDataset (texts_a, texts_b) or a "
                                       f"(texts_a, texts_b) pair of lists, got {type(pairs).__name__}")
    items_a = model.encoder.check_items(side_a, f"sets[{name!r}].texts_a")
    items_b = model.encoder.check_items(side_b, f"sets[{name!r}].texts_b")
    require_same_length(f"sets[{name!r}].texts_a", items_a, f"sets[{name!r}].texts_b", items_b)
    return items_a, items_b


def pair_set_distances(model: SimilarityModel, sets: Mapping[str, Any], *, batch_size: int = 64,
                       show_progress: bool = False) -> dict[str, np.ndarray]:
    """``{name: d(a[i], b[i])}`` for several named pair sets, each distinct item of all of them encoded once.

    A set is a ``PairDataset`` (anything with ``texts_a`` and ``texts_b``) or a
    ``(texts_a, texts_b)`` pair of item lists. The sets are scored as one concatenated pair
    list through :meth:`SimilarityModel.embed_pairs`, so an item shared by several sets is
    encoded once, and the distances are cut back per set: float32 arrays (views of one array)
    in the mapping's order, each as long as its set (an empty set gives an empty array).
    They equal ``model.distance(a, b)`` of each set on its own up to the last bit: batches
    of the union are cut differently, which can move a vector's last bit (with
    ``batch_size=1`` they are equal bit for bit).
    """
    if not isinstance(model, SimilarityModel):
        raise InvalidArgumentTypeError(f"model must be a SimilarityModel, got {type(model).__name__}")
    if not isinstance(sets, Mapping):
        raise InvalidArgumentTypeError(f"sets must be a mapping of set name -> pairs, got {type(sets).__name__}")
    sides = {name: _pair_sides(model, name, pairs) for name, pairs in sets.items()}
    bounds = np.cumsum([0] + [len(a) for a, _ in sides.values()])
    if bounds[-1] == 0:  # nothing to encode (an encoder need not accept an empty batch)
        return {name: np.empty(0, dtype=np.float32) for name in sides}
    all_a = [item for a, _ in sides.values() for item in a]
    all_b = [item for _, b in sides.values() for item in b]
    distances = model.pair_distances(model.embed_pairs(all_a, all_b, batch_size=batch_size,
                                                       show_progress=show_progress))
    return {name: distances[bounds[i]:bounds[i + 1]] for i, name in enumerate(sides)}
