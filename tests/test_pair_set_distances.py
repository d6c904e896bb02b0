"""``pair_set_distances``: several named pair sets scored by one model, each distinct item encoded once.

Oracles: each set scored on its own with ``model.pair_distances(model.embed_pairs(a, b))``, and
the one concatenated pair list the callers built by hand before, both compared bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest

import metric_sim
from metric_sim import InvalidArgumentError, InvalidArgumentTypeError, SimilarityModel, load_pairs
from metric_sim.model import pair_set_distances
from tests.conftest import DEMO_FILE
from tests.test_image_encoders import image_items, tiny_image_encoder
from tests.toy_encoder import ToyVectorEncoder


@pytest.fixture(scope="module")
def text_sets(tmp_path_factory):
    """Three sets of demo pairs that share texts: b repeats pairs of a, c pairs a's texts with b's."""
    rows = [line.split("\t") for line in DEMO_FILE.read_text(encoding="utf-8").splitlines()[1:41]]
    a_rows = rows[:15]
    b_rows = rows[10:25] + rows[:3]
    c_rows = [(x[0], y[1], "0") for x, y in zip(rows[:8], rows[20:28], strict=True)] + rows[30:40]
    folder = tmp_path_factory.mktemp("sets")
    sets = {}
    for name, chosen in (("a", a_rows), ("b", b_rows), ("c", c_rows)):
        path = folder / f"{name}.tsv"
        path.write_text("text_a\ttext_b\tlabel\n" + "".join(f"{x}\t{y}\t{int(z)}\n" for x, y, z in chosen),
                        encoding="utf-8")
        sets[name] = load_pairs(path)
    return sets


def _on_its_own(model, pairs, batch_size=64):
    return model.pair_distances(model.embed_pairs(pairs.texts_a, pairs.texts_b, batch_size=batch_size))


def _union(sets):
    return {t for p in sets.values() for side in (p.texts_a, p.texts_b) for t in side}


def _recording(model):
    """Replace the encoder's encode on this instance by one that records the items of each call."""
    calls = []
    original = model.encoder.encode

    def recording(items, *args, **kwargs):
        calls.append(list(items))
        return original(items, *args, **kwargs)

    model.encoder.encode = recording
    return calls


@pytest.mark.parametrize("metric", ["euclidean", "manhattan"])
def test_each_set_equals_scoring_it_on_its_own_bit_for_bit(tiny_encoder, text_sets, metric):
    """One text per batch: a text's vector cannot depend on what else is encoded, so the union
    gives each set exactly the distances it gets alone. (With larger batches the padded batch
    shape can move the last bit; the next test pins those to the concatenated pair list.)"""
    model = SimilarityModel(tiny_encoder, metric)
    assert len(_union(text_sets)) < sum(2 * len(p) for p in text_sets.values())  # the sets really overlap
    got = pair_set_distances(model, text_sets, batch_size=1)
    assert list(got) == ["a", "b", "c"]
    for name, pairs in text_sets.items():
        assert got[name].dtype == np.float32 and got[name].shape == (len(pairs),)
        assert np.array_equal(got[name], _on_its_own(model, pairs, batch_size=1)), name
        np.testing.assert_allclose(pair_set_distances(model, text_sets)[name], _on_its_own(model, pairs),
                                   rtol=1e-5, atol=1e-6)
    # The distances differ between pairs (equality above is not between constants).
    assert np.unique(np.concatenate(list(got.values()))).size > 10


def test_it_is_the_one_concatenated_pair_list_the_callers_built(tiny_encoder, text_sets):
    model = SimilarityModel(tiny_encoder)
    names = ["c", "a", "b"]  # the mapping's order, whatever it is, is kept
    all_a = [t for n in names for t in text_sets[n].texts_a]
    all_b = [t for n in names for t in text_sets[n].texts_b]
    bounds = np.cumsum([0] + [len(text_sets[n]) for n in names])
    whole = model.pair_distances(model.embed_pairs(all_a, all_b, batch_size=8))
    got = pair_set_distances(model, {n: text_sets[n] for n in names}, batch_size=8)
    assert list(got) == names
    for i, n in enumerate(names):
        assert np.array_equal(got[n], whole[bounds[i]:bounds[i + 1]]), n


def test_each_distinct_text_is_encoded_once_in_one_call(tiny_encoder, text_sets):
    model = SimilarityModel(tiny_encoder)
    calls = _recording(model)
    pair_set_distances(model, text_sets)
    union = _union(text_sets)
    assert len(calls) == 1
    assert len(calls[0]) == len(set(calls[0])) == len(union) and set(calls[0]) == union


def test_tuples_of_item_lists_and_non_text_items():
    model = SimilarityModel(ToyVectorEncoder(in_dim=6, dim=4), "manhattan")
    rng = np.random.default_rng(0)
    items = [rng.normal(size=6).astype(np.float32) for _ in range(9)]
    sets = {"x": ([items[0], items[1], items[2]], [items[3], items[4], items[0]]),
            "y": ([items[4], items[5]], [items[6], items[1]]),
            "z": [[items[7], items[8], items[2]], [items[0], items[3], items[5]]]}
    calls = _recording(model)
    got = pair_set_distances(model, sets, batch_size=1)
    assert len(calls) == 1 and len(calls[0]) == 9  # 9 distinct vectors among 16 sides
    model = SimilarityModel(ToyVectorEncoder(in_dim=6, dim=4), "manhattan")
    for name, (a, b) in sets.items():
        want = model.pair_distances(model.embed_pairs(a, b, batch_size=1))
        assert np.array_equal(got[name], want), name
        # ... which is |W (a - b)|_1 of the toy encoder's linear map (the bias cancels), in float64.
        w = model.encoder.linear.weight.detach().numpy().astype(np.float64)
        oracle = np.abs((np.stack(a) - np.stack(b)).astype(np.float64) @ w.T).sum(axis=1)
        np.testing.assert_allclose(got[name], oracle, rtol=1e-5, atol=1e-6)


def test_image_pairs():
    model = SimilarityModel(tiny_image_encoder())
    images = image_items(6)
    sets = {"p": ([images[0], images[1]], [images[2], images[3]]),
            "q": ([images[3], images[4]], [images[0], images[5]])}
    calls = _recording(model)
    got = pair_set_distances(model, sets, batch_size=2)
    assert len(calls) == 1 and len(calls[0]) == 6  # the two shared images are encoded once
    fresh = SimilarityModel(tiny_image_encoder())
    for name, (a, b) in sets.items():
        assert got[name].shape == (2,)
        np.testing.assert_allclose(got[name], fresh.distance(a, b, batch_size=2), rtol=1e-5, atol=1e-6)
    whole = fresh.distance(sets["p"][0] + sets["q"][0], sets["p"][1] + sets["q"][1], batch_size=2)
    assert np.array_equal(np.concatenate([got["p"], got["q"]]), whole)


def test_an_empty_set_gives_an_empty_array_and_nothing_empty_encodes_nothing(tiny_encoder, text_sets):
    model = SimilarityModel(tiny_encoder)
    want = _on_its_own(model, text_sets["a"])
    calls = _recording(model)
    got = pair_set_distances(model, {"none": ([], []), "a": text_sets["a"], "also_none": ([], [])})
    assert list(got) == ["none", "a", "also_none"]
    assert got["none"].shape == got["also_none"].shape == (0,) and got["none"].dtype == np.float32
    assert np.array_equal(got["a"], want)  # the empty sets add no items: the same batches as "a" alone
    assert len(calls) == 1
    calls.clear()
    got = pair_set_distances(model, {"none": ([], [])})
    assert list(got) == ["none"] and got["none"].shape == (0,) and got["none"].dtype == np.float32
    assert pair_set_distances(model, {}) == {}
    assert calls == []


def test_bad_arguments_are_refused_by_name(tiny_encoder, text_sets):
    model = SimilarityModel(tiny_encoder)
    with pytest.raises(InvalidArgumentTypeError, match="model must be a SimilarityModel"):
        pair_set_distances(tiny_encoder, text_sets)
    with pytest.raises(InvalidArgumentTypeError, match="sets must be a mapping.*list"):
        pair_set_distances(model, [text_sets["a"]])
    with pytest.raises(InvalidArgumentTypeError, match=r"sets\['odd'\] must be a PairDataset.*str"):
        pair_set_distances(model, {"a": text_sets["a"], "odd": "text"})
    with pytest.raises(InvalidArgumentError, match=r"sets\['short'\]\.texts_a and sets\['short'\]\.texts_b .* 2 and 1"):
        pair_set_distances(model, {"a": text_sets["a"], "short": (["x", "y"], ["z"])})
    with pytest.raises(InvalidArgumentTypeError, match=r"sets\['num'\]\.texts_b\[1\] must be a str"):
        pair_set_distances(model, {"num": (["x", "y"], ["z", 3])})


def test_exported_from_the_package():
    assert metric_sim.pair_set_distances is pair_set_distances
