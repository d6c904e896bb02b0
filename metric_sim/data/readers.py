"""Read a source into records: text lines, delimited text, JSON Lines, parquet, saved datasets.

Every reader yields :class:`Record` objects (a location and the raw value of each
*role* - ``text_a``, ``label``, ``text`` ...) so the pair loader and the corpus loader
share one set of parsers and one set of rules for locations in messages:

* delimited text and JSON Lines: the 1-based *physical line* on which the record
  **starts** (the header is line 1); blank lines are skipped but still counted.
* parquet and ``datasets`` tables: the 1-based *row*.

``datasets`` is imported only inside :func:`load_hf_folder`, so reading a corpus does
not load it.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from metric_sim.errors import DataError, InvalidArgumentError, InvalidArgumentTypeError

if TYPE_CHECKING:
    import datasets

__all__ = [
    "CORPUS_FORMATS",
    "CORPUS_SUFFIX_FORMATS",
    "FORMATS",
    "PAIR_SUFFIX_FORMATS",
    "QUOTING",
    "LineState",
    "Record",
    "corpus_format",
    "csv_rows",
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

_GZIP_MAGIC = b"\x1f\x8b"
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


def strip_gz(path: Path) -> Path:
    return path.with_suffix("") if path.suffix.lower() == ".gz" else path


def is_gzip(path: Path) -> bool:
    if path.suffix.lower() == ".gz":
        return True
    with open(path, "rb") as fh:  # also catch gzip data under a plain name
        return fh.read(2) == _GZIP_MAGIC


class LineState:
    def __init__(self) -> None:
        self.line = 0
        self.unterminated = False  # the last physical line read had no newline (truncated?)


def iter_lines(path: Path, source: str, encoding: str, state: LineState) -> Iterator[str]:
    """Decoded physical lines (line ends kept), decoding each line on its own.

    Decoding per line is what lets a bad byte be reported with its line number;
    feeding these lines to ``csv.reader`` makes ``reader.line_num`` a physical line count.
    A leading BOM is dropped whatever the encoding (Windows editors add one).
    """
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    try:
        opener = gzip.open if is_gzip(path) else open
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


def csv_rows(
    path: Path, *, source: str, delimiter: str, quoting: str, encoding: str
) -> Iterator[tuple[int, int, list[str] | None, bool]]:
    """``(start_line, end_line, row, unterminated)`` per csv record.

    ``row`` is ``[]`` for a blank line and ``None`` for a record the csv module cannot
    parse (a bare ``\\r`` in an unquoted field); ``unterminated`` is true when the record
    ends on a last line without a newline (a file cut short).
    """
    csv.field_size_limit(_FIELD_SIZE_LIMIT)
    state = LineState()
    mode = csv.QUOTE_MINIMAL if quoting == "csv" else csv.QUOTE_NONE
    reader = csv.reader(
        iter_lines(path, source, encoding, state), delimiter=delimiter, quoting=mode, strict=False
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


def resolve_column(spec: str | int, names: list[str] | None, n_fields: int, *, source: str) -> int:
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
    for start, end, row, unterminated in csv_rows(
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
                r: resolve_column(c, names, expected, source=source) for r, c in roles.items()
            }
            continue
        if row is None:
            yield Record(
                start,
                None,
                str(start),
                error=f"line cannot be parsed as {delimiter!r}-delimited text",
            )
            continue
        if expected is None:
            expected = len(row)  # header=False: the first row fixes the field count
        if index is None:
            index = {r: resolve_column(c, None, expected, source=source) for r, c in roles.items()}
        if len(row) != expected and not (allow_extra_fields and len(row) > expected):
            tail = (
                " - the file ends here without a newline, so it looks truncated"
                if unterminated
                else ""
            )
            yield Record(
                start,
                None,
                str(start),
                error=f"expected {expected} fields, got {len(row)}{span}{tail}",
                fields=row,
            )
            continue
        yield Record(start, {r: row[i] for r, i in index.items()}, str(start))


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
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            tail = (
                " (the file ends here without a newline, so it looks truncated)"
                if state.unterminated
                else ""
            )
            yield Record(
                line, None, str(line), error=f"invalid JSON: {exc.msg} at column {exc.colno}{tail}"
            )
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
        yield Record(line, {r: obj[c] for r, c in roles.items()}, str(line))


def table_columns(names: list[str], roles: dict[str, str | int], source: str) -> dict[str, str]:
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
        pf = pq.ParquetFile(target)
        role_names = table_columns(list(pf.schema_arrow.names), roles, source)
        table = pf.read(columns=list(dict.fromkeys(role_names.values())))
    except DataError:
        raise
    except (pa.ArrowException, OSError, EOFError, zlib.error) as exc:
        raise DataError(
            f"cannot read parquet ({type(exc).__name__}: {exc})", source=source
        ) from None
    return {c: table.column(c).to_pylist() for c in table.column_names}, role_names


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
    row = next(csv.reader([first], delimiter=delimiter, quoting=mode), [])
    return [f.strip() for f in row], delimiter

