"""A run's model, built and evaluated the same way by the Trainer and the Evaluator.

* :func:`open_run`: the process (distributed context, threads, CPU allocator), the dataset spec (its
  managed-collision tables checked), the task, the run's checkpoint folder and identity;
* :func:`build_sharded`: the task's model with its sparse arch on the meta device and the fused sparse
  optimizer (:func:`~torchrec_mdr.training.model_factory.build_model`), sharded with
  DistributedModelParallel, and the combined fused + dense optimizer;
* :func:`eval_outputs`: one evaluation pass over every row of a split exactly once, yielding the
  model's output NamedTuples. Ranks with fewer batches repeat a batch whose output is not yielded,
  so that the sharded collectives stay in step.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import torch
import torch.distributed as dist
from torch import nn
from torchrec.distributed.train_pipeline import EvalPipelineSparseDist

from torchrec_mdr.config import ConfigError
from torchrec_mdr.data.batch import Batch
from torchrec_mdr.data.reader import BatchLoader, make_dataloader
from torchrec_mdr.data.spec import DatasetSpec
from torchrec_mdr.errors import TrainingError
from torchrec_mdr.experiment import ExperimentConfig
from torchrec_mdr.sparse.mch.eviction import managed_reader_spec, prepare_eviction
from torchrec_mdr.tasks import Task, make_task
from torchrec_mdr.training.checkpoint import CheckpointManager, run_identity
from torchrec_mdr.training.cpu_memory import keep_freed_memory
from torchrec_mdr.training.distributed import DistContext, init_distributed
from torchrec_mdr.training.model_factory import build_model
from torchrec_mdr.training.optimizers import build_optimizer
from torchrec_mdr.training.sharding import wrap_model


class RunParts(NamedTuple):
    ctx: DistContext
    spec: DatasetSpec
    reader_spec: DatasetSpec  # the spec the reader applies its id policy with (managed tables widened)
    task: Task
    checkpoints: CheckpointManager
    identity: dict  # what a checkpoint of this run records (and a resumed or evaluated one must match)


def open_run(config: ExperimentConfig, run_dir: Path) -> RunParts:
    """Set up this process for ``config`` and open the run directory ``run_dir`` (nothing is written)."""
    ctx = init_distributed(config.train.device)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    if config.train.cpu_keep_freed_memory and ctx.device.type == "cpu":
        keep_freed_memory()
    if config.train.mixed_precision and ctx.device.type != "cuda":
        raise ConfigError("train.mixed_precision is bf16 autocast on GPU; this run is on the CPU")
    spec = DatasetSpec.load(config.data.path)
    prepare_eviction(spec, config.sparse.eviction, ctx.world_size, config.data.batch_size)
    task = make_task(config, spec)
    checkpoints = CheckpointManager(run_dir, ctx, config.train.keep_checkpoints)
    return RunParts(
        ctx,
        spec,
        managed_reader_spec(spec, config.sparse.eviction),
        task,
        checkpoints,
        task.identity(run_identity(config, spec)),
    )


def build_sharded(config: ExperimentConfig, parts: RunParts) -> tuple[nn.Module, Any]:
    """The run's model sharded with DMP, and its combined optimizer (EvalPipelineSparseDist takes one too)."""
    model = build_model(config, parts.spec, parts.ctx.device, parts.ctx.world_size, task=parts.task)
    model = wrap_model(model, config.sparse.sharding, parts.ctx)
    return model, build_optimizer(model, config.optimizer)


def seeded_iter(loader: BatchLoader, seed: int) -> Iterator[Batch]:
    """``iter(loader)`` without a draw from torch's global RNG: a DataLoader draws its workers' base
    seed from ``loader.generator``, the global RNG when None, which would shift dropout's random
    stream by one draw per epoch and per evaluation (and break exact resumption)."""
    loader.generator = torch.Generator().manual_seed(seed)
    return iter(loader)


def all_equal_batches(loader: BatchLoader, ctx: DistContext, reduce_op: dist.ReduceOp.RedOpType) -> int:
    count = torch.tensor([loader.dataset.num_batches()], dtype=torch.int64, device=ctx.device)  # nccl: on GPU
    if ctx.world_size > 1:
        dist.all_reduce(count, op=reduce_op)
    return int(count.item())


def eval_outputs(
    model: nn.Module, optimizer: Any, config: ExperimentConfig, split: str, ctx: DistContext, reader_spec: DatasetSpec
) -> Iterator[Any]:
    """The model's outputs (the second element of its forward: the task's NamedTuple) on this rank's
    batches of ``split``, in eval mode without gradients: through torchrec's ``EvalPipelineSparseDist``
    (the input all-to-all of batch i+1 overlaps the forward of batch i; batches are read by a
    background thread) when ``train.pipeline = "sparse_dist"``, plain DMP forwards otherwise. Ranks
    with fewer batches run a repeat of their last batch, whose output is not yielded, so that the
    sharded collectives stay in step. A training pipeline must be detached from ``model`` first."""
    data = replace(config.data, shuffle=False, drop_last=False)
    loader = make_dataloader(data, split, ctx.rank, ctx.world_size, shuffle=False, spec=reader_spec)
    steps = all_equal_batches(loader, ctx, dist.ReduceOp.MAX)
    if steps and loader.dataset.num_batches() == 0:
        raise TrainingError(f"rank {ctx.rank} has no rows of split '{split}' to evaluate")
    real: list[bool] = []  # real[i]: batch i is this rank's own (False: a repeat that keeps step)

    def padded() -> Iterator[Batch]:
        iterator, last = seeded_iter(loader, config.train.seed), None
        for _ in range(steps):
            batch = next(iterator, None)
            real.append(batch is not None)
            last = batch if batch is not None else last
            assert last is not None  # a rank with no batch of the split raised above
            yield last

    model.eval()
    try:
        with torch.no_grad():
            if config.train.pipeline == "sparse_dist":
                pipeline = EvalPipelineSparseDist(model, optimizer, ctx.device)
                batches = padded()
                try:
                    for index in range(steps):
                        output = pipeline.progress(batches)
                        if real[index]:
                            yield output
                finally:
                    pipeline.detach()  # back to the plain forwards
                    pipeline.reset()  # stops its batch-loading thread
            else:
                for index, batch in enumerate(padded()):
                    _loss, output = model(batch.to(ctx.device))
                    if real[index]:
                        yield output
    finally:
        model.train()
