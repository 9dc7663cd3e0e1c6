"""Sharded training equals single-process training: torchrec-style multi-process gloo tests.

How the comparison is made exact:

* **Same weights.** Sharded tables draw their initial values per shard, so every run starts from
  one state dict: an unsharded ``TrainModel`` built in the test process with a fixed seed, copied
  into each DMP model shard by shard (what torchrec's own tests do with ``copy_state_dict``).
* **Same data.** Step ``i``'s global batch is rows ``[i * 2B, (i + 1) * 2B)`` of the train split.
  World size 1 trains on all ``2B`` rows; at world size 2, rank ``r`` trains on its ``r``-th half.
* **Same learning rates.** Each rank's loss is the mean over its ``B`` rows. DDP averages the dense
  gradients over ranks, and torchrec's output all-to-alls divide the embedding gradients by the
  world size in backward (``torchrec.distributed.comm_ops`` gradient division, on by default), so
  both sides receive the gradient of the mean loss over the ``2B`` global rows, exactly what world
  size 1 computes. The learning rates are therefore the same at both world sizes; no scaling.
  The global loss of a step at world size 2 is the mean of the two ranks' losses. RowWiseAdagrad
  and Adam hardly notice a gradient's scale, so one run uses SGD for both: with the division
  switched off (``set_gradient_division(False)``) its losses differ by ~1e-4 and its embeddings
  by ~3e-2, far outside the tolerances.
* **Same optimizers.** ``auto`` (the planner) is compared too: it must never pick data_parallel,
  whose tables would silently train with the dense optimizer instead of the fused sparse one.

Each spawned process sets the standard ``RANK`` / ``WORLD_SIZE`` / ``MASTER_*`` variables and
builds a real :class:`Trainer` (config -> model on meta -> fused optimizer -> DMP -> optimizers).
To keep the suite fast, one world-size-1 and one world-size-2 launch run every case; the tests
assert on what they saved.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import replace
import math
import os
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch
from torch.nn.parallel import DistributedDataParallel

from multiprocess import spawn
from torchrec_mdr.config import ConfigError, load_config
from torchrec_mdr.data.batch import Batch
from torchrec_mdr.data.reader import Block, ParquetBatches, ReaderConfig, block_to_batch
from torchrec_mdr.data.spec import DatasetSpec
from torchrec_mdr.experiment import ExperimentConfig, OptimizerConfig, SparseConfig, TrainConfig
from torchrec_mdr.models.din import DINConfig
from torchrec_mdr.models.dnn import DNNConfig
from torchrec_mdr.models.ranking import RankingModel, TrainModel
from torchrec_mdr.models.registry import MODELS, ModelConfig
from torchrec_mdr.training.distributed import DistContext
from torchrec_mdr.training.optimizers import apply_sparse_optimizer
from torchrec_mdr.training.sharding import wrap_model

GLOBAL_ROWS = 24  # rows per step over all ranks (2B)
STEPS = 4
SHARDINGS = ("table_wise", "row_wise", "column_wise", "auto")  # auto: the planner's mix, never data_parallel
# (run name, sharding, pipeline, sparse and dense optimizer) trained on identical batches from identical weights.
# Adagrad-type and Adam updates hardly change when a gradient is scaled, SGD updates scale with it:
# the "sgd" runs are the ones whose losses would show a wrong gradient averaging.
RUNS_2 = [(s, s, "plain", "rowwise_adagrad", "adam") for s in SHARDINGS] + [
    ("sparse_dist", "row_wise", "sparse_dist", "rowwise_adagrad", "adam"),
    ("base", "table_wise", "base", "rowwise_adagrad", "adam"),
    ("sgd", "row_wise", "plain", "sgd", "sgd"),
]
SGD_SPARSE_LR = 5.0  # a mean-loss gradient is small per row: a large rate makes the embeddings matter
RUNS_1 = [
    ("reference", "table_wise", "plain", "rowwise_adagrad", "adam"),
    ("reference_ddp", "table_wise", "plain", "rowwise_adagrad", "adam"),  # dense part in DDP, as torchrec does
    ("sparse_dist", "table_wise", "sparse_dist", "rowwise_adagrad", "adam"),
    ("sgd", "table_wise", "plain", "sgd", "sgd"),
]


# --------------------------------------------------------------------------- launching


# --------------------------------------------------------------------------- shared set-up


def tiny_dataset(path: Path, rows: int = 600) -> Path:
    from data_prep.synthetic import Options, convert

    convert(
        Options(
            version=1, out=path, rows=rows, users=40, items=60, categories=6, brands=10, seq_length=5, min_seq_length=0
        )
    )
    return path


def model_config(name: str = "din", embedding_dim: int = 4) -> ModelConfig:
    return ModelConfig(
        name=name,
        embedding_dim=embedding_dim,
        dnn=DNNConfig(hidden=[16, 8]),
        din=DINConfig(attention_hidden=[8], hidden=[16, 8]),
    )


def experiment(
    data: Path,
    sharding: str = "table_wise",
    pipeline: str = "plain",
    batch_size: int = GLOBAL_ROWS,
    model: str = "din",
    embedding_dim: int = 4,
    max_steps: int = STEPS,
    sparse: str = "rowwise_adagrad",
    dense: str = "adam",
    sparse_lr: float = 0.1,
) -> ExperimentConfig:
    return ExperimentConfig(
        data=ReaderConfig(path=data, batch_size=batch_size, shuffle=False),
        model=model_config(model, embedding_dim),
        sparse=SparseConfig(sharding=sharding),  # type: ignore[arg-type]
        optimizer=OptimizerConfig(sparse=sparse, sparse_lr=sparse_lr, dense=dense, dense_lr=0.01),  # type: ignore
        train=TrainConfig(max_steps=max_steps, pipeline=pipeline, device="cpu", log_every=1),  # type: ignore
    )


def global_batches(data: Path, world_size: int, rank: int, steps: int = STEPS) -> list[Batch]:
    """This rank's share of the first ``steps`` global batches of ``GLOBAL_ROWS`` train rows (file order)."""
    dataset = ParquetBatches(ReaderConfig(path=data, shuffle=False), "train")
    block = Block.concat(list(dataset.blocks()))
    share = GLOBAL_ROWS // world_size
    return [
        block_to_batch(dataset.spec, block.slice(i * GLOBAL_ROWS + rank * share, i * GLOBAL_ROWS + (rank + 1) * share))
        for i in range(steps)
    ]


def initial_state(data: Path, seed: int = 7) -> dict[str, torch.Tensor]:
    """The full state dict of an unsharded model (tables on CPU), the start of every compared run."""
    torch.manual_seed(seed)
    model = TrainModel(RankingModel(DatasetSpec.load(data), model_config()))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def load_full_state(model: torch.nn.Module, full: dict[str, torch.Tensor]) -> None:
    """Copy full (unsharded) tensors into a DMP model: each local shard gets its slice."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    state = model.state_dict()
    assert set(state) == set(full), set(state) ^ set(full)
    with torch.no_grad():
        for key, target in state.items():
            source = full[key]
            if isinstance(target, ShardedTensor):
                assert tuple(target.size()) == tuple(source.shape), key
                for shard in target.local_shards():
                    index = tuple(
                        slice(o, o + n) for o, n in zip(shard.metadata.shard_offsets, shard.metadata.shard_sizes)
                    )
                    shard.tensor.copy_(source[index])
            else:
                target.copy_(source)


def local_state(model: torch.nn.Module) -> dict[str, Any]:
    """Plain tensors, or ``{"size", "shards": [(offsets, tensor)]}`` for this rank's shards."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    out: dict[str, Any] = {}
    for key, value in model.state_dict().items():
        if isinstance(value, ShardedTensor):
            out[key] = {
                "size": tuple(value.size()),
                "shards": [(tuple(s.metadata.shard_offsets), s.tensor.detach().clone()) for s in value.local_shards()],
            }
        else:
            out[key] = value.detach().clone()
    return out


def assemble(rank_states: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Full tensors from every rank's :func:`local_state`; each element must be covered exactly once."""
    full = {}
    for key, first in rank_states[0].items():
        if not isinstance(first, dict):
            for other in rank_states[1:]:
                torch.testing.assert_close(other[key], first, rtol=0, atol=0, msg=f"replicas differ: {key}")
            full[key] = first
            continue
        tensor = torch.zeros(first["size"])
        covered = torch.zeros(first["size"], dtype=torch.int32)
        for state in rank_states:
            for offsets, shard in state[key]["shards"]:
                index = tuple(slice(o, o + n) for o, n in zip(offsets, shard.shape))
                tensor[index] = shard
                covered[index] += 1
        assert bool((covered == 1).all()), f"{key}: shards do not tile the table"
        full[key] = tensor
    return full


def train_steps(trainer, batches: list[Batch]) -> list[float]:
    """This rank's loss at every step, through the trainer's configured loop (plain step or pipeline)."""
    iterator = iter(batches)
    return [float(trainer.train_step(iterator).loss) for _ in batches]


# --------------------------------------------------------------------------- the spawned work


def _compare_worker(rank: int, world_size: int, data: Path, out: Path) -> None:
    from torchrec_mdr.training.trainer import Trainer

    init = torch.load(out / "init.pt")
    batches = global_batches(data, world_size, rank)
    results: dict[str, Any] = {}
    for name, sharding, pipeline, sparse, dense in RUNS_2 if world_size > 1 else RUNS_1:
        config = experiment(
            data,
            sharding,
            pipeline,
            batch_size=GLOBAL_ROWS // world_size,
            sparse=sparse,
            dense=dense,
            sparse_lr=SGD_SPARSE_LR if sparse == "sgd" else 0.1,
        )
        with _torchrec_ddp() if name.endswith("_ddp") else contextlib.nullcontext():
            trainer = Trainer(config, out / f"run-{name}-{world_size}")
        load_full_state(trainer.model, init)
        results[name] = {
            "losses": train_steps(trainer, batches),
            "state": local_state(trainer.model),
            "ddp": isinstance(trainer.model._dmp_wrapped_module, DistributedDataParallel),
        }
    if world_size == 1:
        results["epochs"] = _two_epochs(data, out, init)
    if world_size > 1:
        results["eval_between"] = _evaluate_between_steps(data, out, init)
        results["models"] = _all_models(data, out)
        results["errors"] = _config_errors(data, out)
    torch.save(results, out / f"result-{world_size}-{rank}.pt")


@contextlib.contextmanager
def _torchrec_ddp() -> Iterator[None]:
    """Models built inside get torchrec's own DefaultDataParallelWrapper (DDP at every world size)."""
    from torchrec.distributed.model_parallel import DefaultDataParallelWrapper

    from torchrec_mdr.training import sharding

    ours = sharding.SingleRankDataParallelWrapper
    sharding.SingleRankDataParallelWrapper = DefaultDataParallelWrapper
    try:
        yield
    finally:
        sharding.SingleRankDataParallelWrapper = ours


def _two_epochs(data: Path, out: Path, init: dict[str, torch.Tensor]) -> dict[str, dict[str, Any]]:
    """fit() for 2 epochs with an evaluation every 7 steps, with each training loop."""
    from torchrec_mdr.training.trainer import Trainer

    results = {}
    for pipeline in ("plain", "base", "sparse_dist"):
        config = experiment(data, "table_wise", pipeline, max_steps=None)  # type: ignore[arg-type]
        config.train.epochs, config.train.eval_every = 2, 7
        trainer = Trainer(config, out / f"run-epochs-{pipeline}")
        load_full_state(trainer.model, init)
        metrics = trainer.fit()
        results[pipeline] = {
            "losses": trainer.step_losses,
            "steps": metrics["train"]["steps"],
            "steps_per_epoch": trainer.steps_per_epoch,
            "auc": metrics["auc"],
        }
    return results


def _evaluate_between_steps(data: Path, out: Path, init: dict[str, torch.Tensor]) -> dict[str, Any]:
    """``fit()`` with TrainPipelineSparseDist, without and with an evaluation every 2 steps (calls of
    EvalPipelineSparseDist.progress counted); then the evaluated run's test split once more through
    plain DMP forwards."""
    from torchrec.distributed.train_pipeline import EvalPipelineSparseDist

    from torchrec_mdr.training.trainer import Trainer

    calls = []
    progress = EvalPipelineSparseDist.progress
    EvalPipelineSparseDist.progress = lambda self, batches: (calls.append(1), progress(self, batches))[1]
    results: dict[str, Any] = {}
    for name, eval_every in (("straight", None), ("evaluated", 2)):
        config = experiment(data, "row_wise", "sparse_dist", batch_size=GLOBAL_ROWS // 2, max_steps=5)
        config.train.eval_every = eval_every
        trainer = Trainer(config, out / f"run-eval-{name}")
        load_full_state(trainer.model, init)
        before = len(calls)
        metrics = trainer.fit()
        results[name] = {"losses": trainer.step_losses, "metrics": metrics, "eval_calls": len(calls) - before}
    before = len(calls)
    trainer.config = replace(config, train=replace(config.train, pipeline="plain"))
    results["plain"] = {"metrics": trainer.evaluate("test").to_dict(), "eval_calls": len(calls) - before}
    EvalPipelineSparseDist.progress = progress
    return results


def _all_models(data: Path, out: Path) -> dict[str, dict]:
    """Every registered model: fit() end to end under DMP (planner plan, TrainPipelineSparseDist).

    The default embedding dimension, because models may tie their own default sizes to it."""
    from torchrec_mdr.training.trainer import Trainer

    metrics = {}
    for name in MODELS:
        config = experiment(
            data,
            "auto",
            "sparse_dist",
            batch_size=16,
            model=name,
            max_steps=3,
            embedding_dim=ModelConfig().embedding_dim,
        )
        metrics[name] = Trainer(config, out / f"model-{name}").fit()
    return metrics


def _config_errors(data: Path, out: Path) -> dict[str, str]:
    """The ConfigError message (or 'no error') of bad configurations, raised before any training step."""
    from torchrec_mdr.training.trainer import Trainer

    cases = {
        "column_wise_dim": experiment(data, "column_wise", embedding_dim=5),
        "data_parallel_ec": experiment(data, "data_parallel"),
        "adam_fused": experiment(data, "table_wise", sparse="adam"),
    }
    messages = {}
    for name, config in cases.items():
        try:
            Trainer(config, out / f"error-{name}")
            messages[name] = "no error"
        except ConfigError as error:
            messages[name] = str(error)
    return messages


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[Any, Any]:
    """{world size: [rank 0 results, rank 1 results]} of the launches described in the module doc,
    plus ``"init"`` (the shared initial state) and ``"data"`` (the dataset folder)."""
    out = tmp_path_factory.mktemp("distributed")
    data = tiny_dataset(out / "data")
    init = initial_state(data)
    torch.save(init, out / "init.pt")
    spawn(_compare_worker, 1, data, out)
    spawn(_compare_worker, 2, data, out)
    results: dict[Any, Any] = {ws: [torch.load(out / f"result-{ws}-{r}.pt") for r in range(ws)] for ws in (1, 2)}
    results.update(init=init, data=data)
    return results


def _global_losses(results: list[dict[str, Any]], name: str) -> list[float]:
    per_rank = [r[name]["losses"] for r in results]
    return [sum(step) / len(step) for step in zip(*per_rank)]


def _embedding_keys(state: dict[str, torch.Tensor]) -> list[str]:
    return [k for k in state if k.startswith("model.sparse_arch.")]


def _rows_looked_up(data: Path) -> dict[str, torch.Tensor]:
    """table name -> sorted unique ids looked up by the compared steps (all features of the table)."""
    spec = DatasetSpec.load(data)
    ids: dict[str, list[torch.Tensor]] = {}
    for batch in global_batches(data, 1, 0):
        for kjt in (batch.sparse_features, batch.sequence_features):
            for feature, jagged in kjt.to_dict().items():
                ids.setdefault(spec.column(feature).table_name, []).append(jagged.values())
    return {table: torch.cat(parts).unique() for table, parts in ids.items()}


# --------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("sharding", SHARDINGS)
def test_sharded_training_matches_world_size_one(runs, sharding):
    reference = runs[1][0]["reference"]
    losses = _global_losses(runs[2], sharding)
    assert all(math.isfinite(x) for x in losses)
    assert losses == pytest.approx(reference["losses"], rel=1e-5, abs=1e-6)
    full = assemble([r[sharding]["state"] for r in runs[2]])
    expected = assemble([reference["state"]])
    assert len(_embedding_keys(expected)) == 9  # 7 pooled tables (EBC) + item and hist_domain (EC)
    for key, value in expected.items():  # every embedding row and every dense parameter
        torch.testing.assert_close(full[key], value, rtol=1e-5, atol=1e-6, msg=f"{sharding}: {key}")


def test_dense_part_is_in_ddp_only_above_world_size_one(runs):
    """torchrec_mdr.training.data_parallel: no DDP over a single rank; DDP (torchrec's wrapper) at 2."""
    one = runs[1][0]
    assert not one["reference"]["ddp"] and not one["sparse_dist"]["ddp"] and one["reference_ddp"]["ddp"]
    assert all(r[name]["ddp"] for r in runs[2] for name, *_ in RUNS_2)


def test_world_size_one_trains_the_same_without_ddp(runs):
    """DDP over one rank divides the gradients by 1 and all-reduces them with nobody: leaving it out
    changes no loss and no parameter, embedding rows included, to the last bit."""
    unwrapped, wrapped = runs[1][0]["reference"], runs[1][0]["reference_ddp"]
    assert unwrapped["losses"] == wrapped["losses"]
    assert unwrapped["losses"][-1] < unwrapped["losses"][0]
    state, reference = assemble([unwrapped["state"]]), assemble([wrapped["state"]])
    assert set(state) == set(reference)  # the same state-dict keys: checkpoints are interchangeable
    for key, value in reference.items():
        assert torch.equal(state[key], value), key
    dense = [key for key in reference if not key.startswith("model.sparse_arch.")]  # what DDP would touch
    assert len(dense) >= 6 and all(not torch.equal(reference[k], runs["init"][k]) for k in dense)


def test_sgd_sharded_training_matches_world_size_one(runs):
    """With SGD everywhere an update is proportional to its gradient, so this pins the averaging:
    a sum over ranks instead of a mean would double every step at world size 2."""
    reference = runs[1][0]["sgd"]
    assert _global_losses(runs[2], "sgd") == pytest.approx(reference["losses"], rel=1e-5, abs=1e-6)
    full = assemble([r["sgd"]["state"] for r in runs[2]])
    expected = assemble([reference["state"]])
    moved = 0.0
    for key, value in expected.items():
        torch.testing.assert_close(full[key], value, rtol=1e-5, atol=1e-7, msg=key)
        moved = max(moved, float((value - runs["init"][key]).abs().max()))
    assert moved > 1e-3  # the updates are far larger than the tolerance


def test_training_moved_exactly_the_rows_looked_up(runs):
    """The comparison above is not two copies of the initial state: the fused sparse optimizer
    changed every row the batches looked up, and no other row."""
    reference = runs[1][0]["reference"]
    assert reference["losses"][-1] < reference["losses"][0]
    state = assemble([reference["state"]])
    looked_up = _rows_looked_up(runs["data"])
    for key in _embedding_keys(state):
        table = key.split(".")[-2]
        changed = (state[key] != runs["init"][key]).any(dim=1).nonzero().flatten()
        assert torch.equal(changed, looked_up[table]), key


def test_pipelines_match_plain_loop(runs):
    two = runs[2]
    # TrainPipelineSparseDist (row_wise) and TrainPipelineBase (table_wise) at world size 2
    assert _global_losses(two, "sparse_dist") == pytest.approx(_global_losses(two, "row_wise"), rel=1e-6, abs=1e-7)
    assert _global_losses(two, "base") == pytest.approx(_global_losses(two, "table_wise"), rel=1e-6, abs=1e-7)
    sparse_dist = assemble([r["sparse_dist"]["state"] for r in two])
    plain = assemble([r["row_wise"]["state"] for r in two])
    for key, value in plain.items():
        torch.testing.assert_close(sparse_dist[key], value, rtol=1e-5, atol=1e-6, msg=key)
    # and at world size 1
    one = runs[1][0]
    assert one["sparse_dist"]["losses"] == pytest.approx(one["reference"]["losses"], rel=1e-6, abs=1e-7)


def test_every_loop_trains_every_epoch(runs):
    """Two epochs with evaluations in between: each loop trains every batch of both epochs, with the same
    losses (torchrec's TrainPipelineBase refuses a second iterator unless reset after the first)."""
    epochs = runs[1][0]["epochs"]
    plain = epochs["plain"]
    assert plain["steps_per_epoch"] >= 8 and plain["steps"] == 2 * plain["steps_per_epoch"]
    for pipeline in ("base", "sparse_dist"):
        assert epochs[pipeline]["steps"] == plain["steps"], pipeline
        assert epochs[pipeline]["losses"] == pytest.approx(plain["losses"], rel=1e-6, abs=1e-7), pipeline
        assert epochs[pipeline]["auc"] == pytest.approx(plain["auc"], abs=1e-6), pipeline


def test_evaluation_pipeline_between_training_steps(runs):
    """Evaluating every 2 steps through EvalPipelineSparseDist leaves training exactly as without the
    evaluations (the pipeline is drained before each, and refilled after), and the pipelined
    evaluation gives the plain forwards' metrics."""
    spec = DatasetSpec.load(runs["data"])
    for rank in runs[2]:
        straight, evaluated, plain = (rank["eval_between"][k] for k in ("straight", "evaluated", "plain"))
        assert len(evaluated["losses"]) == 5 and evaluated["losses"] == straight["losses"]
        assert evaluated["metrics"]["train"]["steps"] == 5
        # the final test evaluation is pipelined in both runs; the evaluated run adds the valid split twice
        rows_per_rank_step = GLOBAL_ROWS // 2
        valid_steps = -(-spec.splits["valid"].rows // 2 // rows_per_rank_step)
        assert straight["eval_calls"] >= 1 and plain["eval_calls"] == 0
        assert evaluated["eval_calls"] - straight["eval_calls"] >= 2 * valid_steps
        for key in ("auc", "gauc", "logloss", "rows"):
            assert evaluated["metrics"][key] == straight["metrics"][key], key
            assert plain["metrics"][key] == pytest.approx(evaluated["metrics"][key], rel=1e-6), key


def test_every_registered_model_trains_under_dmp(runs):
    rank0, rank1 = (r["models"] for r in runs[2])
    test_rows = DatasetSpec.load(runs["data"]).splits["test"].rows
    assert set(rank0) == set(MODELS) and len(MODELS) >= 2
    for name, metrics in rank0.items():
        # evaluation is gathered: every rank reports the same metrics (NaN for a one-class domain)
        same = [{k: v for k, v in m.items() if k != "train"} for m in (metrics, rank1[name])]
        assert json.dumps(same[0], sort_keys=True) == json.dumps(same[1], sort_keys=True), name
        assert metrics["train"]["steps"] == 3
        assert math.isfinite(metrics["train"]["final_loss"])
        assert metrics["rows"] == test_rows  # the whole test split, each row once
        assert 0.0 <= metrics["auc"] <= 1.0 and math.isfinite(metrics["logloss"])


def test_bad_configs_fail_before_training(runs):
    for results in runs[2]:
        errors = results["errors"]
        assert "column_wise" in errors["column_wise_dim"] and "dimension 5" in errors["column_wise_dim"]
        assert "2 ranks" in errors["column_wise_dim"]
        assert "data_parallel" in errors["data_parallel_ec"] and "EmbeddingCollection" in errors["data_parallel_ec"]
        assert "adam" in errors["adam_fused"] and "CPU" in errors["adam_fused"]


# --------------------------------------------------------------------------- in-process error checks


def _meta_model(data: Path, embedding_dim: int = 4) -> TrainModel:
    return TrainModel(
        RankingModel(
            DatasetSpec.load(data), model_config(embedding_dim=embedding_dim), sparse_device=torch.device("meta")
        )
    )


def _context(world_size: int) -> DistContext:
    return DistContext(rank=0, world_size=world_size, local_rank=0, device=torch.device("cpu"), backend="gloo")


def test_unknown_sharding_type_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="sparse.sharding"):
        load_config(ExperimentConfig, None, ["sparse.sharding=diagonal"])
    data = tiny_dataset(tmp_path / "data", rows=100)
    with pytest.raises(ConfigError, match="diagonal"):
        wrap_model(_meta_model(data), "diagonal", _context(1))  # type: ignore[arg-type]


def test_sharding_checks_run_before_dmp(tmp_path):
    """The checks need no process group: they fail before DistributedModelParallel is built."""
    data = tiny_dataset(tmp_path / "data", rows=100)
    with pytest.raises(ConfigError, match="table 'user' has embedding dimension 5.*2 ranks"):
        wrap_model(_meta_model(data, embedding_dim=5), "column_wise", _context(2))
    with pytest.raises(ConfigError, match="data_parallel.*EmbeddingCollection"):
        wrap_model(_meta_model(data), "data_parallel", _context(1))
    with pytest.raises(ConfigError, match="optimizer.sparse = adam"):
        apply_sparse_optimizer(_meta_model(data), OptimizerConfig(sparse="adam"), torch.device("cpu"))


# --------------------------------------------------------------------------- mdr bench train


def test_bench_train_tiny(tmp_path, capsys):
    from torchrec_mdr.cli import main

    assert (
        main(
            [
                "bench",
                "train",
                "--data",
                str(tmp_path / "bench"),
                "--rows",
                "1000",
                "--seq-length",
                "4",
                "--batch-size",
                "16",
                "--embedding-dim",
                "4",
                "--warmup",
                "2",
                "--steps",
                "2",
                "--repeats",
                "1",
                "--batches-in-memory",
                "2",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("model"))
    assert lines[header].split() == [
        "model",
        "world",
        "threads",
        "rows/step",
        "plain",
        "base",
        "sparse_dist",
        "sparse_dist/plain",
        "min",
        "max",
    ]
    rows = [line.split() for line in lines[header + 1 : header + 5]]
    assert [(r[0], r[1], r[3]) for r in rows] == [
        ("dnn", "1", "16"),
        ("dnn", "2", "32"),
        ("din", "1", "16"),
        ("din", "2", "32"),
    ]
    cores = len(os.sched_getaffinity(0))
    assert [int(r[2]) for r in rows] == [cores, max(cores // 2, 1)] * 2  # the cores split between the ranks
    for row in rows:
        values = [float(v.replace(",", "")) for v in row[4:]]
        assert len(values) == 6 and all(v > 0 and math.isfinite(v) for v in values), row
        plain, sparse_dist, ratio = values[0], values[2], values[3]  # the table rounds to whole samples/s
        assert (sparse_dist - 0.5) / (plain + 0.5) - 5e-4 <= ratio <= (sparse_dist + 0.5) / (plain - 0.5) + 5e-4
        assert values[3] == values[4] == values[5]  # one round: median, min and max are its ratio


def test_bench_train_rounds_and_paired_ratios():
    """Loops take turns starting one place later each round; cells report median windows, and the
    ratio column is the median (min, max) of per-round ratios, not a ratio of medians."""
    from torchrec_mdr.bench.train import Cell, TrainBenchOptions, format_table, round_order

    loops = ["plain", "base", "sparse_dist"]
    assert [round_order(loops, i) for i in range(4)] == [
        loops,
        ["base", "sparse_dist", "plain"],
        ["sparse_dist", "plain", "base"],
        loops,
    ]
    windows = {"plain": [100.0, 50.0, 200.0], "base": [90.0, 90.0, 90.0], "sparse_dist": [110.0, 40.0, 230.0]}
    cells = [Cell("dnn", 1, p, w, steps=10, batch_size=8, threads=1) for p, w in windows.items()]
    options = TrainBenchOptions(models=["dnn"], world_sizes=[1], repeats=3)
    row = format_table(cells, options).splitlines()[-1].split()
    assert row[4:7] == ["100", "90", "110"]  # medians of the windows
    # per-round ratios 1.1, 0.8, 1.15: median 1.1 (the ratio of the medians would be 1.1 too), min 0.8, max 1.15
    assert [float(v) for v in row[7:]] == [1.1, 0.8, 1.15]
    windows["sparse_dist"] = [60.0, 100.0, 210.0]  # medians 100 vs 100, but round ratios 0.6, 2.0, 1.05
    cells = [Cell("dnn", 1, p, w, steps=10, batch_size=8, threads=1) for p, w in windows.items()]
    assert [float(v) for v in format_table(cells, options).splitlines()[-1].split()[7:]] == [1.05, 0.6, 2.0]


def test_bench_train_bad_options_are_one_line_errors(capsys):
    from torchrec_mdr.cli import main

    assert main(["bench", "train", "--models", "nonexistent"]) == 2
    assert "'models': unknown ['nonexistent']" in capsys.readouterr().err
    assert main(["bench", "train", "--sharding", "column_wise", "--embedding-dim", "5"]) == 2
    assert "divisible by every world size" in capsys.readouterr().err
    if torch.cuda.device_count() < 2:
        assert main(["bench", "train", "--device", "cuda"]) == 2
        assert "'device': cuda needs one GPU per process, 2 for world sizes [1, 2]" in capsys.readouterr().err
    assert main(["bench", "train", "--device", "cuda", "--clock", "cpu", "--world-sizes", "1"]) == 2
    assert "'clock': cpu time does not measure GPU work" in capsys.readouterr().err
    assert main(["bench", "train", "--mixed-precision"]) == 2
    assert "'mixed_precision': bf16 autocast is for the GPU" in capsys.readouterr().err


def test_bench_train_batch_sizes_share_rounds():
    """Several batch sizes: one row each, and per-round ratios of the largest over the smallest."""
    from torchrec_mdr.bench.train import Cell, TrainBenchOptions, format_table, round_order

    keys = [("plain", 8), ("plain", 32)]
    assert round_order(keys, 1) == [("plain", 32), ("plain", 8)]
    windows = {8: [100.0, 50.0, 200.0], 32: [90.0, 100.0, 180.0]}  # per-round ratios 0.9, 2.0, 0.9
    cells = [Cell("dnn", 1, "plain", w, steps=10, batch_size=size, threads=1) for size, w in windows.items()]
    options = TrainBenchOptions(models=["dnn"], world_sizes=[1], pipelines=["plain"], repeats=3, batch_sizes=[8, 32])
    lines = format_table(cells, options).splitlines()
    assert "batch 8, 32 per process" in lines[0]
    assert [line.split()[3:5] for line in lines[2:4]] == [["8", "100"], ["32", "100"]]
    assert lines[4] == "dnn world 1 plain: samples/s at batch 32 / at 8: median 0.900 (min 0.900, max 2.000)"
