"""nccl process groups: a world of one (what `mdr train` makes of a single GPU) and, with two GPUs, of two."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from gpu_helpers import fresh_process_group  # noqa: F401 - autouse fixture
from multiprocess import spawn
from torchrec_mdr.training.distributed import init_distributed


def test_nccl_world_of_one():
    ctx = init_distributed("cuda")
    assert (ctx.backend, ctx.world_size, ctx.rank, ctx.device) == ("nccl", 1, 0, torch.device("cuda", 0))
    assert dist.get_backend() == "nccl"
    values = torch.arange(4.0, device=ctx.device)
    dist.all_reduce(values)
    assert values.tolist() == [0.0, 1.0, 2.0, 3.0]
    out = torch.empty_like(values)
    dist.all_to_all_single(out, values)  # the collective of torchrec's input and output distribution
    assert torch.equal(out, values)


def _two_ranks(rank: int, world_size: int, out_dir: str) -> None:
    ctx = init_distributed("cuda")
    assert (ctx.backend, ctx.device) == ("nccl", torch.device("cuda", rank))
    values = torch.full((2,), float(rank + 1), device=ctx.device)
    dist.all_reduce(values)
    gathered = torch.empty(world_size * 2, device=ctx.device)
    dist.all_to_all_single(gathered, torch.full((world_size * 2,), float(rank), device=ctx.device))
    (Path(out_dir) / f"rank{rank}.txt").write_text(f"{values.tolist()} {gathered.tolist()}")


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_nccl_world_of_two(tmp_path):
    spawn(_two_ranks, 2, str(tmp_path))
    for rank in range(2):
        assert (tmp_path / f"rank{rank}.txt").read_text() == "[3.0, 3.0] [0.0, 0.0, 1.0, 1.0]"
