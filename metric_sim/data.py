"""Load, validate, cluster and split labelled text pairs.

Everything downstream (training, calibration, the index) consumes a
:class:`PairDataset`: six columns on top of a ``datasets.Dataset``
(``text_a``, ``text_b``, ``label`` 0/1, ``id_a``, ``id_b``, ``pair_id``) plus a
:class:`LoadReport` that says what was read, kept and rejected.

Locations in messages
---------------------
Every :class:`DataError` names the source and, when known, where the problem is:

* delimited text and JSON Lines: the 1-based *physical line* on which the record
  **starts** (the header is line 1). A quoted field may span several lines; the
  message then also gives the range. Blank lines are skipped but still counted,
  so the number always matches what an editor shows.
* parquet, saved/in-memory ``datasets.Dataset``: the 1-based *row*.

When no ``pair_id`` column is given, the default pair id is that same start line
for files read line by line, and the 0-based row index for tables (parquet,
``datasets``), so ``pair_id`` can be used to index back into the source.
"""

from __future__ import annotations

import codecs
import copy
import csv
import gzip
import hashlib
import json
import math
import os
import re
import sys
import warnings
import zlib
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from metric_sim._validation import (
    require_choice,
    require_non_negative_int,
    require_positive_float,
    require_positive_int,
)

__all__ = [
    "BAD_ROW_KINDS",
    "CORPUS_FORMATS",
    "FORMATS",
    "PRESETS",
    "Corpus",
    "DataError",
    "LoadReport",
    "PairDataset",
    "Preset",
    "UnionFind",
    "default_data_dir",
    "list_presets",
    "load_corpus",
    "load_pairs",
    "load_preset",
    "text_id",
]

BAD_ROW_KINDS = ("malformed", "bad_label", "empty_text")
ON_BAD_ROW = ("error", "skip")
QUOTING = ("csv", "none")
FORMATS = ("tsv", "csv", "jsonl", "parquet", "hf")
MAX_BAD_ROW_EXAMPLES = 20
COLUMNS = ("text_a", "text_b", "label", "id_a", "id_b", "pair_id")

_SUFFIX_FORMATS = {
    ".tsv": "tsv",
    ".txt": "tsv",
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_FEATURES = datasets.Features(
    {
        "text_a": datasets.Value("string"),
        "text_b": datasets.Value("string"),
        "label": datasets.Value("int64"),
        "id_a": datasets.Value("string"),
        "id_b": datasets.Value("string"),
        "pair_id": datasets.Value("string"),
    }
)
_GZIP_MAGIC = b"\x1f\x8b"
# Big enough for any real text field; the csv default (128 KiB) rejects long documents.
_FIELD_SIZE_LIMIT = 2**31 - 1


# --------------------------------------------------------------------------- errors / report


class DataError(ValueError):
    """Bad input file or row.

    ``str()`` reads ``"data.tsv, line 17, column 'label': label must be 0 or 1, got '2'"``:
    the source, the 1-based line (``unit="row"`` for parquet / ``datasets`` rows) and the
    column when known. ``kind`` is one of :data:`BAD_ROW_KINDS` for row-level problems.
    """

    def __init__(
        self,
        message: str,
        *,
        source: str | os.PathLike | None = None,
        line: int | None = None,
        column: str | int | None = None,
        unit: str = "line",
        kind: str | None = None,
    ) -> None:
        self.message = message
        self.source = None if source is None else str(source)
        self.line = line
        self.column = column
        self.unit = unit
        self.kind = kind
        super().__init__(self._format())

    def _format(self) -> str:
        parts = []
        if self.source is not None:
            parts.append(self.source)
        if self.line is not None:
            parts.append(f"{self.unit} {self.line}")
        if self.column is not None:
            parts.append(f"column {self.column!r}")
        prefix = ", ".join(parts)
        return f"{prefix}: {self.message}" if prefix else self.message

    def __str__(self) -> str:
        return self._format()

    def __reduce__(self):  # keep the keyword-only attributes through pickling (multiprocessing)
        return (self.__class__, (self.message,), dict(self.__dict__))


@dataclass
class LoadReport:
    """What a load saw: rows read, kept, rejected (by kind, with examples) and counted oddities.

    ``rows_read == pairs + sum(bad_rows.values()) + middle_band`` always holds for a fresh load.
    """

    source: str
    rows_read: int = 0
    pairs: int = 0
    bad_rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(BAD_ROW_KINDS, 0))
    bad_row_examples: list[dict] = field(default_factory=list)
    self_pairs: int = 0
    duplicate_pairs: int = 0
    middle_band: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- ids and clusters


def text_id(text: str) -> str:
    """Stable id of a text: ``"h" + sha1(utf-8 text)[:16]``; identical texts share an id."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__} {text!r}")
    # surrogatepass: JSON can carry lone surrogates; they must still hash, not crash.
    return "h" + hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


class UnionFind:
    """Disjoint sets over hashable keys (path compression + union by size).

    ``union`` adds unknown keys; ``find`` raises ``KeyError`` for a key never added, so a
    typo cannot silently become a new singleton. Iteration and ``groups()`` follow
    insertion order, which keeps everything built on top deterministic.
    """

    def __init__(self, items: Iterator[Hashable] | Sequence[Hashable] = ()) -> None:
        self._parent: dict[Hashable, Hashable] = {}
        self._size: dict[Hashable, int] = {}
        for item in items:
            self.add(item)

    def add(self, x: Hashable) -> None:
        if x not in self._parent:
            self._parent[x] = x
            self._size[x] = 1

    def find(self, x: Hashable) -> Hashable:
        parent = self._parent
        if x not in parent:
            raise KeyError(f"{x!r} was never added to this UnionFind")
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:  # path compression, iterative (no recursion limit)
            parent[x], x = root, parent[x]
        return root

    def union(self, a: Hashable, b: Hashable) -> Hashable:
        """Join the sets of ``a`` and ``b`` (adding them if new); return the new root."""
        self.add(a)
        self.add(b)
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if self._size[ra] < self._size[rb]:  # the larger tree keeps its root; ties keep a's
            ra, rb = rb, ra
        self._parent[rb] = ra
        self._size[ra] += self._size.pop(rb)
        return ra

    def connected(self, a: Hashable, b: Hashable) -> bool:
        return self.find(a) == self.find(b)

    def groups(self) -> dict[Hashable, list]:
        """Root -> members, both in order of first insertion."""
        out: dict[Hashable, list] = {}
        for x in self._parent:
            out.setdefault(self.find(x), []).append(x)
        return out

    def __contains__(self, x: object) -> bool:
        return x in self._parent

    def __len__(self) -> int:
        return len(self._parent)

    def __iter__(self):
        return iter(self._parent)


# --------------------------------------------------------------------------- PairDataset


class PairDataset:
    """Validated labelled pairs on top of a ``datasets.Dataset``.

    Columns: ``text_a`` (str), ``text_b`` (str), ``label`` (int 0/1), ``id_a``, ``id_b``,
    ``pair_id`` (str). Treat ``dataset`` as read-only: column lists and clusters are cached.
    """

    def __init__(self, dataset: datasets.Dataset, report: LoadReport | None = None) -> None:
        if not isinstance(dataset, datasets.Dataset):
            raise TypeError(f"dataset must be a datasets.Dataset, got {type(dataset).__name__}")
        missing = [c for c in COLUMNS if c not in dataset.column_names]
        if missing:
            raise ValueError(
                f"dataset is missing columns {missing}; need {list(COLUMNS)}, got {dataset.column_names}"
            )
        self._dataset = dataset
        self._cache: dict[str, list] | None = None
        self._clusters: dict[str, int] | None = None
        labels = self._column("label")
        bad = [v for v in labels if v not in (0, 1)]
        if bad:
            raise ValueError(f"label column must hold 0/1, got {bad[:5]}")
        if report is None:
            report = LoadReport(source="<in-memory>", rows_read=len(labels), pairs=len(labels))
        self.report = report

    # -- columns
    @property
    def dataset(self) -> datasets.Dataset:
        return self._dataset

    def _column(self, name: str) -> list:
        if self._cache is None:
            # One slice for all columns: iterating a datasets Column is ~5x slower.
            self._cache = self._dataset.with_format(None).select_columns(list(COLUMNS))[:]
        return self._cache[name]

    def __len__(self) -> int:
        return self._dataset.num_rows

    def __repr__(self) -> str:
        return f"PairDataset(pairs={len(self)}, source={self.report.source!r})"

    @property
    def texts_a(self) -> list[str]:
        return list(self._column("text_a"))

    @property
    def texts_b(self) -> list[str]:
        return list(self._column("text_b"))

    @property
    def labels(self) -> np.ndarray:
        return np.asarray(self._column("label"), dtype=np.int64)

    @property
    def ids_a(self) -> list[str]:
        return list(self._column("id_a"))

    @property
    def ids_b(self) -> list[str]:
        return list(self._column("id_b"))

    @property
    def pair_ids(self) -> list[str]:
        return list(self._column("pair_id"))

    # -- texts and clusters
    def unique_texts(self) -> tuple[list[str], list[str]]:
        """``(ids, texts)`` of distinct text ids in order of first appearance (a then b, row by row)."""
        seen: dict[str, str] = {}
        for ia, ta, ib, tb in zip(
            self._column("id_a"),
            self._column("text_a"),
            self._column("id_b"),
            self._column("text_b"),
            strict=True,
        ):
            seen.setdefault(ia, ta)
            seen.setdefault(ib, tb)
        return list(seen), list(seen.values())

    def cluster_labels(self) -> dict[str, int]:
        """Text id -> cluster id from union-find over *positive* pairs only.

        Every text gets a cluster (singletons their own). Ids are ``0..n_clusters-1``,
        numbered in order of each cluster's first appearance, so they are deterministic.
        """
        if self._clusters is None:
            ids, _ = self.unique_texts()
            uf = UnionFind(ids)
            for ia, ib, label in zip(
                self._column("id_a"), self._column("id_b"), self._column("label"), strict=True
            ):
                if label == 1:
                    uf.union(ia, ib)
            root_to_cluster: dict[Hashable, int] = {}
            clusters = {}
            for i in ids:
                clusters[i] = root_to_cluster.setdefault(uf.find(i), len(root_to_cluster))
            self._clusters = clusters
        return dict(self._clusters)

    def pair_cluster_labels(self) -> tuple[np.ndarray, np.ndarray]:
        """Cluster id of ``text_a`` and of ``text_b`` for every pair (int64 arrays)."""
        clusters = self.cluster_labels()
        a = np.fromiter(
            (clusters[i] for i in self._column("id_a")), dtype=np.int64, count=len(self)
        )
        b = np.fromiter(
            (clusters[i] for i in self._column("id_b")), dtype=np.int64, count=len(self)
        )
        return a, b

    # -- subsets
    def select(self, indices: Sequence[int] | np.ndarray) -> PairDataset:
        """The pairs at ``indices`` (in that order); the report is copied along."""
        idx = np.asarray(indices)
        if idx.size == 0:
            idx = idx.astype(np.int64)
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
            raise TypeError(
                f"indices must be a 1-D sequence of integers, got dtype {idx.dtype} shape {idx.shape}"
            )
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(
                f"indices must be in [0, {len(self)}), got min {idx.min()} max {idx.max()}"
            )
        return PairDataset(self._dataset.select(idx.tolist()), report=copy.deepcopy(self.report))

    def summary(self) -> dict:
        labels = self.labels
        sizes: dict[int, int] = {}
        for c in self.cluster_labels().values():
            sizes[c] = sizes.get(c, 0) + 1
        return {
            "source": self.report.source,
            "pairs": len(self),
            "positives": int(labels.sum()),
            "negatives": int(len(labels) - labels.sum()),
            "rows_read": self.report.rows_read,
            "bad_rows": dict(self.report.bad_rows),
            "unique_texts": sum(sizes.values()),
            "clusters": sum(1 for s in sizes.values() if s >= 2),
            "singletons": sum(1 for s in sizes.values() if s == 1),
            "largest_cluster": max(sizes.values(), default=0),
            "self_pairs": self.report.self_pairs,
            "duplicate_pairs": self.report.duplicate_pairs,
            "middle_band": self.report.middle_band,
        }

    def group_split(
        self, fractions: Mapping[str, float] | None = None, seed: int = 0
    ) -> dict[str, PairDataset]:
        """Leakage-free split: no text ends up in two splits.

        Texts are joined into connected components over *all* pairs (positive and
        negative), and ids that carry the exact same text are joined too (QQP has
        identical questions under different qids). Components are shuffled with
        ``seed`` and each goes whole to the split that is least full relative to its
        target, so split sizes (in pairs) approach ``fractions`` (default 0.7/0.15/0.15).
        Rows keep their original order inside each split.
        """
        fractions = _validate_fractions(
            {"train": 0.7, "dev": 0.15, "test": 0.15} if fractions is None else fractions
        )
        seed = require_non_negative_int("seed", seed)
        ids_a, ids_b = self._column("id_a"), self._column("id_b")
        uf = UnionFind()
        for ia, ib in zip(ids_a, ids_b, strict=True):
            uf.union(ia, ib)
        first_id_of_text: dict[str, str] = {}
        for i, text in zip(*self.unique_texts(), strict=True):
            uf.union(first_id_of_text.setdefault(text, i), i)

        components: dict[Hashable, list[int]] = {}  # insertion-ordered -> deterministic
        for row, ia in enumerate(ids_a):
            components.setdefault(uf.find(ia), []).append(row)
        comps = list(components.values())

        names = list(fractions)
        targets = np.array([fractions[n] * len(self) for n in names], dtype=np.float64)
        filled = np.zeros(len(names), dtype=np.float64)
        chosen: list[list[int]] = [[] for _ in names]
        for c in np.random.default_rng(seed).permutation(len(comps)):
            rows = comps[c]
            k = int(np.argmin(filled / targets))  # ignores the size: no big-component bias
            filled[k] += len(rows)
            chosen[k].extend(rows)
        return {name: self.select(sorted(rows)) for name, rows in zip(names, chosen, strict=True)}

    def split_from_file(
        self,
        path: str | os.PathLike,
        split: str,
        *,
        id_column: str = "id",
        split_column: str = "split",
    ) -> PairDataset:
        """Pairs whose ``pair_id`` the file assigns to ``split``.

        The file is delimited text with a header (tab, or comma for ``.csv``). Every
        pair of this dataset must be listed: a missing one raises instead of being
        silently dropped. Ids in the file that are not in the dataset are fine.
        """
        assignment = _read_split_file(Path(path), id_column=id_column, split_column=split_column)
        names = list(dict.fromkeys(assignment.values()))
        if split not in names:
            raise DataError(
                f"split must be one of {names} (the split names in this file), got {split!r}",
                source=path,
            )
        pair_ids = self._column("pair_id")
        missing = [p for p in pair_ids if p not in assignment]
        if missing:
            raise DataError(
                f"{len(missing)} of {len(pair_ids)} pairs have no entry in the split file, "
                f"e.g. pair ids {missing[:5]}",
                source=path,
            )
        return self.select([i for i, p in enumerate(pair_ids) if assignment[p] == split])


def _validate_fractions(fractions: Mapping[str, float]) -> dict[str, float]:
    if not isinstance(fractions, Mapping) or not fractions:
        raise TypeError(
            f"fractions must be a non-empty mapping of split name -> fraction, got {fractions!r}"
        )
    out = {}
    for name, value in fractions.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"split names must be non-empty strings, got {name!r}")
        out[name] = require_positive_float(f"fractions[{name!r}]", value)
    total = sum(out.values())
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"fractions must sum to 1, got {total!r} from {out}")
    return out


def _read_split_file(path: Path, *, id_column: str, split_column: str) -> dict[str, str]:
    if not path.is_file():
        raise FileNotFoundError(f"split file not found: {path}")
    delimiter = "," if _strip_gz(path).suffix.lower() == ".csv" else "\t"
    header: list[str] | None = None
    assignment: dict[str, str] = {}
    where: dict[str, int] = {}
    rows = _csv_rows(path, source=str(path), delimiter=delimiter, quoting="csv", encoding="utf-8")
    for line, _, row, _ in rows:
        if row is None:
            raise DataError("line cannot be parsed", source=path, line=line)
        if not row:
            continue
        if header is None:
            header = row
            missing = [c for c in (id_column, split_column) if c not in header]
            if missing:
                raise DataError(
                    f"missing column(s) {missing}; columns found: {header}", source=path, line=line
                )
            i_id, i_split = header.index(id_column), header.index(split_column)
            continue
        if len(row) != len(header):
            raise DataError(
                f"expected {len(header)} fields, got {len(row)}", source=path, line=line
            )
        key, name = row[i_id], row[i_split]
        if not key or not name:
            raise DataError("empty id or split name", source=path, line=line)
        if key in assignment and assignment[key] != name:
            raise DataError(
                f"id {key!r} is assigned to {assignment[key]!r} on line {where[key]} and to {name!r} here",
                source=path,
                line=line,
            )
        assignment[key] = name
        where.setdefault(key, line)
    if not assignment:
        raise DataError("split file has no data rows", source=path)
    return assignment


# --------------------------------------------------------------------------- reading sources


@dataclass
class _Record:
    loc: int  # start line (text files) or 1-based row (tables)
    values: dict[str, Any] | None  # role -> raw value; None when the record is malformed
    default_pair_id: str
    error: str | None = None
    column: str | int | None = None
    fields: list[str] | None = None  # raw fields of a malformed delimited row (for known quirks)


class _RowProblem(Exception):
    def __init__(self, kind: str, column: str | int | None, message: str) -> None:
        super().__init__(message)
        self.kind, self.column, self.message = kind, column, message


def _strip_gz(path: Path) -> Path:
    return path.with_suffix("") if path.suffix.lower() == ".gz" else path


def _is_gzip(path: Path) -> bool:
    if path.suffix.lower() == ".gz":
        return True
    with open(path, "rb") as fh:  # also catch gzip data under a plain name
        return fh.read(2) == _GZIP_MAGIC


class _LineState:
    def __init__(self) -> None:
        self.line = 0
        self.unterminated = False  # the last physical line read had no newline (truncated?)


def _iter_lines(path: Path, source: str, encoding: str, state: _LineState) -> Iterator[str]:
    """Decoded physical lines (line ends kept), decoding each line on its own.

    Decoding per line is what lets a bad byte be reported with its line number;
    feeding these lines to ``csv.reader`` makes ``reader.line_num`` a physical line count.
    A leading BOM is dropped whatever the encoding (Windows editors add one).
    """
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    try:
        opener = gzip.open if _is_gzip(path) else open
        with opener(path, "rb") as fh:
            for raw in fh:
                state.line += 1
                try:
                    text = decoder.decode(raw)
                except UnicodeDecodeError as exc:
                    bad = raw[exc.start : exc.start + 1]
                    raise DataError(
                        f"bytes are not valid {encoding}: {bad!r} at byte {exc.start + 1} of the line",
                        source=source,
                        line=state.line,
                    ) from None
                if state.line == 1 and text.startswith("\ufeff"):
                    text = text[1:]
                state.unterminated = not text.endswith(("\n", "\r"))
                yield text
            try:
                decoder.decode(b"", final=True)
            except UnicodeDecodeError:
                raise DataError(
                    f"file ends inside a multi-byte {encoding} character (truncated?)",
                    source=source,
                    line=state.line,
                ) from None
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(
            f"compressed stream is truncated or corrupt after line {state.line} ({type(exc).__name__}: {exc})",
            source=source,
            line=state.line + 1 if state.line else None,
        ) from None


def _csv_rows(
    path: Path, *, source: str, delimiter: str, quoting: str, encoding: str
) -> Iterator[tuple[int, int, list[str] | None, bool]]:
    """``(start_line, end_line, row, unterminated)`` per csv record.

    ``row`` is ``[]`` for a blank line and ``None`` for a record the csv module cannot
    parse (a bare ``\\r`` in an unquoted field); ``unterminated`` is true when the record
    ends on a last line without a newline (a file cut short).
    """
    csv.field_size_limit(_FIELD_SIZE_LIMIT)
    state = _LineState()
    mode = csv.QUOTE_MINIMAL if quoting == "csv" else csv.QUOTE_NONE
    reader = csv.reader(
        _iter_lines(path, source, encoding, state), delimiter=delimiter, quoting=mode, strict=False
    )
    end = 0
    while True:
        try:
            row: list[str] | None = next(reader)
        except StopIteration:
            return
        except csv.Error:  # the reader resets at the next record, so carry on
            row = None
        start, end = end + 1, reader.line_num
        yield start, end, row, state.unterminated


def _resolve_column(spec: str | int, names: list[str] | None, n_fields: int, *, source: str) -> int:
    """Column spec -> 0-based index, or a DataError listing the columns found."""
    if isinstance(spec, bool) or not isinstance(spec, (str, int, np.integer)):
        raise TypeError(f"columns must be names (str) or 0-based indices (int), got {spec!r}")
    if isinstance(spec, str):
        if names is None:
            raise ValueError(
                f"with header=False columns must be 0-based integer indices, got {spec!r}"
            )
        if spec not in names:
            raise DataError(
                f"missing column {spec!r}; columns found: {names}", source=source, column=spec
            )
        return names.index(spec)
    spec = int(spec)
    if spec < 0 or spec >= n_fields:
        found = names if names is not None else f"{n_fields} unnamed fields (0..{n_fields - 1})"
        raise DataError(
            f"column index {spec} out of range; columns found: {found}", source=source, column=spec
        )
    return spec


def _iter_delimited(
    path: Path,
    source: str,
    roles: dict[str, str | int],
    *,
    delimiter: str,
    quoting: str,
    encoding: str,
    header: bool,
    n_fields: int | None,
    allow_extra_fields: bool,
) -> Iterator[_Record]:
    names: list[str] | None = None
    index: dict[str, int] | None = None
    expected = n_fields
    for start, end, row, unterminated in _csv_rows(
        path, source=source, delimiter=delimiter, quoting=quoting, encoding=encoding
    ):
        if row is not None and not row:
            continue  # blank line
        span = f" (record spans lines {start}-{end}; unbalanced quote?)" if end > start else ""
        if header and names is None:
            if row is None:
                raise DataError("header line cannot be parsed", source=source, line=start)
            names = list(row)
            expected = expected or len(names)
            index = {
                r: _resolve_column(c, names, expected, source=source) for r, c in roles.items()
            }
            continue
        if row is None:
            yield _Record(
                start,
                None,
                str(start),
                error=f"line cannot be parsed as {delimiter!r}-delimited text",
            )
            continue
        if expected is None:
            expected = len(row)  # header=False: the first row fixes the field count
        if index is None:
            index = {r: _resolve_column(c, None, expected, source=source) for r, c in roles.items()}
        if len(row) != expected and not (allow_extra_fields and len(row) > expected):
            tail = (
                " - the file ends here without a newline, so it looks truncated"
                if unterminated
                else ""
            )
            yield _Record(
                start,
                None,
                str(start),
                error=f"expected {expected} fields, got {len(row)}{span}{tail}",
                fields=row,
            )
            continue
        yield _Record(start, {r: row[i] for r, i in index.items()}, str(start))


def _iter_jsonl(
    path: Path, source: str, roles: dict[str, str | int], *, encoding: str
) -> Iterator[_Record]:
    for r, c in roles.items():
        if not isinstance(c, str):
            raise ValueError(f"jsonl columns must be key names, got {r}={c!r}")
    state = _LineState()
    checked = False
    for text in _iter_lines(path, source, encoding, state):
        line = state.line
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            tail = (
                " (the file ends here without a newline, so it looks truncated)"
                if state.unterminated
                else ""
            )
            yield _Record(
                line, None, str(line), error=f"invalid JSON: {exc.msg} at column {exc.colno}{tail}"
            )
            continue
        if not isinstance(obj, dict):
            yield _Record(
                line, None, str(line), error=f"expected a JSON object, got {type(obj).__name__}"
            )
            continue
        if not checked:  # the first object defines which columns exist
            for c in roles.values():
                if c not in obj:
                    raise DataError(
                        f"missing column {c!r}; columns found: {list(obj)}",
                        source=source,
                        line=line,
                        column=c,
                    )
            checked = True
        missing = [c for c in roles.values() if c not in obj]
        if missing:
            yield _Record(
                line, None, str(line), error=f"missing key {missing[0]!r}", column=missing[0]
            )
            continue
        yield _Record(line, {r: obj[c] for r, c in roles.items()}, str(line))


def _table_columns(names: list[str], roles: dict[str, str | int], source: str) -> dict[str, str]:
    return {
        r: names[_resolve_column(c, names, len(names), source=source)] for r, c in roles.items()
    }


def _iter_table(columns: dict[str, list], role_names: dict[str, str]) -> Iterator[_Record]:
    n = len(next(iter(columns.values()))) if columns else 0
    for i in range(n):
        yield _Record(i + 1, {r: columns[c][i] for r, c in role_names.items()}, str(i))


def _read_parquet(
    path: Path, source: str, roles: dict[str, str | int]
) -> tuple[dict[str, list], dict[str, str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if _is_gzip(path):
            with gzip.open(path, "rb") as fh:
                target: Any = pa.BufferReader(fh.read())
        else:
            target = str(path)
        pf = pq.ParquetFile(target)
        role_names = _table_columns(list(pf.schema_arrow.names), roles, source)
        table = pf.read(columns=list(dict.fromkeys(role_names.values())))
    except DataError:
        raise
    except (pa.ArrowException, OSError, EOFError, zlib.error) as exc:
        raise DataError(
            f"cannot read parquet ({type(exc).__name__}: {exc})", source=source
        ) from None
    return {c: table.column(c).to_pylist() for c in table.column_names}, role_names


def _dataset_columns(ds: datasets.Dataset, roles: dict[str, str | int], source: str):
    role_names = _table_columns(list(ds.column_names), roles, source)
    cols = list(dict.fromkeys(role_names.values()))
    return ds.with_format(None).select_columns(cols)[:], role_names


def _load_hf_folder(path: Path) -> datasets.Dataset:
    if (path / "dataset_dict.json").is_file():
        splits = sorted(p.name for p in path.iterdir() if p.is_dir())
        raise DataError(
            f"this folder holds a DatasetDict with splits {splits}; pass one split's folder, e.g. {path / splits[0]}"
            if splits
            else "this folder holds an empty DatasetDict",
            source=path,
        )
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:  # datasets raises many types for a damaged folder
        raise DataError(
            f"cannot load saved dataset ({type(exc).__name__}: {exc})", source=path
        ) from None
    if not isinstance(ds, datasets.Dataset):
        raise DataError(f"expected a saved datasets.Dataset, got {type(ds).__name__}", source=path)
    return ds


# --------------------------------------------------------------------------- labels


class _BadLabel(Exception):
    pass


def _parse_binary_label(value: Any) -> int:
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return int(value)
    if isinstance(value, (float, np.floating)) and value in (0.0, 1.0):
        return int(value)
    if isinstance(value, str) and value.strip() in ("0", "1", "0.0", "1.0"):
        return int(float(value))
    raise _BadLabel(f"label must be 0 or 1, got {value!r}")


class _MappedLabel:
    """Only the keys of ``label_map`` are accepted (strict: a typo must not pass as 0/1)."""

    def __init__(self, label_map: Mapping[Any, int]) -> None:
        if not isinstance(label_map, Mapping) or not label_map:
            raise TypeError(f"label_map must be a non-empty dict raw -> 0/1, got {label_map!r}")
        for key, v in label_map.items():
            if isinstance(v, bool) or v not in (0, 1):
                raise ValueError(f"label_map values must be 0 or 1, got {key!r}: {v!r}")
        self.label_map = dict(label_map)

    def __call__(self, value: Any) -> int:
        for key in (value, value.strip() if isinstance(value, str) else value):
            try:
                if key in self.label_map:
                    return int(self.label_map[key])
            except TypeError:  # unhashable raw value (a list from JSON)
                break
        raise _BadLabel(f"label must be one of {list(self.label_map)}, got {value!r}")


class _ScoreLabel:
    """Binarise a similarity score: 1 if >= high, 0 if <= low, None (dropped) in between."""

    def __init__(self, low: float, high: float) -> None:
        for name, v in (("low", low), ("high", high)):
            if (
                isinstance(v, bool)
                or not isinstance(v, (int, float, np.integer, np.floating))
                or not math.isfinite(v)
            ):
                raise ValueError(f"{name} must be a finite number, got {v!r}")
        if not low < high:
            raise ValueError(f"low must be < high, got low={low!r} high={high!r}")
        self.low, self.high = float(low), float(high)

    def __call__(self, value: Any) -> int | None:
        score: float | None = None
        if isinstance(value, str):
            try:
                score = float(value.strip())
            except ValueError:
                score = None
        elif isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
            value, bool
        ):
            score = float(value)
        if score is None or not math.isfinite(score):
            raise _BadLabel(f"score must be a finite number, got {value!r}")
        if score >= self.high:
            return 1
        if score <= self.low:
            return 0
        return None


# --------------------------------------------------------------------------- the loader


def _short(text: Any, n: int = 60) -> str:
    s = str(text)
    return repr(s if len(s) <= n else s[: n - 3] + "...")


def _caller_stacklevel() -> int:
    """``stacklevel`` that points a warning at the first frame outside this module."""
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and frame.f_globals.get("__name__") == __name__:
        frame, level = frame.f_back, level + 1
    return level


def _build(
    records: Iterator[_Record],
    *,
    source: str,
    unit: str,
    roles: dict[str, str | int],
    label_parser: Callable[[Any], int | None],
    on_bad_row: str,
    known_quirk: Callable[[list[str]], bool] | None,
) -> PairDataset:
    report = LoadReport(source=source)
    out: dict[str, list] = {c: [] for c in COLUMNS}
    has_ids = "id_a" in roles
    id_seen: dict[str, tuple[str, int]] = {}  # id -> (text, first location)
    seen_pairs: set[tuple[str, str]] = set()
    quirks = 0

    def reject(
        kind: str, loc: int, column: str | int | None, message: str, *, force_skip: bool = False
    ) -> None:
        if on_bad_row == "error" and not force_skip:
            raise DataError(message, source=source, line=loc, column=column, unit=unit, kind=kind)
        report.bad_rows[kind] += 1
        if len(report.bad_row_examples) < MAX_BAD_ROW_EXAMPLES:
            # "line" holds the row number for tables (unit == "row")
            report.bad_row_examples.append(
                {"line": loc, "column": column, "kind": kind, "message": message}
            )

    def text(values: dict[str, Any], role: str) -> str:
        value = values[role]
        missing = value is None or (isinstance(value, float) and math.isnan(value))  # NaN: pandas
        if missing or (isinstance(value, str) and not value.strip()):
            raise _RowProblem("empty_text", roles[role], f"{role} is empty, got {value!r}")
        if not isinstance(value, str):
            raise _RowProblem(
                "malformed",
                roles[role],
                f"{role} must be a string, got {type(value).__name__} {value!r}",
            )
        return value

    def ident(values: dict[str, Any], role: str) -> str:
        value = values[role]
        if (
            value is None
            or (isinstance(value, float) and math.isnan(value))
            or not str(value).strip()
        ):
            raise _RowProblem("malformed", roles[role], f"{role} is empty, got {value!r}")
        return str(value)

    for rec in records:
        report.rows_read += 1
        if rec.values is None:
            quirk = known_quirk is not None and rec.fields is not None and known_quirk(rec.fields)
            quirks += quirk
            message = rec.error + (" (known quirk of this dataset: dropped)" if quirk else "")
            reject("malformed", rec.loc, rec.column, message, force_skip=quirk)
            continue
        v = rec.values
        try:
            ta, tb = text(v, "text_a"), text(v, "text_b")
            try:
                label = label_parser(v["label"])
            except _BadLabel as exc:
                raise _RowProblem("bad_label", roles["label"], str(exc)) from None
            if has_ids:
                ia, ib = ident(v, "id_a"), ident(v, "id_b")
                row_ids = {}
                for role, i, t in (("id_a", ia, ta), ("id_b", ib, tb)):
                    prev = id_seen.get(i) or row_ids.get(i)
                    if prev is not None and prev[0] != t:
                        raise _RowProblem(
                            "malformed",
                            roles[role],
                            f"id {i!r} maps to two different texts: {unit} {prev[1]} has {_short(prev[0])}, "
                            f"{unit} {rec.loc} has {_short(t)}",
                        )
                    row_ids[i] = (t, rec.loc)
            else:
                ia, ib = text_id(ta), text_id(tb)
            pid = ident(v, "pair_id") if "pair_id" in roles else rec.default_pair_id
        except _RowProblem as problem:
            reject(problem.kind, rec.loc, problem.column, problem.message)
            continue
        if label is None:  # score between the thresholds: dropped by design, not an error
            report.middle_band += 1
            continue
        if has_ids:
            for i, t in ((ia, ta), (ib, tb)):
                id_seen.setdefault(i, (t, rec.loc))
        report.self_pairs += ta == tb
        key = (ta, tb) if ta <= tb else (tb, ta)
        if key in seen_pairs:
            report.duplicate_pairs += 1
        else:
            seen_pairs.add(key)
        for col, value in zip(COLUMNS, (ta, tb, label, ia, ib, pid), strict=True):
            out[col].append(value)

    report.pairs = len(out["label"])
    n_bad = sum(report.bad_rows.values())
    if report.rows_read == 0:
        raise DataError("no data rows (the file is empty or has only a header)", source=source)
    if report.pairs == 0:
        raise DataError(
            f"no valid pairs among {report.rows_read} rows (bad rows: {report.bad_rows}, "
            f"middle band: {report.middle_band}); first problem: {report.bad_row_examples[:1]}",
            source=source,
        )
    if n_bad:
        first = report.bad_row_examples[0]
        where = f"{unit} {first['line']}" + (
            f", column {first['column']!r}" if first["column"] is not None else ""
        )
        note = f" ({quirks} of them a known quirk of this dataset)" if quirks else ""
        warnings.warn(
            f"{source}: dropped {n_bad} bad row(s) of {report.rows_read}{note}: {report.bad_rows}; "
            f"first: {where}: {first['message']}",
            UserWarning,
            stacklevel=_caller_stacklevel(),
        )
    return PairDataset(datasets.Dataset.from_dict(out, features=_FEATURES), report)


def _detect_format(path: Path) -> str:
    if path.is_dir():
        if (
            (path / "dataset_info.json").is_file()
            or (path / "state.json").is_file()
            or (path / "dataset_dict.json").is_file()
        ):
            return "hf"
        raise DataError(
            "folder is not a dataset saved with datasets.Dataset.save_to_disk", source=path
        )
    suffix = _strip_gz(path).suffix.lower()
    if suffix not in _SUFFIX_FORMATS:
        raise DataError(
            f"unknown file type {suffix or '(no suffix)'!r}; supported: {sorted(_SUFFIX_FORMATS)} "
            "(optionally + '.gz'), a save_to_disk folder, or pass format= one of "
            + str(list(FORMATS)),
            source=path,
        )
    return _SUFFIX_FORMATS[suffix]


def _load(
    source: Any,
    roles: dict[str, str | int],
    *,
    format: str | None = None,
    header: bool = True,
    delimiter: str | None = None,
    quoting: str = "csv",
    encoding: str = "utf-8",
    on_bad_row: str = "error",
    label_parser: Callable[[Any], int | None] = _parse_binary_label,
    allow_extra_fields: bool = False,
    n_fields: int | None = None,
    known_quirk: Callable[[list[str]], bool] | None = None,
) -> PairDataset:
    require_choice("on_bad_row", on_bad_row, ON_BAD_ROW)
    require_choice("quoting", quoting, QUOTING)
    if format is not None:
        require_choice("format", format, FORMATS)
    if not isinstance(header, bool):
        raise TypeError(f"header must be True or False, got {header!r}")
    if delimiter is not None and (not isinstance(delimiter, str) or len(delimiter) != 1):
        raise ValueError(f"delimiter must be a single character, got {delimiter!r}")
    if n_fields is not None:
        n_fields = require_positive_int("n_fields", n_fields)
    try:
        codecs.lookup(encoding)
    except (LookupError, TypeError):
        raise ValueError(f"unknown encoding {encoding!r}") from None
    if ("id_a" in roles) != ("id_b" in roles):
        raise ValueError("give both id_a and id_b columns, or neither (ids then hash the texts)")
    common = dict(
        roles=roles, label_parser=label_parser, on_bad_row=on_bad_row, known_quirk=known_quirk
    )

    if isinstance(source, datasets.DatasetDict):
        raise TypeError(
            f"source is a DatasetDict with splits {list(source)}; pass one split, e.g. source['train']"
        )
    if isinstance(source, datasets.Dataset):
        name = "<in-memory Dataset>"
        cols, role_names = _dataset_columns(source, roles, name)
        return _build(_iter_table(cols, role_names), source=name, unit="row", **common)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"source must be a path or a datasets.Dataset, got {type(source).__name__}")

    path = Path(source)
    name = str(source)
    if not path.exists():
        raise FileNotFoundError(f"pairs file not found: {path}")
    fmt = format or _detect_format(path)
    if fmt == "hf":
        if not path.is_dir():
            raise DataError(
                "format='hf' needs a folder written by datasets.Dataset.save_to_disk", source=name
            )
        ds = _load_hf_folder(path)
        cols, role_names = _dataset_columns(ds, roles, name)
        return _build(_iter_table(cols, role_names), source=name, unit="row", **common)
    if path.is_dir():
        raise DataError(f"format={fmt!r} needs a file, got a folder", source=name)
    if fmt == "parquet":
        cols, role_names = _read_parquet(path, name, roles)
        return _build(_iter_table(cols, role_names), source=name, unit="row", **common)
    if fmt == "jsonl":
        return _build(
            _iter_jsonl(path, name, roles, encoding=encoding), source=name, unit="line", **common
        )
    records = _iter_delimited(
        path,
        name,
        roles,
        delimiter=delimiter or ("\t" if fmt == "tsv" else ","),
        quoting=quoting,
        encoding=encoding,
        header=header,
        n_fields=n_fields,
        allow_extra_fields=allow_extra_fields,
    )
    return _build(records, source=name, unit="line", **common)


def _roles(text_a, text_b, label, id_a, id_b, pair_id) -> dict[str, str | int]:
    roles: dict[str, str | int] = {"text_a": text_a, "text_b": text_b, "label": label}
    for role, spec in (("id_a", id_a), ("id_b", id_b), ("pair_id", pair_id)):
        if spec is not None:
            roles[role] = spec
    return roles


def load_pairs(
    source: str | os.PathLike | datasets.Dataset,
    *,
    text_a: str | int = "text_a",
    text_b: str | int = "text_b",
    label: str | int = "label",
    id_a: str | int | None = None,
    id_b: str | int | None = None,
    pair_id: str | int | None = None,
    format: str | None = None,
    header: bool = True,
    delimiter: str | None = None,
    quoting: str = "csv",
    encoding: str = "utf-8",
    on_bad_row: str = "error",
    label_map: Mapping[Any, int] | None = None,
    allow_extra_fields: bool = False,
    n_fields: int | None = None,
) -> PairDataset:
    """Load labelled pairs from a file, a ``save_to_disk`` folder or an in-memory ``datasets.Dataset``.

    Files: ``.tsv``/``.txt`` (tab), ``.csv`` (comma), ``.jsonl``, ``.parquet``, each
    optionally ``.gz``; ``format`` overrides the suffix. Columns are header names or
    0-based indices (indices only with ``header=False``). ``quoting="none"`` turns CSV
    quoting off, for files whose texts contain bare ``"`` (STS-B, MRPC).

    Rows with the wrong field count (``n_fields``, default the header's or the first
    row's; more are fine with ``allow_extra_fields``), unparsable rows, ids that map to
    two texts -> ``malformed``; labels other than 0/1 (or ``label_map`` keys) ->
    ``bad_label``; missing / blank texts -> ``empty_text``. ``on_bad_row="error"``
    raises a :class:`DataError` at the first; ``"skip"`` drops and counts them and warns
    once. Undecodable bytes, truncated compressed files and empty files always raise.
    """
    parser = _parse_binary_label if label_map is None else _MappedLabel(label_map)
    return _load(
        source,
        _roles(text_a, text_b, label, id_a, id_b, pair_id),
        format=format,
        header=header,
        delimiter=delimiter,
        quoting=quoting,
        encoding=encoding,
        on_bad_row=on_bad_row,
        label_parser=parser,
        allow_extra_fields=allow_extra_fields,
        n_fields=n_fields,
    )


# --------------------------------------------------------------------------- presets


def default_data_dir() -> Path:
    """``$METRIC_SIM_DATA``, default ``../shared/data``, resolved against the current directory."""
    return Path(os.environ.get("METRIC_SIM_DATA", "../shared/data")).expanduser().resolve()


@dataclass(frozen=True)
class Preset:
    """A named dataset: where its files are and how to read them."""

    name: str
    description: str
    splits: tuple[str, ...]  # valid values of ``split`` (None is always allowed)
    default_split: str | None
    loader: Callable[..., PairDataset]
    score_thresholds: tuple[float, float] | None = None  # (low, high) defaults of score presets


def _require_file(path: Path, preset: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(
            f"{preset}: data file not found: {path} (pass path=, data_dir=, or set METRIC_SIM_DATA)"
        )
    return path


def _first_row(
    path: Path, *, delimiter: str | None, quoting: str, encoding: str
) -> tuple[list[str], str]:
    """First non-blank row of a delimited file and the delimiter (tab unless given or absent)."""
    state = _LineState()
    lines = _iter_lines(path, str(path), encoding, state)
    try:
        first = next((line for line in lines if line.strip()), "")
    finally:
        lines.close()
    if delimiter is None:
        delimiter = "\t" if "\t" in first or "," not in first else ","
    mode = csv.QUOTE_MINIMAL if quoting == "csv" else csv.QUOTE_NONE
    row = next(csv.reader([first], delimiter=delimiter, quoting=mode), [])
    return [f.strip() for f in row], delimiter


_QQP_QUIRK = re.compile(r"\s[01]\Z")


def _qqp_known_quirk(fields: list[str]) -> bool:
    # data README: line 1 lost the tab before its label -> 5 fields, the 5th ends in " 0".
    return len(fields) == 5 and bool(_QQP_QUIRK.search(fields[4]))


def _load_qqp(*, path, split, data_dir, on_bad_row, low, high) -> PairDataset:
    file = _require_file(
        Path(path) if path is not None else data_dir / "qqp" / "qqp_glue_train_subset.tsv", "qqp"
    )
    first, delimiter = _first_row(file, delimiter=None, quoting="csv", encoding="utf-8")
    header = "is_duplicate" in first  # GLUE train.tsv / Quora tsv / Kaggle train.csv have one
    if header:
        roles = _roles("question1", "question2", "is_duplicate", "qid1", "qid2", "id")
    else:  # GLUE column order: id qid1 qid2 question1 question2 is_duplicate
        roles = _roles(3, 4, 5, 1, 2, 0)
    pairs = _load(
        file,
        roles,
        format="tsv" if delimiter == "\t" else "csv",
        header=header,
        delimiter=delimiter,
        quoting="csv",  # 824 QQP rows have "..."" ..."" quoted questions
        on_bad_row=on_bad_row,
        n_fields=6,
        known_quirk=_qqp_known_quirk,
    )
    if split is None:
        return pairs
    candidates = list(dict.fromkeys([file.parent / "split.tsv", data_dir / "qqp" / "split.tsv"]))
    split_file = next((c for c in candidates if c.is_file()), None)
    if split_file is None:
        raise FileNotFoundError(
            f"qqp: split={split!r} needs split.tsv; looked in {[str(c) for c in candidates]}"
        )
    return pairs.split_from_file(split_file, split)


def _file_for_split(
    preset: str, path, split, data_dir: Path, files: dict[str, str], default: str
) -> Path:
    if path is not None:
        if split is not None:
            raise ValueError(f"{preset}: give path= or split= (with data_dir=), not both")
        return _require_file(Path(path), preset)
    return _require_file(data_dir / preset / files[split or default], preset)


def _score_parser(preset: str, low, high) -> _ScoreLabel:
    default_low, default_high = PRESETS[preset].score_thresholds  # type: ignore[misc]
    return _ScoreLabel(default_low if low is None else low, default_high if high is None else high)


def _load_stsb(*, path, split, data_dir, on_bad_row, low, high) -> PairDataset:
    files = {s: f"sts-{s}.csv" for s in ("train", "dev", "test")}
    file = _file_for_split("stsb", path, split, data_dir, files, "train")
    # Tab-separated despite .csv; quoting off (bare "); 7 or 9 fields, columns 0-6 used.
    return _load(
        file,
        _roles(5, 6, 4, None, None, None),
        format="tsv",
        header=False,
        quoting="none",
        on_bad_row=on_bad_row,
        label_parser=_score_parser("stsb", low, high),
        n_fields=7,
        allow_extra_fields=True,
    )


def _load_sick(*, path, split, data_dir, on_bad_row, low, high) -> PairDataset:
    files = {
        "train": "SICK_train.txt",
        "trial": "SICK_trial.txt",
        "test": "SICK_test_annotated.txt",
    }
    file = _file_for_split("sick", path, split, data_dir, files, "train")
    return _load(
        file,
        _roles("sentence_A", "sentence_B", "relatedness_score", None, None, "pair_ID"),
        format="tsv",
        header=True,
        quoting="none",
        on_bad_row=on_bad_row,
        label_parser=_score_parser("sick", low, high),
    )


def _load_mrpc(*, path, split, data_dir, on_bad_row, low, high) -> PairDataset:
    files = {"train": "msr_paraphrase_train.txt", "test": "msr_paraphrase_test.txt"}
    file = _file_for_split("mrpc", path, split, data_dir, files, "train")
    return _load(
        file,
        _roles("#1 String", "#2 String", "Quality", "#1 ID", "#2 ID", None),
        format="tsv",
        header=True,
        quoting="none",  # sentences contain bare "
        encoding="utf-8-sig",  # the files start with a BOM
        on_bad_row=on_bad_row,
    )


def _load_paws(*, path, split, data_dir, on_bad_row, low, high) -> PairDataset:
    if path is None:
        raise ValueError(
            "paws has no bundled file: pass path= to a PAWS tsv with header "
            "sentence1<TAB>sentence2<TAB>label (optional id column)"
        )
    file = _require_file(Path(path), "paws")
    first, _ = _first_row(file, delimiter="\t", quoting="none", encoding="utf-8")
    return _load(
        file,
        _roles("sentence1", "sentence2", "label", None, None, "id" if "id" in first else None),
        format="tsv",
        header=True,
        delimiter="\t",
        quoting="none",
        on_bad_row=on_bad_row,
    )


PRESETS: dict[str, Preset] = {
    "mrpc": Preset(
        "mrpc",
        "Microsoft Research Paraphrase Corpus (Quality 0/1)",
        ("train", "test"),
        "train",
        _load_mrpc,
    ),
    "paws": Preset(
        "paws", "PAWS sentence1/sentence2/label tsv (explicit path)", (), None, _load_paws
    ),
    "qqp": Preset(
        "qqp",
        "Quora Question Pairs (GLUE/Quora tsv or Kaggle csv); split via qqp/split.tsv",
        ("train", "dev", "test"),
        None,
        _load_qqp,
    ),
    "sick": Preset(
        "sick",
        "SICK relatedness 1-5, binarised",
        ("train", "trial", "test"),
        "train",
        _load_sick,
        (3.0, 4.0),
    ),
    "stsb": Preset(
        "stsb",
        "STS Benchmark score 0-5, binarised",
        ("train", "dev", "test"),
        "train",
        _load_stsb,
        (2.5, 4.0),
    ),
}


def list_presets() -> list[str]:
    return sorted(PRESETS)


def load_preset(
    name: str,
    path: str | os.PathLike | None = None,
    *,
    split: str | None = None,
    data_dir: str | os.PathLike | None = None,
    on_bad_row: str = "error",
    low: float | None = None,
    high: float | None = None,
) -> PairDataset:
    """Load a named dataset (:func:`list_presets`) from ``path`` or from its files under ``data_dir``.

    ``split`` picks a file (stsb/sick/mrpc) or, for qqp, a split of ``qqp/split.tsv``.
    ``low``/``high`` are the score thresholds of the score presets (stsb, sick).
    """
    require_choice("preset", name, list_presets())
    require_choice("on_bad_row", on_bad_row, ON_BAD_ROW)
    preset = PRESETS[name]
    if split is not None:
        require_choice(f"split of preset {name!r}", split, preset.splits)
    if preset.score_thresholds is None and (low is not None or high is not None):
        raise ValueError(
            f"low/high apply only to score presets {[p.name for p in PRESETS.values() if p.score_thresholds]}"
        )
    if preset.score_thresholds is not None:
        _score_parser(name, low, high)  # bad thresholds fail before any file is looked for
    root = default_data_dir() if data_dir is None else Path(data_dir).expanduser().resolve()
    return preset.loader(
        path=path, split=split, data_dir=root, on_bad_row=on_bad_row, low=low, high=high
    )


# --------------------------------------------------------------------------- corpora (issue 5)
# A corpus is a list of single texts to index or deduplicate (not pairs). It reuses the
# readers above, so locations in errors follow the same rules as for pair files.

CORPUS_FORMATS = ("lines", "tsv", "csv", "jsonl", "parquet")


@dataclass
class Corpus:
    """Texts with unique string ids, in file order. ``source`` names the file."""

    ids: list[str]
    texts: list[str]
    source: str

    def __len__(self) -> int:
        return len(self.texts)


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))  # NaN: pandas/parquet


def _iter_corpus_lines(path: Path, source: str, encoding: str) -> Iterator[_Record]:
    state = _LineState()
    for text in _iter_lines(path, source, encoding, state):
        line = state.line
        yield _Record(line, {"text": text.rstrip("\r\n")}, str(line))


def load_corpus(
    source: str | os.PathLike,
    *,
    text_column: str | None = None,
    id_column: str | None = None,
    format: str | None = None,
    quoting: str = "csv",
    encoding: str = "utf-8",
) -> Corpus:
    """Read texts to index: a text file with one item per line, or a table with a named column.

    ``.txt`` (or ``format="lines"``) is one text per line; ids are the 1-based line
    numbers. ``.tsv``/``.csv`` (with a header row), ``.jsonl`` and ``.parquet`` (each
    optionally ``.gz``) need ``text_column`` (default ``"text"``); ids come from
    ``id_column`` or default to the start line (text files) / 0-based row (parquet).
    Blank or missing texts, non-string texts, empty or repeated ids raise a
    :class:`DataError` naming the file, line (or row) and column: nothing is dropped.
    """
    require_choice("quoting", quoting, QUOTING)
    if format is not None:
        require_choice("format", format, CORPUS_FORMATS)
    path = Path(source)
    name = str(source)
    if not path.exists():
        raise FileNotFoundError(f"corpus file not found: {path}")
    if path.is_dir():
        raise DataError("expected a corpus file, got a folder", source=name)
    suffix = _strip_gz(path).suffix.lower()
    fmt = format or ("lines" if suffix == ".txt" else _SUFFIX_FORMATS.get(suffix))
    if fmt is None:
        raise DataError(
            f"unknown corpus file type {suffix or '(no suffix)'!r}; use .txt (one text per line), "
            f".tsv, .csv, .jsonl or .parquet (optionally .gz), or pass format= one of {list(CORPUS_FORMATS)}",
            source=name,
        )
    roles: dict[str, str | int] = {}
    if fmt == "lines":
        if text_column is not None or id_column is not None:
            raise ValueError(
                f"a one-text-per-line corpus has no columns; got text_column={text_column!r}, "
                f"id_column={id_column!r} (use a .tsv/.csv/.jsonl/.parquet file for named columns)"
            )
        records: Iterator[_Record] = _iter_corpus_lines(path, name, encoding)
        unit = "line"
    else:
        roles["text"] = text_column if text_column is not None else "text"
        if id_column is not None:
            roles["id"] = id_column
        if fmt == "parquet":
            cols, role_names = _read_parquet(path, name, roles)
            records, unit = _iter_table(cols, role_names), "row"
        elif fmt == "jsonl":
            records, unit = _iter_jsonl(path, name, roles, encoding=encoding), "line"
        else:
            records = _iter_delimited(
                path,
                name,
                roles,
                delimiter="\t" if fmt == "tsv" else ",",
                quoting=quoting,
                encoding=encoding,
                header=True,
                n_fields=None,
                allow_extra_fields=False,
            )
            unit = "line"

    ids: list[str] = []
    texts: list[str] = []
    first_seen: dict[str, int] = {}

    def bad(rec: _Record, message: str, role: str | None, kind: str = "malformed") -> DataError:
        column = rec.column if role is None else roles.get(role)
        return DataError(message, source=name, line=rec.loc, column=column, unit=unit, kind=kind)

    for rec in records:
        if rec.values is None:
            raise bad(rec, rec.error or "malformed record", None)
        value = rec.values["text"]
        if _is_missing(value) or (isinstance(value, str) and not value.strip()):
            hint = " (remove blank lines: every line is one text)" if fmt == "lines" else ""
            raise bad(rec, f"text is empty, got {value!r}{hint}", "text", "empty_text")
        if not isinstance(value, str):
            raise bad(rec, f"text must be a string, got {type(value).__name__} {value!r}", "text")
        ident = rec.default_pair_id
        if "id" in roles:
            raw = rec.values["id"]
            if _is_missing(raw) or not str(raw).strip():
                raise bad(rec, f"id is empty, got {raw!r}", "id")
            ident = str(raw)
        if ident in first_seen:
            raise bad(
                rec,
                f"id {ident!r} was already used on {unit} {first_seen[ident]}; ids must be unique",
                "id",
            )
        first_seen[ident] = rec.loc
        ids.append(ident)
        texts.append(value)
    if not texts:
        raise DataError("no texts (the file is empty or has only a header)", source=name)
    return Corpus(ids=ids, texts=texts, source=name)
