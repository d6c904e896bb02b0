"""The server's data folder: an append-only log of item writes, and snapshots of the index.

Layout of ``--data-dir``::

    snapshot-00000000000000000042/   an index folder (NeighborIndex.save) holding writes 1..42
    log-00000000000000000042.jsonl   the writes after 42, one JSON line each

A write (``add`` or ``delete``) gets the next sequence number and is appended to the
current log as one line ``{"sha256":"<hex of the record's bytes>","record":{...}}``, then
flushed and ``os.fsync``'ed; only then is it applied to the live index and acknowledged.
An ``add`` record holds the ids, the stored descriptions and the vectors (little-endian
float32, base64), so replay never re-encodes and gives back exactly the vectors served.

A snapshot is saved under a temporary name, every file and the folder fsynced, renamed to
``snapshot-N`` and the data folder fsynced; only then does a new log ``log-N`` start and
the older logs and snapshots get deleted. So at every instant the newest complete
snapshot plus the logs after it hold every acknowledged write, whatever ``kill -9`` or a
power cut interrupts.

At start the newest snapshot is loaded and the logs after it replayed. The last line of
the last log may be torn (a write cut short before it was acknowledged): it is dropped and
the file truncated before new writes. Any other bad line (a checksum mismatch, a gap in the
sequence) refuses to start: ``IndexLoadError`` naming the file and line.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from metric_sim.errors import IndexLoadError

__all__ = ["DataDir", "decode_vectors", "encode_line", "encode_vectors", "parse_line", "read_log"]

logger = logging.getLogger(__name__)

_PREFIX = b'{"sha256":"'
_MIDDLE = b'","record":'
_PAYLOAD_START = len(_PREFIX) + 64 + len(_MIDDLE)
_SNAPSHOT = re.compile(r"^snapshot-(\d{20})$")
_LOG = re.compile(r"^log-(\d{20})\.jsonl$")
_STAGING = ".staging-"


def encode_vectors(vectors: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(vectors, dtype="<f4").tobytes()).decode("ascii")


def decode_vectors(text: str, n: int, dim: int) -> np.ndarray:
    data = base64.b64decode(text, validate=True)
    if len(data) != n * dim * 4:
        raise ValueError(f"{len(data)} bytes of vectors for {n} x {dim} float32")
    return np.frombuffer(data, dtype="<f4").reshape(n, dim).astype(np.float32)


def encode_line(record: dict[str, Any]) -> bytes:
    payload = json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":"),
                         allow_nan=False).encode("utf-8", "surrogatepass")
    return _PREFIX + hashlib.sha256(payload).hexdigest().encode("ascii") + _MIDDLE + payload + b"}\n"


def parse_line(line: bytes) -> dict[str, Any]:
    """The record of one complete log line; ``ValueError`` saying why when it is not sound."""
    if not line.endswith(b"}\n"):
        raise ValueError("the line is incomplete")
    if not line.startswith(_PREFIX) or line[_PAYLOAD_START - len(_MIDDLE):_PAYLOAD_START] != _MIDDLE:
        raise ValueError("the line is not a log record")
    payload = line[_PAYLOAD_START:-2]
    if hashlib.sha256(payload).hexdigest().encode("ascii") != line[len(_PREFIX):len(_PREFIX) + 64]:
        raise ValueError("the checksum does not match")
    record = json.loads(payload.decode("utf-8", "surrogatepass"))
    if not isinstance(record, dict) or not isinstance(record.get("seq"), int):
        raise ValueError("the record has no sequence number")
    return record


def read_log(path: Path, *, last: bool) -> tuple[list[dict[str, Any]], int]:
    """(records, bytes of the sound prefix). Only in the ``last`` log may the final line be torn."""
    data = path.read_bytes()
    records, offset, line_no = [], 0, 0
    while offset < len(data):
        end = data.find(b"\n", offset)
        line = data[offset:] if end < 0 else data[offset:end + 1]
        line_no += 1
        try:
            records.append(parse_line(line))
        except (ValueError, UnicodeDecodeError) as exc:
            if last and end < 0 or last and end + 1 == len(data):
                logger.warning("%s, line %d: dropping a torn last record (%s); it was never acknowledged",
                               path, line_no, exc)
                return records, offset
            raise IndexLoadError(f"{path}, line {line_no}: the log is damaged ({exc}); "
                                 "restore the data folder from a backup") from None
        offset += len(line)
    return records, offset


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    for child in folder.iterdir():
        if child.is_file():
            with open(child, "rb") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(folder)


class DataDir:
    """The log and snapshots of one server. Not thread-safe: the caller serialises writes."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder).expanduser().resolve()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.seq = 0  # sequence number of the last durable write
        self.snapshot_seq = 0
        self._log: int | None = None  # file descriptor of the current log
        self._log_seq = 0
        self._damaged = False

    def snapshot_path(self, seq: int) -> Path:
        return self.folder / f"snapshot-{seq:020d}"

    def log_path(self, seq: int) -> Path:
        return self.folder / f"log-{seq:020d}.jsonl"

    def _numbered(self, pattern: re.Pattern[str]) -> list[int]:
        return sorted(int(m.group(1)) for p in self.folder.iterdir() if (m := pattern.match(p.name)))

    @property
    def records_since_snapshot(self) -> int:
        return self.seq - self.snapshot_seq

    def latest_snapshot(self) -> Path | None:
        """The newest complete snapshot (leftover staging folders of a crash are removed)."""
        for path in self.folder.iterdir():
            if _STAGING in path.name and path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
        snapshots = self._numbered(_SNAPSHOT)
        if not snapshots:
            if self._numbered(_LOG):
                raise IndexLoadError(f"{self.folder} holds logs but no snapshot: it is damaged or not a data folder")
            return None
        self.snapshot_seq = self.seq = snapshots[-1]
        return self.snapshot_path(snapshots[-1])

    def pending_records(self) -> list[dict[str, Any]]:
        """The records after the loaded snapshot, checked for gaps; the torn tail is cut off the last log."""
        logs = [s for s in self._numbered(_LOG) if s >= self.snapshot_seq]
        out: list[dict[str, Any]] = []
        expected = self.snapshot_seq + 1
        for i, start in enumerate(logs):
            path = self.log_path(start)
            if start != expected - 1:
                raise IndexLoadError(f"{path}: starts after write {start}, but write {expected - 1} came last: "
                                     "a log is missing")
            records, sound = read_log(path, last=i == len(logs) - 1)
            for record in records:
                if record["seq"] != expected:
                    raise IndexLoadError(f"{path}: write {record['seq']} where write {expected} was expected")
                expected += 1
            if sound < path.stat().st_size:
                with open(path, "r+b") as handle:
                    handle.truncate(sound)
                    os.fsync(handle.fileno())
            out += records
        self.seq = expected - 1
        self._log_seq = logs[-1] if logs else self.snapshot_seq
        return out

    def open_log(self) -> None:
        """Open the current log for appending (created, and the folder fsynced, when new)."""
        path = self.log_path(self._log_seq)
        new = not path.exists()
        self._log = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if new:
            _fsync_dir(self.folder)
        self._delete_older(self.snapshot_seq)

    def append(self, record: dict[str, Any]) -> int:
        """Make ``record`` durable as write ``seq + 1``; returns its number. On failure nothing is kept."""
        if self._log is None or self._damaged:
            raise OSError(f"the log in {self.folder} is not writable (an earlier write failed and could not be undone)")
        seq = self.seq + 1
        line = encode_line({**record, "seq": seq})
        size = os.lseek(self._log, 0, os.SEEK_END)
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(self._log, view):]
            os.fsync(self._log)
        except BaseException:
            try:
                os.ftruncate(self._log, size)  # never leave a partial line for the next write to follow
            except OSError:
                self._damaged = True
            raise
        self.seq = seq
        return seq

    def write_snapshot(self, index: Any) -> Path:
        """Save ``index`` (holding writes 1..seq) as ``snapshot-seq``, start ``log-seq``, drop what it covers."""
        seq = self.seq
        target = self.snapshot_path(seq)
        if seq == self.snapshot_seq and target.is_dir():
            return target
        staging = self.folder / f"{_STAGING}{seq:020d}"
        shutil.rmtree(staging, ignore_errors=True)
        index.save(staging)
        _fsync_tree(staging)
        os.replace(staging, target)
        _fsync_dir(self.folder)
        self.snapshot_seq = self._log_seq = seq
        old = self._log
        self.open_log()
        if old is not None:
            os.close(old)
        return target

    def _delete_older(self, seq: int) -> None:
        """Remove logs and snapshots that the snapshot ``seq`` covers (it is durable by now)."""
        removed = False
        for start in self._numbered(_LOG):
            if start < seq:
                self.log_path(start).unlink(missing_ok=True)
                removed = True
        for start in self._numbered(_SNAPSHOT):
            if start < seq:
                shutil.rmtree(self.snapshot_path(start), ignore_errors=True)
                removed = True
        if removed:
            _fsync_dir(self.folder)

    def close(self) -> None:
        if self._log is not None:
            os.close(self._log)
            self._log = None
