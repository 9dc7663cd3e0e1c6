"""Load an exported artifact (``mdr export``) and score raw feature columns with it.

    from torchrec_mdr.serving import load_artifact

    model = load_artifact("artifacts/din")
    model.predict({"user_id": 7, "item_id": 123456, "hist_item_id": [5, 9, 123], ...})
    # -> {"click": array([0.0731], dtype=float32)}

Needs only ``torch`` and ``numpy`` (no torchrec, no process group, no run directory).

**Safe loading.** ``torch.export.load`` unpickles some archive entries with ``weights_only=False``
(tensors flagged ``use_pickle``, custom and opaque objects, legacy weight files, and the example
inputs when a weights-only load of them fails), resolves each graph node's target by name anywhere
under ``torch``, and parses symbolic shape expressions with ``sympy.sympify`` (an ``eval``);
``ExportedProgram.module()`` then ``exec``s the program's input guards. Before any of it runs,
:func:`check_program` therefore (1) compares the program file's SHA-256 and size with the
manifest's (a changed byte is refused), (2) reads the archive's weight and constant configs (JSON)
and refuses any pickled entry, and loads every other ``.pt`` entry with ``weights_only=True``
(refused if that fails), and (3) reads the graph (JSON) and refuses any node that calls anything
but an aten operator (or ``operator`` / ``math`` / ``torch.sym_*``) and any expression or guard
that is not a plain shape expression (:func:`check_graph`). A tampered artifact raises
:class:`ArtifactError` naming the file; nothing of it runs.

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

import ast
import hashlib
import io
import json
import re
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


# What the program's graph may call, and what its symbolic expressions may hold (see check_graph).
_TARGET = re.compile(
    r"^(torch\.ops\.aten\.[A-Za-z0-9_]+\.[A-Za-z0-9_]+|_operator\.[a-z_]+|math\.[a-z_]+|"
    r"torch\.sym_[a-z_]+)$"
)
_SYMBOL = re.compile(r"^[a-z]\d+$")
_NAMES = {
    "L",
    "math",
    "inf",
    "oo",
    "Max",
    "Min",
    "Eq",
    "Ne",
    "Abs",
    "And",
    "Or",
    "Not",
    "FloorDiv",
    "Mod",
    "PythonMod",
    "CleanDiv",
    "CeilToInt",
    "FloorToInt",
    "TruncToInt",
    "IntTrueDiv",
    "FloatTrueDiv",
    "ModularIndexing",
    "Where",
    "ToFloat",
    "PowByNatural",
    "FloatPow",
    "Identity",
    "Integer",
    "Symbol",
    # sympy's arithmetic in srepr form, e.g. Mul(Integer(16), Symbol('s78', positive=True)) (a sequence
    # table's flattened width times the batch symbol)
    "Mul",
    "Add",
    "Pow",
    "Rational",
}
_ASSUMPTIONS = {"positive", "negative", "nonnegative", "integer", "real", "finite", "zero", "nonzero"}
_ATTRIBUTES = {"size", "stride", "storage_offset", "isnan", "inf"}
_NODES = (
    ast.Expression,
    ast.Compare,
    ast.BoolOp,
    ast.BinOp,
    ast.UnaryOp,
    ast.Constant,
    ast.Name,
    ast.Load,
    ast.Subscript,
    ast.Attribute,
    ast.Call,
    ast.keyword,
    ast.Tuple,
    ast.operator,
    ast.cmpop,
    ast.boolop,
    ast.unaryop,
)


def _plain_expression(text: str) -> bool:
    """Whether ``text`` is an expression of shapes and symbols only: comparisons and arithmetic of
    constants, size symbols (``s0``, ``Symbol('s0', positive=True)``), ``L['x'][0].size()[1]`` and the
    sympy functions of torch's shape expressions; no other name, attribute, call or keyword (torch
    evaluates these strings with ``exec`` / ``sympy.sympify``)."""
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError):
        return False
    for node in ast.walk(tree):
        if not isinstance(node, _NODES):
            return False
        if isinstance(node, ast.Name) and node.id not in _NAMES and not _SYMBOL.match(node.id):
            return False
        if isinstance(node, ast.Attribute) and node.attr not in _ATTRIBUTES:
            return False
        if isinstance(node, ast.Call) and not (
            (isinstance(node.func, ast.Name) and node.func.id in _NAMES - {"L", "math"})
            or isinstance(node.func, ast.Attribute)
        ):
            return False
        if isinstance(node, ast.keyword) and (node.arg not in _ASSUMPTIONS or not isinstance(node.value, ast.Constant)):
            return False
    return True


def check_graph(graph: Any, where: str) -> None:
    """ArtifactError unless every node of the serialized program calls an aten op (or an operator /
    math / sym function) and every symbolic expression and guard is a plain shape expression
    (:func:`_plain_expression`): ``torch.export.load`` resolves node targets by name anywhere under
    ``torch`` and parses expressions with ``sympy.sympify``, and ``module()`` ``exec``s the guards."""
    stack = [graph]
    while stack:
        value = stack.pop()
        if isinstance(value, list):
            stack.extend(value)
            continue
        if not isinstance(value, dict):
            continue
        target = value.get("target")
        if isinstance(target, str) and "inputs" in value and not _TARGET.match(target):
            raise ArtifactError(
                f"{where}: the program calls {target!r}, which is not an aten operator; refusing to load it"
            )
        texts = [value["expr_str"]] if isinstance(value.get("expr_str"), str) else []
        texts += [g for g in value.get("guards_code", []) if isinstance(g, str)]
        texts += [k for k in value.get("range_constraints", {}) if isinstance(k, str)]
        for text in texts:
            if not _plain_expression(text):
                raise ArtifactError(
                    f"{where}: the program holds the expression {text[:80]!r}, which is not "
                    f"a shape expression; refusing to load it"
                )
        stack.extend(value.values())


def check_program(folder: str | Path, manifest: dict[str, Any]) -> Path:
    """The program file, after the checks of the module docstring (ArtifactError otherwise)."""
    path = Path(folder) / PROGRAM_FILE
    expected = manifest.get("files", {}).get(PROGRAM_FILE, {})
    if not path.is_file():
        raise ArtifactError(f"{path} does not exist")
    if path.stat().st_size != expected.get("bytes") or _sha256(path) != expected.get("sha256"):
        raise ArtifactError(
            f"{path} does not match its manifest (SHA-256 / size differ): the artifact was "
            f"modified after export; refusing to load it"
        )
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
                        raise ArtifactError(
                            f"{path}: entry {fqn!r} of {name} is a pickled object, which loading "
                            f"would run; refusing to load it"
                        )
            elif name.endswith(".json") and "models" in parts:
                try:
                    graph = json.loads(archive.read(name))
                except json.JSONDecodeError as error:
                    raise ArtifactError(f"{path}: {name} is not valid JSON: {error}") from None
                check_graph(graph, f"{path}: {name}")
            elif name.endswith((".pt", ".pkl", ".pickle")):
                if "weights" in parts or "constants" in parts:
                    raise ArtifactError(f"{path}: {name} is a pickled weights file; refusing to load it")
                try:
                    torch.load(io.BytesIO(archive.read(name)), weights_only=True)
                except Exception as error:  # noqa: BLE001 - any failure means torch would unpickle it unsafely
                    raise ArtifactError(
                        f"{path}: {name} holds objects a weights-only load refuses ({error}); refusing to load it"
                    ) from None
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
        values = chunk.values.to_numpy(zero_copy_only=False).astype(np.int64)[offsets[0] : offsets[-1]]
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
            raise ArtifactError(
                f"column '{name}': id {int(ids.max())} is not below its cardinality {cardinality} (oov = reject)"
            )
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
                raise ArtifactError(
                    f"sequence group '{group}': columns '{seen[0]}' and '{column['name']}' differ in length in some row"
                )
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
