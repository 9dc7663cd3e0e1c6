"""The data-parallel wrapper of DistributedModelParallel: torchrec's, except at world size 1.

torchrec's ``DefaultDataParallelWrapper`` (``torchrec/distributed/model_parallel.py``) wraps every
unsharded parameter of the model in torch's ``DistributedDataParallel``, at every world size. With
one rank there is nothing to average, yet each step still pays for DDP's forward bookkeeping, one
autograd hook per dense parameter, a multiply of the gradient bucket by 1 / world size, a gloo
all-reduce over the single rank (handed to gloo's worker thread and waited for) and the reducer's
end-of-backward callback. :class:`SingleRankDataParallelWrapper` leaves the model unwrapped when
the sharding environment has one rank and delegates to torchrec's wrapper, with its defaults,
otherwise.

Measured on 2026-11-26 (torch 2.13.0+cpu, torchrec 1.9.2, fbgemm-gpu-cpu 1.8.0, one thread, CPU time of the
real Trainer's steps, the two builds in paired windows; the table and the profile are in docs/benchmarks.md,
"DDP at world size 1"): DDP at world size 1 costs 0.07-0.7 ms of CPU per step that does not grow with the
batch, about 2% of a small model's step (dnn, din at batch 1024), within the rounds' spread for din and ads
at 4096; more on wall clock wherever handing the bucket to gloo's thread waits for a core.

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
