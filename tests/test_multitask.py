"""Several tasks end to end: the per-task weighted loss, every metric per task (AUC, logloss, GAUC,
S-GAUC; overall and per domain) in metrics.json, the printed table, TensorBoard, ``mdr compare``,
early stopping on a named task, ``mdr predict`` and ``mdr export`` (one probability per task) — on the
Ali-CCP converter's output (click, purchase) and the KuaiRand converter's (is_click, long_view, is_like;
with sessions)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import test_convert_aliccp as aliccp_data
import test_convert_kuairand as kuairand_data
from test_metrics import AUC_TOL, pairwise_auc, per_group_auc, reference_logloss, scalar_tags
from torchrec_mdr.config import ConfigError, load_config
from torchrec_mdr.data.reader import ReaderConfig, make_dataloader
from torchrec_mdr.data.spec import DatasetSpec
from torchrec_mdr.experiment import EarlyStoppingConfig, ExperimentConfig, OptimizerConfig, TrainConfig
from torchrec_mdr.metrics.compare import comparison_table
from torchrec_mdr.metrics.ranking import evaluate_predictions, gauc
from torchrec_mdr.models.dnn import DNNConfig
from torchrec_mdr.models.registry import ModelConfig
from torchrec_mdr.training.losses import TaskWeightedBCE, task_weights
from torchrec_mdr.tasks import format_table

# --------------------------------------------------------------------------- the loss


def bce(z: float, y: float) -> float:
    """-y log sigma(z) - (1 - y) log(1 - sigma(z)), written out."""
    p = 1.0 / (1.0 + math.exp(-z))
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def test_task_weighted_bce_by_hand():
    logits = torch.tensor([[0.0, 2.0], [1.0, -1.0], [-3.0, 0.5]])
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    click = (bce(0, 1) + bce(1, 0) + bce(-3, 0)) / 3
    buy = (bce(2, 0) + bce(-1, 1) + bce(0.5, 0)) / 3
    assert click == pytest.approx((math.log(2) + math.log1p(math.e) + math.log1p(math.exp(-3))) / 3)
    loss = TaskWeightedBCE([1.0, 0.5])(logits, labels)
    assert float(loss) == pytest.approx(click + 0.5 * buy, rel=1e-6)
    assert float(loss) == pytest.approx(1.42071, abs=1e-5)  # 0.684999 + 0.5 * 1.471422
    assert float(TaskWeightedBCE([0.0, 2.0])(logits, labels)) == pytest.approx(2 * buy, rel=1e-6)
    # equal weights: the sum over tasks, T times the mean over rows and tasks (the loss before weights)
    mean = torch.nn.BCEWithLogitsLoss()(logits, labels)
    assert float(TaskWeightedBCE([1.0, 1.0])(logits, labels)) == pytest.approx(2 * float(mean), rel=1e-6)
    # one label: exactly the mean BCE it always was
    assert float(TaskWeightedBCE([1.0])(logits[:, :1], labels[:, :1])) == pytest.approx(
        float(torch.nn.BCEWithLogitsLoss()(logits[:, :1], labels[:, :1])), rel=1e-7
    )
    assert TaskWeightedBCE([1.0, 0.5]).state_dict() == {}  # checkpoints keep their entries


def test_task_weights_config_and_errors(tmp_path):
    spec = aliccp_data.convert(aliccp_data.write_raw(tmp_path / "raw"), tmp_path / "out")
    assert spec.label_names == ["click", "purchase"]
    assert task_weights(None, spec) == [1.0, 1.0]
    assert task_weights([2, 0.5], spec) == [2.0, 0.5]
    with pytest.raises(ConfigError, match=r"train.task_weights has 3 value\(s\).*2 label\(s\) \['click', 'purchase'\]"):
        task_weights([1.0, 1.0, 1.0], spec)
    config = load_config(ExperimentConfig, overrides=["train.task_weights=[1, 0.25]"])
    assert config.train.task_weights == [1.0, 0.25]
    with pytest.raises(ConfigError, match="train.task_weights.*out of range"):
        load_config(ExperimentConfig, overrides=["train.task_weights=[1, -0.5]"])
    with pytest.raises(ConfigError, match="at least one task needs a weight > 0"):
        load_config(ExperimentConfig, overrides=["train.task_weights=[0, 0]"])
    with pytest.raises(ConfigError, match="task = 'retrieval'"):
        load_config(ExperimentConfig, overrides=["task=retrieval", "train.task_weights=[1]"])
    assert (
        load_config(ExperimentConfig, overrides=["train.early_stopping.task=purchase"]).train.early_stopping.task
        == "purchase"
    )


# --------------------------------------------------------------------------- metrics of gathered rows


def random_rows(n: int, tasks: int, seed: int = 3) -> np.ndarray:
    """Columns prediction_columns(tasks): tied logits, labels with both classes, 3 domains, users, sessions."""
    rng = np.random.default_rng(seed)
    logits = np.round(rng.normal(size=(n, tasks)), 1)
    labels = (rng.random((n, tasks)) < 1 / (1 + np.exp(-logits - np.arange(tasks)))).astype(np.float64)
    keys = np.column_stack([rng.integers(0, 3, n), rng.integers(0, 25, n), rng.integers(0, 60, n)])
    return np.column_stack([logits, labels, keys]).astype(np.float64)


def test_every_task_gets_every_metric():
    rows = random_rows(600, 3)
    names = ["click", "long_view", "like"]
    result = evaluate_predictions(rows, ["a", "b", "c"], sessions=True, label_names=names)
    assert list(result.tasks) == names
    assert result.to_dict()["per_domain"] == result.tasks["click"].to_dict()["per_domain"]  # top level: task 1
    domains, groups, sessions = rows[:, 6].astype(int), rows[:, 7], rows[:, 8]
    for t, name in enumerate(names):
        logits, labels = rows[:, t], rows[:, 3 + t]
        task = result.task(name)
        assert task.auc == pytest.approx(pairwise_auc(logits, labels), abs=AUC_TOL)
        assert task.logloss == pytest.approx(reference_logloss(logits, labels), rel=1e-9)
        assert task.gauc == pytest.approx(per_group_auc(logits, labels, groups), abs=1e-12)
        assert task.sgauc == pytest.approx(per_group_auc(logits, labels, sessions), abs=1e-12)
        for d, domain in enumerate("abc"):
            mask = domains == d
            values = task.per_domain[domain]
            assert values["rows"] == mask.sum()
            assert values["auc"] == pytest.approx(pairwise_auc(logits[mask], labels[mask]), abs=AUC_TOL)
            assert values["gauc"] == pytest.approx(per_group_auc(logits[mask], labels[mask], groups[mask]), abs=1e-12)
            assert values["sgauc"] == pytest.approx(
                per_group_auc(logits[mask], labels[mask], sessions[mask]), abs=1e-12
            )
            assert values["logloss"] == pytest.approx(reference_logloss(logits[mask], labels[mask]), rel=1e-9)
    assert len({result.task(n).auc for n in names}) == 3  # three different columns were read
    written = result.to_dict()
    assert list(written) == ["auc", "logloss", "gauc", "sgauc", "rows", "per_domain", "tasks"]
    assert written["tasks"]["like"] == result.tasks["like"].to_dict()
    assert written["tasks"]["click"]["auc"] == written["auc"] and "tasks" not in written["tasks"]["click"]
    # one label: the shape metrics.json always had, no "tasks"
    single = evaluate_predictions(rows[:, [0, 3, 6, 7, 8]], ["a", "b", "c"], sessions=True, label_names=["click"])
    assert list(single.to_dict()) == ["auc", "logloss", "gauc", "sgauc", "rows", "per_domain"]
    assert single.to_dict() == {k: v for k, v in written.items() if k != "tasks"}
    assert single.task("click") is single and single.task(None) is single
    with pytest.raises(ValueError, match="3 task"):
        evaluate_predictions(rows[:, :5], ["a", "b", "c"], label_names=names)


def test_table_and_compare_show_every_task():
    rows = random_rows(400, 2, seed=5)
    result = evaluate_predictions(rows, ["a", "b", "c"], label_names=["click", "purchase"])
    run = {"model": "m", "dataset": "d", "split": "test", **result.to_dict()}
    lines = format_table(run, ["a", "b", "c"]).splitlines()
    titles = [line for line in lines if line.startswith("m on d")]
    assert titles == ["m on d (test split, task click)", "m on d (test split, task purchase)"]
    purchase_all = lines[lines.index(titles[1]) + 5].split()  # header, 3 domains, all
    assert purchase_all[0] == "all" and float(purchase_all[2]) == pytest.approx(result.tasks["purchase"].auc, abs=1e-4)
    base = json.loads(json.dumps(run))
    better = json.loads(json.dumps(run))
    better["tasks"]["purchase"]["auc"] = base["tasks"]["purchase"]["auc"] + 0.01
    table = comparison_table([better, base], ["new", "base"]).splitlines()
    titles = [f"test AUC of task {task}, AUC Imp. vs base (ADS eq. 14)" for task in ("click", "purchase")]
    assert [line for line in table if line.startswith("test AUC")] == titles
    purchase = table[table.index(titles[1]) + 5].split()
    expected = ((base["tasks"]["purchase"]["auc"] + 0.01 - 0.5) / (base["tasks"]["purchase"]["auc"] - 0.5) - 1) * 100
    assert purchase[0] == "all" and float(purchase[-1].rstrip("%")) == pytest.approx(expected, abs=0.01)
    # a single-label run among them: only the first tasks (the top level), one table, as before
    single = {k: v for k, v in base.items() if k != "tasks"}
    plain = comparison_table([better, single], ["new", "base"])
    assert "of task" not in plain and plain.count("test AUC") == 1


# --------------------------------------------------------------------------- trained end to end


def tiny_config(data: Path, **train) -> ExperimentConfig:
    return ExperimentConfig(
        data=ReaderConfig(path=data, batch_size=16, shuffle=False),
        model=ModelConfig(name="dnn", embedding_dim=4, dnn=DNNConfig(hidden=[8])),
        optimizer=OptimizerConfig(dense="adam", dense_lr=0.05, sparse_lr=0.1),
        train=TrainConfig(device="cpu", seed=1, log_every=1, **train),
    )


def exported(run_dir: Path, out: Path, keep: list[str], checkpoint: str = "latest") -> pa.Table:
    """``mdr predict`` of the run's test split: row, domain, prob_<label> per task, the ``keep`` columns."""
    from torchrec_mdr.training.predict import predict_run

    manifest = predict_run(run_dir, out, keep=keep, checkpoint=checkpoint)
    return pa.concat_tables([pq.read_table(out / name) for name in manifest["files"]]).sort_by("row")


def check_against_predictions(metrics: dict, table: pa.Table, spec: DatasetSpec, sessions: bool) -> None:
    """Every task's metrics.json entries equal the metrics computed directly from the exported probabilities."""
    domains = table["domain"].to_numpy()
    groups = table[spec.group_column].to_numpy().astype(np.float64)
    for label in spec.label_names:
        p = table[f"prob_{label}"].to_numpy().astype(np.float64)
        y = table[label].to_numpy().astype(np.float64)
        logits = np.log(p / (1 - p))  # the float32 probability's logit
        task = metrics["tasks"][label]
        assert task["rows"] == len(p) == spec.splits["test"].rows
        assert task["auc"] == pytest.approx(pairwise_auc(p, y), abs=AUC_TOL, nan_ok=True)
        assert task["gauc"] == pytest.approx(gauc(p, y, groups), abs=1e-6, nan_ok=True)
        assert task["logloss"] == pytest.approx(reference_logloss(logits, y), rel=1e-5)
        if sessions:
            s = table[spec.session_column].to_numpy().astype(np.float64)
            assert task["sgauc"] == pytest.approx(gauc(p, y, s), abs=1e-6, nan_ok=True)
        for d, name in enumerate(spec.domain_names):
            mask = domains == d
            values = task["per_domain"][name]
            assert values["rows"] == mask.sum()
            assert values["auc"] == pytest.approx(pairwise_auc(p[mask], y[mask]), abs=AUC_TOL, nan_ok=True)
            assert values["gauc"] == pytest.approx(gauc(p[mask], y[mask], groups[mask]), abs=1e-6, nan_ok=True)
            assert values["logloss"] == pytest.approx(reference_logloss(logits[mask], y[mask]), rel=1e-5)
    first = metrics["tasks"][spec.label_names[0]]
    assert {k: metrics[k] for k in first} == first  # the top level is the first task


def check_loss_by_hand(trainer, weights: list[float]) -> None:
    """The trained model's loss on a test batch is sum_t w_t mean_b BCE of its own logits."""
    batch = next(iter(make_dataloader(replace(trainer.config.data, shuffle=False), "test", shuffle=False)))
    trainer.model.eval()
    with torch.no_grad():
        loss, (_, logits, labels, *_keys) = trainer.model(batch)
    per_task = [
        sum(bce(float(z), float(y)) for z, y in zip(logits[:, t], labels[:, t])) / len(labels)
        for t in range(labels.shape[1])
    ]
    assert float(loss) == pytest.approx(sum(w * v for w, v in zip(weights, per_task)), rel=1e-5)
    assert float(loss) != pytest.approx(sum(per_task), rel=1e-3)  # the weights changed it


def test_aliccp_click_and_purchase(tmp_path):
    """Ali-CCP (2 labels): purchase weighs 0.25, early stopping follows purchase's validation logloss."""
    from torchrec_mdr.training.trainer import Trainer

    data = tmp_path / "aliccp"
    spec = aliccp_data.convert(aliccp_data.write_raw(tmp_path / "raw"), data)
    assert spec.label_names == ["click", "purchase"] and spec.session_column is None
    config = tiny_config(
        data,
        max_steps=8,
        eval_every=2,
        task_weights=[1.0, 0.25],
        early_stopping=EarlyStoppingConfig(enabled=True, metric="logloss", task="purchase", patience=10),
    )
    trainer = Trainer(config, tmp_path / "run")
    metrics = trainer.fit()
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    assert list(metrics["tasks"]) == ["click", "purchase"]
    # early stopping decided on purchase: its best value is the lowest purchase logloss of the history
    history = metrics["history"]
    assert all(list(h["tasks"]) == ["click", "purchase"] for h in history) and len(history) == 4
    purchase = [h["tasks"]["purchase"]["logloss"] for h in history]
    stopping = metrics["early_stopping"]
    assert stopping["task"] == "purchase" and stopping["best_value"] == pytest.approx(min(purchase))
    assert stopping["best_step"] == history[int(np.argmin(purchase))]["step"]
    assert [h["logloss"] for h in history] == [h["tasks"]["click"]["logloss"] for h in history]
    check_loss_by_hand(trainer, [1.0, 0.25])
    table = exported(tmp_path / "run", tmp_path / "preds", keep=["group_id", "click", "purchase"], checkpoint="best")
    check_against_predictions(metrics, table, spec, sessions=False)
    assert not math.isnan(metrics["tasks"]["purchase"]["auc"])  # the test split has purchases
    tags = scalar_tags(tmp_path / "run")
    assert {
        "test/auc",
        "test/click/auc",
        "test/purchase/auc",
        "test/purchase/logloss",
        "test/purchase/gauc",
        "test/purchase/auc/scenario2",
        "valid/purchase/logloss",
    } <= set(tags)
    printed = format_table(metrics, spec.domain_names)
    assert "(test split, task purchase)" in printed and "(test split, task click)" in printed


def test_kuairand_three_tasks_with_sessions(tmp_path):
    """KuaiRand (3 labels, sessions): S-GAUC per task; a single-label conversion keeps the old shape."""
    from torchrec_mdr.training.trainer import Trainer

    src = kuairand_data.write_raw(tmp_path / "KuaiRand-1K")
    data = tmp_path / "kuairand"
    spec = kuairand_data.convert(src, data, max_length=4)
    assert spec.label_names == ["is_click", "long_view", "is_like"] and spec.session_column == "session_id"
    weights = [1.0, 0.5, 2.0]
    trainer = Trainer(tiny_config(data, max_steps=3, task_weights=weights), tmp_path / "run")
    metrics = trainer.fit()
    assert list(metrics["tasks"]) == spec.label_names
    assert all("sgauc" in task for task in metrics["tasks"].values())
    check_loss_by_hand(trainer, weights)
    keep = ["group_id", "session_id", *spec.label_names]
    check_against_predictions(metrics, exported(tmp_path / "run", tmp_path / "preds", keep), spec, sessions=True)
    assert {"test/is_like/sgauc", "test/long_view/auc/tab1", "test/sgauc"} <= set(scalar_tags(tmp_path / "run"))

    single = tmp_path / "single"
    kuairand_data.convert(src, single, max_length=4, labels=["is_like"])
    one = Trainer(tiny_config(single, max_steps=2, eval_every=1), tmp_path / "run-single").fit()
    assert list(one) == [
        "model",
        "dataset",
        "split",
        "auc",
        "logloss",
        "gauc",
        "sgauc",
        "rows",
        "per_domain",
        "train",
        "history",
    ]
    assert all("tasks" not in h for h in one["history"])
    assert list(one["per_domain"]["tab0"]) == ["auc", "logloss", "gauc", "sgauc", "rows"]
    with pytest.raises(ConfigError, match=r"train.task_weights has 2 value\(s\).*\['is_like'\]"):
        Trainer(tiny_config(single, max_steps=2, task_weights=[1.0, 1.0]), tmp_path / "run-bad")
    with pytest.raises(ConfigError, match="train.early_stopping.task = 'purchase' is not a label"):
        Trainer(
            tiny_config(
                single, max_steps=2, eval_every=1, early_stopping=EarlyStoppingConfig(enabled=True, task="purchase")
            ),
            tmp_path / "run-bad2",
        )


def _two_rank_worker(rank: int, world_size: int, data: Path, out: Path) -> None:
    from torchrec_mdr.training.trainer import Trainer

    config = tiny_config(data, max_steps=4, task_weights=[1.0, 0.5])
    Trainer(
        replace(config, data=replace(config.data, batch_size=8), sparse=replace(config.sparse, sharding="row_wise")),
        out,
    ).fit()


def test_two_ranks_gather_every_task(tmp_path):
    """2 ranks (15 test rows each, batches of 8: the second batch is short): the gathered per-task metrics
    equal those of one process's ``mdr predict`` with the same checkpoint."""
    from multiprocess import spawn

    data = tmp_path / "aliccp"
    spec = aliccp_data.convert(aliccp_data.write_raw(tmp_path / "raw"), data)
    spawn(_two_rank_worker, 2, data, tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert list(metrics["tasks"]) == ["click", "purchase"] and metrics["rows"] == 30
    table = exported(tmp_path / "run", tmp_path / "preds", keep=["group_id", "click", "purchase"])
    check_against_predictions(metrics, table, spec, sessions=False)


def _export_worker(rank: int, world_size: int, config: ExperimentConfig, out: Path) -> None:
    from torchrec_mdr.training.trainer import Trainer

    Trainer(config, out).fit()


@pytest.mark.parametrize("name", ["dnn", "mmoe"])
def test_export_returns_one_probability_per_task(tmp_path, name):
    """``mdr export`` of a 2-label run (Ali-CCP: click, purchase) trained by 2 ranks: the fp32 artifact gives
    every task's probability, equal to ``mdr predict``'s ``prob_<label>`` (the trained model) to 1e-5, for
    the whole test split and for one request; int8 gives both tasks within its tolerance."""
    from multiprocess import spawn
    from test_serving import INT8_PROB_TOLERANCE, columns_of, split_table
    from torchrec_mdr.serving import load_artifact
    from torchrec_mdr.serving.export import export_run

    data = tmp_path / "aliccp"
    spec = aliccp_data.convert(aliccp_data.write_raw(tmp_path / "raw"), data)
    config = tiny_config(data, max_steps=6, task_weights=[1.0, 0.5])
    config = replace(
        config,
        model=replace(config.model, name=name),
        data=replace(config.data, batch_size=8),
        sparse=replace(config.sparse, sharding="row_wise"),
    )
    spawn(_export_worker, 2, config, tmp_path / "run")
    table = exported(tmp_path / "run", tmp_path / "preds", keep=[])
    export_run(tmp_path / "run", tmp_path / "fp32")
    export_run(tmp_path / "run", tmp_path / "int8", int8=True)
    model = load_artifact(tmp_path / "fp32")
    assert model.manifest["labels"] == spec.label_names == ["click", "purchase"]
    assert model.manifest["outputs"] == ["prob_click", "prob_purchase"]
    assert [c for c in table.column_names if c.startswith("prob_")] == ["prob_click", "prob_purchase"]
    test = split_table(data)
    probs = model.predict(columns_of(test))
    assert list(probs) == ["click", "purchase"]
    for label in spec.label_names:
        expected = table[f"prob_{label}"].to_numpy()
        assert probs[label].shape == (test.num_rows,) == expected.shape
        np.testing.assert_allclose(probs[label], expected, rtol=0, atol=1e-5)
    assert np.abs(probs["click"] - probs["purchase"]).max() > 1e-3  # two heads, not one copied
    request = {column: test[column][3].as_py() for column in test.column_names}
    one = model.predict(request)
    for label in spec.label_names:
        assert one[label] == pytest.approx([table[f"prob_{label}"][3].as_py()], abs=1e-5)
    quantized = load_artifact(tmp_path / "int8").predict(columns_of(test))
    for label in spec.label_names:
        difference = np.abs(quantized[label] - table[f"prob_{label}"].to_numpy()).max()
        assert difference < INT8_PROB_TOLERANCE, (label, difference)
