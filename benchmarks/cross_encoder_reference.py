"""A reference point, not a system: a cross-encoder trained on the same QQP pairs at the same budget.

A cross-encoder reads both questions together, so it is usually the stronger judge of a pair; it
cannot index anything. Two uses of it are common in the literature on small labelled sets: as a
teacher that labels more pairs for the bi-encoder (Thakur et al. 2021, "Augmented SBERT"), and as
a false-negative filter for mined negatives. Both need it to be better than the bi-encoder it would
teach. This trains sentence-transformers' ``CrossEncoder`` (the packaged all-MiniLM-L6-v2 weights
plus a new one-logit head, ``BinaryCrossEntropyLoss``) for the recipe's budget (one epoch, batch 32,
warmup 0.1, linear decay, max length 128) and reports dev and test AP of its logit.

    PYTHONPATH=$PWD python benchmarks/cross_encoder_reference.py --lr 5e-5 1e-4 --seed 0 \\
        --work runs/bench/cross_encoder --json benchmarks/results_cross_encoder_qqp.json
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, markdown_table, write_outputs  # noqa: E402
from quality_data import Task, base_model_location, load_task  # noqa: E402

from metric_sim import PairDataset  # noqa: E402
from metric_sim.metrics import average_precision  # noqa: E402

logger = logging.getLogger("cross_encoder_reference")


def pair_rows(pairs: PairDataset) -> dict[str, list[Any]]:
    """The columns sentence-transformers' cross-encoder trainer reads: two texts, then a float label."""
    return {"text_a": list(pairs.texts_a), "text_b": list(pairs.texts_b), "label": [float(y) for y in pairs.labels]}


def train_and_score(task: Task, lr: float, seed: int, out: Path) -> dict[str, Any]:
    from datasets import Dataset
    from sentence_transformers.cross_encoder import (
        CrossEncoder,
        CrossEncoderTrainer,
        CrossEncoderTrainingArguments,
    )
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss

    model = CrossEncoder(str(base_model_location(task)), num_labels=1, max_length=task.config.max_length, device="cpu")
    args = CrossEncoderTrainingArguments(
        output_dir=str(out), num_train_epochs=1, max_steps=task.steps, per_device_train_batch_size=task.config.batch_size,
        learning_rate=lr, warmup_ratio=task.config.warmup_ratio, lr_scheduler_type=task.config.lr_scheduler,
        seed=seed, data_seed=seed, save_strategy="no", logging_steps=50, report_to="none", use_cpu=True)
    trainer = CrossEncoderTrainer(model=model, args=args, train_dataset=Dataset.from_dict(pair_rows(task.train)),
                                  loss=BinaryCrossEntropyLoss(model))
    started = time.perf_counter()
    trainer.train()
    record: dict[str, Any] = {"lr": lr, "seed": seed, "steps": task.steps, "train_s": round(time.perf_counter() - started, 1)}
    for split, pairs in (("dev", task.dev), ("test", task.test)):
        logits = np.asarray(model.predict(list(zip(pairs.texts_a, pairs.texts_b, strict=True)), batch_size=64,
                                          show_progress_bar=False), dtype=np.float64)
        record[split] = round(average_precision(-logits, pairs.labels), 4)  # a higher logit = more similar
    logger.info("cross-encoder lr %g seed %d: dev AP %.4f, test AP %.4f", lr, seed, record["dev"], record["test"])
    return record


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="the trainer's output folder (nothing is saved)")
    parser.add_argument("--lr", type=float, nargs="+", default=[5e-5, 1e-4])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    task = load_task("qqp")
    rows = [train_and_score(task, lr, args.seed, args.work / f"lr{lr:g}_s{args.seed}") for lr in args.lr]
    table = markdown_table(["cross-encoder lr", "dev AP", "test AP", "train s"],
                           [[f"{r['lr']:g}", f"{r['dev']:.4f}", f"{r['test']:.4f}", r["train_s"]] for r in rows])
    print(table)
    write_outputs(args.json, {"environment": environment(), "task": "qqp", "rows": rows}, args.markdown, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
