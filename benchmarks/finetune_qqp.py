"""QQP fine-tuning benchmark (superseded by quality.py, which adds more systems, calibration and
symmetry; kept because README.md and docs/training.md cite it): test-split AP of a metric-sim run vs zero-shot, and optionally vs
sentence-transformers' OnlineContrastiveLoss fine-tune at the same number of steps and batch size.

    python benchmarks/finetune_qqp.py --run runs/quora_duplicates            # score a finished run
    python benchmarks/finetune_qqp.py --run runs/quora_duplicates --peer     # + train and score the peer
    python benchmarks/finetune_qqp.py --config recipes/quora_duplicates.yaml --run runs/q --peer
                                              # train ours first, then the peer: timings from one session

Every AP is on the fixed `test` split of qqp/split.tsv (never used for training or
selection), for both Euclidean and Manhattan distance. Timings of ours and the
peer's are taken on the same machine so their ratio is meaningful; absolute times
drift between machines. Results go to stdout as JSON (and to --json FILE).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from metric_sim import (
    Encoder,
    Metric,
    SimilarityModel,
    TrainConfig,
    load_preset,
    train,
)


def _scores(model_or_encoder, pairs) -> dict[str, float]:
    out = {}
    for metric in Metric:
        encoder = model_or_encoder.encoder if isinstance(model_or_encoder, SimilarityModel) else model_or_encoder
        d = SimilarityModel(encoder, metric).distance(pairs.texts_a, pairs.texts_b, batch_size=64)
        out[f"ap_{metric.value}"] = round(float(average_precision_score(pairs.labels, -d)), 4)
        out[f"roc_auc_{metric.value}"] = round(float(roc_auc_score(pairs.labels, -d)), 4)
    return out


def _peer(steps: int, batch_size: int, seed: int, out_dir: Path) -> tuple[Encoder, float]:
    """sentence-transformers OnlineContrastiveLoss (cosine, margin 0.5), lr 2e-5, warmup 0.1, fp32
    (the same trainer as ``quality.py``'s ``st_online_contrastive``)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from quality import train_sentence_transformers

    info = train_sentence_transformers("online_contrastive", load_preset("qqp", split="train"), out_dir, steps=steps,
                                       batch_size=batch_size, max_length=128, seed=seed)
    # Our Encoder reads the sentence-transformers layout (mean pooling + Normalize).
    return Encoder.from_pretrained(out_dir / "model", max_length=128), info["train_s"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a finished `metric-sim train` run folder (or where --config trains one)")
    parser.add_argument("--config", help="train this recipe into --run first")
    parser.add_argument("--peer", action="store_true", help="also fine-tune the sentence-transformers peer")
    parser.add_argument("--peer-out", default="runs/peer_online_contrastive", help="peer output folder")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)

    run = Path(args.run)
    if args.config:
        train(TrainConfig.from_yaml(args.config), run, show_progress=False)
    config = json.loads((run / "train_config.json").read_text())
    test = load_preset("qqp", split="test")
    result: dict = {"test_pairs": len(test), "run": str(run), "metric": config["metric"],
                    "steps": config["run"]["steps"], "batch_size": config["batch_size"],
                    "train_runtime_s": config["run"].get("train_runtime_s"),
                    "dev_eval_time_s": config["run"].get("dev_eval_time_s"),
                    "train_pairs_per_s": config["run"].get("train_pairs_per_s")}
    result["zero_shot"] = _scores(Encoder.from_pretrained("default", max_length=128), test)
    result["ours"] = _scores(SimilarityModel.from_pretrained(run / "model"), test)
    if args.peer:
        encoder, seconds = _peer(config["run"]["steps"], config["batch_size"], config["seed"], Path(args.peer_out))
        pairs = config["run"]["steps"] * config["batch_size"]
        result["peer_online_contrastive"] = {**_scores(encoder, test), "train_runtime_s": round(seconds, 1),
                                             "train_pairs_per_s": round(pairs / seconds, 2)}
        if result["train_pairs_per_s"]:
            # Ours excludes its periodic dev evaluations (the peer runs none).
            result["throughput_ratio_ours_over_peer"] = round(result["train_pairs_per_s"] / (pairs / seconds), 3)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
