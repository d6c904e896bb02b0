"""``layer_lr_decay``: each encoder layer trains at ``decay`` times the learning rate of the layer above it.

Checked against the layer groups the encoder declares (the oracle for which parameter is in which
layer), the optimiser the Trainer builds (its groups' rates, kept in ratio by the schedule, and its
weight-decay split), and what a run does to the weights (Adam's steps scale with the rate, so the
embeddings move about ``decay**depth`` as far).
"""

from __future__ import annotations

import copy
import json
import math

import pytest
from transformers import TrainerCallback

from metric_sim.encoders.image import image_encoder_from_name
from metric_sim.encoders.multimodal import ProductEncoder, identity_fusion
from metric_sim.errors import ConfigError
from metric_sim.training import TrainConfig, train
from metric_sim.training.frozen import identity_projection
from metric_sim.training.layers import layer_lr_scales
from tests.conftest import DEMO_FILE
from tests.toy_encoder import ToyVectorEncoder

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def small(demo):
    return demo.select(range(96))  # 6 steps of 16 pairs


# A short run on the demo pairs: no zero-shot pass, no best-checkpoint reload, one checkpoint.
SHORT_RUN = {"train_file": str(DEMO_FILE), "loss": "contrastive", "batch_size": 16, "learning_rate": 1e-3,
             "warmup_ratio": 0.0, "max_steps": 6, "eval_steps": 6, "logging_steps": 2, "seed": 7,
             "zero_shot_eval": False, "load_best_model_at_end": False, "save_total_limit": 1}


def _config(**changes):
    return TrainConfig(**{**SHORT_RUN, **changes})


def _moved(before, module, prefix):
    after = dict(module.named_parameters())
    return math.sqrt(sum(float(((after[n].detach() - p) ** 2).sum()) for n, p in before.items() if n.startswith(prefix)))


def test_scales_follow_the_declared_layers_top_down(tiny_encoder):
    tiny_encoder.projection = identity_projection(tiny_encoder.pooled_dim, 8, seed=0)
    scales = layer_lr_scales(tiny_encoder, 0.5)
    groups = tiny_encoder.layer_groups()
    assert len(groups) == 3  # the embeddings, then the tiny BERT's two layers
    expected = {name: 0.5 ** (2 - depth) for depth, group in enumerate(groups) for name in group}
    assert scales == expected
    assert {scales[n] for n in scales if n.startswith("model.embeddings.")} == {0.25}
    assert {scales[n] for n in scales if n.startswith("model.encoder.layer.1.")} == {1.0}
    assert not any(n.startswith("projection.") for n in scales)  # the head trains at the full rate
    assert layer_lr_scales(tiny_encoder, 1.0) == {}


def test_each_tower_of_a_multimodal_encoder_decays_from_its_own_top(tiny_encoder):
    image = image_encoder_from_name("small-cnn", in_channels=1, widths=(4, 8), seed=0)
    product = ProductEncoder(tiny_encoder, image, projection=identity_fusion(32 + 8))
    scales = layer_lr_scales(product, 0.5)
    text_top = [n for n in scales if n.startswith("text.model.encoder.layer.1.")]
    image_groups = image.layer_groups()
    assert text_top and all(scales[n] == 1.0 for n in text_top)
    assert all(scales["image." + n] == 1.0 for n in image_groups[-1])
    assert all(scales["image." + n] == 0.5 ** (len(image_groups) - 1) for n in image_groups[0])
    assert not any(n.startswith("projection.") for n in scales)


def test_the_optimiser_holds_one_group_per_rate_and_decay_and_the_schedule_keeps_the_ratios(
        tiny_encoder, small, tmp_path, trainers):
    config = _config(layer_lr_decay=0.5, warmup_ratio=0.2, lr_scheduler="linear", max_steps=6)
    scales = layer_lr_scales(tiny_encoder, 0.5)
    lrs = []  # every group's lr at the end of each step: warming up, then decaying

    class RecordRates(TrainerCallback):
        def on_step_end(self, args, state, control, optimizer=None, **kwargs):  # noqa: ANN001
            lrs.append([group["lr"] for group in optimizer.param_groups])

    train(config, tmp_path / "run", encoder=tiny_encoder, train_data=small, dev_data=small, show_progress=False,
          callbacks=[RecordRates()])
    trainer = trainers[-1]
    decays = set(trainer.get_decay_parameter_names(tiny_encoder))
    names = {id(p): n for n, p in tiny_encoder.named_parameters()}
    seen = []
    groups = trainer.optimizer.param_groups
    top = next(i for i, g in enumerate(groups) if scales.get(names[id(g["params"][0])], 1.0) == 1.0)
    assert len(lrs) == 6 and len({step[top] for step in lrs}) > 2  # the schedule did move the rate
    for i, group in enumerate(groups):
        members = [names[id(p)] for p in group["params"]]
        seen += members
        scale = {scales.get(n, 1.0) for n in members}
        assert len(scale) == 1
        assert group["initial_lr"] == pytest.approx(1e-3 * scale.pop())
        for step in lrs[:-1]:  # the last step's rate is 0 (linear decay)
            assert step[i] / step[top] == pytest.approx(group["initial_lr"] / 1e-3)
        assert {group["weight_decay"]} == {0.01 if n in decays else 0.0 for n in members}
    assert sorted(seen) == sorted(names.values())  # every parameter once
    assert groups[0]["initial_lr"] == pytest.approx(1e-3)  # the Trainer logs the first group's: learning_rate
    saved = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert saved["layer_lr_decay"] == 0.5


def test_the_embeddings_move_about_decay_squared_as_far(tiny_encoder, small, tmp_path):
    start = {n: p.detach().clone() for n, p in tiny_encoder.named_parameters()}
    moved = {}
    for decay in (1.0, 0.1):
        encoder = copy.deepcopy(tiny_encoder)
        train(_config(layer_lr_decay=decay), tmp_path / f"d{decay}", encoder=encoder, train_data=small,
              dev_data=small, show_progress=False)
        moved[decay] = {part: _moved(start, encoder, prefix) for part, prefix in
                        (("embeddings", "model.embeddings."), ("top", "model.encoder.layer.1."))}
    # Adam's step is ~lr per weight whatever the gradient: 0.1**2 = 0.01 of the movement at the bottom.
    assert moved[0.1]["embeddings"] < 0.03 * moved[1.0]["embeddings"]
    assert moved[0.1]["top"] > 0.3 * moved[1.0]["top"]


@pytest.mark.parametrize(("value", "message"), [
    (0, r"layer_lr_decay must be a number in \(0, 1\] \(1: every layer at learning_rate\), got 0"),
    (-0.5, r"layer_lr_decay must be .*got -0.5"),
    (1.5, r"layer_lr_decay must be .*got 1.5"),
    (float("nan"), r"layer_lr_decay must be .*got nan"),
    (True, r"layer_lr_decay must be .*got True"),
    ("0.8", r"layer_lr_decay must be .*got '0.8'"),
])
def test_bad_values_are_config_errors_naming_the_key(value, message):
    with pytest.raises(ConfigError, match=message):
        _config(layer_lr_decay=value)


def test_read_from_yaml_and_set_and_refused_where_there_are_no_layers(small, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"train_file: {DEMO_FILE}\nlayer_lr_decay: 0.8\n")
    assert TrainConfig.from_yaml(recipe).layer_lr_decay == 0.8
    assert TrainConfig.from_yaml(recipe, {"layer_lr_decay": "1"}).layer_lr_decay == 1.0
    assert "layer_lr_decay" not in TrainConfig.from_yaml(recipe, {"layer_lr_decay": "1"}).to_dict()
    with pytest.raises(ConfigError, match=r"--set layer_lr_decay=2: layer_lr_decay must be a number in \(0, 1\]"):
        TrainConfig.from_yaml(recipe, {"layer_lr_decay": 2})
    with pytest.raises(ConfigError, match=r"layer_lr_decay=0.8 and freeze_encoder: true exclude each other"):
        _config(layer_lr_decay=0.8, freeze_encoder=True)
    with pytest.raises(ConfigError, match=r"layer_lr_decay=0.8: the toy-vectors encoder cannot be split into layers"):
        layer_lr_scales(ToyVectorEncoder(), 0.8)
    with pytest.raises(ConfigError, match=r"layer_lr_decay=0.8: the toy-vectors encoder"):
        train(_config(layer_lr_decay=0.8), tmp_path / "toy", encoder=ToyVectorEncoder(), train_data=small,
              dev_data=small, show_progress=False)
