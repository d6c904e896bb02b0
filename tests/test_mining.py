"""Hard-negative mining: what may never be mined, an exact NumPy oracle for both metrics, each
false-negative guard, batching and seeding, the saved file and the ``mine`` command."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from metric_sim.calibration import Calibrator
from metric_sim.cli import main
from metric_sim.clusters import cluster_ids
from metric_sim.distances import all_pairs_distances_numpy
from metric_sim.errors import CalibrationError, ConfigError, IndexConfigError, InvalidArgumentError
from metric_sim.mining import MinedNegatives, mine_hard_negatives, sidecar_path
from metric_sim.model import SimilarityModel
from tests.conftest import DEMO_FILE, build_tiny_encoder
from tests.toy_encoder import ToyVectorEncoder, toy_items

N_ITEMS = 24
IN_DIM = 4


@dataclass
class VectorPairs:
    """Labelled pairs of toy vectors: the columns mining reads, with items that are not texts."""

    texts_a: list[np.ndarray]
    texts_b: list[np.ndarray]
    ids_a: list[str]
    ids_b: list[str]
    labels: np.ndarray


def _identity_model(metric: str, calibrator: Calibrator | None = None) -> SimilarityModel:
    """A toy encoder whose embedding of an item is the item itself: the geometry is what the test writes."""
    encoder = ToyVectorEncoder(IN_DIM, IN_DIM)
    with torch.no_grad():
        encoder.linear.weight.copy_(torch.eye(IN_DIM))
        encoder.linear.bias.zero_()
    return SimilarityModel(encoder, metric, calibrator)


def _toy_pairs(seed: int = 0) -> tuple[VectorPairs, np.ndarray]:
    """Pairs over N_ITEMS toy vectors in corpus order 0..n-1: (2j, 2j+1) first, so first appearance is
    item order, then more pairs among them. Items of the same group are labelled similar, plus two
    positives across groups."""
    items = toy_items(N_ITEMS, in_dim=IN_DIM, seed=seed)
    groups = N_ITEMS // 4
    rng = np.random.default_rng(seed)
    rows = [(2 * j, 2 * j + 1) for j in range(N_ITEMS // 2)]
    for _ in range(30):
        a, b = (int(x) for x in rng.choice(N_ITEMS, size=2, replace=False))
        rows.append((a, b))
    rows += [(i, i + groups) for i in range(0, N_ITEMS - groups, 3)]  # same group: similar
    labels = [int(a % groups == b % groups) for a, b in rows]
    rows += [(1, 2), (3, 11)]  # labelled similar across groups: far positives, so relative_margin has work
    labels = np.array(labels + [1, 1], dtype=np.int64)
    pairs = VectorPairs([items[a] for a, _ in rows], [items[b] for _, b in rows],
                        [f"v{a}" for a, _ in rows], [f"v{b}" for _, b in rows], labels)
    return pairs, np.stack(items)


def _oracle(pairs: VectorPairs, embeddings: np.ndarray, metric: str, *, num_negatives: int = 3, range_min: int = 0,
            range_max: int = 9, relative_margin: float | None = None, calibrator: Calibrator | None = None,
            max_probability: float | None = None) -> tuple[dict[int, list[tuple[int, float]]], dict[str, int]]:
    """Brute force over the all-pairs matrix: anchor row -> [(negative row, distance)], and what each guard skipped."""
    n = len(embeddings)
    row = {f"v{i}": i for i in range(n)}
    clusters = cluster_ids(pairs.ids_a, pairs.ids_b, pairs.labels.tolist(), pairs.texts_a, pairs.texts_b)
    cluster = np.array([clusters[f"v{i}"] for i in range(n)])
    distances = all_pairs_distances_numpy(embeddings, embeddings, metric).astype(np.float64)
    reach = {}
    for a, b, label in zip(pairs.ids_a, pairs.ids_b, pairs.labels, strict=True):
        if label == 1:
            for x, y in ((row[a], row[b]), (row[b], row[a])):
                reach[x] = max(reach.get(x, 0.0), distances[x, y])
    out, skipped = {}, {"range_min": 0, "relative_margin": 0, "max_probability": 0}
    for a in range(n):
        ranked = sorted((j for j in range(n) if cluster[j] != cluster[a]), key=lambda j: (distances[a, j], j))
        window = ranked[:range_max]
        skipped["range_min"] += len(window[:range_min])
        chosen = []
        for j in window[range_min:]:
            if relative_margin is not None and a in reach and distances[a, j] < reach[a] * (1 + relative_margin):
                skipped["relative_margin"] += 1
                continue
            if max_probability is not None and calibrator.predict_proba([distances[a, j]])[0] > max_probability:
                skipped["max_probability"] += 1
                continue
            chosen.append(j)
        out[a] = [(j, distances[a, j]) for j in chosen[:num_negatives]]
    return out, skipped


def _by_anchor(mined: MinedNegatives) -> dict[int, list[tuple[int, float]]]:
    out: dict[int, list[tuple[int, float]]] = {}
    for a, b, d in zip(mined.anchor_ids, mined.negative_ids, mined.distances, strict=True):
        out.setdefault(int(a[1:]), []).append((int(b[1:]), float(d)))
    return out


def _assert_same_negatives(mined: MinedNegatives, oracle: dict[int, list[tuple[int, float]]]) -> None:
    """Same negatives in the same order, except that items within 1e-6 of each other may swap."""
    got = _by_anchor(mined)
    for anchor, expected in oracle.items():
        found = got.get(anchor, [])
        assert len(found) == len(expected), f"anchor {anchor}: {found} != {expected}"
        for (j_got, d_got), (j_exp, d_exp) in zip(found, expected, strict=True):
            assert d_got == pytest.approx(d_exp, abs=1e-5), f"anchor {anchor}: {found} != {expected}"
            if j_got != j_exp:
                tied = [j for j, d in expected if abs(d - d_got) <= 1e-6]
                assert j_got in tied, f"anchor {anchor}: {found} != {expected}"


@pytest.mark.parametrize("metric", ["euclidean", "manhattan"])
def test_mining_agrees_with_a_numpy_oracle(metric):
    pairs, embeddings = _toy_pairs()
    mined = mine_hard_negatives(_identity_model(metric), pairs, num_negatives=3, range_max=9)
    oracle, _ = _oracle(pairs, embeddings, metric)
    _assert_same_negatives(mined, oracle)
    assert mined.counts["anchors"] == N_ITEMS and mined.counts["negatives"] == len(mined)
    assert np.all(np.diff(mined.ranks.reshape(-1, 3), axis=1) > 0)  # nearest first, ranks 1-based
    assert mined.metric == metric and not mined.text_items


@pytest.mark.parametrize("metric", ["euclidean", "manhattan"])
def test_anchors_with_positives_mines_only_those_and_the_same_negatives(metric):
    pairs, embeddings = _toy_pairs()
    mined = mine_hard_negatives(_identity_model(metric), pairs, num_negatives=3, range_max=9,
                                anchors="with_positives", search_batch_size=4)
    oracle, _ = _oracle(pairs, embeddings, metric)
    with_positive = {int(i[1:]) for a, b, y in zip(pairs.ids_a, pairs.ids_b, pairs.labels, strict=True) if y
                     for i in (a, b)}
    assert set(_by_anchor(mined)) == with_positive  # every anchor with a positive, no other
    _assert_same_negatives(mined, {a: neg for a, neg in oracle.items() if a in with_positive})
    assert mined.counts["anchors"] == len(with_positive) and mined.options["anchors"] == "with_positives"
    with pytest.raises(InvalidArgumentError, match="anchors"):
        mine_hard_negatives(_identity_model(metric), pairs, anchors="some")


@pytest.mark.parametrize("metric", ["euclidean", "manhattan"])
@pytest.mark.parametrize("guard", [{"range_min": 2}, {"range_min": 3, "range_max": 7}, {"relative_margin": 0.0},
                                   {"relative_margin": 0.3}])
def test_each_guard_removes_exactly_what_the_oracle_says(metric, guard):
    pairs, embeddings = _toy_pairs()
    options = {"range_max": 12, **guard}
    mined = mine_hard_negatives(_identity_model(metric), pairs, **options)
    oracle, skipped = _oracle(pairs, embeddings, metric, **options)
    _assert_same_negatives(mined, oracle)
    for name, count in skipped.items():
        assert mined.counts[f"skipped_{name}"] == count, name
    removed_by_guard = skipped["relative_margin"] if "relative_margin" in guard else skipped["range_min"]
    assert removed_by_guard > 0  # the case really exercises the guard


@pytest.mark.parametrize("metric", ["euclidean", "manhattan"])
def test_max_probability_skips_exactly_the_likely_duplicates(metric):
    pairs, embeddings = _toy_pairs()
    scale = float(np.median(all_pairs_distances_numpy(embeddings, embeddings, metric)))
    calibrator = Calibrator(weight=-4.0 / scale**2, bias=2.0, metric=metric)  # p = 0.5 at d = scale / sqrt(2)
    mined = mine_hard_negatives(_identity_model(metric, calibrator), pairs, max_probability=0.3, range_max=12)
    oracle, skipped = _oracle(pairs, embeddings, metric, range_max=12, calibrator=calibrator, max_probability=0.3)
    _assert_same_negatives(mined, oracle)
    assert mined.counts["skipped_max_probability"] == skipped["max_probability"] > 0
    assert np.all(mined.probabilities <= 0.3)
    np.testing.assert_allclose(mined.probabilities, calibrator.predict_proba(mined.distances), rtol=1e-6)


def test_max_probability_needs_a_calibrator():
    pairs, _ = _toy_pairs()
    with pytest.raises(CalibrationError, match="max_probability=0.5 needs a calibrated model"):
        mine_hard_negatives(_identity_model("euclidean"), pairs, max_probability=0.5)


@pytest.mark.parametrize("metric", ["euclidean", "manhattan"])
def test_never_a_labelled_positive_a_cluster_member_or_the_anchor(demo, metric):
    model = SimilarityModel(build_tiny_encoder(), metric)
    mined = mine_hard_negatives(model, demo, num_negatives=5, range_min=1)
    assert len(mined) > 0
    clusters = demo.cluster_labels()
    positives = {frozenset(p) for p, y in zip(zip(demo.ids_a, demo.ids_b, strict=True), demo.labels, strict=True) if y}
    for a, b, ta, tb in zip(mined.anchor_ids, mined.negative_ids, mined.anchor_texts, mined.negative_texts,
                            strict=True):
        assert a != b and ta != tb
        assert clusters[a] != clusters[b]
        assert frozenset((a, b)) not in positives
    assert set(mined.anchor_ids) <= set(demo.unique_texts()[0])


def test_ids_that_carry_the_same_item_count_once_and_are_never_each_others_negative():
    pairs, items = _toy_pairs()
    # "copy5": another id for the vector of v5, in a pair labelled dissimilar.
    pairs.texts_a.append(items[5].copy())
    pairs.texts_b.append(items[9])
    pairs.ids_a.append("copy5")
    pairs.ids_b.append("v9")
    pairs.labels = np.append(pairs.labels, 0)
    mined = mine_hard_negatives(_identity_model("euclidean"), pairs, num_negatives=5, range_max=10)
    assert mined.counts["anchors"] == N_ITEMS
    assert "copy5" not in mined.anchor_ids + mined.negative_ids
    assert np.all(mined.distances > 0)


def test_mined_in_batches_equals_one_batch(demo):
    model = SimilarityModel(build_tiny_encoder(), "manhattan")
    runs = [mine_hard_negatives(model, demo, relative_margin=0.0, search_batch_size=size)
            for size in (1, 3, len(demo) * 2)]
    for other in runs[1:]:
        assert other.anchor_ids == runs[0].anchor_ids and other.negative_ids == runs[0].negative_ids
        np.testing.assert_array_equal(other.distances, runs[0].distances)
        assert other.counts == runs[0].counts
    # The encoding batch moves embeddings by float rounding only (~1e-7), not the negatives.
    encoded_one_by_one = mine_hard_negatives(model, demo, relative_margin=0.0, batch_size=1)
    assert encoded_one_by_one.negative_ids == runs[0].negative_ids
    np.testing.assert_allclose(encoded_one_by_one.distances, runs[0].distances, rtol=1e-5)
    pairs, _ = _toy_pairs()
    toy = [mine_hard_negatives(_identity_model("euclidean"), pairs, search_batch_size=size, show_progress=True)
           for size in (1, 3, N_ITEMS)]
    assert toy[0].negative_ids == toy[1].negative_ids == toy[2].negative_ids


@pytest.mark.parametrize("metric", ["euclidean", "manhattan"])
def test_an_hnsw_index_finds_the_same_negatives_on_a_small_corpus(metric):
    pairs, embeddings = _toy_pairs()
    mined = mine_hard_negatives(_identity_model(metric), pairs, index_kind="hnsw", relative_margin=0.1)
    oracle, _ = _oracle(pairs, embeddings, metric, range_max=30, relative_margin=0.1)
    _assert_same_negatives(mined, oracle)


def test_random_sampling_is_seeded_and_draws_from_the_passing_window():
    pairs, embeddings = _toy_pairs()
    model = _identity_model("euclidean")
    options = {"sampling_strategy": "random", "range_max": 10, "relative_margin": 0.1}
    first = mine_hard_negatives(model, pairs, seed=7, **options)
    again = mine_hard_negatives(model, pairs, seed=7, search_batch_size=5, **options)
    other = mine_hard_negatives(model, pairs, seed=8, **options)
    assert first.negative_ids == again.negative_ids
    assert first.negative_ids != other.negative_ids
    pool, _ = _oracle(pairs, embeddings, "euclidean", num_negatives=10, range_max=10, relative_margin=0.1)
    for anchor, drawn in _by_anchor(first).items():
        allowed = [j for j, _ in pool[anchor]]
        assert {j for j, _ in drawn} <= set(allowed)
        assert [allowed.index(j) for j, _ in drawn] == sorted(allowed.index(j) for j, _ in drawn)
    top = mine_hard_negatives(model, pairs, **{**options, "sampling_strategy": "top"})
    assert top.negative_ids != first.negative_ids


@pytest.mark.parametrize("option, value, message", [
    ("num_negatives", 0, "num_negatives must be a positive integer, got 0"),
    ("range_min", -1, "range_min must be a non-negative integer, got -1"),
    ("range_max", 4, "range_max must leave at least num_negatives=3 ranks after range_min=2, got range_max=4"),
    ("relative_margin", -0.1, "relative_margin must be a finite number >= 0, got -0.1"),
    ("max_probability", 1.5, r"max_probability must be in \[0, 1\], got 1.5"),
    ("sampling_strategy", "best", "sampling_strategy must be one of \\['top', 'random'\\], got 'best'"),
    ("seed", -3, "seed must be a non-negative integer, got -3"),
    ("search_batch_size", 0, "search_batch_size must be a positive integer, got 0"),
])
def test_bad_options_name_the_argument_and_value(option, value, message):
    pairs, _ = _toy_pairs()
    kwargs = {"range_min": 2} if option == "range_max" else {}
    with pytest.raises(InvalidArgumentError, match=message):
        mine_hard_negatives(_identity_model("euclidean"), pairs, **{**kwargs, option: value})


def test_a_bad_index_kind_fails_before_encoding():
    pairs, _ = _toy_pairs()
    with pytest.raises(IndexConfigError):
        mine_hard_negatives(_identity_model("manhattan"), pairs, index_kind="IVF16,PQ4")


def test_save_load_round_trip_and_to_pairs(demo, tmp_path):
    encoder = build_tiny_encoder()
    model = SimilarityModel(encoder, "euclidean")
    middle = float(np.median(mine_hard_negatives(model, demo, range_max=20).distances))
    # p = 0.9 at the median mined distance, so max_probability=0.9 skips about half of them.
    model.calibrator = Calibrator(weight=-1.0 / middle**2, bias=1.0 + float(np.log(9.0)), metric="euclidean")
    mined = mine_hard_negatives(model, demo, max_probability=0.9, range_max=20)
    assert mined.counts["skipped_max_probability"] > 0 and len(mined) > 0
    path = mined.save(tmp_path / "neg" / "negatives.tsv")
    assert sidecar_path(path).is_file()
    back = MinedNegatives.load(path)
    assert back.anchor_ids == mined.anchor_ids and back.negative_texts == mined.negative_texts
    np.testing.assert_array_equal(back.distances, mined.distances)
    np.testing.assert_array_equal(back.ranks, mined.ranks)
    np.testing.assert_array_equal(back.probabilities, mined.probabilities)
    assert back.options == mined.options and back.counts == mined.counts
    assert back.model_fingerprint == encoder.fingerprint() and back.source == str(DEMO_FILE)

    pairs = back.to_pairs()
    assert len(pairs) == len(mined) and set(pairs.labels.tolist()) == {0}
    assert pairs.pair_ids[:2] == ["mined-0", "mined-1"]
    assert pairs.ids_a == mined.anchor_ids and pairs.texts_b == mined.negative_texts

    path.write_text(path.read_text(encoding="utf-8").replace("\t1\t", "\t2\t", 1), encoding="utf-8")
    with pytest.raises(ConfigError, match="changed after it was saved"):
        MinedNegatives.load(path)


def test_non_text_negatives_do_not_become_a_pair_dataset():
    pairs, _ = _toy_pairs()
    mined = mine_hard_negatives(_identity_model("euclidean"), pairs)
    with pytest.raises(InvalidArgumentError, match="non-text items"):
        mined.to_pairs()


def _mine_args(model_dir, out, *extra):
    return ["mine", "--model", str(model_dir), "--data", str(DEMO_FILE), "--text-a", "question1",
            "--text-b", "question2", "--label", "is_duplicate", "--out", str(out), *extra]


def test_cli_writes_a_loadable_file_and_exits_2_on_a_bad_option(tmp_path, capsys):
    model_dir = tmp_path / "model"
    SimilarityModel(build_tiny_encoder(), "manhattan").save(model_dir)
    out = tmp_path / "negatives.tsv"
    assert main(_mine_args(model_dir, out, "--num-negatives", "2", "--range-max", "20", "--relative-margin", "0.05",
                           "--sampling", "random", "--seed", "3")) == 0
    printed = capsys.readouterr().out
    mined = MinedNegatives.load(out)
    assert len(mined) > 0 and mined.metric == "manhattan"
    assert mined.options["sampling_strategy"] == "random" and mined.options["seed"] == 3
    assert f"negatives: {len(mined):,}" in printed and "skipped by relative_margin" in printed
    assert str(out) in printed
    assert main(_mine_args(model_dir, tmp_path / "again.tsv", "--json", "--search-batch-size", "7")) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["counts"]["negatives"] == len(MinedNegatives.load(tmp_path / "again.tsv"))
    assert payload["record"] == str(sidecar_path(tmp_path / "again.tsv"))

    for flags, message in ((["--num-negatives", "0"], "--num-negatives must be a positive integer, got 0"),
                           (["--range-min", "5", "--range-max", "6"], "--range-max must leave at least"),
                           (["--max-prob", "0.5"], "needs a calibrated model"),
                           (["--kind", "IVF16,PQ4"], "IVF16,PQ4")):
        assert main(_mine_args(model_dir, tmp_path / "bad.tsv", *flags)) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    assert not (tmp_path / "bad.tsv").exists()
