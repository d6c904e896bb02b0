"""Physical lines of a text file (plain or gzip), decoded one by one, and the encoding check.

Decoding per line is what lets a bad byte be reported with its line number. Lines are
split on ``\n`` only (the byte), never on other Unicode line breaks, so line numbers
match what an editor and ``wc -l`` show.
"""

from __future__ import annotations

import codecs
import gzip
import zlib
from collections.abc import Iterator
from pathlib import Path

from metric_sim.errors import DataError, InvalidArgumentError, InvalidArgumentTypeError

__all__ = ["LineState", "check_encoding", "is_gzip", "iter_lines"]

_GZIP_MAGIC = b"\x1f\x8b"


def check_encoding(encoding: object) -> str:
    """``encoding`` if Python can decode text with it, else an error naming the argument."""
    if not isinstance(encoding, str):
        raise InvalidArgumentTypeError(
            f"encoding must be a str naming a text encoding, got {type(encoding).__name__} {encoding!r}"
        )
    try:
        # Non-empty input: decoding b"" skips the codec lookup. The lookup also refuses
        # bytes-to-bytes codecs such as 'base64' or 'zlib'.
        b"\x00\x00\x00\x00".decode(encoding, errors="ignore")
        codecs.getincrementaldecoder(encoding)
    except UnicodeError:  # a codec without errors="ignore" (idna) still decodes text
        pass
    except LookupError:
        raise InvalidArgumentError(
            f"encoding must be a text encoding Python knows (e.g. 'utf-8', 'utf-8-sig', 'latin-1'), "
            f"got encoding={encoding!r}"
        ) from None
    return encoding


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

    Decoding per line is what lets a bad byte be reported with its line number.
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
