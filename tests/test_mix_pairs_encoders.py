"""``mix_pairs`` with every encoder kind (image, title+image product) and under torchrun.

The text run is in ``tests/test_mix_pairs.py``; these runs reuse its recording fixtures.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter

import numpy as np
import pytest
import yaml
from accelerate.data_loader import BatchSamplerShard
from PIL import Image
from torch.utils.data import BatchSampler

import metric_sim.training.run as run_module
from metric_sim.distances import Metric
from metric_sim.encoders.image import image_encoder_from_name
from metric_sim.encoders.multimodal import ProductEncoder, identity_fusion
from metric_sim.images import describe_record, record_id
from metric_sim.layout import TRAIN_CONFIG_FILE
from metric_sim.losses.loss import build_loss
from metric_sim.training import TrainConfig, prepare_pairs, train
from metric_sim.training.data import add_mix_pairs, load_mix_set, load_training_data
from metric_sim.training.mix_config import MixSource
from metric_sim.training.mixing import MixPlan
from tests import test_mix_pairs as text_mix
from tests.conftest import DEMO_FILE, logged_losses, pair_dataset, torchrun
from tests.test_mix_pairs import MIXED_ROWS, _write_pairs
from tests.test_robust_training import _faces

pytestmark = pytest.mark.usefixtures("one_torch_thread")

fetched = text_mix.fetched  # every training row the run's loader fetched, in order

TINY_PREPROCESS = {"size": 16, "resize": "squash", "mode": "L", "mean": 0.5, "std": 0.5}


def _small_cnn():
    return image_encoder_from_name("small-cnn", in_channels=1, widths=(4, 8), seed=0, preprocess=TINY_PREPROCESS)


def _general_images(root, people=3, shots=3):
    """Greyscale 20 x 20 pictures of ``people`` other identities, none of them in the faces' dev split."""
    paths = []
    for person in range(people):
        pattern = np.random.default_rng(500 + person).integers(0, 256, (5, 5))
        (root / f"g{person}").mkdir(parents=True, exist_ok=True)
        for shot in range(shots):
            noise = np.random.default_rng(9000 + 10 * person + shot).normal(0, 12, (20, 20))
            image = np.clip(np.kron(pattern, np.ones((4, 4))) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(image).save(root / f"g{person}" / f"{shot}.png")
            paths.append(f"g{person}/{shot}.png")
    return paths


def _image_config(mix_pairs, **changes):
    base = dict(train_file=str(DEMO_FILE), items="image", loss="contrastive", batch_size=8,
                gradient_accumulation_steps=2, learning_rate=1e-2, warmup_ratio=0.0, epochs=1.0, eval_steps=100,
                logging_steps=1, seed=7, zero_shot_eval=False, load_best_model_at_end=False, save_total_limit=1,
                normalize=True, loss_params={"pos_margin": 0.0, "neg_margin": 1.0}, mix_pairs=mix_pairs)
    return TrainConfig(**{**base, **changes})


def _assert_batches(rows, plan):
    """Each block of ``batch_size`` fetched rows holds main_per_batch main rows and k_i rows of set i."""
    size = plan.batch_size
    assert len(rows) % size == 0
    for start in range(0, len(rows), size):
        batch = rows[start : start + size]
        assert sum(0 <= r < plan.main_pairs for r in batch) == plan.main_per_batch, batch
        for source, k in zip(plan.sources, plan.per_batch, strict=True):
            assert sum(r in source.rows for r in batch) == k, (source.name, batch)


def _expected_record(plan, batches):
    return {
        "batch_size": plan.batch_size, "batches_per_epoch": plan.batches_per_epoch, "batches_trained": batches,
        "sources": [{"source": name, "pairs_available": available, "pairs_per_batch": k, "share": share,
                     "batch_share": k / plan.batch_size, "pairs_drawn": batches * k}
                    for name, available, k, share in [("main", plan.main_pairs, plan.main_per_batch,
                                                       1 - sum(s.share for s in plan.sources)),
                                                      *((s.name, s.pairs, k, s.share)
                                                        for s, k in zip(plan.sources, plan.per_batch,
                                                                        strict=True))]],
    }


# ----------------------------------------------------------------------------- images


def test_image_pairs_mixed_from_a_file_train_in_every_batch(tmp_path, fetched, trainers, caplog):
    train_pairs, dev_pairs = _faces(tmp_path / "faces")
    general = tmp_path / "general"
    paths = _general_images(general)
    # A pairs file of image paths relative to its folder, read as the config's items (image).
    rows = [(paths[0], paths[1], 1), (paths[3], paths[4], 1), (paths[6], paths[8], 1), (paths[0], paths[3], 0),
            (paths[4], paths[7], 0), (paths[2], paths[5], 0)]
    mixed = _write_pairs(general / "pairs.tsv", rows)
    config = _image_config([{"file": str(mixed), "share": 0.25}])
    loaded = load_mix_set(config, config.mix_pairs[0])
    assert loaded.texts_a == [str(general / a) for a, _, _ in rows]  # absolute locations, as the main images
    assert loaded.labels.tolist() == [1, 1, 1, 0, 0, 0]

    run = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="metric_sim.training"):
        result = train(config, run, encoder=_small_cnn(), train_data=train_pairs, dev_data=dev_pairs,
                       show_progress=False)
    main = len(train_pairs)
    plan = MixPlan(8, main, (MixSource(str(mixed), main, 6, 0.25),))
    assert plan.main_per_batch == 6 and plan.per_batch == (2,)
    # an epoch: ceil(main / 6) batches, 2 per optimiser step (the last step may take one)
    blocks = math.ceil(main / 6)
    steps = math.ceil(blocks / 2)
    assert f"{steps} steps planned ({steps} per epoch)" in caplog.text
    assert f"each batch of 8 = 6 main + 2 {mixed}" in caplog.text
    assert result.steps == steps == trainers[0].state.global_step
    assert len(fetched) == blocks * 8 == trainers[0].pairs_seen
    _assert_batches(fetched, plan)
    assert set(r for r in fetched if r < main) == set(range(main))
    assert set(r for r in fetched if r >= main) == set(range(main, main + 6))  # 2 * blocks > 6 draws: all seen
    items = trainers[0].train_dataset.pairs.items
    assert {items[trainers[0].train_dataset.pairs.tid_a[r]] for r in range(main, main + 6)} == set(loaded.texts_a)

    saved = json.loads((run / TRAIN_CONFIG_FILE).read_text())
    assert saved["mix_pairs"] == [{"file": str(mixed), "share": 0.25}]
    assert saved["run"]["train_pairs"] == main + 6
    assert saved["run"]["mix_pairs"] == _expected_record(plan, blocks)
    assert [s["source"] for s in saved["run"]["mix_pairs"]["sources"]] == ["main", str(mixed)]


def test_an_image_file_mixed_into_a_text_config_names_items_image(tmp_path):
    general = tmp_path / "general"
    paths = _general_images(general, people=1, shots=2)
    mixed = _write_pairs(general / "pairs.tsv", [(paths[0], paths[1], 1)])
    config = _image_config([{"file": str(mixed), "share": 0.25, "items": "image"}], items="text")
    assert load_mix_set(config, config.mix_pairs[0]).texts_a == [str(general / paths[0])]
    # Without the key the entry takes the config's items: the paths stay texts.
    plain = _image_config([{"file": str(mixed), "share": 0.25}], items="text")
    assert load_mix_set(plain, plain.mix_pairs[0]).texts_a == [paths[0]]


# ----------------------------------------------------------------------------- products


def _records(pairs, title):
    """``pairs`` (image locations) as title + image product records (canonical JSON, ids as a product file's)."""
    def record(location):
        return describe_record({"title": title(location), "image": location})

    a = [record(x) for x in pairs.texts_a]
    b = [record(x) for x in pairs.texts_b]
    return pair_dataset([(x, z, label, record_id(json.loads(x)), record_id(json.loads(z)))
                         for x, z, label in zip(a, b, pairs.labels.tolist(), strict=True)])


def test_product_records_mixed_from_a_file_train_in_every_batch(tiny_encoder, tmp_path, fetched, trainers,
                                                                   caplog):
    faces_train, faces_dev = _faces(tmp_path / "faces")
    words = {f"p{i}": w for i, w in enumerate(("dog", "cat", "car", "phone", "rice", "bread"))}

    def title(location):
        return f"photo of {words[os.path.basename(os.path.dirname(location))]}"

    train_pairs, dev_pairs = _records(faces_train, title), _records(faces_dev, title)
    general = tmp_path / "general"
    paths = [str(general / p) for p in _general_images(general)]
    titled = [describe_record({"title": t, "image": p}) for t, p in zip(
        ["sell phone", "buy phone", "sell phone", "bake bread", "cook bread", "bake bread", "learn java",
         "learn python", "learn java"], paths, strict=True)]
    title_only = describe_record({"title": "save money"})
    rows = [(titled[0], titled[1], 1), (titled[3], titled[4], 1), (titled[6], titled[8], 1),
            (titled[0], titled[3], 0), (titled[4], titled[7], 0), (title_only, titled[5], 0)]
    # A product pairs file holds each record as its JSON text (a string column): JSON Lines keeps its quotes intact.
    mixed = general / "pairs.jsonl"
    mixed.write_text("".join(json.dumps({"text_a": a, "text_b": b, "label": y}) + "\n" for a, b, y in rows),
                     encoding="utf-8")
    config = _image_config([{"file": str(mixed), "share": 0.25}], items="text", learning_rate=1e-3)
    loaded = load_mix_set(config, config.mix_pairs[0])
    assert loaded.texts_a == [a for a, _, _ in rows] and loaded.texts_b == [b for _, b, _ in rows]

    encoder = ProductEncoder(tiny_encoder, _small_cnn(), projection=identity_fusion(32 + 8))
    run = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="metric_sim.training"):
        result = train(config, run, encoder=encoder, train_data=train_pairs, dev_data=dev_pairs,
                       show_progress=False)
    main = len(train_pairs)
    plan = MixPlan(8, main, (MixSource(str(mixed), main, 6, 0.25),))
    blocks = math.ceil(main / 6)
    steps = math.ceil(blocks / 2)
    assert f"{steps} steps planned ({steps} per epoch)" in caplog.text
    assert result.steps == steps == trainers[0].state.global_step
    assert len(fetched) == blocks * 8 == trainers[0].pairs_seen
    _assert_batches(fetched, plan)
    pairs = trainers[0].train_dataset.pairs
    assert [pairs.items[pairs.tid_a[r]] for r in range(main, main + 6)] == loaded.texts_a
    assert result.model.encoder.kind == "multimodal"

    saved = json.loads((run / TRAIN_CONFIG_FILE).read_text())
    assert saved["mix_pairs"] == [{"file": str(mixed), "share": 0.25}]
    assert saved["run"]["train_pairs"] == main + 6
    assert saved["run"]["mix_pairs"] == _expected_record(plan, blocks)


# ----------------------------------------------------------------------------- torchrun


def _rank_batches(config, world):
    """The rows each rank reads at each step of epoch 0, built as the run builds its sampler."""
    train_data, dev_data = load_training_data(config)
    main = len(train_data)
    mixed, sources = add_mix_pairs(config, train_data, dev_data)
    pairs = prepare_pairs(mixed)
    mix = MixPlan(config.batch_size, main, sources)
    encoder = run_module.starting_encoder(config)
    loss = build_loss(config.loss, Metric.parse(config.metric), embedding_dim=encoder.embedding_dim,
                      params=config.loss_params)
    plan = run_module._batch_plan(config, loss, encoder, pairs, world, mix)
    batches = BatchSampler(plan.make_sampler(), config.batch_size, drop_last=False)
    return mix, plan, [list(BatchSamplerShard(batches, num_processes=world, process_index=r)) for r in range(world)]


def test_torchrun_with_mixed_pairs_follows_one_process(tiny_encoder, tmp_path):
    """2 ranks of 8 pairs (6 main + 2 mixed each) take the steps of 1 process of 16 (12 + 4).

    The rows differ per rank, but the mixed stream is one seeded sequence and the main order
    is grouped by the pairs of a whole step, so the two ranks' batches of step t together are
    the one process's batch t: the cross-rank loss then sees the same pairs."""
    model_dir = tiny_encoder.save(tmp_path / "tiny-model")
    mixed = _write_pairs(tmp_path / "general.tsv", MIXED_ROWS, header=("s1", "s2", "y"))
    recipe = {"train_file": str(DEMO_FILE), "text_a": "question1", "text_b": "question2", "label": "is_duplicate",
              "model": str(model_dir), "max_length": 32, "loss": "contrastive", "batch_size": 8,
              "learning_rate": 1e-3, "warmup_ratio": 0.0, "seed": 3, "max_steps": 4, "eval_steps": 4,
              "logging_steps": 1, "save_total_limit": 1, "zero_shot_eval": False,
              "mix_pairs": [{"file": str(mixed), "share": 0.25, "text_a": "s1", "text_b": "s2", "label": "y"}]}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))

    # The equality the losses rest on, in-process: per step, the union of the ranks' rows is the one-process batch.
    ddp_mix, ddp_plan, ranks = _rank_batches(TrainConfig.from_yaml(path), 2)
    one_mix, one_plan, (single,) = _rank_batches(TrainConfig.from_yaml(path, {"batch_size": 16}), 1)
    assert (ddp_mix.main_per_batch, ddp_mix.per_batch, one_mix.main_per_batch, one_mix.per_batch) == (6, (2,), 12, (4,))
    assert ddp_plan.steps_per_epoch == one_plan.steps_per_epoch >= 4
    full_rounds = ddp_mix.batches_per_epoch // 2  # a last odd batch is completed from the start by accelerate
    assert full_rounds >= 4
    for t in range(full_rounds):
        for rank in ranks:
            _assert_batches(rank[t], ddp_mix)
        assert Counter(ranks[0][t] + ranks[1][t]) == Counter(single[t]), t

    torchrun("-m", "metric_sim", "train", "--config", str(path), "--out", str(tmp_path / "ddp"), "--no-progress")
    from metric_sim.cli import main as cli_main

    assert cli_main(["train", "--config", str(path), "--out", str(tmp_path / "single"), "--no-progress",
                     "--set", "batch_size=16"]) == 0
    histories, records = [], []
    for folder in (tmp_path / "ddp", tmp_path / "single"):
        histories.append([(h["step"], h["loss"]) for h in logged_losses(folder)])
        records.append(json.loads((folder / TRAIN_CONFIG_FILE).read_text())["run"])
    assert [step for step, _ in histories[0]] == [1, 2, 3, 4]
    for (step, loss), (step1, loss1) in zip(*histories, strict=True):
        assert step == step1 and loss == pytest.approx(loss1, abs=2e-4), (histories, step)
    ddp, one = records
    assert ddp["world_size"] == 2 and ddp["steps"] == one["steps"] == 4
    # 4 steps: 8 batches of 8 over the two ranks, 4 batches of 16 in one process; the same pairs drawn.
    assert ddp["mix_pairs"] == _expected_record(ddp_mix, 8)
    assert one["mix_pairs"] == _expected_record(one_mix, 4)
    assert [s["pairs_drawn"] for s in ddp["mix_pairs"]["sources"]] == \
        [s["pairs_drawn"] for s in one["mix_pairs"]["sources"]] == [48, 16]
    assert [s["source"] for s in ddp["mix_pairs"]["sources"]] == ["main", str(mixed)]
