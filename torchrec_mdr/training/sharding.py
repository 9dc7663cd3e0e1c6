"""Wrap a model in DistributedModelParallel with a sharding plan for its embedding tables.

``sparse.sharding = "auto"`` asks torchrec's planner, never for data_parallel (every table keeps
the fused sparse optimizer; on CPU fbgemm's kernel could not run a data-parallel
EmbeddingCollection anyway). The explicit types build a hand-written plan for every table
(``construct_module_sharding_plan``), because on CPU the planner refuses row_wise although it
works: table_wise places whole tables round-robin, largest first; row_wise splits rows over all
ranks; column_wise splits the embedding dimension evenly over all ranks; data_parallel replicates
(EmbeddingBagCollection only on CPU).

Managed-collision collections (tables with low-frequency eviction, :mod:`torchrec_mdr.sparse.mch.eviction`)
are always row_wise with the fused kernel, whatever ``sparse.sharding`` says: torchrec shards them
no other way, so they get a hand-written plan in ``auto`` mode too (the planner, which on CPU
offers a managed EmbeddingBagCollection no sharding type at all, plans the other tables). On CPU
their evictions need the :mod:`torchrec_mdr.sparse.mch.fbgemm_cpu_fallback` kernel, installed after
sharding. On CPU the EmbeddingCollection's fused backward is routed through fbgemm's pooled kernel
(:mod:`torchrec_mdr.sparse.fbgemm_nobag_cpu`: the unpooled CPU kernel's cost per row grows with the batch).
"""

from __future__ import annotations

from typing import Any, get_args

import torch.distributed as dist
from torch import nn
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.mc_embedding import ManagedCollisionEmbeddingCollectionSharder
from torchrec.distributed.mc_embeddingbag import ManagedCollisionEmbeddingBagCollectionSharder
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
from torchrec.distributed.sharding_plan import (
    column_wise,
    construct_module_sharding_plan,
    data_parallel,
    row_wise,
    table_wise,
)
from torchrec.distributed.types import ShardingPlan
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.modules.mc_embedding_modules import (
    ManagedCollisionEmbeddingBagCollection,
    ManagedCollisionEmbeddingCollection,
)

from torchrec_mdr.config import ConfigError
from torchrec_mdr.sparse import fbgemm_nobag_cpu
from torchrec_mdr.sparse.config import ShardingType
from torchrec_mdr.sparse.mch import fbgemm_cpu_fallback
from torchrec_mdr.training.data_parallel import SingleRankDataParallelWrapper
from torchrec_mdr.training.distributed import DistContext


MANAGED = (ManagedCollisionEmbeddingBagCollection, ManagedCollisionEmbeddingCollection)


def embedding_collections(model: nn.Module) -> dict[str, nn.Module]:
    """The shardable collections by path: EBC, EC and managed-collision wrappers (not the EBC/EC inside one)."""
    found: dict[str, nn.Module] = {}
    for name, module in model.named_modules():  # parents come before their children
        if any(name.startswith(path + ".") for path, parent in found.items() if isinstance(parent, MANAGED)):
            continue
        if isinstance(module, (EmbeddingBagCollection, EmbeddingCollection) + MANAGED):
            found[name] = module
    return found


def table_sizes(module: nn.Module) -> dict[str, tuple[int, int]]:
    """``{table: (rows, dim)}`` of one collection (of the collection inside a managed one)."""
    inner: Any = module._embedding_module if isinstance(module, MANAGED) else module  # torchrec: untyped
    configs = inner.embedding_bag_configs() if isinstance(inner, EmbeddingBagCollection) else inner.embedding_configs()
    return {c.name: (c.num_embeddings, c.embedding_dim) for c in configs}


def check_sharding(model: nn.Module, sharding: ShardingType, ctx: DistContext) -> None:
    """Clear errors for a sharding type these tables or this device cannot use."""
    if sharding not in get_args(ShardingType):
        raise ConfigError(
            f"sparse.sharding = {sharding!r} is not a sharding type; choose one of {', '.join(get_args(ShardingType))}"
        )
    for module in embedding_collections(model).values():
        if isinstance(module, MANAGED):
            continue  # always row_wise
        for table, (_rows, dim) in table_sizes(module).items():
            if sharding == "column_wise" and dim % ctx.world_size:
                raise ConfigError(
                    f"sparse.sharding = column_wise: table '{table}' has embedding dimension {dim}, "
                    f"which cannot be split evenly over {ctx.world_size} ranks"
                )
        if sharding == "data_parallel" and isinstance(module, EmbeddingCollection) and ctx.device.type == "cpu":
            raise ConfigError(
                "sparse.sharding = data_parallel: the EmbeddingCollection of the sequence features "
                "cannot be data-parallel on CPU (fbgemm's CPU kernel ignores unpooled lookups); "
                "use auto, table_wise, row_wise or column_wise"
            )


def hand_plan(model: nn.Module | dict[str, nn.Module], sharding: ShardingType, ctx: DistContext) -> ShardingPlan:
    """A plan of every collection of ``model`` (or of the given ``{path: collection}``); managed ones row_wise."""
    plans = {}
    collections = model if isinstance(model, dict) else embedding_collections(model)
    for path, module in collections.items():
        sizes = table_sizes(module)
        by_size = sorted(sizes, key=lambda t: -sizes[t][0] * sizes[t][1])
        generators = {
            table: (
                row_wise()
                if isinstance(module, MANAGED)
                else table_wise(rank=by_size.index(table) % ctx.world_size)
                if sharding == "table_wise"
                else row_wise()
                if sharding == "row_wise"
                else column_wise(ranks=list(range(ctx.world_size)))
                if sharding == "column_wise"
                else data_parallel()
            )
            for table in sizes
        }
        plans[path] = construct_module_sharding_plan(
            module, generators, local_size=ctx.world_size, world_size=ctx.world_size, device_type=ctx.device.type
        )
    return ShardingPlan(plans)


def planner_sharding_types(module: nn.Module, device_type: str) -> list[str]:
    """The sharding types the planner may choose for a plain collection's tables: never
    data_parallel (see :func:`planner_plan`); on CPU an EmbeddingCollection gets no table_row_wise /
    table_column_wise (fbgemm's CPU kernels cannot run them unpooled)."""
    if isinstance(module, EmbeddingCollection) and device_type == "cpu":
        return ["table_wise", "column_wise", "row_wise"]
    return ["table_wise", "column_wise", "row_wise", "table_row_wise", "table_column_wise"]


def default_sharders() -> list:
    """The sharders of every collection the sparse arch builds (plain and managed, pooled and unpooled)."""
    return [
        EmbeddingBagCollectionSharder(),
        EmbeddingCollectionSharder(),
        ManagedCollisionEmbeddingBagCollectionSharder(),
        ManagedCollisionEmbeddingCollectionSharder(),
    ]


def planner_plan(model: nn.Module, ctx: DistContext, sharders: list) -> ShardingPlan:
    """The planner's plan, never data_parallel: a data-parallel table gets no fused optimizer, so it
    would train with the dense optimizer and rate instead of ``optimizer.sparse`` / ``sparse_lr``
    (and which small tables the planner replicates changes with the world size)."""
    constraints = {}
    for module in embedding_collections(model).values():
        if isinstance(module, MANAGED):
            continue
        types = planner_sharding_types(module, ctx.device.type)
        for table in table_sizes(module):
            constraints[table] = ParameterConstraints(sharding_types=types)
    planner = EmbeddingShardingPlanner(
        topology=Topology(world_size=ctx.world_size, compute_device=ctx.device.type, local_world_size=ctx.world_size),
        constraints=constraints or None,
    )
    collections = embedding_collections(model)
    managed = {path: module for path, module in collections.items() if isinstance(module, MANAGED)}
    if not managed:
        return planner.collective_plan(model, sharders, dist.GroupMember.WORLD)
    # Managed collections are planned by hand (always row_wise): the planner sees the others only,
    # at their own paths, so that it neither plans a managed one nor the collection inside it.
    others = {path: module for path, module in collections.items() if path not in managed}
    plan = planner.collective_plan(_tree(others), sharders, dist.GroupMember.WORLD) if others else ShardingPlan({})
    return ShardingPlan({**plan.plan, **hand_plan(managed, "row_wise", ctx).plan})


def _tree(modules: dict[str, nn.Module]) -> nn.Module:
    """A module tree that holds just ``modules``, each at its path (they stay in their own model too)."""
    root = nn.Module()
    for path, module in modules.items():
        *parents, leaf = path.split(".")
        node = root
        for name in parents:
            if not hasattr(node, name):
                node.add_module(name, nn.Module())
            node = getattr(node, name)
        node.add_module(leaf, module)
    return root


def wrap_model(model: nn.Module, sharding: ShardingType, ctx: DistContext) -> DistributedModelParallel:
    """Shard ``model``'s embedding collections (built on the meta device) and wrap the rest in DDP (not at
    world size 1: :mod:`torchrec_mdr.training.data_parallel`)."""
    check_sharding(model, sharding, ctx)
    all_sharders = default_sharders()
    plan = planner_plan(model, ctx, all_sharders) if sharding == "auto" else hand_plan(model, sharding, ctx)
    managed = any(isinstance(m, MANAGED) for m in embedding_collections(model).values())
    sharded = DistributedModelParallel(
        model,
        device=ctx.device,
        plan=plan,
        sharders=all_sharders,
        data_parallel_wrapper=SingleRankDataParallelWrapper(),
    )
    if ctx.device.type == "cpu":
        fbgemm_nobag_cpu.install()  # kept to fbgemm-gpu-cpu 1.8.0; a no-op once installed
    if managed:
        fbgemm_cpu_fallback.install(sharded)  # a no-op off CPU or where fbgemm has the CPU kernel
    return sharded
