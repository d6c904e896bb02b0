"""``metric-sim quickstart``: the main job end to end on the bundled demo pairs."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from metric_sim.cli.common import EXIT_OK, Subparsers
from metric_sim.errors import UsageError


def add_quickstart_parser(sub: Subparsers) -> None:
    quick = sub.add_parser("quickstart", help="run the main job end to end on the bundled demo pairs")
    quick.add_argument("--out", default="metric-sim-quickstart", help="output folder (default: %(default)s)")
    quick.add_argument("--model", default="default", help="encoder to start from (default: packaged all-MiniLM-L6-v2)")
    quick.set_defaults(handler=cmd_quickstart)


def _average_precision_by_metric(encoder: Any, dataset: Any) -> dict[str, float]:
    """Zero-shot AP of raw distance for each metric, ranking by -distance."""
    from metric_sim.distances import Metric
    from metric_sim.metrics import average_precision
    from metric_sim.model import SimilarityModel

    result = {}
    for metric in Metric:
        distances = SimilarityModel(encoder, metric).distance(dataset.texts_a, dataset.texts_b)
        result[metric.value] = average_precision(distances, dataset.labels)
    return result


def cmd_quickstart(args: argparse.Namespace) -> int:
    """Zero-shot AP, a short fine-tune with calibration, symmetric probabilities, neighbour search."""
    from metric_sim.data import load_pairs
    from metric_sim.encoders.text import Encoder
    from metric_sim.evaluation import example_pair_lines
    from metric_sim.index import demo_neighbors, format_results
    from metric_sim.layout import demo_pairs_path
    from metric_sim.storage import write_json_atomic
    from metric_sim.training import fine_tune_demo

    started = time.perf_counter()
    out = Path(args.out)
    if (out / "run").exists():
        raise UsageError(f"--out {str(out)!r} already holds a quickstart run; pass another --out or remove it")
    out.mkdir(parents=True, exist_ok=True)
    dataset = load_pairs(demo_pairs_path(), text_a="question1", text_b="question2", label="is_duplicate")
    summary = dataset.summary()
    print(f"demo pairs: {summary['pairs']} ({summary['positives']} duplicates), {summary['unique_texts']} unique questions")

    print("\n[1/4] zero-shot: raw distance of the base encoder")
    encoder = Encoder.from_pretrained(args.model, max_length=128)
    print(f"encoder: {args.model} (pooling={encoder.pooling}, normalize={encoder.normalize}, dim={encoder.embedding_dim})")
    zero_shot = _average_precision_by_metric(encoder, dataset)
    for metric, ap in zero_shot.items():
        print(f"zero-shot average precision ({metric:9s}): {ap:.4f}")

    print("\n[2/4] fine-tune briefly (train split), calibrate on the held-out split")
    demo = fine_tune_demo(args.model, out / "run", encoder=encoder, show_progress=False)
    print(f"average precision on held-out demo pairs: {demo.ap_before:.4f} before -> {demo.ap_after:.4f} after ({demo.seconds:.0f} s)")
    print(f"saved the calibrated model to {demo.run_dir / 'model'}")

    print("\n[3/4] calibrated, symmetric probabilities: p(a, b) == p(b, a)")
    held_out = dataset.group_split({"train": 0.7, "dev": 0.3}, seed=0)["dev"]
    for line in example_pair_lines(demo.model, held_out, limit=4):
        print("  " + line)

    print("\n[4/4] nearest stored questions from a FAISS index (queries held out of the index)")
    _, results = demo_neighbors(demo.model, k=3)
    print(format_results(results))

    write_json_atomic(
        out / "quickstart.json",
        {"zero_shot_ap": zero_shot, "demo": summary, "fine_tuned_ap": {"before": demo.ap_before, "after": demo.ap_after}},
    )
    print(f"\nwrote {out} in {time.perf_counter() - started:.1f} s. Next: metric-sim evaluate --model {demo.run_dir} ...,"
          f" metric-sim export {demo.run_dir} --out my-model")
    return EXIT_OK
