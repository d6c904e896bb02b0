"""ONNX Runtime (fp32, int8) vs PyTorch (float32, bfloat16 autocast) encoding of QQP dev + test
questions, in one run.

Exports the model (``--model``: the packaged all-MiniLM-L6-v2 by default, a training run
folder or a model folder, as ``metric-sim export`` takes) with ``--onnx --quantize int8``, then:

* quality, per backend: a calibrator fitted on that backend's QQP dev distances, then on
  QQP test: AP, ROC-AUC, ECE, accuracy at the calibrated threshold and the in-sample best
  accuracy; and the int8-minus-fp32 and int8-minus-PyTorch changes of AP and ECE;
* parity: sentence-transformers and transformers (AutoModel + the model card's pooling)
  vs metric-sim's PyTorch ``encode`` (max abs difference), ONNX fp32 and int8 vs PyTorch;
* speed: sentences/s of ``encode`` over all unique dev + test questions, backends
  interleaved round by round (A/B/C, then B/C/A, ...), medians and ratios to PyTorch.

    python benchmarks/onnx_speed.py --rounds 3 --threads 2 --json runs/onnx_speed.json
    python benchmarks/onnx_speed.py --model runs/qqp --skip-speed --json runs/onnx_quality_qqp.json
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, write_json  # noqa: E402

from metric_sim import (  # noqa: E402
    Calibrator,
    Encoder,
    OnnxEncoder,
    SimilarityModel,
    expected_calibration_error,
    export_model,
    load_preset,
    pair_metrics,
    paired_distances_numpy,
)

BACKENDS = ("pytorch", "pytorch_bf16", "onnx_fp32", "onnx_int8")
CALIBRATION_SPLIT = "qqp:dev"
# (backend, reference): the quality cost of int8 against the fp32 graph and against PyTorch, and
# of PyTorch's bfloat16 autocast against its float32.
CHANGES = {"int8_minus_fp32": ("onnx_int8", "onnx_fp32"), "int8_minus_pytorch": ("onnx_int8", "pytorch"),
           "bf16_minus_pytorch": ("pytorch_bf16", "pytorch")}
CHANGED_FIGURES = ("average_precision", "ece")


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def _card_snippet(folder: Path, runtime: str) -> str:
    card = (folder / "README.md").read_text(encoding="utf-8")
    block = card.split(f"### {runtime}\n", 1)[1].split("```python\n", 1)[1].split("\n```", 1)[0]
    return re.sub(r'^model_dir = ".*"$', f"model_dir = {str(folder)!r}", block, count=1, flags=re.M)


def automodel_embeddings(folder: Path, texts: list[str], chunk: int = 256) -> np.ndarray:
    """Run the model card's transformers snippet (AutoModel + documented pooling) chunk by chunk."""
    source = _card_snippet(folder, "transformers")
    source = re.sub(r"^texts = \[.*\]$", "texts = texts_override", source, count=1, flags=re.M)
    code = compile(source, "<card transformers snippet>", "exec")
    order = np.argsort([len(t) for t in texts], kind="stable")  # similar lengths per chunk: less padding
    out: np.ndarray | None = None
    for start in range(0, len(texts), chunk):
        rows = order[start : start + chunk]
        namespace = {"texts_override": [texts[i] for i in rows]}
        exec(code, namespace)  # noqa: S102
        emb = namespace["emb"].numpy()
        if out is None:
            out = np.empty((len(texts), emb.shape[1]), dtype=np.float32)
        out[rows] = emb
    assert out is not None
    return out


# ----------------------------------------------------------------------------- quality
def quality_figures(dev_distances: Any, dev_labels: Any, test_distances: Any, test_labels: Any, metric: Any) -> dict[str, Any]:
    """One backend: calibrator fitted on dev, scored on test (as ``forgetting.py``'s ``Scorer.figures``)."""
    calibrator = Calibrator.fit(dev_distances, dev_labels, metric, fitted_on=CALIBRATION_SPLIT)
    test_labels = np.asarray(test_labels)
    pm = pair_metrics(test_distances, test_labels, calibrator)
    return {
        "average_precision": pm["average_precision"],
        "roc_auc": pm["roc_auc"],
        "ece": expected_calibration_error(test_labels, calibrator.predict_proba(test_distances)),
        "accuracy": pm["accuracy"],
        "best_accuracy_in_sample": pm["in_sample"]["accuracy"],
        "threshold": pm["threshold"],
        "calibrator": {"weight": calibrator.weight, "bias": calibrator.bias, "feature": calibrator.feature,
                       "fitted_on": CALIBRATION_SPLIT, "n_fit": calibrator.n_fit},
    }


def quality_changes(figures: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """int8 minus fp32, int8 minus PyTorch and bf16 minus PyTorch, for AP and ECE (negative AP,
    positive ECE: the cheaper backend is worse)."""
    return {name: {key: float(figures[a][key] - figures[b][key]) for key in CHANGED_FIGURES}
            for name, (a, b) in CHANGES.items() if a in figures and b in figures}


def score_backends(distances: Mapping[str, Mapping[str, np.ndarray]], labels: Mapping[str, Any], metric: Any) -> dict[str, Any]:
    """``distances[backend]["dev" | "test"]`` -> per-backend figures on test and the int8 changes."""
    figures = {name: quality_figures(d["dev"], labels["dev"], d["test"], labels["test"], metric) for name, d in distances.items()}
    return {"backends": figures, "changes": quality_changes(figures)}


# ----------------------------------------------------------------------------- data
def load_splits(limit: int | None) -> dict[str, tuple[list[str], list[str], np.ndarray]]:
    """QQP dev and test as (texts_a, texts_b, labels); ``limit`` keeps the first N pairs of each."""
    splits = {}
    for split in ("dev", "test"):
        pairs = load_preset("qqp", split=split, on_bad_row="skip")
        a, b, y = list(pairs.texts_a), list(pairs.texts_b), np.asarray(pairs.labels)
        splits[split] = (a[:limit], b[:limit], y[:limit]) if limit else (a, b, y)
    return splits


def _speed(backends: Mapping[str, Any], texts: list[str], rounds: int, batch_size: int) -> dict[str, dict[str, Any]]:
    names = list(backends)
    timings: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]  # rotate: no backend always runs first
        for name in order:
            started = time.perf_counter()
            backends[name].encode(texts, batch_size=batch_size)
            timings[name].append(len(texts) / (time.perf_counter() - started))
        print(f"round {r + 1}/{rounds}: " + ", ".join(f"{n} {timings[n][-1]:.0f}/s" for n in names))
    base = statistics.median(timings["pytorch"])
    return {name: {"median": statistics.median(v), "all": v, "ratio_vs_pytorch": statistics.median(v) / base}
            for name, v in timings.items()}


def _parity(folder: Path, texts: list[str], reference: np.ndarray, quality: Mapping[str, Any], batch_size: int) -> dict[str, Any]:
    parity: dict[str, Any] = {}
    try:
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(str(folder), device="cpu").encode(texts, batch_size=batch_size)
        parity["sentence_transformers_vs_metric_sim"] = _max_abs(st, reference)
    except ImportError:
        parity["sentence_transformers_vs_metric_sim"] = None
    parity["automodel_documented_pooling_vs_metric_sim"] = _max_abs(automodel_embeddings(folder, texts), reference)
    parity["onnx_fp32_vs_pytorch"] = quality["onnx_fp32"]["max_abs_diff_vs_pytorch"]
    parity["onnx_int8_vs_pytorch"] = quality["onnx_int8"]["max_abs_diff_vs_pytorch"]
    return parity


def table(results: Mapping[str, Any]) -> str:
    """The markdown table printed at the end: one row per backend."""
    speed = results.get("speed_sentences_per_s", {})
    rows = []
    for name in BACKENDS:
        q, s = results["quality"][name], speed.get(name)
        rows.append([name, None if s is None else f"{s['median']:.0f}", None if s is None else f"{s['ratio_vs_pytorch']:.2f}x",
                     f"{q['average_precision']:.4f}", f"{q['roc_auc']:.4f}", f"{q['ece']:.4f}", f"{q['accuracy']:.4f}",
                     f"{q['best_accuracy_in_sample']:.4f}", f"{q['max_abs_diff_vs_pytorch']:.2e}"])
    header = ["backend", "sentences/s (median)", "ratio vs PyTorch", "test AP", "test ROC-AUC", "test ECE",
              "acc @ tau (dev-calibrated)", "best acc (in-sample)", "max abs diff vs PyTorch"]
    return markdown_table(header, rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default",
                        help="training run folder (with model/), model folder or 'default' (default: %(default)s)")
    parser.add_argument("--export", default=None, help="reuse or create the export here (default: a temporary folder)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per backend (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime intra-op threads")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N dev and N test pairs (smoke runs)")
    parser.add_argument("--skip-parity", action="store_true", help="no sentence-transformers / AutoModel parity")
    parser.add_argument("--skip-speed", action="store_true", help="quality and parity only, no timed rounds")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    splits = load_splits(args.limit)
    # Every distinct dev and test text once, in one encode call per backend.
    texts = sorted({t for a, b, _ in splits.values() for t in (*a, *b)})
    row = {t: i for i, t in enumerate(texts)}
    index = {split: (np.array([row[t] for t in a]), np.array([row[t] for t in b])) for split, (a, b, _) in splits.items()}
    labels = {split: y for split, (_, _, y) in splits.items()}
    print(f"QQP dev {len(labels['dev']):,} + test {len(labels['test']):,} pairs, {len(texts):,} unique questions; "
          f"{args.threads} threads, batch {args.batch_size}")

    holder = tempfile.TemporaryDirectory(prefix="onnx_speed_")
    try:
        folder = Path(args.export) if args.export else Path(holder.name) / "export"
        if (folder / "onnx" / "model_int8.onnx").is_file():
            print(f"reusing the export in {folder}")
        else:
            started = time.perf_counter()
            export_model(args.model, folder, onnx=True, quantize="int8", overwrite=True)
            print(f"exported {args.model} -> {folder} in {time.perf_counter() - started:.1f} s")
        metric = SimilarityModel.from_pretrained(folder).metric
        bf16 = Encoder.from_pretrained(folder)
        bf16.set_inference_precision("bfloat16")
        backends = {
            "pytorch": Encoder.from_pretrained(folder),
            "pytorch_bf16": bf16,
            "onnx_fp32": OnnxEncoder.from_pretrained(folder, threads=args.threads),
            "onnx_int8": OnnxEncoder.from_pretrained(folder, quantized=True, threads=args.threads),
        }
        results: dict[str, Any] = {"pairs": {split: int(len(y)) for split, y in labels.items()}, "texts": len(texts),
                                   "threads": args.threads, "batch_size": args.batch_size, "metric": metric.value,
                                   "model": str(args.model), "calibrated_on": CALIBRATION_SPLIT, "scored_on": "qqp:test"}
        embeddings = {name: enc.encode(texts, batch_size=args.batch_size) for name, enc in backends.items()}  # also warms up
        reference = embeddings["pytorch"]
        distances = {name: {split: paired_distances_numpy(emb[ia], emb[ib], metric) for split, (ia, ib) in index.items()}
                     for name, emb in embeddings.items()}
        scored = score_backends(distances, labels, metric)
        results["quality"] = {name: {**figures, "max_abs_diff_vs_pytorch": _max_abs(embeddings[name], reference)}
                              for name, figures in scored["backends"].items()}
        results["quality_changes"] = scored["changes"]
        if not args.skip_parity:
            results["parity"] = _parity(folder, texts, reference, results["quality"], args.batch_size)
        if not args.skip_speed:
            results["speed_sentences_per_s"] = _speed(backends, texts, args.rounds, args.batch_size)
        results["onnx_bytes"] = {p.name: p.stat().st_size for p in sorted((folder / "onnx").glob("*.onnx"))}
    finally:
        holder.cleanup()

    print()
    print(table(results))
    print()
    for name, change in results["quality_changes"].items():
        print(f"{name.replace('_', ' ')}: AP {change['average_precision']:+.4f}, ECE {change['ece']:+.4f}")
    for key, value in results.get("parity", {}).items():
        print(f"{key}: {value if value is None else f'{value:.2e}'}")
    if args.json:
        write_json(args.json, results)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
