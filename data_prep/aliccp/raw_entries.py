"""Raw input: feature lists (``field\\x02id\\x03value`` entries joined by ``\\x01``) -> entries, with
vectorised string kernels and errors naming the line; per-field first ids, top-valued bags and the id
encoding."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_prep.aliccp.options import ABSENT, FIRST_ID, UNKNOWN
from torchrec_mdr.data.errors import DataError


@dataclass
class Entries:
    """The parsed feature lists of one block: one element per ``field\\x02id\\x03value`` entry."""

    row: np.ndarray  # int64 row within the block, ascending
    field: np.ndarray  # int64 index into the requested fields, -1 for any other field
    fid: np.ndarray  # int64 raw feature id
    value: np.ndarray  # float64 value
    per_row: np.ndarray  # int64 entries per row (all fields)


def _malformed(path: Path, line: int, entry: str, what: str) -> DataError:
    return DataError(
        f"malformed feature entry {entry!r}: {what} (expected field_id\\x02feature_id\\x03value "
        "entries joined by \\x01)",
        file=path,
        column="feature_list",
        row=line,
    )


def parse_feature_lists(lists: pa.Array, fields: Sequence[str], path: Path, first_line: int) -> Entries:
    """Split a block of feature lists into entries with vectorised pyarrow string kernels.

    ``first_line`` is the file line of the block's first row (for error messages). An empty list
    has no entries; an empty entry inside a non-empty list, a missing separator, a non-integer
    feature id or a non-numeric value raises :class:`DataError` naming the line.
    """
    entries = pc.split_pattern(lists, "\x01")
    flat = pc.list_flatten(entries)
    parent = pc.list_parent_indices(entries).to_numpy().astype(np.int64)
    empty = pc.equal(flat, "").to_numpy(zero_copy_only=False)
    if empty.any():
        list_empty = pc.equal(lists, "").to_numpy(zero_copy_only=False)
        bad = np.flatnonzero(empty & ~list_empty[parent])
        if bad.size:
            raise _malformed(path, first_line + int(parent[bad[0]]), "", "empty entry")
        keep = pa.array(~empty)
        flat, parent = flat.filter(keep), parent[~empty]
    per_row = np.bincount(parent, minlength=len(lists)).astype(np.int64)

    def split_two(values: pa.Array, separator: str, what: str) -> tuple[pa.Array, pa.Array]:
        parts = pc.split_pattern(values, separator, max_splits=1)
        bad = np.flatnonzero(pc.list_value_length(parts).to_numpy(zero_copy_only=False) != 2)
        if bad.size:
            i = int(bad[0])
            raise _malformed(path, first_line + int(parent[i]), flat[i].as_py(), what)
        return pc.list_element(parts, 0), pc.list_element(parts, 1)

    field_text, rest = split_two(flat, "\x02", "no \\x02 after the field id")
    fid_text, value_text = split_two(rest, "\x03", "no \\x03 between feature id and value")
    digits = pc.utf8_is_digit(fid_text).to_numpy(zero_copy_only=False)
    if not digits.all():
        i = int(np.flatnonzero(~digits)[0])
        raise _malformed(path, first_line + int(parent[i]), flat[i].as_py(), "the feature id is not an integer")
    try:
        fid = pc.cast(fid_text, pa.int64()).to_numpy()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise DataError("a feature id does not fit in 64 bits", file=path, column="feature_list") from None
    try:
        value = pc.cast(value_text, pa.float64()).to_numpy()
    except pa.ArrowInvalid:
        number = r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^[-+]?(nan|inf|infinity)$"
        ok = pc.match_substring_regex(value_text, number, ignore_case=True).to_numpy(zero_copy_only=False)
        i = int(np.flatnonzero(~ok)[0]) if (~ok).any() else 0
        raise _malformed(path, first_line + int(parent[i]), flat[i].as_py(), "the value is not a number") from None
    field_index = pc.index_in(field_text, value_set=pa.array(list(fields), pa.string()))
    field_index = field_index.fill_null(-1).to_numpy().astype(np.int64)
    return Entries(row=parent, field=field_index, fid=fid, value=value, per_row=per_row)


def first_per_row(rows: np.ndarray, values: np.ndarray, n: int, fill: int = -1) -> tuple[np.ndarray, int]:
    """``[n]`` first value of each row (``fill`` where none) and the number of repeated entries dropped.

    ``rows`` must be ascending (entries in file order).
    """
    out = np.full(n, fill, dtype=np.int64)
    if rows.size == 0:
        return out, 0
    first = np.ones(rows.size, dtype=bool)
    first[1:] = rows[1:] != rows[:-1]
    out[rows[first]] = values[first]
    return out, int(rows.size - first.sum())


def top_by_value(
    rows: np.ndarray, ids: np.ndarray, values: np.ndarray, n: int, cap: int
) -> tuple[np.ndarray, np.ndarray]:
    """CSR bags of at most ``cap`` ids per row, largest value first (ties in file order)."""
    order = np.lexsort((-values, rows))
    rows, ids = rows[order], ids[order]
    counts = np.bincount(rows, minlength=n).astype(np.int64)
    starts = np.cumsum(counts) - counts
    rank = np.arange(rows.size, dtype=np.int64) - np.repeat(starts, counts)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.minimum(counts, cap), out=offsets[1:])
    return offsets, ids[rank < cap]


def encode(raw: np.ndarray, vocabulary: np.ndarray) -> np.ndarray:
    """Raw ids -> ``ABSENT`` (raw < 0), ``UNKNOWN`` (not in the vocabulary) or ``FIRST_ID + rank``."""
    if vocabulary.size == 0:
        return np.where(raw < 0, ABSENT, UNKNOWN).astype(np.int64)
    position = np.minimum(np.searchsorted(vocabulary, raw), vocabulary.size - 1)
    found = vocabulary[position] == raw
    return np.where(raw < 0, ABSENT, np.where(found, position + FIRST_ID, UNKNOWN)).astype(np.int64)
