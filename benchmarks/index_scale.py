"""Index at scale: flat, HNSW, ivfpq and opq-ivfpq at 100k, 1M and 2M real-looking vectors.

Vectors: the distinct QQP questions (about 44k) embedded by the packaged all-MiniLM-L6-v2
(``index_speed.qqp_question_embeddings``, cached). ``--queries`` of them, drawn with ``--seed``,
are held out as queries and never indexed; the rest are the sources. The corpus holds every
source once, then copies of them (round robin) plus Gaussian noise, rescaled to their source's
length (the model's vectors are unit). The noise comes from the data: a copy moves by about
``--noise-fraction`` times the median nearest-neighbour distance among the sources, so copies
do not collapse onto their source yet stay nearest to it. Each chunk of copies has its own
seeded generator, so a corpus is a prefix of any larger one (generated once, at the largest
size). ``--source random`` uses unit Gaussian vectors instead (no data or model).

For each size and metric, every kind is built with ``NeighborIndex.from_embeddings`` (library
defaults): build seconds, RAM per item (FAISS' figure, which the compressed kinds record, and
this process's anonymous-RSS growth, which adds the id store), batch queries/s (kinds
interleaved over ``--rounds``) and the ratio to flat, median single-query latency, and recall@10
against flat, i.e. exact search of the same metric re-ranked in float64 (manhattan: the first
``--l1-queries`` queries). An nprobe x rerank grid shows the compressed kinds' trade-off. Linear
least-squares slopes over the sizes are extrapolated to ``--extrapolate`` items, on paper.

Cost on 2 idle cores, scaled from small runs: about 25 minutes (plus ~5 to encode the questions
once). The defaults leave out what would more than double it: hnsw above ``--hnsw-max`` (100k),
opq-ivfpq above ``--opq-max`` (100k: ~2.5 min of OPQ training per build) and manhattan above
``--l1-max`` (1M: exact L1 ground truth has no BLAS shortcut). ``--opq-max 2000000 --l1-max 2000000`` measures everything: ~65 min.

    PYTHONPATH=$PWD python benchmarks/index_scale.py --work runs/index_scale \
        --json benchmarks/results_index_scale.json --markdown benchmarks/results_index_scale.md \
        --plot benchmarks/index_scale_latency.png
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, markdown_table, write_json, write_outputs  # noqa: E402
from speed import interleaved_order, peak_rss_mib, recall_at_k, summarise  # noqa: E402

from metric_sim.storage import atomic_file  # noqa: E402

K = 10
GOAL_RECALL, GOAL_SPEEDUP, GOAL_BYTES = 0.95, 10.0, 64
CHUNK = 65536  # rows of copies per seeded generator
COMPRESSED = ("ivfpq", "opq-ivfpq")
_STARTED = time.perf_counter()


def log(message: str) -> None:
    print(f"[{time.perf_counter() - _STARTED:7.1f} s] {message}", flush=True)


def normalise_rows(x: np.ndarray, lengths: np.ndarray | float = 1.0) -> np.ndarray:
    """Rows rescaled in place to ``lengths`` (unit by default)."""
    x *= np.asarray(lengths, np.float32).reshape(-1, 1) / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


def split_queries(real: np.ndarray, n_queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(held-out queries, sources): a seeded permutation of the real vectors, queries first."""
    if not 0 < n_queries < len(real):
        raise SystemExit(f"--queries must be between 1 and {len(real) - 1}, got {n_queries}")
    order = np.random.default_rng(seed).permutation(len(real))
    return real[order[:n_queries]].copy(), real[order[n_queries:]].copy()


def median_nn_distance(vectors: np.ndarray, sample: int = 2000, seed: int = 0) -> float:
    """Median Euclidean distance from ``sample`` rows to their nearest other row (chunked)."""
    rows = np.random.default_rng(seed).choice(len(vectors), min(sample, len(vectors)), replace=False)
    picked = vectors[rows].astype(np.float64)
    best = np.full(len(rows), np.inf)
    for start in range(0, len(vectors), CHUNK):
        block = vectors[start : start + CHUNK].astype(np.float64)
        sq = (picked**2).sum(1)[:, None] + (block**2).sum(1)[None, :] - 2.0 * picked @ block.T
        own = (rows >= start) & (rows < start + len(block))
        sq[np.flatnonzero(own), rows[own] - start] = np.inf  # not itself
        best = np.minimum(best, sq.min(1))
    return float(np.median(np.sqrt(np.maximum(best, 0.0))))


def source_of(size: int, n_sources: int) -> np.ndarray:
    """Row -> source row: every source once, then copies round robin."""
    return np.arange(size) % n_sources


def expand_corpus(sources: np.ndarray, size: int, sigma: float, seed: int) -> np.ndarray:
    """``size`` float32 rows: the sources, then noisy copies (per-coordinate sd ``sigma``) rescaled
    to their source's length (1 for the model's unit vectors)."""
    dim = sources.shape[1]
    out = np.empty((size, dim), dtype=np.float32)
    head = min(size, len(sources))
    out[:head] = sources[:head]
    for c, start in enumerate(range(head, size, CHUNK)):
        stop = min(size, start + CHUNK)
        rng = np.random.default_rng([seed, c])  # one generator per chunk: prefixes agree
        block = out[start:stop]
        block[:] = sources[np.arange(start, stop) % len(sources)]  # as source_of
        lengths = np.linalg.norm(block, axis=1)
        block += rng.standard_normal(block.shape, dtype=np.float32) * np.float32(sigma)
        normalise_rows(block, lengths)
    return out


def real_vectors(args: argparse.Namespace) -> tuple[np.ndarray, str]:
    if args.source == "random":
        rng = np.random.default_rng(args.seed)
        vectors = normalise_rows(rng.standard_normal((args.random_real, args.dim), dtype=np.float32))
        return vectors, f"{args.random_real:,} unit Gaussian vectors (dim {args.dim}, seed {args.seed})"
    from index_speed import qqp_question_embeddings

    from metric_sim import Encoder

    texts, vectors = qqp_question_embeddings(Encoder.from_pretrained(args.model))
    lengths = np.linalg.norm(vectors, axis=1)
    return np.ascontiguousarray(vectors, np.float32), (
        f"{len(texts):,} distinct QQP questions embedded by model {args.model!r} (lengths "
        f"{lengths.min():.4f}-{lengths.max():.4f})")


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares (intercept, slope) of y = a + b x."""
    slope, intercept = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    return float(intercept), float(slope)


def fit_power(xs: list[float], ys: list[float]) -> float:
    """Exponent p of y ~ x^p (least squares in log-log): tells where a line under-predicts."""
    return float(np.polyfit(np.log(xs), np.log(np.maximum(ys, 1e-12)), 1)[0])


def by_kind(rows: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Measured rows (not skipped ones) per (kind, metric), smallest corpus first."""
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in sorted((r for r in rows if "reason" not in r), key=lambda r: (r["kind"], r["metric"], r["size"])):
        out.setdefault((r["kind"], r["metric"]), []).append(r)
    return out


def extrapolate(rows: list[dict[str, Any]], target: int) -> list[dict[str, Any]]:
    """Per kind and metric (default parameters), the linear fit of RAM, build s and latency vs N."""
    out = []
    for (kind, metric), mine in by_kind(rows).items():
        if len(mine) < 2:
            continue
        sizes = [r["size"] for r in mine]
        for name, values in (
            ("RAM bytes (FAISS)", [r["ram_bytes_per_item"] * r["size"] for r in mine]),
            ("RSS growth bytes", [r["rss_growth_bytes"] for r in mine]),
            ("build s", [r["build_s"] for r in mine]),
            ("single-query ms", [r["latency_ms"] for r in mine]),
        ):
            intercept, slope = fit_line(sizes, values)
            out.append({"kind": kind, "metric": metric, "quantity": name, "slope_per_item": slope,
                        "intercept": intercept, "at_target": intercept + slope * target,
                        "loglog_exponent": fit_power(sizes, values), "target": target})
    return out


def rss_anon_bytes() -> int:
    """This process's anonymous resident memory (not the page cache of memory-mapped files), after
    handing freed heap back to the system so that earlier builds' temporaries do not hide growth."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with contextlib.suppress(OSError):
        found = re.search(r"^RssAnon:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
        return int(found.group(1)) * 1024 if found else 0
    return 0


def builds(kinds: list[str], nbits: list[int] | None) -> list[tuple[str, str, dict[str, int]]]:
    """(row name, kind, parameters) of every index to build: flat first (the reference), then
    each compressed kind once per ``nbits`` value (named ``ivfpq nbits=4``), or at its default."""
    out: list[tuple[str, str, dict[str, int]]] = [("flat", "flat", {})]
    for kind in (k for k in kinds if k != "flat"):
        if kind in COMPRESSED and nbits:
            out += [(f"{kind} nbits={bits}", kind, {"nbits": bits}) for bits in nbits]
        else:
            out.append((kind, kind, {}))
    return out


def result_ids(results: list) -> np.ndarray:
    """Row numbers (the ids given at build) of the results, one row per query."""
    return np.array([[int(i) for i in r.ids] for r in results], dtype=np.int64)


def timed_batch(index: Any, queries: np.ndarray) -> tuple[float, np.ndarray]:
    started = time.perf_counter()
    results = index.search_embeddings(queries, k=K)
    return len(queries) / (time.perf_counter() - started), result_ids(results)


def latency_ms(index: Any, queries: np.ndarray) -> float:
    times = []
    for row in queries:
        started = time.perf_counter()
        index.search_embeddings(row[None, :], k=K)
        times.append(time.perf_counter() - started)
    return 1e3 * float(np.median(times))


def ram_bytes_per_item(index: Any) -> float:
    """FAISS' bytes per item: what a compressed kind records; float32 vectors for the others, plus
    2 M int32 level-0 links (hnsw) or an int64 id in the lists (ivf)."""
    if index.kind in COMPRESSED:
        return float(index.info()["compressed"]["ram_bytes_per_item"])
    return float(4 * index.dim + {"hnsw": 8 * int(index.params.get("M") or 0), "ivf": 8}.get(index.kind, 0))


def measure(base: np.ndarray, texts: list[str], queries: np.ndarray, metric: str,
            args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Build every kind over ``base``, time them interleaved, recall against flat."""
    from metric_sim import NeighborIndex
    from metric_sim.errors import IndexConfigError

    size = len(base)
    indexes: dict[str, Any] = {}
    rows: dict[str, dict[str, Any]] = {}
    skipped = []
    caps = {"hnsw": ("--hnsw-max", args.hnsw_max), "opq-ivfpq": ("--opq-max", args.opq_max)}
    for name, kind, params in builds(args.kinds, args.nbits):
        flag, cap = caps.get(kind, ("", size))
        if size > cap:
            skipped.append({"size": size, "metric": metric, "kind": name, "reason": f"size > {flag} {cap:,}"})
            continue
        before = rss_anon_bytes()
        started = time.perf_counter()
        try:
            index = NeighborIndex.from_embeddings(base, texts, metric=metric, kind=kind, **params)
        except IndexConfigError as error:
            skipped.append({"size": size, "metric": metric, "kind": name, "reason": f"refused: {error}"})
            log(f"  {name}: skipped ({error})")
            continue
        build_s = time.perf_counter() - started
        growth = rss_anon_bytes() - before
        indexes[name] = index
        info = index.info()
        rows[name] = {"size": size, "metric": metric, "kind": name, "params": dict(index.params),
                      "build_s": build_s, "ram_bytes_per_item": ram_bytes_per_item(index),
                      "rss_growth_bytes": growth, "rss_growth_bytes_per_item": growth / size,
                      "disk_bytes_per_item": info.get("vector_file_bytes", 0) / size,
                      "build_recall_at_10": ((info.get("compressed") or {}).get("recall") or {}).get("recall_at_10")}
        log(f"  {name}: built in {build_s:.1f} s, RSS +{growth / size:.0f} B/item, params {index.params}")
    for index in indexes.values():
        index.search_embeddings(queries[:10], k=K)  # warm-up (and pages of the vector file)
    qps: dict[str, list[float]] = {kind: [] for kind in indexes}
    found: dict[str, np.ndarray] = {}
    for r in range(args.rounds):
        for kind in interleaved_order(list(indexes), r):
            q, found[kind] = timed_batch(indexes[kind], queries)
            qps[kind].append(q)
    speed = summarise(qps, "flat")
    truth = found["flat"]  # exact brute force, re-ranked in float64
    for kind, row in rows.items():
        row.update(qps=speed[kind]["median"], qps_all=speed[kind]["all"], qps_ratio_to_flat=speed[kind]["ratio"],
                   recall_at_10=recall_at_k(truth, found[kind]),
                   latency_ms=latency_ms(indexes[kind], queries[: args.latency_queries]))
        log(f"  {kind}: {row['qps']:,.0f} q/s (x{row['qps_ratio_to_flat']:.2f} flat), "
            f"{row['latency_ms']:.2f} ms/query, recall@10 {row['recall_at_10']:.4f}")
    sweep = []
    for kind in [name for name, index in indexes.items() if index.kind in COMPRESSED]:
        for nprobe in args.sweep_nprobe:
            for rerank in args.sweep_rerank:
                indexes[kind].set_search_params(nprobe=nprobe, rerank=rerank)
                q, ids = timed_batch(indexes[kind], queries)
                sweep.append({"size": size, "metric": metric, "kind": kind, "nprobe": nprobe, "rerank": rerank,
                              "qps": q, "qps_ratio_to_flat": q / speed["flat"]["median"],
                              "recall_at_10": recall_at_k(truth, ids),
                              "ram_bytes_per_item": rows[kind]["ram_bytes_per_item"],
                              "rss_growth_bytes_per_item": rows[kind]["rss_growth_bytes_per_item"]})
        log(f"  {kind}: sweep of {len(args.sweep_nprobe) * len(args.sweep_rerank)} settings done")
    return list(rows.values()) + skipped, sweep


def run(args: argparse.Namespace) -> dict[str, Any]:
    real, origin = real_vectors(args)
    queries, sources = split_queries(real, args.queries, args.seed)
    nn = median_nn_distance(sources, seed=args.seed)
    sigma = args.noise_fraction * nn / np.sqrt(real.shape[1])  # |noise| ~ sigma sqrt(dim)
    sizes = sorted(args.sizes)
    log(f"vectors: {origin}; {len(queries):,} queries held out, {len(sources):,} sources, "
        f"median NN distance {nn:.4f}, noise sd {sigma:.5f}")
    corpus = expand_corpus(sources, sizes[-1], sigma, args.seed)
    copies = np.arange(len(sources), min(sizes[-1], len(sources) + 2000))
    moved = np.linalg.norm(corpus[copies] - sources[source_of(sizes[-1], len(sources))[copies]], axis=1)
    vectors = {"origin": origin, "queries": len(queries), "sources": len(sources), "dim": int(real.shape[1]),
               "median_nn_distance": nn, "noise_fraction": args.noise_fraction, "noise_sd": sigma,
               "median_copy_distance": float(np.median(moved)) if len(moved) else None, "seed": args.seed,
               "how": "queries: held-out real vectors, never indexed; corpus row i < sources: source i; row i >= "
                      "sources: source (i mod sources) + N(0, noise_sd^2 I), rescaled to the source's length; "
                      f"each {CHUNK:,}-row chunk of copies from numpy default_rng([seed, chunk])"}
    log(f"corpus: {sizes[-1]:,} x {real.shape[1]} float32 ({corpus.nbytes / 2**30:.2f} GiB), "
        f"median copy-to-source distance {vectors['median_copy_distance'] or 0:.4f}")
    texts = [str(i) for i in range(sizes[-1])]
    work = Path(args.work or tempfile.mkdtemp(prefix="index_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    sweep: list[dict[str, Any]] = []
    report = {"environment": environment(), "k": K, "vectors": vectors, "args": vars(args), "rows": rows, "sweep": sweep}
    previous = tempfile.tempdir
    for size in sizes:
        folder = Path(tempfile.mkdtemp(prefix=f"n{size}_", dir=work))
        tempfile.tempdir = str(folder)  # the compressed kinds' vector files go here, not to /tmp
        try:
            for metric in args.metrics:
                if metric == "manhattan" and size > args.l1_max:
                    rows.append({"size": size, "metric": metric, "kind": "all", "reason": f"size > --l1-max {args.l1_max:,}"})
                    continue
                nq = args.queries if metric == "euclidean" else min(args.queries, args.l1_queries)
                log(f"size {size:,}, {metric}, {nq} queries")
                got, swept = measure(corpus[:size], texts[:size], queries[:nq], metric, args)
                rows += got
                sweep += swept
                gc.collect()  # the indexes go, and with them their vector files
                if args.json:  # after every step: a crash keeps what was measured
                    write_json(args.json, report)
        finally:
            tempfile.tempdir = previous
            shutil.rmtree(folder, ignore_errors=True)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    report.update(extrapolation=extrapolate(rows, args.extrapolate), peak_rss_mib=peak_rss_mib())
    return report


def plot_latency(rows: list[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Single-query latency against corpus size, log-log, one line per kind and metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (kind, metric), mine in by_kind(rows).items():
        ax.plot([r["size"] for r in mine], [r["latency_ms"] for r in mine], "o-" if metric == "euclidean" else "s--",
                label=f"{kind}, {metric} (recall@10 " + ", ".join(f"{r['recall_at_10']:.2f}" for r in mine) + ")")
    ax.set(xscale="log", yscale="log", xlabel="corpus size (items)", ylabel="single-query latency, k=10 (ms)",
           title="Query latency against corpus size (default parameters)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def goal_lines(report: dict[str, Any]) -> list[str]:
    """Per size and metric: is there a compressed setting (default or sweep) meeting the goal? The
    fastest one at recall >= the goal, and the best recall at >= the speed-up, either way."""
    lines = []
    rows = [r for r in report["rows"] if "reason" not in r]
    for size, metric in sorted({(r["size"], r["metric"]) for r in rows}):
        mine = [r for r in rows if (r["size"], r["metric"]) == (size, metric) and r["kind"].split()[0] in COMPRESSED]
        found = [dict(r, nprobe=r["params"]["nprobe"], rerank=r["params"]["rerank"] or 10 * K) for r in mine]
        found += [s for s in report["sweep"] if (s["size"], s["metric"]) == (size, metric)]
        fine = [c for c in found if c["ram_bytes_per_item"] <= GOAL_BYTES]
        accurate = [c for c in fine if c["recall_at_10"] >= GOAL_RECALL]
        fast = [c for c in fine if c["qps_ratio_to_flat"] >= GOAL_SPEEDUP]
        say = [f"fastest at recall >= {GOAL_RECALL}: {_setting(max(accurate, key=lambda c: c['qps_ratio_to_flat']))}"
               if accurate else f"no setting reaches recall {GOAL_RECALL}",
               f"best recall at >= x{GOAL_SPEEDUP:.0f}: {_setting(max(fast, key=lambda c: c['recall_at_10']))}"
               if fast else f"no setting reaches x{GOAL_SPEEDUP:.0f}"]
        if found:
            met = any(c in fast for c in accurate)
            lines.append(f"- {metric}, {size:,}: {'MET' if met else 'NOT met'}; " + "; ".join(say))
    return lines


def _setting(c: dict[str, Any]) -> str:
    return (f"{c['kind']} nprobe={c['nprobe']} rerank={c['rerank']}: recall@10 {c['recall_at_10']:.3f} at "
            f"x{c['qps_ratio_to_flat']:.1f} flat, {c['ram_bytes_per_item']:.0f} B/item in FAISS "
            f"({c['rss_growth_bytes_per_item']:.0f} B/item process RSS growth)")


def markdown(report: dict[str, Any]) -> str:
    v = report["vectors"]
    parts = [
        "# Index at scale", "",
        f"Vectors: {v['origin']}; {v['sources']:,} sources. How: {v['how']}. Median nearest-neighbour distance among sources {v['median_nn_distance']:.4f}, noise "
        f"fraction {v['noise_fraction']} -> sd {v['noise_sd']:.5f} per coordinate; median copy-to-source distance "
        f"{v['median_copy_distance'] or 0:.4f}. Recall@10 against flat (exact, float64 re-ranked) of the same metric. "
        "RSS growth is this process's anonymous RSS after the build minus before it: it includes the "
        "id store (Python) and FAISS' list slack, not the page cache of the memory-mapped vectors.", "",
        f"Goal: recall@10 >= {GOAL_RECALL} at >= {GOAL_SPEEDUP:.0f}x flat's batch queries/s and <= {GOAL_BYTES} "
        "B/item of RAM for a compressed kind:", "", *goal_lines(report), "",
    ]
    rows = report["rows"]
    parts.append(markdown_table(
        ["N", "metric", "kind", "build s", "RAM B/item (FAISS)", "RSS growth B/item", "disk B/item", "queries/s",
         "x flat", "latency ms", "recall@10", "recall at build"],
        [[f"{r['size']:,}", r["metric"], r["kind"], f"{r['build_s']:.1f}", f"{r['ram_bytes_per_item']:.0f}",
          f"{r['rss_growth_bytes_per_item']:.0f}", f"{r['disk_bytes_per_item']:.0f}", f"{r['qps']:,.0f}",
          f"{r['qps_ratio_to_flat']:.2f}", f"{r['latency_ms']:.2f}", f"{r['recall_at_10']:.4f}",
          None if r["build_recall_at_10"] is None else f"{r['build_recall_at_10']:.3f}"]
         for r in rows if "reason" not in r]))
    skipped = [f"- {r['kind']}, {r['metric']}, {r['size']:,}: {r['reason']}" for r in rows if "reason" in r]
    if skipped:
        parts += ["", "Skipped:", "", *skipped]
    if report["sweep"]:
        parts += ["", "Compressed kinds, nprobe x rerank:", "", markdown_table(
            ["N", "metric", "kind", "nprobe", "rerank", "queries/s", "x flat", "recall@10"],
            [[f"{s['size']:,}", s["metric"], s["kind"], s["nprobe"], s["rerank"], f"{s['qps']:,.0f}",
              f"{s['qps_ratio_to_flat']:.2f}", f"{s['recall_at_10']:.4f}"] for s in report["sweep"]])]
    if report["extrapolation"]:
        target = report["extrapolation"][0]["target"]
        parts += ["", f"On paper, {target:,} items: linear least squares over the measured sizes (an exponent "
                  "above 1 in log-log means the line under-predicts):", "", markdown_table(
                      ["kind", "metric", "quantity", "slope per item", f"at {target:,}", "log-log exponent"],
                      [[e["kind"], e["metric"], e["quantity"], f"{e['slope_per_item']:.4g}", f"{e['at_target']:.4g}",
                        f"{e['loglog_exponent']:.2f}"] for e in report["extrapolation"]])]
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", choices=["qqp", "random"], default="qqp")
    parser.add_argument("--model", default="default", help="encoder for --source qqp (default: packaged MiniLM)")
    parser.add_argument("--random-real", type=int, default=44_000, help="--source random: 'real' vectors")
    parser.add_argument("--dim", type=int, default=384, help="--source random: dimension")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 2_000_000])
    parser.add_argument("--metrics", nargs="+", choices=["euclidean", "manhattan"], default=["euclidean", "manhattan"])
    parser.add_argument("--kinds", nargs="+", choices=["flat", "hnsw", "ivf", *COMPRESSED],
                        default=["flat", "hnsw", *COMPRESSED], help="flat is always built (the exact reference)")
    parser.add_argument("--nbits", type=int, nargs="+", default=None,
                        help="compressed kinds: build one per code width (4 = FAISS fast-scan); default: the library's")
    parser.add_argument("--hnsw-max", type=int, default=100_000, help="largest corpus given an HNSW index")
    parser.add_argument("--opq-max", type=int, default=100_000, help="largest corpus given an opq-ivfpq index")
    parser.add_argument("--l1-max", type=int, default=1_000_000, help="largest corpus measured in manhattan")
    parser.add_argument("--queries", type=int, default=1000, help="held-out real vectors used as queries")
    parser.add_argument("--l1-queries", type=int, default=200, help="manhattan uses only the first N queries")
    parser.add_argument("--latency-queries", type=int, default=30, help="single queries timed one at a time")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved batch-timing rounds")
    parser.add_argument("--sweep-nprobe", type=int, nargs="*", default=[16, 32, 64])
    parser.add_argument("--sweep-rerank", type=int, nargs="*", default=[50, 200])
    parser.add_argument("--noise-fraction", type=float, default=0.5,
                        help="copy displacement as a fraction of the median NN distance among sources")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--extrapolate", type=int, default=100_000_000)
    parser.add_argument("--work", default=None, help="folder for the indexes' vector files (default: a temp folder)")
    parser.add_argument("--json")
    parser.add_argument("--markdown")
    parser.add_argument("--plot", help="PNG: single-query latency against corpus size")
    args = parser.parse_args(argv)
    report = run(args)
    text = markdown(report)
    print(text)
    for path in write_outputs(args.json, report, args.markdown, text, end="").values():
        log(f"wrote {path}")
    if args.plot:
        log(f"wrote {plot_latency(report['rows'], args.plot)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
