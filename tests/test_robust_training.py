"""Keeping what the base model knew while fine-tuning: the L2-SP penalty (``l2sp_weight``) and
``freeze_layers``, on the tiny random BERT and the small CNN, in-process."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from transformers import TrainerCallback

import metric_sim.training.run as run_module
from metric_sim.cli import main
from metric_sim.encoders.image import image_encoder_from_name
from metric_sim.encoders.multimodal import ProductEncoder, identity_fusion
from metric_sim.errors import ConfigError, TrainingError
from metric_sim.model import SimilarityModel
from metric_sim.training import TrainConfig, train
from metric_sim.training.frozen import identity_projection
from metric_sim.training.regularizers import (
    L2SP,
    build_l2sp,
    freeze_lower_layers,
    starting_parameter_ids,
)
from tests.conftest import DEMO_FILE, logged_losses, torchrun
from tests.toy_encoder import ToyVectorEncoder

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def small(demo):
    return demo.select(range(96))



def _config(**changes):
    base = dict(train_file=str(DEMO_FILE), loss="contrastive", batch_size=16, learning_rate=1e-3, warmup_ratio=0.0,
                max_steps=8, eval_steps=8, logging_steps=2, seed=7, zero_shot_eval=False,
                load_best_model_at_end=False, save_total_limit=1)
    return TrainConfig(**{**base, **changes})


def _state(module):
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def _distance(a, b):
    return math.sqrt(sum(float(((a[k].double() - b[k].double()) ** 2).sum()) for k in a))


# ----------------------------------------------------------------------------- the penalty


def test_penalty_is_zero_at_the_start_and_the_hand_computed_sum_after_a_change(tiny_encoder):
    start = {k: v.detach().numpy().astype(np.float64) for k, v in tiny_encoder.state_dict().items()}
    ids = starting_parameter_ids(tiny_encoder, fresh_head=False)
    tiny_encoder.projection = identity_projection(32, 32, 0)  # a new head: not in the starting model
    penalty = build_l2sp(0.3, tiny_encoder, ids)
    assert penalty() == 0.0
    assert not any(name.startswith("projection.") for name in penalty.names)
    assert set(penalty.names) == {n for n, _ in tiny_encoder.named_parameters() if not n.startswith("projection.")}

    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in tiny_encoder.parameters():
            parameter.add_(0.01 * torch.randn(parameter.shape, generator=generator))
    moved = {k: v.detach().numpy().astype(np.float64) for k, v in tiny_encoder.state_dict().items()}
    oracle = 0.3 / 2 * sum(float(((moved[name] - start[name]) ** 2).sum()) for name in penalty.names)
    value = penalty()
    assert float(value.detach()) == pytest.approx(oracle, rel=1e-5)
    value.backward()  # d/dtheta = weight * (theta - theta_0)
    named = dict(tiny_encoder.named_parameters())
    for name in penalty.names:
        expected = 0.3 * (moved[name] - start[name])
        np.testing.assert_allclose(named[name].grad.numpy(), expected, rtol=1e-4, atol=1e-9)
    assert named["projection.weight"].grad is None


def test_fresh_fusion_head_and_frozen_parameters_are_not_penalised(tiny_encoder):
    image = image_encoder_from_name("small-cnn", in_channels=1, widths=(4, 8), seed=0)
    encoder = ProductEncoder(tiny_encoder, image, projection=identity_fusion(32 + 8))
    frozen = freeze_lower_layers(encoder, 1)
    penalty = build_l2sp(1.0, encoder, starting_parameter_ids(encoder, fresh_head=True))
    names = set(penalty.names)
    assert not any(n.startswith("projection.") for n in names)
    assert not names & set(frozen.names)
    trainable = {n for n, p in encoder.named_parameters() if p.requires_grad and not n.startswith("projection.")}
    assert names == trainable
    # A head the starting model already had (fresh_head=False) is kept near its value like the rest.
    kept = build_l2sp(1.0, encoder, starting_parameter_ids(encoder, fresh_head=False))
    assert {"projection.weight", "projection.bias"} <= set(kept.names)


def test_large_weight_keeps_the_weights_near_the_start_and_is_logged(tiny_encoder_session, small, tmp_path):
    start = _state(tiny_encoder_session)
    moved = {}
    logs = []

    class Logs(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
            logs_seen.append(dict(logs or {}))

    for weight in (0.0, 50.0):
        logs_seen: list[dict] = []
        encoder = copy.deepcopy(tiny_encoder_session)
        train(_config(l2sp_weight=weight), tmp_path / f"run-{weight}", encoder=encoder, train_data=small,
              dev_data=small, show_progress=False, callbacks=[Logs()])
        moved[weight] = _distance(_state(encoder), start)
        logs.append(logs_seen)
    assert moved[0.0] > 0 and moved[50.0] < 0.5 * moved[0.0], moved
    penalties = [entry["l2sp"] for entry in logs[1] if "loss" in entry]
    assert len(penalties) == 4 and all(value > 0 for value in penalties)
    assert not any("l2sp" in entry for entry in logs[0])
    saved = json.loads((tmp_path / "run-50.0" / "train_config.json").read_text())
    assert saved["l2sp_weight"] == 50.0 and saved["freeze_layers"] == 0
    assert saved["run"]["l2sp_reference"]["tensors"] == len(list(tiny_encoder_session.parameters()))


# ----------------------------------------------------------------------------- freeze_layers


def test_freeze_layers_keeps_the_lower_text_layers_bit_identical(tiny_encoder, small, tmp_path, trainers):
    start = _state(tiny_encoder)
    train(_config(freeze_layers=1, l2sp_weight=0.01), tmp_path / "run", encoder=tiny_encoder, train_data=small,
          dev_data=small, show_progress=False)
    frozen = {n for n in start if n.startswith(("model.embeddings.", "model.encoder.layer.0."))}
    assert len(frozen) == 5 + 16
    after = _state(tiny_encoder)
    for name in start:
        if name.endswith("attention.self.key.bias") and name not in frozen:
            continue  # softmax ignores it: its gradient is zero but for rounding, so it may not move
        assert torch.equal(after[name], start[name]) == (name in frozen), name
    trainer = trainers[-1]
    named = dict(tiny_encoder.named_parameters())
    in_optimizer = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    with_state = {id(p) for p in trainer.optimizer.state}
    assert in_optimizer == with_state == {id(named[n]) for n in start if n not in frozen}
    assert not set(trainer.l2sp.names) & frozen  # frozen weights are not in the penalty
    assert all(p.requires_grad for p in tiny_encoder.parameters())  # released after the run


def _faces(root):
    for person in range(6):
        pattern = np.random.default_rng(person).integers(0, 256, (5, 5))
        for shot in range(5):
            noise = np.random.default_rng(1000 * person + shot).normal(0, 12, (20, 20))
            image = np.clip(np.kron(pattern, np.ones((4, 4))) + noise, 0, 255).astype(np.uint8)
            (root / f"p{person}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / f"p{person}" / f"{shot}.png")
    from metric_sim.data.collections import read_image_folder

    parts = read_image_folder(root).split_by_identity({"train": 4 / 6, "dev": 2 / 6}, seed=0)
    return parts["train"].to_pairs(seed=0), parts["dev"].to_pairs(seed=0)


def test_freeze_layers_on_the_small_cnn_keeps_its_first_block_and_batch_statistics(tmp_path, trainers):
    train_pairs, dev_pairs = _faces(tmp_path / "faces")
    options = {"widths": [4, 8], "in_channels": 1, "preprocess": {"size": 16, "resize": "squash", "mode": "L",
                                                                  "mean": 0.5, "std": 0.5}}
    config = _config(model="small-cnn", encoder_options=options, normalize=True, batch_size=8, learning_rate=1e-2,
                     loss_params={"pos_margin": 0.0, "neg_margin": 1.0}, freeze_layers=1, max_steps=4, eval_steps=4)
    result = train(config, tmp_path / "run", train_data=train_pairs, dev_data=dev_pairs, show_progress=False)
    start = run_module.starting_encoder(config).state_dict()  # the seeded start, rebuilt
    after = result.model.encoder.state_dict()
    block0 = [k for k in start if k.startswith(("backbone.features.0.", "backbone.features.1."))]
    assert len(block0) == 6  # conv weight, bn weight/bias, running mean/var, batches tracked
    for name in start:
        if name.endswith("num_batches_tracked"):
            continue
        assert torch.equal(after[name], start[name]) == (name in block0), name
    assert not trainers[-1].l2sp


def test_freeze_layers_on_timm_stages_and_both_multimodal_towers(tiny_encoder):
    timm_encoder = image_encoder_from_name("timm:mobilenetv3_small_050", seed=0)
    frozen = freeze_lower_layers(timm_encoder, 2)
    names = set(frozen.names)
    assert {n for n in names if not n.startswith(("backbone.blocks.0.", "backbone.blocks.1."))} == \
        {"backbone.conv_stem.weight", "backbone.bn1.weight", "backbone.bn1.bias"}
    assert not any(n.startswith("backbone.blocks.2.") or "conv_head" in n for n in names)
    assert all(not p.requires_grad for n, p in timm_encoder.named_parameters() if n in names)
    frozen.release()
    assert all(p.requires_grad for p in timm_encoder.parameters())
    with pytest.raises(ConfigError, match=r"freeze_layers=7 exceeds the depth of the image encoder: 6 layers"):
        freeze_lower_layers(timm_encoder, 7)

    image = image_encoder_from_name("small-cnn", in_channels=1, widths=(4, 8), seed=0)
    product = ProductEncoder(tiny_encoder, image, projection=identity_fusion(32 + 8))
    names = set(freeze_lower_layers(product, 1).names)
    assert names == {n for n, _ in product.named_parameters()
                     if n.startswith(("text.model.embeddings.", "text.model.encoder.layer.0.",
                                      "image.backbone.features.0.", "image.backbone.features.1."))}
    with pytest.raises(ConfigError, match=r"freeze_layers=3 exceeds the depth of the multimodal encoder's text part \(Encoder\): 2 layers"):
        freeze_lower_layers(product, 3)


# ----------------------------------------------------------------------------- config errors


@pytest.mark.parametrize(("changes", "message"), [
    ({"l2sp_weight": -0.1}, r"l2sp_weight must be a finite number >= 0 \(0: off\), got -0.1"),
    ({"l2sp_weight": float("nan")}, r"l2sp_weight must be a finite number >= 0 .*got nan"),
    ({"l2sp_weight": float("inf")}, r"l2sp_weight .*got inf"),
    ({"l2sp_weight": True}, r"l2sp_weight .*got True"),
    ({"freeze_layers": -1}, r"freeze_layers must be a non-negative integer .*got -1"),
    ({"freeze_layers": 1.5}, r"freeze_layers .*got 1.5"),
    ({"freeze_layers": "2"}, r"freeze_layers .*got '2'"),
    ({"freeze_layers": 2, "freeze_encoder": True}, r"freeze_layers=2 and freeze_encoder: true exclude each other"),
])
def test_bad_values_are_config_errors_naming_the_key(changes, message):
    with pytest.raises(ConfigError, match=message):
        _config(**changes)


def test_keys_read_from_yaml_and_set(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"train_file: {DEMO_FILE}\nl2sp_weight: 1e-2\nfreeze_layers: 1\n")
    config = TrainConfig.from_yaml(recipe)
    assert config.l2sp_weight == 0.01 and config.freeze_layers == 1
    assert TrainConfig.from_yaml(recipe, {"l2sp_weight": "3"}).l2sp_weight == 3.0
    assert _config().l2sp_weight == 0.0 and _config().freeze_layers == 0
    with pytest.raises(ConfigError, match=r"--set l2sp_weight=-1: l2sp_weight must be a finite number"):
        TrainConfig.from_yaml(recipe, {"l2sp_weight": -1})


def test_depth_and_unsplittable_encoders_are_refused_before_training(tiny_encoder, small, tmp_path):
    with pytest.raises(ConfigError, match=r"freeze_layers=3 exceeds the depth of the transformers encoder: 2 layers"):
        train(_config(freeze_layers=3), tmp_path / "a", encoder=tiny_encoder, train_data=small, dev_data=small,
              show_progress=False)
    assert all(p.requires_grad for p in tiny_encoder.parameters())
    with pytest.raises(ConfigError, match=r"freeze_layers=1: the toy-vectors encoder cannot be split into layers"):
        freeze_lower_layers(ToyVectorEncoder(), 1)
    # A frozen encoder under a new head leaves nothing for L2-SP to keep near its start.
    with pytest.raises(ConfigError, match=r"l2sp_weight=0.5: no trainable parameter of the starting model"):
        train(_config(freeze_encoder=True, l2sp_weight=0.5), tmp_path / "b", encoder=tiny_encoder,
              train_data=small, dev_data=small, show_progress=False)


# ----------------------------------------------------------------------------- resume


class _Killed(Exception):
    pass


class _KillAfterSave(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):  # noqa: ANN001
        raise _Killed(f"killed after saving step {state.global_step}")


def test_resume_pulls_towards_the_original_start_not_the_checkpoint(tiny_encoder_session, small, tmp_path, trainers):
    start = _state(tiny_encoder_session)
    run = tmp_path / "run"
    config = _config(l2sp_weight=5.0, max_steps=4, eval_steps=2, save_total_limit=2)
    first = copy.deepcopy(tiny_encoder_session)
    with pytest.raises(_Killed, match="step 2"):
        train(config, run, encoder=first, train_data=small, dev_data=small, show_progress=False,
              callbacks=[_KillAfterSave()])
    assert (run / "checkpoints" / "checkpoint-2").is_dir()
    saved = json.loads((run / "train_config.json").read_text())["run"]
    assert saved["status"] == "running" and len(saved["l2sp_reference"]["sha256"]) == 64

    # The encoder trained for 2 steps is not the start: resuming with it would pull towards the wrong weights.
    with pytest.raises(TrainingError, match="starting weights rebuilt for l2sp_weight differ"):
        train(None, run, resume=True, encoder=first, train_data=small, dev_data=small, show_progress=False)

    result = train(None, run, resume=True, encoder=copy.deepcopy(tiny_encoder_session), train_data=small,
                   dev_data=small, show_progress=False)
    assert result.steps == 4
    penalty = trainers[-1].l2sp
    assert len(penalty.names) == len(start)
    for name, reference in zip(penalty.names, penalty.reference, strict=True):
        assert torch.equal(reference, start[name]), name  # bit for bit the original start
    final = json.loads((run / "train_config.json").read_text())["run"]
    assert final["resumed"] is True and final["l2sp_reference"] == saved["l2sp_reference"]


def test_record_identifies_the_reference_weights():
    layer = torch.nn.Linear(3, 2)
    penalty = L2SP(2.0, layer.named_parameters())
    assert penalty.record()["values"] == 8 and penalty.record() == L2SP(2.0, layer.named_parameters()).record()
    with torch.no_grad():
        layer.weight[0, 0] += 1.0
    assert float(penalty().detach()) == pytest.approx(1.0)
    assert penalty.record() != L2SP(2.0, layer.named_parameters()).record()


# ----------------------------------------------------------------------------- torchrun


def test_torchrun_with_both_options_follows_one_process(tiny_encoder, tmp_path):
    """2 ranks of 8 pairs take the same steps as 1 process of 16: each rank's penalty on its identical
    replica, averaged by DDP, is the one-process penalty; the frozen layers stay bit-identical."""
    model_dir = tiny_encoder.save(tmp_path / "tiny-model")
    recipe = {"train_file": str(DEMO_FILE), "text_a": "question1", "text_b": "question2", "label": "is_duplicate",
              "model": str(model_dir), "max_length": 32, "loss": "contrastive", "batch_size": 8,
              "learning_rate": 1e-3, "warmup_ratio": 0.0, "seed": 3, "max_steps": 4, "eval_steps": 4,
              "logging_steps": 2, "save_total_limit": 1, "zero_shot_eval": False, "l2sp_weight": 5.0,
              "freeze_layers": 1}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    torchrun("-m", "metric_sim", "train", "--config", str(path), "--out", str(tmp_path / "ddp"), "--no-progress")
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "single"), "--no-progress",
                 "--set", "batch_size=16"]) == 0
    histories = []
    for folder in (tmp_path / "ddp", tmp_path / "single"):
        histories.append([(h["step"], h["loss"], h["l2sp"]) for h in logged_losses(folder)])
    assert [step for step, _, _ in histories[0]] == [2, 4]
    assert histories[0][-1][2] > 0
    for (step, loss, penalty), (step1, loss1, penalty1) in zip(*histories, strict=True):
        assert step == step1 and loss == pytest.approx(loss1, abs=2e-4) and penalty == pytest.approx(penalty1, rel=1e-3)
    trained = SimilarityModel.from_pretrained(tmp_path / "ddp" / "model").encoder.state_dict()
    for name, value in tiny_encoder.state_dict().items():
        if name.startswith(("model.embeddings.", "model.encoder.layer.0.")):
            assert torch.equal(trained[name], value), name
