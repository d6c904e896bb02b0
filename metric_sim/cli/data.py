"""``metric-sim data check``: validate a pairs file and print its statistics."""

from __future__ import annotations

import argparse

from metric_sim.cli.common import (
    EXIT_OK,
    Subparsers,
    add_pair_source_args,
    load_pairs_from_args,
    print_json,
)


def add_data_parser(sub: Subparsers) -> None:
    data = sub.add_parser("data", help="inspect pair files")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    check = data_sub.add_parser("check", help="validate a pairs file and print its statistics")
    check.add_argument("file", help="pairs file (.tsv/.csv/.jsonl/.parquet[.gz]) or a datasets folder")
    add_pair_source_args(check)
    check.add_argument("--json", action="store_true", help="print machine-readable JSON")
    check.set_defaults(handler=cmd_data_check)


def cmd_data_check(args: argparse.Namespace) -> int:
    # Strict by default, like the library: a corrupted file exits 2 naming file and line.
    # --on-bad-row skip counts every bad row by kind instead.
    dataset = load_pairs_from_args(args, args.file)
    summary = dataset.summary()
    if args.json:
        print_json(summary)
        return EXIT_OK
    print(f"file:           {summary['source']}")
    print(f"rows read:      {summary['rows_read']:,}")
    print(f"pairs:          {summary['pairs']:,}  (positives {summary['positives']:,}, negatives {summary['negatives']:,})")
    bad = ", ".join(f"{kind} {count:,}" for kind, count in summary["bad_rows"].items())
    print(f"bad rows:       {bad}")
    if summary.get("middle_band"):
        print(f"middle band:    {summary['middle_band']:,} (dropped by score binarisation)")
    if summary.get("multiline_records"):
        print(f"multi-line:     {summary['multiline_records']:,} record(s) with a quoted line break (see the warning)")
    print(f"self-pairs:     {summary['self_pairs']:,}   duplicate pairs: {summary['duplicate_pairs']:,}")
    print(f"unique texts:   {summary['unique_texts']:,}")
    print(f"clusters:       {summary['clusters']:,} with 2+ members (largest {summary['largest_cluster']}), {summary['singletons']:,} singletons")
    return EXIT_OK
