"""Plan a run for a cluster that is not here: torchrec's planner without a GPU (``mdr plan``).

The model is the one ``mdr train`` would build (:func:`~torchrec_mdr.training.model_factory.
build_model`, on the meta device: no memory, whatever the table sizes) and the planner is
torchrec's ``EmbeddingShardingPlanner`` with a ``Topology`` of the hypothetical cluster
(``compute_device="cuda"`` plans GPUs from a CPU-only machine) and the same sharders and the same
choices as the trainer:

* plain tables: the sharding types of ``sparse.sharding`` (``auto``: every type but data_parallel,
  as :func:`~torchrec_mdr.training.sharding.planner_plan`); the planner picks the kernel (``fused``
  in HBM, or ``fused_uvm_caching`` / ``fused_uvm`` with rows in host memory);
* managed-collision tables (``sparse.eviction.tables``): row_wise, fused, ``zch_size`` rows, as the
  trainer's hand plan;
* pooling factors from the spec: one id for an ``id`` column, ``max_length`` for a sequence or a
  ``multi_id`` column (an upper bound: the spec records no mean length);
* torchrec's default storage reservation (15% of HBM, the dense parameters, the input buffers).

The batch size, the pooling factors and the hosts (``local_world_size``) are this module's own:
:func:`~torchrec_mdr.training.sharding.planner_plan` gives torchrec none of them today (it plans
for a batch of 512, one id per feature and one host), so ``mdr train`` on the real cluster may
choose another plan.

When no plan fits, the tables are planned again, largest first, one more at a time: the table whose
addition makes planning fail is the one named in the verdict.
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import nn
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
from torchrec.distributed.planner.enumerators import EmbeddingEnumerator
from torchrec.distributed.planner.storage_reservations import HeuristicalStorageReservation
from torchrec.distributed.planner.types import PlannerError, PlannerErrorType, ShardingOption
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from torchrec_mdr.config import ConfigError
from torchrec_mdr.data.spec import DatasetSpec
from torchrec_mdr.experiment import ExperimentConfig
from torchrec_mdr.training.cluster import GB, ClusterConfig
from torchrec_mdr.training.model_factory import build_model
from torchrec_mdr.training.sharding import MANAGED, default_sharders, embedding_collections, planner_sharding_types

RESERVED_HBM_SHARE = 0.15  # torchrec's default HeuristicalStorageReservation percentage
STORAGE_ERRORS = (PlannerErrorType.INSUFFICIENT_STORAGE, PlannerErrorType.PARTITION)


@dataclass
class TablePlan:
    """Where one table goes: ``hbm`` / ``ddr`` in bytes over all its shards, ``perf_ms`` of its slowest shard."""

    name: str
    collection: str
    rows: int
    dim: int
    sharding_type: str
    compute_kernel: str
    ranks: list[int]
    hbm: int
    ddr: int
    perf_ms: float


@dataclass
class RankUse:
    """One rank's share of the tables (bytes) and the planner's time estimate of its shards (ms per batch)."""

    rank: int
    hbm: int
    ddr: int
    perf_ms: float


@dataclass
class ClusterPlan:
    """The outcome of :func:`plan_cluster`: a plan (``fits``) or the verdict of why there is none."""

    cluster: ClusterConfig
    batch_size: int
    fits: bool
    tables: list[TablePlan] = field(default_factory=list)
    ranks: list[RankUse] = field(default_factory=list)
    hbm_for_tables: int = 0  # per rank, after the planner's reservation
    ddr_for_tables: int = 0
    reserved_dense: int = 0  # per rank, HBM (CPU: DDR) the planner keeps for the dense parameters
    reserved_inputs: int = 0  # per rank, for the input KeyedJaggedTensors
    breaking_table: str | None = None
    verdict: str = ""
    table_sizes: dict[str, tuple[int, int]] = field(default_factory=dict)  # every table: (rows, dim)


def pooling_factors(spec: DatasetSpec) -> dict[str, float]:
    """Ids per row of every embedded feature: 1 for ``id``, ``max_length`` (or 1) for a list column."""
    return {
        c.name: float(c.max_length or 1) if c.kind in ("multi_id", "sequence") else 1.0
        for c in spec.columns_of("id", "multi_id", "sequence")
    }


def _configs(module: nn.Module) -> list:
    inner: Any = module._embedding_module if isinstance(module, MANAGED) else module  # torchrec: untyped
    return inner.embedding_bag_configs() if isinstance(inner, EmbeddingBagCollection) else inner.embedding_configs()


def plan_constraints(
    model: nn.Module, spec: DatasetSpec, config: ExperimentConfig, device_type: str
) -> dict[str, ParameterConstraints]:
    """Per-table constraints: the trainer's sharding choices and the spec's pooling factors."""
    factors = pooling_factors(spec)
    constraints = {}
    for module in embedding_collections(model).values():
        if isinstance(module, MANAGED):
            types, kernels = ["row_wise"], ["fused"]
        elif config.sparse.sharding == "auto":
            types, kernels = planner_sharding_types(module, device_type), None
        else:
            types, kernels = [config.sparse.sharding], None
        for table in _configs(module):
            constraints[table.name] = ParameterConstraints(
                sharding_types=types, compute_kernels=kernels, pooling_factors=[factors[f] for f in table.feature_names]
            )
    return constraints


def topology(cluster: ClusterConfig) -> Topology:
    """torchrec's Topology of the cluster (bandwidths in GB/s become torchrec's bytes per ms)."""
    bandwidths = {
        key: value * GB / 1000
        for key, value in {
            "hbm_mem_bw": cluster.hbm_bw_gbps,
            "ddr_mem_bw": cluster.ddr_bw_gbps,
            "intra_host_bw": cluster.intra_host_bw_gbps,
            "inter_host_bw": cluster.inter_host_bw_gbps,
        }.items()
        if value is not None
    }
    return Topology(
        world_size=cluster.world_size,
        local_world_size=cluster.local_world_size,
        compute_device=cluster.device,
        hbm_cap=int(cluster.hbm_gb * GB) if cluster.device == "cuda" else None,
        ddr_cap=int(cluster.ddr_gb * GB),
        **bandwidths,
    )


class _TableSubset(EmbeddingEnumerator):
    """An enumerator that offers the planner only some tables (the search for the breaking table)."""

    def __init__(self, tables: set[str] | None, **kwargs: Any) -> None:  # EmbeddingEnumerator's
        super().__init__(**kwargs)
        self.tables = tables

    def enumerate(self, module: nn.Module, sharders: list) -> list[ShardingOption]:
        options = super().enumerate(module, sharders)
        return options if self.tables is None else [o for o in options if o.name in self.tables]


def _planner(
    cluster: ClusterConfig,
    batch_size: int,
    constraints: dict[str, ParameterConstraints],
    tables: set[str] | None = None,
) -> EmbeddingShardingPlanner:
    topo = topology(cluster)
    with warnings.catch_warnings():  # torchrec's advice to move off the reservation the trainer's planner uses
        warnings.simplefilter("ignore", FutureWarning)
        reservation = HeuristicalStorageReservation(percentage=RESERVED_HBM_SHARE)
    return EmbeddingShardingPlanner(
        topology=topo,
        batch_size=batch_size,
        constraints=constraints,
        stats=[],
        storage_reservation=reservation,
        enumerator=_TableSubset(tables, topology=topo, batch_size=batch_size, constraints=constraints),
    )


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """torchrec logs plan validation to the root logger (a subset plan lacks whole collections by design)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        root.setLevel(level)


def _fits(planner: EmbeddingShardingPlanner, model: nn.Module) -> bool:
    """Whether the planner finds a plan (leaving whole collections out of a subset is not a failure)."""
    try:
        with _quiet_root_logger():
            planner.plan(model, default_sharders())
    except PlannerError as error:
        return error.error_type == PlannerErrorType.MISSING_MODULE_IN_PLAN
    return True


def plan_cluster(config: ExperimentConfig, spec: DatasetSpec, cluster: ClusterConfig) -> ClusterPlan:
    """Plan ``config``'s model on ``spec``'s tables for ``cluster``; a plan that does not fit is a verdict,
    not an error (ConfigError only where torchrec offers a table no placement at all)."""
    batch_size = cluster.batch_size or config.data.batch_size
    meta = torch.device("meta")
    model = build_model(
        config,
        spec,
        dense_device=meta,
        world_size=cluster.world_size,
        sparse_device=torch.device(cluster.device),
        planning_only=True,
    )
    constraints = plan_constraints(model, spec, config, cluster.device)
    sizes = {
        t.name: (t.num_embeddings, t.embedding_dim) for m in embedding_collections(model).values() for t in _configs(m)
    }
    planner = _planner(cluster, batch_size, constraints)
    result = ClusterPlan(cluster, batch_size, fits=False, table_sizes=sizes)
    try:
        with _quiet_root_logger():
            planner.plan(model, default_sharders())
    except RuntimeError as error:
        raise _no_placement(error, constraints, cluster) from None
    except PlannerError as error:
        _explain_failure(result, error, model, constraints, planner)
        return result
    _describe_plan(result, planner)
    return result


def _no_placement(
    error: RuntimeError, constraints: dict[str, ParameterConstraints], cluster: ClusterConfig
) -> Exception:
    """A ConfigError for torchrec's "no sharding type and kernel" (other RuntimeErrors pass through)."""
    found = re.search(r"No available sharding type .* constraints for (\S+?)\. Module: [\w.]*?(\w+), ", str(error))
    if found is None:
        return error
    table, module = found.groups()
    hint = (
        " (torchrec's planner has no CPU sharding for a managed-collision EmbeddingBagCollection, torchrec "
        "issue #2958; mdr train places it row_wise by hand: plan with --device cuda)"
        if module == "ManagedCollisionEmbeddingBagCollection" and cluster.device == "cpu"
        else ""
    )
    types = constraints[table].sharding_types if table in constraints else None
    return ConfigError(
        f"torchrec's planner offers table '{table}' ({module}) no sharding type and kernel on "
        f"{cluster.device} under the sharding types {types}{hint}"
    )


def _describe_plan(result: ClusterPlan, planner: EmbeddingShardingPlanner) -> None:
    reservation = planner._storage_reservation  # torchrec keeps what it reserved on the object
    available = reservation._last_reserved_topology.devices[0].storage
    result.fits = True
    result.hbm_for_tables, result.ddr_for_tables = available.hbm, available.ddr
    result.reserved_dense = _storage_bytes(getattr(reservation, "_dense_storage", None), result.cluster.device)
    result.reserved_inputs = _storage_bytes(getattr(reservation, "_kjt_storage", None), result.cluster.device)
    ranks = [RankUse(r, 0, 0, 0.0) for r in range(result.cluster.world_size)]
    for option in planner.get_selected_options():
        shape = option.tensor.shape
        result.tables.append(
            TablePlan(
                name=option.name,
                collection=option.path,
                rows=int(shape[0]),
                dim=int(shape[1]),
                sharding_type=option.sharding_type,
                compute_kernel=option.compute_kernel,
                ranks=sorted({s.rank for s in option.shards}),
                hbm=sum(s.storage.hbm for s in option.shards),
                ddr=sum(s.storage.ddr for s in option.shards),
                perf_ms=max(s.perf.total for s in option.shards),
            )
        )
        for shard in option.shards:
            use = ranks[shard.rank]
            use.hbm += shard.storage.hbm
            use.ddr += shard.storage.ddr
            use.perf_ms += shard.perf.total
    result.ranks = ranks
    fullest = max(ranks, key=lambda r: r.hbm if result.cluster.device == "cuda" else r.ddr)
    slowest = max(ranks, key=lambda r: r.perf_ms)
    tier, used, cap = (
        ("HBM", fullest.hbm, available.hbm) if result.cluster.device == "cuda" else ("DDR", fullest.ddr, available.ddr)
    )
    in_ddr = max(r.ddr for r in ranks)
    host = (
        f" (and at most {in_ddr / GB:,.2f} GiB of rows in host memory, {in_ddr / available.ddr:.0%} of "
        f"{available.ddr / GB:,.2f} GiB)"
        if tier == "HBM" and in_ddr
        else ""
    )
    result.verdict = (
        f"FITS: the fullest rank ({fullest.rank}) holds {used / GB:,.2f} GiB of tables in {tier}, "
        f"{used / cap:.0%} of the {cap / GB:,.2f} GiB left after the planner's reservation{host}; "
        f"the planner's estimate for the slowest rank ({slowest.rank}) is {slowest.perf_ms:,.2f} ms "
        f"per batch of {result.batch_size:,} (embedding lookups and their communication only)"
    )


def _smallest_placements(options: list[ShardingOption]) -> str:
    """The least memory a table needs all in HBM, and with rows in host memory (UVM), in words."""
    totals = [
        (sum(s.storage.hbm for s in o.shards), sum(s.storage.ddr for s in o.shards), o.compute_kernel) for o in options
    ]
    words = []
    in_hbm = min((t for t in totals if t[1] == 0), default=None)
    if in_hbm is not None:
        words.append(f"{in_hbm[0] / GB:,.1f} GiB of HBM ({in_hbm[2]})")
    in_ddr = min((t for t in totals if t[1] > 0), key=lambda t: t[0] + t[1], default=None)
    if in_ddr is not None:
        words.append(f"{in_ddr[1] / GB:,.1f} GiB of DDR + {in_ddr[0] / GB:,.1f} GiB of HBM ({in_ddr[2]})")
    return " or ".join(words)


def _storage_bytes(storage: Any, device: str) -> int:  # torchrec Storage or None
    if storage is None:
        return 0
    return storage.hbm if device == "cuda" else storage.ddr


def _explain_failure(
    result: ClusterPlan,
    error: PlannerError,
    model: nn.Module,
    constraints: dict[str, ParameterConstraints],
    planner: EmbeddingShardingPlanner,
) -> None:
    cluster, sizes = result.cluster, result.table_sizes
    reserved = getattr(planner._storage_reservation, "_last_reserved_topology", None)
    hbm = sum(d.storage.hbm for d in reserved.devices) if reserved else 0
    ddr = sum(d.storage.ddr for d in reserved.devices) if reserved else 0
    if reserved is None or reserved.devices[0].storage.hbm < 0:
        result.verdict = (
            f"DOES NOT FIT: nothing is left for the tables on a rank of {cluster.hbm_gb:g} GiB after "
            f"the planner's reservation (15% of HBM, the dense parameters and the input buffers of "
            f"a batch of {result.batch_size:,}): use a smaller batch or a larger device"
        )
        return
    if error.error_type not in STORAGE_ERRORS + (PlannerErrorType.STRICT_CONSTRAINTS,):
        result.verdict = f"NO PLAN: torchrec's planner failed ({error.error_type.value}): {str(error).splitlines()[0]}"
        return
    order = sorted(sizes, key=lambda t: -sizes[t][0] * sizes[t][1])
    space = planner.get_search_space() or []
    breaking = next(
        (
            table
            for k, table in enumerate(order, start=1)
            if not _fits(_planner(cluster, result.batch_size, constraints, set(order[:k])), model)
        ),
        order[-1],
    )
    result.breaking_table = breaking
    rows, dim = sizes[breaking]
    smallest = _smallest_placements([o for o in space if o.name == breaking])
    alone = breaking == order[0]
    lead = (
        f"table '{breaking}' ({rows:,} x {dim}) does not fit even alone"
        if alone
        else f"table '{breaking}' ({rows:,} x {dim}) breaks it: planned largest first, "
        f"{', '.join(order[: order.index(breaking)])} fit and adding '{breaking}' does not"
    )
    smallest = (
        f"; it needs {smallest}"
        if smallest
        else f"; the planner offers it no placement under sharding types {constraints[breaking].sharding_types}"
    )
    what = (
        "under the sharding constraints" if error.error_type == PlannerErrorType.STRICT_CONSTRAINTS else "in the memory"
    )
    result.verdict = (
        f"DOES NOT FIT {what} of {cluster.world_size} rank(s): {lead}{smallest}, and the cluster has "
        f"{hbm / GB:,.1f} GiB HBM + {ddr / GB:,.1f} GiB DDR for tables in all after the planner's "
        f"reservation. Options: more ranks, more --ddr-gb (UVM caching keeps rows in host memory), "
        f"low-frequency eviction of '{breaking}' (sparse.eviction.tables, zch_size), a smaller "
        f"model.embedding_dim"
    )
