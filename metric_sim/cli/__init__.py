"""Command line: ``metric-sim <command> ...``.

``main(argv)`` is the only place that parses arguments and sets exit codes, so
tests run the real CLI in-process. Exit codes:

* 0: success;
* 2: bad input: an argparse error, or any :class:`metric_sim.errors.MetricSimError`
  (the message names the file/line/column or the argument), printed as
  ``metric-sim: error: <message>``;
* 1: anything else, which is a bug rather than a user mistake, printed as one line
  ``metric-sim: internal error: <Type>: <message>``; ``-v`` logs the traceback.

Logging: metric-sim's own loggers (``metric_sim.*``) report at INFO (DEBUG with ``-v``);
every other library stays at WARNING unless ``-v``, so FAISS's loader lines and the like
do not clutter a command's output.

Each command group lives in its own module and imports torch, transformers, datasets
and FAISS only when it runs: importing this package stays light.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence

from metric_sim.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_FAILURE,
    EXIT_OK,
    Subparsers,
    load_pairs_from_args,
)
from metric_sim.cli.data import add_data_parser
from metric_sim.cli.evaluate import add_calibrate_parser, add_evaluate_parser
from metric_sim.cli.export import add_export_parser
from metric_sim.cli.index import add_dedupe_parser, add_index_parser, add_query_parser
from metric_sim.cli.interpolate import add_interpolate_parser
from metric_sim.cli.mine import add_mine_parser
from metric_sim.cli.quickstart import add_quickstart_parser
from metric_sim.cli.serve import add_serve_parser
from metric_sim.cli.train import add_train_parser
from metric_sim.errors import MetricSimError, UsageError

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "PARSER_BUILDERS",
    "UsageError",
    "build_parser",
    "load_pairs_from_args",
    "main",
]

EXIT_INTERRUPTED = 130
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
PACKAGE_LOGGER = "metric_sim"

logger = logging.getLogger(__name__)

PARSER_BUILDERS: list[Callable[[Subparsers], None]] = [
    add_data_parser,
    add_quickstart_parser,
    add_evaluate_parser,
    add_calibrate_parser,
    add_index_parser,
    add_query_parser,
    add_dedupe_parser,
    add_mine_parser,
    add_export_parser,
    add_interpolate_parser,
    add_train_parser,
    add_serve_parser,
]


def build_parser() -> argparse.ArgumentParser:
    from metric_sim.version import __version__

    parser = argparse.ArgumentParser(prog="metric-sim", description="Similarity learning on raw Euclidean/Manhattan distance.")
    parser.add_argument("--version", action="version", version=f"metric-sim {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in PARSER_BUILDERS:
        add(sub)
    return parser


@contextlib.contextmanager
def command_logging(verbose: bool) -> Iterator[None]:
    """Log to stderr while a command runs: ``metric_sim.*`` at INFO, other libraries at WARNING (all DEBUG with -v).

    The root logger's level is what a third-party logger without its own level inherits
    (faiss logs "Loading faiss with AVX2 support" at INFO), so it stays at WARNING and the
    package logger gets INFO on its own. Levels and the handler are restored afterwards,
    so calling :func:`main` in-process leaves the caller's logging as it was.
    """
    root = logging.getLogger()
    package = logging.getLogger(PACKAGE_LOGGER)
    saved_levels = (root.level, package.level)
    handler = logging.StreamHandler(sys.stderr)  # the stderr of this call (tests swap it)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)
    package.setLevel(logging.DEBUG if verbose else logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(saved_levels[0])
        package.setLevel(saved_levels[1])


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors (printing "metric-sim: error: ..."), 0 on --help
        return int(exc.code or 0)
    # Data warnings (skipped rows) read as one log line each, not as source excerpts.
    warnings.formatwarning = lambda message, category, *_: f"{category.__name__}: {message}"
    logging.captureWarnings(True)
    with command_logging(args.verbose):
        try:
            return int(args.handler(args) or EXIT_OK)
        except MetricSimError as exc:
            if args.verbose:
                logger.exception("details")
            print(f"metric-sim: error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except KeyboardInterrupt:
            print("metric-sim: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        except Exception as exc:  # a bug, not the user's input: say so, and keep the traceback for -v
            message = " ".join(str(exc).splitlines())
            if args.verbose:
                logger.exception("internal error")
                print(f"metric-sim: internal error: {type(exc).__name__}: {message}", file=sys.stderr)
            else:
                print(
                    f"metric-sim: internal error: {type(exc).__name__}: {message} (rerun with -v for the traceback)",
                    file=sys.stderr,
                )
            return EXIT_FAILURE
