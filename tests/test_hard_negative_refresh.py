"""``hard_negatives.refresh_steps``: mined negatives re-mined during training with the encoder being trained.

The oracle for every refresh is :func:`mine_hard_negatives` called directly, with the same
options, on a copy of the encoder's weights taken at the refresh step.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from transformers import TrainerCallback

import metric_sim.training.refresh as refresh_module
from metric_sim.errors import ConfigError
from metric_sim.layout import (
    HARD_NEGATIVES_FILE,
    HARD_NEGATIVES_REFRESHED_FILE,
    METRICS_FILE,
    TRAIN_CONFIG_FILE,
)
from metric_sim.mining import MinedNegatives, mine_hard_negatives
from metric_sim.model import SimilarityModel
from metric_sim.training import TrainConfig, parse_overrides, train
from metric_sim.training.batches import PairRows
from metric_sim.training.config import check_hard_negatives
from metric_sim.training.refresh import fill_slots
from tests.conftest import DEMO_FILE, build_tiny_encoder

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NUM_NEGATIVES = 2
SEED = 7
EVAL_BATCH = 64


@pytest.fixture(scope="module")
def small(demo):
    return demo.select(range(64))


def _config(**changes):
    base = dict(train_file=str(DEMO_FILE), loss="contrastive", batch_size=16, learning_rate=1e-2, warmup_ratio=0.0,
                max_steps=6, eval_steps=6, logging_steps=1, seed=SEED, zero_shot_eval=False,
                eval_batch_size=EVAL_BATCH,
                hard_negatives={"mine": True, "num_negatives": NUM_NEGATIVES, "refresh_steps": 2})
    return TrainConfig(**{**base, **changes})


def _oracle(encoder, pairs):
    """Mining called directly on a frozen copy of the encoder's current weights."""
    frozen = copy.deepcopy(encoder).eval()
    return mine_hard_negatives(SimilarityModel(frozen, "euclidean"), pairs, num_negatives=NUM_NEGATIVES, seed=SEED,
                               batch_size=EVAL_BATCH)


def _text_pairs(mined):
    return list(zip(mined.anchor_texts, mined.negative_texts, strict=True))


class Watch(TrainerCallback):
    """Runs after the refresh callback: at each refresh step, mines the oracle and keeps what the slots hold."""

    def __init__(self, train_pairs, every):
        self.train_pairs = train_pairs
        self.every = every
        self.stage = 0  # the step of the last refresh seen (0: the first mining)
        self.oracles = {}
        self.slots = {}
        self.pairs = None
        self.training_after = []

    def _keep(self, step, model):
        self.oracles[step] = _oracle(model, self.train_pairs)
        rows = np.arange(len(self.train_pairs), len(self.pairs))
        self.slots[step] = [(self.pairs.texts[a], self.pairs.texts[b])
                            for a, b in zip(self.pairs.tid_a[rows].tolist(), self.pairs.tid_b[rows].tolist(),
                                            strict=True)]
        self.stage = step

    def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kwargs):
        self.pairs = train_dataloader.dataset.pairs
        if state.global_step > 0:  # resumed: the refresh callback mined already
            self._keep(state.global_step, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.training_after.append(model.training)
        if state.global_step % self.every == 0 and state.global_step < state.max_steps:
            self._keep(state.global_step, model)


class Fetches:
    """Every row the loader fetches: (the watcher's stage at fetch time, row, tid_a, tid_b)."""

    def __init__(self):
        self.watch = None
        self.seen = []


@pytest.fixture()
def fetches(monkeypatch):
    recorder = Fetches()
    original = PairRows.__getitem__

    def recording(self, i):
        row = original(self, i)
        stage = recorder.watch.stage if recorder.watch is not None else 0
        recorder.seen.append((stage, int(i), row["tid_a"], row["tid_b"]))
        return row

    monkeypatch.setattr(PairRows, "__getitem__", recording)
    return recorder


def _clusters(pairs):
    """Union-find over texts: labelled positives joined transitively (identical texts are one node)."""
    parent = {}

    def find(x):
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b, y in zip(pairs.texts_a, pairs.texts_b, pairs.labels.tolist(), strict=True):
        find(a), find(b)
        if y == 1:
            parent[find(a)] = find(b)
    return find


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "block, message",
    [
        ({"mine": True, "refresh_steps": 0}, r"hard_negatives\.refresh_steps must be a positive integer, got 0"),
        ({"mine": True, "refresh_steps": -3}, r"hard_negatives\.refresh_steps .*got -3"),
        ({"mine": True, "refresh_steps": 2.5}, r"hard_negatives\.refresh_steps .*got 2\.5"),
        ({"mine": True, "refresh_steps": "10"}, r"hard_negatives\.refresh_steps .*got '10'"),
        ({"mine": True, "refresh_steps": True}, r"hard_negatives\.refresh_steps .*got True"),
        ({"file": "neg.tsv", "refresh_steps": 5}, r"hard_negatives\.refresh_steps=5 applies only with mine: true"),
        ({"mine": False, "refresh_steps": 5}, r"hard_negatives\.refresh_steps=5 applies only with mine: true"),
        ({"refresh_steps": 5}, r"hard_negatives\.refresh_steps=5 applies only with mine: true"),
        ({"mine": True, "refresh": 5}, r"hard_negatives\.refresh\b"),
    ],
)
def test_bad_refresh_steps_raise_config_errors_naming_the_key_and_value(block, message):
    with pytest.raises(ConfigError, match=message):
        _config(hard_negatives=block)


@pytest.mark.parametrize("changes, other", [({"freeze_encoder": True}, "freeze_encoder"),
                                            ({"dataloader_num_workers": 2}, "dataloader_num_workers")])
def test_refresh_is_refused_where_it_could_not_change_what_is_served(changes, other):
    with pytest.raises(ConfigError, match=rf"hard_negatives\.refresh_steps=3 needs {other}"):
        _config(hard_negatives={"mine": True, "refresh_steps": 3}, **changes)
    _config(hard_negatives={"mine": True}, **changes)  # without a refresh both are fine


def test_refresh_steps_is_optional_and_not_a_mining_option(tmp_path):
    plain = {"mine": True, "num_negatives": 2}
    for value in (None, 4):
        config = _config(hard_negatives={**plain, "refresh_steps": value})
        assert TrainConfig.from_dict(config.to_dict()) == config
        assert check_hard_negatives(config.hard_negatives, "euclidean", SEED) == check_hard_negatives(
            plain, "euclidean", SEED)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"train_file: {DEMO_FILE}\nhard_negatives:\n  mine: true\n")
    assert TrainConfig.from_yaml(recipe, parse_overrides(["hard_negatives.refresh_steps=50"])).hard_negatives == {
        "mine": True, "refresh_steps": 50}
    with pytest.raises(ConfigError, match=rf"{recipe} with --set .*hard_negatives\.refresh_steps.*got 0"):
        TrainConfig.from_yaml(recipe, parse_overrides(["hard_negatives.refresh_steps=0"]))


# ----------------------------------------------------------------------------- slot filling


def test_fill_slots_follows_its_rule_exactly():
    # slots: anchor 1 has 3 slots, anchor 2 has 1, anchor 3 has 2
    anchors = np.array([1, 1, 1, 2, 3, 3])
    current = np.array([10, 11, 12, 20, 30, 31])
    # new: anchor 1 gets only 2 negatives, anchor 2 gets 3 (2 unused), anchor 3 none, anchor 4 (no slot) one
    new_a = np.array([1, 1, 2, 2, 2, 4])
    new_n = np.array([13, 10, 21, 22, 23, 40])
    filled, counts = fill_slots(anchors, current, new_a, new_n)
    np.testing.assert_array_equal(filled, [13, 10, 12, 21, 30, 31])
    assert counts == {"changed": 3, "kept": 3, "unused": 3}
    np.testing.assert_array_equal(current, [10, 11, 12, 20, 30, 31])  # the input is not modified


# ----------------------------------------------------------------------------- training


def test_refreshes_record_and_serve_the_negatives_mined_with_the_weights_of_their_step(
        tiny_encoder, small, tmp_path, fetches, monkeypatch):
    calls = []
    real = refresh_module.mine_train_negatives

    def spying(config, pairs, encoder):
        calls.append((encoder.training, torch.is_grad_enabled(), len(pairs)))
        return real(config, pairs, encoder)

    monkeypatch.setattr(refresh_module, "mine_train_negatives", spying)
    watch = fetches.watch = Watch(small, every=2)
    run = tmp_path / "run"
    train(_config(), run, encoder=tiny_encoder, train_data=small, dev_data=small, show_progress=False,
          callbacks=[watch])

    first = MinedNegatives.load(run / HARD_NEGATIVES_FILE)
    assert sorted(watch.oracles) == [2, 4]  # none after the last step (6)
    record = json.loads((run / TRAIN_CONFIG_FILE).read_text())["run"]["hard_negatives"]
    assert json.loads((run / METRICS_FILE).read_text())["hard_negatives"] == record
    assert [r["step"] for r in record["refreshes"]] == [2, 4]
    assert calls == [(False, False, len(small))] * 2  # eval mode, no gradient, the train split alone
    assert all(watch.training_after)  # back to train mode after each refresh
    sets = {0: _text_pairs(first), **{step: _text_pairs(m) for step, m in watch.oracles.items()}}
    previous = sets[0]
    for entry in record["refreshes"]:
        oracle = watch.oracles[entry["step"]]
        # every anchor got all its negatives, so the fill is slot j <- mined pair j
        assert oracle.counts["short_anchors"] == 0 and len(oracle) == len(first)
        assert entry["count"] == len(oracle) and entry["seconds"] >= 0
        assert entry["kept"] == entry["unused"] == 0
        assert entry["changed"] == sum(a != b for a, b in zip(previous, sets[entry["step"]], strict=True))
        assert watch.slots[entry["step"]] == sets[entry["step"]]
        previous = sets[entry["step"]]
    assert sets[2] != sets[0] and sets[4] != sets[2]  # training moved the negatives: the swap is visible

    # What the loader served: every mined row fetched after a refresh holds that refresh's pair.
    served = {0: 0, 2: 0, 4: 0}
    pairs = watch.pairs
    for stage, row, tid_a, tid_b in fetches.seen:
        if row >= len(small):
            assert (pairs.texts[tid_a], pairs.texts[tid_b]) == sets[stage][row - len(small)], (stage, row)
            served[stage] += 1
    assert served[2] > 0 and served[4] > 0, served

    saved = MinedNegatives.load(run / HARD_NEGATIVES_REFRESHED_FILE)
    last = watch.oracles[4]
    assert saved.anchor_ids == last.anchor_ids and saved.negative_ids == last.negative_ids
    np.testing.assert_array_equal(saved.distances, last.distances)
    assert saved.model_fingerprint == last.model_fingerprint != first.model_fingerprint


def test_refreshed_negatives_are_never_positives_or_cluster_members(tiny_encoder, demo, tmp_path, fetches):
    data = demo.select(range(96))
    watch = fetches.watch = Watch(data, every=2)
    # range_min 0 and 3 negatives: the nearest items, where known duplicates sit
    config = _config(hard_negatives={"mine": True, "num_negatives": 3, "refresh_steps": 2}, max_steps=5)
    train(config, tmp_path / "run", encoder=tiny_encoder, train_data=data, dev_data=data, show_progress=False,
          callbacks=[watch])
    assert sorted(watch.slots) == [2, 4]
    cluster = _clusters(data)
    positives = {frozenset((a, b)) for a, b, y in zip(data.texts_a, data.texts_b, data.labels.tolist(), strict=True)
                 if y == 1}
    sizes = {}
    for text in set(data.texts_a) | set(data.texts_b):
        sizes[cluster(text)] = sizes.get(cluster(text), 0) + 1
    assert max(sizes.values()) >= 3  # clusters reach beyond the labelled pairs: members that are not positives
    for step, slots in watch.slots.items():
        assert slots, step
        for anchor, negative in slots:
            assert frozenset((anchor, negative)) not in positives, (step, anchor, negative)
            assert cluster(anchor) != cluster(negative), (step, anchor, negative)


def test_a_resumed_run_mines_at_once_with_the_checkpoint_weights(tiny_encoder, small, tmp_path):
    class StopAt3(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                control.should_training_stop = True

    run = tmp_path / "run"
    config = _config(eval_steps=2, save_total_limit=None)
    train(config, run, encoder=tiny_encoder, train_data=small, dev_data=small, show_progress=False,
          callbacks=[StopAt3()])
    at_step_2 = MinedNegatives.load(run / HARD_NEGATIVES_REFRESHED_FILE)  # mined after step 2, then saved at 2
    assert [r["step"] for r in json.loads((run / METRICS_FILE).read_text())["hard_negatives"]["refreshes"]] == [2]

    watch = Watch(small, every=2)
    train(None, run, resume=True, encoder=build_tiny_encoder(), train_data=small, dev_data=small,
          show_progress=False, callbacks=[watch])
    refreshes = json.loads((run / METRICS_FILE).read_text())["hard_negatives"]["refreshes"]
    assert [(r["step"], r.get("resumed", False)) for r in refreshes] == [(2, True), (4, False)]
    # the checkpoint holds the weights of step 2: the same negatives, pair for pair
    assert watch.slots[2] == _text_pairs(at_step_2) == _text_pairs(watch.oracles[2])
    assert watch.slots[4] == _text_pairs(watch.oracles[4])


# ----------------------------------------------------------------------------- torchrun


class SlotsAt(TrainerCallback):
    def __init__(self, path):
        self.path = path

    def on_step_end(self, args, state, control, train_dataloader=None, **kwargs):
        if state.global_step == 2:
            pairs = train_dataloader.dataset.pairs
            torch.save((pairs.tid_a.copy(), pairs.tid_b.copy(), list(pairs.texts)), self.path)


def _refresh_worker(rank: int, port: int, out: str) -> None:
    """One torchrun-like rank (the env vars torchrun sets) training with a refresh at step 2."""
    import os

    from metric_sim.data import load_pairs
    from metric_sim.distributed import closing_process_group

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2",
                       "RANK": str(rank), "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": "2"})
    torch.set_num_threads(1)
    data = load_pairs(DEMO_FILE, text_a="question1", text_b="question2", label="is_duplicate").select(range(64))
    # train() leaves the Trainer's gloo group open; left to interpreter exit, a rank can abort after its work is done
    with closing_process_group():
        train(_config(batch_size=8, max_steps=3, eval_steps=3), os.path.join(out, "run"),
              encoder=build_tiny_encoder(), train_data=data, dev_data=data, show_progress=False,
              callbacks=[SlotsAt(os.path.join(out, f"rank{rank}.pt"))])


def test_under_two_ranks_rank_0_mines_and_every_rank_serves_its_negatives(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_refresh_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    saved = MinedNegatives.load(tmp_path / "run" / HARD_NEGATIVES_REFRESHED_FILE)
    record = json.loads((tmp_path / "run" / METRICS_FILE).read_text())["hard_negatives"]
    assert [r["step"] for r in record["refreshes"]] == [2]
    assert _text_pairs(saved) != _text_pairs(MinedNegatives.load(tmp_path / "run" / HARD_NEGATIVES_FILE))
    for tid_a, tid_b, texts in ranks:
        first_slot = len(tid_a) - len(saved)
        slots = [(texts[a], texts[b]) for a, b in zip(tid_a[first_slot:].tolist(), tid_b[first_slot:].tolist(),
                                                      strict=True)]
        assert slots == _text_pairs(saved)
