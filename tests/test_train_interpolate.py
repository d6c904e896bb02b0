"""A recipe's ``interpolate`` block: WiSE-FT applied at the end of ``train``, on the tiny random BERT in-process.

Oracles: :func:`interpolate_weights` of the saved fine-tuned model and the in-memory starting
encoder (bit for bit), the two models' own vectors at alpha 0 and 1, :func:`select_alpha` on the
recorded table, sklearn's AP and a calibrator fitted on the dev distances.
"""

from __future__ import annotations

import hashlib
import json
import logging

import numpy as np
import pytest
import torch
import yaml
from sklearn.metrics import average_precision_score

from metric_sim.calibration import Calibrator
from metric_sim.data import load_pairs
from metric_sim.errors import ConfigError
from metric_sim.interpolation import choose_alpha, interpolate_weights, select_alpha
from metric_sim.layout import MODEL_DIR, MODEL_FINETUNED_DIR
from metric_sim.model import SimilarityModel
from metric_sim.training import TrainConfig, train
from tests import test_interpolation_choice as choice_sets
from tests.conftest import DEMO_FILE, torchrun

pytestmark = pytest.mark.usefixtures("one_torch_thread")
# The dev and guard pair files of the alpha-choice tests (fixtures: a dev set the tiny model separates).
pair_files, dev_pairs, guard_pairs = choice_sets.pair_files, choice_sets.dev_pairs, choice_sets.guard_pairs

TEXTS = ["how do i learn python", "what is the capital city", "how to cook rice", "best way to save money"]


@pytest.fixture(scope="module")
def splits(demo, dev_pairs):
    """Demo pairs to train on; dev pairs the tiny model separates well enough to be calibrated."""
    return demo.select(range(96)), dev_pairs


def _config(**changes):
    base = dict(train_file=str(DEMO_FILE), text_a="question1", text_b="question2", label="is_duplicate",
                max_length=32, loss="contrastive", batch_size=16, learning_rate=1e-3, warmup_ratio=0.0, max_steps=4,
                eval_steps=4, logging_steps=2, seed=7, zero_shot_eval=False, load_best_model_at_end=False,
                save_total_limit=1)
    return TrainConfig(**{**base, **changes})


def _train(config, run, splits, encoder=None):
    return train(config, run, encoder=encoder, train_data=splits[0], dev_data=splits[1], show_progress=False)


def _floating_equal(a, b):
    a, b = a.state_dict(), b.state_dict()
    assert list(a) == list(b)
    for name, tensor in a.items():
        if tensor.is_floating_point():
            assert torch.equal(tensor, b[name]), name


def _ap(distances, labels):
    return average_precision_score(labels, -np.asarray(distances, dtype=np.float64))


@pytest.mark.parametrize("feature", ["squared", "quadratic"])
def test_fixed_alpha_mixes_the_saved_fine_tuned_model_with_the_rebuilt_start(feature, tiny_encoder, splits, tmp_path):
    start_dir = tiny_encoder.save(tmp_path / "tiny-start")  # the run builds its start from this folder
    config = _config(model=str(start_dir), interpolate={"alpha": 0.5}, calibration_feature=feature)
    run = tmp_path / "run"
    result = _train(config, run, splits)
    tuned = SimilarityModel.from_pretrained(run / MODEL_FINETUNED_DIR)
    model = SimilarityModel.from_pretrained(run / MODEL_DIR)
    assert not all(torch.equal(t, tiny_encoder.state_dict()[n]) for n, t in tuned.encoder.state_dict().items())
    _floating_equal(model.encoder, interpolate_weights(tuned.encoder, tiny_encoder, 0.5))
    _floating_equal(result.model.encoder, model.encoder)

    record = model.weight_interpolation
    assert record["alpha"] == 0.5 and record["base"] == "tiny-start" and "selection" not in record
    assert record["finetuned_fingerprint"] == tuned.encoder.fingerprint()
    assert record["base_fingerprint"] == SimilarityModel.from_pretrained(start_dir).encoder.fingerprint()
    assert result.model.weight_interpolation == record

    # Both models calibrated on dev; the figures are each model's own on the dev pairs.
    dev = splits[1]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["interpolation"] == {"alpha": 0.5, "base": "tiny-start", "chosen_by": "fixed in the config"}
    for folder, figures in ((model, metrics["dev"]), (tuned, metrics["finetuned_dev"])):
        distances = folder.distance(dev.texts_a, dev.texts_b)
        # Both fitted in the run's form (the interpolated model asks for it again, whatever the first fit gave).
        oracle = Calibrator.fit(distances, dev.labels, folder.metric, fitted_on="dev", feature=feature)
        assert folder.calibrator.fitted_on == "dev" and folder.calibrator.feature == oracle.feature
        assert (folder.calibrator.weight, folder.calibrator.linear_weight, folder.calibrator.bias) == pytest.approx(
            (oracle.weight, oracle.linear_weight, oracle.bias), rel=1e-6)
        assert figures["average_precision"] == pytest.approx(_ap(distances, dev.labels), abs=1e-9)
    assert metrics["dev"]["average_precision"] != metrics["finetuned_dev"]["average_precision"]
    assert "best_checkpoint" in metrics["finetuned_dev"]
    assert result.metrics == metrics and result.model.calibrator.to_dict() == model.calibrator.to_dict()

    # The block round-trips through train_config.json.
    saved = json.loads((run / "train_config.json").read_text())
    saved.pop("run")
    assert saved["interpolate"] == {"alpha": 0.5} and TrainConfig.from_dict(saved) == config


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_alpha_zero_and_one_give_the_start_and_the_fine_tuned_vectors(alpha, tiny_encoder_session, tiny_encoder,
                                                                      splits, tmp_path):
    run = tmp_path / "run"
    result = _train(_config(interpolate={"alpha": alpha}), run, splits, encoder=tiny_encoder)
    model = SimilarityModel.from_pretrained(run / MODEL_DIR)
    tuned = SimilarityModel.from_pretrained(run / MODEL_FINETUNED_DIR)
    expected = (tiny_encoder_session if alpha == 0 else tuned.encoder).encode(TEXTS, batch_size=4)
    assert np.array_equal(model.embed(TEXTS, batch_size=4), expected)
    assert np.array_equal(result.model.embed(TEXTS, batch_size=4), expected)
    assert not np.array_equal(tuned.embed(TEXTS, batch_size=4), tiny_encoder_session.encode(TEXTS, batch_size=4))
    # A caller's encoder is named by its source.
    assert model.weight_interpolation["base"] == "tiny-random-bert" and model.weight_interpolation["alpha"] == alpha


def test_auto_records_the_table_and_the_alpha_the_rule_gives(tiny_encoder_session, tiny_encoder, splits, pair_files,
                                                             guard_pairs, tmp_path, caplog):
    # A second guard set that fine-tuning must hurt: the dev pairs with their labels flipped.
    lines = pair_files[0].read_text(encoding="utf-8").splitlines()
    flipped = tmp_path / "flipped.tsv"
    flipped.write_text("\n".join([lines[0], *(f"{r.rsplit(chr(9), 1)[0]}\t{1 - int(r.rsplit(chr(9), 1)[1])}"
                                               for r in lines[1:])]) + "\n", encoding="utf-8")
    guards = {"guard.tsv": guard_pairs, "flipped.tsv": load_pairs(flipped)}
    config = _config(interpolate={"alpha": "auto", "guard": [str(pair_files[1]), str(flipped)],
                                  "alphas": [0.25, 0.5, 1], "tolerance": 0.01})
    run = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="metric_sim"):
        result = _train(config, run, splits, encoder=tiny_encoder)
    model = SimilarityModel.from_pretrained(run / MODEL_DIR)
    tuned = SimilarityModel.from_pretrained(run / MODEL_FINETUNED_DIR)
    selection = model.weight_interpolation["selection"]
    table = selection["table"]
    assert [row["alpha"] for row in table] == [0.0, 0.25, 0.5, 1.0]
    assert sorted(selection["guard_floor"]) == sorted(guards) and selection["select_on"] == "dev"
    rule = select_alpha([{k: row[k] for k in ("alpha", "in_domain_ap", "guard_ap")} for row in table], tolerance=0.01)
    assert model.weight_interpolation["alpha"] == selection["alpha"] == rule.alpha
    assert rule.alpha < 1 and rule.in_domain_cost > 0  # the flipped set ruled out the fine-tuned end
    assert [row["passes"] for row in table] == [row["passes"] for row in rule.table]
    # The table is the one choose_alpha measures on the saved fine-tuned model, the start and the same sets.
    oracle = choose_alpha(tuned, tiny_encoder_session, splits[1], guards, (0.25, 0.5, 1), 0.01)
    for got, want in zip(table, oracle.table, strict=True):
        assert got["in_domain_ap"] == pytest.approx(want["in_domain_ap"], abs=1e-6)
        assert got["guard_ap"] == pytest.approx(want["guard_ap"], abs=1e-6)
    _floating_equal(model.encoder, interpolate_weights(tuned.encoder, tiny_encoder_session, rule.alpha))

    metrics = json.loads((run / "metrics.json").read_text())
    section = metrics["interpolation"]
    assert section["alpha"] == rule.alpha and section["chosen_by"] == "auto"
    assert section["table"] == table and section["guard_met"] == rule.guard_met
    assert section["in_domain_cost"] == pytest.approx(rule.in_domain_cost, abs=1e-12)
    assert section["guard_sets"] == {name: f"file {name!r} ({len(pairs):,} pairs)" for name, pairs in guards.items()}
    assert result.model.weight_interpolation == model.weight_interpolation
    logged = caplog.text
    assert "<- chosen" in logged and "rule: among the alphas" in logged and "guard.tsv" in logged


@pytest.mark.parametrize("block, message", [
    ("auto", r"interpolate must be a mapping .*got 'auto'"),
    ({"alpha": 0.5, "beta": 1}, r"unknown interpolate key\(s\) \['interpolate.beta'\]"),
    ({}, r"interpolate.alpha is required"),
    ({"alpha": 1.5}, r"interpolate.alpha must be a number in \[0, 1\] .*got 1.5"),
    ({"alpha": -0.1}, r"interpolate.alpha must be .*got -0.1"),
    ({"alpha": "half"}, r"interpolate.alpha must be .*got 'half'"),
    ({"alpha": True}, r"interpolate.alpha must be .*got True"),
    ({"alpha": float("nan")}, r"interpolate.alpha must be .*got nan"),
    ({"alpha": "auto"}, r"interpolate.guard is required with alpha: auto.*got None"),
    ({"alpha": "auto", "guard": []}, r"interpolate.guard is required with alpha: auto.*got \[\]"),
    ({"alpha": 0.5, "guard": ["stsb"]}, r"interpolate.guard applies only with alpha: auto.*alpha=0.5 and guard=\['stsb'\]"),
    ({"alpha": 0.5, "tolerance": 0.1}, r"interpolate.tolerance applies only with alpha: auto.*tolerance=0.1"),
    ({"alpha": "auto", "guard": {"a": 1}}, r"interpolate.guard must be a list .*got \{'a': 1\}"),
    ({"alpha": "auto", "guard": [3]}, r"interpolate.guard\[0\] must be PRESET\[:SPLIT\] .*got 3"),
    ({"alpha": "auto", "guard": ["stsb:test"]}, r"interpolate.guard\[0\]='stsb:test': alpha must never be chosen on a "
                                                r"test split.*stsb:dev"),
    ({"alpha": "auto", "guard": ["g.tsv", "sick:Test"]}, r"interpolate.guard\[1\]='sick:Test': alpha must never"),
    ({"alpha": "auto", "guard": ["g.tsv", "g.tsv"]}, r"interpolate.guard\[1\]='g.tsv' repeats interpolate.guard\[0\]"),
    ({"alpha": "auto", "guard": [str(DEMO_FILE)]}, r"interpolate.guard\[0\]=.*is this run's train_file"),
    ({"alpha": "auto", "guard": ["g.tsv"], "alphas": [0]}, r"interpolate.alphas must hold a value above 0.*got \[0\]"),
    ({"alpha": "auto", "guard": ["g.tsv"], "alphas": [0.5, 2]}, r"interpolate.alphas\[1\] must be .*got 2"),
    ({"alpha": "auto", "guard": ["g.tsv"], "alphas": 0.5}, r"interpolate.alphas must be a list .*got 0.5"),
    ({"alpha": "auto", "guard": ["g.tsv"], "tolerance": -1}, r"interpolate.tolerance must be a finite number >= 0 .*got -1"),
    ({"alpha": "auto", "guard": ["g.tsv"], "tolerance": "x"}, r"interpolate.tolerance must be .*got 'x'"),
])
def test_bad_blocks_are_config_errors_naming_the_key_and_value(block, message):
    with pytest.raises(ConfigError, match=message):
        _config(interpolate=block)


def test_nothing_to_interpolate_with_a_frozen_encoder():
    with pytest.raises(ConfigError, match=r"interpolate needs freeze_encoder: false.*got freeze_encoder=True"):
        _config(freeze_encoder=True, interpolate={"alpha": 0.5})


def test_the_run_dev_and_training_splits_are_no_guard():
    with pytest.raises(ConfigError, match=r"interpolate.guard\[0\]='qqp' is this run's dev split"):
        TrainConfig(preset="qqp", dev_split="dev", interpolate={"alpha": "auto", "guard": ["qqp"]})
    with pytest.raises(ConfigError, match=r"interpolate.guard\[0\]='qqp:train' is this run's training split"):
        TrainConfig(preset="qqp", dev_split="dev", interpolate={"alpha": "auto", "guard": ["qqp:train"]})


def test_block_reads_from_yaml_and_set(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    fields = _config().to_dict()
    fields.pop("interpolate")
    recipe.write_text(yaml.safe_dump(fields) +
                      "interpolate:\n  alpha: auto\n  guard: [sick:trial, guard.tsv]\n  alphas: [0.5, 1]\n"
                      "  tolerance: 1e-3\n")
    config = TrainConfig.from_yaml(recipe)
    assert config.interpolate == {"alpha": "auto", "guard": ["sick:trial", "guard.tsv"], "alphas": [0.5, 1.0],
                                  "tolerance": 0.001}
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    fixed = TrainConfig.from_yaml(recipe, {"interpolate": {"alpha": 0.3, "guard": None, "alphas": None,
                                                           "tolerance": None}})
    assert fixed.interpolate == {"alpha": 0.3}
    with pytest.raises(ConfigError, match=r"--set interpolate.alpha=2: interpolate.alpha must be .*got 2"):
        TrainConfig.from_yaml(recipe, {"interpolate": {"alpha": 2}})
    assert _config().interpolate is None


def test_guard_sets_that_do_not_load_stop_the_run_before_training(tiny_encoder, splits, tmp_path):
    one_class = tmp_path / "one.tsv"
    one_class.write_text("text_a\ttext_b\tlabel\nhow to cook rice\thow to bake bread\t1\na\tthe a\t1\n")
    cases = [
        ([str(one_class)], r"interpolate.guard\[0\] '.*one.tsv' \(2 pairs\) holds only class \[1\]"),
        (["nosuch.tsv"], r"interpolate.guard\[0\] 'nosuch.tsv' is neither a preset"),
        (["paws"], r"interpolate.guard\[0\] paws: preset 'paws' has no 'dev' split"),
        (["stsb"], r"interpolate.guard\[0\] 'stsb': .*not found"),  # data_dir below holds no files
    ]
    for i, (guard, message) in enumerate(cases):
        run = tmp_path / f"run{i}"
        config = _config(data_dir=str(tmp_path / "empty"), interpolate={"alpha": "auto", "guard": guard})
        with pytest.raises(ConfigError, match=message):
            _train(config, run, splits, encoder=tiny_encoder)
        assert not (run / "train_config.json").exists() and not (run / "checkpoints").exists()


_RANK_SCRIPT = """
import hashlib, json, sys
import torch
from metric_sim.distributed import closing_process_group, rank
from metric_sim.training import TrainConfig, train

with closing_process_group():
    result = train(TrainConfig.from_yaml(sys.argv[1]), sys.argv[2], show_progress=False)
digest = hashlib.sha256()
for name, tensor in result.model.encoder.state_dict().items():
    digest.update(name.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
with open(f"{sys.argv[3]}/rank{rank()}.json", "w") as out:
    json.dump({"weights": digest.hexdigest(), "calibrator": result.model.calibrator.to_dict(),
               "weight_interpolation": result.model.weight_interpolation}, out)
"""


def test_torchrun_ranks_return_the_model_rank_0_writes(tiny_encoder, pair_files, tmp_path):
    """2 ranks: rank 0 chooses alpha and writes RUN_DIR/model; the other rank mixes its own copy with that alpha."""
    rows = DEMO_FILE.read_text(encoding="utf-8").splitlines()[1:97]
    train_file = tmp_path / "train.tsv"
    train_file.write_text("text_a\ttext_b\tlabel\n" + "".join(
        "\t".join(row.split("\t")[-3:]) + "\n" for row in rows), encoding="utf-8")
    header = DEMO_FILE.read_text(encoding="utf-8").splitlines()[0].split("\t")
    assert header[-3:] == ["question1", "question2", "is_duplicate"]
    recipe = {"train_file": str(train_file), "dev_file": str(pair_files[0]),
              "model": str(tiny_encoder.save(tmp_path / "tiny-start")), "max_length": 32, "loss": "contrastive",
              "batch_size": 8, "learning_rate": 1e-3, "warmup_ratio": 0.0, "seed": 3, "max_steps": 4, "eval_steps": 4,
              "logging_steps": 2, "save_total_limit": 1, "zero_shot_eval": False, "load_best_model_at_end": False,
              "interpolate": {"alpha": "auto", "guard": [str(pair_files[1])], "alphas": [0.5, 1]}}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    (tmp_path / "rank.py").write_text(_RANK_SCRIPT)
    torchrun(str(tmp_path / "rank.py"), str(tmp_path / "recipe.yaml"), str(tmp_path / "run"), str(tmp_path))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    saved = SimilarityModel.from_pretrained(tmp_path / "run" / MODEL_DIR)
    digest = hashlib.sha256()  # as the script computes it
    for name, tensor in saved.encoder.state_dict().items():
        digest.update(name.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
    assert ranks[0] == ranks[1]
    assert ranks[0]["weights"] == digest.hexdigest()
    assert ranks[0]["weight_interpolation"] == saved.weight_interpolation
    assert ranks[0]["calibrator"] == saved.calibrator.to_dict()
    assert "selection" in saved.weight_interpolation
