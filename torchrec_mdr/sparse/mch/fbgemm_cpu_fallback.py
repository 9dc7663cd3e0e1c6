"""A CPU kernel for ``fbgemm::reset_weight_momentum``, which fbgemm-gpu-cpu 1.8.0 lacks.

Why: when a sharded managed-collision table evicts ids, torchrec
(``BaseShardedManagedCollisionEmbeddingCollection._evict``, torchrec 1.9.2) resets the freed rows
with ``SplitTableBatchedEmbeddingBagsCodegen.reset_embedding_weight_momentum``, which calls this
op for row-wise Adagrad tables. fbgemm-gpu-cpu 1.8.0 registers the op with a CUDA kernel only, so
the first eviction of a sharded table on CPU fails ("Could not run 'fbgemm::reset_weight_momentum'
with arguments from the 'CPU' backend"). torchrec then re-initialises the freed rows' weights with
the table's ``init_fn`` itself.

The op's semantics (``fbgemm_gpu/src/split_embeddings_cache/reset_weight_momentum.cu``, v1.8.0):
for every table slot ``i`` with ``t = logical_table_ids[i]`` and ``b = buffer_ids[i]``, for every
row ``r`` in ``pruned_indices[pruned_indices_offsets[b]:pruned_indices_offsets[b + 1]]``, the ``D``
weights of row ``r`` (``D = D_offsets[t + 1] - D_offsets[t]``, at ``weights_offsets[t] + r * D``)
and its row-wise momentum (at ``momentum1_offsets[t] + r``) are set to 0. Weights and momentum
live in the ``*_dev`` tensors for ``DEVICE`` placement and in the ``*_uvm`` tensors otherwise.

CPU tables are placed ``HOST``: fbgemm keeps them in ``weights_host`` / ``momentum1_host``, which
the op's signature does not carry (the ``*_dev`` / ``*_uvm`` tensors it is given are empty). The
kernel therefore finds the owning table batch by the identity of its ``weights_offsets`` buffer,
among the CPU table batches :func:`install` was shown; it zeroes the same rows in the same places
as the CUDA kernel would. Only what the CUDA kernel supports is supported here: float weights, no
cache (``total_cache_hash_size`` must be 0, as it always is on CPU).

Registration happens only where the op has no CPU kernel (checked when :func:`install` runs; a
no-op where fbgemm provides one) and only for the fbgemm version and op schema this was written
for (:data:`FBGEMM_VERSION`, :data:`OP_SCHEMA`); any other combination raises a TrainingError
that says so rather than guess.
"""

from __future__ import annotations

import logging
import weakref

import torch
from torch import nn

from torchrec_mdr.errors import TrainingError

logger = logging.getLogger(__name__)

FBGEMM_VERSION = "1.8.0"  # the fbgemm-gpu-cpu release this kernel was written for and tested with
OP_NAME = "fbgemm::reset_weight_momentum"
OP_SCHEMA = (
    "fbgemm::reset_weight_momentum(Tensor dev_weights, Tensor uvm_weights, Tensor lxu_cache_weights, "
    "Tensor weights_placements, Tensor weights_offsets, Tensor momentum1_dev, Tensor momentum1_uvm, "
    "Tensor momentum1_placements, Tensor momentum1_offsets, Tensor D_offsets, Tensor pruned_indices, "
    "Tensor pruned_indices_offsets, Tensor logical_table_ids, Tensor buffer_ids, "
    "Tensor cache_hash_size_cumsum, Tensor lxu_cache_state, int total_cache_hash_size) -> ()"
)
DEVICE, HOST = 0, 3  # fbgemm EmbeddingLocation / PlacementType values

_library: torch.library.Library | None = None  # keeps our registration alive
_host_tables: dict[int, weakref.ref] = {}  # id(weights_offsets) -> CPU table batch (TBE)


def has_cpu_kernel() -> bool:
    """Whether the op (fbgemm or this module) has a CPU kernel."""
    return torch._C._dispatch_has_kernel_for_dispatch_key(OP_NAME, "CPU")


def _host_storage(weights_offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    ref = _host_tables.get(id(weights_offsets))
    tbe = ref() if ref is not None else None
    if tbe is None or tbe.weights_offsets is not weights_offsets:
        raise RuntimeError(
            f"{OP_NAME} (CPU fallback): a HOST-placed table batch that install() was not shown; "
            "call torchrec_mdr.sparse.mch.fbgemm_cpu_fallback.install(model) after sharding"
        )
    return tbe.weights_host, tbe.momentum1_host


def reset_weight_momentum_cpu(
    dev_weights: torch.Tensor,
    uvm_weights: torch.Tensor,
    lxu_cache_weights: torch.Tensor,
    weights_placements: torch.Tensor,
    weights_offsets: torch.Tensor,
    momentum1_dev: torch.Tensor,
    momentum1_uvm: torch.Tensor,
    momentum1_placements: torch.Tensor,
    momentum1_offsets: torch.Tensor,
    D_offsets: torch.Tensor,
    pruned_indices: torch.Tensor,
    pruned_indices_offsets: torch.Tensor,
    logical_table_ids: torch.Tensor,
    buffer_ids: torch.Tensor,
    cache_hash_size_cumsum: torch.Tensor,
    lxu_cache_state: torch.Tensor,
    total_cache_hash_size: int,
) -> None:
    """Zero the weights [D] and the row-wise momentum [1] of every pruned row (see the module doc)."""
    if total_cache_hash_size > 0:
        raise RuntimeError(f"{OP_NAME} (CPU fallback): cached (MANAGED_CACHING) tables are not supported")
    host = None
    with torch.no_grad():
        for i in range(logical_table_ids.numel()):
            t, b = int(logical_table_ids[i]), int(buffer_ids[i])
            rows = pruned_indices[int(pruned_indices_offsets[b]) : int(pruned_indices_offsets[b + 1])].long()
            if rows.numel() == 0:
                continue
            dim = int(D_offsets[t + 1] - D_offsets[t])
            w_place, m_place = int(weights_placements[t]), int(momentum1_placements[t])
            if HOST in (w_place, m_place) and host is None:
                host = _host_storage(weights_offsets)
            weights = dev_weights if w_place == DEVICE else host[0] if w_place == HOST else uvm_weights
            momentum = momentum1_dev if m_place == DEVICE else host[1] if m_place == HOST else momentum1_uvm
            if not weights.is_floating_point():
                raise RuntimeError(f"{OP_NAME} (CPU fallback): {weights.dtype} weights are not supported")
            cols = torch.arange(dim, device=rows.device)
            weights[(int(weights_offsets[t]) + rows[:, None] * dim + cols[None, :]).reshape(-1)] = 0
            momentum[int(momentum1_offsets[t]) + rows] = 0


def _register() -> bool:
    """Register the CPU kernel unless one exists. Returns whether ours is the CPU kernel."""
    global _library
    if _library is not None:
        return True
    import fbgemm_gpu  # noqa: F401 - defines the op

    if has_cpu_kernel():
        return False
    version = getattr(fbgemm_gpu, "__version__", "unknown")
    schema = str(torch.ops.fbgemm.reset_weight_momentum.default._schema)
    if not version.startswith(FBGEMM_VERSION) or schema != OP_SCHEMA:
        raise TrainingError(
            f"fbgemm-gpu {version} has no CPU kernel for {OP_NAME}, which evicting ids from a "
            f"sharded table on CPU needs; torchrec-mdr's fallback was written for fbgemm-gpu-cpu "
            f"{FBGEMM_VERSION} and this version "
            f"{'changed the op' if schema != OP_SCHEMA else 'is untested'}: "
            f"use fbgemm-gpu-cpu {FBGEMM_VERSION} or a GPU"
        )
    library = torch.library.Library("fbgemm", "IMPL")
    library.impl("reset_weight_momentum", reset_weight_momentum_cpu, "CPU")
    _library = library
    logger.info("registered the CPU fallback kernel for %s (fbgemm-gpu %s)", OP_NAME, version)
    return True


def _table_batches(model: nn.Module) -> list[nn.Module]:
    """The fbgemm table batches of ``model``: submodules, and those torchrec's sharded managed-collision
    modules reset on eviction (``_table_to_tbe_and_index``; torchrec keeps its lookups out of
    ``modules()``)."""
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import SplitTableBatchedEmbeddingBagsCodegen

    found = {id(m): m for m in model.modules() if isinstance(m, SplitTableBatchedEmbeddingBagsCodegen)}
    for module in model.modules():
        for tbe, _index in getattr(module, "_table_to_tbe_and_index", {}).values():
            if isinstance(tbe, SplitTableBatchedEmbeddingBagsCodegen):
                found[id(tbe)] = tbe
    return list(found.values())


def install(model: nn.Module) -> bool:
    """Make ``fbgemm::reset_weight_momentum`` work for the CPU table batches of a sharded ``model``.

    Registers the CPU kernel if fbgemm has none and shows it ``model``'s CPU table batches.
    Returns False (and does nothing) where fbgemm has its own CPU kernel.
    """
    tbes = [tbe for tbe in _table_batches(model) if tbe.use_cpu]
    if not tbes or not _register():
        return False
    for tbe in tbes:
        _host_tables[id(tbe.weights_offsets)] = weakref.ref(tbe)
    for key in [k for k, ref in _host_tables.items() if ref() is None]:
        del _host_tables[key]
    return True
