"""Scoring the next day with yesterday's run: ``mdr eval`` / ``mdr predict --run RUN --data TODAY`` where
TODAY's spec grew the run's tables (new item ids), through the path warm start uses.

* Rows whose ids all exist in yesterday's spec score, under today's spec, exactly as yesterday's model
  scores them under yesterday's spec (plain and managed-collision tables).
* The grown table's new rows are the ones ``mdr train --init-from RUN`` gives them (a fresh run's,
  same ``train.seed``); its old rows are the checkpoint's.
* Predict on the grown data writes every row once; a shrunk table, a vanished feature or another label
  set is one clear error naming it.

Day 0 / day 1 are the checkpoint tests' small world (40 users, 60 items; day 1 adds 12 items).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tests.test_checkpoint import experiment, full_state
from tests.test_incremental import drop_column, small_day, warm
from torchrec_mdr.cli import main
from torchrec_mdr.data.spec import DatasetSpec
from torchrec_mdr.errors import TrainingError
from torchrec_mdr.training.checkpoint import dataset_signature
from torchrec_mdr.training.evaluate import Evaluator, evaluate_run, run_config
from torchrec_mdr.training.predict import predict_run


def spec_json(data: Path) -> dict:
    return json.loads((data / "spec.json").read_text())


def seen_rows(today: Path, yesterday: Path, out: Path, as_yesterday: bool) -> Path:
    """A copy of ``today`` whose test split is today's train rows whose every id (candidate and history)
    exists in ``yesterday``'s spec; ``as_yesterday``: with yesterday's cardinalities in its spec (so
    that it carries yesterday's spec fingerprint)."""
    shutil.copytree(today, out)
    spec = spec_json(out)
    table = pq.read_table(today / spec["splits"]["train"]["files"][0])
    old_items = {c["name"]: c["cardinality"] for c in spec_json(yesterday)["columns"]}["item_id"]
    items, history = table["item_id"].to_numpy(), table["hist_item_id"].to_pylist()
    keep = np.array([i < old_items and all(h < old_items for h in hist) for i, hist in zip(items, history)])
    rows = table.filter(pa.array(keep))
    pq.write_table(rows, out / spec["splits"]["test"]["files"][0])
    domains = rows["domain"].to_numpy()
    spec["splits"]["test"].update(
        rows=rows.num_rows, rows_per_domain=[int((domains == d).sum()) for d in range(len(spec["domain_names"]))]
    )
    if as_yesterday:
        spec["columns"] = spec_json(yesterday)["columns"]
    (out / "spec.json").write_text(json.dumps(spec))
    return out


@pytest.fixture(scope="module")
def days(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("nextday")
    d0, d1 = small_day(root / "d0", 0), small_day(root / "d1", 1)
    return {
        "d0": d0,
        "d1": d1,
        "root": root,
        "seen": seen_rows(d1, d0, root / "d1-seen", as_yesterday=False),
        "seen-as-d0": seen_rows(d1, d0, root / "d1-seen-as-d0", as_yesterday=True),
    }


def _train(days: dict[str, Path], name: str, eviction: bool) -> Path:
    from torchrec_mdr.training.trainer import Trainer

    run = days["root"] / name
    Trainer(experiment(days["d0"], max_steps=8, checkpoint_every=None, eviction=eviction, zch_size=80), run).fit()
    return run


@pytest.fixture(scope="module")
def yesterday(days: dict[str, Path]) -> Path:
    """An 8-step DIN run on day 0 (plain tables)."""
    return _train(days, "run-d0", eviction=False)


@pytest.fixture(scope="module")
def yesterday_managed(days: dict[str, Path]) -> Path:
    """The same with ``user`` and ``item`` under managed collision, 80 LFU slots each: room for every id at
    1 rank, and at 2 ranks (40 slots a shard) for the 36 ids of day 1's 72 that torchrec routes to a shard
    (``id // 36``). With fewer slots than the ids routed to a shard, the load at another world size drops
    the lowest-count ids as a warm start does (docs/incremental.md), and their rows score differently."""
    return _train(days, "run-d0-managed", eviction=True)


def probabilities(run: Path, data: Path, out: Path) -> tuple[np.ndarray, dict]:
    manifest = predict_run(run, out, data=data, keep=[])
    table = pa.concat_tables([pq.read_table(out / f) for f in manifest["files"]]).sort_by("row")
    assert np.array_equal(table["row"].to_numpy(), np.arange(manifest["rows"]))
    return table["prob_click"].to_numpy(), manifest


def test_the_derived_datasets_are_what_the_tests_need(days: dict[str, Path]) -> None:
    d0, d1 = DatasetSpec.load(days["d0"]), DatasetSpec.load(days["d1"])
    items = {s: {c.name: c.cardinality for c in spec.columns}["item_id"] for s, spec in (("d0", d0), ("d1", d1))}
    assert items == {"d0": 60, "d1": 72}
    assert (
        dataset_signature(DatasetSpec.load(days["seen-as-d0"]))["fingerprint"]
        == dataset_signature(d0)["fingerprint"]
        != dataset_signature(DatasetSpec.load(days["seen"]))["fingerprint"]
    )
    rows = pq.read_table(days["seen"] / "test" / "part-00000.parquet")
    assert rows.num_rows >= 40 and rows.equals(pq.read_table(days["seen-as-d0"] / "test" / "part-00000.parquet"))


@pytest.mark.parametrize("managed", [False, True], ids=["plain", "managed"])
def test_seen_rows_score_as_yesterday_under_todays_spec(
    days: dict[str, Path], yesterday: Path, yesterday_managed: Path, managed: bool, tmp_path: Path
) -> None:
    run = yesterday_managed if managed else yesterday
    before, plain = probabilities(run, days["seen-as-d0"], tmp_path / "as-yesterday")
    after, grown = probabilities(run, days["seen"], tmp_path / "today")
    assert "grown_tables" not in plain and grown["grown_tables"] == {"item": {"rows_before": 60, "rows_now": 72}}
    np.testing.assert_allclose(after, before, rtol=0, atol=1e-6)
    assert np.ptp(before) > 1e-3  # a trained model, not a constant
    evaluated = evaluate_run(run, data=days["seen"])
    assert evaluated["grown_tables"] == grown["grown_tables"]
    assert evaluated["auc"] == pytest.approx(evaluate_run(run, data=days["seen-as-d0"])["auc"], abs=1e-9)


def test_new_ids_get_the_rows_a_warm_start_gives_them(
    days: dict[str, Path], yesterday: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from torchrec_mdr.training.trainer import Trainer

    config = run_config(yesterday)
    old = Evaluator(config, yesterday)
    old.load("latest")
    today = Evaluator(experiment(days["d1"], max_steps=8, checkpoint_every=None), yesterday)
    fresh = full_state(today.model)
    today.load("latest")
    assert today.grown == {"item": (60, 72)}
    assert "'item' 60 -> 72 ids" in capsys.readouterr().out
    warm_started = full_state(Trainer(warm(experiment(days["d1"], max_steps=2), yesterday), tmp_path / "w").model)
    before, after = full_state(old.model), full_state(today.model)
    (item,) = [k for k in after if k.endswith(".item.weight")]
    assert torch.equal(after[item][:60], before[item])  # yesterday's rows
    assert torch.equal(after[item][60:], fresh[item][60:])  # the new ids: a fresh run's rows (train.seed)
    assert torch.equal(after[item], warm_started[item])  # = what mdr train --init-from RUN starts from
    assert not torch.equal(after[item][:60], fresh[item][:60])
    for key in before:
        if key != item:
            assert torch.equal(after[key], before[key]), key


def test_predict_on_todays_data_writes_every_row_once(
    days: dict[str, Path], yesterday: Path, yesterday_managed: Path, tmp_path: Path
) -> None:
    test = pq.read_table(days["d1"] / "test" / "part-00000.parquet")
    assert (test["item_id"].to_numpy() >= 60).sum() > 10  # today's new items
    for name, run in (("plain", yesterday), ("managed", yesterday_managed)):
        out = tmp_path / name
        assert (
            main(
                ["predict", "--run", str(run), "--data", str(days["d1"]), "--out", str(out), "--keep", "item_id,click"]
            )
            == 0
        )
        manifest = json.loads((out / "predict.json").read_text())
        table = pa.concat_tables([pq.read_table(out / f) for f in manifest["files"]]).sort_by("row")
        assert manifest["rows"] == table.num_rows == test.num_rows == 60
        assert np.array_equal(table["row"].to_numpy(), np.arange(60))  # every row once
        assert table["item_id"].equals(test["item_id"]) and table["click"].equals(test["click"])
        probs = table["prob_click"].to_numpy()
        assert np.isfinite(probs).all() and ((probs > 0) & (probs < 1)).all()
        assert manifest["grown_tables"] == {"item": {"rows_before": 60, "rows_now": 72}}
        assert main(["eval", "--run", str(run), "--data", str(days["d1"])]) == 0


def relabel(source: Path, out: Path, old: str, new: str) -> Path:
    """A copy of a prepared dataset whose label column ``old`` is named ``new`` (files and spec)."""
    shutil.copytree(source, out)
    spec = spec_json(out)
    for column in spec["columns"]:
        if column["name"] == old:
            column["name"] = new
    for split in spec["splits"].values():
        split["positives_per_domain"] = {new: split["positives_per_domain"].pop(old)}
        for relative in split["files"]:
            table = pq.read_table(out / relative)
            pq.write_table(table.rename_columns([new if n == old else n for n in table.column_names]), out / relative)
    (out / "spec.json").write_text(json.dumps(spec))
    return out


def test_anything_but_growth_is_one_clear_error(
    days: dict[str, Path], yesterday: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    shrunk = small_day(tmp_path / "small", 0, items=48)
    cases = {
        shrunk: "table 'item' shrank: feature 'hist_item_id' has 48 ids, 60 in the checkpoint (a table may only grow)",
        drop_column(days["d1"], tmp_path / "no-price", "price"): "feature 'price' (dense) vanished",
        relabel(days["d1"], tmp_path / "buy", "click", "buy"): "labels: ['click'] in the checkpoint, ['buy'] now",
    }
    for data, message in cases.items():
        with pytest.raises(TrainingError, match=re.escape(f"cannot score {data} with {yesterday}/checkpoints/")):
            evaluate_run(yesterday, data=data)
        with pytest.raises(TrainingError, match=re.escape(message)):
            predict_run(yesterday, tmp_path / "out", data=data)
        assert not (tmp_path / "out").exists()
    capsys.readouterr()
    assert main(["eval", "--run", str(yesterday), "--data", str(shrunk)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mdr: error: cannot score") and "table 'item' shrank" in err and "Traceback" not in err


def _predict(rank: int, world_size: int, run: Path, data: Path, out: Path) -> None:
    predict_run(run, out, data=data, keep=[])


@pytest.mark.parametrize("managed", [False, True], ids=["plain", "managed"])
def test_two_ranks_score_todays_data_as_one_rank_scores_yesterdays(
    days: dict[str, Path], yesterday: Path, yesterday_managed: Path, managed: bool, tmp_path: Path
) -> None:
    """A 1-rank run read by 2 ranks on the grown data: the managed table's slots are redistributed (a grown
    cardinality moves ids between shards), the plain table's rows resharded; the seen rows' scores are
    still yesterday's."""
    from multiprocess import spawn

    run = yesterday_managed if managed else yesterday
    before, _ = probabilities(run, days["seen-as-d0"], tmp_path / "one")
    spawn(_predict, 2, run, days["seen"], tmp_path / "two")
    manifest = json.loads((tmp_path / "two" / "predict.json").read_text())
    table = pa.concat_tables([pq.read_table(tmp_path / "two" / f) for f in manifest["files"]]).sort_by("row")
    assert manifest["world_size"] == 2 and manifest["grown_tables"] == {"item": {"rows_before": 60, "rows_now": 72}}
    assert np.array_equal(table["row"].to_numpy(), np.arange(len(before)))
    np.testing.assert_allclose(table["prob_click"].to_numpy(), before, rtol=0, atol=1e-6)
