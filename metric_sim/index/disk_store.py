"""A disk-backed item store for the compressed kinds: ids and descriptions in SQLite, keys in RAM.

:class:`~.store.ItemStore` keeps every id and description in two Python dicts, a few hundred
bytes per item: more than the PQ codes of a compressed index. :class:`DiskItemStore` answers
the same methods with only the int64 keys in RAM (a NumPy array in key order, which is
insertion order since keys only grow) and the ids and descriptions in an SQLite file with
the saved schema (table ``items (key, id, text)``). Lookups of many keys or ids go to SQLite
in batches (``IN (...)``), an add is one transaction.

Where the file lives, as for the compressed kinds' vector file: a private temporary file
(under ``TMPDIR``, removed with the store) until ``save``; then the saved folder's
``store.sqlite``, opened read-only and immutable. The first change after that copies it
(SQLite's backup API) to a private file again: the saved folder only ever changes through
an atomic ``save``. An open file stays readable when its folder is moved or deleted.

One connection (``check_same_thread=False``) behind a lock serves every thread: the server's
worker threads and concurrent searches share it, and each call holds it only briefly.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
import threading
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from metric_sim.errors import IndexLoadError
from metric_sim.index.store import ITEMS_TABLE, new_item_ids
from metric_sim.layout import METADATA_FILE, STORE_FILE

__all__ = ["DiskItemStore"]

_BATCH = 500  # values per IN (...): below SQLite's oldest limit of 999 host parameters
_KEY_BYTES = np.dtype(np.int64).itemsize


def _read_only(path: Path) -> sqlite3.Connection:
    # immutable: a saved folder is never changed in place, so no locks and no journal files.
    uri = f"{path.resolve().as_uri()}?mode=ro&immutable=1"
    return sqlite3.connect(uri, uri=True, check_same_thread=False)


def _discard(connection: sqlite3.Connection, folder: str) -> None:
    connection.close()
    shutil.rmtree(folder, ignore_errors=True)


def _chunks(values: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for start in range(0, len(values), _BATCH):
        yield values[start : start + _BATCH]


class DiskItemStore:
    """Keys in RAM, ids and descriptions in SQLite; the methods of :class:`~.store.ItemStore`."""

    kind = "sqlite"
    ram_bytes_per_item = _KEY_BYTES  # the int64 key; SQLite's page cache is bounded, not per item

    def __init__(self, next_key: int = 0) -> None:
        self.next_key = next_key  # keys are never reused, even after a removal
        self._keys = np.zeros(0, np.int64)  # the first _count entries: stored keys, ascending
        self._count = 0
        self._lock = threading.RLock()
        self._connection: sqlite3.Connection | None = None  # None: empty, no file yet
        self._path: Path | None = None  # the file in use
        self._writable = False  # True once the file in use is our private copy
        self._cleanup: Any = None

    # Reads.

    def __len__(self) -> int:
        return self._count

    def __contains__(self, item_id: object) -> bool:
        if not isinstance(item_id, (str, int)):
            return False
        return bool(self._query("SELECT 1 FROM items WHERE id = ?", (str(item_id),)))

    @property
    def ids(self) -> list[str]:
        return [row[0] for row in self._query("SELECT id FROM items ORDER BY key")]

    @property
    def texts(self) -> list[str]:
        return [row[0] for row in self._query("SELECT text FROM items ORDER BY key")]

    @property
    def file(self) -> Path | None:
        """The SQLite file in use (a saved folder's may since have moved), None while empty."""
        return self._path

    def keys(self) -> np.ndarray:
        """int64 FAISS keys of the stored items, in insertion order (a copy)."""
        with self._lock:
            return self._keys[: self._count].copy()

    def item(self, key: int) -> tuple[str, str]:
        """(id, description) of the item stored under ``key``."""
        rows = self._query("SELECT id, text FROM items WHERE key = ?", (int(key),))
        if not rows:
            raise KeyError(key)
        return rows[0][0], rows[0][1]

    def items_of(self, keys: Sequence[int] | np.ndarray) -> list[tuple[str, str]]:
        """(id, description) of each of ``keys``, in that order, in one query per batch."""
        wanted = keys.tolist() if isinstance(keys, np.ndarray) else [int(k) for k in keys]
        found = self._lookup("SELECT key, id, text FROM items WHERE key IN ({})", list(dict.fromkeys(wanted)))
        try:
            return [found[key] for key in wanted]
        except KeyError as exc:
            raise KeyError(exc.args[0]) from None

    def text_of(self, item_id: str | int) -> str:
        rows = self._query("SELECT text FROM items WHERE id = ?", (str(item_id),))
        if not rows:
            raise KeyError(f"id {item_id!r} is not in the index")
        return rows[0][0]

    def check_new_ids(self, n_items: int, ids: Sequence[str | int] | None) -> list[str]:
        """The ids ``n_items`` new items get (``ids`` as strings, or the next free keys as strings).

        Refuses ids that are empty, repeated, already stored, or not one per item.
        """
        return new_item_ids(n_items, ids, self.next_key, self._stored_among)

    def next_keys(self, n_items: int) -> np.ndarray:
        """The keys the next ``n_items`` items will get (reserved by :meth:`insert`)."""
        return np.arange(self.next_key, self.next_key + n_items, dtype=np.int64)

    def keys_of(self, ids: Sequence[str | int]) -> tuple[list[str], np.ndarray]:
        """(unique ids as strings, their keys); ``KeyError`` if any id is unknown."""
        wanted = list(dict.fromkeys(str(i) for i in ids))
        found = self._key_by_id(wanted)
        missing = [i for i in wanted if i not in found]
        if missing:
            raise KeyError(f"{len(missing)} id(s) are not in the index, e.g. {missing[:5]}")
        return wanted, np.array([found[i] for i in wanted], dtype=np.int64)

    # Writes: each in one transaction, on our private file.

    def insert(self, keys: np.ndarray, ids: list[str], texts: list[str]) -> None:
        if not len(keys) == len(ids) == len(texts):
            raise ValueError(f"insert needs one id and text per key, got {len(keys)}, {len(ids)} and {len(texts)}")
        if not len(keys):
            return
        with self._lock:
            connection = self._private_connection()
            with connection:  # commits, or rolls back if any row fails
                connection.executemany("INSERT INTO items (key, id, text) VALUES (?, ?, ?)",
                                       zip(keys.tolist(), ids, texts, strict=True))
            self._append(np.asarray(keys, dtype=np.int64))
            self.next_key = max(self.next_key, int(keys.max()) + 1)

    def delete(self, ids: list[str]) -> None:
        with self._lock:
            found = self._key_by_id(list(dict.fromkeys(ids)))
            for item_id in ids:
                if item_id not in found:
                    raise KeyError(item_id)  # before anything is deleted
            if not found:
                return
            gone = np.sort(np.fromiter(found.values(), np.int64, len(found)))
            connection = self._private_connection()
            with connection:
                connection.executemany("DELETE FROM items WHERE key = ?", ((k,) for k in gone.tolist()))
            live = self._keys[: self._count]
            self._keys = np.delete(live, np.searchsorted(live, gone))
            self._count = len(self._keys)

    # The file.

    def write_sqlite(self, path: Path) -> None:
        """Copy the store into the new file ``path`` (a save's staging folder), same schema."""
        target = sqlite3.connect(path)
        try:
            with self._lock:
                if self._connection is None:
                    target.execute(ITEMS_TABLE)
                    target.commit()
                else:
                    self._connection.backup(target)
        finally:
            target.close()

    def attach(self, path: Path) -> None:
        """Use the saved file ``path`` (just written from this store), read-only; drop our private copy."""
        connection = _read_only(path)
        with self._lock:
            self._close()
            self._connection, self._path, self._writable = connection, path, False

    @classmethod
    def read_sqlite(cls, path: Path, *, count: int, next_key: int) -> DiskItemStore:
        """The store saved in ``path``, opened read-only; refuses a file that is unreadable or holds another count."""
        store = cls(next_key)
        try:
            connection = _read_only(path)
            connection.execute("SELECT key, id, text FROM items LIMIT 1").fetchall()
            keys = np.fromiter((row[0] for row in connection.execute("SELECT key FROM items ORDER BY key")), np.int64)
        except sqlite3.DatabaseError as exc:
            raise IndexLoadError(f"{path} is not a readable SQLite store ({exc})") from None
        if len(keys) != count:
            connection.close()
            raise IndexLoadError(f"{path} holds {len(keys)} items, but {METADATA_FILE} says {count}")
        store._keys, store._count = keys, len(keys)
        store._connection, store._path = connection, path
        return store

    # Internals.

    def _query(self, sql: str, values: tuple[Any, ...] = ()) -> list[Any]:
        with self._lock:
            if self._connection is None:
                return []
            return self._connection.execute(sql, values).fetchall()

    def _lookup(self, sql: str, values: list[Any]) -> dict[Any, Any]:
        """First column -> the rest (one value, or a tuple of them) for the rows whose first column is in ``values``."""
        found: dict[Any, Any] = {}
        with self._lock:
            if self._connection is None:
                return found
            for chunk in _chunks(values):
                rows = self._connection.execute(sql.format(",".join("?" * len(chunk))), chunk)
                found.update((row[0], row[1] if len(row) == 2 else tuple(row[1:])) for row in rows)
        return found

    def _key_by_id(self, ids: list[str]) -> dict[str, int]:
        return self._lookup("SELECT id, key FROM items WHERE id IN ({})", ids)

    def _stored_among(self, ids: list[str]) -> set[str]:
        return set(self._key_by_id(list(dict.fromkeys(ids))))

    def _append(self, keys: np.ndarray) -> None:
        end = self._count + len(keys)
        if end > len(self._keys):  # grow by 1/8: amortised O(1) per key, at most 1 byte of slack per item
            grown = np.empty(max(end + end // 8, 1024), np.int64)
            grown[: self._count] = self._keys[: self._count]
            self._keys = grown
        self._keys[self._count : end] = keys
        self._count = end

    def _private_connection(self) -> sqlite3.Connection:
        """The connection to our private file, made first (a copy of the file in use) if needed."""
        if self._writable:
            assert self._connection is not None
            return self._connection
        folder = Path(tempfile.mkdtemp(prefix="metric-sim-store-"))
        path = folder / STORE_FILE
        connection = sqlite3.connect(path, check_same_thread=False)
        try:
            if self._connection is None:
                connection.execute(ITEMS_TABLE)
                connection.commit()
            else:
                self._connection.backup(connection)
            # A scratch copy: the saved folder is what must survive a crash, so no fsync here.
            connection.execute("PRAGMA synchronous = OFF")
            connection.execute("PRAGMA journal_mode = MEMORY")
        except BaseException:
            _discard(connection, str(folder))
            raise
        self._close()
        self._cleanup = weakref.finalize(self, _discard, connection, str(folder))
        self._connection, self._path, self._writable = connection, path, True
        return connection

    def _close(self) -> None:
        """Close the file in use; remove it if it is our private copy."""
        if self._cleanup is not None:
            self._cleanup()
        elif self._connection is not None:
            self._connection.close()
        self._connection = self._cleanup = None
        self._path, self._writable = None, False
