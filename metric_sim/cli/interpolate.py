"""``metric-sim interpolate``: mix a fine-tuned model's weights with its starting weights (WiSE-FT)."""

from __future__ import annotations

import argparse
import logging
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
    parser.add_argument("--alpha", required=True, type=float,
                        help="weight of the fine-tuned model, in [0, 1]: 0 = the base, 1 = the fine-tuned model")
    parser.add_argument("--out", required=True, metavar="DIR", help="model folder to write (atomically)")
    parser.add_argument("--base", default=None, metavar="NAME_OR_PATH",
                        help="the starting model ('default', a model folder, 'small-cnn', ...); default: the model "
                             "train_config.json of the run records (required for a model folder)")
    parser.add_argument("--calibrate", default=None, metavar="PRESET[:SPLIT]",
                        help=f"refit the calibrator on this held-out split of a preset under METRIC_SIM_DATA "
                             f"(default split: {DEFAULT_CALIBRATION_SPLIT}); without it the model is saved uncalibrated")
    parser.add_argument("--batch-size", type=int, default=64, help="encoding batch size for --calibrate (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists and is not empty")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.set_defaults(handler=cmd_interpolate)


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


def cmd_interpolate(args: argparse.Namespace) -> int:
    from metric_sim.interpolation import interpolate_model
    from metric_sim.model import SimilarityModel

    # Cheap checks first: a bad alpha, destination or data set fails before any model loads.
    alpha = require_probability("--alpha", args.alpha)
    batch_size = require_positive_int("--batch-size", args.batch_size)
    source = resolve_model_source(args.model)
    if source.folder is None:
        raise UsageError(f"--model {args.model!r} must be a run folder or a model folder (the fine-tuned model)")
    out = Path(args.out).expanduser().resolve()
    _check_out(out, source, args.overwrite)
    pairs, fitted_on = _calibration_pairs(args.calibrate)
    finetuned = SimilarityModel.from_pretrained(source.folder, backend="torch")
    base_encoder, base_name = load_base(args.base, finetuned.encoder, source)
    model = interpolate_model(finetuned, base_encoder, alpha, pairs, base_name=base_name, fitted_on=fitted_on,
                              batch_size=batch_size, show_progress=pairs is not None)
    written = model.save(out)
    result = {"out": str(written), "weight_interpolation": model.weight_interpolation,
              "calibrator": model.calibrator.to_dict() if model.calibrator else None}
    if args.json:
        print_json(result)
        return EXIT_OK
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
    return EXIT_OK
