"""Speed benchmark: metric-sim against sentence-transformers, ONNX and FAISS, in one run.

Every measurement runs in a child process of its own (``--child``), so each reports its own
peak RSS (``ru_maxrss``) and no system inherits another's memory or warm caches. Systems that
are compared are interleaved round by round (A B, B A, A B, ...) and reported as medians and
the ratio of medians, so load from other jobs on the machine hits both alike.

* ceiling: fp32 and bf16 matmul GFLOP/s (2048^3, ``--threads``) and the encoder's FLOPs per token
  from its config (2 (4 d^2 + 2 d f) per layer + 4 d L per layer for attention, L = length);
* training throughput (pairs/s) on the same QQP pairs, batch 32, max length 128:
  ``metric_sim.train`` vs ``SentenceTransformerTrainer`` with OnlineContrastiveLoss;
  ``--warmup-steps`` untimed, then ``--train-steps`` timed;
* encoding throughput (sentences/s) on the QQP test questions: metric-sim PyTorch (float32, and
  bfloat16 autocast, measured against the bf16 matmul ceiling), sentence-transformers ``encode``,
  metric-sim ONNX fp32 and int8 (``export_model``);
* FAISS flat vs HNSW through ``NeighborIndex`` on random 384-d vectors: batch queries/s,
  single-query latency and recall@10 against flat, for corpus sizes ``--index-sizes``;
* scaling: training time against the number of pairs (``--scaling-pairs``).

Plots (matplotlib, Agg): ``speed_training_scaling.png`` and ``speed_index_scaling.png``.

    PYTHONPATH=$PWD python benchmarks/speed.py --out benchmarks --json benchmarks/results_speed.json
    PYTHONPATH=$PWD python benchmarks/speed.py --quick --out /tmp/speed     # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, markdown_table, write_json, write_outputs  # noqa: E402

RESULT_PREFIX = "SPEED-RESULT "
K = 10


# ----------------------------------------------------------------------------- pure helpers
def encoder_flops_per_token(hidden: int, intermediate: int, layers: int, length: int) -> float:
    """Forward FLOPs per token of a BERT encoder at padded length ``length``.

    Per layer: Q, K, V and output projections (4 d^2 multiply-adds) and the feed-forward
    block (2 d f), 2 FLOPs per multiply-add; attention scores and their weighted sum add
    2 * 2 * d * L. For all-MiniLM-L6-v2 (d 384, f 1536, 6 layers): 21.23 M + 9,216 L.
    """
    return 2.0 * layers * (4 * hidden * hidden + 2 * hidden * intermediate) + 4.0 * layers * hidden * length


def sentence_flops(token_counts: np.ndarray, hidden: int, intermediate: int, layers: int) -> np.ndarray:
    """Useful FLOPs per sentence: each sentence at its own length (no padding)."""
    n = np.asarray(token_counts, dtype=np.float64)
    return n * encoder_flops_per_token(hidden, intermediate, layers, 0) + n * n * 4.0 * layers * hidden


def interleaved_order(names: list[str], round_index: int) -> list[str]:
    """Rotate the order each round so no system always runs first (A B, B A, ...)."""
    shift = round_index % len(names)
    return names[shift:] + names[:shift]


def summarise(values: dict[str, list[float]], baseline: str | None = None) -> dict[str, dict[str, Any]]:
    """Median (and all values) per system, and the ratio of medians to ``baseline``."""
    out = {name: {"median": statistics.median(v), "all": v} for name, v in values.items() if v}
    if baseline and baseline in out:
        for row in out.values():
            row["ratio"] = row["median"] / out[baseline]["median"]
    return out


def recall_at_k(truth: np.ndarray, found: np.ndarray) -> float:
    """Mean over queries of |found ∩ truth| / k (ids as integer arrays, one row per query)."""
    k = truth.shape[1]
    return float(np.mean([len(set(t.tolist()) & set(f.tolist())) / k for t, f in zip(truth, found, strict=True)]))


# ----------------------------------------------------------------------------- child measurements
class _StepTimer:
    """A TrainerCallback-compatible timer: from the end of step ``warmup`` to step ``warmup + steps``."""

    def __init__(self, warmup: int, steps: int) -> None:
        from transformers import TrainerCallback

        timer = self

        class Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001
                if timer.warmup == 0:
                    timer.begin()

            def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
                if state.global_step == timer.warmup:
                    timer.begin()
                if state.global_step == timer.warmup + timer.steps:
                    timer.end()

        self.warmup, self.steps = warmup, steps
        self.start = self.stop = None
        self.callback = Callback()

    def begin(self) -> None:
        """The timed steps start (subclasses add work around the clock reading)."""
        self.start = time.perf_counter()

    def end(self) -> None:
        self.stop = time.perf_counter()

    @property
    def seconds(self) -> float:
        if self.start is None or self.stop is None:
            raise RuntimeError("the timed steps did not run")
        return self.stop - self.start


def _train_pairs(n: int, seed: int = 0) -> Any:
    from metric_sim import load_preset

    train = load_preset("qqp", split="train")
    rows = np.sort(np.random.default_rng(seed).permutation(len(train))[:n])
    return train.select(rows)


def child_train(system: str, pairs: int, warmup: int, steps: int, batch_size: int) -> dict[str, Any]:
    """``steps`` timed training steps after ``warmup`` untimed ones, on the same ``pairs`` QQP pairs."""
    data = _train_pairs(pairs)
    timer = _StepTimer(warmup, steps)
    total = warmup + steps
    with tempfile.TemporaryDirectory(prefix="speed_train_") as tmp:
        if system == "metric_sim":
            from metric_sim import TrainConfig, train

            config = TrainConfig(preset="qqp", batch_size=batch_size, max_length=128, learning_rate=5e-5,
                                 max_steps=total, eval_steps=10 ** 6, zero_shot_eval=False,
                                 load_best_model_at_end=False, save_total_limit=None, logging_steps=10 ** 6)
            dev = data.select(np.arange(min(64, len(data))))  # train() calibrates on it after the timed steps
            train(config, Path(tmp) / "run", train_data=data, dev_data=dev, show_progress=False, callbacks=[timer.callback])
        elif system == "sentence_transformers":
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from quality import train_sentence_transformers

            train_sentence_transformers("online_contrastive", data, Path(tmp), steps=total, batch_size=batch_size,
                                        max_length=128, seed=42, callbacks=[timer.callback])
        else:
            raise ValueError(f"unknown training system {system!r}")
    return {"pairs_per_s": steps * batch_size / timer.seconds, "seconds": timer.seconds, "steps": steps}


def child_train_scaling(system: str, pairs: int, batch_size: int) -> dict[str, Any]:
    """Wall time of one epoch over ``pairs`` pairs (model loading excluded, training only)."""
    steps = -(-pairs // batch_size)
    out = child_train(system, pairs, 0, steps, batch_size)
    return {"pairs": pairs, "steps": steps, "seconds": out["seconds"], "pairs_per_s": out["pairs_per_s"]}


def _test_texts(limit: int | None) -> list[str]:
    from metric_sim import load_preset

    test = load_preset("qqp", split="test")
    texts = sorted(set(test.texts_a) | set(test.texts_b))
    return texts[:limit] if limit else texts


def child_encode(backend: str, export_dir: str, limit: int | None, batch_size: int, onnx_threads: int) -> dict[str, Any]:
    """Sentences/s of one backend over the QQP test questions (after a 256-text warm-up)."""
    texts = _test_texts(limit)
    if backend in ("metric_sim_torch", "metric_sim_torch_bf16"):
        from metric_sim import Encoder

        encoder = Encoder.from_pretrained("default", max_length=128)
        if backend == "metric_sim_torch_bf16":
            encoder.set_inference_precision("bfloat16")
        run = lambda t: encoder.encode(t, batch_size=batch_size)  # noqa: E731
    elif backend == "sentence_transformers":
        from sentence_transformers import SentenceTransformer

        from metric_sim import default_model_path

        model = SentenceTransformer(str(default_model_path()), device="cpu")
        model.max_seq_length = 128
        run = lambda t: model.encode(t, batch_size=batch_size)  # noqa: E731
    elif backend in ("onnx_fp32", "onnx_int8"):
        from metric_sim import OnnxEncoder

        onnx = OnnxEncoder.from_pretrained(export_dir, quantized=backend == "onnx_int8", threads=onnx_threads)
        run = lambda t: onnx.encode(t, batch_size=batch_size)  # noqa: E731
    else:
        raise ValueError(f"unknown encoding backend {backend!r}")
    run(texts[:256])
    started = time.perf_counter()
    run(texts)
    seconds = time.perf_counter() - started
    return {"sentences_per_s": len(texts) / seconds, "texts": len(texts), "seconds": seconds}


def child_index(kind: str, size: int, dim: int, queries: int, seed: int) -> dict[str, Any]:
    """Build a ``NeighborIndex`` of ``size`` random vectors; batch qps, single-query latency, ids."""
    from metric_sim import NeighborIndex

    rng = np.random.default_rng(seed)
    base = rng.standard_normal((size, dim), dtype=np.float32)
    query = rng.standard_normal((queries, dim), dtype=np.float32)
    started = time.perf_counter()
    index = NeighborIndex.from_embeddings(base, [str(i) for i in range(size)], metric="euclidean", kind=kind)
    build_s = time.perf_counter() - started
    index.search_embeddings(query[:10], k=K)  # warm-up
    started = time.perf_counter()
    results = index.search_embeddings(query, k=K)
    qps = queries / (time.perf_counter() - started)
    latencies = []
    for q in query[: min(queries, 100)]:
        started = time.perf_counter()
        index.search_embeddings(q[None, :], k=K)
        latencies.append(time.perf_counter() - started)
    ids = [[int(i) for i in r.ids] for r in results]
    return {"kind": kind, "size": size, "build_s": build_s, "qps": qps, "latency_ms": 1e3 * statistics.median(latencies),
            "ids": ids, "params": dict(index.params)}


def child_matmul(n: int = 2048, repeats: int = 10, dtype: str = "float32") -> dict[str, Any]:
    import torch

    a, b = torch.randn(n, n, dtype=getattr(torch, dtype)), torch.randn(n, n, dtype=getattr(torch, dtype))
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - started)
    return {"gflops": 2 * n ** 3 / statistics.median(times) / 1e9, "best_gflops": 2 * n ** 3 / min(times) / 1e9, "n": n,
            "threads": torch.get_num_threads(), "dtype": dtype}


CHILDREN = {"train": child_train, "train_scaling": child_train_scaling, "encode": child_encode,
            "index": child_index, "matmul": child_matmul}


def _run_child_main(spec: dict[str, Any]) -> None:
    import torch

    torch.set_num_threads(spec.pop("threads_torch"))
    result = CHILDREN[spec.pop("fn")](**spec)
    result["peak_rss_mib"] = peak_rss_mib()
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def peak_rss_mib() -> float:
    """This process's peak resident memory, MiB.

    ``VmHWM`` belongs to the address space made by ``exec``, so a child does not inherit the
    parent's figure; ``ru_maxrss`` does (Linux keeps the pre-exec high-water mark), so it is
    only the fallback where ``/proc`` is missing.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_child(fn: str, threads: int, timeout: float = 1800, **kwargs: Any) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter; returns its JSON result."""
    spec = {"fn": fn, "threads_torch": threads, **kwargs}
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                          env=env, timeout=timeout)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    raise RuntimeError(f"child {fn} {kwargs} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


# ----------------------------------------------------------------------------- sections
def section_ceiling(args: argparse.Namespace) -> dict[str, Any]:
    from metric_sim import Encoder

    matmul = run_child("matmul", args.threads)
    matmul_bf16 = run_child("matmul", args.threads, dtype="bfloat16")
    encoder = Encoder.from_pretrained("default", max_length=128)
    cfg = encoder.model.config
    texts = _test_texts(args.encode_limit)
    counts = np.array([len(ids) for ids in encoder.tokenizer(texts, truncation=True, max_length=128)["input_ids"]])
    dims = (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers)
    per_sentence = sentence_flops(counts, *dims)
    return {"matmul": matmul, "matmul_bf16": matmul_bf16, "hidden": dims[0], "intermediate": dims[1], "layers": dims[2],
            "flops_per_token_constant": encoder_flops_per_token(*dims, 0),
            "flops_per_token_per_length": encoder_flops_per_token(*dims, 1) - encoder_flops_per_token(*dims, 0),
            "mean_tokens": float(counts.mean()), "mean_useful_flops_per_sentence": float(per_sentence.mean()),
            "ceiling_sentences_per_s": matmul["gflops"] * 1e9 / float(per_sentence.mean()),
            "ceiling_sentences_per_s_bf16": matmul_bf16["gflops"] * 1e9 / float(per_sentence.mean())}


def section_training(args: argparse.Namespace) -> dict[str, Any]:
    names = ["metric_sim", "sentence_transformers"]
    pairs = (args.warmup_steps + args.train_steps) * args.batch_size
    values: dict[str, list[float]] = {n: [] for n in names}
    rss: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        for name in interleaved_order(names, r):
            out = run_child("train", args.threads, system=name, pairs=pairs, warmup=args.warmup_steps,
                            steps=args.train_steps, batch_size=args.batch_size)
            values[name].append(out["pairs_per_s"])
            rss[name].append(out["peak_rss_mib"])
            print(f"train round {r + 1}: {name} {out['pairs_per_s']:.1f} pairs/s, peak RSS {out['peak_rss_mib']:.0f} MiB", flush=True)
    return {"pairs_per_s": summarise(values, "sentence_transformers"), "peak_rss_mib": {n: max(v) for n, v in rss.items()},
            "pairs": pairs, "warmup_steps": args.warmup_steps, "timed_steps": args.train_steps, "batch_size": args.batch_size}


def section_encoding(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from metric_sim import export_model

    export_dir = work / "export_default"
    if not (export_dir / "onnx" / "model_int8.onnx").is_file():
        export_model("default", export_dir, onnx=True, quantize="int8", overwrite=True)
    names = ["metric_sim_torch", "metric_sim_torch_bf16", "sentence_transformers", "onnx_fp32", "onnx_int8"]
    values: dict[str, list[float]] = {n: [] for n in names}
    rss: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        for name in interleaved_order(names, r):
            out = run_child("encode", args.threads, backend=name, export_dir=str(export_dir), limit=args.encode_limit,
                            batch_size=64, onnx_threads=args.threads)
            values[name].append(out["sentences_per_s"])
            rss[name].append(out["peak_rss_mib"])
            print(f"encode round {r + 1}: {name} {out['sentences_per_s']:.0f} sentences/s", flush=True)
    return {"sentences_per_s": summarise(values, "metric_sim_torch"), "peak_rss_mib": {n: max(v) for n, v in rss.items()},
            "texts": out["texts"], "batch_size": 64}


def section_index(args: argparse.Namespace) -> dict[str, Any]:
    rows = []
    for size in args.index_sizes:
        found = {}
        for kind in ("flat", "hnsw"):
            if kind == "hnsw" and size > args.hnsw_max:
                continue
            out = run_child("index", args.threads, kind=kind, size=size, dim=384, queries=args.index_queries, seed=0)
            found[kind] = np.array(out.pop("ids"))
            rows.append(out)
            print(f"index {kind} {size:,}: build {out['build_s']:.1f} s, {out['qps']:.0f} q/s, "
                  f"latency {out['latency_ms']:.2f} ms", flush=True)
        for row in rows:
            if row["size"] == size:
                row["recall_at_10"] = recall_at_k(found["flat"], found[row["kind"]])
    return {"dim": 384, "k": K, "queries": args.index_queries, "rows": rows}


def section_scaling(args: argparse.Namespace) -> dict[str, Any]:
    rows = []
    for pairs in args.scaling_pairs:
        for system in args.scaling_systems:
            out = run_child("train_scaling", args.threads, system=system, pairs=pairs, batch_size=args.batch_size)
            rows.append({"system": system, **out})
            print(f"scaling {system} {pairs} pairs: {out['seconds']:.1f} s", flush=True)
    return {"rows": rows, "batch_size": args.batch_size}


# ----------------------------------------------------------------------------- plots and tables
def plot_scaling(results: dict[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    if "scaling" in results:
        fig, ax = plt.subplots(figsize=(6, 4))
        for system in sorted({r["system"] for r in results["scaling"]["rows"]}):
            rows = [r for r in results["scaling"]["rows"] if r["system"] == system]
            ax.plot([r["pairs"] for r in rows], [r["seconds"] for r in rows], "o-", label=system)
        ax.set(xscale="log", yscale="log", xlabel="training pairs (one epoch, batch 32)", ylabel="training time (s)",
               title="Training time against the number of pairs")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "speed_training_scaling.png", dpi=110)
        plt.close(fig)
        written.append("speed_training_scaling.png")
    if "index" in results:
        fig, ax = plt.subplots(figsize=(6, 4))
        for kind in ("flat", "hnsw"):
            rows = [r for r in results["index"]["rows"] if r["kind"] == kind]
            ax.plot([r["size"] for r in rows], [r["latency_ms"] for r in rows], "o-",
                    label=f"{kind} (recall@10 " + ", ".join(f"{r['recall_at_10']:.2f}" for r in rows) + ")")
        ax.set(xscale="log", yscale="log", xlabel="corpus size (random 384-d vectors)", ylabel="single-query latency, k=10 (ms)",
               title="Query latency against corpus size")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "speed_index_scaling.png", dpi=110)
        plt.close(fig)
        written.append("speed_index_scaling.png")
    return written


def tables(results: dict[str, Any]) -> str:
    parts = []
    if "ceiling" in results:
        c = results["ceiling"]
        parts.append(f"fp32 matmul {c['matmul']['n']}^3: {c['matmul']['gflops']:.0f} GFLOP/s (median; best {c['matmul']['best_gflops']:.0f}); "
                     f"encoder FLOPs/token {c['flops_per_token_constant'] / 1e6:.2f} M + {c['flops_per_token_per_length']:,.0f} x length; "
                     f"{c['mean_tokens']:.1f} tokens per test question -> useful-work ceiling {c['ceiling_sentences_per_s']:.0f} sentences/s")
        if "matmul_bf16" in c:
            parts.append(f"bf16 matmul: {c['matmul_bf16']['gflops']:.0f} GFLOP/s (median) -> bf16 ceiling "
                         f"{c['ceiling_sentences_per_s_bf16']:.0f} sentences/s")
    if "training" in results:
        t = results["training"]
        parts.append(markdown_table(["training", "pairs/s (median)", "all rounds", "ratio", "peak RSS MiB"], [
            [n, f"{v['median']:.1f}", ", ".join(f"{x:.1f}" for x in v["all"]), f"{v['ratio']:.2f}x", f"{t['peak_rss_mib'][n]:.0f}"]
            for n, v in t["pairs_per_s"].items()]))
    if "encoding" in results:
        e, c = results["encoding"], results.get("ceiling", {})

        def of_ceiling(name: str, rate: float) -> str | None:  # the bf16 row against the bf16 matmul rate
            ceiling = c.get("ceiling_sentences_per_s_bf16" if name.endswith("_bf16") else "ceiling_sentences_per_s")
            return f"{rate / ceiling:.0%}" if ceiling else None

        parts.append(markdown_table(["encoding", "sentences/s (median)", "all rounds", "ratio vs PyTorch",
                                     "of ceiling (bf16 row: bf16 ceiling)", "peak RSS MiB"], [
            [n, f"{v['median']:.0f}", ", ".join(f"{x:.0f}" for x in v["all"]), f"{v['ratio']:.2f}x",
             of_ceiling(n, v["median"]), f"{e['peak_rss_mib'][n]:.0f}"]
            for n, v in e["sentences_per_s"].items()]))
    if "index" in results:
        parts.append(markdown_table(["index", "vectors", "build s", "queries/s (batch)", "latency ms (1 query)", "recall@10", "peak RSS MiB"], [
            [r["kind"], f"{r['size']:,}", f"{r['build_s']:.1f}", f"{r['qps']:,.0f}", f"{r['latency_ms']:.2f}",
             f"{r['recall_at_10']:.3f}", f"{r['peak_rss_mib']:.0f}"] for r in results["index"]["rows"]]))
    if "scaling" in results:
        parts.append(markdown_table(["system", "pairs", "steps", "seconds", "pairs/s", "peak RSS MiB"], [
            [r["system"], r["pairs"], r["steps"], f"{r['seconds']:.1f}", f"{r['pairs_per_s']:.1f}", f"{r['peak_rss_mib']:.0f}"]
            for r in results["scaling"]["rows"]]))
    return "\n\n".join(parts)


SECTIONS = ("ceiling", "training", "encoding", "index", "scaling")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="benchmarks", help="folder for the PNG plots (default: %(default)s)")
    parser.add_argument("--work", default=None, help="folder for the ONNX export (default: a temporary folder)")
    parser.add_argument("--json", help="write the raw results here")
    parser.add_argument("--markdown", help="write the tables here")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per comparison")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--warmup-steps", type=int, default=5)
    parser.add_argument("--train-steps", type=int, default=40)
    parser.add_argument("--encode-limit", type=int, default=None, help="encode only the first N test questions")
    parser.add_argument("--index-sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000, 1_000_000])
    parser.add_argument("--hnsw-max", type=int, default=1_000_000, help="largest corpus given an HNSW index")
    parser.add_argument("--index-queries", type=int, default=1000)
    parser.add_argument("--scaling-pairs", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    parser.add_argument("--scaling-systems", nargs="+", default=["metric_sim", "sentence_transformers"],
                        choices=["metric_sim", "sentence_transformers"])
    parser.add_argument("--update", action="store_true", help="start from the existing --json and replace only these --sections")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, 1 round")
    args = parser.parse_args(argv)
    if args.child:
        _run_child_main(json.loads(args.child))
        return 0
    if args.quick:
        args.rounds, args.warmup_steps, args.train_steps, args.encode_limit = 1, 1, 2, 200
        args.index_sizes, args.index_queries, args.scaling_pairs = [1_000, 5_000], 50, [32, 64]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    holder = tempfile.TemporaryDirectory(prefix="speed_")
    work = Path(args.work) if args.work else Path(holder.name)
    results: dict[str, Any] = {}
    if args.update and args.json and Path(args.json).is_file():
        results = json.loads(Path(args.json).read_text())
    results.update({"environment": environment(), "threads": args.threads, "rounds": args.rounds, "quick": args.quick})
    for section in args.sections:
        started = time.perf_counter()
        if section == "ceiling":
            results["ceiling"] = section_ceiling(args)
        elif section == "training":
            results["training"] = section_training(args)
        elif section == "encoding":
            results["encoding"] = section_encoding(args, work)
        elif section == "index":
            results["index"] = section_index(args)
        elif section == "scaling":
            results["scaling"] = section_scaling(args)
        print(f"section {section}: {time.perf_counter() - started:.0f} s", flush=True)
        if args.json:  # after every section: a crash keeps what was measured
            write_json(args.json, results)
    results["plots"] = plot_scaling(results, out)
    text = tables(results)
    print(text)
    write_outputs(args.json, results, args.markdown, text)
    holder.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
