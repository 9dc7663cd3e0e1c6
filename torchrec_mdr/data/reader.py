"""Streaming parquet reader: prepared dataset -> :class:`Batch`, split across ranks and workers.

Work split: the split's rows (all files, in spec order) are one global row range, cut into
``world_size * num_workers`` contiguous, near-equal slices (they differ by at most one row);
rank ``r``'s worker ``w`` reads slice ``r * num_workers + w``. Every row is read exactly once per
epoch, and every rank gets the same number of rows to within one.

Reading: a slice is read one parquet row group at a time (only the spec's columns), checked
(:func:`torchrec_mdr.data.validate.check_block`), turned into numpy arrays once, and cut into
batches by slicing; a batch that spans row groups joins the leftover of one with the next.
With ``shuffle`` the order of the slice's row groups is permuted per epoch and the rows of each
shuffle buffer (``shuffle_buffer_rows``) are permuted.

Per-feature id policies: an id at or above its table's size is mapped to ``id mod size``
(``oov = "hash"``) or rejected with a DataError (``oov = "reject"``); negative ids are always
rejected. Lists longer than ``max_length`` keep the most recent (last) ``max_length`` ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, cast

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_mdr.config import bounds, doc
from torchrec_mdr.data.batch import Batch
from torchrec_mdr.data.errors import DataError
from torchrec_mdr.data.spec import ColumnSpec, DatasetSpec
from torchrec_mdr.data.validate import check_block, check_files, open_parquet


@dataclass
class ReaderConfig:
    """How batches are read from a prepared dataset."""

    path: Path = field(default=Path("data/synthetic-v2"), metadata=doc("prepared dataset folder"))
    batch_size: int = field(default=4096, metadata=bounds(ge=1, help="rows per batch (per rank)"))
    num_workers: int = field(default=0, metadata=bounds(ge=0, help="dataloader worker processes per rank"))
    shuffle: bool = field(default=True, metadata=doc("shuffle row groups and rows within a buffer (train split)"))
    shuffle_buffer_rows: int = field(default=65_536, metadata=bounds(ge=1, help="rows permuted together"))
    drop_last: bool = field(default=False, metadata=doc("drop each slice's last partial batch"))
    seed: int = field(
        default=0,
        metadata=bounds(
            ge=0,
            help=(
                "shuffle seed (combined with the epoch): the order of the rows, nothing else; the model's random "
                "draws are train.seed's"
            ),
        ),
    )


# --------------------------------------------------------------------------- work split


@dataclass(frozen=True)
class Segment:
    """Rows ``[start, stop)`` (file-relative) of one row group of one file."""

    file: int
    row_group: int
    group_start: int  # file row where the row group starts
    start: int
    stop: int


def slice_bounds(total_rows: int, num_slices: int, index: int) -> tuple[int, int]:
    """Global row range of slice ``index`` of ``num_slices`` near-equal contiguous slices."""
    return index * total_rows // num_slices, (index + 1) * total_rows // num_slices


def plan_segments(row_groups: list[list[int]], num_slices: int, index: int) -> list[Segment]:
    """The row-group pieces of slice ``index``; ``row_groups[f]`` lists file ``f``'s row-group sizes."""
    total = sum(sum(groups) for groups in row_groups)
    lo, hi = slice_bounds(total, num_slices, index)
    segments = []
    global_start = 0
    for f, groups in enumerate(row_groups):
        file_row = 0
        for g, size in enumerate(groups):
            a, b = max(lo, global_start), min(hi, global_start + size)
            if a < b:
                offset = global_start - file_row
                segments.append(Segment(f, g, file_row, a - offset, b - offset))
            global_start += size
            file_row += size
    return segments


# --------------------------------------------------------------------------- columnar blocks


@dataclass
class Block:
    """Rows held as numpy arrays: ids [n], lists (offsets [n + 1] from 0, values), dense [n, F]..."""

    ids: dict[str, np.ndarray]
    lists: dict[str, tuple[np.ndarray, np.ndarray]]
    dense: np.ndarray
    labels: np.ndarray
    domain: np.ndarray
    group: np.ndarray
    session: np.ndarray

    def __len__(self) -> int:
        return len(self.domain)

    def slice(self, a: int, b: int) -> "Block":
        sliced: dict[int, np.ndarray] = {}  # keeps the fields of a sequence group on one offsets array
        lists = {}
        for name, (offsets, values) in self.lists.items():
            if id(offsets) not in sliced:
                sliced[id(offsets)] = offsets[a : b + 1] - offsets[a]
            lists[name] = (sliced[id(offsets)], values[offsets[a] : offsets[b]])
        return Block(
            {k: v[a:b] for k, v in self.ids.items()},
            lists,
            self.dense[a:b],
            self.labels[a:b],
            self.domain[a:b],
            self.group[a:b],
            self.session[a:b],
        )

    def take(self, rows: np.ndarray) -> "Block":
        gathers: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # fields of a sequence group share offsets
        lists = {}
        for name, (offsets, values) in self.lists.items():
            if id(offsets) not in gathers:
                gathers[id(offsets)] = _gather_rows(offsets, rows)
            new_offsets, gather = gathers[id(offsets)]
            lists[name] = (new_offsets, values[gather])
        return Block(
            {k: v[rows] for k, v in self.ids.items()},
            lists,
            self.dense[rows],
            self.labels[rows],
            self.domain[rows],
            self.group[rows],
            self.session[rows],
        )

    @staticmethod
    def concat(blocks: list["Block"]) -> "Block":
        if len(blocks) == 1:
            return blocks[0]
        joined: dict[tuple[int, ...], np.ndarray] = {}
        lists = {}
        for name in blocks[0].lists:
            parts = [b.lists[name][0] for b in blocks]
            key = tuple(id(p) for p in parts)
            if key not in joined:
                shifts = np.cumsum([0] + [p[-1] for p in parts[:-1]])
                joined[key] = np.concatenate([parts[0]] + [p[1:] + shift for p, shift in zip(parts[1:], shifts[1:])])
            lists[name] = (joined[key], np.concatenate([b.lists[name][1] for b in blocks]))
        return Block(
            {k: np.concatenate([b.ids[k] for b in blocks]) for k in blocks[0].ids},
            lists,
            np.concatenate([b.dense for b in blocks]),
            np.concatenate([b.labels for b in blocks]),
            np.concatenate([b.domain for b in blocks]),
            np.concatenate([b.group for b in blocks]),
            np.concatenate([b.session for b in blocks]),
        )


def _gather_rows(offsets: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Offsets of the list rows ``rows`` (in that order) and the value index that gathers them."""
    lengths = np.diff(offsets)[rows]
    new_offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_offsets[1:])
    gather = np.repeat(offsets[rows] - new_offsets[:-1], lengths) + np.arange(new_offsets[-1], dtype=np.int64)
    return new_offsets, gather


def _most_recent(offsets: np.ndarray, max_length: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Offsets and value index keeping the last ``max_length`` ids of each row; None if none is longer."""
    lengths = np.diff(offsets)
    if lengths.size == 0 or lengths.max() <= max_length:
        return None
    kept = np.minimum(lengths, max_length)
    new_offsets = np.zeros(len(kept) + 1, dtype=np.int64)
    np.cumsum(kept, out=new_offsets[1:])
    starts = offsets[1:] - kept
    return new_offsets, np.repeat(starts - new_offsets[:-1], kept) + np.arange(new_offsets[-1], dtype=np.int64)


def _list_arrays(array: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets from 0 as int64 [n + 1], int64 values) of a list column."""
    chunk = array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array
    offsets = np.asarray(chunk.offsets).astype(np.int64)
    values = chunk.values.to_numpy().astype(np.int64, copy=False)[offsets[0] : offsets[-1]]
    return offsets - offsets[0], values


def _in_range(column: ColumnSpec, ids: np.ndarray) -> np.ndarray:
    """Apply the oov policy: ids >= cardinality are hashed (mod) — rejects were caught by the checks."""
    if ids.size and column.oov == "hash" and ids.max() >= column.cardinality:
        return ids % column.cardinality
    return ids


def table_to_block(spec: DatasetSpec, table: pa.Table, path: Path | None = None, row_start: int = 0) -> Block:
    """Convert checked parquet rows to a Block (lists truncated to the most recent, oov ids hashed).

    The fields of a sequence group must have equal lengths in every row (DataError otherwise); they
    share one offsets array, so truncation and shuffling work out their indices once per group.
    """
    ids, lists = {}, {}
    for column in spec.columns_of("id"):
        ids[column.name] = _in_range(column, table[column.name].to_numpy().astype(np.int64, copy=False))
    for column in spec.columns_of("multi_id"):
        offsets, values = _list_arrays(table[column.name])
        kept = _most_recent(offsets, column.max_length) if column.max_length else None
        if kept is not None:
            offsets, values = kept[0], values[kept[1]]
        lists[column.name] = (offsets, _in_range(column, values))
    for group, columns in spec.sequence_groups.items():
        first = columns[0]
        offsets, _ = _list_arrays(table[first.name])
        kept = _most_recent(offsets, cast(int, first.max_length))  # ColumnSpec.validate: has one
        for column in columns:
            own_offsets, values = _list_arrays(table[column.name])
            if own_offsets is not offsets and not np.array_equal(own_offsets, offsets):
                row = int(np.flatnonzero(np.diff(own_offsets) != np.diff(offsets))[0])
                raise DataError(
                    f"sequence group '{group}': {np.diff(own_offsets)[row]} ids but field "
                    f"'{first.name}' has {np.diff(offsets)[row]}",
                    file=path,
                    column=column.name,
                    row=row_start + row,
                )
            if kept is not None:
                values = values[kept[1]]
            lists[column.name] = (offsets if kept is None else kept[0], _in_range(column, values))
    rows = table.num_rows
    dense_names = spec.dense_features
    dense = (
        np.stack([table[n].to_numpy().astype(np.float32, copy=False) for n in dense_names], axis=1)
        if dense_names
        else np.zeros((rows, 0), dtype=np.float32)
    )
    labels = np.stack([table[n].to_numpy().astype(np.float32, copy=False) for n in spec.label_names], axis=1)
    domain = table[spec.domain_column].to_numpy().astype(np.int64, copy=False)
    return Block(ids, lists, dense, labels, domain, _key(table, spec.group_column), _key(table, spec.session_column))


def _key(table: pa.Table, name: str | None) -> np.ndarray:
    """A key column (``group`` / ``session``) as int64 [rows]; zeros when the spec has none."""
    if name is None:
        return np.zeros(table.num_rows, dtype=np.int64)
    return table[name].to_numpy().astype(np.int64, copy=False)


def _jagged_arrays(block: Block, columns: list[ColumnSpec]) -> tuple[np.ndarray, np.ndarray]:
    """Key-major (values int64, lengths int32) of some columns of a block, as a KJT wants them."""
    n = len(block)
    values, lengths = [np.empty(0, dtype=np.int64)], [np.empty(0, dtype=np.int32)]
    for column in columns:
        if column.kind == "id":
            values.append(block.ids[column.name])
            lengths.append(np.ones(n, dtype=np.int32))
        else:
            offsets, vals = block.lists[column.name]
            values.append(vals)
            lengths.append(np.diff(offsets).astype(np.int32))
    return np.concatenate(values), np.concatenate(lengths)


def _jagged(block: Block, columns: list[ColumnSpec]) -> KeyedJaggedTensor:
    values, lengths = _jagged_arrays(block, columns)
    return KeyedJaggedTensor(
        keys=[c.name for c in columns],
        values=torch.from_numpy(values),
        lengths=torch.from_numpy(lengths),
        stride=len(block),
    )


@dataclass
class PackedBatch:
    """A batch as two flat tensors, for the trip from a dataloader worker to the training process.

    Sending a Batch would share a dozen tensors (one file descriptor each) and pickle two
    KeyedJaggedTensors per batch, which caps a worker pipeline well below what one process reads;
    two buffers and a few sizes cost almost nothing. :func:`unpack_batch` rebuilds the Batch as views.
    """

    integers: torch.Tensor  # pooled values, pooled lengths, sequence values, sequence lengths, domain, group, session
    floats: torch.Tensor  # dense [B, F] then labels [B, L], flattened
    sizes: tuple[int, ...]  # lengths of the seven integer parts
    rows: int


def pack_block(spec: DatasetSpec, block: Block) -> PackedBatch:
    pooled, sequence = _jagged_arrays(block, spec.pooled_features), _jagged_arrays(block, spec.sequence_features)
    parts = [pooled[0], pooled[1], sequence[0], sequence[1], block.domain, block.group, block.session]
    integers = np.concatenate([p.astype(np.int64, copy=False) for p in parts])
    floats = np.concatenate([block.dense.reshape(-1), block.labels.reshape(-1)])
    return PackedBatch(torch.from_numpy(integers), torch.from_numpy(floats), tuple(len(p) for p in parts), len(block))


def unpack_batch(spec: DatasetSpec, packed: "PackedBatch | Batch") -> Batch:
    """Batch from a PackedBatch (a Batch passes through unchanged)."""
    if isinstance(packed, Batch):
        return packed
    (pooled_values, pooled_lengths, seq_values, seq_lengths, domain, group, session) = torch.split(
        packed.integers, list(packed.sizes)
    )
    rows = packed.rows
    num_dense = len(spec.dense_features)
    dense, labels = torch.split(packed.floats, [rows * num_dense, rows * len(spec.label_names)])
    return Batch(
        dense_features=dense.view(rows, num_dense),
        sparse_features=KeyedJaggedTensor(
            [c.name for c in spec.pooled_features], pooled_values, lengths=pooled_lengths.to(torch.int32), stride=rows
        ),
        sequence_features=KeyedJaggedTensor(
            [c.name for c in spec.sequence_features], seq_values, lengths=seq_lengths.to(torch.int32), stride=rows
        ),
        domain=domain,
        labels=labels.view(rows, -1),
        group_ids=group,
        session_ids=session,
    )


def block_to_batch(spec: DatasetSpec, block: Block) -> Batch:
    return Batch(
        dense_features=torch.from_numpy(np.ascontiguousarray(block.dense)),
        sparse_features=_jagged(block, spec.pooled_features),
        sequence_features=_jagged(block, spec.sequence_features),
        domain=torch.from_numpy(np.array(block.domain, dtype=np.int64)),
        labels=torch.from_numpy(np.ascontiguousarray(block.labels)),
        group_ids=torch.from_numpy(np.array(block.group, dtype=np.int64)),
        session_ids=torch.from_numpy(np.array(block.session, dtype=np.int64)),
    )


# --------------------------------------------------------------------------- the dataset


def _row_group_sizes(path: Path) -> list[int]:
    metadata = open_parquet(path).metadata
    return [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)]


class ParquetBatches(IterableDataset):
    """Batches of one split for one rank; each dataloader worker reads its own slice.

    The constructor checks the split's files against the spec (schema, row counts, statistics),
    so bad data is reported before the first batch, i.e. before training starts.
    """

    def __init__(
        self,
        config: ReaderConfig,
        split: str = "train",
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool | None = None,
        spec: DatasetSpec | None = None,
    ) -> None:
        """``spec``: the spec to read with (default: the folder's ``spec.json``); managed-collision
        tables pass one whose id ranges follow ``input_hash_size`` (:mod:`torchrec_mdr.sparse.mch.eviction`)."""
        super().__init__()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.config = config
        self.split = split
        self.rank = rank
        self.world_size = world_size
        self.shuffle = config.shuffle if shuffle is None else shuffle
        self.folder = Path(config.path)
        self.spec = spec if spec is not None else DatasetSpec.load(self.folder)
        self.files = [path for path, _rows in check_files(self.spec, self.folder, split)]
        self.row_groups = [_row_group_sizes(path) for path in self.files]
        self.columns = [c.name for c in self.spec.columns]
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Re-seed the shuffle (call before creating the epoch's iterator)."""
        self.epoch = epoch

    def slice_index(self) -> tuple[int, int]:
        """(slice, number of slices) of the calling process: rank-major, then worker."""
        info = get_worker_info()
        workers = info.num_workers if info is not None else 1
        worker = info.id if info is not None else 0
        return self.rank * workers + worker, self.world_size * workers

    def rows(self) -> int:
        """Rows this rank reads per epoch (all its workers together)."""
        total = sum(sum(g) for g in self.row_groups)
        workers = max(self.config.num_workers, 1)
        lo, _ = slice_bounds(total, self.world_size * workers, self.rank * workers)
        _, hi = slice_bounds(total, self.world_size * workers, self.rank * workers + workers - 1)
        return hi - lo

    def num_batches(self) -> int:
        """Batches this rank yields per epoch (all its workers together)."""
        total = sum(sum(g) for g in self.row_groups)
        workers = max(self.config.num_workers, 1)
        count = 0
        for worker in range(workers):
            lo, hi = slice_bounds(total, self.world_size * workers, self.rank * workers + worker)
            rows = hi - lo
            count += rows // self.config.batch_size if self.config.drop_last else -(-rows // self.config.batch_size)
        return count

    def blocks(self) -> Iterator[Block]:
        """Checked blocks of this process's slice, in (shuffled) row-group order."""
        index, num_slices = self.slice_index()
        segments = plan_segments(self.row_groups, num_slices, index)
        rng = np.random.default_rng([self.config.seed, self.epoch, index])
        if self.shuffle:
            segments = [segments[i] for i in rng.permutation(len(segments))]
        parquet_files: dict[int, Any] = {}  # pyarrow ParquetFile (untyped)
        for segment in segments:
            parquet = parquet_files.get(segment.file)
            if parquet is None:
                parquet = parquet_files[segment.file] = open_parquet(self.files[segment.file])
            table = parquet.read_row_group(segment.row_group, columns=self.columns)
            offset = segment.start - segment.group_start
            table = table.slice(offset, segment.stop - segment.start)
            check_block(self.spec, self.files[segment.file], {n: table[n] for n in self.columns}, segment.start)
            yield table_to_block(self.spec, table, self.files[segment.file], segment.start)

    def __iter__(self) -> Iterator[Batch | PackedBatch]:
        """Batches (PackedBatch inside a dataloader worker: :func:`make_dataloader` unpacks them)."""
        info = get_worker_info()
        index, _ = self.slice_index()
        rng = np.random.default_rng([self.config.seed, self.epoch, index, 1])
        batch_size = self.config.batch_size
        buffer_rows = max(self.config.shuffle_buffer_rows, batch_size) if self.shuffle else batch_size
        pending: list[Block] = []
        pending_rows = 0
        in_worker = info is not None
        if in_worker:
            torch.set_num_threads(1)
        emit = (lambda b: pack_block(self.spec, b)) if in_worker else (lambda b: block_to_batch(self.spec, b))
        for block in self.blocks():
            pending.append(block)
            pending_rows += len(block)
            if pending_rows < buffer_rows:
                continue
            merged = Block.concat(pending)
            if self.shuffle:
                merged = merged.take(rng.permutation(len(merged)))
            full = len(merged) // batch_size * batch_size
            for a in range(0, full, batch_size):
                yield emit(merged.slice(a, a + batch_size))
            rest = merged.slice(full, len(merged))
            pending, pending_rows = ([rest], len(rest)) if len(rest) else ([], 0)
        if pending_rows:
            merged = Block.concat(pending)
            if self.shuffle:
                merged = merged.take(rng.permutation(len(merged)))
            for a in range(0, len(merged), batch_size):
                if a + batch_size > len(merged) and self.config.drop_last:
                    break
                yield emit(merged.slice(a, min(a + batch_size, len(merged))))


class BatchLoader(DataLoader):
    """A DataLoader that unpacks the workers' :class:`PackedBatch` into :class:`Batch` in this process."""

    dataset: ParquetBatches

    def __iter__(self) -> Iterator[Batch]:  # type: ignore[override]
        spec = self.dataset.spec
        for item in super().__iter__():
            yield unpack_batch(spec, item)


def make_dataloader(
    config: ReaderConfig,
    split: str = "train",
    rank: int = 0,
    world_size: int = 1,
    shuffle: bool | None = None,
    pin_memory: bool | None = None,
    spec: DatasetSpec | None = None,
) -> BatchLoader:
    """A DataLoader over :class:`ParquetBatches` (batches are made in the dataset: ``batch_size=None``)."""
    dataset = ParquetBatches(config, split=split, rank=rank, world_size=world_size, shuffle=shuffle, spec=spec)
    pin = torch.cuda.is_available() if pin_memory is None else pin_memory
    return BatchLoader(
        dataset,
        batch_size=None,
        num_workers=config.num_workers,
        pin_memory=pin,
        prefetch_factor=4 if config.num_workers else None,
        persistent_workers=False,
    )
