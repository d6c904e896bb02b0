"""Does averaging the weights of a run's last checkpoints raise QQP AP? (uniform checkpoint averaging)

Averaging the weights of the last checkpoints of one run (Izmailov et al. 2018, "Averaging weights
leads to wider optima and better generalization", SWA; Wortsman et al. 2022, "Model soups") costs
no training step. This trains one ``quality.py`` metric-sim cell (variant, lr, seed, schedule) with
every ``--eval-steps`` checkpoint kept, then scores each checkpoint of the run's end alone and the
uniform average of the last k of them on dev and test AP of raw distance. The rule that would
choose among them is dev AP, as everywhere in ``quality.py``.

    PYTHONPATH=$PWD python benchmarks/checkpoint_average.py --work runs/bench/qqp_average \\
        --system ms_pair_ranking --lr 1e-4 --seed 0 --json benchmarks/results_checkpoint_average.json

A run folder already trained is reused (only the scoring runs again).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, markdown_table, write_outputs  # noqa: E402
from quality_data import Task, load_task  # noqa: E402
from quality_grid import ms_cell_config  # noqa: E402

from metric_sim import SimilarityModel, train  # noqa: E402
from metric_sim.layout import CHECKPOINT_DIR  # noqa: E402
from metric_sim.metrics import average_precision  # noqa: E402
from metric_sim.model import pair_set_distances  # noqa: E402
from metric_sim.training.resume import checkpoint_step  # noqa: E402

logger = logging.getLogger("checkpoint_average")


def checkpoint_steps(checkpoints: Path) -> list[int]:
    """The steps of the ``checkpoint-STEP`` folders under ``checkpoints``, in order."""
    steps = (checkpoint_step(p.name) for p in checkpoints.glob("checkpoint-*"))
    return sorted(step for step in steps if step is not None)


def average_state_dicts(paths: Sequence[Path]) -> dict[str, Any]:
    """The element-wise mean of the ``model.safetensors`` tensors of ``paths`` (float32 sums).

    Every file must hold the same tensor names and shapes; a mismatch names the file and the tensor.
    """
    from safetensors.torch import load_file

    if not paths:
        raise ValueError("average_state_dicts: no checkpoint to average")
    total: dict[str, Any] = {}
    for path in paths:
        state = load_file(path)
        if total and state.keys() != total.keys():
            raise ValueError(f"{path}: tensors {sorted(state.keys() ^ total.keys())[:3]} are not in every checkpoint")
        for name, tensor in state.items():
            if name in total and tensor.shape != total[name].shape:
                raise ValueError(f"{path}: tensor {name} has shape {tuple(tensor.shape)}, "
                                 f"{tuple(total[name].shape)} elsewhere")
            total[name] = total[name] + tensor.float() if name in total else tensor.float().clone()
    return {name: tensor / len(paths) for name, tensor in total.items()}


def run_folder(work: Path, system: str, lr: float, seed: int, schedule: str, eval_steps: int) -> Path:
    return work / f"{system}@lr{lr:g}@s{seed}@{schedule}@e{eval_steps}"


def train_cell(task: Task, run_dir: Path, system: str, lr: float, seed: int, schedule: str, eval_steps: int) -> None:
    """Train the cell (skipped when its model exists), keeping every checkpoint."""
    if (run_dir / "model" / "metric_sim.json").is_file():
        return
    config = ms_cell_config(task, system, lr, seed).replace(
        lr_scheduler=schedule, eval_steps=eval_steps, save_total_limit=None)
    logger.info("training %s into %s (%d steps, a checkpoint every %d)", system, run_dir, task.steps, eval_steps)
    train(config, run_dir, train_data=task.train, dev_data=task.dev, show_progress=False)


def score(model: SimilarityModel, task: Task) -> dict[str, float]:
    """Dev and test AP of ``-distance`` (the items of both splits encoded in one pass)."""
    distances = pair_set_distances(model, {"dev": task.dev, "test": task.test})
    return {split: round(average_precision(distances[split], pairs.labels), 4)
            for split, pairs in (("dev", task.dev), ("test", task.test))}


def score_averages(run_dir: Path, task: Task, last: Sequence[int], singles: int) -> list[dict[str, Any]]:
    """Rows: each of the last ``singles`` checkpoints alone, then the average of the last k for each k in ``last``."""
    checkpoints = run_dir / CHECKPOINT_DIR
    steps = checkpoint_steps(checkpoints)
    model = SimilarityModel.from_pretrained(run_dir / "model")
    rows = []
    sets = [[step] for step in steps[-singles:]] + [steps[-k:] for k in last if 1 < k <= len(steps)]
    for chosen in sets:
        state = average_state_dicts([checkpoints / f"checkpoint-{step}" / "model.safetensors" for step in chosen])
        model.encoder.load_state_dict(state)
        rows.append({"steps": chosen, **score(model, task)})
        logger.info("steps %s: dev AP %.4f, test AP %.4f", chosen, rows[-1]["dev"], rows[-1]["test"])
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for the run (reused when trained)")
    parser.add_argument("--task", default="qqp", choices=["qqp", "stsb", "mrpc"])
    parser.add_argument("--system", default="ms_pair_ranking", help="a metric-sim system of quality.py")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr-scheduler", default="linear", help="linear (the recipes'), constant_with_warmup, ...")
    parser.add_argument("--eval-steps", type=int, default=50, help="a checkpoint every N steps")
    parser.add_argument("--last", type=int, nargs="+", default=[2, 3, 4, 6, 8], help="average the last k checkpoints")
    parser.add_argument("--singles", type=int, default=6, help="score the last N checkpoints alone")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.system.startswith("ms_"):
        raise SystemExit(f"--system must be a metric-sim system of quality.py (ms_...), got {args.system!r}")
    if args.eval_steps < 1:
        raise SystemExit(f"--eval-steps must be >= 1, got {args.eval_steps}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    task = load_task(args.task)
    run_dir = run_folder(args.work, args.system, args.lr, args.seed, args.lr_scheduler, args.eval_steps)
    train_cell(task, run_dir, args.system, args.lr, args.seed, args.lr_scheduler, args.eval_steps)
    rows = score_averages(run_dir, task, args.last, args.singles)
    table = markdown_table(["checkpoints (steps)", "averaged", "dev AP", "test AP"],
                           [[", ".join(map(str, r["steps"])), len(r["steps"]), f"{r['dev']:.4f}", f"{r['test']:.4f}"]
                            for r in rows])
    print(table)
    payload = {"environment": environment(), "task": args.task, "system": args.system, "lr": args.lr,
               "seed": args.seed, "lr_scheduler": args.lr_scheduler, "eval_steps": args.eval_steps,
               "run": str(run_dir), "rows": rows}
    write_outputs(args.json, payload, args.markdown, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
