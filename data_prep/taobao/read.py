"""Pass 1: stream UserBehavior.csv, check every line, keep the date window, count per raw id and
hash-partition the rows by user to disk."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_prep.common import first_null, stream_csv
from data_prep.ids import DenseIdCounter
from data_prep.partition import DiskPartitioner
from data_prep.taobao.options import BEHAVIORS, RAW_COLUMNS, SECONDS_PER_DAY, Options
from torchrec_mdr.data.errors import DataError

MAX_RAW_ID = 2**31 - 1  # raw ids are counted in arrays indexed by id, so they must fit int32
CSV_BLOCK_BYTES = 4 << 20  # CSV block size (pass 1 peak memory grows with it, through read-ahead)
FLUSH_ROWS = 1 << 21  # window rows gathered before counting and partitioning them (pass 1)
PARTITION_COLUMNS = ("user_id", "item_id", "category_id", "behavior", "second")


@dataclass
class RawCounts:
    """What pass 1 learns from the CSV (every count is over the rows inside the date window)."""

    user_rows: DenseIdCounter = field(default_factory=DenseIdCounter)
    user_positives: DenseIdCounter = field(default_factory=DenseIdCounter)
    item_rows: DenseIdCounter = field(default_factory=DenseIdCounter)
    category_rows: DenseIdCounter = field(default_factory=DenseIdCounter)
    rows_read: int = 0
    rows_in_window: int = 0


def _check_batch(batch: pa.RecordBatch, first_row: int, path: Path) -> np.ndarray:
    """Validate one raw batch; returns the behaviour codes (0 pv, 1 buy, 2 cart, 3 fav) as int8.

    Raises a DataError naming the column and the 1-based row of the first bad value: an empty
    field, a negative id or one beyond int32, an unknown behaviour type. The row is the line number
    when the file has no blank lines (pyarrow skips those). Malformed lines (wrong number of fields,
    text in a number) are reported by :func:`stream_csv` with the offending line's text.
    """
    for name in RAW_COLUMNS:
        row = first_null(batch.column(name))
        if row is not None:
            raise DataError("empty value", file=path, column=name, row=first_row + row)
    for name in RAW_COLUMNS[:3]:
        ids = batch.column(name).to_numpy()
        bad = (ids < 0) | (ids > MAX_RAW_ID)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError(f"id {ids[row]} is outside [0, {MAX_RAW_ID}]", file=path, column=name, row=first_row + row)
    codes = pc.index_in(batch.column("behavior_type"), value_set=pa.array(BEHAVIORS))
    row = first_null(codes)
    if row is not None:
        value = batch.column("behavior_type")[row].as_py()
        raise DataError(
            f"behavior_type {value!r} is not one of {list(BEHAVIORS)}",
            file=path,
            column="behavior_type",
            row=first_row + row,
        )
    return codes.to_numpy().astype(np.int8)


def _window_seconds(timestamps: np.ndarray, options: Options) -> np.ndarray:
    """Seconds since local midnight of ``first_date`` (negative or past the window: outside it)."""
    return timestamps - (options.first_day * SECONDS_PER_DAY - options.utc_offset_hours * 3600)


class _PendingRows:
    """Rows in the window, gathered over several small CSV blocks and counted / partitioned together.

    Small CSV blocks keep pyarrow's read-ahead queue small (it holds up to a few dozen blocks);
    gathering ~:data:`FLUSH_ROWS` rows before counting and partitioning keeps the per-id count
    arrays from being rebuilt for every block and the temporary parquet row groups large.
    """

    def __init__(self, counts: RawCounts, partitioner: DiskPartitioner) -> None:
        self.counts, self.partitioner = counts, partitioner
        self.parts: dict[str, list[np.ndarray]] = {name: [] for name in PARTITION_COLUMNS}
        self.rows = 0

    def add(self, **columns: np.ndarray) -> None:
        for name, values in columns.items():
            self.parts[name].append(values)
        self.rows += len(columns["user_id"])
        if self.rows >= FLUSH_ROWS:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        table = {name: np.concatenate(parts) for name, parts in self.parts.items()}
        self.parts = {name: [] for name in PARTITION_COLUMNS}
        self.rows = 0
        user, behavior = table["user_id"], table["behavior"]
        self.counts.rows_in_window += len(user)
        self.counts.user_rows.add(user)
        self.counts.user_positives.add(user[behavior > 0])
        self.counts.item_rows.add(table["item_id"])
        self.counts.category_rows.add(table["category_id"])
        self.partitioner.add(pa.table(table))


def read_csv(options: Options, partitioner: DiskPartitioner) -> RawCounts:
    """Pass 1: stream the CSV, validate it, drop rows outside the window, count, partition by user."""
    counts = RawCounts()
    pending = _PendingRows(counts, partitioner)
    window = options.num_days * SECONDS_PER_DAY
    types = {
        "user_id": pa.int64(),
        "item_id": pa.int64(),
        "category_id": pa.int64(),
        "behavior_type": pa.string(),
        "timestamp": pa.int64(),
    }
    batches = stream_csv(options.src, RAW_COLUMNS, types, block_size=CSV_BLOCK_BYTES, desc="taobao 1/4 read CSV")
    try:
        for batch in batches:
            behavior = _check_batch(batch, counts.rows_read + 1, options.src)
            counts.rows_read += batch.num_rows
            second = _window_seconds(batch.column("timestamp").to_numpy(), options)
            inside = (second >= 0) & (second < window)
            if inside.any():
                pending.add(
                    user_id=batch.column("user_id").to_numpy()[inside].astype(np.int32),
                    item_id=batch.column("item_id").to_numpy()[inside].astype(np.int32),
                    category_id=batch.column("category_id").to_numpy()[inside].astype(np.int32),
                    behavior=behavior[inside],
                    second=second[inside].astype(np.int32),
                )
    finally:
        batches.close()  # stop pyarrow's read-ahead at once when a bad line ends the pass early
    pending.flush()
    return counts
