"""Training as a practitioner runs it: early stopping, the best checkpoint, the evaluation history,
``train.max_steps`` vs ``train.epochs``, ``mdr eval --checkpoint`` and the two seeds.

The early-stopping runs train on planted-effect data whose *valid* split has its labels flipped:
the better the model learns the train split, the lower its validation AUC, so that patience runs
out within a few evaluations, and the best checkpoint is an early one whose test metrics differ
from the final weights'.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from multiprocess import spawn
from torchrec_mdr.cli import main
from torchrec_mdr.config import ConfigError, load_config
from torchrec_mdr.data.reader import ReaderConfig, make_dataloader
from torchrec_mdr.errors import TrainingError
from torchrec_mdr.experiment import EarlyStoppingConfig, ExperimentConfig, OptimizerConfig, SparseConfig, TrainConfig
from torchrec_mdr.models.registry import ModelConfig
from torchrec_mdr.training.evaluate import evaluate_run
from torchrec_mdr.training.early_stopping import EarlyStopping

BATCH = 64
MAX_STEPS = 80


def flip_labels(path: Path, split: str) -> None:
    """Replace every label of ``split`` by its opposite (the spec's counts are left as they were)."""
    spec = json.loads((path / "spec.json").read_text())
    labels = [c["name"] for c in spec["columns"] if c["kind"] == "label"]
    for relative in spec["splits"][split]["files"]:
        file = path / relative
        rows_per_group = pq.ParquetFile(file).metadata.row_group(0).num_rows
        table = pq.read_table(file)
        for name in labels:
            index = table.schema.get_field_index(name)
            flipped = pc.subtract(pa.scalar(1, table.schema.field(name).type), table.column(name))
            table = table.set_column(index, table.schema.field(name), flipped)
        pq.write_table(table, file, row_group_size=rows_per_group)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from data_prep.synthetic import Options, convert

    path = tmp_path_factory.mktemp("early") / "syn"
    convert(Options(out=path, rows=3000, users=100, items=60, categories=6, brands=10, seq_length=5, min_seq_length=0))
    flip_labels(path, "valid")
    return path


def experiment(
    data: Path,
    patience: int | None = 1,
    eval_every: int | None = 2,
    max_steps: int | None = MAX_STEPS,
    epochs: int = 1,
    keep: int = 1,
    checkpoint_every: int | None = 1,
    metric: str = "auc",
    pipeline: str = "sparse_dist",
) -> ExperimentConfig:
    """DNN, high learning rates (it fits the train split within a few steps); ``patience`` None: no
    early stopping. ``keep`` 1 with a checkpoint every step: rotation would delete the best one."""
    stopping = (
        EarlyStoppingConfig(enabled=True, metric=metric, patience=patience)  # type: ignore[arg-type]
        if patience is not None
        else EarlyStoppingConfig()
    )
    return ExperimentConfig(
        data=ReaderConfig(path=data, batch_size=BATCH, shuffle=True, shuffle_buffer_rows=128, seed=3),
        model=ModelConfig(name="dnn", embedding_dim=4),
        sparse=SparseConfig(),
        optimizer=OptimizerConfig(sparse="rowwise_adagrad", sparse_lr=0.2, dense="adam", dense_lr=0.02),
        train=TrainConfig(
            epochs=epochs,
            max_steps=max_steps,
            eval_every=eval_every,
            pipeline=pipeline,  # type: ignore
            device="cpu",
            log_every=4,
            checkpoint_every=checkpoint_every,
            keep_checkpoints=keep,
            seed=1,
            early_stopping=stopping,
        ),
    )


def fit(config: ExperimentConfig, run: Path, resume: bool = False) -> tuple[dict, "object"]:
    from torchrec_mdr.training.trainer import Trainer

    trainer = Trainer(config, run, resume=resume)
    return trainer.fit(), trainer


@pytest.fixture(scope="module")
def stopped(data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    run = tmp_path_factory.mktemp("stopped") / "run"
    metrics, trainer = fit(experiment(data), run)
    return {"run": run, "metrics": metrics, "steps": trainer.progress.step}


# --------------------------------------------------------------------------- early stopping


def test_early_stopping_stops_and_reports_the_best_checkpoint(stopped: dict) -> None:
    metrics, run = stopped["metrics"], stopped["run"]
    stopping = metrics["early_stopping"]
    history = metrics["history"]
    assert stopping["stopped_early"] and stopping["stopped_at_step"] == stopped["steps"] < MAX_STEPS
    assert metrics["train"]["steps"] == stopped["steps"]
    # one history entry per evaluation: every 2 steps up to the stop
    assert [h["step"] for h in history] == list(range(2, stopped["steps"] + 1, 2))
    aucs = [h["auc"] for h in history]
    best_index = aucs.index(max(aucs))
    assert stopping["best_step"] == history[best_index]["step"] == metrics["checkpoint"]["step"]
    assert stopping["best_value"] == max(aucs)
    # patience 1: the stop is the first evaluation after the best that did not improve on it
    assert best_index == len(history) - 2 and aucs[-1] <= aucs[-2]
    for entry in history:
        assert entry["split"] == "valid" and entry["epoch"] >= 0
        assert set(entry) >= {"step", "epoch", "split", "auc", "logloss", "gauc", "per_domain"}
        assert set(entry["per_domain"]) == set(metrics["per_domain"])
    best = run / "checkpoints" / f"step-{stopping['best_step']:06d}"
    assert stopping["best_checkpoint"] == str(best)
    # keep_checkpoints=1 with a checkpoint every step: the best one survives the rotation beside latest
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.is_dir()) == sorted(
        {best.name, f"step-{stopped['steps']:06d}"}
    )
    assert (run / "checkpoints" / "best").read_text().strip() == best.name
    saved = json.loads((run / "metrics.json").read_text())
    assert json.dumps(saved["history"]) == json.dumps(history) and saved["early_stopping"] == stopping


def test_the_restored_best_model_is_what_mdr_eval_best_gives(stopped: dict, capsys: pytest.CaptureFixture) -> None:
    """The final test metrics come from the best checkpoint's weights, not from the last step's."""
    metrics, run = stopped["metrics"], stopped["run"]
    assert main(["eval", "--run", str(run), "--checkpoint", "best"]) == 0
    best = json.loads((run / "eval-test-best.json").read_text())
    assert best["checkpoint"]["step"] == metrics["early_stopping"]["best_step"]
    for key in ("auc", "logloss", "gauc"):
        assert best[key] == pytest.approx(metrics[key], abs=1e-12), key
    for name, values in metrics["per_domain"].items():
        assert best["per_domain"][name]["auc"] == pytest.approx(values["auc"], abs=1e-12)
    capsys.readouterr()
    latest = evaluate_run(run, checkpoint="latest")
    best_step = metrics["early_stopping"]["best_step"]
    assert (
        f"best evaluation (early stopping, the weights its metrics.json reports) is step {best_step}: "
        "pass --checkpoint best" in capsys.readouterr().out
    )  # latest is not what the run reported: said so
    assert latest["checkpoint"]["step"] == stopped["steps"]
    assert latest["auc"] != pytest.approx(metrics["auc"], abs=1e-9)  # the last weights are not the reported ones
    by_step = evaluate_run(run, checkpoint=f"step-{metrics['early_stopping']['best_step']}")
    assert by_step["auc"] == best["auc"]


def test_eval_checkpoint_names_are_checked(stopped: dict, tmp_path: Path, data: Path) -> None:
    with pytest.raises(TrainingError, match=r"no complete checkpoint step-999 .*checkpoints: step-"):
        evaluate_run(stopped["run"], checkpoint="step-999")
    with pytest.raises(TrainingError, match="expected best, latest or step-N"):
        evaluate_run(stopped["run"], checkpoint="newest")
    run = tmp_path / "plain"
    fit(experiment(data, patience=None, max_steps=2, eval_every=None), run)
    with pytest.raises(TrainingError, match="no best checkpoint .*train.early_stopping was not enabled"):
        evaluate_run(run, checkpoint="best")


def test_resumed_early_stopping_stops_where_an_uninterrupted_run_does(
    stopped: dict, data: Path, tmp_path: Path
) -> None:
    """Stop a run at step 3 (before the early stop), resume it: same history, same stop, same best."""
    run = tmp_path / "run"
    interrupted = experiment(data, max_steps=3)
    interrupted.train.eval_at_end = False  # an interruption (a kill) evaluates nothing at its last step
    fit(interrupted, run)
    metrics, trainer = fit(experiment(data), run, resume=True)
    assert trainer.progress.step == stopped["steps"]
    assert [h["step"] for h in metrics["history"]] == [h["step"] for h in stopped["metrics"]["history"]]
    for a, b in zip(metrics["history"], stopped["metrics"]["history"]):
        assert a["auc"] == pytest.approx(b["auc"], abs=1e-9)
    assert metrics["early_stopping"]["best_step"] == stopped["metrics"]["early_stopping"]["best_step"]
    assert metrics["auc"] == pytest.approx(stopped["metrics"]["auc"], abs=1e-9)
    # resuming a run that has stopped trains nothing more
    again, trainer = fit(experiment(data), run, resume=True)
    assert trainer.progress.step == stopped["steps"] and again["early_stopping"]["stopped_early"]


def test_resume_repairs_a_best_marker_left_behind_by_a_crash(stopped: dict, data: Path, tmp_path: Path) -> None:
    """A crash between saving a new best checkpoint and marking it leaves ``best`` on another one; the
    checkpoint's own record knows the best step, and a resumed run points the marker back at it."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(stopped["run"], run)
    best_step = stopped["metrics"]["early_stopping"]["best_step"]
    (run / "checkpoints" / "best").write_text(f"step-{stopped['steps']:06d}\n")
    metrics, _ = fit(experiment(data), run, resume=True)
    assert (run / "checkpoints" / "best").read_text().strip() == f"step-{best_step:06d}"
    assert metrics["checkpoint"]["step"] == best_step
    assert metrics["auc"] == pytest.approx(stopped["metrics"]["auc"], abs=1e-12)


def _two_ranks(rank: int, world_size: int, data: Path, out: Path) -> None:
    from torchrec_mdr.training.trainer import Trainer

    trainer = Trainer(experiment(data, checkpoint_every=None), out / "run")
    metrics = trainer.fit()
    (out / f"rank{rank}.json").write_text(json.dumps({"step": trainer.progress.step, "metrics": metrics}))


def test_early_stopping_at_world_size_two_stops_every_rank_together(data: Path, tmp_path: Path) -> None:
    spawn(_two_ranks, 2, data, tmp_path)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["step"] == ranks[1]["step"] < MAX_STEPS
    metrics = ranks[0]["metrics"]
    assert metrics["early_stopping"]["stopped_at_step"] == ranks[0]["step"]
    assert len(metrics["history"]) == ranks[0]["step"] // 2
    assert ranks[1]["metrics"]["history"] == metrics["history"]
    best = evaluate_run(tmp_path / "run", checkpoint="best")  # written by 2 ranks, evaluated by 1
    assert best["auc"] == pytest.approx(metrics["auc"], abs=1e-9)


# --------------------------------------------------------------------------- steps, history, seeds


def test_max_steps_beyond_one_epoch_trains_exactly_max_steps(data: Path, tmp_path: Path) -> None:
    """``train.max_steps`` is the length of training: epochs repeat as needed (train.epochs is ignored)."""
    from torchrec_mdr.data.spec import DatasetSpec

    epoch_steps = math.ceil(DatasetSpec.load(data).splits["train"].rows / BATCH)
    steps = 2 * epoch_steps + 3
    metrics, trainer = fit(
        experiment(
            data, patience=None, max_steps=steps, eval_every=3, checkpoint_every=None, epochs=1, pipeline="plain"
        ),
        tmp_path / "run",
    )
    assert metrics["train"]["steps"] == len(trainer.step_losses) == steps
    assert trainer.progress.epoch == 2 and trainer.progress.batch_in_epoch == 3
    # without early stopping the history is kept too, one entry per evaluation (and one at the last step, if
    # it is not a multiple of eval_every: train.eval_at_end), and the epochs are named
    evaluated = list(range(3, steps + 1, 3)) + ([steps] if steps % 3 else [])
    assert [h["step"] for h in metrics["history"]] == evaluated
    assert [h["epoch"] for h in metrics["history"]] == [(s - 1) // epoch_steps for s in evaluated]
    assert "early_stopping" not in metrics
    # without max_steps, epochs decide
    metrics, _ = fit(
        experiment(
            data, patience=None, max_steps=None, eval_every=None, checkpoint_every=None, epochs=2, pipeline="plain"
        ),
        tmp_path / "epochs",
    )
    assert metrics["train"]["steps"] == 2 * epoch_steps and metrics["history"] == []


@pytest.mark.parametrize("at_end", [True, False])
def test_the_last_step_is_evaluated_so_early_stopping_can_keep_it(data: Path, tmp_path: Path, at_end: bool) -> None:
    """7 steps, an evaluation every 3: with ``train.eval_at_end`` step 7 is evaluated too (the pipeline drained
    there) and early stopping chooses among 3, 6 and 7; without it the last step is never a candidate."""
    config = experiment(data, patience=10, max_steps=7, eval_every=3, checkpoint_every=None)
    config.train.eval_at_end = at_end
    metrics, trainer = fit(config, tmp_path / "run")
    history = [h["step"] for h in metrics["history"]]
    assert history == ([3, 6, 7] if at_end else [3, 6])
    assert metrics["train"]["steps"] == len(trainer.step_losses) == 7  # trained exactly 7 steps either way
    aucs = [h["auc"] for h in metrics["history"]]
    assert metrics["early_stopping"]["best_step"] == history[aucs.index(max(aucs))] == metrics["checkpoint"]["step"]


def test_data_order_depends_on_data_seed_not_train_seed(data: Path) -> None:
    """The seed story of the config help: data.seed orders the rows, train.seed does not touch them."""
    from torchrec_mdr.training.run_model import seeded_iter as _seeded_iter

    def first_rows(data_seed: int, train_seed: int) -> list[float]:
        config = ReaderConfig(
            path=data, batch_size=BATCH, shuffle=True, shuffle_buffer_rows=64, seed=data_seed, num_workers=1
        )
        loader = make_dataloader(config, "train")
        loader.dataset.set_epoch(0)
        batches = itertools.islice(_seeded_iter(loader, train_seed * 100_003), 3)
        return torch.cat([b.dense_features.flatten() for b in batches]).tolist()

    assert first_rows(3, 1) == first_rows(3, 2)
    assert first_rows(3, 1) != first_rows(4, 1)


# --------------------------------------------------------------------------- config and tracker


def test_early_stopping_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="train.early_stopping needs train.eval_every"):
        load_config(ExperimentConfig, overrides=["train.early_stopping.enabled=true"])
    with pytest.raises(ConfigError, match="not one of"):
        load_config(ExperimentConfig, overrides=["train.early_stopping.metric=gauc"])
    with pytest.raises(ConfigError, match=r"train.early_stopping.patience.*out of range"):
        load_config(ExperimentConfig, overrides=["train.early_stopping.patience=0"])
    with pytest.raises(ConfigError, match="retrieval"):
        load_config(
            ExperimentConfig, overrides=["task=retrieval", "train.eval_every=5", "train.early_stopping.enabled=true"]
        )
    config = load_config(
        ExperimentConfig,
        overrides=["train.eval_every=5", "train.early_stopping.enabled=true", "train.early_stopping.metric=logloss"],
    )
    assert config.train.early_stopping == EarlyStoppingConfig(enabled=True, metric="logloss")
    assert replace(config.train, early_stopping=EarlyStoppingConfig()).early_stopping.enabled is False


def test_tracker_directions_min_delta_and_nan() -> None:
    auc = EarlyStopping(EarlyStoppingConfig(enabled=True, metric="auc", patience=2, min_delta=0.01))
    assert auc.update(0.70, 1) and not auc.update(0.705, 2)  # within min_delta: not an improvement
    assert auc.update(0.72, 3) and auc.bad_evaluations == 0 and auc.best_step == 3
    assert not auc.update(math.nan, 4) and not auc.should_stop
    assert not auc.update(0.71, 5) and auc.should_stop and auc.stopped_at == 5
    logloss = EarlyStopping(EarlyStoppingConfig(enabled=True, metric="logloss", patience=1))
    assert logloss.update(0.5, 1) and logloss.update(0.4, 2) and not logloss.update(0.45, 3)
    assert logloss.should_stop and logloss.best_value == 0.4
    restored = EarlyStopping(logloss.config)
    restored.load_state_dict(json.loads(json.dumps(logloss.state_dict())))
    assert restored.state_dict() == logloss.state_dict()
