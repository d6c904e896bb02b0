from __future__ import annotations

import numpy as np
import pytest

from metric_sim.clusters import UnionFind, cluster_ids
from metric_sim.data import PairDataset, load_pairs
from metric_sim.errors import InvalidArgumentError
from tests.conftest import pair_dataset


def test_union_find_joins_and_keeps_insertion_order():
    uf = UnionFind(["c", "a", "b"])
    uf.union("a", "b")
    uf.union("d", "c")  # adds d
    assert uf.connected("a", "b") and not uf.connected("a", "c")
    assert list(uf) == ["c", "a", "b", "d"] and len(uf) == 4 and "d" in uf
    assert list(uf.groups().values()) == [["c", "d"], ["a", "b"]]
    with pytest.raises(KeyError, match="never added"):
        uf.find("zzz")


def test_union_find_deep_chain_has_no_recursion_limit():
    uf = UnionFind()
    for i in range(20_000):
        uf.union(i, i + 1)
    assert uf.connected(0, 20_000)


def test_positives_join_negatives_do_not():
    clusters = cluster_ids(["A", "B", "C"], ["B", "C", "D"], [1, 0, 1])
    assert clusters == {"A": 0, "B": 0, "C": 1, "D": 1}


def test_identical_items_under_two_ids_join():
    # q1~q2 and q3~q4 are positives; q2 and q3 carry the same text -> one cluster.
    ids_a, ids_b = ["q1", "q3", "q5"], ["q2", "q4", "q6"]
    texts_a = ["How to learn Python?", "Best way to learn Python", "Unrelated"]
    texts_b = ["Best way to learn Python", "Learning Python fast", "Other"]
    labels = [1, 1, 0]
    without_items = cluster_ids(ids_a, ids_b, labels)
    assert without_items["q2"] != without_items["q3"]
    clusters = cluster_ids(ids_a, ids_b, labels, texts_a, texts_b)
    assert clusters == {"q1": 0, "q2": 0, "q3": 0, "q4": 0, "q5": 1, "q6": 2}


def test_identical_vectors_join_too():
    v = np.array([0.1, 0.2], dtype=np.float32)
    clusters = cluster_ids(
        ["x", "y"], ["x2", "y2"], [0, 0], [v, np.ones(2, np.float32)], [np.zeros(2, np.float32), v.copy()]
    )
    assert clusters["x"] == clusters["y2"] and len(set(clusters.values())) == 3


def test_numbering_is_first_appearance_a_then_b_row_by_row():
    # Row 0 introduces E (singleton) before F; the cluster of C/D first appears in row 1 via b.
    ids_a, ids_b, labels = ["E", "F", "C"], ["F2", "D", "D"], [0, 0, 1]
    clusters = cluster_ids(ids_a, ids_b, labels)
    assert list(clusters) == ["E", "F2", "F", "D", "C"]
    assert clusters == {"E": 0, "F2": 1, "F": 2, "D": 3, "C": 3}
    assert cluster_ids(ids_a, ids_b, labels) == clusters  # deterministic
    assert cluster_ids(ids_a, ids_b, np.array(labels)) == clusters  # labels as an array


def test_bad_arguments():
    with pytest.raises(InvalidArgumentError, match="one entry per pair"):
        cluster_ids(["a"], ["b", "c"], [1])
    with pytest.raises(InvalidArgumentError, match="both items_a and items_b"):
        cluster_ids(["a"], ["b"], [1], ["x"], None)
    with pytest.raises(InvalidArgumentError, match="one entry per pair"):
        cluster_ids(["a"], ["b"], [1], ["x"], ["y", "z"])


def _qqp_like() -> PairDataset:
    return pair_dataset([  # q2 and q3 hold the same question (QQP has these)
        ("How to learn Python?", "Best way to learn Python", 1, "q1", "q2"),
        ("Best way to learn Python", "Learning Python fast", 1, "q3", "q4"),
        ("Cats or dogs?", "Dogs or cats?", 1, "q5", "q6"),
    ])


def test_pair_dataset_uses_the_one_rule():
    pairs = _qqp_like()
    assert pairs.cluster_labels() == {"q1": 0, "q2": 0, "q3": 0, "q4": 0, "q5": 1, "q6": 1}
    a, b = pairs.pair_cluster_labels()
    assert a.tolist() == [0, 0, 1] and b.tolist() == [0, 0, 1]
    summary = pairs.summary()
    assert summary["clusters"] == 2 and summary["largest_cluster"] == 4


def test_pair_dataset_without_id_columns_is_unchanged(tmp_path):
    path = tmp_path / "p.tsv"
    path.write_text("text_a\ttext_b\tlabel\na\tb\t1\nb\tc\t0\nc\td\t1\n", encoding="utf-8")
    pairs = load_pairs(path)
    assert list(pairs.cluster_labels().values()) == [0, 0, 1, 1]
