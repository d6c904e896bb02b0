"""Which FAISS indexes ``NeighborIndex`` builds: the kinds, their parameters and what is refused.

Three kinds store exact vectors in FAISS: ``flat`` (exact search), ``hnsw`` and ``ivf``
(approximate candidate search). A FAISS factory string naming one of them is accepted
too. Two kinds keep only compressed codes in memory: ``ivfpq`` and ``opq-ivfpq``
(:mod:`.compressed`). Their codes only propose candidates, always under L2; the returned
distances are recomputed from the full vectors kept on disk, in the index's own metric.
Lossy codes in a factory string (PQ, SQ, fast-scan, LSH, ...) are refused before FAISS
sees the string, since nothing would re-rank them:
with ``METRIC_L1`` FAISS mishandles them (PQ silently returns wrong neighbours,
SQ/fast-scan/LSH fail, ``HNSW,SQ8`` aborts the process), and with L2 they give
approximate distances that the calibrator would turn into wrong probabilities.

No FAISS import here: parsing a kind must stay cheap and must never reach FAISS.
"""

from __future__ import annotations

import re
from typing import Any

from metric_sim.distances import Metric
from metric_sim.errors import IndexConfigError
from metric_sim.validation import require_positive_int

__all__ = [
    "COMPRESSED_KINDS",
    "DEFAULT_PARAMS",
    "INDEX_KINDS",
    "SEARCH_TIME_PARAMS",
    "check_search_params",
    "parse_index_kind",
    "resolve_params",
]

INDEX_KINDS = ("flat", "hnsw", "ivf", "ivfpq", "opq-ivfpq")
COMPRESSED_KINDS = ("ivfpq", "opq-ivfpq")  # codes in memory, full vectors on disk
# Defaults chosen for recall@10 >= 0.95 against flat on 42k QQP questions embedded by
# all-MiniLM-L6-v2, both metrics (benchmarks/index_speed.py: hnsw 0.997, ivf ~0.96).
# None = chosen from the data: nlist about 4 * sqrt(n) with >= 39 training points per list
# (FAISS' minimum); nprobe max(16, nlist / 10), since ~8 % of lists are needed for 0.95.
DEFAULT_PARAMS: dict[str, dict[str, int | None]] = {
    "flat": {},
    "hnsw": {"M": 32, "efConstruction": 200, "efSearch": 64},
    "ivf": {"nlist": None, "nprobe": None},
    # m None = the largest divisor of dim up to dim / nbits; rerank None = 10 * k candidates per query.
    # nbits 4 = FAISS fast-scan codes: at 1M items 4x the batch queries/s of 8-bit codes of the
    # same size, at equal recall (benchmarks/RESULTS.md, "Speed work").
    "ivfpq": {"nlist": None, "m": None, "nbits": 4, "nprobe": None, "rerank": None},
    "opq-ivfpq": {"nlist": None, "m": None, "nbits": 4, "nprobe": None, "rerank": None},
}
SEARCH_TIME_PARAMS = ("efSearch", "nprobe", "rerank")

_SUPPORTED_FACTORY = (
    "Flat, HNSW<M>, HNSW<M>,Flat, IVF<nlist>,Flat (optionally prefixed by IDMap, / IDMap2,)"
)
# Known FAISS failures with METRIC_L1, most specific first (checked before FAISS sees the string).
_L1_FAILURES: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(r"HNSW\d*(_\w+)?,.*SQ", re.I),
        "aborts the whole process (HNSW over SQ codes has no L1 path)",
    ),
    (
        re.compile(r"(PQ\d+x\d+fs|fs\b|fastscan)", re.I),
        "raises an error: fast-scan kernels only support L2 and inner product",
    ),
    (
        re.compile(r"PQ|RQ|LSQ|RaBitQ", re.I),
        "returns wrong neighbours WITHOUT an error: product/additive quantizer distance tables ignore METRIC_L1",
    ),
    (re.compile(r"SQ", re.I), "raises an error: the scalar quantizer has no L1 distance"),
    (
        re.compile(r"LSH|ITQ", re.I),
        "raises an error: LSH encodes binary codes compared by Hamming distance",
    ),
)
_LOSSY = re.compile(r"PQ|SQ|RQ|LSQ|RaBitQ|LSH|ITQ|fs\b|PCA|OPQ|Residual|RR\d|Pad", re.I)
_FACTORY_PATTERNS: tuple[tuple[re.Pattern[str], str, str | None], ...] = (
    (re.compile(r"(?:IDMap2?,)?Flat"), "flat", None),
    (re.compile(r"(?:IDMap2?,)?HNSW(\d+)(?:,Flat)?"), "hnsw", "M"),
    (re.compile(r"(?:IDMap2?,)?IVF(\d+),Flat"), "ivf", "nlist"),
)


def parse_index_kind(kind: str, metric: Metric | str) -> tuple[str, dict[str, int]]:
    """``kind`` (one of :data:`INDEX_KINDS` or a FAISS factory string) -> (kind, params it fixes).

    Refuses, before FAISS sees it, any combination FAISS mishandles with ``METRIC_L1``
    and any lossy encoding (see the module docstring), naming the combination.
    """
    metric = Metric.parse(metric)
    if not isinstance(kind, str) or not kind.strip():
        raise IndexConfigError(
            f"kind must be one of {list(INDEX_KINDS)} or a FAISS factory string, got {kind!r}"
        )
    spec = kind.strip()
    if spec.lower() in INDEX_KINDS:
        return spec.lower(), {}
    compact = re.sub(r"\s+", "", spec)
    if metric is Metric.MANHATTAN:
        for pattern, failure in _L1_FAILURES:
            if pattern.search(compact):
                raise IndexConfigError(
                    f"index {spec!r} with metric 'manhattan' (faiss.METRIC_L1) is refused: FAISS {failure}. "
                    f"METRIC_L1 works on IndexFlat, IndexHNSWFlat and IndexIVFFlat only: use kind 'flat', "
                    f"'hnsw' or 'ivf' (factory strings {_SUPPORTED_FACTORY}), or 'ivfpq' / 'opq-ivfpq' "
                    "(L2 codes propose candidates, re-ranked exactly in L1 from the full vectors)"
                )
    if _LOSSY.search(compact):
        raise IndexConfigError(
            f"index {spec!r} with metric {metric.value!r} is refused: it stores lossy codes, so FAISS would "
            "return approximate distances and the calibrator would turn them into wrong probabilities. "
            f"NeighborIndex stores exact vectors: use kind 'flat', 'hnsw' or 'ivf' (factory strings {_SUPPORTED_FACTORY}), "
            "or 'ivfpq' / 'opq-ivfpq' for compressed codes re-ranked exactly from the full vectors"
        )
    for pattern, name, param in _FACTORY_PATTERNS:
        match = pattern.fullmatch(compact)
        if match:
            return name, (
                {param: require_positive_int(param, int(match.group(1)))} if param else {}
            )
    raise IndexConfigError(
        f"unknown index kind {spec!r}: use one of {list(INDEX_KINDS)} or a FAISS factory string "
        f"of the form {_SUPPORTED_FACTORY}"
    )


def resolve_params(kind: str, fixed: dict[str, int], given: dict[str, Any]) -> dict[str, int | None]:
    """The parameters of ``kind``: its defaults, then those the kind string fixes, then ``given``."""
    allowed = DEFAULT_PARAMS[kind]
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise IndexConfigError(
            f"unknown parameter(s) {unknown} for kind {kind!r}; valid: {sorted(allowed) or 'none'}"
        )
    twice = sorted(k for k in fixed if k in given and given[k] is not None and given[k] != fixed[k])
    if twice:
        raise IndexConfigError(
            f"{twice[0]} is given twice with different values: {fixed[twice[0]]} in the kind string and {given[twice[0]]} as a parameter"
        )
    params: dict[str, int | None] = dict(allowed)
    params.update(fixed)
    for name, value in given.items():
        if value is not None:
            params[name] = require_positive_int(name, value)
    return params


def check_search_params(kind: str, params: dict[str, Any]) -> dict[str, int]:
    """``params`` checked as search-time parameters of ``kind`` (``efSearch`` for hnsw, ``nprobe`` for
    ivf, ``nprobe`` and ``rerank`` for the compressed kinds)."""
    allowed = [p for p in SEARCH_TIME_PARAMS if p in DEFAULT_PARAMS[kind]]
    checked = {}
    for name, value in params.items():
        if name not in allowed:
            raise IndexConfigError(
                f"{name!r} is not a search-time parameter of kind {kind!r}; valid: {allowed or 'none'}"
            )
        checked[name] = require_positive_int(name, value)
    return checked
