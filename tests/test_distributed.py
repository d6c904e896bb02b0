"""torchrun: cross-rank losses, 2-process training and sharded encoding, on CPU with gloo.

The oracle for every multi-process result is the single process doing the same work:
2 ranks x batch B must give the loss and gradients of 1 process x batch 2B, and the
sharded index must hold exactly the vectors of ``NeighborIndex.build``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket

import numpy as np
import pytest
import torch
import yaml
from torch.utils.data import BatchSampler
from transformers import TrainerCallback

from metric_sim.calibration import SimilarityModel
from metric_sim.data import load_pairs
from metric_sim.index import NeighborIndex
from metric_sim.losses import CrossRankLoss, build_loss, merge_batches
from metric_sim.sharded import (
    ShardError,
    build_index_sharded,
    encode_sharded,
    encode_shards,
    merge_shards,
    plan_shards,
)
from metric_sim.training import (
    ClusterPairSampler,
    LengthGroupedPairSampler,
    PairCollator,
    TrainConfig,
    prepare_pairs,
    train,
)
from tests.conftest import DEMO_FILE, build_tiny_encoder, torchrun

B = 8  # pairs per rank; the single-process oracle uses 2 * B


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def demo_texts(demo):
    return list(dict.fromkeys(demo.texts_a + demo.texts_b))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- batches across ranks


def test_merged_rank_batches_are_the_one_process_batch(tiny_encoder, demo):
    pairs = prepare_pairs(demo)
    collator = PairCollator(pairs, tokenizer=tiny_encoder.tokenizer, max_length=32)
    # Pairs sharing texts within and across the two halves (the first question of pair 0 is in both).
    rows = [{"tid_a": int(a), "tid_b": int(b), "label": int(y)}
            for a, b, y in zip(pairs.tid_a[:2 * B], pairs.tid_b[:2 * B], pairs.labels[:2 * B], strict=True)]
    rows[B + 1] = {"tid_a": rows[0]["tid_a"], "tid_b": rows[3]["tid_b"], "label": 0}
    rows[B + 2] = {"tid_a": rows[2]["tid_b"], "tid_b": rows[2]["tid_b"], "label": 1}  # a self-pair
    full = collator(rows)
    halves = [collator(rows[:B]), collator(rows[B:])]
    assert sum(len(h["text_ids"]) for h in halves) > len(full["text_ids"])  # some text is on both ranks
    merged = merge_batches(*([h[key] for h in halves] for key in ("text_ids", "idx_a", "idx_b", "pair_labels",
                                                                 "text_labels")))
    assert torch.equal(torch.cat([h["text_ids"] for h in halves])[merged.rows], full["text_ids"])
    for key in ("idx_a", "idx_b", "pair_labels", "text_labels"):
        assert torch.equal(getattr(merged, key), full[key]), key

    with pytest.raises(ValueError, match="different cluster labels"):
        merge_batches([torch.tensor([3]), torch.tensor([3])], [torch.tensor([0])] * 2, [torch.tensor([0])] * 2,
                      [torch.tensor([1])] * 2, [torch.tensor([0]), torch.tensor([1])])


def test_cross_rank_loss_is_the_plain_loss_in_one_process():
    loss = build_loss("online_contrastive", "euclidean", embedding_dim=4)
    emb = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    args = (torch.tensor([0, 1, 2, 3]), torch.tensor([4, 5, 1, 0]), torch.tensor([1, 0, 0, 1]), torch.arange(6))
    assert torch.equal(CrossRankLoss(loss)(emb, *args, torch.arange(6)).loss, loss(emb, *args).loss)


@pytest.mark.parametrize("kind", ["length", "cluster"])
def test_accelerate_gives_each_rank_half_of_the_one_process_batch(demo, kind):
    """accelerate's BatchSamplerShard (what the Trainer's DDP dataloader uses) over our samplers:
    rank batches are disjoint and, put side by side, are the batches of one process with 2B."""
    from accelerate.data_loader import BatchSamplerShard

    pairs = prepare_pairs(demo)

    def sampler():
        if kind == "length":
            return LengthGroupedPairSampler(np.arange(len(pairs)) % 13, 2 * B, seed=5)
        return ClusterPairSampler(pairs.text_labels[pairs.tid_a], 4, seed=5)

    one = [b for b in BatchSampler(sampler(), 2 * B, drop_last=False) if len(b) == 2 * B]
    ranks = [list(BatchSamplerShard(BatchSampler(sampler(), B, drop_last=False), 2, r)) for r in (0, 1)]
    for step, batch in enumerate(one):
        assert ranks[0][step] + ranks[1][step] == batch
        assert not set(ranks[0][step]) & set(ranks[1][step])


# ----------------------------------------------------------------------------- 2 ranks x B == 1 process x 2B


class _FirstGradients(TrainerCallback):
    """The gradients of the first optimiser step (after DDP's all-reduce, before the update)."""

    grads: dict[str, torch.Tensor] | None = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.grads is None:
            self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _parity_config(loss: str, batch_size: int) -> TrainConfig:
    return TrainConfig(train_file=str(DEMO_FILE), loss=loss, batch_size=batch_size, max_steps=1, eval_steps=1,
                       learning_rate=1e-3, warmup_ratio=0.0, max_grad_norm=1e9, zero_shot_eval=False,
                       load_best_model_at_end=False, save_total_limit=1, logging_steps=1, seed=11)


PARITY_LOSSES = ("online_contrastive", "multi_similarity")  # explicit pairs + hard mining; label-based


def _one_step(loss: str, batch_size: int, out_dir, demo_subset) -> tuple[float, dict[str, torch.Tensor]]:
    """The real train() for one step; returns the first batch's loss and the step's gradients."""
    losses: list[float] = []
    original = CrossRankLoss.forward

    def recording(module, *args, **kwargs):
        result = original(module, *args, **kwargs)
        losses.append(float(result.loss.detach()))
        return result

    grads = _FirstGradients()
    CrossRankLoss.forward = recording
    try:
        train(_parity_config(loss, batch_size), out_dir, encoder=build_tiny_encoder(), train_data=demo_subset,
              dev_data=demo_subset, show_progress=False, callbacks=[grads])
    finally:
        CrossRankLoss.forward = original
    return losses[0], grads.grads


def _parity_worker(rank: int, port: int, out: str) -> None:
    """One torchrun-like rank: the env vars torchrun sets, then the real train() with batch B."""
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2",
                       "RANK": str(rank), "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": "2"})
    from metric_sim.distributed import closing_process_group

    torch.set_num_threads(1)
    demo = load_pairs(DEMO_FILE, text_a="question1", text_b="question2", label="is_duplicate").select(range(96))
    results = {}
    with closing_process_group():  # train() leaves the Trainer's gloo group open: close it before exit
        for loss in PARITY_LOSSES:
            results[loss] = _one_step(loss, B, os.path.join(out, f"run-{loss}"), demo)
        results["pml"] = _pml_wrapper_check()
    torch.save(results, os.path.join(out, f"rank{rank}.pt"))


def _pml_wrapper_check() -> tuple[float, float]:
    """Our gather + gradient scaling against pytorch-metric-learning's DistributedLossWrapper
    on a plain label-based loss with equal batch sizes (the case it supports)."""
    import torch.distributed as dist
    from pytorch_metric_learning.losses import MultiSimilarityLoss
    from pytorch_metric_learning.utils.distributed import DistributedLossWrapper

    from metric_sim.distances import pml_distance
    from metric_sim.distributed import all_gather_varlen, gather_rows

    rank = dist.get_rank()
    g = torch.Generator().manual_seed(100 + rank)
    emb = torch.randn(6, 5, generator=g)
    labels = torch.tensor([0, 0, 1, 1, 2, 3]) + 2 * rank  # clusters 2 and 3 span both ranks
    loss = MultiSimilarityLoss(distance=pml_distance("euclidean"))
    theirs = emb.clone().requires_grad_(True)
    value_theirs = DistributedLossWrapper(loss)(theirs, labels)
    value_theirs.backward()
    ours = emb.clone().requires_grad_(True)
    gathered, _ = gather_rows(ours, grad_scale=2.0)
    value_ours = loss(gathered, torch.cat(all_gather_varlen(labels)))
    value_ours.backward()
    # PML multiplies the value by the world size; we scale only the gradient.
    return float((value_theirs - 2 * value_ours).abs()), float((theirs.grad - ours.grad).abs().max())


def test_two_ranks_of_b_pairs_give_the_loss_and_gradients_of_one_process_of_2b(tmp_path, demo):
    import torch.multiprocessing as mp

    subset = demo.select(range(96))
    mp.spawn(_parity_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    for loss in PARITY_LOSSES:
        expected_loss, expected_grads = _one_step(loss, 2 * B, tmp_path / f"single-{loss}", subset)
        assert expected_loss > 0
        for rank, result in enumerate(ranks):
            got_loss, got_grads = result[loss]
            assert got_loss == pytest.approx(expected_loss, abs=1e-5), (loss, rank)
            assert got_grads.keys() == expected_grads.keys()
            worst = max(float((got_grads[k] - expected_grads[k]).abs().max()) for k in expected_grads)
            assert worst < 1e-5, (loss, rank, worst)
            assert max(float(expected_grads[k].abs().max()) for k in expected_grads) > 1e-3  # not all zero
    for rank, (value_gap, grad_gap) in enumerate(r["pml"] for r in ranks):
        assert value_gap < 1e-5 and grad_gap < 1e-6, rank


def test_torchrun_train_saves_one_model_matching_one_process(tmp_path, tiny_encoder):
    model_dir = tiny_encoder.save(tmp_path / "tiny-model")
    recipe = {"train_file": str(DEMO_FILE), "text_a": "question1", "text_b": "question2", "label": "is_duplicate",
              "model": str(model_dir), "max_length": 32, "loss": "online_contrastive", "batch_size": B,
              "learning_rate": 1e-3, "warmup_ratio": 0.0, "seed": 3, "max_steps": 6, "eval_steps": 3,
              "logging_steps": 2, "save_total_limit": 1}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    run = tmp_path / "run"
    done = torchrun("-m", "metric_sim", "train", "--config", str(path), "--out", str(run), "--no-progress", timeout=240)
    assert done.stdout.count("run folder:") == 1  # rank 0 reports
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "metrics.json", "model", "train_config.json"]
    assert not [p for p in run.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]  # no staging leftovers
    saved = json.loads((run / "train_config.json").read_text())
    assert saved["run"]["status"] == "finished" and saved["run"]["world_size"] == 2 and saved["run"]["steps"] == 6
    model = SimilarityModel.from_pretrained(run / "model")
    assert model.encoder.fingerprint() != tiny_encoder.fingerprint()  # trained

    # The oracle: one process with batch 2B takes the same batches and steps. Adam divides by
    # sqrt(v), so float noise on near-zero gradients moves weights by up to ~lr: compare the
    # trajectory (losses, dev AP) tightly and the weights loosely.
    from metric_sim.cli import main

    assert main(["train", "--config", str(path), "--out", str(tmp_path / "single"), "--no-progress",
                 "--set", f"batch_size={2 * B}"]) == 0
    histories = []
    for folder in (run, tmp_path / "single"):
        state = json.loads(next((folder / "checkpoints").glob("checkpoint-*/trainer_state.json")).read_text())
        histories.append([(h["step"], h.get("loss"), h.get("eval_average_precision")) for h in state["log_history"]
                          if "loss" in h or "eval_average_precision" in h])
    assert len(histories[0]) == len(histories[1]) == 5  # 3 logged losses, 2 evaluations
    for (step, loss, ap), (step1, loss1, ap1) in zip(*histories, strict=True):
        assert step == step1 and loss == pytest.approx(loss1, abs=2e-4) and ap == pytest.approx(ap1, abs=1e-6)
    single = SimilarityModel.from_pretrained(tmp_path / "single" / "model")
    texts = ["how do i learn python", "best way to cook rice", "what is the capital city of the country"]
    np.testing.assert_allclose(model.embed(texts), single.embed(texts), atol=1e-2)


# ----------------------------------------------------------------------------- sharded encoding


def test_torchrun_sharded_index_equals_single_process_build(tmp_path, demo_texts):
    encoder = build_tiny_encoder()
    model_dir = SimilarityModel(encoder, "manhattan").save(tmp_path / "model")
    corpus = tmp_path / "corpus.tsv"
    ids = [f"q{i}" for i in range(len(demo_texts))]
    corpus.write_text("id\ttext\n" + "".join(f"{i}\t{t}\n" for i, t in zip(ids, demo_texts, strict=True)))
    out = tmp_path / "idx"
    done = torchrun("-m", "metric_sim", "index", "build", "--model", str(model_dir), "--corpus", str(corpus),
                    "--id-column", "id", "--out", str(out), "--batch-size", "16", "--shard-size", "40", "--kind", "hnsw",
                    "--json", timeout=240)
    summary = json.loads(done.stdout[done.stdout.index("{"):])
    assert (summary["ranks"], summary["shards"], summary["items"]) == (2, 7, len(demo_texts))
    assert not (tmp_path / "idx.shards").exists()  # removed once the index is saved

    model = SimilarityModel.from_pretrained(model_dir)
    sharded = NeighborIndex.load(out, model=model)
    single = NeighborIndex.build(model, demo_texts, ids, kind="hnsw", batch_size=16)
    assert sharded.ids == single.ids and sharded.texts == single.texts
    assert np.array_equal(sharded.embeddings(), single.embeddings())  # bit for bit
    queries = demo_texts[:5] + ["how to cook rice"]
    for a, b in zip(sharded.search(queries, k=5), single.search(queries, k=5), strict=True):
        assert a.ids == b.ids and np.array_equal(a.distances, b.distances)


@pytest.fixture(scope="module")
def tiny_model():
    return SimilarityModel(build_tiny_encoder(), "euclidean")


def test_shard_plan_cuts_the_batches_of_a_single_encode_whatever_the_ranks(tmp_path, tiny_model, demo_texts):
    plan = plan_shards(tiny_model, demo_texts, batch_size=16, shard_size=40)
    assert plan.shard_size == 48 and plan.n_shards == 7  # rounded up to whole batches
    assert sorted(np.concatenate([plan.rows(k) for k in range(plan.n_shards)]).tolist()) == list(range(len(demo_texts)))
    lengths = [len(tiny_model.encoder.tokenizer(demo_texts[i])["input_ids"]) for i in plan.order]
    assert lengths == sorted(lengths, reverse=True)
    assert plan.owned_by(1, 3) == [1, 4]
    # Ranks 0 and 1 of 2, one after the other in this process, then the merge.
    for rank in (0, 1):
        encoded, reused = encode_shards(tiny_model, demo_texts, plan, tmp_path, rank=rank, world_size=2)
        assert (encoded, reused) == (plan.owned_by(rank, 2), [])
    np.testing.assert_array_equal(merge_shards(tmp_path, plan), tiny_model.embed(demo_texts, batch_size=16))


@pytest.mark.slow
def test_sharded_vectors_are_bit_identical_with_the_real_model(tmp_path, demo_texts):
    """The tiny model gives the same bits whatever the batch; all-MiniLM-L6-v2 does not (1 ulp),
    so this checks that shards cut exactly the batches of one encode."""
    model = SimilarityModel.from_pretrained("default")
    texts = demo_texts[:150]
    plan = plan_shards(model, texts, batch_size=16, shard_size=32)
    for rank in (0, 1):
        encode_shards(model, texts, plan, tmp_path, rank=rank, world_size=2)
    assert np.array_equal(merge_shards(tmp_path, plan), model.embed(texts, batch_size=16))


def test_resume_reencodes_only_missing_or_damaged_shards(tmp_path, tiny_model, demo_texts):
    work = tmp_path / "work"
    first = encode_sharded(tiny_model, demo_texts, work, batch_size=16, shard_size=40)
    assert first.encoded == list(range(7)) and first.reused == []
    (work / "shard-00001.npy").unlink()  # lost
    data = (work / "shard-00002.npy").read_bytes()
    (work / "shard-00002.npy").write_bytes(data[: len(data) // 2])  # killed while writing (non-atomic copy)
    (work / "shard-00004.json").unlink()  # the .npy landed, the manifest did not
    again = encode_sharded(tiny_model, demo_texts, work, batch_size=16, shard_size=40)
    assert again.encoded == [1, 2, 4] and again.reused == [0, 3, 5, 6]
    assert np.array_equal(again.embeddings, first.embeddings)

    built = build_index_sharded(tiny_model, demo_texts, None, tmp_path / "idx", work_dir=work, batch_size=16,
                                shard_size=40, keep_shards=True)
    assert built.encoding.encoded == [] and len(built.encoding.reused) == 7
    assert np.array_equal(NeighborIndex.load(tmp_path / "idx", model=tiny_model).embeddings(), first.embeddings)


def test_shards_of_another_corpus_model_or_plan_are_refused(tmp_path, tiny_model, demo_texts):
    work = tmp_path / "work"
    encode_sharded(tiny_model, demo_texts, work, batch_size=16, shard_size=40)
    changed = [*demo_texts[:-1], demo_texts[-1] + " really"]
    with pytest.raises(ShardError, match="another corpus, model or plan: corpus_fingerprint"):
        encode_sharded(tiny_model, changed, work, batch_size=16, shard_size=40)
    other = SimilarityModel(build_tiny_encoder(seed=1), "euclidean")
    with pytest.raises(ShardError, match="model_fingerprint"):
        encode_sharded(other, demo_texts, work, batch_size=16, shard_size=40)
    with pytest.raises(ShardError, match="batch_size 16 .now 32."):
        encode_sharded(tiny_model, demo_texts, work, batch_size=32, shard_size=40)
    # A shard copied in from another run: refused even though plan.json matches.
    elsewhere = tmp_path / "elsewhere"
    encode_sharded(other, demo_texts, elsewhere, batch_size=16, shard_size=40)
    shutil.copy(elsewhere / "shard-00003.json", work / "shard-00003.json")
    with pytest.raises(ShardError, match=r"shard-00003.json was made for another corpus, model or plan"):
        encode_sharded(tiny_model, demo_texts, work, batch_size=16, shard_size=40)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ShardError, match="has no plan.json: refusing"):
        encode_sharded(tiny_model, demo_texts, tmp_path / "busy", batch_size=16, shard_size=40)
    with pytest.raises(ValueError, match="must not be inside the index folder"):
        build_index_sharded(tiny_model, demo_texts, None, tmp_path / "idx", work_dir=tmp_path / "idx" / "w")


def test_cli_index_build_keeps_shards_and_resumes(tmp_path, tiny_model, demo_texts, capsys):
    from metric_sim.cli import main

    model_dir = tiny_model.save(tmp_path / "model")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(demo_texts) + "\n")
    args = ["index", "build", "--model", str(model_dir), "--corpus", str(corpus), "--out", str(tmp_path / "idx"),
            "--batch-size", "16", "--shard-size", "100", "--keep-shards", "--json"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert (first["shards"], first["shards_resumed"], first["ranks"]) == (3, 0, 1)
    assert (tmp_path / "idx.shards" / "plan.json").is_file()
    (tmp_path / "idx.shards" / "shard-00001.npy").unlink()
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["shards_resumed"] == 2
    assert main([*args[:-1], "--shard-size", "0"]) == 2
    assert "--shard-size must be a positive integer, got 0" in capsys.readouterr().err
    corpus.write_text("\n".join(demo_texts[::-1]) + "\n")
    assert main(args) == 2
    assert "holds shards of another corpus" in capsys.readouterr().err
