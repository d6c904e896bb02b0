"""Seeded fuzzing of the delimited readers against an independent oracle.

Each case mutates a known-good file (byte flips, line deletions and duplications,
quote and tab insertions, a cut) and loads it in both ``on_bad_row`` modes. The oracle
decodes the bytes itself, finds records with one regular expression per record (the
quoting rule of :mod:`metric_sim.data.readers`, written independently of the state
machine that implements it) and applies the row checks, so it knows exactly which
pairs must load and which rows must be counted. Every case must either load exactly
those pairs, with exactly those counts, or raise a ``DataError`` at the line the oracle
expects; any other exception is a failure.

``METRIC_SIM_FUZZ_CASES`` (default 300) is the number of cases per source file; set
``METRIC_SIM_FUZZ_REPORT`` to a path to get the figures as JSON.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import random
import re
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from metric_sim.data import DataError, load_pairs, load_preset
from tests.conftest import DATA_DIR, requires_data

CASES = int(os.environ.get("METRIC_SIM_FUZZ_CASES", "300"))
QQP_FILE = DATA_DIR / "qqp" / "qqp_glue_train_subset.tsv"
QQP_QUIRK_IDS = ["133273", "213221", "213222"]
COLUMNS = ["pair_id", "id_a", "id_b", "text_a", "text_b", "label"]


def _synthetic_rows() -> list[list[str]]:
    """Pairs with quoted fields, doubled quotes, a tab and a line break inside quotes."""
    texts = {
        "q1": "How do I learn Python?",
        "q2": 'What is the "best" way to learn Python?',
        "q3": "Where can I buy a café ☕?",
        "q4": "A text with a\ttab inside",
        "q5": "Two lines:\nsecond line",
        "q6": '""Quoted"" from the start',
        "q7": "Why is the sky blue?",
        "q8": "Comma, separated, text",
        "q9": "Plain question nine",
    }
    ids = list(texts)
    rng = random.Random(7)
    rows = []
    for n in range(40):
        a, b = rng.sample(ids, 2)
        rows.append([f"p{n}", a, b, texts[a], texts[b], str(rng.randint(0, 1))])
    return rows


def _synthetic_bytes(delimiter: str) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(_synthetic_rows())
    lines = out.getvalue().split("\n")
    lines[5] += "\r"  # one CRLF line end
    return "\n".join(lines).encode("utf-8")


def _qqp_sample_bytes() -> bytes:
    """Line 1 (the documented quirk), 239 lines in order, then 60 lines with quoted fields."""
    lines = QQP_FILE.read_bytes().split(b"\n")
    quoted = [line for line in lines[240:] if b'"' in line][:60]
    return b"\n".join(lines[:240] + quoted) + b"\n"


# ---------------------------------------------------------------------------- mutations

INTERESTING = [b'"', b"\t", b"\n", b"\r", b",", b" ", b"0", b"1", b"\x00", b"\xff", b"\xc3"]


def _mutate(data: bytes, rng: random.Random) -> tuple[bytes, list[str]]:
    done = []
    for _ in range(rng.randint(1, 3)):
        kind = rng.choices(
            ["flip", "delete_line", "duplicate_line", "quote", "tab", "cut"],
            weights=[4, 2, 2, 5, 2, 1],
        )[0]
        if not data:
            break
        if kind == "flip":
            i = rng.randrange(len(data))
            new = rng.choice(INTERESTING) if rng.random() < 0.6 else bytes([rng.randrange(256)])
            data = data[:i] + new + data[i + 1 :]
        elif kind in ("delete_line", "duplicate_line"):
            lines = data.split(b"\n")
            i = rng.randrange(len(lines))
            if kind == "delete_line":
                del lines[i]
            else:
                lines.insert(i, lines[i])
            data = b"\n".join(lines)
        elif kind in ("quote", "tab"):
            char = b'"' if kind == "quote" else b"\t"
            if kind == "quote" and rng.random() < 0.5:  # where a quote opens a field
                starts = [0] + [m.end() for m in re.finditer(rb"[\t,\n]", data)]
                i = rng.choice(starts)
            else:
                i = rng.randrange(len(data) + 1)
            data = data[:i] + char + data[i:]
        else:
            data = data[: rng.randrange(len(data))]
        done.append(kind)
    return data, done


# ---------------------------------------------------------------------------- the oracle


@dataclass
class Expected:
    """What a load of the mutated bytes must give."""

    error_line: int | None = None  # the DataError line in error mode (first bad row)
    error_kind: str | None = None
    fatal_line: int | None = None  # a DataError in both modes (undecodable bytes, header)
    fatal_any: bool = False  # a DataError without a line (no valid pairs at all)
    pairs: list[tuple] = field(default_factory=list)
    bad: Counter = field(default_factory=Counter)
    records: int = 0
    multiline: int = 0
    quirks: int = 0


def _record_regex(delimiter: str) -> re.Pattern[str]:
    d = re.escape(delimiter)
    one = rf'(?:"(?:[^"]|"")*"|[^"{d}\r\n]*)'
    return re.compile(rf"{one}(?:{d}{one})*(?=\r?\n|\Z)")


def _split_fields(record: str, delimiter: str) -> list[str]:
    d = re.escape(delimiter)
    fields = []
    for m in re.finditer(rf'(?:^|{d})("(?:[^"]|"")*"|[^"{d}\r\n]*)', record):
        value = m.group(1)
        fields.append(value[1:-1].replace('""', '"') if value.startswith('"') else value)
    return fields


def _records(text: str, delimiter: str, expected_fields: list[int | None]):
    """(first line, last line, fields) per record, blank lines left out.

    ``fields`` is None when no record starts on that line (the rule is broken), or
    ``("resync", fields)`` for a record that spans lines with the wrong field count:
    that is a stray quote, so only its first line is used up.
    """
    starts = [0] + [m.end() for m in re.finditer("\n", text)]
    if text.endswith("\n"):
        starts.pop()
    pattern = _record_regex(delimiter)
    i = 0
    while i < len(starts):
        pos = starts[i]
        end_of_line = text.find("\n", pos)
        line = text[pos:] if end_of_line < 0 else text[pos:end_of_line]
        if line == "" or (line == "\r" and end_of_line >= 0):  # blank ("\r\n" too)
            i += 1
            continue
        m = pattern.match(text, pos)
        if m is None:
            yield i + 1, i + 1, None
            i += 1
            continue
        spans = text.count("\n", pos, m.end())
        fields = _split_fields(m.group(), delimiter)
        want = expected_fields[0]
        if spans and want is not None and len(fields) != want:
            yield i + 1, i + 1 + spans, ("resync", fields)
            i += 1
            continue
        yield i + 1, i + 1 + spans, fields
        i += 1 + spans


def _decode(data: bytes) -> tuple[str, int | None]:
    """The decoded text (BOM dropped), or the number of the first undecodable line."""
    pieces = data.split(b"\n")
    for n, piece in enumerate(pieces, start=1):
        try:
            piece.decode("utf-8")
        except UnicodeDecodeError:
            return "", n
    text = data.decode("utf-8")
    return (text[1:] if text.startswith("\ufeff") else text), None


def _is_quirk(qqp: bool, number: int, fields: list[str] | None) -> bool:
    return bool(
        qqp
        and number == 1
        and fields is not None
        and len(fields) == 5
        and fields[:3] == QQP_QUIRK_IDS
        and re.search(r"\S\s0\Z", fields[4])
    )


def oracle(data: bytes, *, delimiter: str, header: bool, qqp: bool) -> Expected:
    exp = Expected()
    text, bad_line = _decode(data)
    if bad_line is not None:  # undecodable bytes always raise, in both modes
        exp.fatal_line = bad_line
        return exp
    expected_fields: list[int | None] = [6 if qqp else None]
    roles = ("text_a", "text_b", "label", "id_a", "id_b", "pair_id")
    cols = [3, 4, 5, 1, 2, 0] if qqp else None
    id_seen: dict[str, tuple[str, int]] = {}
    first_bad: tuple[int, str] | None = None
    for start, end, fields in _records(text, delimiter, expected_fields):
        if header and cols is None:
            names = fields if isinstance(fields, list) else None
            if (
                names is None
                or end > start
                or len(set(names)) != len(names)
                or not set(COLUMNS) <= set(names)
            ):
                exp.fatal_line = start
                return exp
            cols = [names.index(c) for c in roles]
            expected_fields[0] = len(names)
            continue
        exp.records += 1
        kind = None
        if not isinstance(fields, list) or len(fields) != expected_fields[0]:
            raw = fields[1] if isinstance(fields, tuple) else fields
            kind = "quirk" if _is_quirk(qqp, exp.records, raw) else "malformed"
        else:
            if end > start:
                exp.multiline += 1
            ta, tb, label, ia, ib, pid = (fields[c] for c in cols)
            row_ids: dict[str, tuple[str, int]] = {}
            if not ta.strip() or not tb.strip():
                kind = "empty_text"
            elif label.strip() not in ("0", "1", "0.0", "1.0"):
                kind = "bad_label"
            elif not ia.strip() or not ib.strip():
                kind = "malformed"
            else:
                for i, t in ((ia, ta), (ib, tb)):
                    prev = id_seen.get(i) or row_ids.get(i)
                    if prev is not None and prev[0] != t:
                        kind = "malformed"  # one id, two texts
                        break
                    row_ids[i] = (t, start)
                if kind is None and not pid.strip():
                    kind = "malformed"
            if kind is None:
                for i, t in ((ia, ta), (ib, tb)):
                    id_seen.setdefault(i, (t, start))
                exp.pairs.append((ta, tb, int(float(label.strip())), ia, ib, pid))
                continue
        if kind == "quirk":  # dropped in both modes, counted as malformed
            exp.quirks += 1
            exp.bad["malformed"] += 1
            continue
        exp.bad[kind] += 1
        if first_bad is None:
            first_bad = (start, kind)
    if first_bad is not None:
        exp.error_line, exp.error_kind = first_bad
    exp.fatal_any = not exp.pairs  # "no data rows" / "no valid pairs": no line to name
    return exp


def qqp_delimiter(data: bytes) -> str:
    """The preset's sniff: tab unless the first non-blank line has a comma and no tab."""
    first = next((line for line in data.split(b"\n") if line.strip()), b"")
    return "\t" if b"\t" in first or b"," not in first else ","


# ---------------------------------------------------------------------------- the runner


def _load(path: Path, mode: str, qqp: bool):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if qqp:
            return load_preset("qqp", path=path, on_bad_row=mode)
        return load_pairs(
            path,
            id_a="id_a",
            id_b="id_b",
            pair_id="pair_id",
            format="csv" if path.name.startswith("case.csv") else "tsv",
            on_bad_row=mode,
        )


def _check_case(path: Path, mode: str, exp: Expected, qqp: bool, stats: Counter, what: str) -> None:
    try:
        pairs = _load(path, mode, qqp)
    except DataError as err:
        if exp.fatal_line is not None:  # bad bytes or header: an earlier line may fail first
            assert err.line is not None and err.line <= exp.fatal_line, (what, str(err))
        elif mode == "error" and exp.error_line is not None:
            assert (err.line, err.kind) == (exp.error_line, exp.error_kind), (what, str(err))
        else:
            assert exp.fatal_any, (what, str(err))
        if err.kind:
            label = f"bad row ({err.kind})"
        elif err.line is not None:
            label = "bytes or header (line named)"
        else:
            label = "no valid pairs (no line)"
        stats[f"{mode}: DataError {label}"] += 1
        return
    except Exception as exc:  # anything else is a bug: show the case
        raise AssertionError(f"{what}: {type(exc).__name__}: {exc}") from exc
    assert exp.fatal_line is None and not exp.fatal_any, (what, "loaded but expected a DataError")
    if mode == "error":
        assert exp.error_line is None, (
            what,
            f"loaded, expected {exp.error_kind} at line {exp.error_line}",
        )
    got = list(
        zip(
            pairs.texts_a,
            pairs.texts_b,
            pairs.labels.tolist(),
            pairs.ids_a,
            pairs.ids_b,
            pairs.pair_ids,
            strict=True,
        )
    )
    assert got == exp.pairs, what
    report = pairs.report
    assert {k: v for k, v in report.bad_rows.items() if v} == dict(+exp.bad), what
    assert report.rows_read == exp.records, what
    assert report.multiline_records == exp.multiline, what
    assert report.rows_read == report.pairs + sum(report.bad_rows.values()) + report.middle_band
    stats[f"{mode}: loaded exactly"] += 1


def _fuzz(source: str, clean: bytes, delimiter: str, tmp_path: Path, seed: int) -> Counter:
    qqp = source == "qqp"
    rng = random.Random(seed)
    stats: Counter = Counter()
    began = time.perf_counter()
    for case in range(CASES):
        data, done = _mutate(clean, rng)
        compressed = rng.random() < 0.2
        suffix = ".tsv" if delimiter == "\t" else ".csv"
        path = tmp_path / f"case{suffix}{'.gz' if compressed else ''}"
        path.write_bytes(gzip.compress(data) if compressed else data)
        used = qqp_delimiter(data) if qqp else delimiter
        exp = oracle(data, delimiter=used, header=not qqp, qqp=qqp)
        what = f"{source} case {case} {done}{' gz' if compressed else ''}"
        for mode in ("skip", "error"):
            _check_case(path, mode, exp, qqp, stats, what)
    stats["cases"] = CASES
    stats["seconds"] = round(time.perf_counter() - began, 1)
    report = os.environ.get("METRIC_SIM_FUZZ_REPORT")
    if report:
        with open(report, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"source": source, **stats}) + "\n")
    print(source, dict(stats))
    return stats


def test_oracle_agrees_with_the_clean_files():
    row = _synthetic_rows()[0]
    for delimiter in ("\t", ","):
        exp = oracle(_synthetic_bytes(delimiter), delimiter=delimiter, header=True, qqp=False)
        assert len(exp.pairs) == 40 and not exp.bad and exp.multiline > 0
        assert exp.pairs[0] == (row[3], row[4], int(row[5]), row[1], row[2], row[0])


@pytest.mark.parametrize("delimiter", ["\t", ","], ids=["tsv", "csv"])
def test_fuzz_synthetic(delimiter, tmp_path):
    stats = _fuzz(
        "synthetic-" + ("tsv" if delimiter == "\t" else "csv"),
        _synthetic_bytes(delimiter),
        delimiter,
        tmp_path,
        seed=1,
    )
    assert stats["skip: loaded exactly"] > 0 and stats["error: loaded exactly"] > 0


@requires_data
def test_fuzz_real_qqp_sample(tmp_path):
    clean = _qqp_sample_bytes()
    exp = oracle(clean, delimiter="\t", header=False, qqp=True)
    assert exp.quirks == 1 and dict(exp.bad) == {"malformed": 1} and len(exp.pairs) == 299
    stats = _fuzz("qqp", clean, "\t", tmp_path, seed=2)
    assert stats["skip: loaded exactly"] > 0
