"""The disk-backed item store of the compressed kinds: ids and descriptions in SQLite, keys in RAM.

Oracle: the in-memory :class:`ItemStore`, run on the same operations (every answer and every
error message compared), and a compressed index built on an ``ItemStore`` from the same data
(results compared bit for bit). Saved folders are compared by sha256; RAM by tracemalloc,
with the dict store measured the same way so the bound is shown to separate the two.
"""

from __future__ import annotations

import gc
import json
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from metric_sim import NeighborIndex
from metric_sim.cli import main
from metric_sim.index.disk_store import DiskItemStore
from metric_sim.index.store import ItemStore
from metric_sim.layout import STORE_FILE
from metric_sim.storage import sha256_file
from tests.test_index_compressed import DIM, IDS, METRICS, Q, X, _exact

N_SMALL = 1200
PARAMS = {"m": 8, "nbits": 5, "nlist": 8, "nprobe": 4, "rerank": 100}
TEXTS = [f"text of v{i}: it's \"quoted\", ünïcode {i % 7}" for i in range(len(X))]


def _outcome(call):
    """What a call returns, or the type and message of what it raises (compared across stores)."""
    try:
        value = call()
    except Exception as exc:  # noqa: BLE001 - the exception itself is the answer compared
        return ("raised", type(exc).__name__, str(exc))
    if isinstance(value, tuple):  # keys_of: (ids, keys)
        return ("ok", tuple(v.tolist() if isinstance(v, np.ndarray) else v for v in value))
    return ("ok", value.tolist() if isinstance(value, np.ndarray) else value)


def _answers(store, probe_ids, probe_keys):
    """Every read method of the store, on ids / keys that are stored, removed and never stored."""
    return {
        "len": len(store),
        "ids": store.ids,
        "texts": store.texts,
        "keys": store.keys().tolist(),
        "next_key": store.next_key,
        "contains": [item_id in store for item_id in [*probe_ids, 3, 3.0, None, b"v1", ("v1",)]],
        "item": [_outcome(lambda k=k: store.item(k)) for k in probe_keys],
        "items_of": _outcome(lambda: store.items_of(np.array(probe_keys[:3], np.int64))),
        "items_of_missing": _outcome(lambda: store.items_of(probe_keys)),
        "text_of": [_outcome(lambda i=i: store.text_of(i)) for i in probe_ids],
        "keys_of": _outcome(lambda: store.keys_of(probe_ids[:3] + probe_ids[:1])),
        "keys_of_missing": _outcome(lambda: store.keys_of(probe_ids)),
        "next_keys": store.next_keys(3).tolist(),
    }


NEW_ID_CASES = [
    (2, None),
    (2, ["new1", 7]),
    (2, ["v5", "new"]),  # already stored
    (3, ["a", "b", "a"]),  # repeated
    (2, ["a", "v5"]),
    (2, ["a", " "]),
    (2, ["a", True]),
    (2, ["a", 1.5]),
    (2, "ab"),
    (3, ["a", "b"]),
    (1, [np.int64(12)]),
]


def test_disk_store_answers_every_method_like_the_dict_store(tmp_path):
    memory, disk = ItemStore(), DiskItemStore()
    probe_ids = ["v0", "v5", "v1199", "7", 7, "nope", "v600"]
    probe_keys = [0, 5, 600, 1199, 1250, -1]
    assert _answers(memory, probe_ids, probe_keys) == _answers(disk, probe_ids, probe_keys)  # empty
    ids = [f"v{i}" for i in range(N_SMALL)]  # more than one SQLite batch of 500
    for start, stop in ((0, 700), (700, N_SMALL)):
        for store in (memory, disk):
            new_ids = store.check_new_ids(stop - start, ids[start:stop])
            store.insert(store.next_keys(stop - start), new_ids, TEXTS[start:stop])
        assert _answers(memory, probe_ids, probe_keys) == _answers(disk, probe_ids, probe_keys)
    for n, case in NEW_ID_CASES:
        assert _outcome(lambda n=n, case=case: memory.check_new_ids(n, case)) == _outcome(
            lambda n=n, case=case: disk.check_new_ids(n, case))
    for gone in (["v5", "v600"], [f"v{i}" for i in range(100, 900) if i != 600]):
        for store in (memory, disk):
            store.delete(gone)
        assert _answers(memory, probe_ids, probe_keys) == _answers(disk, probe_ids, probe_keys)
    assert _outcome(lambda: memory.delete(["nope"])) == _outcome(lambda: disk.delete(["nope"]))
    for store in (memory, disk):  # after removals: keys are not reused, "5" is a free id again
        store.insert(store.next_keys(2), store.check_new_ids(2, ["v5", "5"]), ["again", "five"])
    assert _answers(memory, probe_ids + ["5"], probe_keys) == _answers(disk, probe_ids + ["5"], probe_keys)
    memory.write_sqlite(tmp_path / "memory.sqlite")
    disk.write_sqlite(tmp_path / "disk.sqlite")
    rows = []
    for name in ("memory", "disk"):
        with sqlite3.connect(tmp_path / f"{name}.sqlite") as connection:
            rows.append([connection.execute("SELECT sql FROM sqlite_master WHERE name = 'items'").fetchall(),
                         connection.execute("SELECT key, id, text FROM items ORDER BY key").fetchall()])
    assert rows[0] == rows[1] and len(rows[1][1]) == len(memory)
    for cls in (ItemStore, DiskItemStore):  # each reads the other's file back
        for name in ("memory", "disk"):
            read = cls.read_sqlite(tmp_path / f"{name}.sqlite", count=len(memory), next_key=memory.next_key)
            assert _answers(read, probe_ids, probe_keys) == _answers(memory, probe_ids, probe_keys)


def _twins(metric, n=N_SMALL, **params):
    """The same compressed index twice: on the disk store (the default) and on the dict store."""
    built = []
    for oracle in (False, True):
        index = NeighborIndex(DIM, metric, "ivfpq", **{**PARAMS, **params})
        if oracle:
            index._store = ItemStore()
        index.add_embeddings(X[:n], TEXTS[:n], IDS[:n])
        built.append(index)
    assert isinstance(built[0]._store, DiskItemStore) and isinstance(built[1]._store, ItemStore)
    return built


def _same_results(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.ids == y.ids and x.texts == y.texts and x.query == y.query
        assert x.distances.tobytes() == y.distances.tobytes()


def _check_same_index(disk, memory, queries=Q[:30]):
    _same_results(disk.search_embeddings(queries, k=10), memory.search_embeddings(queries, k=10))
    radius = float(np.quantile(_exact(queries[:5], X[:50], "euclidean"), 0.2))
    _same_results(disk.range_search_embeddings(queries[:5], max_distance=radius),
                  memory.range_search_embeddings(queries[:5], max_distance=radius))
    assert disk.ids == memory.ids and disk.texts == memory.texts and len(disk) == len(memory)
    assert disk.embeddings().tobytes() == memory.embeddings().tobytes()
    assert disk.info()["compressed"] == memory.info()["compressed"]


@pytest.mark.parametrize("metric", METRICS)
def test_compressed_index_on_disk_store_matches_the_dict_store_bit_for_bit(metric):
    disk, memory = _twins(metric)
    _check_same_index(disk, memory)
    small = float(np.quantile(_exact(X[:200], X[:N_SMALL], metric)[:, 1:], 0.001))
    a, b = disk.dedupe(None, max_distance=small), memory.dedupe(None, max_distance=small)
    assert a.pairs == b.pairs and a.clusters == b.clusters and a.texts == b.texts and a.pairs
    assert disk.measure_recall(queries=50, seed=3) == memory.measure_recall(queries=50, seed=3)
    for index in (disk, memory):
        assert index.remove(["v3", "v700", "v1199"]) == 3
    _check_same_index(disk, memory, X[[3, 700, 1199, 4]])
    assert not {"v3", "v700", "v1199"} & set(disk.search_embeddings(X[[3, 700, 1199]], k=5)[0].ids)
    with pytest.raises(KeyError, match=r"1 id\(s\) are not in the index, e.g. \['v3'\]"):
        disk.remove(["v3", "v4"])
    assert "v4" in disk and len(disk) == N_SMALL - 3  # nothing removed
    for index in (disk, memory):
        index.add_embeddings(X[3:4], ["back"], ["v3"])
    _check_same_index(disk, memory)


def _folder_state(folder: Path) -> dict[str, str]:
    return {path.name: sha256_file(path) for path in sorted(folder.iterdir())}


def test_save_load_round_trip_reads_the_saved_file_and_add_copies_it(tmp_path):
    disk, memory = _twins("euclidean")
    private = disk.info()["store"]["file"]
    folder = disk.save(tmp_path / "idx")
    assert not Path(private).parent.exists()  # the private copy went; the saved file is used now
    assert disk.info()["store"]["file"] == str(folder / STORE_FILE)
    old_format = memory.save(tmp_path / "dict")  # written by ItemStore.write_sqlite, as before
    with sqlite3.connect(folder / STORE_FILE) as a, sqlite3.connect(old_format / STORE_FILE) as b:
        query = "SELECT key, id, text FROM items ORDER BY key"
        assert a.execute(query).fetchall() == b.execute(query).fetchall()
    saved = _folder_state(folder)
    for where in (folder, old_format):
        loaded = NeighborIndex.load(where)
        assert isinstance(loaded._store, DiskItemStore)
        assert loaded.info()["store"] == {"kind": "sqlite", "ram_bytes_per_item": 8, "file": str(where / STORE_FILE)}
        _check_same_index(loaded, memory)
    loaded = NeighborIndex.load(folder)
    for index in (loaded, memory):
        index.add_embeddings(X[N_SMALL : N_SMALL + 50], TEXTS[N_SMALL : N_SMALL + 50], IDS[N_SMALL : N_SMALL + 50])
        assert index.remove(["v0", "v1210"]) == 2
    assert Path(loaded.info()["store"]["file"]).parent != folder
    _check_same_index(loaded, memory)
    assert _folder_state(folder) == saved  # byte-identical, and no journal or copy left beside
    again = NeighborIndex.load(loaded.save(tmp_path / "again"))
    _check_same_index(again, memory)


def test_saved_folder_deleted_after_save_keeps_the_store_readable(tmp_path):
    disk, memory = _twins("euclidean", n=600, nlist=4)
    folder = disk.save(tmp_path / "staging")
    folder.rename(tmp_path / "snapshot")  # what the server does with its snapshots
    shutil.rmtree(tmp_path / "snapshot")
    _check_same_index(disk, memory)  # the open file is still read
    for index in (disk, memory):
        index.add_embeddings(X[600:650], TEXTS[600:650], IDS[600:650])
    _check_same_index(disk, memory)
    _check_same_index(NeighborIndex.load(disk.save(tmp_path / "again")), memory)


def test_private_file_is_removed_when_the_index_is_collected():
    disk, _ = _twins("euclidean", n=600, nlist=4)
    private = Path(disk.info()["store"]["file"])
    assert private.is_file() and private.parent.name.startswith("metric-sim-store-")
    del disk
    gc.collect()
    assert not private.parent.exists()


def test_concurrent_searches_give_the_serial_results(tmp_path):
    disk, _ = _twins("manhattan")
    loaded = NeighborIndex.load(disk.save(tmp_path / "idx"))  # read-only saved file
    for index in (disk, loaded):
        serial = [index.search_embeddings(Q[i : i + 5], k=10) for i in range(0, 60, 5)]
        texts = [index.text_of(f"v{i}") for i in range(60)]

        def work(i, index=index):
            return index.search_embeddings(Q[i : i + 5], k=10), index.text_of(f"v{i}"), f"v{i}" in index

        with ThreadPoolExecutor(max_workers=6) as pool:
            for _ in range(3):
                parallel = list(pool.map(work, range(0, 60, 5)))
                for (results, text, present), expected, i in zip(parallel, serial, range(0, 60, 5), strict=True):
                    _same_results(results, expected)
                    assert text == texts[i] and present


def test_info_and_cli_report_the_store_and_the_whole_index_ram(tmp_path, capsys):
    disk, _ = _twins("euclidean", n=600, nlist=4)
    info = disk.info()
    code_size = info["compressed"]["code_size"]
    assert code_size == 5  # 8 codes of 5 bits
    assert info["ram_bytes_per_item"] == code_size + 8 + 8 == info["compressed"]["ram_bytes_per_item"] + 8
    folder = disk.save(tmp_path / "idx")
    assert main(["index", "info", str(folder), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["store"]["kind"] == "sqlite" and shown["ram_bytes_per_item"] == 21
    assert main(["index", "info", str(folder)]) == 0
    assert "13 bytes per item (codes + int64 ids), 21 with the sqlite store's keys" in capsys.readouterr().out


_RAM_SCRIPT = textwrap.dedent("""
    import gc, sys, tracemalloc
    import numpy as np
    from metric_sim import NeighborIndex
    from metric_sim.index.store import ItemStore

    n, first, batch = 100_000, 10_000, 10_000
    x = np.random.default_rng(0).normal(size=(n, 32)).astype(np.float32)
    index = NeighborIndex(32, "euclidean", "ivfpq", m=8, nbits=4, nlist=16, nprobe=4)
    if sys.argv[1] == "memory":
        index._store = ItemStore()
    index.add_embeddings(x[:first], [f"t{j}" for j in range(first)], [f"i{j}" for j in range(first)])
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for start in range(first, n, batch):  # short ids and texts, made here so a store keeping them shows
        stop = start + batch
        index.add_embeddings(x[start:stop], [f"t{j}" for j in range(start, stop)], [f"i{j}" for j in range(start, stop)])
    gc.collect()
    grown = tracemalloc.get_traced_memory()[0] - before
    print(grown / (n - first), index.info()["ram_bytes_per_item"], len(index))
""")


def test_store_ram_per_item_is_a_few_bytes_where_the_dict_store_is_not():
    measured = {}
    for kind in ("sqlite", "memory"):
        done = subprocess.run([sys.executable, "-c", _RAM_SCRIPT, kind], capture_output=True, text=True,
                              check=False, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        per_item, whole, count = done.stdout.split()
        assert int(count) == 100_000
        measured[kind] = (float(per_item), whole)
    assert measured["sqlite"][0] < 32 < measured["memory"][0], measured
    assert measured["sqlite"][1] == str(4 + 8 + 8)  # 4 code bytes, the FAISS id, the store's key
    assert measured["memory"][1] == "None"  # the dict store's size is not known without measuring
