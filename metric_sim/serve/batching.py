"""Dynamic micro-batching: concurrent encode requests share encoder batches.

Requests put their items on a queue and await a future. One worker takes the first
waiting request, then keeps collecting requests until ``max_batch`` items are gathered or
``max_wait_ms`` has passed since it took the first (it waits only while requests are
arriving concurrently, judged by the previous batch: a lone client is never delayed), encodes them all in one encoder call
on its own thread (never on the event loop), and hands each request its rows. A request
larger than ``max_batch`` is encoded alone; one that would overflow the batch waits for the
next. With ``enabled=False`` every request is its own batch (the comparison the load test
makes). If a batch fails, each of its requests is retried alone, so one bad item fails
only the request that sent it.

Every encoder call runs on the one worker thread: encoders (tokenizers, ONNX sessions)
are not promised to be thread-safe. :meth:`MicroBatcher.call` runs any other function on
that thread, alone (``/similarity`` uses it to embed a request's pairs exactly as the
library does).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from metric_sim.serve.errors import ApiError

__all__ = ["MicroBatcher"]

logger = logging.getLogger(__name__)


@dataclass
class _Job:
    future: asyncio.Future
    items: list[Any] = field(default_factory=list)
    want_sizes: bool = False
    call: Callable[[], Any] | None = None


class MicroBatcher:
    """Groups concurrent ``encode`` calls into batches of at most ``max_batch`` items.

    ``encode(items)`` returns float32 ``(len(items), dim)``; ``sizes(items)`` the int64 cost
    of each item (token counts, for usage reports). ``on_batch(n_items, n_requests, seconds)``
    is told about every batch.
    """

    def __init__(self, encode: Callable[[list[Any]], np.ndarray], *, max_batch: int = 64, max_wait_ms: float = 5.0,
                 enabled: bool = True, sizes: Callable[[list[Any]], np.ndarray] | None = None,
                 on_batch: Callable[[int, int, float], None] | None = None) -> None:
        self._encode = encode
        self._sizes = sizes
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.enabled = enabled
        self._on_batch = on_batch
        self._queue: collections.deque[_Job] = collections.deque()
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metric-sim-encoder")
        self._worker: asyncio.Task | None = None
        self._closed = False
        self._last_requests = 0  # requests in the previous batch: >1 means clients are arriving together

    def start(self) -> None:
        """Start the worker on the running event loop."""
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run(), name="metric-sim-batcher")

    async def stop(self) -> None:
        """Finish the batch in progress, fail the requests still waiting, stop the thread."""
        self._closed = True
        self._wake.set()
        if self._worker is not None:
            await self._worker
        while self._queue:
            job = self._queue.popleft()
            if not job.future.done():
                job.future.set_exception(ApiError(503, "shutting_down", "the server is shutting down"))
        self._executor.shutdown(wait=True)

    async def encode(self, items: list[Any], *, want_sizes: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """(rows, sizes or None) of ``items``, encoded in whatever batch they join."""
        if not items:
            raise ValueError("encode needs at least one item")
        job = _Job(asyncio.get_running_loop().create_future(), list(items), want_sizes)
        return await self._submit(job)

    async def call(self, function: Callable[[], Any]) -> Any:
        """Run ``function`` on the encoder thread, in a batch of its own."""
        return await self._submit(_Job(asyncio.get_running_loop().create_future(), call=function))

    async def _submit(self, job: _Job) -> Any:
        if self._closed:
            raise ApiError(503, "shutting_down", "the server is shutting down")
        self._queue.append(job)
        self._wake.set()
        return await job.future

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._closed:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [self._queue.popleft()]
            if batch[0].call is None and self.enabled:
                await self._gather(batch)
            try:
                await self._execute(batch)
            except Exception:  # never let the worker die: the futures already carry the error
                logger.exception("encoder batch failed")

    async def _gather(self, batch: list[_Job]) -> None:
        """Add waiting requests to ``batch`` until it is full or ``max_wait`` has passed."""
        total = len(batch[0].items)
        deadline = time.monotonic() + (self.max_wait if self._last_requests > 1 else 0.0)
        while total < self.max_batch:
            if self._queue:
                nxt = self._queue[0]
                if nxt.call is not None or total + len(nxt.items) > self.max_batch:
                    return
                batch.append(self._queue.popleft())
                total += len(nxt.items)
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._closed:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except asyncio.TimeoutError:
                return

    async def _execute(self, batch: list[_Job]) -> None:
        loop = asyncio.get_running_loop()
        live = [job for job in batch if not job.future.done()]  # a client that went away is not encoded
        if not live:
            return
        if live[0].call is not None:
            try:
                result = await loop.run_in_executor(self._executor, live[0].call)
            except Exception as exc:
                _fail(live[0], exc)
            else:
                _resolve(live[0], result)
            return
        items = [item for job in live for item in job.items]
        started = time.perf_counter()
        try:
            rows, sizes = await loop.run_in_executor(self._executor, self._encode_batch, live, items)
        except Exception as exc:
            if len(live) == 1:
                _fail(live[0], exc)
                return
            for job in live:  # find the request that broke the batch: each alone
                await self._execute([job])
            return
        self._last_requests = len(live)
        if self._on_batch is not None:
            self._on_batch(len(items), len(live), time.perf_counter() - started)
        start = 0
        for job in live:
            stop = start + len(job.items)
            _resolve(job, (rows[start:stop], None if sizes is None else sizes[start:stop]))
            start = stop

    def _encode_batch(self, jobs: list[_Job], items: list[Any]) -> tuple[np.ndarray, np.ndarray | None]:
        rows = np.asarray(self._encode(items))
        if rows.shape[0] != len(items):
            raise RuntimeError(f"the encoder returned {rows.shape[0]} rows for {len(items)} items")
        sizes = None
        if self._sizes is not None and any(job.want_sizes for job in jobs):
            sizes = np.asarray(self._sizes(items), dtype=np.int64)
        return rows, sizes


def _resolve(job: _Job, value: Any) -> None:
    if not job.future.done():
        job.future.set_result(value)


def _fail(job: _Job, exc: BaseException) -> None:
    if not job.future.done():
        job.future.set_exception(exc)
