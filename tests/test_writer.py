"""The dataset writer: row groups, part files, counts, cardinalities, atomic output."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from helpers import toy_columns, toy_rows, write_toy
from data_prep.writer import DatasetWriter
from torchrec_mdr.data.spec import DatasetSpec


def test_row_groups_files_and_counts(tmp_path):
    path = write_toy(tmp_path / "toy", n=1000, row_group_size=128, rows_per_file=400)
    spec = DatasetSpec.load(path)
    assert spec.splits["train"].rows == 800 and spec.splits["valid"].rows == 200
    files = spec.files(path, "train")
    assert len(files) == 2  # a new part file once 400 rows are written, rounded up to row groups
    sizes = [
        pq.ParquetFile(f).metadata.row_group(g).num_rows
        for f in files
        for g in range(pq.ParquetFile(f).metadata.num_row_groups)
    ]
    assert sum(sizes) == 800 and all(s == 128 for s in sizes[:-1])
    rows = toy_rows(1000)
    domain, click = rows["domain"][:800], rows["click"][:800]
    assert spec.splits["train"].rows_per_domain == np.bincount(domain, minlength=2).tolist()
    assert spec.splits["train"].positives_per_domain["click"] == np.bincount(domain, weights=click).astype(int).tolist()


def test_cardinality_inferred_and_shared(tmp_path):
    columns = [c if c.table_name != "item" else type(c)(**{**c.__dict__, "cardinality": None}) for c in toy_columns()]
    writer = DatasetWriter(tmp_path / "d", "toy", columns, ["a", "b"])
    rows = toy_rows(500, max_item=37)
    writer.write("train", rows)
    spec = writer.close()
    expected = max(rows["item_id"].max(), max(rows["hist_item_id"].flatten().to_numpy())) + 1
    assert spec.column("item_id").cardinality == spec.column("hist_item_id").cardinality == expected
    assert spec.tables["item"] == expected


def test_failure_leaves_nothing_and_existing_output_is_kept(tmp_path):
    out = tmp_path / "d"
    with pytest.raises(RuntimeError):
        with DatasetWriter(out, "toy", toy_columns(), ["a", "b"], row_group_size=10) as writer:
            writer.write("train", toy_rows(100))
            raise RuntimeError("crash while converting")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    write_toy(out)
    with pytest.raises(FileExistsError, match="--overwrite"):
        DatasetWriter(out, "toy", toy_columns(), ["a", "b"])


def test_chunk_must_match_columns(tmp_path):
    writer = DatasetWriter(tmp_path / "d", "toy", toy_columns(), ["a", "b"])
    rows = toy_rows(10)
    del rows["price"]
    with pytest.raises(ValueError, match=r"missing \['price'\]"):
        writer.write("train", rows)
    writer.abort()
