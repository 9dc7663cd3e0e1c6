"""Training on one GPU through the real Trainer: fused TBE kernels (EmbeddingBagCollection and
EmbeddingCollection) with fused Adam, bf16 autocast of the dense arch, managed collision on CUDA
and TrainPipelineSparseDist with its CUDA streams."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

from helpers import tiny_synthetic
from gpu_helpers import cuda_config, fixed_batches, fresh_process_group, local  # noqa: F401 - autouse fixture
from torchrec_mdr.sparse.mch.eviction import eviction_stats, tracked_modules
from torchrec_mdr.training.trainer import Trainer

STEPS = 6


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return tiny_synthetic(tmp_path_factory.mktemp("gpu") / "syn")


def table_plans(trainer: Trainer) -> dict:
    """table -> torchrec ParameterSharding of the DMP model's plan."""
    return {
        table: sharding for module_plan in trainer.model.plan.plan.values() for table, sharding in module_plan.items()
    }


def table_weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    """Local values of every embedding table weight, by state-dict key (copied)."""
    return {
        key: local(value).detach().clone()
        for key, value in trainer.model.state_dict().items()
        if ("embedding_bags." in key or "embeddings." in key) and key.endswith(".weight")
    }


def test_fused_tbe_with_fused_adam(data, tmp_path):
    trainer = Trainer(cuda_config(data, "optimizer.sparse=adam", "train.pipeline=plain"), tmp_path / "run")
    plans = table_plans(trainer)
    assert set(plans) == set(trainer.spec.tables)
    assert all(p.compute_kernel.startswith("fused") for p in plans.values()), plans  # the fbgemm TBE kernels
    sharded = {type(m).__name__ for m in trainer.model.modules()}
    assert {"ShardedEmbeddingBagCollection", "ShardedEmbeddingCollection"} <= sharded
    before = table_weights(trainer)
    assert all(w.device.type == "cuda" for w in before.values())
    batches = iter(fixed_batches(trainer.config, STEPS))
    losses = [float(trainer.train_step(batches).loss) for _ in range(STEPS)]
    assert all(math.isfinite(x) for x in losses)
    after = table_weights(trainer)
    for key in before:
        if key.endswith(("item.weight", "user.weight")):
            assert not torch.equal(before[key], after[key]), f"{key} was not updated"
    state = trainer.model.fused_optimizer.state_dict()["state"]
    assert state, "no fused optimizer state"
    for key, moments in state.items():
        assert len(moments) == 2, f"{key}: Adam keeps two moments, found {sorted(moments)}"
    assert any(local(t).abs().sum() > 0 for moments in state.values() for t in moments.values())


def test_bf16_autocast_of_the_dense_arch(data, tmp_path):
    trainer = Trainer(cuda_config(data, "train.mixed_precision=true", "train.pipeline=plain"), tmp_path / "run")
    linears = [m for name, m in trainer.model.named_modules() if "dense_arch" in name and isinstance(m, nn.Linear)]
    assert linears
    dtypes: list[torch.dtype] = []
    handles = [m.register_forward_hook(lambda _m, _i, out: dtypes.append(out.dtype)) for m in linears]
    output = trainer.train_step(iter(fixed_batches(trainer.config, 1)))
    for handle in handles:
        handle.remove()
    loss, logits = output.loss, output.logits
    assert dtypes and all(d == torch.bfloat16 for d in dtypes)  # the dense arch ran in bf16
    assert logits.dtype == torch.float32 and loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(w.dtype == torch.float32 for w in table_weights(trainer).values())  # tables stay fp32
    assert all(p.dtype == torch.float32 for p in linears[0].parameters())  # master weights stay fp32


def test_managed_collision_on_cuda(data, tmp_path):
    config = cuda_config(
        data,
        "sparse.eviction.tables=[item, user]",
        "sparse.eviction.zch_size=64",
        "sparse.eviction.eviction_interval=2",
        f"train.max_steps={STEPS}",
        "train.pipeline=sparse_dist",
    )
    trainer = Trainer(config, tmp_path / "run")
    plans = table_plans(trainer)
    assert (plans["item"].sharding_type, plans["user"].sharding_type) == ("row_wise", "row_wise")
    modules = tracked_modules(trainer.model)
    assert modules and all(m._mch_sorted_raw_ids.device.type == "cuda" for m in modules)
    metrics = trainer.fit()
    assert math.isfinite(metrics["auc"])
    stats = eviction_stats(trainer.model, ["item", "user"], trainer.ctx.device)
    for table in ("item", "user"):
        assert stats[table].eviction_rounds >= 2, stats[table]
        assert 0 < stats[table].ids_held <= 64 and stats[table].admitted_ids > 0


def test_sparse_dist_pipeline_on_cuda_matches_the_plain_loop(data, tmp_path):
    plain = Trainer(cuda_config(data, "train.pipeline=plain"), tmp_path / "plain")
    piped = Trainer(cuda_config(data, "train.pipeline=sparse_dist"), tmp_path / "piped")
    piped.model.load_state_dict(plain.model.state_dict())  # same plan, same starting weights
    batches = fixed_batches(plain.config, STEPS)
    plain_source, piped_source = iter(batches), iter(batches)
    plain_losses = [float(plain.train_step(plain_source).loss) for _ in range(STEPS)]
    piped_losses = [float(piped.train_step(piped_source).loss) for _ in range(STEPS)]
    assert isinstance(piped.pipeline, TrainPipelineSparseDist)
    assert isinstance(piped.pipeline._memcpy_stream, torch.cuda.Stream)  # copies ride their own CUDA stream
    assert isinstance(piped.pipeline._data_dist_stream, torch.cuda.Stream)  # and so does the input all-to-all
    # fused kernels accumulate with atomics on the GPU: equal up to rounding, not bit for bit
    assert piped_losses == pytest.approx(plain_losses, rel=1e-3, abs=1e-4)
