"""``mdr bench serve``: latency, size and AUC of exported artifacts (``mdr export``).

    mdr bench serve --artifact artifacts/din artifacts/din-int8 [--requests 500] [--threads 1]

Requests are rows of a prepared split (default: the test split of the dataset the run trained
on, as the manifest records it), fed as raw feature columns through
:meth:`~torchrec_mdr.serving.artifact.ServingModel.predict`, one after another: batch 1 as one
request of python scalars and lists, batch 256 as pyarrow column slices. Latency is wall time per
request, end to end (encoding the raw columns + the program), after ``warmup`` requests; the table
gives the median and the 99th percentile over ``requests`` requests per batch size, and the
program's share alone (median). ``size`` is the artifact folder's bytes. ``auc`` scores the whole
split (in batches of 4096) with the artifact, so fp32 and int8 artifacts of one run can be compared.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from torchrec_mdr.config import bounds, doc
from torchrec_mdr.serving.artifact import ArtifactError, encode, load_artifact


@dataclass
class ServeBenchOptions:
    artifact: list[Path] = field(metadata=doc("artifact folders written by mdr export"))
    data: Path | None = field(
        default=None, metadata=doc("prepared dataset the requests come from (default: the manifest's dataset)")
    )
    split: str = field(default="test", metadata=doc("split the requests come from"))
    batch_sizes: list[int] = field(default_factory=lambda: [1, 256], metadata=bounds(ge=1, help="rows per request"))
    requests: int = field(default=500, metadata=bounds(ge=10, help="timed requests per batch size"))
    warmup: int = field(default=20, metadata=bounds(ge=0, help="untimed requests before each measurement"))
    threads: int = field(default=1, metadata=bounds(ge=1, help="torch intra-op threads"))
    auc: bool = field(default=True, metadata=doc("also score the whole split and report each task's AUC"))


def _split_table(data: Path, split: str) -> pa.Table:
    spec = json.loads((data / "spec.json").read_text())
    if split not in spec["splits"]:
        raise ArtifactError(f"--split {split}: {data} has splits {', '.join(spec['splits'])}")
    return pa.concat_tables([pq.read_table(data / f) for f in spec["splits"][split]["files"]])


def _requests(table: pa.Table, batch: int, count: int) -> list[dict[str, Any]]:
    """``count`` requests of ``batch`` consecutive rows (wrapping around the split)."""
    out = []
    for index in range(count):
        start = (index * batch) % max(table.num_rows - batch + 1, 1)
        rows = table.slice(start, batch)
        if batch == 1:
            out.append({name: rows[name][0].as_py() for name in rows.column_names})
        else:
            out.append({name: rows[name] for name in rows.column_names})
    return out


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def _measure(model: Any, requests: list[dict[str, Any]], warmup: int) -> dict[str, float]:
    for request in requests[:warmup]:
        model.predict(request)
    total, program = [], []
    for request in requests[warmup:]:
        start = time.perf_counter()
        inputs = encode(model.manifest, request)
        encoded = time.perf_counter()
        with torch.inference_mode():
            model.module(*inputs)
        end = time.perf_counter()
        total.append(end - start)
        program.append(end - encoded)
    total_ms, program_ms = np.array(total) * 1e3, np.array(program) * 1e3
    return {
        "median_ms": float(np.median(total_ms)),
        "p99_ms": float(np.percentile(total_ms, 99)),
        "program_median_ms": float(np.median(program_ms)),
    }


def _auc(model: Any, table: pa.Table) -> dict[str, float]:
    from torchrec_mdr.metrics.ranking import auc

    scores: dict[str, list[np.ndarray]] = {label: [] for label in model.labels}
    for start in range(0, table.num_rows, 4096):
        rows = table.slice(start, 4096)
        for label, probs in model.predict({name: rows[name] for name in rows.column_names}).items():
            scores[label].append(probs)
    return {
        label: auc(np.concatenate(scores[label]).astype(np.float64), table[label].to_numpy().astype(np.float64))
        for label in model.labels
    }


def run(options: ServeBenchOptions) -> list[dict[str, Any]]:
    torch.set_num_threads(options.threads)
    results = []
    tables: dict[Path, pa.Table] = {}
    for folder in options.artifact:
        start = time.perf_counter()
        model = load_artifact(folder)
        load_s = time.perf_counter() - start
        data = Path(options.data or model.manifest["dataset"]["path"])
        if data not in tables:
            tables[data] = _split_table(data, options.split)
        table = tables[data]
        row: dict[str, Any] = {
            "artifact": str(folder),
            "model": model.manifest["model"],
            "precision": model.manifest["precision"],
            "bytes": _folder_bytes(Path(folder)),
            "load_s": load_s,
            "batches": {},
        }
        for batch in options.batch_sizes:
            requests = _requests(table, batch, options.warmup + options.requests)
            row["batches"][batch] = _measure(model, requests, options.warmup)
        if options.auc:
            row["auc"] = _auc(model, table)
        results.append(row)
    print(format_results(results, options))
    return results


def format_results(results: list[dict[str, Any]], options: ServeBenchOptions) -> str:
    lines = [
        f"mdr bench serve: {options.requests} requests per batch size after {options.warmup} warm-up, "
        f"{options.threads} thread(s), torch {torch.__version__}",
        f"{'artifact':<28} {'precision':>9} {'size MB':>8} {'batch':>6} {'median ms':>10} {'p99 ms':>8} "
        f"{'program ms':>10} {'rows/s':>9}  auc",
    ]
    for row in results:
        aucs = " ".join(f"{label}={value:.5f}" for label, value in row.get("auc", {}).items())
        for batch, figures in row["batches"].items():
            lines.append(
                f"{Path(row['artifact']).name[:28]:<28} {row['precision']:>9} {row['bytes'] / 1e6:>8.2f} "
                f"{batch:>6} {figures['median_ms']:>10.3f} {figures['p99_ms']:>8.3f} "
                f"{figures['program_median_ms']:>10.3f} {batch / figures['median_ms'] * 1e3:>9.0f}  {aucs}"
            )
    return "\n".join(lines)
