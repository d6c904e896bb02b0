"""``metric-sim serve``: the real server (uvicorn in a subprocess on a free loopback port), talked to over HTTP.

Two servers per module (one open, one with keys and a data folder that is killed with
SIGKILL and restarted), plus in-process checks of the parts (log lines, item parsing, auth
rules) that need no server. Every model is the tiny random text model of ``conftest``.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from metric_sim.errors import IndexLoadError
from metric_sim.serve.config import Limits
from metric_sim.serve.durability import DataDir, encode_line, parse_line
from metric_sim.serve.errors import ApiError
from metric_sim.serve.items import ItemParser
from metric_sim.serve.security import Auth
from tests.conftest import REPO_ROOT, build_tiny_encoder

READ_KEY = "read-secret"
WRITE_KEY = "write-secret"
CALIBRATION_A = ["how to cook rice", "how to bake bread", "best way to learn python", "what is the capital city",
                 "how to save money", "buy a car"]
CALIBRATION_B = ["how to cook rice", "how to bake bread", "how to sell a phone", "what is the capital city",
                 "dog and cat", "best way to invest money"]
TEXTS = ["how do i cook rice", "best way to learn python", "what is the capital city of the country",
         "how to save money", "good dog and bad cat", "sell my phone battery"]
LIMITS = ["--max-items", "8", "--max-text-chars", "200", "--max-body-bytes", "20000", "--max-k", "50"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """``python -m metric_sim serve ...`` on a free loopback port, its output in a log file."""

    def __init__(self, log: Path, args: list[str], env: dict[str, str] | None = None) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT), **(env or {})}
        with open(log, "wb") as out:
            self.process = subprocess.Popen([sys.executable, "-m", "metric_sim", "serve", "--port", str(self.port),
                                             *args], stdout=out, stderr=subprocess.STDOUT, env=full_env,
                                            cwd=REPO_ROOT)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"the server exited with {self.process.returncode}:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        pytest.fail(f"the server was not ready within {timeout} s:\n{self.output()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill9(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from metric_sim.calibration import Calibrator
    from metric_sim.model import SimilarityModel

    model = SimilarityModel(build_tiny_encoder())
    model.calibrator = Calibrator.fit(model.distance(CALIBRATION_A, CALIBRATION_B), [1, 1, 0, 1, 0, 0], model.metric)
    folder = tmp_path_factory.mktemp("serve") / "model"
    model.save(folder)
    return folder


@pytest.fixture(scope="module")
def servers(model_dir, tmp_path_factory):
    """Both servers start at once (loading the model is most of the time): ``open`` has no keys and
    small limits; ``durable`` has keys (the read key from the environment) and a data folder."""
    root = tmp_path_factory.mktemp("servers")
    started = {
        "open": Server(root / "open.log", ["--model", str(model_dir), "--data-dir", str(root / "open-data"),
                                           "--snapshot-every", "5", *LIMITS]),
        "durable": Server(root / "durable.log", ["--model", str(model_dir), "--data-dir", str(root / "data"),
                                                 "--snapshot-every", "16", "--write-api-key", WRITE_KEY],
                          env={"METRIC_SIM_API_KEY": READ_KEY}),
    }
    started["data_dir"] = root / "data"
    started["root"] = root
    try:
        for name in ("open", "durable"):
            started[name].wait_ready()
        yield started
    finally:
        for name in ("open", "durable"):
            if isinstance(started.get(name), Server):
                started[name].stop()


@pytest.fixture(scope="module")
def client(servers):
    with httpx.Client(base_url=servers["open"].url, timeout=30) as http:
        yield http


def _error(response: httpx.Response, status: int, kind: str, field: str | None = "any") -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()["error"]
    assert body["type"] == kind, body
    if field != "any":
        assert body["field"] == field, body
    assert "Traceback" not in response.text
    return body


def test_health_ready_and_openapi(client):
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready").json()
    assert ready["status"] == "ready" and isinstance(ready["items"], int)
    schema = client.get("/openapi.json").json()
    for path in ("/v1/embeddings", "/similarity", "/search", "/items", "/items/{item_id}", "/health", "/ready",
                 "/metrics"):
        assert path in schema["paths"], path
    assert schema["components"]["schemas"]["SearchRequest"]["examples"]


def test_embeddings_match_the_library(client, model_dir):
    from metric_sim.model import SimilarityModel

    one = client.post("/v1/embeddings", json={"input": TEXTS[0], "model": "anything"}).json()
    assert one["object"] == "list" and one["model"] == "model" and len(one["data"]) == 1
    many = client.post("/v1/embeddings", json={"input": TEXTS, "encoding_format": "float"}).json()
    assert [d["index"] for d in many["data"]] == list(range(len(TEXTS)))
    assert all(d["object"] == "embedding" for d in many["data"])
    assert many["usage"]["prompt_tokens"] == many["usage"]["total_tokens"] > 0
    vectors = np.array([d["embedding"] for d in many["data"]])
    expected = SimilarityModel.from_pretrained(model_dir).embed(TEXTS)
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    np.testing.assert_allclose(one["data"][0]["embedding"], expected[0], atol=1e-5)
    _error(client.post("/v1/embeddings", json={"input": TEXTS, "encoding_format": "base64"}), 422,
           "invalid_argument", "encoding_format")


def test_similarity_is_symmetric(client):
    a, b = TEXTS[0], TEXTS[1]
    both = client.post("/similarity", json={"pairs": [[a, b], [b, a], [a, a]]}).json()
    assert both["metric"] == "euclidean" and both["threshold"] > 0
    ab, ba, aa = both["results"]
    assert ab == ba  # distance, probability and decision, bit for bit
    assert aa["distance"] == 0.0 and aa["similar"] is True
    apart = [client.post("/similarity", json={"pairs": [pair]}).json()["results"][0] for pair in ([a, b], [b, a])]
    assert apart[0] == apart[1] == ab
    assert 0.0 <= ab["probability"] <= 1.0 and isinstance(ab["similar"], bool)


def test_items_add_get_search_delete(client):
    items = [{"id": f"crud-{i}", "item": text} for i, text in enumerate(TEXTS)]
    added = client.post("/items", json={"items": items}).json()
    assert added["added"] == [it["id"] for it in items] and added["size"] >= len(items)
    assert client.get("/items/crud-2").json() == {"id": "crud-2", "item": TEXTS[2]}
    hits = client.post("/search", json={"queries": [TEXTS[2], TEXTS[4]], "k": 3}).json()["results"]
    assert hits[0][0]["id"] == "crud-2" and hits[0][0]["distance"] < 1e-3 and hits[0][0]["item"] == TEXTS[2]
    assert hits[1][0]["id"] == "crud-4" and len(hits[1]) == 3
    assert [h["distance"] for h in hits[0]] == sorted(h["distance"] for h in hits[0])
    close = client.post("/search", json={"queries": [TEXTS[2]], "k": 50, "min_prob": 0.99}).json()["results"][0]
    assert close and all(h["probability"] >= 0.99 for h in close)
    near = client.post("/search", json={"queries": [TEXTS[2]], "k": 50, "max_distance": 1e-3}).json()["results"][0]
    assert [h["id"] for h in near] == ["crud-2"]
    # a taken id (in the index, or twice in one request) adds nothing of that request
    size = client.get("/ready").json()["items"]
    _error(client.post("/items", json={"items": [{"id": "fresh", "item": "a"}, {"id": "crud-1", "item": "b"}]}),
           409, "duplicate_id", "items[1].id")
    _error(client.post("/items", json={"items": [{"id": "twin", "item": "a"}, {"id": "twin", "item": "b"}]}),
           409, "duplicate_id", "items[1].id")
    assert client.get("/ready").json()["items"] == size
    _error(client.get("/items/fresh"), 404, "unknown_id")
    deleted = client.delete("/items/crud-2").json()
    assert deleted == {"deleted": "crud-2", "size": size - 1}
    _error(client.get("/items/crud-2"), 404, "unknown_id")
    _error(client.delete("/items/crud-2"), 404, "unknown_id")
    hits = client.post("/search", json={"queries": [TEXTS[2]], "k": 50}).json()["results"][0]
    assert "crud-2" not in {h["id"] for h in hits}
    odd = client.post("/items", json={"items": [{"id": "a/b c", "item": "odd id"}]})
    assert odd.status_code == 200
    assert client.get("/items/a%2Fb%20c").json()["item"] == "odd id"
    assert client.delete("/items/a%2Fb%20c").json()["deleted"] == "a/b c"


def test_limits(client):
    _error(client.post("/search", json={"queries": ["a"] * 9}), 413, "limit_exceeded", "queries")
    _error(client.post("/v1/embeddings", json={"input": ["a"] * 9}), 413, "limit_exceeded", "input")
    _error(client.post("/similarity", json={"pairs": [["a", "b"]] * 9}), 413, "limit_exceeded", "pairs")
    _error(client.post("/items", json={"items": [{"id": str(i), "item": "a"} for i in range(9)]}), 413,
           "limit_exceeded", "items")
    long = _error(client.post("/items", json={"items": [{"id": "long", "item": "x" * 201}]}), 413, "limit_exceeded",
                  "items[0].item")
    assert "200" in long["message"] and "201" in long["message"]
    _error(client.post("/similarity", json={"pairs": [["a", "x" * 201]]}), 413, "limit_exceeded", "pairs[0][1]")
    _error(client.post("/search", json={"queries": ["a"], "k": 51}), 413, "limit_exceeded", "k")
    body = _error(client.post("/v1/embeddings", content=json.dumps({"input": "a " * 15000}),
                              headers={"content-type": "application/json"}), 413, "limit_exceeded", "body")
    assert "20000" in body["message"]
    _error(client.post("/items", json={"items": [{"id": "i" * 513, "item": "a"}]}), 413, "limit_exceeded",
           "items[0].id")


def test_malformed_requests_get_4xx_json(client):
    headers = {"content-type": "application/json"}
    _error(client.post("/search", content=b'{"queries": [', headers=headers), 400, "invalid_json")
    _error(client.post("/search", content=b"\xff\xfe", headers=headers), 400, "invalid_json")
    _error(client.post("/search", content=b"[1, 2]", headers=headers), 422, "invalid_type")
    _error(client.post("/search", json={"queries": ["a"], "k": "5"}), 422, "invalid_type", "k")
    _error(client.post("/search", json={"queries": ["a"], "k": True}), 422, "invalid_type", "k")
    _error(client.post("/search", json={"queries": ["a"], "k": 0}), 422, "invalid_argument", "k")
    _error(client.post("/search", json={"queries": ["a"], "min_prob": 1.5}), 422, "invalid_argument", "min_prob")
    _error(client.post("/search", json={"queries": ["a"], "min_prob": 0.5, "max_distance": 1.0}), 422,
           "invalid_argument")
    _error(client.post("/search", json={"queries": [1]}), 422, "invalid_type", "queries[0]")
    _error(client.post("/search", json={"queries": []}), 422, "invalid_argument", "queries")
    _error(client.post("/search", json={"k": 3}), 422, "missing_field", "queries")
    _error(client.post("/search", json={"queries": ["a"], "kk": 3}), 422, "unknown_field", "kk")
    _error(client.post("/similarity", json={"pairs": [["a"]]}), 422, "invalid_argument", "pairs[0]")
    _error(client.post("/similarity", json={"pairs": [["a", {"image_base64": "AAAA"}]]}), 422, "invalid_type",
           "pairs[0][1]")
    _error(client.post("/v1/embeddings", json={"input": None}), 422, "invalid_type", "input")
    _error(client.post("/v1/embeddings", json={"input": [["nested"]]}), 422, "invalid_type", "input[0]")
    _error(client.post("/items", json={"items": [{"id": 3, "item": "a"}]}), 422, "invalid_type", "items[0].id")
    _error(client.post("/items", json={"items": [{"id": "", "item": "a"}]}), 422, "invalid_argument", "items[0].id")
    _error(client.post("/items", json={"items": [{"id": "x"}]}), 422, "missing_field", "items[0].item")
    _error(client.post("/v1/embeddings", content=b'{"input": ["a", "\\ud800"]}', headers=headers), 422,
           "invalid_text", "input[1]")
    _error(client.post("/search", content=b'{"queries": ["a"], "max_distance": Infinity}', headers=headers), 422,
           "invalid_argument", "max_distance")
    _error(client.post("/search", content=b'{"queries": ["a"], "k": 1' + b"0" * 5000 + b"}", headers=headers), 400,
           "bad_request")
    _error(client.post("/items", content=b"id=1", headers={"content-type": "application/x-www-form-urlencoded"}), 415,
           "unsupported_media_type")
    _error(client.get("/no/such/route"), 404, "not_found")
    _error(client.put("/search", json={}), 405, "method_not_allowed")


def test_metrics_in_prometheus_format(client):
    client.post("/v1/embeddings", json={"input": TEXTS})
    text = client.get("/metrics").text
    assert '# TYPE metric_sim_requests_total counter' in text
    assert 'metric_sim_requests_total{route="/v1/embeddings",method="POST",status="200"}' in text
    assert "# TYPE metric_sim_errors_total counter" in text and "# TYPE metric_sim_batch_requests histogram" in text
    assert 'metric_sim_request_duration_seconds_bucket{route="/v1/embeddings",le="+Inf"}' in text
    assert "metric_sim_batch_items_count" in text and "metric_sim_encode_duration_seconds_sum" in text
    assert "# TYPE metric_sim_index_items gauge" in text
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name_labels, value = line.rsplit(" ", 1)
            float(value)
            assert name_labels.startswith("metric_sim_")


def test_concurrent_adds_and_searches_stay_consistent(client):
    writers, per_writer = 4, 8
    submitted = {f"w{w}-{i}" for w in range(writers) for i in range(per_writer)}
    before = {h["id"] for h in client.post("/search", json={"queries": ["a"], "k": 50}).json()["results"][0]}
    acked: list[str] = []
    seen: set[str] = set()
    failures: list[str] = []
    stop = threading.Event()

    def write(w: int) -> None:
        with httpx.Client(base_url=client.base_url, timeout=30) as http:
            for i in range(per_writer):
                item_id = f"w{w}-{i}"
                r = http.post("/items", json={"items": [{"id": item_id, "item": f"{TEXTS[i % 6]} number {w} {i}"}]})
                if r.status_code != 200:
                    failures.append(r.text)
                else:
                    acked.append(item_id)

    def read() -> None:
        with httpx.Client(base_url=client.base_url, timeout=30) as http:
            while not stop.is_set():
                r = http.post("/search", json={"queries": [TEXTS[0], TEXTS[3]], "k": 50})
                if r.status_code != 200:
                    failures.append(r.text)
                    return
                for hits in r.json()["results"]:
                    seen.update(h["id"] for h in hits)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    readers = [threading.Thread(target=read) for _ in range(3)]
    for t in threads + readers:
        t.start()
    for t in threads:
        t.join(timeout=120)
    stop.set()
    for t in readers:
        t.join(timeout=30)
    assert not failures, failures[:3]
    assert sorted(acked) == sorted(submitted)
    assert seen <= submitted | before  # only ids that were stored or being stored
    for item_id in acked:
        assert client.get(f"/items/{item_id}").status_code == 200
    everything = client.post("/search", json={"queries": ["a"], "k": 50}).json()["results"][0]
    assert submitted <= {h["id"] for h in everything}  # all fit in k=50 on this small index


def test_auth_read_and_write_keys(servers):
    url = servers["durable"].url
    read = {"authorization": f"Bearer {READ_KEY}"}
    write = {"authorization": f"Bearer {WRITE_KEY}"}
    with httpx.Client(base_url=url, timeout=30) as http:
        assert http.get("/health").status_code == 200 and http.get("/ready").status_code == 200
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": READ_KEY}):
            response = http.post("/search", json={"queries": ["a"]}, headers=headers)
            _error(response, 401, "unauthorized")
            assert response.headers["www-authenticate"] == "Bearer"
        _error(http.get("/metrics"), 401, "unauthorized")
        _error(http.post("/search", content=b"{bad", headers={"content-type": "application/json"}), 401, "unauthorized")
        assert http.post("/search", json={"queries": ["a"]}, headers=read).status_code == 200
        assert http.post("/search", json={"queries": ["a"]}, headers=write).status_code == 200
        assert http.get("/metrics", headers=read).status_code == 200
        _error(http.post("/items", json={"items": [{"id": "k", "item": "a"}]}, headers=read), 401, "unauthorized")
        assert http.post("/items", json={"items": [{"id": "k", "item": "a"}]}, headers=write).status_code == 200
        _error(http.delete("/items/k", headers=read), 401, "unauthorized")
        assert http.get("/items/k", headers=read).json()["item"] == "a"
        assert http.delete("/items/k", headers=write).status_code == 200


def test_a_bug_is_a_500_without_details(caplog):
    from starlette.testclient import TestClient

    from metric_sim.serve.metrics import ServerMetrics
    from metric_sim.serve.security import Gate

    async def broken(scope, receive, send):
        raise RuntimeError("secret detail /srv/path")

    metrics = ServerMetrics()
    http = TestClient(Gate(broken, auth=Auth(), max_body_bytes=100, metrics=metrics))  # no lifespan
    response = http.post("/search", json={"queries": ["a"]})
    assert response.status_code == 500
    assert response.json() == {"error": {"type": "internal_error", "message": "internal error", "field": None}}
    assert "secret" not in response.text and "RuntimeError: secret detail" in caplog.text
    assert 'metric_sim_errors_total{type="internal_error"} 1' in metrics.render()


def test_read_only_without_a_data_dir(model_dir):
    from starlette.testclient import TestClient

    from metric_sim.serve import ServeConfig, create_app

    with TestClient(create_app(ServeConfig(model=str(model_dir)))) as http:
        deadline = time.monotonic() + 60
        while http.get("/ready").status_code == 503 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert http.get("/ready").json() == {"status": "ready", "items": 0}
        assert http.post("/search", json={"queries": ["a"]}).json() == {"results": [[]]}
        _error(http.post("/items", json={"items": [{"id": "x", "item": "a"}]}), 409, "read_only")
        _error(http.delete("/items/x"), 409, "read_only")


def test_auth_rules():
    both = Auth("r", "w")
    assert both.check("GET", "/health", None) is None and both.check("GET", "/ready", None) is None
    assert both.check("POST", "/search", b"Bearer r") is None and both.check("POST", "/search", b"Bearer w") is None
    assert both.check("POST", "/items", b"Bearer r").status == 401
    assert both.check("DELETE", "/items/x", b"Bearer w") is None
    writes_only = Auth(None, "w")
    assert writes_only.check("POST", "/search", None) is None and writes_only.check("GET", "/items/x", None) is None
    assert writes_only.check("POST", "/items", None).status == 401
    assert writes_only.check("POST", "/items", b"bearer w") is None
    reads = Auth("r", None)
    assert reads.check("POST", "/items", b"Bearer r") is None and reads.check("GET", "/metrics", b"Bearer x")
    assert not Auth().enabled and Auth().check("POST", "/items", None) is None


def test_kill_9_keeps_every_acknowledged_write(servers, model_dir):
    from metric_sim.index import NeighborIndex

    server: Server = servers["durable"]
    data_dir: Path = servers["data_dir"]
    write = {"authorization": f"Bearer {WRITE_KEY}"}
    acked: list[str] = []
    deleted: list[str] = []
    in_flight: list[str] = []  # the id of the write the kill interrupted: it may or may not have landed

    def stream() -> None:
        with httpx.Client(base_url=server.url, timeout=10, headers=write) as http:
            for i in range(10_000):
                try:
                    in_flight[:] = [f"k{i}"]
                    r = http.post("/items", json={"items": [{"id": f"k{i}", "item": f"{TEXTS[i % 6]} {i}"}]})
                    if r.status_code == 200:
                        acked.append(f"k{i}")
                    if i % 10 == 5:
                        in_flight[:] = [f"k{i - 1}"]
                        if http.delete(f"/items/k{i - 1}").status_code == 200:
                            deleted.append(f"k{i - 1}")
                except httpx.TransportError:
                    return

    writer = threading.Thread(target=stream)
    writer.start()
    deadline = time.monotonic() + 60
    while len(acked) < 30 and time.monotonic() < deadline:  # past two snapshots (every 16 writes)
        time.sleep(0.01)
    server.kill9()
    writer.join(timeout=30)
    assert len(acked) >= 30, server.output()
    logs = sorted(data_dir.glob("log-*.jsonl"))
    with open(logs[-1], "ab") as torn:  # a record cut short, as a crash mid-write leaves it
        torn.write(encode_line({"op": "delete", "id": "k0", "seq": 10**6})[:40])

    restarted = Server(server.log.with_name("restarted.log"),
                       ["--model", str(model_dir), "--data-dir", str(data_dir), "--write-api-key", WRITE_KEY],
                       env={"METRIC_SIM_API_KEY": READ_KEY})
    servers["durable"] = restarted  # the fixture stops it
    restarted.wait_ready()
    kept = set(acked) - set(deleted) - set(in_flight)
    with httpx.Client(base_url=restarted.url, timeout=30, headers={"authorization": f"Bearer {READ_KEY}"}) as http:
        for item_id in kept:
            assert http.get(f"/items/{item_id}").status_code == 200, item_id
        for item_id in set(deleted) - set(in_flight):
            assert http.get(f"/items/{item_id}").status_code == 404, item_id
        size = http.get("/ready").json()["items"]
        assert len(kept) <= size <= len(kept) + 1  # at most the one write in flight at the kill
        hits = http.post("/search", json={"queries": [f"{TEXTS[1]} 1"], "k": 1}).json()["results"][0]
        assert hits[0]["id"] == "k1" and hits[0]["distance"] < 1e-3
        again = http.post("/items", json={"items": [{"id": "after-restart", "item": "a"}]}, headers=write)
        assert again.status_code == 200
    snapshots = sorted(data_dir.glob("snapshot-*"))
    assert NeighborIndex.load(snapshots[-1], load_model=False) is not None


def test_failed_model_load_exits_with_an_error(tmp_path):
    server = Server(tmp_path / "bad.log", ["--model", str(tmp_path / "missing-model")])
    assert server.process.wait(timeout=90) == 2, server.output()
    assert "Traceback" not in server.output()


def test_log_lines_and_damage(tmp_path, model_dir):
    from metric_sim.index import NeighborIndex
    from metric_sim.model import SimilarityModel

    record = {"op": "delete", "id": "a", "seq": 3}
    line = encode_line(record)
    assert parse_line(line) == record
    with pytest.raises(ValueError, match="checksum"):
        parse_line(line.replace(b'"a"', b'"b"'))
    model = SimilarityModel.from_pretrained(model_dir)
    index = NeighborIndex(model.encoder.embedding_dim, model.metric, model=model)
    data = DataDir(tmp_path / "data")
    assert data.latest_snapshot() is None
    data.write_snapshot(index)
    for seq in range(3):
        data.append({"op": "delete", "id": f"x{seq}"})
    data.close()
    log = next((tmp_path / "data").glob("log-*.jsonl"))
    lines = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(lines[0] + lines[1].replace(b"x1", b"y1") + lines[2])
    reopened = DataDir(tmp_path / "data")
    reopened.latest_snapshot()
    with pytest.raises(IndexLoadError, match="line 2"):
        reopened.pending_records()
    log.write_bytes(lines[0] + lines[2])  # a gap in the sequence
    reopened = DataDir(tmp_path / "data")
    reopened.latest_snapshot()
    with pytest.raises(IndexLoadError, match="write 3 where write 2"):
        reopened.pending_records()


def test_micro_batcher_groups_concurrent_requests():
    import asyncio

    from metric_sim.serve.batching import MicroBatcher

    def encode(items):
        if "boom" in items:
            raise ValueError("bad item")
        return np.array([[float(len(x))] for x in items], dtype=np.float32)

    async def scenario(enabled: bool) -> tuple[list[tuple[int, int]], list]:
        batches: list[tuple[int, int]] = []
        batcher = MicroBatcher(encode, max_batch=8, max_wait_ms=50, enabled=enabled,
                               sizes=lambda items: np.ones(len(items), np.int64),
                               on_batch=lambda n, r, _: batches.append((n, r)))
        batcher.start()
        await batcher.encode(["warm", "up"])  # a batch of two requests' worth: the next ones wait for company
        await asyncio.gather(batcher.encode(["a"]), batcher.encode(["b", "c"]))
        batches.clear()
        jobs = [batcher.encode(["x" * i] * 2, want_sizes=True) for i in range(1, 7)]
        jobs.append(batcher.encode(["ok", "boom"]))
        jobs.append(batcher.call(lambda: "alone"))
        results = await asyncio.gather(*jobs, return_exceptions=True)
        await batcher.stop()
        return batches, results

    batched, results = asyncio.run(scenario(True))
    assert [r[0][:, 0].tolist() for r in results[:6]] == [[float(i)] * 2 for i in range(1, 7)]
    assert results[0][1].tolist() == [1, 1]
    assert isinstance(results[6], ValueError) and results[7] == "alone"  # the bad request fails alone
    assert sum(n for n, _ in batched) == 12 and max(n for n, _ in batched) == 8  # full batches of 4 requests
    single, results = asyncio.run(scenario(False))
    assert all(r == 1 for _, r in single) and len(single) == 6
    assert isinstance(results[6], ValueError) and results[7] == "alone"


def _png(width: int, height: int) -> str:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 10, 10)).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def test_image_and_record_items():
    limits = Limits(max_image_pixels=400, max_image_bytes=2000, max_text_chars=20)
    images = ItemParser("image", limits)
    assert images.parse({"image_base64": _png(10, 10)}, "input").startswith(b"\x89PNG")
    with pytest.raises(ApiError, match="pixels") as caught:
        images.parse({"image_base64": _png(30, 30)}, "input")
    assert caught.value.status == 413 and caught.value.field == "input.image_base64"
    with pytest.raises(ApiError, match="bytes") as caught:
        images.parse({"image_base64": base64.b64encode(os.urandom(3000)).decode()}, "input")
    assert caught.value.status == 413
    for bad, kind in (("/etc/passwd", "invalid_type"), ({"image_base64": "%%%"}, "invalid_image"),
                      ({"image_base64": base64.b64encode(b"not an image").decode()}, "invalid_image"),
                      ({"image": "/etc/passwd"}, "invalid_argument")):
        with pytest.raises(ApiError) as caught:
            images.parse(bad, "input")
        assert caught.value.kind == kind and caught.value.status == 422
    records = ItemParser("record", limits)
    record = records.parse({"title": "red shirt", "image_base64": _png(4, 4)}, "items[0].item")
    assert record["title"] == "red shirt" and isinstance(record["image"], bytes)
    assert records.parse({"title": "only a title"}, "x") == {"title": "only a title"}
    for bad in ({"description": "no title"}, {"title": "x", "image": "/etc/passwd"}, "a string", {"title": 3}):
        with pytest.raises(ApiError):
            records.parse(bad, "x")
    with pytest.raises(ApiError, match="over the limit of 20"):
        records.parse({"title": "t" * 21}, "x")


def test_an_image_model_is_served_like_a_text_model(tmp_path):
    """Embeddings, similarity, live adds and search for an image model: items arrive as base64 files."""
    from PIL import Image
    from starlette.testclient import TestClient

    from metric_sim.encoders.image import image_encoder_from_name
    from metric_sim.model import SimilarityModel
    from metric_sim.serve import ServeConfig, create_app

    encoder = image_encoder_from_name("small-cnn", seed=0, widths=[4, 8], in_channels=1,
                                      preprocess={"size": 16, "resize": "squash", "mean": 0.5, "std": 0.5, "mode": "L"})
    model = SimilarityModel(encoder, "euclidean")
    model.save(tmp_path / "image-model")

    def png(shade: int) -> tuple[str, bytes]:
        out = io.BytesIO()
        pixels = (np.arange(20 * 20).reshape(20, 20) * shade % 256).astype(np.uint8)
        Image.fromarray(pixels).save(out, format="PNG")
        return base64.b64encode(out.getvalue()).decode(), out.getvalue()

    (a64, a_bytes), (b64, b_bytes) = png(3), png(7)
    config = ServeConfig(model=str(tmp_path / "image-model"), data_dir=str(tmp_path / "data"))
    with TestClient(create_app(config)) as http:
        deadline = time.monotonic() + 60
        while http.get("/ready").status_code == 503 and time.monotonic() < deadline:
            time.sleep(0.05)
        served = http.post("/v1/embeddings", json={"input": [{"image_base64": a64}, {"image_base64": b64}]}).json()
        expected = model.embed([a_bytes, b_bytes])
        np.testing.assert_allclose(np.array([row["embedding"] for row in served["data"]]), expected, atol=1e-5)
        pair = http.post("/similarity", json={"pairs": [[{"image_base64": a64}, {"image_base64": b64}],
                                                        [{"image_base64": b64}, {"image_base64": a64}]]}).json()
        assert pair["results"][0]["distance"] == pair["results"][1]["distance"]
        assert http.post("/items", json={"items": [{"id": "a", "item": {"image_base64": a64}},
                                                   {"id": "b", "item": {"image_base64": b64}}]}).status_code == 200
        hits = http.post("/search", json={"queries": [{"image_base64": b64}], "k": 2}).json()["results"][0]
        assert [hit["id"] for hit in hits][0] == "b" and hits[0]["distance"] < 1e-5
        _error(http.post("/search", json={"queries": ["/etc/passwd"]}), 422, "invalid_type")
