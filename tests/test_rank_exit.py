"""torchrec_mdr/training/rank_exit.py: the torch gap it works around, pinned, and what end_rank keeps."""

from __future__ import annotations

import importlib
import json
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from multiprocess import spawn

from torchrec_mdr.training.distributed import init_distributed
from torchrec_mdr.training.rank_exit import end_rank, gloo_threads

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/task")


def _threads_after_destroy(rank: int, world_size: int, out: Path, import_sharded_tensor: bool) -> None:
    init_distributed("cpu")
    if import_sharded_tensor:  # as torchrec.distributed does
        importlib.import_module("torch.distributed._shard.sharded_tensor")
    tensor = torch.ones(2)
    dist.all_reduce(tensor)
    before = gloo_threads()
    dist.destroy_process_group()
    (out / f"threads-{rank}.json").write_text(json.dumps({"before": before, "after": gloo_threads()}))


@pytest.mark.parametrize("import_sharded_tensor", [False, True])
def test_the_gloo_threads_outlive_destroy_process_group_once_sharded_tensor_is_imported(
    tmp_path: Path, import_sharded_tensor: bool
) -> None:
    """The premise of rank_exit, as measured with torch 2.13: a bare gloo world's threads stop with
    destroy_process_group; after torchrec's sharded-tensor import they keep running. When a torch fixes
    this, the True case fails: the workaround can then go."""
    spawn(_threads_after_destroy, 2, tmp_path, import_sharded_tensor)
    for rank in range(2):
        threads = json.loads((tmp_path / f"threads-{rank}.json").read_text())
        expected = {"gloo_tcp_loop", "pt_gloo_runloop"} | ({"pt_tcpstore_uv"} if rank == 0 else set())
        assert set(threads["before"]) == expected
        assert set(threads["after"]) == (expected if import_sharded_tensor else set())


def _finish(rank: int, world_size: int, out: Path) -> None:
    init_distributed("cpu")
    importlib.import_module("torch.distributed._shard.sharded_tensor")  # the threads outlive the group

    if rank == 1:  # the slower rank: rank 0 has ended already
        time.sleep(1.0)
    sys.stdout = open(out / f"stdout-{rank}.txt", "w", buffering=1 << 16)  # noqa: SIM115  (end_rank flushes it)
    print(f"rank {rank} done")
    (out / f"work-{rank}.json").write_text(json.dumps({"rank": rank}))
    end_rank()
    raise AssertionError("end_rank returned")  # pragma: no cover


def test_end_rank_keeps_each_ranks_work_and_output_and_exits_zero(tmp_path: Path) -> None:
    spawn(_finish, 2, tmp_path)  # raises if a rank exited non-zero or raised
    for rank in range(2):
        assert json.loads((tmp_path / f"work-{rank}.json").read_text()) == {"rank": rank}
        assert (tmp_path / f"stdout-{rank}.txt").read_text() == f"rank {rank} done\n"  # buffered, yet kept


def _fail(rank: int, world_size: int, out: Path) -> None:
    init_distributed("cpu")
    raise ValueError(f"rank {rank} could not finish")


def test_a_failing_rank_still_fails_with_its_traceback(tmp_path: Path) -> None:
    with pytest.raises(mp.ProcessRaisedException, match=r"ValueError: rank \d could not finish"):
        spawn(_fail, 2, tmp_path)  # tests/multiprocess.spawn runs each rank in spawned_rank()
