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

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.api import CheckpointException
from torchrec.modules.mc_modules import MCHManagedCollisionModule
from torchrec.optim.keyed import KeyedOptimizer

import torchrec_mdr
from torchrec_mdr.errors import TrainingError
from torchrec_mdr.training.legacy_names import legacy_aliases
from torchrec_mdr.training.distributed import DistContext
from torchrec_mdr.safe_files import check_dcp_metadata, load_side_file, save_side_file
from torchrec_mdr.sparse.mch.reshard import MCHReshard
from torchrec_mdr.sparse.mch.state import load_module_states, module_states
from torchrec_mdr.training.checkpoint_identity import (  # noqa: F401  (re-exported: checkpoint.check_identity ...)
    check_identity,
    data_order,
    dataset_signature,
    differences,
    run_identity,
)
from torchrec_mdr.training.checkpoint_state import (  # noqa: F401  (re-exported: checkpoint.all_finite ...)
    all_finite,
    attach_optimizer_state,
    copy_leading_rows,
    flat_keys,
    grown_targets,
    optimizer_target,
    rng_state,
    set_rng_state,
)

CHECKPOINT_DIR = "checkpoints"
LATEST_FILE = "latest"
BEST_FILE = "best"
STATE_FILE = "state.json"
FORMAT_VERSION = 1
_COMPLETE = re.compile(r"^step-(\d+)$")
_STALE = re.compile(r"^step-\d+\.(tmp|old)-")


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
        found = [(int(m.group(1)), p) for p in self.root.iterdir() if p.is_dir() and (m := _COMPLETE.match(p.name))]
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
                raise TrainingError(
                    f"{self.root} has no best checkpoint (train.early_stopping was not enabled, "
                    f"or no evaluation finished); checkpoints: {available}"
                )
        else:
            match = re.fullmatch(r"step-(\d+)", name)
            if match is None:
                raise TrainingError(
                    f"checkpoint {name!r}: expected best, latest or step-N (checkpoints in {self.root}: {available})"
                )
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
            raise TrainingError(
                f"checkpoint {path} has format {record.get('format')}; this version of "
                f"torchrec-mdr reads format {FORMAT_VERSION}"
            )
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
        for path in complete[: max(len(complete) - self.keep, 0)]:
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
            full = {
                "format": FORMAT_VERSION,
                "torchrec_mdr_version": torchrec_mdr.__version__,
                "world_size": self.ctx.world_size,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                **record,
            }
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
    def load(
        self,
        path: str | Path,
        model: nn.Module,
        optimizer: KeyedOptimizer | None = None,
        restore_rng: bool = True,
        grow: bool = False,
        reshard_managed: bool = False,
    ) -> CheckpointInfo:
        """Load a checkpoint into ``model`` (and ``optimizer``) in place, resharding as needed (a
        collective). At the checkpoint's world size also restore this rank's managed-collision history
        and eviction counters and (``restore_rng``) its RNG states; at another world size the
        managed-collision tables are resharded by :class:`~torchrec_mdr.sparse.mch.reshard.MCHReshard`
        (rank 0 prints what moved and how many ids were dropped).

        ``grow`` (warm start, :mod:`torchrec_mdr.training.warm_start`): a tensor with more rows than the
        checkpoint's (and otherwise its shape) takes the checkpoint's rows first and keeps its own values
        in the rest (:func:`grown_targets`); fewer rows is an error naming it. ``reshard_managed``:
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
            state["optim"] = optimizer_target(optimizer, saved)
        missing = sorted(k for k in flat_keys(state) if k not in saved)
        if missing:
            moved = any(".sequence_bag_collection." in k for k in missing)  # see docs/benchmarks.md, pooled sequences
            raise TrainingError(
                f"checkpoint {info.path} does not hold {len(missing)} entries this model needs, "
                f"e.g. {missing[:3]} (was it written by another model or optimizer?"
                + (
                    " Models that only pool their sequences keep those tables in "
                    "sparse_arch.sequence_bag_collection since torchrec-mdr 2026-11-26; older "
                    "checkpoints of such models hold them in sparse_arch.embedding_collection "
                    "and do not load"
                    if moved
                    else ""
                )
                + ")"
            )
        grown = grown_targets(state, saved, info.path) if grow else []
        reshard = (
            MCHReshard(model, state["model"], saved, saved_world)
            if managed and (saved_world != self.ctx.world_size or reshard_managed)
            else None
        )
        try:
            dcp.load(state, storage_reader=reader)
        except CheckpointException as error:
            raise TrainingError(f"cannot load checkpoint {info.path}: {error}") from None
        for parent, key, target in grown:
            copy_leading_rows(parent[key], target)
            parent[key] = target
        if reshard is not None:
            report = reshard.apply(state, info.path)
            if self.ctx.is_main:
                print("\n".join(report.lines()))
        renamed_back = {old: new for new, old in aliases.items()}
        model.load_state_dict({renamed_back.get(k, k): v for k, v in state["model"].items()})
        if optimizer is not None:
            try:
                attach_optimizer_state(optimizer, state["optim"])
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
