"""``metric_sim.client.SimilarityClient`` against an in-process fake of the HTTP contract.

The fake (``FakeService``, served through ``httpx.MockTransport``) implements the routes the
way the contract in docs/serve.md describes them, with its own limits and auth, and records
every request, so these tests check what the client sends and how it reads the answers
without a real server.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import math
import socket
from urllib.parse import unquote

import httpx
import numpy as np
import pytest

from metric_sim.client import (
    AuthenticationError,
    Neighbor,
    RemoteSearchResult,
    ServiceError,
    ServiceUnavailableError,
    SimilarityClient,
    UnknownIdError,
    encode_item,
)
from metric_sim.errors import (
    CalibrationError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    MetricSimError,
    MissingFileError,
)

DIM = 4
URL = "http://fake.test:8000"


def vector(item) -> list[float]:
    """A deterministic 4-d vector per JSON item (texts and images alike)."""
    digest = hashlib.sha256(json.dumps(item, sort_keys=True).encode()).digest()
    return [b / 255.0 for b in digest[:DIM]]


def error(status: int, kind: str, message: str, field: str | None = None, headers=None) -> httpx.Response:
    return httpx.Response(status, json={"error": {"type": kind, "message": message, "field": field}},
                          headers=headers)


class FakeService:
    """The contract in memory: embeddings, similarity, search, items, health, ready, metrics."""

    def __init__(self, *, api_key=None, write_api_key=None, max_items=256, calibrated=True, empty_pairs_ok=True):
        self.api_key, self.write_api_key = api_key, write_api_key
        self.max_items, self.calibrated, self.empty_pairs_ok = max_items, calibrated, empty_pairs_ok
        self.items: dict[str, object] = {}
        self.requests: list[tuple[str, str, dict, object]] = []  # method, path, headers, JSON body
        self.ready = True

    def probability(self, d: float) -> float:
        return 1.0 / (1.0 + math.exp(5.0 * d - 2.0))

    @property
    def threshold(self) -> float:
        return 0.4

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        path = unquote(request.url.raw_path.decode().split("?")[0])
        self.requests.append((request.method, request.url.raw_path.decode(), dict(request.headers), body))
        route = (request.method, path)
        if route == ("GET", "/health"):
            return httpx.Response(200, json={"status": "ok"})
        if route == ("GET", "/ready"):
            if not self.ready:
                return error(503, "not_ready", "the index is still loading")
            return httpx.Response(200, json={"status": "ready", "items": len(self.items)})
        writing = request.method in ("POST", "DELETE") and path.startswith("/items")
        wanted = self.write_api_key if writing and self.write_api_key else self.api_key
        if wanted is not None and request.headers.get("authorization") != f"Bearer {wanted}":
            return error(401, "unauthorized", "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"})
        if route == ("GET", "/metrics"):
            return httpx.Response(200, text=f"# TYPE metric_sim_index_size gauge\nmetric_sim_index_size {len(self.items)}\n")
        if route == ("POST", "/v1/embeddings"):
            inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
            if len(inputs) > self.max_items:
                return error(413, "too_many_items", f"at most {self.max_items} items per request", "input")
            if any(not isinstance(x, (str, dict)) for x in inputs):
                return error(422, "invalid_type", "input items must be strings or objects", "input")
            data = [{"object": "embedding", "index": i, "embedding": vector(x)} for i, x in enumerate(inputs)]
            data.reverse()  # the contract orders by "index", not by position
            return httpx.Response(200, json={"object": "list", "data": data, "model": "fake",
                                             "usage": {"prompt_tokens": 1, "total_tokens": 1}})
        if route == ("POST", "/similarity"):
            pairs = body["pairs"]
            if not pairs and not self.empty_pairs_ok:
                return error(422, "invalid_value", "pairs must not be empty", "pairs")
            if len(pairs) > self.max_items:
                return error(413, "too_many_items", f"at most {self.max_items} items per request", "pairs")
            results = []
            for a, b in pairs:
                d = float(np.linalg.norm(np.subtract(vector(a), vector(b))))
                p = self.probability(d) if self.calibrated else None
                results.append({"distance": d, "probability": p, "similar": None if p is None else p >= 0.5})
            return httpx.Response(200, json={"metric": "euclidean",
                                             "threshold": self.threshold if self.calibrated else None,
                                             "results": results})
        if route == ("POST", "/search"):
            if len(body["queries"]) > self.max_items:
                return error(413, "too_many_items", f"at most {self.max_items} items per request", "queries")
            results = []
            for query in body["queries"]:
                hits = sorted((float(np.linalg.norm(np.subtract(vector(query), vector(item)))), item_id)
                              for item_id, item in self.items.items())
                hits = [(d, i) for d, i in hits if body["max_distance"] is None or d <= body["max_distance"]]
                results.append([{"id": i, "item": self.items[i] if isinstance(self.items[i], str) else "<record>",
                                 "distance": d, "probability": self.probability(d)} for d, i in hits[: body["k"]]])
            return httpx.Response(200, json={"results": results})
        if route == ("POST", "/items"):
            new = body["items"]
            if len(new) > self.max_items:
                return error(413, "too_many_items", f"at most {self.max_items} items per request", "items")
            for n, entry in enumerate(new):
                if entry["id"] in self.items:
                    return error(409, "duplicate_id", f"id {entry['id']!r} is already stored", f"items[{n}].id")
            self.items.update((entry["id"], entry["item"]) for entry in new)
            return httpx.Response(200, json={"added": [entry["id"] for entry in new], "size": len(self.items)})
        if path.startswith("/items/") and request.method in ("GET", "DELETE"):
            item_id = path[len("/items/"):]
            if item_id not in self.items:
                return error(404, "unknown_id", f"no item with id {item_id!r}", "id")
            if request.method == "GET":
                return httpx.Response(200, json={"id": item_id, "item": self.items[item_id]})
            del self.items[item_id]
            return httpx.Response(200, json={"deleted": item_id, "size": len(self.items)})
        return httpx.Response(404, json={"detail": "Not Found"})

    def bodies(self, method: str, path: str) -> list:
        return [body for m, p, _, body in self.requests if m == method and p == path]


def make(fake: FakeService | None = None, **kwargs) -> tuple[SimilarityClient, FakeService]:
    fake = fake or FakeService()
    return SimilarityClient(URL, transport=httpx.MockTransport(fake), **kwargs), fake


def test_embed_sends_the_openai_shape_and_returns_float32_rows_in_input_order():
    client, fake = make()
    texts = ["how do i learn python", "best way to learn python", "capital of france"]
    out = client.embed(texts)
    assert out.dtype == np.float32 and out.shape == (3, DIM)
    np.testing.assert_allclose(out, np.asarray([vector(t) for t in texts], dtype=np.float32))
    assert fake.bodies("POST", "/v1/embeddings") == [{"input": texts, "encoding_format": "float"}]
    assert client.embed([]).shape[0] == 0 and len(fake.requests) == 1  # nothing to send


def test_large_inputs_are_chunked_to_the_per_request_limit_and_batch_size():
    client, fake = make(FakeService(max_items=256))
    texts = [f"text {i}" for i in range(600)]
    out = client.embed(texts)
    assert [len(b["input"]) for b in fake.bodies("POST", "/v1/embeddings")] == [256, 256, 88]
    np.testing.assert_allclose(out[599], vector("text 599"), rtol=1e-6)
    client.embed(texts[:250], batch_size=100)
    assert [len(b["input"]) for b in fake.bodies("POST", "/v1/embeddings")][3:] == [100, 100, 50]
    small, small_fake = make(FakeService(max_items=10), max_items_per_request=10)
    assert small.distance(texts[:25], texts[25:50]).shape == (25,)
    assert [len(b["pairs"]) for b in small_fake.bodies("POST", "/similarity")] == [10, 10, 5]  # the limit counts pairs
    assert len(small.search(texts[:23], k=1)) == 23
    assert [len(b["queries"]) for b in small_fake.bodies("POST", "/search")] == [10, 10, 3]
    assert small.add(texts[:21], [str(i) for i in range(21)]) == [str(i) for i in range(21)]
    assert [len(b["items"]) for b in small_fake.bodies("POST", "/items")] == [10, 10, 1]
    bulky, bulky_fake = make(max_request_bytes=4096 + 3000)  # about 3,000 characters of items a request
    bulky.embed(["x" * 998] * 7 + ["y" * 5000, "z"])
    assert [len(b["input"]) for b in bulky_fake.bodies("POST", "/v1/embeddings")] == [2, 2, 2, 1, 1, 1]
    assert all(len(json.dumps(b)) < 7096 for b in bulky_fake.bodies("POST", "/v1/embeddings")[:4])
    too_many, _ = make(FakeService(max_items=10), max_items_per_request=50)
    with pytest.raises(InvalidArgumentError, match="at most 10 items per request") as info:
        too_many.embed(texts[:20])
    assert info.value.status_code == 413 and info.value.field == "input" and info.value.error_type == "too_many_items"


def test_similarity_methods_match_the_library_types_and_symmetry():
    client, fake = make()
    a, b = ["how do i learn python", "dog", "cat"], ["learn python fast", "dog", "car"]
    d = client.distance(a, b)
    assert d.dtype == np.float32 and d.shape == (3,) and d[1] == 0.0
    np.testing.assert_array_equal(d, client.distance(b, a))
    p = client.predict_proba(a, b)
    assert p.dtype == np.float64 and np.all((p >= 0) & (p <= 1))
    np.testing.assert_array_equal(p, client.predict_proba(b, a))
    labels = client.predict(a, b)
    assert labels.dtype == np.int64 and set(labels.tolist()) <= {0, 1} and labels[1] == 1
    np.testing.assert_array_equal(labels, (p >= 0.5).astype(np.int64))
    assert fake.bodies("POST", "/similarity")[0] == {"pairs": [list(pair) for pair in zip(a, b, strict=True)]}
    n = len(fake.requests)
    assert client.threshold == pytest.approx(0.4) and len(fake.requests) == n  # cached from the calls above
    assert client.metric == "euclidean"
    with pytest.raises(InvalidArgumentError, match="same length"):
        client.distance(a, b[:2])
    with pytest.raises(InvalidArgumentTypeError, match="items_a must be a list"):
        client.distance("dog", "cat")


def test_threshold_is_asked_once_and_a_model_without_calibrator_raises_calibration_error():
    client, fake = make()
    assert client.threshold == pytest.approx(0.4)
    assert client.threshold == pytest.approx(0.4)
    assert fake.bodies("POST", "/similarity") == [{"pairs": []}]
    picky, picky_fake = make(FakeService(empty_pairs_ok=False))
    assert picky.threshold == pytest.approx(0.4)  # falls back to one throwaway text pair
    assert picky_fake.bodies("POST", "/similarity")[-1] == {"pairs": [["threshold", "threshold"]]}
    raw, _ = make(FakeService(calibrated=False))
    assert raw.distance(["a"], ["b"]).shape == (1,)
    for call in (lambda: raw.predict_proba(["a"], ["b"]), lambda: raw.predict(["a"], ["b"]), lambda: raw.threshold):
        with pytest.raises(CalibrationError, match="has no calibrator"):
            call()


def test_search_returns_results_with_the_library_attributes():
    from metric_sim.index.results import SearchResult, format_results

    client, fake = make()
    corpus = ["how do i learn python", "capital of france", "cook rice", "sell a car"]
    assert client.add(corpus, ["p", "f", "r", 7]) == ["p", "f", "r", "7"]
    results = client.search(["how do i learn python", "rice"], k=2)
    assert fake.bodies("POST", "/search") == [
        {"queries": ["how do i learn python", "rice"], "k": 2, "min_prob": None, "max_distance": None}
    ]
    assert {f.name for f in dataclasses.fields(RemoteSearchResult)} == {f.name for f in dataclasses.fields(SearchResult)}
    first = results[0]
    assert isinstance(first, RemoteSearchResult) and len(first) == 2 and first.query == "how do i learn python"
    assert first.ids[0] == "p" and first.texts[0] == "how do i learn python" and first.distances[0] == 0.0
    assert first.distances.dtype == np.float32 and first.probabilities.dtype == np.float64
    assert list(first)[0] == Neighbor("p", "how do i learn python", 0.0, pytest.approx(fake.probability(0.0)))
    assert first.to_dict()["neighbors"][0]["rank"] == 1 and "query: rice" in format_results(results)
    client.search(["rice"], k=3, max_distance=np.float64(0.5))
    client.search(["rice"], min_prob=0.9)
    assert fake.bodies("POST", "/search")[1:] == [
        {"queries": ["rice"], "k": 3, "min_prob": None, "max_distance": 0.5},
        {"queries": ["rice"], "k": 5, "min_prob": 0.9, "max_distance": None},
    ]
    for kwargs, match in [({"k": 0}, "k must be a positive integer"), ({"min_prob": 1.0}, "min_prob must be in"),
                          ({"max_distance": -1}, "max_distance must be"),
                          ({"min_prob": 0.5, "max_distance": 1.0}, "at most one of")]:
        with pytest.raises(InvalidArgumentError, match=match):
            client.search(["rice"], **kwargs)
    assert len(fake.bodies("POST", "/search")) == 3  # refused before sending


def test_add_get_remove_and_their_errors():
    client, fake = make()
    client.add(["a text", "b text"], ["a", "odd id/with space"])
    assert client.get("a") == "a text" and client.text_of("odd id/with space") == "b text"
    assert ("GET", "/items/odd%20id%2Fwith%20space") in [(m, p) for m, p, _, _ in fake.requests]
    with pytest.raises(InvalidArgumentError, match="'a' is already stored") as info:
        client.add(["again"], ["a"])
    assert info.value.status_code == 409 and info.value.error_type == "duplicate_id"
    with pytest.raises(InvalidArgumentError, match="ids must be unique, got 'x' 2 times"):
        client.add(["1", "2"], ["x", "x"])
    with pytest.raises(InvalidArgumentError, match="same length"):
        client.add(["1", "2"], ["x"])
    with pytest.raises(InvalidArgumentTypeError, match="ids must be a list"):
        client.add(["1"], "x")
    with pytest.raises(UnknownIdError, match="no item with id 'nope'") as missing:
        client.get("nope")
    assert isinstance(missing.value, KeyError) and isinstance(missing.value, MetricSimError)
    assert str(missing.value).startswith("no item with id 'nope' (HTTP 404 from GET http://fake.test:8000/items/nope")
    with pytest.raises(KeyError, match="not in the index"):
        client.remove(["a", "nope"])
    assert set(fake.items) == {"a", "odd id/with space"}  # nothing removed when one id is unknown
    assert client.remove(["a", "odd id/with space", "a"]) == 2 and fake.items == {}


def test_auth_headers_read_and_write_keys():
    fake = FakeService(api_key="read-key", write_api_key="write-key")
    client, _ = make(fake, api_key="read-key", write_api_key="write-key")
    client.add(["x"], ["1"])
    client.embed(["x"])
    headers = {(m, p): h.get("authorization") for m, p, h, _ in fake.requests}
    assert headers[("POST", "/items")] == "Bearer write-key"
    assert headers[("POST", "/v1/embeddings")] == "Bearer read-key"
    reads_only, _ = make(fake, api_key="read-key")
    assert reads_only.get("1") == "x"
    with pytest.raises(AuthenticationError, match="bearer token") as info:
        reads_only.add(["y"], ["2"])
    assert info.value.status_code == 401 and isinstance(info.value, PermissionError)
    anonymous, _ = make(fake)
    assert anonymous.health() == {"status": "ok"} and anonymous.ready() is True
    assert "authorization" not in {k.lower() for k in fake.requests[-1][2]}
    with pytest.raises(AuthenticationError):
        anonymous.metrics()
    assert "metric_sim_index_size 1" in client.metrics()
    with pytest.raises(InvalidArgumentError, match="api_key must be a non-empty one-line str"):
        SimilarityClient(URL, api_key="bad\nkey")


def test_error_replies_map_to_metric_sim_errors():
    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/ready":
            return error(503, "not_ready", "still loading")
        if path == "/health":
            return httpx.Response(500, text="Internal Server Error")
        if path == "/v1/embeddings":
            return error(422, "invalid_type", "input[0] must be a string for a text model", "input[0]")
        if path == "/similarity":
            return error(400, "invalid_json", "the body is not valid JSON")
        if path == "/search":
            return error(422, "no_calibrator", "min_prob needs a calibrated model", "min_prob")
        return httpx.Response(404, json={"detail": "Not Found"})

    client = SimilarityClient(URL, transport=httpx.MockTransport(handler))
    assert client.ready() is False
    with pytest.raises(ServiceError, match=r"Internal Server Error \(HTTP 500 from GET") as info:
        client.health()
    assert info.value.status_code == 500 and not isinstance(info.value, ValueError)
    with pytest.raises(InvalidArgumentTypeError, match="must be a string for a text model") as info:
        client.embed(["x"])
    assert info.value.field == "input[0]"
    with pytest.raises(InvalidArgumentError, match="not valid JSON"):
        client.distance(["a"], ["b"])
    with pytest.raises(CalibrationError, match="min_prob needs a calibrated model"):
        client.search(["a"], min_prob=0.5)
    with pytest.raises(ServiceError, match="Not Found") as info:
        client.metrics()
    assert not isinstance(info.value, KeyError)


def test_connection_errors_and_timeouts_name_the_url():
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with SimilarityClient(f"http://127.0.0.1:{port}/", timeout=2) as client:
        assert client.base_url == f"http://127.0.0.1:{port}"
        with pytest.raises(ServiceUnavailableError, match=f"cannot reach the metric-sim service at http://127.0.0.1:{port}"):
            client.embed(["x"])
        with pytest.raises(ServiceUnavailableError, match="not ready after"):
            client.wait_until_ready(timeout=0.3, interval=0.1)

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    client = SimilarityClient(URL, timeout=1.5, transport=httpx.MockTransport(slow))
    with pytest.raises(ServiceUnavailableError, match=r"did not answer GET /health within 1.5 s") as info:
        client.health()
    assert isinstance(info.value, ConnectionError) and info.value.status_code is None
    for bad in ("127.0.0.1:8000", "ftp://x"):
        with pytest.raises(InvalidArgumentError, match="base_url must be an http"):
            SimilarityClient(bad)


def test_images_and_records_are_sent_base64_encoded(tmp_path):
    from PIL import Image

    pixels = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    photo = tmp_path / "photo.png"
    Image.fromarray(pixels).save(photo)
    raw = photo.read_bytes()

    def decoded(item) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(item["image_base64"]))))

    assert encode_item(photo) == {"image_base64": base64.b64encode(raw).decode()}
    assert encode_item(raw) == encode_item(photo) == encode_item(bytearray(raw))
    np.testing.assert_array_equal(decoded(encode_item(Image.fromarray(pixels))), pixels)
    np.testing.assert_array_equal(decoded(encode_item(pixels)), pixels)
    assert encode_item(str(photo), str_items="image") == encode_item(photo)
    assert encode_item("a caption") == "a caption"
    record = encode_item({"title": "red mug", "image": str(photo), "description": "ceramic", "sku": 12})
    assert record == {"title": "red mug", "description": "ceramic", "image_base64": encode_item(photo)["image_base64"]}
    assert encode_item({"title": "title only"}) == {"title": "title only"}
    client, fake = make(max_items_per_request=1)
    with pytest.raises(MissingFileError, match="items\\[1\\]: image file not found"):
        client.add([photo, tmp_path / "gone.png"], ["ok", "gone"])
    assert fake.requests == []  # every item is encoded before the first request
    with pytest.raises(InvalidArgumentError, match="neither a title nor an image"):
        encode_item({"description": "no title"})
    with pytest.raises(InvalidArgumentTypeError, match="item.title must be a str"):
        encode_item({"title": 3})
    with pytest.raises(InvalidArgumentTypeError, match="must be a text"):
        encode_item(3.5)
    with pytest.raises(InvalidArgumentError, match="uint8"):
        encode_item(np.zeros((2, 2), dtype=np.float32))

    client, fake = make(str_items="image")
    client.embed([str(photo), raw])
    client.add([{"title": "mug", "image": photo}], ["m1"])
    assert fake.bodies("POST", "/v1/embeddings")[0]["input"] == [encode_item(photo)] * 2
    assert fake.items["m1"] == {"title": "mug", "image_base64": encode_item(photo)["image_base64"]}
    result = client.search([photo], k=1)[0]
    assert result.query == str(photo) and result.ids == ["m1"]


def test_context_manager_closes_and_method_names_match_the_library():
    from metric_sim.index import NeighborIndex
    from metric_sim.model import SimilarityModel

    with make()[0] as client:
        assert client.health() == {"status": "ok"}
    with pytest.raises(RuntimeError, match="closed"):
        client.health()
    for name in ("embed", "distance", "predict_proba", "predict", "threshold"):
        assert hasattr(SimilarityModel, name) and hasattr(SimilarityClient, name), name
    for name in ("search", "add", "remove", "text_of"):
        assert hasattr(NeighborIndex, name) and hasattr(SimilarityClient, name), name
    assert repr(client) == f"SimilarityClient({URL!r})"


def test_client_module_is_light():
    import subprocess
    import sys

    code = ("import metric_sim.client, sys; "
            "print(','.join(m for m in ('torch', 'faiss', 'PIL', 'httpx', 'fastapi') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == ""
