"""``metric-sim index build``, ``query`` and ``dedupe``: FAISS neighbour search over a corpus."""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

from metric_sim.cli.common import EXIT_OK, Subparsers, load_similarity_model, print_json
from metric_sim.errors import UsageError

logger = logging.getLogger(__name__)


def _add_corpus_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model folder or RUN_DIR (RUN_DIR/model), or 'default'")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--corpus", help="texts: .txt (one per line) or .tsv/.csv/.jsonl/.parquet[.gz] with --text-column")
    source.add_argument("--images", metavar="PATH",
                        help="images: a folder (searched recursively), a .zip read in place, or an image list file "
                             "(path, class[, coarse class] per line); ids are the paths relative to it")
    source.add_argument("--records", metavar="FILE_OR_PRESET",
                        help="product records for a multimodal model: a .jsonl of {title, image, description, id} "
                             "(images relative to the file), or 'grocery' for that preset's catalogue")
    parser.add_argument("--text-column", default=None, help="column holding the texts (tables; default: text)")
    parser.add_argument("--id-column", default=None, help="column holding unique ids (default: line number / row)")
    parser.add_argument("--batch-size", type=int, default=64, help="encoding batch size (default: %(default)s)")
    parser.add_argument("--precision", default="float32", choices=["float32", "bfloat16", "fp32", "bf16"],
                        help="encoding precision: bfloat16 autocast is ~1.6x faster on CPUs with AVX512-BF16/AMX and "
                             "slower elsewhere; vectors move by ~1e-3 (default: %(default)s)")


def _add_index_kind_args(parser: argparse.ArgumentParser, default_kind: str) -> None:
    parser.add_argument(
        "--kind",
        default=default_kind,
        help="flat (exact), hnsw, ivf, ivfpq / opq-ivfpq (compressed codes in RAM, full vectors on disk, "
             "exact re-rank), or a FAISS factory string such as HNSW32 or IVF256,Flat (default: %(default)s)",
    )
    parser.add_argument("--hnsw-m", dest="M", type=int, default=None, help="hnsw: links per node (default 32)")
    parser.add_argument("--ef-construction", dest="efConstruction", type=int, default=None, help="hnsw: build-time beam (default 200)")
    parser.add_argument("--ef-search", dest="efSearch", type=int, default=None, help="hnsw: search-time beam (default 64)")
    parser.add_argument("--nlist", type=int, default=None, help="ivf, ivfpq: number of lists (default about 4*sqrt(n))")
    parser.add_argument("--nprobe", type=int, default=None, help="ivf, ivfpq: lists searched per query (default max(16, nlist/10))")
    parser.add_argument("--pq-m", dest="m", type=int, default=None,
                        help="ivfpq: sub-quantizers, must divide the dimension (default: largest divisor <= dim/8)")
    parser.add_argument("--nbits", type=int, default=None, help="ivfpq: bits per sub-quantizer code (default 4: FAISS fast-scan codes)")
    parser.add_argument("--rerank", type=int, default=None,
                        help="ivfpq: candidates re-ranked exactly per query (default 10*k, at least k)")


_PARAM_NAMES = ("M", "efConstruction", "efSearch", "nlist", "nprobe", "m", "nbits", "rerank")


def _index_params(args: argparse.Namespace) -> dict[str, int]:
    return {name: getattr(args, name) for name in _PARAM_NAMES if getattr(args, name) is not None}


def _load_items(args: argparse.Namespace) -> Any:
    """The corpus to index: texts (--corpus), images (--images) or product records (--records)."""
    from metric_sim.data import Corpus, load_corpus

    if args.corpus is not None:
        return load_corpus(args.corpus, text_column=args.text_column, id_column=args.id_column)
    if args.text_column or args.id_column:
        raise UsageError("--text-column and --id-column apply to --corpus only")
    from metric_sim.data.image_presets import image_corpus, record_corpus

    ids, items, source = image_corpus(args.images) if args.images is not None else record_corpus(args.records)
    return Corpus(ids=ids, texts=items, source=source)


def _build_corpus_index(args: argparse.Namespace) -> tuple[Any, Any]:
    from metric_sim.index import NeighborIndex

    corpus = _load_items(args)
    model = load_similarity_model(args.model)
    model.encoder.set_inference_precision(args.precision)
    logger.info("corpus %s: %d texts; model %s (%s)", corpus.source, len(corpus), args.model, model.metric.value)
    index = NeighborIndex.build(
        model, corpus.texts, corpus.ids, kind=args.kind, batch_size=args.batch_size, show_progress=True, **_index_params(args)
    )
    return corpus, index


def add_index_parser(sub: Subparsers) -> None:
    index = sub.add_parser("index", help="build a FAISS neighbour index over a corpus")
    index_sub = index.add_subparsers(dest="index_command", required=True)
    build = index_sub.add_parser("build", help="encode a corpus and save a NeighborIndex folder")
    _add_corpus_args(build)
    _add_index_kind_args(build, "flat")
    build.add_argument("--out", required=True, help="index folder to write (replaced atomically if it holds an index)")
    # Sharded encoding: `torchrun --nproc_per_node N -m metric_sim index build ...` splits the work.
    build.add_argument("--work-dir", default=None, metavar="DIR",
                       help="per-shard embeddings, kept until the index is saved so a rerun resumes (default: OUT.shards)")
    build.add_argument("--shard-size", type=int, default=None, metavar="N",
                       help="texts per shard, rounded up to a multiple of --batch-size (default 8192)")
    build.add_argument("--keep-shards", action="store_true", help="keep the work folder after the index is saved")
    build.add_argument("--json", action="store_true", help="print machine-readable JSON")
    build.set_defaults(handler=cmd_index_build)
    info = index_sub.add_parser("info", help="kind, parameters and size of a saved index (compressed: bytes per item, recall)")
    info.add_argument("index_dir", help="folder written by `metric-sim index build`")
    info.add_argument("--json", action="store_true", help="print machine-readable JSON")
    info.set_defaults(handler=cmd_index_info)


def _compressed_line(info: dict[str, Any]) -> str | None:
    """One line on a compressed index's memory and recall, None for the other kinds."""
    stats = info.get("compressed")
    if stats is None:
        return None
    recall, status = stats["recall"], info["recall"]
    if recall is None:
        measured = "not measured"
    elif status["stale"]:  # adds or removals since the measurement: the figure describes another index
        measured = f"stale: {status['note']}"
    else:
        measured = (f"recall@10 {recall['recall_at_10']:.3f} against exact search "
                    f"({recall['queries']} queries, {recall['items']:,} items)")
    store = info["store"]
    whole = "" if info["ram_bytes_per_item"] is None else (
        f", {info['ram_bytes_per_item']} with the {store['kind']} store's keys (ids and descriptions on disk)")
    return (f"RAM {stats['ram_bytes_per_item']} bytes per item (codes + int64 ids){whole}, "
            f"full vectors in {info['vector_file']}; {measured}")


def cmd_index_info(args: argparse.Namespace) -> int:
    from metric_sim.index import NeighborIndex

    info = NeighborIndex.load(args.index_dir, load_model=False).info()
    if args.json:
        print_json({"index": str(args.index_dir), **info})
    else:
        print(f"{args.index_dir}: {info['items']:,} items, kind {info['kind']}, {info['metric']}, dim {info['dim']}, params {info['params']}")
        line = _compressed_line(info)
        if line:
            print(line)
    return EXIT_OK


def cmd_index_build(args: argparse.Namespace) -> int:
    from metric_sim.index import check_save_target
    from metric_sim.index.sharded import SHARD_SIZE, build_index_sharded
    from metric_sim.validation import require_positive_int

    started = time.perf_counter()
    try:
        check_save_target(args.out)  # before the slow encoding, not after it
    except FileExistsError as exc:
        raise UsageError(f"--out {args.out}: {exc}") from None
    shard_size = require_positive_int("--shard-size", args.shard_size) if args.shard_size is not None else SHARD_SIZE
    corpus = _load_items(args)
    model = load_similarity_model(args.model)
    model.encoder.set_inference_precision(args.precision)
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
    info = index.info()
    if "compressed" in info:
        summary["compressed"] = info["compressed"]
    if args.json:
        print_json(summary)
    else:
        print(f"indexed {summary['items']:,} items from {corpus.source} ({index.kind}, {index.metric.value}, dim {index.dim}) in {summary['seconds']} s")
        print(f"wrote {out}")
        line = _compressed_line(info)
        if line:
            print(line)
        if index.calibrator is None:
            print("note: the model has no calibrator, so queries report distances but no probabilities")
    return EXIT_OK


def add_query_parser(sub: Subparsers) -> None:
    query = sub.add_parser("query", help="nearest stored items of one or more query texts, images or products")
    query.add_argument("index_dir", help="folder written by `metric-sim index build`")
    query.add_argument("texts", nargs="*", help="query text(s) (for a product index: titles)")
    query.add_argument("--image", action="append", default=[], metavar="PHOTO",
                       help="query image file (repeatable); for a product index with one --text: one record")
    query.add_argument("--text", action="append", default=[], metavar="TITLE",
                       help="query text; for a product index, a title (with one --image: title + image)")
    query.add_argument("-k", type=int, default=5, help="neighbours per query (default: %(default)s)")
    limit = query.add_mutually_exclusive_group()
    limit.add_argument("--min-prob", type=float, default=None, help="only neighbours with calibrated p(similar) >= P")
    limit.add_argument("--max-distance", type=float, default=None, help="only neighbours at distance <= D")
    query.add_argument("--model", default=None, help="model folder or RUN_DIR (default: the model recorded when the index was built)")
    query.add_argument("--ef-search", dest="efSearch", type=int, default=None, help="hnsw: search-time beam")
    query.add_argument("--nprobe", type=int, default=None, help="ivf, ivfpq: lists searched per query")
    query.add_argument("--rerank", type=int, default=None, help="ivfpq: candidates re-ranked exactly per query")
    query.add_argument("--json", action="store_true", help="print machine-readable JSON")
    query.set_defaults(handler=cmd_query)


def cmd_query(args: argparse.Namespace) -> int:
    from metric_sim.index import NeighborIndex, format_results

    model = load_similarity_model(args.model) if args.model else None
    index = NeighborIndex.load(args.index_dir, model=model)
    if index.model is None:
        raise UsageError(
            f"the model this index was built with ({index.model_path or 'not recorded'}) cannot be found; pass --model DIR"
        )
    search_params = {name: getattr(args, name) for name in ("efSearch", "nprobe", "rerank") if getattr(args, name) is not None}
    if search_params:
        index.set_search_params(**search_params)
    queries = _query_items(index.model.encoder.kind, list(args.texts) + list(args.text), args.image)
    results = index.search(queries, k=args.k, min_prob=args.min_prob, max_distance=args.max_distance)
    if args.json:
        print_json({"index": str(args.index_dir), "k": args.k, "min_prob": args.min_prob, "max_distance": args.max_distance, "results": [r.to_dict() for r in results]})
    else:
        print(format_results(results))
    return EXIT_OK


def _query_items(kind: str, texts: list[str], images: list[str]) -> list[Any]:
    """Query items for an index of ``kind``: texts, image paths, or product records built from both."""
    import os

    from metric_sim.images import describe_record

    images = [os.path.abspath(os.path.expanduser(p)) for p in images]
    if not texts and not images:
        raise UsageError("give at least one query: texts, --text TITLE or --image PHOTO")
    if kind == "multimodal":
        if len(texts) == 1 and len(images) == 1:  # one product: its title and its photo
            return [describe_record({"title": texts[0], "image": images[0]})]
        return [describe_record({"title": t}) for t in texts] + [describe_record({"image": p}) for p in images]
    if kind == "image":
        if texts:
            raise UsageError(f"this index holds images: query it with --image PHOTO, not texts ({texts[0]!r})")
        return images
    if images:
        raise UsageError(f"this index holds {kind} items (texts): --image applies to image and product indexes")
    return texts


def add_dedupe_parser(sub: Subparsers) -> None:
    dedupe = sub.add_parser("dedupe", help="find every duplicate pair and cluster inside a corpus")
    _add_corpus_args(dedupe)
    limit = dedupe.add_mutually_exclusive_group()
    limit.add_argument("--min-prob", type=float, default=None, help="pairs with calibrated p(similar) >= P (default 0.5)")
    limit.add_argument("--max-distance", type=float, default=None, help="pairs at distance <= D (no calibrator needed)")
    _add_index_kind_args(dedupe, "flat")
    dedupe.add_argument("--out", required=True, help="clusters TSV to write: cluster, id, text (clusters of 2+ items)")
    dedupe.add_argument("--pairs-out", default=None, help="also write every pair: id_a, id_b, distance, probability, texts")
    dedupe.add_argument("--json", action="store_true", help="print machine-readable JSON (summary and clusters)")
    dedupe.set_defaults(handler=cmd_dedupe)


def cmd_dedupe(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    _, index = _build_corpus_index(args)
    min_prob = args.min_prob if args.min_prob is not None or args.max_distance is not None else 0.5
    result = index.dedupe(min_prob, max_distance=args.max_distance, show_progress=True)
    out = result.write_tsv(args.out)
    summary = {**result.to_dict(), "out": str(out), "seconds": round(time.perf_counter() - started, 2)}
    if args.pairs_out:
        summary["pairs_out"] = str(result.write_pairs_tsv(args.pairs_out))
    if args.json:
        print_json({**summary, "cluster_members": result.clusters})
    else:
        limit = f"p >= {min_prob}" if args.max_distance is None else f"distance <= {args.max_distance}"
        print(f"{summary['items']:,} texts: {summary['pairs']:,} pairs with {limit} (radius {result.max_distance:.4g}), "
              f"{summary['clusters']:,} clusters covering {summary['items_in_clusters']:,} texts (largest {summary['largest_cluster']})")
        print(f"wrote {out}" + (f" and {summary['pairs_out']}" if args.pairs_out else "") + f" in {summary['seconds']} s")
    return EXIT_OK
