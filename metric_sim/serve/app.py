"""The FastAPI application: routes, error handlers, and loading the model while ``/ready`` says 503.

:func:`create_app` builds the app for a :class:`~metric_sim.serve.config.ServeConfig`. The
model and index load on a worker thread after the server starts listening, so
``/health`` answers at once and ``/ready`` turns 200 when requests can be served (other
routes answer 503 ``not_ready`` until then). On shutdown the batcher drains and the index
is snapshotted.

Every error is JSON ``{"error": {"type", "message", "field"}}``: bad JSON is 400, a body
that does not fit its schema 422 (naming the field), limits 413, auth 401, unknown ids
404, taken ids 409. Anything else is a bug: 500 ``internal_error`` with no details (the
traceback goes to the server log only).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from metric_sim.errors import MetricSimError
from metric_sim.serve import schemas
from metric_sim.serve.batching import MicroBatcher
from metric_sim.serve.config import ServeConfig
from metric_sim.serve.errors import ApiError, error_body, from_library_error
from metric_sim.serve.items import ItemParser, item_form
from metric_sim.serve.metrics import ServerMetrics
from metric_sim.serve.security import Auth, Gate
from metric_sim.serve.service import Service
from metric_sim.serve.store import open_live_index
from metric_sim.version import __version__

__all__ = ["ServerState", "create_app"]

logger = logging.getLogger(__name__)

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": schemas.ErrorResponse} for code in (400, 401, 404, 409, 413, 422, 503)
}
HTTP_KINDS = {404: "not_found", 405: "method_not_allowed", 400: "bad_request"}


class ServerState:
    """The service once loaded (``service``), or why it failed to load (``failure``)."""

    def __init__(self, config: ServeConfig, metrics: ServerMetrics) -> None:
        self.config = config
        self.metrics = metrics
        self.service: Service | None = None
        self.failure: BaseException | None = None
        self.on_failure: Callable[[BaseException], None] | None = None

    def require(self) -> Service:
        if self.service is None:
            raise ApiError(503, "not_ready", "the model and index are still loading; retry when /ready says ready"
                           if self.failure is None else "the server failed to load its model or index")
        return self.service

    def _open(self) -> tuple[Any, Any]:
        from metric_sim.model import SimilarityModel

        config = self.config
        model = SimilarityModel.from_pretrained(config.model)
        live = open_live_index(model, index_dir=config.index, data_dir=config.data_dir,
                               snapshot_every=config.snapshot_every, on_snapshot=self.metrics.observe_snapshot)
        return model, live

    async def load(self) -> None:
        config = self.config
        try:
            model, live = await asyncio.to_thread(self._open)
            batcher = MicroBatcher(lambda items: model.embed(items, batch_size=config.max_batch),
                                   max_batch=config.max_batch, max_wait_ms=config.max_wait_ms,
                                   enabled=config.batching, sizes=model.encoder.item_sizes,
                                   on_batch=self.metrics.observe_batch)
            batcher.start()
            parser = ItemParser(item_form(model.encoder.kind), config.limits)
            self.metrics.gauges["metric_sim_index_items"] = ("Items in the index.", lambda: float(len(live)))
            self.metrics.gauges["metric_sim_log_records_since_snapshot"] = (
                "Logged writes not yet in a snapshot.", lambda: float(live.records_since_snapshot))
            self.service = Service(model, live, batcher, parser, config.limits, config.name)
            logger.info("ready: model %s (%s, %s), %d items%s", config.name, model.encoder.kind, model.metric.value,
                        len(live), "" if live.writable else " (read-only: no --data-dir)")
        except Exception as exc:
            self.failure = exc
            logger.error("cannot serve: %s", exc, exc_info=not isinstance(exc, MetricSimError))
            if self.on_failure is not None:
                self.on_failure(exc)

    async def close(self) -> None:
        service, self.service = self.service, None
        if service is None:
            return
        await service.batcher.stop()
        await asyncio.to_thread(service.live.close)


def _field_path(loc: tuple[Any, ...]) -> str | None:
    path = ""
    for part in loc[1:] if loc and loc[0] in ("body", "path", "query") else loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or None


def _validation_error(exc: RequestValidationError) -> ApiError:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return ApiError(400, "invalid_json", "the body is not valid JSON")
    first = errors[0] if errors else {}
    field = _field_path(tuple(first.get("loc", ())))
    kind = first.get("type", "")
    mapped = ("missing_field" if kind == "missing" else "unknown_field" if kind == "extra_forbidden"
              else "invalid_type" if kind.endswith("_type") or kind in ("model_attributes_type", "list_type")
              else "invalid_argument")
    message = f"{field or 'the body'}: {first.get('msg', 'invalid value')}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more)"
    return ApiError(422, mapped, message, field)


def _install_handlers(app: FastAPI, metrics: ServerMetrics) -> None:
    def answer(error: ApiError) -> JSONResponse:
        metrics.observe_error(error.kind)
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return answer(exc)

    @app.exception_handler(MetricSimError)
    async def library_error(_: Request, exc: MetricSimError) -> JSONResponse:
        return answer(from_library_error(exc))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return answer(_validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = HTTP_KINDS.get(exc.status_code, "http_error")
        return answer(ApiError(exc.status_code, kind, str(exc.detail), headers=dict(exc.headers or {})))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        # Reached only by a bug outside the gate (which answers the routes' own bugs itself).
        logger.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        metrics.observe_error("internal_error")
        return JSONResponse(error_body("internal_error", "internal error"), status_code=500)


def create_app(config: ServeConfig) -> FastAPI:
    """The application for ``config``; ``app.state.server`` is its :class:`ServerState`."""
    metrics = ServerMetrics()
    state = ServerState(config, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.get_running_loop().create_task(state.load())
        try:
            yield
        finally:
            await loading
            await state.close()

    app = FastAPI(title="metric-sim", version=__version__, lifespan=lifespan,
                  description="Similarity, embeddings and neighbour search with a metric-sim model.")
    app.state.server = state
    app.add_middleware(Gate, auth=Auth(config.api_key, config.write_api_key),
                       max_body_bytes=config.limits.max_body_bytes, metrics=metrics)
    _install_handlers(app, metrics)
    _add_routes(app, state)
    return app


def _add_routes(app: FastAPI, state: ServerState) -> None:
    @app.post("/v1/embeddings", response_model=schemas.EmbeddingsResponse, responses=ERRORS, tags=["encode"])
    async def embeddings(body: schemas.EmbeddingsRequest) -> JSONResponse:
        """Vectors of one item or a list of items (the OpenAI embeddings shape)."""
        return JSONResponse(await state.require().embeddings(body.input))

    @app.post("/similarity", response_model=schemas.SimilarityResponse, responses=ERRORS, tags=["encode"])
    async def similarity(body: schemas.SimilarityRequest) -> JSONResponse:
        """Distance, calibrated probability and decision for each pair."""
        return JSONResponse(await state.require().similarity(body.pairs))

    @app.post("/search", response_model=schemas.SearchResponse, responses=ERRORS, tags=["index"])
    async def search(body: schemas.SearchRequest) -> JSONResponse:
        """The k nearest stored items of each query (with min_prob: only those at least that likely similar)."""
        return JSONResponse(await state.require().search(body.queries, body.k, body.min_prob, body.max_distance))

    @app.post("/items", response_model=schemas.AddItemsResponse, responses=ERRORS, tags=["index"])
    async def add_items(body: schemas.AddItemsRequest) -> JSONResponse:
        """Add items; answered once they are durable. Any taken id adds nothing (409)."""
        return JSONResponse(await state.require().add_items(body.items))

    @app.delete("/items/{item_id:path}", response_model=schemas.DeleteItemResponse, responses=ERRORS,
                tags=["index"])
    async def delete_item(item_id: str) -> JSONResponse:
        """Remove one item; answered once the removal is durable."""
        return JSONResponse(await state.require().delete_item(item_id))

    @app.get("/items/{item_id:path}", response_model=schemas.ItemResponse, responses=ERRORS, tags=["index"])
    async def get_item(item_id: str) -> JSONResponse:
        """The stored description of one item."""
        return JSONResponse(await state.require().get_item(item_id))

    @app.get("/health", response_model=schemas.HealthResponse, tags=["operations"])
    async def health() -> JSONResponse:
        """The process is up (no auth)."""
        return JSONResponse({"status": "ok"})

    @app.get("/ready", response_model=schemas.ReadyResponse, responses={503: {"model": schemas.ErrorResponse}},
             tags=["operations"])
    async def ready() -> JSONResponse:
        """200 once the model and index are loaded; 503 before (no auth)."""
        service = state.require()
        return JSONResponse({"status": "ready", "items": len(service.live)})

    @app.get("/metrics", response_class=PlainTextResponse, tags=["operations"])
    async def metrics() -> PlainTextResponse:
        """Prometheus text format: requests, errors, latency, batch sizes, index size."""
        return PlainTextResponse(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
