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
    """Zero-shot AP, a short fine-tune with calibration, symmetric probabilities, neighbour search."""
    from metric_sim import demo_pairs_path
    from metric_sim._io import write_json_atomic
    from metric_sim.data import load_pairs
    from metric_sim.encoder import Encoder
    from metric_sim.evaluation import example_pair_lines
    from metric_sim.index import demo_neighbors, format_results
    from metric_sim.training import fine_tune_demo

    started = time.perf_counter()
    out = Path(args.out)
    if (out / "run").exists():
        raise UsageError(f"--out {str(out)!r} already holds a quickstart run; pass another --out or remove it")
    out.mkdir(parents=True, exist_ok=True)
    dataset = load_pairs(demo_pairs_path(), text_a="question1", text_b="question2", label="is_duplicate")
    summary = dataset.summary()
    print(f"demo pairs: {summary['pairs']} ({summary['positives']} duplicates), {summary['unique_texts']} unique questions")

    print("\n[1/4] zero-shot: raw distance of the base encoder")
    encoder = Encoder.from_pretrained(args.model, max_length=128)
    print(f"encoder: {args.model} (pooling={encoder.pooling}, normalize={encoder.normalize}, dim={encoder.embedding_dim})")
    zero_shot = _average_precision_by_metric(encoder, dataset)
    for metric, ap in zero_shot.items():
        print(f"zero-shot average precision ({metric:9s}): {ap:.4f}")

    print("\n[2/4] fine-tune briefly (train split), calibrate on the held-out split")
    demo = fine_tune_demo(args.model, out / "run", encoder=encoder, show_progress=False)
    print(f"average precision on held-out demo pairs: {demo.ap_before:.4f} before -> {demo.ap_after:.4f} after ({demo.seconds:.0f} s)")
    print(f"saved the calibrated model to {demo.run_dir / 'model'}")

    print("\n[3/4] calibrated, symmetric probabilities: p(a, b) == p(b, a)")
    held_out = dataset.group_split({"train": 0.7, "dev": 0.3}, seed=0)["dev"]
    for line in example_pair_lines(demo.model, held_out, limit=4):
        print("  " + line)

    print("\n[4/4] nearest stored questions from a FAISS index (queries held out of the index)")
    _, results = demo_neighbors(demo.model, k=3)
    print(format_results(results))

    write_json_atomic(
        out / "quickstart.json",
        {"zero_shot_ap": zero_shot, "demo": summary, "fine_tuned_ap": {"before": demo.ap_before, "after": demo.ap_after}},
    )
    print(f"\nwrote {out} in {time.perf_counter() - started:.1f} s. Next: metric-sim evaluate --model {demo.run_dir} ...,"
          f" metric-sim export {demo.run_dir} --out my-model")
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
    calibrate.add_argument("--feature", choices=("squared", "linear"), default="squared",
                           help="logistic on d^2 (default; the logistic on cosine for unit vectors) or on d")
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
        _print_json(result)
        return EXIT_OK
    print(f"fitted on {calibrator.fitted_on}: {result['positives']:,} similar pairs")
    print(f"p(similar | d) = {calibrator.formula}   ({model.metric.value} distance)")
    print(f"threshold tau = {calibrator.threshold:.4f}: similar when d <= tau;  p(d=0) = {result['max_probability']:.4f}")
    if previous is not None:
        print(f"replaced the previous calibrator (tau = {previous.threshold:.4f}, fitted on {previous.fitted_on})")
    print(f"stored in {written}")
    return EXIT_OK


# ---------------------------------------------------------------------------- index build / query / dedupe (issue 5)
def _load_similarity_model(value: str) -> Any:
    """``--model`` takes a model folder or a RUN_DIR (``from_pretrained`` resolves ``RUN_DIR/model``)."""
    from metric_sim.calibration import SimilarityModel

    return SimilarityModel.from_pretrained(value)


def _add_corpus_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model folder or RUN_DIR (RUN_DIR/model), or 'default'")
    parser.add_argument("--corpus", required=True, help="texts: .txt (one per line) or .tsv/.csv/.jsonl/.parquet[.gz] with --text-column")
    parser.add_argument("--text-column", default=None, help="column holding the texts (tables; default: text)")
    parser.add_argument("--id-column", default=None, help="column holding unique ids (default: line number / row)")
    parser.add_argument("--batch-size", type=int, default=64, help="encoding batch size (default: %(default)s)")


def _add_index_kind_args(parser: argparse.ArgumentParser, default_kind: str) -> None:
    parser.add_argument(
        "--kind",
        default=default_kind,
        help="flat (exact), hnsw, ivf, or a FAISS factory string such as HNSW32 or IVF256,Flat (default: %(default)s)",
    )
    parser.add_argument("--hnsw-m", dest="M", type=int, default=None, help="hnsw: links per node (default 32)")
    parser.add_argument("--ef-construction", dest="efConstruction", type=int, default=None, help="hnsw: build-time beam (default 200)")
    parser.add_argument("--ef-search", dest="efSearch", type=int, default=None, help="hnsw: search-time beam (default 64)")
    parser.add_argument("--nlist", type=int, default=None, help="ivf: number of lists (default about 4*sqrt(n))")
    parser.add_argument("--nprobe", type=int, default=None, help="ivf: lists searched per query (default max(16, nlist/10))")


def _index_params(args: argparse.Namespace) -> dict[str, int]:
    return {name: getattr(args, name) for name in ("M", "efConstruction", "efSearch", "nlist", "nprobe") if getattr(args, name) is not None}


def _build_corpus_index(args: argparse.Namespace) -> tuple[Any, Any]:
    from metric_sim.data import load_corpus
    from metric_sim.index import NeighborIndex

    corpus = load_corpus(args.corpus, text_column=args.text_column, id_column=args.id_column)
    model = _load_similarity_model(args.model)
    logger.info("corpus %s: %d texts; model %s (%s)", corpus.source, len(corpus), args.model, model.metric.value)
    index = NeighborIndex.build(
        model, corpus.texts, corpus.ids, kind=args.kind, batch_size=args.batch_size, show_progress=True, **_index_params(args)
    )
    return corpus, index


def _add_index_parser(sub: argparse._SubParsersAction) -> None:
    index = sub.add_parser("index", help="build a FAISS neighbour index over a corpus")
    index_sub = index.add_subparsers(dest="index_command", required=True)
    build = index_sub.add_parser("build", help="encode a corpus and save a NeighborIndex folder")
    _add_corpus_args(build)
    _add_index_kind_args(build, "flat")
    build.add_argument("--out", required=True, help="index folder to write (replaced atomically if it holds an index)")
    # Sharded encoding (issue 8): `torchrun --nproc_per_node N -m metric_sim index build ...` splits the work.
    build.add_argument("--work-dir", default=None, metavar="DIR",
                       help="per-shard embeddings, kept until the index is saved so a rerun resumes (default: OUT.shards)")
    build.add_argument("--shard-size", type=int, default=None, metavar="N",
                       help="texts per shard, rounded up to a multiple of --batch-size (default 8192)")
    build.add_argument("--keep-shards", action="store_true", help="keep the work folder after the index is saved")
    build.add_argument("--json", action="store_true", help="print machine-readable JSON")
    build.set_defaults(handler=_cmd_index_build)


def _cmd_index_build(args: argparse.Namespace) -> int:
    from metric_sim._validation import require_positive_int
    from metric_sim.data import load_corpus
    from metric_sim.index import check_save_target
    from metric_sim.sharded import SHARD_SIZE, build_index_sharded

    started = time.perf_counter()
    try:
        check_save_target(args.out)  # before the slow encoding, not after it
    except FileExistsError as exc:
        raise UsageError(f"--out {args.out}: {exc}") from None
    shard_size = require_positive_int("--shard-size", args.shard_size) if args.shard_size is not None else SHARD_SIZE
    corpus = load_corpus(args.corpus, text_column=args.text_column, id_column=args.id_column)
    model = _load_similarity_model(args.model)
    logger.info("corpus %s: %d texts; model %s (%s)", corpus.source, len(corpus), args.model, model.metric.value)
    # One code path with or without torchrun: each rank encodes its shards, rank 0 builds the index.
    built = build_index_sharded(
        model, corpus.texts, corpus.ids, args.out, kind=args.kind, work_dir=args.work_dir,
        batch_size=require_positive_int("--batch-size", args.batch_size), shard_size=shard_size,
        keep_shards=args.keep_shards, show_progress=True, **_index_params(args),
    )
    if built.index is None:  # torchrun rank > 0: rank 0 reports
        return EXIT_OK
    index, out, encoding = built.index, built.out_dir, built.encoding
    summary = {
        "out": str(out),
        "items": len(index),
        "kind": index.kind,
        "params": index.params,
        "metric": index.metric.value,
        "dim": index.dim,
        "calibrated": index.calibrator is not None,
        "model_path": index.model_path,
        "seconds": round(time.perf_counter() - started, 2),
        "ranks": encoding.world_size,
        "shards": encoding.plan.n_shards,
        "shards_resumed": len(encoding.reused),
        "work_dir": str(built.work_dir) if args.keep_shards else None,
    }
    if args.json:
        _print_json(summary)
    else:
        print(f"indexed {summary['items']:,} texts from {corpus.source} ({index.kind}, {index.metric.value}, dim {index.dim}) in {summary['seconds']} s")
        print(f"wrote {out}")
        if index.calibrator is None:
            print("note: the model has no calibrator, so queries report distances but no probabilities")
    return EXIT_OK


def _add_query_parser(sub: argparse._SubParsersAction) -> None:
    query = sub.add_parser("query", help="nearest stored items of one or more query texts")
    query.add_argument("index_dir", help="folder written by `metric-sim index build`")
    query.add_argument("texts", nargs="+", help="query text(s)")
    query.add_argument("-k", type=int, default=5, help="neighbours per query (default: %(default)s)")
    limit = query.add_mutually_exclusive_group()
    limit.add_argument("--min-prob", type=float, default=None, help="only neighbours with calibrated p(similar) >= P")
    limit.add_argument("--max-distance", type=float, default=None, help="only neighbours at distance <= D")
    query.add_argument("--model", default=None, help="model folder or RUN_DIR (default: the model recorded when the index was built)")
    query.add_argument("--ef-search", dest="efSearch", type=int, default=None, help="hnsw: search-time beam")
    query.add_argument("--nprobe", type=int, default=None, help="ivf: lists searched per query")
    query.add_argument("--json", action="store_true", help="print machine-readable JSON")
    query.set_defaults(handler=_cmd_query)


def _cmd_query(args: argparse.Namespace) -> int:
    from metric_sim.index import NeighborIndex, format_results

    model = _load_similarity_model(args.model) if args.model else None
    index = NeighborIndex.load(args.index_dir, model=model)
    if index.model is None:
        raise UsageError(
            f"the model this index was built with ({index.model_path or 'not recorded'}) cannot be found; pass --model DIR"
        )
    search_params = {name: getattr(args, name) for name in ("efSearch", "nprobe") if getattr(args, name) is not None}
    if search_params:
        index.set_search_params(**search_params)
    results = index.search(args.texts, k=args.k, min_prob=args.min_prob, max_distance=args.max_distance)
    if args.json:
        _print_json({"index": str(args.index_dir), "k": args.k, "min_prob": args.min_prob, "max_distance": args.max_distance, "results": [r.to_dict() for r in results]})
    else:
        print(format_results(results))
    return EXIT_OK


def _add_dedupe_parser(sub: argparse._SubParsersAction) -> None:
    dedupe = sub.add_parser("dedupe", help="find every duplicate pair and cluster inside a corpus")
    _add_corpus_args(dedupe)
    limit = dedupe.add_mutually_exclusive_group()
    limit.add_argument("--min-prob", type=float, default=None, help="pairs with calibrated p(similar) >= P (default 0.5)")
    limit.add_argument("--max-distance", type=float, default=None, help="pairs at distance <= D (no calibrator needed)")
    _add_index_kind_args(dedupe, "flat")
    dedupe.add_argument("--out", required=True, help="clusters TSV to write: cluster, id, text (clusters of 2+ items)")
    dedupe.add_argument("--pairs-out", default=None, help="also write every pair: id_a, id_b, distance, probability, texts")
    dedupe.add_argument("--json", action="store_true", help="print machine-readable JSON (summary and clusters)")
    dedupe.set_defaults(handler=_cmd_dedupe)


def _cmd_dedupe(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    _, index = _build_corpus_index(args)
    min_prob = args.min_prob if args.min_prob is not None or args.max_distance is not None else 0.5
    result = index.dedupe(min_prob, max_distance=args.max_distance, show_progress=True)
    out = result.write_tsv(args.out)
    summary = {**result.to_dict(), "out": str(out), "seconds": round(time.perf_counter() - started, 2)}
    if args.pairs_out:
        summary["pairs_out"] = str(result.write_pairs_tsv(args.pairs_out))
    if args.json:
        _print_json({**summary, "cluster_members": result.clusters})
    else:
        limit = f"p >= {min_prob}" if args.max_distance is None else f"distance <= {args.max_distance}"
        print(f"{summary['items']:,} texts: {summary['pairs']:,} pairs with {limit} (radius {result.max_distance:.4g}), "
              f"{summary['clusters']:,} clusters covering {summary['items_in_clusters']:,} texts (largest {summary['largest_cluster']})")
        print(f"wrote {out}" + (f" and {summary['pairs_out']}" if args.pairs_out else "") + f" in {summary['seconds']} s")
    return EXIT_OK


# ---------------------------------------------------------------------------- end of issue 5 section


# ---------------------------------------------------------------------------- export (issue 6)
def _add_export_parser(sub: argparse._SubParsersAction) -> None:
    export = sub.add_parser(
        "export",
        help="write one folder that metric-sim, sentence-transformers, transformers and ONNX Runtime load",
    )
    export.add_argument("source", help="run folder (RUN_DIR with model/), a model folder, or 'default'")
    export.add_argument("--out", required=True, help="folder to create (written under a temporary name, renamed at the end)")
    export.add_argument("--onnx", action="store_true", help="also write onnx/model.onnx (pooling and normalisation inside the graph)")
    export.add_argument("--quantize", choices=["int8"], default=None, help="also write onnx/model_int8.onnx (implies --onnx)")
    export.add_argument("--opset", type=int, default=18, help="ONNX opset, >= 17 (default: %(default)s)")
    export.add_argument("--overwrite", action="store_true", help="replace --out if it exists and is not empty")
    export.add_argument("--json", action="store_true", help="print the export's metric_sim.json")
    export.set_defaults(handler=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    from metric_sim.encoder import read_json
    from metric_sim.export import export_model

    out = export_model(args.source, args.out, onnx=args.onnx, quantize=args.quantize, opset=args.opset, overwrite=args.overwrite)
    config = read_json(out / "metric_sim.json")
    if args.json:
        _print_json(config)
        return EXIT_OK
    print(f"exported {args.source} -> {out}")
    print(f"metric: {config['metric']}; encoder: {config['encoder']}")
    calibrator = config.get("calibrator")
    print(f"threshold: {calibrator['threshold']:.6g}" if calibrator else "calibrator: none")
    for kind, info in config["export"].get("onnx", {}).get("files", {}).items():
        print(f"onnx {kind}: {info['path']} ({info['bytes'] / 1e6:.1f} MB), max |onnx - torch| = {info['max_abs_diff_vs_torch']:.2e}")
# ---------------------------------------------------------------------------- train (issue 3)
def _add_train_parser(sub: argparse._SubParsersAction) -> None:
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
    train.set_defaults(handler=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
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
    result = train(config, out, resume=args.resume, show_progress=not args.no_progress)
    from metric_sim.distributed import is_main_process

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


# ---------------------------------------------------------------------------- entry point
PARSER_BUILDERS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_data_parser,
    _add_quickstart_parser,
    _add_evaluate_parser,
    _add_calibrate_parser,
    _add_index_parser,
    _add_query_parser,
    _add_dedupe_parser,
    _add_export_parser,
    _add_train_parser,
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
