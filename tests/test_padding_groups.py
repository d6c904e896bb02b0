"""Training batches embedded in length groups: the cheapest split, and the same vectors and gradients.

``padding_groups`` is checked against brute force over every split of small batches;
``Encoder.forward`` in training mode (which splits) against the same batch embedded whole.
"""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch

from metric_sim.encoders.batching import padding_groups

TEXTS = [
    "how do i learn python",
    "what is the best way to learn java code and python code in a city",
    "cook rice",
    "how can i save money to buy a car and travel to visit a country with my dog",
    "why",
    "which phone battery is best",
    "how to bake bread",
    "what is the capital city of the country with the best population and the best food in it",
]


def split_cost(lengths: np.ndarray, groups: list[np.ndarray], cost: int) -> int:
    return sum(len(g) * int(lengths[g].max()) + cost for g in groups)


def brute_force_best(lengths: np.ndarray, cost: int) -> int:
    """The cheapest split of the sorted rows into consecutive runs, by trying every cut set."""
    sorted_lengths = np.sort(lengths)
    n = len(lengths)
    best = None
    for k in range(n):
        for cuts in itertools.combinations(range(1, n), k):
            bounds = (0, *cuts, n)
            total = sum((b - a) * int(sorted_lengths[b - 1]) + cost for a, b in itertools.pairwise(bounds))
            best = total if best is None else min(best, total)
    return best


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("cost", [0, 5, 40, 1000])
def test_groups_are_the_cheapest_split(seed: int, cost: int) -> None:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 60, size=int(rng.integers(2, 10)))
    groups = padding_groups(lengths, split_cost=cost)
    assert sorted(np.concatenate(groups).tolist()) == list(range(len(lengths)))  # every row exactly once
    for group in groups:
        assert np.all(np.diff(lengths[group]) >= 0)  # ascending: the last row is the longest
    assert split_cost(lengths, groups, cost) == brute_force_best(lengths, cost)


def test_equal_lengths_and_tiny_batches_are_not_split() -> None:
    assert [g.tolist() for g in padding_groups([7, 7, 7])] == [[0, 1, 2]]
    assert [g.tolist() for g in padding_groups([3])] == [[0]]
    assert padding_groups([])[0].size == 0
    # a huge split cost keeps one group whatever the lengths
    assert len(padding_groups([1, 100, 2, 99], split_cost=10_000)) == 1
    # no split cost: every distinct length its own group
    assert len(padding_groups([1, 100, 2, 99, 100], split_cost=0)) == 4


def _batch(encoder, texts):
    return {k: v for k, v in encoder.tokenize(texts).items()}


def _forward_and_grads(encoder, features, training: bool):
    encoder.zero_grad()
    encoder.train(training)
    out = encoder(**features)
    weights = torch.linspace(-1.0, 1.0, out.numel()).reshape(out.shape)  # any fixed non-symmetric loss
    (out * weights).sum().backward()
    grads = {n: p.grad.detach().clone() for n, p in encoder.named_parameters() if p.grad is not None}
    return out.detach(), grads


def _split_every_length(monkeypatch) -> None:
    """No split cost: every distinct length its own group, the most a batch can be cut."""
    import metric_sim.encoders.text as text_module

    monkeypatch.setattr(text_module, "padding_groups", lambda lens, _f=text_module.padding_groups: _f(lens, split_cost=0))


@pytest.mark.parametrize("pooling", ["mean", "cls", "max"])
def test_training_forward_in_groups_matches_the_whole_batch(tiny_encoder, monkeypatch, pooling: str) -> None:
    import metric_sim.encoders.text as text_module

    encoder = tiny_encoder
    encoder.pooling = pooling
    features = _batch(encoder, TEXTS)
    _split_every_length(monkeypatch)
    assert len(text_module._right_padded_groups(features["attention_mask"])[0]) > 2
    # dropout is 0 in the tiny model, so train and eval mode compute the same function
    grouped, grouped_grads = _forward_and_grads(encoder, features, training=True)
    whole, whole_grads = _forward_and_grads(encoder, features, training=False)
    assert torch.allclose(grouped, whole, atol=1e-5, rtol=1e-5)
    assert grouped_grads.keys() == whole_grads.keys()
    for name, grad in whole_grads.items():
        assert torch.allclose(grouped_grads[name], grad, atol=1e-5, rtol=1e-4), name


def test_token_type_ids_follow_their_rows(tiny_encoder, monkeypatch) -> None:
    features = _batch(tiny_encoder, TEXTS)
    # segment ids (the tiny tokenizer makes none), one row's set to 1: a mix-up of rows or
    # columns would move that change to another vector
    features["token_type_ids"] = torch.zeros_like(features["input_ids"])
    features["token_type_ids"][3, :] = 1
    _split_every_length(monkeypatch)
    grouped, _ = _forward_and_grads(tiny_encoder, features, training=True)
    whole, _ = _forward_and_grads(tiny_encoder, features, training=False)
    assert torch.allclose(grouped, whole, atol=1e-5, rtol=1e-5)


def test_left_padded_batches_are_embedded_whole(tiny_encoder, monkeypatch) -> None:
    import metric_sim.encoders.text as text_module

    encoder = copy.deepcopy(tiny_encoder)
    encoder.tokenizer.padding_side = "left"
    features = _batch(encoder, TEXTS)
    assert features["attention_mask"][:, 0].min() == 0  # really left-padded
    assert len(text_module._right_padded_groups(features["attention_mask"])[0]) == 1
    calls = []
    original = encoder._embed
    monkeypatch.setattr(encoder, "_embed", lambda *a, **k: calls.append(a[0].shape) or original(*a, **k))
    encoder.train()
    encoder(**features)
    assert calls == [features["input_ids"].shape]


def test_a_long_training_batch_is_split_and_eval_never_is(tiny_encoder, monkeypatch) -> None:
    encoder = tiny_encoder
    texts = ["why"] * 40 + [TEXTS[7]] * 8  # 40 short rows padded to a long one: splitting saves padding
    features = _batch(encoder, texts)
    widths = []
    original = encoder._embed
    monkeypatch.setattr(encoder, "_embed", lambda ids, mask, **k: widths.append(tuple(ids.shape)) or original(ids, mask, **k))
    encoder.train()
    encoder(**features)
    long_width = features["input_ids"].shape[1]
    assert sorted(widths) == sorted([(40, 3), (8, long_width)])
    widths.clear()
    encoder.eval()
    with torch.no_grad():
        encoder(**features)
    assert widths == [tuple(features["input_ids"].shape)]
