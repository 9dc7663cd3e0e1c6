"""What a checkpoint holds besides the files: each process's RNG states (:func:`rng_state`), the finite
check before a save (:func:`all_finite`), the optimizer state a load targets, and the growth of tables for
a warm start (:func:`grown_targets`). Used by :mod:`torchrec_mdr.training.checkpoint`."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizer

from torchrec_mdr.errors import TrainingError
from torchrec_mdr.training.distributed import DistContext

# --------------------------------------------------------------------------- RNG states


def rng_state() -> dict[str, Any]:
    """This process's torch (CPU and CUDA), numpy and python random states, as tensors and plain python
    values (what a weights-only load accepts): numpy's MT19937 keys as an int64 tensor."""
    numpy_state = np.random.get_state(legacy=True)
    assert isinstance(numpy_state, tuple)  # legacy=True: ('MT19937', keys, pos, has_gauss, cached_gaussian)
    kind, keys, position, has_gauss, cached_gaussian = numpy_state
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state` (also takes the numpy tuple of checkpoints written before it)."""
    torch.set_rng_state(state["torch"])
    saved = state["numpy"]
    if isinstance(saved, dict):
        saved = (
            saved["kind"],
            saved["keys"].numpy().astype(np.uint32),
            saved["pos"],
            saved["has_gauss"],
            saved["cached_gaussian"],
        )
    np.random.set_state(saved)
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- state dicts


def local_tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, ShardedTensor):
        for shard in value.local_shards():
            yield shard.tensor
    elif isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from local_tensors(v)


def chunk_finite(part: torch.Tensor) -> bool:
    # A sum is finite whenever every value is (one pass, no temporary; 4-5x faster than isfinite on
    # CPU); only a non-finite sum, which large finite values can also give, needs the exact check.
    return bool(torch.isfinite(part.sum())) or bool(torch.isfinite(part).all())


def all_finite(model: nn.Module, ctx: DistContext, chunk_rows: int = 1 << 16) -> bool:
    """Whether every floating-point value of the model's state (each rank's local shards) is finite,
    agreed over all ranks. Checked in chunks of rows so that a large table needs no large temporary."""
    finite = True
    for tensor in local_tensors(model.state_dict()):
        if not tensor.is_floating_point() or tensor.numel() == 0:
            continue
        rows = tensor.reshape(tensor.shape[0], -1) if tensor.dim() > 1 else tensor.reshape(-1, 1)
        if not all(chunk_finite(part) for part in rows.split(chunk_rows)):
            finite = False
            break
    flag = torch.tensor([1 if finite else 0], dtype=torch.int64, device=ctx.device)
    if ctx.world_size > 1:
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def leaf_optimizers(optimizer: KeyedOptimizer) -> Iterator[KeyedOptimizer]:
    if isinstance(optimizer, CombinedOptimizer):
        for _, child in optimizer.optimizers:
            yield from leaf_optimizers(child)
    else:
        yield optimizer


def optimizer_target(optimizer: KeyedOptimizer, saved: dict[str, Any]) -> dict[str, Any]:
    """The optimizer state to load into: its current state, plus freshly allocated tensors for the
    parameters whose state the optimizer creates lazily (torch's Adam before its first step) and the
    checkpoint holds (shapes and dtypes from the checkpoint's metadata; 0-dim ``step`` on CPU, as
    torch keeps it)."""
    state = optimizer.state_dict()["state"]
    for key, param in optimizer.params.items():
        if key in state or isinstance(param, ShardedTensor):
            continue
        prefix = f"optim.{key}."
        entries = {
            fqn[len(prefix) :]: md
            for fqn, md in saved.items()
            if fqn.startswith(prefix) and isinstance(md, TensorStorageMetadata)
        }
        if entries:
            state[key] = {
                name: torch.empty(
                    md.size, dtype=md.properties.dtype, device="cpu" if len(md.size) == 0 else param.device
                )
                for name, md in entries.items()
            }
    return state


def attach_optimizer_state(optimizer: KeyedOptimizer, loaded: dict[str, Any]) -> None:
    """Give lazily created state (allocated by :func:`optimizer_target`) to the optimizer that owns the
    parameter, then let torchrec's KeyedOptimizer check counts and copy everything into place."""
    params = optimizer.params
    owners = {id(p): leaf for leaf in leaf_optimizers(optimizer) for p in leaf.params.values()}
    current = optimizer.state
    for key, values in loaded.items():
        param = params.get(key)
        if param is not None and param not in current:
            owners[id(param)].state[param] = values
    optimizer.load_state_dict({"state": loaded})


def leaves(state: dict[str, Any], prefix: str = "") -> Iterator[tuple[dict[str, Any], str, str]]:
    """(parent dict, key, DCP's flattened key) of every leaf of a nested state dict."""
    for key, value in state.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            yield from leaves(value, name)
        else:
            yield state, key, name


def grown_targets(state: dict[str, Any], saved: dict[str, Any], path: Path) -> list[tuple[dict, str, Any]]:
    """Swap every tensor of ``state`` that has more rows than the checkpoint's (same other dimensions)
    for a full tensor of the checkpoint's size, which ``dcp.load`` fills (every rank reads the whole
    saved table: the cost of a grown table); returns ``(parent, key, original target)`` for
    :func:`copy_leading_rows`. A tensor with fewer rows, or another shape, is a TrainingError."""
    swapped = []
    for parent, key, name in leaves(state):
        value, entry = parent[key], saved.get(name)
        if not isinstance(value, (torch.Tensor, ShardedTensor)) or not isinstance(entry, TensorStorageMetadata):
            continue
        now, before = tuple(value.size()), tuple(entry.size)
        if now == before:
            continue
        if len(now) != len(before) or len(now) == 0 or now[1:] != before[1:]:
            raise TrainingError(
                f"checkpoint {path}: {name} has shape {list(before)}, this model's is {list(now)} "
                f"(another model config?)"
            )
        if now[0] < before[0]:
            raise TrainingError(
                f"checkpoint {path}: {name} has {before[0]} rows, this model's has {now[0]}: the "
                f"table shrank (a table may only grow)"
            )
        parent[key] = torch.empty(before, dtype=entry.properties.dtype)
        swapped.append((parent, key, value))
    return swapped


def copy_leading_rows(source: torch.Tensor, target: torch.Tensor | ShardedTensor) -> None:
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
        index = (slice(offsets[0], offsets[0] + count), *(slice(o, o + n) for o, n in zip(offsets[1:], sizes[1:])))
        shard.tensor[:count].copy_(source[index].to(shard.tensor.device))


def flat_keys(state: dict[str, Any], prefix: str = "") -> Iterator[str]:
    """DCP's flattened keys of a nested state dict (``a.b.c``)."""
    for key, value in state.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            yield from flat_keys(value, name)
        else:
            yield name
