"""The recall@10 a compressed index records when trained describes the item count it was measured at.

Adds do not measure it again (it costs a pass over every stored vector); ``info()`` and
``metric-sim index info`` put the count it was measured at next to the current one and call it
stale when they differ, naming ``measure_recall()``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from metric_sim import NeighborIndex
from metric_sim.cli import main
from metric_sim.index import compressed

DIM = 16
PARAMS = {"m": 4, "nbits": 4, "nlist": 4, "nprobe": 4, "rerank": 50}


def _vectors(n, seed):
    return np.random.default_rng(seed).normal(0, 1.0, (n, DIM)).astype(np.float32)


def _ids(start, n):
    return [f"v{i}" for i in range(start, start + n)]


def _build(n=300, kind="ivfpq"):
    ids = _ids(0, n)
    return NeighborIndex.from_embeddings(_vectors(n, 0), ids, ids, metric="euclidean", kind=kind, **PARAMS)


@pytest.fixture()
def measurements(monkeypatch):
    """Every recall measurement made (the real one runs)."""
    made = []
    real = compressed.measure_recall

    def counting(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(compressed, "measure_recall", counting)
    return made


@pytest.mark.parametrize("kind", ["ivfpq", "opq-ivfpq"])
def test_fresh_after_training_stale_after_adds_fresh_after_measuring_again(kind, measurements):
    index = _build(kind=kind)
    assert len(measurements) == 1  # measured once, when trained
    recorded = index.info()["compressed"]["recall"]
    assert recorded == measurements[0] and recorded["items"] == 300
    assert index.info()["recall"] == {"recall_at_10": recorded["recall_at_10"], "measured_at_items": 300,
                                      "items": 300, "stale": False, "note": None}

    index.add_embeddings(_vectors(150, 1), _ids(300, 150), _ids(300, 150))
    assert len(measurements) == 1  # adds do not measure it again
    status = index.info()["recall"]
    assert index.info()["compressed"]["recall"] == recorded  # the record itself is what was measured
    assert (status["measured_at_items"], status["items"], status["stale"]) == (300, 450, True)
    assert status["recall_at_10"] == recorded["recall_at_10"]
    assert status["note"] == (f"recall@10 {recorded['recall_at_10']:.3f} was measured at 300 items; the index now "
                              "holds 450: call NeighborIndex.measure_recall() (then save()) to measure it again")

    value = index.measure_recall()
    assert len(measurements) == 2 and measurements[1]["items"] == 450
    assert index.info()["recall"] == {"recall_at_10": value, "measured_at_items": 450, "items": 450,
                                      "stale": False, "note": None}


def test_a_removal_also_makes_it_stale():
    index = _build()
    assert index.remove(["v0", "v1"]) == 2
    status = index.info()["recall"]
    assert (status["measured_at_items"], status["items"], status["stale"]) == (300, 298, True)


def test_staleness_survives_save_and_load_and_the_cli_shows_it(tmp_path, capsys):
    index = _build()
    recall = index.info()["recall"]["recall_at_10"]
    fresh = index.save(tmp_path / "fresh")
    assert main(["index", "info", str(fresh)]) == 0
    out = capsys.readouterr().out
    assert f"recall@10 {recall:.3f} against exact search (200 queries, 300 items)" in out and "stale:" not in out

    index.add_embeddings(_vectors(100, 1), _ids(300, 100), _ids(300, 100))
    folder = index.save(tmp_path / "grown")
    loaded = NeighborIndex.load(folder, load_model=False)
    assert loaded.info()["recall"] == index.info()["recall"]
    assert loaded.info()["recall"]["stale"] is True

    assert main(["index", "info", str(folder)]) == 0
    out = capsys.readouterr().out
    assert (f"stale: recall@10 {recall:.3f} was measured at 300 items; the index now holds 400: call "
            "NeighborIndex.measure_recall() (then save()) to measure it again") in out
    assert main(["index", "info", str(folder), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["recall"] == {"recall_at_10": recall, "measured_at_items": 300, "items": 400, "stale": True,
                               "note": loaded.info()["recall"]["note"]}

    loaded.measure_recall()
    again = loaded.save(tmp_path / "measured")
    assert main(["index", "info", str(again), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["recall"]["stale"] is False and shown["recall"]["measured_at_items"] == 400


def test_flat_index_has_no_recall_entry():
    ids = _ids(0, 20)
    index = NeighborIndex.from_embeddings(_vectors(20, 0), ids, ids, metric="euclidean")
    assert "recall" not in index.info()
