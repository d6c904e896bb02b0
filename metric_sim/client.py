"""``SimilarityClient``: the library's method names, answered by ``metric-sim serve`` over HTTP.

Swap ``SimilarityModel.from_pretrained("runs/qqp")`` for ``SimilarityClient("http://127.0.0.1:8000")``
and ``embed``, ``distance``, ``predict_proba``, ``predict``, ``threshold`` (the model's) and
``search``, ``add``, ``remove``, ``get`` (the index's) keep working. Inputs larger than the
server's per-request limits go in several requests (``max_items_per_request``, 256, and
``max_request_bytes``, 4 MiB, like the server's defaults).

Items: a ``str`` is a text (with ``str_items="image"``, an image path); an image is a
:class:`pathlib.Path` to a file, the file's ``bytes``, a PIL image or a uint8 numpy array (sent
as PNG); a product record is a mapping with ``title``, ``image``, ``description`` (a str ``image``
there is a path). The client reads the files; the server never opens paths sent to it.

Errors are ``MetricSimError``s with the server's message: bad input raises the library's own classes
(``InvalidArgumentError`` ...), the rest the classes below; see :func:`error_from_reply`.
httpx is imported when a client is made, PIL only when a PIL image or an array is encoded.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import math
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote

import numpy as np

from metric_sim.errors import (
    AuthenticationError,
    CalibrationError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    MetricSimError,
    MissingFileError,
    ServiceError,
    ServiceUnavailableError,
    UnknownIdError,
)
from metric_sim.validation import (
    require_choice,
    require_positive_float,
    require_positive_int,
    require_probability,
)

__all__ = ["DEFAULT_MAX_ITEMS", "DEFAULT_URL", "AuthenticationError", "Neighbor", "RemoteSearchResult",
           "ServiceError", "ServiceUnavailableError", "SimilarityClient", "UnknownIdError", "encode_item",
           "error_from_reply"]

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_MAX_ITEMS = 256  # the server's default limits: items (pairs, queries) and body bytes per request
DEFAULT_MAX_BYTES = 4 * 1024 * 1024
RECORD_TEXT_FIELDS = ("title", "description")


class Neighbor(NamedTuple):
    """One stored item found for a query: its id, stored description, distance and probability."""

    id: str
    item: str
    distance: float
    probability: float | None


@dataclass
class RemoteSearchResult:
    """Neighbours of one query, nearest first: the attributes of the library's ``SearchResult``.

    ``query`` is the query's description (the text for a text, the path for a file),
    ``texts`` the stored descriptions; iterating yields :class:`Neighbor` tuples.
    """

    query: str | None
    ids: list[str]
    texts: list[str]
    distances: np.ndarray  # float32, ascending
    probabilities: np.ndarray | None

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[Neighbor]:
        return iter(self.neighbors)

    @property
    def neighbors(self) -> list[Neighbor]:
        probs = self.probabilities
        return [Neighbor(self.ids[i], self.texts[i], float(self.distances[i]),
                         None if probs is None else float(probs[i])) for i in range(len(self.ids))]

    def to_dict(self) -> dict[str, Any]:
        """The library's ``SearchResult.to_dict`` shape (what ``metric-sim query --json`` prints)."""
        return {"query": self.query, "neighbors": [
            {"rank": rank + 1, "id": hit.id, "text": hit.item, "distance": hit.distance, "probability": hit.probability}
            for rank, hit in enumerate(self.neighbors)]}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _read_image_file(location: str | os.PathLike[str], label: str) -> bytes:
    try:
        return Path(location).read_bytes()
    except FileNotFoundError:
        raise MissingFileError(f"{label}: image file not found: {os.fspath(location)}") from None
    except OSError as exc:
        raise InvalidArgumentError(f"{label}: cannot read image file {os.fspath(location)}: {exc}") from exc


def _png_bytes(item: Any, label: str) -> bytes:
    from PIL import Image

    if isinstance(item, np.ndarray):
        shape_ok = item.ndim == 2 or (item.ndim == 3 and item.shape[2] in (3, 4))
        if item.dtype != np.uint8 or not shape_ok or not item.size:
            raise InvalidArgumentError(f"{label}: an image array must be uint8 H x W, H x W x 3 or H x W x 4, "
                                       f"got {item.dtype} {item.shape}")
        item = Image.fromarray(np.ascontiguousarray(item))
    buffer = io.BytesIO()
    item.save(buffer, format="PNG")
    return buffer.getvalue()


def _image_b64(item: Any, label: str) -> str:
    if isinstance(item, (str, os.PathLike)):
        return _b64(_read_image_file(item, label))
    if isinstance(item, (bytes, bytearray, memoryview)):
        return _b64(bytes(item))
    if isinstance(item, np.ndarray) or type(item).__module__.startswith("PIL."):
        return _b64(_png_bytes(item, label))
    raise InvalidArgumentTypeError(f"{label} must be an image (a path, bytes, a PIL image or a numpy array), "
                                   f"got {type(item).__name__}")


def encode_item(item: Any, label: str = "item", *, str_items: str = "text") -> str | dict[str, str]:
    """The JSON form of one item in the service's requests (see the module docstring)."""
    if isinstance(item, str):
        return {"image_base64": _image_b64(item, label)} if str_items == "image" else item
    if isinstance(item, Mapping):
        record: dict[str, str] = {}
        for name in RECORD_TEXT_FIELDS:
            value = item.get(name)
            if value is not None:
                if not isinstance(value, str):
                    raise InvalidArgumentTypeError(f"{label}.{name} must be a str, got {type(value).__name__}")
                record[name] = value
        if item.get("image") is not None:
            record["image_base64"] = _image_b64(item["image"], f"{label}.image")
        elif isinstance(item.get("image_base64"), str):
            record["image_base64"] = item["image_base64"]
        if not (record.get("title") or "").strip() and "image_base64" not in record:
            raise InvalidArgumentError(f"{label} has neither a title nor an image; a record needs at least one")
        return record
    try:
        return {"image_base64": _image_b64(item, label)}
    except InvalidArgumentTypeError:
        raise InvalidArgumentTypeError(f"{label} must be a text (str), an image (a Path, bytes, a PIL image or a "
                                       f"numpy array) or a product record (a mapping), got {type(item).__name__}") from None


def _describe(item: Any) -> str | None:
    """What the library's results show as ``query``: the text, the path, or a short image summary."""
    if isinstance(item, (str, os.PathLike)):
        return os.fspath(item)
    if isinstance(item, (bytes, bytearray)):
        return f"<image {len(item)} bytes sha1:{hashlib.sha1(item).hexdigest()}>"
    return (item.get("title") or None) if isinstance(item, Mapping) else None


def _item_list(name: str, items: Any) -> list[Any]:
    if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, (Sequence, np.ndarray)):
        raise InvalidArgumentTypeError(f"{name} must be a list of items, got {type(items).__name__}")
    return list(items)


def _id_list(name: str, ids: Any) -> list[str]:
    if isinstance(ids, (str, bytes, int)) or not isinstance(ids, (Sequence, np.ndarray)):
        raise InvalidArgumentTypeError(f"{name} must be a list of str or int, got {type(ids).__name__} {ids!r}")
    out = []
    for i, item_id in enumerate(ids):
        if isinstance(item_id, bool) or not isinstance(item_id, (str, int, np.integer)):
            raise InvalidArgumentTypeError(f"{name}[{i}] must be a str or int, got {type(item_id).__name__} {item_id!r}")
        if isinstance(item_id, str) and not item_id.strip():
            raise InvalidArgumentError(f"{name}[{i}] is empty")
        out.append(str(item_id))
    return out


def _runs(values: Iterable[Any], max_items: int, max_bytes: int) -> Iterator[list[Any]]:
    """Consecutive runs of JSON ``values``, each at most ``max_items`` long and ``max_bytes`` as JSON
    (less 4 KiB for the rest of the body); a value larger than that on its own goes alone."""
    batch: list[Any] = []
    size, budget = 0, max_bytes - 4096
    for value in values:
        n = len(json.dumps(value, ensure_ascii=False)) + 2  # chars, not bytes: base64 and most texts are ASCII
        if batch and (len(batch) >= max_items or size + n > budget):
            yield batch
            batch, size = [], 0
        batch.append(value)
        size += n
    if batch:
        yield batch


def _error_kind(status: int, error_type: str, path: str) -> type[MetricSimError]:
    if status in (401, 403):
        return AuthenticationError
    if status == 404:
        return UnknownIdError if path.startswith("/items/") or error_type == "unknown_id" else ServiceError
    if status in (400, 409, 413, 415, 422):
        if "calibrat" in error_type:  # "no_calibrator"
            return CalibrationError
        if error_type == "invalid_type":
            return InvalidArgumentTypeError
        return InvalidArgumentError
    if status in (502, 503, 504):
        return ServiceUnavailableError
    return ServiceError


def error_from_reply(status: int, body: Any, text: str, method: str, path: str, base_url: str) -> MetricSimError:
    """The exception for an error reply, with the server's message, ``status_code``, ``error_type``, ``field``:
    400/409/413/422 the library's ``InvalidArgumentError`` (``InvalidArgumentTypeError`` for ``invalid_type``,
    ``CalibrationError`` for ``no_calibrator``), 404 on an item :class:`UnknownIdError` (a ``KeyError``),
    401/403 :class:`AuthenticationError`, 502-504 :class:`ServiceUnavailableError`, else :class:`ServiceError`."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        error_type, message, field = str(error.get("type") or ""), str(error.get("message") or ""), error.get("field")
    else:
        detail = body.get("detail") if isinstance(body, dict) else None
        error_type, field = "", None
        message = str(detail) if detail is not None else (text.strip()[:300] or "no message")
    exc = _error_kind(status, error_type, path)(f"{message} (HTTP {status} from {method} {base_url}{path})")
    exc.status_code, exc.error_type, exc.field = status, error_type or None, field
    return exc


class SimilarityClient:
    """A remote :class:`~metric_sim.model.SimilarityModel` + neighbour index: ``metric-sim serve`` over HTTP.

    ``api_key`` is sent as ``Authorization: Bearer`` on every request; ``write_api_key``
    (when given) instead on ``add`` / ``remove``, and on reads too without ``api_key``.
    ``timeout`` is in seconds per request; ``str_items="image"`` sends ``str`` items as image
    paths (for image models); ``transport`` is an httpx transport (tests, proxies).
    Thread-safe (one connection pool); close it, or use it as a context manager.
    """

    def __init__(self, base_url: str = DEFAULT_URL, *, api_key: str | None = None, write_api_key: str | None = None,
                 timeout: float = 30.0, max_items_per_request: int = DEFAULT_MAX_ITEMS,
                 max_request_bytes: int = DEFAULT_MAX_BYTES, str_items: str = "text", transport: Any = None) -> None:
        try:
            import httpx
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise MetricSimError("the metric-sim client needs httpx: pip install 'metric-sim[serve]'") from exc
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise InvalidArgumentError(f"base_url must be an http:// or https:// URL, got {base_url!r}")
        for name, key in (("api_key", api_key), ("write_api_key", write_api_key)):
            if key is not None and (not isinstance(key, str) or not key or any(c in key for c in "\r\n")):
                raise InvalidArgumentError(f"{name} must be a non-empty one-line str, got {type(key).__name__}")
        self.base_url = base_url.rstrip("/")
        self.timeout = require_positive_float("timeout", timeout)
        self.max_items_per_request = require_positive_int("max_items_per_request", max_items_per_request)
        self.max_request_bytes = require_positive_int("max_request_bytes", max_request_bytes)
        self.str_items = require_choice("str_items", str_items, ("text", "image"))
        self._api_key, self._write_api_key = api_key, write_api_key
        self._httpx = httpx
        self._http = httpx.Client(base_url=self.base_url, timeout=self.timeout, transport=transport)
        self._threshold: float | None = None
        self.metric: str | None = None  # "euclidean" or "manhattan", once a similarity call answered

    def __repr__(self) -> str:
        return f"SimilarityClient({self.base_url!r})"

    def __enter__(self) -> SimilarityClient:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _headers(self, write: bool) -> dict[str, str]:
        key = (self._write_api_key or self._api_key) if write else (self._api_key or self._write_api_key)
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _send(self, method: str, path: str, payload: Any = None, *, write: bool = False, text: bool = False) -> Any:
        httpx = self._httpx
        try:
            reply = self._http.request(method, path, json=payload, headers=self._headers(write))
        except httpx.TimeoutException as exc:
            raise ServiceUnavailableError(
                f"the metric-sim service at {self.base_url} did not answer {method} {path} within {self.timeout:g} s"
            ) from exc
        except httpx.HTTPError as exc:
            raise ServiceUnavailableError(
                f"cannot reach the metric-sim service at {self.base_url} ({type(exc).__name__}: {exc}); "
                "is `metric-sim serve` running there?"
            ) from exc
        try:
            body = reply.json() if reply.content else None
        except ValueError:
            body = None
        if reply.status_code >= 400:
            raise error_from_reply(reply.status_code, body, reply.text, method, path, self.base_url)
        if text:
            return reply.text
        if not isinstance(body, dict):
            raise ServiceError(f"{method} {self.base_url}{path} answered HTTP {reply.status_code} without a JSON object")
        return body

    def _encoded(self, items: list[Any], name: str) -> list[Any]:
        """Every item in its JSON form, before anything is sent: a bad item fails the call up front."""
        return [encode_item(item, f"{name}[{i}]", str_items=self.str_items) for i, item in enumerate(items)]

    def _batches(self, values: Iterable[Any], max_items: int | None = None) -> Iterator[list[Any]]:
        return _runs(values, max_items or self.max_items_per_request, self.max_request_bytes)

    def embed(self, items: Sequence[Any], *, batch_size: int | None = None) -> np.ndarray:
        """float32 vectors of ``items``, in input order (``batch_size`` caps the items per request)."""
        items = _item_list("items", items)
        size = self.max_items_per_request
        size = size if batch_size is None else min(require_positive_int("batch_size", batch_size), size)
        rows: list[np.ndarray] = []
        for chunk in self._batches(self._encoded(items, "items"), size):
            reply = self._send("POST", "/v1/embeddings", {"input": chunk, "encoding_format": "float"})
            data = sorted(reply["data"], key=lambda row: row["index"])
            if [row["index"] for row in data] != list(range(len(chunk))):
                raise ServiceError(f"/v1/embeddings answered {len(data)} rows for {len(chunk)} items")
            rows.append(np.asarray([row["embedding"] for row in data], dtype=np.float32))
        return np.concatenate(rows, axis=0) if rows else np.zeros((0, 0), dtype=np.float32)

    def similarity(self, items_a: Sequence[Any], items_b: Sequence[Any]) -> list[dict[str, Any]]:
        """The ``/similarity`` results (distance, probability, similar) of each pair ``(a[i], b[i])``."""
        items_a, items_b = _item_list("items_a", items_a), _item_list("items_b", items_b)
        if len(items_a) != len(items_b):
            raise InvalidArgumentError(f"items_a and items_b must have the same length, got {len(items_a)} and {len(items_b)}")
        pairs = ([a, b] for a, b in zip(self._encoded(items_a, "items_a"), self._encoded(items_b, "items_b"),
                                        strict=True))
        results: list[dict[str, Any]] = []
        for chunk in self._batches(pairs):
            reply = self._send("POST", "/similarity", {"pairs": chunk})
            self._remember(reply)
            if len(reply["results"]) != len(chunk):
                raise ServiceError(f"/similarity answered {len(reply['results'])} results for {len(chunk)} pairs")
            results.extend(reply["results"])
        return results

    def _remember(self, reply: dict[str, Any]) -> None:
        self.metric = reply.get("metric", self.metric)
        if reply.get("threshold") is not None:
            self._threshold = float(reply["threshold"])

    def _no_calibrator(self) -> CalibrationError:
        return CalibrationError(f"the model served at {self.base_url} has no calibrator: calibrate it "
                                "(`metric-sim calibrate`) and restart the service, or use distance()")

    def distance(self, items_a: Sequence[Any], items_b: Sequence[Any]) -> np.ndarray:
        """``d(a[i], b[i])`` for each i (float32); symmetric like the library's."""
        return np.asarray([r["distance"] for r in self.similarity(items_a, items_b)], dtype=np.float32)

    def predict_proba(self, items_a: Sequence[Any], items_b: Sequence[Any]) -> np.ndarray:
        """Calibrated ``p(similar)`` (float64); ``CalibrationError`` when the served model has no calibrator."""
        results = self.similarity(items_a, items_b)
        if any(r.get("probability") is None for r in results):
            raise self._no_calibrator()
        return np.asarray([r["probability"] for r in results], dtype=np.float64)

    def predict(self, items_a: Sequence[Any], items_b: Sequence[Any]) -> np.ndarray:
        """1 where the pair is predicted similar (``p >= 0.5``), else 0 (int64)."""
        results = self.similarity(items_a, items_b)
        if any(r.get("similar") is None for r in results):
            raise self._no_calibrator()
        return np.asarray([1 if r["similar"] else 0 for r in results], dtype=np.int64)

    @property
    def threshold(self) -> float:
        """The served model's decision distance (``p = 0.5``); asked once, then cached."""
        if self._threshold is None:
            try:
                reply = self._send("POST", "/similarity", {"pairs": []})
            except (InvalidArgumentError, InvalidArgumentTypeError):  # no empty batches there: one text pair
                reply = self._send("POST", "/similarity", {"pairs": [["threshold", "threshold"]]})
            self._remember(reply)
            if self._threshold is None:
                raise self._no_calibrator()
        return self._threshold

    def search(self, queries: Sequence[Any], k: int = 5, *, min_prob: float | None = None,
               max_distance: float | None = None) -> list[RemoteSearchResult]:
        """The ``k`` nearest stored items of each query, like ``NeighborIndex.search``."""
        queries = _item_list("queries", queries)
        k = require_positive_int("k", k)
        if min_prob is not None and max_distance is not None:
            raise InvalidArgumentError(f"give at most one of min_prob and max_distance, got min_prob={min_prob!r}, "
                                       f"max_distance={max_distance!r}")
        min_prob = None if min_prob is None else require_probability("min_prob", min_prob, open_interval=True)
        if max_distance is not None:
            number = isinstance(max_distance, (int, float, np.integer, np.floating)) and not isinstance(max_distance, bool)
            if not number or not math.isfinite(max_distance) or max_distance < 0:
                raise InvalidArgumentError(f"max_distance must be a finite number >= 0, got {max_distance!r}")
            max_distance = float(max_distance)
        out: list[RemoteSearchResult] = []
        done = 0
        for chunk in self._batches(self._encoded(queries, "queries")):
            reply = self._send("POST", "/search", {"queries": chunk, "k": k, "min_prob": min_prob,
                                                   "max_distance": max_distance})
            if len(reply["results"]) != len(chunk):
                raise ServiceError(f"/search answered {len(reply['results'])} results for {len(chunk)} queries")
            sent, done = queries[done : done + len(chunk)], done + len(chunk)
            for query, hits in zip(sent, reply["results"], strict=True):
                probs = [h.get("probability") for h in hits]
                out.append(RemoteSearchResult(
                    query=_describe(query),
                    ids=[str(h["id"]) for h in hits],
                    texts=[str(h["item"]) for h in hits],
                    distances=np.asarray([h["distance"] for h in hits], dtype=np.float32),
                    probabilities=None if any(p is None for p in probs) else np.asarray(probs, dtype=np.float64),
                ))
        return out

    def add(self, items: Sequence[Any], ids: Sequence[str | int]) -> list[str]:
        """Store ``items`` under ``ids`` (one per item); returns the ids, each durable when this returns.

        A batch over ``max_items_per_request`` or ``max_request_bytes`` goes in several requests, each atomic
        on its own: if a later one fails (e.g. a duplicate id), the earlier ones stay added.
        """
        items, ids = _item_list("items", items), _id_list("ids", ids)
        if len(ids) != len(items):
            raise InvalidArgumentError(f"ids and items must have the same length, got {len(ids)} and {len(items)}")
        if len(set(ids)) != len(ids):
            repeated = next(item_id for item_id in ids if ids.count(item_id) > 1)  # quadratic on this error path only
            raise InvalidArgumentError(f"ids must be unique, got {repeated!r} {ids.count(repeated)} times")
        added: list[str] = []
        entries = ({"id": item_id, "item": item} for item_id, item in zip(ids, self._encoded(items, "items"),
                                                                          strict=True))
        for chunk in self._batches(entries):
            reply = self._send("POST", "/items", {"items": chunk}, write=True)
            added.extend(str(i) for i in reply["added"])
        return added

    def _item_path(self, item_id: str | int) -> str:
        if isinstance(item_id, bool) or not isinstance(item_id, (str, int, np.integer)) or not str(item_id).strip():
            raise InvalidArgumentError(f"id must be a non-empty str or int, got {item_id!r}")
        return "/items/" + quote(str(item_id), safe="")

    def get(self, item_id: str | int) -> str:
        """The stored description of item ``item_id`` (the text for texts); ``UnknownIdError`` if absent."""
        return str(self._send("GET", self._item_path(item_id))["item"])

    text_of = get

    def remove(self, ids: Sequence[str | int]) -> int:
        """Delete items by id; returns how many. An unknown id raises ``UnknownIdError`` (a ``KeyError``).

        Every id is looked up first, so an unknown one removes nothing (unless another client
        deletes it in between); each delete is durable when its request returns.
        """
        wanted = list(dict.fromkeys(_id_list("ids", ids)))
        missing = []
        for item_id in wanted:
            try:
                self.get(item_id)
            except UnknownIdError:
                missing.append(item_id)
        if missing:
            raise UnknownIdError(f"{len(missing)} id(s) are not in the index at {self.base_url}, e.g. {missing[:5]}")
        for item_id in wanted:
            self._send("DELETE", self._item_path(item_id), write=True)
        return len(wanted)

    def health(self) -> dict[str, Any]:
        """``GET /health``: ``{"status": "ok"}`` while the process is up."""
        return self._send("GET", "/health")

    def ready(self) -> bool:
        """Whether the service has loaded its model and index (``GET /ready``); False while loading."""
        try:
            self._send("GET", "/ready")
        except ServiceUnavailableError as exc:
            if exc.status_code == 503:
                return False
            raise
        return True

    def wait_until_ready(self, timeout: float = 60.0, interval: float = 0.2) -> None:
        """Poll ``/ready`` (connection refused counts as not yet) until ready or ``timeout`` seconds."""
        deadline = time.monotonic() + require_positive_float("timeout", timeout)
        while time.monotonic() <= deadline:
            with contextlib.suppress(ServiceUnavailableError):
                if self.ready():
                    return
            time.sleep(interval)
        raise ServiceUnavailableError(f"the metric-sim service at {self.base_url} is not ready after {timeout:g} s")

    def metrics(self) -> str:
        """``GET /metrics``: the Prometheus text exposition."""
        return self._send("GET", "/metrics", text=True)
