"""The reader: exact contents, work split across ranks and workers, shuffling, truncation, oov policy."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from helpers import TOY_SESSION_BASE, write_toy
from torchrec_mdr.data.errors import DataError
from torchrec_mdr.data.reader import ParquetBatches, ReaderConfig, make_dataloader, plan_segments, slice_bounds
from torchrec_mdr.data.spec import DatasetSpec


def read_split(path: Path, split: str) -> dict[int, dict]:
    """Reference: every row of a split straight from parquet, keyed by row_id."""
    spec = DatasetSpec.load(path)
    rows = {}
    for file in spec.files(path, split):
        for row in pq.read_table(file).to_pylist():
            rows[row["row_id"]] = row
    return rows


def batch_rows(batch) -> dict[int, dict]:
    """Rows of a Batch, keyed by row_id, with lists per key."""
    pooled = batch.sparse_features.to_dict()
    sequence = batch.sequence_features.to_dict()
    out = {}
    for i in range(batch.batch_size):
        row_id = int(pooled["row_id"].to_dense()[i][0])
        out[row_id] = {
            "item_id": sequence["item_id"].to_dense()[i].tolist(),
            "tags": pooled["tags"].to_dense()[i].tolist(),
            "hist_item_id": sequence["hist_item_id"].to_dense()[i].tolist(),
            "hist_domain": sequence["hist_domain"].to_dense()[i].tolist(),
            "domain": int(batch.domain[i]),
            "click": float(batch.labels[i, 0]),
            "group_id": int(batch.group_ids[i]),
            "dense": batch.dense_features[i].tolist(),
        }
    return out


def test_slices_partition_rows_exactly():
    for total in (0, 1, 7, 1000, 1001):
        for slices in (1, 2, 3, 4, 7):
            bounds = [slice_bounds(total, slices, i) for i in range(slices)]
            assert bounds[0][0] == 0 and bounds[-1][1] == total
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
            sizes = [hi - lo for lo, hi in bounds]
            assert max(sizes) - min(sizes) <= 1


def test_segments_cover_row_groups():
    row_groups = [[5, 5, 3], [4], [6, 1]]
    covered = []
    for index in range(3):
        for seg in plan_segments(row_groups, 3, index):
            assert seg.group_start <= seg.start < seg.stop <= seg.group_start + row_groups[seg.file][seg.row_group]
            covered += [(seg.file, r) for r in range(seg.start, seg.stop)]
    expected = [(f, r) for f, groups in enumerate(row_groups) for r in range(sum(groups))]
    assert covered == expected


def test_batches_equal_parquet_contents(toy_dataset):
    reference = read_split(toy_dataset, "train")
    seen = {}
    for batch in ParquetBatches(ReaderConfig(path=toy_dataset, batch_size=64, shuffle=False), "train"):
        seen.update(batch_rows(batch))
    assert sorted(seen) == sorted(reference)
    for row_id, row in seen.items():
        ref = reference[row_id]
        assert row["item_id"] == [ref["item_id"]]
        assert row["tags"] == ref["tags"]
        # max_length 4: the most recent (last) four behaviours are kept, oldest first
        assert row["hist_item_id"] == ref["hist_item_id"][-4:]
        assert row["hist_domain"] == ref["hist_domain"][-4:]
        assert row["domain"] == ref["domain"] and row["click"] == ref["click"]
        assert row["group_id"] == ref["group_id"]
        assert row["dense"] == pytest.approx([ref["price"], ref["age"]])


def test_two_ranks_two_workers_read_every_row_once(toy_dataset):
    spec = DatasetSpec.load(toy_dataset)
    seen = []
    per_rank = []
    for rank in range(2):
        loader = make_dataloader(
            ReaderConfig(path=toy_dataset, batch_size=37, num_workers=2, shuffle=True),
            split="train",
            rank=rank,
            world_size=2,
        )
        ids = [int(i) for b in loader for i in b.sparse_features["row_id"].values()]
        per_rank.append(len(ids))
        assert len(ids) == loader.dataset.rows()
        seen += ids
    assert len(seen) == len(set(seen)) == spec.splits["train"].rows
    assert sorted(seen) == sorted(read_split(toy_dataset, "train"))
    assert abs(per_rank[0] - per_rank[1]) <= 1


def test_shuffle_is_a_seeded_permutation(toy_dataset):
    def order(seed, epoch):
        ds = ParquetBatches(ReaderConfig(path=toy_dataset, batch_size=50, seed=seed, shuffle_buffer_rows=200), "train")
        ds.set_epoch(epoch)
        return [int(i) for b in ds for i in b.sparse_features["row_id"].values()]

    plain = [
        int(i)
        for b in ParquetBatches(ReaderConfig(path=toy_dataset, batch_size=50, shuffle=False), "train")
        for i in b.sparse_features["row_id"].values()
    ]
    assert plain == sorted(plain)
    first = order(0, 0)
    assert sorted(first) == plain and first != plain
    assert first == order(0, 0)
    assert first != order(0, 1) and first != order(1, 0)


def test_shuffled_rows_keep_their_values(toy_dataset):
    reference = read_split(toy_dataset, "train")
    for batch in ParquetBatches(ReaderConfig(path=toy_dataset, batch_size=64, shuffle_buffer_rows=300), "train"):
        for row_id, row in batch_rows(batch).items():
            assert row["hist_item_id"] == reference[row_id]["hist_item_id"][-4:]
            assert row["tags"] == reference[row_id]["tags"]
            assert row["dense"][1] == reference[row_id]["age"]


def test_drop_last_and_batch_sizes(toy_dataset):
    sizes = [b.batch_size for b in ParquetBatches(ReaderConfig(path=toy_dataset, batch_size=300, shuffle=False))]
    assert sizes == [300, 300, 200]
    sizes = [b.batch_size for b in ParquetBatches(ReaderConfig(path=toy_dataset, batch_size=300, drop_last=True))]
    assert sizes == [300, 300]


def test_oov_ids_are_hashed_or_rejected(tmp_path):
    hashed = write_toy(tmp_path / "hash", max_item=80, oov="hash")
    reference = read_split(hashed, "train")
    assert max(r["item_id"] for r in reference.values()) >= 50
    for batch in ParquetBatches(ReaderConfig(path=hashed, batch_size=100, shuffle=False)):
        for row_id, row in batch_rows(batch).items():
            assert row["item_id"] == [reference[row_id]["item_id"] % 50]
            assert row["hist_item_id"] == [v % 50 for v in reference[row_id]["hist_item_id"][-4:]]
    rejected = write_toy(tmp_path / "reject", max_item=80, oov="reject")
    with pytest.raises(DataError, match=r"column 'item_id', row \d+: id \d+ is >= the table size 50"):
        ParquetBatches(ReaderConfig(path=rejected))


def test_batch_moves_and_pins(toy_dataset):
    batch = next(iter(ParquetBatches(ReaderConfig(path=toy_dataset, batch_size=16))))
    moved = batch.to(torch.device("cpu"))
    assert torch.equal(moved.sparse_features.values(), batch.sparse_features.values())
    assert moved.batch_size == 16 and moved.labels.shape == (16, 1) and moved.dense_features.shape == (16, 2)
    # item_id shares its table with hist_item_id, so it travels unpooled with the sequences
    assert moved.sparse_features.keys() == ["row_id", "tags"]
    assert moved.sequence_features.keys() == ["item_id", "hist_item_id", "hist_domain"]
    lengths = moved.sequence_features.length_per_key()
    assert lengths[0] == 16 and lengths[1] == lengths[2]  # the fields of a group are aligned
    if torch.cuda.is_available():  # pragma: no cover - GPU machines only
        pinned = batch.pin_memory()
        assert pinned.dense_features.is_pinned()
        on_gpu = pinned.to(torch.device("cuda"), non_blocking=True)
        on_gpu.record_stream(torch.cuda.current_stream())
        assert on_gpu.sparse_features.values().is_cuda


# --------------------------------------------------------------------------- session keys


@pytest.mark.parametrize("num_workers", [0, 1])  # in process (Batch) and through a worker (PackedBatch)
def test_session_ids_equal_the_parquet_column(tmp_path, num_workers):
    data = write_toy(tmp_path / "toy", session=True)
    spec = DatasetSpec.load(data)
    assert spec.session_column == "session_id" and spec.group_column == "group_id"
    reference = read_split(data, "train")
    assert min(row["session_id"] for row in reference.values()) == TOY_SESSION_BASE  # above 2**40
    config = ReaderConfig(path=data, batch_size=37, shuffle=True, shuffle_buffer_rows=200, num_workers=num_workers)
    seen = {}
    for batch in make_dataloader(config, "train", pin_memory=False):
        assert batch.session_ids.dtype == torch.int64 and batch.session_ids.shape == (batch.batch_size,)
        row_ids = batch.sparse_features["row_id"].values().tolist()
        seen.update(zip(row_ids, batch.session_ids.tolist()))
        # the other per-row tensors stay aligned with the session key after shuffling
        assert batch.group_ids.tolist() == [reference[r]["group_id"] for r in row_ids]
    assert sorted(seen) == sorted(reference)
    assert seen == {row_id: row["session_id"] for row_id, row in reference.items()}


def test_session_ids_are_zeros_without_a_session_column(toy_dataset):
    assert DatasetSpec.load(toy_dataset).session_column is None
    for batch in ParquetBatches(ReaderConfig(path=toy_dataset, batch_size=300, shuffle=False)):
        assert torch.equal(batch.session_ids, torch.zeros(batch.batch_size, dtype=torch.int64))


def test_batch_carries_session_ids(tmp_path):
    data = write_toy(tmp_path / "toy", session=True)
    batch = next(iter(ParquetBatches(ReaderConfig(path=data, batch_size=16, shuffle=False))))
    expected = TOY_SESSION_BASE + torch.arange(16) // 3
    assert torch.equal(batch.session_ids, expected)
    assert torch.equal(batch.to(torch.device("cpu")).session_ids, expected)
    if torch.cuda.is_available():  # pragma: no cover - GPU machines only
        pinned = batch.pin_memory()
        assert pinned.session_ids.is_pinned()
        on_gpu = pinned.to(torch.device("cuda"), non_blocking=True)
        on_gpu.record_stream(torch.cuda.current_stream())
        assert torch.equal(on_gpu.session_ids.cpu(), expected)
