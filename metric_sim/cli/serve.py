"""``metric-sim serve``: the HTTP service (embeddings, similarity, search, live item adds and deletes).

FastAPI, uvicorn and the model load only when the command runs.
"""

from __future__ import annotations

import argparse
import logging
import os

from metric_sim.cli.common import EXIT_OK, Subparsers
from metric_sim.errors import InvalidArgumentError, UsageError

logger = logging.getLogger(__name__)

API_KEY_ENV = "METRIC_SIM_API_KEY"
WRITE_API_KEY_ENV = "METRIC_SIM_WRITE_API_KEY"


def add_serve_parser(sub: Subparsers) -> None:
    parser = sub.add_parser(
        "serve", help="serve a model and index over HTTP (embeddings, similarity, search, item adds/deletes)",
        description="Serve a model (and a live neighbour index) over HTTP. Item writes are durable only with "
                    "--data-dir: each is fsynced to a log before it is answered, and the index is snapshotted "
                    "every --snapshot-every writes and on shutdown.")
    parser.add_argument("--model", required=True, metavar="MODEL_OR_RUN", help="model folder or training run folder")
    parser.add_argument("--index", default=None, metavar="DIR",
                        help="index folder to start from (default: a new empty flat index); with --data-dir, only "
                             "read while the data folder has no snapshot of its own")
    parser.add_argument("--data-dir", default=None, metavar="DIR",
                        help="write log and snapshots; without it the index is read-only")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    parser.add_argument("--api-key", default=None,
                        help=f"bearer token required on every route but /health and /ready (or ${API_KEY_ENV})")
    parser.add_argument("--write-api-key", default=None,
                        help=f"bearer token required to add or delete items (or ${WRITE_API_KEY_ENV})")
    parser.add_argument("--model-name", default=None, help="name reported by /v1/embeddings (default: folder name)")
    batching = parser.add_argument_group("micro-batching")
    batching.add_argument("--max-batch", type=int, default=64, help="most items per encoder batch (default: %(default)s)")
    batching.add_argument("--max-wait-ms", type=float, default=5.0,
                          help="longest wait for more requests to join a batch (default: %(default)s)")
    batching.add_argument("--no-batching", action="store_true", help="encode each request on its own")
    parser.add_argument("--snapshot-every", type=int, default=1000, metavar="N",
                        help="snapshot the index every N logged writes (default: %(default)s)")
    limits = parser.add_argument_group("limits (each excess is a 413 naming the field and the limit)")
    limits.add_argument("--max-body-bytes", type=int, default=4 * 1024 * 1024, help="default: %(default)s")
    limits.add_argument("--max-items", type=int, default=256, help="items, pairs or queries per request (default: %(default)s)")
    limits.add_argument("--max-text-chars", type=int, default=10_000, help="default: %(default)s")
    limits.add_argument("--max-image-bytes", type=int, default=8 * 1024 * 1024, help="default: %(default)s")
    limits.add_argument("--max-image-pixels", type=int, default=40_000_000, help="default: %(default)s")
    limits.add_argument("--max-k", type=int, default=1000, help="largest k of a search (default: %(default)s)")
    parser.set_defaults(handler=cmd_serve)


def serve_config(args: argparse.Namespace):
    """The ``ServeConfig`` of parsed arguments (keys from the environment when not given)."""
    from metric_sim.serve.config import Limits, ServeConfig

    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV) or None
    write_key = args.write_api_key if args.write_api_key is not None else os.environ.get(WRITE_API_KEY_ENV) or None
    try:
        limits = Limits(max_body_bytes=args.max_body_bytes, max_items=args.max_items,
                        max_text_chars=args.max_text_chars, max_image_bytes=args.max_image_bytes,
                        max_image_pixels=args.max_image_pixels, max_k=args.max_k)
        return ServeConfig(model=args.model, index=args.index, data_dir=args.data_dir, host=args.host,
                           port=args.port, api_key=api_key, write_api_key=write_key, max_batch=args.max_batch,
                           max_wait_ms=args.max_wait_ms, batching=not args.no_batching,
                           snapshot_every=args.snapshot_every, model_name=args.model_name, limits=limits)
    except InvalidArgumentError as exc:
        raise UsageError(f"--{str(exc).split(' ', 1)[0].replace('_', '-')}: {exc}") from None


def cmd_serve(args: argparse.Namespace) -> int:
    from metric_sim.serve import run

    config = serve_config(args)
    run(config, log_level="debug" if args.verbose else "info")
    return EXIT_OK
