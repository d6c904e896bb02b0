"""What every command shares: exit codes, JSON printing, the pair-source and model flags, loading pairs and models.

Nothing heavy is imported here at module level: ``metric-sim --help`` and argument
errors must not wait for torch, transformers, datasets or FAISS.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from metric_sim.errors import UsageError

Subparsers = argparse._SubParsersAction  # what add_subparsers() returns; each command module adds its parsers to it

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2


def print_json(payload: Any) -> None:
    print(json.dumps(payload, indent=2, sort_keys=True, default=str))


def add_pair_source_args(parser: argparse.ArgumentParser) -> None:
    """--preset NAME or explicit column flags, shared by every command that reads pairs."""
    parser.add_argument("--preset", help="named data set: qqp, stsb, sick, mrpc, paws, orl, omniglot, grocery, grocery-products")
    parser.add_argument("--items", choices=["text", "image"], default="text",
                        help="what the two item columns hold: texts, or image paths relative to the file (default: text)")
    parser.add_argument("--text-a", default=None, help="column of the first text (name, or 0-based index with --no-header)")
    parser.add_argument("--text-b", default=None, help="column of the second text")
    parser.add_argument("--label", default=None, help="column of the 0/1 label")
    parser.add_argument("--id-a", default=None, help="optional id column of the first text")
    parser.add_argument("--id-b", default=None, help="optional id column of the second text")
    parser.add_argument("--pair-id", default=None, help="optional pair id column (what --split-file refers to; default: the line number)")
    parser.add_argument("--no-header", action="store_true", help="the file has no header row; columns are 0-based indices")
    parser.add_argument("--on-bad-row", choices=["error", "skip"], default=None, help="fail on the first bad row, or skip and count")


def add_model_data_args(parser: argparse.ArgumentParser) -> None:
    """--model, --data, the pair-source flags, --split-file, --batch-size and --json (evaluate, calibrate)."""
    parser.add_argument("--model", required=True, help="model folder, or a training run folder (its model/ is used)")
    parser.add_argument("--data", default=None, metavar="FILE", help="pairs file (optional with --preset: the preset's files under METRIC_SIM_DATA)")
    add_pair_source_args(parser)
    parser.add_argument("--split-file", default=None, metavar="FILE", help="tsv with columns id, split that assigns every pair id to a split")
    parser.add_argument("--batch-size", type=int, default=64, help="encoding batch size (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def parse_column(value: str | None, header: bool) -> str | int | None:
    """A column flag: a name, or a 0-based index (always an index without a header row)."""
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
    if getattr(args, "items", "text") != "text":
        kwargs["items"] = args.items
    for key in ("text_a", "text_b", "label", "id_a", "id_b", "pair_id"):
        column = parse_column(getattr(args, key, None), header)
        if column is not None:
            kwargs[key] = column
    dataset = load_pairs(path, **kwargs)
    if split_file is not None:
        dataset = dataset.split_from_file(split_file, split)
    return dataset


def load_similarity_model(value: str) -> Any:
    """``--model`` takes a model folder or a RUN_DIR (``from_pretrained`` resolves ``RUN_DIR/model``), 'default',
    or an image / product starting point (``efficientnet-lite0``, ``small-cnn``, ``timm:NAME``, ``multimodal``:
    zero-shot, Euclidean, no calibrator)."""
    from metric_sim.encoders.starting import IMAGE_STARTING_POINTS, MULTIMODAL_STARTING_POINT
    from metric_sim.model import SimilarityModel

    if value in (*IMAGE_STARTING_POINTS, MULTIMODAL_STARTING_POINT) or value.startswith("timm:"):
        from metric_sim.encoders.starting import encoder_from_start

        return SimilarityModel(encoder_from_start(value), "euclidean")
    return SimilarityModel.from_pretrained(value)
