"""Prometheus text exposition, written by hand (no client library): counters, gauges and histograms.

:class:`ServerMetrics` holds what ``GET /metrics`` shows: requests by route, method and
status; errors by type; request latency by route; encoder batch sizes (items and requests
per batch) and batch encode time; index size and log records since the last snapshot.
Thread-safe: the encoder thread and the event loop both record.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Sequence

__all__ = ["Histogram", "ServerMetrics"]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Histogram:
    """Cumulative buckets, sum and count per label tuple."""

    def __init__(self, name: str, help_text: str, buckets: Iterable[float], label_names: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help_text
        self.buckets = tuple(sorted(buckets))
        self.label_names = tuple(label_names)
        self._series: dict[tuple[str, ...], list[float]] = {}  # counts per bucket + [+Inf count, sum]

    def observe(self, value: float, labels: Sequence[str] = ()) -> None:
        series = self._series.setdefault(tuple(labels), [0.0] * (len(self.buckets) + 2))
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                series[i] += 1
        series[-2] += 1
        series[-1] += value

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for labels, series in sorted(self._series.items()):
            for bound, count in zip(self.buckets, series, strict=False):
                le = f'le="{_number(bound)}"'
                lines.append(f"{self.name}_bucket{_labels(self.label_names, labels, le)} {_number(count)}")
            inf = _labels(self.label_names, labels, 'le="+Inf"')
            lines.append(f"{self.name}_bucket{inf} {_number(series[-2])}")
            lines.append(f"{self.name}_sum{_labels(self.label_names, labels)} {_number(series[-1])}")
            lines.append(f"{self.name}_count{_labels(self.label_names, labels)} {_number(series[-2])}")
        return lines


class ServerMetrics:
    """Everything ``/metrics`` reports; ``gauges`` are read when rendering (index size, ...)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, str], float] = {}
        self._errors: dict[str, float] = {}
        self._snapshots = 0.0
        self.latency = Histogram("metric_sim_request_duration_seconds", "Request latency by route.",
                                 LATENCY_BUCKETS, ("route",))
        self.batch_items = Histogram("metric_sim_batch_items", "Items per encoder batch.", SIZE_BUCKETS)
        self.batch_requests = Histogram("metric_sim_batch_requests", "Requests per encoder batch.", SIZE_BUCKETS)
        self.encode_seconds = Histogram("metric_sim_encode_duration_seconds", "Encoder time per batch.",
                                        LATENCY_BUCKETS)
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        with self._lock:
            key = (route, method, str(status))
            self._requests[key] = self._requests.get(key, 0.0) + 1
            self.latency.observe(seconds, (route,))

    def observe_error(self, kind: str) -> None:
        with self._lock:
            self._errors[kind] = self._errors.get(kind, 0.0) + 1

    def observe_batch(self, n_items: int, n_requests: int, seconds: float) -> None:
        with self._lock:
            self.batch_items.observe(n_items)
            self.batch_requests.observe(n_requests)
            self.encode_seconds.observe(seconds)

    def observe_snapshot(self) -> None:
        with self._lock:
            self._snapshots += 1

    def render(self) -> str:
        """The text exposition format (version 0.0.4)."""
        with self._lock:
            lines = ["# HELP metric_sim_requests_total HTTP requests by route, method and status.",
                     "# TYPE metric_sim_requests_total counter"]
            for (route, method, status), count in sorted(self._requests.items()):
                labels = _labels(("route", "method", "status"), (route, method, status))
                lines.append(f"metric_sim_requests_total{labels} {_number(count)}")
            lines += ["# HELP metric_sim_errors_total Error answers by error type.",
                      "# TYPE metric_sim_errors_total counter"]
            for kind, count in sorted(self._errors.items()):
                lines.append(f"metric_sim_errors_total{_labels(('type',), (kind,))} {_number(count)}")
            lines += ["# HELP metric_sim_snapshots_total Index snapshots written.",
                      "# TYPE metric_sim_snapshots_total counter", f"metric_sim_snapshots_total {_number(self._snapshots)}"]
            for histogram in (self.latency, self.batch_items, self.batch_requests, self.encode_seconds):
                lines += histogram.render()
            gauges = dict(self.gauges)
        for name, (help_text, read) in sorted(gauges.items()):
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {_number(read())}"]
        return "\n".join(lines) + "\n"
