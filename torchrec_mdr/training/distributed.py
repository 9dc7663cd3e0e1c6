"""Process-group set-up: torchrun's environment when launched by it, else a world of one."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(device: str = "auto") -> DistContext:
    """Join (or create) the default process group: nccl on GPU, gloo on CPU.

    Launched by torchrun / torchx, the standard ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and
    ``MASTER_ADDR``/``MASTER_PORT`` variables describe the job; otherwise this process is a world
    of one on a free local port. DistributedModelParallel is used either way: it is what gives the
    fused fbgemm embedding kernels.
    """
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device = 'cuda' but no CUDA device is available")
    rank = int(os.environ.get("RANK", 0))
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    if not use_cuda:
        # Split the cores between the local ranks: more OpenMP threads than free cores spin in
        # barriers (measured here: a 2-thread trainer sharing 2 cores with one busy process ran
        # 12x slower per step than with 1 thread).
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world_size))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank)
        torch_device = torch.device("cuda", local_rank)
    else:
        torch_device = torch.device("cpu")
    if not dist.is_initialized():
        if "MASTER_ADDR" in os.environ:
            dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
        else:
            dist.init_process_group(
                backend=backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1
            )
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, torch_device, backend)
