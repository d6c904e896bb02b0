"""Closing the process group before a rank exits: :func:`close_process_group` and :func:`closing_process_group`.

A group left open is torn down at interpreter exit, where a rank can abort after its work
is done; these check that it is closed on every path, and waited for only when every rank
gets there.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket

import pytest
import torch
import torch.distributed as dist

import metric_sim.distributed as distributed
from metric_sim.distributed import close_process_group, closing_process_group


class FakeGroup:
    """Stands in for torch.distributed's default group: records barrier and destroy calls."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, open_: bool, barrier_error: Exception | None = None):
        self.open = open_
        self.calls: list[str] = []
        self.barrier_error = barrier_error
        monkeypatch.setattr(dist, "is_available", lambda: True)
        monkeypatch.setattr(dist, "is_initialized", lambda: self.open)
        monkeypatch.setattr(dist, "destroy_process_group", self.destroy)
        monkeypatch.setattr(distributed, "barrier", self.barrier)

    def barrier(self) -> None:
        self.calls.append("barrier")
        if self.barrier_error is not None:
            raise self.barrier_error

    def destroy(self) -> None:
        assert self.open, "destroy_process_group on a closed group"
        self.calls.append("destroy")
        self.open = False


def test_a_group_opened_inside_the_block_is_waited_for_then_closed(monkeypatch):
    group = FakeGroup(monkeypatch, open_=False)
    with closing_process_group():
        assert group.calls == []
        group.open = True  # the Trainer opens it inside train()
    assert group.calls == ["barrier", "destroy"] and not group.open


def test_after_an_exception_the_group_is_closed_without_waiting_for_the_other_ranks(monkeypatch):
    group = FakeGroup(monkeypatch, open_=True)
    with pytest.raises(ValueError, match="rank failed"), closing_process_group():
        raise ValueError("rank failed")
    assert group.calls == ["destroy"] and not group.open


def test_a_failed_barrier_still_closes_the_group_and_raises(monkeypatch):
    group = FakeGroup(monkeypatch, open_=True, barrier_error=RuntimeError("Connection closed by peer"))
    with pytest.raises(RuntimeError, match="Connection closed by peer"):
        close_process_group()
    assert group.calls == ["barrier", "destroy"] and not group.open


class Cycle:
    """Unreachable once built: only the cycle collector frees it (as a finished Trainer and its DDP wrapper)."""

    def __init__(self, calls: list[str]) -> None:
        self.calls, self.me = calls, self

    def __del__(self) -> None:
        self.calls.append("cycle freed")


@pytest.mark.parametrize("fails", [False, True])
def test_unreachable_cycles_are_freed_before_the_group_is_closed(monkeypatch, fails):
    import gc

    group = FakeGroup(monkeypatch, open_=True)
    gc.collect()
    gc.disable()  # no automatic collection in between: only close_process_group's own
    try:
        Cycle(group.calls)
        assert group.calls == []
        with contextlib.suppress(ValueError), closing_process_group():
            if fails:
                raise ValueError("rank failed")
    finally:
        gc.enable()
    assert group.calls == (["cycle freed", "destroy"] if fails else ["cycle freed", "barrier", "destroy"])


def test_without_a_group_nothing_is_called(monkeypatch):
    group = FakeGroup(monkeypatch, open_=False)
    close_process_group()
    with closing_process_group():
        pass
    with pytest.raises(KeyError), closing_process_group():
        raise KeyError("x")
    assert group.calls == []


def _closing_worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    with closing_process_group():
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
        gathered = distributed.all_gather_object(rank * 10)
    with open(os.path.join(out, f"rank{rank}.json"), "w", encoding="utf-8") as f:
        json.dump({"gathered": gathered, "open_after": dist.is_initialized()}, f)


def test_two_ranks_close_the_group_they_opened_inside_the_block(tmp_path):
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_closing_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == {"gathered": [0, 10], "open_after": False}
