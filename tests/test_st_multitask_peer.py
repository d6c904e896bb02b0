"""The sentence-transformers multi-task peer of quality.py (``st_multitask``): its Quora recipe of
OnlineContrastiveLoss on every pair + MNRL on the duplicates in both orders, alternating batches.

The datasets and losses are checked against the labelled pairs they come from; one tiny real
training run checks that sentence-transformers' trainer takes them and that the record and the
saved model are what the quality harness reads.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import fair_peers  # noqa: E402
import quality  # noqa: E402
import quality_st  # noqa: E402

from metric_sim import Encoder  # noqa: E402
from tests.conftest import build_tiny_encoder, pair_dataset  # noqa: E402

st = pytest.importorskip("sentence_transformers")

PAIRS = pair_dataset([("how to cook rice", "how do i cook rice", 1, "a1", "b1"),
                      ("what is a cat", "what is a dog", 0, "a2", "b2"),
                      ("who wrote it", "who is the author", 1, "a3", "b3"),
                      ("how do plants grow", "how do plants grow fast", 0, "a4", "b4")])


def _losses_module():
    try:
        from sentence_transformers.sentence_transformer import losses
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers import losses
    return losses


def _no_weights_model():
    try:
        from sentence_transformers.sentence_transformer.modules import Pooling
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers.models import Pooling
    return st.SentenceTransformer(modules=[Pooling(8)], device="cpu")  # the losses only hold it


def test_multitask_datasets_hold_every_pair_and_the_duplicates_in_both_orders():
    data, loss, samplers = quality_st.st_training_data(_no_weights_model(), "multitask", PAIRS)
    assert set(data) == set(loss) == {"pairs", "duplicates"}
    pairs = data["pairs"]
    assert pairs["sentence1"] == PAIRS.texts_a and pairs["sentence2"] == PAIRS.texts_b
    assert pairs["label"] == [1, 0, 1, 0]
    dup = data["duplicates"]
    expected = {("how to cook rice", "how do i cook rice"), ("how do i cook rice", "how to cook rice"),
                ("who wrote it", "who is the author"), ("who is the author", "who wrote it")}
    assert len(dup) == 4 and set(zip(dup["anchor"], dup["positive"], strict=True)) == expected  # never a non-duplicate
    assert str(samplers["multi_dataset_batch_sampler"].value) == "round_robin"
    assert str(samplers["batch_sampler"].value) == "no_duplicates"


def test_multitask_losses_scale_the_contrastive_margin_only():
    losses = _losses_module()
    model = _no_weights_model()
    default = quality.st_loss(model, "multitask")
    assert isinstance(default["pairs"], losses.OnlineContrastiveLoss) and default["pairs"].margin == 0.5
    assert isinstance(default["duplicates"], losses.MultipleNegativesRankingLoss) and default["duplicates"].scale == 20.0
    scaled = quality.st_loss(model, "multitask", 1.5)
    assert scaled["pairs"].margin == pytest.approx(0.75) and scaled["duplicates"].scale == 20.0
    assert fair_peers.st_margin("multitask", 1.5) == {"margin": 0.75}


def test_single_task_rows_keep_their_datasets():
    model = _no_weights_model()
    data, _, samplers = quality_st.st_training_data(model, "mnrl", PAIRS)
    assert list(zip(data["anchor"], data["positive"], strict=True)) == [("how to cook rice", "how do i cook rice"),
                                                            ("who wrote it", "who is the author")]
    assert "multi_dataset_batch_sampler" not in samplers
    data, _, samplers = quality_st.st_training_data(model, "online_contrastive", PAIRS)
    assert len(data) == 4 and str(samplers["batch_sampler"].value) == "batch_sampler"
    with pytest.raises(ValueError, match="mined"):
        quality_st.st_training_data(model, "mnrl_hn", PAIRS)


def test_cosent_peer_reads_every_pair_with_its_label_as_a_float_score():
    data, loss, samplers = quality_st.st_training_data(_no_weights_model(), "cosent", PAIRS)
    assert isinstance(loss, _losses_module().CoSENTLoss)
    assert data["sentence1"] == PAIRS.texts_a and data["sentence2"] == PAIRS.texts_b
    assert data["score"] == [1.0, 0.0, 1.0, 0.0] and str(samplers["batch_sampler"].value) == "batch_sampler"


def test_multitask_peer_trains_with_sentence_transformers_own_trainer(tmp_path, demo):
    base = tmp_path / "tiny"
    tiny = build_tiny_encoder()
    tiny.save(base)
    train, dev = demo.select(np.arange(64)), demo.select(np.arange(64, 96))
    info = quality.train_sentence_transformers("multitask", train, tmp_path / "run", steps=4, batch_size=8,
                                               max_length=16, seed=0, learning_rate=1e-3, dev=dev, eval_steps=2,
                                               model_path=base)
    duplicates = int(train.labels.sum())
    assert info["loss"] == "multitask" and info["train_rows"] == len(train) + 2 * duplicates
    assert info["margin"] == {"margin": 0.5} and [step for step, _ in info["dev_curve"]] == [2, 4]
    assert json.loads((tmp_path / "run" / "st_train.json").read_text())["dev_ap"] == info["dev_ap"]
    trained = Encoder.from_pretrained(tmp_path / "run" / "model", max_length=16)
    texts = train.texts_a[:4]
    before, after = tiny.encode(texts), trained.encode(texts)
    assert after.shape == before.shape and not np.allclose(before, after, atol=1e-4)  # the weights moved


@pytest.mark.parametrize("schedule", ["constant", "linear"])
def test_the_peer_trains_with_the_schedule_it_is_given(tmp_path, demo, schedule):
    from transformers import TrainerCallback

    class RecordLearningRate(TrainerCallback):
        def __init__(self) -> None:
            self.rates: list[float] = []

        def on_step_end(self, args, state, control, lr_scheduler=None, **kwargs):
            self.rates.append(lr_scheduler.get_last_lr()[0])

    base = tmp_path / "tiny"
    build_tiny_encoder().save(base)
    record = RecordLearningRate()
    info = quality.train_sentence_transformers("online_contrastive", demo.select(np.arange(64)), tmp_path / "run",
                                               steps=6, batch_size=8, max_length=16, seed=0, learning_rate=1e-3,
                                               model_path=base, lr_scheduler=schedule, callbacks=[record])
    assert info["lr_scheduler"] == schedule and len(record.rates) == 6
    if schedule == "constant":
        assert record.rates == [pytest.approx(1e-3)] * 6
    else:  # warmup, then down to 0 at the last step
        assert max(record.rates) == pytest.approx(1e-3) and record.rates[-1] == pytest.approx(0.0)
