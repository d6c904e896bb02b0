"""Read a corpus: single texts with ids, to index or deduplicate (not pairs): :func:`load_corpus`.

It reuses the pair readers, so locations in errors follow the same rules as for pair
files. It does not import ``datasets`` (the index calls it; keep that path light).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metric_sim.data.readers import (
    CORPUS_FORMATS,
    QUOTING,
    LineState,
    Record,
    check_encoding,
    corpus_format,
    iter_delimited,
    iter_jsonl,
    iter_lines,
    iter_table,
    read_parquet,
)
from metric_sim.data.report import multiline_summary
from metric_sim.errors import DataError, InvalidArgumentError, MissingFileError
from metric_sim.validation import require_choice

__all__ = ["CORPUS_FORMATS", "Corpus", "load_corpus"]


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


def _iter_corpus_lines(path: Path, source: str, encoding: str) -> Iterator[Record]:
    state = LineState()
    for text in iter_lines(path, source, encoding, state):
        line = state.line
        yield Record(line, {"text": text.rstrip("\r\n")}, str(line))


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
    Blank or missing texts, non-string texts, empty or repeated ids, malformed rows
    (quoting rules: :mod:`metric_sim.data.readers`) and columns named twice raise a
    :class:`DataError` naming the file, line (or row) and column: nothing is dropped. A
    text with a quoted line break is kept and named in a warning (its line span).
    """
    require_choice("quoting", quoting, QUOTING)
    check_encoding(encoding)
    if format is not None:
        require_choice("format", format, CORPUS_FORMATS)
    path = Path(source)
    name = str(source)
    if not path.exists():
        raise MissingFileError(f"corpus file not found: {path}")
    if path.is_dir():
        raise DataError("expected a corpus file, got a folder", source=name)
    fmt = format or corpus_format(path, name)
    roles: dict[str, str | int] = {}
    if fmt == "lines":
        if text_column is not None or id_column is not None:
            raise InvalidArgumentError(
                f"a one-text-per-line corpus has no columns; got text_column={text_column!r}, "
                f"id_column={id_column!r} (use a .tsv/.csv/.jsonl/.parquet file for named columns)"
            )
        records: Iterator[Record] = _iter_corpus_lines(path, name, encoding)
        unit = "line"
    else:
        roles["text"] = text_column if text_column is not None else "text"
        if id_column is not None:
            roles["id"] = id_column
        if fmt == "parquet":
            cols, role_names = read_parquet(path, name, roles)
            records, unit = iter_table(cols, role_names), "row"
        elif fmt == "jsonl":
            records, unit = iter_jsonl(path, name, roles, encoding=encoding), "line"
        else:
            records = iter_delimited(
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
    multiline: list[list[int]] = []

    def bad(rec: Record, message: str, role: str | None, kind: str = "malformed") -> DataError:
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
        if rec.end is not None:
            multiline.append([rec.loc, rec.end])
        ids.append(ident)
        texts.append(value)
    if not texts:
        raise DataError("no texts (the file is empty or has only a header)", source=name)
    if multiline:  # legal (a quoted line break), but never silent
        warnings.warn(
            f"{name}: {len(multiline)} text(s) hold a quoted line break and span several lines: "
            f"{multiline_summary(multiline, len(multiline))}",
            UserWarning,
            stacklevel=2,
        )
    return Corpus(ids=ids, texts=texts, source=name)
