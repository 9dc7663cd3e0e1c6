"""Wrap a model in DistributedModelParallel with a sharding plan for its embedding tables.

``sparse.sharding = "auto"`` asks torchrec's planner (with the constraints CPU needs: no
data_parallel EmbeddingCollection, which fbgemm's CPU kernel cannot run). The explicit types build
a hand-written plan for every table (``construct_module_sharding_plan``), because on CPU the
planner refuses row_wise although it works: table_wise places whole tables round-robin, largest
first; row_wise splits rows over all ranks; column_wise splits the embedding dimension evenly
over all ranks; data_parallel replicates (EmbeddingBagCollection only on CPU).
"""

from __future__ import annotations

import torch.distributed as dist
from torch import nn
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
from torchrec.distributed.sharding_plan import (column_wise, construct_module_sharding_plan, data_parallel,
                                                row_wise, table_wise)
from torchrec.distributed.types import ShardingPlan
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection

from torchrec_mdr.config import ConfigError
from torchrec_mdr.experiment import ShardingType
from torchrec_mdr.training.distributed import DistContext


def _collections(model: nn.Module) -> dict[str, EmbeddingBagCollection | EmbeddingCollection]:
    return {name: module for name, module in model.named_modules()
            if isinstance(module, (EmbeddingBagCollection, EmbeddingCollection))}


def _table_sizes(module: EmbeddingBagCollection | EmbeddingCollection) -> dict[str, tuple[int, int]]:
    configs = (module.embedding_bag_configs() if isinstance(module, EmbeddingBagCollection)
               else module.embedding_configs())
    return {c.name: (c.num_embeddings, c.embedding_dim) for c in configs}


def check_sharding(model: nn.Module, sharding: ShardingType, ctx: DistContext) -> None:
    """Clear errors for a sharding type these tables or this device cannot use."""
    for module in _collections(model).values():
        for table, (_rows, dim) in _table_sizes(module).items():
            if sharding == "column_wise" and dim % ctx.world_size:
                raise ConfigError(f"sparse.sharding = column_wise: table '{table}' has embedding dimension {dim}, "
                                  f"which cannot be split evenly over {ctx.world_size} ranks")
        if sharding == "data_parallel" and isinstance(module, EmbeddingCollection) and ctx.device.type == "cpu":
            raise ConfigError("sparse.sharding = data_parallel: the EmbeddingCollection of the sequence features "
                              "cannot be data-parallel on CPU (fbgemm's CPU kernel ignores unpooled lookups); "
                              "use auto, table_wise, row_wise or column_wise")


def hand_plan(model: nn.Module, sharding: ShardingType, ctx: DistContext) -> ShardingPlan:
    plans = {}
    for path, module in _collections(model).items():
        sizes = _table_sizes(module)
        by_size = sorted(sizes, key=lambda t: -sizes[t][0] * sizes[t][1])
        generators = {
            table: (table_wise(rank=by_size.index(table) % ctx.world_size) if sharding == "table_wise"
                    else row_wise() if sharding == "row_wise"
                    else column_wise(ranks=list(range(ctx.world_size))) if sharding == "column_wise"
                    else data_parallel())
            for table in sizes
        }
        plans[path] = construct_module_sharding_plan(module, generators, local_size=ctx.world_size,
                                                     world_size=ctx.world_size, device_type=ctx.device.type)
    return ShardingPlan(plans)


def planner_plan(model: nn.Module, ctx: DistContext, sharders: list) -> ShardingPlan:
    constraints = {}
    if ctx.device.type == "cpu":
        for module in _collections(model).values():
            if isinstance(module, EmbeddingCollection):
                for table in _table_sizes(module):
                    constraints[table] = ParameterConstraints(sharding_types=["table_wise", "column_wise", "row_wise"])
    planner = EmbeddingShardingPlanner(
        topology=Topology(world_size=ctx.world_size, compute_device=ctx.device.type, local_world_size=ctx.world_size),
        constraints=constraints or None,
    )
    return planner.collective_plan(model, sharders, dist.GroupMember.WORLD)


def wrap_model(model: nn.Module, sharding: ShardingType, ctx: DistContext) -> DistributedModelParallel:
    """Shard ``model``'s embedding collections (built on the meta device) and wrap the rest in DDP."""
    check_sharding(model, sharding, ctx)
    sharders = [EmbeddingBagCollectionSharder(), EmbeddingCollectionSharder()]
    plan = planner_plan(model, ctx, sharders) if sharding == "auto" else hand_plan(model, sharding, ctx)
    return DistributedModelParallel(model, device=ctx.device, plan=plan, sharders=sharders)
