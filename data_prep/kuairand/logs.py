"""Pass 1: stream the logs, check tabs, labels and ids, count users, videos, tabs and impression
seconds, and hash-partition every line by user; the time cut points from the per-second counts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from data_prep.common import check_zero_one
from data_prep.ids import IdCounter
from data_prep.kuairand.files import stream_checked
from data_prep.kuairand.options import NUM_TABS, Options
from data_prep.partition import DiskPartitioner
from torchrec_mdr.data.errors import DataError


@dataclass
class LogState:
    users: IdCounter
    videos: IdCounter
    seconds: IdCounter  # impressions per whole second
    tabs: IdCounter
    rows: int = 0
    impressions: int = 0


def log_pass(path: Path, options: Options, state: LogState, partitioner: DiskPartitioner) -> None:
    """Stream one log into the partitioner (every line: history) and count its kept impressions."""
    label_names = list(dict.fromkeys(["is_click"] + options.labels))
    types = {
        "user_id": pa.int64(),
        "video_id": pa.int64(),
        "hourmin": pa.int64(),
        "time_ms": pa.int64(),
        "tab": pa.int64(),
        **{name: pa.int64() for name in label_names},
    }
    keep_tabs = np.asarray(options.tabs, dtype=np.int64)
    for batch, line in stream_checked(path, types, options.block_size_mb << 20):
        tab = batch["tab"].to_numpy()
        bad = np.flatnonzero((tab < 0) | (tab >= NUM_TABS))
        if bad.size:
            raise DataError(
                f"tab must lie in 0..{NUM_TABS - 1}, got {tab[bad[0]]}", file=path, column="tab", row=line + int(bad[0])
            )
        for name in label_names:
            check_zero_one(batch[name].to_numpy(), path, name, line)
        for name in ("user_id", "video_id"):
            bad = np.flatnonzero(batch[name].to_numpy() < 0)
            if bad.size:
                raise DataError("ids must be >= 0", file=path, column=name, row=line + int(bad[0]))
        kept = np.isin(tab, keep_tabs) if keep_tabs.size else np.ones(len(tab), dtype=bool)
        time_ms = batch["time_ms"].to_numpy()
        state.users.add(batch["user_id"].to_numpy())
        state.videos.add(batch["video_id"].to_numpy())
        state.seconds.add(time_ms[kept] // 1000)
        state.tabs.add(tab[kept])
        columns = {name: batch[name] for name in types}
        columns["kept"] = pa.array(kept)
        columns["seq"] = pa.array(np.arange(state.rows, state.rows + batch.num_rows, dtype=np.int64))
        partitioner.add(pa.table(columns))
        state.rows += batch.num_rows
        state.impressions += int(kept.sum())


def split_points_from_counts(values: np.ndarray, counts: np.ndarray, fractions: tuple[float, ...]) -> tuple[int, int]:
    """:func:`temporal_split_points` of ``np.repeat(values, counts)`` without expanding it."""
    order = np.argsort(values, kind="stable")
    values, counts = np.asarray(values)[order], np.asarray(counts)[order]
    cumulative = np.cumsum(counts)
    n = int(cumulative[-1])

    def value_at(index: int) -> int:
        return int(values[np.searchsorted(cumulative, index, side="right")])

    t1 = value_at(min(int(n * fractions[0]), n - 1))
    t2 = value_at(min(int(n * (fractions[0] + fractions[1])), n - 1))
    return t1, max(t1, t2)
