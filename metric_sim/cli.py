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
    parser.add_argument("--pair-id", default=None, help="optional pair id column (what --split-file refers to; default: the line number)")
    parser.add_argument("--no-header", action="store_true", help="the file has no header row; columns are 0-based indices")
    parser.add_argument("--on-bad-row", choices=["error", "skip"], default=None, help="fail on the first bad row, or skip and count")


def _column(value: str | None, header: bool) -> str | int | None:
    if value is None:
        return None
    return int(value) if (not header or value.isdigit()) and value.lstrip("-").isdigit() else value


def load_pairs_from_args(
    args: argparse.Namespace,
    path: str | None,
    *,
    default_on_bad_row: str = "error",
    split: str | None = None,
    split_file: str | None = None,
):
    """Build a PairDataset from the shared --preset / column flags.

    ``split`` alone picks a preset's split (its own file, or qqp's split.tsv);
    with ``split_file`` (a tsv with columns ``id`` and ``split``) the whole source is
    loaded and the pairs whose pair id the file assigns to ``split`` are kept.
    """
    from metric_sim.data import load_pairs, load_preset

    on_bad_row = args.on_bad_row or default_on_bad_row
    if split_file is not None and split is None:
        raise UsageError(f"--split-file {split_file} needs --split NAME (which of its splits to use)")
    if args.preset:
        if any(getattr(args, k, None) for k in ("text_a", "text_b", "label", "pair_id")):
            raise UsageError("pass either --preset or --text-a/--text-b/--label/--pair-id, not both")
        if split_file is not None:
            return load_preset(args.preset, path, on_bad_row=on_bad_row).split_from_file(split_file, split)
        return load_preset(args.preset, path, split=split, on_bad_row=on_bad_row)
    if path is None:
        raise UsageError("--data FILE is required unless --preset names a dataset under METRIC_SIM_DATA")
    if split is not None and split_file is None:
        raise UsageError(f"--split {split!r} needs --split-file FILE (a tsv with columns id, split), or a --preset with splits")
    header = not args.no_header
    kwargs: dict[str, Any] = {"header": header, "on_bad_row": on_bad_row}
    for flag, key in (("text_a", "text_a"), ("text_b", "text_b"), ("label", "label"), ("id_a", "id_a"), ("id_b", "id_b"), ("pair_id", "pair_id")):
        column = _column(getattr(args, flag, None), header)
        if column is not None:
            kwargs[key] = column
    dataset = load_pairs(path, **kwargs)
    if split_file is not None:
        dataset = dataset.split_from_file(split_file, split)
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


# ---------------------------------------------------------------------------- evaluate / calibrate (issue 4)
def _add_model_data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model folder, or a training run folder (its model/ is used)")
    parser.add_argument("--data", default=None, metavar="FILE", help="pairs file (optional with --preset: the preset's files under METRIC_SIM_DATA)")
    _add_pair_source_args(parser)
    parser.add_argument("--split-file", default=None, metavar="FILE", help="tsv with columns id, split that assigns every pair id to a split")
    parser.add_argument("--batch-size", type=int, default=64, help="encoding batch size (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def _add_evaluate_parser(sub: argparse._SubParsersAction) -> None:
    evaluate = sub.add_parser("evaluate", help="score a model on a split; write metrics.json, report.md and PNG figures")
    _add_model_data_args(evaluate)
    evaluate.add_argument("--split", default=None, help="split to score, e.g. test (default: every pair of the file)")
    evaluate.add_argument(
        "--calibrate-on", default=None, metavar="SPLIT",
        help="fit the calibrator on this split of the same data for the report (never the scored split); default: the model's stored calibrator",
    )
    evaluate.add_argument(
        "--baseline", default=None, metavar="MODEL",
        help="also evaluate this encoder beside the model, calibrated the same way (e.g. 'default': the packaged all-MiniLM-L6-v2)",
    )
    evaluate.add_argument("--report", required=True, metavar="DIR", help="folder for metrics.json, report.md and the figures")
    evaluate.set_defaults(handler=_cmd_evaluate)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from metric_sim._validation import require_positive_int
    from metric_sim.calibration import CalibrationError, SimilarityModel
    from metric_sim.evaluation import evaluate_and_report

    batch_size = require_positive_int("--batch-size", args.batch_size)
    if args.calibrate_on is not None:
        if args.split is None:
            raise UsageError(f"--calibrate-on {args.calibrate_on!r} needs --split (the split to score), so that the two are disjoint")
        if args.calibrate_on == args.split:
            raise UsageError(f"--calibrate-on {args.calibrate_on!r} is the scored --split: fit the calibrator on another split (e.g. dev)")
    # Data first: a bad file fails in a second, before any model is loaded.
    pairs = load_pairs_from_args(args, args.data, split=args.split, split_file=args.split_file)
    calibration_pairs = None
    if args.calibrate_on is not None:
        calibration_pairs = load_pairs_from_args(args, args.data, split=args.calibrate_on, split_file=args.split_file)
    model = SimilarityModel.from_pretrained(args.model)
    if model.calibrator is None and calibration_pairs is None:
        raise CalibrationError(
            f"{args.model} has no stored calibrator: pass --calibrate-on SPLIT (e.g. dev), "
            f"or store one first with `metric-sim calibrate --model {args.model} --data ... --split dev`"
        )
    baseline = None
    if args.baseline:
        # Same metric and token budget as the model, so the comparison is like for like.
        baseline = SimilarityModel.from_pretrained(args.baseline, metric=model.metric, max_length=model.encoder.max_length)
    logger.info("scoring %d pairs%s", len(pairs), f" (split {args.split!r})" if args.split else "")
    payload = evaluate_and_report(
        model,
        pairs,
        args.report,
        split=args.split or "all",
        calibration_pairs=calibration_pairs,
        calibration_split=args.calibrate_on,
        baseline=baseline,
        data={"preset": args.preset, "split_file": args.split_file},
        batch_size=batch_size,
        show_progress=True,
    )
    if args.json:
        _print_json(payload)
        return EXIT_OK
    names = list(payload["models"])
    rows = [
        ("average precision", lambda m: m["pairs"]["average_precision"]),
        ("ROC-AUC", lambda m: m["pairs"]["roc_auc"]),
        ("threshold tau", lambda m: m["pairs"]["threshold"]),
        ("accuracy at tau", lambda m: m["pairs"]["accuracy"]),
        ("F1 at tau", lambda m: m["pairs"]["f1"]),
        ("accuracy, in-sample best", lambda m: m["pairs"]["in_sample"]["accuracy"]),
        ("F1, in-sample best", lambda m: m["pairs"]["in_sample"]["f1"]),
        ("ECE (15 bins)", lambda m: m["calibration"]["ece"]),
        ("Brier", lambda m: m["calibration"]["brier"]),
        ("recall@1", lambda m: m["retrieval"]["recall_at_1"]),
        ("mAP@R", lambda m: m["retrieval"]["map_at_r"]),
        ("max |p(a,b) - p(b,a)|", lambda m: m["symmetry"]["max_abs_difference"]),
    ]
    print(f"scored {payload['data']['pairs']:,} pairs ({payload['data']['positives']:,} similar) of {payload['data']['source']}, split {payload['data']['split']}")
    print(f"{'':28s}" + "".join(f"{name[:22]:>24s}" for name in names))
    for label, get in rows:
        values = [get(payload["models"][name]) for name in names]
        print(f"{label:28s}" + "".join(f"{'-' if v is None else format(v, '.4f'):>24s}" for v in values))
    print(f"report: {Path(args.report) / 'report.md'}")
    return EXIT_OK


def _add_calibrate_parser(sub: argparse._SubParsersAction) -> None:
    calibrate = sub.add_parser("calibrate", help="fit the distance -> probability calibrator on a held-out split and store it in the model folder")
    _add_model_data_args(calibrate)
    calibrate.add_argument("--split", default=None, help="held-out split to fit on, e.g. dev (default: every pair of the file)")
    calibrate.set_defaults(handler=_cmd_calibrate)


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from metric_sim._validation import require_positive_int
    from metric_sim.calibration import SimilarityModel, resolve_model_dir
    from metric_sim.encoder import DEFAULT_MODEL
    from metric_sim.evaluation import describe_split

    batch_size = require_positive_int("--batch-size", args.batch_size)
    if args.model == DEFAULT_MODEL:
        raise UsageError("calibrate stores the calibrator in a model folder; 'default' is the packaged encoder: save it to a folder first")
    folder = resolve_model_dir(args.model)
    pairs = load_pairs_from_args(args, args.data, split=args.split, split_file=args.split_file)
    model = SimilarityModel.from_pretrained(folder)
    previous = model.calibrator
    calibrator = model.calibrate(pairs, fitted_on=describe_split(pairs, args.split), batch_size=batch_size, show_progress=True)
    written = model.save_calibrator(folder)
    result = {
        "model": str(folder),
        "file": str(written),
        "calibrator": calibrator.to_dict(),
        "max_probability": float(calibrator.predict_proba([0.0])[0]),
        "positives": int(pairs.labels.sum()),
        "replaced": previous.to_dict() if previous else None,
    }
    if args.json:
        _print_json(result)
        return EXIT_OK
    print(f"fitted on {calibrator.fitted_on}: {result['positives']:,} similar pairs")
    print(f"p(similar | d) = sigmoid({calibrator.weight:.4f} * d + {calibrator.bias:.4f})   ({model.metric.value} distance)")
    print(f"threshold tau = {calibrator.threshold:.4f}: similar when d <= tau;  p(d=0) = {result['max_probability']:.4f}")
    if previous is not None:
        print(f"replaced the previous calibrator (tau = {previous.threshold:.4f}, fitted on {previous.fitted_on})")
    print(f"stored in {written}")
    return EXIT_OK


# ---------------------------------------------------------------------------- entry point
PARSER_BUILDERS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_data_parser,
    _add_quickstart_parser,
    _add_evaluate_parser,
    _add_calibrate_parser,
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
