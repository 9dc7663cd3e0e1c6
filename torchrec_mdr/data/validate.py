"""Checks of prepared data against its spec; every failure is one DataError naming file, column, row.

Two levels:

* :func:`check_files` (run by the reader before it yields anything, i.e. before training starts):
  every file exists and is a readable parquet file; its schema has every spec column with the
  right type and nothing else; split row counts match the spec; and the parquet row-group
  statistics (min / max / nulls, written by every parquet writer) show no negative id, no id at or
  above a ``reject`` table's size, no label outside {0, 1}, no domain outside [0, num_domains) and
  no infinite dense value. A statistic that shows a problem is followed up by reading that row
  group to name the first offending row.
* :func:`check_block` (run by the reader on every block it converts, and by ``mdr data validate``
  over whole files): the same checks on the values themselves, plus NaN (which parquet statistics
  do not record).

Nulls are refused everywhere: a null value, a null list, and a null id inside a list (which
pyarrow would otherwise only report deep in a conversion). The key columns (``group``,
``session``) are otherwise checked for an integer type only: any non-null int64 is a key.
Rows are numbered from 0 within their file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from torchrec_mdr.data.errors import DataError
from torchrec_mdr.data.spec import EMBEDDED_KINDS, KEY_KINDS, ColumnSpec, DatasetSpec

LIST_KINDS = ("multi_id", "sequence")
INTEGER_KINDS = ("id", "domain") + KEY_KINDS


def expected_type_ok(column: ColumnSpec, arrow_type: pa.DataType) -> bool:
    if column.kind in LIST_KINDS:
        return (pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type)) and pa.types.is_integer(
            arrow_type.value_type
        )
    if column.kind in INTEGER_KINDS:
        return pa.types.is_integer(arrow_type)
    if column.kind == "dense":
        return pa.types.is_floating(arrow_type) or pa.types.is_integer(arrow_type)
    if column.kind == "label":
        return pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type) or pa.types.is_boolean(arrow_type)
    return False  # pragma: no cover


def open_parquet(path: Path) -> pq.ParquetFile:
    if not path.is_file():
        raise DataError("file listed in the dataset spec does not exist", file=path)
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as error:
        raise DataError(f"not a readable parquet file (truncated or another format?): {error}", file=path) from None


def check_schema(spec: DatasetSpec, path: Path, schema: pa.Schema) -> None:
    names = set(schema.names)
    for column in spec.columns:
        if column.name not in names:
            raise DataError(
                f"column is in the dataset spec but missing from the file (file has {sorted(names)})",
                file=path,
                column=column.name,
            )
        arrow_type = schema.field(column.name).type
        if not expected_type_ok(column, arrow_type):
            raise DataError(
                f"type {arrow_type} does not fit kind '{column.kind}' of the spec", file=path, column=column.name
            )
    extra = sorted(names - {c.name for c in spec.columns})
    if extra:
        raise DataError(f"the file has columns that the dataset spec does not describe: {extra}", file=path)


def _leaf_index(metadata: pq.FileMetaData, name: str) -> int:
    for i in range(metadata.num_columns):
        path = metadata.schema.column(i).path
        if path == name or path.startswith(name + "."):
            return i
    raise KeyError(name)  # pragma: no cover - schema already checked


def check_files(spec: DatasetSpec, folder: Path, split: str) -> list[tuple[Path, int]]:
    """Check one split's files (metadata and statistics only). Returns ``[(file, rows)]``."""
    files = spec.files(folder, split)
    out = []
    for path in files:
        parquet = open_parquet(path)
        check_schema(spec, path, parquet.schema_arrow)
        _check_statistics(spec, path, parquet)
        out.append((path, parquet.metadata.num_rows))
    total = sum(rows for _, rows in out)
    expected = spec.splits[split].rows
    if total != expected:
        raise DataError(
            f"split '{split}' has {total} rows in its files but the spec says {expected}", file=folder / "spec.json"
        )
    return out


def _check_statistics(spec: DatasetSpec, path: Path, parquet: pq.ParquetFile) -> None:
    metadata = parquet.metadata
    row_start = 0
    for rg in range(metadata.num_row_groups):
        group = metadata.row_group(rg)
        for column in spec.columns:
            if column.kind in KEY_KINDS:  # any int64 is a valid key
                continue
            stats = group.column(_leaf_index(metadata, column.name)).statistics
            if stats is None or not stats.has_min_max:
                continue
            low, high = stats.min, stats.max
            suspicious = (stats.null_count or 0) > 0
            if column.kind in EMBEDDED_KINDS:
                suspicious |= low < 0 or (column.oov == "reject" and high >= column.cardinality)
            elif column.kind == "label":
                suspicious |= low < 0 or high > 1
            elif column.kind == "domain":
                suspicious |= low < 0 or high >= spec.num_domains
            elif column.kind == "dense":
                suspicious |= not (np.isfinite(low) and np.isfinite(high))
            if suspicious:
                table = parquet.read_row_group(rg, columns=[column.name])
                check_block(spec, path, {column.name: table[column.name]}, row_start)
        row_start += group.num_rows


@dataclass
class _Where:
    path: Path
    row_start: int


def _fail(where: _Where, column: str, row: int, message: str) -> None:
    raise DataError(message, file=where.path, column=column, row=where.row_start + int(row))


def check_block(spec: DatasetSpec, path: Path, columns: dict[str, pa.ChunkedArray | pa.Array], row_start: int) -> None:
    """Check the values of some columns of a block of rows starting at file row ``row_start``."""
    where = _Where(path, row_start)
    for name, array in columns.items():
        column = spec.column(name)
        if array.null_count:
            mask = np.asarray(array.is_null())
            _fail(where, name, np.flatnonzero(mask)[0], "missing (null) value")
        if column.kind in KEY_KINDS:  # any non-null int64 is a valid key
            continue
        if column.kind in LIST_KINDS:
            chunks = array.chunks if isinstance(array, pa.ChunkedArray) else [array]
            offset = 0
            for chunk in chunks:
                flat_array = chunk.flatten()
                if flat_array.null_count:
                    null_at = int(np.flatnonzero(np.asarray(flat_array.is_null()))[0])
                    row, position = _list_position(chunk, null_at)
                    _fail(where, name, offset + row, f"missing (null) id at position {position} of the list")
                flat = flat_array.to_numpy()
                bad = _bad_ids(column, flat)
                if bad is not None:
                    _fail(where, name, offset + _list_position(chunk, bad)[0], _id_message(column, flat[bad]))
                offset += len(chunk)
            continue
        values = array.to_numpy()
        if column.kind == "id":
            bad = _bad_ids(column, values)
            if bad is not None:
                _fail(where, name, bad, _id_message(column, values[bad]))
        elif column.kind == "dense":
            rows = np.flatnonzero(~np.isfinite(values))
            if rows.size:
                _fail(where, name, rows[0], f"dense value {values[rows[0]]} is not finite")
        elif column.kind == "label":
            rows = np.flatnonzero((values != 0) & (values != 1))
            if rows.size:
                _fail(where, name, rows[0], f"label {values[rows[0]]} is not 0 or 1")
        elif column.kind == "domain":
            rows = np.flatnonzero((values < 0) | (values >= spec.num_domains))
            if rows.size:
                _fail(where, name, rows[0], f"domain id {values[rows[0]]} is outside [0, {spec.num_domains})")


def _list_position(chunk: pa.Array, flat_index: int) -> tuple[int, int]:
    """(row, position within the row's list) of value ``flat_index`` of ``chunk.flatten()``."""
    ends = np.cumsum(np.asarray(chunk.value_lengths().fill_null(0)))
    row = int(np.searchsorted(ends, flat_index, side="right"))
    start = int(ends[row - 1]) if row else 0
    return row, flat_index - start


def _bad_ids(column: ColumnSpec, values: np.ndarray) -> int | None:
    """Index of the first invalid id (negative, or >= cardinality under the reject policy), or None."""
    if values.size == 0:
        return None
    limit = column.cardinality if column.oov == "reject" else np.iinfo(np.int64).max
    if values.min() >= 0 and values.max() < limit:
        return None
    return int(np.flatnonzero((values < 0) | (values >= limit))[0])


def _id_message(column: ColumnSpec, value: int) -> str:
    if value < 0:
        return f"negative id {value}"
    return f"id {value} is >= the table size {column.cardinality} and the column's oov policy is 'reject'"


def validate_dataset(folder: str | Path, splits: list[str] | None = None, full: bool = True) -> DatasetSpec:
    """Check a prepared dataset: metadata always, every value when ``full`` (reads every file once)."""
    folder = Path(folder)
    spec = DatasetSpec.load(folder)
    for split in splits or list(spec.splits):
        for path, _rows in check_files(spec, folder, split):
            if not full:
                continue
            parquet = open_parquet(path)
            row_start = 0
            for batch in parquet.iter_batches(batch_size=65_536):
                check_block(spec, path, {name: batch.column(name) for name in batch.schema.names}, row_start)
                row_start += batch.num_rows
    return spec
