"""Loading a checkpoint whose managed-collision (MCH) tables were sharded over another number of ranks.

A torchrec workaround, kept to this module. Checked against torchrec 1.9.2 with fbgemm-gpu-cpu 1.8.0
and torch 2.13 (``torchrec.modules.mc_modules.MCHManagedCollisionModule``,
``torchrec.distributed.mc_modules.ShardedManagedCollisionCollection``,
``torchrec.distributed.sharding.rw_sharding.RwSparseFeaturesDist``); another version may lay the
slots out differently: the checks below then raise a TrainingError rather than load wrong rows.

How torchrec lays a managed table out over ``W`` ranks (row-wise, the only sharding it supports):

* **Rows.** The table's ``zch_size`` rows are split into contiguous shards, one per rank: rank ``k``
  owns global rows ``[s_k, s_{k+1})`` (``s`` = the MCH module's ``_output_segments_tensor``, the
  table's row-wise shard offsets). Its MCH module has ``zch_size_k = s_{k+1} - s_k`` *slots*.
* **Ids.** Before the lookup, torchrec's input dist sends every raw id to the rank that owns it,
  with fbgemm's ``block_bucketize_sparse_features``: an id below the module's ``input_size()`` (in
  torchrec-mdr: the spec's cardinality) goes to bucket ``id // ceil(input_size / buckets)``, an id at
  or above it to bucket ``id % buckets``; bucket ``b`` is rank ``b // (buckets / W)``
  (torchrec-mdr: ``buckets = W``, so bucket = rank). :func:`bucket_owner` calls that same op.
* **Slots.** Rank ``k``'s module keeps ``_mch_sorted_raw_ids`` [zch_size_k] (the raw ids holding a
  slot, ascending; ``int64 max`` = free), ``_mch_remapped_ids_mapping`` [zch_size_k] (the *global*
  row of each slot, in ``[s_k, s_{k+1})``) and per-slot eviction metadata ``_mch_<name>``
  (``counts`` for LFU, ``last_access_iter`` for LRU, both for DistanceLFU), all permuted together.
  Its last slot always stays free and maps to row ``s_{k+1} - 1``: the rank's "unknown id" row,
  where ids without a slot are looked up. torchrec saves these arrays as ShardedTensors whose
  global tensor is the rank-by-rank concatenation ([zch_size], chunk ``k`` at offset ``s_k``).

So DCP can read the arrays at any world size, but read as-is at ``W' != W`` they are wrong: a rank
gets slots of ids it does not own, pointing at rows it does not hold. :class:`MCHReshard` rebuilds
them instead, as one collective inside :meth:`CheckpointManager.load
<torchrec_mdr.training.checkpoint.CheckpointManager.load>`:

1. every rank reads the checkpoint's full slot arrays of every managed table (small: ints per row);
2. :func:`plan_table` gives every held id to the rank that owns it at ``W'``; a rank with more ids
   than slots (``zch_size_k - 1``) keeps the highest counts (then the most recent access, then the
   smaller id; LRU, which keeps no counts: the most recent access) and drops the rest, which become
   unknown ids (counted as evicted). A kept id keeps its row when that row lies in its new shard,
   else takes the shard's lowest free row; every new shard's unknown row takes an old unknown row's
   content;
3. the embedding rows and every row-indexed fused-optimizer state (RowWiseAdagrad's ``momentum1``)
   of the table, which DCP loaded by row index, move to their new rows (``all_to_all_single``);
4. eviction counters (see :mod:`torchrec_mdr.sparse.mch.eviction`) are summed into the first shard
   (``eviction_rounds``: the maximum, on every shard), so the table totals carry over; the ids each
   old rank collected since the last eviction round (``rank{R}.pt``, :mod:`torchrec_mdr.sparse.mch.state`)
   are sent to their new owners, with the step counters, when every old rank saved them.

What it cannot do: ids that do not fit their new shard are dropped (lowest counts first); ids without
a slot are looked up in their new shard's unknown row, which was another shard's unknown row (so
their embeddings differ from the old world size, where each shard had its own); the continuation is
not exact (each rank's data and the eviction rounds' candidates differ). Modules whose state does
not have the layout above (another torchrec version) raise a TrainingError naming what differs.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from torchrec.modules.mc_modules import MCHManagedCollisionModule

from torchrec_mdr.errors import TrainingError
from torchrec_mdr.safe_files import load_side_file
from torchrec_mdr.sparse.mch.eviction import EMPTY_SLOT
from torchrec_mdr.sparse.mch.state import load_module_state, named_mch_modules, saved_key

CHECKED_TORCHREC = ("1.9.2",)  # the torchrec versions this layout was read from and tested with
_MODULE_KEY = re.compile(
    r"^(?P<collection>.+)\._managed_collision_collection\._managed_collision_modules\."
    r"(?P<table>[^.]+)\.(?P<buffer>[^.]+)$"
)
_RAW, _ROWS = "_mch_sorted_raw_ids", "_mch_remapped_ids_mapping"
_SEGMENTS = "_output_segments_tensor"  # a plain (replicated) buffer: rank 0's boundaries in the checkpoint
_RANKING = ("counts", "last_access_iter")  # metadata that decides who stays when a shard overflows


# --------------------------------------------------------------------------- the layout, as pure functions


@dataclass
class SlotMaps:
    """One managed table's slot arrays over all its shards, concatenated shard by shard (as DCP stores them).

    ``raw_ids`` [Z]: the id holding each slot (:data:`EMPTY_SLOT` if free); ``rows`` [Z]: the global
    embedding row of each slot; ``metadata``: eviction metadata per slot by name (``counts``...)."""

    raw_ids: torch.Tensor
    rows: torch.Tensor
    metadata: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class TablePlan:
    """Where one table's state goes at the new world size.

    ``slots``: the new slot arrays (concatenated by new shard, each shard's ids ascending, its free
    slots after them and its unknown-id slot last); ``source_rows`` [Z]: for every new global row,
    the old row whose embedding and optimizer state it takes; ``kept`` / ``dropped``: the ids that
    kept a slot and those that did not fit their new shard."""

    slots: SlotMaps
    source_rows: torch.Tensor
    kept: torch.Tensor
    dropped: torch.Tensor


def _shard_of(positions: torch.Tensor, segments: list[int]) -> torch.Tensor:
    """The shard holding each row / slot position, for shards ``[segments[k], segments[k + 1])``."""
    return torch.bucketize(positions, torch.tensor(segments[1:-1], dtype=torch.int64), right=True)


def _check_segments(segments: list[int], size: int, what: str) -> None:
    if (
        len(segments) < 2
        or segments[0] != 0
        or segments[-1] != size
        or any(b - a < 2 for a, b in zip(segments, segments[1:]))
    ):
        raise TrainingError(
            f"{what}: shard boundaries {segments} do not split {size} managed-collision slots into "
            f"shards of at least 2 (torchrec's layout changed? this code was checked against "
            f"torchrec {', '.join(CHECKED_TORCHREC)})"
        )


def _survivors(scores: list[torch.Tensor], ids: torch.Tensor, capacity: int) -> torch.Tensor:
    """Positions of the ``capacity`` best ids: highest ``scores[0]``, then ``scores[1]``..., then smallest id."""
    order = torch.argsort(ids, stable=True)
    for score in reversed(scores):
        order = order[torch.argsort(score[order], descending=True, stable=True)]
    return order[:capacity]


def plan_table(
    old: SlotMaps, old_segments: list[int], new_segments: list[int], owner: Callable[[torch.Tensor], torch.Tensor]
) -> TablePlan:
    """Move one table's held ids to the shards that own them at the new world size (see the module doc).

    ``old_segments`` / ``new_segments``: the shard boundaries (``[0, ..., zch_size]``) at the old and
    the new world size; ``owner(ids)``: the new shard of each raw id (:func:`bucket_owner`).
    """
    size = int(old.raw_ids.numel())
    _check_segments(old_segments, size, "the checkpoint")
    _check_segments(new_segments, size, "this model")
    last = torch.tensor(old_segments[1:]) - 1  # each old shard's unknown-id slot
    if not bool((old.raw_ids[last] == EMPTY_SLOT).all()):
        raise TrainingError(
            "the checkpoint's managed-collision slot maps do not end each shard with a free "
            "unknown-id slot (torchrec's layout changed?)"
        )
    old_unknown_rows = old.rows[last]
    old_shards, new_shards = len(old_segments) - 1, len(new_segments) - 1
    held = old.raw_ids != EMPTY_SLOT
    ids, rows = old.raw_ids[held], old.rows[held]
    metadata = {name: values[held] for name, values in old.metadata.items()}
    if ids.numel() and not bool(((rows >= 0) & (rows < size)).all()):
        raise TrainingError("the checkpoint's managed-collision slot maps point outside the table")
    scores = [metadata[name] for name in _RANKING if name in metadata]
    new_shard = owner(ids)

    raw_parts: list[torch.Tensor] = []
    row_parts: list[torch.Tensor] = []
    meta_parts: dict[str, list[torch.Tensor]] = {name: [] for name in old.metadata}
    source_rows = torch.arange(size, dtype=torch.int64)  # a free row keeps its old content (reset on admission)
    kept_ids: list[torch.Tensor] = []
    dropped_ids: list[torch.Tensor] = []
    for shard, (start, end) in enumerate(zip(new_segments, new_segments[1:])):
        mine = torch.nonzero(new_shard == shard).flatten()
        keep = mine[_survivors([s[mine] for s in scores], ids[mine], end - start - 1)]
        dropped_ids.append(ids[mine[~torch.isin(mine, keep)]])
        keep = keep[torch.argsort(ids[keep])]  # slots are sorted by raw id
        kept_ids.append(ids[keep])
        unknown = end - 1
        # rows: a kept id keeps its old row when it lies in this shard, the others take the free rows in order
        stays = (rows[keep] >= start) & (rows[keep] < unknown)
        new_rows = torch.empty(keep.numel(), dtype=torch.int64)
        new_rows[stays] = rows[keep][stays]
        free = torch.ones(end - start, dtype=torch.bool)
        free[rows[keep][stays] - start] = False
        free[-1] = False  # the unknown-id row
        free_rows = torch.nonzero(free).flatten() + start
        movers = int((~stays).sum())
        new_rows[~stays] = free_rows[:movers]
        source_rows[new_rows] = rows[keep]
        # the shard's unknown row and slot come from an old shard's: the one whose unknown row this row was,
        # else the old shard at the same relative position
        same = torch.nonzero(old_unknown_rows == unknown).flatten()
        old_shard = int(same[0]) if same.numel() else min(shard * old_shards // new_shards, old_shards - 1)
        source_rows[unknown] = old_unknown_rows[old_shard]
        unknown_slot = old_segments[old_shard + 1] - 1
        empty = end - start - keep.numel()
        raw_parts += [ids[keep], torch.full((empty,), EMPTY_SLOT, dtype=torch.int64)]
        row_parts += [new_rows, free_rows[movers:], torch.tensor([unknown], dtype=torch.int64)]
        for name, values in old.metadata.items():
            meta_parts[name] += [
                metadata[name][keep],
                torch.zeros(empty - 1, dtype=values.dtype),
                values[unknown_slot : unknown_slot + 1],
            ]
    slots = SlotMaps(
        torch.cat(raw_parts), torch.cat(row_parts), {name: torch.cat(parts) for name, parts in meta_parts.items()}
    )
    return TablePlan(slots, source_rows, torch.cat(kept_ids), torch.cat(dropped_ids))


def bucket_owner(ids: torch.Tensor, input_size: int, buckets: int, world_size: int) -> torch.Tensor:
    """The rank torchrec's row-wise input dist sends each raw id of a managed table to: fbgemm's
    ``block_bucketize_sparse_features`` with the arguments ``RwSparseFeaturesDist`` gives it for an
    MCH module (block size ``ceil(input_size / buckets)``, ``buckets`` blocks, ``world_size`` ranks)."""
    importlib.import_module("fbgemm_gpu")  # registers torch.ops.fbgemm (torchrec's sharding imports it too)
    n = int(ids.numel())
    if n == 0 or world_size == 1:
        return torch.zeros(n, dtype=torch.int64)
    lengths, *_ = torch.ops.fbgemm.block_bucketize_sparse_features(
        torch.ones(n, dtype=torch.int64),
        ids.to(torch.int64).cpu(),
        bucketize_pos=False,
        sequence=True,
        block_sizes=torch.tensor([(input_size + buckets - 1) // buckets], dtype=torch.int64),
        total_num_blocks=torch.tensor([buckets], dtype=torch.int64),
        my_size=world_size,
        weights=None,
        keep_orig_idx=True,
    )
    per_rank = lengths.view(world_size, n)
    if not bool((per_rank.sum(0) == 1).all()):
        raise TrainingError("fbgemm's block_bucketize_sparse_features did not place every id on exactly one rank")
    return per_rank.argmax(0)


def move_rows(
    local: torch.Tensor, source_rows: torch.Tensor, segments: list[int], rank: int, world_size: int
) -> torch.Tensor:
    """This rank's rows of a row-wise sharded tensor after a row permutation (a collective at world size > 1).

    ``local``: this rank's rows ``[segments[rank], segments[rank + 1])`` as DCP loaded them (the
    checkpoint's rows by global index); returns the rows ``r`` of that range filled with old row
    ``source_rows[r]``, fetched from the rank that holds it with one ``all_to_all_single``."""
    start, end = segments[rank], segments[rank + 1]
    if world_size == 1:
        return local[source_rows[start:end].to(local.device)]
    holder = _shard_of(source_rows, segments)
    wanted_from = holder[start:end]
    receive_counts = torch.bincount(wanted_from, minlength=world_size).tolist()
    targets = torch.nonzero(holder == rank).flatten()  # new rows (any rank) that need a row of mine; ascending
    send_counts = torch.bincount(_shard_of(targets, segments), minlength=world_size).tolist()
    send = local[(source_rows[targets] - start).to(local.device)].contiguous()
    received = torch.empty((sum(receive_counts), *local.shape[1:]), dtype=local.dtype, device=local.device)
    dist.all_to_all_single(received, send, receive_counts, send_counts)
    out = torch.empty_like(local)
    out[torch.argsort(wanted_from, stable=True).to(local.device)] = received  # received: by sender, then by row
    return out


# --------------------------------------------------------------------------- the model side


@dataclass
class _Table:
    """One managed table of the model being loaded into (this rank's shard of it)."""

    name: str
    prefix: str  # state-dict prefix of its MCH module, e.g. "<collection>._managed_collision_collection...item."
    module_name: str  # its name in state.named_mch_modules(model) (the key of rank{R}.pt's module states)
    module: MCHManagedCollisionModule
    weight_key: str  # state-dict key of its embedding weight
    segments: list[int]  # the row-wise shard boundaries at this world size
    buffers: dict[str, ShardedTensor] = field(default_factory=dict)  # slot arrays, as the model's state_dict gave them


@dataclass
class ReshardReport:
    """What :meth:`MCHReshard.apply` did, per table: ids kept and dropped, and whether the history was carried."""

    saved_world_size: int
    world_size: int
    kept: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    history_carried: list[str] = field(default_factory=list)  # tables whose pending history moved with the ids
    history_dropped: list[str] = field(default_factory=list)  # tables whose pending history was not saved by all
    counters_missing: list[str] = field(default_factory=list)  # tables whose eviction counters restart at 0

    def lines(self) -> list[str]:
        """What rank 0 prints: one line for the slots, one per kind of history note."""
        tables = ", ".join(f"'{t}' {self.kept[t]} ids kept, {self.dropped[t]} dropped" for t in sorted(self.kept))
        text = [
            f"note: managed-collision slot maps resharded from {self.saved_world_size} to {self.world_size} "
            f"rank(s) (ids moved to the shard that owns them now; ids beyond a shard's slots dropped, lowest "
            f"count first - lru: least recently seen - and counted as evicted): {tables}"
        ]
        if self.history_carried:
            text.append(
                f"note: the ids counted since the last eviction round went to their new shards "
                f"({', '.join(sorted(self.history_carried))})"
            )
        if self.history_dropped:
            text.append(
                f"note: the ids counted since the last eviction round were dropped (not saved by every "
                f"rank: {', '.join(sorted(self.history_dropped))}); the next round comes eviction_interval "
                f"steps after this load"
            )
        if self.counters_missing:
            text.append(
                f"note: eviction counters restart at 0 (not saved by every rank: "
                f"{', '.join(sorted(self.counters_missing))})"
            )
        return text


def _local(value: ShardedTensor, key: str) -> tuple[torch.Tensor, int]:
    shards = value.local_shards()
    if len(shards) != 1:
        raise TrainingError(f"{key}: expected one row-wise shard per rank, found {len(shards)}")
    return shards[0].tensor, int(shards[0].metadata.shard_offsets[0])


def _segments(module: MCHManagedCollisionModule) -> list[int]:
    values = module._init_output_segments_tensor.tolist()
    return [int(v) for v in values[: values.index(-1)]] if -1 in values else [int(v) for v in values]


class MCHReshard:
    """Loads the managed-collision tables of a checkpoint written at another world size (see the module doc).

    Use: ``reshard = MCHReshard(model, state["model"], metadata, saved_world_size)``, which swaps the
    slot-array entries of ``state["model"]`` for full-size targets; ``dcp.load(state)``; then
    :meth:`apply` (a collective) before ``model.load_state_dict``, and :meth:`restore_modules` after it.
    """

    def __init__(
        self, model: nn.Module, model_state: dict[str, Any], metadata: dict[str, Any], saved_world_size: int
    ) -> None:
        self.saved_world_size = saved_world_size
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.world_size = dist.get_world_size() if dist.is_initialized() else 1
        self.module_states: dict[str, dict[str, Any]] = {}  # this rank's new module states, by module name
        self._saved_modules: list[dict[str, Any]] | None = None  # every old rank's rank{R}.pt module states
        modules = dict(named_mch_modules(model))
        self.tables: list[_Table] = []
        by_prefix: dict[str, _Table] = {}
        for key, value in model_state.items():
            match = _MODULE_KEY.match(key)
            if match is None:
                continue
            prefix = key[: -len(match["buffer"])]
            if prefix not in by_prefix:
                found = [name for name in modules if name == prefix[:-1] or name.endswith("." + prefix[:-1])]
                if len(found) != 1:
                    raise TrainingError(f"cannot tell which managed-collision module holds {key}")
                module = modules[found[0]]
                weights = [
                    f"{match['collection']}._embedding_module.{kind}.{match['table']}.weight"
                    for kind in ("embedding_bags", "embeddings")
                ]
                weight_key = next((w for w in weights if w in model_state), None)
                if weight_key is None:
                    raise TrainingError(
                        f"no embedding weight of managed table '{match['table']}' in the state dict "
                        f"(looked for {weights})"
                    )
                table = _Table(match["table"], prefix, found[0], module, weight_key, _segments(module))
                by_prefix[prefix] = table
                self.tables.append(table)
            table = by_prefix[prefix]
            if isinstance(value, ShardedTensor):
                if not match["buffer"].startswith("_mch_"):
                    raise TrainingError(
                        f"{key}: an unexpected sharded managed-collision buffer (this code knows "
                        f"torchrec {', '.join(CHECKED_TORCHREC)})"
                    )
                table.buffers[match["buffer"]] = value
        for table in self.tables:
            if _RAW not in table.buffers or _ROWS not in table.buffers:
                raise TrainingError(
                    f"managed table '{table.name}': the model's state dict lacks sharded {_RAW} / "
                    f"{_ROWS}; resharding needs a DistributedModelParallel model"
                )
            for name in table.buffers:  # read the checkpoint's full arrays instead
                key = f"model.{table.prefix}{name}"
                saved = metadata.get(key)
                if not isinstance(saved, TensorStorageMetadata) or tuple(saved.size) != (table.segments[-1],):
                    raise TrainingError(f"checkpoint entry {key} is missing or not of size [{table.segments[-1]}]")
                model_state[table.prefix + name] = torch.empty(saved.size, dtype=saved.properties.dtype)
            # the checkpoint's shard boundaries must not overwrite the module's own: the buffer is also its
            # _init_output_segments_tensor, and validate_state (run by load_state_dict) asserts that this
            # shard's range is among them
            if table.prefix + _SEGMENTS in model_state:
                model_state[table.prefix + _SEGMENTS] = torch.empty_like(
                    table.module._output_segments_tensor, device="cpu"
                )
        self.old_segments = {
            table.prefix: self._old_segments(metadata, f"model.{table.prefix}{_RAW}") for table in self.tables
        }

    @staticmethod
    def _old_segments(metadata: dict[str, Any], key: str) -> list[int]:
        chunks = sorted(int(c.offsets[0]) for c in metadata[key].chunks)
        return chunks + [int(metadata[key].size[0])]

    # ------------------------------------------------------------------ after dcp.load
    def apply(self, state: dict[str, Any], checkpoint: Path) -> ReshardReport:
        """Rebuild every managed table's slot arrays, rows and optimizer rows for this world size (a
        collective); put the model's own slot-array ShardedTensors back into ``state["model"]``."""
        report = ReshardReport(self.saved_world_size, self.world_size)
        model_state = state["model"]
        for table in self.tables:
            old = SlotMaps(
                model_state[table.prefix + _RAW],
                model_state[table.prefix + _ROWS],
                {
                    name[len("_mch_") :]: model_state[table.prefix + name]
                    for name in table.buffers
                    if name not in (_RAW, _ROWS)
                },
            )
            module = table.module

            def owner(ids: torch.Tensor, m: Any = module) -> torch.Tensor:
                return bucket_owner(ids, m.input_size(), m.buckets(), self.world_size)

            plan = plan_table(old, self.old_segments[table.prefix], table.segments, owner)
            start, end = table.segments[self.rank], table.segments[self.rank + 1]
            new_values = {
                _RAW: plan.slots.raw_ids,
                _ROWS: plan.slots.rows,
                **{f"_mch_{name}": values for name, values in plan.slots.metadata.items()},
            }
            for name, sharded in table.buffers.items():
                local, offset = _local(sharded, table.prefix + name)
                if offset != start or local.shape[0] != end - start:
                    raise TrainingError(
                        f"{table.prefix}{name}: this rank's slots [{offset}, {offset + local.shape[0]})"
                        f" are not its rows [{start}, {end})"
                    )
                local.copy_(new_values[name][start:end])
                model_state[table.prefix + name] = sharded
            if table.prefix + _SEGMENTS in model_state:
                model_state[table.prefix + _SEGMENTS] = module._output_segments_tensor.clone()
            for key, value in self._row_tensors(state, table):
                local, offset = _local(value, key)
                if offset != start or local.shape[0] != end - start:
                    raise TrainingError(
                        f"{key}: this rank's rows [{offset}, {offset + local.shape[0]}) are not the "
                        f"managed-collision shard [{start}, {end})"
                    )
                local.copy_(move_rows(local, plan.source_rows, table.segments, self.rank, self.world_size))
            report.kept[table.name] = report.kept.get(table.name, 0) + int(plan.kept.numel())
            report.dropped[table.name] = report.dropped.get(table.name, 0) + int(plan.dropped.numel())
            self.module_states[table.module_name] = self._module_state(
                table, checkpoint, int(plan.dropped.numel()), report
            )
        return report

    @staticmethod
    def _row_tensors(state: dict[str, Any], table: _Table) -> list[tuple[str, ShardedTensor]]:
        """The table's embedding weight and its row-indexed optimizer states (ShardedTensors of its row count)."""
        rows = table.segments[-1]
        found = [(table.weight_key, state["model"][table.weight_key])]
        for name, value in state.get("optim", {}).get(table.weight_key, {}).items():
            if isinstance(value, ShardedTensor) and value.dim() >= 1 and value.size(0) == rows:
                found.append((f"optim.{table.weight_key}.{name}", value))
        for key, value in found:
            if not isinstance(value, ShardedTensor):
                raise TrainingError(f"{key}: a managed table's rows must be a ShardedTensor to be resharded")
        return found

    # ------------------------------------------------------------------ per-rank state (rank{R}.pt)
    def _module_state(self, table: _Table, checkpoint: Path, dropped: int, report: ReshardReport) -> dict[str, Any]:
        """This rank's module state (:func:`torchrec_mdr.sparse.mch.state.module_state` format) from every
        old rank's: counters summed into shard 0, the history since the last round sent to the ids' owners."""
        if self._saved_modules is None:
            self._saved_modules = []
            for rank in range(self.saved_world_size):
                path = checkpoint / f"rank{rank}.pt"
                modules = load_side_file(path).get("modules", {}) if path.is_file() else {}
                self._saved_modules.append({saved_key(name): state for name, state in modules.items()})
        saved = [modules.get(table.module_name) for modules in self._saved_modules]
        counters = [s.get("counters") for s in saved if s is not None]
        state: dict[str, Any] = {}
        if len(counters) == self.saved_world_size and all(c is not None for c in counters):
            state["counters"] = {
                "evicted_ids": sum(c["evicted_ids"] for c in counters) + dropped if self.rank == 0 else 0,
                "admitted_ids": sum(c["admitted_ids"] for c in counters) if self.rank == 0 else 0,
                "eviction_rounds": max(c["eviction_rounds"] for c in counters),
            }
        else:
            report.counters_missing.append(table.name)
        have_history = [s is not None and "history_size" in s for s in saved]
        iters = {(s["current_iter"], s["last_eviction_iter"]) for s, ok in zip(saved, have_history) if ok}
        if not all(have_history) or len(iters) != 1:
            report.history_dropped.append(table.name)
            return state
        current_iter, last_eviction_iter = iters.pop()
        state.update(current_iter=current_iter, last_eviction_iter=last_eviction_iter)
        sizes = [s["history_size"] for s in saved]
        if all(size == -1 for size in sizes):  # no training batch since the model was built: nothing collected
            state.update(history_size=-1, history_offset=0)
            return state
        parts = [s for s in saved if s["history_size"] != -1]
        history = torch.cat([s["history"] for s in parts])
        names = set(parts[0]["history_metadata"])
        metadata = {name: torch.cat([s["history_metadata"][name] for s in parts]) for name in names}
        module = table.module
        mine = bucket_owner(history, module.input_size(), module.buckets(), self.world_size) == self.rank
        history = history[mine]
        # room for the carried ids and for a full interval more, as the first batch would size it
        state.update(
            history_size=int(history.numel()) + max(sizes),
            history_offset=int(history.numel()),
            history=history,
            history_metadata={name: values[mine] for name, values in metadata.items()},
        )
        report.history_carried.append(table.name)
        return state

    def restore_modules(self) -> None:
        """After ``model.load_state_dict``: give every managed module its counters and carried history."""
        for table in self.tables:
            load_module_state(table.module, self.module_states.get(table.module_name, {}))
