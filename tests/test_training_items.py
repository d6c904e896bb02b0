"""Training through the encoder contract only: non-text items (float vectors, tests/toy_encoder.py),
and the one cluster rule as prepare_pairs applies it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from metric_sim.clusters import UnionFind, cluster_ids
from metric_sim.items import item_id
from metric_sim.model import SimilarityModel
from metric_sim.training import PairCollator, TrainConfig, prepare_pairs, train
from tests.conftest import DEMO_FILE, pair_dataset
from tests.toy_encoder import ToyVectorEncoder, toy_items


class VectorPairs:
    """The part of :class:`~metric_sim.data.PairDataset` that training reads, over vector items."""

    def __init__(self, items_a: list[np.ndarray], items_b: list[np.ndarray], labels: list[int]) -> None:
        self.texts_a, self.texts_b = list(items_a), list(items_b)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.ids_a = [item_id(x) for x in self.texts_a]
        self.ids_b = [item_id(x) for x in self.texts_b]

    def __len__(self) -> int:
        return len(self.labels)

    def pair_cluster_labels(self) -> tuple[np.ndarray, np.ndarray]:
        clusters = cluster_ids(self.ids_a, self.ids_b, self.labels.tolist(), self.texts_a, self.texts_b)
        return (np.array([clusters[i] for i in self.ids_a], dtype=np.int64),
                np.array([clusters[i] for i in self.ids_b], dtype=np.int64))

    def summary(self) -> dict:
        return {"pairs": len(self), "positives": int(self.labels.sum())}


def _vector_pairs(n_items: int = 48, seed: int = 0) -> VectorPairs:
    """Pairs of toy vectors: same group (index mod the number of centres) -> similar."""
    items = toy_items(n_items, seed=seed)
    groups = max(2, n_items // 4)
    rng = np.random.default_rng(seed)
    a, b, labels = [], [], []
    for i in range(n_items):
        same = [j for j in range(n_items) if j != i and j % groups == i % groups]
        other = [j for j in range(n_items) if j % groups != i % groups]
        for j, label in ((int(rng.choice(same)), 1), (int(rng.choice(other)), 0)):
            a.append(items[i])
            b.append(items[j])
            labels.append(label)
    return VectorPairs(a, b, labels)


def _toy_config(**changes) -> TrainConfig:
    base = dict(train_file=str(DEMO_FILE), loss="contrastive", batch_size=16, learning_rate=5e-2, warmup_ratio=0.0,
                max_steps=12, eval_steps=6, logging_steps=3, seed=5, loss_params={"neg_margin": 4.0})
    return TrainConfig(**{**base, **changes})


def _contrastive_objective(encoder: ToyVectorEncoder, data: VectorPairs, neg_margin: float = 4.0) -> float:
    """Mean over all pairs of ``d`` (similar) or ``relu(neg_margin - d)`` (dissimilar)."""
    distances = np.linalg.norm(encoder.encode(data.texts_a) - encoder.encode(data.texts_b), axis=1)
    return float(np.mean(np.where(data.labels == 1, distances, np.maximum(neg_margin - distances, 0.0))))


def _shrunk_toy_encoder() -> ToyVectorEncoder:
    # Toy groups are separable from the start; a shrunk map puts every pair inside the margin,
    # so there is a clear loss for training to remove.
    encoder = ToyVectorEncoder()
    with torch.no_grad():
        encoder.linear.weight.mul_(0.05)
    return encoder


def test_training_runs_with_a_non_text_encoder(tmp_path):
    data = _vector_pairs()
    encoder = _shrunk_toy_encoder()
    before, objective_before = encoder.fingerprint(), _contrastive_objective(encoder, data)
    run = tmp_path / "run"
    result = train(_toy_config(), run, encoder=encoder, train_data=data, dev_data=data, show_progress=False)
    assert result.steps == 12 and encoder.fingerprint() != before  # the linear map was trained
    assert _contrastive_objective(encoder, data) < 0.5 * objective_before
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"average_precision", "threshold"} <= set(metrics["dev"]) and "zero_shot_dev" in metrics
    saved = json.loads((run / "train_config.json").read_text())["run"]
    assert saved["sampler"] == "length" and saved["train_pairs"] == len(data)  # sizes all 0: random order
    loaded = SimilarityModel.from_pretrained(run / "model")  # the registry finds the toy kind again
    assert isinstance(loaded.encoder, ToyVectorEncoder)
    np.testing.assert_allclose(loaded.encoder.encode(data.texts_a[:5]), encoder.encode(data.texts_a[:5]), atol=1e-6)


def test_frozen_mode_with_a_non_text_encoder_trains_only_the_head(tmp_path):
    data = _vector_pairs()
    encoder = ToyVectorEncoder()
    linear_before = {k: v.clone() for k, v in encoder.linear.state_dict().items()}
    config = _toy_config(freeze_encoder=True, projection_dim=3, max_steps=10, eval_steps=5)
    result = train(config, tmp_path / "run", encoder=encoder, train_data=data, dev_data=data, show_progress=False)
    for key, value in encoder.linear.state_dict().items():
        assert torch.equal(value, linear_before[key]), key
    assert encoder.projection is not None and encoder.projection.out_features == 3
    assert result.model.encoder.embedding_dim == 3
    assert list((tmp_path / "run" / "cache").glob("train-*.npy"))
    assert all(p.requires_grad for p in encoder.linear.parameters())  # unfrozen again afterwards


def test_collator_gives_the_encoders_inputs_for_vector_items():
    data = _vector_pairs(16)
    pairs = prepare_pairs(data)
    assert len(pairs.items) == 16 and pairs.items is pairs.texts  # identical vectors are one item
    encoder = ToyVectorEncoder()
    rows = [{"tid_a": int(pairs.tid_a[i]), "tid_b": int(pairs.tid_b[i]), "label": int(pairs.labels[i])}
            for i in range(6)]
    batch = PairCollator(pairs, encoder=encoder)(rows)
    unique = batch["text_ids"].numpy()
    assert torch.equal(batch["features"]["vectors"], torch.from_numpy(np.stack([pairs.items[u] for u in unique])))


def _union_find_text_labels(data) -> list[int]:
    """The rule prepare_pairs applied itself before the dataset did: clusters by id over
    positive pairs only, then a text seen in two clusters joins them; numbered by first appearance."""
    by_id = cluster_ids(data.ids_a, data.ids_b, data.labels.tolist())
    cluster_a = np.array([by_id[i] for i in data.ids_a])
    cluster_b = np.array([by_id[i] for i in data.ids_b])
    texts = data.texts_a + data.texts_b
    index: dict[str, int] = {}
    tid = [index.setdefault(t, len(index)) for t in texts]
    uf = UnionFind(range(len(index)))
    owner: dict[int, int] = {}
    for t, c in zip(tid, np.concatenate([cluster_a, cluster_b]).tolist(), strict=True):
        uf.union(owner.setdefault(c, t), t)
    roots: dict = {}
    return [roots.setdefault(uf.find(t), len(roots)) for t in range(len(index))]


def test_prepare_pairs_takes_the_datasets_clusters_with_the_same_numbering(demo):
    small = pair_dataset([  # "best car" is under q3 and q7, each in its own positive pair: one item, so one cluster
        ("sell phone", "buy phone", 0, "q1", "q2"),
        ("best car", "good car", 1, "q3", "q4"),
        ("how to cook rice", "cook rice how", 1, "q5", "q6"),
        ("best car", "top car", 1, "q7", "q8"),
        ("cook rice how", "rice cooking", 0, "q6", "q9"),
    ])
    pairs = prepare_pairs(small)
    assert pairs.texts == ["sell phone", "best car", "how to cook rice", "cook rice how", "buy phone", "good car",
                           "top car", "rice cooking"]
    assert pairs.text_labels.tolist() == [0, 1, 2, 2, 3, 1, 1, 4]
    for data in (small, demo):
        assert prepare_pairs(data).text_labels.tolist() == _union_find_text_labels(data)


@pytest.mark.parametrize("bad", ["encoder", "none"])
def test_collator_needs_exactly_one_source_of_features(bad):
    pairs = prepare_pairs(_vector_pairs(8))
    kwargs = {"encoder": ToyVectorEncoder(), "embeddings": torch.zeros(8, 4)} if bad == "encoder" else {}
    with pytest.raises(ValueError, match="exactly one of encoder=, embeddings= or tokenizer="):
        PairCollator(pairs, **kwargs)
