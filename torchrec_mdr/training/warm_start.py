"""Warm start (``train.init_from``, ``mdr train --init-from RUN``): a new run begins from another run's
checkpoint, e.g. today's model from yesterday's, on today's data.

What is carried: every embedding table, the managed-collision slots (which raw id holds which row)
with their eviction metadata (LFU counts...), the ids counted since the last eviction round and the
eviction counters, every dense weight and buffer, and, with ``train.init_optimizer``, the fused
sparse and the dense optimizers' states. What restarts: the step, the epoch, the learning-rate
schedule, the evaluation history, early stopping and every random stream (``train.seed``).

This module holds the rules (which checkpoint, what may differ) and applies them (:func:`warm_start`,
called by the trainer), loading with
:meth:`CheckpointManager.load <torchrec_mdr.training.checkpoint.CheckpointManager.load>`, the loader
resumption uses, so a checkpoint written at any world size loads at any other (DCP reshards
the tables; :mod:`torchrec_mdr.sparse.mch.reshard` the managed-collision tables), with two additions:

* **Grown tables.** Today's spec may hold more ids than yesterday's (a larger cardinality): the
  table's first rows are yesterday's, the new rows keep the fresh initialisation a new run would give
  them (their optimizer state: zero). A managed table's rows are ``sparse.eviction.zch_size`` and do
  not grow; its ids, new or old, compete for the slots as in training. When its cardinality changes,
  the ids' owning shards may change too, so its slots are redistributed even at the same world size.
* **Checks first.** The model config and ``sparse.eviction`` (and the optimizer kinds, with
  ``train.init_optimizer``) must be the checkpoint's; the dataset may only grow tables. A feature
  that vanished or appeared, a table that shrank, another kind, sequence group, maximum length, domain
  or label list is one :class:`~torchrec_mdr.errors.TrainingError` naming every difference.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from torch import nn

from torchrec_mdr.errors import TrainingError
from torchrec_mdr.training.checkpoint import CheckpointInfo, CheckpointManager, check_identity
from torchrec_mdr.training.distributed import DistContext

_CHECKPOINT = re.compile(r"^(latest|best|step-\d+)$")
_MODEL_INPUTS = ("id", "multi_id", "sequence", "dense")  # the columns a model reads (labels, domains: below)


def parse_source(text: str) -> tuple[Path, str]:
    """``RUN`` or ``RUN:latest|best|step-N`` -> (run directory, checkpoint name)."""
    run, _, name = text.rpartition(":")
    if run and _CHECKPOINT.match(name):
        return Path(run), name
    return Path(text), "latest"


def dataset_changes(
    saved: dict[str, Any], current: dict[str, Any], where: Path, action: str = "warm-start from"
) -> dict[str, tuple[int, int]]:
    """The tables that grew between two :func:`~torchrec_mdr.training.checkpoint.dataset_signature`\\ s,
    ``{table: (rows in the checkpoint, rows now)}``; TrainingError naming every other difference
    (``cannot <action> <where>: ...``)."""
    old = {c["name"]: c for c in saved.get("columns", []) if c["kind"] in _MODEL_INPUTS}
    new = {c["name"]: c for c in current["columns"] if c["kind"] in _MODEL_INPUTS}
    problems: list[str] = []
    grown: dict[str, tuple[int, int]] = {}
    for name in old.keys() - new.keys():
        problems.append(
            f"feature '{name}' ({old[name]['kind']}) vanished: the checkpoint's model reads it and "
            f"this dataset has no such column"
        )
    for name in new.keys() - old.keys():
        problems.append(f"feature '{name}' ({new[name]['kind']}) is new: the checkpoint's model has no input for it")
    for name in sorted(old.keys() & new.keys()):
        before, after = old[name], new[name]
        for key in ("kind", "table", "sequence_group", "max_length"):
            if before.get(key) != after.get(key):
                problems.append(
                    f"feature '{name}': {key} {before.get(key)!r} in the checkpoint, {after.get(key)!r} now"
                )
        rows_before, rows_after = before.get("cardinality"), after.get("cardinality")
        if rows_before is None or rows_after is None or rows_before == rows_after:
            continue
        table = after.get("table") or name
        if rows_after < rows_before:
            problems.append(
                f"table '{table}' shrank: feature '{name}' has {rows_after} ids, {rows_before} in the "
                f"checkpoint (a table may only grow)"
            )
        else:
            grown[table] = (
                min(rows_before, grown.get(table, (rows_before, 0))[0]),
                max(rows_after, grown.get(table, (0, rows_after))[1]),
            )
    for key in ("domains", "labels"):
        if saved.get(key) != current.get(key):
            problems.append(f"{key}: {saved.get(key)} in the checkpoint, {current.get(key)} now")
    if problems:
        raise TrainingError(
            f"cannot {action} {where}: its dataset differs from this one beyond grown "
            f"tables: " + "; ".join(sorted(problems))
        )
    return grown


def grown_record(grown: dict[str, tuple[int, int]]) -> dict[str, dict[str, int]]:
    """``{table: (a, b)}`` as metrics.json / predict.json keep it: ``{table: {"rows_before": a, "rows_now": b}}``."""
    return {t: {"rows_before": a, "rows_now": b} for t, (a, b) in sorted(grown.items())}


def describe(record: dict[str, Any], managed: set[str]) -> str:
    """The line rank 0 prints after a warm start (``record``: metrics.json's ``init_from``)."""
    grew = ", ".join(
        f"'{t}' {v['rows_before']:,} -> {v['rows_now']:,} ids" + (" (managed: slots unchanged)" if t in managed else "")
        for t, v in record["grown_tables"].items()
    )
    return (
        f"warm start from {record['path']} (step {record['step']}, written by {record['world_size']} rank(s)); "
        f"optimizer state {'carried' if record['optimizer'] else 'fresh'}; "
        + (f"grown tables: {grew}" if grew else "no table grew")
        + "; the schedule starts at step 0"
    )


def load_grown(
    checkpoints: CheckpointManager,
    info: CheckpointInfo,
    model: nn.Module,
    optimizer: Any,
    ctx: DistContext,
    identity: dict,
    managed_tables: list[str],
    parts: tuple[str, ...],
    action: str,
) -> dict[str, tuple[int, int]]:
    """Check checkpoint ``info`` against this run's ``identity`` (the config ``parts``; the dataset may only
    grow tables) and load it into ``model`` (and ``optimizer`` unless None) through
    :meth:`CheckpointManager.load` with ``grow``: a grown table takes the checkpoint's rows first and keeps
    the rows ``model`` was built with beyond them. Returns the grown tables ``{table: (rows before, rows
    now)}``; ``action`` words the error (``cannot <action> <checkpoint>: ...``). A collective. Used by
    :func:`warm_start` and by :meth:`Evaluator.load <torchrec_mdr.training.evaluate.Evaluator.load>`
    (``mdr eval`` / ``mdr predict`` of yesterday's run on today's data)."""
    saved = info.record.get("identity", {})
    check_identity(saved, identity, info.path, parts=parts)
    grown = dataset_changes(saved.get("dataset", {}), identity["dataset"], info.path, action)
    moved = set(managed_tables) & grown.keys()  # a managed table's ids may now belong to other shards
    checkpoints.load(
        info.path, model, optimizer, restore_rng=False, grow=True, reshard_managed=bool(moved) and ctx.world_size > 1
    )
    return grown


def warm_start(
    source: str,
    init_optimizer: bool,
    model: nn.Module,
    optimizer: Any,
    ctx: DistContext,
    identity: dict,
    managed_tables: list[str],
) -> dict:
    """Load another run's checkpoint ``source`` (``RUN[:latest|best|step-N]``) into ``model`` (and, with
    ``init_optimizer``, ``optimizer``) after checking it against this run's ``identity``; a collective.
    ``managed_tables``: ``sparse.eviction.tables``. Returns the record metrics.json keeps under ``init_from``."""
    run, name = parse_source(source)
    if not (run / "checkpoints").is_dir():
        raise TrainingError(f"train.init_from: {run} holds no checkpoints (expected a run directory of mdr train)")
    source_checkpoints = CheckpointManager(run, ctx)
    info = source_checkpoints.resolve(name)
    grown = load_grown(
        source_checkpoints,
        info,
        model,
        optimizer if init_optimizer else None,
        ctx,
        identity,
        managed_tables,
        ("model", "eviction", "optimizer") if init_optimizer else ("model", "eviction"),
        "warm-start from",
    )
    record = {
        "run": str(run),
        "checkpoint": name,
        "path": str(info.path),
        "step": info.step,
        "world_size": info.record.get("world_size"),
        "optimizer": init_optimizer,
        "grown_tables": grown_record(grown),
        "dataset": info.record.get("identity", {}).get("dataset", {}).get("fingerprint"),
    }
    if ctx.is_main:
        print(describe(record, set(managed_tables)))
    return record
