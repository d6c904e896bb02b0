"""Typed reads of the JSON files metric-sim saves and reads back, and the checksum that seals them.

Every field a loader reads from a saved folder goes through :class:`SavedFields`: a
missing field, a null where a value belongs, a wrong type or a value out of range raises
the loader's error class (``IndexLoadError`` for an index folder, ``ConfigError`` for a
model folder, ...) with a message naming the file and the field, e.g.
``"/idx/metadata.json: dim must be a positive integer, got '32' (str)"``.

Files whose integrity matters and that nobody edits by hand (index metadata, shard plan
and manifests) are written through :func:`seal`, which records ``metadata_sha256``: the
sha256 of the canonical JSON of the payload without that key. :func:`check_seal`
verifies it when present; files written before it existed carry none and are trusted
once their fields validate.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Collection
from pathlib import Path
from typing import Any, NoReturn

from metric_sim.errors import ConfigError, MetricSimError

__all__ = ["CHECKSUM_KEY", "SavedFields", "canonical_sha256", "check_seal", "read_json_file", "seal"]

CHECKSUM_KEY = "metadata_sha256"
SHA256_HEX = re.compile(r"[0-9a-f]{64}")

_EXPECTED = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "an object",
             list: "a list"}


def read_json_file(path: str | os.PathLike[str], error: type[MetricSimError] = ConfigError) -> dict[str, Any]:
    """The JSON object saved in ``path``; ``error`` naming the file when it is unreadable, not JSON or not an object."""
    try:
        with open(path, encoding="utf-8") as handle:
            payload = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        # RecursionError: deeply nested JSON; never a valid saved file.
        detail = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise error(f"{path}: not valid JSON ({detail})") from None
    except OSError as exc:
        raise error(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if not isinstance(payload, dict):
        raise error(f"{path}: expected a JSON object, got {_json_type(payload)}")
    return payload


def canonical_sha256(payload: dict[str, Any]) -> str:
    """sha256 of ``payload`` as canonical JSON (sorted keys, no spaces), without :data:`CHECKSUM_KEY`."""
    body = {key: value for key, value in payload.items() if key != CHECKSUM_KEY}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def seal(payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` with a fresh :data:`CHECKSUM_KEY` (any old one is replaced)."""
    return {**{k: v for k, v in payload.items() if k != CHECKSUM_KEY}, CHECKSUM_KEY: canonical_sha256(payload)}


def check_seal(payload: dict[str, Any], file: str | os.PathLike[str], error: type[MetricSimError],
               remedy: str = "") -> bool:
    """Verify ``payload``'s checksum; True when it has one, False for a file written before checksums.

    A mismatch means the file changed after it was saved: ``error`` naming the file,
    followed by ``remedy`` (what the user can do about it) when given.
    """
    if CHECKSUM_KEY not in payload:
        return False
    recorded = SavedFields(payload, file, error).get(CHECKSUM_KEY, str, pattern=SHA256_HEX)
    if recorded != canonical_sha256(payload):
        raise error(
            f"{file}: {CHECKSUM_KEY} does not match the file's content: it changed after it was saved "
            f"(damaged, or edited by hand){'. ' + remedy if remedy else ''}"
        )
    return True


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return {dict: "an object", list: "a list", str: "a string"}.get(type(value), type(value).__name__)


def _shown(value: Any) -> str:
    """How a message shows a value read from JSON: ``'32' (str)``, ``null``, ``a list [1, 2]``."""
    if value is None or isinstance(value, bool):
        return _json_type(value)
    if isinstance(value, (dict, list)):
        text = json.dumps(value)
        return f"{_json_type(value)} {text if len(text) <= 60 else text[:57] + '...'}"
    return f"{value!r} ({type(value).__name__})"


def _has_type(value: Any, kind: type) -> bool:
    if isinstance(value, bool):
        return kind is bool  # JSON true is never a number
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, kind)


class SavedFields:
    """One JSON object read from ``file``: typed field reads whose errors name the file and the field.

    ``prefix`` is the object's own place in the file (``"calibrator"``, ``"files['index.faiss']"``),
    so nested fields read ``calibrator.weight`` in messages.
    """

    def __init__(self, payload: Any, file: str | os.PathLike[str], error: type[MetricSimError] = ConfigError,
                 prefix: str = "") -> None:
        self.file = Path(file)
        self.error = error
        self.prefix = prefix
        if not isinstance(payload, dict):
            raise error(f"{self.file}: {prefix or 'the file'} must be a JSON object, got {_json_type(payload)}")
        self.payload = payload

    def where(self, name: str) -> str:
        if not self.prefix:
            return name
        return f"{self.prefix}[{name!r}]" if "." in name else f"{self.prefix}.{name}"

    def fail(self, name: str, problem: str) -> NoReturn:
        """Raise the error class for field ``name``: ``"<file>: <field> <problem>"``."""
        raise self.error(f"{self.file}: {self.where(name)} {problem}")

    def get(
        self,
        name: str,
        kind: type,
        *,
        required: bool = True,
        nullable: bool = False,
        default: Any = None,
        choices: Collection[Any] | None = None,
        minimum: float | None = None,
        pattern: re.Pattern[str] | None = None,
    ) -> Any:
        """Field ``name`` checked to be of JSON type ``kind`` (``float`` accepts integers; numbers are finite).

        ``required=False``: an absent field gives ``default``. ``nullable``: ``null`` is allowed
        and gives None. ``choices``, ``minimum`` (numbers) and ``pattern`` (strings, full match)
        restrict the value; strings must not be empty.
        """
        expected = _EXPECTED[kind]
        if kind is int and minimum is not None:
            expected = {0: "a non-negative integer", 1: "a positive integer"}.get(minimum, f"an integer >= {minimum}")
        if name not in self.payload:
            if required:
                self.fail(name, f"is missing (expected {expected})")
            return default
        value = self.payload[name]
        if value is None and nullable:
            return None
        if not _has_type(value, kind):
            self.fail(name, f"must be {expected}, got {_shown(value)}")
        if kind is float and not math.isfinite(value):
            self.fail(name, f"must be a finite number, got {value!r}")
        if kind is str and not value.strip():
            self.fail(name, "must not be empty")
        if minimum is not None and value < minimum:
            self.fail(name, f"must be {expected if kind is int else f'a number >= {minimum}'}, got {value!r}")
        if pattern is not None and not pattern.fullmatch(value):
            self.fail(name, f"must match {pattern.pattern}, got {value!r}")
        if choices is not None and value not in choices:
            options = list(choices)
            wanted = repr(options[0]) if len(options) == 1 else f"one of {options}"
            self.fail(name, f"must be {wanted}, got {value!r}")
        return value

    def refuse_unknown(self, known: Collection[str]) -> None:
        """Refuse fields outside ``known``: in a sealed file an unknown name is damage (a flipped
        ``metadata_sha256`` name would otherwise turn the check off), or a newer format."""
        unknown = sorted(set(self.payload) - set(known))
        if unknown:
            self.fail(unknown[0], f"is not a field of this file (known fields: {sorted(known)}); "
                                  "the file is damaged or was written by a newer metric-sim")

    def section(self, name: str, *, required: bool = True, nullable: bool = False) -> SavedFields | None:
        """The object in field ``name`` as its own :class:`SavedFields` (None when absent or null and allowed)."""
        value = self.get(name, dict, required=required, nullable=nullable)
        return None if value is None else SavedFields(value, self.file, self.error, self.where(name))
