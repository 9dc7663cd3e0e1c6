"""Load an exported artifact (``mdr export``) and score raw feature columns with it.

    from torchrec_mdr.serving import load_artifact

    model = load_artifact("artifacts/din")
    model.predict({"user_id": 7, "item_id": 123456, "hist_item_id": [5, 9, 123], ...})
    # -> {"click": array([0.0731], dtype=float32)}

Needs only ``torch`` and ``numpy`` (no torchrec, no process group, no run directory).

**Safe loading.** ``torch.export.load`` unpickles some archive entries with ``weights_only=False``
(tensors flagged ``use_pickle``, custom and opaque objects, legacy weight files, and the example
inputs when a weights-only load of them fails). Before it runs, :func:`check_program` therefore
(1) compares the program file's SHA-256 and size with the manifest's (a changed byte is refused),
and (2) reads the archive's weight and constant configs (JSON) and refuses any pickled entry, and
loads every other ``.pt`` entry with ``weights_only=True`` (refused if that fails). A tampered
artifact raises :class:`ArtifactError` naming the file; nothing of it runs.

**Inputs** (:meth:`ServingModel.predict`): a mapping from the dataset's column names to values —
one request (scalars for ``id`` / ``dense`` / domain columns, a list of ids for ``multi_id`` and
``sequence`` columns) or a batch (arrays / lists of those; pyarrow arrays too). Columns not in the
manifest (labels, keys) are ignored. Ids are treated as the reader treats them: negative ids are
refused, ids at or above a column's cardinality are hashed (``id mod cardinality``) or refused
(``oov = "reject"``), lists keep their most recent ``max_length`` ids, and the fields of one
sequence group must be equally long per row. Managed-collision tables take raw ids (the program
maps them to rows; an id without a slot reads the table's unknown-id row). Returns
``{label: float32 [B]}`` probabilities.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

PROGRAM_FILE = "program.pt2"
MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1
PAD = -1


class ArtifactError(ValueError):
    """An artifact that is missing, of another format, tampered with, or given bad inputs."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise ArtifactError(f"{folder} is not an exported artifact: {path} does not exist")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ArtifactError(f"{path} is not valid JSON: {error}") from None
    if manifest.get("format") != FORMAT_VERSION:
        raise ArtifactError(f"{path} has format {manifest.get('format')}; this version reads format {FORMAT_VERSION}")
    return manifest


def _config_entries(archive: zipfile.ZipFile, name: str) -> dict[str, Any]:
    try:
        return json.loads(archive.read(name))["config"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ArtifactError(f"archive entry {name} is not a payload config: {error}") from None


def check_program(folder: str | Path, manifest: dict[str, Any]) -> Path:
    """The program file, after the checks of the module docstring (ArtifactError otherwise)."""
    path = Path(folder) / PROGRAM_FILE
    expected = manifest.get("files", {}).get(PROGRAM_FILE, {})
    if not path.is_file():
        raise ArtifactError(f"{path} does not exist")
    if path.stat().st_size != expected.get("bytes") or _sha256(path) != expected.get("sha256"):
        raise ArtifactError(f"{path} does not match its manifest (SHA-256 / size differ): the artifact was "
                            f"modified after export; refusing to load it")
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as error:
        raise ArtifactError(f"{path} is not a torch.export archive: {error}") from None
    with archive:
        for name in archive.namelist():
            parts = name.split("/")
            if name.endswith("_config.json") and ("weights" in parts or "constants" in parts):
                for fqn, entry in _config_entries(archive, name).items():
                    if entry.get("use_pickle") or not str(entry.get("path_name", "")).startswith(("weight", "tensor")):
                        raise ArtifactError(f"{path}: entry {fqn!r} of {name} is a pickled object, which loading "
                                            f"would run; refusing to load it")
            elif name.endswith((".pt", ".pkl", ".pickle")):
                if "weights" in parts or "constants" in parts:
                    raise ArtifactError(f"{path}: {name} is a pickled weights file; refusing to load it")
                try:
                    torch.load(io.BytesIO(archive.read(name)), weights_only=True)
                except Exception as error:  # noqa: BLE001 - any failure means torch would unpickle it unsafely
                    raise ArtifactError(f"{path}: {name} holds objects a weights-only load refuses ({error}); "
                                        f"refusing to load it") from None
    return path


def _int64(value: Any) -> np.ndarray:
    """A writable int64 array [n] of a scalar, a list or a (pyarrow) array."""
    array = np.array(value, dtype=np.int64, ndmin=1)
    return array if array.flags.writeable else array.copy()


def _list_column(value: Any, rows: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(offsets int64 [n + 1], values int64) of a list column: pyarrow list array or a list of lists."""
    if hasattr(value, "combine_chunks") or hasattr(value, "offsets"):  # pyarrow (Chunked)Array
        chunk = value.combine_chunks() if hasattr(value, "combine_chunks") else value
        offsets = np.asarray(chunk.offsets).astype(np.int64)
        values = chunk.values.to_numpy(zero_copy_only=False).astype(np.int64)[offsets[0]:offsets[-1]]
        return offsets - offsets[0], values
    lists = [np.asarray(v, dtype=np.int64).reshape(-1) for v in value]
    offsets = np.zeros(len(lists) + 1, dtype=np.int64)
    np.cumsum([len(v) for v in lists], out=offsets[1:])
    return offsets, (np.concatenate(lists) if lists else np.zeros(0, dtype=np.int64))


def _padded(offsets: np.ndarray, values: np.ndarray, max_length: int | None, width: int | None) -> np.ndarray:
    """[n, width] int64 left-aligned rows, PAD-filled, keeping each row's last ``max_length`` ids."""
    lengths = np.diff(offsets)
    if max_length is not None:
        lengths = np.minimum(lengths, max_length)
    width = width if width is not None else max(int(lengths.max()) if lengths.size else 0, 1)
    out = np.full((lengths.size, width), PAD, dtype=np.int64)
    row = np.repeat(np.arange(lengths.size), lengths)
    position = np.arange(row.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    source = np.repeat(offsets[1:] - lengths, lengths) + position  # the last `lengths` ids of each row
    out[row, position] = values[source]
    return out


def _checked_ids(column: dict[str, Any], ids: np.ndarray) -> np.ndarray:
    name, cardinality = column["name"], column["cardinality"]
    if ids.size and ids.min() < 0:
        raise ArtifactError(f"column '{name}': negative id {int(ids.min())}")
    if ids.size and ids.max() >= cardinality:
        if column["oov"] != "hash":
            raise ArtifactError(f"column '{name}': id {int(ids.max())} is not below its cardinality "
                                f"{cardinality} (oov = reject)")
        ids = ids % cardinality
    return ids

def encode(manifest: dict[str, Any], columns: Mapping[str, Any]) -> tuple[torch.Tensor, ...]:
    """The program's input tensors of raw feature columns (see the module docstring), by an artifact's
    manifest (its ``columns``, ``dense`` and ``domain``)."""
    domain_column, num_domains = manifest["domain"]["column"], len(manifest["domain"]["names"])
    missing = [c["name"] for c in manifest["columns"] if c["name"] not in columns]
    missing += [n for n in [domain_column, *manifest["dense"]] if n not in columns]
    if missing:
        raise ArtifactError(f"missing input column(s): {', '.join(missing)}")
    single = np.ndim(columns[domain_column]) == 0
    domain = _int64(columns[domain_column])
    rows = domain.shape[0]
    if domain.size and (domain.min() < 0 or domain.max() >= num_domains):
        raise ArtifactError(f"column '{domain_column}': domain outside [0, {num_domains})")
    dense = np.zeros((rows, len(manifest["dense"])), dtype=np.float32)
    for index, name in enumerate(manifest["dense"]):
        dense[:, index] = np.atleast_1d(np.asarray(columns[name], dtype=np.float32))
    tensors = [torch.from_numpy(dense), torch.from_numpy(domain)]
    group_lengths: dict[str, tuple[str, np.ndarray]] = {}
    for column in manifest["columns"]:
        value = columns[column["name"]]
        if column["kind"] == "id":
            ids = _int64(value)
            tensors.append(torch.from_numpy(_checked_ids(column, ids)))
            continue
        offsets, values = _list_column([value] if single else value, rows)
        group = column["sequence_group"]
        if group is not None:
            seen = group_lengths.setdefault(group, (column["name"], np.diff(offsets)))
            if not np.array_equal(seen[1], np.diff(offsets)):
                raise ArtifactError(f"sequence group '{group}': columns '{seen[0]}' and '{column['name']}' "
                                    f"differ in length in some row")
        width = column["max_length"] if column["kind"] == "sequence" else None
        padded = _padded(offsets, _checked_ids(column, values), column["max_length"], width)
        tensors.append(torch.from_numpy(padded))
    for tensor, name in zip(tensors[2:], [c["name"] for c in manifest["columns"]]):
        if tensor.shape[0] != rows:
            raise ArtifactError(f"column '{name}' has {tensor.shape[0]} rows, '{domain_column}' {rows}")
    return tuple(tensors)


class ServingModel:
    """An exported ranking model: :meth:`predict` raw columns -> probabilities per task."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        program = check_program(self.folder, self.manifest)
        try:
            self.program = torch.export.load(program)
        except Exception as error:  # noqa: BLE001
            raise ArtifactError(f"cannot load {program}: {error}") from None
        self.module = self.program.module()
        self.labels: list[str] = self.manifest["labels"]

    def predict(self, columns: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """``{label: float32 [B]}`` probabilities of one request or a batch of raw columns."""
        with torch.inference_mode():
            probs = self.module(*encode(self.manifest, columns))
        probs = probs.numpy()
        return {label: probs[:, task] for task, label in enumerate(self.labels)}


def load_artifact(folder: str | Path) -> ServingModel:
    """Load (and check) the artifact in ``folder``; see :class:`ServingModel`."""
    return ServingModel(folder)
