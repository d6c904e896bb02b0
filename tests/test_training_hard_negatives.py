"""A ``hard_negatives`` block in training recipes: mined (or loaded) label-0 pairs added to train."""

from __future__ import annotations

import json

import pytest

from metric_sim.errors import ConfigError, TrainingError
from metric_sim.layout import HARD_NEGATIVES_FILE, METRICS_FILE, TRAIN_CONFIG_FILE
from metric_sim.mining import MinedNegatives, mine_hard_negatives, sidecar_path
from metric_sim.model import SimilarityModel
from metric_sim.training import TrainConfig, train
from tests.conftest import DEMO_FILE, build_tiny_encoder

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def small(demo):
    return demo.select(range(64))


def _config(**changes):
    base = dict(train_file=str(DEMO_FILE), loss="contrastive", batch_size=16, learning_rate=1e-3, warmup_ratio=0.0,
                max_steps=2, eval_steps=2, logging_steps=1, seed=7, zero_shot_eval=False)
    return TrainConfig(**{**base, **changes})


def _train_pairs(run):
    return json.loads((run / TRAIN_CONFIG_FILE).read_text())["run"]["train_pairs"]


def test_mined_negatives_are_added_to_train_and_recorded(tiny_encoder, small, tmp_path):
    run = tmp_path / "run"
    config = _config(hard_negatives={"mine": True, "num_negatives": 2})
    train(config, run, encoder=tiny_encoder, train_data=small, dev_data=small, show_progress=False)
    saved = run / HARD_NEGATIVES_FILE
    assert saved.is_file() and sidecar_path(saved).is_file()
    mined = MinedNegatives.load(saved)
    record = json.loads((run / METRICS_FILE).read_text())["hard_negatives"]
    assert record["source"] == "mined"
    assert record["count"] == len(mined) > 0
    assert record["seconds"] >= 0
    assert _train_pairs(run) == len(small) + record["count"]
    assert mined.options["seed"] == 7  # the config's seed by default
    positives = {frozenset((a, b)) for a, b, y in zip(small.texts_a, small.texts_b, small.labels.tolist(), strict=True)
                 if y == 1}
    mined_pairs = {frozenset(pair) for pair in zip(mined.anchor_texts, mined.negative_texts, strict=True)}
    assert not mined_pairs & positives
    train_texts = set(small.texts_a) | set(small.texts_b)
    assert set(mined.anchor_texts) | set(mined.negative_texts) <= train_texts


def test_a_file_from_the_starting_model_trains_and_one_from_another_is_refused(tiny_encoder, small, tmp_path):
    metric = "euclidean"
    path = mine_hard_negatives(SimilarityModel(tiny_encoder, metric), small, num_negatives=1).save(tmp_path / "neg.tsv")
    expected = len(MinedNegatives.load(path))
    run = tmp_path / "run"
    train(_config(hard_negatives={"file": str(path)}), run, encoder=tiny_encoder, train_data=small, dev_data=small,
          show_progress=False)
    record = json.loads((run / METRICS_FILE).read_text())["hard_negatives"]
    assert record["source"] == "file" and record["count"] == expected
    assert _train_pairs(run) == len(small) + expected
    assert (run / HARD_NEGATIVES_FILE).is_file()

    other = build_tiny_encoder(seed=1)
    foreign = mine_hard_negatives(SimilarityModel(other, metric), small, num_negatives=1).save(tmp_path / "other.tsv")
    refused = tmp_path / "refused"
    with pytest.raises(TrainingError, match="another model"):
        train(_config(hard_negatives={"file": str(foreign)}), refused, encoder=build_tiny_encoder(),
              train_data=small, dev_data=small, show_progress=False)
    assert not (refused / METRICS_FILE).exists() and not (refused / "checkpoints").exists()

    manhattan = tmp_path / "manhattan"
    with pytest.raises(TrainingError, match="metric"):
        train(_config(metric="manhattan", hard_negatives={"file": str(path)}), manhattan, encoder=build_tiny_encoder(),
              train_data=small, dev_data=small, show_progress=False)


@pytest.mark.parametrize(
    "block, key",
    [
        ({"mine": True, "negatives": 2}, "hard_negatives.negatives"),
        ({"mine": True, "file": "neg.tsv"}, "exactly one of file"),
        ({}, "exactly one of file"),
        ({"mine": True, "num_negatives": 0}, "hard_negatives.num_negatives"),
        ({"mine": True, "range_max": "ten"}, "hard_negatives.range_max"),
        ({"mine": "yes"}, "hard_negatives.mine"),
        ({"file": "neg.tsv", "num_negatives": 2}, "hard_negatives.num_negatives"),
        ({"mine": True, "index_kind": "bogus"}, "hard_negatives.index_kind"),
        ({"mine": True, "max_probability": 0.5}, "hard_negatives.max_probability"),
        ({"mine": True, "sampling_strategy": "worst"}, "hard_negatives.sampling_strategy"),
        ("mine", "hard_negatives must be a mapping"),
    ],
)
def test_bad_hard_negatives_blocks_raise_config_errors_naming_the_key(block, key):
    with pytest.raises(ConfigError, match=key):
        _config(hard_negatives=block)


def test_a_recipe_with_hard_negatives_round_trips_and_names_the_file(tmp_path):
    config = _config(hard_negatives={"mine": True, "num_negatives": 2, "sampling_strategy": "random"})
    assert TrainConfig.from_dict(config.to_dict()) == config
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"train_file: {DEMO_FILE}\nhard_negatives:\n  mine: true\n  num_negatives: 0\n")
    with pytest.raises(ConfigError, match=rf"{recipe}.*hard_negatives.num_negatives"):
        TrainConfig.from_yaml(recipe)


def test_a_resumed_run_reuses_the_negatives_of_its_folder(tiny_encoder, small, tmp_path):
    run = tmp_path / "run"
    config = _config(hard_negatives={"mine": True, "num_negatives": 2}, max_steps=2, eval_steps=2)
    train(config, run, encoder=tiny_encoder, train_data=small, dev_data=small, show_progress=False)
    saved = run / HARD_NEGATIVES_FILE
    written = saved.stat().st_mtime_ns
    count = json.loads((run / METRICS_FILE).read_text())["hard_negatives"]["count"]
    train(None, run, resume=True, encoder=build_tiny_encoder(), train_data=small, dev_data=small, show_progress=False)
    assert saved.stat().st_mtime_ns == written
    assert json.loads((run / METRICS_FILE).read_text())["hard_negatives"]["count"] == count
