"""torchrun on CPU: N processes x 1 thread vs 1 process x N threads, same work, one session.

Two measurements with the packaged all-MiniLM-L6-v2, interleaved round by round:

* ``index build`` of the first ``--texts`` unique QQP questions (sharded encoding):
  texts/s, and whether the two indexes hold the same vectors;
* ``train`` with the ``quora_duplicates`` recipe for ``--steps`` steps: 1 process with
  batch 32 vs N ranks with batch 32/N each (the same global batch), pairs/s from the run
  folder (training time without dev evaluation).

On a GPU machine the same commands run one process per GPU (NCCL). Here the question
is whether splitting the cores into processes beats intra-op threads.

    python benchmarks/torchrun_cpu.py --procs 2 --rounds 2 --json runs/torchrun_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from metric_sim import NeighborIndex, load_preset

ROOT = Path(__file__).resolve().parents[1]


def _run(command: list[str], threads: int) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return done.stderr


def _launcher(procs: int) -> list[str]:
    if procs == 1:
        return [sys.executable, "-m", "metric_sim"]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs),
            "-m", "metric_sim"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--texts", type=int, default=4000)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    n = args.procs
    pairs = load_preset("qqp", split="test")
    texts = list(dict.fromkeys(pairs.texts_a + pairs.texts_b))[: args.texts]
    results: dict[str, dict[str, list[float]]] = {"index": {"1x": [], "nx": []}, "train": {"1x": [], "nx": []}}
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        corpus = work / "corpus.txt"
        corpus.write_text("\n".join(t.replace("\n", " ") for t in texts) + "\n", encoding="utf-8")
        recipe = ROOT / "recipes" / "quora_duplicates.yaml"
        for r in range(args.rounds):
            order = [("1x", 1, n), ("nx", n, 1)] if r % 2 == 0 else [("nx", n, 1), ("1x", 1, n)]
            for name, procs, threads in order:
                out = work / f"idx-{name}-{r}"
                log = _run([*_launcher(procs), "index", "build", "--model", "default", "--corpus", str(corpus),
                            "--out", str(out), "--batch-size", "64", "--shard-size", "512"], threads)
                # The encoding itself (plan + shards), as logged by rank 0, without start-up and model loading.
                results["index"][name].append(float(re.search(r"encoded \d+ texts .*: (\d+) texts/s", log).group(1)))
                run = work / f"run-{name}-{r}"
                _run([*_launcher(procs), "train", "--config", str(recipe), "--out", str(run), "--no-progress",
                      "--max-steps", str(args.steps), "--set", f"eval_steps={args.steps}",
                      "--set", f"batch_size={32 // procs}", "--set", "zero_shot_eval=false",
                      "--set", "max_dev_pairs=500"], threads)
                results["train"][name].append(json.loads((run / "train_config.json").read_text())["run"]["train_pairs_per_s"])
        a, b = NeighborIndex.load(work / "idx-1x-0", load_model=False), NeighborIndex.load(work / "idx-nx-0", load_model=False)
        max_diff = float(np.max(np.abs(a.embeddings() - b.embeddings())))
    summary = {
        "procs": n,
        "texts": len(texts),
        "steps": args.steps,
        "index_texts_per_s": {k: statistics.median(v) for k, v in results["index"].items()},
        "train_pairs_per_s": {k: statistics.median(v) for k, v in results["train"].items()},
        "index_max_abs_diff_1x_vs_nx": max_diff,
        "raw": results,
    }
    summary["index_ratio_nx_over_1x"] = summary["index_texts_per_s"]["nx"] / summary["index_texts_per_s"]["1x"]
    summary["train_ratio_nx_over_1x"] = summary["train_pairs_per_s"]["nx"] / summary["train_pairs_per_s"]["1x"]
    print(json.dumps(summary, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
