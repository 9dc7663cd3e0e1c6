"""Low-frequency id eviction: torchrec managed collision (MCH) on the tables ``sparse.eviction.tables`` names.

A managed table has ``zch_size`` embedding rows and a :class:`TrackedMCHModule` in front of it that
maps raw ids to rows ("slots"). Every ``eviction_interval`` training steps the module counts the
ids it saw since the last round and re-assigns slots by the eviction policy: with ``lfu`` (the
default) the least frequently seen ids lose their slot to more frequent newcomers, with ``lru`` the
least recently seen, with ``distance_lfu`` frequency divided by the steps since the last sighting.
``lfu`` counts are cumulative and never decay: an id that has a slot keeps it until a newcomer is
seen more often within one interval than it was in all its rounds, so a catalogue that drifts
(yesterday's hits) is better served by ``distance_lfu`` or ``lru``.
An id without a slot (new since the last round, or evicted) is looked up in the table's last row,
one shared "unknown id" row (one per shard when the table is sharded). Until the first round every
id is unknown: occupancy starts at 0. Under DistributedModelParallel (always, in the trainer)
torchrec re-initialises the row of an evicted id with the table's ``init_fn`` and resets its
row-wise Adagrad state (see :mod:`torchrec_mdr.sparse.mch.fbgemm_cpu_fallback` for CPU), so that the
row's next owner starts fresh; a model outside DMP keeps the old row (torchrec 1.9.2's unsharded
eviction hook is a no-op). Pooled (EmbeddingBagCollection) and unpooled
(EmbeddingCollection: sequences and the candidate columns that share their table) tables are both
supported; evaluation remaps but never evicts.

Ids, the dataset spec's cardinality and ``input_hash_size``
------------------------------------------------------------
For a managed table the spec's cardinality stops being a table size:

* **Embedding rows** = ``zch_size`` (not the cardinality).
* **Accepted raw ids** = ``[0, input_hash_size)``. The reader applies the column's ``oov`` policy
  against ``input_hash_size`` instead of the cardinality (:func:`managed_reader_spec`): ids at or
  above the cardinality — ids the dataset did not know when it was prepared — reach the managed
  module unchanged and can earn their own slot; ids at or above ``input_hash_size`` are hashed
  (``id mod input_hash_size``, policy ``hash``) or rejected (policy ``reject``).
  ``input_hash_size`` must be at least the cardinality (a ConfigError otherwise): a smaller range
  would merge ids the spec declares distinct before eviction could tell them apart.
  (The loader's up-front check of a split's parquet statistics still uses the spec as written, so
  a ``reject`` column whose files hold ids at or above its cardinality fails there: declare such
  columns ``oov = "hash"``.)
* **Row-wise placement.** Sharded, a managed table is always row-wise (torchrec's managed-collision
  sharder supports nothing else): every rank owns ``zch_size / world_size`` slots and the raw ids of
  a contiguous part of ``[0, cardinality)`` — the cardinality is the module's placement range
  (torchrec's ``input_hash_size`` argument, which only places ids and never hashes them here) —
  while ids at or above the cardinality go to rank ``id mod world_size``. Placing by
  ``input_hash_size`` instead would put every id of a dataset whose ids are ``< 2**40 / world_size``
  (all of them) on rank 0 and leave the other shards empty.

The history buffer
------------------
torchrec's module sizes its history buffer from the first training batch: ``1.25 *
eviction_interval *`` (ids of the table in that batch) int64 values, twice that for ``lru`` and
``distance_lfu``; ids beyond it in one interval are not counted. :func:`history_buffer_bytes`
estimates it so that the trainer can warn about a long interval on a long sequence.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

import torch
import torch.distributed as dist
from torch import nn
from torchrec.modules.mc_modules import (
    DistanceLFU_EvictionPolicy,
    LFU_EvictionPolicy,
    LRU_EvictionPolicy,
    ManagedCollisionCollection,
    MCHEvictionPolicy,
    MCHManagedCollisionModule,
)

from torchrec_mdr.config import ConfigError
from torchrec_mdr.data.spec import DatasetSpec

if TYPE_CHECKING:
    from torchrec.modules.embedding_configs import BaseEmbeddingConfig

    from torchrec_mdr.sparse.mch.config import EvictionConfig

POLICIES: dict[str, type[MCHEvictionPolicy]] = {
    "lfu": LFU_EvictionPolicy,
    "lru": LRU_EvictionPolicy,
    "distance_lfu": DistanceLFU_EvictionPolicy,
}
EMPTY_SLOT = torch.iinfo(torch.int64).max  # torchrec's raw id of a free slot
MAX_INPUT_HASH_SIZE = 2**62  # raw ids must stay below EMPTY_SLOT (and torchrec's dedup sums ranges)


class TrackedMCHModule(MCHManagedCollisionModule):
    """torchrec's MCHManagedCollisionModule, counting what each eviction round does.

    ``evicted_ids``: ids that held a slot before a round and lost it; ``admitted_ids``: ids that
    gained one; ``eviction_rounds``: rounds run. All counts are of this module (one shard when
    sharded) since training started: checkpoints save them per shard and a resumed run goes on
    from them (loaded at another world size, a table's totals move to its first shard, and ids
    dropped there for lack of slots count as evicted: :mod:`torchrec_mdr.sparse.mch.reshard`).
    Sharding rebuilds the module per shard through ``rebuild_with_output_id_range``
    (``type(self)(...)``), so every shard counts too. ``eviction_seconds``: wall seconds this module
    spent in its eviction rounds (torchrec's ``_coalesce_history``: the unique count of the interval's
    history, the policy's scores and the slot update and re-sort; not the per-step history recording
    and remapping, nor the re-initialisation of evicted rows that DMP's sharded collection runs at the
    next lookup), in this process only (not checkpointed: a measurement, not state).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # MCHManagedCollisionModule's signature
        super().__init__(*args, **kwargs)
        self.evicted_ids = 0
        self.admitted_ids = 0
        self.eviction_rounds = 0
        self.eviction_seconds = 0.0

    @torch.no_grad()
    def _coalesce_history(self) -> None:
        start = time.perf_counter()
        super()._coalesce_history()
        self.eviction_seconds += time.perf_counter() - start

    @torch.no_grad()
    def _update_and_evict(
        self, uniq_ids: torch.Tensor, uniq_ids_counts: torch.Tensor, uniq_ids_metadata: dict[str, torch.Tensor]
    ) -> None:
        before = self._mch_sorted_raw_ids.clone()
        super()._update_and_evict(uniq_ids, uniq_ids_counts, uniq_ids_metadata)
        after = self._mch_sorted_raw_ids
        held_before, held_after = before[before != EMPTY_SLOT], after[after != EMPTY_SLOT]
        self.evicted_ids += int((~torch.isin(held_before, held_after)).sum())
        self.admitted_ids += int((~torch.isin(held_after, held_before)).sum())
        self.eviction_rounds += 1

    def counter_state(self) -> dict[str, int]:
        """The three counts, for a checkpoint (:mod:`torchrec_mdr.sparse.mch.state` saves them per rank)."""
        return {
            "evicted_ids": self.evicted_ids,
            "admitted_ids": self.admitted_ids,
            "eviction_rounds": self.eviction_rounds,
        }

    def load_counter_state(self, state: Mapping[str, int]) -> None:
        """Inverse of :meth:`counter_state`, so that a resumed run counts on from the checkpoint."""
        self.evicted_ids = int(state["evicted_ids"])
        self.admitted_ids = int(state["admitted_ids"])
        self.eviction_rounds = int(state["eviction_rounds"])

    @property
    def table(self) -> str:
        return self._name or ""

    def ids_held(self) -> int:
        """Slots holding an id (at most ``zch_size - 1``: the last slot is the unknown-id row)."""
        return int((self._mch_sorted_raw_ids != EMPTY_SLOT).sum())

    def slot_of(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows ``ids`` [N] map to now (global row numbers; the unknown-id row for ids without a slot)."""
        sorted_ids = self._mch_sorted_raw_ids
        position = torch.searchsorted(sorted_ids[:-1], ids)
        found = sorted_ids[position] == ids
        unknown = self._output_global_offset + self._zch_size - 1
        return torch.where(found, self._mch_remapped_ids_mapping[position], torch.full_like(ids, unknown))


# --------------------------------------------------------------------------- configuration


def check_eviction(spec: DatasetSpec, eviction: "EvictionConfig", world_size: int = 1) -> None:
    """ConfigError for a table the spec lacks, a duplicate, or sizes that cannot work."""
    tables = spec.tables
    seen: set[str] = set()
    for name in eviction.tables:
        if name not in tables:
            raise ConfigError(
                f"sparse.eviction.tables: the dataset spec has no embedding table '{name}' "
                f"(its tables: {', '.join(sorted(tables))})"
            )
        if name in seen:
            raise ConfigError(f"sparse.eviction.tables: table '{name}' is listed twice")
        seen.add(name)
        if eviction.input_hash_size < tables[name]:
            raise ConfigError(
                f"sparse.eviction.input_hash_size = {eviction.input_hash_size} is smaller than table "
                f"'{name}''s cardinality {tables[name]} in the dataset spec: ids the spec declares "
                f"distinct would be merged before eviction (use at least {tables[name]})"
            )
    if eviction.tables and eviction.input_hash_size > MAX_INPUT_HASH_SIZE:
        raise ConfigError(
            f"sparse.eviction.input_hash_size = {eviction.input_hash_size} is above 2**62, "
            f"the largest raw-id range torchrec's managed collision supports here"
        )
    if eviction.tables and eviction.zch_size < 2 * world_size:
        raise ConfigError(
            f"sparse.eviction.zch_size = {eviction.zch_size} is too small for {world_size} rank(s): "
            f"each rank's shard keeps one row for unknown ids, so at least {2 * world_size} rows "
            f"are needed"
        )


def prepare_eviction(
    spec: DatasetSpec, eviction: "EvictionConfig", world_size: int, batch_size: int, warn_bytes: int = 2 << 30
) -> None:
    """:func:`check_eviction`, then a warning for a history buffer above ``warn_bytes`` per table."""
    check_eviction(spec, eviction, world_size)
    if not eviction.tables:
        return
    for table, size in history_buffer_bytes(spec, eviction, batch_size).items():
        if size > warn_bytes:
            warnings.warn(
                f"sparse.eviction: table '{table}' may need a history buffer of up to "
                f"{size / 2**30:.1f} GiB per rank (eviction_interval {eviction.eviction_interval} x "
                f"batch_size {batch_size} x its ids per row x 1.25 x 8 bytes); lower "
                f"sparse.eviction.eviction_interval if memory is short",
                stacklevel=2,
            )


def managed_tables(eviction: "EvictionConfig | None") -> set[str]:
    return set(eviction.tables) if eviction is not None else set()


def mc_module(
    table: str, eviction: "EvictionConfig", placement_range: int, buckets: int = 1, device: torch.device | None = None
) -> TrackedMCHModule:
    """The managed-collision module of one table (``placement_range``: the spec's cardinality)."""
    return TrackedMCHModule(
        zch_size=eviction.zch_size,
        device=device if device is not None else torch.device("cpu"),
        eviction_policy=POLICIES[eviction.policy](),
        eviction_interval=eviction.eviction_interval,
        input_hash_size=placement_range,
        name=table,
        buckets=buckets,
    )


def mc_collection(
    configs: list["BaseEmbeddingConfig"],
    spec: DatasetSpec,
    eviction: "EvictionConfig",
    buckets: int = 1,
    device: torch.device | None = None,
    keep_meta: bool = False,
) -> ManagedCollisionCollection:
    """A ManagedCollisionCollection with one module per table of ``configs`` (all managed).

    ``buckets``: the world size when the tables will be sharded (torchrec's planner wants the
    buckets of a managed table to be a multiple of it).
    """
    tables = spec.tables
    # Modules are built on CPU even for a meta model: sharding rebuilds them on the training device.
    # ``keep_meta``: a model that is only planned, never sharded, keeps them on meta (no memory).
    on_meta = device is not None and device.type == "meta"
    mc_device = device if not on_meta or keep_meta else None
    modules = {c.name: mc_module(c.name, eviction, tables[c.name], buckets, mc_device) for c in configs}
    return ManagedCollisionCollection(modules, configs)


# --------------------------------------------------------------------------- data


def managed_reader_spec(spec: DatasetSpec, eviction: "EvictionConfig | None") -> DatasetSpec:
    """The spec the reader should apply its id policy with: managed tables' columns accept
    ``[0, input_hash_size)`` (see the module doc). The spec itself is not changed."""
    names = managed_tables(eviction)
    if not names:
        return spec
    assert eviction is not None  # managed_tables(None) is empty
    columns = [
        dataclasses.replace(c, cardinality=eviction.input_hash_size)
        if c.kind in ("id", "multi_id", "sequence") and c.table_name in names
        else c
        for c in spec.columns
    ]
    return dataclasses.replace(spec, columns=columns)


def history_buffer_bytes(spec: DatasetSpec, eviction: "EvictionConfig", batch_size: int) -> dict[str, int]:
    """Upper estimate of torchrec's history buffer per managed table (bytes), from the columns'
    ``max_length`` (a multi_id column without one counts 1 id per row)."""
    out = {}
    for name in eviction.tables:
        ids_per_row = sum(
            c.max_length or 1 for c in spec.columns_of("id", "multi_id", "sequence") if c.table_name == name
        )
        buffers = 1 if eviction.policy == "lfu" else 2
        out[name] = int(1.25 * eviction.eviction_interval * batch_size * ids_per_row) * 8 * buffers
    return out


# --------------------------------------------------------------------------- statistics


@dataclass
class TableOccupancy:
    """One managed table, summed over its shards.

    ``occupancy`` = ids_held / zch_size (at most ``(zch_size - shards) / zch_size``: every shard keeps
    one row for unknown ids). ``ids_held`` is the table's state; ``evicted_ids``, ``admitted_ids``
    and ``eviction_rounds`` count since training started. Both are checkpointed, so a resumed run
    reports what an uninterrupted one would.
    """

    table: str
    zch_size: int
    ids_held: int
    evicted_ids: int
    admitted_ids: int
    eviction_rounds: int

    @property
    def occupancy(self) -> float:
        return self.ids_held / self.zch_size if self.zch_size else 0.0

    def to_dict(self) -> dict[str, float | int]:
        return {
            "zch_size": self.zch_size,
            "ids_held": self.ids_held,
            "occupancy": self.occupancy,
            "evicted_ids": self.evicted_ids,
            "admitted_ids": self.admitted_ids,
            "eviction_rounds": self.eviction_rounds,
        }


def tracked_modules(model: nn.Module) -> list[TrackedMCHModule]:
    return [m for m in model.modules() if isinstance(m, TrackedMCHModule)]


def eviction_seconds(model: nn.Module) -> float:
    """Wall seconds the managed-collision modules of ``model`` on this rank spent in eviction rounds
    (:attr:`TrackedMCHModule.eviction_seconds`, summed over the rank's modules: its shards of every table)."""
    return sum(m.eviction_seconds for m in tracked_modules(model))


def _is_sharded(model: nn.Module) -> bool:
    from torchrec.distributed.mc_modules import ShardedManagedCollisionCollection

    return any(isinstance(m, ShardedManagedCollisionCollection) for m in model.modules())


def eviction_stats(
    model: nn.Module, tables: list[str] | None = None, device: torch.device | None = None
) -> dict[str, TableOccupancy]:
    """Occupancy and eviction counts of the managed tables of ``model`` (sharded or not).

    ``tables``: the managed tables (default: those found in ``model``; pass the configured list on
    every rank of a sharded model, so that all ranks reduce the same rows). Sharded over more than
    one rank, every rank holds some shards: counts are summed over ranks with one all-reduce, so
    every rank must call this at the same step (``device``: where the collective runs, the
    training device for nccl). ``eviction_rounds`` is the maximum over shards (the shards of a
    table evict on the same steps).
    """
    modules = tracked_modules(model)
    names = sorted(set(tables) if tables is not None else {m.table for m in modules})
    counts = torch.zeros(len(names), 4, dtype=torch.int64)  # zch_size, ids_held, evicted, admitted
    rounds = torch.zeros(len(names), dtype=torch.int64)
    for m in modules:
        if m.table not in names:
            continue
        i = names.index(m.table)
        counts[i] += torch.tensor([m._zch_size, m.ids_held(), m.evicted_ids, m.admitted_ids])
        rounds[i] = max(int(rounds[i]), m.eviction_rounds)
    if names and _is_sharded(model) and dist.is_initialized() and dist.get_world_size() > 1:
        counts, rounds = counts.to(device or "cpu"), rounds.to(device or "cpu")
        dist.all_reduce(counts)
        dist.all_reduce(rounds, op=dist.ReduceOp.MAX)
        counts, rounds = counts.cpu(), rounds.cpu()
    return {t: _occupancy(t, counts[i], rounds[i]) for i, t in enumerate(names)}


def _occupancy(table: str, counts: torch.Tensor, rounds: torch.Tensor) -> TableOccupancy:
    """One table's :class:`TableOccupancy` from its counts [zch_size, held, evicted, admitted] and rounds."""
    zch_size, ids_held, evicted_ids, admitted_ids = (int(v) for v in counts)
    return TableOccupancy(table, zch_size, ids_held, evicted_ids, admitted_ids, int(rounds))
