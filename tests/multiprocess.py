"""Spawn small gloo worlds for tests, the torchrec way: one fresh process per rank."""

from __future__ import annotations

import os
import socket
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, fn: Callable[..., None], world_size: int, port: int, args: tuple) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    try:
        fn(rank, world_size, *args)
    except BaseException:
        traceback.print_exc()
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def spawn(fn: Callable[..., None], world_size: int, *args: Any) -> None:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` fresh processes joined over gloo
    (the torchrun variables are set per process, as ``init_distributed`` reads them)."""
    mp.spawn(_entry, args=(fn, world_size, free_port(), args), nprocs=world_size, join=True)


def retrying_a_native_crash(call: Callable[[int], T]) -> T:
    """``call(attempt)`` (attempt 0), and once more (attempt 1) when a process it spawned was killed by SIGABRT /
    SIGSEGV; never on an exception or a failed assertion. Fresh-clone CI runs saw a rank of a 2-rank gloo run abort
    at its end, "terminate called without an active exception" from a native thread of torch / gloo / fbgemm:
    once in tests/test_incremental.py (a managed-collision run; 16 runs of it alone passed) and once in
    ``mdr bench train`` at world size 2 (tests/test_distributed.py::test_bench_train_tiny). The cause is not
    found; docs and the closing notes report it."""
    for attempt in range(2):
        try:
            return call(attempt)
        except mp.ProcessExitedException as error:
            if attempt == 1 or error.signal_name not in ("SIGABRT", "SIGSEGV"):
                raise
            warnings.warn(f"retrying after a native crash: {error}", stacklevel=2)
    raise AssertionError("unreachable")


def spawn_retrying_a_native_crash(fn: Callable[..., None], world_size: int, *args: Any, out: Path) -> Path:
    """``spawn(fn, world_size, *args, out / "attempt<N>")`` under :func:`retrying_a_native_crash`, each
    attempt in a fresh folder. Returns the folder of the attempt that finished."""

    def attempt(number: int) -> Path:
        folder = out / f"attempt{number}"
        folder.mkdir(parents=True)
        spawn(fn, world_size, *args, folder)
        return folder

    return retrying_a_native_crash(attempt)
