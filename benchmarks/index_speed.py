"""HNSW (and IVF) vs exact flat search: recall@10 and queries per second, in one run.

Vectors: every distinct question of the QQP file (about 44k) embedded by a model
(default: the packaged all-MiniLM-L6-v2); 2,000 of them, drawn at random, are held
out as queries and the rest (>= 20,000) are indexed. Embeddings are cached (keyed by
the encoder fingerprint) so a second run skips encoding. ``--source random`` uses
Gaussian vectors instead (no data or model needed).

For each metric it builds flat, hnsw and ivf ``NeighborIndex``es (library defaults),
then times ``search_embeddings(queries, k=10)``, the library path with exact
re-ranking (and without it), kinds interleaved round by round; recall@10 is against
flat's ids. An efSearch / nprobe sweep shows the trade-off. Speeds are reported as ratios to flat
measured in the same run: absolute figures drift with the machine and its load.

    python benchmarks/index_speed.py --json runs/index_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from metric_sim import Encoder, NeighborIndex, default_data_dir, load_preset

K = 10


def cache_dir() -> Path:
    return Path(os.environ.get("METRIC_SIM_CACHE", Path.home() / ".cache" / "metric-sim")).expanduser()


def qqp_question_embeddings(encoder: Encoder, *, batch_size: int = 128) -> tuple[list[str], np.ndarray]:
    """Distinct QQP question texts (file order) and their embeddings, cached on disk."""
    pairs = load_preset("qqp")
    _, texts = pairs.unique_texts()
    texts = list(dict.fromkeys(texts))  # identical texts under two qids: one vector
    path = cache_dir() / f"qqp_questions_{encoder.fingerprint()[:16]}.npz"
    if path.is_file():
        cached = np.load(path, allow_pickle=False)
        if list(cached["texts"]) == texts:
            print(f"embeddings: cached {path}")
            return texts, cached["vectors"]
    started = time.perf_counter()
    vectors = encoder.encode(texts, batch_size=batch_size, show_progress=True)
    elapsed = time.perf_counter() - started
    print(f"embeddings: encoded {len(texts):,} texts in {elapsed:.0f} s ({len(texts) / elapsed:.0f}/s)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, texts=np.array(texts), vectors=vectors)
    os.replace(tmp, path)
    return texts, vectors


def recall_at_k(truth: list[set[str]], found: list) -> float:
    return float(np.mean([len(t & set(r.ids)) / K for t, r in zip(truth, found, strict=True)]))


def timed_qps(index: NeighborIndex, queries: np.ndarray, *, rerank: bool = True) -> tuple[float, list]:
    started = time.perf_counter()
    results = index.search_embeddings(queries, k=K, rerank=rerank)
    return len(queries) / (time.perf_counter() - started), results


def run(vectors: np.ndarray, n_queries: int, rounds: int, seed: int, metrics: list[str]) -> dict:
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(vectors))
    queries, base = vectors[order[:n_queries]], vectors[order[n_queries:]]
    texts = [str(i) for i in range(len(base))]
    print(f"base {len(base):,} x {base.shape[1]}, queries {len(queries):,}, k={K}, faiss threads: default")
    report: dict = {"base": len(base), "dim": int(base.shape[1]), "queries": len(queries), "k": K, "metrics": {}}
    for metric in metrics:
        indexes, build_s = {}, {}
        for kind in ("flat", "hnsw", "ivf"):
            started = time.perf_counter()
            indexes[kind] = NeighborIndex.from_embeddings(base, texts, metric=metric, kind=kind)
            build_s[kind] = time.perf_counter() - started
        qps: dict[str, list[float]] = {kind: [] for kind in indexes}
        raw_qps: dict[str, list[float]] = {kind: [] for kind in indexes}
        found = {}
        for r in range(rounds):  # interleave kinds, rotating the order, so load drifts hit all alike
            kinds = list(indexes)[r % 3 :] + list(indexes)[: r % 3]
            for kind in kinds:
                q, found[kind] = timed_qps(indexes[kind], queries)
                qps[kind].append(q)
                raw_qps[kind].append(timed_qps(indexes[kind], queries, rerank=False)[0])
        truth = [set(res.ids) for res in found["flat"]]
        rows = {}
        for kind in indexes:
            rows[kind] = {
                "params": dict(indexes[kind].params),
                "build_s": round(build_s[kind], 2),
                "qps": round(statistics.median(qps[kind]), 1),
                "qps_ratio_to_flat": round(statistics.median(qps[kind]) / statistics.median(qps["flat"]), 2),
                "qps_no_rerank": round(statistics.median(raw_qps[kind]), 1),
                "qps_no_rerank_ratio_to_flat": round(statistics.median(raw_qps[kind]) / statistics.median(raw_qps["flat"]), 2),
                "recall_at_10": round(recall_at_k(truth, found[kind]), 4),
            }
        sweep = []
        for kind, name, values in (("hnsw", "efSearch", (16, 32, 64, 128, 256)), ("ivf", "nprobe", (1, 4, 8, 16, 32, 64))):
            default = indexes[kind].params[name]
            for value in values:
                indexes[kind].set_search_params(**{name: value})
                q, res = timed_qps(indexes[kind], queries)
                sweep.append({"kind": kind, name: value, "qps_ratio_to_flat": round(q / statistics.median(qps["flat"]), 2), "recall_at_10": round(recall_at_k(truth, res), 4)})
            indexes[kind].set_search_params(**{name: default})
        report["metrics"][metric] = {"kinds": rows, "sweep": sweep}
        print(f"\n## {metric}\n")
        print("| kind | params | build s | queries/s | ratio to flat | without re-ranking: q/s, ratio | recall@10 |")
        print("|---|---|---|---|---|---|---|")
        for kind, row in rows.items():
            print(
                f"| {kind} | {row['params']} | {row['build_s']} | {row['qps']:,.0f} | {row['qps_ratio_to_flat']} | "
                f"{row['qps_no_rerank']:,.0f}, {row['qps_no_rerank_ratio_to_flat']} | {row['recall_at_10']:.4f} |"
            )
        print("\nsweep: " + "; ".join(f"{s['kind']} {next(k for k in s if k in ('efSearch', 'nprobe'))}={s.get('efSearch', s.get('nprobe'))}: x{s['qps_ratio_to_flat']} recall {s['recall_at_10']:.3f}" for s in sweep))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", choices=["qqp", "random"], default="qqp")
    parser.add_argument("--model", default="default", help="encoder for --source qqp (default: packaged all-MiniLM-L6-v2)")
    parser.add_argument("--n", type=int, default=44_000, help="--source random: number of vectors")
    parser.add_argument("--queries", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--metrics", nargs="+", default=["euclidean", "manhattan"])
    parser.add_argument("--json", default=None, help="write the report here")
    args = parser.parse_args()
    if args.source == "qqp":
        print(f"data: {default_data_dir()}")
        _, vectors = qqp_question_embeddings(Encoder.from_pretrained(args.model))
    else:
        vectors = np.random.default_rng(args.seed).normal(size=(args.n, 384)).astype(np.float32)
    if len(vectors) - args.queries < 20_000:
        raise SystemExit(f"need at least 20,000 indexed vectors, have {len(vectors) - args.queries}")
    report = run(vectors, args.queries, args.rounds, args.seed, args.metrics)
    report["source"] = args.source
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
