"""Weight-space interpolation (WiSE-FT) on tiny in-process models.

Oracles: the two input encoders themselves at the endpoints (bit for bit), a NumPy mix of
the two state dicts in float64 rounded once to float32 in between, and an encoder built by
hand from the expected tensors.
"""

from __future__ import annotations

import copy
import json
import logging

import numpy as np
import pytest
import torch

from metric_sim import (
    CalibrationError,
    Calibrator,
    ConfigError,
    Encoder,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    SimilarityModel,
    interpolate_model,
    interpolate_weights,
)
from metric_sim.cli import main
from metric_sim.encoders.image import image_encoder_from_name
from tests.conftest import build_tiny_encoder

TEXTS = ["how do i learn python", "what is the capital city", "how to cook rice", "a", "best way to save money",
         "how do i sort a list in python", "can a dog travel by train"]
IMAGE_SIZE = [24, 24]


def perturbed(encoder, seed: int, scale: float = 0.05):
    """A "fine-tuned" copy: every floating tensor moved by seeded noise."""
    tuned = copy.deepcopy(encoder)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in tuned.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(scale * torch.randn(tensor.shape, generator=generator))
    return tuned


def _state(encoder) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in encoder.state_dict().items()}


def _mixed(base: dict[str, np.ndarray], tuned: dict[str, np.ndarray], alpha: float) -> dict[str, np.ndarray]:
    """The oracle: (1 - alpha) * base + alpha * tuned in float64, rounded once; integer tensors from tuned."""
    out = {}
    for name, value in tuned.items():
        if np.issubdtype(value.dtype, np.floating):
            out[name] = ((1 - alpha) * base[name].astype(np.float64) + alpha * value.astype(np.float64)).astype(value.dtype)
        else:
            out[name] = value
    return out


def _tiny_cnn(seed: int):
    return image_encoder_from_name("small-cnn", in_channels=3, widths=(4, 8), seed=seed,
                                   preprocess={"size": IMAGE_SIZE, "mode": "RGB"})


@pytest.fixture(scope="module")
def easy_pairs(tmp_path_factory):
    """Pairs a random tiny encoder separates: a question and itself with one more word, or two questions."""
    from metric_sim import load_pairs
    from tests.conftest import DEMO_FILE

    lines = DEMO_FILE.read_text(encoding="utf-8").splitlines()[1:41]
    questions = list(dict.fromkeys(line.split("\t")[0] for line in lines))
    rows = ["text_a\ttext_b\tlabel"]
    for i, question in enumerate(questions):
        rows.append(f"{question}\t{question} please\t1")
        rows.append(f"{question}\t{questions[(i + 7) % len(questions)]}\t0")
    path = tmp_path_factory.mktemp("pairs") / "pairs.tsv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return load_pairs(path)


def _images(n: int = 6) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (30, 30, 3), dtype=np.uint8) for _ in range(n)]


@pytest.fixture()
def text_pair(tiny_encoder):
    return perturbed(tiny_encoder, seed=1), tiny_encoder


@pytest.fixture()
def cnn_pair():
    base = _tiny_cnn(0)
    tuned = perturbed(base, seed=2)
    # BatchNorm statistics the fine-tuning moved, and a counter that must come from the fine-tuned model.
    with torch.no_grad():
        for name, tensor in tuned.state_dict().items():
            if name.endswith("running_var"):
                tensor.abs_().add_(0.5)
            if name.endswith("num_batches_tracked"):
                tensor.fill_(123)
    return tuned, base


# ---------------------------------------------------------------------------- endpoints and the mix
@pytest.mark.parametrize("kind", ["text", "cnn"])
def test_endpoints_reproduce_each_model_bit_for_bit(kind, request):
    tuned, base = request.getfixturevalue(f"{kind}_pair")
    items = TEXTS if kind == "text" else _images()
    assert not np.array_equal(tuned.encode(items), base.encode(items))
    assert np.array_equal(interpolate_weights(tuned, base, 0).encode(items), base.encode(items))
    assert np.array_equal(interpolate_weights(tuned, base, 1.0).encode(items), tuned.encode(items))


@pytest.mark.parametrize("kind", ["text", "cnn"])
@pytest.mark.parametrize("alpha", [0.5, 0.3])
def test_every_floating_tensor_is_mixed_and_counters_come_from_the_fine_tuned_model(kind, alpha, request):
    tuned, base = request.getfixturevalue(f"{kind}_pair")
    expected = _mixed(_state(base), _state(tuned), alpha)
    got = _state(interpolate_weights(tuned, base, alpha))
    assert sorted(got) == sorted(expected)
    for name in expected:
        assert got[name].dtype == expected[name].dtype, name
        assert np.array_equal(got[name], expected[name]), name
    if kind == "cnn":
        running = [n for n in got if n.endswith("running_mean") or n.endswith("running_var")]
        counters = [n for n in got if n.endswith("num_batches_tracked")]
        assert running and counters
        assert all(not np.array_equal(got[n], _state(base)[n]) for n in running)
        assert all(int(got[n]) == 123 for n in counters)


def test_midpoint_vectors_equal_a_hand_built_average(text_pair):
    tuned, base = text_pair
    by_hand = copy.deepcopy(base)
    by_hand.load_state_dict({k: torch.from_numpy(v) for k, v in _mixed(_state(base), _state(tuned), 0.5).items()})
    assert np.array_equal(interpolate_weights(tuned, base, 0.5).encode(TEXTS), by_hand.encode(TEXTS))


def test_inputs_are_untouched_and_share_nothing_with_the_result(text_pair):
    tuned, base = text_pair
    before = (_state(tuned), _state(base))
    result = interpolate_weights(tuned, base, 0.4)
    assert result is not tuned and result is not base
    with torch.no_grad():
        for tensor in result.state_dict().values():
            tensor.zero_()
    for snapshot, encoder in zip(before, (tuned, base), strict=True):
        now = _state(encoder)
        assert all(np.array_equal(now[k], snapshot[k]) for k in snapshot)


# ---------------------------------------------------------------------------- projection head of the fine-tuned model only
def test_a_head_only_the_fine_tuned_encoder_has_is_kept_at_every_alpha(tiny_encoder):
    base = tiny_encoder
    torch.manual_seed(5)
    backbone = perturbed(base, seed=3).model
    tuned = Encoder(backbone, base.tokenizer, pooling=base.pooling, max_length=base.max_length,
                    projection=torch.nn.Linear(32, 8))
    for alpha in (0.0, 0.5):
        result = interpolate_weights(tuned, base, alpha)
        assert torch.equal(result.projection.weight, tuned.projection.weight)
        assert torch.equal(result.projection.bias, tuned.projection.bias)
        assert result.embedding_dim == 8
    # alpha 0: the base's network followed by the fine-tuned head, exactly.
    oracle = Encoder(copy.deepcopy(base.model), base.tokenizer, pooling=base.pooling, max_length=base.max_length,
                     projection=copy.deepcopy(tuned.projection))
    assert np.array_equal(interpolate_weights(tuned, base, 0).encode(TEXTS), oracle.encode(TEXTS))
    assert np.array_equal(interpolate_weights(tuned, base, 1).encode(TEXTS), tuned.encode(TEXTS))
    model = interpolate_model(SimilarityModel(tuned), base, 0.5)
    assert model.weight_interpolation["kept_from_finetuned"] == ["projection.weight", "projection.bias"]


def test_a_head_only_the_base_has_is_refused(tiny_encoder):
    with_head = Encoder(tiny_encoder.model, tiny_encoder.tokenizer, max_length=32, projection=torch.nn.Linear(32, 8))
    with pytest.raises(InvalidArgumentError, match=r"tensor 'projection.weight' of base is not in finetuned"):
        interpolate_weights(tiny_encoder, with_head, 0.5)


def test_identical_weights_are_reported(tiny_encoder, caplog):
    """A frozen-encoder run changes only its head: every alpha then gives the same encoder."""
    tuned = Encoder(tiny_encoder.model, tiny_encoder.tokenizer, max_length=32, projection=torch.nn.Linear(32, 8))
    with caplog.at_level(logging.WARNING, logger="metric_sim.interpolation"):
        interpolate_weights(tuned, tiny_encoder, 0.5)
    assert "same weights outside the projection head" in caplog.text


# ---------------------------------------------------------------------------- refusals
def test_different_kinds_are_refused(tiny_encoder):
    with pytest.raises(InvalidArgumentError, match=r"kind 'transformers' but base is of kind 'image'"):
        interpolate_weights(tiny_encoder, _tiny_cnn(0), 0.5)


def _bert(**overrides) -> Encoder:
    from transformers import BertConfig, BertModel

    base = build_tiny_encoder()
    settings = {**base.model.config.to_dict(), **overrides}
    torch.manual_seed(0)
    return Encoder(BertModel(BertConfig(**settings), add_pooling_layer=False), base.tokenizer, max_length=32)


def test_a_shape_mismatch_names_the_first_tensor(tiny_encoder):
    with pytest.raises(InvalidArgumentError) as caught:
        interpolate_weights(tiny_encoder, _bert(intermediate_size=48), 0.5)
    message = str(caught.value)
    assert "tensor 'model.encoder.layer.0.intermediate.dense.weight' has shape (64, 32) in finetuned but (48, 32)" in message


def test_a_missing_tensor_is_named(tiny_encoder):
    with pytest.raises(InvalidArgumentError, match=r"tensor 'model.encoder.layer.1.attention.self.query.weight' "
                                                   r"of finetuned is not in base"):
        interpolate_weights(tiny_encoder, _bert(num_hidden_layers=1), 0.5)
    with pytest.raises(InvalidArgumentError, match=r"tensor 'model.encoder.layer.1.attention.self.query.weight' "
                                                   r"of base is not in finetuned"):
        interpolate_weights(_bert(num_hidden_layers=1), tiny_encoder, 0.5)


def test_a_dtype_mismatch_is_refused(text_pair):
    tuned, base = text_pair
    with pytest.raises(InvalidArgumentError, match=r"torch.float64 in base"):
        interpolate_weights(tuned, copy.deepcopy(base).double(), 0.5)


@pytest.mark.parametrize("alpha, error, shown", [
    (-0.1, InvalidArgumentError, "-0.1"), (1.5, InvalidArgumentError, "1.5"),
    (float("nan"), InvalidArgumentError, "nan"), ("0.5", InvalidArgumentTypeError, "'0.5'"),
    (True, InvalidArgumentTypeError, "True"),
])
def test_alpha_outside_zero_one_is_refused(text_pair, alpha, error, shown):
    tuned, base = text_pair
    with pytest.raises(error, match=rf"^alpha must be .*{shown}"):
        interpolate_weights(tuned, base, alpha)
    with pytest.raises(error, match=rf"^alpha must be .*{shown}"):
        interpolate_model(SimilarityModel(tuned), base, alpha)


def test_non_trainable_encoders_are_refused(text_pair):
    tuned, _ = text_pair
    with pytest.raises(InvalidArgumentTypeError, match="base must be a TrainableEncoder"):
        interpolate_weights(tuned, object(), 0.5)


# ---------------------------------------------------------------------------- SimilarityModel, save, load, export
def test_model_is_uncalibrated_without_pairs_and_refitted_with_them(text_pair, easy_pairs):
    tuned, base = text_pair
    old = Calibrator(weight=-2.0, bias=3.0, metric="manhattan", feature="linear")
    finetuned = SimilarityModel(tuned, "manhattan", old)
    bare = interpolate_model(finetuned, base, 0.6)
    assert bare.metric.value == "manhattan" and bare.calibrator is None
    with pytest.raises(CalibrationError):
        bare.predict_proba(TEXTS[:2], TEXTS[2:4])
    pairs = easy_pairs
    calibrated = interpolate_model(finetuned, base, 0.6, pairs, fitted_on="demo")
    oracle = Calibrator.fit(SimilarityModel(interpolate_weights(tuned, base, 0.6), "manhattan").distance(
        pairs.texts_a, pairs.texts_b), pairs.labels, "manhattan", fitted_on="demo", feature="linear")
    assert calibrated.calibrator.to_dict() == oracle.to_dict()
    assert finetuned.calibrator is old  # the input model is untouched


def test_record_survives_save_load_and_calibrator_updates(text_pair, tmp_path):
    tuned, base = text_pair
    model = interpolate_model(SimilarityModel(tuned), base, 0.6, base_name="default")
    record = model.weight_interpolation
    assert record == {"alpha": 0.6, "base": "default", "base_fingerprint": base.fingerprint(),
                      "finetuned_fingerprint": tuned.fingerprint(), "kept_from_finetuned": []}
    folder = model.save(tmp_path / "model")
    assert json.loads((folder / "metric_sim.json").read_text())["weight_interpolation"] == record
    loaded = SimilarityModel.from_pretrained(folder)
    assert loaded.weight_interpolation == record
    assert np.array_equal(loaded.embed(TEXTS), model.embed(TEXTS))
    loaded.calibrator = Calibrator(weight=-1.0, bias=0.5, metric="euclidean")
    loaded.save_calibrator(folder)
    assert SimilarityModel.from_pretrained(folder).weight_interpolation == record


def test_base_named_by_a_local_folder_records_only_its_name(text_pair, tmp_path):
    tuned, base = text_pair
    base_dir = base.save(tmp_path / "somewhere" / "start")
    record = interpolate_model(SimilarityModel(tuned), base, 0.5, base_name=base_dir).weight_interpolation
    assert record["base"] == "start"


def test_folders_without_the_record_load_and_stay_without_it(tiny_encoder, tmp_path):
    folder = SimilarityModel(tiny_encoder).save(tmp_path / "plain")
    assert "weight_interpolation" not in json.loads((folder / "metric_sim.json").read_text())
    assert SimilarityModel.from_pretrained(folder).weight_interpolation is None


@pytest.mark.parametrize("record, field", [
    ({"alpha": 1.5, "base": "default", "base_fingerprint": "ab"}, "weight_interpolation.alpha"),
    ({"alpha": "0.5", "base": "default", "base_fingerprint": "ab"}, "weight_interpolation.alpha"),
    ({"alpha": 0.5, "base": "default"}, "weight_interpolation.base_fingerprint"),
    ({"alpha": 0.5, "base": None, "base_fingerprint": "ab", "kept_from_finetuned": [1]},
     "weight_interpolation.kept_from_finetuned"),
    ([0.5], "weight_interpolation"),
])
def test_a_damaged_record_is_a_config_error_naming_the_field(tiny_encoder, tmp_path, record, field):
    folder = SimilarityModel(tiny_encoder).save(tmp_path / "model")
    config = json.loads((folder / "metric_sim.json").read_text())
    (folder / "metric_sim.json").write_text(json.dumps({**config, "weight_interpolation": record}))
    with pytest.raises(ConfigError, match=rf"metric_sim.json: {field} "):
        SimilarityModel.from_pretrained(folder)


@pytest.mark.parametrize("onnx", [False, True])
def test_record_survives_export(text_pair, tmp_path, onnx):
    from metric_sim.export import export_model

    if onnx:
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnxscript")
    tuned, base = text_pair
    model = interpolate_model(SimilarityModel(tuned), base, 0.25, base_name="default")
    out = export_model(model.save(tmp_path / "model"), tmp_path / "bundle", onnx=onnx)
    saved = json.loads((out / "metric_sim.json").read_text())
    assert saved["weight_interpolation"] == model.weight_interpolation
    assert SimilarityModel.from_pretrained(out).weight_interpolation == model.weight_interpolation
    if onnx:
        assert "onnx" in saved["export"]
        from metric_sim import OnnxEncoder

        onnx_model = SimilarityModel.from_pretrained(out, backend="onnx")
        assert isinstance(onnx_model.encoder, OnnxEncoder)
        assert onnx_model.weight_interpolation == model.weight_interpolation


# ---------------------------------------------------------------------------- CLI
@pytest.fixture()
def run_folder(text_pair, tmp_path):
    """A run whose train_config.json names a saved starting folder (the real default model is not used in tests)."""
    tuned, base = text_pair
    base_dir = base.save(tmp_path / "start")
    run = tmp_path / "run"
    SimilarityModel(tuned, "euclidean", Calibrator(weight=-2.0, bias=3.0, metric="euclidean")).save(run / "model")
    (run / "train_config.json").write_text(json.dumps({"model": str(base_dir), "seed": 7, "encoder_options": {},
                                                       "run": {"status": "done"}}))
    return run, base_dir, tuned, base


def test_cli_writes_a_loadable_interpolated_folder(run_folder, tmp_path, capsys):
    run, base_dir, tuned, base = run_folder
    out = tmp_path / "wise"
    assert main(["interpolate", "--model", str(run), "--alpha", "0.25", "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    model = SimilarityModel.from_pretrained(out)
    assert model.weight_interpolation["alpha"] == 0.25
    assert model.weight_interpolation["base"] == "start"
    assert model.weight_interpolation["base_fingerprint"] == base.fingerprint()
    assert model.calibrator is None
    assert np.array_equal(model.embed(TEXTS), interpolate_weights(tuned, base, 0.25).encode(TEXTS))
    # --base overrides the recorded start; alpha 0 is then the base exactly
    assert main(["interpolate", "--model", str(run / "model"), "--alpha", "0", "--out", str(tmp_path / "zero"),
                 "--base", str(base_dir), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["weight_interpolation"]["alpha"] == 0.0
    assert np.array_equal(SimilarityModel.from_pretrained(tmp_path / "zero").embed(TEXTS), base.encode(TEXTS))


def test_cli_calibrates_on_a_preset_split(run_folder, tmp_path, easy_pairs, monkeypatch, capsys):
    import metric_sim.data

    run, _, tuned, base = run_folder
    asked = []

    def fake_load_preset(name, path=None, *, split=None, **kwargs):
        asked.append((name, split))
        return easy_pairs

    monkeypatch.setattr(metric_sim.data, "load_preset", fake_load_preset)
    out = tmp_path / "wise"
    assert main(["interpolate", "--model", str(run), "--alpha", "0.5", "--out", str(out), "--calibrate", "qqp"]) == 0
    assert asked == [("qqp", "dev")]
    calibrator = SimilarityModel.from_pretrained(out).calibrator
    oracle = SimilarityModel(interpolate_weights(tuned, base, 0.5)).fit_calibrator(easy_pairs)
    assert (calibrator.weight, calibrator.bias) == (oracle.weight, oracle.bias)
    assert "preset 'qqp'" in calibrator.fitted_on
    assert main(["interpolate", "--model", str(run), "--alpha", "0.5", "--out", str(out), "--overwrite",
                 "--calibrate", "qqp:validation"]) == 0
    assert asked[-1] == ("qqp", "validation")


def test_cli_errors_exit_2(run_folder, tmp_path, capsys):
    run, base_dir, tuned, _ = run_folder

    def fails(*args: str) -> str:
        assert main(["interpolate", *args]) == 2
        return capsys.readouterr().err

    out = str(tmp_path / "out")
    assert "--alpha must be in [0, 1], got 1.5" in fails("--model", str(run), "--alpha", "1.5", "--out", out)
    assert "invalid float value: 'half'" in fails("--model", str(run), "--alpha", "half", "--out", out)
    assert "--base is required" in fails("--model", str(run / "model"), "--alpha", "0.5", "--out", out)
    assert "does not exist" in fails("--model", str(run), "--alpha", "0.5", "--out", out,
                                     "--base", str(tmp_path / "missing"))
    cnn_dir = _tiny_cnn(0).save(tmp_path / "cnn")
    assert "base is of kind 'image'" in fails("--model", str(run), "--alpha", "0.5", "--out", out, "--base", str(cnn_dir))
    other = _bert(intermediate_size=48).save(tmp_path / "wider")
    assert "tensor 'model.encoder.layer.0.intermediate.dense.weight' has shape" in fails(
        "--model", str(run), "--alpha", "0.5", "--out", out, "--base", str(other))
    assert "must not be inside" in fails("--model", str(run), "--alpha", "0.5", "--out", str(run / "model" / "x"))
    assert "preset 'mrpc' has no 'dev' split" in fails("--model", str(run), "--alpha", "0.5", "--out", out,
                                                       "--calibrate", "mrpc")
    assert "preset must be one of" in fails("--model", str(run), "--alpha", "0.5", "--out", out,
                                            "--calibrate", "nosuch:dev")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    assert "already exists" in fails("--model", str(run), "--alpha", "0.5", "--out", str(tmp_path / "full"))
    assert (tmp_path / "full" / "keep.txt").read_text() == "x"
    assert not (tmp_path / "out").exists()
