"""Write a prepared dataset: parquet splits with sensible row groups plus ``spec.json``.

Every converter ends in :class:`DatasetWriter`. It

* checks each chunk against the declared columns (names, no missing column) and casts it to the
  canonical parquet types of the batch contract (``int64`` ids, ``list<int64>`` sequences,
  ``float32`` dense, ``int8`` labels);
* buffers rows so that row groups have ``row_group_size`` rows whatever the chunk size, and rolls
  over to a new part file every ``rows_per_file`` rows;
* counts rows and positives per split and domain, and the largest id per embedded column (the
  cardinality of columns declared without one);
* writes into a temporary folder that replaces ``out_dir`` only when :meth:`close` succeeds, so a
  crash or a Ctrl-C never leaves a half-written dataset that looks complete.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Mapping, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from torchrec_mdr.data.spec import EMBEDDED_KINDS, ColumnSpec, DatasetSpec, SplitStats

ARROW_TYPES = {
    "id": pa.int64(),
    "domain": pa.int64(),
    "group": pa.int64(),
    "session": pa.int64(),
    "multi_id": pa.list_(pa.int64()),
    "sequence": pa.list_(pa.int64()),
    "dense": pa.float32(),
    "label": pa.int8(),
}


def list_array(offsets: np.ndarray, values: np.ndarray) -> pa.ListArray:
    """A ``list<int64>`` array from CSR offsets (length rows + 1) and flat values."""
    return pa.ListArray.from_arrays(
        pa.array(np.asarray(offsets, dtype=np.int32)), pa.array(np.asarray(values, dtype=np.int64))
    )


def _as_arrow(values: object) -> pa.Array | pa.ChunkedArray:
    return values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values)


def arrow_schema(columns: list[ColumnSpec]) -> pa.Schema:
    return pa.schema([pa.field(c.name, ARROW_TYPES[c.kind], nullable=False) for c in columns])


class DatasetWriter:
    """Streams chunks of rows into ``out_dir/<split>/part-NNNNN.parquet`` and writes the spec."""

    def __init__(
        self,
        out_dir: str | Path,
        name: str,
        columns: list[ColumnSpec],
        domain_names: list[str],
        source: str = "",
        row_group_size: int = 65_536,
        rows_per_file: int = 5_000_000,
        overwrite: bool = False,
        notes: Mapping[str, str] | None = None,
    ) -> None:
        self.out_dir = Path(out_dir)
        if self.out_dir.exists() and not overwrite:
            raise FileExistsError(f"{self.out_dir} already exists (pass --overwrite to replace it)")
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.out_dir.name}.", dir=self.out_dir.parent))
        self.name = name
        self.columns = list(columns)
        self.domain_names = list(domain_names)
        self.source = source
        self.notes = dict(notes or {})
        self.row_group_size = row_group_size
        self.rows_per_file = rows_per_file
        self.schema = arrow_schema(self.columns)
        self._labels = [c.name for c in self.columns if c.kind == "label"]
        self._domain = next(c.name for c in self.columns if c.kind == "domain")
        self._embedded = [c for c in self.columns if c.kind in EMBEDDED_KINDS]
        self._max_id = {c.name: -1 for c in self._embedded}
        self._buffers: dict[str, list[pa.Table]] = {}
        self._buffered: dict[str, int] = {}
        self._writers: dict[str, pq.ParquetWriter] = {}
        self._file_rows: dict[str, int] = {}
        self._stats: dict[str, SplitStats] = {}
        self._closed = False

    # ------------------------------------------------------------------ writing
    def write(self, split: str, chunk: Mapping[str, object] | pa.Table) -> None:
        """Append rows to ``split``. ``chunk`` maps every column name to a numpy or arrow array."""
        table = self._to_table(chunk)
        self._split_stats(split)  # an empty split is still a split of the dataset
        if table.num_rows == 0:
            return
        self._count(split, table)
        self._buffers.setdefault(split, []).append(table)
        self._buffered[split] = self._buffered.get(split, 0) + table.num_rows
        while self._buffered[split] >= self.row_group_size:
            self._flush(split, self.row_group_size)

    def set_oracle_auc(self, split: str, oracle_auc: Mapping[str, float]) -> None:
        self._split_stats(split).oracle_auc = {k: float(v) for k, v in oracle_auc.items()}

    def set_ceilings(self, split: str, ceilings: Mapping[str, Mapping[str, float]]) -> None:
        """AUCs of partial oracles (name -> "all" and domain names), beside the oracle AUC."""
        self._split_stats(split).ceilings = {n: {k: float(v) for k, v in aucs.items()} for n, aucs in ceilings.items()}

    def _to_table(self, chunk: Mapping[str, object] | pa.Table) -> pa.Table:
        names = chunk.column_names if isinstance(chunk, pa.Table) else list(chunk)
        missing = [c.name for c in self.columns if c.name not in names]
        extra = [n for n in names if n not in self.schema.names]
        if missing or extra:
            raise ValueError(f"chunk does not match the declared columns: missing {missing}, unexpected {extra}")
        arrays = [_as_arrow(chunk[c.name]).cast(f.type) for c, f in zip(self.columns, self.schema)]
        return pa.Table.from_arrays(arrays, schema=self.schema)

    def _split_stats(self, split: str) -> SplitStats:
        if split not in self._stats:
            d = len(self.domain_names)
            self._stats[split] = SplitStats(
                files=[],
                rows=0,
                rows_per_domain=[0] * d,
                positives_per_domain={label: [0] * d for label in self._labels},
            )
        return self._stats[split]

    def _count(self, split: str, table: pa.Table) -> None:
        stats = self._split_stats(split)
        domains = table[self._domain].to_numpy()
        num_domains = len(self.domain_names)
        if domains.size and (domains.min() < 0 or domains.max() >= num_domains):
            raise ValueError(f"domain ids must lie in [0, {num_domains}); got {domains.min()}..{domains.max()}")
        stats.rows += table.num_rows
        stats.rows_per_domain = (
            np.asarray(stats.rows_per_domain) + np.bincount(domains, minlength=num_domains)
        ).tolist()
        for label in self._labels:
            positives = np.bincount(domains, weights=table[label].to_numpy(), minlength=num_domains)
            stats.positives_per_domain[label] = (
                np.asarray(stats.positives_per_domain[label]) + positives.astype(np.int64)
            ).tolist()
        for c in self._embedded:
            column = table[c.name]
            if c.kind != "id":
                column = pa.chunked_array([chunk.flatten() for chunk in column.chunks], pa.int64())
            if len(column):
                largest = pc.max(column).as_py()
                if largest is not None:
                    self._max_id[c.name] = max(self._max_id[c.name], int(largest))

    def _flush(self, split: str, rows: int | None = None) -> None:
        pending = pa.concat_tables(self._buffers.get(split, []))
        if pending.num_rows == 0:
            return
        rows = pending.num_rows if rows is None else rows
        out, rest = pending.slice(0, rows), pending.slice(rows)
        self._buffers[split] = [rest] if rest.num_rows else []
        self._buffered[split] = rest.num_rows
        writer = self._writers.get(split)
        if writer is None or self._file_rows[split] >= self.rows_per_file:
            if writer is not None:
                writer.close()
            stats = self._split_stats(split)
            relative = f"{split}/part-{len(stats.files):05d}.parquet"
            (self._tmp / split).mkdir(exist_ok=True)
            writer = pq.ParquetWriter(self._tmp / relative, self.schema, compression="snappy")
            self._writers[split] = writer
            self._file_rows[split] = 0
            stats.files.append(relative)
        writer.write_table(out, row_group_size=self.row_group_size)
        self._file_rows[split] += out.num_rows

    # ------------------------------------------------------------------ finishing
    def close(self) -> DatasetSpec:
        """Flush, write ``spec.json`` and move the dataset into place. Returns the spec."""
        for split in list(self._buffers):
            self._flush(split)
        for writer in self._writers.values():
            writer.close()
        columns = [
            replace(c, cardinality=max(self._max_id[c.name] + 1, 1))
            if c.kind in EMBEDDED_KINDS and c.cardinality is None
            else c
            for c in self.columns
        ]
        columns = _share_table_sizes(columns)
        spec = DatasetSpec(
            name=self.name,
            columns=columns,
            domain_names=self.domain_names,
            splits=dict(self._stats),
            source=self.source,
            notes=self.notes,
        )
        spec.validate()
        spec.save(self._tmp)
        if self.out_dir.exists():
            shutil.rmtree(self.out_dir)
        self._tmp.replace(self.out_dir)
        self._closed = True
        return spec

    def abort(self) -> None:
        for writer in self._writers.values():
            try:
                writer.close()
            except Exception:  # noqa: BLE001 - best effort while already failing
                pass
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._closed:
            self.close()


def _share_table_sizes(columns: list[ColumnSpec]) -> list[ColumnSpec]:
    """Columns sharing a table get the largest cardinality any of them has."""
    sizes: dict[str, int] = {}
    for c in columns:
        if c.kind in EMBEDDED_KINDS:
            sizes[c.table_name] = max(sizes.get(c.table_name, 0), cast(int, c.cardinality))  # embedded: has one
    return [replace(c, cardinality=sizes[c.table_name]) if c.kind in EMBEDDED_KINDS else c for c in columns]
