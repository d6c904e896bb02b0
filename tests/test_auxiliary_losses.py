"""Auxiliary losses: ``main + sum(weight * auxiliary)`` on the same batch, from the config to a training run."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import socket

import pytest
import torch
import yaml

from metric_sim.errors import (
    ConfigError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    TrainingError,
)
from metric_sim.losses import (
    CompositeLoss,
    CrossRankLoss,
    MetricLoss,
    build_loss,
    build_loss_with_auxiliaries,
)
from metric_sim.training import TrainConfig, parse_overrides, train
from tests.conftest import DEMO_FILE, REPO_ROOT

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MISSING = "/nonexistent/metric-sim/pairs.tsv"
DIM = 8
NTXENT = {"loss": "ntxent", "weight": 0.5, "loss_params": {}}
# The keys of a saved config (train_config.json without "run") before auxiliary_losses existed, in order.
SAVED_KEYS_BEFORE = [
    "preset", "train_file", "dev_file", "data_dir", "train_split", "dev_split", "dev_fraction", "split_seed",
    "text_a", "text_b", "label", "items", "score_low", "score_high", "max_train_pairs", "max_dev_pairs", "model",
    "metric", "pooling", "normalize", "max_length", "freeze_encoder", "projection_dim", "freeze_layers",
    "l2sp_weight", "encoder_options", "loss", "loss_params", "batch_size", "sampler", "samples_per_cluster",
    "learning_rate", "weight_decay", "warmup_ratio", "lr_scheduler", "epochs", "max_steps",
    "gradient_accumulation_steps", "max_grad_norm", "seed", "bf16", "fp16", "eval_steps", "eval_batch_size",
    "save_total_limit", "load_best_model_at_end", "zero_shot_eval", "logging_steps", "report_to",
    "dataloader_num_workers", "hard_negatives", "mix_pairs", "interpolate",
]


def _config(**changes):
    return TrainConfig(**{"train_file": MISSING, **changes})


def _batch(seed: int = 0):
    """A de-duplicated batch: 12 unique texts in 5 clusters, 10 pairs (duplicates and non-duplicates)."""
    g = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(12, DIM, generator=g)
    text_labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 4])
    idx_a = torch.tensor([0, 3, 5, 7, 9, 0, 3, 5, 1, 10])
    idx_b = torch.tensor([1, 4, 6, 8, 10, 3, 5, 7, 9, 11])
    pair_labels = (text_labels[idx_a] == text_labels[idx_b]).long()
    return embeddings, idx_a, idx_b, pair_labels, text_labels


# ----------------------------------------------------------------------------- the composite loss


@pytest.mark.parametrize("metric", ["euclidean", "manhattan"])
def test_value_and_gradient_are_main_plus_weighted_auxiliaries(metric):
    embeddings, *batch = _batch()
    main = build_loss("online_contrastive", metric, embedding_dim=DIM)
    ntxent = build_loss("ntxent", metric, embedding_dim=DIM, params={"temperature": 0.5})
    supcon = build_loss("supcon", metric, embedding_dim=DIM)
    composite = CompositeLoss("online_contrastive", metric, {}, DIM, [(ntxent, 0.5), (supcon, 0.25)])

    def value_and_grad(fn):
        emb = embeddings.clone().requires_grad_(True)
        value = fn(emb)
        value.backward()
        return value.detach(), emb.grad

    got, got_grad = value_and_grad(lambda e: composite(e, *batch).loss)
    parts = [value_and_grad(lambda e, loss=loss: loss(e, *batch).loss) for loss in (main, ntxent, supcon)]
    (v_main, g_main), (v_nt, g_nt), (v_sc, g_sc) = parts
    assert min(float(v) for v, _ in parts) > 0.01  # every term is non-trivial on this batch
    assert torch.allclose(got, v_main + 0.5 * v_nt + 0.25 * v_sc, rtol=0, atol=1e-6)
    assert torch.allclose(got_grad, g_main + 0.5 * g_nt + 0.25 * g_sc, rtol=0, atol=1e-6)
    # both kinds of term move the embeddings: the auxiliary gradients are not zero and not the main one
    assert float(g_nt.abs().max()) > 1e-3 and float(g_main.abs().max()) > 1e-3
    assert not torch.allclose(got_grad, g_main, atol=1e-4)


def test_tuples_and_mined_are_the_main_losses():
    embeddings, *batch = _batch()
    main = build_loss("online_contrastive", "euclidean", embedding_dim=DIM)
    ntxent = build_loss("ntxent", "euclidean", embedding_dim=DIM)
    expected, aux = main(embeddings, *batch), ntxent(embeddings, *batch)
    assert (expected.tuples, expected.mined) != (aux.tuples, aux.mined)  # so the check below can fail
    result = CompositeLoss("online_contrastive", "euclidean", {}, DIM, [(ntxent, 2.0)])(embeddings, *batch)
    assert (result.tuples, result.mined) == (expected.tuples, expected.mined)


def test_composite_is_the_main_loss_to_the_rest_of_the_code():
    plain = build_loss_with_auxiliaries("online_contrastive", "euclidean", embedding_dim=DIM,
                                        params={"neg_margin": 0.7})
    assert type(plain) is MetricLoss and not plain.needs_labels  # no auxiliary: exactly build_loss
    assert plain.auxiliary_terms == () and plain.describe_auxiliaries() == []  # the run record leaves the key out
    embeddings, *batch = _batch()
    same = build_loss("online_contrastive", "euclidean", embedding_dim=DIM, params={"neg_margin": 0.7})
    assert torch.equal(plain(embeddings, *batch).loss, same(embeddings, *batch).loss)

    composite = build_loss_with_auxiliaries("online_contrastive", "euclidean", embedding_dim=DIM,
                                            params={"neg_margin": 0.7}, auxiliaries=[NTXENT])
    assert isinstance(composite, CompositeLoss) and isinstance(composite, MetricLoss)
    assert (composite.name, composite.spec, composite.params) == (same.name, same.spec, same.params)
    assert composite.metric is same.metric and composite.needs_labels  # ntxent reads cluster labels
    (term, weight), = composite.auxiliary_terms
    assert term is composite.auxiliaries[0] and term.name == "ntxent" and weight == 0.5
    assert composite.weights == (0.5,) and composite.describe_auxiliaries() == [
        {"loss": "ntxent", "weight": 0.5, "loss_params": {"temperature": 0.05, "miner": None}}]
    # one process: the cross-rank wrapper is the composite itself
    assert torch.equal(CrossRankLoss(composite)(embeddings, *batch, torch.arange(12)).loss,
                       composite(embeddings, *batch).loss)


@pytest.mark.parametrize(("auxiliaries", "error", "expected"), [
    ([{"loss": "arcface", "weight": 1.0}], InvalidArgumentError, "auxiliaries[0].loss must be one of"),
    ([NTXENT, {"loss": "ntxent", "weight": 0}], InvalidArgumentError, "auxiliaries[1].weight must be a finite number > 0 (the factor of this loss in the total main + sum(weight * auxiliary)), got 0"),
    ([{"loss": "ntxent", "weight": "1"}], InvalidArgumentTypeError, "auxiliaries[0].weight must be a finite number > 0 (the factor of this loss in the total main + sum(weight * auxiliary)), got '1'"),
    ([{"loss": "ntxent", "weight": 1, "temperature": 1}], InvalidArgumentError, "['auxiliaries[0].temperature']"),
    ([{"loss": "ntxent", "weight": 1, "loss_params": {"temperature": -1}}], InvalidArgumentError, "got -1"),
])
def test_library_builder_refuses_bad_entries(auxiliaries, error, expected):
    with pytest.raises(error) as info:
        build_loss_with_auxiliaries("contrastive", "euclidean", embedding_dim=DIM, auxiliaries=auxiliaries)
    assert expected in str(info.value)


def test_components_must_share_the_metric():
    other = build_loss("ntxent", "manhattan", embedding_dim=DIM)
    with pytest.raises(InvalidArgumentError, match="every term must measure the same distance"):
        CompositeLoss("contrastive", "euclidean", {}, DIM, [(other, 1.0)])


# ----------------------------------------------------------------------------- the config


BAD_ENTRIES = [
    ({"loss": "arcface", "weight": 1.0}, "auxiliary_losses[1].loss", "'arcface'"),
    ({"weight": 1.0}, "auxiliary_losses[1].loss", "got None"),
    ({"loss": "ntxent", "weight": 0}, "auxiliary_losses[1].weight", "got 0"),
    ({"loss": "ntxent", "weight": -0.5}, "auxiliary_losses[1].weight", "got -0.5"),
    ({"loss": "ntxent", "weight": math.nan}, "auxiliary_losses[1].weight", "got nan"),
    ({"loss": "ntxent", "weight": math.inf}, "auxiliary_losses[1].weight", "got inf"),
    ({"loss": "ntxent", "weight": "heavy"}, "auxiliary_losses[1].weight", "got 'heavy'"),
    ({"loss": "ntxent", "weight": True}, "auxiliary_losses[1].weight", "got True"),
    ({"loss": "ntxent"}, "auxiliary_losses[1].weight is required", ""),
    ({"loss": "ntxent", "weight": 1, "loss_params": {"temperature": -1}}, "auxiliary_losses[1].loss_params",
     "'temperature' must be > 0, got -1"),
    ({"loss": "ntxent", "weight": 1, "loss_params": {"margin": 0.2}}, "auxiliary_losses[1].loss_params",
     "unknown parameter(s) ['margin'] for loss 'ntxent'"),
    ({"loss": "ntxent", "weight": 1, "loss_params": {"miner": "batch_hard"}}, "auxiliary_losses[1].loss_params",
     "got 'batch_hard'"),
    ({"loss": "ntxent", "weight": 1, "loss_params": [0.1]}, "auxiliary_losses[1].loss_params", "got [0.1]"),
    ({"loss": "ntxent", "weight": 1, "temperature": 0.1}, "['auxiliary_losses[1].temperature']", "valid keys"),
    ("ntxent", "auxiliary_losses[1] must be a mapping", "got 'ntxent'"),
]


@pytest.mark.parametrize(("entry", "field", "value"), BAD_ENTRIES, ids=[str(i) for i in range(len(BAD_ENTRIES))])
def test_bad_entries_name_the_field_and_the_value(entry, field, value):
    with pytest.raises(ConfigError) as info:
        _config(auxiliary_losses=[NTXENT, entry])
    assert field in str(info.value) and value in str(info.value), str(info.value)


def test_the_list_itself_is_checked_and_loss_params_by_the_configs_metric():
    with pytest.raises(ConfigError, match=r"auxiliary_losses must be a list .*got \{'loss': 'ntxent'"):
        _config(auxiliary_losses={"loss": "ntxent", "weight": 1})
    # a Manhattan pos_margin given alone is compared with the default neg_margin of the projection's size
    entry = {"loss": "contrastive", "weight": 1, "loss_params": {"pos_margin": 12.0}}
    assert _config(metric="manhattan", auxiliary_losses=[entry]).auxiliary_losses[0]["loss_params"] == {
        "pos_margin": 12.0}
    with pytest.raises(ConfigError, match=r"auxiliary_losses\[0\].loss_params: .*pos_margin must be smaller"):
        _config(metric="manhattan", projection_dim=16, auxiliary_losses=[entry])


def test_entries_are_normalised_and_yaml_numbers_converted(tmp_path):
    config = _config(auxiliary_losses=[{"loss": "ntxent", "weight": 1}])
    assert config.auxiliary_losses == [{"loss": "ntxent", "weight": 1.0, "loss_params": {}}]
    assert _config(auxiliary_losses=None).auxiliary_losses == []
    path = tmp_path / "c.yaml"
    path.write_text(f"train_file: {MISSING}\nauxiliary_losses:\n  - loss: ntxent\n    weight: 1e-3\n"
                    "    loss_params: {temperature: 5e-2}\n")
    loaded = TrainConfig.from_yaml(path)  # PyYAML reads 1e-3 and 5e-2 as strings
    assert loaded.auxiliary_losses == [{"loss": "ntxent", "weight": 0.001, "loss_params": {"temperature": 0.05}}]


def test_a_recipe_names_the_file_and_refuses_deeper_nesting(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(f"train_file: {MISSING}\nauxiliary_losses: [{{loss: ntxent, weight: 0}}]\n")
    with pytest.raises(ConfigError, match=rf"^{path}: auxiliary_losses\[0\].weight must be .*got 0$"):
        TrainConfig.from_yaml(path)
    path.write_text(f"train_file: {MISSING}\nauxiliary_losses: [{{loss: ntxent, weight: 1, "
                    "loss_params: {temperature: {a: 1}}}]\n")
    with pytest.raises(ConfigError, match=r"'auxiliary_losses\[0\].loss_params' holds a nested dict"):
        TrainConfig.from_yaml(path)


def test_set_override_adds_auxiliary_losses(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(f"train_file: {MISSING}\nloss: online_contrastive\n")
    overrides = parse_overrides(["auxiliary_losses=[{loss: ntxent, weight: 0.5, loss_params: {temperature: 0.1}}]"])
    config = TrainConfig.from_yaml(path, overrides)
    assert config.auxiliary_losses == [{"loss": "ntxent", "weight": 0.5, "loss_params": {"temperature": 0.1}}]
    with pytest.raises(ConfigError, match=r"--set auxiliary_losses=.*auxiliary_losses\[0\].weight.*got -1"):
        TrainConfig.from_yaml(path, parse_overrides(["auxiliary_losses=[{loss: ntxent, weight: -1}]"]))


def test_round_trips_through_dict_json_yaml_and_replace(tmp_path):
    config = _config(loss="online_contrastive", metric="manhattan", auxiliary_losses=[
        {"loss": "ntxent", "weight": 0.5, "loss_params": {"temperature": 0.8}}, {"loss": "supcon", "weight": 2}])
    saved = config.to_dict()
    assert list(saved) == [*SAVED_KEYS_BEFORE, "auxiliary_losses"]
    assert TrainConfig.from_dict(saved) == config
    assert TrainConfig.from_dict(json.loads(json.dumps(saved))) == config
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(saved))
    assert TrainConfig.from_yaml(path) == config
    assert config.replace(seed=1).auxiliary_losses == config.auxiliary_losses
    assert config.replace(auxiliary_losses=[]).to_dict() == {k: v for k, v in saved.items() if k != "auxiliary_losses"}


def test_a_config_without_auxiliary_losses_saves_as_before():
    for config in (_config(), _config(auxiliary_losses=[]), _config(loss="ntxent", mix_pairs=None)):
        saved = config.to_dict()
        assert list(saved) == SAVED_KEYS_BEFORE  # the same keys in the same order: the same train_config.json
        assert saved == {name: getattr(config, name) for name in SAVED_KEYS_BEFORE}
        assert TrainConfig.from_dict(saved) == config
    assert [f.name for f in dataclasses.fields(TrainConfig)] == [*SAVED_KEYS_BEFORE, "auxiliary_losses", "layer_lr_decay",
                                                                 "calibration_feature"]
    # a run folder saved before the key existed loads unchanged
    legacy = json.loads((REPO_ROOT / "tests/fixtures/legacy/run/train_config.json").read_text())
    loaded = TrainConfig.from_dict({k: v for k, v in legacy.items() if k != "run"})
    assert loaded.auxiliary_losses == [] and "auxiliary_losses" not in loaded.to_dict()


# ----------------------------------------------------------------------------- a training run


def test_training_applies_the_auxiliary_term_and_records_it(tiny_encoder, demo, tmp_path, monkeypatch):
    """Every training step's loss is main + 0.5 * ntxent on that step's embeddings (recomputed here)."""
    import metric_sim.training.trainer as trainer_module

    calls = []

    class Recording(CrossRankLoss):
        def forward(self, embeddings, *args):
            result = super().forward(embeddings, *args)
            if torch.is_grad_enabled():
                calls.append((embeddings.detach().clone(), [a.clone() for a in args[:4]], result))
            return result

    monkeypatch.setattr(trainer_module, "CrossRankLoss", Recording)
    small = demo.select(range(96))
    config = TrainConfig(train_file=str(DEMO_FILE), loss="online_contrastive", auxiliary_losses=[NTXENT],
                         batch_size=16, learning_rate=1e-3, warmup_ratio=0.0, max_steps=3, eval_steps=3,
                         logging_steps=1, seed=7)
    train(config, tmp_path / "run", encoder=tiny_encoder, train_data=small, dev_data=small, show_progress=False)
    assert len(calls) == 3
    main = build_loss("online_contrastive", "euclidean", embedding_dim=32)
    ntxent = build_loss("ntxent", "euclidean", embedding_dim=32)
    for embeddings, args, result in calls:
        plain, aux = main(embeddings, *args), ntxent(embeddings, *args)
        assert float(aux.loss) > 0.01  # the term is really there: the step's loss is not the main loss
        assert torch.allclose(result.loss.detach(), plain.loss + 0.5 * aux.loss, rtol=0, atol=1e-6)
        assert (result.tuples, result.mined) == (plain.tuples, plain.mined)
    saved = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert saved["auxiliary_losses"] == [NTXENT]
    assert TrainConfig.from_dict({k: v for k, v in saved.items() if k != "run"}) == config
    assert saved["run"]["sampler"] == "cluster"  # sampler auto: ntxent needs cluster batches
    resolved = [{**NTXENT, "loss_params": ntxent.params}]
    assert saved["run"]["auxiliary_losses_resolved"] == resolved
    model_meta = json.loads((tmp_path / "run" / "model" / "metric_sim.json").read_text())
    assert model_meta["training"]["auxiliary_losses"] == resolved


def test_a_run_without_auxiliary_losses_records_none(tiny_encoder, demo, tmp_path):
    """The run record and the model metadata of a plain run have no auxiliary key (they save as before)."""
    small = demo.select(range(64))
    config = TrainConfig(train_file=str(DEMO_FILE), loss="online_contrastive", batch_size=16, learning_rate=1e-3,
                         warmup_ratio=0.0, max_steps=1, eval_steps=1, logging_steps=1, seed=7)
    train(config, tmp_path / "run", encoder=tiny_encoder, train_data=small, dev_data=small, show_progress=False)
    saved = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert "auxiliary_losses" not in saved and "auxiliary_losses_resolved" not in saved["run"]
    assert saved["run"]["loss_params_resolved"]["neg_margin"] > 0  # the record itself was written
    model_meta = json.loads((tmp_path / "run" / "model" / "metric_sim.json").read_text())
    assert model_meta["training"]["loss"] == "online_contrastive" and "auxiliary_losses" not in model_meta["training"]


def test_resume_refuses_a_config_whose_auxiliary_losses_differ(tmp_path):
    """The key is saved only when set, so it can be on one side alone; both directions are refused."""
    from metric_sim.layout import TRAIN_CONFIG_FILE
    from metric_sim.training.resume import resume_config

    plain, with_aux = _config(), _config(auxiliary_losses=[NTXENT])
    for saved, given in ((plain, with_aux), (with_aux, plain)):
        run_dir = tmp_path / f"run{len(saved.auxiliary_losses)}"
        run_dir.mkdir()
        (run_dir / TRAIN_CONFIG_FILE).write_text(json.dumps(saved.to_dict()))
        with pytest.raises(TrainingError, match=r"auxiliary_losses"):
            resume_config(run_dir, given)
        assert resume_config(run_dir, saved) == saved


# ----------------------------------------------------------------------------- two ranks


def _rank_batch(rank: int):
    """Rank ``rank``'s half of a 12-item batch: disjoint items, clusters spanning both ranks."""
    embeddings, *_ = _batch(seed=3)
    text_labels = torch.tensor([0, 0, 1, 1, 2, 3, 0, 1, 2, 2, 3, 4])
    ids = torch.arange(6) + 6 * rank
    idx_a, idx_b = torch.tensor([0, 2, 4, 0, 1]), torch.tensor([1, 3, 5, 2, 4])
    labels = (text_labels[ids][idx_a] == text_labels[ids][idx_b]).long()
    return embeddings[ids], idx_a, idx_b, labels, text_labels[ids], ids


def _composite():
    main = build_loss("online_contrastive", "euclidean", embedding_dim=DIM)
    return CompositeLoss(main.name, "euclidean", {}, DIM, [(build_loss("ntxent", "euclidean", embedding_dim=DIM,
                                                                          params={"temperature": 0.5}), 0.5)])


def _rank_worker(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        embeddings, *batch = _rank_batch(rank)
        emb = embeddings.clone().requires_grad_(True)
        result = CrossRankLoss(_composite())(emb, *batch)
        result.loss.backward()
        torch.save((result.loss.detach(), emb.grad, result.tuples), os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_ranks_give_the_value_and_gradients_of_one_process(tmp_path):
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    # one process with both halves: items in id order, rank 1's pairs shifted by its 6 items
    halves = [_rank_batch(r) for r in (0, 1)]
    emb = torch.cat([h[0] for h in halves]).requires_grad_(True)
    idx_a, idx_b = (torch.cat([h[i] + 6 * r for r, h in enumerate(halves)]) for i in (1, 2))
    labels, text_labels = (torch.cat([h[i] for h in halves]) for i in (3, 4))
    expected = _composite()(emb, idx_a, idx_b, labels, text_labels)
    expected.loss.backward()
    for rank in (0, 1):
        value, grad, tuples = torch.load(tmp_path / f"rank{rank}.pt")
        assert torch.allclose(value, expected.loss.detach(), rtol=0, atol=1e-6) and tuples == expected.tuples
        # each rank's rows get world_size x their gradient (DDP then averages the ranks)
        assert torch.allclose(grad / 2, emb.grad[6 * rank: 6 * rank + 6], rtol=0, atol=1e-6)
    assert float(emb.grad.abs().max()) > 1e-3
