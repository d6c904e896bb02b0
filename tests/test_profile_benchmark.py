"""The profiling benchmark: its helpers against hand-made profiler entries, and --quick end to end on a tiny random BERT."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"
sys.path.insert(0, str(BENCH))

import profile_speed  # noqa: E402


def _event(key: str, self_us: float, parent: SimpleNamespace | None = None) -> SimpleNamespace:
    """A stand-in for a profiler ``FunctionEvent`` (key, self time in microseconds, parent)."""
    return SimpleNamespace(key=key, self_cpu_time_total=self_us, cpu_parent=parent)


def _average(key: str, self_us: float, count: int) -> SimpleNamespace:
    """A stand-in for a ``key_averages()`` entry: no parent."""
    return SimpleNamespace(key=key, self_cpu_time_total=self_us, count=count)


# ----------------------------------------------------------------------------- categories
def test_categories_follow_the_parents_of_each_event():
    loader = _event("enumerate(DataLoader)#_SingleProcessDataLoaderIter.__next__", 4000)
    step = _event("Optimizer.step#AdamW.step", 300)
    sdpa = _event("aten::scaled_dot_product_attention", 20)
    linear = _event("aten::linear", 5)
    backward = _event("autograd::engine::evaluate_function: MmBackward0", 7)
    events = [
        loader, _event("aten::copy_", 60, loader), _event("aten::mm", 11, loader),   # under the data range: data
        step, _event("aten::_foreach_mul_", 200, step), _event("aten::mm", 13, step),  # under the optimizer: optimizer
        _event("Optimizer.zero_grad#AdamW.zero_grad", 9),
        sdpa, _event("aten::_scaled_dot_product_flash_attention_for_cpu", 1000, sdpa), _event("aten::bmm", 50, sdpa),
        _event("aten::_softmax", 100),
        linear, _event("aten::addmm", 2000, linear), _event("aten::t", 3, linear),  # aten::t is not a matmul
        backward, _event("aten::mm", 1500, backward),
        _event("aten::gelu", 400), _event("aten::native_layer_norm", 70),
    ]
    assert [profile_speed.event_category(e) for e in events] == [
        "data", "data", "data", "optimizer", "optimizer", "optimizer", "optimizer", "attention", "attention",
        "attention", "attention", "matmul", "matmul", "other ops", "other ops", "matmul", "other ops", "other ops"]
    seconds = profile_speed.category_seconds(events)
    assert list(seconds) == list(profile_speed.CATEGORIES)
    expected = {"data": 4071e-6, "optimizer": 522e-6, "attention": 1170e-6, "matmul": 3505e-6, "other ops": 480e-6}
    assert seconds == pytest.approx(expected, rel=1e-12, abs=0)
    assert sum(seconds.values()) == pytest.approx(sum(e.self_cpu_time_total for e in events) / 1e6, rel=1e-12)


def test_categories_of_a_key_averages_list_use_each_name_alone():
    averages = [_average("aten::addmm", 5000, 36), _average("aten::mm", 2500, 72), _average("aten::linear", 500, 36),
                _average("aten::_scaled_dot_product_flash_attention_for_cpu_backward", 1200, 6),
                _average("aten::_softmax_backward_data", 300, 6), _average("Optimizer.step#AdamW.step", 250, 5),
                _average("enumerate(DataLoader)#_SingleProcessDataLoaderIter.__next__", 900, 5),
                _average("aten::add", 400, 50), _average("aten::empty", 100, 270)]
    seconds = profile_speed.category_seconds(averages)
    assert seconds == pytest.approx({"data": 900e-6, "optimizer": 250e-6, "attention": 1500e-6, "matmul": 8000e-6,
                                     "other ops": 500e-6}, rel=1e-12, abs=0)


def test_breakdown_per_unit_and_time_outside_ops():
    events = [_event("aten::addmm", 300_000), _event("aten::gelu", 100_000)]
    out = profile_speed.breakdown(events, wall_s=1.0, units=4)
    assert list(out) == ["wall", *profile_speed.CATEGORIES, "outside ops"]
    assert out == pytest.approx({"wall": 0.25, "data": 0.0, "optimizer": 0.0, "attention": 0.0, "matmul": 0.075,
                                 "other ops": 0.025, "outside ops": 0.15}, rel=1e-12, abs=1e-15)
    # Recorded time over the wall (ops on several threads) is never reported as negative time outside ops.
    assert profile_speed.breakdown(events, wall_s=0.3, units=1)["outside ops"] == 0.0


# ----------------------------------------------------------------------------- top operators and tables
def test_top_operators_by_self_time_with_shares_of_all_entries():
    averages = [_average("aten::gelu", 1000, 6), _average("aten::addmm", 6000, 36), _average("aten::add", 1000, 50),
                _average("aten::empty", 2000, 270)]
    top = profile_speed.top_operators(averages, top=3, units=2)
    assert top == [  # total 10,000 us; ties broken by name
        {"name": "aten::addmm", "self_ms": 3.0, "percent": 60.0, "calls": 36},
        {"name": "aten::empty", "self_ms": 1.0, "percent": 20.0, "calls": 270},
        {"name": "aten::add", "self_ms": 0.5, "percent": 10.0, "calls": 50},
    ]
    assert profile_speed.top_operators([], top=3, units=1) == []


def test_markdown_tables():
    result = {"top": [{"name": "aten::addmm", "self_ms": 3.0, "percent": 60.0, "calls": 36},
                      {"name": "aten::a|b", "self_ms": 0.125, "percent": 2.5, "calls": 1}],
              "ranges": {"Optimizer.step#AdamW.step": 5, "enumerate(DataLoader)#X.__next__": 5},
              "breakdown_s": {"wall": 0.5, "data": 0.01, "optimizer": 0.02, "attention": 0.03, "matmul": 0.2,
                              "other ops": 0.1, "outside ops": 0.14}}
    assert profile_speed.top_table("metric_sim", result, "step") == "\n".join([
        "| metric_sim: operator | self ms / step | % of self time | calls |",
        "|---|---|---|---|",
        "| aten::addmm | 3.00 | 60.0 | 36 |",
        "| aten::a\\|b | 0.12 | 2.5 | 1 |",
        "",
        "In the window: Optimizer.step#AdamW.step x5, enumerate(DataLoader)#X.__next__ x5"])
    peer = {**result, "breakdown_s": {k: 2 * v for k, v in result["breakdown_s"].items()}}
    assert profile_speed.breakdown_table("training", {"metric_sim": result, "sentence_transformers": peer}, "step") == "\n".join([
        "| training: s / step | metric_sim | sentence_transformers |",
        "|---|---|---|",
        "| wall | 0.5000 | 1.0000 |",
        "| data | 0.0100 | 0.0200 |",
        "| optimizer | 0.0200 | 0.0400 |",
        "| attention | 0.0300 | 0.0600 |",
        "| matmul | 0.2000 | 0.4000 |",
        "| other ops | 0.1000 | 0.2000 |",
        "| outside ops | 0.1400 | 0.2800 |"])


def test_systems_selection():
    assert profile_speed.selected("training", ["metric_sim"]) == ["metric_sim"]
    assert profile_speed.selected("encoding", ["metric_sim"]) == ["metric_sim_torch"]
    assert profile_speed.selected("training", ["metric_sim_torch"]) == []
    assert profile_speed.selected("encoding", ["sentence_transformers", "metric_sim"]) == ["metric_sim_torch",
                                                                                          "sentence_transformers"]


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("profile_speed") / "quick.json"
    markdown = out.with_suffix(".md")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, str(BENCH / "profile_speed.py"), "--quick", "--threads", "1",
                           "--systems", "metric_sim", "--json", str(out), "--markdown", str(markdown)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text()), markdown.read_text()


@pytest.mark.parametrize(("section", "system"), [("training", "metric_sim"), ("encoding", "metric_sim_torch")])
def test_quick_run_top_operators(quick_results, section, system):
    results, markdown = quick_results
    assert results["quick"] and results["top"] == 15 and results["profile_steps"] == 2
    assert list(results[section]) == [system]  # --systems metric_sim: metric-sim only, in both sections
    result = results[section][system]
    top = result["top"]
    assert len(top) == 15
    assert [r["self_ms"] for r in top] == sorted((r["self_ms"] for r in top), reverse=True)
    assert 0 < sum(r["percent"] for r in top) <= 100
    assert any(r["name"] in profile_speed.MATMUL_OPS for r in top), [r["name"] for r in top]
    for row in top:  # key_averages() and events() add up to the same total self time
        share = row["self_ms"] * result["units"] / 1e3 / result["total_self_s"] * 100
        assert row["percent"] == pytest.approx(share, rel=1e-6)
    parts = result["breakdown_s"]
    assert parts["wall"] * result["units"] == pytest.approx(result["wall_s"], rel=1e-9)
    recorded = sum(parts[c] for c in profile_speed.CATEGORIES)
    assert recorded * result["units"] == pytest.approx(result["total_self_s"], rel=1e-9)
    assert parts["outside ops"] == pytest.approx(max(0.0, parts["wall"] - recorded), rel=1e-9, abs=1e-12)
    assert parts["matmul"] > 0 and parts["attention"] > 0
    assert f"| {system}: operator |" in markdown and f"| {section}: s / " in markdown


def test_quick_run_profiles_exactly_the_profiled_steps(quick_results):
    results, _ = quick_results
    training = results["training"]["metric_sim"]
    assert training["units"] == 2 and training["steps"] == 2
    # Two batches fetched and two optimizer steps inside the window: the warm-up step and the end are outside it.
    assert training["ranges"]["enumerate(DataLoader)#_SingleProcessDataLoaderIter.__next__"] == 2
    assert training["ranges"]["Optimizer.step#AdamW.step"] == 2
    assert training["breakdown_s"]["data"] > 0 and training["breakdown_s"]["optimizer"] > 0
    encoding = results["encoding"]["metric_sim_torch"]
    assert encoding["units"] == encoding["texts"] / 1000 and 0 < encoding["texts"] <= 200
    assert encoding["ranges"] == {} and encoding["breakdown_s"]["data"] == encoding["breakdown_s"]["optimizer"] == 0
