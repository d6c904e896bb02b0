"""Turn a distance into a decision and a probability.

``Calibrator`` is a logistic regression on the distance ``d``: by default
``p(similar | d) = sigmoid(w * d**2 + b)`` with ``w < 0`` (``feature="squared"``), the
plain ``sigmoid(w * d + b)`` (``feature="linear"``), or both terms,
``sigmoid(w * d**2 + v * d + b)`` with ``w, v < 0`` (``feature="quadratic"``). Its
threshold is the distance where ``p = 0.5``: ``tau = sqrt(-b / w)`` (squared), ``-b / w``
(linear), the non-negative root of ``w d**2 + v d + b = 0`` (quadratic).
Because ``d(x, y) == d(y, x)`` exactly, so is ``p``; and ``p`` falls as ``d`` grows,
so ``d = 0`` gets the highest probability the model can give.

Why squared by default: for unit-normalised embeddings ``d**2 = 2 - 2 cos``, so the
squared form is the logistic on cosine similarity. On QQP the linear form is
misspecified: even fitted on the test split itself its ECE is 0.031 (fine-tuned
model), while the squared form fitted on dev scores 0.021 on test. The quadratic form
nests both; its two slopes are kept non-positive so ``p`` stays monotone in ``d``.

``feature="auto"`` chooses among the three on the calibration pairs themselves, by
stratified 5-fold held-out log-loss (ties go to the simpler form), then fits the chosen
form on all of them. No form wins everywhere: on QQP the quadratic form lowered test ECE
for every fine-tuned run, on STS-B none helped, on MRPC the linear form did; a held-out
rule on the calibration split is the choice that never looks at the scored split.

``SimilarityModel`` (in :mod:`metric_sim.model`) bundles encoder + metric + calibrator.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from metric_sim.distances import Metric
from metric_sim.errors import CalibrationError, InvalidArgumentError, InvalidArgumentTypeError
from metric_sim.validation import (
    as_binary_labels,
    as_distances,
    require_choice,
    require_probability,
)

FEATURES = ("squared", "linear", "quadratic")
DEFAULT_FEATURE = "squared"
# What Calibrator.fit accepts: a form, or "auto" to choose one (a fitted calibrator is always a form).
FIT_FEATURES = (*FEATURES, "auto")
SELECTION_FOLDS = 5
# metric_sim.json files written before the feature was recorded were fitted on d.
LEGACY_FEATURE = "linear"

logger = logging.getLogger(__name__)


def _signed_sqrt(value: float) -> float:
    return math.copysign(math.sqrt(abs(value)), value)


@dataclass(frozen=True)
class Calibrator:
    """``p(similar | d) = sigmoid(weight * phi(d) + bias)`` with ``phi(d) = d**2`` (``feature="squared"``)
    or ``d`` (``"linear"``), or ``sigmoid(weight * d**2 + linear_weight * d + bias)`` (``"quadratic"``);
    similar when ``d <= threshold``."""

    weight: float
    bias: float
    metric: Metric
    n_fit: int = 0
    fitted_on: str | None = None
    feature: str = DEFAULT_FEATURE
    linear_weight: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "metric", Metric.parse(self.metric))
        require_choice("feature", self.feature, FEATURES)
        if not all(math.isfinite(value) for value in (self.weight, self.bias, self.linear_weight)):
            raise CalibrationError(f"calibrator parameters must be finite, got weight={self.weight}, bias={self.bias}, "
                                   f"linear_weight={self.linear_weight}")
        if self.feature != "quadratic" and self.linear_weight != 0.0:
            raise CalibrationError(f"linear_weight={self.linear_weight} is only used with feature='quadratic', "
                                   f"not {self.feature!r}")
        if self.feature == "quadratic" and self.linear_weight >= 0:
            raise CalibrationError(f"calibrator linear_weight must be negative for feature='quadratic' (p must fall "
                                   f"as d grows), got {self.linear_weight}")
        if self.weight >= 0:
            raise CalibrationError(
                f"calibrator weight must be negative (larger distance -> less similar), got {self.weight}: "
                "the distance does not separate similar from dissimilar pairs"
            )

    @classmethod
    def fit(
        cls,
        distances: Any,
        labels: Any,
        metric: Metric | str,
        *,
        fitted_on: str | None = None,
        feature: str = DEFAULT_FEATURE,
    ) -> Calibrator:
        """Fit on held-out pairs: ``labels`` 1 = similar. Never fit on the split you score on.

        ``feature="quadratic"`` is the maximum-likelihood fit among curves that fall with ``d``
        (both slopes negative). Where that optimum has a zero slope it is the squared or the
        linear fit, and that calibrator is returned: read ``feature`` on the result.
        ``feature="auto"`` fits the form that :func:`choose_feature` picks on these pairs.
        """
        from sklearn.linear_model import LogisticRegression

        require_choice("feature", feature, FIT_FEATURES)
        d = as_distances("distances", distances)
        y = as_binary_labels("labels", labels, d.size)
        classes = np.unique(y)
        if classes.size < 2:
            raise CalibrationError(
                f"the calibration split has only one class (label {int(classes[0]) if classes.size else 'none'}, "
                f"{d.size} pairs); it needs both similar and dissimilar pairs"
            )
        if feature == "auto":
            feature = choose_feature(cross_validated_log_losses(d, y, metric))
        if feature == "quadratic":
            return cls._fit_quadratic(d, y, Metric.parse(metric), fitted_on)
        # Unregularised (C=inf): with one feature there is nothing to overfit, and a
        # penalty would bias the slope differently for Euclidean and Manhattan scales.
        # The feature is scaled to order 1 for the solver (Manhattan d**2 runs to hundreds)
        # and the slope scaled back, which leaves the maximum-likelihood fit unchanged.
        x = _feature_values(feature, d)
        scale = float(np.median(x)) or float(x.max()) or 1.0
        model = LogisticRegression(C=np.inf, tol=1e-8, max_iter=1000).fit((x / scale).reshape(-1, 1), y)
        weight = float(model.coef_[0, 0]) / scale
        if weight >= 0:
            raise CalibrationError(
                f"fitted weight is {weight:.4g} >= 0 on {d.size} pairs: similar pairs are not closer than "
                "dissimilar ones, so distance does not separate the classes (is the model trained? the labels inverted?)"
            )
        return cls(weight=weight, bias=float(model.intercept_[0]), metric=Metric.parse(metric), n_fit=int(d.size),
                   fitted_on=fitted_on, feature=feature)

    @classmethod
    def _fit_quadratic(cls, d: np.ndarray, y: np.ndarray, metric: Metric, fitted_on: str | None) -> Calibrator:
        from sklearn.linear_model import LogisticRegression

        # Solved by scaling d to order 1, as in fit(). sklearn has no bounds on coefficients, but none
        # are needed: the log-likelihood is concave, so when the free optimum has a non-negative slope
        # the best monotone curve lies on an edge of the quadrant, where one slope is 0; the best
        # point of each edge is the one-feature fit.
        scale = float(np.median(d)) or float(d.max()) or 1.0
        z = d / scale
        model = LogisticRegression(C=np.inf, tol=1e-8, max_iter=1000).fit(np.column_stack([z * z, z]), y)
        squared_slope, linear_slope = (float(value) for value in model.coef_[0])
        if squared_slope < 0 and linear_slope < 0:
            return cls(weight=squared_slope / scale**2, bias=float(model.intercept_[0]), metric=metric, n_fit=int(d.size),
                       fitted_on=fitted_on, feature="quadratic", linear_weight=linear_slope / scale)
        edges, errors = [], []
        for nested in ("squared", "linear"):
            try:
                edges.append(cls.fit(d, y, metric, fitted_on=fitted_on, feature=nested))
            except CalibrationError as exc:
                errors.append(exc)
        if not edges:
            raise errors[0]
        return max(edges, key=lambda calibrator: calibrator.log_likelihood(d, y))

    def log_likelihood(self, distances: Any, labels: Any) -> float:
        """Sum of ``log p`` over similar pairs and ``log(1 - p)`` over the others (natural log)."""
        logits = self.logits(distances)
        y = as_binary_labels("labels", labels, logits.size)
        # log(sigmoid(l)) = -log(1 + exp(-l)), computed without overflow.
        return float(-np.logaddexp(0.0, np.where(y == 1, -logits, logits)).sum())

    @property
    def threshold(self) -> float:
        """The distance where ``p = 0.5``: pairs at ``d <= tau`` are predicted similar.

        Negative when even ``d = 0`` has ``p < 0.5``: then no pair is predicted similar.
        """
        return self._distance_for_logit(0.0)

    @property
    def formula(self) -> str:
        """The fitted curve as a person reads it, e.g. ``sigmoid(-9.21 * d^2 + 2.99)``."""
        if self.feature == "quadratic":
            return f"sigmoid({self.weight:.6g} * d^2 + {self.linear_weight:.6g} * d + {self.bias:.6g})"
        term = "d^2" if self.feature == "squared" else "d"
        return f"sigmoid({self.weight:.6g} * {term} + {self.bias:.6g})"

    def logits(self, distances: Any) -> np.ndarray:
        d = as_distances("distances", distances)
        if self.feature == "quadratic":
            return (self.weight * d + self.linear_weight) * d + self.bias
        return self.weight * _feature_values(self.feature, d) + self.bias

    def predict_proba(self, distances: Any) -> np.ndarray:
        from scipy.special import (
            expit,  # scipy loads in ~0.3 s: only when probabilities are asked for
        )

        return expit(self.logits(distances))

    def predict(self, distances: Any) -> np.ndarray:
        """1 where ``p >= 0.5`` (equivalently ``d <= threshold``)."""
        return (self.logits(distances) >= 0).astype(np.int64)

    def distance_at(self, probability: float) -> float:
        """The distance whose probability is ``probability``: the radius for "p >= probability".

        Negative when ``probability`` exceeds ``p(d=0)``, the most this model can give:
        then no pair qualifies.
        """
        probability = require_probability("probability", probability, open_interval=True)
        return self._distance_for_logit(math.log(probability / (1.0 - probability)))

    def _distance_for_logit(self, logit: float) -> float:
        if self.feature == "quadratic":
            # The positive root of a d^2 + v d = |c| (a, v > 0), in the form that does not cancel;
            # negative, like the squared form's signed root, when even d = 0 is below the logit.
            a, v, c = -self.weight, -self.linear_weight, self.bias - logit
            return math.copysign(2.0 * abs(c) / (v + math.sqrt(v * v + 4.0 * a * abs(c))), c)
        value = (logit - self.bias) / self.weight  # the feature value at this logit
        return _signed_sqrt(value) if self.feature == "squared" else value

    def to_dict(self) -> dict[str, Any]:
        payload = {
            "weight": self.weight,
            "bias": self.bias,
            "threshold": self.threshold,
            "metric": self.metric.value,
            "feature": self.feature,
            "n_fit": self.n_fit,
            "fitted_on": self.fitted_on,
        }
        if self.feature == "quadratic":
            payload["linear_weight"] = self.linear_weight
        return payload

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> Calibrator:
        if not isinstance(payload, dict):
            raise InvalidArgumentTypeError(f"calibrator must be a dict, got {type(payload).__name__}")
        missing = [key for key in ("weight", "bias", "metric") if key not in payload]
        if missing:
            raise InvalidArgumentError(f"calibrator dict is missing {missing}; got keys {sorted(payload)}")
        return cls(
            weight=float(payload["weight"]),
            bias=float(payload["bias"]),
            metric=Metric.parse(payload["metric"]),
            n_fit=int(payload.get("n_fit", 0)),
            fitted_on=payload.get("fitted_on"),
            feature=payload.get("feature", LEGACY_FEATURE),
            linear_weight=float(payload.get("linear_weight", 0.0)),
        )


def cross_validated_log_losses(distances: Any, labels: Any, metric: Metric | str, *,
                               folds: int = SELECTION_FOLDS, seed: int = 0) -> dict[str, float]:
    """Mean held-out log-loss of ``Calibrator.fit(feature=...)`` for each form, over stratified folds.

    Fewer folds when the smaller class has fewer than ``folds`` pairs; ``inf`` for a form that
    cannot be fitted on some fold (one class only, or a non-negative slope), and for every form
    when the smaller class has under 2 pairs.
    """
    from sklearn.metrics import log_loss
    from sklearn.model_selection import StratifiedKFold

    d = as_distances("distances", distances)
    y = as_binary_labels("labels", labels, d.size)
    folds = min(int(folds), int(np.bincount(y, minlength=2).min()))
    losses = dict.fromkeys(FEATURES, math.inf)
    if folds < 2:
        return losses
    splits = list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(d, y))
    for feature in FEATURES:
        try:
            held_out = [log_loss(y[held], Calibrator.fit(d[fit], y[fit], metric, feature=feature).predict_proba(d[held]),
                                 labels=[0, 1]) for fit, held in splits]
        except CalibrationError:
            continue
        losses[feature] = float(np.mean(held_out))
    return losses


def choose_feature(losses: dict[str, float]) -> str:
    """The form with the lowest held-out log-loss; ties go to the earlier (simpler) form of ``FEATURES``,
    and the default form when none could be scored."""
    scored = [feature for feature in FEATURES if math.isfinite(losses.get(feature, math.inf))]
    if not scored:
        logger.info("calibrator form: no form could be cross-validated on these pairs; fitting %s", DEFAULT_FEATURE)
        return DEFAULT_FEATURE
    chosen = min(scored, key=losses.__getitem__)
    logger.info("calibrator form chosen by held-out log-loss: %s (%s)", chosen,
                ", ".join(f"{feature} {losses[feature]:.4f}" for feature in FEATURES))
    return chosen


def _feature_values(feature: str, distances: np.ndarray) -> np.ndarray:
    return distances * distances if feature == "squared" else distances


def __getattr__(name: str) -> Any:
    # Old import path of the model-level names, which moved to metric_sim.model / metric_sim.layout.
    if name in ("SimilarityModel", "PairEmbeddings", "BACKENDS"):
        from metric_sim import model

        return getattr(model, name)
    if name == "resolve_model_dir":
        from metric_sim.layout import resolve_model_dir

        return resolve_model_dir
    raise AttributeError(f"module 'metric_sim.calibration' has no attribute {name!r}")
