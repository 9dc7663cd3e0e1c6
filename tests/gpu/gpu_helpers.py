"""Shared pieces of the GPU check (``make test-gpu``): a CUDA run config, fixed batches, a fresh
process group per test, and the local part of a sharded tensor."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from torchrec_mdr.config import load_config
from torchrec_mdr.data.batch import Batch
from torchrec_mdr.data.reader import make_dataloader
from torchrec_mdr.data.spec import DatasetSpec
from torchrec_mdr.experiment import ExperimentConfig

BATCH = 256


def cuda_config(data: Path, *overrides: str) -> ExperimentConfig:
    """DIN on ``data``, on the GPU, unshuffled, every table in the fused TBE kernels; ``overrides`` as ``--set``."""
    base = [
        f"data.path={data}",
        f"data.batch_size={BATCH}",
        "data.shuffle=false",
        "model.name=din",
        "model.embedding_dim=16",
        "train.device=cuda",
        "train.log_every=1000",
    ]
    return load_config(ExperimentConfig, None, base + list(overrides))


def fixed_batches(config: ExperimentConfig, count: int, spec: DatasetSpec | None = None) -> list[Batch]:
    """The first ``count`` batches of the train split (on the CPU, as the reader yields them)."""
    loader = make_dataloader(config.data, "train", shuffle=False, spec=spec)
    batches = list(itertools.islice(iter(loader), count))
    assert len(batches) == count, f"the train split has fewer than {count} batches of {config.data.batch_size}"
    return batches


def local(tensor) -> torch.Tensor:  # noqa: ANN001 - Tensor, ShardedTensor or DTensor
    """This rank's values of a (possibly sharded) tensor, flattened."""
    if hasattr(tensor, "local_shards"):
        shards = tensor.local_shards()
        return torch.cat([s.tensor.flatten() for s in shards]) if shards else torch.empty(0)
    if hasattr(tensor, "to_local"):
        return tensor.to_local().flatten()
    return tensor.flatten()


@pytest.fixture(autouse=True)
def fresh_process_group():
    """Each test starts without a process group (the trainer creates an nccl world of one) and
    leaves none behind, so that one test's group never serves the next."""
    if dist.is_initialized():
        dist.destroy_process_group()
    yield
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    torch.cuda.empty_cache()
