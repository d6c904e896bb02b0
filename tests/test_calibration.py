from __future__ import annotations

import json

import numpy as np
import pytest

from metric_sim.calibration import (
    CalibrationError,
    Calibrator,
    SimilarityModel,
    choose_feature,
    cross_validated_log_losses,
)
from metric_sim.distances import Metric
from metric_sim.encoders import ItemEncoder
from metric_sim.validation import require_texts


def _separable(seed=0, n=400):
    rng = np.random.default_rng(seed)
    d_pos = rng.gamma(4.0, 0.1, n)          # similar pairs: small distances
    d_neg = 1.0 + rng.gamma(4.0, 0.1, n)    # dissimilar: larger
    distances = np.concatenate([d_pos, d_neg])
    labels = np.concatenate([np.ones(n, int), np.zeros(n, int)])
    return distances, labels


@pytest.mark.parametrize("feature, transform", [("squared", np.square), ("linear", lambda d: d)])
def test_fit_matches_sklearn_unregularised_and_threshold_solves_p_half(feature, transform):
    from sklearn.linear_model import LogisticRegression

    distances, labels = _separable()
    labels[:20] = 0  # some overlap so the MLE is finite
    labels[-20:] = 1
    cal = Calibrator.fit(distances, labels, "euclidean", fitted_on="dev", feature=feature)
    assert cal.feature == feature
    x = transform(distances)[:, None]
    ref = LogisticRegression(C=np.inf, max_iter=1000, tol=1e-8).fit(x, labels)
    assert cal.weight == pytest.approx(ref.coef_[0, 0], rel=1e-4)
    assert cal.bias == pytest.approx(ref.intercept_[0], rel=1e-4)
    assert cal.weight < 0
    expected_tau = -cal.bias / cal.weight
    assert cal.threshold == pytest.approx(np.sqrt(expected_tau) if feature == "squared" else expected_tau)
    assert cal.predict_proba([cal.threshold])[0] == pytest.approx(0.5)
    np.testing.assert_allclose(cal.predict_proba(distances), ref.predict_proba(x)[:, 1], rtol=1e-4)
    # Decision and probability agree: similar iff p >= 0.5 iff d <= tau.
    np.testing.assert_array_equal(cal.predict(distances), (cal.predict_proba(distances) >= 0.5).astype(int))
    np.testing.assert_array_equal(cal.predict(distances), (distances <= cal.threshold).astype(int))
    # p falls monotonically with distance, so d = 0 gets the largest probability.
    grid = np.linspace(0, distances.max(), 200)
    assert np.all(np.diff(cal.predict_proba(grid)) < 0)


def test_squared_feature_fits_manhattan_scale_like_the_scaled_problem():
    # Manhattan distances run to tens, d^2 to hundreds: the fit must not depend on that scale.
    distances, labels = _separable(2)
    labels[:30] = 0
    small = Calibrator.fit(distances, labels, "euclidean")
    large = Calibrator.fit(distances * 15.6, labels, "manhattan")
    assert large.weight * 15.6**2 == pytest.approx(small.weight, rel=1e-4)
    assert large.bias == pytest.approx(small.bias, rel=1e-4)
    assert large.threshold == pytest.approx(small.threshold * 15.6, rel=1e-4)


def test_hand_computed_probability_linear():
    cal = Calibrator(weight=-2.0, bias=3.0, metric="manhattan", feature="linear")
    assert cal.threshold == 1.5
    assert cal.formula == "sigmoid(-2 * d + 3)"
    assert cal.predict_proba([0.0])[0] == pytest.approx(1 / (1 + np.exp(-3.0)))
    assert cal.predict_proba([2.0])[0] == pytest.approx(1 / (1 + np.exp(1.0)))
    assert cal.distance_at(0.5) == pytest.approx(1.5)
    # Above p(d=0) no distance reaches the probability: the radius comes out negative.
    assert cal.distance_at(0.99) < 0
    assert cal.predict_proba([cal.distance_at(0.9)])[0] == pytest.approx(0.9)


def test_hand_computed_probability_squared():
    cal = Calibrator(weight=-2.0, bias=8.0, metric="euclidean")  # squared is the default
    assert cal.feature == "squared"
    assert cal.formula == "sigmoid(-2 * d^2 + 8)"
    assert cal.threshold == 2.0  # -2 d^2 + 8 = 0 at d = 2
    assert cal.predict_proba([0.0])[0] == pytest.approx(1 / (1 + np.exp(-8.0)))
    assert cal.predict_proba([1.0])[0] == pytest.approx(1 / (1 + np.exp(-6.0)))
    assert cal.predict_proba([3.0])[0] == pytest.approx(1 / (1 + np.exp(10.0)))
    assert cal.distance_at(1 / (1 + np.exp(-6.0))) == pytest.approx(1.0)
    assert cal.distance_at(0.9999) < 0  # p(d=0) = 0.99966 is the most this model gives
    # Even d = 0 below p = 0.5: the threshold is negative and nothing is predicted similar.
    never = Calibrator(weight=-1.0, bias=-4.0, metric="euclidean")
    assert never.threshold == -2.0 and never.predict([0.0, 1.0]).tolist() == [0, 0]


def _logistic_sample(weight, linear_weight, bias, seed=0, n=3000):
    """Labels drawn from sigmoid(weight d^2 + linear_weight d + bias) over distances in [0, 2)."""
    rng = np.random.default_rng(seed)
    d = rng.uniform(0.0, 2.0, n)
    p = 1.0 / (1.0 + np.exp(-(weight * d * d + linear_weight * d + bias)))
    return d, (rng.random(n) < p).astype(int)


def _bounded_oracle(distances, labels):
    """Maximum likelihood over slopes <= 0 by a bounded quasi-Newton solve (scipy), no shortcut."""
    from scipy.optimize import minimize

    x = np.column_stack([distances**2, distances, np.ones_like(distances)])

    def loss(theta):
        logits = x @ theta
        return float(np.logaddexp(0.0, np.where(labels == 1, -logits, logits)).sum())

    result = minimize(loss, np.array([-1.0, -1.0, 0.0]), method="L-BFGS-B",
                      bounds=[(None, 0.0), (None, 0.0), (None, None)], options={"ftol": 1e-14, "gtol": 1e-10})
    return result.x, -result.fun


def test_quadratic_fit_matches_sklearn_on_both_terms_and_inverts_exactly():
    from sklearn.linear_model import LogisticRegression

    d, y = _logistic_sample(-3.0, -2.0, 3.0)
    cal = Calibrator.fit(d, y, "euclidean", fitted_on="dev", feature="quadratic")
    assert cal.feature == "quadratic" and cal.weight < 0 and cal.linear_weight < 0
    ref = LogisticRegression(C=np.inf, max_iter=10000, tol=1e-10).fit(np.column_stack([d * d, d]), y)
    assert (cal.weight, cal.linear_weight) == pytest.approx(tuple(ref.coef_[0]), rel=1e-3)
    assert cal.bias == pytest.approx(ref.intercept_[0], rel=1e-3)
    # The quadratic nests both one-feature forms, so its likelihood is at least theirs.
    for nested in ("squared", "linear"):
        assert cal.log_likelihood(d, y) >= Calibrator.fit(d, y, "euclidean", feature=nested).log_likelihood(d, y) - 1e-9
    assert cal.predict_proba([cal.threshold])[0] == pytest.approx(0.5)
    for p in (0.2, 0.7, 0.9):
        assert cal.predict_proba([cal.distance_at(p)])[0] == pytest.approx(p)
    grid = np.linspace(0, 4, 400)
    assert np.all(np.diff(cal.predict_proba(grid)) < 0)
    np.testing.assert_array_equal(cal.predict(d), (d <= cal.threshold).astype(int))


@pytest.mark.parametrize("truth, nested", [((-8.0, 2.0, 1.8), "squared"), ((0.5, -4.0, 3.0), "linear")])
def test_quadratic_fit_keeps_p_monotone_and_matches_a_bounded_solver(truth, nested):
    # The unconstrained best curve rises somewhere on d >= 0: the best falling one has a zero slope.
    from sklearn.linear_model import LogisticRegression

    d, y = _logistic_sample(*truth, seed=1)
    free = LogisticRegression(C=np.inf, max_iter=10000, tol=1e-10).fit(np.column_stack([d * d, d]), y)
    assert max(free.coef_[0]) > 0  # the data really ask for a non-monotone curve
    cal = Calibrator.fit(d, y, "euclidean", feature="quadratic")
    assert cal.feature == nested and cal.linear_weight == 0.0
    _, oracle_ll = _bounded_oracle(d, y)
    assert cal.log_likelihood(d, y) == pytest.approx(oracle_ll, abs=1e-4)
    assert np.all(np.diff(cal.predict_proba(np.linspace(0, 4, 400))) < 0)


def _held_out_log_loss_oracle(d, y, feature, folds):
    """sklearn's own cross-validation of the one-term logistic (squared, linear), or the library's
    quadratic fit scored by sklearn's log_loss on the same stratified folds."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    cv = StratifiedKFold(folds, shuffle=True, random_state=0)
    if feature == "quadratic":
        return np.mean([log_loss(y[held], Calibrator.fit(d[fit], y[fit], "euclidean", feature="quadratic")
                                 .predict_proba(d[held]), labels=[0, 1]) for fit, held in cv.split(d, y)])
    x = d * d if feature == "squared" else d
    scores = cross_val_score(LogisticRegression(C=np.inf, tol=1e-10, max_iter=10000), x.reshape(-1, 1), y, cv=cv,
                             scoring="neg_log_loss")
    return -scores.mean()


@pytest.mark.parametrize("truth", [(-6.0, 0.0, 3.0), (0.0, -4.0, 3.0), (-3.0, -2.0, 3.0)])
def test_auto_fits_the_form_with_the_lowest_held_out_log_loss(truth):
    d, y = _logistic_sample(*truth, seed=2)
    losses = cross_validated_log_losses(d, y, "euclidean")
    for feature, loss in losses.items():
        assert loss == pytest.approx(_held_out_log_loss_oracle(d, y, feature, folds=5), rel=1e-5)
    chosen = min(losses, key=losses.get)
    auto = Calibrator.fit(d, y, "euclidean", fitted_on="dev", feature="auto")
    # The chosen form, refitted on every pair: the same calibrator as asking for that form.
    assert auto == Calibrator.fit(d, y, "euclidean", fitted_on="dev", feature=chosen)
    assert auto.feature in ("squared", "linear", "quadratic")


def test_auto_on_clearly_shaped_data_picks_that_shape():
    # 20,000 pairs from a pure d^2 curve and from a pure d curve: the held-out rule recovers each
    # (a quadratic fit may tie, and ties go to the simpler form).
    d, y = _logistic_sample(-6.0, 0.0, 3.0, seed=3, n=20000)
    assert Calibrator.fit(d, y, "euclidean", feature="auto").feature == "squared"
    d, y = _logistic_sample(0.0, -6.0, 4.0, seed=3, n=20000)
    assert Calibrator.fit(d, y, "euclidean", feature="auto").feature in ("linear", "quadratic")
    losses = cross_validated_log_losses(d, y, "euclidean")
    assert losses["linear"] < losses["squared"]


def test_choose_feature_prefers_the_simpler_form_on_ties_and_the_default_when_nothing_was_scored():
    inf = float("inf")
    assert choose_feature({"squared": 0.3, "linear": 0.3, "quadratic": 0.3}) == "squared"
    assert choose_feature({"squared": 0.31, "linear": 0.3, "quadratic": 0.3}) == "linear"
    assert choose_feature({"squared": inf, "linear": 0.5, "quadratic": 0.4}) == "quadratic"
    assert choose_feature({"squared": inf, "linear": inf, "quadratic": inf}) == "squared"


def test_held_out_folds_shrink_to_the_smaller_class_and_auto_still_fits():
    d, y = _logistic_sample(-6.0, 0.0, 3.0, seed=4, n=400)
    few = np.concatenate([np.flatnonzero(y == 1)[:3], np.flatnonzero(y == 0)])  # 3 similar pairs only
    d_few, y_few = d[few], y[few]
    losses = cross_validated_log_losses(d_few, y_few, "euclidean")
    assert losses["linear"] == pytest.approx(_held_out_log_loss_oracle(d_few, y_few, "linear", folds=3), rel=1e-5)
    one = np.concatenate([np.flatnonzero(y == 1)[:1], np.flatnonzero(y == 0)])  # nothing to cross-validate
    assert all(np.isinf(v) for v in cross_validated_log_losses(d[one], y[one], "euclidean").values())
    assert Calibrator.fit(d[one], y[one], "euclidean", feature="auto") == Calibrator.fit(d[one], y[one], "euclidean")
    with pytest.raises(ValueError, match="feature.*'cubic'"):
        Calibrator.fit(d, y, "euclidean", feature="cubic")
    d, y = _separable()
    with pytest.raises(CalibrationError, match="does not separate"):
        Calibrator.fit(d, 1 - y, "euclidean", feature="auto")


def test_log_likelihood_is_the_hand_computed_sum():
    cal = Calibrator(weight=-2.0, bias=8.0, metric="euclidean")
    d, y = np.array([0.0, 1.0, 3.0]), np.array([1, 0, 0])
    p = 1 / (1 + np.exp(-np.array([8.0, 6.0, -10.0])))
    assert cal.log_likelihood(d, y) == pytest.approx(np.log(p[0]) + np.log(1 - p[1]) + np.log(1 - p[2]))


def test_hand_computed_probability_quadratic():
    cal = Calibrator(weight=-2.0, linear_weight=-1.0, bias=3.0, metric="euclidean", feature="quadratic")
    assert cal.formula == "sigmoid(-2 * d^2 + -1 * d + 3)"
    assert cal.threshold == pytest.approx(1.0)  # -2 - 1 + 3 = 0 at d = 1
    assert cal.predict_proba([0.5])[0] == pytest.approx(1 / (1 + np.exp(-2.0)))  # -0.5 - 0.5 + 3
    assert cal.distance_at(1 / (1 + np.exp(-2.0))) == pytest.approx(0.5)
    assert cal.distance_at(0.99) < 0  # p(d=0) = sigmoid(3) = 0.953 is the most it gives
    never = Calibrator(weight=-2.0, linear_weight=-1.0, bias=-4.0, metric="euclidean", feature="quadratic")
    # Signed like the squared form's root: minus the positive root of 2 d^2 + d = 4.
    assert never.threshold == pytest.approx(-(np.sqrt(33.0) - 1.0) / 4.0)
    assert never.predict([0.0, 1.0]).tolist() == [0, 0]
    payload = json.loads(json.dumps(cal.to_dict()))
    assert payload["linear_weight"] == -1.0 and Calibrator.from_dict(payload) == cal
    assert "linear_weight" not in Calibrator(weight=-2.0, bias=8.0, metric="euclidean").to_dict()


def test_quadratic_slopes_are_checked():
    with pytest.raises(CalibrationError, match="linear_weight must be negative.*got 0.5"):
        Calibrator(weight=-1.0, linear_weight=0.5, bias=0.0, metric="euclidean", feature="quadratic")
    with pytest.raises(CalibrationError, match="linear_weight=-1.0 is only used with feature='quadratic'"):
        Calibrator(weight=-1.0, linear_weight=-1.0, bias=0.0, metric="euclidean")
    d, y = _separable()
    with pytest.raises(CalibrationError, match="does not separate"):
        Calibrator.fit(d, 1 - y, "euclidean", feature="quadratic")


def test_unknown_feature_is_refused():
    with pytest.raises(ValueError, match="feature.*'cubic'"):
        Calibrator(weight=-1.0, bias=0.0, metric="euclidean", feature="cubic")
    with pytest.raises(ValueError, match="feature.*'log'"):
        Calibrator.fit([0.1, 2.0], [1, 0], "euclidean", feature="log")


def test_calibrator_saved_before_the_feature_existed_loads_as_linear():
    legacy = {"weight": -2.0, "bias": 3.0, "threshold": 1.5, "metric": "euclidean", "n_fit": 10, "fitted_on": "dev"}
    cal = Calibrator.from_dict(legacy)
    assert cal.feature == "linear" and cal.threshold == 1.5


def test_non_separating_distance_and_single_class_are_refused():
    distances, labels = _separable()
    with pytest.raises(CalibrationError, match="does not separate"):
        Calibrator.fit(distances, 1 - labels, "euclidean")
    with pytest.raises(CalibrationError, match="only one class"):
        Calibrator.fit(distances, np.ones_like(labels), "euclidean")
    with pytest.raises(CalibrationError, match="weight must be negative"):
        Calibrator(weight=0.5, bias=0.0, metric="euclidean")
    with pytest.raises(ValueError, match="non-negative"):
        Calibrator.fit([-1.0, 2.0], [1, 0], "euclidean")
    with pytest.raises(ValueError, match="labels must be 0/1"):
        Calibrator.fit([1.0, 2.0], [1, 2], "euclidean")
    with pytest.raises(ValueError, match=r"probability must be in \(0, 1\)"):
        Calibrator(weight=-1.0, bias=0.0, metric="euclidean").distance_at(1.0)


def test_dict_round_trip_is_exact_and_json_safe():
    distances, labels = _separable(1)
    labels[:5] = 0
    cal = Calibrator.fit(distances, labels, "manhattan", fitted_on="dev")
    payload = json.loads(json.dumps(cal.to_dict()))
    assert Calibrator.from_dict(payload) == cal
    with pytest.raises(ValueError, match=r"missing \['bias'\]"):
        Calibrator.from_dict({"weight": -1.0, "metric": "euclidean"})


PAIRS_A = ["how do i learn python", "what is the capital city", "how do i cook rice", "why is the sky blue", "buy a car"]
PAIRS_B = ["best way to learn python code", "capital of the country", "how to bake bread", "why is the sky blue", "sell a phone"]


def _calibrated(encoder, metric):
    """Attach a calibrator fitted on synthetic distances spanning the model's real range."""
    model = SimilarityModel(encoder, metric)
    d = model.distance(PAIRS_A, PAIRS_B)
    rng = np.random.default_rng(0)
    median = float(np.median(d))
    fake_d = np.concatenate([rng.uniform(0, median * 1.2, 50), rng.uniform(median * 0.8, d.max() * 2 + 1e-3, 50)])
    fake_y = np.concatenate([np.ones(50, int), np.zeros(50, int)])
    model.calibrator = Calibrator.fit(fake_d, fake_y, metric)
    return model


@pytest.mark.parametrize("metric", list(Metric))
def test_probability_is_bitwise_symmetric_and_self_pairs_are_max(tiny_encoder, metric):
    model = _calibrated(tiny_encoder, metric)
    p_ab = model.predict_proba(PAIRS_A, PAIRS_B, batch_size=2)
    p_ba = model.predict_proba(PAIRS_B, PAIRS_A, batch_size=2)
    assert np.array_equal(p_ab, p_ba)  # bit for bit, not approximately
    assert np.array_equal(model.distance(PAIRS_A, PAIRS_B), model.distance(PAIRS_B, PAIRS_A))
    self_p = model.predict_proba(PAIRS_A, PAIRS_A)
    assert np.all(model.distance(PAIRS_A, PAIRS_A) == 0)
    assert np.all(self_p == model.calibrator.predict_proba([0.0])[0])
    assert np.all(self_p >= p_ab.max())
    # Row 3 is a self-pair inside a mixed batch: still exactly distance 0.
    assert model.distance(PAIRS_A, PAIRS_B)[3] == 0


def test_similarity_model_save_load_round_trip(tiny_encoder, tmp_path):
    model = _calibrated(tiny_encoder, "manhattan")
    folder = model.save(tmp_path / "model")
    saved = json.loads((folder / "metric_sim.json").read_text())
    assert saved["metric"] == "manhattan" and saved["calibrator"]["threshold"] == pytest.approx(model.threshold)
    loaded = SimilarityModel.from_pretrained(folder)
    assert loaded.metric is Metric.MANHATTAN and loaded.calibrator == model.calibrator
    np.testing.assert_array_equal(loaded.predict_proba(PAIRS_A, PAIRS_B), model.predict_proba(PAIRS_A, PAIRS_B))
    with pytest.raises(ValueError, match="trained for metric 'manhattan'"):
        SimilarityModel.from_pretrained(folder, metric="euclidean")


def test_uncalibrated_model_says_how_to_calibrate(tiny_encoder):
    with pytest.raises(CalibrationError, match="metric-sim calibrate"):
        SimilarityModel(tiny_encoder).predict_proba(["a"], ["b"])
    with pytest.raises(ValueError, match="same length, got 2 and 1"):
        SimilarityModel(tiny_encoder).distance(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="fitted for metric 'manhattan'"):
        SimilarityModel(tiny_encoder, "euclidean", Calibrator(weight=-1.0, bias=1.0, metric="manhattan"))


class _OrderSensitiveEncoder(ItemEncoder):
    """Stand-in whose embedding of a text depends on where it sits in the call, like a
    real model whose padding and BLAS blocking change the last bits with the batch."""

    kind = "order-sensitive-test"
    embedding_dim = 4

    def __init__(self):
        self.calls = []

    def check_items(self, items, name="items"):
        return require_texts(name, items)

    def item_sizes(self, items):
        return np.zeros(len(items), dtype=np.int64)

    def fingerprint(self):
        return "order-sensitive"

    def config_dict(self):
        return {}

    def save(self, directory, extra=None):
        raise NotImplementedError

    @classmethod
    def from_source(cls, source, settings, **kwargs):
        raise NotImplementedError

    def encode(self, texts, *, batch_size=64, show_progress=False):
        self.calls.append(list(texts))
        rng = np.random.default_rng(0)
        base = {t: rng.normal(size=4) for t in sorted(set(texts))}
        return np.stack([base[t] * (1 + 1e-3 * i) for i, t in enumerate(texts)]).astype(np.float32)


@pytest.mark.parametrize("metric", list(Metric))
def test_distance_feeds_the_encoder_the_same_batches_in_both_orders(metric):
    encoder = _OrderSensitiveEncoder()
    model = SimilarityModel(encoder, metric, Calibrator(weight=-1.0, bias=2.0, metric=metric))
    p_ab = model.predict_proba(PAIRS_A, PAIRS_B)
    p_ba = model.predict_proba(PAIRS_B, PAIRS_A)
    assert encoder.calls[0] == encoder.calls[1]  # one canonical order, whatever the argument order
    assert np.array_equal(p_ab, p_ba)


def test_fit_calibrator_does_not_attach_and_empty_split_is_refused(tiny_encoder):
    from metric_sim.data import load_pairs

    model = SimilarityModel(tiny_encoder)
    pairs = load_pairs(_in_memory(PAIRS_A * 4, PAIRS_B[::-1] * 4, [1, 0, 1, 0, 0] * 4))
    fitted = model.fit_calibrator(pairs, fitted_on="held-out")
    assert model.calibrator is None and fitted.fitted_on == "held-out" and fitted.n_fit == 20
    with pytest.raises(CalibrationError, match="calibration split is empty"):
        model.fit_calibrator(pairs.select([]))


def _in_memory(a, b, y):
    import datasets

    return datasets.Dataset.from_dict({"text_a": a, "text_b": b, "label": y})


def test_save_calibrator_rewrites_only_metric_sim_json(tiny_encoder, tmp_path):
    from metric_sim.calibration import resolve_model_dir

    folder = SimilarityModel(tiny_encoder, "manhattan").save(tmp_path / "run" / "model")
    (tmp_path / "run" / "train_config.json").write_text("{}")
    assert resolve_model_dir(tmp_path / "run") == folder and resolve_model_dir(folder) == folder
    stamp = {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.name != "metric_sim.json"}
    model = _calibrated(tiny_encoder, "manhattan")
    written = model.save_calibrator(tmp_path / "run")
    assert written == folder / "metric_sim.json"
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.name != "metric_sim.json"} == stamp
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    loaded = SimilarityModel.from_pretrained(tmp_path / "run")
    assert loaded.calibrator == model.calibrator and loaded.metric is Metric.MANHATTAN
    with pytest.raises(ValueError, match="holds a model for metric 'manhattan'"):
        _calibrated(tiny_encoder, "euclidean").save_calibrator(folder)
    with pytest.raises(FileNotFoundError, match="is not a model folder"):
        model.save_calibrator(tmp_path / "empty")
    with pytest.raises(CalibrationError, match="no calibrator"):
        SimilarityModel(tiny_encoder).save_calibrator(folder)
