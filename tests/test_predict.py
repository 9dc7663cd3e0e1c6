"""``mdr predict``: every row of a split scored once, at world size 1 and 2, with its AUC equal to
``mdr eval``'s; pass-through columns, rolled part files, atomic output and clear errors.

The test split is rewritten as 3 files of 37-row row groups, so that the ranks' slices cut through
files and row groups; the output rolls over to a new part file every 120 rows.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from multiprocess import spawn
from torchrec_mdr.cli import main
from torchrec_mdr.config import ConfigError
from torchrec_mdr.data.reader import ReaderConfig
from torchrec_mdr.experiment import ExperimentConfig, OptimizerConfig, TrainConfig
from torchrec_mdr.metrics.ranking import auc
from torchrec_mdr.models.registry import ModelConfig
from torchrec_mdr.training.evaluate import evaluate_run
from torchrec_mdr.training.predict import predict_run

KEEP = ["user_id", "item_id", "group_id", "click", "hist_item_id", "price"]


def split_files(data: Path, split: str, parts: int = 3, row_group_size: int = 37) -> None:
    """Rewrite ``split`` as ``parts`` files of small row groups (the spec lists them in order)."""
    spec_file = data / "spec.json"
    spec = json.loads(spec_file.read_text())
    table = pa.concat_tables([pq.read_table(data / f) for f in spec["splits"][split]["files"]])
    for relative in spec["splits"][split]["files"]:
        (data / relative).unlink()
    bounds = np.linspace(0, table.num_rows, parts + 1).astype(int)
    files = []
    for index, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        relative = f"{split}/part-{index:05d}.parquet"
        pq.write_table(table.slice(lo, hi - lo), data / relative, row_group_size=row_group_size)
        files.append(relative)
    spec["splits"][split]["files"] = files
    spec_file.write_text(json.dumps(spec))


def split_table(data: Path, split: str) -> pa.Table:
    spec = json.loads((data / "spec.json").read_text())
    return pa.concat_tables([pq.read_table(data / f) for f in spec["splits"][split]["files"]])


def read_output(out: Path) -> pa.Table:
    manifest = json.loads((out / "predict.json").read_text())
    assert sorted(p.name for p in out.glob("*.parquet")) == manifest["files"]
    return pa.concat_tables([pq.read_table(out / name) for name in manifest["files"]]).sort_by("row")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DIN trained 12 steps on tiny planted-effect data (one process); its test split has 300 rows."""
    from data_prep.synthetic import Options, convert
    from torchrec_mdr.models.din import DINConfig
    from torchrec_mdr.training.trainer import Trainer

    root = tmp_path_factory.mktemp("predict")
    data = root / "syn"
    convert(Options(out=data, rows=3000, users=100, items=60, categories=6, brands=10, seq_length=5, min_seq_length=0))
    split_files(data, "test")
    config = ExperimentConfig(
        data=ReaderConfig(path=data, batch_size=64),
        model=ModelConfig(name="din", embedding_dim=4, din=DINConfig(attention_hidden=[8], hidden=[16, 8])),
        optimizer=OptimizerConfig(dense="adam", dense_lr=0.01),
        train=TrainConfig(max_steps=12, device="cpu", seed=1),
    )
    Trainer(config, root / "run").fit()
    return root / "run"


@pytest.fixture(scope="module")
def predicted(run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("out") / "preds"
    manifest = predict_run(run, out, keep=KEEP, row_group_rows=50, rows_per_file=120)
    return {"out": out, "manifest": manifest, "table": read_output(out)}


def assert_covers_the_split(table: pa.Table, data: Path) -> None:
    """The predictions hold every row of the test split once, in the split's row order, with its values."""
    expected = split_table(data, "test")
    assert table.num_rows == expected.num_rows
    assert table["row"].to_pylist() == list(range(expected.num_rows))
    assert table["domain"].to_pylist() == expected["domain"].to_pylist()
    for name in KEEP:
        assert table[name].to_pylist() == expected[name].to_pylist(), name


def test_predict_scores_every_row_once_and_matches_eval(run: Path, predicted: dict) -> None:
    data = Path(json.loads((run / "config.json").read_text())["data"]["path"])
    table, manifest, out = predicted["table"], predicted["manifest"], predicted["out"]
    assert_covers_the_split(table, data)
    assert manifest["rows"] == 300 and manifest["columns"] == ["row", "domain", "prob_click", *KEEP]
    assert manifest["checkpoint"]["name"] == "latest" and manifest["checkpoint"]["step"] == 12
    # part files roll over every 120 rows, in row groups of at most 50
    sizes = [pq.ParquetFile(out / name).metadata for name in manifest["files"]]
    assert [m.num_rows for m in sizes] == [120, 120, 60]
    assert all(m.row_group(g).num_rows <= 50 for m in sizes for g in range(m.num_row_groups))
    probs = table["prob_click"].to_numpy()
    assert table.schema.field("prob_click").type == pa.float32() and ((probs > 0) & (probs < 1)).all()
    labels = table["click"].to_numpy().astype(np.float64)
    evaluated = evaluate_run(run, split="test")
    assert auc(probs.astype(np.float64), labels) == pytest.approx(evaluated["auc"], abs=1e-6)
    for d, name in enumerate(evaluated["per_domain"]):
        mask = table["domain"].to_numpy() == d
        if 0 < labels[mask].sum() < mask.sum():
            assert auc(probs[mask].astype(np.float64), labels[mask]) == pytest.approx(
                evaluated["per_domain"][name]["auc"], abs=1e-6
            )
    assert not list(out.parent.glob(".preds.tmp-*"))  # the temporary folder became the output


def _predict_two_ranks(rank: int, world_size: int, run: Path, out: Path) -> None:
    predict_run(run, out, keep=KEEP, row_group_rows=50, rows_per_file=120)


def test_predict_at_world_size_two_writes_each_rank_its_parts(run: Path, predicted: dict, tmp_path: Path) -> None:
    """A 1-process run scored by 2 ranks: each writes its own parts; together they are the split, and
    the probabilities are the 1-process ones."""
    out = tmp_path / "preds"
    spawn(_predict_two_ranks, 2, run, out)
    manifest = json.loads((out / "predict.json").read_text())
    assert manifest["world_size"] == 2
    ranks = {name.split("-")[1] for name in manifest["files"]}
    assert ranks == {"r000", "r001"}
    rank0 = pa.concat_tables([pq.read_table(out / n) for n in manifest["files"] if n.startswith("part-r000")])
    assert rank0["row"].to_pylist() == list(range(150))  # rank 0 holds the first half of the split, in order
    table = read_output(out)
    data = Path(json.loads((run / "config.json").read_text())["data"]["path"])
    assert_covers_the_split(table, data)
    np.testing.assert_allclose(
        table["prob_click"].to_numpy(), predicted["table"]["prob_click"].to_numpy(), rtol=0, atol=1e-6
    )


def test_predict_command_line_defaults_and_errors(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "preds"
    assert main(["predict", "--run", str(run), "--out", str(out), "--split", "valid"]) == 0
    table = read_output(out)
    assert table.column_names == ["row", "domain", "prob_click", "group_id"]  # default: the group key
    assert table.num_rows == json.loads((out / "predict.json").read_text())["rows"] == 300
    assert main(["predict", "--run", str(run), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    # --run-dir: the spelling torchrun leaves alone (it takes an abbreviated --run for its --run-path)
    assert main(["predict", "--run-dir", str(run), "--out", str(out), "--overwrite", "--keep", ""]) == 0
    assert read_output(out).column_names == ["row", "domain", "prob_click"]
    with pytest.raises(ConfigError, match="--keep nope: the dataset's files have no column 'nope'"):
        predict_run(run, tmp_path / "bad", keep=["nope"])
    with pytest.raises(ConfigError, match="--keep domain: the output already has a column"):
        predict_run(run, tmp_path / "bad", keep=["domain"])
    with pytest.raises(ConfigError, match="--split nope"):
        predict_run(run, tmp_path / "bad", split="nope")
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob(".bad.tmp-*"))
