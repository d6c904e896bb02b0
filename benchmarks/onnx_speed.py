"""ONNX Runtime (fp32, int8) vs PyTorch encoding of the QQP test questions, in one run.

Exports the model (default: the packaged all-MiniLM-L6-v2) with ``--onnx --quantize int8``,
then:

* parity: sentence-transformers and transformers (AutoModel + the model card's pooling)
  vs metric-sim's PyTorch ``encode`` (max abs difference), ONNX fp32 and int8 vs PyTorch;
* quality: test-split average precision of ranking pairs by -distance, for each backend;
* speed: sentences/s of ``encode`` over all unique test questions, backends interleaved
  round by round (A/B/C, then B/C/A, ...), medians and ratios to PyTorch.

    python benchmarks/onnx_speed.py --rounds 3 --threads 2 --json runs/onnx_speed.json
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score

from metric_sim import (
    Encoder,
    OnnxEncoder,
    SimilarityModel,
    export_model,
    load_preset,
    paired_distances_numpy,
)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default", help="run folder, model folder or 'default' (default: %(default)s)")
    parser.add_argument("--export", default=None, help="reuse or create the export here (default: a temporary folder)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per backend (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime intra-op threads")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N test pairs (smoke runs)")
    parser.add_argument("--skip-parity", action="store_true", help="speed only")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    pairs = load_preset("qqp", split="test", on_bad_row="skip")
    texts_a, texts_b, labels = list(pairs.texts_a), list(pairs.texts_b), np.asarray(pairs.labels)
    if args.limit:
        texts_a, texts_b, labels = texts_a[: args.limit], texts_b[: args.limit], labels[: args.limit]
    texts = sorted(set(texts_a) | set(texts_b))
    row = {t: i for i, t in enumerate(texts)}
    ia, ib = np.array([row[t] for t in texts_a]), np.array([row[t] for t in texts_b])
    print(f"QQP test: {len(labels):,} pairs, {len(texts):,} unique questions; {args.threads} threads, batch {args.batch_size}")

    holder = tempfile.TemporaryDirectory(prefix="onnx_speed_")
    folder = Path(args.export) if args.export else Path(holder.name) / "export"
    if not (folder / "onnx" / "model_int8.onnx").is_file():
        started = time.perf_counter()
        export_model(args.model, folder, onnx=True, quantize="int8", overwrite=True)
        print(f"exported {args.model} -> {folder} in {time.perf_counter() - started:.1f} s")
    metric = SimilarityModel.from_pretrained(folder).metric
    backends = {
        "pytorch": Encoder.from_pretrained(folder),
        "onnx_fp32": OnnxEncoder.from_pretrained(folder, threads=args.threads),
        "onnx_int8": OnnxEncoder.from_pretrained(folder, quantized=True, threads=args.threads),
    }

    results: dict = {"pairs": int(len(labels)), "texts": len(texts), "threads": args.threads, "batch_size": args.batch_size,
                     "metric": metric.value, "model": args.model}
    embeddings = {name: enc.encode(texts, batch_size=args.batch_size) for name, enc in backends.items()}  # also warms up
    reference = embeddings["pytorch"]
    quality = {}
    for name, emb in embeddings.items():
        distances = paired_distances_numpy(emb[ia], emb[ib], metric)
        quality[name] = {"average_precision": float(average_precision_score(labels, -distances)),
                         "max_abs_diff_vs_pytorch": _max_abs(emb, reference)}
    results["quality"] = quality

    if not args.skip_parity:
        parity = {}
        try:
            from sentence_transformers import SentenceTransformer

            st = SentenceTransformer(str(folder), device="cpu").encode(texts, batch_size=args.batch_size)
            parity["sentence_transformers_vs_metric_sim"] = _max_abs(st, reference)
        except ImportError:
            parity["sentence_transformers_vs_metric_sim"] = None
        parity["automodel_documented_pooling_vs_metric_sim"] = _max_abs(automodel_embeddings(folder, texts), reference)
        parity["onnx_fp32_vs_pytorch"] = quality["onnx_fp32"]["max_abs_diff_vs_pytorch"]
        parity["onnx_int8_vs_pytorch"] = quality["onnx_int8"]["max_abs_diff_vs_pytorch"]
        results["parity"] = parity

    names = list(backends)
    timings: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.rounds):
        order = names[r % len(names):] + names[: r % len(names)]  # rotate: no backend always runs first
        for name in order:
            started = time.perf_counter()
            backends[name].encode(texts, batch_size=args.batch_size)
            timings[name].append(len(texts) / (time.perf_counter() - started))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {timings[n][-1]:.0f}/s" for n in names))
    base = statistics.median(timings["pytorch"])
    results["speed_sentences_per_s"] = {
        name: {"median": statistics.median(v), "all": v, "ratio_vs_pytorch": statistics.median(v) / base}
        for name, v in timings.items()
    }
    results["onnx_bytes"] = {p.name: p.stat().st_size for p in sorted((folder / "onnx").glob("*.onnx"))}

    print()
    print("| backend | sentences/s (median) | ratio vs PyTorch | test AP | max abs diff vs PyTorch |")
    print("|---|---|---|---|---|")
    for name in names:
        s, q = results["speed_sentences_per_s"][name], quality[name]
        print(f"| {name} | {s['median']:.0f} | {s['ratio_vs_pytorch']:.2f}x | {q['average_precision']:.4f} | {q['max_abs_diff_vs_pytorch']:.2e} |")
    print(f"\nint8 AP - fp32 AP: {quality['onnx_int8']['average_precision'] - quality['onnx_fp32']['average_precision']:+.4f}")
    if "parity" in results:
        for key, value in results["parity"].items():
            print(f"{key}: {value if value is None else f'{value:.2e}'}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")
    holder.cleanup()


if __name__ == "__main__":
    main()
