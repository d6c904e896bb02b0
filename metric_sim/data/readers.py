"""Read a source into records: text lines, delimited text, JSON Lines, parquet, saved datasets.

Every reader yields :class:`Record` objects (a location and the raw value of each
*role* - ``text_a``, ``label``, ``text`` ...) so the pair loader and the corpus loader
share one set of parsers and one set of rules for locations in messages:

* delimited text and JSON Lines: the 1-based *physical line* on which the record
  **starts** (the header is line 1); blank lines are skipped but still counted.
* parquet and ``datasets`` tables: the 1-based *row*.

Format rules (strict: whatever breaks them is a malformed row at its line and column,
never a silent rewrite or merge):

* **Lines.** Files are read as bytes, gzip or not, decoded line by line and split on
  ``\n`` only; a line may end in ``\r\n``. A BOM at the start is dropped.
* **TSV and CSV, ``quoting="csv"``** (RFC 4180 with the delimiter ``\t`` or ``,``): a
  field is unquoted (no ``"`` and no ``\r`` in it) or quoted: ``"`` right after the
  delimiter or at the start of the line, a ``"`` inside written ``""``, and the
  closing ``"`` followed by the delimiter or the end of the line. ``"abc"def``, a
  quote inside an unquoted field and a quote that never closes are malformed.
  Only a quoted field may hold a line break (our own TSV writers and pandas emit
  them), so only then does a record span lines; such a record is legal but never
  silent: :class:`~metric_sim.data.report.LoadReport` counts it
  (``multiline_records``, ``multiline_spans``) and the load warns with its line span.
  A malformed record that spans lines is reported at its first line (the message
  gives the span) and only that line is consumed: reading resumes on the next
  physical line, so one stray quote costs one row, counted, never the lines after it.
  A record with the wrong number of fields that spans lines is treated the same way.
* **``quoting="none"``**: one physical line is one record, split on the delimiter;
  ``"`` is an ordinary character (STS-B, SICK, MRPC); a ``\r`` inside a line is malformed.
* **Header.** Column names must be unique: a name given twice is refused (the file,
  line and column are named) in every format: delimited headers, JSON keys (per
  object, nested objects too), parquet schemas.
* **JSON Lines**: one JSON object per physical line. Invalid JSON, duplicate keys,
  lone surrogates (``"\ud800"``) in a value that is read, nesting too deep to parse and
  non-objects are malformed rows at their line.
* **Parquet**: read and converted inside one guard, so a damaged file is a
  :class:`~metric_sim.errors.DataError` naming it, whatever part of it is damaged.

``datasets`` is imported only inside :func:`load_hf_folder`, so reading a corpus does
not load it.
"""

from __future__ import annotations

import csv
import gzip
import json
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from metric_sim.data.delimited import DelimitedReader, RawRecord
from metric_sim.data.lines import LineState, check_encoding, is_gzip, iter_lines
from metric_sim.errors import DataError, InvalidArgumentError, InvalidArgumentTypeError

if TYPE_CHECKING:
    import datasets

__all__ = [
    "CORPUS_FORMATS",
    "CORPUS_SUFFIX_FORMATS",
    "FORMATS",
    "PAIR_SUFFIX_FORMATS",
    "QUOTING",
    "DelimitedReader",
    "LineState",
    "RawRecord",
    "Record",
    "check_encoding",
    "corpus_format",
    "dataset_columns",
    "first_row",
    "is_gzip",
    "iter_delimited",
    "iter_jsonl",
    "iter_lines",
    "iter_table",
    "load_hf_folder",
    "pair_format",
    "read_parquet",
    "refuse_duplicate_columns",
    "resolve_column",
    "strip_gz",
    "table_columns",
]

QUOTING = ("csv", "none")
FORMATS = ("tsv", "csv", "jsonl", "parquet", "hf")
CORPUS_FORMATS = ("lines", "tsv", "csv", "jsonl", "parquet")

# The two suffix tables differ on purpose, in one place so the difference stays visible:
# a pairs file needs at least three columns, so a pairs ``.txt`` is tab-separated text (the
# MRPC and SICK releases ship that way), while a corpus is often a plain list of texts, so
# a corpus ``.txt`` is one text per line. Every other suffix means the same in both.
PAIR_SUFFIX_FORMATS = {
    ".tsv": "tsv",
    ".txt": "tsv",
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
CORPUS_SUFFIX_FORMATS = {**PAIR_SUFFIX_FORMATS, ".txt": "lines"}

# Big enough for any real text field; the csv default (128 KiB) rejects long documents.
_FIELD_SIZE_LIMIT = 2**31 - 1


@dataclass
class Record:
    """One record of a source: where it is and the raw value of each role (``None`` if malformed)."""

    loc: int  # start line (text files) or 1-based row (tables)
    values: dict[str, Any] | None  # role -> raw value; None when the record is malformed
    default_pair_id: str
    error: str | None = None
    column: str | int | None = None
    fields: list[str] | None = None  # raw fields of a malformed delimited row (for known quirks)
    end: int | None = None  # last physical line when the record spans several (quoted line breaks)


def strip_gz(path: Path) -> Path:
    return path.with_suffix("") if path.suffix.lower() == ".gz" else path


def resolve_column(
    spec: str | int, names: list[str] | None, n_fields: int, *, source: str, line: int | None = None
) -> int:
    """Column spec -> 0-based index, or a DataError listing the columns found."""
    if isinstance(spec, bool) or not isinstance(spec, (str, int, np.integer)):
        raise InvalidArgumentTypeError(f"columns must be names (str) or 0-based indices (int), got {spec!r}")
    if isinstance(spec, str):
        if names is None:
            raise InvalidArgumentError(
                f"with header=False columns must be 0-based integer indices, got {spec!r}"
            )
        if spec not in names:
            raise DataError(
                f"missing column {spec!r}; columns found: {names}", source=source, line=line, column=spec
            )
        return names.index(spec)
    spec = int(spec)
    if spec < 0 or spec >= n_fields:
        found = names if names is not None else f"{n_fields} unnamed fields (0..{n_fields - 1})"
        raise DataError(
            f"column index {spec} out of range; columns found: {found}",
            source=source,
            line=line,
            column=spec,
        )
    return spec


def refuse_duplicate_columns(
    names: list[str], *, source: str, line: int | None = None, what: str = "header"
) -> None:
    """A column named twice is ambiguous (which one is meant?): refuse it, naming the column."""
    seen: dict[str, int] = {}
    for position, name in enumerate(names):
        if name in seen:
            raise DataError(
                f"column {name!r} appears twice in the {what} (positions {seen[name]} and {position}); "
                "column names must be unique",
                source=source,
                line=line,
                column=name,
            )
        seen[name] = position


def _quote_problem(
    raw: RawRecord, expected: int | None, column: str | int | None
) -> tuple[str, str | int | None]:
    """Message and column of a malformed record; the column goes in the message when it reads better."""
    problem = raw.problem or "malformed record"
    if expected is not None and problem.startswith("unclosed quote"):
        # Fields parsed before the quote plus the open one: what a lenient reader would see.
        got = (raw.field_index or 0) + 1
        if got != expected:
            span = f"record spans {raw.span}; " if raw.end > raw.start else ""
            where = f" opened in column {column!r} on line {raw.start}" if column is not None else ""
            detail = f"unclosed quote: the quoted field{where} never closes before the end of the file"
            return f"expected {expected} fields, got {got} ({span}{detail})", None
    if raw.end > raw.start:
        problem += f" (record spans {raw.span}; only line {raw.start} is dropped)"
    return problem, column


def iter_delimited(
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
) -> Iterator[Record]:
    names: list[str] | None = None
    index: dict[str, int] | None = None
    expected = n_fields
    reader = DelimitedReader(
        path, source=source, delimiter=delimiter, quoting=quoting, encoding=encoding
    )

    def column_of(field_index: int | None) -> str | int | None:
        if field_index is not None and names is not None and field_index < len(names):
            return names[field_index]
        return field_index

    for raw in reader:
        row = raw.fields
        if row is not None and not row:
            continue  # blank line
        if header and names is None:
            if row is None or raw.end > raw.start:
                problem = raw.problem or f"the header spans {raw.span} (a quoted line break)"
                raise DataError(
                    f"header line cannot be parsed: {problem}",
                    source=source,
                    line=raw.start,
                    column=raw.field_index,
                )
            names = list(row)
            refuse_duplicate_columns(names, source=source, line=raw.start)
            expected = expected or len(names)
            index = {
                r: resolve_column(c, names, expected, source=source, line=raw.start)
                for r, c in roles.items()
            }
            continue
        if row is None:
            message, column = _quote_problem(raw, expected, column_of(raw.field_index))
            yield Record(raw.start, None, str(raw.start), error=message, column=column)
            continue
        if expected is None:
            expected = len(row)  # header=False: the first row fixes the field count
        if index is None:
            index = {
                r: resolve_column(c, None, expected, source=source, line=raw.start)
                for r, c in roles.items()
            }
        if len(row) != expected and not (allow_extra_fields and len(row) > expected):
            span = ""
            if raw.end > raw.start:
                # A quoted line break that gives the wrong field count is a stray quote,
                # not a text with a line break: keep the lines after the first.
                reader.reread_after_first_line(raw)
                span = f" (record spans {raw.span}; unbalanced quote? only line {raw.start} is dropped)"
            tail = (
                " - the file ends here without a newline, so it looks truncated"
                if raw.unterminated and raw.end == raw.start
                else ""
            )
            yield Record(
                raw.start,
                None,
                str(raw.start),
                error=f"expected {expected} fields, got {len(row)}{span}{tail}",
                fields=row,
            )
            continue
        yield Record(
            raw.start,
            {r: row[i] for r, i in index.items()},
            str(raw.start),
            end=raw.end if raw.end > raw.start else None,
        )


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _DuplicateKey(key)
        obj[key] = value
    return obj


# Python's json accepts "\ud800" and returns a str that cannot be written as UTF-8.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _parse_json_line(text: str, truncated: bool) -> tuple[Any, str | None, str | None]:
    """``(object, error, column)`` for one JSON Lines line."""
    try:
        return json.loads(text, object_pairs_hook=_unique_keys), None, None
    except json.JSONDecodeError as exc:
        tail = " (the file ends here without a newline, so it looks truncated)" if truncated else ""
        return None, f"invalid JSON: {exc.msg} at column {exc.colno}{tail}", None
    except _DuplicateKey as dup:
        return None, f"duplicate key {dup.key!r} in a JSON object; keys must be unique", dup.key
    except RecursionError:
        return None, "JSON nested too deeply to read", None


def iter_jsonl(
    path: Path, source: str, roles: dict[str, str | int], *, encoding: str
) -> Iterator[Record]:
    for r, c in roles.items():
        if not isinstance(c, str):
            raise InvalidArgumentError(f"jsonl columns must be key names, got {r}={c!r}")
    state = LineState()
    checked = False
    for text in iter_lines(path, source, encoding, state):
        line = state.line
        if not text.strip():
            continue
        obj, error, column = _parse_json_line(text, state.unterminated)
        if error is not None:
            yield Record(line, None, str(line), error=error, column=column)
            continue
        if not isinstance(obj, dict):
            yield Record(
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
            yield Record(
                line, None, str(line), error=f"missing key {missing[0]!r}", column=missing[0]
            )
            continue
        surrogate = next(
            (c for c in roles.values() if isinstance(obj[c], str) and _LONE_SURROGATE.search(obj[c])),
            None,
        )
        if surrogate is not None:
            found = _LONE_SURROGATE.search(obj[surrogate]).group()  # type: ignore[union-attr]
            yield Record(
                line,
                None,
                str(line),
                error=f"string holds a lone surrogate {found.encode('unicode_escape').decode()} "
                "(not valid Unicode text)",
                column=surrogate,
            )
            continue
        yield Record(line, {r: obj[c] for r, c in roles.items()}, str(line))


def table_columns(names: list[str], roles: dict[str, str | int], source: str) -> dict[str, str]:
    refuse_duplicate_columns(names, source=source, what="table's columns")
    return {
        r: names[resolve_column(c, names, len(names), source=source)] for r, c in roles.items()
    }


def iter_table(columns: dict[str, list], role_names: dict[str, str]) -> Iterator[Record]:
    n = len(next(iter(columns.values()))) if columns else 0
    for i in range(n):
        yield Record(i + 1, {r: columns[c][i] for r, c in role_names.items()}, str(i))


def read_parquet(
    path: Path, source: str, roles: dict[str, str | int]
) -> tuple[dict[str, list], dict[str, str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if is_gzip(path):
            with gzip.open(path, "rb") as fh:
                target: Any = pa.BufferReader(fh.read())
        else:
            target = str(path)
        # Pages written with checksums are verified; files without them read as before.
        pf = pq.ParquetFile(target, page_checksum_verification=True)
        role_names = table_columns(list(pf.schema_arrow.names), roles, source)
        table = pf.read(columns=list(dict.fromkeys(role_names.values())))
        # Converting is decoding too (a damaged page or bad UTF-8 surfaces here): keep it guarded.
        columns = {c: table.column(c).to_pylist() for c in table.column_names}
    except DataError:
        raise
    except (pa.ArrowException, OSError, EOFError, zlib.error, ValueError, KeyError, IndexError) as exc:
        # ValueError covers UnicodeDecodeError; KeyError/IndexError a schema that lies.
        raise DataError(
            f"cannot read parquet ({type(exc).__name__}: {exc})", source=source
        ) from None
    return columns, role_names


def dataset_columns(
    ds: datasets.Dataset, roles: dict[str, str | int], source: str
) -> tuple[dict[str, list], dict[str, str]]:
    role_names = table_columns(list(ds.column_names), roles, source)
    cols = list(dict.fromkeys(role_names.values()))
    return ds.with_format(None).select_columns(cols)[:], role_names


def load_hf_folder(path: Path) -> datasets.Dataset:
    import datasets

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



def pair_format(path: Path) -> str:
    """Format of a pairs source from its suffix (``.txt`` is tab-separated), or ``"hf"`` for a folder."""
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
    suffix = strip_gz(path).suffix.lower()
    if suffix not in PAIR_SUFFIX_FORMATS:
        raise DataError(
            f"unknown file type {suffix or '(no suffix)'!r}; supported: {sorted(PAIR_SUFFIX_FORMATS)} "
            "(optionally + '.gz'), a save_to_disk folder, or pass format= one of "
            + str(list(FORMATS)),
            source=path,
        )
    return PAIR_SUFFIX_FORMATS[suffix]


def corpus_format(path: Path, source: str) -> str:
    """Format of a corpus file from its suffix (``.txt`` is one text per line)."""
    suffix = strip_gz(path).suffix.lower()
    fmt = CORPUS_SUFFIX_FORMATS.get(suffix)
    if fmt is None:
        raise DataError(
            f"unknown corpus file type {suffix or '(no suffix)'!r}; use .txt (one text per line), "
            f".tsv, .csv, .jsonl or .parquet (optionally .gz), or pass format= one of {list(CORPUS_FORMATS)}",
            source=source,
        )
    return fmt



def first_row(
    path: Path, *, delimiter: str | None, quoting: str, encoding: str
) -> tuple[list[str], str]:
    """First non-blank row of a delimited file and the delimiter (tab unless given or absent)."""
    state = LineState()
    lines = iter_lines(path, str(path), encoding, state)
    try:
        first = next((line for line in lines if line.strip()), "")
    finally:
        lines.close()
    if delimiter is None:
        delimiter = "\t" if "\t" in first or "," not in first else ","
    mode = csv.QUOTE_MINIMAL if quoting == "csv" else csv.QUOTE_NONE
    csv.field_size_limit(_FIELD_SIZE_LIMIT)
    try:
        row = next(csv.reader([first], delimiter=delimiter, quoting=mode), [])
    except csv.Error:  # only sniffing here: the strict reader reports the line itself
        row = first.rstrip("\r\n").split(delimiter)
    return [f.strip() for f in row], delimiter

