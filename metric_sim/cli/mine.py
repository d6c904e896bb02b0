"""``metric-sim mine``: hard negatives for a pair list, mined with a model on its own raw distance."""

from __future__ import annotations

import argparse
import logging

from metric_sim.cli.common import (
    EXIT_OK,
    Subparsers,
    add_model_data_args,
    load_pairs_from_args,
    load_similarity_model,
    print_json,
)
from metric_sim.errors import MetricSimError, UsageError

__all__ = ["add_mine_parser", "cmd_mine"]

logger = logging.getLogger(__name__)

# Option name in metric_sim.mining -> the flag that sets it, so errors name what the user typed.
FLAGS = {"num_negatives": "--num-negatives", "range_min": "--range-min", "range_max": "--range-max",
         "relative_margin": "--relative-margin", "max_probability": "--max-prob", "seed": "--seed"}


def add_mine_parser(sub: Subparsers) -> None:
    mine = sub.add_parser(
        "mine",
        help="mine hard negatives: each item's nearest neighbours under the model that are not labelled similar",
    )
    add_model_data_args(mine)
    mine.add_argument("--split", default=None, help="split to mine, e.g. train (default: every pair of the file)")
    mine.add_argument("--out", required=True, metavar="FILE", help="where to write the negatives (.tsv, plus FILE.json)")
    mine.add_argument("--num-negatives", type=int, default=3, help="negatives per anchor (default: %(default)s)")
    mine.add_argument("--range-min", type=int, default=0, help="skip this many nearest candidates (default: %(default)s)")
    mine.add_argument("--range-max", type=int, default=None,
                      help="consider at most this many nearest candidates (default: range-min + num-negatives, x10 "
                           "with a guard or random sampling)")
    mine.add_argument("--relative-margin", type=float, default=None,
                      help="skip candidates closer than (1 + margin) x the anchor's farthest labelled positive")
    mine.add_argument("--max-prob", type=float, default=None,
                      help="skip candidates whose calibrated p(similar) is above this (needs a calibrated model)")
    mine.add_argument("--sampling", choices=("top", "random"), default="top",
                      help="take the nearest candidates that pass, or a seeded random draw of them (default: %(default)s)")
    mine.add_argument("--seed", type=int, default=0, help="seed of --sampling random (default: %(default)s)")
    mine.add_argument("--anchors", choices=("all", "with_positives"), default="all",
                      help="mine for every item, or only for items with a labelled positive (default: %(default)s)")
    mine.add_argument("--kind", default="flat", help="index kind: flat (exact), hnsw or ivf (default: %(default)s)")
    mine.add_argument("--search-batch-size", type=int, default=1024,
                      help="anchors per k-NN search; bounds memory (default: %(default)s)")
    mine.set_defaults(handler=cmd_mine)


def cmd_mine(args: argparse.Namespace) -> int:
    from metric_sim.index.kinds import parse_index_kind
    from metric_sim.mining import MiningOptions, describe_counts, mine_hard_negatives, sidecar_path
    from metric_sim.validation import require_positive_int

    require_positive_int("--batch-size", args.batch_size)
    require_positive_int("--search-batch-size", args.search_batch_size)
    options = dict(num_negatives=args.num_negatives, range_min=args.range_min, range_max=args.range_max,
                   relative_margin=args.relative_margin, max_probability=args.max_prob,
                   sampling_strategy=args.sampling, index_kind=args.kind, seed=args.seed, anchors=args.anchors)
    # Fail on a bad option before loading data and model, naming the flag the user typed.
    try:
        MiningOptions.checked(**options)
        parse_index_kind(args.kind, "euclidean")
    except MetricSimError as exc:
        message = str(exc)
        for name, flag in FLAGS.items():
            if message.startswith(name + " "):
                raise UsageError(flag + message[len(name):]) from None
        raise
    pairs = load_pairs_from_args(args, args.data, split=args.split, split_file=args.split_file)
    model = load_similarity_model(args.model)
    mined = mine_hard_negatives(model, pairs, batch_size=args.batch_size, search_batch_size=args.search_batch_size,
                                show_progress=not args.json, **options)
    written = mined.save(args.out)
    if args.json:
        print_json({"file": str(written), "record": str(sidecar_path(written)), "counts": mined.counts,
                    "options": mined.options, "metric": mined.metric})
        return EXIT_OK
    print(f"mined {len(pairs):,} pairs with {args.model} ({mined.metric} distance)")
    for line in describe_counts(mined):
        print(line)
    print(f"wrote {written} and {sidecar_path(written)}")
    return EXIT_OK
