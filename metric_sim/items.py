"""One function gives an item its id: :func:`item_id`; one gives its storable form: :func:`describe_item`.

An item is what the package compares: a text today, later an image or a record (a
mapping of named fields). Both functions are :func:`functools.singledispatch`, so a
new kind of item plugs in with ``@item_id.register(MyType)`` and
``@describe_item.register(MyType)`` without touching this module.

Ids are stable across processes and versions (saved data, indexes and splits depend on
them) and start with a letter that says the kind: ``h`` text, ``v`` numpy array,
``b`` bytes, ``r`` record. Identical items share an id; that is what lets the cluster
rule (:mod:`metric_sim.clusters`) join ids that carry the same item.

Light on purpose: imports numpy and the standard library only.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from functools import singledispatch
from typing import Any

import numpy as np

from metric_sim.errors import InvalidArgumentTypeError

__all__ = ["describe_item", "item_id", "text_id"]

# 16 hex digits = 64 bits: collisions stay negligible for any corpus we can hold in memory.
_ID_DIGITS = 16


def _sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def _canonical_json(value: Any) -> str:
    # sort_keys + fixed separators: equal records give equal strings, whatever their key order.
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _type_name(value: Any) -> str:
    cls = type(value)
    return cls.__name__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


@singledispatch
def item_id(item: Any) -> str:
    """Stable id of an item; identical items share it.

    ``str`` -> ``"h" + sha1(utf-8)[:16]`` (same as :func:`text_id`); ``numpy.ndarray`` ->
    ``"v" + sha1(dtype, shape, C-order bytes)[:16]``; ``bytes`` -> ``"b" + sha1[:16]``;
    a ``Mapping`` (a record) -> ``"r" + sha1(describe_item(record))[:16]``, so a record's id
    can be recomputed from its stored description. Other types raise
    :class:`~metric_sim.errors.InvalidArgumentTypeError`: register them with
    ``@item_id.register(MyType)``.
    """
    raise InvalidArgumentTypeError(
        f"item_id has no rule for items of type {_type_name(item)}; supported: str, "
        "numpy.ndarray, bytes, Mapping; register one with "
        "`@metric_sim.items.item_id.register(MyType)`"
    )


@item_id.register(str)
def _text_item_id(item: str) -> str:
    # surrogatepass: JSON can carry lone surrogates; they must still hash, not crash.
    return "h" + _sha1(item.encode("utf-8", "surrogatepass"))[:_ID_DIGITS]


@item_id.register(np.ndarray)
def _array_item_id(item: np.ndarray) -> str:
    if item.dtype.hasobject:
        raise InvalidArgumentTypeError(
            f"item_id needs a numeric numpy array, got dtype {item.dtype} (object memory is pointers, not values)"
        )
    # dtype and shape are hashed too: the same bytes as float32[4] and int32[4] are different items.
    dtype = item.dtype.str if item.dtype.fields is None else repr(item.dtype.descr)
    header = f"{dtype}|{tuple(item.shape)}|".encode()
    return "v" + _sha1(header + np.ascontiguousarray(item).tobytes())[:_ID_DIGITS]


@item_id.register(bytes)
@item_id.register(bytearray)
def _bytes_item_id(item: bytes | bytearray) -> str:
    return "b" + _sha1(bytes(item))[:_ID_DIGITS]


@item_id.register(Mapping)
def _record_item_id(item: Mapping) -> str:
    return "r" + _sha1(describe_item(item).encode("utf-8", "surrogatepass"))[:_ID_DIGITS]


def text_id(text: str) -> str:
    """Stable id of a text: ``"h" + sha1(utf-8 text)[:16]``; identical texts share an id."""
    if not isinstance(text, str):
        raise InvalidArgumentTypeError(f"text must be a str, got {type(text).__name__} {text!r}")
    return _text_item_id(text)


@singledispatch
def describe_item(item: Any) -> str:
    """Human-readable, storable form of an item (what goes into a TSV cell or a JSON file).

    A ``str`` is itself; a ``numpy.ndarray`` is a compact JSON list (floats at full
    ``repr`` precision, so ``np.array(json.loads(s), dtype)`` gives the array back);
    a ``Mapping`` is canonical JSON (sorted keys, each value in its own canonical form);
    ``bytes`` is ``"<N bytes sha1:...>"``. Other types raise; register them with
    ``@describe_item.register(MyType)``.
    """
    raise InvalidArgumentTypeError(
        f"describe_item has no rule for items of type {_type_name(item)}; supported: str, "
        "numpy.ndarray, bytes, Mapping; register one with "
        "`@metric_sim.items.describe_item.register(MyType)`"
    )


@describe_item.register(str)
def _describe_text(item: str) -> str:
    return item


@describe_item.register(np.ndarray)
def _describe_array(item: np.ndarray) -> str:
    return _canonical_json(_json_value(item))


@describe_item.register(bytes)
@describe_item.register(bytearray)
def _describe_bytes(item: bytes | bytearray) -> str:
    return f"<{len(item)} bytes sha1:{_sha1(bytes(item))[:_ID_DIGITS]}>"


@describe_item.register(Mapping)
def _describe_record(item: Mapping) -> str:
    return _canonical_json(_json_value(item))


def _json_value(value: Any) -> Any:
    """A record field (or an array) as plain JSON data; the same value always gives the same data."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            return [_json_value(v) for v in value.tolist()]
        return value.tolist()  # Python floats: json writes them with repr precision
    if isinstance(value, Mapping):
        out = {}
        for key, field_value in value.items():
            if not isinstance(key, str):
                # json would turn 1 into "1": {1: x} and {"1": x} must not become one record
                raise InvalidArgumentTypeError(
                    f"record field names must be str, got {_type_name(key)} {key!r}"
                )
            out[key] = _json_value(field_value)
        return out
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return _describe_bytes(value)
    raise InvalidArgumentTypeError(
        f"a record field of type {_type_name(value)} has no canonical form; use str, numbers, "
        "bool, None, lists, mappings, numpy arrays or bytes"
    )
