"""Import times and ``metric-sim query`` cold start, this tree against another checkout.

Each measurement is a fresh Python process (what a user's command pays), timed from
outside, repeated and interleaved between the two trees so machine load hits both alike;
the median is reported with the ratio new / baseline.

    python benchmarks/import_time.py --baseline ../baseline-checkout [--repeats 5] [--out results_import_time.json]

``--baseline`` is a checkout of an earlier commit (``git worktree add ../baseline-checkout <commit>``).
The query cold start uses the legacy fixture index and model in ``tests/fixtures/legacy``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LEGACY = ROOT / "tests" / "fixtures" / "legacy"

CASES = {
    "import metric_sim": ["-c", "import metric_sim"],
    "from metric_sim import Metric, Calibrator": ["-c", "from metric_sim import Metric, Calibrator"],
    "from metric_sim.training import TrainConfig": ["-c", "from metric_sim.training import TrainConfig"],
    "import metric_sim.index": ["-c", "import metric_sim.index"],
    "import metric_sim.cli": ["-c", "import metric_sim.cli"],
    "metric-sim query (cold start)": [
        "-m", "metric_sim", "query", str(LEGACY / "index"), "how do i learn python", "-k", "3",
        "--model", str(LEGACY / "model"),
    ],
}


def time_once(tree: Path, args: list[str]) -> tuple[float, str]:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, cwd=tree)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{tree}: {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return seconds, done.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=Path, required=True, help="checkout of the commit to compare with")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results_import_time.json")
    args = parser.parse_args()
    trees = {"baseline": args.baseline.resolve(), "new": ROOT}
    results: dict[str, dict[str, float]] = {}
    for name, case in CASES.items():
        times: dict[str, list[float]] = {"baseline": [], "new": []}
        stderr_lines: dict[str, int] = {}
        for _ in range(args.repeats):
            for label, tree in trees.items():
                seconds, stderr = time_once(tree, case)
                times[label].append(seconds)
                stderr_lines[label] = len([line for line in stderr.splitlines() if line.strip()])
        base, new = statistics.median(times["baseline"]), statistics.median(times["new"])
        results[name] = {"baseline_s": round(base, 3), "new_s": round(new, 3), "ratio_new_over_baseline": round(new / base, 3),
                         "stderr_lines_baseline": stderr_lines["baseline"], "stderr_lines_new": stderr_lines["new"]}
        print(f"{name:48s} baseline {base:6.2f} s   new {new:6.2f} s   ratio {new / base:5.2f}   "
              f"stderr lines {stderr_lines['baseline']} -> {stderr_lines['new']}", flush=True)
    args.out.write_text(json.dumps({"repeats": args.repeats, "results": results}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
