"""Checkpoints (torch.distributed.checkpoint): exact resumption, resharding, atomic saves, checks.

* Resume exactness at world size 1: a run trained straight through and runs stopped at step k
  (at an epoch boundary, mid-epoch, and by a crash inside a save) then resumed with ``resume=True``
  give identical per-step losses and an identical final state (every table row, every weight).
  The model has dropout, so the torch RNG state must be restored too; the reader shuffles.
* Managed collision (eviction): resumption between two eviction rounds is exact, at 1 and 2 ranks,
  eviction counts (metrics.json, TensorBoard) included.
* 2 ranks (gloo, spawned): resumption is exact there too (TrainPipelineSparseDist, row-wise
  tables, a checkpoint taken while the pipeline holds the next batch); the final checkpoint loads
  on 1 rank (DCP resharding) and ``evaluate_run`` reproduces the 2-rank run's own final metrics;
  resuming it on 1 rank works and says that it is not an exact continuation. Managed collision
  at another world size (2 -> 1 and 1 -> 2): every held id keeps its embedding row, momentum and
  count, evaluation gives the same metrics, the eviction counts carry over, and ids that no longer
  fit their new shard are dropped lowest-count first (and said so).
* Errors before training: another model config, optimizer or dataset spec; checkpoints in a run
  directory without ``--resume``. A NaN loss keeps the last good checkpoint and names it.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch.distributed._shard.sharded_tensor import ShardedTensor

from multiprocess import spawn
from torchrec_mdr.cli import main
from torchrec_mdr.data.batch import Batch
from torchrec_mdr.data.reader import ReaderConfig, make_dataloader
from torchrec_mdr.data.spec import DatasetSpec
from torchrec_mdr.errors import TrainingError
from torchrec_mdr.experiment import EvictionConfig, ExperimentConfig, OptimizerConfig, SparseConfig, TrainConfig
from torchrec_mdr.models.din import DINConfig
from torchrec_mdr.models.registry import ModelConfig
from torchrec_mdr.training import checkpoint
from torchrec_mdr.training.checkpoint import CheckpointManager, all_finite, dataset_signature, differences
from torchrec_mdr.training.evaluate import evaluate_run

BATCH = 64  # 480 train rows: 8 steps per epoch at world size 1, 4 at world size 2
EPOCH_STEPS = 8


def make_dataset(path: Path, items: int = 60) -> Path:
    from data_prep.synthetic import Options, convert

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
        )
    )
    return path


def experiment(
    data: Path,
    max_steps: int | None = None,
    epochs: int = 2,
    checkpoint_every: int | None = 5,
    keep: int = 2,
    pipeline: str = "sparse_dist",
    sharding: str = "auto",
    embedding_dim: int = 4,
    sparse: str = "rowwise_adagrad",
    log_every: int = 4,
    eviction: bool = False,
    zch_size: int = 32,
) -> ExperimentConfig:
    """``eviction``: managed collision on tables ``user`` (40 ids, pooled) and ``item`` (60 ids: sequences
    and the candidate), ``zch_size`` slots each (32: fewer than their ids; 64: room for every id on 1 or
    2 ranks), an eviction round every 2 steps."""
    managed = EvictionConfig(tables=["user", "item"], zch_size=zch_size, eviction_interval=2) if eviction else None
    return ExperimentConfig(
        data=ReaderConfig(path=data, batch_size=BATCH, shuffle=True, shuffle_buffer_rows=128, seed=3),
        model=ModelConfig(
            name="din", embedding_dim=embedding_dim, din=DINConfig(attention_hidden=[8], hidden=[16, 8], dropout=0.2)
        ),
        sparse=SparseConfig(sharding=sharding, eviction=managed or EvictionConfig()),  # type: ignore[arg-type]
        optimizer=OptimizerConfig(sparse=sparse, sparse_lr=0.1, dense="adam", dense_lr=0.01),  # type: ignore
        train=TrainConfig(
            epochs=epochs,
            max_steps=max_steps,
            pipeline=pipeline,
            device="cpu",  # type: ignore
            log_every=log_every,
            checkpoint_every=checkpoint_every,
            keep_checkpoints=keep,
            seed=5,
        ),
    )


def full_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor of the model's state dict, sharded tables gathered to full size (a collective)."""
    state = {}
    for key, value in model.state_dict().items():
        if isinstance(value, ShardedTensor):
            out = torch.zeros(value.size(), dtype=value.dtype) if dist.get_rank() == 0 else None
            value.gather(dst=0, out=out)
            state[key] = out
        else:
            state[key] = value.detach().clone()
    return state


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def fit(config: ExperimentConfig, run: Path, resume: bool = False) -> tuple[list[float], dict, dict]:
    from torchrec_mdr.training.trainer import Trainer

    trainer = Trainer(config, run, resume=resume)
    metrics = trainer.fit()
    return list(trainer.step_losses), metrics, full_state(trainer.model)


def latest_name(run: Path) -> str:
    return (run / "checkpoints" / "latest").read_text().strip()


def checkpoint_names(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir() if p.is_dir())


MANAGED_TABLES = ["user", "item"]


def held_rows(trainer: Any) -> dict[str, dict[str, torch.Tensor]]:
    """This rank's managed-collision state per table, looked up directly: the ids holding a slot (ascending),
    their embedding rows, RowWiseAdagrad momentum and LFU counts."""
    import re

    from torchrec_mdr.sparse.mch.eviction import EMPTY_SLOT, tracked_modules

    model_state = trainer.model.state_dict()
    optim_state = trainer.optimizer.state_dict()["state"]
    out = {}
    for module in tracked_modules(trainer.model):
        table = module.table
        (key,) = [
            k for k in model_state if re.search(rf"_embedding_module\.(embedding_bags|embeddings)\.{table}\.weight$", k)
        ]
        shard = model_state[key].local_shards()[0]
        rows = module._mch_remapped_ids_mapping - int(shard.metadata.shard_offsets[0])
        held = module._mch_sorted_raw_ids != EMPTY_SLOT
        momentum = optim_state[key][f"{table}.momentum1"].local_shards()[0].tensor
        out[table] = {
            "ids": module._mch_sorted_raw_ids[held].clone(),
            "weights": shard.tensor[rows[held]].clone(),
            "momentum": momentum[rows[held]].clone(),
            "counts": module._mch_counts[held].clone(),
        }
    return out


def merge_held(parts: list[dict[str, dict[str, torch.Tensor]]]) -> dict[str, dict[str, torch.Tensor]]:
    """:func:`held_rows` of every rank as one table (ranks hold disjoint ids), ordered by id."""
    merged = {}
    for table in parts[0]:
        values = {name: torch.cat([part[table][name] for part in parts]) for name in parts[0][table]}
        order = torch.argsort(values["ids"])
        merged[table] = {name: value[order] for name, value in values.items()}
    return merged


def split_ids(data: Path, split: str) -> dict[str, set[int]]:
    """Every raw id of the managed tables in a split (as the trainer's reader passes them)."""
    from torchrec_mdr.sparse.mch.eviction import managed_reader_spec

    spec = DatasetSpec.load(data)
    reader_spec = managed_reader_spec(spec, EvictionConfig(tables=MANAGED_TABLES))
    table_of = {c.name: c.table_name for c in spec.columns if c.table_name in MANAGED_TABLES}
    found: dict[str, set[int]] = {t: set() for t in MANAGED_TABLES}
    for batch in make_dataloader(ReaderConfig(path=data, batch_size=1000, shuffle=False), split, spec=reader_spec):
        for kjt in (batch.sparse_features, batch.sequence_features):
            for key in kjt.keys():
                if key in table_of:
                    found[table_of[key]].update(kjt[key].values().tolist())
    return found


def eviction_totals(trainer: Any) -> dict[str, dict[str, float]]:
    """The trainer's eviction statistics per managed table (a collective when sharded)."""
    from torchrec_mdr.sparse.mch.eviction import eviction_stats

    return {t: s.to_dict() for t, s in eviction_stats(trainer.model, MANAGED_TABLES, trainer.ctx.device).items()}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("ckpt") / "syn")


@pytest.fixture(scope="module")
def straight(data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two epochs (16 steps) without interruption; checkpoints every 5 steps and at the end, keep 2."""
    run = tmp_path_factory.mktemp("straight") / "run"
    losses, metrics, state = fit(experiment(data), run)
    return {"run": run, "losses": losses, "metrics": metrics, "state": state}


# --------------------------------------------------------------------------- data order


@pytest.mark.parametrize("workers", [0, 2])
def test_skipping_batches_gives_the_same_batches(data: Path, workers: int) -> None:
    """What resumption relies on: an epoch's batches depend only on (seed, epoch, slice), so islice
    skipping k of them yields exactly the rest of an uninterrupted epoch."""
    config = ReaderConfig(
        path=data, batch_size=BATCH, shuffle=True, shuffle_buffer_rows=128, seed=3, num_workers=workers
    )
    loader = make_dataloader(config, "train")

    def epoch(number: int, skip: int = 0) -> list[Batch]:
        loader.dataset.set_epoch(number)
        return list(itertools.islice(iter(loader), skip, None))

    def rows(batches: list[Batch]) -> list[list[float]]:
        return [
            torch.cat(
                [
                    b.dense_features.flatten(),
                    b.labels.flatten(),
                    b.sparse_features.values().float(),
                    b.sequence_features.values().float(),
                    b.sequence_features.lengths().float(),
                ]
            ).tolist()
            for b in batches
        ]

    whole = epoch(1)
    assert len(whole) == EPOCH_STEPS
    assert rows(epoch(1, skip=3)) == rows(whole[3:])
    assert rows(epoch(1)) == rows(whole)
    assert rows(epoch(2)) != rows(whole)  # the shuffle does depend on the epoch


# --------------------------------------------------------------------------- exact resumption, world size 1


@pytest.mark.parametrize("stop", [EPOCH_STEPS, EPOCH_STEPS + 3], ids=["epoch-boundary", "mid-epoch"])
def test_resume_is_exact(
    data: Path, straight: dict[str, Any], tmp_path: Path, stop: int, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "run"
    first, _, _ = fit(experiment(data, max_steps=stop), run)
    assert first == straight["losses"][:stop]
    assert latest_name(run) == f"step-{stop:06d}"
    capsys.readouterr()
    rest, metrics, state = fit(experiment(data), run, resume=True)
    assert f"resuming from {run / 'checkpoints' / f'step-{stop:06d}'}" in capsys.readouterr().out
    assert len(rest) == 2 * EPOCH_STEPS - stop
    assert rest == straight["losses"][stop:]  # exactly, step by step
    assert_same_state(state, straight["state"])  # every embedding row, weight and buffer
    assert metrics["auc"] == straight["metrics"]["auc"] and metrics["logloss"] == straight["metrics"]["logloss"]
    assert metrics["train"]["steps"] == 2 * EPOCH_STEPS


def test_resume_is_exact_with_managed_collision_mid_interval(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eviction rounds at steps 2, 4, 6, 8; the run stops at step 5, between two rounds. The ids counted
    since round 4 live outside the state dict (torchrec_mdr.sparse.mch.state saves them per rank)."""
    import shutil

    def config(max_steps: int) -> ExperimentConfig:
        return experiment(data, max_steps=max_steps, checkpoint_every=None, eviction=True)

    straight, straight_metrics, state = fit(config(8), tmp_path / "straight")
    first, _, _ = fit(config(5), tmp_path / "resumed")
    shutil.copytree(tmp_path / "resumed", tmp_path / "forgetful")
    rest, metrics, resumed_state = fit(config(8), tmp_path / "resumed", resume=True)
    assert first + rest == straight
    assert_same_state(resumed_state, state)  # slots, their counts, every table row
    assert any("_mch_sorted_raw_ids" in key for key in state)
    # the eviction counts go on from the checkpoint: metrics.json and TensorBoard report an uninterrupted run's
    assert metrics["eviction"] == straight_metrics["eviction"]
    for table in MANAGED_TABLES:
        assert metrics["eviction"][table]["eviction_rounds"] == 4 and metrics["eviction"][table]["evicted_ids"] > 0
    assert tensorboard_eviction(tmp_path / "resumed") == tensorboard_eviction(tmp_path / "straight")
    # the same resumption without that history: the next round comes at step 7 instead of 6
    monkeypatch.setattr(checkpoint, "load_module_states", lambda model, states: [])
    forgetful, _, _ = fit(config(8), tmp_path / "forgetful", resume=True)
    assert forgetful[0] == straight[5] and forgetful != straight[5:]


def tensorboard_eviction(run: Path) -> dict[str, dict[int, float]]:
    """The eviction scalars of a run's TensorBoard logs (every event file), tag -> {step: value} at
    the uninterrupted run's log steps (4 and 8; a run stopped at 5 also logged its last step)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = [t for t in events.Tags()["scalars"] if t.startswith("eviction/")]
    assert len(tags) == 3 * len(MANAGED_TABLES)
    return {tag: {e.step: e.value for e in events.Scalars(tag) if e.step in (4, 8)} for tag in tags}


def test_keep_last_checkpoints(data: Path, straight: dict[str, Any]) -> None:
    run = straight["run"]
    # saved at 5, 10, 15 and at the end (16); keep_checkpoints = 2
    assert checkpoint_names(run) == ["step-000015", "step-000016"]
    assert latest_name(run) == "step-000016"
    record = json.loads((run / "checkpoints" / "step-000016" / "state.json").read_text())
    assert record["progress"] == {"epoch": 1, "step": 16, "batch_in_epoch": EPOCH_STEPS}
    assert record["model_name"] == "din" and record["world_size"] == 1
    assert record["identity"]["model"]["embedding_dim"] == 4
    assert record["identity"]["dataset"]["fingerprint"] == dataset_signature(DatasetSpec.load(data))["fingerprint"]
    assert (run / "checkpoints" / "step-000016" / "rank0.pt").is_file()
    # `mdr eval` on the same world size reproduces the run's own final evaluation exactly
    assert main(["eval", "--run", str(run), "--split", "test"]) == 0
    evaluated = json.loads((run / "eval-test.json").read_text())
    assert evaluated["checkpoint"]["step"] == 16 and evaluated["rows"] == straight["metrics"]["rows"]
    for key in ("auc", "gauc", "logloss"):
        assert evaluated[key] == straight["metrics"][key]


def test_buffers_and_lazy_optimizer_state_round_trip(tmp_path: Path) -> None:
    """Module buffers (here BatchNorm's running statistics) are saved and loaded with the weights, and
    Adam's lazily created state is recreated from the checkpoint in an optimizer that never stepped."""
    from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper

    from torchrec_mdr.training.distributed import init_distributed

    def build(seed: int) -> tuple[torch.nn.Module, CombinedOptimizer]:
        torch.manual_seed(seed)
        model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
        wrapper = KeyedOptimizerWrapper(dict(model.named_parameters()), lambda ps: torch.optim.Adam(ps, lr=0.1))
        return model, CombinedOptimizer([wrapper])

    def step(model: torch.nn.Module, optimizer: CombinedOptimizer, seed: int) -> None:
        optimizer.zero_grad()
        model(torch.randn(8, 4, generator=torch.Generator().manual_seed(seed))).square().mean().backward()
        optimizer.step()

    manager = CheckpointManager(tmp_path, init_distributed("cpu"))
    model, optimizer = build(0)
    for seed in range(3):
        step(model, optimizer, seed)
    path = manager.save(model, optimizer, {"progress": {"step": 3}})
    assert int(model[1].num_batches_tracked) == 3

    other, other_optimizer = build(1)
    assert other_optimizer.state_dict()["state"] == {}
    manager.load(path, other, other_optimizer)
    assert_same_state(dict(other.state_dict()), dict(model.state_dict()))  # running_mean/var, batch count
    step(model, optimizer, 7)
    step(other, other_optimizer, 7)
    assert_same_state(dict(other.state_dict()), dict(model.state_dict()))  # Adam's moments and step count came back


def test_crash_during_save_keeps_the_previous_checkpoint(
    data: Path, straight: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    publish = checkpoint._publish

    def crash_at_step_10(tmp: Path, final: Path, latest: Path) -> None:
        if final.name == "step-000010":
            raise RuntimeError("simulated crash after the checkpoint files were written")
        publish(tmp, final, latest)

    monkeypatch.setattr(checkpoint, "_publish", crash_at_step_10)
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(experiment(data), run)
    monkeypatch.setattr(checkpoint, "_publish", publish)
    names = checkpoint_names(run)
    assert latest_name(run) == "step-000005"
    assert "step-000010" not in names
    half = [n for n in names if n.startswith("step-000010.tmp-")]
    assert len(half) == 1 and (run / "checkpoints" / half[0] / ".metadata").is_file()  # written, never published

    rest, _, state = fit(experiment(data), run, resume=True)
    assert rest == straight["losses"][5:]
    assert_same_state(state, straight["state"])
    assert checkpoint_names(run) == ["step-000015", "step-000016"]  # the half-written folder was cleaned up


def test_latest_falls_back_to_the_newest_complete_checkpoint(straight: dict[str, Any], tmp_path: Path) -> None:
    import shutil

    from torchrec_mdr.training.distributed import init_distributed

    run = tmp_path / "copy"
    shutil.copytree(straight["run"] / "checkpoints", run / "checkpoints")
    (run / "checkpoints" / "latest").unlink()  # a crash between the rename and the marker
    (run / "checkpoints" / "step-000020.tmp-x").mkdir()  # half-written: ignored
    manager = CheckpointManager(run, init_distributed("cpu"))
    assert manager.latest().path.name == "step-000016"
    (run / "checkpoints" / "latest").write_text("step-000015\n")
    assert manager.latest().step == 15


# --------------------------------------------------------------------------- errors


def test_mismatches_are_refused_before_training(
    data: Path, straight: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from torchrec_mdr.training.trainer import Trainer

    run = straight["run"]
    with pytest.raises(
        TrainingError,
        match=r"different model config: model\.embedding_dim: 4 in the checkpoint, "
        r"8 now",
    ):
        Trainer(experiment(data, embedding_dim=8), run, resume=True)
    with pytest.raises(
        TrainingError,
        match=r"different optimizer kinds: optimizer\.sparse: 'rowwise_adagrad' in "
        r"the checkpoint, 'sgd' now",
    ):
        Trainer(experiment(data, sparse="sgd"), run, resume=True)
    other = make_dataset(tmp_path / "other", items=90)
    with pytest.raises(
        TrainingError,
        match=r"different dataset spec: columns\.item_id\.cardinality: 60 in the "
        r"checkpoint, 90 now",
    ):
        Trainer(experiment(other), run, resume=True)
    with pytest.raises(TrainingError, match=r"already holds checkpoint step-000016: pass --resume"):
        Trainer(experiment(data), run)
    # the failed attempts wrote nothing into the run
    assert json.loads((run / "config.json").read_text())["model"]["embedding_dim"] == 4
    # the command line: one line, exit status 2
    assert (
        main(["train", "--set", f"data.path={other}", "--set", "model.embedding_dim=4", "--out", str(run), "--resume"])
        == 2
    )
    assert "mdr: error: checkpoint" in capsys.readouterr().err
    capsys.readouterr()
    # eval may read a dataset whose tables grew (tests/test_next_day.py), not one whose tables shrank
    smaller = make_dataset(tmp_path / "smaller", items=48)
    assert main(["eval", "--run", str(run), "--data", str(smaller)]) == 2
    assert "table 'item' shrank: feature 'hist_item_id' has 48 ids, 60 in the checkpoint" in capsys.readouterr().err
    # --resume with nothing to resume from starts fresh and says so
    fresh = Trainer(experiment(data, max_steps=1), tmp_path / "fresh", resume=True)
    assert "no complete checkpoint" in capsys.readouterr().out and fresh.progress.step == 0


def test_differences_are_named() -> None:
    saved = {"columns": [{"name": "a", "cardinality": 3}, {"name": "b", "cardinality": 4}], "domains": ["x"]}
    now = {"columns": [{"name": "a", "cardinality": 5}], "domains": ["x", "y"]}
    assert differences(saved, now) == [
        "columns.a.cardinality: 3 in the checkpoint, 5 now",
        "columns.b: only in the checkpoint",
        'domains: ["x"] in the checkpoint, ["x", "y"] now',
    ]


def test_an_option_added_after_a_checkpoint_is_no_difference_at_its_default() -> None:
    """A checkpoint written before an option existed still loads while the option keeps its default."""
    from torchrec_mdr.config import to_dict
    from torchrec_mdr.training.checkpoint import check_identity

    current = {"model": {k: v for k, v in to_dict(ModelConfig(name="ads")).items() if k in ("name", "ads")}}
    older = json.loads(json.dumps(current))
    del older["model"]["ads"]["psrg_shared_init"]  # written before the option existed
    check_identity(older, current, Path("ckpt"), parts=("model",))
    changed = json.loads(json.dumps(current))
    changed["model"]["ads"]["psrg_shared_init"] = "xavier"  # a non-default value the checkpoint never had
    with pytest.raises(TrainingError, match="model.ads.psrg_shared_init: not in the checkpoint"):
        check_identity(older, changed, Path("ckpt"), parts=("model",))


def test_all_finite() -> None:
    from torchrec_mdr.training.distributed import init_distributed

    ctx = init_distributed("cpu")
    model = torch.nn.Linear(3, 70_000)  # weight [70000, 3]: two chunks of rows
    with torch.no_grad():
        model.weight.fill_(3e38)  # finite, but their sum overflows to inf: the exact check must decide
    assert all_finite(model, ctx)
    with torch.no_grad():
        model.weight[69_999, 2] = float("inf")
    assert not all_finite(model, ctx)
    with torch.no_grad():
        model.weight.fill_(0.0)
        model.bias[5] = float("nan")
    assert not all_finite(model, ctx)


def test_nan_loss_keeps_the_last_good_checkpoint(data: Path, tmp_path: Path) -> None:
    from torchrec_mdr.models.ranking import DenseArch
    from torchrec_mdr.training.trainer import Trainer

    run = tmp_path / "run"
    trainer = Trainer(experiment(data, checkpoint_every=2, log_every=100, pipeline="plain"), run)
    assert all_finite(trainer.model, trainer.ctx)
    dense = next(m for m in trainer.model.modules() if isinstance(m, DenseArch))
    calls = []

    def poison(_module: torch.nn.Module, _inputs: Any, output: tuple[torch.Tensor, torch.Tensor]) -> Any:
        calls.append(1)
        logits, auxiliary_loss = output
        return (logits * float("nan"), auxiliary_loss) if len(calls) == 3 else output  # step 3: NaN loss

    dense.register_forward_hook(poison)
    good = run / "checkpoints" / "step-000002"
    with pytest.raises(TrainingError, match=rf"loss became nan at step 4.*last good checkpoint is {good}"):
        trainer.fit()
    assert latest_name(run) == "step-000002" and checkpoint_names(run) == ["step-000002"]
    assert not all_finite(trainer.model, trainer.ctx)  # the NaN step broke the weights: nothing was saved


# --------------------------------------------------------------------------- 2 ranks


def _two_rank_worker(rank: int, world_size: int, data: Path, out: Path) -> None:
    """A 2-rank run to load on one rank; a straight 2-rank run with managed collision and one stopped at
    step 3 (mid eviction interval, one step after a checkpoint) and resumed; each rank saves its losses.
    Then a 2-rank managed-collision run with room for every id ("wide"), whose ids, rows, momentum
    and counts each rank saves (``wide-held-<rank>.pt``) to compare with the checkpoint loaded on 1 rank."""
    from torchrec_mdr.training.trainer import Trainer

    common = {"checkpoint_every": 2, "sharding": "row_wise"}
    fit(experiment(data, max_steps=6, **common), out / "straight")
    losses = {}
    losses["straight"], _, _ = fit(experiment(data, max_steps=6, eviction=True, **common), out / "managed")
    first, _, _ = fit(experiment(data, max_steps=3, eviction=True, **common), out / "managed-resumed")
    rest, _, _ = fit(experiment(data, max_steps=6, eviction=True, **common), out / "managed-resumed", resume=True)
    losses["resumed"] = first + rest
    (out / f"losses-{rank}.json").write_text(json.dumps(losses))
    trainer = Trainer(experiment(data, max_steps=6, eviction=True, zch_size=64, **common), out / "wide")
    trainer.fit()
    torch.save(held_rows(trainer), out / f"wide-held-{rank}.pt")


def test_two_ranks_resume_exactly_and_load_on_one(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from torchrec_mdr.training.trainer import Trainer

    spawn(_two_rank_worker, 2, data, tmp_path)
    for rank in range(2):
        losses = json.loads((tmp_path / f"losses-{rank}.json").read_text())
        assert len(losses["straight"]) == 6 and losses["resumed"] == losses["straight"]
    run = tmp_path / "straight"
    assert latest_name(run) == "step-000006"
    assert json.loads((run / "checkpoints" / "step-000006" / "state.json").read_text())["world_size"] == 2
    assert sorted(p.name for p in (run / "checkpoints" / "step-000006").glob("*.distcp")) == [
        "__0_0.distcp",
        "__1_0.distcp",
    ]

    # the 2-rank checkpoint on 1 rank: the same metrics as the 2-rank run's own final evaluation
    reference = json.loads((run / "metrics.json").read_text())
    capsys.readouterr()
    metrics = evaluate_run(run, split="test")
    assert "din on synthetic (test split)" in capsys.readouterr().out
    assert json.loads((run / "eval-test.json").read_text())["auc"] == metrics["auc"]
    assert metrics["rows"] == reference["rows"] and metrics["checkpoint"]["world_size"] == 2
    for key in ("auc", "gauc", "logloss"):
        assert metrics[key] == pytest.approx(reference[key], abs=1e-6)
    for name, values in reference["per_domain"].items():
        assert metrics["per_domain"][name]["rows"] == values["rows"]
        for key in ("auc", "gauc", "logloss"):  # a domain without positives has AUC nan on both sides
            assert metrics["per_domain"][name][key] == pytest.approx(values[key], abs=1e-6, nan_ok=True)

    # and resuming it on 1 rank: training goes on from the 2-rank state, saying it is not exact
    trainer = Trainer(experiment(data, max_steps=8, checkpoint_every=None, sharding="row_wise"), run, resume=True)
    text = capsys.readouterr().out
    assert "not an exact continuation" in text and "world size: 2 in the checkpoint, 1 now" in text
    assert trainer.progress.step == 6 and trainer.progress.epoch == 1
    assert trainer.progress.batch_in_epoch == 4  # 2 batches of 2 ranks = 4 batches of one
    trainer.fit()
    assert len(trainer.step_losses) == 2 and all(map(lambda v: v == v, trainer.step_losses))
    assert latest_name(run) == "step-000008"

    # the managed-collision runs: the resumed run's eviction counts are the straight run's
    managed = json.loads((tmp_path / "managed" / "metrics.json").read_text())["eviction"]
    assert json.loads((tmp_path / "managed-resumed" / "metrics.json").read_text())["eviction"] == managed
    assert all(managed[t]["eviction_rounds"] == 3 and managed[t]["admitted_ids"] > 0 for t in MANAGED_TABLES)

    # a 2-rank checkpoint with managed collision on 1 rank: every id goes to the single shard (31 usable
    # slots >= 2 x 31), with its row; evaluation is the 2-rank run's own (every test id holds a slot, so
    # no id falls to a shard's unknown-id row, which differs between the two layouts)
    wide = tmp_path / "wide"
    before = merge_held([torch.load(tmp_path / f"wide-held-{rank}.pt") for rank in range(2)])
    for table, ids in split_ids(data, "test").items():
        assert ids <= set(before[table]["ids"].tolist()), table
    reference = json.loads((wide / "metrics.json").read_text())
    capsys.readouterr()
    metrics = evaluate_run(wide, split="test")
    text = capsys.readouterr().out
    assert "resharded from 2 to 1 rank(s)" in text
    for table in MANAGED_TABLES:
        assert f"'{table}' {before[table]['ids'].numel()} ids kept, 0 dropped" in text
    for key in ("auc", "gauc", "logloss"):
        assert metrics[key] == pytest.approx(reference[key], abs=1e-6)
    for name, values in reference["per_domain"].items():
        for key in ("auc", "logloss"):
            assert metrics["per_domain"][name][key] == pytest.approx(values[key], abs=1e-6, nan_ok=True)
    # resumed on 1 rank (with the optimizer): the same ids, rows, momentum and counts, looked up directly,
    # and the eviction counts of the 2-rank run; training goes on, with the next round at step 8
    trainer = Trainer(
        experiment(data, max_steps=8, eviction=True, zch_size=64, checkpoint_every=None, sharding="row_wise"),
        wide,
        resume=True,
    )
    after = held_rows(trainer)
    for table in MANAGED_TABLES:
        for name in ("ids", "weights", "momentum", "counts"):
            assert torch.equal(after[table][name], before[table][name]), (table, name)
        assert after[table]["momentum"].gt(0).any()
    assert eviction_totals(trainer) == reference["eviction"]
    resumed = trainer.fit()
    assert len(trainer.step_losses) == 2 and all(v == v for v in trainer.step_losses)
    for table in MANAGED_TABLES:
        assert resumed["eviction"][table]["eviction_rounds"] == 4
        assert resumed["eviction"][table]["admitted_ids"] >= reference["eviction"][table]["admitted_ids"]


E = torch.iinfo(torch.int64).max  # a free slot


def test_reshard_plan_moves_ids_to_their_new_shard_and_drops_the_lowest_counts() -> None:
    """:func:`plan_table` on hand-made slot maps of 8 rows, ids placed by fbgemm's rule for an input
    size of 10 (ids 0-4 -> shard 0 and 5-9 -> shard 1 of 2; ids >= 10 by parity)."""
    from torchrec_mdr.sparse.mch.reshard import SlotMaps, bucket_owner, plan_table

    def owner(world_size: int):
        return lambda ids: bucket_owner(ids, 10, world_size, world_size)

    assert bucket_owner(torch.tensor([0, 4, 5, 9, 12, 13]), 10, 2, 2).tolist() == [0, 0, 1, 1, 0, 1]
    # 2 -> 1: shard 0 holds 1, 3, 12 (rows 2, 0, 1; row 3 its unknown row), shard 1 holds 6, 13 (rows 5, 4)
    two = SlotMaps(
        torch.tensor([1, 3, 12, E, 6, 13, E, E]),
        torch.tensor([2, 0, 1, 3, 5, 4, 6, 7]),
        {"counts": torch.tensor([5, 2, 7, E, 4, 1, 0, E])},
    )
    plan = plan_table(two, [0, 4, 8], [0, 8], owner(1))
    assert plan.slots.raw_ids.tolist() == [1, 3, 6, 12, 13, E, E, E]
    assert plan.slots.rows.tolist() == [2, 0, 5, 1, 4, 3, 6, 7]  # every id keeps its row; 7 stays the unknown row
    assert plan.slots.metadata["counts"].tolist() == [5, 2, 4, 7, 1, 0, 0, E]
    assert plan.source_rows.tolist() == list(range(8)) and plan.dropped.numel() == 0
    # 1 -> 2: shard 0 gets 1, 2, 3, 4, 12 for 3 usable slots: 2 (count 1) and 12 (count 3) are dropped
    one = SlotMaps(
        torch.tensor([1, 2, 3, 4, 6, 12, 13, E]),
        torch.tensor([6, 0, 5, 1, 2, 3, 4, 7]),
        {"counts": torch.tensor([5, 1, 5, 9, 2, 3, 8, E])},
    )
    plan = plan_table(one, [0, 8], [0, 4, 8], owner(2))
    assert plan.slots.raw_ids.tolist() == [1, 3, 4, E, 6, 13, E, E]
    # 4 keeps row 1; 1 and 3 take the free rows 0 and 2; 13 keeps row 4, 6 takes row 5; rows 3 and 7: unknown
    assert plan.slots.rows.tolist() == [0, 2, 1, 3, 5, 4, 6, 7]
    assert plan.slots.metadata["counts"].tolist() == [5, 5, 9, E, 2, 8, 0, E]
    assert plan.source_rows.tolist() == [6, 1, 5, 7, 4, 2, 6, 7]  # both unknown rows take the old unknown row 7
    assert plan.dropped.tolist() == [2, 12] and sorted(plan.kept.tolist()) == [1, 3, 4, 6, 13]
    # LRU keeps no counts: the least recently seen go
    one.metadata = {"last_access_iter": torch.tensor([4, 9, 8, 7, 2, 3, 8, 4])}
    plan = plan_table(one, [0, 8], [0, 4, 8], owner(2))
    assert plan.dropped.tolist() == [1, 12] and plan.slots.raw_ids.tolist()[:3] == [2, 3, 4]
    with pytest.raises(TrainingError, match="free unknown-id slot"):
        plan_table(SlotMaps(torch.arange(8), torch.arange(8)), [0, 8], [0, 4, 8], owner(2))


def _one_to_two_worker(rank: int, world_size: int, data: Path, out: Path) -> None:
    """Load 1-rank managed-collision checkpoints on 2 ranks: save each rank's held ids and rows, the
    eviction counts, rank 0's printed notes and an ``evaluate_run``; train the narrow one on 2 more steps."""
    import contextlib
    import io

    from torchrec_mdr.training.trainer import Trainer

    printed = io.StringIO()
    results: dict[str, Any] = {}
    with contextlib.redirect_stdout(printed):
        for name, zch_size in (("wide", 64), ("narrow", 32)):
            trainer = Trainer(
                experiment(
                    data, max_steps=8, eviction=True, zch_size=zch_size, checkpoint_every=None, sharding="row_wise"
                ),
                out / f"{name}-copy",
                resume=True,
            )
            torch.save(held_rows(trainer), out / f"{name}-held-{rank}.pt")
            results[name] = {"loaded": eviction_totals(trainer)}
            if name == "narrow":
                results[name]["trained"] = trainer.fit()["eviction"]
                results[name]["losses"] = trainer.step_losses
        results["eval"] = evaluate_run(out / "wide", split="test")
    (out / f"printed-{rank}.txt").write_text(printed.getvalue())
    (out / f"results-{rank}.json").write_text(json.dumps(results))


def test_managed_collision_checkpoint_from_one_rank_loads_on_two(data: Path, tmp_path: Path) -> None:
    """1 -> 2 ranks. "wide" (64 slots): every id fits its new shard (31 usable slots, <= 30 ids each), so
    ids, rows, momentum, counts and the evaluation are the 1-rank run's. "narrow" (32 slots: 31 ids held
    on 1 rank, 15 usable slots per shard on 2): the lowest-count ids of an overflowing shard are dropped
    and counted as evicted; the kept ones keep their rows; training goes on."""
    import shutil

    from torchrec_mdr.sparse.mch.reshard import bucket_owner
    from torchrec_mdr.training.trainer import Trainer

    single: dict[str, Any] = {}
    for name, zch_size in (("wide", 64), ("narrow", 32)):
        trainer = Trainer(
            experiment(data, max_steps=6, eviction=True, zch_size=zch_size, checkpoint_every=None, sharding="row_wise"),
            tmp_path / name,
        )
        single[name] = {"metrics": trainer.fit(), "held": held_rows(trainer)}
        shutil.copytree(tmp_path / name, tmp_path / f"{name}-copy")
    spawn(_one_to_two_worker, 2, data, tmp_path)
    results = [json.loads((tmp_path / f"results-{rank}.json").read_text()) for rank in range(2)]
    printed = (tmp_path / "printed-0.txt").read_text()
    assert "resharded from 1 to 2 rank(s)" in printed and "not an exact continuation" in printed
    assert (tmp_path / "printed-1.txt").read_text().count("resharded") == 0  # rank 0 speaks

    # wide: nothing dropped, everything as on 1 rank
    held = merge_held([torch.load(tmp_path / f"wide-held-{rank}.pt") for rank in range(2)])
    for table in MANAGED_TABLES:
        assert f"'{table}' {single['wide']['held'][table]['ids'].numel()} ids kept, 0 dropped" in printed
        for name in ("ids", "weights", "momentum", "counts"):
            assert torch.equal(held[table][name], single["wide"]["held"][table][name]), (table, name)
    reference = single["wide"]["metrics"]
    assert results[0]["wide"]["loaded"] == results[1]["wide"]["loaded"] == reference["eviction"]
    for key in ("auc", "gauc", "logloss"):  # every held id and the unknown row (copied to both shards) as before
        assert results[0]["eval"][key] == pytest.approx(reference[key], abs=1e-6)

    # narrow: per new shard, the lowest counts go
    spec = DatasetSpec.load(data)
    parts = [torch.load(tmp_path / f"narrow-held-{rank}.pt") for rank in range(2)]
    kept = merge_held(parts)
    loaded = results[0]["narrow"]["loaded"]
    for table in MANAGED_TABLES:
        before = single["narrow"]["held"][table]
        position = {int(i): n for n, i in enumerate(before["ids"].tolist())}
        kept_ids = set(kept[table]["ids"].tolist())
        dropped = sorted(set(position) - kept_ids)
        assert kept_ids <= set(position) and dropped, table
        assert f"'{table}' {len(kept_ids)} ids kept, {len(dropped)} dropped" in printed
        at = torch.tensor([position[i] for i in kept[table]["ids"].tolist()])
        for name in ("weights", "momentum", "counts"):
            assert torch.equal(kept[table][name], before[name][at]), (table, name)
        owners = bucket_owner(torch.tensor(dropped), spec.tables[table], 2, 2)
        for rank in range(2):
            assert torch.all(bucket_owner(parts[rank][table]["ids"], spec.tables[table], 2, 2) == rank)
            lost = before["counts"][[position[i] for i, o in zip(dropped, owners.tolist()) if o == rank]]
            if lost.numel():  # a shard that dropped ids is full, and kept only higher or equal counts
                assert parts[rank][table]["ids"].numel() == 32 // 2 - 1
                assert int(lost.max()) <= int(parts[rank][table]["counts"].min())
        old = single["narrow"]["metrics"]["eviction"][table]
        assert loaded[table] == old | {
            "ids_held": len(kept_ids),
            "occupancy": len(kept_ids) / 32,
            "evicted_ids": old["evicted_ids"] + len(dropped),
        }
        trained = results[0]["narrow"]["trained"][table]
        assert trained["eviction_rounds"] == old["eviction_rounds"] + 1
        assert trained["admitted_ids"] - trained["evicted_ids"] == trained["ids_held"]
    assert all(len(r["narrow"]["losses"]) == 2 and all(v == v for v in r["narrow"]["losses"]) for r in results)


def test_old_parameter_names_map_to_the_toolkit_names() -> None:
    from torchrec_mdr.training.legacy_names import legacy_aliases, old_name

    prefix = "model.dense_arch.model."
    assert old_name(prefix + "input.domain_embedding.weight") == prefix + "domain_embedding.weight"
    assert old_name(prefix + "input.dense_field.bias") == prefix + "dense_field.bias"  # DeepFM
    assert old_name(prefix + "pooling.1.query_projection.linear.bias") == prefix + "queries.1.linear.bias"
    assert old_name(prefix + "pooling.0.attention.scorer.0.weight") == prefix + "attentions.0.scorer.0.weight"
    assert old_name(prefix + "mlp.0.weight") is None and old_name(prefix + "blocks.0.psrg.shared_weight") is None
    names = [prefix + "input.domain_embedding.weight", prefix + "mlp.0.weight"]
    old = {"model." + prefix + "domain_embedding.weight", "model." + prefix + "mlp.0.weight"}
    assert legacy_aliases(names, old, prefix="model.") == {names[0]: prefix + "domain_embedding.weight"}
    assert legacy_aliases(names, {"model." + n for n in names}, prefix="model.") == {}  # new names: as they are


@pytest.mark.parametrize("model", ["din", "dnn"])
def test_a_checkpoint_written_under_the_old_names_loads_and_evaluates_the_same(
    model: str, data: Path, straight: dict[str, Any], tmp_path: Path
) -> None:
    """A checkpoint rewritten with the old parameter names evaluates exactly as the original does: DIN's
    pre-toolkit dense names (``domain_embedding``, ``queries.<i>``, ``attentions.<i>``), DNN's sequence tables
    from before they were looked up pooled (``embedding_collection``)."""
    import shutil

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemWriter

    from torchrec_mdr.training.evaluate import Evaluator, run_config
    from torchrec_mdr.training.legacy_names import old_name

    if model == "din":
        source = straight["run"]
    else:
        source = tmp_path / "dnn"
        config = experiment(data, max_steps=4, checkpoint_every=None)
        fit(replace(config, model=replace(config.model, name="dnn")), source)
    expected = evaluate_run(source, checkpoint="latest")
    old_run = tmp_path / "old"
    (old_run / "checkpoints").mkdir(parents=True)
    shutil.copyfile(source / "config.json", old_run / "config.json")
    name = latest_name(source)
    shutil.copytree(
        source / "checkpoints" / name,
        old_run / "checkpoints" / name,
        ignore=shutil.ignore_patterns("*.distcp", ".metadata"),
    )
    (old_run / "checkpoints" / "latest").write_text(name + "\n")
    evaluator = Evaluator(run_config(source), source)
    evaluator.load("latest")
    state = evaluator.model.state_dict()
    renamed = {(old_name(k) or k): v for k, v in state.items()}
    assert len(set(renamed) - set(state)) >= (3 if model == "din" else 1)  # each renamed kind is there
    dcp.save({"model": renamed}, storage_writer=FileSystemWriter(str(old_run / "checkpoints" / name)))
    got = evaluate_run(old_run, checkpoint="latest")
    for key in ("auc", "logloss", "gauc"):
        assert got[key] == expected[key], key


def test_config_json_holds_only_the_chosen_models_options_and_loads_back(straight: dict[str, Any]) -> None:
    from torchrec_mdr.training.evaluate import run_config

    run = straight["run"]
    stored = json.loads((run / "config.json").read_text())["model"]
    assert stored["name"] == "din" and stored["din"]["attention_hidden"] == [8]
    assert "dnn" not in stored and "ads" not in stored  # 20 models' defaults are not repeated in every run
    loaded = run_config(run)
    assert loaded.model == experiment(loaded.data.path).model  # the other sections come back at their defaults


def test_an_older_config_json_with_every_models_section_loads_and_the_chosen_section_stays_strict(
    straight: dict[str, Any], tmp_path: Path
) -> None:
    """Runs trained before config.json kept only the chosen model's section store every model's options; an
    option since removed from a model not chosen must not stop ``mdr eval`` / ``predict`` / ``export``."""
    from torchrec_mdr.config import ConfigError, to_dict
    from torchrec_mdr.training.evaluate import run_config

    run = tmp_path / "old-run"
    shutil.copytree(straight["run"], run)
    stored = json.loads((run / "config.json").read_text())
    full = to_dict(run_config(run))
    full["model"]["m2m"]["head_dim"] = 16  # an option M2M had once
    full["model"]["retired_model"] = {"width": 3}  # a model no longer registered
    (run / "config.json").write_text(json.dumps(full))
    loaded = run_config(run)
    assert loaded.model == run_config(straight["run"]).model
    assert loaded.model.din.attention_hidden == stored["model"]["din"]["attention_hidden"] == [8]
    full["model"]["din"]["attention_hiden"] = [8]  # a typo in the chosen model's section is still refused
    (run / "config.json").write_text(json.dumps(full))
    with pytest.raises(ConfigError, match=r"unknown key .*model\.din\.attention_hiden"):
        run_config(run)
