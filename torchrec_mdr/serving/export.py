"""``mdr export``: a trained ranking run as a self-contained inference artifact.

    mdr export --run runs/din --out artifacts/din [--checkpoint latest|best|step-N] [--int8]

The run's checkpoint is loaded as ``mdr eval`` / ``mdr predict`` load it, in one process
(DistributedModelParallel at world size 1: DCP gathers every table from however many ranks wrote
it, and :mod:`torchrec_mdr.sparse.mch.reshard` merges the managed-collision slot maps of all
shards into one). Then every table is copied out as one plain tensor, the managed tables' slot
maps beside them, and the dense arch is copied as it is; :class:`~torchrec_mdr.serving.program.
InferenceProgram` re-composes them in plain PyTorch.

**Why torch.export (and not TorchScript, and not torchrec's modules).** The sharded torchrec
modules (fbgemm TBE kernels, KeyedJaggedTensor inputs, the MCH module's python-side profiling)
are training machinery; re-composed from unsharded tensors with padded inputs, the whole model is
a graph of ordinary aten ops, which ``torch.export`` (``strict=False``) captures, with a dynamic
batch dimension, for every registered arch (tests/test_serving.py exports each one and compares it
with the eager model at batch 32 and 1). TorchScript was therefore not needed and not tried: it
would also need every arch to be scriptable (they take a dataclass of tensors), and torch marks it
deprecated in favour of torch.export. torchrec's quantised embedding modules (``torchrec.quant``)
were tried for ``--int8`` and not used: an int8 ``EmbeddingBagCollection.from_float`` runs on this
CPU stack and torch.export captures it, but its lookups become fbgemm custom ops
(``fbgemm.int_nbit_split_embedding_codegen_lookup_function``, ``fbgemm.bounds_check_indices``,
``fbgemm.asynchronous_complete_cumsum``), so the program would need fbgemm-gpu imported wherever
it is loaded, and the loader could no longer insist on aten operators only. The tables are
instead quantised 8-bit row-wise here (:func:`~torchrec_mdr.serving.program.quantize_rows`: uint8
codes, an fp32 scale and bias per row, dequantised as ``codes * scale + bias`` for the rows looked
up only), the scheme of fbgemm's 8-bit row-wise tables but with an fp32 (not fp16) scale and bias.

**The artifact** is a folder:

* ``program.pt2``: ``torch.export.save`` of the program (graph as JSON, tensors as raw bytes);
* ``manifest.json``: format, versions (torchrec-mdr, torch, torchrec), the run, checkpoint, model
  and dataset (name, spec fingerprint), the input columns (kind, table, cardinality the loader
  checks ids against, out-of-range policy, max length, sequence group), dense feature names,
  the domain column and names, labels, tables (rows, dim, managed), the precision, and the
  SHA-256 and size of ``program.pt2``.

Loading (:mod:`torchrec_mdr.serving.artifact`) checks the hash, refuses an archive that holds
pickled entries or a graph that calls anything but aten operators, and never needs the training
stack; :func:`export_run` loads each artifact it writes that way and compares it with the model.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch.distributed._shard.sharded_tensor import ShardedTensor

import torchrec_mdr
from torchrec_mdr.errors import TrainingError
from torchrec_mdr.serving.program import PAD, InferenceProgram, InputColumn, input_names

PROGRAM_FILE = "program.pt2"
MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1
_EXAMPLE_BATCH = 4


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def full_tensor(value: torch.Tensor) -> torch.Tensor:
    """A plain tensor of a state-dict value; a ShardedTensor is assembled from its (all local) shards."""
    if not isinstance(value, ShardedTensor):
        return value.detach().cpu()
    full = torch.empty(value.size(), dtype=value.dtype)
    covered = 0
    for shard in value.local_shards():
        index = tuple(slice(o, o + s) for o, s in zip(shard.metadata.shard_offsets, shard.metadata.shard_sizes))
        full[index] = shard.tensor.detach().cpu()
        covered += shard.tensor.numel()
    if covered != full.numel():
        raise TrainingError(
            f"a sharded tensor of shape {tuple(value.size())} is not all on this process "
            f"({covered} of {full.numel()} values); export runs in one process"
        )
    return full


Managed = dict[str, tuple[torch.Tensor, torch.Tensor]]  # table -> (sorted raw ids [zch], row of each [zch])


def gather_tables(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], Managed]:
    """(table -> weight [rows, D], managed table -> (sorted raw ids, rows)) from a RankingModel's state dict
    (DMP or plain), whatever collection each table lives in."""
    tables: dict[str, torch.Tensor] = {}
    raw: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        parts = key.split(".")
        if "sparse_arch" not in parts:
            continue
        if parts[-1] == "weight" and len(parts) >= 3 and parts[-3] in ("embedding_bags", "embeddings"):
            tables[parts[-2]] = full_tensor(value).float()
        elif parts[-1] in ("_mch_sorted_raw_ids", "_mch_remapped_ids_mapping"):
            raw.setdefault(parts[-2], {})[parts[-1]] = full_tensor(value).long()
    managed = {}
    for table, buffers in raw.items():
        order = torch.argsort(buffers["_mch_sorted_raw_ids"], stable=True)
        managed[table] = (buffers["_mch_sorted_raw_ids"][order], buffers["_mch_remapped_ids_mapping"][order])
    return tables, managed


def _input_columns(spec: Any) -> list[InputColumn]:
    return [
        InputColumn(c.name, c.kind, c.table_name, c.max_length if c.kind == "sequence" else None)
        for c in spec.columns_of("id", "multi_id", "sequence")
    ]


def example_inputs(columns: list[InputColumn], num_dense: int, batch: int = _EXAMPLE_BATCH) -> tuple[torch.Tensor, ...]:
    """Inputs of the program's shapes (values irrelevant): every list column two-thirds full."""
    ids = []
    for column in columns:
        if column.kind == "id":
            ids.append(torch.zeros(batch, dtype=torch.int64))
        else:
            width = column.width or 3
            tensor = torch.zeros(batch, width, dtype=torch.int64)
            tensor[:, width - max(width // 3, 1) :] = PAD
            ids.append(tensor)
    return (torch.zeros(batch, num_dense), torch.zeros(batch, dtype=torch.int64), *ids)


def export_program(
    program: InferenceProgram, columns: list[InputColumn], num_dense: int
) -> torch.export.ExportedProgram:
    """torch.export of ``program`` with a dynamic batch (and multi_id width) dimension."""
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    ids: list[Any] = []
    for column in columns:
        if column.kind == "multi_id":
            ids.append({0: batch, 1: torch.export.Dim(f"width_{column.name}", min=1, max=1 << 16)})
        else:
            ids.append({0: batch})
    shapes = ({0: batch}, {0: batch}, tuple(ids))  # forward(dense, domain, *ids)
    with torch.no_grad():
        return torch.export.export(program, example_inputs(columns, num_dense), dynamic_shapes=shapes, strict=False)


def input_description(spec: Any, reader_spec: Any) -> dict[str, Any]:
    """The manifest's description of the inputs and outputs (what :func:`~torchrec_mdr.serving.artifact.
    encode` reads): id columns with the cardinality and policy the reader applies (``reader_spec``:
    managed tables accept raw ids below ``input_hash_size``), dense names, domain, labels."""
    return {
        "columns": [
            {
                "name": c.name,
                "kind": c.kind,
                "table": c.table_name,
                "cardinality": reader_spec.column(c.name).cardinality,
                "oov": reader_spec.column(c.name).oov,
                "max_length": c.max_length,
                "sequence_group": c.sequence_group,
            }
            for c in spec.columns_of("id", "multi_id", "sequence")
        ],
        "dense": spec.dense_features,
        "domain": {"column": spec.domain_column, "names": list(spec.domain_names)},
        "labels": spec.label_names,
        "outputs": [f"prob_{label}" for label in spec.label_names],
    }


def _manifest(
    config: Any,
    evaluator: Any,
    info: Any,
    checkpoint: str,
    run_dir: Path,
    columns: list[InputColumn],
    tables: dict[str, torch.Tensor],
    managed: dict[str, Any],
    int8: bool,
) -> dict[str, Any]:
    import torchrec

    from torchrec_mdr.training.checkpoint import dataset_signature

    spec, reader_spec = evaluator.spec, evaluator.reader_spec
    return {
        "format": FORMAT_VERSION,
        "kind": "torchrec-mdr ranking artifact",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": {
            "torchrec_mdr": torchrec_mdr.__version__,
            "torch": torch.__version__,
            "torchrec": getattr(torchrec, "__version__", "unknown"),
        },
        "run": str(run_dir),
        "checkpoint": {
            "name": checkpoint,
            "step": info.step,
            "path": str(info.path),
            "world_size": info.record.get("world_size"),
        },
        "model": config.model.name,
        "embedding_dim": config.model.embedding_dim,
        "dataset": {
            "name": spec.name,
            "path": str(config.data.path),
            "fingerprint": dataset_signature(spec)["fingerprint"],
        },
        "precision": "int8" if int8 else "fp32",
        "quantization": (
            {
                "scheme": "8-bit row-wise asymmetric",
                "dequantize": "codes * scale + bias",
                "codes": "uint8 [rows, D]",
                "scale": "float32 [rows]",
                "bias": "float32 [rows]",
            }
            if int8
            else None
        ),
        "inputs": input_names(columns),
        **input_description(spec, reader_spec),
        "tables": {
            name: {"rows": int(t.shape[0]), "dim": int(t.shape[1]), "managed": name in managed}
            for name, t in sorted(tables.items())
        },
    }


def _self_check(folder: Path, program: InferenceProgram, columns: list[InputColumn], num_dense: int) -> None:
    """Load the written artifact as a server would (all checks) and compare it with the eager program."""
    from torchrec_mdr.serving.artifact import load_artifact

    served = load_artifact(folder)
    inputs = example_inputs(columns, num_dense, batch=3)
    with torch.no_grad():
        expected, got = program(*inputs), served.module(*inputs)
    if not torch.allclose(got, expected, rtol=0, atol=1e-6):
        raise TrainingError(f"the exported program differs from the model by {float((got - expected).abs().max())}")


def export_run(
    run_dir: str | Path, out: str | Path, checkpoint: str = "latest", int8: bool = False, overwrite: bool = False
) -> dict[str, Any]:
    """Write the artifact of a ranking run's ``checkpoint`` into ``out`` (atomically); returns the manifest."""
    from torchrec_mdr.models.ranking import DenseArch
    from torchrec_mdr.training.evaluate import Evaluator, run_config

    run_dir, out = Path(run_dir), Path(out)
    config = run_config(run_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (pass --overwrite to replace it)")
    if config.task != "ranking":
        raise TrainingError(f"mdr export exports ranking runs; {run_dir} is a task = '{config.task}' run")
    config = replace(config, data=replace(config.data, num_workers=0), train=replace(config.train, device="cpu"))
    evaluator = Evaluator(config, run_dir)
    if evaluator.ctx.world_size != 1:
        raise TrainingError("mdr export runs in one process (it gathers the tables of any number of ranks itself)")
    info = evaluator.load(checkpoint)

    tables, managed = gather_tables(evaluator.model.state_dict())
    dense_arch = next(m for m in evaluator.model.modules() if isinstance(m, DenseArch))
    columns = _input_columns(evaluator.spec)
    missing = sorted({c.table for c in columns} - set(tables))
    if missing:
        raise TrainingError(f"checkpoint {info.path}: no weights found for table(s) {', '.join(missing)}")
    program = InferenceProgram(
        dense_arch.layout, copy.deepcopy(dense_arch.model).cpu(), columns, tables, managed, int8=int8
    ).eval()
    exported = export_program(program, columns, len(evaluator.spec.dense_features))
    manifest = _manifest(config, evaluator, info, checkpoint, run_dir, columns, tables, managed, int8)

    tmp = out.parent / f".{out.name}.tmp-{time.strftime('%Y%m%d%H%M%S')}"
    tmp.mkdir(parents=True)
    try:
        torch.export.save(exported, tmp / PROGRAM_FILE)
        manifest["files"] = {
            PROGRAM_FILE: {"sha256": sha256(tmp / PROGRAM_FILE), "bytes": (tmp / PROGRAM_FILE).stat().st_size}
        }
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        _self_check(tmp, program, columns, len(evaluator.spec.dense_features))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    size = manifest["files"][PROGRAM_FILE]["bytes"]
    print(
        f"exported {config.model.name} ({manifest['precision']}, {len(tables)} tables, checkpoint "
        f"{info.path.name}) to {out}: {size / 1e6:.2f} MB"
    )
    return manifest
