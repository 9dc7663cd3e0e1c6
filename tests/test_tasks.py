"""The Task interface between the models and the training loop, and the Evaluator.

* the tasks' TensorBoard scalars, headlines, history rows and early-stopping values, by hand;
* the models' outputs are the tasks' NamedTuples, read by name;
* the Trainer asks its task for everything task-specific: a task plugged in through ``TASKS`` changes
  what the trainer logs, records and prints, without a change to the trainer;
* the Evaluator (no Trainer built) reproduces the Trainer's final test metrics on the same checkpoint.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from helpers import small_synthetic
from torchrec_mdr.config import ConfigError
from torchrec_mdr.data.reader import ReaderConfig, make_dataloader
from torchrec_mdr.data.spec import DatasetSpec
from torchrec_mdr.experiment import EarlyStoppingConfig, ExperimentConfig, OptimizerConfig, TrainConfig
from torchrec_mdr.metrics.ranking import EvalResult
from torchrec_mdr.metrics.table import format_ranking_table
from torchrec_mdr.models.dnn import DNNConfig
from torchrec_mdr.models.ranking import RankingOutput
from torchrec_mdr.models.registry import ModelConfig
from torchrec_mdr.retrieval.metrics import RetrievalResult, format_retrieval_table
from torchrec_mdr.retrieval.model import RetrievalOutput
from torchrec_mdr.tasks import TASKS, RankingTask, RetrievalTask, format_table, make_task


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return small_synthetic(tmp_path_factory.mktemp("tasks") / "syn")


def experiment(data: Path, **train) -> ExperimentConfig:
    return ExperimentConfig(
        data=ReaderConfig(path=data, batch_size=32, shuffle=False),
        model=ModelConfig(name="dnn", embedding_dim=4, dnn=DNNConfig(hidden=[8])),
        optimizer=OptimizerConfig(dense="adam", dense_lr=0.05, sparse_lr=0.1),
        train=TrainConfig(device="cpu", seed=3, log_every=1, pipeline="plain", **train),
    )


def two_task_result() -> EvalResult:
    def domain(auc: float) -> dict[str, float]:
        return {"auc": auc, "logloss": 0.5, "gauc": 0.5, "sgauc": 0.5, "rows": 5}

    click = EvalResult(0.75, 0.5, 0.625, 10, per_domain={"a": domain(0.5), "b": domain(1.0)}, sgauc=0.25)
    buy = EvalResult(0.125, 0.375, 0.875, 10, per_domain={"a": domain(0.0), "b": domain(0.25)}, sgauc=0.0625)
    return EvalResult(0.75, 0.5, 0.625, 10, per_domain=click.per_domain, sgauc=0.25, tasks={"click": click, "buy": buy})


def test_ranking_scalars_history_and_stopping_value_by_hand(synthetic):
    task = make_task(experiment(synthetic), DatasetSpec.load(synthetic))
    assert isinstance(task, RankingTask) and task.output_type is RankingOutput and task.model_name == "dnn"
    result = two_task_result()
    assert task.scalars("valid", result) == [
        ("valid/auc", 0.75),
        ("valid/logloss", 0.5),
        ("valid/gauc", 0.625),
        ("valid/sgauc", 0.25),
        ("valid/auc/a", 0.5),
        ("valid/auc/b", 1.0),
        ("valid/click/auc", 0.75),
        ("valid/click/logloss", 0.5),
        ("valid/click/gauc", 0.625),
        ("valid/click/sgauc", 0.25),
        ("valid/click/auc/a", 0.5),
        ("valid/click/auc/b", 1.0),
        ("valid/buy/auc", 0.125),
        ("valid/buy/logloss", 0.375),
        ("valid/buy/gauc", 0.875),
        ("valid/buy/sgauc", 0.0625),
        ("valid/buy/auc/a", 0.0),
        ("valid/buy/auc/b", 0.25),
    ]
    assert task.headline(result) == {"auc": "0.7500"}
    first = {"auc": 0.75, "logloss": 0.5, "gauc": 0.625, "per_domain": {"a": 0.5, "b": 1.0}}
    assert task.history(result) == {
        **first,
        "tasks": {
            "click": first,
            "buy": {"auc": 0.125, "logloss": 0.375, "gauc": 0.875, "per_domain": {"a": 0.0, "b": 0.25}},
        },
    }
    assert task.stopping_value(result, EarlyStoppingConfig(enabled=True, metric="logloss", task="buy")) == 0.375
    assert task.stopping_value(result, EarlyStoppingConfig(enabled=True, metric="auc")) == 0.75
    with pytest.raises(ConfigError, match="train.early_stopping.task = 'buy' is not a label"):
        task.check_early_stopping(EarlyStoppingConfig(enabled=True, task="buy"))
    assert task.split_metrics("test") == {"oracle_auc": DatasetSpec.load(synthetic).splits["test"].oracle_auc}
    assert task.split_metrics("nosuchsplit") == {}


def test_retrieval_scalars_history_and_no_early_stopping(synthetic):
    config = experiment(synthetic)
    config.task = "retrieval"
    task = make_task(config, DatasetSpec.load(synthetic))
    assert isinstance(task, RetrievalTask) and task.output_type is RetrievalOutput
    result = RetrievalResult(
        recall={5: 0.5, 10: 0.75},
        hitrate={5: 0.25, 10: 1.0},
        rows=4,
        users=2,
        pool_size=3,
        per_domain={
            "a": {"recall@5": 0.125, "recall@10": 0.625, "hitrate@5": 0.25, "hitrate@10": 1.0, "rows": 4, "users": 2}
        },
    )
    assert task.scalars("test", result) == [
        ("test/recall@5", 0.5),
        ("test/hitrate@5", 0.25),
        ("test/recall@5/a", 0.125),
        ("test/recall@10", 0.75),
        ("test/hitrate@10", 1.0),
        ("test/recall@10/a", 0.625),
    ]
    assert task.headline(result) == {"recall@5": "0.5000"}
    assert task.history(result) == {"recall": {"5": 0.5, "10": 0.75}, "hitrate": {"5": 0.25, "10": 1.0}}
    assert task.split_metrics("test") == {}
    with pytest.raises(ConfigError, match="does not compute; disable it for retrieval"):
        task.check_early_stopping(EarlyStoppingConfig(enabled=True))
    identity = task.identity({"model": {"name": "dnn"}, "dataset": {"fingerprint": "x"}})
    assert list(identity) == ["model", "dataset"] and identity["model"]["task"] == "retrieval"
    # a metrics.json is printed by its own task's table
    metrics = {"model": "adin_retrieval", **result.to_dict()}
    assert format_table(metrics, ["a"]) == format_retrieval_table(metrics, ["a"])
    assert format_table(metrics, ["a"]).splitlines()[-1].split() == [
        "all",
        "4",
        "2",
        "0.5000",
        "0.7500",
        "0.2500",
        "1.0000",
    ]
    ranking = {"model": "dnn", "dataset": "syn", "split": "valid", **two_task_result().to_dict()}
    assert format_table(ranking, ["a", "b"]) == format_ranking_table(ranking, ["a", "b"])


class RecordingTask(RankingTask):
    """The ranking task plus one scalar, one history key and one headline key; records what the trainer asks."""

    calls: list[str] = []

    def evaluate(self, outputs, device):
        outputs = list(outputs)
        assert outputs and all(isinstance(o, RankingOutput) for o in outputs)
        RecordingTask.calls.append(f"evaluate {sum(len(o.domain) for o in outputs)}")
        return super().evaluate(outputs, device)

    def scalars(self, split, result):
        return super().scalars(split, result) + [(f"{split}/rows_seen", float(result.rows))]

    def headline(self, result):
        RecordingTask.calls.append("headline")
        return {**super().headline(result), "rows": str(result.rows)}

    def history(self, result):
        return {**super().history(result), "rows": result.rows}


def test_trainer_asks_its_task_and_the_evaluator_reproduces_its_metrics(synthetic, tmp_path, monkeypatch):
    from test_metrics import scalar_tags
    from torchrec_mdr.training import trainer as trainer_module
    from torchrec_mdr.training.evaluate import Evaluator, evaluate_run, run_config

    spec = DatasetSpec.load(synthetic)
    run = tmp_path / "run"
    RecordingTask.calls = []
    with monkeypatch.context() as patch:
        patch.setitem(TASKS, "ranking", RecordingTask)
        trainer = trainer_module.Trainer(experiment(synthetic, max_steps=4, eval_every=2), run)
        assert isinstance(trainer.task, RecordingTask)
        metrics = trainer.fit()
    valid, test = spec.splits["valid"].rows, spec.splits["test"].rows
    assert RecordingTask.calls == [f"evaluate {valid}", "headline", f"evaluate {valid}", "headline", f"evaluate {test}"]
    assert [h["rows"] for h in metrics["history"]] == [valid, valid]
    assert {"valid/rows_seen", "test/rows_seen", "test/auc"} <= set(scalar_tags(run))

    # the model's output is the task's NamedTuple, its fields the batch's rows
    batch = next(iter(make_dataloader(ReaderConfig(path=synthetic, batch_size=8, shuffle=False), "test")))
    trainer.model.eval()
    with torch.no_grad():
        loss, output = trainer.model(batch)
    assert isinstance(output, RankingOutput) and torch.equal(output.loss, loss)
    assert output.logits.shape == (8, 1) and torch.equal(output.labels, batch.labels)
    assert torch.equal(output.domain, batch.domain) and torch.equal(output.group_ids, batch.group_ids)

    # the Evaluator builds no Trainer and gives the Trainer's final test metrics on the same weights
    monkeypatch.setattr(trainer_module.Trainer, "__init__", lambda *a, **k: pytest.fail("a Trainer was built"))
    evaluator = Evaluator(run_config(run), run)
    info = evaluator.load("latest")
    assert info.step == 4
    got = evaluator.evaluate("test").to_dict()
    expected = {k: metrics[k] for k in got}

    def close(a, b) -> None:
        if isinstance(a, dict):
            assert a.keys() == b.keys()
            for key in a:
                close(a[key], b[key])
        elif isinstance(a, float):
            assert (math.isnan(a) and math.isnan(b)) or abs(a - b) <= 1e-9, (a, b)
        else:
            assert a == b

    close(got, expected)
    assert got["rows"] == test
    written = evaluate_run(run, split="test")
    close({k: written[k] for k in got}, expected)
    assert written["oracle_auc"] == metrics["oracle_auc"]
    assert json.loads((run / "eval-test.json").read_text()) == json.loads(json.dumps(written))
