"""The item store of an index: FAISS key -> (caller's id, stored description), and its SQLite file.

FAISS sees int64 keys ``0, 1, 2, ...`` that are never reused; this store maps each key
to the caller's string id and to the item's description (``ItemEncoder.describe_item``:
the text itself for texts). ``store.sqlite`` holds one table ``items (key, id, text)``;
never pickle, so a saved index cannot run code when loaded.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Container, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from metric_sim.encoders.base import ItemEncoder
from metric_sim.errors import IndexLoadError, InvalidArgumentError, InvalidArgumentTypeError
from metric_sim.items import describe_item
from metric_sim.layout import METADATA_FILE

__all__ = ["ITEMS_TABLE", "ItemStore", "describe_items", "new_item_ids"]

# The one table of store.sqlite (the saved schema; the disk-backed store works on the same).
ITEMS_TABLE = "CREATE TABLE items (key INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, text TEXT NOT NULL)"


def describe_items(encoder: ItemEncoder | None, items: Any, name: str) -> tuple[list[Any], list[str]]:
    """``items`` as a list, checked by ``encoder``, and the description of each (what the store keeps).

    Without an encoder (an index of precomputed vectors and no model) any item that
    :func:`metric_sim.items.describe_item` knows is accepted.
    """
    if encoder is not None:
        checked = encoder.check_items(items, name)
        return checked, [encoder.describe_item(item) for item in checked]
    if isinstance(items, (str, bytes)) or not isinstance(items, (Sequence, np.ndarray)):
        raise InvalidArgumentTypeError(f"{name} must be a list of items, got {type(items).__name__}")
    checked = list(items)
    return checked, [describe_item(item) for item in checked]


def new_item_ids(n_items: int, ids: Sequence[str | int] | None, next_key: int,
                 stored_among: Callable[[list[str]], Container[str]]) -> list[str]:
    """The ids ``n_items`` new items get (``ids`` as strings, or the next free keys as strings).

    Refuses ids that are empty, repeated, already stored (``stored_among(new ids)`` holds
    those of them the store has), or not one per item.
    """
    if ids is None:
        new_ids = [str(next_key + i) for i in range(n_items)]
    else:
        if isinstance(ids, (str, bytes)) or not isinstance(ids, (Sequence, np.ndarray)):
            raise InvalidArgumentTypeError(f"ids must be a list of str or int, got {type(ids).__name__}")
        new_ids = []
        for i, item_id in enumerate(ids):
            if isinstance(item_id, bool) or not isinstance(item_id, (str, int, np.integer)):
                raise InvalidArgumentTypeError(
                    f"ids[{i}] must be a str or int, got {type(item_id).__name__} {item_id!r}"
                )
            if isinstance(item_id, str) and not item_id.strip():
                raise InvalidArgumentError(f"ids[{i}] is empty")
            new_ids.append(str(item_id))
        if len(new_ids) != n_items:
            raise InvalidArgumentError(
                f"ids and texts must have the same length, got {len(new_ids)} and {n_items}"
            )
    stored = stored_among(new_ids)
    seen: dict[str, int] = {}
    for i, item_id in enumerate(new_ids):
        if item_id in stored:
            raise InvalidArgumentError(
                f"ids[{i}] = {item_id!r} is already in the index (remove it first)"
            )
        if item_id in seen:
            raise InvalidArgumentError(
                f"ids[{i}] = {item_id!r} repeats ids[{seen[item_id]}]; ids must be unique"
            )
        seen[item_id] = i
    return new_ids


class ItemStore:
    """Keys, ids and descriptions of the stored items, in insertion order (all in RAM)."""

    kind = "memory"
    ram_bytes_per_item: int | None = None  # Python objects: not known without measuring

    def __init__(self, next_key: int = 0) -> None:
        self._key_of: dict[str, int] = {}
        self._items: dict[int, tuple[str, str]] = {}  # key -> (id, description), in insertion order
        self.next_key = next_key  # keys are never reused, even after a removal

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, item_id: object) -> bool:
        return str(item_id) in self._key_of if isinstance(item_id, (str, int)) else False

    @property
    def ids(self) -> list[str]:
        return [item_id for item_id, _ in self._items.values()]

    @property
    def texts(self) -> list[str]:
        return [text for _, text in self._items.values()]

    def keys(self) -> np.ndarray:
        """int64 FAISS keys of the stored items, in insertion order."""
        return np.fromiter(self._items, dtype=np.int64, count=len(self._items))

    def item(self, key: int) -> tuple[str, str]:
        """(id, description) of the item stored under ``key``."""
        return self._items[key]

    def text_of(self, item_id: str | int) -> str:
        key = self._key_of.get(str(item_id))
        if key is None:
            raise KeyError(f"id {item_id!r} is not in the index")
        return self._items[key][1]

    def check_new_ids(self, n_items: int, ids: Sequence[str | int] | None) -> list[str]:
        """The ids ``n_items`` new items get (``ids`` as strings, or the next free keys as strings).

        Refuses ids that are empty, repeated, already stored, or not one per item.
        """
        return new_item_ids(n_items, ids, self.next_key, lambda wanted: self._key_of)

    def items_of(self, keys: Sequence[int] | np.ndarray) -> list[tuple[str, str]]:
        """(id, description) of each of ``keys``, in that order."""
        return [self._items[key] for key in (keys.tolist() if isinstance(keys, np.ndarray) else keys)]

    def next_keys(self, n_items: int) -> np.ndarray:
        """The keys the next ``n_items`` items will get (reserved by :meth:`insert`)."""
        return np.arange(self.next_key, self.next_key + n_items, dtype=np.int64)

    def insert(self, keys: np.ndarray, ids: list[str], texts: list[str]) -> None:
        for key, item_id, text in zip(keys.tolist(), ids, texts, strict=True):
            self._key_of[item_id] = key
            self._items[key] = (item_id, text)
        self.next_key = max(self.next_key, int(keys.max()) + 1) if len(keys) else self.next_key

    def keys_of(self, ids: Sequence[str | int]) -> tuple[list[str], np.ndarray]:
        """(unique ids as strings, their keys); ``KeyError`` if any id is unknown."""
        wanted = list(dict.fromkeys(str(i) for i in ids))
        missing = [i for i in wanted if i not in self._key_of]
        if missing:
            raise KeyError(f"{len(missing)} id(s) are not in the index, e.g. {missing[:5]}")
        return wanted, np.array([self._key_of[i] for i in wanted], dtype=np.int64)

    def delete(self, ids: list[str]) -> None:
        for item_id in ids:
            del self._items[self._key_of.pop(item_id)]

    def write_sqlite(self, path: Path) -> None:
        connection = sqlite3.connect(path)
        try:
            connection.execute(ITEMS_TABLE)
            connection.executemany(
                "INSERT INTO items (key, id, text) VALUES (?, ?, ?)",
                ((k, i, t) for k, (i, t) in self._items.items()),
            )
            connection.commit()
        finally:
            connection.close()

    @classmethod
    def read_sqlite(cls, path: Path, *, count: int, next_key: int) -> ItemStore:
        """The store saved in ``path``; refuses a file that is unreadable or holds another count."""
        try:
            connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                rows = connection.execute("SELECT key, id, text FROM items ORDER BY key").fetchall()
            finally:
                connection.close()
        except sqlite3.DatabaseError as exc:
            raise IndexLoadError(f"{path} is not a readable SQLite store ({exc})") from None
        if len(rows) != count:
            raise IndexLoadError(
                f"{path} holds {len(rows)} items, but {METADATA_FILE} says {count}"
            )
        store = cls(next_key)
        for key, item_id, text in rows:
            store._key_of[item_id] = key
            store._items[key] = (item_id, text)
        return store
