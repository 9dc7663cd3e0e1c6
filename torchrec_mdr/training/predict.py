"""Batch prediction: score every row of a prepared dataset with a run's checkpoint (``mdr predict``).

    mdr predict --run runs/din --data data/tomorrow --split test --out preds/din --keep user_id,item_id

Every rank reads its contiguous slice of the split in file order (the reader's slices, unshuffled,
without dataloader workers, so the order is known), runs the model through the evaluation path of
:class:`~torchrec_mdr.training.evaluate.Evaluator` (EvalPipelineSparseDist or plain forwards; ranks
with fewer batches run padding batches whose outputs are dropped) and writes its own part files
``part-r<rank>-<k>.parquet``. A row of the output holds

* ``row``: the row's position in the split (its files in the spec's order), so that the parts
  together hold every row exactly once and can be joined back to the input;
* ``domain``: the domain id the model scored the row in;
* ``prob_<label>``: each task's probability (sigmoid of its logit), float32;
* the pass-through columns named by ``keep`` (default: the spec's group key), read from the same
  parquet rows, any column of the files (labels included).

Memory stays bounded: predictions are buffered to ``row_group_rows`` rows, pass-through columns are
read one row group at a time, and a part file rolls over every ``rows_per_file`` rows. Output is
atomic like the converters': everything is written into ``.<out>.tmp-<token>`` beside ``out``,
which is renamed to ``out`` (with ``predict.json``: run, checkpoint, data, split, rows, columns)
only when every rank has finished and the row count matches the spec.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.distributed as dist
from tqdm import tqdm

from torchrec_mdr.config import ConfigError
from torchrec_mdr.data.reader import ParquetBatches, plan_segments, slice_bounds
from torchrec_mdr.data.validate import open_parquet
from torchrec_mdr.errors import TrainingError

MANIFEST = "predict.json"


class KeptColumns:
    """The pass-through columns of one rank's slice, in the reader's unshuffled row order, handed out
    ``take(n)`` rows at a time while reading one row group at a time."""

    def __init__(self, dataset: ParquetBatches, columns: list[str]) -> None:
        self.dataset = dataset
        self.columns = columns
        self._chunks = self._read()
        self._pending: list[pa.Table] = []
        self._pending_rows = 0

    def _read(self) -> Iterator[pa.Table]:
        for segment in plan_segments(self.dataset.row_groups, self.dataset.world_size, self.dataset.rank):
            parquet = open_parquet(self.dataset.files[segment.file])
            table = parquet.read_row_group(segment.row_group, columns=self.columns)
            yield table.slice(segment.start - segment.group_start, segment.stop - segment.start)

    def take(self, rows: int) -> pa.Table:
        while self._pending_rows < rows:
            chunk = next(self._chunks, None)
            if chunk is None:
                raise TrainingError(
                    f"rank {self.dataset.rank}: the model scored more rows than its slice of "
                    f"split '{self.dataset.split}' holds"
                )
            self._pending.append(chunk)
            self._pending_rows += chunk.num_rows
        table = pa.concat_tables(self._pending)  # zero-copy: chunks and slices of the row groups read
        head, rest = table.slice(0, rows), table.slice(rows)
        self._pending, self._pending_rows = ([rest], rest.num_rows) if rest.num_rows else ([], 0)
        return head


class PartWriter:
    """Writes one rank's rows as ``part-r<rank>-<k>.parquet`` files of at most ``rows_per_file`` rows, in
    row groups of ``row_group_rows`` rows."""

    def __init__(self, folder: Path, rank: int, row_group_rows: int, rows_per_file: int) -> None:
        self.folder, self.rank = folder, rank
        self.row_group_rows, self.rows_per_file = row_group_rows, rows_per_file
        self._buffer: list[pa.Table] = []
        self._buffered = 0
        self._writer: pq.ParquetWriter | None = None
        self._file_rows = 0
        self.files: list[str] = []
        self.rows = 0

    def add(self, table: pa.Table) -> None:
        self._buffer.append(table)
        self._buffered += table.num_rows
        self.rows += table.num_rows
        if self._buffered >= self.row_group_rows:
            self._flush()

    def _flush(self) -> None:
        if not self._buffered:
            return
        table = pa.concat_tables(self._buffer).combine_chunks()
        self._buffer, self._buffered = [], 0
        start = 0
        while start < table.num_rows:
            if self._writer is None:
                name = f"part-r{self.rank:03d}-{len(self.files):05d}.parquet"
                self._writer = pq.ParquetWriter(self.folder / name, table.schema)
                self.files.append(name)
                self._file_rows = 0
            take = min(table.num_rows - start, self.rows_per_file - self._file_rows)
            self._writer.write_table(table.slice(start, take), row_group_size=self.row_group_rows)
            start += take
            self._file_rows += take
            if self._file_rows >= self.rows_per_file:
                self._writer.close()
                self._writer = None

    def close(self) -> None:
        self._flush()
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _output_columns(spec: Any, keep: list[str], available: list[str]) -> list[str]:
    """Check the pass-through columns: present in the files and not an output column's name."""
    own = {"row", "domain", *(f"prob_{label}" for label in spec.label_names)}
    for name in keep:
        if name not in available:
            raise ConfigError(
                f"--keep {name}: the dataset's files have no column '{name}' (columns: {', '.join(available)})"
            )
        if name in own:
            raise ConfigError(
                f"--keep {name}: the output already has a column '{name}' "
                f"(row, domain, prob_<label>); keep another column"
            )
    return keep


def _agreed_folder(out: Path, ctx: Any) -> Path:
    """The temporary output folder, named by rank 0 and created before any rank writes into it."""
    name = [f".{out.name}.tmp-{time.strftime('%Y%m%d%H%M%S')}" if ctx.is_main else None]
    if ctx.world_size > 1:
        dist.broadcast_object_list(name, src=0)
    folder = out.parent / str(name[0])
    if ctx.is_main:
        folder.mkdir(parents=True)
    if ctx.world_size > 1:
        dist.barrier()
    return folder


def _total(value: int, ctx: Any) -> int:
    tensor = torch.tensor([value], dtype=torch.int64, device=ctx.device)
    if ctx.world_size > 1:
        dist.all_reduce(tensor)
    return int(tensor.item())


def predict_run(
    run_dir: str | Path,
    out: str | Path,
    data: str | Path | None = None,
    split: str = "test",
    keep: list[str] | None = None,
    checkpoint: str = "latest",
    overwrite: bool = False,
    row_group_rows: int = 65_536,
    rows_per_file: int = 5_000_000,
) -> dict[str, Any]:
    """Score every row of ``split`` of ``data`` (default: the run's ``data.path``; or a dataset whose spec
    only grew the run's tables, e.g. tomorrow's candidates: see :meth:`Evaluator.load
    <torchrec_mdr.training.evaluate.Evaluator.load>`, also for the new ids' rows) with the run's
    ``checkpoint`` (``latest``, ``best`` or ``step-N``) and write the parquet parts described in the
    module docstring into ``out``; returns the manifest (also written as ``out/predict.json``). A
    collective: every rank calls it (one process or torchrun)."""
    from torchrec_mdr.training.evaluate import Evaluator, run_config
    from torchrec_mdr.training.warm_start import grown_record

    run_dir, out = Path(run_dir), Path(out)
    config = run_config(run_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (pass --overwrite to replace it)")
    if config.task != "ranking":
        raise TrainingError(f"mdr predict scores ranking runs; {run_dir} is a task = '{config.task}' run")
    # no dataloader workers: a rank's batches then follow its slice's file order, which KeptColumns mirrors
    config = replace(config, data=replace(config.data, num_workers=0, path=Path(data or config.data.path)))
    evaluator = Evaluator(config, run_dir)
    spec, ctx = evaluator.spec, evaluator.ctx
    if split not in spec.splits:
        raise ConfigError(f"--split {split}: {config.data.path} has splits {', '.join(spec.splits)}")
    info = evaluator.load(checkpoint)

    dataset = ParquetBatches(
        replace(config.data, shuffle=False), split, ctx.rank, ctx.world_size, shuffle=False, spec=evaluator.reader_spec
    )
    keep = keep if keep is not None else ([spec.group_column] if spec.group_column else [])
    available = open_parquet(dataset.files[0]).schema_arrow.names if dataset.files else []
    kept = KeptColumns(dataset, _output_columns(spec, keep, available))
    folder = _agreed_folder(out, ctx)
    writer = PartWriter(folder, ctx.rank, row_group_rows, rows_per_file)
    first_row, _ = slice_bounds(sum(sum(g) for g in dataset.row_groups), ctx.world_size, ctx.rank)
    bar = tqdm(
        total=dataset.rows(),
        desc=f"predict {split}" + (" (rank 0's slice)" if ctx.world_size > 1 else ""),
        unit="row",
        unit_scale=True,
        disable=not ctx.is_main,
        mininterval=1.0 if sys.stderr.isatty() else 30.0,
    )
    try:
        for output in evaluator.outputs(split):  # RankingOutput
            rows = int(output.logits.shape[0])
            columns: dict[str, Any] = {
                "row": np.arange(first_row + writer.rows, first_row + writer.rows + rows, dtype=np.int64),
                "domain": output.domain.detach().cpu().numpy().astype(np.int64),
            }
            probs = torch.sigmoid(output.logits.detach().float()).cpu().numpy()
            for task, label in enumerate(spec.label_names):
                columns[f"prob_{label}"] = probs[:, task]
            table = pa.table(columns)
            if kept.columns:
                for name, column in zip(kept.columns, kept.take(rows).columns):
                    table = table.append_column(name, column)
            writer.add(table)
            bar.update(rows)
        writer.close()
        if writer.rows != dataset.rows():
            raise TrainingError(
                f"rank {ctx.rank} scored {writer.rows} rows of its slice of split '{split}', "
                f"which holds {dataset.rows()}"
            )
    except BaseException:
        bar.close()
        writer.close()
        shutil.rmtree(folder, ignore_errors=True)
        raise
    bar.close()
    total = _total(writer.rows, ctx)
    if total != spec.splits[split].rows:
        raise TrainingError(
            f"predicted {total} rows but split '{split}' of {config.data.path} has "
            f"{spec.splits[split].rows}; nothing written"
        )
    files: list[Any] = [None] * ctx.world_size  # each rank's file names
    if ctx.world_size > 1:
        dist.all_gather_object(files, writer.files)
    else:
        files = [writer.files]
    manifest: dict[str, Any] = {
        "run": str(run_dir),
        "checkpoint": {"name": checkpoint, "path": str(info.path), "step": info.step},
        "data": str(config.data.path),
        "split": split,
        "rows": total,
        "world_size": ctx.world_size,
        "columns": ["row", "domain", *(f"prob_{label}" for label in spec.label_names), *kept.columns],
        "files": sorted(name for names in files for name in names),
    }
    if evaluator.grown:  # today's data, yesterday's run (Evaluator.load)
        manifest["grown_tables"] = grown_record(evaluator.grown)
    if ctx.is_main:
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if out.exists():  # --overwrite
            shutil.rmtree(out)
        folder.rename(out)
        print(
            f"wrote {total:,} predictions of split '{split}' ({len(manifest['files'])} files) to {out} "
            f"with checkpoint {info.path.name}"
        )
    if ctx.world_size > 1:
        dist.barrier()
    return manifest
