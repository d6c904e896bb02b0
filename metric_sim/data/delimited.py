"""Split delimited text (TSV, CSV) into records under one strict quoting rule.

The rule (also stated in :mod:`metric_sim.data.readers`): with ``quoting="csv"`` a
field is either *unquoted* (no ``"`` and no carriage return in it) or *quoted*: it
starts with ``"`` right after the delimiter (or at the start of the record), ends
with a ``"`` followed by the delimiter or the end of the line, and writes a ``"``
inside it as ``""``. Only a quoted field may hold a line break, so only then does a
record span several physical lines. With ``quoting="none"`` every physical line is
one record and ``"`` is an ordinary character.

A record that breaks the rule is *malformed* and names the field where it breaks.
A malformed record that spans lines (an opening quote that runs on and never
closes cleanly) gives back every line after its first: reading resumes on the
next physical line, so one stray quote costs one record, never the lines after it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from metric_sim.data.lines import LineState, iter_lines

__all__ = ["DelimitedReader", "RawRecord", "split_line_end"]


@dataclass
class RawRecord:
    """One record of a delimited file, before any column is looked at."""

    start: int  # first physical line (1-based)
    end: int  # last physical line (== start unless a quoted field holds a line break)
    fields: list[str] | None  # [] for a blank line; None when malformed
    problem: str | None = None  # why the record is malformed
    field_index: int | None = None  # 0-based field where it is malformed
    unterminated: bool = False  # its last line has no newline (file cut short?)
    lines: list[tuple[int, str]] = field(default_factory=list, repr=False)  # raw lines consumed

    @property
    def span(self) -> str:
        return f"lines {self.start}-{self.end}"


def split_line_end(raw: str) -> tuple[str, str]:
    """``(content, line_end)``: a line ends in ``\\r\\n``, ``\\n`` or nothing (last line)."""
    if raw.endswith("\r\n"):
        return raw[:-2], "\r\n"
    if raw.endswith("\n"):
        return raw[:-1], "\n"
    return raw, ""


class _Malformed(Exception):
    def __init__(self, problem: str, field_index: int) -> None:
        super().__init__(problem)
        self.problem, self.field_index = problem, field_index


class DelimitedReader:
    """Iterate :class:`RawRecord` objects; :meth:`reread_after_first_line` resynchronises."""

    def __init__(
        self, path: Path, *, source: str, delimiter: str, quoting: str, encoding: str
    ) -> None:
        self.delimiter = delimiter
        self.quoted = quoting == "csv"
        self._state = LineState()
        self._lines = iter_lines(path, source, encoding, self._state)
        self._pending: deque[tuple[int, str]] = deque()  # lines given back, read again first

    def _next_line(self) -> tuple[int, str] | None:
        if self._pending:
            return self._pending.popleft()
        raw = next(self._lines, None)
        return None if raw is None else (self._state.line, raw)

    def reread_after_first_line(self, record: RawRecord) -> None:
        """Give back every line of ``record`` after its first, to be read as new records."""
        self._pending.extendleft(reversed(record.lines[1:]))

    def __iter__(self) -> Iterator[RawRecord]:
        while (first := self._next_line()) is not None:
            record = self._read_record(first)
            if record.fields is None and record.end > record.start:
                self.reread_after_first_line(record)  # one bad quote costs one record
            yield record

    def _read_record(self, first: tuple[int, str]) -> RawRecord:
        consumed = [first]
        content, line_end = split_line_end(first[1])
        if content == "":
            return RawRecord(first[0], first[0], [], lines=consumed)
        fields: list[str] = []
        pos = 0
        try:
            while True:
                index = len(fields)
                if self.quoted and content.startswith('"', pos):
                    parts: list[str] = []
                    i = pos + 1
                    while True:
                        j = content.find('"', i)
                        if j < 0:  # the quoted field goes on past this line
                            parts.append(content[i:] + line_end)
                            more = self._next_line() if line_end else None
                            if more is None:
                                raise _Malformed(
                                    "unclosed quote: the quoted field never closes before the end of the file",
                                    index,
                                )
                            consumed.append(more)
                            content, line_end = split_line_end(more[1])
                            i = 0
                        elif content.startswith('"', j + 1):  # "" is one quote
                            parts.append(content[i : j + 1])
                            i = j + 2
                        else:
                            parts.append(content[i:j])
                            pos = j + 1
                            break
                    fields.append("".join(parts))
                    if pos == len(content):
                        break
                    if content[pos] != self.delimiter:
                        after = content[pos : pos + 20]
                        raise _Malformed(
                            f"text after the closing quote of a quoted field: {after!r} "
                            '(a stray quote? a quote inside a field must be written "")',
                            index,
                        )
                    pos += 1
                else:
                    j = content.find(self.delimiter, pos)
                    value = content[pos:] if j < 0 else content[pos:j]
                    if self.quoted and '"' in value:
                        raise _Malformed(
                            f"quote character inside an unquoted field: {value[:40]!r} (quote the whole "
                            "field and double its quotes, or read the file with quoting='none')",
                            index,
                        )
                    if "\r" in value:
                        raise _Malformed("carriage return (\\r) inside an unquoted field", index)
                    fields.append(value)
                    if j < 0:
                        break
                    pos = j + 1
        except _Malformed as bad:
            return RawRecord(
                first[0],
                consumed[-1][0],
                None,
                bad.problem,
                bad.field_index,
                unterminated=not line_end,
                lines=consumed,
            )
        return RawRecord(
            first[0], consumed[-1][0], fields, unterminated=not line_end, lines=consumed
        )
