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
import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from data_prep.synthetic import Options, convert
from data_prep.synthetic_world import World
from multiprocess import spawn
from tests.test_checkpoint import MANAGED_TABLES, experiment, full_state, held_rows, merge_held
from torchrec_mdr.data.spec import DatasetSpec
from torchrec_mdr.errors import TrainingError


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
    base = dict(
        out=out,
        rows=3000,
        users=200,
        items=1000,
        categories=20,
        seq_length=10,
        min_seq_length=2,
        chunk_rows=1000,
        version=2,
    )
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


# --------------------------------------------------------------------------- warm start


def small_day(path: Path, day: int, items: int = 60, **kwargs: Any) -> Path:
    """The checkpoint tests' small world (40 users, 60 items) on ``day`` (12 new items a day)."""
    if not path.exists():
        convert(
            Options(
                version=1,
                out=path,
                rows=600,
                users=40,
                items=items,
                categories=6,
                brands=10,
                seq_length=5,
                min_seq_length=0,
                day=day,
                new_items_per_day=0.2,
                **kwargs,
            )
        )
    return path


def warm(config: Any, source: Path | str, init_optimizer: bool = False) -> Any:
    return replace(config, train=replace(config.train, init_from=str(source), init_optimizer=init_optimizer))


@pytest.fixture(scope="module")
def days(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("days")
    return {"d0": small_day(root / "d0", 0), "d1": small_day(root / "d1", 1), "root": root}


@pytest.fixture(scope="module")
def yesterday(days: dict[str, Path]) -> Path:
    """An 8-step run on day 0 (no managed collision)."""
    from torchrec_mdr.training.trainer import Trainer

    run = days["root"] / "run-d0"
    Trainer(experiment(days["d0"], max_steps=8, checkpoint_every=None), run).fit()
    return run


def test_a_grown_table_keeps_its_rows_and_gets_fresh_ones(
    days: dict[str, Path], yesterday: Path, tmp_path: Path
) -> None:
    from torchrec_mdr.training.checkpoint import CheckpointManager
    from torchrec_mdr.training.evaluate import Evaluator
    from torchrec_mdr.training.trainer import Trainer

    before = Evaluator(experiment(days["d0"], max_steps=8), tmp_path / "probe-d0")
    CheckpointManager(yesterday, before.ctx).load(
        yesterday / "checkpoints" / "step-000008", before.model, before.optimizer, restore_rng=False
    )
    old = full_state(before.model)
    old_optim = before.optimizer.state_dict()["state"]
    fresh = full_state(Evaluator(experiment(days["d1"], max_steps=4), tmp_path / "probe-d1").model)
    trainer = Trainer(
        warm(experiment(days["d1"], max_steps=4, checkpoint_every=None), yesterday, True), tmp_path / "run"
    )
    new = full_state(trainer.model)
    (item,) = [k for k in new if k.endswith(".item.weight")]
    assert old[item].shape[0] == 60 and new[item].shape[0] == 72
    assert torch.equal(new[item][:60], old[item])  # yesterday's rows
    assert torch.equal(new[item][60:], fresh[item][60:])  # the new ids: a fresh run's initialisation
    for key in old:  # every other tensor is yesterday's
        if key != item:
            assert torch.equal(new[key], old[key]), key
    momentum = trainer.optimizer.state_dict()["state"][item]["item.momentum1"].local_shards()[0].tensor
    saved = old_optim[item]["item.momentum1"].local_shards()[0].tensor
    assert torch.equal(momentum[:60], saved) and saved.gt(0).any() and momentum[60:].eq(0).all()
    assert trainer.progress.step == 0
    metrics = trainer.fit()
    assert metrics["train"]["steps"] == 4
    record = metrics["init_from"]
    assert record["step"] == 8 and record["optimizer"] is True and record["world_size"] == 1
    assert record["grown_tables"] == {"item": {"rows_before": 60, "rows_now": 72}}
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["init_from"] == str(yesterday)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["init_from"] == record


def test_without_init_optimizer_the_optimizer_starts_fresh(
    days: dict[str, Path], yesterday: Path, tmp_path: Path
) -> None:
    from torchrec_mdr.training.trainer import Trainer

    trainer = Trainer(warm(experiment(days["d1"], max_steps=2), f"{yesterday}:step-8"), tmp_path / "run")
    state = trainer.optimizer.state_dict()["state"]
    (item,) = [k for k in state if k.endswith(".item.weight")]
    assert state[item]["item.momentum1"].local_shards()[0].tensor.eq(0).all()
    assert trainer.init_record["checkpoint"] == "step-8" and trainer.init_record["optimizer"] is False


def drop_column(source: Path, out: Path, name: str) -> Path:
    """A copy of a prepared dataset without column ``name`` (files and spec)."""
    import shutil

    shutil.copytree(source, out)
    spec = json.loads((out / "spec.json").read_text())
    spec["columns"] = [c for c in spec["columns"] if c["name"] != name]
    for split in spec["splits"].values():
        for relative in split["files"]:
            pq.write_table(pq.read_table(out / relative).drop_columns([name]), out / relative)
    (out / "spec.json").write_text(json.dumps(spec))
    return out


def test_a_vanished_feature_a_shrunk_table_or_another_model_is_one_clear_error(
    days: dict[str, Path], yesterday: Path, tmp_path: Path
) -> None:
    from torchrec_mdr.training.trainer import Trainer

    cases = {
        "vanished": (
            experiment(drop_column(days["d1"], tmp_path / "no-price", "price"), max_steps=2),
            "feature 'price' (dense) vanished",
        ),
        "shrunk": (
            experiment(small_day(tmp_path / "small", 0, items=48), max_steps=2),
            "table 'item' shrank: feature 'hist_item_id' has 48 ids, 60 in the checkpoint",
        ),
        "model": (
            experiment(days["d1"], max_steps=2, embedding_dim=8),
            "different model config: model.embedding_dim: 4 in the checkpoint, 8 now",
        ),
        "optimizer": (
            experiment(days["d1"], max_steps=2, sparse="adagrad"),
            "different optimizer kinds: optimizer.sparse",
        ),
    }
    for name, (config, message) in cases.items():
        with pytest.raises(TrainingError, match=re.escape(message)):
            Trainer(warm(config, yesterday, init_optimizer=name == "optimizer"), tmp_path / name)
    with pytest.raises(TrainingError, match="holds no checkpoints"):
        Trainer(warm(experiment(days["d1"]), tmp_path / "nowhere"), tmp_path / "r")


def _two_rank_day0(rank: int, world_size: int, data: Path, out: Path) -> None:
    """Day 0 on 2 ranks with managed collision, room for every id; each rank saves its held ids, rows,
    momentum and counts."""
    from torchrec_mdr.training.trainer import Trainer

    trainer = Trainer(
        experiment(data, max_steps=6, eviction=True, zch_size=64, checkpoint_every=None, sharding="row_wise"),
        out / "run",
    )
    trainer.fit()
    torch.save(held_rows(trainer), out / f"held-{rank}.pt")


def test_two_ranks_with_managed_collision_warm_start_one(
    days: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from torchrec_mdr.sparse.mch.eviction import eviction_stats
    from torchrec_mdr.training.trainer import Trainer

    spawn(_two_rank_day0, 2, days["d0"], tmp_path)
    before = merge_held([torch.load(tmp_path / f"held-{rank}.pt") for rank in range(2)])
    config = experiment(days["d1"], max_steps=4, eviction=True, zch_size=64, checkpoint_every=None, sharding="row_wise")
    capsys.readouterr()
    trainer = Trainer(warm(config, tmp_path / "run", init_optimizer=True), tmp_path / "day1")
    text = capsys.readouterr().out
    assert "resharded from 2 to 1 rank(s)" in text and "written by 2 rank(s)" in text
    after = held_rows(trainer)
    for table in MANAGED_TABLES:  # every id held on either rank, with its row, momentum and LFU count
        assert before[table]["ids"].numel() > 20
        for name in ("ids", "weights", "momentum", "counts"):
            assert torch.equal(after[table][name], before[table][name]), (table, name)
    reference = json.loads((tmp_path / "run" / "metrics.json").read_text())["eviction"]
    stats = eviction_stats(trainer.model, MANAGED_TABLES, trainer.ctx.device)
    assert {t: s.to_dict()["eviction_rounds"] for t, s in stats.items()} == {
        t: reference[t]["eviction_rounds"] for t in MANAGED_TABLES
    }
    metrics = trainer.fit()  # day 1's new item ids compete for the slots
    assert metrics["train"]["steps"] == 4 and all(v == v for v in trainer.step_losses)
    assert metrics["init_from"]["world_size"] == 2
    assert metrics["init_from"]["grown_tables"] == {"item": {"rows_before": 60, "rows_now": 72}}
    held = held_rows(trainer)["item"]["ids"]
    assert (held >= 60).any()  # new ids admitted


def test_warm_start_beats_a_fresh_start_on_the_next_day(tmp_path: Path) -> None:
    """Day 0 trained 60 steps; day 1: 6 steps warm-started from it vs 6 steps from scratch, same seed."""
    from torchrec_mdr.training.trainer import Trainer

    data = {
        day: convert(day_options(tmp_path / f"d{day}", rows=8000, users=150, items=400, categories=10, day=day))
        and tmp_path / f"d{day}"
        for day in (0, 1)
    }

    def config(day: int, steps: int) -> Any:
        base = experiment(data[day], max_steps=steps, checkpoint_every=None, embedding_dim=8)
        return replace(base, data=replace(base.data, batch_size=128))

    Trainer(config(0, 60), tmp_path / "day0").fit()
    fresh = Trainer(config(1, 6), tmp_path / "fresh").fit()
    warmed = Trainer(warm(config(1, 6), tmp_path / "day0"), tmp_path / "warm").fit()
    assert warmed["auc"] > fresh["auc"] + 0.05, (warmed["auc"], fresh["auc"])
    assert warmed["init_from"]["grown_tables"]["item"]["rows_now"] > 400


def _two_rank_days(rank: int, world_size: int, day0: Path, day1: Path, out: Path) -> None:
    """Day 0 and a warm-started day 1, both on 2 ranks with managed collision: the item table's cardinality
    grows (60 -> 72), which moves ids between the shards (torchrec buckets ids by ``id // ceil(size / 2)``)."""
    from torchrec_mdr.training.trainer import Trainer

    common = dict(eviction=True, zch_size=128, checkpoint_every=None, sharding="row_wise")
    trainer = Trainer(experiment(day0, max_steps=6, **common), out / "day0")
    trainer.fit()
    torch.save(held_rows(trainer), out / f"before-{rank}.pt")
    trainer = Trainer(warm(experiment(day1, max_steps=2, **common), out / "day0", init_optimizer=True), out / "day1")
    torch.save(held_rows(trainer), out / f"after-{rank}.pt")
    trainer.fit()


def test_a_grown_managed_table_is_redistributed_at_the_same_world_size(days: dict[str, Path], tmp_path: Path) -> None:
    spawn(_two_rank_days, 2, days["d0"], days["d1"], tmp_path)
    before = merge_held([torch.load(tmp_path / f"before-{rank}.pt") for rank in range(2)])
    after = merge_held([torch.load(tmp_path / f"after-{rank}.pt") for rank in range(2)])
    for table in MANAGED_TABLES:
        for name in ("ids", "weights", "momentum", "counts"):
            assert torch.equal(after[table][name], before[table][name]), (table, name)
    rank0 = torch.load(tmp_path / "after-0.pt")["item"]["ids"]
    moved = rank0[(rank0 >= 30) & (rank0 < 36)]  # rank 1's ids at cardinality 60, rank 0's at 72
    assert moved.numel() > 0
    assert json.loads((tmp_path / "day1" / "metrics.json").read_text())["init_from"]["world_size"] == 2
