"""Daily incremental training: consecutive days of the synthetic world, and ``train.init_from``.

* Days: day 0 is byte-for-byte the data generated before days existed (golden digests of v1 and
  v2); day K keeps the world (users, item vectors, mechanisms), adds items that take the top
  popularity ranks, and draws its rows afresh.
* Warm start (:func:`torchrec_mdr.training.warm_start`): a model warm-started from yesterday's run
  beats one trained from scratch on today's test after the same number of steps; a 2-rank run with
  managed collision warm-starts a 1-rank run (ids, rows and counts carried); a table that grew keeps
  its old rows and gets fresh new ones; a vanished feature, a shrunk table or another model config is
  one error naming it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from data_prep.synthetic import Options, convert
from data_prep.synthetic_world import World
from torchrec_mdr.data.spec import DatasetSpec


def digest(path: Path) -> str:
    """A digest of every value of every split's files (column by column)."""
    h = hashlib.sha256()
    for split in ("train", "valid", "test"):
        for file in sorted((path / split).glob("*.parquet")):
            table = pq.read_table(file)
            for name in table.column_names:
                h.update(name.encode())
                h.update(repr(table.column(name).to_pylist()).encode())
    return h.hexdigest()[:16]


def day_options(out: Path, **kwargs) -> Options:
    base = dict(out=out, rows=3000, users=200, items=1000, categories=20, seq_length=10, min_seq_length=2,
                chunk_rows=1000, version=2)
    base.update(kwargs)
    return Options(**base)


# digests of the data these options gave before ``day`` existed (commit 57495f4)
GOLDEN = {1: "36fb0e95d6a3d8e5", 2: "785d70895c438c56"}


@pytest.mark.parametrize("version", [1, 2])
def test_day_zero_is_the_data_generated_before_days_existed(tmp_path: Path, version: int) -> None:
    convert(day_options(tmp_path / "d0", version=version, day=0))
    assert digest(tmp_path / "d0") == GOLDEN[version]


def test_days_keep_the_world_add_items_and_rotate_popularity(tmp_path: Path) -> None:
    spec0 = convert(day_options(tmp_path / "d0"))
    spec2 = convert(day_options(tmp_path / "d2", day=2))
    item0 = {c.name: c.cardinality for c in spec0.columns}
    item2 = {c.name: c.cardinality for c in spec2.columns}
    # 5% of the 50 items per category (2 per category and day) on each of 2 days: 80 new ids
    assert item0["item_id"] == 1000 and item2["item_id"] == item2["hist_item_id"] == 1080
    assert {k: v for k, v in item0.items() if "item" not in k} == {k: v for k, v in item2.items() if "item" not in k}
    items = pq.read_table(sorted((tmp_path / "d2" / "train").glob("*.parquet"))[0]).column("item_id").to_numpy()
    assert items.max() >= 1000 and (items >= 1000).mean() > 0.1  # the new items lead the popularity ranks
    assert digest(tmp_path / "d2") != digest(tmp_path / "d0")
    world0, world2 = World(day_options(tmp_path / "x")), World(day_options(tmp_path / "x", day=2))
    ids = np.arange(1000)
    assert np.array_equal(world0.item_vectors(ids), world2.item_vectors(ids))  # the same world
    assert np.array_equal(world2.popularity_rank(ids[:20]), np.full(20, 4))  # base rank 0 moved down 2 x 2
    ranks = np.arange(world2.items_per_category)
    assert np.array_equal(world2.popularity_rank(world2.rank_index(ranks) * 20 + 7), ranks)
    assert DatasetSpec.load(tmp_path / "d2").splits["test"].oracle_auc["all"] > 0.6
