"""The model a run trains: built once here, for the trainer, the evaluator and ``mdr plan``.

``build_model`` returns the module that DistributedModelParallel wraps — the task's model
(:meth:`~torchrec_mdr.tasks.base.Task.build_model`: :class:`TrainModel` around the registered ranking
model, or :class:`RetrievalModel` for ``task = "retrieval"``) — with its embedding tables on the meta
device (DMP materialises and shards them) and the fused sparse optimizer registered on them, so that
the planner sees the optimizer state it must place.
"""

from __future__ import annotations

import torch
from torch import nn

from torchrec_mdr.data.spec import DatasetSpec
from torchrec_mdr.experiment import ExperimentConfig
from torchrec_mdr.tasks import Task, make_task
from torchrec_mdr.training.optimizers import apply_sparse_optimizer


def build_model(
    config: ExperimentConfig,
    spec: DatasetSpec,
    dense_device: torch.device,
    world_size: int,
    sparse_device: torch.device | None = None,
    planning_only: bool = False,
    task: Task | None = None,
) -> nn.Module:
    """The run's model, tables on meta, sparse optimizer applied.

    Args:
        config: the experiment (task, model, sparse.eviction, optimizer, train.mixed_precision).
        spec: the dataset spec (tables and their sizes).
        dense_device: where the dense parameters live (``meta`` when the model is only planned).
        world_size: ranks the tables will be sharded over (managed-collision buckets).
        sparse_device: the device the optimizer is registered for (default: ``dense_device``):
            ``optimizer.sparse = "adam"`` is refused on CPU.
        planning_only: the model is planned, never sharded (managed-collision buffers stay on meta).
        task: the run's task (default: the one of ``config.task``).
    """
    task = task or make_task(config, spec)
    model = task.build_model(dense_device, world_size, planning_only=planning_only)
    apply_sparse_optimizer(model, config.optimizer, sparse_device or dense_device)
    return model
