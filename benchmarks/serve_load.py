"""Bounded load test of ``metric-sim serve``: requests/s and p50/p99 latency, on loopback only.

Builds a small index of short texts (``metric-sim index build``), then starts
``python -m metric_sim serve`` on 127.0.0.1 twice, with micro-batching and with
``--no-batching`` (every request its own encoder batch), each time waiting for ``/ready``,
adding ``--add`` items through ``POST /items`` and firing a fixed number of requests at
concurrency 1, 8 and 32 from threads (one httpx connection per thread):

* ``embed``: ``POST /v1/embeddings`` with one short text each (what micro-batching is for);
* ``mixed``: the same, alternating with ``POST /search`` (k=5), one request in ten a
  ``POST /items`` of one new item (durable before it is answered).

The baseline is one ``metric-sim query INDEX TEXT`` process per request (model and index
loaded each time: a handful of sequential requests only). Everything stops by itself; no
request leaves the machine. The goal it checks: with micro-batching, at least 3x the
``embed`` throughput of one-request-per-batch at concurrency 32.

    PYTHONPATH=$PWD python benchmarks/serve_load.py --json benchmarks/results_serve_load.json
    PYTHONPATH=$PWD python benchmarks/serve_load.py --quick          # smoke run, a few minutes

The load generator shares the CPU with the server: on 2 cores the absolute figures are
lower than a separate client machine would measure; the batching/no-batching ratio is
what the run is for. ``--threads`` sets OMP/torch threads of the server (default 2).
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import environment, markdown_table, write_outputs  # noqa: E402

HOST = "127.0.0.1"
GOAL_RATIO = 3.0
GOAL_CONCURRENCY = 32
SUBJECTS = ("python", "rice", "the capital of france", "a used car", "a phone battery", "a dog", "the train",
            "saving money", "bread", "java")
VERBS = ("how do i learn", "what is the best way to cook", "where can i buy", "why is", "when should i sell",
         "can you explain", "who invented", "how much does it cost to visit")


def short_text(i: int) -> str:
    """A distinct short question per number (so no request repeats another's text)."""
    return f"{VERBS[i % len(VERBS)]} {SUBJECTS[(i // len(VERBS)) % len(SUBJECTS)]} {i}?"


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an ascending list (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, min(len(sorted_values), int(-(-q * len(sorted_values) // 100))))
    return sorted_values[rank - 1]


def summarize(latencies: list[float], errors: int, wall: float) -> dict[str, Any]:
    ordered = sorted(latencies)
    return {
        "requests": len(latencies) + errors,
        "ok": len(latencies),
        "errors": errors,
        "wall_s": round(wall, 3),
        "requests_per_s": round(len(latencies) / wall, 2) if wall > 0 else None,
        "p50_ms": None if not ordered else round(1000 * percentile(ordered, 50), 1),
        "p99_ms": None if not ordered else round(1000 * percentile(ordered, 99), 1),
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
    repo = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("METRIC_SIM_API_KEY", None)  # the bench talks to its own server without keys
    env.pop("METRIC_SIM_WRITE_API_KEY", None)
    return env


def build_index(model: str, work: Path, n_items: int, threads: int) -> Path:
    corpus = work / "corpus.txt"
    corpus.write_text("\n".join(short_text(i) for i in range(n_items)) + "\n", encoding="utf-8")
    index = work / "index"
    command = [sys.executable, "-m", "metric_sim", "index", "build", "--model", model, "--corpus", str(corpus),
               "--out", str(index)]
    started = time.perf_counter()
    subprocess.run(command, check=True, env=child_env(threads), stdout=subprocess.DEVNULL)
    print(f"index: {n_items} texts in {time.perf_counter() - started:.1f} s -> {index}", flush=True)
    return index


class Server:
    """``python -m metric_sim serve`` in a subprocess on a free loopback port; stopped on exit."""

    def __init__(self, args: argparse.Namespace, index: Path, work: Path, batching: bool) -> None:
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        name = "batching" if batching else "no-batching"
        self.log_path = work / f"serve-{name}.log"
        command = [sys.executable, "-m", "metric_sim", "serve", "--model", args.model, "--index", str(index),
                   "--data-dir", str(work / f"data-{name}"), "--host", HOST, "--port", str(self.port)]
        if batching:
            command += ["--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms)]
        else:
            command.append("--no-batching")
        self.command = command + list(args.serve_arg)
        self.process: subprocess.Popen | None = None
        self.startup_timeout = args.startup_timeout
        self.env = child_env(args.threads)

    def __enter__(self) -> Server:
        import httpx

        self.log = open(self.log_path, "w", encoding="utf-8")  # closed in __exit__
        started = time.perf_counter()
        self.process = subprocess.Popen(self.command, stdout=self.log, stderr=subprocess.STDOUT, env=self.env)
        deadline = started + self.startup_timeout
        with httpx.Client(base_url=self.url, timeout=5.0) as http:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"the server exited with code {self.process.returncode} before it was ready; "
                                       f"command: {' '.join(self.command)}\n{self.log_tail()}")
                try:
                    if http.get("/ready").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.perf_counter() > deadline:
                    self.stop()
                    raise RuntimeError(f"the server was not ready after {self.startup_timeout} s\n{self.log_tail()}")
                time.sleep(0.25)
        self.ready_s = time.perf_counter() - started
        print(f"server {self.url} ready in {self.ready_s:.1f} s: {' '.join(self.command[2:])}", flush=True)
        return self

    def log_tail(self, lines: int = 30) -> str:
        self.log.flush()
        return "\n".join(self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()
        self.log.close()


def run_load(url: str, n_requests: int, concurrency: int, make_request: Callable[[Any, int], Any],
             timeout: float) -> dict[str, Any]:
    """``n_requests`` calls of ``make_request(http, i)`` from ``concurrency`` threads; latency per call."""
    import httpx

    counter = itertools.count()
    lock = threading.Lock()
    latencies: list[float] = []
    failures: list[str] = []
    start_gate = threading.Barrier(concurrency + 1)

    def worker() -> None:
        with httpx.Client(base_url=url, timeout=timeout) as http:
            start_gate.wait()
            while True:
                with lock:
                    i = next(counter)
                if i >= n_requests:
                    return
                began = time.perf_counter()
                try:
                    reply = make_request(http, i)
                    ok = reply.status_code == 200
                    problem = None if ok else f"HTTP {reply.status_code}: {reply.text[:200]}"
                except httpx.HTTPError as exc:
                    problem = f"{type(exc).__name__}: {exc}"
                elapsed = time.perf_counter() - began
                with lock:
                    if problem is None:
                        latencies.append(elapsed)
                    else:
                        failures.append(problem)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    start_gate.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    result = summarize(latencies, len(failures), time.perf_counter() - began)
    if failures:
        result["first_error"] = failures[0]
    return result


def embed_request(offset: int) -> Callable[[Any, int], Any]:
    def call(http: Any, i: int) -> Any:
        return http.post("/v1/embeddings", json={"input": short_text(offset + i), "encoding_format": "float"})

    return call


def mixed_request(offset: int, tag: str) -> Callable[[Any, int], Any]:
    def call(http: Any, i: int) -> Any:
        text = short_text(offset + i)
        if i % 10 == 9:
            return http.post("/items", json={"items": [{"id": f"{tag}-{offset + i}", "item": text}]})
        if i % 2 == 0:
            return http.post("/v1/embeddings", json={"input": text, "encoding_format": "float"})
        return http.post("/search", json={"queries": [text], "k": 5, "min_prob": None, "max_distance": None})

    return call


def batch_metrics(text: str) -> dict[str, float]:
    """``*_sum`` and ``*_count`` of the batch-size histograms in a Prometheus text page."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or "batch" not in line:
            continue
        name, _, value = line.rpartition(" ")
        if name.split("{")[0].endswith(("_sum", "_count")):
            try:
                found[name] = float(value)
            except ValueError:
                pass
    return found


def serve_rows(args: argparse.Namespace, index: Path, work: Path, batching: bool) -> dict[str, Any]:
    import httpx

    mode = "batching" if batching else "no-batching"
    out: dict[str, Any] = {"mode": mode, "workloads": {}}
    with Server(args, index, work, batching) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        out["command"] = server.command
        out["ready_s"] = round(server.ready_s, 2)
        size_before = http.get("/ready").json().get("items")
        added = [{"id": f"add-{mode}-{i}", "item": short_text(10_000 + i)} for i in range(args.add)]
        began = time.perf_counter()
        reply = http.post("/items", json={"items": added})
        reply.raise_for_status()
        out["add"] = {"items": args.add, "seconds": round(time.perf_counter() - began, 3)}
        warm = run_load(server.url, 2 * max(args.concurrency), max(args.concurrency), embed_request(50_000), 120)
        out["warmup"] = warm
        offset = 100_000
        mixed_adds = 0
        for workload in ("embed", "mixed"):
            for concurrency in args.concurrency:
                make = (embed_request(offset) if workload == "embed"
                        else mixed_request(offset, f"mix-{mode}-{concurrency}"))
                result = run_load(server.url, args.requests, concurrency, make, args.request_timeout)
                if workload == "mixed":
                    mixed_adds += sum(1 for i in range(args.requests) if i % 10 == 9)
                offset += args.requests
                out["workloads"].setdefault(workload, {})[str(concurrency)] = result
                print(f"  {mode:12s} {workload:6s} c={concurrency:<3d} {result['requests_per_s']} req/s, "
                      f"p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, errors {result['errors']}", flush=True)
        size_after = http.get("/ready").json().get("items")
        failed_adds = sum(r["errors"] for r in out["workloads"]["mixed"].values())
        expected = None if size_before is None else size_before + args.add + mixed_adds
        out["index_size"] = {"before": size_before, "after": size_after, "expected": expected,
                             "failed_requests_in_mixed": failed_adds,
                             "consistent": None if failed_adds or expected is None else size_after == expected}
        if out["index_size"]["consistent"] is False:
            print(f"  WARNING: {size_after} items stored, expected {expected}", flush=True)
        metrics_reply = http.get("/metrics")
        out["batch_metrics"] = batch_metrics(metrics_reply.text) if metrics_reply.status_code == 200 else {}
    return out


def query_baseline(args: argparse.Namespace, index: Path) -> dict[str, Any]:
    """One ``metric-sim query`` process per request, sequential: the cost without a server."""
    latencies, errors, first_error = [], 0, None
    began = time.perf_counter()
    for i in range(args.query_processes):
        command = [sys.executable, "-m", "metric_sim", "query", str(index), short_text(200_000 + i), "-k", "5",
                   "--json"]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env=child_env(args.threads))
        if done.returncode == 0:
            latencies.append(time.perf_counter() - started)
        else:
            errors += 1
            first_error = first_error or done.stderr.strip()[-300:]
    result = summarize(latencies, errors, time.perf_counter() - began)
    if first_error:
        result["first_error"] = first_error
    print(f"  query process: {result['requests_per_s']} req/s, p50 {result['p50_ms']} ms", flush=True)
    return result


def goal(results: dict[str, Any]) -> dict[str, Any]:
    key = str(GOAL_CONCURRENCY)
    try:
        fast = results["serve"]["batching"]["workloads"]["embed"][key]["requests_per_s"]
        slow = results["serve"]["no-batching"]["workloads"]["embed"][key]["requests_per_s"]
    except KeyError:
        return {"met": None, "reason": f"concurrency {GOAL_CONCURRENCY} was not measured in both modes"}
    ratio = None if not fast or not slow else round(fast / slow, 2)
    return {"met": ratio is not None and ratio >= GOAL_RATIO, "ratio": ratio, "required": GOAL_RATIO,
            "concurrency": GOAL_CONCURRENCY, "batching_rps": fast, "no_batching_rps": slow}


def table(results: dict[str, Any]) -> str:
    rows = []
    for mode, mode_results in results["serve"].items():
        for workload, levels in mode_results["workloads"].items():
            for concurrency, r in levels.items():
                rows.append([f"serve ({mode})", workload, concurrency, r["ok"], r["errors"], r["requests_per_s"],
                             r["p50_ms"], r["p99_ms"]])
    base = results.get("query_process")
    if base:
        rows.append(["one `metric-sim query` process per request", "search", 1, base["ok"], base["errors"],
                     base["requests_per_s"], base["p50_ms"], base["p99_ms"]])
    return markdown_table(["system", "workload", "concurrency", "ok", "errors", "req/s", "p50 ms", "p99 ms"], rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default", help="model folder, RUN_DIR or 'default' (default: %(default)s)")
    parser.add_argument("--requests", type=int, default=256, help="requests per workload and concurrency")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--corpus-size", type=int, default=500, help="texts in the index built first")
    parser.add_argument("--add", type=int, default=32, help="items added through POST /items before the load")
    parser.add_argument("--query-processes", type=int, default=5, help="`metric-sim query` runs for the baseline")
    parser.add_argument("--max-batch", type=int, default=64, help="server --max-batch with batching")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="server --max-wait-ms with batching")
    parser.add_argument("--threads", type=int, default=2, help="OMP/MKL threads of the server and query processes")
    parser.add_argument("--serve-arg", action="append", default=[], metavar="ARG",
                        help="extra argument for `metric-sim serve` (repeatable, e.g. --serve-arg=--snapshot-every=500)")
    parser.add_argument("--startup-timeout", type=float, default=300.0, help="seconds to wait for /ready")
    parser.add_argument("--request-timeout", type=float, default=120.0, help="seconds per request")
    parser.add_argument("--work", default=None, help="folder for the corpus, index, data and logs (default: a temp dir)")
    parser.add_argument("--json", default=None, help="write the results here (atomically)")
    parser.add_argument("--markdown", default=None, help="also write the table here")
    parser.add_argument("--skip-baseline", action="store_true", help="no `metric-sim query` processes")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 48 requests per level, 100-text index, 2 query processes")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.corpus_size, args.add, args.query_processes = 48, 100, 8, 2
    for name in ("requests", "corpus_size", "max_batch", "threads"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if min(args.concurrency) <= 0:
        parser.error(f"--concurrency values must be positive, got {args.concurrency}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for name in ("data-batching", "data-no-batching"):
            if (work / name).exists():
                raise SystemExit(f"{work / name} exists from an earlier run: remove it or pick another --work")
        results: dict[str, Any] = {
            "environment": environment(),
            "settings": {k: v for k, v in vars(args).items() if k not in ("json", "markdown", "work")},
            "serve": {},
        }
        index = build_index(args.model, work, args.corpus_size, args.threads)
        for batching in (True, False):
            results["serve"]["batching" if batching else "no-batching"] = serve_rows(args, index, work, batching)
        if not args.skip_baseline and args.query_processes > 0:
            results["query_process"] = query_baseline(args, index)
        results["goal"] = goal(results)
    markdown = table(results)
    print()
    print(markdown)
    for mode, mode_results in results["serve"].items():
        found = mode_results.get("batch_metrics", {})
        items, batches = found.get("metric_sim_batch_items_sum"), found.get("metric_sim_batch_items_count")
        if items and batches:
            print(f"{mode}: {batches:.0f} encoder batches, {items / batches:.2f} items each on average")
    verdict = results["goal"]
    if verdict["met"] is None:
        print(f"\ngoal: not checked ({verdict['reason']})")
    else:
        print(f"\ngoal: micro-batching gives {verdict['ratio']}x the embed throughput of one request per batch at "
              f"concurrency {GOAL_CONCURRENCY} (needs >= {GOAL_RATIO}x): {'MET' if verdict['met'] else 'NOT MET'}")
    write_outputs(args.json, results, args.markdown, markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
