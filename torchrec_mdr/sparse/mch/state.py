"""The per-rank state of torchrec's managed-collision modules that their state_dict leaves out.

A torchrec workaround, kept to this module. Checked against torchrec 1.8.0 and 1.9.2
(``torchrec.modules.mc_modules.MCHManagedCollisionModule``): between eviction rounds the module
collects the ids it sees in ``_history_accumulator`` (a plain attribute) and their eviction
metadata in ``_history_<name>`` (non-persistent buffers), filled up to
``_current_history_buffer_offset`` of ``_input_history_buffer_size``; it counts steps in the
python ints ``_current_iter`` / ``_last_eviction_iter``. Its state_dict holds the slots and their
counts (``_mch_sorted_raw_ids``, ``_mch_remapped_ids_mapping``, ``_mch_counts``...) and
``_current_iter_tensor``, but none of the above: a module loaded from a checkpoint forgets the ids
counted since the last round and moves its next round to ``eviction_interval`` steps after the load.

:func:`module_states` / :func:`load_module_states` save and restore exactly those attributes for
every MCH module of a model (each rank's own shards), so that a run resumed mid-interval evicts
the same ids at the same steps as an uninterrupted one, together with the eviction counters of
torchrec-mdr's :class:`~torchrec_mdr.sparse.mch.eviction.TrackedMCHModule` (``evicted_ids``,
``admitted_ids``, ``eviction_rounds``: python ints, outside the state dict too), so that a resumed
run reports the counts of an uninterrupted one. Modules whose attributes differ from these
(another torchrec version) keep their counters but lose the history, with a warning: resumption
then stays correct but is no longer exact. At another world size
:mod:`torchrec_mdr.sparse.mch.reshard` redistributes these states.

A module's state is keyed by its name inside torchrec's DistributedModelParallel and torch's
DistributedDataParallel (:func:`named_mch_modules`, e.g. ``model.sparse_arch.<...>.user``): a model is
wrapped in DDP at world size > 1 only (:mod:`torchrec_mdr.training.data_parallel`), and
``named_modules`` of the wrapped model would name the same module differently at the two sizes.
Checkpoints written before 2026-11-26 key it by that full name, always through DDP
(``_dmp_wrapped_module.module.<name>``); :func:`saved_key` reads both.
"""

from __future__ import annotations

import warnings
from typing import Any, Iterator

import torch
from torch import nn
from torchrec.distributed.model_parallel import get_unwrapped_module
from torchrec.modules.mc_modules import MCHManagedCollisionModule

from torchrec_mdr.sparse.mch.eviction import TrackedMCHModule

_OLD_PREFIX = "_dmp_wrapped_module.module."  # DMP's attribute, then DDP's, in pre-2026-11-26 checkpoints

_ATTRIBUTES = (
    "_history_accumulator",
    "_history_metadata",
    "_current_history_buffer_offset",
    "_input_history_buffer_size",
    "_current_iter",
    "_last_eviction_iter",
)


def _supported(module: MCHManagedCollisionModule) -> bool:
    if all(hasattr(module, name) for name in _ATTRIBUTES[1:]):  # the accumulator comes with the first batch
        return True
    warnings.warn(
        f"torchrec's {type(module).__name__} lacks the attributes torchrec-mdr saves between "
        f"eviction rounds ({', '.join(_ATTRIBUTES)}); a resumed run will not be exact",
        stacklevel=3,
    )
    return False


def module_state(module: MCHManagedCollisionModule, history: bool = True) -> dict[str, Any]:
    """Step counters and the history collected since the last eviction round (CPU tensors [offset]),
    and the eviction counters of a :class:`TrackedMCHModule`. ``history=False``: the counters only."""
    state: dict[str, Any] = {}
    if isinstance(module, TrackedMCHModule):
        state["counters"] = module.counter_state()
    if not history:
        return state
    offset = int(module._current_history_buffer_offset)
    state.update(
        current_iter=int(module._current_iter),
        last_eviction_iter=int(module._last_eviction_iter),
        history_size=int(module._input_history_buffer_size),
        history_offset=offset,
    )
    if state["history_size"] != -1:
        state["history"] = module._history_accumulator[:offset].cpu().clone()
        state["history_metadata"] = {
            name: buffer[:offset].cpu().clone() for name, buffer in module._history_metadata.items()
        }
    return state


def load_module_state(module: MCHManagedCollisionModule, state: dict[str, Any]) -> None:
    """Inverse of :func:`module_state` (allocates the history buffers as the first training batch would);
    the parts ``state`` lacks (a checkpoint of an older torchrec-mdr, no counters) are left as they are."""
    if "counters" in state and isinstance(module, TrackedMCHModule):
        module.load_counter_state(state["counters"])
    if "history_size" not in state:
        return
    size, offset = state["history_size"], state["history_offset"]
    if size != -1:
        device = module._mch_sorted_raw_ids.device
        module._input_history_buffer_size = size
        module._history_accumulator = torch.empty(size, dtype=torch.int64, device=device)
        module._history_accumulator[:offset] = state["history"].to(device)
        for name, values in state["history_metadata"].items():
            buffer = torch.zeros(size, dtype=torch.int64, device=device)
            buffer[:offset] = values.to(device)
            module.register_buffer(f"_history_{name}", buffer, persistent=False)
            module._history_metadata[name] = buffer
    module._current_history_buffer_offset = offset
    module._current_iter = state["current_iter"]
    module._last_eviction_iter = state["last_eviction_iter"]


def named_mch_modules(model: nn.Module) -> Iterator[tuple[str, MCHManagedCollisionModule]]:
    """``(name, module)`` of every MCH module of ``model``, named inside the DMP / DDP / FSDP wrappers
    (``model.sparse_arch...``, the same whether or not the model is wrapped in DDP)."""
    for name, module in get_unwrapped_module(model).named_modules():
        if isinstance(module, MCHManagedCollisionModule):
            yield name, module


def saved_key(name: str) -> str:
    """The :func:`named_mch_modules` name of a key of a checkpoint's module states (older checkpoints
    keyed them by ``named_modules()`` of the DDP-wrapped DMP: ``_dmp_wrapped_module.module.<name>``)."""
    return name[len(_OLD_PREFIX) :] if name.startswith(_OLD_PREFIX) else name


def module_states(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Module name (:func:`named_mch_modules`) -> :func:`module_state` for every MCH module of ``model``
    on this rank."""
    return {name: module_state(module, history=_supported(module)) for name, module in named_mch_modules(model)}


def load_module_states(model: nn.Module, states: dict[str, dict[str, Any]]) -> list[str]:
    """Restore :func:`module_states` (keys of older checkpoints too, :func:`saved_key`); returns the
    names of this model's MCH modules that had no saved history (another torchrec version, or a module
    the checkpoint did not have)."""
    states = {saved_key(name): state for name, state in states.items()}
    missing = []
    for name, module in named_mch_modules(model):
        state = states.get(name, {})
        if "history_size" in state and not _supported(module):
            state = {k: v for k, v in state.items() if k == "counters"}
        load_module_state(module, state)
        if "history_size" not in state:
            missing.append(name)
    return missing
