"""Raw input, pass 1: stream the skeleton and common-features files, parse each block into fixed
columns, count the train vocabularies and scenarios, and hash-partition both kinds of line to disk."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_prep.aliccp.options import (
    _VALID_SEED,
    COMMON_COLUMNS,
    COMMON_FIELDS,
    CROSS_FIELDS,
    DENSE_FIELDS,
    ITEM_FIELDS,
    MAX_DOMAINS,
    MULTI_FIELDS,
    SCENARIO_FIELD,
    SINGLE_FIELDS,
    SKELETON_COLUMNS,
    SKELETON_FIELDS,
    Options,
)
from data_prep.aliccp.raw_entries import first_per_row, parse_feature_lists, top_by_value
from data_prep.common import check_zero_one, stream_csv
from data_prep.ids import IdCounter, string_hash, unit_interval
from data_prep.partition import DiskPartitioner
from data_prep.writer import list_array
from torchrec_mdr.data.errors import DataError


def _header_lines(path: Path, first_column: str) -> int:
    """1 if the file starts with a header line (its first field is ``first_column``), else 0."""
    with open(path, "rb") as f:
        head = f.read(len(first_column) + 1)
    return int(head.rstrip(b"\r\n").split(b",")[0] == first_column.encode())


@dataclass
class RawState:
    """What pass 1 learns: vocabularies, scenario values, and counts for the notes."""

    counters: dict[str, IdCounter]
    scenarios: list[int]
    fixed_scenarios: bool
    duplicates: dict[str, int]
    other_field_entries: int = 0
    feature_num_mismatch: int = 0
    purchase_without_click: int = 0
    skeleton_rows: int = 0
    common_rows: int = 0


def _blocks(
    path: Path, columns: list[str], types: dict[str, pa.DataType], block_size: int
) -> Iterator[tuple[pa.RecordBatch, int]]:
    """Stream a raw file as record batches with the file line number of each batch's first row."""
    header = _header_lines(path, columns[0])
    names = None if header else columns
    line = header + 1
    for batch in stream_csv(path, names, types, block_size=block_size, desc=path.name):
        yield batch, line
        line += batch.num_rows


def _empty_lists(n: int) -> pa.ListArray:
    return list_array(np.zeros(n + 1, dtype=np.int64), np.zeros(0, dtype=np.int64))


def _partition_schema() -> dict[str, pa.DataType]:
    types: dict[str, pa.DataType] = {
        "_part": pa.int64(),
        "key": pa.string(),
        "is_common": pa.bool_(),
        "is_valid": pa.bool_(),
        "click": pa.int8(),
        "purchase": pa.int8(),
        "scenario": pa.int64(),
    }
    types.update({f"f{f}": pa.int64() for f in SINGLE_FIELDS})
    types.update({f"f{f}": pa.list_(pa.int64()) for f in MULTI_FIELDS})
    types.update({f"D{f}": pa.float32() for f in DENSE_FIELDS})
    return types


def _partition_table(columns: dict[str, object], n: int) -> pa.Table:
    """Fill the columns a line kind does not have (ids -1, empty bags, dense 0) and build the table."""
    arrays = []
    for name, tp in _partition_schema().items():
        value = columns.get(name)
        if value is None:
            if pa.types.is_list(tp):
                value = _empty_lists(n)
            elif tp == pa.int64():
                value = np.full(n, -1, dtype=np.int64)
            elif tp == pa.bool_():
                value = np.zeros(n, dtype=bool)
            else:  # labels (int8) and dense (float32)
                value = np.zeros(n, dtype=np.float32 if tp == pa.float32() else np.int8)
        array = value if isinstance(value, (pa.Array, pa.ChunkedArray)) else pa.array(value)
        arrays.append(array.cast(tp))
    return pa.Table.from_arrays(arrays, names=list(_partition_schema()))


def _count_vocab(state: RawState, columns: dict[str, Any], fields: Sequence[str]) -> None:
    for f in fields:
        value = columns[f"f{f}"]
        ids = pc.list_flatten(value).to_numpy() if isinstance(value, pa.Array) else value
        state.counters[f].add(ids)


def _track_scenarios(state: RawState, scenario: np.ndarray, path: Path, first_line: int) -> None:
    """Add the block's field-301 values to the known set; raise on a value outside the allowed set."""
    uniq, first = np.unique(scenario, return_index=True)
    new = [(int(i), int(v)) for v, i in zip(uniq, first) if int(v) not in state.scenarios]
    for index, value in sorted(new):
        if state.fixed_scenarios or len(state.scenarios) >= MAX_DOMAINS:
            allowed = ", ".join(str(s) for s in state.scenarios)
            source = "--scenario-ids" if state.fixed_scenarios else "the first three values seen"
            raise DataError(
                f"field 301 (the scenario) has a value {value} outside the {MAX_DOMAINS} known "
                f"scenario ids {{{allowed}}} ({source})",
                file=path,
                column="feature_list",
                row=first_line + index,
            )
        state.scenarios.append(value)


def skeleton_pass(path: Path, options: Options, state: RawState, partitioner: DiskPartitioner, count: bool) -> None:
    types = {
        "sample_id": pa.string(),
        "click": pa.int64(),
        "buy": pa.int64(),
        "common_feature_index": pa.string(),
        "feature_num": pa.int64(),
        "feature_list": pa.string(),
    }
    for batch, line in _blocks(path, SKELETON_COLUMNS, types, options.block_size_mb << 20):
        n = batch.num_rows
        click = batch["click"].to_numpy(zero_copy_only=False)
        buy = batch["buy"].to_numpy(zero_copy_only=False)
        check_zero_one(click, path, "click", line, what="label ")
        check_zero_one(buy, path, "buy", line, what="label ")
        entries = parse_feature_lists(batch["feature_list"], SKELETON_FIELDS, path, line)
        state.other_field_entries += int((entries.field < 0).sum())
        state.feature_num_mismatch += int((entries.per_row != batch["feature_num"].to_numpy()).sum())
        state.purchase_without_click += int(((buy == 1) & (click == 0)).sum())
        columns: dict[str, object] = {}
        for k, f in enumerate(SKELETON_FIELDS):
            mask = entries.field == k
            rows = entries.row[mask]
            ids, dups = first_per_row(rows, entries.fid[mask], n)
            state.duplicates[f] = state.duplicates.get(f, 0) + dups
            if f == SCENARIO_FIELD:
                missing = np.flatnonzero(ids < 0)
                if missing.size:
                    raise DataError(
                        "the sample has no field 301 (the scenario)",
                        file=path,
                        column="feature_list",
                        row=line + int(missing[0]),
                    )
                _track_scenarios(state, ids, path, line)
                columns["scenario"] = ids
            else:
                columns[f"f{f}"] = ids
            if f in DENSE_FIELDS:
                columns[f"D{f}"] = np.bincount(rows, weights=entries.value[mask], minlength=n).astype(np.float32)
        if count:
            _count_vocab(state, columns, ITEM_FIELDS + CROSS_FIELDS)
        key = batch["common_feature_index"]
        columns.update(
            _part=string_hash(key).view(np.int64), key=key, is_common=np.zeros(n, dtype=bool), click=click, purchase=buy
        )
        if count and options.valid_fraction > 0:
            columns["is_valid"] = unit_interval(string_hash(batch["sample_id"], _VALID_SEED)) < options.valid_fraction
        state.skeleton_rows += n
        partitioner.add(_partition_table(columns, n))


def common_pass(path: Path, options: Options, state: RawState, partitioner: DiskPartitioner, count: bool) -> None:
    types = {"common_feature_index": pa.string(), "feature_num": pa.int64(), "feature_list": pa.string()}
    for batch, line in _blocks(path, COMMON_COLUMNS, types, options.block_size_mb << 20):
        n = batch.num_rows
        entries = parse_feature_lists(batch["feature_list"], COMMON_FIELDS, path, line)
        state.other_field_entries += int((entries.field < 0).sum())
        state.feature_num_mismatch += int((entries.per_row != batch["feature_num"].to_numpy()).sum())
        columns: dict[str, object] = {}
        for k, f in enumerate(COMMON_FIELDS):
            mask = entries.field == k
            rows = entries.row[mask]
            if f in MULTI_FIELDS:
                offsets, ids = top_by_value(rows, entries.fid[mask], entries.value[mask], n, options.max_multi_length)
                columns[f"f{f}"] = list_array(offsets, ids)
            else:
                columns[f"f{f}"], dups = first_per_row(rows, entries.fid[mask], n)
                state.duplicates[f] = state.duplicates.get(f, 0) + dups
            if f in DENSE_FIELDS:
                columns[f"D{f}"] = np.bincount(rows, weights=entries.value[mask], minlength=n).astype(np.float32)
        if count:
            _count_vocab(state, columns, COMMON_FIELDS)
        key = batch["common_feature_index"]
        columns.update(_part=string_hash(key).view(np.int64), key=key, is_common=np.ones(n, dtype=bool))
        state.common_rows += n
        partitioner.add(_partition_table(columns, n))
