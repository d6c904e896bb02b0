"""Command line: ``metric-sim <command> ...``.

``main(argv)`` is the only place that parses arguments and sets exit codes, so
tests run the real CLI in-process. Exit codes: 0 success, 2 bad input (the message
names the file/line/column or the argument), 1 unexpected failure.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2

logger = logging.getLogger("metric_sim")


class UsageError(ValueError):
    """A bad combination of command-line arguments."""


def _print_json(payload: Any) -> None:
    print(json.dumps(payload, indent=2, sort_keys=True, default=str))


def _add_pair_source_args(parser: argparse.ArgumentParser) -> None:
    """--preset NAME or explicit column flags, shared by every command that reads pairs."""
    parser.add_argument("--preset", help="named layout: qqp, stsb, sick, mrpc, paws")
    parser.add_argument("--text-a", default=None, help="column of the first text (name, or 0-based index with --no-header)")
    parser.add_argument("--text-b", default=None, help="column of the second text")
    parser.add_argument("--label", default=None, help="column of the 0/1 label")
    parser.add_argument("--id-a", default=None, help="optional id column of the first text")
    parser.add_argument("--id-b", default=None, help="optional id column of the second text")
    parser.add_argument("--no-header", action="store_true", help="the file has no header row; columns are 0-based indices")
    parser.add_argument("--on-bad-row", choices=["error", "skip"], default=None, help="fail on the first bad row, or skip and count")


def _column(value: str | None, header: bool) -> str | int | None:
    if value is None:
        return None
    return int(value) if (not header or value.isdigit()) and value.lstrip("-").isdigit() else value


def load_pairs_from_args(args: argparse.Namespace, path: str, *, default_on_bad_row: str = "error", split: str | None = None):
    """Build a PairDataset from the shared --preset / column flags."""
    from metric_sim.data import load_pairs, load_preset

    on_bad_row = args.on_bad_row or default_on_bad_row
    if args.preset:
        if any(getattr(args, k) for k in ("text_a", "text_b", "label")):
            raise UsageError("pass either --preset or --text-a/--text-b/--label, not both")
        return load_preset(args.preset, path, split=split, on_bad_row=on_bad_row)
    header = not args.no_header
    kwargs: dict[str, Any] = {"header": header, "on_bad_row": on_bad_row}
    for flag, key in (("text_a", "text_a"), ("text_b", "text_b"), ("label", "label"), ("id_a", "id_a"), ("id_b", "id_b")):
        column = _column(getattr(args, flag), header)
        if column is not None:
            kwargs[key] = column
    dataset = load_pairs(path, **kwargs)
    return dataset


# ---------------------------------------------------------------------------- data check
def _add_data_parser(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="inspect pair files")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    check = data_sub.add_parser("check", help="validate a pairs file and print its statistics")
    check.add_argument("file", help="pairs file (.tsv/.csv/.jsonl/.parquet[.gz]) or a datasets folder")
    _add_pair_source_args(check)
    check.add_argument("--json", action="store_true", help="print machine-readable JSON")
    check.set_defaults(handler=_cmd_data_check)


def _cmd_data_check(args: argparse.Namespace) -> int:
    # Strict by default, like the library: a corrupted file exits 2 naming file and line.
    # --on-bad-row skip counts every bad row by kind instead.
    dataset = load_pairs_from_args(args, args.file)
    summary = dataset.summary()
    if args.json:
        _print_json(summary)
        return EXIT_OK
    print(f"file:           {summary['source']}")
    print(f"rows read:      {summary['rows_read']:,}")
    print(f"pairs:          {summary['pairs']:,}  (positives {summary['positives']:,}, negatives {summary['negatives']:,})")
    bad = ", ".join(f"{kind} {count:,}" for kind, count in summary["bad_rows"].items())
    print(f"bad rows:       {bad}")
    if summary.get("middle_band"):
        print(f"middle band:    {summary['middle_band']:,} (dropped by score binarisation)")
    print(f"self-pairs:     {summary['self_pairs']:,}   duplicate pairs: {summary['duplicate_pairs']:,}")
    print(f"unique texts:   {summary['unique_texts']:,}")
    print(f"clusters:       {summary['clusters']:,} with 2+ members (largest {summary['largest_cluster']}), {summary['singletons']:,} singletons")
    return EXIT_OK


# ---------------------------------------------------------------------------- quickstart
def _add_quickstart_parser(sub: argparse._SubParsersAction) -> None:
    quick = sub.add_parser("quickstart", help="run the main job end to end on the bundled demo pairs")
    quick.add_argument("--out", default="metric-sim-quickstart", help="output folder (default: %(default)s)")
    quick.add_argument("--model", default="default", help="encoder to start from (default: packaged all-MiniLM-L6-v2)")
    quick.set_defaults(handler=_cmd_quickstart)


def _average_precision_by_metric(encoder: Any, dataset: Any) -> dict[str, float]:
    """Zero-shot AP of raw distance for each metric, ranking by -distance."""
    from sklearn.metrics import average_precision_score

    from metric_sim.calibration import SimilarityModel
    from metric_sim.distances import Metric

    result = {}
    for metric in Metric:
        distances = SimilarityModel(encoder, metric).distance(dataset.texts_a, dataset.texts_b)
        result[metric.value] = float(average_precision_score(dataset.labels, -distances))
    return result


def _cmd_quickstart(args: argparse.Namespace) -> int:
    from metric_sim import demo_pairs_path
    from metric_sim.data import load_pairs
    from metric_sim.encoder import Encoder

    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dataset = load_pairs(demo_pairs_path(), text_a="question1", text_b="question2", label="is_duplicate")
    summary = dataset.summary()
    print(f"demo pairs: {summary['pairs']} ({summary['positives']} duplicates), {summary['unique_texts']} unique questions")
    encoder = Encoder.from_pretrained(args.model, max_length=128)
    print(f"encoder: {args.model} (pooling={encoder.pooling}, normalize={encoder.normalize}, dim={encoder.embedding_dim})")
    zero_shot = _average_precision_by_metric(encoder, dataset)
    for metric, ap in zero_shot.items():
        print(f"zero-shot average precision ({metric:9s}): {ap:.4f}")
    from metric_sim.encoder import write_json_atomic

    write_json_atomic(out / "quickstart.json", {"zero_shot_ap": zero_shot, "demo": summary})
    print(f"wrote {out / 'quickstart.json'} in {time.perf_counter() - started:.1f} s")
    return EXIT_OK


# ---------------------------------------------------------------------------- entry point
PARSER_BUILDERS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_data_parser,
    _add_quickstart_parser,
]


def build_parser() -> argparse.ArgumentParser:
    from metric_sim import __version__

    parser = argparse.ArgumentParser(prog="metric-sim", description="Similarity learning on raw Euclidean/Manhattan distance.")
    parser.add_argument("--version", action="version", version=f"metric-sim {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in PARSER_BUILDERS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Data warnings (skipped rows) read as one log line each, not as source excerpts.
    warnings.formatwarning = lambda message, category, *_: f"{category.__name__}: {message}"
    logging.captureWarnings(True)
    from metric_sim.calibration import CalibrationError
    from metric_sim.data import DataError
    from metric_sim.encoder import EncoderLoadError

    try:
        return int(args.handler(args) or EXIT_OK)
    except (DataError, UsageError, EncoderLoadError, CalibrationError, FileNotFoundError, ValueError, TypeError) as exc:
        if args.verbose:
            logger.exception("details")
        print(f"metric-sim: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("metric-sim: interrupted", file=sys.stderr)
        return 130
