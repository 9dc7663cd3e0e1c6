"""Spawn small gloo worlds for tests, the torchrec way: one fresh process per rank."""

from __future__ import annotations

import os
import socket
import traceback
from typing import Any, Callable

import torch
import torch.multiprocessing as mp

from torchrec_mdr.training.rank_exit import spawned_rank


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
    with spawned_rank():  # ends as every rank of a real run does (torchrec_mdr/training/rank_exit.py)
        try:
            fn(rank, world_size, *args)
        except BaseException:
            traceback.print_exc()
            raise


def spawn(fn: Callable[..., None], world_size: int, *args: Any) -> None:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` fresh processes joined over gloo
    (the torchrun variables are set per process, as ``init_distributed`` reads them)."""
    mp.spawn(_entry, args=(fn, world_size, free_port(), args), nprocs=world_size, join=True)
