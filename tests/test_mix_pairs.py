"""``mix_pairs``: other pair sets mixed into every batch (config, data, sampler, a tiny run), in-process."""

from __future__ import annotations

import json
import logging
import math
from collections import Counter

import numpy as np
import pytest
from accelerate.data_loader import BatchSamplerShard
from torch.utils.data import BatchSampler

import metric_sim.training.run as run_module
from metric_sim.errors import ConfigError, InvalidArgumentTypeError, TrainingError
from metric_sim.layout import TRAIN_CONFIG_FILE
from metric_sim.training import TrainConfig, prepare_pairs, train
from metric_sim.training.data import concat_pairs, load_mix_set, mix_into
from metric_sim.training.mix_config import MixSource, pairs_per_batch
from metric_sim.training.mixing import MixedBatchSampler, MixPlan, main_rows
from metric_sim.training.samplers import (
    ClusterPairSampler,
    LengthGroupedPairSampler,
    RandomPairSampler,
)
from tests.conftest import DEMO_FILE, pair_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TRAIN = "/nonexistent/metric-sim/train.tsv"  # never read: the config is only built


def _config(**changes):
    return TrainConfig(**{"train_file": TRAIN, "batch_size": 16, **changes})


def _write_pairs(path, rows, header=("text_a", "text_b", "label")):
    path.write_text("\n".join(["\t".join(header)] + [f"{a}\t{b}\t{y}" for a, b, y in rows]) + "\n", encoding="utf-8")
    return path


def _plan(batch_size, main, *sets):
    """A MixPlan with ``main`` main rows, then each (pairs, share) set right after the previous one."""
    sources, start = [], main
    for i, (count, share) in enumerate(sets):
        sources.append(MixSource(f"set{i}", start, count, share))
        start += count
    return MixPlan(batch_size, main, tuple(sources))


def _batches(sampler, batch_size):
    order = list(sampler)
    assert len(order) == len(sampler) and len(order) % batch_size == 0
    return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]


def _assert_make_up(batch, plan):
    """The batch holds exactly main_per_batch main rows (first) and k_i rows of set i (in config order)."""
    assert sum(0 <= r < plan.main_pairs for r in batch) == plan.main_per_batch
    assert all(0 <= r < plan.main_pairs for r in batch[: plan.main_per_batch])
    column = plan.main_per_batch
    for source, k in zip(plan.sources, plan.per_batch, strict=True):
        assert sum(r in source.rows for r in batch) == k
        assert all(r in source.rows for r in batch[column : column + k])
        column += k


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize("value, message", [
    ("mrpc", r"mix_pairs must be a list.*got 'mrpc'"),
    (["mrpc"], r"mix_pairs\[0\] must be a mapping.*got 'mrpc'"),
    ([{"file": "x.tsv"}], r"mix_pairs\[0\]\.share is required"),
    ([{"file": "x.tsv", "share": 0}], r"mix_pairs\[0\]\.share must be a number in \(0, 1\).*got 0"),
    ([{"file": "x.tsv", "share": 1.0}], r"mix_pairs\[0\]\.share must be .*got 1\.0"),
    ([{"file": "x.tsv", "share": True}], r"mix_pairs\[0\]\.share must be .*got True"),
    ([{"file": "x.tsv", "share": "a lot"}], r"mix_pairs\[0\]\.share must be .*got 'a lot'"),
    ([{"file": "x.tsv", "share": float("nan")}], r"mix_pairs\[0\]\.share must be .*got nan"),
    ([{"file": "x.tsv", "share": 0.2, "colour": 1}], r"mix_pairs\[0\]\.colour"),
    ([{"file": "x.tsv", "preset": "mrpc", "split": "train", "share": 0.2}],
     r"mix_pairs\[0\] needs exactly one of preset.*preset='mrpc' and file='x\.tsv'"),
    ([{"share": 0.2}], r"mix_pairs\[0\] needs exactly one of preset.*preset=None and file=None"),
    ([{"file": "", "share": 0.2}], r"mix_pairs\[0\]\.file must be the path of a pairs file, got ''"),
    ([{"file": "x.tsv", "split": "train", "share": 0.2}], r"mix_pairs\[0\]\.split applies only with preset.*'train'"),
    ([{"file": "x.tsv", "text_a": 3, "share": 0.2}], r"mix_pairs\[0\]\.text_a must be a column name.*got 3"),
    ([{"file": "x.tsv", "items": "audio", "share": 0.2}], r"mix_pairs\[0\]\.items must be one of.*got 'audio'"),
    ([{"preset": "nope", "split": "train", "share": 0.2}], r"mix_pairs\[0\]\.preset='nope' is not a preset"),
    ([{"preset": "mrpc", "split": "dev", "share": 0.2}], r"mix_pairs\[0\]\.split must be one of .*'train'.*got 'dev'"),
    ([{"preset": "mrpc", "share": 0.2}], r"mix_pairs\[0\]\.split must be one of .*got None"),
    ([{"preset": "paws", "split": "train", "share": 0.2}], r"mix_pairs\[0\]\.preset='paws' has no named splits"),
    ([{"preset": "mrpc", "split": "train", "text_a": "x", "share": 0.2}],
     r"mix_pairs\[0\]\.text_a applies only with file.*got 'x'"),
    ([{"file": "a.tsv", "share": 0.5}, {"file": "b.tsv", "share": 0.5}], r"sum to less than 1.*\[0\.5, 0\.5\]"),
    ([{"file": "a.tsv", "share": 0.2}, {"file": "b.tsv", "share": 0.02}],
     r"mix_pairs\[1\]\.share=0\.02 is 0\.32 pairs of a batch of batch_size=16, which rounds to none"),
    ([{"file": "a.tsv", "share": 0.2}, {"file": "a.tsv", "share": 0.1}], r"mix_pairs\[1\] repeats mix_pairs\[0\]"),
])
def test_bad_mix_pairs_raise_config_errors_naming_the_entry_and_value(value, message):
    with pytest.raises(ConfigError, match=message):
        _config(mix_pairs=value)


def test_shares_that_leave_no_main_pair_are_refused():
    # 0.45 * 2 = 0.9 rounds to 1 for each: the two sets take the whole batch of 2
    with pytest.raises(ConfigError, match=r"batch_size=2 .*\[1, 1\] pairs of each batch.*leaving none for the main"):
        _config(batch_size=2, mix_pairs=[{"file": "a.tsv", "share": 0.45}, {"file": "b.tsv", "share": 0.45}])


def test_the_dev_split_dev_file_and_training_data_are_never_mixed(tmp_path):
    with pytest.raises(ConfigError, match=r"mix_pairs\[0\]: preset 'qqp' split 'dev' is this run's dev split"):
        TrainConfig(preset="qqp", dev_split="dev", mix_pairs=[{"preset": "qqp", "split": "dev", "share": 0.2}])
    with pytest.raises(ConfigError, match=r"mix_pairs\[0\]: preset 'qqp' split 'train' is this run's training data"):
        TrainConfig(preset="qqp", dev_split="dev", mix_pairs=[{"preset": "qqp", "split": "train", "share": 0.2}])
    dev = str(tmp_path / "dev.tsv")
    with pytest.raises(ConfigError, match=r"mix_pairs\[1\]\.file='.*dev\.tsv' is this run's dev_file"):
        _config(dev_file=dev, mix_pairs=[{"file": "a.tsv", "share": 0.1}, {"file": dev, "share": 0.1}])
    with pytest.raises(ConfigError, match=r"mix_pairs\[0\]\.file=.* is this run's train_file"):
        _config(mix_pairs=[{"file": TRAIN, "share": 0.1}])
    # another split of the same preset, or another preset, is fine
    ok = TrainConfig(preset="qqp", dev_split="dev", mix_pairs=[{"preset": "mrpc", "split": "train", "share": 0.2}])
    assert ok.mix_pairs == [{"preset": "mrpc", "split": "train", "share": 0.2}]


def test_a_valid_block_is_normalised_round_trips_and_refuses_deeper_values(tmp_path):
    config = _config(mix_pairs=[{"preset": "mrpc", "split": "train", "share": "0.25"},
                                {"file": "p.tsv", "share": 0.125, "text_a": "s1", "text_b": "s2"}])
    assert config.mix_pairs == [{"preset": "mrpc", "split": "train", "share": 0.25},
                                {"file": "p.tsv", "text_a": "s1", "text_b": "s2", "share": 0.125}]
    assert TrainConfig.from_dict(config.to_dict()) == config
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"train_file: {TRAIN}\nmix_pairs:\n  - {{preset: mrpc, split: train, share: 0.25}}\n",
                      encoding="utf-8")
    assert TrainConfig.from_yaml(recipe).mix_pairs == [{"preset": "mrpc", "split": "train", "share": 0.25}]
    assert _config(mix_pairs=None).mix_pairs == [] and _config().mix_pairs == []
    with pytest.raises(InvalidArgumentTypeError, match=r"config key 'mix_pairs\[0\]' holds a nested dict"):
        TrainConfig.from_dict({"train_file": TRAIN, "mix_pairs": [{"file": "p.tsv", "share": {"a": [1]}}]})
    with pytest.raises(ConfigError, match=r"recipe\.yaml with --set mix_pairs=.*mix_pairs\[0\]\.share is required"):
        TrainConfig.from_yaml(recipe, overrides={"mix_pairs": [{"preset": "mrpc", "split": "train"}]})


def test_pairs_per_batch_rounds_halves_up():
    assert [pairs_per_batch(s, 10) for s in (0.04, 0.05, 0.25, 0.3, 0.15)] == [0, 1, 3, 3, 2]
    assert pairs_per_batch(0.25, 16) == 4 and pairs_per_batch(0.1, 32) == 3


# ----------------------------------------------------------------------------- data


def test_mixed_ids_are_namespaced_so_clusters_meet_only_through_a_shared_text():
    main = pair_dataset([("how to cook rice", "cook rice how", 1, "1", "2"), ("best car", "good car", 0, "3", "4")])
    # Ids 1 and 2 name other texts here (QQP qids and MRPC sentence ids are both small integers).
    mixed = pair_dataset([("sell phone", "buy phone", 1, "1", "2"), ("best car", "car best", 1, "7", "8")])
    combined, sources = mix_into(main, main, [("extra", 0.25, mixed)])
    assert sources == (MixSource("extra", 2, 2, 0.25),)
    assert combined.texts_a == main.texts_a + mixed.texts_a and combined.labels.tolist() == [1, 0, 1, 1]
    assert combined.ids_a[2:] == ["mix0:1", "mix0:7"] and combined.pair_ids[2:] == ["mix0:0", "mix0:1"]
    pairs = prepare_pairs(combined)
    label = {text: int(pairs.text_labels[i]) for i, text in enumerate(pairs.texts)}
    assert pairs.texts.count("best car") == 1  # one item, whatever set it came from
    assert label["how to cook rice"] == label["cook rice how"] != label["sell phone"] == label["buy phone"]
    assert label["best car"] == label["car best"] != label["good car"]  # joined through the shared text only
    # The oracle the prefix guards against: without it, id 1 would join "how to cook rice" and "sell phone".
    raw = prepare_pairs(concat_pairs(main, mixed))
    raw_label = {text: int(raw.text_labels[i]) for i, text in enumerate(raw.texts)}
    assert raw_label["how to cook rice"] == raw_label["sell phone"]


def test_a_text_only_the_dev_split_holds_is_refused(demo):
    train_part, dev_part = demo.select(range(40)), demo.select(range(40, 80))
    train_texts = set(train_part.texts_a) | set(train_part.texts_b)
    dev_only = sorted((set(dev_part.texts_a) | set(dev_part.texts_b)) - train_texts)[0]
    leaking = pair_dataset([("sell phone", "buy phone", 1, "a", "b"), (dev_only, "buy phone", 0, "c", "b")])
    with pytest.raises(TrainingError, match=r"mix_pairs\[0\] \(general\): 1 texts appear in the dev split and not "
                                            r"in train \(e\.g\. .*\): mix only pairs"):
        mix_into(train_part, dev_part, [("general", 0.2, leaking)])
    # A dev text that train holds too is no new leak.
    shared = sorted((set(dev_part.texts_a) | set(dev_part.texts_b)) & train_texts)
    if shared:
        mix_into(train_part, dev_part, [("general", 0.2, pair_dataset([(shared[0], "buy phone", 0, "c", "d")]))])
    with pytest.raises(TrainingError, match=r"mix_pairs\[0\] \(empty\): the set holds no pairs"):
        mix_into(train_part, dev_part, [("empty", 0.2, leaking.select([]))])


def test_a_preset_split_and_a_file_load_with_their_columns(tmp_path):
    mrpc = tmp_path / "data" / "mrpc"
    mrpc.mkdir(parents=True)
    (mrpc / "msr_paraphrase_train.txt").write_text(
        "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\thow to cook rice\tcook rice how\n"
        "0\t3\t4\tbest car\tgood car\n", encoding="utf-8")
    path = _write_pairs(tmp_path / "paws.tsv", [("sell phone", "buy phone", 1)], header=("s1", "s2", "y"))
    config = _config(data_dir=str(tmp_path / "data"), mix_pairs=[
        {"preset": "mrpc", "split": "train", "share": 0.25}, {"file": str(path), "text_a": "s1", "text_b": "s2",
                                                              "label": "y", "share": 0.125}])
    preset = load_mix_set(config, config.mix_pairs[0])
    assert preset.texts_a == ["how to cook rice", "best car"] and preset.labels.tolist() == [1, 0]
    assert preset.ids_a == ["1", "3"]
    loaded = load_mix_set(config, config.mix_pairs[1])
    assert loaded.texts_a == ["sell phone"] and loaded.texts_b == ["buy phone"] and loaded.labels.tolist() == [1]


# ----------------------------------------------------------------------------- sampler


@pytest.mark.parametrize("inner", ["random", "length", "cluster"])
def test_every_batch_has_the_stated_make_up_and_the_main_order_is_the_wrapped_samplers(inner):
    plan = _plan(10, 37, (5, 0.2), (50, 0.3))  # 2 + 3 mixed, 5 main per batch: ceil(37 / 5) = 8 batches
    assert plan.per_batch == (2, 3) and plan.main_per_batch == 5 and plan.batches_per_epoch == 8
    rng = np.random.default_rng(0)
    factories = {
        "random": lambda: RandomPairSampler(37, seed=3),
        "length": lambda: LengthGroupedPairSampler(rng.integers(3, 40, size=37).tolist(), batch_size=5, seed=3),
        "cluster": lambda: ClusterPairSampler(rng.integers(0, 6, size=37).tolist(), per_cluster=3, seed=3),
    }
    main = factories[inner]()
    inner_order = list(main)
    sampler = MixedBatchSampler(main, plan, seed=3)
    batches = _batches(sampler, 10)
    assert len(batches) == 8 and len(sampler) == 80
    for batch in batches:
        _assert_make_up(batch, plan)
    main_drawn = [r for batch in batches for r in batch[:5]]
    assert main_drawn == inner_order + inner_order[:3]  # one pass, the last batch completed from the start


def test_the_order_is_fixed_by_seed_and_epoch():
    plan = _plan(8, 20, (6, 0.25))
    first = list(MixedBatchSampler(RandomPairSampler(20, seed=5), plan, seed=5))
    assert list(MixedBatchSampler(RandomPairSampler(20, seed=5), plan, seed=5)) == first
    assert list(MixedBatchSampler(RandomPairSampler(20, seed=6), plan, seed=6)) != first
    sampler = MixedBatchSampler(RandomPairSampler(20, seed=5), plan, seed=5)
    sampler.set_epoch(1)
    assert sampler.main.epoch == 1  # the wrapped sampler follows the epoch
    second = list(sampler)
    assert second != first and {r for r in second if r < 20} == set(range(20))
    sampler.set_epoch(0)
    assert list(sampler) == first


def test_a_small_set_repeats_in_whole_permutations_rather_than_running_out():
    plan = _plan(10, 40, (3, 0.2))  # 2 per batch, 8 main: 5 batches draw 10 pairs of a 3-pair set
    batches = _batches(MixedBatchSampler(RandomPairSampler(40, seed=1), plan, seed=1), 10)
    drawn = [r for batch in batches for r in batch[8:]]
    assert len(drawn) == 10
    for p in range(3):  # each pass is a permutation of the set's rows
        assert sorted(drawn[3 * p : 3 * p + 3]) == [40, 41, 42]
    assert set(drawn[9:]) <= {40, 41, 42} and sorted(Counter(drawn).values()) == [3, 3, 4]
    others = {tuple(r for batch in _batches(MixedBatchSampler(RandomPairSampler(40, seed=s), plan, seed=s), 10)
                    for r in batch[8:]) for s in range(2, 7)}
    assert len(others | {tuple(drawn)}) > 1  # the permutations are seeded draws, not the stored order


@pytest.mark.parametrize("world", [2, 3])
def test_under_torchrun_each_rank_gets_whole_batches_of_the_one_stream(world):
    plan = _plan(10, 37, (5, 0.2), (50, 0.3))  # 8 batches an epoch
    sampler = MixedBatchSampler(RandomPairSampler(37, seed=2), plan, seed=2)
    stream = _batches(sampler, 10)
    ranks = [list(BatchSamplerShard(BatchSampler(sampler, 10, drop_last=False), num_processes=world, process_index=r))
             for r in range(world)]
    per_rank = math.ceil(8 / world)
    for r, batches in enumerate(ranks):
        assert len(batches) == per_rank
        for t, batch in enumerate(batches):
            _assert_make_up(batch, plan)
            # rank r reads batches r, r + W, ...; a last round is completed with whole batches from the start
            assert batch == stream[(t * world + r) % 8]
    assert plan.batches_trained(per_rank, 1, world) == per_rank * world


def test_batches_trained_follows_the_trainers_accumulation():
    plan = _plan(8, 40, (6, 0.25))  # 6 main per batch: 7 batches an epoch
    assert plan.batches_per_epoch == 7 and plan.epoch_pairs == 56
    assert [plan.batches_trained(s, 2, 1) for s in (1, 3, 4, 5, 8)] == [2, 6, 7, 9, 14]  # the 4th step takes one
    assert plan.batches_trained(4, 1, 2) == 8 and plan.batches_trained(5, 1, 2) == 10  # 4 a rank an epoch


def test_a_plan_that_does_not_match_the_layout_is_refused():
    with pytest.raises(TrainingError, match="set0 expected at rows 10"):
        MixPlan(8, 10, (MixSource("set0", 11, 4, 0.25),))
    with pytest.raises(TrainingError, match="orders 9 pairs, the plan has 10"):
        MixedBatchSampler(RandomPairSampler(9, seed=0), _plan(8, 10, (4, 0.25)), seed=0)


def test_main_rows_are_views_so_a_refresh_writes_reach_the_run():
    pairs = prepare_pairs(pair_dataset([("a b", "b a", 1, "1", "2"), ("c", "d", 0, "3", "4"), ("e", "f", 1, "5", "6")]))
    view = main_rows(pairs, 2)
    assert len(view) == 2 and view.texts is pairs.texts and view.text_labels is pairs.text_labels
    view.tid_b[np.array([1])] = 5
    assert pairs.tid_b.tolist() == [3, 5, 5]


# ----------------------------------------------------------------------------- a run


@pytest.fixture()
def fetched(monkeypatch):
    """Every training row the run's loader fetched, in order."""
    rows = []

    class Recording(run_module.PairRows):
        def __getitem__(self, i):
            rows.append(int(i))
            return super().__getitem__(i)

    monkeypatch.setattr(run_module, "PairRows", Recording)
    return rows



def _run_config(path, **changes):
    base = dict(train_file=str(DEMO_FILE), loss="contrastive", batch_size=8, gradient_accumulation_steps=2,
                learning_rate=1e-3, warmup_ratio=0.0, epochs=1.0, eval_steps=100, logging_steps=1, seed=7,
                zero_shot_eval=False, load_best_model_at_end=False, save_total_limit=1,
                mix_pairs=[{"file": str(path), "share": 0.25}])
    return TrainConfig(**{**base, **changes})


MIXED_ROWS = [("sell phone", "buy phone", 1), ("sell car", "buy car", 0), ("cook rice", "bake bread", 0),
              ("learn python", "learn java", 0), ("visit city", "travel city", 1), ("save money", "invest money", 1)]


def test_a_tiny_run_trains_on_mixed_batches_and_records_each_source(tiny_encoder, demo, tmp_path, fetched, trainers,
                                                                     caplog):
    main = demo.select(range(40))
    path = _write_pairs(tmp_path / "general.tsv", MIXED_ROWS)
    run = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="metric_sim.training"):
        result = train(_run_config(path), run, encoder=tiny_encoder, train_data=main, dev_data=main,
                       show_progress=False)
    # 8 = 6 main + 2 mixed; an epoch is ceil(40 / 6) = 7 batches, in ceil(7 / 2) = 4 steps (the last takes one)
    assert result.steps == 4
    assert "4 steps planned (4 per epoch)" in caplog.text
    assert f"each batch of 8 = 6 main + 2 {path}" in caplog.text
    assert len(fetched) == 56
    for start in range(0, 56, 8):
        batch = fetched[start : start + 8]
        assert sum(r < 40 for r in batch) == 6 and sum(40 <= r < 46 for r in batch) == 2
    main_counts = Counter(r for r in fetched if r < 40)
    assert set(main_counts) == set(range(40)) and sorted(main_counts.values()) == [1] * 38 + [2] * 2
    assert trainers[0].pairs_seen == 56

    saved = json.loads((run / TRAIN_CONFIG_FILE).read_text())
    assert saved["mix_pairs"] == [{"file": str(path), "share": 0.25}]
    assert saved["run"]["train_pairs"] == 46
    assert saved["run"]["mix_pairs"] == {
        "batch_size": 8, "batches_per_epoch": 7, "batches_trained": 7,
        "sources": [
            {"source": "main", "pairs_available": 40, "pairs_per_batch": 6, "share": 0.75, "batch_share": 0.75,
             "pairs_drawn": 42},
            {"source": str(path), "pairs_available": 6, "pairs_per_batch": 2, "share": 0.25, "batch_share": 0.25,
             "pairs_drawn": 14},
        ],
    }


def test_a_run_whose_mixed_set_holds_a_dev_text_stops_before_training(tiny_encoder, demo, tmp_path):
    train_part, dev_part = demo.select(range(40)), demo.select(range(40, 80))
    train_texts = set(train_part.texts_a) | set(train_part.texts_b)
    dev_only = sorted(t for t in set(dev_part.texts_a) | set(dev_part.texts_b)
                      if t not in train_texts and '"' not in t and "\t" not in t)[0]
    path = _write_pairs(tmp_path / "general.tsv", [*MIXED_ROWS, (dev_only, "buy phone", 0)])
    run = tmp_path / "run"
    with pytest.raises(TrainingError, match=r"mix_pairs\[0\] \(.*general\.tsv\): 1 texts appear in the dev split"):
        train(_run_config(path), run, encoder=tiny_encoder, train_data=train_part, dev_data=dev_part,
              show_progress=False)
    assert not (run / "checkpoints").exists() and not (run / TRAIN_CONFIG_FILE).exists()
