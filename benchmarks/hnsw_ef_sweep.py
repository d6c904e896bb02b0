"""HNSW's efSearch against recall@10 and batch queries/s at 1M real-looking vectors (Euclidean).

The corpus, queries and exact reference are index_scale.py's (the same functions and seed:
QQP questions embedded by the packaged model, copies with noise up to ``--size``). One HNSW
build (M 32, efConstruction 200, the library defaults), then each efSearch is set with
``NeighborIndex.set_search_params`` and timed on the 1,000 held-out queries (best of 2 runs);
flat's queries/s is measured in the same process.

    PYTHONPATH=$PWD python benchmarks/hnsw_ef_sweep.py --json benchmarks/results_hnsw_ef_sweep.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, write_json  # noqa: E402
from index_scale import expand_corpus, median_nn_distance, real_vectors, split_queries, timed_batch  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--ef", type=int, nargs="+", default=[64, 96, 128, 192, 256])
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    from metric_sim import NeighborIndex

    settings = argparse.Namespace(source="qqp", model="default", random_real=44_000, dim=384, queries=1000, seed=0,
                                  noise_fraction=0.5)
    real, origin = real_vectors(settings)
    queries, sources = split_queries(real, settings.queries, settings.seed)
    sigma = settings.noise_fraction * median_nn_distance(sources, seed=settings.seed) / np.sqrt(real.shape[1])
    corpus = expand_corpus(sources, args.size, sigma, settings.seed)
    ids = [str(i) for i in range(args.size)]
    flat = NeighborIndex.from_embeddings(corpus, ids, metric="euclidean", kind="flat")
    flat_qps, exact = max((timed_batch(flat, queries) for _ in range(2)), key=lambda r: r[0])
    del flat
    started = time.perf_counter()
    hnsw = NeighborIndex.from_embeddings(corpus, ids, metric="euclidean", kind="hnsw")
    build_s = time.perf_counter() - started
    rows = []
    for ef in args.ef:
        hnsw.set_search_params(efSearch=ef)
        qps, found = max((timed_batch(hnsw, queries) for _ in range(2)), key=lambda r: r[0])
        pairs = zip(found.tolist(), exact.tolist(), strict=True)
        recall = float(np.mean([len(set(a) & set(b)) / len(b) for a, b in pairs]))
        rows.append({"efSearch": ef, "qps": qps, "x_flat": qps / flat_qps, "recall_at_10": recall})
        print(f"efSearch {ef}: {qps:,.0f} q/s ({qps / flat_qps:.1f}x flat {flat_qps:,.0f}), recall@10 {recall:.4f}",
              flush=True)
    report = {"environment": environment(), "size": args.size, "vectors": origin, "flat_qps": flat_qps,
              "hnsw_build_s": build_s, "rows": rows}
    if args.json:
        write_json(args.json, report)


if __name__ == "__main__":
    main()
