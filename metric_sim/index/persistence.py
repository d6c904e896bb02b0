"""An index folder on disk: writing it atomically and refusing any folder that is damaged.

``index.faiss`` (the vectors; for the compressed kinds, their codes), ``store.sqlite``
(keys, ids, descriptions; never pickle), for the compressed kinds ``vectors.f32`` (the full
vectors, row = key) and ``metadata.json`` (dim, metric, kind, params, encoder fingerprint,
calibrator, count, versions, size + sha256 of every data file; for the compressed kinds
also a ``compressed`` section: bytes per item, code error, recall@10) are written into a
temporary folder that is renamed into place. Loading checks all of it and refuses on any mismatch, naming it.

``metadata.json`` is validated field by field (:func:`validate_metadata`) and sealed
with ``metadata_sha256`` (:mod:`metric_sim.schema`). The seal is verified last
(:func:`verify_metadata_seal`, called by ``NeighborIndex.load`` after the store check), after
the checks that can say *what* disagrees with the data files: it then catches an edit that every other check lets through (another
encoder fingerprint, calibrator or model path). Folders saved before the seal existed
have none and load once their fields validate.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from metric_sim.distances import Metric
from metric_sim.errors import IndexConfigError, IndexLoadError, MissingFileError, TargetExistsError
from metric_sim.index.kinds import COMPRESSED_KINDS, INDEX_KINDS, resolve_params
from metric_sim.index.store import ItemStore
from metric_sim.index.vectors import FaissVectors, faiss_class_of_kind, stored_keys
from metric_sim.layout import INDEX_FILE, METADATA_FILE, STORE_FILE, VECTORS_FILE
from metric_sim.model import saved_calibrator
from metric_sim.schema import (
    CHECKSUM_KEY,
    SHA256_HEX,
    SavedFields,
    check_seal,
    read_json_file,
    seal,
)
from metric_sim.storage import atomic_dir, package_versions, sha256_file, write_json_atomic

__all__ = [
    "FORMAT_VERSION",
    "check_save_target",
    "check_store_matches",
    "library_versions",
    "read_faiss_index",
    "read_metadata",
    "validate_metadata",
    "verify_metadata_seal",
    "write_index_folder",
]

FORMAT_VERSION = 1  # of metadata.json
_DATA_FILES = (INDEX_FILE, STORE_FILE)
_FIELDS = ("format_version", "kind", "params", "metric", "dim", "count", "next_key", "max_sq_norm",
           "encoder_fingerprint", "model_path", "calibrator", "files", "versions", "created", "compressed",
           CHECKSUM_KEY)


def _data_files(kind: str) -> tuple[str, ...]:
    """The files a saved index of ``kind`` holds besides ``metadata.json``."""
    return _DATA_FILES + ((VECTORS_FILE,) if kind in COMPRESSED_KINDS else ())
_SEAL_REMEDY = (
    "If you edited it on purpose, delete its metadata_sha256 entry to accept the edit "
    "(every other field is still checked); otherwise rebuild the index"
)


def check_save_target(directory: str | os.PathLike[str]) -> Path:
    """The resolved folder ``save`` may write: absent, empty, or a saved index (then replaced).

    Anything else raises ``TargetExistsError`` (a ``FileExistsError``), so a typo can never wipe a folder of other files.
    """
    target = Path(directory).expanduser().resolve()
    if target.exists() and (
        not target.is_dir() or (any(target.iterdir()) and not (target / METADATA_FILE).is_file())
    ):
        raise TargetExistsError(
            f"{target} exists and is not a saved NeighborIndex; refusing to overwrite it"
        )
    return target


def library_versions() -> dict[str, str]:
    """The versions ``metadata.json`` records (keys: faiss, metric_sim, numpy, python)."""
    import faiss

    found = package_versions(("metric-sim", "numpy"))
    return {
        "metric_sim": found["metric-sim"],
        # The module's own version: the distribution is faiss-cpu, faiss-gpu or a conda build.
        "faiss": faiss.__version__,
        "numpy": found["numpy"],
        "python": sys.version.split()[0],
    }


def write_index_folder(
    directory: str | os.PathLike[str], vectors: FaissVectors, store: ItemStore, provenance: dict[str, Any]
) -> Path:
    """Write the three files atomically into ``directory`` (see :func:`check_save_target`).

    ``provenance`` holds ``encoder_fingerprint``, ``model_path`` and ``calibrator``.
    """
    import faiss

    target = check_save_target(directory)
    with atomic_dir(target) as staging:
        faiss.write_index(vectors.index, str(staging / INDEX_FILE))
        store.write_sqlite(staging / STORE_FILE)
        extra = {}
        if vectors.compressed:  # the full vectors, row = key, for exact re-ranking
            vectors.write_file(staging / VECTORS_FILE, store.next_key)
            extra["compressed"] = vectors.stats()
        metadata = {
            "format_version": FORMAT_VERSION,
            "kind": vectors.kind,
            "params": vectors.params,
            "metric": vectors.metric.value,
            "dim": vectors.dim,
            "count": len(store),
            "next_key": store.next_key,
            "max_sq_norm": vectors.max_sq_norm,
            **provenance,
            **extra,
            "files": {
                name: {"size": (staging / name).stat().st_size, "sha256": sha256_file(staging / name)}
                for name in _data_files(vectors.kind)
            },
            "versions": library_versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        write_json_atomic(staging / METADATA_FILE, seal(metadata))
    return target


def read_metadata(directory: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    """(folder, its metadata) once every field validates and both data files match their checksums.

    The metadata's own seal is verified by :func:`verify_metadata_seal`, the last check of a load.
    """
    folder = Path(directory).expanduser()
    if not folder.is_dir():
        raise MissingFileError(f"index folder not found: {folder}")
    meta_file = folder / METADATA_FILE
    if not meta_file.is_file():
        raise IndexLoadError(f"{folder} is not a saved NeighborIndex: {METADATA_FILE} is missing")
    try:
        meta = read_json_file(meta_file, IndexLoadError)
    except IndexLoadError as exc:
        raise IndexLoadError(f"{exc}; the index folder is damaged") from None
    validate_metadata(meta, meta_file)
    for name in _data_files(meta["kind"]):
        path = folder / name
        expected = meta["files"][name]
        if not path.is_file():
            raise IndexLoadError(f"{path} is missing; the index folder is incomplete")
        size = path.stat().st_size
        if size != expected["size"]:
            raise IndexLoadError(
                f"{path} has {size} bytes, but {METADATA_FILE} says {expected['size']}: the file is truncated or was "
                f"replaced (or {METADATA_FILE} is damaged)"
            )
        if sha256_file(path) != expected["sha256"]:
            raise IndexLoadError(
                f"{path} does not match the checksum in {METADATA_FILE}: the file is corrupted or was modified"
            )
    return folder, meta


def validate_metadata(meta: Any, meta_file: Path) -> dict[str, Any]:
    """``meta`` once every field ``NeighborIndex.load`` reads has the right type and a coherent value.

    Anything else is an :class:`IndexLoadError` naming ``meta_file`` and the field.
    """
    fields = SavedFields(meta, meta_file, IndexLoadError)
    fields.get("format_version", int, choices=(FORMAT_VERSION,))
    fields.refuse_unknown(_FIELDS)
    metric = Metric.parse(fields.get("metric", str, choices=[m.value for m in Metric]))
    kind = fields.get("kind", str, choices=INDEX_KINDS)
    params = fields.section("params")
    assert params is not None
    for name in params.payload:
        params.get(name, int, nullable=True, minimum=1)
    try:
        resolve_params(kind, {}, params.payload)
    except IndexConfigError as exc:
        fields.fail("params", f"do not fit kind {kind!r}: {exc}")
    fields.get("dim", int, minimum=1)
    count = fields.get("count", int, minimum=0)
    next_key = fields.get("next_key", int, minimum=0)
    if next_key < count:  # keys are 0, 1, ... and never reused
        fields.fail("next_key", f"must be at least count ({count}), got {next_key}")
    fields.get("max_sq_norm", float, required=False, minimum=0)
    fields.get("encoder_fingerprint", str, required=False, nullable=True)
    fields.get("model_path", str, required=False, nullable=True)
    saved_calibrator(fields, "calibrator", metric, owner="the index")
    _validate_compressed(fields, kind)
    files = fields.section("files")
    assert files is not None
    for name in _data_files(kind):
        entry = files.section(name)
        assert entry is not None
        entry.get("size", int, minimum=0)
        entry.get("sha256", str, pattern=SHA256_HEX)
    versions = fields.section("versions", required=False)
    for name in versions.payload if versions is not None else ():
        versions.get(name, str)
    fields.get("created", str, required=False)
    return meta


def _validate_compressed(fields: SavedFields, kind: str) -> None:
    """The ``compressed`` section: required for the compressed kinds, refused for the others."""
    section = fields.section("compressed", required=kind in COMPRESSED_KINDS)
    if section is None:
        return
    if kind not in COMPRESSED_KINDS:
        fields.fail("compressed", f"belongs to the compressed kinds {list(COMPRESSED_KINDS)}, not to kind {kind!r}")
    section.refuse_unknown(("ram_bytes_per_item", "code_size", "id_bytes", "train_vectors", "max_code_error",
                            "max_sq_norm", "vector_rows", "recall", "fast_scan"))
    section.get("fast_scan", bool, required=False)  # absent in indexes saved before fast-scan existed
    for name in ("ram_bytes_per_item", "code_size", "id_bytes", "train_vectors"):
        section.get(name, int, minimum=1)
    section.get("vector_rows", int, minimum=0)
    section.get("max_code_error", float, minimum=0)
    section.get("max_sq_norm", float, minimum=0)
    recall = section.section("recall", nullable=True)
    if recall is not None:
        recall.refuse_unknown(("recall_at_10", "queries", "items", "seed"))
        if not 0.0 <= recall.get("recall_at_10", float) <= 1.0:
            recall.fail("recall_at_10", "must be between 0 and 1")
        recall.get("queries", int, minimum=0)
        recall.get("items", int, minimum=0)
        recall.get("seed", int, minimum=0)


def verify_metadata_seal(meta: dict[str, Any], folder: Path) -> None:
    """Refuse metadata (as :func:`read_metadata` read it from ``folder``) whose ``metadata_sha256``
    does not match its content (no seal: legacy, accepted)."""
    check_seal(meta, folder / METADATA_FILE, IndexLoadError, _SEAL_REMEDY)


def read_faiss_index(folder: Path, meta: dict[str, Any], vectors: FaissVectors) -> Any:
    """The FAISS index of ``folder``, once it agrees with the metadata ``vectors`` was made from."""
    import faiss

    where = folder / INDEX_FILE
    try:
        loaded = faiss.read_index(str(where))
    except RuntimeError as exc:
        raise IndexLoadError(f"FAISS cannot read {where}: {str(exc).splitlines()[0]}") from None
    if loaded.d != vectors.dim:
        raise IndexLoadError(
            f"{where} holds dimension {loaded.d}, but {METADATA_FILE} says {vectors.dim}: the dimension changed"
        )
    expected_metric = vectors.faiss_metric_type
    if loaded.metric_type != expected_metric:
        raise IndexLoadError(
            f"{where} uses FAISS metric {loaded.metric_type}, but {METADATA_FILE} says {vectors.metric.value!r} (FAISS metric {expected_metric})"
        )
    if loaded.ntotal != meta["count"]:
        raise IndexLoadError(f"{where} holds {loaded.ntotal} vectors, but {METADATA_FILE} says {meta['count']}")
    if vectors.compressed:
        vectors.check_loaded(loaded, where)
        return loaded
    inner = faiss.downcast_index(loaded.index) if isinstance(loaded, faiss.IndexIDMap2) else loaded
    if not isinstance(inner, faiss_class_of_kind(vectors.kind)):
        raise IndexLoadError(
            f"{where} holds a {type(inner).__name__}, but {METADATA_FILE} says kind {vectors.kind!r}"
        )
    if vectors.kind == "ivf" and loaded.nlist != vectors.params.get("nlist"):
        raise IndexLoadError(
            f"{where} has nlist={loaded.nlist}, but {METADATA_FILE} says {vectors.params.get('nlist')}"
        )
    return loaded


def check_store_matches(store: ItemStore, index: Any, path: Path) -> None:
    """Refuse a store (``path``: the folder's ``store.sqlite``) whose keys are not exactly the keys of the FAISS index."""
    keys = store.keys()
    if keys.size and (
        keys.max() >= store.next_key or not np.array_equal(np.sort(stored_keys(index)), np.sort(keys))
    ):
        raise IndexLoadError(f"the ids in {path} do not match the vectors in {INDEX_FILE}")
