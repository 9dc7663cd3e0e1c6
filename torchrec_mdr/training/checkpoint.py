"""Checkpoints of a training run with torch.distributed.checkpoint (DCP): save, find, check, load.

A checkpoint is a folder ``RUN_DIR/checkpoints/step-000123/`` holding

* the DCP files (``.metadata`` + one ``__R_0.distcp`` per rank) of one nested state dict:
  ``{"model": DMP state_dict, "optim": CombinedOptimizer state}``. The model part holds every
  parameter and every persistent buffer: sharded tables as ShardedTensor (each rank writes its own
  shards), replicated dense tensors once; the optimizer part holds the fused sparse optimizer's
  state (ShardedTensor, e.g. RowWiseAdagrad's ``momentum1`` [rows]) and the dense optimizer's
  state (e.g. Adam's ``exp_avg``, ``exp_avg_sq``, ``step``);
* ``state.json`` (rank 0): the trainer's progress (epoch, step, batch_in_epoch), the learning-rate
  schedule, and the run's identity: model config, managed-collision (eviction) config, optimizer
  kinds, the dataset spec's fingerprint (columns, kinds, tables, cardinalities, domains, labels),
  the data-order settings, world size and torchrec-mdr version;
* ``rank{R}.pt``: what is each rank's own and outside the state dicts: its torch / CUDA / numpy /
  python random states, and its managed-collision modules' id history since their last eviction
  round and their eviction counters (:mod:`torchrec_mdr.sparse.mch.state`). It holds tensors
  and plain python values only and is read with ``torch.load(..., weights_only=True)``
  (:mod:`torchrec_mdr.safe_files`): a tampered file is refused, never run.

Atomic publication: every rank writes into ``step-000123.tmp-<token>``; after a barrier rank 0
renames it to ``step-000123`` and only then points ``checkpoints/latest`` at it (written to a
temporary file and renamed). A crash at any moment leaves ``latest`` on the previous complete
checkpoint; the half-written folder is never read and is deleted by the next save. After
publication the oldest checkpoints beyond ``keep`` are deleted (never the one ``latest`` names, nor
the one ``checkpoints/best`` names: the best evaluation of early stopping, see
:mod:`torchrec_mdr.training.early_stopping`).

Loading reshards: DCP reads whatever slices of each table the current sharding plan puts on a
rank, so a checkpoint written by N ranks loads on M ranks (e.g. a 2-rank run evaluated on one
process). Managed-collision tables keep per-shard slot maps (which raw id holds which row of the
shard that owns the id); at another world size :mod:`torchrec_mdr.sparse.mch.reshard` moves every
held id, with its embedding row, optimizer rows and eviction metadata, to the shard that owns it
now, dropping the lowest-count ids of a shard that has too few slots (rank 0 prints how many).

Exactness: resuming at the *same* world size with the same data settings (batch size, workers,
shuffle, seed) continues with exactly the losses of an uninterrupted run — same weights,
optimizer state, managed-collision slots, id history and eviction counts (so metrics.json and
TensorBoard report the counts of an uninterrupted run), schedule, RNG streams, and the same
batches (the reader's order depends only on (seed, epoch, slice); the trainer skips the
``batch_in_epoch`` batches already trained on). At another world size training continues from
the saved weights and optimizer state, but each rank's data slice and batches differ, so the
losses are NOT those of an uninterrupted run (the epoch position is carried over as the fraction
of the epoch's rows already trained on).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from torchrec.modules.mc_modules import MCHManagedCollisionModule
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizer

import torchrec_mdr
from torchrec_mdr.config import to_dict
from torchrec_mdr.data.spec import EMBEDDED_KINDS, DatasetSpec
from torchrec_mdr.errors import TrainingError
from torchrec_mdr.experiment import ExperimentConfig
from torchrec_mdr.models.registry import MODELS, ModelConfig
from torchrec_mdr.sparse.mch.config import EvictionConfig
from torchrec_mdr.training.legacy_names import legacy_aliases
from torchrec_mdr.training.distributed import DistContext
from torchrec_mdr.safe_files import check_dcp_metadata, load_side_file, save_side_file
from torchrec_mdr.sparse.mch.reshard import MCHReshard
from torchrec_mdr.sparse.mch.state import load_module_states, module_states

CHECKPOINT_DIR = "checkpoints"
LATEST_FILE = "latest"
BEST_FILE = "best"
STATE_FILE = "state.json"
FORMAT_VERSION = 1
_COMPLETE = re.compile(r"^step-(\d+)$")
_STALE = re.compile(r"^step-\d+\.(tmp|old)-")


# --------------------------------------------------------------------------- identity of a run


def dataset_signature(spec: DatasetSpec) -> dict[str, Any]:
    """What a model trained on ``spec`` depends on: columns (name, kind, table, cardinality, sequence
    group, max length), domain names and labels — not row counts, files or the dataset's name.
    ``fingerprint`` is a short hash of the rest."""
    columns = [{"name": c.name, "kind": c.kind, "table": c.table_name if c.kind in EMBEDDED_KINDS else None,
                "cardinality": c.cardinality, "sequence_group": c.sequence_group, "max_length": c.max_length}
               for c in spec.columns]
    signature: dict[str, Any] = {"columns": columns, "domains": list(spec.domain_names),
                                 "labels": spec.label_names}
    text = json.dumps(signature, sort_keys=True)
    signature["fingerprint"] = hashlib.sha256(text.encode()).hexdigest()[:16]
    return signature


def run_identity(config: ExperimentConfig, spec: DatasetSpec) -> dict[str, Any]:
    """The parts of a run a checkpoint must agree with to be loaded into it: the model config (without
    the options of the other registered models), the managed-collision config, the optimizer kinds
    (their state must fit) and the dataset signature. Learning rates, steps, sharding may change."""
    others = {entry.config_field for name, entry in MODELS.items() if name != config.model.name}
    return {
        "model": {k: v for k, v in to_dict(config.model).items() if k not in others},
        "eviction": to_dict(config.sparse.eviction),
        "optimizer": {"sparse": config.optimizer.sparse, "dense": config.optimizer.dense},
        "dataset": dataset_signature(spec),
    }


def data_order(config: ExperimentConfig, world_size: int) -> dict[str, Any]:
    """Settings that decide which rows each step trains on (exact resumption needs them unchanged)."""
    data = config.data
    return {"world_size": world_size, "batch_size": data.batch_size, "num_workers": data.num_workers,
            "shuffle": data.shuffle, "shuffle_buffer_rows": data.shuffle_buffer_rows, "drop_last": data.drop_last,
            "seed": data.seed}


def _describe(value: Any) -> str:
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else repr(value)


def differences(saved: Any, current: Any, key: str = "", defaults: Any = None) -> list[str]:
    """Human-readable differences ``key: <saved> in the checkpoint, <current> now`` of two JSON trees.

    Lists of dicts with a ``name`` (the dataset's columns) are compared by name. ``defaults`` (a tree of
    the same shape) holds the options' default values: a key missing from the checkpoint whose current
    value is its default is an option added after the checkpoint was written, and is no difference."""
    if isinstance(saved, dict) and isinstance(current, dict):
        found = []
        defaults = defaults if isinstance(defaults, dict) else {}
        for name in list(saved) + [k for k in current if k not in saved]:
            sub = f"{key}.{name}" if key else str(name)
            if name not in current:
                found.append(f"{sub}: only in the checkpoint")
            elif name not in saved:
                if name not in defaults or defaults[name] != current[name]:
                    found.append(f"{sub}: not in the checkpoint")
            else:
                found.extend(differences(saved[name], current[name], sub, defaults.get(name)))
        return found
    if (isinstance(saved, list) and isinstance(current, list) and saved and current
            and all(isinstance(v, dict) and "name" in v for v in saved + current)):
        return differences({v["name"]: v for v in saved}, {v["name"]: v for v in current}, key)
    if saved != current:
        return [f"{key}: {_describe(saved)} in the checkpoint, {_describe(current)} now"]
    return []


def check_identity(saved: dict[str, Any], current: dict[str, Any], path: Path,
                   parts: tuple[str, ...] = ("model", "eviction", "optimizer", "dataset")) -> None:
    """TrainingError naming every difference in ``parts`` between a checkpoint and this run."""
    what = {"model": "model config", "eviction": "sparse.eviction config", "optimizer": "optimizer kinds",
            "dataset": "dataset spec"}
    for part in parts:
        saved_part = dict(saved.get(part, {}))
        current_part = dict(current[part])
        if part == "dataset":
            if saved_part.get("fingerprint") == current_part.get("fingerprint"):
                continue
            saved_part.pop("fingerprint", None)
            current_part.pop("fingerprint", None)
        defaults = to_dict(ModelConfig()) if part == "model" else to_dict(EvictionConfig()) if part == "eviction" \
            else None
        found = differences(saved_part, current_part, "model" if part == "model" else
                            "sparse.eviction" if part == "eviction" else "optimizer" if part == "optimizer" else "",
                            defaults)
        if found:
            shown = "; ".join(found[:8]) + (f"; ... ({len(found) - 8} more)" if len(found) > 8 else "")
            raise TrainingError(f"checkpoint {path} was written for a different {what[part]}: {shown}")


# --------------------------------------------------------------------------- RNG states


def rng_state() -> dict[str, Any]:
    """This process's torch (CPU and CUDA), numpy and python random states, as tensors and plain python
    values (what a weights-only load accepts): numpy's MT19937 keys as an int64 tensor."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state: dict[str, Any] = {"torch": torch.get_rng_state(),
                             "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)),
                                       "pos": int(position), "has_gauss": int(has_gauss),
                                       "cached_gaussian": float(cached_gaussian)},
                             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state` (also takes the numpy tuple of checkpoints written before it)."""
    torch.set_rng_state(state["torch"])
    saved = state["numpy"]
    if isinstance(saved, dict):
        saved = (saved["kind"], saved["keys"].numpy().astype(np.uint32), saved["pos"], saved["has_gauss"],
                 saved["cached_gaussian"])
    np.random.set_state(saved)
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- state dicts


def _local_tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, ShardedTensor):
        for shard in value.local_shards():
            yield shard.tensor
    elif isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _local_tensors(v)


def _finite(part: torch.Tensor) -> bool:
    # A sum is finite whenever every value is (one pass, no temporary; 4-5x faster than isfinite on
    # CPU); only a non-finite sum, which large finite values can also give, needs the exact check.
    return bool(torch.isfinite(part.sum())) or bool(torch.isfinite(part).all())


def all_finite(model: nn.Module, ctx: DistContext, chunk_rows: int = 1 << 16) -> bool:
    """Whether every floating-point value of the model's state (each rank's local shards) is finite,
    agreed over all ranks. Checked in chunks of rows so that a large table needs no large temporary."""
    finite = True
    for tensor in _local_tensors(model.state_dict()):
        if not tensor.is_floating_point() or tensor.numel() == 0:
            continue
        rows = tensor.reshape(tensor.shape[0], -1) if tensor.dim() > 1 else tensor.reshape(-1, 1)
        if not all(_finite(part) for part in rows.split(chunk_rows)):
            finite = False
            break
    flag = torch.tensor([1 if finite else 0], dtype=torch.int64, device=ctx.device)
    if ctx.world_size > 1:
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def _leaf_optimizers(optimizer: KeyedOptimizer) -> Iterator[KeyedOptimizer]:
    if isinstance(optimizer, CombinedOptimizer):
        for _, child in optimizer.optimizers:
            yield from _leaf_optimizers(child)
    else:
        yield optimizer


def _optimizer_target(optimizer: KeyedOptimizer, saved: dict[str, Any]) -> dict[str, Any]:
    """The optimizer state to load into: its current state, plus freshly allocated tensors for the
    parameters whose state the optimizer creates lazily (torch's Adam before its first step) and the
    checkpoint holds (shapes and dtypes from the checkpoint's metadata; 0-dim ``step`` on CPU, as
    torch keeps it)."""
    state = optimizer.state_dict()["state"]
    for key, param in optimizer.params.items():
        if key in state or isinstance(param, ShardedTensor):
            continue
        prefix = f"optim.{key}."
        entries = {fqn[len(prefix):]: md for fqn, md in saved.items()
                   if fqn.startswith(prefix) and isinstance(md, TensorStorageMetadata)}
        if entries:
            state[key] = {name: torch.empty(md.size, dtype=md.properties.dtype,
                                            device="cpu" if len(md.size) == 0 else param.device)
                          for name, md in entries.items()}
    return state


def _attach_optimizer_state(optimizer: KeyedOptimizer, loaded: dict[str, Any]) -> None:
    """Give lazily created state (allocated by :func:`_optimizer_target`) to the optimizer that owns the
    parameter, then let torchrec's KeyedOptimizer check counts and copy everything into place."""
    params = optimizer.params
    owners = {id(p): leaf for leaf in _leaf_optimizers(optimizer) for p in leaf.params.values()}
    current = optimizer.state
    for key, values in loaded.items():
        param = params.get(key)
        if param is not None and param not in current:
            owners[id(param)].state[param] = values
    optimizer.load_state_dict({"state": loaded})


# --------------------------------------------------------------------------- the manager


@dataclass(frozen=True)
class CheckpointInfo:
    """A complete checkpoint: its folder, its step and its state.json record."""

    path: Path
    step: int
    record: dict[str, Any]  # the checkpoint's state.json


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory descriptors
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _publish(tmp: Path, final: Path, latest: Path) -> None:
    """Rank 0: give a fully written checkpoint its final name, then point ``latest`` at it."""
    os.rename(tmp, final)
    _fsync_dir(final.parent)
    _write_atomic(latest, final.name + "\n")


class CheckpointManager:
    """Saves, finds and loads the checkpoints of one run directory (one instance per rank).

    Args:
        run_dir: the run directory; checkpoints live in ``run_dir/checkpoints``.
        ctx: this process's rank and world size.
        keep: how many complete checkpoints to keep (oldest deleted first).
    """

    def __init__(self, run_dir: str | Path, ctx: DistContext, keep: int = 2) -> None:
        self.root = Path(run_dir) / CHECKPOINT_DIR
        self.ctx = ctx
        self.keep = keep

    # ---------------------------------------------------------------- finding
    def complete(self) -> list[Path]:
        """Complete checkpoints, oldest first (a folder gets its ``step-N`` name only once complete)."""
        if not self.root.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.root.iterdir()
                 if p.is_dir() and (m := _COMPLETE.match(p.name))]
        return [p for _, p in sorted(found)]

    def _marked(self, marker_name: str) -> Path | None:
        """The complete checkpoint a marker file (``latest``, ``best``) names, or None."""
        marker = self.root / marker_name
        if marker.is_file():
            named = self.root / marker.read_text().strip()
            if _COMPLETE.match(named.name) and (named / STATE_FILE).is_file():
                return named
        return None

    def latest(self) -> CheckpointInfo | None:
        """The checkpoint ``latest`` names; if that marker is missing or names no complete checkpoint
        (it is written last, so a crash can leave it absent), the newest complete one; None if none."""
        path = self._marked(LATEST_FILE)
        if path is None:
            complete = [p for p in self.complete() if (p / STATE_FILE).is_file()]
            path = complete[-1] if complete else None
        return self.info(path) if path is not None else None

    def best(self) -> CheckpointInfo | None:
        """The checkpoint ``best`` names (the best evaluation of early stopping), or None."""
        path = self._marked(BEST_FILE)
        return self.info(path) if path is not None else None

    def mark_best(self, path: Path) -> None:
        """Rank 0: point ``checkpoints/best`` at the complete checkpoint ``path`` (atomically)."""
        if self.ctx.is_main:
            _write_atomic(self.root / BEST_FILE, Path(path).name + "\n")
        self._barrier()

    def resolve(self, name: str) -> CheckpointInfo:
        """The checkpoint called ``name``: ``latest``, ``best`` or ``step-N`` (N with or without leading
        zeros); TrainingError naming the run's checkpoints when there is none such."""
        available = ", ".join(p.name for p in self.complete()) or "none"
        if name == "latest":
            info = self.latest()
        elif name == "best":
            info = self.best()
            if info is None:
                raise TrainingError(f"{self.root} has no best checkpoint (train.early_stopping was not enabled, "
                                    f"or no evaluation finished); checkpoints: {available}")
        else:
            match = re.fullmatch(r"step-(\d+)", name)
            if match is None:
                raise TrainingError(f"checkpoint {name!r}: expected best, latest or step-N (checkpoints in "
                                    f"{self.root}: {available})")
            path = self.root / f"step-{int(match.group(1)):06d}"
            if not (path / STATE_FILE).is_file():
                raise TrainingError(f"{self.root} holds no complete checkpoint {name} (checkpoints: {available})")
            info = self.info(path)
        if info is None:
            raise TrainingError(f"{self.root.parent} holds no complete checkpoint (nothing in {self.root})")
        return info

    def info(self, path: str | Path) -> CheckpointInfo:
        path = Path(path)
        state = path / STATE_FILE
        if not state.is_file():
            raise TrainingError(f"{path} is not a complete checkpoint (it has no {STATE_FILE})")
        try:
            record = json.loads(state.read_text())
        except json.JSONDecodeError as error:
            raise TrainingError(f"checkpoint record {state} is not valid JSON: {error}") from None
        if record.get("format") != FORMAT_VERSION:
            raise TrainingError(f"checkpoint {path} has format {record.get('format')}; this version of "
                                f"torchrec-mdr reads format {FORMAT_VERSION}")
        return CheckpointInfo(path, int(record["progress"]["step"]), record)

    # ---------------------------------------------------------------- saving
    def _token(self) -> str:
        token = [f"{time.strftime('%Y%m%d%H%M%S')}-{os.getpid()}" if self.ctx.is_main else None]
        if self.ctx.world_size > 1:
            dist.broadcast_object_list(token, src=0)
        return str(token[0])

    def _barrier(self) -> None:
        if self.ctx.world_size > 1:
            dist.barrier()

    def remove_stale(self, keep: Path | None = None) -> list[Path]:
        """Rank 0: delete half-written (``.tmp-``) and displaced (``.old-``) folders of earlier saves."""
        removed = []
        if self.root.is_dir():
            for path in self.root.iterdir():
                if path != keep and _STALE.match(path.name):
                    shutil.rmtree(path, ignore_errors=True)
                    removed.append(path)
        return removed

    def prune(self) -> list[Path]:
        """Rank 0: delete the oldest complete checkpoints beyond ``keep`` (never the one ``latest`` names,
        nor the one ``best`` names, which is kept besides the ``keep`` newest)."""
        latest = self.latest()
        best = self._marked(BEST_FILE)
        complete = [p for p in self.complete() if p != best]
        removed = []
        for path in complete[:max(len(complete) - self.keep, 0)]:
            if latest is not None and path == latest.path:
                continue
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        return removed

    def save(self, model: nn.Module, optimizer: KeyedOptimizer, record: dict[str, Any]) -> Path:
        """Write the model, the optimizer, this rank's RNG states and ``record`` (state.json, which must
        hold ``progress.step``) as checkpoint ``step-NNNNNN``; a collective: every rank calls it."""
        step = int(record["progress"]["step"])
        final = self.root / f"step-{step:06d}"
        tmp = self.root / f"{final.name}.tmp-{self._token()}"
        if self.ctx.is_main:
            self.root.mkdir(parents=True, exist_ok=True)
            self.remove_stale(keep=tmp)
        state = {"model": model.state_dict(), "optim": optimizer.state_dict()["state"]}
        dcp.save(state, storage_writer=FileSystemWriter(str(tmp)))
        save_side_file({"rng": rng_state(), "modules": module_states(model)}, tmp / f"rank{self.ctx.rank}.pt")
        if self.ctx.is_main:
            full = {"format": FORMAT_VERSION, "torchrec_mdr_version": torchrec_mdr.__version__,
                    "world_size": self.ctx.world_size, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **record}
            (tmp / STATE_FILE).write_text(json.dumps(full, indent=2) + "\n")
        self._barrier()  # every rank's files are written
        if self.ctx.is_main:
            if final.exists():  # left by a crashed run that never pointed `latest` at it
                final.rename(self.root / f"{final.name}.old-{tmp.name.rsplit('.tmp-', 1)[1]}")
            _publish(tmp, final, self.root / LATEST_FILE)
            self.prune()
            self.remove_stale()
        self._barrier()
        return final

    # ---------------------------------------------------------------- loading
    def load(self, path: str | Path, model: nn.Module, optimizer: KeyedOptimizer | None = None,
             restore_rng: bool = True, grow: bool = False, reshard_managed: bool = False) -> CheckpointInfo:
        """Load a checkpoint into ``model`` (and ``optimizer``) in place, resharding as needed (a
        collective). At the checkpoint's world size also restore this rank's managed-collision history
        and eviction counters and (``restore_rng``) its RNG states; at another world size the
        managed-collision tables are resharded by :class:`~torchrec_mdr.sparse.mch.reshard.MCHReshard`
        (rank 0 prints what moved and how many ids were dropped).

        ``grow`` (warm start, :mod:`torchrec_mdr.training.warm_start`): a tensor with more rows than the
        checkpoint's (and otherwise its shape) takes the checkpoint's rows first and keeps its own values
        in the rest (:func:`_grown_targets`); fewer rows is an error naming it. ``reshard_managed``:
        redistribute the managed-collision slots even at the checkpoint's world size (the tables'
        cardinalities, which decide the shard that owns an id, changed)."""
        info = self.info(path)
        saved_world = int(info.record.get("world_size", self.ctx.world_size))
        managed = any(isinstance(module, MCHManagedCollisionModule) for module in model.modules())
        check_dcp_metadata(info.path)  # DCP unpickles it: refuse anything but its own classes first
        reader = FileSystemReader(str(info.path))
        try:
            saved = reader.read_metadata().state_dict_metadata
        except (OSError, ValueError) as error:
            raise TrainingError(f"cannot read the DCP metadata of checkpoint {info.path}: {error}") from None
        state: dict[str, Any] = {"model": model.state_dict()}
        aliases = legacy_aliases(list(state["model"]), saved, prefix="model.")  # pre-toolkit names
        state["model"] = {aliases.get(k, k): v for k, v in state["model"].items()}
        if optimizer is not None:
            state["optim"] = _optimizer_target(optimizer, saved)
        missing = sorted(k for k in _flat_keys(state) if k not in saved)
        if missing:
            moved = any(".sequence_bag_collection." in k for k in missing)  # see docs/benchmarks.md, pooled sequences
            raise TrainingError(f"checkpoint {info.path} does not hold {len(missing)} entries this model needs, "
                                f"e.g. {missing[:3]} (was it written by another model or optimizer?"
                                + (" Models that only pool their sequences keep those tables in "
                                   "sparse_arch.sequence_bag_collection since torchrec-mdr 2026-11-26; older "
                                   "checkpoints of such models hold them in sparse_arch.embedding_collection "
                                   "and do not load" if moved else "") + ")")
        grown = _grown_targets(state, saved, info.path) if grow else []
        reshard = (MCHReshard(model, state["model"], saved, saved_world)
                   if managed and (saved_world != self.ctx.world_size or reshard_managed) else None)
        try:
            dcp.load(state, storage_reader=reader)
        except CheckpointException as error:
            raise TrainingError(f"cannot load checkpoint {info.path}: {error}") from None
        for parent, key, target in grown:
            _copy_leading_rows(parent[key], target)
            parent[key] = target
        if reshard is not None:
            report = reshard.apply(state, info.path)
            if self.ctx.is_main:
                print("\n".join(report.lines()))
        renamed_back = {old: new for new, old in aliases.items()}
        model.load_state_dict({renamed_back.get(k, k): v for k, v in state["model"].items()})
        if optimizer is not None:
            try:
                _attach_optimizer_state(optimizer, state["optim"])
            except ValueError as error:
                raise TrainingError(f"the optimizer state of checkpoint {info.path} does not fit: {error}") from None
        if reshard is not None:
            reshard.restore_modules()
        rank_file = info.path / f"rank{self.ctx.rank}.pt"
        if reshard is None and saved_world == self.ctx.world_size and rank_file.is_file():
            own = load_side_file(rank_file)
            load_module_states(model, own["modules"])
            if restore_rng:
                set_rng_state(own["rng"])
        return info


def _leaves(state: dict[str, Any], prefix: str = "") -> Iterator[tuple[dict[str, Any], str, str]]:
    """(parent dict, key, DCP's flattened key) of every leaf of a nested state dict."""
    for key, value in state.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            yield from _leaves(value, name)
        else:
            yield state, key, name


def _grown_targets(state: dict[str, Any], saved: dict[str, Any], path: Path) -> list[tuple[dict, str, Any]]:
    """Swap every tensor of ``state`` that has more rows than the checkpoint's (same other dimensions)
    for a full tensor of the checkpoint's size, which ``dcp.load`` fills (every rank reads the whole
    saved table: the cost of a grown table); returns ``(parent, key, original target)`` for
    :func:`_copy_leading_rows`. A tensor with fewer rows, or another shape, is a TrainingError."""
    swapped = []
    for parent, key, name in _leaves(state):
        value, entry = parent[key], saved.get(name)
        if not isinstance(value, (torch.Tensor, ShardedTensor)) or not isinstance(entry, TensorStorageMetadata):
            continue
        now, before = tuple(value.size()), tuple(entry.size)
        if now == before:
            continue
        if len(now) != len(before) or len(now) == 0 or now[1:] != before[1:]:
            raise TrainingError(f"checkpoint {path}: {name} has shape {list(before)}, this model's is {list(now)} "
                                f"(another model config?)")
        if now[0] < before[0]:
            raise TrainingError(f"checkpoint {path}: {name} has {before[0]} rows, this model's has {now[0]}: the "
                                f"table shrank (a table may only grow)")
        parent[key] = torch.empty(before, dtype=entry.properties.dtype)
        swapped.append((parent, key, value))
    return swapped


def _copy_leading_rows(source: torch.Tensor, target: torch.Tensor | ShardedTensor) -> None:
    """Copy the full tensor ``source`` into the first ``len(source)`` rows of ``target`` (this rank's
    shards of it, at their offsets); the rows beyond keep their values."""
    rows = int(source.shape[0])
    if not isinstance(target, ShardedTensor):
        target[:rows].copy_(source.to(target.device))
        return
    for shard in target.local_shards():
        offsets, sizes = shard.metadata.shard_offsets, shard.metadata.shard_sizes
        count = min(rows - offsets[0], sizes[0])
        if count <= 0:
            continue
        index = (slice(offsets[0], offsets[0] + count),
                 *(slice(o, o + n) for o, n in zip(offsets[1:], sizes[1:])))
        shard.tensor[:count].copy_(source[index].to(shard.tensor.device))


def _flat_keys(state: dict[str, Any], prefix: str = "") -> Iterator[str]:
    """DCP's flattened keys of a nested state dict (``a.b.c``)."""
    for key, value in state.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            yield from _flat_keys(value, name)
        else:
            yield name
