"""Sharded corpus encoding for ``metric-sim index build``: ranks share the work, a restart resumes.

``torchrun --nproc_per_node N -m metric_sim index build ...`` runs this on every rank;
without torchrun it is the same code with one rank.

The plan
--------
Items are put in *encoding order* (``ItemEncoder.item_sizes`` descending, ties in input
order: :func:`metric_sim.encoders.batching.encoding_order`, the one rule every
``encode`` follows; for texts the size is the token count) and cut into batches of
``batch_size``; consecutive batches form shards of ``shard_size`` items. The plan
depends on the corpus, the encoder and the two sizes, never on the number of ranks, so

* every batch holds exactly the items it holds when one process encodes the whole
  corpus: the vectors are bit-identical to ``NeighborIndex.build`` on the same kind of
  device and thread count (the same items padded the same way go through the same
  kernels; batches cut elsewhere can differ in the last bit);
* a restart, with any number of ranks, finds the same shards and skips the finished ones.

Shard ``k`` goes to rank ``k % world_size`` (large items come first, so interleaving
spreads them). Rank 0 merges the shards in corpus order and builds the one index.

The work folder
---------------
::

    plan.json            corpus + model fingerprints, sizes, number of items and shards
    shard-00000.npy      float32 (items, dim): the shard's embeddings, in plan order
    shard-00000.json     manifest: row range + checksum, fingerprints, size + sha256 of the .npy

Each file is written under a temporary name and renamed; the manifest comes last, so
a shard without one (or whose ``.npy`` does not match it) was interrupted and is
encoded again. ``plan.json`` and the manifests are sealed with ``metadata_sha256``
(:mod:`metric_sim.schema`) and every field is type-checked on reading: a damaged
manifest means "encode this shard again", a damaged ``plan.json`` is a
:class:`ShardError` naming it (folders written before the seal load unsealed). A work folder or shard made from a different corpus, model, batch or
shard size is refused with a :class:`ShardError`, never mixed in. With several
machines the work folder must be on a filesystem they all see.

torch is imported only when ranks communicate (:func:`encode_sharded`), so planning and
the shard files stay light.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from metric_sim.encoders.base import TrainableEncoder
from metric_sim.encoders.batching import encoding_order
from metric_sim.errors import InvalidArgumentError, InvalidArgumentTypeError, ShardError
from metric_sim.index.neighbor_index import NeighborIndex
from metric_sim.index.persistence import check_save_target
from metric_sim.items import describe_item
from metric_sim.layout import PLAN_FILE, shard_files
from metric_sim.model import SimilarityModel
from metric_sim.schema import (
    CHECKSUM_KEY,
    SHA256_HEX,
    SavedFields,
    check_seal,
    read_json_file,
    seal,
)
from metric_sim.storage import atomic_file, sha256_file, write_json_atomic
from metric_sim.validation import require_positive_int

logger = logging.getLogger(__name__)

__all__ = [
    "PLAN_FILE",
    "SHARD_SIZE",
    "ShardError",
    "ShardPlan",
    "ShardedBuild",
    "ShardedEncoding",
    "build_index_sharded",
    "corpus_fingerprint",
    "default_work_dir",
    "encode_shards",
    "encode_sharded",
    "merge_shards",
    "plan_shards",
]

SHARD_SIZE = 8192  # items per shard: minutes of work on a CPU, seconds on a GPU
FORMAT_VERSION = 1
_PLAN_KEYS = ("format_version", "n_texts", "n_shards", "batch_size", "shard_size", "max_length", "dim",
              "corpus_fingerprint", "model_fingerprint", "order_sha256")
# Smallest value of each integer field of plan.json and the manifests.
_MINIMUM = {"n_texts": 1, "n_shards": 1, "batch_size": 1, "shard_size": 1, "max_length": 0, "dim": 1,
            "shard": 0, "start": 0, "stop": 0, "size": 0}
_DIGESTS = ("corpus_fingerprint", "order_sha256", "rows_sha256", "sha256")
# Informational fields, written but never read back.
_PLAN_EXTRA = ("created", CHECKSUM_KEY)
_MANIFEST_EXTRA = ("file", "size", "sha256", "seconds", "rank", "host", CHECKSUM_KEY)


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def corpus_fingerprint(texts: Sequence[Any], describe: Callable[[Any], str] = describe_item) -> str:
    """sha256 of the items' descriptions in order (the embeddings depend on nothing else of the corpus).

    For texts the description is the text itself, so fingerprints of text corpora are unchanged.
    """
    digest = hashlib.sha256()
    for item in texts:
        digest.update(describe(item).encode("utf-8", "surrogatepass") + b"\0")
    return digest.hexdigest()


@dataclass(frozen=True)
class ShardPlan:
    """Which corpus rows each shard encodes, in which order (see the module docstring)."""

    order: np.ndarray  # corpus rows in encoding order: item size descending, stable
    batch_size: int
    shard_size: int  # a multiple of batch_size, so shards start on batch boundaries
    max_length: int  # the encoder's max_length setting (0 when it has none)
    dim: int
    corpus_fingerprint: str
    model_fingerprint: str

    @property
    def n_texts(self) -> int:
        return int(self.order.shape[0])

    @property
    def n_shards(self) -> int:
        return -(-self.n_texts // self.shard_size)

    def rows(self, shard: int) -> np.ndarray:
        """Corpus rows of ``shard``, in the order they are encoded and stored."""
        return self.order[shard * self.shard_size : (shard + 1) * self.shard_size]

    def owned_by(self, rank: int, world_size: int) -> list[int]:
        return list(range(rank, self.n_shards, world_size))

    def describe(self) -> dict[str, Any]:
        """What ``plan.json`` records; two plans with equal descriptions make the same shards."""
        return {
            "format_version": FORMAT_VERSION,
            "n_texts": self.n_texts,
            "n_shards": self.n_shards,
            "batch_size": self.batch_size,
            "shard_size": self.shard_size,
            "max_length": self.max_length,
            "dim": self.dim,
            "corpus_fingerprint": self.corpus_fingerprint,
            "model_fingerprint": self.model_fingerprint,
            "order_sha256": _sha256_bytes(self.order.astype("<i8").tobytes()),
        }


def plan_shards(
    model: SimilarityModel, texts: Sequence[Any], *, batch_size: int = 64, shard_size: int = SHARD_SIZE
) -> ShardPlan:
    """The shard plan of the items ``texts`` for ``model`` (the same on every rank, whatever their number)."""
    if not isinstance(model, SimilarityModel):
        raise InvalidArgumentTypeError(f"model must be a SimilarityModel, got {type(model).__name__}")
    encoder = model.encoder
    items = encoder.check_items(texts, "texts")
    if not items:
        raise InvalidArgumentError("texts is empty: an index needs at least one text")
    batch_size = require_positive_int("batch_size", batch_size)
    shard_size = require_positive_int("shard_size", shard_size)
    return ShardPlan(
        # The very rule encode() orders its batches by, so shards cut the batches of one process.
        order=encoding_order(encoder.item_sizes(items)),
        batch_size=batch_size,
        shard_size=-(-shard_size // batch_size) * batch_size,
        max_length=int(encoder.config_dict().get("max_length", 0)),
        dim=int(encoder.embedding_dim),
        corpus_fingerprint=corpus_fingerprint(items, encoder.describe_item),
        model_fingerprint=encoder.fingerprint(),
    )


def _mismatch(expected: dict[str, Any], found: dict[str, Any], keys: Sequence[str]) -> list[str]:
    return [f"{key} {found.get(key)!r} (now {expected[key]!r})" for key in keys if found.get(key) != expected[key]]


def _read_checked(path: Path, keys: Sequence[str], extra: Sequence[str]) -> dict[str, Any]:
    """plan.json or a manifest, once its seal (if any) and the type of each of ``keys`` check out.

    Fields outside ``keys`` and ``extra`` are refused. Anything else is a :class:`ShardError`
    naming the file and the field.
    """
    payload = read_json_file(path, ShardError)
    fields = SavedFields(payload, path, ShardError)
    fields.refuse_unknown([*keys, *extra])
    for key in keys:
        if key == "format_version":
            fields.get(key, int, choices=(FORMAT_VERSION,))
        elif key in _MINIMUM:
            fields.get(key, int, minimum=_MINIMUM[key])
        else:
            fields.get(key, str, pattern=SHA256_HEX if key in _DIGESTS else None)
    check_seal(payload, path, ShardError)
    return payload


def _shard_manifest(plan: ShardPlan, shard: int) -> dict[str, Any]:
    rows = plan.rows(shard)
    return {
        "format_version": FORMAT_VERSION,
        "shard": shard,
        "start": shard * plan.shard_size,
        "stop": shard * plan.shard_size + int(rows.shape[0]),
        "rows_sha256": _sha256_bytes(rows.astype("<i8").tobytes()),
        "dim": plan.dim,
        "batch_size": plan.batch_size,
        "max_length": plan.max_length,
        "corpus_fingerprint": plan.corpus_fingerprint,
        "model_fingerprint": plan.model_fingerprint,
    }


def _shard_is_complete(work_dir: Path, plan: ShardPlan, shard: int) -> bool:
    """True if the shard's files are whole and belong to ``plan``; False if it must be (re)encoded.

    Raises :class:`ShardError` for a whole shard of another corpus/model/plan.
    """
    array_path, manifest_path = shard_files(work_dir, shard)
    if not manifest_path.is_file():
        if array_path.exists():
            logger.warning("shard %d: %s has no manifest (interrupted while writing): encoding it again",
                           shard, array_path.name)
        return False
    expected = _shard_manifest(plan, shard)
    try:
        manifest = _read_checked(manifest_path, [*expected, "size", "sha256"], _MANIFEST_EXTRA)
    except ShardError as exc:
        logger.warning("shard %d: damaged manifest (%s): encoding it again", shard, exc)
        return False
    differ = _mismatch(expected, manifest, list(expected))
    if differ:
        raise ShardError(
            f"{manifest_path} was made for another corpus, model or plan: {'; '.join(differ)}. "
            f"Refusing to mix it in: remove {work_dir} (or pass another work folder) to start over"
        )
    if not array_path.is_file() or array_path.stat().st_size != manifest.get("size"):
        logger.warning("shard %d: %s is missing or truncated: encoding it again", shard, array_path.name)
        return False
    if sha256_file(array_path) != manifest.get("sha256"):
        logger.warning("shard %d: %s does not match its checksum: encoding it again", shard, array_path.name)
        return False
    return True


def _write_shard(work_dir: Path, plan: ShardPlan, shard: int, embeddings: np.ndarray, seconds: float,
                 rank: int) -> None:
    array_path, manifest_path = shard_files(work_dir, shard)
    with atomic_file(array_path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, np.ascontiguousarray(embeddings, dtype=np.float32))
    manifest = {
        **_shard_manifest(plan, shard),
        "file": array_path.name,
        "size": array_path.stat().st_size,
        "sha256": sha256_file(array_path),
        "seconds": round(seconds, 3),
        "rank": rank,
        "host": platform.node(),
    }
    write_json_atomic(manifest_path, seal(manifest))  # last: its presence marks the shard complete


def _open_work_dir(work_dir: Path, plan: ShardPlan) -> str | None:
    """Rank 0: create the work folder or check that it holds this plan; an error message or None."""
    described = plan.describe()
    plan_path = work_dir / PLAN_FILE
    if plan_path.is_file():
        try:
            found = _read_checked(plan_path, _PLAN_KEYS, _PLAN_EXTRA)
        except ShardError as exc:
            return f"{exc}; the work folder is damaged: remove {work_dir} (or pass another work folder) to start over"
        differ = _mismatch(described, found, _PLAN_KEYS)
        if differ:
            return (f"the work folder {work_dir} holds shards of another corpus, model or plan: {'; '.join(differ)} "
                    f"(as recorded in {plan_path}). "
                    f"Refusing to mix them: remove it (or pass another work folder) to start over")
        return None
    if work_dir.exists() and (not work_dir.is_dir() or any(work_dir.iterdir())):
        return f"the work folder {work_dir} exists but has no {PLAN_FILE}: refusing to write shards into it"
    work_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(plan_path, seal({**described, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}))
    return None


def encode_shards(
    model: SimilarityModel,
    texts: Sequence[Any],
    plan: ShardPlan,
    work_dir: str | os.PathLike[str],
    *,
    rank: int = 0,
    world_size: int = 1,
    show_progress: bool = False,
) -> tuple[list[int], list[int]]:
    """Encode the shards of ``rank`` that are not complete yet; returns (encoded, already complete).

    No communication: ``encode_sharded`` calls it on every rank; calling it with each
    ``rank`` in turn in one process does the same work sequentially.
    """
    work_dir = Path(work_dir)
    texts = model.encoder.check_items(texts, "texts")
    if len(texts) != plan.n_texts:
        raise InvalidArgumentError(f"the plan is for {plan.n_texts} texts, got {len(texts)}")
    owned = plan.owned_by(rank, world_size)
    todo = [shard for shard in owned if not _shard_is_complete(work_dir, plan, shard)]
    reused = [shard for shard in owned if shard not in todo]
    progress = None
    if show_progress and todo:
        from tqdm.auto import tqdm

        progress = tqdm(total=sum(len(plan.rows(k)) for k in todo), desc=f"encode (rank {rank}/{world_size})",
                        unit="item")
    encoded = []
    try:
        for shard in todo:
            rows = plan.rows(shard)
            started = time.perf_counter()
            # Items arrive in encoding order and the shard starts on a batch boundary: embed() cuts the same batches.
            embeddings = model.embed([texts[i] for i in rows.tolist()], batch_size=plan.batch_size)
            seconds = time.perf_counter() - started
            _write_shard(work_dir, plan, shard, embeddings, seconds, rank)
            encoded.append(shard)
            if progress is not None:
                progress.update(len(rows))
            logger.debug("shard %d/%d: %d items in %.1f s (%.0f items/s)", shard + 1, plan.n_shards, len(rows),
                         seconds, len(rows) / max(seconds, 1e-9))
    finally:
        if progress is not None:
            progress.close()
    return encoded, reused


def merge_shards(work_dir: str | os.PathLike[str], plan: ShardPlan) -> np.ndarray:
    """All shards' embeddings as one float32 (n_texts, dim) array in corpus order."""
    work_dir = Path(work_dir)
    out = np.empty((plan.n_texts, plan.dim), dtype=np.float32)
    for shard in range(plan.n_shards):
        if not _shard_is_complete(work_dir, plan, shard):
            raise ShardError(
                f"shard {shard} is missing or incomplete in {work_dir} after every rank finished: with several "
                "machines the work folder must be on a filesystem they all share"
            )
        array = np.load(shard_files(work_dir, shard)[0], allow_pickle=False)
        rows = plan.rows(shard)
        if array.shape != (rows.shape[0], plan.dim) or array.dtype != np.float32:
            raise ShardError(f"shard {shard} holds {array.dtype} {array.shape}, expected float32 {(rows.shape[0], plan.dim)}")
        out[rows] = array
    return out


@dataclass
class ShardedEncoding:
    """``encode_sharded``'s answer; ``embeddings`` only on rank 0 (None elsewhere)."""

    embeddings: np.ndarray | None
    plan: ShardPlan
    world_size: int
    encoded: list[int] = field(default_factory=list)  # shards encoded in this run, all ranks
    reused: list[int] = field(default_factory=list)  # shards found complete (resume), all ranks
    seconds: float = 0.0


@contextlib.contextmanager
def _process_group() -> Iterator[None]:
    """The torchrun process group for this block: opened if needed, closed again if opened here."""
    import torch.distributed as dist

    from metric_sim.distributed import init_from_env, is_distributed

    opened = not (dist.is_available() and dist.is_initialized())
    init_from_env()
    try:
        yield
    finally:
        if opened and is_distributed():
            dist.destroy_process_group()


def encode_sharded(
    model: SimilarityModel,
    texts: Sequence[Any],
    work_dir: str | os.PathLike[str],
    *,
    batch_size: int = 64,
    shard_size: int = SHARD_SIZE,
    show_progress: bool = False,
) -> ShardedEncoding:
    """Encode ``texts`` shard by shard across the torchrun ranks (one rank without torchrun).

    Every rank calls this with the same arguments. Finished shards in ``work_dir`` are
    kept (resume); rank 0 returns the merged embeddings, the others ``embeddings=None``.
    With GPUs each rank encodes on ``cuda:LOCAL_RANK``.
    """
    import metric_sim.distributed as distributed  # torch: only when ranks may communicate

    started = time.perf_counter()
    work_dir = Path(work_dir).expanduser().resolve()
    with _process_group():
        rank, world = distributed.rank(), distributed.world_size()
        # Trainable encoders are torch modules; other kinds choose their device themselves.
        if world > 1 and isinstance(model.encoder, TrainableEncoder):
            import torch

            if torch.cuda.is_available():
                model.encoder.to(f"cuda:{distributed.local_rank()}")
        plan = plan_shards(model, texts, batch_size=batch_size, shard_size=shard_size)
        # Every rank must plan the same shards (another corpus file on another machine would not).
        descriptions = distributed.all_gather_object(plan.describe())
        if any(d != descriptions[0] for d in descriptions):
            differ = sorted({k for d in descriptions for k in d if d[k] != descriptions[0][k]})
            raise ShardError(f"the ranks disagree on the corpus or model ({differ}): give every rank the same files")
        error = _open_work_dir(work_dir, plan) if rank == 0 else None
        error = distributed.broadcast_object(error)
        if error:
            raise ShardError(error)
        logger.info("encoding %d items in %d shards of %d on %d rank(s); work folder %s", plan.n_texts,
                    plan.n_shards, plan.shard_size, world, work_dir)
        encoded, reused = encode_shards(model, texts, plan, work_dir, rank=rank, world_size=world,
                                        show_progress=show_progress and rank == 0)
        done = distributed.all_gather_object((encoded, reused))  # also the barrier before the merge
    all_encoded = sorted(k for e, _ in done for k in e)
    all_reused = sorted(k for _, r in done for k in r)
    seconds = time.perf_counter() - started
    n_encoded = sum(len(plan.rows(k)) for k in all_encoded)
    logger.info("encoded %d items (%d shards) in %.1f s on %d rank(s): %.0f items/s%s", n_encoded, len(all_encoded),
                seconds, world, n_encoded / max(seconds, 1e-9),
                f"; {len(all_reused)} shards were already complete (resumed)" if all_reused else "")
    embeddings = merge_shards(work_dir, plan) if rank == 0 else None
    return ShardedEncoding(embeddings, plan, world, all_encoded, all_reused, time.perf_counter() - started)


@dataclass
class ShardedBuild:
    """``build_index_sharded``'s answer: the saved index on rank 0 (None on the other ranks)."""

    index: NeighborIndex | None
    out_dir: Path
    work_dir: Path
    encoding: ShardedEncoding


def default_work_dir(out_dir: str | os.PathLike[str]) -> Path:
    """``OUT.shards`` next to the index folder ``OUT``."""
    out = Path(out_dir).expanduser().resolve()
    return out.with_name(out.name + ".shards")


def build_index_sharded(
    model: SimilarityModel,
    texts: Sequence[Any],
    ids: Sequence[str | int] | None,
    out_dir: str | os.PathLike[str],
    *,
    kind: str = "flat",
    work_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 64,
    shard_size: int = SHARD_SIZE,
    keep_shards: bool = False,
    show_progress: bool = False,
    **params: Any,
) -> ShardedBuild:
    """Encode across the torchrun ranks, then rank 0 builds and saves one :class:`NeighborIndex`.

    The saved folder is the one ``NeighborIndex.build(...).save(out_dir)`` writes, with
    the same vectors. ``work_dir`` (default ``OUT.shards``) keeps the per-shard files
    until the index is saved; a rerun after a crash resumes from them. ``keep_shards``
    leaves them in place afterwards.
    """
    from metric_sim.distributed import quiet_replicas  # torch

    target = check_save_target(out_dir)
    work = Path(work_dir).expanduser().resolve() if work_dir is not None else default_work_dir(target)
    if work == target or target in work.parents:
        raise InvalidArgumentError(f"work_dir {work} must not be inside the index folder {target} (it is replaced on save)")
    # Refuse a bad kind, parameter or id before any encoding.
    index = NeighborIndex(model.encoder.embedding_dim, model.metric, kind, model=model, **params)
    texts = model.encoder.check_items(texts, "texts")
    index.check_new_ids(texts, ids)
    with quiet_replicas():
        encoding = encode_sharded(model, texts, work, batch_size=batch_size, shard_size=shard_size,
                                  show_progress=show_progress)
        if encoding.embeddings is None:  # not rank 0: its shards are written, rank 0 builds the index
            return ShardedBuild(None, target, work, encoding)
        index.add_embeddings(encoding.embeddings, texts, ids)
        index.save(target)
        if not keep_shards:
            shutil.rmtree(work, ignore_errors=True)
        logger.info("indexed %d items (%d shards: %d encoded now, %d resumed) into %s", len(index),
                    encoding.plan.n_shards, len(encoding.encoded), len(encoding.reused), target)
    return ShardedBuild(index, target, work, encoding)
