"""The model a run trains: built once here, for the trainer and for ``mdr plan``.

``build_model`` returns the module that DistributedModelParallel wraps — :class:`TrainModel`
around the registered ranking model, or :class:`RetrievalModel` for ``task = "retrieval"`` — with
its embedding tables on the meta device (DMP materialises and shards them) and the fused sparse
optimizer registered on them, so that the planner sees the optimizer state it must place. A ranking
model's loss is :class:`~torchrec_mdr.training.losses.TaskWeightedBCE` with ``train.task_weights``
(checked against the spec's labels).
"""

from __future__ import annotations

import torch
from torch import nn

from torchrec_mdr.data.spec import DatasetSpec
from torchrec_mdr.experiment import ExperimentConfig
from torchrec_mdr.models.ranking import RankingModel, TrainModel
from torchrec_mdr.retrieval.model import RetrievalModel
from torchrec_mdr.training.losses import TaskWeightedBCE, task_weights
from torchrec_mdr.training.optimizers import apply_sparse_optimizer


def build_model(config: ExperimentConfig, spec: DatasetSpec, dense_device: torch.device,
                world_size: int, sparse_device: torch.device | None = None,
                planning_only: bool = False) -> nn.Module:
    """The run's model, tables on meta, sparse optimizer applied.

    Args:
        config: the experiment (task, model, sparse.eviction, optimizer, train.mixed_precision).
        spec: the dataset spec (tables and their sizes).
        dense_device: where the dense parameters live (``meta`` when the model is only planned).
        world_size: ranks the tables will be sharded over (managed-collision buckets).
        sparse_device: the device the optimizer is registered for (default: ``dense_device``):
            ``optimizer.sparse = "adam"`` is refused on CPU.
        planning_only: the model is planned, never sharded (managed-collision buffers stay on meta).
    """
    meta = torch.device("meta")
    eviction = config.sparse.eviction
    if config.task == "retrieval":
        model: nn.Module = RetrievalModel(spec, config.model.embedding_dim, config.retrieval, sparse_device=meta,
                                          dense_device=dense_device, eviction=eviction, mc_buckets=world_size,
                                          mixed_precision=config.train.mixed_precision,
                                          stream_rows=config.data.batch_size, planning_only=planning_only)
    else:
        # each task's BCE weighted and summed (for one label: TrainModel's default mean BCE, the same number)
        loss_fn = TaskWeightedBCE(task_weights(config.train.task_weights, spec)).to(dense_device)
        model = TrainModel(RankingModel(spec, config.model, sparse_device=meta, dense_device=dense_device,
                                        eviction=eviction, mc_buckets=world_size,
                                        mixed_precision=config.train.mixed_precision, planning_only=planning_only),
                           loss_fn=loss_fn)
    apply_sparse_optimizer(model, config.optimizer, sparse_device or dense_device)
    return model
