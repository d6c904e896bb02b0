"""``metric-sim train``: fine-tune an encoder per a YAML recipe into a run folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from metric_sim.cli.common import EXIT_OK, Subparsers
from metric_sim.errors import UsageError


def add_train_parser(sub: Subparsers) -> None:
    train = sub.add_parser(
        "train",
        help="fine-tune an encoder on labelled pairs (transformers.Trainer + pytorch-metric-learning loss)",
        description="Fine-tune per a YAML recipe; writes RUN_DIR/{train_config.json, model/, metrics.json, checkpoints/}.",
    )
    train.add_argument("--config", help="recipe YAML (e.g. recipes/quora_duplicates.yaml); optional with --resume")
    train.add_argument("--out", help="run folder (default: runs/<recipe name>)")
    train.add_argument("--max-steps", type=int, default=None, help="stop after N optimiser steps (overrides the recipe)")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. --set learning_rate=5e-5 --set loss_params.neg_margin=0.9")
    train.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    train.add_argument("--no-progress", action="store_true", help="no tqdm bar (log lines only)")
    train.set_defaults(handler=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from metric_sim.training import TrainConfig, parse_overrides, train

    overrides = parse_overrides(args.overrides)
    if args.max_steps is not None:
        overrides["max_steps"] = args.max_steps
    if args.config is None and not args.resume:
        raise UsageError("--config is required (unless --resume continues the run in --out)")
    if args.out is None and (args.resume or args.config is None):
        raise UsageError("--resume needs --out: the run folder to continue")
    config = TrainConfig.from_yaml(args.config, overrides) if args.config else None
    if config is None and overrides:
        raise UsageError("--set/--max-steps with --resume need --config (the run continues with its saved config)")
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    from metric_sim.distributed import closing_process_group, is_main_process

    # Under torchrun the Trainer's group is closed before exit (no wait for the others after an error).
    with closing_process_group():
        result = train(config, out, resume=args.resume, show_progress=not args.no_progress)
    if not is_main_process():  # torchrun: every rank returns the same result; rank 0 reports it
        return EXIT_OK
    dev = result.metrics.get("dev", {})
    zero = result.metrics.get("zero_shot_dev", {})
    print(f"run folder:       {result.run_dir}")
    print(f"model:            {result.run_dir / 'model'}")
    print(f"steps:            {result.steps} in {result.wall_time_s:.0f} s")
    if zero:
        print(f"dev AP zero-shot: {zero['average_precision']:.4f}")
    print(f"dev AP trained:   {dev.get('average_precision', float('nan')):.4f} ({result.metrics.get('metric')})")
    if "threshold" in dev:
        print(f"threshold:        {dev['threshold']:.4f} (calibrated on dev)")
    return EXIT_OK
