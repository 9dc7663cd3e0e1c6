"""Low-frequency id eviction (managed collision): remapping, eviction, sharding, the CPU fallback, training.

The controlled stream (:data:`STEPS`, eviction every 2 steps, 7 usable slots per shard): hot ids
come 3 times in every batch, cold ids once (steps 0-1), warm ids once per batch in steps 2-3. The
first round (step 1) gives the hot and cold ids a slot each and fills the table; the second round
(step 3) must evict exactly the cold ids (seen once) for the warm ones (seen twice), while the hot
ids keep their slots and their trained rows. Every id is at or above the spec's cardinality, so on
2 ranks its shard is ``id mod 2`` (the placement rule of :mod:`torchrec_mdr.sparse.mch.eviction`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest
import torch
from helpers import write_toy
from multiprocess import spawn
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_mdr.config import ConfigError, load_config
from torchrec_mdr.data.reader import ReaderConfig, make_dataloader
from torchrec_mdr.data.spec import ColumnSpec, DatasetSpec
from torchrec_mdr.errors import TrainingError
from torchrec_mdr.experiment import EvictionConfig, ExperimentConfig, OptimizerConfig, SparseConfig, TrainConfig
from torchrec_mdr.models.dnn import DNNConfig
from torchrec_mdr.models.registry import ModelConfig
from torchrec_mdr.sparse.mch import fbgemm_cpu_fallback
from torchrec_mdr.sparse.arch import SparseArch
from torchrec_mdr.sparse.mch.eviction import (
    TrackedMCHModule,
    check_eviction,
    eviction_stats,
    managed_reader_spec,
    tracked_modules,
)

CARD = 100  # the spec's cardinality of the managed tables; every stream id is above it
HOT = list(range(1000, 1006))
COLD = list(range(2000, 2008))
WARM = list(range(3000, 3008))
STEPS = [HOT * 3 + COLD[:4], HOT * 3 + COLD[4:], HOT * 3 + WARM, HOT * 3 + WARM]  # global batches (item ids)
TABLES = {"item": "item_id", "seqitem": "hist"}  # managed table -> its feature (pooled, unpooled)


def stream_spec() -> DatasetSpec:
    return DatasetSpec(
        "stream",
        [
            ColumnSpec("click", "label"),
            ColumnSpec("domain", "domain"),
            ColumnSpec("user_id", "id", table="user", cardinality=10),
            ColumnSpec("item_id", "id", table="item", cardinality=CARD),
            ColumnSpec("hist", "sequence", table="seqitem", cardinality=CARD, sequence_group="h", max_length=1),
        ],
        ["a"],
        {},
    )


def eviction_config(world_size: int, policy: str = "lfu") -> EvictionConfig:
    # 7 usable slots per shard (each shard keeps one row for unknown ids)
    return EvictionConfig(
        tables=list(TABLES),
        policy=policy,
        zch_size=8 * world_size if world_size > 1 else 15,
        eviction_interval=2,
        input_hash_size=10**6,
    )  # type: ignore[arg-type]


def stream_batch(ids: list[int]) -> tuple[KeyedJaggedTensor, KeyedJaggedTensor]:
    """(pooled KJT: user_id = 1, item_id = id; sequence KJT: hist = [id]) with one row per id."""
    n = len(ids)
    pooled = KeyedJaggedTensor(
        ["user_id", "item_id"], torch.tensor([1] * n + ids), lengths=torch.ones(2 * n, dtype=torch.int32)
    )
    sequence = KeyedJaggedTensor(["hist"], torch.tensor(ids), lengths=torch.ones(n, dtype=torch.int32))
    return pooled, sequence


class SumModel(nn.Module):
    """SparseArch -> the sum of every embedding value (gradient 1 on every looked-up row)."""

    def __init__(self, arch: SparseArch) -> None:
        super().__init__()
        self.arch = arch

    def forward(self, pooled: KeyedJaggedTensor, sequence: KeyedJaggedTensor) -> torch.Tensor:
        bags, unpooled = self.arch(pooled, sequence)
        return bags.values().sum() + sum(jt.values().sum() for jt in unpooled.values())


def local_module(model: nn.Module, table: str) -> TrackedMCHModule:
    (module,) = [m for m in tracked_modules(model) if m.table == table]
    return module


def weight_key(table: str) -> str:
    return (
        f"arch.managed_embedding_bag_collection._embedding_module.embedding_bags.{table}.weight"
        if table == "item"
        else f"arch.managed_embedding_collection._embedding_module.embeddings.{table}.weight"
    )


def local_rows(model: nn.Module, table: str, sharded: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weights [local rows, D], row-wise Adagrad momentum [local rows] or None) of this process's shard."""
    if not sharded:
        return model.state_dict()[weight_key(table)].detach().clone(), None
    weights = model.state_dict()[weight_key(table)].local_shards()[0].tensor.detach().clone()
    state = model.fused_optimizer.state_dict()["state"][weight_key(table)][f"{table}.momentum1"]
    return weights, state.local_shards()[0].tensor.detach().clone()


def run_stream(model: nn.Module, rank: int, world_size: int, step: Callable[[torch.Tensor], None]) -> dict:
    """Feed :data:`STEPS` (rank r gets rows r::world_size) and check every claim of the module doc."""
    sharded = world_size > 1
    tables = list(TABLES)

    def owned(ids: list[int]) -> list[int]:
        return [i for i in ids if i % world_size == rank]

    def forward(i: int) -> torch.Tensor:
        return model(*stream_batch(STEPS[i][rank::world_size]))

    step(forward(0))
    step_1 = forward(1)  # round 1
    slots: dict[str, dict[int, int]] = {}
    for table in tables:
        m = local_module(model, table)
        unknown = m._output_global_offset + m._zch_size - 1
        mine = owned(HOT + COLD)
        found = m.slot_of(torch.tensor(mine)).tolist()
        assert unknown not in found and len(set(found)) == len(found) == 14 // world_size, (table, found)
        assert all(m._output_global_offset <= s < unknown for s in found)
        others = [i for i in HOT + COLD if i not in mine]  # held by the other shard, unknown here
        assert m.slot_of(torch.tensor(others or [0])).eq(unknown).all()
        slots[table] = dict(zip(mine, found))
    stats = eviction_stats(model, tables)
    for table in tables:
        assert stats[table].to_dict() == {
            "zch_size": 15 if not sharded else 8 * world_size,
            "ids_held": 14,
            "occupancy": 14 / stats[table].zch_size,
            "evicted_ids": 0,
            "admitted_ids": 14,
            "eviction_rounds": 1,
        }
    step(step_1)
    step(forward(2))
    before = {table: local_rows(model, table, sharded) for table in tables}
    step_3 = forward(3)  # round 2: the cold ids must go, the warm ones come in
    for table in tables:
        m = local_module(model, table)
        offset, unknown = m._output_global_offset, m._output_global_offset + m._zch_size - 1
        hot, cold = owned(HOT), owned(COLD)
        hot_slots = [slots[table][i] for i in hot]
        cold_slots = [slots[table][i] for i in cold]
        assert m.slot_of(torch.tensor(hot)).tolist() == hot_slots, table
        assert m.slot_of(torch.tensor(cold)).eq(unknown).all(), table
        assert sorted(m.slot_of(torch.tensor(owned(WARM))).tolist()) == sorted(cold_slots), table
        weights, momentum = local_rows(model, table, sharded)
        old_weights, old_momentum = before[table]
        hot_rows = torch.tensor(hot_slots) - offset
        cold_rows = torch.tensor(cold_slots) - offset
        torch.testing.assert_close(weights[hot_rows], old_weights[hot_rows], rtol=0, atol=0)  # trained rows kept
        assert old_weights[hot_rows].abs().sum() > 0
        if sharded:  # torchrec re-initialises evicted rows; the CPU fallback zeroes their Adagrad state
            assert (weights[cold_rows] != old_weights[cold_rows]).all(dim=1).all(), table
            assert momentum[cold_rows].eq(0).all() and old_momentum[cold_rows].gt(0).any(), table
            torch.testing.assert_close(momentum[hot_rows], old_momentum[hot_rows], rtol=0, atol=0)
            assert old_momentum[hot_rows].gt(0).all()
    stats = eviction_stats(model, tables)
    for table in tables:
        assert (
            stats[table].ids_held,
            stats[table].evicted_ids,
            stats[table].admitted_ids,
            stats[table].eviction_rounds,
        ) == (14, 8, 22, 2), (table, stats[table])
    step(step_3)
    return {t: s.to_dict() for t, s in stats.items()}


# --------------------------------------------------------------------------- unsharded


@pytest.mark.parametrize("policy", ["lfu", "lru", "distance_lfu"])
def test_unsharded_stream_evicts_rare_ids_and_keeps_hot_rows(policy: str) -> None:
    torch.manual_seed(0)
    model = SumModel(SparseArch(stream_spec(), 4, eviction=eviction_config(1, policy)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def step(loss: torch.Tensor) -> None:
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    stats = run_stream(model, 0, 1, step)
    assert stats["item"]["occupancy"] == pytest.approx(14 / 15)


def test_evaluation_remaps_but_never_evicts() -> None:
    model = SumModel(SparseArch(stream_spec(), 4, eviction=eviction_config(1)))
    model.eval()
    for ids in STEPS:
        model(*stream_batch(ids))
    assert eviction_stats(model)["item"].eviction_rounds == 0
    assert local_module(model, "item").ids_held() == 0


def test_module_states_load_under_the_names_of_older_checkpoints() -> None:
    """rank{R}.pt keys each managed module's history and counters by its name inside the DMP / DDP
    wrappers; checkpoints written before keyed it by ``named_modules()`` of the DDP-wrapped DMP. Both
    restore the same ids, counts and step counters (torchrec_mdr.training.data_parallel: no DDP at world
    size 1, so the wrapped name would differ between world sizes)."""
    from torchrec_mdr.sparse.mch.state import load_module_states, module_states, saved_key

    def model() -> SumModel:
        torch.manual_seed(0)
        return SumModel(SparseArch(stream_spec(), 4, eviction=eviction_config(1)))

    trained = model()
    for ids in STEPS[:3]:  # one round at step 1, then step 2's ids in the history
        trained(*stream_batch(ids)).backward()
    states = module_states(trained)
    names = {"arch.managed_embedding_bag_collection._managed_collision_collection._managed_collision_modules.item"}
    assert names <= set(states) and all(not name.startswith("_dmp") for name in states)
    assert saved_key("_dmp_wrapped_module.module." + next(iter(names))) == next(iter(names))
    assert saved_key("model.sparse_arch.x") == "model.sparse_arch.x"
    item = states[next(iter(names))]
    assert item["counters"]["eviction_rounds"] == 1 and item["history_offset"] == len(STEPS[2])
    for saved in (states, {"_dmp_wrapped_module.module." + name: state for name, state in states.items()}):
        fresh = model()
        assert load_module_states(fresh, saved) == []  # every module found its history
        restored = module_states(fresh)
        assert set(restored) == set(states)
        for name, state in states.items():
            for key, value in state.items():
                if isinstance(value, torch.Tensor):
                    assert torch.equal(restored[name][key], value), (name, key)
                elif key == "history_metadata":
                    assert all(torch.equal(restored[name][key][k], v) for k, v in value.items()), name
                else:
                    assert restored[name][key] == value, (name, key)


# --------------------------------------------------------------------------- sharded (2 ranks, gloo)


def _sharded_worker(rank: int, world_size: int, data: Path, out: Path) -> None:
    from torchrec_mdr.training.distributed import init_distributed
    from torchrec_mdr.training.optimizers import apply_sparse_optimizer
    from torchrec_mdr.training.sharding import wrap_model
    from torchrec_mdr.training.trainer import Trainer

    ctx = init_distributed("cpu")
    torch.manual_seed(0)
    model = SumModel(
        SparseArch(
            stream_spec(), 4, device=torch.device("meta"), eviction=eviction_config(world_size), mc_buckets=world_size
        )
    )
    apply_sparse_optimizer(model, OptimizerConfig(sparse="rowwise_adagrad", sparse_lr=0.1), ctx.device)
    sharded = wrap_model(model, "auto", ctx)  # the planner for 'user', a row_wise hand plan for the managed tables
    assert fbgemm_cpu_fallback.has_cpu_kernel()
    stats = run_stream(sharded, rank, world_size, lambda loss: loss.backward())  # fused optimizer in backward
    (out / f"stream-{rank}.json").write_text(json.dumps(stats))
    # the same processes: a sharded Trainer run with eviction through TrainPipelineSparseDist
    Trainer(trainer_config(data, pipeline="sparse_dist"), out / "run").fit()


def test_sharded_stream_and_trainer_on_two_ranks(synthetic: Path, tmp_path: Path) -> None:
    spawn(_sharded_worker, 2, synthetic, tmp_path)
    for rank in range(2):  # every rank reports the same global counts
        stats = json.loads((tmp_path / f"stream-{rank}.json").read_text())
        assert (
            stats["item"]
            == stats["seqitem"]
            == {
                "zch_size": 16,
                "ids_held": 14,
                "occupancy": 14 / 16,
                "evicted_ids": 8,
                "admitted_ids": 22,
                "eviction_rounds": 2,
            }
        )
    check_trainer_metrics(tmp_path / "run", world_size=2)


# --------------------------------------------------------------------------- training through Trainer


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from data_prep.synthetic import Options, convert

    path = tmp_path_factory.mktemp("eviction") / "synthetic"
    convert(
        Options(
            version=1, out=path, rows=900, users=40, items=60, categories=6, brands=10, seq_length=5, min_seq_length=0
        )
    )
    return path


TRAIN_STEPS, INTERVAL, ZCH = 12, 4, 24


def trainer_config(data: Path, pipeline: str = "plain") -> ExperimentConfig:
    # 'item' (60 items; candidate + behaviour sequence, unpooled) and 'user' (40 users, pooled) in 24 rows
    return ExperimentConfig(
        data=ReaderConfig(path=data, batch_size=32, shuffle=False),
        model=ModelConfig(name="dnn", embedding_dim=4, dnn=DNNConfig(hidden=[8])),
        sparse=SparseConfig(
            sharding="auto", eviction=EvictionConfig(tables=["item", "user"], zch_size=ZCH, eviction_interval=INTERVAL)
        ),
        optimizer=OptimizerConfig(sparse="rowwise_adagrad", sparse_lr=0.1, dense="adam", dense_lr=0.01),
        train=TrainConfig(max_steps=TRAIN_STEPS, log_every=INTERVAL, pipeline=pipeline, device="cpu"),  # type: ignore
    )


def check_trainer_metrics(run: Path, world_size: int) -> dict:
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train"]["steps"] == TRAIN_STEPS and 0 < metrics["train"]["final_loss"] < 5
    for table, count in (("item", 60), ("user", 40)):
        stats = metrics["eviction"][table]
        assert stats["zch_size"] == ZCH < count
        assert stats["eviction_rounds"] == TRAIN_STEPS // INTERVAL
        assert 0 < stats["ids_held"] <= ZCH - world_size  # one unknown-id row per shard
        assert stats["occupancy"] == pytest.approx(stats["ids_held"] / ZCH)
        assert stats["admitted_ids"] - stats["evicted_ids"] == stats["ids_held"]
    return metrics


def test_trainer_with_eviction_reports_occupancy(synthetic: Path, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from torchrec_mdr.training.trainer import Trainer

    run = tmp_path / "run"
    Trainer(trainer_config(synthetic), run).fit()
    metrics = check_trainer_metrics(run, world_size=1)
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    occupancy = events.Scalars("eviction/item/occupancy")
    assert [e.step for e in occupancy] == list(range(INTERVAL, TRAIN_STEPS + 1, INTERVAL))
    assert occupancy[-1].value == pytest.approx(metrics["eviction"]["item"]["occupancy"])
    assert "eviction/user/evicted_ids" in events.Tags()["scalars"]


# --------------------------------------------------------------------------- ids and config errors


def test_reader_passes_managed_raw_ids_beyond_the_cardinality(tmp_path: Path) -> None:
    data = write_toy(tmp_path / "toy", n=300, max_item=80)  # item ids up to 79, cardinality 50, oov "hash"
    config = ReaderConfig(path=data, batch_size=300, shuffle=False)
    plain = next(iter(make_dataloader(config, "train")))
    spec = managed_reader_spec(DatasetSpec.load(data), EvictionConfig(tables=["item"]))
    managed = next(iter(make_dataloader(config, "train", spec=spec)))
    for kjt, key in ((plain.sequence_features, "item_id"), (plain.sequence_features, "hist_item_id")):
        assert int(kjt[key].values().max()) < 50
    raw_items = managed.sequence_features["item_id"].values()
    assert int(raw_items.max()) >= 50
    torch.testing.assert_close(raw_items % 50, plain.sequence_features["item_id"].values())
    torch.testing.assert_close(managed.sparse_features.values(), plain.sparse_features.values())  # unmanaged
    spec = managed_reader_spec(DatasetSpec.load(data), EvictionConfig(tables=["item"], input_hash_size=1000))
    assert {c.name: c.cardinality for c in spec.columns if c.table_name == "item"} == {
        "item_id": 1000,
        "hist_item_id": 1000,
    }


def test_config_errors() -> None:
    spec = stream_spec()
    with pytest.raises(ConfigError, match="no embedding table 'items'.*item, seqitem, user"):
        check_eviction(spec, EvictionConfig(tables=["items"]))
    with pytest.raises(ConfigError, match="no embedding table 'item_id'"):
        SparseArch(spec, 4, eviction=EvictionConfig(tables=["item_id"]))  # a column name, not a table
    with pytest.raises(ConfigError, match="'item' is listed twice"):
        check_eviction(spec, EvictionConfig(tables=["item", "item"]))
    with pytest.raises(ConfigError, match=r"input_hash_size = 50 is smaller than table 'item''s cardinality 100"):
        check_eviction(spec, EvictionConfig(tables=["item"], input_hash_size=50))
    with pytest.raises(ConfigError, match="zch_size = 3 is too small for 2 rank"):
        check_eviction(spec, EvictionConfig(tables=["item"], zch_size=3), world_size=2)
    check_eviction(spec, EvictionConfig(tables=[], zch_size=1), world_size=2)  # nothing managed: nothing to check


def test_config_file_errors(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text('[sparse.eviction]\ntables = ["item"]\npolicy = "lfu"\n')
    config = load_config(ExperimentConfig, path, ["sparse.eviction.policy=distance_lfu", "sparse.eviction.zch_size=64"])
    assert (config.sparse.eviction.policy, config.sparse.eviction.zch_size) == ("distance_lfu", 64)
    with pytest.raises(ConfigError, match="sparse.eviction.policy"):
        load_config(ExperimentConfig, path, ["sparse.eviction.policy=fifo"])
    with pytest.raises(ConfigError, match="sparse.eviction.zch_size"):
        load_config(ExperimentConfig, path, ["sparse.eviction.zch_size=0"])


def test_trainer_rejects_an_unknown_table_before_training(synthetic: Path, tmp_path: Path) -> None:
    from torchrec_mdr.training.trainer import Trainer

    config = trainer_config(synthetic)
    config.sparse.eviction.tables = ["item", "movie"]
    with pytest.raises(ConfigError, match="no embedding table 'movie'"):
        Trainer(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- the fbgemm CPU fallback


def _cpu_tbe(dims: list[tuple[int, int]]):
    from fbgemm_gpu.split_embedding_configs import EmbOptimType
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
        ComputeDevice,
        SplitTableBatchedEmbeddingBagsCodegen,
    )

    return SplitTableBatchedEmbeddingBagsCodegen(
        [(rows, dim, EmbeddingLocation.HOST, ComputeDevice.CPU) for rows, dim in dims],
        optimizer=EmbOptimType.EXACT_ROWWISE_ADAGRAD,
        learning_rate=0.1,
    )


def _reference_reset(weights: list[torch.Tensor], momentum: list[torch.Tensor], table: int, rows: list[int]) -> None:
    """The op's documented semantics, table by table: the pruned rows' D weights and momentum become 0."""
    weights[table][rows] = 0
    momentum[table][rows] = 0


def test_fallback_matches_the_ops_semantics_on_a_cpu_table_batch() -> None:
    torch.manual_seed(0)
    tbe = _cpu_tbe([(10, 8), (6, 4)])
    holder = nn.Module()
    holder.tbe = tbe
    assert fbgemm_cpu_fallback.install(holder)  # fbgemm-gpu-cpu 1.8.0 has no CPU kernel: ours is registered
    assert fbgemm_cpu_fallback.has_cpu_kernel()
    with torch.no_grad():  # distinct non-zero weights, then one step for non-zero momentum
        for w in tbe.split_embedding_weights():
            w.copy_(torch.randn_like(w))
    indices, offsets = torch.tensor([1, 2, 3, 4, 0, 1, 5, 3]), torch.tensor([0, 2, 4, 6, 8])
    tbe(indices, offsets).pow(2).sum().backward()
    weights = [w.clone() for w in tbe.split_embedding_weights()]
    momentum = [m[0].clone() for m in tbe.split_optimizer_states()]
    assert all(m.gt(0).any() for m in momentum)
    for table, rows in ((1, [1, 3]), (0, [4, 9])):
        tbe.reset_embedding_weight_momentum(  # fbgemm's own entry point, as torchrec calls it
            pruned_indices=torch.tensor(rows),
            pruned_indices_offsets=torch.tensor([0, len(rows)]),
            logical_table_ids=torch.tensor([table], dtype=torch.int32),
            buffer_ids=torch.tensor([0], dtype=torch.int32),
        )
        _reference_reset(weights, momentum, table, rows)
        for got, want in zip(tbe.split_embedding_weights(), weights):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
        for got, want in zip(tbe.split_optimizer_states(), momentum):
            torch.testing.assert_close(got[0], want, rtol=0, atol=0)


def test_fallback_on_device_placed_tensors_and_two_buffers() -> None:
    """The op's arguments as a DEVICE-placed table batch passes them: two tables, two pruned buffers."""
    fbgemm_cpu_fallback.install(_holder(_cpu_tbe([(2, 4)])))
    d_offsets = torch.tensor([0, 4, 12], dtype=torch.int32)
    weights = torch.arange(5 * 4 + 3 * 8, dtype=torch.float32) + 1
    momentum = torch.arange(8, dtype=torch.float32) + 1
    expected_w = [weights[:20].view(5, 4).clone(), weights[20:].view(3, 8).clone()]
    expected_m = [momentum[:5].clone(), momentum[5:].clone()]
    pruned = torch.tensor([0, 4, 2])  # buffer 0: rows 0, 4 ; buffer 1: row 2
    torch.ops.fbgemm.reset_weight_momentum(
        dev_weights=weights,
        uvm_weights=torch.empty(0),
        lxu_cache_weights=torch.empty(0, 0),
        weights_placements=torch.zeros(2, dtype=torch.int32),
        weights_offsets=torch.tensor([0, 20]),
        momentum1_dev=momentum,
        momentum1_uvm=torch.empty(0),
        momentum1_placements=torch.zeros(2, dtype=torch.int32),
        momentum1_offsets=torch.tensor([0, 5]),
        D_offsets=d_offsets,
        pruned_indices=pruned,
        pruned_indices_offsets=torch.tensor([0, 2, 3]),
        logical_table_ids=torch.tensor([1, 0], dtype=torch.int32),
        buffer_ids=torch.tensor([1, 0], dtype=torch.int32),
        cache_hash_size_cumsum=torch.zeros(1, dtype=torch.int64),
        lxu_cache_state=torch.zeros(1, dtype=torch.int64),
        total_cache_hash_size=0,
    )
    _reference_reset(expected_w, expected_m, 1, [2])  # table 1 takes buffer 1
    _reference_reset(expected_w, expected_m, 0, [0, 4])  # table 0 takes buffer 0
    torch.testing.assert_close(weights, torch.cat([w.reshape(-1) for w in expected_w]), rtol=0, atol=0)
    torch.testing.assert_close(momentum, torch.cat(expected_m), rtol=0, atol=0)


def _holder(module: nn.Module) -> nn.Module:
    holder = nn.Module()
    holder.inner = module
    return holder


def test_fallback_registration_is_guarded(monkeypatch: pytest.MonkeyPatch) -> None:
    import fbgemm_gpu

    monkeypatch.setattr(fbgemm_cpu_fallback, "_library", None)
    monkeypatch.setattr(fbgemm_cpu_fallback, "has_cpu_kernel", lambda: True)  # as if fbgemm shipped one
    assert fbgemm_cpu_fallback._register() is False
    assert fbgemm_cpu_fallback.install(_holder(_cpu_tbe([(2, 4)]))) is False
    monkeypatch.setattr(fbgemm_cpu_fallback, "has_cpu_kernel", lambda: False)
    monkeypatch.setattr(fbgemm_gpu, "__version__", "1.9.0", raising=False)
    with pytest.raises(TrainingError, match="written for fbgemm-gpu-cpu 1.8.0"):
        fbgemm_cpu_fallback._register()


def test_fallback_refuses_an_unknown_host_table_batch() -> None:
    fbgemm_cpu_fallback.install(_holder(_cpu_tbe([(2, 4)])))
    stranger = _cpu_tbe([(3, 4)])  # never shown to install()
    with pytest.raises(RuntimeError, match="install"):
        stranger.reset_embedding_weight_momentum(
            pruned_indices=torch.tensor([1]),
            pruned_indices_offsets=torch.tensor([0, 1]),
            logical_table_ids=torch.tensor([0], dtype=torch.int32),
            buffer_ids=torch.tensor([0], dtype=torch.int32),
        )
