"""Where training and encoding time goes: ``torch.profiler`` top operators, metric-sim vs sentence-transformers.

speed.py says how fast each system is; this script says where the time is spent, so the
speed work starts from a profile and RESULTS.md can show the same top lines before and after.
Each system runs in a fresh child process (``--child``, as in speed.py) with
``torch.set_num_threads(--threads)`` and ``OMP_NUM_THREADS`` set alike.

* ``training`` (systems ``metric_sim``, ``sentence_transformers``): ``speed.child_train`` itself,
  unchanged (the same QQP pairs, ``TrainConfig`` and ``quality.train_sentence_transformers`` call,
  batch ``--batch-size``, max length 128). Its step timer is swapped for one whose
  ``TrainerCallback`` (both trainers are ``transformers.Trainer``s) starts
  ``torch.profiler.profile(activities=[CPU], record_shapes=False)`` at the end of step
  ``--warmup-steps`` and stops it at the end of step ``--warmup-steps + --profile-steps``.
* ``encoding`` (systems ``metric_sim_torch``, ``sentence_transformers``): as ``speed.child_encode``,
  one warm-up ``encode`` of 256 texts, then one profiled ``encode`` (batch 64) of the first
  ``--encode-limit`` QQP test questions.

What the tables report (all from ``prof.key_averages()`` / ``prof.events()``; the profiler
times each operator on the thread that calls it, intra-op threads are not added up):

* top ``--top`` operators by self CPU time. ``self ms`` is the operator's own time (its
  children's excluded) per training step, or per 1000 sentences for encoding; ``%`` is its
  share of the total self CPU time of every recorded event; ``calls`` is the number of calls
  in the whole profiled window. Names are aten operators, autograd nodes and the
  ``record_function`` ranges torch emits: ``enumerate(DataLoader)#...__next__`` (the sampler and
  the data collator, tokenization included), ``Optimizer.step#...`` and ``Optimizer.zero_grad#...``;
* a coarse breakdown in seconds per step (per 1000 sentences for encoding). Each event's self
  time goes to the first category that fits, looking at the event and then its parents:
  ``data`` (under ``enumerate(DataLoader)#``), ``optimizer`` (under ``Optimizer.``), ``attention``
  (``scaled_dot_product*`` and what runs under it, ``*softmax*``), ``matmul`` (``aten::mm``,
  ``addmm``, ``bmm``, ``baddbmm``, ``matmul``, ``linear``, ``mv``, ``addmv``), ``other ops``
  (everything else recorded). ``wall`` is the profiled window's wall time; ``outside ops`` is
  ``wall`` minus the recorded self time: Python between operators, and for encoding the
  tokenizer (it runs outside any torch operator). Profiling adds some overhead to each call,
  so ``wall`` is a little slower than speed.py's figures.

    PYTHONPATH=$PWD python benchmarks/profile_speed.py --json benchmarks/results_profile.json --markdown benchmarks/results_profile.md
    PYTHONPATH=$PWD python benchmarks/profile_speed.py --quick     # tiny random BERT on the demo pairs, seconds

To profile an older version of the library (the "before" lines), run this same script with
``PYTHONPATH`` pointing at a checkout of that version, e.g.
``PYTHONPATH=/tmp/metric-sim-old python benchmarks/profile_speed.py --json /tmp/profile_before.json``
(the children import ``metric_sim`` from ``PYTHONPATH``; ``speed.py`` and ``quality.py`` come from
this folder).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import speed  # noqa: E402
from _common import environment, markdown_table, write_json, write_outputs  # noqa: E402

RESULT_PREFIX = "PROFILE-RESULT "
SECTIONS = ("training", "encoding")
SYSTEMS = {"training": ("metric_sim", "sentence_transformers"), "encoding": ("metric_sim_torch", "sentence_transformers")}
# --systems metric_sim selects metric-sim in both sections.
LIBRARY = {"metric_sim_torch": "metric_sim"}
CATEGORIES = ("data", "optimizer", "attention", "matmul", "other ops")
MATMUL_OPS = frozenset({"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear",
                        "aten::mv", "aten::addmv"})
ENCODE_BATCH = 64


# ----------------------------------------------------------------------------- pure helpers
def _own_category(name: str) -> str | None:
    """The category an event's own name puts it in, or None (then its parents decide)."""
    if name.startswith("enumerate(DataLoader)#"):
        return "data"
    if name.startswith("Optimizer."):
        return "optimizer"
    if "scaled_dot_product" in name.lower() or "softmax" in name.lower():
        return "attention"
    if name in MATMUL_OPS:
        return "matmul"
    return None


def event_category(event: Any) -> str:
    """Category of one profiler event: data and optimizer ranges and attention claim what runs under them;
    a matmul counts as matmul only outside those."""
    found = []
    node = event
    while node is not None:
        found.append(_own_category(node.key))
        node = getattr(node, "cpu_parent", None)  # key_averages() entries have no parents: own name only
    for category in ("data", "optimizer", "attention"):
        if category in found:
            return category
    return "matmul" if found[0] == "matmul" else "other ops"


def category_seconds(events: Iterable[Any]) -> dict[str, float]:
    """Self CPU seconds per category (``CATEGORIES``) over profiler events (``prof.events()``; each has
    ``key``, ``self_cpu_time_total`` in microseconds and optionally ``cpu_parent``)."""
    out = dict.fromkeys(CATEGORIES, 0.0)
    for event in events:
        out[event_category(event)] += event.self_cpu_time_total / 1e6
    return out


def top_operators(averages: Iterable[Any], top: int, units: float) -> list[dict[str, Any]]:
    """The ``top`` entries of ``prof.key_averages()`` by self CPU time: name, self ms per unit
    (``units`` steps or thousands of sentences), % of all self time, calls."""
    rows = list(averages)
    total = sum(r.self_cpu_time_total for r in rows)
    rows.sort(key=lambda r: (-r.self_cpu_time_total, r.key))
    return [{"name": r.key, "self_ms": r.self_cpu_time_total / 1e3 / units,
             "percent": 100.0 * r.self_cpu_time_total / total if total else 0.0, "calls": int(r.count)}
            for r in rows[:top]]


def breakdown(events: Iterable[Any], wall_s: float, units: float) -> dict[str, float]:
    """Seconds per unit: ``wall``, each category, and ``outside ops`` (wall minus all recorded self time, >= 0)."""
    seconds = category_seconds(events)
    recorded = sum(seconds.values())
    out = {"wall": wall_s / units, **{k: v / units for k, v in seconds.items()}}
    out["outside ops"] = max(0.0, wall_s - recorded) / units
    return out


def profile_summary(prof: Any, wall_s: float, units: float, top: int) -> dict[str, Any]:
    """What a child reports; ``ranges``: calls of the data and optimizer ranges, i.e. the batches and
    optimizer steps that fell inside the profiled window."""
    events, averages = prof.events(), prof.key_averages()
    return {"wall_s": wall_s, "units": units, "top": top_operators(averages, top, units),
            "breakdown_s": breakdown(events, wall_s, units),
            "total_self_s": sum(e.self_cpu_time_total for e in events) / 1e6,
            "ranges": {a.key: int(a.count) for a in averages if _own_category(a.key) in ("data", "optimizer")}}


# ----------------------------------------------------------------------------- the children
def _cpu_profiler() -> Any:
    import torch

    return torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=False)


class ProfilingTimer(speed._StepTimer):
    """speed's step timer (``callback``, ``seconds``), profiling the timed steps as well."""

    def __init__(self, warmup: int, steps: int) -> None:
        super().__init__(warmup, steps)
        self.prof: Any = None

    def begin(self) -> None:
        self.prof = _cpu_profiler()
        self.prof.start()
        super().begin()  # after start(): the profiler's own start-up is not timed

    def end(self) -> None:
        super().end()
        self.prof.stop()


def _quick_model(folder: Path) -> dict[str, Any]:
    import train_memory

    return train_memory.build_tiny_model(folder, train_memory.demo_texts())


def _demo_questions(limit: int | None) -> list[str]:
    from metric_sim import demo_pairs_path
    from metric_sim.data import load_pairs

    demo = load_pairs(demo_pairs_path(), text_a="question1", text_b="question2", label="is_duplicate")
    texts = sorted(set(demo.texts_a) | set(demo.texts_b))
    return texts[:limit] if limit else texts


def child_training(system: str, warmup: int, steps: int, batch_size: int, top: int, quick: bool) -> dict[str, Any]:
    """Profile training steps ``warmup + 1 .. warmup + steps`` of ``speed.child_train``."""
    made: list[ProfilingTimer] = []

    def timer(warmup: int, steps: int) -> ProfilingTimer:
        made.append(ProfilingTimer(warmup, steps))
        return made[-1]

    speed._StepTimer = timer  # child_train looks it up at call time
    with tempfile.TemporaryDirectory(prefix="profile_speed_") as tmp:
        tiny = None
        if quick:
            import quality_st
            import train_memory

            import metric_sim

            folder = Path(tmp) / "tiny_bert"
            tiny = _quick_model(folder)
            speed._train_pairs = train_memory.demo_train_pairs
            config_class = metric_sim.TrainConfig
            metric_sim.TrainConfig = lambda **kw: config_class(**{**kw, "model": str(folder)})
            quality_st.default_model_path = lambda: folder
        out = speed.child_train(system, (warmup + steps) * batch_size, warmup, steps, batch_size)
    summary = profile_summary(made[-1].prof, made[-1].seconds, steps, top)
    return {"system": system, "steps": steps, "pairs_per_s": out["pairs_per_s"], **summary,
            **({"tiny_model": tiny} if tiny else {})}


def _encoder(system: str, model: str | Path) -> Callable[[list[str]], Any]:
    """The same encode call as speed.child_encode."""
    if system == "metric_sim_torch":
        from metric_sim import Encoder

        encoder = Encoder.from_pretrained(str(model), max_length=128)
        return lambda t: encoder.encode(t, batch_size=ENCODE_BATCH)
    if system == "sentence_transformers":
        from sentence_transformers import SentenceTransformer

        from metric_sim import default_model_path

        st = SentenceTransformer(str(default_model_path() if model == "default" else model), device="cpu")
        st.max_seq_length = 128
        return lambda t: st.encode(t, batch_size=ENCODE_BATCH)
    raise ValueError(f"unknown encoding system {system!r}")


def child_encoding(system: str, limit: int | None, top: int, quick: bool) -> dict[str, Any]:
    """Profile one ``encode`` of ``limit`` QQP test questions (demo questions with ``quick``) after a warm-up."""
    with tempfile.TemporaryDirectory(prefix="profile_speed_") as tmp:
        model: str | Path = "default"
        tiny = None
        if quick:
            model = Path(tmp) / "tiny_bert"
            tiny = _quick_model(model)
        texts = _demo_questions(limit) if quick else speed._test_texts(limit)
        run = _encoder(system, model)
        run(texts[:256])
        prof = _cpu_profiler()
        prof.start()
        started = time.perf_counter()
        run(texts)
        wall = time.perf_counter() - started
        prof.stop()
    summary = profile_summary(prof, wall, len(texts) / 1000, top)
    return {"system": system, "texts": len(texts), "sentences_per_s": len(texts) / wall, **summary,
            **({"tiny_model": tiny} if tiny else {})}


CHILDREN = {"training": child_training, "encoding": child_encoding}


def _run_child_main(spec: dict[str, Any]) -> None:
    import torch

    torch.set_num_threads(spec.pop("threads"))
    result = CHILDREN[spec.pop("section")](**spec)
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def run_child(section: str, threads: int, timeout: float, **kwargs: Any) -> dict[str, Any]:
    """One system profiled in a fresh interpreter; returns its JSON result."""
    spec = {"section": section, "threads": threads, **kwargs}
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                          env=env, timeout=timeout)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    raise RuntimeError(f"child {section} {kwargs} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


# ----------------------------------------------------------------------------- report
def top_table(system: str, result: dict[str, Any], unit: str) -> str:
    """The top operators, then the data and optimizer ranges' calls in the window (batches, optimizer steps)."""
    table = markdown_table([f"{system}: operator", f"self ms / {unit}", "% of self time", "calls"], [
        [row["name"], f"{row['self_ms']:.2f}", f"{row['percent']:.1f}", row["calls"]] for row in result["top"]])
    ranges = result.get("ranges")
    return table + ("\n\nIn the window: " + ", ".join(f"{k} x{v}" for k, v in sorted(ranges.items())) if ranges else "")


def breakdown_table(section: str, results: dict[str, dict[str, Any]], unit: str) -> str:
    names = list(results)
    keys = ("wall", *CATEGORIES, "outside ops")
    return markdown_table([f"{section}: s / {unit}", *names], [
        [key, *[f"{results[n]['breakdown_s'][key]:.4f}" for n in names]] for key in keys])


UNITS = {"training": "step", "encoding": "1000 sentences"}


def tables(results: dict[str, Any]) -> str:
    parts = []
    for section in SECTIONS:
        if results.get(section):
            unit = UNITS[section]
            parts.append(breakdown_table(section, results[section], unit))
            parts += [top_table(system, result, unit) for system, result in results[section].items()]
    return "\n\n".join(parts)


def selected(section: str, systems: list[str]) -> list[str]:
    return [s for s in SYSTEMS[section] if s in systems or LIBRARY.get(s) in systems]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--systems", nargs="+", default=["metric_sim", "sentence_transformers"],
                        choices=sorted({s for names in SYSTEMS.values() for s in names}),
                        help="metric_sim selects metric_sim_torch for encoding too (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--warmup-steps", type=int, default=3, help="training steps before the profiler starts")
    parser.add_argument("--profile-steps", type=int, default=5, help="training steps profiled")
    parser.add_argument("--encode-limit", type=int, default=2000, help="QQP test questions encoded while profiled")
    parser.add_argument("--top", type=int, default=15, help="operators listed per system")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per child")
    parser.add_argument("--json", help="write the raw results here")
    parser.add_argument("--markdown", help="write the tables here")
    parser.add_argument("--quick", action="store_true",
                        help="a tiny random BERT built in each child, on the demo pairs: 1 + 2 steps of batch 8 (seconds)")
    args = parser.parse_args(argv)
    if args.child:
        _run_child_main(json.loads(args.child))
        return 0
    if args.quick:
        args.warmup_steps, args.profile_steps = min(args.warmup_steps, 1), min(args.profile_steps, 2)
        args.batch_size, args.encode_limit = min(args.batch_size, 8), min(args.encode_limit, 200)
    results: dict[str, Any] = {
        "environment": environment(), "quick": args.quick, "threads": args.threads, "batch_size": args.batch_size,
        "warmup_steps": args.warmup_steps, "profile_steps": args.profile_steps, "encode_limit": args.encode_limit,
        "top": args.top}
    for section in args.sections:
        results[section] = {}
        for system in selected(section, args.systems):
            if section == "training":
                out = run_child(section, args.threads, args.timeout, system=system, warmup=args.warmup_steps,
                                steps=args.profile_steps, batch_size=args.batch_size, top=args.top, quick=args.quick)
            else:
                out = run_child(section, args.threads, args.timeout, system=system, limit=args.encode_limit,
                                top=args.top, quick=args.quick)
            results[section][system] = out
            print(f"{section} {system}: wall {out['breakdown_s']['wall']:.3f} s / {UNITS[section]}", flush=True)
            if args.json:  # after every child: a crash keeps what was measured
                write_json(args.json, results)
    text = tables(results)
    print(text)
    write_outputs(args.json, results, args.markdown, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
