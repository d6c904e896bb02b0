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
    check.add_argument("file", nargs="?", default=None,
                       help="pairs file (.tsv/.csv/.jsonl/.parquet[.gz]) or a datasets folder (optional with --preset)")
    check.add_argument("--images", metavar="PATH", default=None,
                       help="check a labelled image collection instead: a folder tree (ROOT/identity/*.png|jpg|pgm), "
                            "a .zip of one, or an image list file (path, class[, coarse class])")
    add_pair_source_args(check)
    check.add_argument("--json", action="store_true", help="print machine-readable JSON")
    check.set_defaults(handler=cmd_data_check)


def cmd_data_check(args: argparse.Namespace) -> int:
    # Strict by default, like the library: a corrupted file exits 2 naming file and line.
    # --on-bad-row skip counts every bad row by kind instead.
    if args.images is not None:
        return _check_images(args)
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


def _check_images(args: argparse.Namespace) -> int:
    """Every image decoded once; identities, coarse classes and what was skipped (--on-bad-row skip)."""
    from pathlib import Path

    from metric_sim.data.collections import read_image_folder, read_image_list, read_image_zip

    path = Path(args.images)
    reader = read_image_folder if path.is_dir() else read_image_zip if path.suffix.lower() == ".zip" else read_image_list
    collection = reader(path, on_bad_row=args.on_bad_row or "error")
    per_identity = [collection.labels.count(name) for name in collection.identities()]
    summary = {"source": collection.source, "images": len(collection), "identities": len(per_identity),
               "coarse_classes": len({c for c in collection.coarse if c is not None}),
               "images_per_identity": {"min": min(per_identity, default=0), "max": max(per_identity, default=0)},
               "report": collection.report.to_dict()}
    if args.json:
        print_json(summary)
        return EXIT_OK
    print(f"source:         {summary['source']}")
    print(f"images:         {summary['images']:,} in {summary['identities']:,} identities "
          f"({summary['images_per_identity']['min']}-{summary['images_per_identity']['max']} each), "
          f"{summary['coarse_classes']:,} coarse classes")
    skipped = summary["report"].get("skipped", {})
    print(f"skipped:        {', '.join(f'{k} {v:,}' for k, v in skipped.items()) or 'none'}")
    return EXIT_OK
