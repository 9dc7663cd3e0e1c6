"""Checkpoint files read without running code: per-rank side files and DCP's metadata.

A checkpoint or a run directory may come from elsewhere; loading it must not execute anything.

* The per-rank side files (``rank{R}.pt``) hold only what ``torch.load(..., weights_only=True)``
  accepts: tensors, python ints / floats / strings / None, and lists, tuples and dicts of them (the
  RNG states are kept as such; see :func:`torchrec_mdr.training.checkpoint.rng_state`). Anything
  else in a file — a pickled callable, an arbitrary class — makes :func:`load_side_file` refuse it
  with one error naming the file and the objects it holds; nothing of it runs.
* torch.distributed.checkpoint reads its ``.metadata`` file with a plain ``pickle.load`` (torch
  2.13), and reads entries that the metadata declares as bytes with ``torch.load(weights_only=
  False)``. :func:`check_dcp_metadata` therefore unpickles the metadata first with an unpickler
  that knows only DCP's metadata classes, ``torch.Size``, torch dtypes / layouts and paths, and
  refuses bytes entries (torchrec-mdr's state dicts hold tensors only), before DCP touches the file.
  The tensors themselves DCP already reads with ``weights_only=True``.

Files written before this format kept numpy's RNG state as a numpy array; the three numpy globals
such an array needs (``ndarray``, ``dtype`` and the array reconstructor, which build plain arrays
and call nothing else) are allowed so that those checkpoints still load.
"""

from __future__ import annotations

import importlib
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchrec_mdr.errors import TrainingError


def _legacy_numpy_globals() -> list[Any]:
    """What a pickled numpy array of an older checkpoint's RNG state refers to."""
    try:
        multiarray = importlib.import_module("numpy._core.multiarray")  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        multiarray = importlib.import_module("numpy.core.multiarray")
    return [np.ndarray, np.dtype, multiarray._reconstruct, type(np.dtype(np.uint32))]


def save_side_file(value: dict[str, Any], path: Path) -> None:
    """Write ``value`` (tensors and plain python values only) to ``path``."""
    torch.save(value, path)


def _unsafe_globals(path: Path) -> list[str]:
    """The globals ``path`` refers to that a weights-only load refuses (read without unpickling them)."""
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in _legacy_numpy_globals()}
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - only for the message; the load has already failed
        return []
    return [name for name in found if name not in allowed]


def load_side_file(path: str | Path) -> dict[str, Any]:
    """Load a side file written by :func:`save_side_file` (or an older torchrec-mdr) with
    ``weights_only=True``; TrainingError naming the file when it holds anything else or is unreadable."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals(_legacy_numpy_globals()):
            value = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as error:
        unsafe = _unsafe_globals(path)
        text = str(error).strip()
        if not unsafe and not zipfile.is_zipfile(path):  # not what torch.save writes: a damaged file
            raise TrainingError(
                f"cannot read checkpoint file {path}: it is not a torch.save archive ({text.splitlines()[0][:120]})"
            ) from None
        what = f" ({', '.join(unsafe[:5])})" if unsafe else ""
        raise TrainingError(
            f"refusing to load {path}: it holds objects other than tensors and plain values"
            f"{what}, which could run code when loaded. Only load checkpoints written by "
            f"torchrec-mdr"
        ) from None
    except (RuntimeError, EOFError, OSError) as error:
        raise TrainingError(f"cannot read checkpoint file {path}: {error}") from None
    if not isinstance(value, dict):
        raise TrainingError(f"checkpoint file {path} holds a {type(value).__name__}, not a dict of states")
    return value


_METADATA_MODULE = "torch.distributed.checkpoint.metadata"
_METADATA_CLASSES = {
    "Metadata",
    "MetadataIndex",
    "StorageMeta",
    "TensorProperties",
    "TensorStorageMetadata",
    "BytesStorageMetadata",
    "ChunkStorageMetadata",
    "_MEM_FORMAT_ENCODING",
}
_OTHER_GLOBALS = {
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("collections", "OrderedDict"),
}
_PATH_CLASSES = {"PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath"}


def _allowed_in_metadata(module: str, name: str) -> bool:
    if module == _METADATA_MODULE:
        return name in _METADATA_CLASSES
    if module in ("pathlib", "pathlib._local"):
        return name in _PATH_CLASSES
    if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
        return True
    return (module, name) in _OTHER_GLOBALS


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP metadata, refusing every global outside :func:`_allowed_in_metadata`."""

    def find_class(self, module: str, name: str) -> Any:
        if not _allowed_in_metadata(module, name):
            raise pickle.UnpicklingError(f"{module}.{name}")
        return super().find_class(module, name)


def check_dcp_metadata(folder: str | Path) -> None:
    """Refuse (TrainingError naming the file) a DCP checkpoint whose ``.metadata`` refers to anything but
    DCP's own metadata classes, or declares entries stored as pickled bytes; see the module docstring."""
    path = Path(folder) / ".metadata"
    try:
        with open(path, "rb") as handle:
            metadata = _MetadataUnpickler(handle).load()
    except pickle.UnpicklingError as error:
        raise TrainingError(
            f"refusing to load {path}: it refers to {error}, which DCP checkpoint metadata "
            f"never holds and which could run code when loaded. Only load checkpoints written "
            f"by torchrec-mdr"
        ) from None
    except (OSError, EOFError, ValueError, TypeError, AttributeError) as error:
        raise TrainingError(f"cannot read the DCP metadata {path}: {error}") from None
    from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata

    if not isinstance(metadata, Metadata):
        raise TrainingError(f"{path} holds a {type(metadata).__name__}, not DCP checkpoint metadata")
    pickled = sorted(
        key for key, value in metadata.state_dict_metadata.items() if not isinstance(value, TensorStorageMetadata)
    )
    if pickled:
        raise TrainingError(
            f"refusing to load checkpoint {path.parent}: its entries {pickled[:3]} are stored as "
            f"pickled objects, which could run code when loaded (torchrec-mdr writes tensors only)"
        )
