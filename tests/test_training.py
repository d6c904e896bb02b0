"""Training on the tiny random BERT: config, collator, samplers, guards, frozen mode, run folder, resume, CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml

from metric_sim.calibration import Calibrator, SimilarityModel
from metric_sim.encoder import Encoder
from metric_sim.losses import build_loss
from metric_sim.training import (
    ClusterPairSampler,
    LengthGroupedPairSampler,
    PairCollator,
    TrainConfig,
    TrainingError,
    fine_tune_demo,
    parse_overrides,
    prepare_pairs,
    train,
)
from metric_sim.training.guards import ZeroLossGuard
from tests.conftest import DATA_DIR, DEMO_FILE, REPO_ROOT, pair_dataset, requires_data

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def small(demo):
    """96 demo pairs, used as both train and dev: the tiny model can fit them, so AP and calibration are meaningful."""
    return demo.select(range(96))


def _config(**changes):
    base = dict(train_file=str(DEMO_FILE), loss="contrastive", batch_size=16, learning_rate=1e-3, warmup_ratio=0.0,
                max_steps=12, eval_steps=6, logging_steps=3, seed=7)
    return TrainConfig(**{**base, **changes})


def _mean_loss(model_fn, pairs, loss, embeddings=None, tokenizer=None):
    """Mean loss over the pairs in fixed order (batches of 16), without gradients."""
    collator = PairCollator(pairs, tokenizer=tokenizer, max_length=32, embeddings=embeddings)
    rows = [{"tid_a": int(a), "tid_b": int(b), "label": int(y)} for a, b, y in zip(pairs.tid_a, pairs.tid_b, pairs.labels, strict=True)]
    values = []
    with torch.no_grad():
        for start in range(0, len(rows), 16):
            batch = collator(rows[start : start + 16])
            emb = model_fn(batch["features"])
            values.append(loss(emb, batch["idx_a"], batch["idx_b"], batch["pair_labels"], batch["text_labels"]).loss.item())
    return float(np.mean(values))


# ----------------------------------------------------------------------------- config


def test_config_round_trips_through_dict_json_and_yaml(tmp_path):
    config = _config(loss="triplet", loss_params={"margin": 0.3, "miner": "batch_hard"}, metric="l1", normalize=True,
                     report_to=["tensorboard"], max_train_pairs=50)
    assert config.metric == "manhattan"  # aliases resolve to the canonical name
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    assert TrainConfig.from_yaml(path) == config


def test_unknown_config_key_lists_valid_keys():
    with pytest.raises(ValueError) as info:
        TrainConfig.from_dict({"train_file": "x.tsv", "learning_rte": 1e-4})
    message = str(info.value)
    assert "['learning_rte']" in message and "learning_rate" in message and "batch_size" in message


def test_unknown_loss_and_metric_give_clear_errors():
    with pytest.raises(ValueError, match=r"loss must be one of \[.*'contrastive'.*\], got 'arcface'"):
        TrainConfig.from_dict({"train_file": "x.tsv", "loss": "arcface"})
    with pytest.raises(ValueError, match=r"metric must be one of \['euclidean', 'manhattan'.*got 'cosine'"):
        TrainConfig.from_dict({"train_file": "x.tsv", "metric": "cosine"})
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        TrainConfig.from_dict({"train_file": "x.tsv", "batch_size": 0})
    with pytest.raises(ValueError, match="give a data source"):
        TrainConfig.from_dict({})
    with pytest.raises(ValueError, match="learning_rate must be a number, got 'fast'"):
        TrainConfig.from_dict({"train_file": "x.tsv", "learning_rate": "fast"})


def test_yaml_numbers_and_environment_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("METRIC_SIM_DATA", str(tmp_path / "data"))
    path = tmp_path / "c.yaml"
    path.write_text("train_file: ${METRIC_SIM_DATA}/pairs.tsv\nlearning_rate: 2e-5\nloss_params: {neg_margin: 1e-1}\n")
    config = TrainConfig.from_yaml(path)  # PyYAML reads 2e-5 as a string: it must still become a float
    assert config.train_file == f"{tmp_path}/data/pairs.tsv"
    assert config.learning_rate == 2e-5 and config.loss_params == {"neg_margin": 0.1}
    monkeypatch.delenv("METRIC_SIM_DATA")
    assert TrainConfig.from_yaml(path).train_file.endswith("shared/data/pairs.tsv")  # the library default
    path.write_text("train_file: ${NO_SUCH_VARIABLE_X}/p.tsv\n")
    with pytest.raises(ValueError, match="train_file.*NO_SUCH_VARIABLE_X is not set"):
        TrainConfig.from_yaml(path)


def test_overrides_parse_and_merge(tmp_path):
    parsed = parse_overrides(["learning_rate=1e-4", "loss_params.neg_margin=0.9", "normalize=false", "preset=qqp"])
    assert parsed == {"learning_rate": "1e-4", "loss_params": {"neg_margin": 0.9}, "normalize": False, "preset": "qqp"}
    path = tmp_path / "c.yaml"
    path.write_text(f"train_file: {DEMO_FILE}\nloss_params: {{pos_margin: 0.1, neg_margin: 0.5}}\n")
    config = TrainConfig.from_yaml(path, parse_overrides(["loss_params.neg_margin=0.9", "learning_rate=1e-4"]))
    assert config.loss_params == {"pos_margin": 0.1, "neg_margin": 0.9} and config.learning_rate == 1e-4
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(["learning_rate"])


def test_bad_recipes_raise_config_errors_naming_the_file_and_the_override(tmp_path):
    from metric_sim.errors import ConfigError, MissingFileError

    path = tmp_path / "broken.yaml"
    path.write_text("train_file: [unclosed\n")
    with pytest.raises(ConfigError, match=f"{path}: not valid YAML"):
        TrainConfig.from_yaml(path)
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match=f"{path}: a config must be a YAML mapping"):
        TrainConfig.from_yaml(path)
    path.write_text(f"train_file: {DEMO_FILE}\nbatch_size: 0\n")
    with pytest.raises(ConfigError, match=f"{path}: batch_size must be a positive integer, got 0"):
        TrainConfig.from_yaml(path)
    path.write_text(f"train_file: {DEMO_FILE}\n")
    with pytest.raises(ConfigError, match=f"{path} with --set learning_rate=fast: learning_rate must be a number"):
        TrainConfig.from_yaml(path, parse_overrides(["learning_rate=fast"]))
    with pytest.raises(ConfigError, match="--set expects key=value, got 'learning_rate'"):
        parse_overrides(["learning_rate"])
    with pytest.raises(MissingFileError, match="config file not found"):
        TrainConfig.from_yaml(tmp_path / "missing.yaml")


def test_importing_the_config_loads_no_heavy_library():
    code = ("import sys; from metric_sim.training import TrainConfig; "
            "print(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("recipe", sorted((REPO_ROOT / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_recipes_are_valid_configs(recipe):
    config = TrainConfig.from_yaml(recipe)
    assert config.max_length <= 128
    build_loss(config.loss, config.metric, embedding_dim=config.projection_dim or 384, params=config.loss_params)


@requires_data
@pytest.mark.parametrize("recipe", sorted((REPO_ROOT / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_recipes_find_their_data(recipe, monkeypatch):
    from metric_sim.training import load_training_data

    monkeypatch.setenv("METRIC_SIM_DATA", str(DATA_DIR))
    config = TrainConfig.from_yaml(recipe)
    train_data, dev_data = load_training_data(config)
    assert len(train_data) > 1000 and len(dev_data) > 300
    shared = set(train_data.ids_a + train_data.ids_b) & set(dev_data.ids_a + dev_data.ids_b)
    if config.preset == "stsb":
        # The official STS-B train/dev files themselves share 150 of the 1,960 dev sentences;
        # the recipe keeps the official split, so only bound the overlap it inherits.
        assert len(shared) <= 150
    elif config.preset == "grocery-products":
        # A closed catalogue: both splits match photos against the same 81 entries; the photos
        # themselves are split (by photo within each product), so only catalogue entries are shared.
        from metric_sim.data.image_presets import grocery_catalogue

        assert shared and shared <= set(grocery_catalogue(DATA_DIR).ids)
    else:
        # Leakage-free: no text id in both splits (QQP's split.tsv is by question id).
        assert not shared


# ----------------------------------------------------------------------------- batches


def test_prepare_pairs_shares_ids_and_clusters_of_identical_texts():
    pairs = prepare_pairs(pair_dataset([  # the same text under two ids (QQP has these): one text, one cluster
        ("how to cook rice", "cook rice how", 1, "q1", "q2"),
        ("how to cook rice", "best car", 0, "q9", "q3"),
        ("best car", "good car", 1, "q3", "q4"),
        ("sell phone", "buy phone", 0, "q5", "q6"),
    ]))
    assert pairs.texts == ["how to cook rice", "best car", "sell phone", "cook rice how", "good car", "buy phone"]
    assert pairs.tid_a.tolist() == [0, 0, 1, 2] and pairs.tid_b.tolist() == [3, 1, 4, 5]
    labels = pairs.text_labels
    assert labels[0] == labels[3] and labels[1] == labels[4]
    assert len({labels[0], labels[1], labels[2], labels[5]}) == 4  # the non-duplicate (0, 1) stays apart


def test_collator_embeds_each_unique_text_once(tiny_encoder, demo):
    pairs = prepare_pairs(demo)
    texts = pairs.texts
    # A batch in which one text appears three times, once on each side.
    rows = [{"tid_a": 0, "tid_b": 1, "label": 1}, {"tid_a": 0, "tid_b": 2, "label": 0}, {"tid_a": 3, "tid_b": 0, "label": 0}]
    batch = PairCollator(pairs, tokenizer=tiny_encoder.tokenizer, max_length=32)(rows)
    input_ids = batch["features"]["input_ids"]
    assert input_ids.shape[0] == 4  # 4 unique texts for 6 slots
    decoded = [texts[t] for t in (0, 1, 2, 3)]
    reference = tiny_encoder.tokenize(decoded)
    for row, text in enumerate(decoded):
        rows_of_text = [i for i in range(4) if torch.equal(input_ids[i], reference["input_ids"][row])]
        assert rows_of_text, text
    idx_a, idx_b = batch["idx_a"].tolist(), batch["idx_b"].tolist()
    assert idx_a[0] == idx_a[1] == idx_b[2]  # the repeated text maps to one row
    assert input_ids.shape[1] == reference["input_ids"].shape[1]  # dynamic padding: longest text in the batch
    assert batch["pair_labels"].tolist() == [1, 0, 0]
    assert batch["text_labels"].tolist() == pairs.text_labels[np.unique([0, 1, 2, 3])].tolist()


def test_cluster_sampler_groups_cluster_members_and_is_seeded():
    keys = [0, 1, 0, 2, 0, 1, 3, 0, 0]  # cluster 0 has 5 pairs
    sampler = ClusterPairSampler(keys, per_cluster=3, seed=1)
    order = list(sampler)
    assert sorted(order) == list(range(len(keys)))
    # Cluster 0 comes in chunks of at most 3 consecutive pairs, and at least one chunk has 3.
    runs, run = [], 0
    for i in order:
        run = run + 1 if keys[i] == 0 else 0
        runs.append(run)
    assert max(runs) == 3
    assert list(sampler) == order  # same epoch, same order (resume replays it)
    sampler.set_epoch(1)
    assert sorted(sampler) == sorted(order) and any(list(ClusterPairSampler(keys, 3, seed=s)) != order for s in (2, 3, 4))


def test_length_grouped_sampler_batches_similar_lengths():
    lengths = list(np.random.default_rng(0).integers(3, 60, size=400))
    sampler = LengthGroupedPairSampler(lengths, batch_size=16, seed=0)
    order = list(sampler)
    assert sorted(order) == list(range(400)) and list(sampler) == order
    spread = np.mean([np.ptp([lengths[i] for i in order[s : s + 16]]) for s in range(0, 400, 16)])
    random_spread = np.mean([np.ptp(lengths[s : s + 16]) for s in range(0, 400, 16)])
    assert spread < random_spread / 2


# ----------------------------------------------------------------------------- guards


def test_zero_loss_guard_raises_before_training(tiny_encoder, demo, tmp_path):
    negatives_only = demo.select(np.where(demo.labels == 0)[0][:64])
    with pytest.raises(TrainingError, match="none of the 4 batches.*usable tuple for loss 'triplet'"):
        train(_config(loss="triplet", sampler="random"), tmp_path / "run", encoder=tiny_encoder,
              train_data=negatives_only, dev_data=demo.select(range(40)), show_progress=False)


def test_zero_loss_guard_raises_when_an_epoch_had_no_tuple():
    from metric_sim.losses import LossResult

    guard = ZeroLossGuard("triplet")
    zero = LossResult(torch.tensor(0.0), tuples=0, mined=0)
    guard.record(LossResult(torch.tensor(1.0), tuples=3, mined=1))
    guard.record(zero)
    guard.check()  # one usable batch is enough
    guard.reset_epoch()
    guard.record(zero)
    guard.record(zero)
    with pytest.raises(TrainingError, match="no batch of this epoch \\(2 batches\\).*anchor with both a positive and a negative"):
        guard.check()
    assert guard.total_empty == 3


# ----------------------------------------------------------------------------- training


def test_a_few_steps_lower_the_loss(tiny_encoder, small, tmp_path):
    pairs = prepare_pairs(small)
    loss = build_loss("contrastive", "euclidean", embedding_dim=32)
    before = _mean_loss(lambda f: tiny_encoder.eval()(**f), pairs, loss, tokenizer=tiny_encoder.tokenizer)
    result = train(_config(), tmp_path / "run", encoder=tiny_encoder, train_data=small, dev_data=small, show_progress=False)
    encoder = result.model.encoder
    after = _mean_loss(lambda f: encoder.eval()(**f), pairs, loss, tokenizer=encoder.tokenizer)
    assert after < 0.7 * before
    assert result.metrics["dev"]["average_precision"] > result.metrics["zero_shot_dev"]["average_precision"] + 0.2


def test_run_folder_layout_and_saved_model(tiny_encoder, small, tmp_path):
    run = tmp_path / "run"
    result = train(_config(metric="manhattan"), run, encoder=tiny_encoder, train_data=small, dev_data=small, show_progress=False)
    saved = json.loads((run / "train_config.json").read_text())
    assert TrainConfig.from_dict({k: v for k, v in saved.items() if k != "run"}) == _config(metric="manhattan")
    for key in ("steps", "epochs", "wall_time_s", "train_pairs", "dev_pairs", "hardware", "versions", "data_summary"):
        assert key in saved["run"], key
    assert saved["run"]["steps"] == 12 and saved["run"]["versions"]["transformers"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"average_precision", "roc_auc", "threshold"} <= set(metrics["dev"]) and "zero_shot_dev" in metrics
    assert (run / "checkpoints").is_dir() and any(p.name.startswith("checkpoint-") for p in (run / "checkpoints").iterdir())
    loaded = SimilarityModel.from_pretrained(run / "model")
    assert loaded.metric.value == "manhattan" and loaded.calibrator.fitted_on == "dev"
    assert loaded.calibrator.threshold == pytest.approx(metrics["dev"]["threshold"])
    np.testing.assert_allclose(loaded.distance(small.texts_a[:8], small.texts_b[:8]),
                               result.model.distance(small.texts_a[:8], small.texts_b[:8]), rtol=1e-5)
    # The reported dev AP is the saved model's AP.
    from sklearn.metrics import average_precision_score

    ap = average_precision_score(small.labels, -loaded.distance(small.texts_a, small.texts_b))
    assert ap == pytest.approx(metrics["dev"]["average_precision"], abs=1e-6)
    with pytest.raises(TrainingError, match="already holds a run"):
        train(_config(), run, encoder=tiny_encoder, train_data=small, dev_data=small, show_progress=False)


@pytest.mark.parametrize("feature", ["quadratic", "auto"])
def test_calibration_feature_sets_the_form_of_the_dev_calibrator(tiny_encoder, small, tmp_path, feature):
    config = _config(calibration_feature=feature)
    assert config.to_dict()["calibration_feature"] == feature and "calibration_feature" not in _config().to_dict()
    result = train(config, tmp_path / "run", encoder=tiny_encoder, train_data=small, dev_data=small, show_progress=False)
    loaded = SimilarityModel.from_pretrained(tmp_path / "run" / "model")
    oracle = Calibrator.fit(loaded.distance(small.texts_a, small.texts_b), small.labels, "euclidean", feature=feature)
    assert loaded.calibrator.feature == oracle.feature == result.model.calibrator.feature
    assert (loaded.calibrator.weight, loaded.calibrator.linear_weight, loaded.calibrator.bias) == pytest.approx(
        (oracle.weight, oracle.linear_weight, oracle.bias), rel=1e-4, abs=1e-6)
    with pytest.raises(ValueError, match="calibration_feature must be one of.*'cubic'"):
        _config(calibration_feature="cubic")


def test_frozen_mode_trains_only_a_projection_head(tiny_encoder, small, tmp_path):
    backbone_before = {k: v.clone() for k, v in tiny_encoder.model.state_dict().items()}
    pairs = prepare_pairs(small)
    base = Encoder(tiny_encoder.model, tiny_encoder.tokenizer, pooling="mean", normalize=False, max_length=32)
    cached = torch.from_numpy(base.encode(pairs.texts))
    loss = build_loss("contrastive", "euclidean", embedding_dim=32)
    before = _mean_loss(lambda f: f["embeddings"], pairs, loss, embeddings=cached)

    run = tmp_path / "run"
    config = _config(freeze_encoder=True, learning_rate=2e-2, max_steps=30, eval_steps=10)
    result = train(config, run, encoder=tiny_encoder, train_data=small, dev_data=small, show_progress=False)
    encoder = result.model.encoder
    for key, value in encoder.model.state_dict().items():
        assert torch.equal(value, backbone_before[key]), key  # the transformer did not move
    head = encoder.projection
    assert head is not None and not torch.equal(head.weight, torch.eye(32))
    after = _mean_loss(lambda f: head(f["embeddings"]), pairs, loss, embeddings=cached)
    assert after < 0.8 * before
    assert list((run / "cache").glob("train-*.npy")) and list((run / "cache").glob("dev-*.npy"))

    loaded = SimilarityModel.from_pretrained(run / "model")  # the head is part of the saved model
    assert loaded.encoder.projection is not None
    texts = pairs.texts[:10]
    with torch.no_grad():
        expected = head(torch.from_numpy(base.encode(texts))).numpy()
    np.testing.assert_allclose(loaded.encoder.encode(texts), expected, atol=1e-5)


def test_demo_fine_tune_returns_model_and_ap_before_after(tiny_encoder):
    result = fine_tune_demo(encoder=tiny_encoder, max_steps=4)
    assert 0.0 < result.ap_before <= 1.0 and 0.0 < result.ap_after <= 1.0
    assert isinstance(result.model, SimilarityModel) and result.seconds > 0
    assert result.run_dir is None  # the scratch run folder was temporary


# ----------------------------------------------------------------------------- resume and CLI


def _write_recipe(tmp_path, tiny_encoder, **changes):
    model_dir = tiny_encoder.save(tmp_path / "tiny-model")
    recipe = {"train_file": str(DEMO_FILE), "text_a": "question1", "text_b": "question2", "label": "is_duplicate",
              "model": str(model_dir), "max_length": 32, "loss": "contrastive", "batch_size": 16,
              "learning_rate": 1e-3, "warmup_ratio": 0.0, "seed": 3, **changes}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _cli(*args, **kwargs):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.Popen([sys.executable, "-m", "metric_sim", *args], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def test_killed_run_resumes_to_the_same_dev_ap(tiny_encoder, tmp_path):
    """SIGKILL a CLI run after its first checkpoint, --resume it, compare with an uninterrupted run.

    Same seed: the sampler order depends only on (seed, epoch) and the Trainer restores
    model, optimiser, scheduler and RNG states, so the resumed run ends where the
    uninterrupted one does.
    """
    recipe = _write_recipe(tmp_path, tiny_encoder, max_steps=60, eval_steps=10, save_total_limit=3)
    killed = tmp_path / "killed"
    process = _cli("train", "--config", str(recipe), "--out", str(killed), "--no-progress")
    deadline = time.time() + 120
    while not (killed / "checkpoints" / "checkpoint-10" / "trainer_state.json").exists():
        assert process.poll() is None, process.communicate()[0][-3000:]
        assert time.time() < deadline, "no checkpoint within 120 s"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (killed / "metrics.json").exists()  # it really died mid-training

    from metric_sim.cli import main

    assert main(["train", "--out", str(killed), "--resume", "--no-progress"]) == 0  # in-process: no second start-up
    assert main(["train", "--config", str(recipe), "--out", str(tmp_path / "straight"), "--no-progress"]) == 0
    ap_resumed = json.loads((killed / "metrics.json").read_text())["dev"]["average_precision"]
    ap_straight = json.loads((tmp_path / "straight" / "metrics.json").read_text())["dev"]["average_precision"]
    assert ap_resumed == pytest.approx(ap_straight, abs=1e-4)
    assert json.loads((killed / "train_config.json").read_text())["run"]["resumed"] is True


def test_cli_train_set_and_max_steps(tiny_encoder, tmp_path, capsys):
    from metric_sim.cli import main

    recipe = _write_recipe(tmp_path, tiny_encoder, max_steps=50, eval_steps=50)
    out = tmp_path / "run"
    code = main(["train", "--config", str(recipe), "--out", str(out), "--max-steps", "4",
                 "--set", "eval_steps=2", "--set", "loss_params.neg_margin=1.5", "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["max_steps"] == 4 and saved["eval_steps"] == 2 and saved["loss_params"] == {"neg_margin": 1.5}
    assert saved["run"]["steps"] == 4 and "dev AP trained" in printed


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--set", "learning_rte=0.1"], "unknown config key(s) ['learning_rte']; valid keys: ["),
        (["--set", "loss=arcface"], "loss must be one of"),
        (["--set", "metric=cosine"], "metric must be one of"),
        (["--set", "loss_params.margin=1"], "unknown parameter(s) ['margin'] for loss 'contrastive'"),
    ],
)
def test_cli_bad_config_exits_2_with_the_reason(tiny_encoder, tmp_path, capsys, args, expected):
    from metric_sim.cli import main

    recipe = _write_recipe(tmp_path, tiny_encoder, max_steps=2, eval_steps=2)
    code = main(["train", "--config", str(recipe), "--out", str(tmp_path / "run"), "--no-progress", *args])
    assert code == 2
    assert expected in capsys.readouterr().err


def test_cli_resume_needs_out_and_a_checkpoint(tmp_path, capsys):
    from metric_sim.cli import main

    assert main(["train", "--resume"]) == 2
    assert "--resume needs --out" in capsys.readouterr().err
    assert main(["train", "--resume", "--out", str(tmp_path / "nothing")]) == 2
    assert "train_config.json not found" in capsys.readouterr().err
