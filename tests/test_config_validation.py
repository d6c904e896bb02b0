"""A training config is checked when it is built: loss parameters, every other field, recipes and ``--set``.

Each config here names a training file that does not exist: a check that ran only once
training starts would fail on the missing file instead, so these tests see the early error.
"""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from metric_sim.errors import (
    ConfigError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    MetricSimError,
)
from metric_sim.losses.registry import (
    LOSSES,
    default_loss_params,
    list_losses,
    validate_loss_params,
)
from metric_sim.training import TrainConfig, parse_overrides
from tests.conftest import REPO_ROOT

MISSING = "/nonexistent/metric-sim/pairs.tsv"
RECIPES = sorted((REPO_ROOT / "recipes").glob("*.yaml"))


def _config(**changes):
    return TrainConfig(**{"train_file": MISSING, **changes})


# (loss, loss_params, substrings the message must hold: the loss, the parameter, the value, what is valid)
BAD_LOSS_PARAMS = [
    ("contrastive", {"neg_margin": -1}, ["'contrastive'", "'neg_margin'", "got -1", "> 0"]),
    ("contrastive", {"pos_margin": -0.5}, ["'contrastive'", "'pos_margin'", "got -0.5", ">= 0"]),
    ("triplet", {"margin": math.inf}, ["'triplet'", "'margin'", "got inf", "finite"]),
    ("online_contrastive", {"neg_margin": -math.inf}, ["'neg_margin'", "got -inf", "finite"]),
    ("triplet", {"margin": math.nan}, ["'margin'", "got nan", "finite"]),
    ("contrastive", {"pos_margin": 1.0, "neg_margin": 0.5},
     ["'contrastive'", "pos_margin must be smaller than neg_margin", "pos_margin=1.0", "neg_margin=0.5"]),
    ("online_contrastive", {"pos_margin": 0.8, "neg_margin": 0.8}, ["pos_margin must be smaller than neg_margin"]),
    # only pos_margin given: compared with the Euclidean default neg_margin (0.8 for any size)
    ("online_contrastive", {"pos_margin": 0.9}, ["pos_margin=0.9", "neg_margin=0.8 (the euclidean default)"]),
    ("contrastive", {"margin": 0.2}, ["unknown parameter(s) ['margin'] for loss 'contrastive'", "valid: ["]),
    ("triplet", {"margn": 0.2, "miner": None}, ["['margn']", "'triplet'", "'margin'"]),
    ("triplet", {"margin": "big"}, ["'triplet'", "'margin' must be a finite number, got 'big'"]),
    ("ntxent", {"temperature": "0.05x"}, ["'ntxent'", "'temperature'", "got '0.05x'"]),
    ("contrastive", {"neg_margin": True}, ["'neg_margin' must be a finite number, got True", "bool"]),
    ("multi_similarity", {"alpha": False}, ["'alpha'", "got False"]),
    ("triplet", {"margin": [0.2]}, ["'margin'", "got [0.2]"]),
    ("ntxent", {"temperature": 0}, ["'ntxent'", "'temperature' must be > 0, got 0"]),
    ("supcon", {"temperature": -0.1}, ["'supcon'", "'temperature'", "got -0.1"]),
    ("multi_similarity", {"epsilon": -0.1}, ["'epsilon'", "got -0.1"]),
    ("multi_similarity", {"base": 0.0}, ["'base'", "got 0.0"]),
    ("ntxent", {"miner": "batch_hard"}, ["miner of loss 'ntxent' must be one of [None]", "got 'batch_hard'"]),
    ("triplet", {"miner": "none"}, ["miner of loss 'triplet' must be one of", "'batch_hard'", "got 'none'"]),
    ("online_contrastive", {"miner": "multi_similarity"}, ["'hard_pairs'", "got 'multi_similarity'"]),
]


@pytest.mark.parametrize(("loss", "params", "expected"), BAD_LOSS_PARAMS,
                         ids=[f"{loss}-{sorted(params)}-{i}" for i, (loss, params, _) in enumerate(BAD_LOSS_PARAMS)])
def test_bad_loss_parameters_fail_when_the_config_is_built(loss, params, expected):
    with pytest.raises(ConfigError) as info:
        _config(loss=loss, loss_params=params)
    message = str(info.value)
    assert message.startswith("loss_params: ")
    for part in expected:
        assert part in message, message
    assert isinstance(info.value, MetricSimError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize("build", [
    lambda: TrainConfig.from_dict({"train_file": MISSING, "loss_params": {"neg_margin": -1}}),
    lambda: _config().replace(loss_params={"neg_margin": -1}),
    lambda: _config(loss="triplet", loss_params={"margin": 0.3}).replace(loss="contrastive"),
], ids=["from_dict", "replace", "replace-loss-keeps-params"])
def test_every_way_of_building_a_config_validates_its_loss_parameters(build):
    with pytest.raises(ConfigError, match="loss_params: "):
        build()


def test_numbers_written_as_strings_are_converted_then_checked():
    # YAML reads 1e-1 as a string; a string that is a number is taken as one, and then range-checked.
    assert TrainConfig.from_dict({"train_file": MISSING, "loss_params": {"neg_margin": "1e-1"}}).loss_params == {
        "neg_margin": 0.1
    }
    for text, shown in (("-1", "got -1.0"), ("nan", "got nan"), ("inf", "got inf")):
        with pytest.raises(ConfigError, match=f"'neg_margin'.*{shown}"):
            TrainConfig.from_dict({"train_file": MISSING, "loss_params": {"neg_margin": text}})


def test_loss_params_must_be_a_mapping():
    with pytest.raises(InvalidArgumentTypeError, match="loss_params must be a mapping of parameter -> value, got 0.8"):
        _config(loss_params=0.8)
    with pytest.raises(ConfigError, match=r"unknown parameter\(s\) \['nag_margin', 1\]"):
        _config(loss_params={1: 0.5, "nag_margin": 0.9, "pos_margin": 0.0})


@pytest.mark.parametrize("dim", [1, 8, 32, 384, 768, 1024, 4096])
@pytest.mark.parametrize("metric", ["euclidean", "manhattan"])
@pytest.mark.parametrize("loss", list_losses())
def test_defaults_of_every_loss_validate_for_every_metric_and_size(loss, metric, dim):
    defaults = default_loss_params(loss, metric, dim)
    assert validate_loss_params(loss, metric, defaults, embedding_dim=dim) == {
        k: (v if k == "miner" else float(v)) for k, v in defaults.items()
    }
    assert validate_loss_params(loss, metric, defaults) is not None  # size unknown, as in a config
    assert validate_loss_params(loss, metric, {}, embedding_dim=dim) == {}
    _config(loss=loss, metric=metric, loss_params=defaults)
    _config(loss=loss, metric=metric, loss_params=defaults, projection_dim=dim)
    _config(loss=loss, metric=metric)


def test_every_loss_has_a_rule_for_each_parameter():
    for spec in LOSSES.values():
        assert set(spec.rules) | {"miner"} == set(spec.defaults), spec.name
        for smaller, larger in spec.ordered:
            assert spec.defaults[smaller] < spec.defaults[larger]


def test_manhattan_margins_are_not_held_to_euclidean_scales():
    # Manhattan distances of 384-d embeddings are ~15.6x the Euclidean ones: no upper bound on a margin.
    _config(metric="manhattan", loss_params={"pos_margin": 2.0, "neg_margin": 40.0})
    _config(metric="euclidean", normalize=False, loss_params={"neg_margin": 4.5})
    _config(metric="manhattan", loss="multi_similarity", loss_params={"base": 12.5, "epsilon": 1.56, "beta": 3.2})
    # pos_margin alone: the Manhattan default neg_margin depends on the embedding size...
    _config(metric="manhattan", loss_params={"pos_margin": 5.0})
    # ...known here from the projection head (0.8 * sqrt(2 * 384 / pi) = 12.5)
    _config(metric="manhattan", projection_dim=384, loss_params={"pos_margin": 5.0})
    with pytest.raises(ConfigError, match=r"pos_margin=13.0 and neg_margin=12.5082 \(the manhattan default for 384"):
        _config(metric="manhattan", projection_dim=384, loss_params={"pos_margin": 13.0})


def test_validate_loss_params_raises_argument_errors_outside_a_config():
    with pytest.raises(InvalidArgumentError, match="loss must be one of"):
        validate_loss_params("arcface", "euclidean", {})
    with pytest.raises(InvalidArgumentTypeError, match="'margin' must be a finite number, got 'big'"):
        validate_loss_params("triplet", "euclidean", {"margin": "big"})
    with pytest.raises(InvalidArgumentTypeError, match="parameters of loss 'triplet' must be a mapping"):
        validate_loss_params("triplet", "euclidean", [("margin", 0.2)])
    with pytest.raises(ValueError, match="metric must be one of"):
        validate_loss_params("triplet", "cosine", {})


def test_validating_a_config_loads_no_heavy_library():
    code = ("import sys; from metric_sim.training import TrainConfig; "
            f"TrainConfig(train_file={MISSING!r}, loss='triplet', loss_params={{'margin': 0.3, 'miner': 'batch_hard'}}); "
            "print(sorted(m for m in ('torch', 'transformers', 'datasets', 'pytorch_metric_learning') "
            "if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, check=True)
    assert done.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- recipes and --set


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_shipped_recipes_validate_with_their_loss_parameters(recipe):
    config = TrainConfig.from_yaml(recipe)
    validate_loss_params(config.loss, config.metric, config.loss_params, embedding_dim=config.projection_dim or 384)


def _recipe(tmp_path, text):
    path = tmp_path / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_bad_loss_parameter_in_a_recipe_names_the_file(tmp_path):
    path = _recipe(tmp_path, f"train_file: {MISSING}\nloss: triplet\nloss_params: {{margin: -0.2}}\n")
    with pytest.raises(ConfigError, match=f"^{path}: loss_params: loss 'triplet': parameter 'margin'.*got -0.2"):
        TrainConfig.from_yaml(path)


@pytest.mark.parametrize(("item", "shown"), [
    ("loss_params.neg_margin=-1", "'neg_margin' must be > 0, got -1"),
    ("loss_params.neg_margin=abc", "'neg_margin' must be a finite number, got 'abc'"),
    ("loss_params.neg_margin=.nan", "'neg_margin' must be a finite number > 0, got nan"),
    ("loss_params.neg_margin=true", "'neg_margin' must be a finite number, got True"),
    ("loss_params.pos_margin=0.9", "pos_margin must be smaller than neg_margin, got pos_margin=0.9 and neg_margin=0.8"),
    ("loss_params.margin=1", "unknown parameter(s) ['margin'] for loss 'online_contrastive'"),
    ("loss_params.miner=batch_hard", "miner of loss 'online_contrastive' must be one of"),
    ("loss=triplet", "unknown parameter(s) ['neg_margin', 'pos_margin'] for loss 'triplet'"),
])
def test_a_bad_set_override_names_the_file_the_key_and_the_value(tmp_path, item, shown):
    path = _recipe(tmp_path, f"train_file: {MISSING}\nloss_params: {{pos_margin: 0.0, neg_margin: 0.8}}\n")
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_yaml(path, parse_overrides([item]))
    message = str(info.value)
    key = item.split("=")[0]
    assert message.startswith(f"{path} with --set {key}="), message  # the file, the key, then the value
    assert shown in message, message


def test_cli_refuses_a_bad_loss_parameter_before_looking_for_data(tmp_path, capsys):
    from metric_sim.cli import main

    path = _recipe(tmp_path, f"train_file: {MISSING}\n")
    code = main(["train", "--config", str(path), "--out", str(tmp_path / "run"), "--no-progress",
                 "--set", "loss_params.neg_margin=-1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "loss_params.neg_margin=-1" in err and "'neg_margin' must be > 0, got -1" in err
    assert not (tmp_path / "run").exists()


def test_broken_recipes_name_the_file(tmp_path):
    path = _recipe(tmp_path, f"train_file: {MISSING}\nloss_params: {{neg_margin: 0.8\n")
    with pytest.raises(ConfigError, match=f"^{path}: not valid YAML: line 3, column 1: "):
        TrainConfig.from_yaml(path)
    path.write_bytes(b"train_file: caf\xe9.tsv\n")
    with pytest.raises(ConfigError, match=f"^{path}: not UTF-8 text: byte 15"):
        TrainConfig.from_yaml(path)
    path.write_text("report_to: " + "[" * 20000 + "]" * 20000 + "\n")
    with pytest.raises(ConfigError, match=f"^{path}: "):
        TrainConfig.from_yaml(path)
    with pytest.raises(ConfigError, match=f"^{tmp_path}: not a file"):
        TrainConfig.from_yaml(tmp_path)
    path.write_text(f"train_file: {MISSING}\nfreeze_encoder: 'yes'\n")
    with pytest.raises(ConfigError, match=f"^{path}: freeze_encoder must be true or false, got 'yes'"):
        TrainConfig.from_yaml(path)


def test_yaml_aliases_cannot_blow_up_a_config(tmp_path):
    # Nine levels of nine aliases: 387 million strings if anything walked the nest.
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    path = _recipe(tmp_path, f"train_file: {MISSING}\nreport_to: &top {{{', '.join(lines)}}}\n")
    with pytest.raises(ConfigError, match="config key 'report_to' holds a nested list"):
        TrainConfig.from_yaml(path)


def test_override_parsing_refuses_ambiguous_keys():
    with pytest.raises(ConfigError, match=r"--set 'loss_params\.\.neg_margin=1': the key .* has an empty part"):
        parse_overrides(["loss_params..neg_margin=1"])
    with pytest.raises(ConfigError, match="empty part"):
        parse_overrides(["loss_params.=1"])
    with pytest.raises(ConfigError, match="'loss_params' is set both as a value and as a mapping"):
        parse_overrides(["loss_params=5", "loss_params.neg_margin=1"])
    with pytest.raises(ConfigError, match="'loss_params' is set both as a value and as a mapping"):
        parse_overrides(["loss_params.neg_margin=1", "loss_params=5"])
    merged = parse_overrides(["loss_params.neg_margin=1", "loss_params={pos_margin: 0.1}", "loss_params . miner=null"])
    assert merged == {"loss_params": {"neg_margin": 1, "pos_margin": 0.1, "miner": None}}


# ----------------------------------------------------------------------------- other fields


@pytest.mark.parametrize(("changes", "expected"), [
    ({"fp16": "yes"}, "fp16 must be true or false, got 'yes' (a string: write true or false without quotes)"),
    ({"load_best_model_at_end": 1}, "load_best_model_at_end must be true or false, got 1"),
    ({"normalize": "false"}, "normalize must be true, false or null, got 'false'"),
    ({"metric": 2}, "metric must be one of ['euclidean', 'manhattan', 'l2', 'l1'], got 2"),
    ({"report_to": ["tensorboard", 3]}, "report_to must be a non-empty string or a list of them, got ['tensorboard', 3]"),
    ({"report_to": ""}, "report_to must be a non-empty string"),
    ({"score_low": 2.0}, "score_low/score_high apply only to the score presets (stsb, sick), got score_low=2.0"),
    ({"score_high": math.nan}, "score_high must be a finite number or null, got nan"),
    ({"batch_size": 32.0}, "batch_size must be a positive integer, got 32.0"),
    ({"epochs": math.inf}, "epochs must be a finite number > 0, got inf"),
    ({"warmup_ratio": math.nan}, "warmup_ratio must be a number in [0, 1), got nan"),
    ({"seed": -1}, "seed must be a non-negative integer, got -1"),
])
def test_other_fields_name_the_field_and_the_value(changes, expected):
    with pytest.raises(MetricSimError) as info:
        _config(**changes)
    assert expected in str(info.value)


def test_score_thresholds_are_checked_against_the_preset():
    pytest.importorskip("datasets")
    TrainConfig(preset="stsb", score_low=2.5, score_high=4.0)
    with pytest.raises(InvalidArgumentError, match="score_low must be smaller than score_high, got score_low=4.0 and"):
        TrainConfig(preset="stsb", score_low=4.0, score_high=2.5)
    with pytest.raises(InvalidArgumentError, match=r"score_low=4.5 and score_high=4.0 \(the preset's default\)"):
        TrainConfig(preset="stsb", score_low=4.5)
    with pytest.raises(InvalidArgumentError, match="apply only to the score presets .* with preset 'qqp'"):
        TrainConfig(preset="qqp", score_low=1.0)


def test_config_values_nested_too_deep_are_refused():
    with pytest.raises(InvalidArgumentTypeError, match=r"config key 'loss_params' holds a nested dict \({'x': 1}\)"):
        TrainConfig.from_dict({"train_file": MISSING, "loss_params": {"neg_margin": {"x": 1}}})
    with pytest.raises(InvalidArgumentError, match=r"unknown config key\(s\) \['x', 1\]"):
        TrainConfig.from_dict({"train_file": MISSING, 1: 2, "x": 3})
