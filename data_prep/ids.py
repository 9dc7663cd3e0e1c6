"""Raw-id helpers shared by the converters: 64-bit hashing and occurrence counting.

* Hashing: :func:`splitmix64` (the splitmix64 finaliser, wrapping uint64 arithmetic),
  :func:`string_hash` (a vectorised 64-bit hash of arrow strings) and :func:`unit_interval`
  (hashes to floats in [0, 1)): deterministic across runs, platforms and chunkings, so that a split
  or a partition chosen by hash is reproducible. ``data_prep/synthetic.py`` still carries its own
  identical ``_splitmix64`` (tests/test_data_prep_ids.py checks that they agree).
* Counting: :class:`IdCounter` (sparse: sorted distinct ids and counts, memory bounded by the
  number of distinct ids; for ids of unknown range) and :class:`DenseIdCounter` (an int64 array
  indexed by the id; for small non-negative ids, e.g. re-encoded dataset ids).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

NO_SEED = np.uint64(0)  # string_hash's default seed

# --------------------------------------------------------------------------- hashing


def splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on uint64 (wrapping arithmetic); other integer dtypes are cast to uint64 first."""
    x = x.astype(np.uint64, copy=False)
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def string_hash(array: pa.Array | pa.ChunkedArray, seed: np.uint64 = NO_SEED) -> np.ndarray:
    """A deterministic 64-bit hash (uint64) of every string, vectorised over the arrow buffers.

    Polynomial over the bytes, then a splitmix64 finaliser; nulls hash like the empty string.
    """
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if not (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)):
        array = array.cast(pa.string())
    n = len(array)
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    buffers = array.buffers()
    offset_type = np.int64 if pa.types.is_large_string(array.type) else np.int32
    offsets = np.frombuffer(buffers[1], dtype=offset_type)[array.offset : array.offset + n + 1].astype(np.int64)
    data = np.frombuffer(buffers[2], dtype=np.uint8) if buffers[2] is not None else np.zeros(0, np.uint8)
    lo, hi = int(offsets[0]), int(offsets[-1])
    data = data[lo:hi].astype(np.uint64) + np.uint64(1)
    lengths = np.diff(offsets)
    longest = int(lengths.max())
    powers = np.cumprod(np.full(max(longest, 1), 0x100000001B3, dtype=np.uint64), dtype=np.uint64)
    position = np.arange(hi - lo, dtype=np.int64) - np.repeat(offsets[:-1] - lo, lengths)
    cumulative = np.zeros(hi - lo + 1, dtype=np.uint64)
    np.cumsum(data * powers[position], out=cumulative[1:])
    h = cumulative[offsets[1:] - lo] - cumulative[offsets[:-1] - lo]
    return splitmix64(h ^ seed ^ (lengths.astype(np.uint64) * np.uint64(0xD6E8FEB86659FD93)))


def unit_interval(h: np.ndarray) -> np.ndarray:
    """Map uint64 hashes to floats in [0, 1)."""
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


# --------------------------------------------------------------------------- counting


class IdCounter:
    """Occurrence counts of int64 ids, merged lazily (bounded by the number of distinct ids)."""

    def __init__(self) -> None:
        self._ids = np.zeros(0, dtype=np.int64)
        self._counts = np.zeros(0, dtype=np.int64)
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._pending_size = 0

    def add(self, ids: np.ndarray) -> None:
        ids = ids[ids >= 0]
        if ids.size:
            uniq, counts = np.unique(ids, return_counts=True)
            self._pending.append((uniq, counts))
            self._pending_size += uniq.size
            if self._pending_size > max(1 << 22, self._ids.size):
                self._merge()

    def _merge(self) -> None:
        if not self._pending:
            return
        ids = np.concatenate([self._ids] + [p[0] for p in self._pending])
        counts = np.concatenate([self._counts] + [p[1] for p in self._pending])
        self._ids, inverse = np.unique(ids, return_inverse=True)
        self._counts = np.bincount(inverse, weights=counts, minlength=self._ids.size).astype(np.int64)
        self._pending, self._pending_size = [], 0

    def vocabulary(self, min_count: int = 1) -> np.ndarray:
        """Sorted ids seen at least ``min_count`` times."""
        self._merge()
        return self._ids[self._counts >= min_count]

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        """(sorted distinct ids, their counts)."""
        self._merge()
        return self._ids, self._counts


class DenseIdCounter:
    """Counts per raw id in an int64 array indexed by the id, grown to the largest id seen."""

    def __init__(self) -> None:
        self.counts = np.zeros(0, dtype=np.int64)

    def add(self, ids: np.ndarray) -> None:
        if ids.size == 0:
            return
        counts = np.bincount(ids)
        if len(counts) > len(self.counts):
            self.counts = zero_pad(self.counts, len(counts))
        self.counts[: len(counts)] += counts


def zero_pad(values: np.ndarray, size: int) -> np.ndarray:
    """``values`` extended with zeros (False) to length ``size``."""
    if len(values) >= size:
        return values
    out = np.zeros(size, dtype=values.dtype)
    out[: len(values)] = values
    return out
