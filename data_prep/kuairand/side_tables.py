"""The user and video feature tables, read into arrays indexed by the encoded id: categorical codes,
``log1p`` dense values, the tag bags and the upload day."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_prep.kuairand.files import stream_checked
from data_prep.kuairand.options import (
    MISSING_TEXT,
    UNKNOWN,
    USER_CATEGORICAL,
    USER_DENSE,
    VIDEO_CATEGORICAL,
    VIDEO_DENSE,
)


def encode_text(values: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, int]:
    """Categorical text -> codes ``1..n`` in sorted order, ``0`` for missing ('', 'nan', ...); and n."""
    text = pc.utf8_trim_whitespace(pc.cast(values, pa.string()).fill_null(""))
    missing = pc.is_in(pc.utf8_lower(text), value_set=pa.array(MISSING_TEXT)).to_numpy(zero_copy_only=False)
    vocabulary = pc.unique(text.filter(pa.array(~missing)))
    vocabulary = pc.take(vocabulary, pc.sort_indices(vocabulary))
    codes = pc.index_in(text, value_set=vocabulary).fill_null(-1).to_numpy() + 1
    codes = np.where(missing, UNKNOWN, codes).astype(np.int64)
    return codes, len(vocabulary)


def log1p_dense(values: pa.Array | pa.ChunkedArray, scale: float = 1.0) -> np.ndarray:
    """``log1p(max(x * scale, 0))`` as float32, 0 for missing values."""
    x = pc.cast(values, pa.float64()).fill_null(0.0).to_numpy(zero_copy_only=False)
    x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    return np.log1p(np.maximum(x * scale, 0.0)).astype(np.float32)


@dataclass
class SideTable:
    """Features indexed by an encoded id (row 0 = unknown): ids, dense values, CSR bags."""

    ids: dict[str, np.ndarray]
    cardinality: dict[str, int]
    dense: dict[str, np.ndarray]
    bag_offsets: np.ndarray | None = None
    bag_values: np.ndarray | None = None
    matched: int = 0  # ids of the logs found in the table


def _read_table(
    path: Path, types: dict[str, pa.DataType], block_size: int, keep_ids: np.ndarray | None = None
) -> pa.Table:
    """Read a side table (streamed), keeping only rows whose first column is in ``keep_ids``."""
    key = next(iter(types))
    batches = []
    value_set = pa.array(keep_ids) if keep_ids is not None else None
    for batch, _ in stream_checked(path, types, block_size):
        if value_set is not None:
            batch = batch.filter(pc.is_in(batch[key], value_set=value_set))
        batches.append(batch)
    table = pa.Table.from_batches(batches, schema=batches[0].schema) if batches else None
    if table is None:
        return pa.table({name: pa.array([], tp) for name, tp in types.items()})
    ids = table[key].to_numpy()
    _, first = np.unique(ids, return_index=True)  # a repeated id: the first line wins
    return table.take(pa.array(np.sort(first)))


def user_table(path: Path, log_users: np.ndarray, block_size: int) -> tuple[SideTable, np.ndarray]:
    """User features indexed by the encoded user id, and the user vocabulary.

    The vocabulary is the sorted union of the log's and the table's users (encoded = position + 1).
    """
    types = {
        "user_id": pa.int64(),
        **{c: pa.string() for c in USER_CATEGORICAL},
        **{c: pa.float64() for c in USER_DENSE},
    }
    table = _read_table(path, types, block_size)
    table_users = table["user_id"].to_numpy()
    vocabulary = np.union1d(log_users, table_users)
    rows = np.searchsorted(vocabulary, table_users) + 1
    size = vocabulary.size + 1
    side = SideTable(ids={}, cardinality={}, dense={}, matched=int(np.isin(log_users, table_users).sum()))
    for column in USER_CATEGORICAL:
        codes, n = encode_text(table[column])
        side.ids[column] = _scatter(rows, codes, size, np.int64)
        side.cardinality[column] = n + 1
    for column in USER_DENSE:
        side.dense[column] = _scatter(rows, log1p_dense(table[column]), size, np.float32)
    return side, vocabulary


def video_table(path: Path, vocabulary: np.ndarray, block_size: int) -> tuple[SideTable, np.ndarray]:
    """Video features indexed by the encoded video id, and the upload day (days since 1970, -1 unknown)."""
    types = {
        "video_id": pa.int64(),
        "author_id": pa.int64(),
        **{c: pa.string() for c in VIDEO_CATEGORICAL},
        "upload_dt": pa.string(),
        **{c: pa.float64() for c in VIDEO_DENSE},
        "tag": pa.string(),
    }
    table = _read_table(path, types, block_size, keep_ids=vocabulary)
    rows = np.searchsorted(vocabulary, table["video_id"].to_numpy()) + 1
    size = vocabulary.size + 1
    side = SideTable(ids={}, cardinality={}, dense={}, matched=table.num_rows)
    authors = table["author_id"]
    author_vocabulary = np.unique(pc.drop_null(authors).to_numpy())
    author_codes = np.searchsorted(author_vocabulary, authors.fill_null(0).to_numpy()) + 1
    side.ids["author_id"] = _scatter(
        rows, np.where(authors.is_null().to_numpy(zero_copy_only=False), UNKNOWN, author_codes), size, np.int64
    )
    side.cardinality["author_id"] = author_vocabulary.size + 1
    for column in VIDEO_CATEGORICAL:
        codes, n = encode_text(table[column])
        side.ids[column] = _scatter(rows, codes, size, np.int64)
        side.cardinality[column] = n + 1
    side.dense["video_duration"] = _scatter(rows, log1p_dense(table["video_duration"], 1e-3), size, np.float32)
    for column in ("server_width", "server_height"):
        side.dense[column] = _scatter(rows, log1p_dense(table[column]), size, np.float32)
    upload = pc.strptime(pc.utf8_trim_whitespace(table["upload_dt"]), format="%Y-%m-%d", unit="s", error_is_null=True)
    days = pc.cast(upload, pa.int64()).fill_null(-1).to_numpy() // 86_400  # unknown -> -1
    upload_day = _scatter(rows, days, size, np.int64, fill=-1)
    # Tags: comma-separated tokens -> codes 1..n; a video without tags (or unknown) -> [0].
    tags = pc.split_pattern(pc.fill_null(table["tag"], ""), ",")
    tokens = pc.utf8_trim_whitespace(pc.list_flatten(tags))
    parent = pc.list_parent_indices(tags).to_numpy().astype(np.int64)
    codes, n = encode_text(tokens)
    side.cardinality["tag"] = n + 1
    present = codes != UNKNOWN
    token_video = rows[parent[present]]  # the encoded video of every tag token
    order = np.argsort(token_video, kind="stable")
    token_video, token_code = token_video[order], codes[present][order]
    counts = np.bincount(token_video, minlength=size)
    offsets = np.zeros(size + 1, dtype=np.int64)
    np.cumsum(np.maximum(counts, 1), out=offsets[1:])
    values = np.full(offsets[-1], UNKNOWN, dtype=np.int64)
    rank = np.arange(token_video.size) - np.repeat(np.cumsum(counts) - counts, counts)
    values[offsets[token_video] + rank] = token_code
    side.bag_offsets, side.bag_values = offsets, values
    return side, upload_day


def _scatter(rows: np.ndarray, values: np.ndarray, size: int, dtype: type, fill: float = 0) -> np.ndarray:
    out: np.ndarray = np.full(size, fill, dtype=dtype)
    out[rows] = values
    return out
