"""``metric-sim serve``: a similarity, embedding and neighbour-search service over HTTP.

The parts, one concept each:

* :mod:`.config` - ``ServeConfig`` and ``Limits``;
* :mod:`.errors` - ``ApiError``: the status and JSON body of every error answer;
* :mod:`.items` - JSON items (texts, base64 images, product records) to library items, with limits;
* :mod:`.batching` - ``MicroBatcher``: concurrent requests share encoder batches, off the event loop;
* :mod:`.durability` - ``DataDir``: the fsynced write log and atomic snapshots, and replay at start;
* :mod:`.store` - ``LiveIndex``: the served index behind one lock, writes durable before applied;
* :mod:`.service` - what each route does; :mod:`.schemas` - its pydantic bodies;
* :mod:`.security` - the ASGI gate: bearer auth, body limit, request metrics;
* :mod:`.metrics` - Prometheus text format; :mod:`.app` - the FastAPI app; :mod:`.server` - uvicorn.

Importing this package loads neither FastAPI nor uvicorn nor torch: they load in
:func:`run` and :func:`create_app`.
"""

from __future__ import annotations

from typing import Any

from metric_sim.serve.config import Limits, ServeConfig

__all__ = ["Limits", "ServeConfig", "create_app", "run"]


def create_app(config: ServeConfig) -> Any:
    """The FastAPI application for ``config`` (see :mod:`metric_sim.serve.app`)."""
    from metric_sim.serve.app import create_app as build

    return build(config)


def run(config: ServeConfig, *, log_level: str = "info") -> None:
    """Serve ``config`` with uvicorn until SIGINT/SIGTERM (see :mod:`metric_sim.serve.server`)."""
    from metric_sim.serve.server import run as serve

    serve(config, log_level=log_level)
