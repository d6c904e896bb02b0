"""Where training memory goes: RSS and its high-water mark at named phases, metric-sim vs sentence-transformers.

speed.py reports one peak RSS per training child; this script splits it into phases. Each
system trains in a fresh child process (``--child``) through ``speed.child_train`` itself,
unchanged: the same QQP pairs (``speed._train_pairs``), the same ``TrainConfig`` for
``metric_sim.train`` and the same ``quality.train_sentence_transformers`` call. The child only
wraps a few names that ``child_train`` and ``metric_sim.training.run`` look up at call time,
so each phase is read where it ends, and adds a ``TrainerCallback`` (both trainers are
``transformers.Trainer``s) through ``speed._StepTimer``. ``VmRSS`` (resident now) and ``VmHWM``
(peak so far, the figure speed.py reports) come from ``/proc/self/status``.

Phases, in order (each figure is read when the phase ends):

* ``imports``: torch, transformers, datasets, metric_sim.data and the system's trainer;
* ``data_loaded``: ``_train_pairs`` returned (the QQP preset read, the pairs selected);
* ``model_loaded``: metric-sim ``starting_encoder`` returned; sentence-transformers: the
  ``SentenceTransformer`` built and the text lists copied (read as ``Dataset.from_dict`` starts);
* ``setup_done``: metric-sim ``prepare_pairs``, the dev evaluator and the ``PairCollator``;
  sentence-transformers ``Dataset.from_dict`` of the pairs;
* ``trainer_built``: ``on_init_end`` (metric-sim also tokenizes every item for the length sampler
  and runs its preflight first; the sentence-transformers trainer builds its collator);
* ``train_begin``: ``on_train_begin`` (optimizer built, no state yet, dataloader made);
* ``first_step``: ``on_step_end`` of step 1 (AdamW's moments now exist);
* ``last_step``: ``on_step_end`` of step ``--steps``;
* ``finished``: ``child_train`` returned (metric-sim calibrates on dev and saves; s-t saves);
  its ``VmHWM`` is the peak speed.py reports.

The child also reports parameter, gradient and optimizer-state bytes (tensors in
``optimizer.state``) at the first and last step, and the bytes of the big Python objects
each training holds: the selected pairs' column lists and Arrow table (both systems), the
prepared unique-item pairs (metric-sim) and the text lists and Arrow table handed to the
trainer (sentence-transformers). metric-sim caches no tokenization: its collator tokenizes
each batch.

    PYTHONPATH=$PWD python benchmarks/train_memory.py --json /tmp/train_memory.json --markdown /tmp/train_memory.md
    PYTHONPATH=$PWD python benchmarks/train_memory.py --quick     # tiny random BERT on the demo pairs, seconds
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, markdown_table, write_outputs  # noqa: E402

RESULT_PREFIX = "TRAIN-MEMORY-RESULT "
SYSTEMS = ("metric_sim", "sentence_transformers")
PHASES = ("imports", "data_loaded", "model_loaded", "setup_done", "trainer_built", "train_begin", "first_step",
          "last_step", "finished")
MIB = 1024 * 1024
# The tiny random BERT of --quick (the test suite's shape; positions cover child_train's max_length 128).
TINY_BERT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
             "max_position_embeddings": 128, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


# ----------------------------------------------------------------------------- measuring
def proc_memory() -> dict[str, float]:
    """``VmRSS`` and ``VmHWM`` of this process, MiB (``/proc/self/status``, Linux)."""
    found = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key = line.split(":", 1)[0]
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(line.split()[1]) / 1024  # kB
    return {"rss_mib": found["VmRSS"], "hwm_mib": found["VmHWM"]}


def deep_bytes(obj: Any, seen: set[int] | None = None) -> int:
    """Bytes held by ``obj`` and what it contains (lists, dicts, dataclasses, arrays, tensors), each object once."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):  # getsizeof counts an owned buffer; a view holds its base's
        return sys.getsizeof(obj) + (deep_bytes(obj.base, seen) if obj.base is not None else 0)
    if type(obj).__module__.startswith("torch") and hasattr(obj, "nbytes"):
        return int(obj.nbytes)
    size = sys.getsizeof(obj)
    if isinstance(obj, (list, tuple, set, frozenset)):
        size += sum(deep_bytes(x, seen) for x in obj)
    elif isinstance(obj, dict):
        size += sum(deep_bytes(k, seen) + deep_bytes(v, seen) for k, v in obj.items())
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        size += sum(deep_bytes(getattr(obj, f.name), seen) for f in dataclasses.fields(obj))
    return size


def optimizer_of(optimizer: Any) -> Any:
    """The torch optimizer under accelerate's ``AcceleratedOptimizer`` wrapper(s)."""
    while hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    return optimizer


def training_bytes(model: Any, optimizer: Any) -> dict[str, Any]:
    """Parameter, gradient and optimizer-state bytes of a model under training."""
    import torch

    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    inner = optimizer_of(optimizer)
    state = [v for entry in inner.state.values() for v in entry.values() if torch.is_tensor(v)]
    return {
        "optimizer": type(inner).__name__,
        "parameter_bytes": sum(p.nbytes for p in params),
        "parameter_tensors": len(params),
        "trainable_parameter_bytes": sum(p.nbytes for p in trainable),
        "trainable_parameter_tensors": len(trainable),
        "gradient_bytes": sum(p.grad.nbytes for p in params if p.grad is not None),
        "optimizer_state_bytes": sum(t.nbytes for t in state),
        "optimizer_state_tensors": len(state),
        "parameters_with_state": len(inner.state),
    }


class Probe:
    """Memory at each phase (the first reading of a phase counts), object sizes and training bytes."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.phases: dict[str, dict[str, float]] = {}
        self.objects: dict[str, int] = {}
        self.training: dict[str, dict[str, Any]] = {}

    def mark(self, phase: str) -> None:
        if phase not in self.phases:
            self.phases[phase] = {**proc_memory(), "seconds": round(time.perf_counter() - self.started, 2)}

    def size(self, name: str, nbytes: int) -> None:
        self.objects[name] = int(nbytes)

    def result(self) -> dict[str, Any]:
        return {"phases": self.phases, "peak_rss_mib": proc_memory()["hwm_mib"], "objects": self.objects,
                "training": self.training}


def probe_callback(probe: Probe, inner: Any, last_step: int) -> Any:
    """A TrainerCallback that reads the in-training phases, then hands each event to ``inner`` (speed's timer)."""
    from transformers import TrainerCallback

    class ProbeCallback(TrainerCallback):
        def on_init_end(self, args, state, control, **kwargs):  # noqa: ANN001
            probe.mark("trainer_built")
            return inner.on_init_end(args, state, control, **kwargs)

        def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001
            probe.mark("train_begin")
            return inner.on_train_begin(args, state, control, **kwargs)

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            out = inner.on_step_end(args, state, control, **kwargs)
            for step, phase in ((1, "first_step"), (last_step, "last_step")):
                if state.global_step == step:
                    probe.mark(phase)
                    probe.training[phase] = training_bytes(kwargs["model"], kwargs["optimizer"])
            return out

    return ProbeCallback()


# ----------------------------------------------------------------------------- quick mode
def build_tiny_model(folder: Path, texts: list[str], seed: int = 0) -> dict[str, Any]:
    """A random BERT (``TINY_BERT``) and a word-level tokenizer over ``texts``, saved as a plain HF folder.

    Both systems load it the way they load all-MiniLM-L6-v2 (metric-sim without the pooler,
    sentence-transformers with mean pooling added). Returns the config's sizes.
    """
    import torch
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = dict.fromkeys(w for text in texts for w in re.findall(r"\w+|[^\w\s]", text.lower()))
    vocab = {token: i for i, token in enumerate([*specials, *(w for w in words if w not in specials)])}
    backend = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]",
                                        cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                        model_max_length=TINY_BERT["max_position_embeddings"])
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), **TINY_BERT)
    BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return {"vocab_size": config.vocab_size, **TINY_BERT}


def demo_train_pairs(n: int, seed: int = 0) -> Any:
    """``speed._train_pairs`` on the bundled demo pairs instead of QQP (same seeded selection)."""
    from metric_sim import demo_pairs_path
    from metric_sim.data import load_pairs

    demo = load_pairs(demo_pairs_path(), text_a="question1", text_b="question2", label="is_duplicate")
    if n > len(demo):
        raise ValueError(f"--quick trains on the {len(demo)} demo pairs: --pairs {n} is too many")
    return demo.select(np.sort(np.random.default_rng(seed).permutation(len(demo))[:n]))


# ----------------------------------------------------------------------------- the child
def _record_pairs(probe: Probe, data: Any) -> None:
    columns = [data.texts_a, data.texts_b, data.ids_a, data.ids_b, data.pair_ids]
    probe.size("selected pairs: column lists (texts, ids)", deep_bytes(columns))
    probe.size("selected pairs: Arrow table under the selection", data.dataset.data.nbytes)


def _hook_metric_sim(probe: Probe, model_folder: Path | None) -> None:
    """Read the phases inside ``metric_sim.train``: the names ``run._train`` calls, wrapped."""
    from metric_sim.training import run

    starting_encoder, prepare_pairs = run.starting_encoder, run.prepare_pairs

    def probed_starting_encoder(config: Any, encoder: Any = None) -> Any:
        if model_folder is not None and encoder is None:
            config = dataclasses.replace(config, model=str(model_folder))
        out = starting_encoder(config, encoder)
        probe.mark("model_loaded")
        return out

    def probed_prepare_pairs(data: Any) -> Any:
        pairs = prepare_pairs(data)
        probe.size("metric_sim: prepared pairs (unique items, ids, labels, clusters)", deep_bytes(pairs))
        return pairs

    class ProbedCollator(run.PairCollator):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            probe.mark("setup_done")

    run.starting_encoder, run.prepare_pairs, run.PairCollator = probed_starting_encoder, probed_prepare_pairs, ProbedCollator


def _hook_sentence_transformers(probe: Probe) -> None:
    """Read the phases inside ``train_sentence_transformers``: its one ``Dataset.from_dict`` comes right
    after the model is loaded and the text lists copied. Installed after the data is loaded, removed at its first call."""
    import datasets

    descriptor = datasets.Dataset.__dict__["from_dict"]
    original = datasets.Dataset.from_dict

    def from_dict(mapping: Any, *args: Any, **kwargs: Any) -> Any:
        datasets.Dataset.from_dict = descriptor
        probe.mark("model_loaded")
        table = original(mapping, *args, **kwargs)
        probe.mark("setup_done")
        probe.size("sentence_transformers: text and label lists", deep_bytes(list(mapping.values())))
        probe.size("sentence_transformers: Arrow table of the training rows", table.data.nbytes)
        return table

    datasets.Dataset.from_dict = staticmethod(from_dict)


def child_memory(system: str, pairs: int, steps: int, batch_size: int, model: str, quick: bool,
                 threads: int, sampler: str | None = None) -> dict[str, Any]:
    """Train ``system`` through ``speed.child_train`` (``steps`` steps, none untimed), reading memory by phase.

    ``sampler`` (metric_sim only) replaces the config's batch order, e.g. ``random`` against the
    default length grouping, which puts the longest batch first."""
    probe = Probe()
    import torch

    torch.set_num_threads(threads)
    import datasets  # noqa: F401
    import speed
    import transformers  # noqa: F401

    import metric_sim.data  # noqa: F401

    if system == "metric_sim":
        import metric_sim.training.run  # noqa: F401
    elif system == "sentence_transformers":
        import quality  # noqa: F401  # what speed.child_train imports for this system alone
        import quality_st
        import sentence_transformers  # noqa: F401
    else:
        raise ValueError(f"unknown training system {system!r}")
    with tempfile.TemporaryDirectory(prefix="train_memory_") as tmp:
        model_folder, tiny = (Path(model), None) if model != "default" else (None, None)
        if quick:
            model_folder = Path(tmp) / "tiny_bert"
            tiny = build_tiny_model(model_folder, demo_texts())
        probe.mark("imports")

        load_pairs: Callable[..., Any] = demo_train_pairs if quick else speed._train_pairs

        def probed_train_pairs(n: int, seed: int = 0) -> Any:
            data = load_pairs(n, seed)
            probe.mark("data_loaded")
            _record_pairs(probe, data)
            if system == "sentence_transformers":
                _hook_sentence_transformers(probe)
            return data

        timer_class = speed._StepTimer

        class ProbedTimer(timer_class):
            def __init__(self, warmup: int, timed: int) -> None:
                super().__init__(warmup, timed)
                self.callback = probe_callback(probe, self.callback, warmup + timed)

        speed._train_pairs, speed._StepTimer = probed_train_pairs, ProbedTimer
        if system == "metric_sim":
            _hook_metric_sim(probe, model_folder)
            if sampler is not None:
                import metric_sim

                config_class = metric_sim.TrainConfig
                metric_sim.TrainConfig = lambda **kw: config_class(**{**kw, "sampler": sampler})  # child_train's config
        elif model_folder is not None:
            quality_st.default_model_path = lambda: model_folder
        speed.child_train(system, pairs, 0, steps, batch_size)
        probe.mark("finished")
    return {"system": system, **probe.result(), **({"tiny_model": tiny} if tiny else {})}


def demo_texts() -> list[str]:
    from metric_sim import demo_pairs_path

    return demo_pairs_path().read_text(encoding="utf-8").split("\n")


def run_child(system: str, args: argparse.Namespace) -> dict[str, Any]:
    """One system's phases, measured in a fresh interpreter (nothing inherited, as in speed.py)."""
    spec = {"system": system, "pairs": args.pairs, "steps": args.steps, "batch_size": args.batch_size,
            "model": args.model, "quick": args.quick, "threads": args.threads, "sampler": args.sampler}
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                          env=env, timeout=args.timeout)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    raise RuntimeError(f"child {system} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


# ----------------------------------------------------------------------------- report
def phase_deltas(phases: dict[str, dict[str, float]], key: str) -> dict[str, float]:
    """Change of ``key`` (``rss_mib`` or ``hwm_mib``) over each phase, from the previous phase read."""
    out, previous = {}, None
    for name in PHASES:
        if name in phases:
            value = phases[name][key]
            out[name] = value - previous if previous is not None else value
            previous = value
    return out


def verdict(systems: dict[str, dict[str, Any]]) -> str:
    """One line: the peaks, and the phases whose peak growth (then RSS growth) differs most."""
    if not all(name in systems for name in SYSTEMS):
        (name, only), = systems.items()
        grew = phase_deltas(only["phases"], "hwm_mib")
        top = sorted(grew, key=lambda p: -grew[p])[:3]
        return (f"{name} only: peak {only['peak_rss_mib']:.0f} MiB; the peak grows most at "
                + ", ".join(f"{p} (+{grew[p]:.0f} MiB)" for p in top))
    ours, peer = (systems[name] for name in SYSTEMS)
    hwm = {n: phase_deltas(systems[n]["phases"], "hwm_mib") for n in SYSTEMS}
    rss = {n: phase_deltas(systems[n]["phases"], "rss_mib") for n in SYSTEMS}
    common = [p for p in PHASES if p in hwm[SYSTEMS[0]] and p in hwm[SYSTEMS[1]]]
    diff = {p: (hwm[SYSTEMS[0]][p] - hwm[SYSTEMS[1]][p], rss[SYSTEMS[0]][p] - rss[SYSTEMS[1]][p]) for p in common}
    top = sorted(common, key=lambda p: (-abs(diff[p][0]), -abs(diff[p][1])))[:3]
    gap = ours["peak_rss_mib"] - peer["peak_rss_mib"]
    return (f"peak metric_sim {ours['peak_rss_mib']:.0f} MiB vs sentence_transformers {peer['peak_rss_mib']:.0f} MiB "
            f"({gap:+.0f}); phases that differ most (metric_sim minus peer, peak growth / RSS growth): "
            + ", ".join(f"{p} {diff[p][0]:+.0f} / {diff[p][1]:+.0f} MiB" for p in top))


def tables(results: dict[str, Any]) -> str:
    systems = results["systems"]
    names = [n for n in SYSTEMS if n in systems]
    header = ["phase"] + [f"{n} {col}" for n in names for col in ("RSS MiB", "Δ RSS", "VmHWM MiB", "Δ HWM")]
    deltas = {n: (phase_deltas(systems[n]["phases"], "rss_mib"), phase_deltas(systems[n]["phases"], "hwm_mib"))
              for n in names}
    rows = []
    for phase in PHASES:
        row: list[Any] = [phase]
        for n in names:
            at = systems[n]["phases"].get(phase)
            row += ([f"{at['rss_mib']:.0f}", f"{deltas[n][0][phase]:+.0f}", f"{at['hwm_mib']:.0f}",
                     f"{deltas[n][1][phase]:+.0f}"] if at else [None] * 4)
        rows.append(row)
    rows.append(["peak (VmHWM)"] + [x for n in names for x in (None, None, f"{systems[n]['peak_rss_mib']:.0f}", None)])
    parts = [markdown_table(header, rows)]
    objects = sorted({k for n in names for k in systems[n]["objects"]})
    parts.append(markdown_table(["object held", *[f"{n} MiB" for n in names]], [
        [k, *[f"{systems[n]['objects'][k] / MIB:.3f}" if k in systems[n]["objects"] else None for n in names]]
        for k in objects]))
    keys = ("parameter_bytes", "trainable_parameter_bytes", "gradient_bytes", "optimizer_state_bytes")
    parts.append(markdown_table(["at last step", *[f"{n} MiB" for n in names]], [
        [k.replace("_bytes", ""), *[f"{systems[n]['training'].get('last_step', {}).get(k, float('nan')) / MIB:.3f}"
                                    for n in names]] for k in keys]))
    parts.append("Verdict: " + results["verdict"])
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    parser.add_argument("--steps", type=int, default=45, help="training steps (speed.py: 5 warm-up + 40 timed)")
    parser.add_argument("--pairs", type=int, default=None, help="QQP train pairs (default: steps x batch size, as speed.py)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--model", default="default",
                        help="starting model of both systems: 'default' (all-MiniLM-L6-v2, as speed.py) or a model folder")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sampler", default=None, help="metric_sim's batch order instead of the config's (e.g. random)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per child")
    parser.add_argument("--json", help="write the raw results here")
    parser.add_argument("--markdown", help="write the tables here")
    parser.add_argument("--quick", action="store_true",
                        help="a tiny random BERT built in the child, on the demo pairs: 3 steps of batch 8 (seconds)")
    args = parser.parse_args(argv)
    if args.child:
        result = child_memory(**json.loads(args.child))
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return 0
    if args.quick:
        args.steps, args.batch_size = min(args.steps, 3), min(args.batch_size, 8)
    args.pairs = args.pairs or args.steps * args.batch_size
    systems = {}
    for name in args.systems:
        systems[name] = run_child(name, args)
        print(f"{name}: peak {systems[name]['peak_rss_mib']:.0f} MiB", flush=True)
    results = {"environment": environment(), "steps": args.steps, "pairs": args.pairs, "batch_size": args.batch_size,
               "model": args.model, "threads": args.threads, "quick": args.quick, "phases": list(PHASES),
               "systems": systems}
    results["verdict"] = verdict(systems)
    text = tables(results)
    print(text)
    write_outputs(args.json, results, args.markdown, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
