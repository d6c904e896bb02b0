"""``metric-sim interpolate``: mix a fine-tuned model's weights with its starting weights (WiSE-FT)."""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path
from typing import Any

from metric_sim.cli.common import EXIT_OK, Subparsers, print_json
from metric_sim.errors import ConfigError, TargetExistsError, UsageError
from metric_sim.layout import ModelSource, resolve_model_source
from metric_sim.schema import SavedFields, read_json_file
from metric_sim.validation import require_positive_int, require_probability

logger = logging.getLogger(__name__)

DEFAULT_CALIBRATION_SPLIT = "dev"


def add_interpolate_parser(sub: Subparsers) -> None:
    parser = sub.add_parser(
        "interpolate",
        help="mix a fine-tuned model's weights with its starting weights: (1 - alpha) * base + alpha * fine-tuned "
             "(WiSE-FT), keeping what the base model knew",
    )
    parser.add_argument("--model", required=True, metavar="RUN_OR_MODEL_DIR",
                        help="the fine-tuned model: a training run folder or a model folder")
    parser.add_argument("--alpha", required=True, type=_alpha_value,
                        help="weight of the fine-tuned model, in [0, 1]: 0 = the base, 1 = the fine-tuned model; "
                             "'auto': chosen on --select-on with the --guard sets (see docs/robust-fine-tuning.md)")
    parser.add_argument("--out", required=True, metavar="DIR", help="model folder to write (atomically)")
    parser.add_argument("--base", default=None, metavar="NAME_OR_PATH",
                        help="the starting model ('default', a model folder, 'small-cnn', ...); default: the model "
                             "train_config.json of the run records (required for a model folder)")
    parser.add_argument("--calibrate", default=None, metavar="PRESET[:SPLIT]",
                        help=f"refit the calibrator on this held-out split of a preset under METRIC_SIM_DATA "
                             f"(default split: {DEFAULT_CALIBRATION_SPLIT}); without it the model is saved uncalibrated")
    parser.add_argument("--batch-size", type=int, default=64, help="encoding batch size (default: %(default)s)")
    auto = parser.add_argument_group("--alpha auto: the alpha with the best in-domain dev AP that keeps every guard set's "
                                     "AP within --tolerance of the base's (alpha 0)")
    auto.add_argument("--select-on", default=None, metavar="PRESET[:SPLIT]|FILE",
                      help=f"in-domain held-out pairs to choose alpha on (default split: {DEFAULT_CALIBRATION_SPLIT}); "
                           "the calibrator is fitted on them too unless --calibrate is given")
    auto.add_argument("--guard", nargs="+", action="extend", default=None, metavar="PRESET[:SPLIT]|FILE",
                      help=f"held-out pairs of other data whose AP must not fall (default split: {DEFAULT_CALIBRATION_SPLIT})")
    auto.add_argument("--alphas", nargs="+", type=float, default=None, metavar="A",
                      help="the alphas to try (0 is always added); default: 0, 0.1, ..., 1")
    auto.add_argument("--tolerance", type=float, default=None,
                      help="AP each guard set may lose against the base (default: 0.005)")
    auto.add_argument("--plot", default=None, metavar="PATH.png",
                      help="draw the trade-off: in-domain dev AP against mean guard AP, one point per alpha")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists and is not empty")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.set_defaults(handler=cmd_interpolate)


def _alpha_value(text: str) -> float | str:
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r} (a number in [0, 1], or auto)") from None


def _calibration_pairs(spec: str | None) -> tuple[Any, str | None]:
    """(pairs, what the calibrator records as fitted_on) of ``--calibrate PRESET[:SPLIT]``."""
    if spec is None:
        return None, None
    from metric_sim.data import load_preset
    from metric_sim.data.presets import PRESETS

    preset, _, split = spec.partition(":")
    if not preset:
        raise UsageError(f"--calibrate must be PRESET or PRESET:SPLIT (e.g. qqp:dev), got {spec!r}")
    splits = PRESETS[preset].splits if preset in PRESETS else (DEFAULT_CALIBRATION_SPLIT,)  # load_preset names a bad one
    if not split and splits and DEFAULT_CALIBRATION_SPLIT not in splits:
        raise UsageError(f"--calibrate {spec}: preset {preset!r} has no {DEFAULT_CALIBRATION_SPLIT!r} split; name a "
                         f"held-out one of {list(splits)} (never the split you will score on), e.g. {preset}:{splits[-1]}")
    split = split or (DEFAULT_CALIBRATION_SPLIT if splits else None)  # a preset without splits is one file
    pairs = load_preset(preset, split=split)
    where = f"split {split!r} of preset {preset!r}" if split else f"preset {preset!r}"
    return pairs, f"{where} ({len(pairs):,} pairs)"


def _check_out(out: Path, source: ModelSource, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise TargetExistsError(f"--out {str(out)!r} is a file; expected a folder to create")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise TargetExistsError(f"--out {str(out)!r} already exists and is not empty; pass --overwrite to replace it")
    for src in filter(None, (source.folder, source.run_dir)):
        src = src.resolve()
        if out == src or src in out.parents or out in src.parents:
            raise UsageError(f"--out {str(out)!r} must not be inside or contain the fine-tuned model {str(src)!r}")


def _recorded_start(source: ModelSource) -> dict[str, Any] | None:
    """What the run's train_config.json says the run started from (None for a plain model folder)."""
    config_file = source.train_config_file
    if config_file is None:
        return None
    fields = SavedFields(read_json_file(config_file, ConfigError), config_file, ConfigError)
    return {
        "model": fields.get("model", str, required=False, default="default"),
        "options": fields.get("encoder_options", dict, required=False, default={}),
        "seed": fields.get("seed", int, required=False, minimum=0),
        "file": config_file,
    }


def load_base(base: str | None, finetuned: Any, source: ModelSource) -> tuple[Any, str]:
    """(the starting encoder, its name): ``base``, else the run's recorded starting model.

    It is built as training built it (the recipe's ``encoder_options`` and seed when it is the
    run's own starting model) with the fine-tuned encoder's normalisation and, for texts,
    pooling and max length, so ``alpha=0`` reproduces the base's vectors exactly.
    """
    from metric_sim.encoders.starting import encoder_from_start

    recorded = _recorded_start(source)
    if base is None:
        if recorded is None:
            raise UsageError(f"--base is required: {source.name} is not a run folder with a train_config.json that "
                             "records its starting model; name the model it was fine-tuned from (e.g. --base default)")
        base = recorded["model"]
        logger.info("base: %r, the starting model recorded in %s", base, recorded["file"])
    same_start = recorded is not None and base == recorded["model"]
    return encoder_from_start(
        base,
        recorded["options"] if same_start else None,
        seed=recorded["seed"] if recorded is not None else None,
        normalize=getattr(finetuned, "normalize", None),
        max_length=getattr(finetuned, "max_length", None),
        pooling=getattr(finetuned, "pooling", None),
    ), base


def _check_selection_flags(args: argparse.Namespace) -> tuple[list[float] | None, float | None]:
    """(--alphas, --tolerance) checked; the --alpha auto flags only with --alpha auto, and both of its sets."""
    named = [flag for flag, value in (("--select-on", args.select_on), ("--guard", args.guard), ("--alphas", args.alphas),
                                      ("--tolerance", args.tolerance), ("--plot", args.plot)) if value is not None]
    if args.alpha != "auto":
        if named:
            raise UsageError(f"{named[0]} is for --alpha auto (choosing alpha on held-out pairs); got --alpha {args.alpha:g}")
        return None, None
    if args.select_on is None or not args.guard:
        raise UsageError("--alpha auto needs --select-on PRESET[:SPLIT]|FILE (in-domain held-out pairs) and at least one "
                         "--guard PRESET[:SPLIT]|FILE (held-out pairs of other data), e.g. --select-on qqp --guard stsb")
    alphas = None
    if args.alphas is not None:
        alphas = [require_probability("--alphas", a) for a in args.alphas]
        if not any(a > 0 for a in alphas):
            raise UsageError(f"--alphas must hold a value above 0 (0, the base, is always tried), got {args.alphas}")
    if args.tolerance is not None and not (math.isfinite(args.tolerance) and args.tolerance >= 0):
        raise UsageError(f"--tolerance must be a finite number >= 0 (AP the guard sets may lose), got {args.tolerance!r}")
    return alphas, args.tolerance


def _held_out_set(flag: str, value: str) -> tuple[str, Any, str]:
    """(name, pairs, description) of ``PRESET[:SPLIT]`` (default split dev; a preset wins over a file) or a pairs file."""
    from metric_sim.data.held_out import load_held_out_pairs

    return load_held_out_pairs(flag, value, error=UsageError)


def _selection_sets(args: argparse.Namespace) -> tuple[tuple[str, Any, str], dict[str, Any]]:
    """(the --select-on set, the --guard sets by name), loaded and checked before any model is."""
    select = _held_out_set("--select-on", args.select_on)
    guards: dict[str, Any] = {}
    for value in args.guard:
        name, pairs, _ = _held_out_set("--guard", value)
        if name in guards or name == select[0]:
            raise UsageError(f"--guard {value!r} names the set {name!r} twice (as a guard or as --select-on)")
        guards[name] = pairs
    return select, guards


def cmd_interpolate(args: argparse.Namespace) -> int:
    from metric_sim.interpolation import choose_alpha, interpolate_model
    from metric_sim.model import SimilarityModel

    # Cheap checks first: a bad alpha, destination or data set fails before any model loads.
    alphas, tolerance = _check_selection_flags(args)
    alpha = None if args.alpha == "auto" else require_probability("--alpha", args.alpha)
    batch_size = require_positive_int("--batch-size", args.batch_size)
    source = resolve_model_source(args.model)
    if source.folder is None:
        raise UsageError(f"--model {args.model!r} must be a run folder or a model folder (the fine-tuned model)")
    out = Path(args.out).expanduser().resolve()
    _check_out(out, source, args.overwrite)
    plot = Path(args.plot).expanduser().resolve() if args.plot else None
    if plot is not None and plot.is_dir():
        raise UsageError(f"--plot {args.plot!r} is a folder; name the PNG file to write")
    pairs, fitted_on = _calibration_pairs(args.calibrate)
    select, guards = _selection_sets(args) if alpha is None else (None, {})
    finetuned = SimilarityModel.from_pretrained(source.folder, backend="torch")
    base_encoder, base_name = load_base(args.base, finetuned.encoder, source)
    choice = None
    if select is not None:
        options = {k: v for k, v in (("alphas", alphas), ("tolerance", tolerance)) if v is not None}
        choice = choose_alpha(finetuned, base_encoder, select[1], guards, **options, batch_size=batch_size,
                              show_progress=True)
        alpha = choice.alpha
        if pairs is None:  # calibrated on the pairs alpha was chosen on: held out, in-domain
            pairs, fitted_on = select[1], select[2]
    model = interpolate_model(finetuned, base_encoder, alpha, pairs, base_name=base_name, fitted_on=fitted_on,
                              batch_size=batch_size, show_progress=pairs is not None)
    if choice is not None:
        model.weight_interpolation = {**model.weight_interpolation,
                                      "selection": {"select_on": select[0], **choice.to_dict()}}
    written = model.save(out)
    if choice is not None and plot is not None:
        _plot_tradeoff(choice, plot, select[0])
    result = {"out": str(written), "weight_interpolation": model.weight_interpolation,
              "calibrator": model.calibrator.to_dict() if model.calibrator else None,
              "plot": str(plot) if plot is not None and choice is not None else None}
    if args.json:
        print_json(result)
        return EXIT_OK
    if choice is not None:
        _print_choice(choice, select[0])
    record = model.weight_interpolation
    print(f"wrote {written}: weights = {1 - alpha:g} * base {record['base']!r} + {alpha:g} * fine-tuned {args.model}")
    if record["kept_from_finetuned"]:
        print(f"kept from the fine-tuned model at every alpha (no counterpart in the base): "
              f"{', '.join(record['kept_from_finetuned'])}")
    if model.calibrator is not None:
        print(f"calibrator refitted on {fitted_on}: threshold tau = {model.calibrator.threshold:.4f}")
    else:
        print("calibrator: none (the fine-tuned one does not fit the new weights); "
              f"fit one with: metric-sim calibrate --model {written} --preset NAME --split dev")
    if plot is not None:
        print(f"trade-off plot: {plot}")
    return EXIT_OK


def _print_choice(choice: Any, select_name: str) -> None:
    guards = list(choice.guard_floor)
    print(f"{'alpha':>6s}  {'AP ' + select_name:>20s}" + "".join(f"  {'AP ' + name:>20s}" for name in guards) + "  guard")
    for row in choice.table:
        mark = "  <- chosen" if row["alpha"] == choice.alpha else ""
        print(f"{row['alpha']:6.3g}  {row['in_domain_ap']:20.4f}" + "".join(f"  {row['guard_ap'][n]:20.4f}" for n in guards)
              + f"  {'pass' if row['passes'] else 'FAIL'}{mark}")
    print(f"{'floor':>6s}  {'':20s}" + "".join(f"  {choice.guard_floor[n]:20.4f}" for n in guards))
    print(f"rule: {choice.rule}")
    if not choice.guard_met:
        print(f"no alpha above 0 keeps every guard set within {choice.tolerance:g} AP of the base: alpha 0 (the base) "
              f"is written, giving up {choice.in_domain_cost:.4f} in-domain AP")
    else:
        print(f"chosen alpha {choice.alpha:g}: in-domain AP {choice.chosen['in_domain_ap']:.4f} "
              f"({choice.in_domain_cost:.4f} below the best alpha without the guard)")


def _plot_tradeoff(choice: Any, path: Path, select_name: str) -> None:
    """In-domain dev AP against mean guard AP, one labelled point per alpha, on the Agg canvas (no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from metric_sim.storage import atomic_file

    rows = choice.table
    x = [sum(row["guard_ap"].values()) / len(row["guard_ap"]) for row in rows]
    y = [row["in_domain_ap"] for row in rows]
    figure = Figure(figsize=(6.8, 5.0), layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    ax.plot(x, y, "-", color="0.75", zorder=1)
    for passes, style in ((True, {"color": "tab:blue", "label": "keeps every guard set"}),
                          (False, {"color": "tab:gray", "marker": "x", "label": "loses a guard set"})):
        points = [(xi, yi) for xi, yi, row in zip(x, y, rows, strict=True) if row["passes"] is passes]
        if points:
            ax.scatter(*zip(*points, strict=True), zorder=2, **{"marker": "o", **style})
    for xi, yi, row in zip(x, y, rows, strict=True):
        ax.annotate(f"{row['alpha']:g}", (xi, yi), textcoords="offset points", xytext=(5, 4), fontsize=8)
    chosen = rows.index(choice.chosen)
    ax.scatter([x[chosen]], [y[chosen]], s=220, facecolors="none", edgecolors="tab:red", linewidths=2, zorder=3,
               label=f"chosen alpha = {choice.alpha:g}" + ("" if choice.guard_met else " (guard not met)"))
    floor = sum(choice.guard_floor.values()) / len(choice.guard_floor)
    ax.axvline(floor, color="black", linestyle="--", linewidth=1.2,
               label=f"base guard AP - {choice.tolerance:g}" + (" (mean of the sets)" if len(choice.guard_floor) > 1 else ""))
    names = ", ".join(choice.guard_floor)
    ax.set_xlabel(f"guard AP ({names})" if len(choice.guard_floor) == 1 else f"mean guard AP ({names})")
    ax.set_ylabel(f"in-domain dev AP ({select_name})")
    ax.set_title("WiSE-FT trade-off: one point per alpha (0 = base, 1 = fine-tuned)", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    with atomic_file(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
