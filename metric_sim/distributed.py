"""Multi-process helpers for torchrun: ranks, barriers, gathers of unequal size, one writer.

torchrun starts one process per device and sets ``RANK``, ``LOCAL_RANK`` and
``WORLD_SIZE``; training lets ``transformers.Trainer`` (through accelerate) open the
process group, the sharded index build opens it with :func:`init_from_env`. Without
torchrun every helper here is a no-op for world size 1, so the single-process code
path is the same code. ``train()`` leaves the Trainer's group open: its caller closes it
before the process exits (:func:`close_process_group`, :func:`closing_process_group`).

Cross-rank losses need the embeddings of every rank's batch. ``torch.distributed.all_gather``
needs equal shapes, but de-duplicated batches hold a different number of unique texts
on each rank, so :func:`all_gather_varlen` pads to the largest and trims.
:func:`gather_rows` keeps the autograd graph of the local rows only (other ranks'
rows are constants here; their own rank differentiates them) and multiplies the
local gradient by ``grad_scale``, see :class:`metric_sim.losses.CrossRankLoss`.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
from collections.abc import Iterator
from typing import Any, TypeVar

import torch
import torch.distributed as dist

__all__ = [
    "all_gather_object",
    "all_gather_varlen",
    "barrier",
    "broadcast_object",
    "close_process_group",
    "closing_process_group",
    "gather_rows",
    "init_from_env",
    "is_distributed",
    "is_main_process",
    "local_rank",
    "quiet_replicas",
    "rank",
    "world_size",
]

T = TypeVar("T")


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Processes in the job: the process group's size, else torchrun's ``WORLD_SIZE``, else 1."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """Global rank of this process (0 without torchrun)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    """Rank on this machine: which GPU this process drives."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    """Rank 0: the one process that writes run files, logs and the final model."""
    return rank() == 0


def init_from_env() -> bool:
    """Open the process group torchrun describes (NCCL with GPUs, else gloo); True if distributed.

    A no-op without torchrun (``WORLD_SIZE`` unset or 1) or when a group is already open
    (the Trainer opened it).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available() or dist.is_initialized():
        return is_distributed()
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
        dist.init_process_group(backend="nccl")
    else:
        dist.init_process_group(backend="gloo")
    return is_distributed()


def close_process_group() -> None:
    """Wait for every rank, then close the process group if one is open (no-op otherwise).

    The Trainer opens the group and never closes it; left open, gloo's threads are torn down
    at interpreter exit and a rank can abort ("terminate called without an active exception")
    after its work is done, which torchrun reports as a failed job. The group is closed even
    when the barrier fails (a rank died): this rank must not be left to that teardown either.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    _collect_unreachable()
    try:
        barrier()
    finally:
        dist.destroy_process_group()


def _collect_unreachable() -> None:
    # A finished Trainer sits in reference cycles holding the DDP reducer, and through it the
    # group and gloo's pending work. Freed only at interpreter finalization, that work's tensors
    # take the GIL while the interpreter is torn down and the rank aborts (pytorch#179291); so
    # free them now, while the interpreter is whole.
    gc.collect()


@contextlib.contextmanager
def closing_process_group() -> Iterator[None]:
    """Close the process group that is open when the block ends, also one opened inside it (by the Trainer).

    After the block every rank waits for the others, then closes the group
    (:func:`close_process_group`). After an exception the group is closed without that
    wait: the other ranks may be stuck in a collective this rank never joins, and the
    error should end the job, not hang it.
    """
    try:
        yield
    except BaseException:
        if dist.is_available() and dist.is_initialized():
            _collect_unreachable()
            dist.destroy_process_group()
        raise
    close_process_group()


def barrier() -> None:
    """Wait until every rank gets here (no-op in one process)."""
    if not is_distributed():
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def broadcast_object(value: T, src: int = 0) -> T:
    """Rank ``src``'s ``value`` on every rank (picklable objects; a no-op in one process)."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(value: T) -> list[T]:
    """Every rank's ``value`` in rank order (``[value]`` in one process); also a barrier."""
    if not is_distributed():
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def all_gather_varlen(tensor: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's ``tensor`` (same trailing shape, any first dimension), in rank order; no gradient."""
    if not is_distributed():
        return [tensor.detach()]
    tensor = tensor.detach().contiguous()
    size = torch.tensor([tensor.shape[0]], dtype=torch.long, device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    counts = [int(s.item()) for s in sizes]
    longest = max(counts)
    padded = tensor.new_zeros((longest, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return [part[:n] for part, n in zip(parts, counts, strict=True)]


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; gradient times ``scale`` backward (the value is untouched, bit for bit)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.scale, None


def gather_rows(tensor: torch.Tensor, *, grad_scale: float = 1.0) -> tuple[torch.Tensor, list[int]]:
    """Rows of every rank concatenated in rank order, and how many came from each rank.

    The local rows stay in the autograd graph with their gradient multiplied by
    ``grad_scale``; the other ranks' rows are constants.
    """
    if not is_distributed():
        return tensor, [int(tensor.shape[0])]
    parts = all_gather_varlen(tensor)
    local = _ScaleGradient.apply(tensor, grad_scale) if tensor.requires_grad and grad_scale != 1.0 else tensor
    parts[dist.get_rank()] = local
    return torch.cat(parts), [int(p.shape[0]) for p in parts]


@contextlib.contextmanager
def quiet_replicas(name: str = "metric_sim") -> Iterator[None]:
    """On ranks other than 0, show only warnings of logger ``name`` (rank 0 logs for the job)."""
    log = logging.getLogger(name)
    previous = log.level
    if not is_main_process():
        log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(previous)
