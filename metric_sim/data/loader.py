"""Build a :class:`PairDataset` from records: the row checks behind :func:`load_pairs`.

:func:`build_pairs` turns reader records into validated pairs (texts, labels, ids,
pair ids), counting or raising on bad rows; :func:`load_pairs_with_roles` picks the
reader for a source; :func:`load_pairs` is the public entry point.

Locations in messages
---------------------
Every :class:`~metric_sim.errors.DataError` names the source and, when known, where
the problem is: for delimited text and JSON Lines the 1-based *physical line* on which
the record **starts** (the header is line 1; a quoted field may span several lines, the
message then also gives the range; blank lines are skipped but still counted, so the
number always matches what an editor shows); for parquet and ``datasets`` tables the
1-based *row*. The quoting rules of each format are in :mod:`metric_sim.data.readers`;
a record that spans lines (a quoted line break) is counted in
``LoadReport.multiline_records`` and named in a warning.

When no ``pair_id`` column is given, the default pair id is that same start line
for files read line by line, and the 0-based row index for tables (parquet,
``datasets``), so ``pair_id`` can be used to index back into the source.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from metric_sim.data.labels import BadLabel, MappedLabel, parse_binary_label
from metric_sim.data.pairs import COLUMNS, PairDataset
from metric_sim.data.readers import (
    FORMATS,
    QUOTING,
    Record,
    check_encoding,
    dataset_columns,
    iter_delimited,
    iter_jsonl,
    iter_table,
    load_hf_folder,
    pair_format,
    read_parquet,
)
from metric_sim.data.report import MAX_BAD_ROW_EXAMPLES, ON_BAD_ROW, LoadReport, multiline_summary
from metric_sim.errors import (
    DataError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    MissingFileError,
)
from metric_sim.images import image_id, open_image, split_zip_location, zip_location
from metric_sim.items import text_id
from metric_sim.validation import require_choice, require_positive_int

__all__ = [
    "ITEM_KINDS",
    "build_pairs",
    "check_image",
    "image_resolver",
    "load_pairs",
    "load_pairs_with_roles",
    "pair_roles",
    "pairs_from_columns",
    "pairs_from_index_pairs",
    "resolve_location",
]

#: What the text columns of a pairs file hold: texts, or image paths (see :func:`load_pairs`).
ITEM_KINDS = ("text", "image")

if TYPE_CHECKING:
    import datasets


@cache
def _features() -> datasets.Features:
    import datasets

    return datasets.Features(
        {
            "text_a": datasets.Value("string"),
            "text_b": datasets.Value("string"),
            "label": datasets.Value("int64"),
            "id_a": datasets.Value("string"),
            "id_b": datasets.Value("string"),
            "pair_id": datasets.Value("string"),
        }
    )


# Warnings point at the first frame outside this subpackage (the user's call).
_PACKAGE = __name__.rpartition(".")[0]


class _RowProblem(Exception):
    def __init__(self, kind: str, column: str | int | None, message: str) -> None:
        super().__init__(message)
        self.kind, self.column, self.message = kind, column, message


def _short(text: Any, n: int = 60) -> str:
    s = str(text)
    return repr(s if len(s) <= n else s[: n - 3] + "...")


def _caller_stacklevel() -> int:
    """``stacklevel`` that points a warning at the first frame outside ``metric_sim.data``."""
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and _in_package(frame.f_globals.get("__name__", "")):
        frame, level = frame.f_back, level + 1
    return level


def _in_package(module: str) -> bool:
    return module == _PACKAGE or module.startswith(_PACKAGE + ".")


def build_pairs(
    records: Iterator[Record],
    *,
    source: str,
    unit: str,
    roles: dict[str, str | int],
    label_parser: Callable[[Any], int | None],
    on_bad_row: str,
    known_quirk: Callable[[int, Record], bool] | None,
    image_item: Callable[[str], tuple[str, str]] | None = None,
) -> PairDataset:
    """Validate ``records`` into a :class:`PairDataset`; bad rows raise or are counted (``on_bad_row``).

    ``known_quirk(n, record)`` is asked about each malformed record (``n``: its 1-based
    number among the data records); a true answer drops it even with ``on_bad_row="error"``.
    ``image_item(value)`` -> ``(location, content id)`` makes the text columns image
    paths: a missing or undecodable image is a ``malformed`` row naming the file and column.
    """
    report = LoadReport(source=source)
    out: dict[str, list] = {c: [] for c in COLUMNS}
    has_ids = "id_a" in roles and image_item is None
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

    def image(value: str, role: str) -> tuple[str, str]:
        try:
            return image_item(value)  # type: ignore[misc]
        except (DataError, MissingFileError) as exc:
            raise _RowProblem("malformed", roles[role], str(exc)) from None

    for rec in records:
        report.rows_read += 1
        if rec.end is not None:
            report.multiline_records += 1
            if len(report.multiline_spans) < MAX_BAD_ROW_EXAMPLES:
                report.multiline_spans.append([rec.loc, rec.end])
        if rec.values is None:
            quirk = known_quirk is not None and known_quirk(report.rows_read, rec)
            quirks += quirk
            message = rec.error + (" (known quirk of this dataset: dropped)" if quirk else "")
            reject("malformed", rec.loc, rec.column, message, force_skip=quirk)
            continue
        v = rec.values
        try:
            ta, tb = text(v, "text_a"), text(v, "text_b")
            if image_item is not None:  # ids: content ids (one photo under two names is one item)
                (ta, ia), (tb, ib) = image(ta, "text_a"), image(tb, "text_b")
            try:
                label = label_parser(v["label"])
            except BadLabel as exc:
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
            elif image_item is None:
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
    if report.multiline_records:
        warnings.warn(
            f"{source}: {report.multiline_records} record(s) hold a quoted line break and span "
            f"several lines: {multiline_summary(report.multiline_spans, report.multiline_records)}",
            UserWarning,
            stacklevel=_caller_stacklevel(),
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
    return pairs_from_columns(out, report)


def pairs_from_columns(columns: Mapping[str, list], report: LoadReport) -> PairDataset:
    """A :class:`PairDataset` from the six column lists (already validated) and their report."""
    import datasets

    return PairDataset(datasets.Dataset.from_dict(dict(columns), features=_features()), report)


def pairs_from_index_pairs(
    items_a: Sequence[str],
    ids_a: Sequence[str],
    items_b: Sequence[str],
    ids_b: Sequence[str],
    kinds: Mapping[str, tuple[int, Sequence[tuple[int, int]]]],
    *,
    rng: np.random.Generator,
    source: str,
) -> PairDataset:
    """Pairs ``(items_a[i], items_b[j])`` with their ids; ``kinds``: pair id prefix -> (label, [(i, j)]).

    Rows are shuffled with ``rng``; a pair id is its kind's prefix and its number in the kind.
    """
    rows = [(f"{prefix}{n}", label, i, j) for prefix, (label, pairs) in kinds.items()
            for n, (i, j) in enumerate(pairs)]
    if not rows:
        raise DataError("no pairs to build (no identity has two items?)", source=source)
    out: dict[str, list] = {c: [] for c in COLUMNS}
    for k in rng.permutation(len(rows)).tolist():
        pair_id, label, i, j = rows[k]
        row = (items_a[i], items_b[j], label, ids_a[i], ids_b[j], pair_id)
        for column, value in zip(COLUMNS, row, strict=True):
            out[column].append(value)
    self_pairs = sum(a == b for a, b in zip(out["text_a"], out["text_b"], strict=True))
    report = LoadReport(source=source, rows_read=len(rows), pairs=len(rows), self_pairs=self_pairs)
    return pairs_from_columns(out, report)


def resolve_location(value: str, base_dir: str | os.PathLike[str]) -> str:
    """``value`` (a path or ``ARCHIVE.zip!/member``) made absolute; a relative one joins ``base_dir``."""
    parts = split_zip_location(value)
    path = os.fspath(parts[0]) if parts is not None else value
    path = os.path.abspath(os.path.join(os.fspath(base_dir), os.path.expanduser(path)))
    return zip_location(path, parts[1]) if parts is not None else path


def check_image(location: str, *, where: str | None = None) -> str:
    """Decode the image at ``location`` fully (errors name it, after ``where``); its content id."""
    open_image(location, mode="L", where=where)
    return image_id(location, where=where)


def image_resolver(base_dir: str | os.PathLike[str]) -> Callable[[str], tuple[str, str]]:
    """``value -> (absolute location, content id)``, decoding each location once."""
    seen: dict[str, str] = {}

    def resolve(value: str) -> tuple[str, str]:
        location = resolve_location(value, base_dir)
        if location not in seen:
            seen[location] = check_image(location)
        return location, seen[location]

    return resolve


def load_pairs_with_roles(
    source: Any,
    roles: dict[str, str | int],
    *,
    format: str | None = None,
    header: bool = True,
    delimiter: str | None = None,
    quoting: str = "csv",
    encoding: str = "utf-8",
    on_bad_row: str = "error",
    label_parser: Callable[[Any], int | None] = parse_binary_label,
    allow_extra_fields: bool = False,
    n_fields: int | None = None,
    known_quirk: Callable[[int, Record], bool] | None = None,
    items: str = "text",
) -> PairDataset:
    """Load pairs from ``source`` with ``roles`` (role -> column) already chosen; presets call this."""
    require_choice("on_bad_row", on_bad_row, ON_BAD_ROW)
    require_choice("items", items, ITEM_KINDS)
    require_choice("quoting", quoting, QUOTING)
    if format is not None:
        require_choice("format", format, FORMATS)
    if not isinstance(header, bool):
        raise InvalidArgumentTypeError(f"header must be True or False, got {header!r}")
    if delimiter is not None and (
        not isinstance(delimiter, str) or len(delimiter) != 1 or delimiter in '"\r\n'
    ):
        raise InvalidArgumentError(
            f"delimiter must be a single character other than a quote or a line break, got {delimiter!r}"
        )
    if n_fields is not None:
        n_fields = require_positive_int("n_fields", n_fields)
    check_encoding(encoding)
    if ("id_a" in roles) != ("id_b" in roles):
        raise InvalidArgumentError("give both id_a and id_b columns, or neither (ids then hash the texts)")
    common = dict(
        roles=roles, label_parser=label_parser, on_bad_row=on_bad_row, known_quirk=known_quirk
    )
    if items == "image":
        if "id_a" in roles:
            raise InvalidArgumentError("items='image' takes no id_a/id_b columns: an image's id is its content id")
        in_file = isinstance(source, (str, os.PathLike))
        common["image_item"] = image_resolver(Path(os.path.abspath(source)).parent if in_file else Path.cwd())

    import datasets  # here, not at module level: listing presets must not load it

    if isinstance(source, datasets.DatasetDict):
        raise InvalidArgumentTypeError(
            f"source is a DatasetDict with splits {list(source)}; pass one split, e.g. source['train']"
        )
    if isinstance(source, datasets.Dataset):
        name = "<in-memory Dataset>"
        cols, role_names = dataset_columns(source, roles, name)
        return build_pairs(iter_table(cols, role_names), source=name, unit="row", **common)
    if not isinstance(source, (str, os.PathLike)):
        raise InvalidArgumentTypeError(f"source must be a path or a datasets.Dataset, got {type(source).__name__}")

    path = Path(source)
    name = str(source)
    if not path.exists():
        raise MissingFileError(f"pairs file not found: {path}")
    fmt = format or pair_format(path)
    if fmt == "hf":
        if not path.is_dir():
            raise DataError(
                "format='hf' needs a folder written by datasets.Dataset.save_to_disk", source=name
            )
        ds = load_hf_folder(path)
        cols, role_names = dataset_columns(ds, roles, name)
        return build_pairs(iter_table(cols, role_names), source=name, unit="row", **common)
    if path.is_dir():
        raise DataError(f"format={fmt!r} needs a file, got a folder", source=name)
    if fmt == "parquet":
        cols, role_names = read_parquet(path, name, roles)
        return build_pairs(iter_table(cols, role_names), source=name, unit="row", **common)
    if fmt == "jsonl":
        return build_pairs(
            iter_jsonl(path, name, roles, encoding=encoding), source=name, unit="line", **common
        )
    records = iter_delimited(
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
    return build_pairs(records, source=name, unit="line", **common)


def pair_roles(text_a, text_b, label, id_a, id_b, pair_id) -> dict[str, str | int]:
    """Role -> column spec, leaving out the optional roles that are ``None``."""
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
    items: str = "text",
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

    ``items="image"``: the two text columns hold image paths, relative to the folder the
    pairs file is in (the current folder for a ``datasets.Dataset``), absolute, or zip
    members (``ARCHIVE.zip!/member.png``). They are stored as absolute locations with
    content ids (:func:`metric_sim.images.image_id`; no id columns then), and every image
    is decoded once: a missing, unreadable or non-image file is a ``malformed`` row that
    names the file, the line and the column.
    """
    parser = parse_binary_label if label_map is None else MappedLabel(label_map)
    return load_pairs_with_roles(
        source,
        pair_roles(text_a, text_b, label, id_a, id_b, pair_id),
        format=format,
        header=header,
        delimiter=delimiter,
        quoting=quoting,
        encoding=encoding,
        on_bad_row=on_bad_row,
        label_parser=parser,
        allow_extra_fields=allow_extra_fields,
        n_fields=n_fields,
        items=items,
    )
