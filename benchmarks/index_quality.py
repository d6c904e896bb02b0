"""Flat index vs NumPy brute force, and dedupe quality, on the QQP test questions.

For each metric, with a model (default: the packaged all-MiniLM-L6-v2, calibrated on
the QQP dev split; a fine-tuned RUN_DIR/model can be passed with ``--model``):

* **oracle**: every distinct test question (by qid) is indexed with ``kind="flat"`` and
  used as a query, k=10. Neighbour ids must equal the NumPy brute force
  (``all_pairs_distances_numpy``, float64) except where candidates tie within 1e-4,
  and distances must agree within 1e-4. FAISS' own distances (``rerank=False``) are
  reported for comparison.
* **dedupe**: ``NeighborIndex.dedupe(min_prob=0.5)`` over the same questions, scored on
  the labelled test pairs: a labelled pair is predicted duplicate when the dedupe
  found it as a pair (edge) or put both questions in one cluster (cluster).

    python benchmarks/index_quality.py --json runs/index_quality.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from metric_sim import (
    Calibrator,
    Encoder,
    NeighborIndex,
    SimilarityModel,
    all_pairs_distances_numpy,
    load_preset,
    paired_distances_numpy,
)

K = 10
TIE = 1e-4


def oracle_check(index: NeighborIndex, stored: np.ndarray, ids: list[str], metric: str) -> dict:
    """Compare k-NN of every stored vector with brute force."""
    started = time.perf_counter()
    exact = index.search_embeddings(stored, k=K)
    raw = index.search_embeddings(stored, k=K, rerank=False)
    search_s = time.perf_counter() - started
    pos = {item: n for n, item in enumerate(ids)}
    same_ids = tie_only = id_failures = 0
    max_err = max_err_raw = 0.0
    chunk = 512 if metric == "euclidean" else 16  # the L1 oracle materialises chunk x n x dim
    for start in range(0, len(stored), chunk):
        oracle = all_pairs_distances_numpy(stored[start : start + chunk], stored, metric)
        for i in range(len(oracle)):
            row, res, res_raw = oracle[i], exact[start + i], raw[start + i]
            top = np.sort(row)[:K]
            cols = [pos[x] for x in res.ids]
            max_err = max(max_err, float(np.max(np.abs(res.distances - top))), float(np.max(np.abs(res.distances - row[cols]))))
            max_err_raw = max(max_err_raw, float(np.max(np.abs(res_raw.distances - row[[pos[x] for x in res_raw.ids]]))))
            expected = [ids[j] for j in np.lexsort((np.arange(len(row)), row))[:K]]
            if res.ids == expected:
                same_ids += 1
            elif {ids[j] for j in np.flatnonzero(row < top[-1] - TIE)} <= set(res.ids) and np.allclose(res.distances, top, atol=TIE, rtol=0):
                tie_only += 1  # differs only by the order/choice among candidates within 1e-4
            else:
                id_failures += 1
    return {
        "queries": len(stored),
        "identical_id_lists": same_ids,
        "differ_only_in_ties": tie_only,
        "id_failures": id_failures,
        "max_abs_distance_error": max_err,
        "max_abs_distance_error_faiss_raw": max_err_raw,
        "search_s": round(search_s, 2),
    }


def dedupe_scores(index: NeighborIndex, test, min_prob: float) -> dict:
    started = time.perf_counter()
    result = index.dedupe(min_prob=min_prob, show_progress=True)
    elapsed = time.perf_counter() - started
    edges = {frozenset((p.id_a, p.id_b)) for p in result.pairs}
    cluster = result.cluster_of()
    labels = test.labels
    ids_a, ids_b = test.ids_a, test.ids_b
    by_edge = np.array([frozenset((a, b)) in edges or a == b for a, b in zip(ids_a, ids_b, strict=True)])
    by_cluster = np.array([a == b or (a in cluster and cluster.get(a) == cluster.get(b)) for a, b in zip(ids_a, ids_b, strict=True)])
    # Cross-check: the edges found are exactly the labelled pairs the calibrator calls similar.
    stored = dict(zip(index.ids, index.embeddings(), strict=True))
    d = paired_distances_numpy(np.stack([stored[a] for a in ids_a]), np.stack([stored[b] for b in ids_b]), index.metric)
    calibrator_says = index.calibrator.predict_proba(d) >= min_prob

    def pr(pred: np.ndarray) -> dict:
        tp = int(np.sum(pred & (labels == 1)))
        return {
            "precision": round(tp / max(int(pred.sum()), 1), 4),
            "recall": round(tp / int((labels == 1).sum()), 4),
            "predicted_positive": int(pred.sum()),
        }

    return {
        **result.to_dict(),
        "seconds": round(elapsed, 1),
        "labelled_pairs": len(labels),
        "labelled_duplicates": int(labels.sum()),
        "edge": pr(by_edge),
        "cluster": pr(by_cluster),
        "edge_agrees_with_calibrator": int(np.sum(by_edge == calibrator_says)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default", help="encoder / model folder (default: packaged all-MiniLM-L6-v2)")
    parser.add_argument("--min-prob", type=float, default=0.5)
    parser.add_argument("--metrics", nargs="+", default=["euclidean", "manhattan"])
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    test = load_preset("qqp", split="test")
    dev = load_preset("qqp", split="dev")
    ids, texts = test.unique_texts()
    encoder = Encoder.from_pretrained(args.model)
    # Calibrate on dev (never on test): one encoding of the dev texts serves both metrics.
    dev_ids, dev_texts = dev.unique_texts()
    dev_vectors = dict(zip(dev_ids, encoder.encode(dev_texts, batch_size=128, show_progress=True), strict=True))
    dev_a = np.stack([dev_vectors[i] for i in dev.ids_a])
    dev_b = np.stack([dev_vectors[i] for i in dev.ids_b])

    report: dict = {"model": args.model, "test_questions": len(ids), "test_pairs": len(test), "min_prob": args.min_prob, "metrics": {}}
    stored = None
    for metric in args.metrics:
        calibrator = Calibrator.fit(paired_distances_numpy(dev_a, dev_b, metric), dev.labels, metric, fitted_on="qqp dev")
        model = SimilarityModel(encoder, metric, calibrator)
        if stored is None:
            index = NeighborIndex.build(model, texts, ids, batch_size=128, show_progress=True)
            stored = index.embeddings()
        else:  # same encoder: reuse its vectors
            index = NeighborIndex.from_embeddings(stored, texts, ids, metric=metric, model=model)
        row = {"calibrator": calibrator.to_dict(), "oracle": oracle_check(index, stored, ids, metric), "dedupe": dedupe_scores(index, test, args.min_prob)}
        report["metrics"][metric] = row
        o, dd = row["oracle"], row["dedupe"]
        print(f"\n## {metric} (threshold {calibrator.threshold:.4f} fitted on dev)")
        print(f"oracle: {o['queries']:,} queries, identical ids {o['identical_id_lists']:,}, ties only {o['differ_only_in_ties']}, "
              f"failures {o['id_failures']}; max |d - exact| {o['max_abs_distance_error']:.2e} (FAISS raw {o['max_abs_distance_error_faiss_raw']:.2e})")
        print(f"dedupe p>={args.min_prob}: {dd['pairs']:,} pairs, {dd['clusters']:,} clusters (largest {dd['largest_cluster']}); "
              f"labelled pairs: edge P {dd['edge']['precision']:.3f} R {dd['edge']['recall']:.3f}; "
              f"cluster P {dd['cluster']['precision']:.3f} R {dd['cluster']['recall']:.3f}; "
              f"edges agree with calibrator on {dd['edge_agrees_with_calibrator']:,}/{dd['labelled_pairs']:,}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
