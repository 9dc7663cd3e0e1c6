"""The data-parallel wrapper of DistributedModelParallel: torchrec's, except at world size 1.

torchrec's ``DefaultDataParallelWrapper`` (``torchrec/distributed/model_parallel.py``) wraps every
unsharded parameter of the model in torch's ``DistributedDataParallel``, at every world size. With
one rank there is nothing to average, yet each step still pays for DDP's forward bookkeeping, one
autograd hook per dense parameter, a multiply of the gradient bucket by 1 / world size, a gloo
all-reduce over the single rank (handed to gloo's worker thread and waited for) and the reducer's
end-of-backward callback. :class:`SingleRankDataParallelWrapper` leaves the model unwrapped when
the sharding environment has one rank and delegates to torchrec's wrapper, with its defaults,
otherwise.

Measured on 2026-11-26 (2-core CPU machine shared with other jobs, load average ~8; torch 2.13.0+cpu,
torchrec 1.9.2, fbgemm-gpu-cpu 1.8.0; one thread; the ``mdr bench train`` data: 200,000 synthetic
rows, sequences of 50, embedding dim 16, table_wise). Wall time was not usable on that machine, so
the figures are the process's CPU time (``time.process_time``) of the real Trainer's steps, the two
builds side by side in one process, taking turns in paired windows (docs/benchmarks.md, "DDP at
world size 1"). CPU ms per step, DDP -> unwrapped, plain loop, 8 rounds x 10 steps:

=====  =====  ==============  ======  ===============================
model  batch  ms per step     saved   unwrapped / DDP, median [range]
=====  =====  ==============  ======  ===============================
dnn    1024   13.23 -> 12.91  2.4%    0.980 [0.366, 1.009]
dnn    4096   39.47 -> 38.82  1.7%    0.980 [0.961, 1.021]
din    1024   72.45 -> 71.93  0.7%    0.996 [0.985, 1.005]
din    4096   284.5 -> 279.2  1.9%    0.979 [0.948, 1.008]
ads    1024   96.40 -> 94.25  2.2%    0.986 [0.915, 1.012]
ads    4096   368.7 -> 363.6  1.4%    0.985 [0.941, 0.994]
=====  =====  ==============  ======  ===============================

With TrainPipelineSparseDist (16 rounds): dnn 512 9.23 -> 8.57 ms (0.893 [0.746, 1.170]), dnn 1024
15.65 -> 15.22 ms (0.980 [0.947, 1.034]). DDP's machinery alone, on modules holding each model's
dense tensors (9 / 17 / 30 tensors, 88k / 99k / 190k values) with a trivial forward: 0.07-0.28 ms
of CPU per step. torch.profiler (which times wall clock, inflated here by the load) puts the events
only the DDP build has (``c10d::allreduce_``, ``DistributedDataParallel.forward``, the reducer's
``mul_out``) at 16% of the profiled step for dnn at 1024, 4% at 4096, 3% for din and ads at 1024
and under 1% at 4096. So: a cost of a few tenths of a millisecond of CPU per step that does not
grow with the batch (0.07-0.28 ms alone, 0.3-0.7 ms in the dnn and din-1024 pairs; the 2-5 ms of
din and ads at 4096 lie within their rounds' spread), about 2% of a small model's step; more on wall
clock wherever the hand-off to gloo's thread waits for a core.

What relies on the DDP wrapper was checked in torchrec 1.9.2 and stays correct unwrapped:

* ``DistributedModelParallel.state_dict`` / ``load_state_dict`` strip and re-add DDP's ``module.``
  prefix only where it is present, so the keys (and checkpoints, DCP's metadata included) are the
  same with or without DDP: a checkpoint written at one world size loads at another.
* ``named_parameters`` / ``named_buffers`` / ``module`` unwrap DDP first (``get_unwrapped_module``):
  the dense optimizer sees the same names; the fused sparse optimizer belongs to the sharded
  modules, not to DDP.
* ``TrainPipelineSparseDist`` / ``EvalPipelineSparseDist`` find the sharded modules through
  ``DistributedModelParallel.module`` (unwrapped either way).
* Gradients: DDP divides the all-reduced bucket by the world size, here 1, and its bucket views
  (``gradient_as_bucket_view``) hold the same values: training is bit-identical (tested).
* ``nn.Module.named_modules`` is not overridden by DMP: a module's name there includes DDP's
  ``module.`` segment only when wrapped. The one place that keys files by those names, the
  managed-collision state of a checkpoint (``rank{R}.pt``), keys them by the name inside the
  wrappers (:func:`torchrec_mdr.sparse.mch.state.named_mch_modules`) and reads the older DDP-wrapped
  names too.
"""

from __future__ import annotations

from typing import Any

import torch
from torchrec.distributed.model_parallel import (
    DataParallelWrapper,
    DefaultDataParallelWrapper,
    DistributedModelParallel,
)
from torchrec.distributed.types import ShardingEnv


class SingleRankDataParallelWrapper(DataParallelWrapper):
    """torchrec's ``DefaultDataParallelWrapper(**kwargs)`` at world size > 1; nothing at world size 1."""

    def __init__(self, **kwargs: Any) -> None:
        self.default = DefaultDataParallelWrapper(**kwargs)

    def wrap(self, dmp: DistributedModelParallel, env: ShardingEnv, device: torch.device) -> None:
        if env.world_size == 1:
            return  # one rank: nothing to all-reduce
        self.default.wrap(dmp, env, device)


def data_parallel_wrapper() -> DataParallelWrapper:
    """The wrapper :func:`torchrec_mdr.training.sharding.wrap_model` gives DistributedModelParallel."""
    return SingleRankDataParallelWrapper()
