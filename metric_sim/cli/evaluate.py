"""``metric-sim evaluate`` (score a model, write the report) and ``metric-sim calibrate`` (fit and store the calibrator)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from metric_sim.calibration import DEFAULT_FEATURE, FIT_FEATURES, SELECTION_FOLDS
from metric_sim.cli.common import (
    EXIT_OK,
    Subparsers,
    add_model_data_args,
    load_pairs_from_args,
    print_json,
)
from metric_sim.errors import CalibrationError, MetricSimError, UsageError
from metric_sim.layout import DEFAULT_MODEL, resolve_model_dir

logger = logging.getLogger(__name__)


def add_evaluate_parser(sub: Subparsers) -> None:
    evaluate = sub.add_parser("evaluate", help="score a model on a split; write metrics.json, report.md and PNG figures")
    add_model_data_args(evaluate)
    evaluate.add_argument("--split", default=None, help="split to score, e.g. test (default: every pair of the file)")
    evaluate.add_argument(
        "--calibrate-on", default=None, metavar="SPLIT",
        help="fit the calibrator on this split of the same data for the report (never the scored split); default: the model's stored calibrator",
    )
    evaluate.add_argument(
        "--calibration-feature", choices=FIT_FEATURES, default=None,
        help=f"with --calibrate-on: form of the fitted calibrators, as `calibrate --feature` (default: {DEFAULT_FEATURE})",
    )
    evaluate.add_argument(
        "--baseline", default=None, metavar="MODEL",
        help="also evaluate this encoder beside the model, calibrated the same way (e.g. 'default': the packaged all-MiniLM-L6-v2)",
    )
    evaluate.add_argument(
        "--also", nargs="+", default=None, metavar="PRESET_OR_FILE",
        help="forgetting: also score the model and its zero-shot base on these other sets: a preset name, optionally "
             "PRESET:SPLIT (default split: test), or a pairs file read with the same column flags as --data",
    )
    evaluate.add_argument(
        "--base", default=None, metavar="NAME_OR_PATH",
        help="the zero-shot base model for --also (default: the starting 'model' recorded in the run's train_config.json)",
    )
    evaluate.add_argument("--report", required=True, metavar="DIR", help="folder for metrics.json, report.md and the figures")
    evaluate.set_defaults(handler=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from metric_sim.evaluation import evaluate_and_report
    from metric_sim.model import SimilarityModel
    from metric_sim.validation import require_positive_int

    batch_size = require_positive_int("--batch-size", args.batch_size)
    if args.calibration_feature is not None and args.calibrate_on is None:
        raise UsageError(f"--calibration-feature {args.calibration_feature!r} is the form of a calibrator fitted for the report: "
                         "give --calibrate-on SPLIT (without it the model's stored calibrator is used, in its own form)")
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
    if args.base is not None and not args.also:
        raise UsageError(f"--base {args.base!r} is the zero-shot model for --also: name the other sets with --also PRESET_OR_FILE ...")
    also = _load_also(args) if args.also else None
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
    base_model, base_info = None, None
    if also is not None:
        from metric_sim.evaluation import load_base_model

        base_model, base_info = load_base_model(args.model, model, args.base)
    logger.info("scoring %d pairs%s", len(pairs), f" (split {args.split!r})" if args.split else "")
    payload = evaluate_and_report(
        model,
        pairs,
        args.report,
        split=args.split or "all",
        calibration_pairs=calibration_pairs,
        calibration_split=args.calibrate_on,
        calibration_feature=args.calibration_feature or DEFAULT_FEATURE,
        baseline=baseline,
        data={"preset": args.preset, "split_file": args.split_file},
        batch_size=batch_size,
        show_progress=True,
        out_of_domain=also,
        base_model=base_model,
        base_info=base_info,
    )
    if args.json:
        print_json(payload)
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
    if "out_of_domain" in payload:
        from metric_sim.evaluation.out_of_domain import BASE_MODEL_KEY, out_of_domain_summary_lines

        section = payload["out_of_domain"]
        print(f"out of domain, base {section[BASE_MODEL_KEY]['source']} -> fine-tuned (delta = fine-tuned - base):")
        for line in out_of_domain_summary_lines(section):
            print(f"  {line}")
    print(f"report: {Path(args.report) / 'report.md'}")
    return EXIT_OK


def _load_also(args: argparse.Namespace) -> dict:
    """The --also sets by name, each loaded and checked (two classes) before any model is loaded."""
    from metric_sim.evaluation.out_of_domain import check_out_of_domain_sets

    sets: dict = {}
    for value in args.also:
        name, pairs = _load_also_set(args, value)
        if name in sets:
            raise UsageError(f"--also names the set {name!r} twice")
        sets[name] = pairs
    check_out_of_domain_sets(sets)
    return sets


def _load_also_set(args: argparse.Namespace, value: str) -> tuple[str, object]:
    """One --also value: ``PRESET[:SPLIT]`` (a preset name wins over a file of that name), else a pairs file."""
    from metric_sim.data import list_presets, load_preset
    from metric_sim.data.presets import PRESETS

    presets = list_presets()
    preset, _, split = value.partition(":")
    is_preset = preset in presets
    if not is_preset and not Path(value).expanduser().exists():
        raise UsageError(f"--also {value!r} is neither a preset ({', '.join(presets)}; PRESET:SPLIT picks a split, "
                         "default test) nor an existing pairs file")
    # Default: the test split; a preset without splits (paws) is then refused by name.
    split = (split or ("test" if PRESETS[preset].splits else None)) if is_preset else None
    try:
        if is_preset:
            return (f"{preset}:{split}" if split else preset), load_preset(preset, split=split)
        return value, load_pairs_from_args(args, value)
    except (MetricSimError, OSError, UnicodeError) as exc:
        raise UsageError(f"--also {value!r}: {exc}") from exc


def add_calibrate_parser(sub: Subparsers) -> None:
    calibrate = sub.add_parser("calibrate", help="fit the distance -> probability calibrator on a held-out split and store it in the model folder")
    add_model_data_args(calibrate)
    calibrate.add_argument("--split", default=None, help="held-out split to fit on, e.g. dev (default: every pair of the file)")
    calibrate.add_argument("--feature", choices=FIT_FEATURES, default=DEFAULT_FEATURE,
                           help="logistic on d^2 (default; the logistic on cosine for unit vectors), on d, or on both "
                                f"(quadratic, both slopes negative); auto: the one with the lowest {SELECTION_FOLDS}-fold held-out log-loss on the split")
    calibrate.set_defaults(handler=cmd_calibrate)


def cmd_calibrate(args: argparse.Namespace) -> int:
    from metric_sim.evaluation import describe_split
    from metric_sim.model import SimilarityModel
    from metric_sim.validation import require_positive_int

    batch_size = require_positive_int("--batch-size", args.batch_size)
    if args.model == DEFAULT_MODEL:
        raise UsageError("calibrate stores the calibrator in a model folder; 'default' is the packaged encoder: save it to a folder first")
    folder = resolve_model_dir(args.model)
    pairs = load_pairs_from_args(args, args.data, split=args.split, split_file=args.split_file)
    model = SimilarityModel.from_pretrained(folder)
    previous = model.calibrator
    calibrator = model.calibrate(pairs, fitted_on=describe_split(pairs, args.split), batch_size=batch_size, show_progress=True,
                                 feature=args.feature)
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
        print_json(result)
        return EXIT_OK
    print(f"fitted on {calibrator.fitted_on}: {result['positives']:,} similar pairs")
    print(f"p(similar | d) = {calibrator.formula}   ({model.metric.value} distance)")
    if args.feature == "auto":
        print(f"form {calibrator.feature!r}: the lowest {SELECTION_FOLDS}-fold held-out log-loss on these pairs")
    print(f"threshold tau = {calibrator.threshold:.4f}: similar when d <= tau;  p(d=0) = {result['max_probability']:.4f}")
    if previous is not None:
        print(f"replaced the previous calibrator (tau = {previous.threshold:.4f}, fitted on {previous.fitted_on})")
    print(f"stored in {written}")
    return EXIT_OK
