"""The training-memory benchmark: its helpers against exact oracles, and --quick end to end on a tiny random BERT."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"
sys.path.insert(0, str(BENCH))

import train_memory  # noqa: E402


# ----------------------------------------------------------------------------- helpers
def test_deep_bytes_counts_each_object_once_and_array_buffers():
    shared = "a text that two lists hold" * 3
    other = "another"
    values = [shared, other, shared]
    expected = sys.getsizeof(values) + sys.getsizeof(shared) + sys.getsizeof(other)
    assert train_memory.deep_bytes(values) == expected

    array = np.zeros(1000, dtype=np.int64)

    @dataclass
    class Held:
        items: list
        ids: np.ndarray
        view: np.ndarray

    held = Held(values, array, array[:10])
    assert sys.getsizeof(array) > 8000  # numpy counts the buffer it owns
    expected_held = sys.getsizeof(held) + expected + sys.getsizeof(array) + sys.getsizeof(held.view)
    assert train_memory.deep_bytes(held) == expected_held
    assert train_memory.deep_bytes(array[5:]) == sys.getsizeof(array[5:]) + sys.getsizeof(array)  # a view holds its base
    mapping = {"k": values}
    assert train_memory.deep_bytes(mapping) == sys.getsizeof(mapping) + sys.getsizeof("k") + expected


def test_proc_memory_sees_touched_pages():
    # In a fresh interpreter: inside the test session the allocator may hand back pages that are
    # already resident, and RSS would not move.
    code = ("import json, sys, numpy as np; sys.path.insert(0, sys.argv[1]); import train_memory as t; "
            "b = t.proc_memory(); x = np.ones(64 * 1024 * 1024 // 8); a = t.proc_memory(); print(json.dumps([b, a]))")
    done = subprocess.run([sys.executable, "-c", code, str(BENCH)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    before, after = json.loads(done.stdout.strip().splitlines()[-1])
    assert after["rss_mib"] - before["rss_mib"] >= 60
    assert after["hwm_mib"] >= after["rss_mib"] > 0


def test_phase_deltas_and_verdict_pick_the_widest_gap():
    phases = {p: {"rss_mib": 100.0 + 10 * i, "hwm_mib": 100.0 + 10 * i} for i, p in enumerate(train_memory.PHASES)}
    peer = {p: dict(v) for p, v in phases.items()}
    ours = {p: dict(v) for p, v in phases.items()}
    for p in train_memory.PHASES[train_memory.PHASES.index("finished"):]:
        ours[p]["hwm_mib"] += 500  # a transient peak in the last phase only
    deltas = train_memory.phase_deltas(phases, "rss_mib")
    assert list(deltas) == list(train_memory.PHASES)
    assert deltas["imports"] == 100.0 and all(deltas[p] == 10.0 for p in train_memory.PHASES[1:])
    systems = {"metric_sim": {"phases": ours, "peak_rss_mib": 680.0},
               "sentence_transformers": {"phases": peer, "peak_rss_mib": 180.0}}
    line = train_memory.verdict(systems)
    assert line.startswith("peak metric_sim 680 MiB vs sentence_transformers 180 MiB (+500)")
    assert re.search(r"differ most .*: finished \+500 / \+0 MiB", line)


# ----------------------------------------------------------------------------- end to end
def _bert_parameters(vocab: int, hidden: int, intermediate: int, layers: int, positions: int) -> tuple[int, int]:
    """Parameters and tensors of a BertModel without the pooler (type vocabulary 2), by hand."""
    embeddings = vocab * hidden + positions * hidden + 2 * hidden + 2 * hidden
    layer = 4 * (hidden * hidden + hidden) + 2 * hidden + 2 * (hidden * intermediate) + intermediate + hidden + 2 * hidden
    return embeddings + layers * layer, 5 + 16 * layers


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    systems = ["metric_sim"]
    if importlib.util.find_spec("sentence_transformers") is not None:
        systems.append("sentence_transformers")
    out = tmp_path_factory.mktemp("train_memory") / "quick.json"
    markdown = out.with_suffix(".md")
    assert train_memory.main(["--quick", "--threads", "1", "--systems", *systems, "--json", str(out),
                              "--markdown", str(markdown)]) == 0
    return json.loads(out.read_text()), markdown.read_text(), systems


def test_quick_run_reads_every_phase_in_order(quick_results):
    results, _, systems = quick_results
    assert results["quick"] and results["steps"] == 3 and results["batch_size"] == 8 and results["pairs"] == 24
    assert list(results["systems"]) == systems
    for name in systems:
        phases = results["systems"][name]["phases"]
        assert list(phases) == list(train_memory.PHASES), name  # read in this order, none missing
        hwm = [phases[p]["hwm_mib"] for p in train_memory.PHASES]
        seconds = [phases[p]["seconds"] for p in train_memory.PHASES]
        assert all(phases[p]["rss_mib"] > 0 for p in train_memory.PHASES)
        assert all(phases[p]["rss_mib"] <= phases[p]["hwm_mib"] for p in train_memory.PHASES)
        assert hwm == sorted(hwm) and seconds == sorted(seconds)
        assert results["systems"][name]["peak_rss_mib"] >= hwm[-1]


def test_quick_run_optimizer_state_is_adamw_moments_of_the_tiny_bert(quick_results):
    results, _, systems = quick_results
    # The vocabulary the tiny tokenizer must have: 5 specials + the distinct lower-cased words/punctuation of the demo file.
    demo = (REPO / "metric_sim" / "demo_data" / "demo_pairs.tsv").read_text(encoding="utf-8").lower()
    vocab = 5 + len(set(re.findall(r"\w+|[^\w\s]", demo)))
    cfg = train_memory.TINY_BERT
    params, tensors = _bert_parameters(vocab, cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"],
                                       cfg["max_position_embeddings"])
    pooler = cfg["hidden_size"] ** 2 + cfg["hidden_size"]  # sentence-transformers' BertModel adds an (unused) pooler
    for name in systems:
        system = results["systems"][name]
        assert system["tiny_model"]["vocab_size"] == vocab
        for phase in ("first_step", "last_step"):
            stats = system["training"][phase]
            assert stats["optimizer"] == "AdamW"
            # exp_avg + exp_avg_sq per float32 parameter that got a gradient, plus one float32 step scalar each
            assert stats["optimizer_state_bytes"] == 2 * 4 * params + 4 * tensors, (name, phase)
            assert stats["optimizer_state_tensors"] == 3 * tensors and stats["parameters_with_state"] == tensors
            extra = pooler if name == "sentence_transformers" else 0
            assert stats["parameter_bytes"] == stats["trainable_parameter_bytes"] == 4 * (params + extra)


def test_quick_run_reports_objects_tables_and_verdict(quick_results):
    results, markdown, systems = quick_results
    ours = results["systems"]["metric_sim"]["objects"]
    assert ours["metric_sim: prepared pairs (unique items, ids, labels, clusters)"] > 0
    assert ours["selected pairs: column lists (texts, ids)"] > 0
    for phase in train_memory.PHASES:
        assert re.search(rf"^\| {phase} \| \d+ \| [+-]\d+ \| \d+ \| [+-]\d+ \|", markdown, re.M), phase
    assert markdown.rstrip().endswith(results["verdict"])
    if "sentence_transformers" in systems:
        assert results["verdict"].startswith("peak metric_sim ")
        assert results["systems"]["sentence_transformers"]["objects"]["sentence_transformers: text and label lists"] > 0
