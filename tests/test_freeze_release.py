"""A caller's encoder comes back trainable from ``train``: after a run, and after a setup or run that failed.

``freeze_layers`` (and frozen mode, ``freeze_encoder``) set ``requires_grad=False`` on the encoder the
caller passed; the documented contract is that the encoder given back trains every layer again.
"""

from __future__ import annotations

import pytest
import torch
from transformers import TrainerCallback

import metric_sim.training.run as run_module
from metric_sim.encoders.image import image_encoder_from_name
from metric_sim.model import SimilarityModel
from metric_sim.training import TrainConfig, train
from tests.conftest import DEMO_FILE
from tests.test_robust_training import _faces

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Failure(RuntimeError):
    pass


@pytest.fixture(scope="module")
def small(demo):
    return demo.select(range(64))


def _config(**changes):
    base = dict(train_file=str(DEMO_FILE), loss="contrastive", batch_size=16, learning_rate=1e-3, warmup_ratio=0.0,
                max_steps=2, eval_steps=2, logging_steps=1, seed=7, zero_shot_eval=False,
                load_best_model_at_end=False, save_total_limit=1)
    return TrainConfig(**{**base, **changes})


def _fail_at(monkeypatch, name, encoder, seen):
    """Make ``run_module.<name>`` (a step after freezing) record which parameters are frozen, then raise."""

    def boom(*args, **kwargs):
        seen.append({n for n, p in encoder.named_parameters() if not p.requires_grad})
        raise Failure(name)

    monkeypatch.setattr(run_module, name, boom)


class FailAfterOneStep(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
        raise Failure("training")


# The first step after freezing, the data preparation, and the Trainer's construction.
SETUP_STEPS = ["training_arguments", "prepare_pairs", "_make_trainer"]


@pytest.mark.parametrize("step", SETUP_STEPS)
def test_failed_setup_releases_the_frozen_text_layers(tiny_encoder, small, tmp_path, monkeypatch, step):
    seen: list[set[str]] = []
    _fail_at(monkeypatch, step, tiny_encoder, seen)
    with pytest.raises(Failure, match=step):
        train(_config(freeze_layers=1), tmp_path / "run", encoder=tiny_encoder, train_data=small, dev_data=small,
              show_progress=False)
    frozen = {n for n, _ in tiny_encoder.named_parameters() if n.startswith(("model.embeddings.",
                                                                               "model.encoder.layer.0."))}
    assert seen == [frozen] and len(frozen) == 5 + 16  # frozen when the failing step ran
    assert all(p.requires_grad for p in tiny_encoder.parameters())


def test_failed_training_releases_the_frozen_text_layers(tiny_encoder, small, tmp_path):
    with pytest.raises(Failure, match="training"):
        train(_config(freeze_layers=1), tmp_path / "run", encoder=tiny_encoder, train_data=small, dev_data=small,
              show_progress=False, callbacks=[FailAfterOneStep()])
    assert all(p.requires_grad for p in tiny_encoder.parameters())


def _small_cnn():
    options = {"size": 16, "resize": "squash", "mode": "L", "mean": 0.5, "std": 0.5}
    return image_encoder_from_name("small-cnn", in_channels=1, widths=(4, 8), seed=0, preprocess=options,
                                   normalize=True)


def _batch_norms(encoder):
    return {name: m for name, m in encoder.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}


@pytest.mark.parametrize("where", ["_make_trainer", "training"])
def test_failure_releases_the_small_cnn_parameters_and_its_batch_norms(tmp_path, monkeypatch, where):
    train_pairs, dev_pairs = _faces(tmp_path / "faces")
    encoder = _small_cnn()
    seen: list[set[str]] = []
    callbacks = [FailAfterOneStep()] if where == "training" else []
    if where != "training":
        _fail_at(monkeypatch, where, encoder, seen)
    config = _config(batch_size=8, learning_rate=1e-2, loss_params={"pos_margin": 0.0, "neg_margin": 1.0},
                     freeze_layers=1)
    with pytest.raises(Failure, match=where):
        train(config, tmp_path / "run", encoder=encoder, train_data=train_pairs, dev_data=dev_pairs,
              show_progress=False, callbacks=callbacks)
    if seen:
        assert seen == [{"backbone.features.0.weight", "backbone.features.1.weight", "backbone.features.1.bias"}]
    assert all(p.requires_grad for p in encoder.parameters())
    # The frozen block's batch norm was held in eval mode: released, it trains (and updates its statistics) again.
    norms = _batch_norms(encoder)
    assert "backbone.features.1" in norms
    encoder.train()
    before = {name: m.running_mean.clone() for name, m in norms.items()}
    encoder(torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(0)))
    for name, module in norms.items():
        assert module.training, name
        assert not torch.equal(module.running_mean, before[name]), name


def test_failed_setup_in_frozen_mode_unfreezes_the_base(tiny_encoder, small, tmp_path, monkeypatch):
    seen: list[set[str]] = []
    _fail_at(monkeypatch, "_make_trainer", tiny_encoder, seen)
    with pytest.raises(Failure):
        train(_config(freeze_encoder=True), tmp_path / "run", encoder=tiny_encoder, train_data=small,
              dev_data=small, show_progress=False)
    assert seen == [{n for n, _ in tiny_encoder.named_parameters()}]  # the whole base was frozen
    assert all(p.requires_grad for p in tiny_encoder.parameters())


def test_a_finished_run_gives_back_a_trainable_encoder_and_saves_the_trained_weights(tiny_encoder, small, tmp_path):
    start = {n: p.detach().clone() for n, p in tiny_encoder.named_parameters()}
    result = train(_config(freeze_layers=1), tmp_path / "run", encoder=tiny_encoder, train_data=small,
                   dev_data=small, show_progress=False)
    assert all(p.requires_grad for p in tiny_encoder.parameters())
    trained = {n: p.detach() for n, p in tiny_encoder.named_parameters()}
    assert torch.equal(trained["model.embeddings.word_embeddings.weight"],
                       start["model.embeddings.word_embeddings.weight"])
    assert not torch.equal(trained["model.encoder.layer.1.output.dense.weight"],
                           start["model.encoder.layer.1.output.dense.weight"])
    saved = SimilarityModel.from_pretrained(tmp_path / "run" / "model").encoder.state_dict()
    for name, value in tiny_encoder.state_dict().items():
        assert torch.equal(saved[name], value), name
    assert result.model.encoder is tiny_encoder
