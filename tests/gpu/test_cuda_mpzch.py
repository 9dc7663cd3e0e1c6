"""MPZCH on CUDA: torchrec's HashZchManagedCollisionModule trains in a sharded managed-collision
EmbeddingCollection, inserts ids and evicts expired ones (fbgemm's CUDA kernel of ``fbgemm::zero_collision_hash``;
its CPU kernel only looks up: tests/test_mpzch_cpu.py, docs/scale.md "MPZCH").

One table of Z = 32 rows behind the module, TTL eviction with a TTL of 1 hour, probing over the whole table
(``max_probe = Z``), sharded by torchrec-mdr's ``wrap_model`` (row_wise, fused, row-wise Adagrad). torchrec's TTL
scorer reads the hour from ``time.time()``; a fake clock sets it per phase. A row's metadata is the expiry hour of
its id (the hour last seen + TTL); a new id may take a row whose expiry is below the current hour (fbgemm's
``check_evict``: ``threshold > expiry`` and ``expiry < the new id's expiry``):

1. hour T: 8 hot and 24 cold ids fill the 32 rows, each id a row of its own; every expiry T + 1.
2. hour T + 2: the hot ids alone keep their rows; their expiry becomes T + 3.
3. hour T + 2: the hot ids and 8 new ids. A new id probes from its hash row and takes the first expired row:
   a cold one (T + 1 < T + 2), never a hot one (T + 3). The hot ids keep their rows, 8 cold ids lose theirs.

Then the comparison docs/scale.md ("MPZCH") could not make on CPU: ids per second of training steps and peak
GPU memory, MPZCH against torchrec-mdr's sorted MCH (LFU), at zch 1M and 4M; printed, not asserted.
"""

from __future__ import annotations

import math
import time
from types import SimpleNamespace

import torch
from torch import nn
from torchrec.modules import hash_mc_evictions
from torchrec.modules.hash_mc_modules import HashZchManagedCollisionModule
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from helpers import MPZCH_INPUT_HASH_SIZE, ManagedItemModel, item_ids, mpzch_model
from gpu_helpers import fresh_process_group  # noqa: F401 - autouse fixture
from torchrec_mdr.experiment import OptimizerConfig
from torchrec_mdr.sparse.mch.config import EvictionConfig
from torchrec_mdr.sparse.mch.eviction import mc_module
from torchrec_mdr.training.distributed import init_distributed
from torchrec_mdr.training.optimizers import apply_sparse_optimizer
from torchrec_mdr.training.sharding import wrap_model

Z = 32
T = 500_000  # the fake clock's first hour (fits the kernel's int32 metadata)
HOT = [10**9 + i for i in range(8)]
COLD = [2 * 10**9 + i for i in range(24)]
NEW = [3 * 10**9 + i for i in range(8)]


def test_mpzch_trains_and_evicts_expired_ids_on_cuda(monkeypatch):
    clock = SimpleNamespace(hour=T)
    monkeypatch.setattr(hash_mc_evictions, "time", SimpleNamespace(time=lambda: clock.hour * 3600.0 + 1.0))
    ctx = init_distributed("cuda")
    model = mpzch_model(Z, torch.device("meta"), policy="SINGLE_TTL_EVICTION", ttl_hours=1, max_probe=Z)
    apply_sparse_optimizer(model, OptimizerConfig(sparse="rowwise_adagrad", sparse_lr=0.1), ctx.device)
    sharded = wrap_model(model, "auto", ctx)
    plans = [(p.sharding_type, p.compute_kernel) for m in sharded.plan.plan.values() for p in m.values()]
    assert plans == [("row_wise", "fused")]
    (module,) = [m for m in sharded.modules() if isinstance(m, HashZchManagedCollisionModule)]
    assert module._hash_zch_identities.device.type == "cuda"

    def train_step(ids: list[int]) -> dict[int, int]:
        """One step on ``ids``; returns id -> row."""
        embeddings, remapped = sharded(item_ids(ids, ctx.device))
        values = embeddings["item"].values()
        assert values.shape == (len(ids), 8)
        loss = values.pow(2).sum()
        assert math.isfinite(float(loss))
        loss.backward()  # the fused row-wise Adagrad step
        rows = remapped["item"].values().tolist()
        assert all(0 <= r < Z for r in rows), rows
        return dict(zip(ids, rows))

    def table() -> tuple[list[int], list[int]]:
        """(id held by each row, -1 for none; expiry hour of each row)."""
        return module._hash_zch_identities.flatten().tolist(), module._hash_zch_metadata.flatten().tolist()

    first = train_step(HOT + COLD)
    assert len(set(first.values())) == Z  # 32 ids, 32 rows: no collision
    identities, expiry = table()
    assert all(identities[row] == i for i, row in first.items()) and set(expiry) == {T + 1}

    clock.hour = T + 2
    assert train_step(HOT) == {i: first[i] for i in HOT}  # the same id, the same row
    identities, expiry = table()
    assert all(expiry[first[i]] == T + 3 for i in HOT) and all(expiry[first[i]] == T + 1 for i in COLD)

    third = train_step(HOT + NEW)
    assert {i: third[i] for i in HOT} == {i: first[i] for i in HOT}  # the hot ids keep their rows
    new_rows = {third[i] for i in NEW}
    assert len(new_rows) == len(NEW) and new_rows <= {first[i] for i in COLD}  # taken from expired cold ids
    identities, expiry = table()
    assert all(identities[third[i]] == i and expiry[third[i]] == T + 3 for i in HOT + NEW)
    kept = [i for i in COLD if first[i] not in new_rows]
    assert len(kept) == len(COLD) - len(NEW)
    assert all(identities[first[i]] == i and expiry[first[i]] == T + 1 for i in kept)
    assert sorted(identities) == sorted(HOT + NEW + kept)


# --------------------------------------------------------------------------- MPZCH against the sorted MCH

STEPS, WARMUP, IDS_PER_STEP, DIM = 40, 5, 65_536, 64
HEAD, TAIL = 20_000_000, 1_000_000_000  # id ranks: half log-uniform in [1, HEAD), half uniform in [0, TAIL)


def _batches(device: torch.device) -> list[KeyedJaggedTensor]:
    """STEPS batches of IDS_PER_STEP ids (one per row), the same for every run: about 1.8M distinct ids, so that a
    1M table is under eviction pressure and a 4M one is not."""
    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(STEPS):
        half = IDS_PER_STEP // 2
        head = torch.exp(torch.rand(half, generator=generator, dtype=torch.float64) * math.log(HEAD)).long()
        tail = torch.randint(0, TAIL, (IDS_PER_STEP - half,), generator=generator)
        ranks = torch.cat([head, tail])[torch.randperm(IDS_PER_STEP, generator=generator)]
        ids = (ranks * 2654435761) % MPZCH_INPUT_HASH_SIZE  # spread the ranks over the raw-id range
        lengths = torch.ones(IDS_PER_STEP, dtype=torch.int32)
        batches.append(KeyedJaggedTensor(["item"], ids.to(device), lengths=lengths.to(device)))
    return batches


def _training_cost(model: nn.Module, batches: list[KeyedJaggedTensor], zch: int, ctx) -> dict:  # noqa: ANN001
    """Ids per second over the steps after WARMUP and the peak GPU memory over the whole run (MiB)."""
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    apply_sparse_optimizer(model, OptimizerConfig(sparse="rowwise_adagrad", sparse_lr=0.05), ctx.device)
    sharded = wrap_model(model, "auto", ctx)
    start = time.perf_counter()
    for i, batch in enumerate(batches):
        if i == WARMUP:
            torch.cuda.synchronize()
            start = time.perf_counter()
        embeddings, remapped = sharded(batch)
        loss = embeddings["item"].values().pow(2).sum()
        loss.backward()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    rows = remapped["item"].values()
    assert math.isfinite(float(loss)) and int(rows.min()) >= 0 and int(rows.max()) < zch
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    del sharded, model
    return {"ids_per_s": (len(batches) - WARMUP) * IDS_PER_STEP / seconds, "peak_mib": peak}


def test_mpzch_against_the_sorted_mch_on_cuda(capsys):
    ctx = init_distributed("cuda")
    batches = _batches(ctx.device)
    lines = []
    for zch in (1_000_000, 4_000_000):
        sorted_mch = mc_module(
            "item", EvictionConfig(tables=["item"], zch_size=zch, eviction_interval=10), MPZCH_INPUT_HASH_SIZE
        )
        costs = {
            "mpzch": _training_cost(
                mpzch_model(zch, torch.device("meta"), policy="SINGLE_TTL_EVICTION", ttl_hours=24, dim=DIM),
                batches,
                zch,
                ctx,
            ),
            "sorted": _training_cost(ManagedItemModel(sorted_mch, zch, torch.device("meta"), DIM), batches, zch, ctx),
        }
        assert all(c["ids_per_s"] > 0 and c["peak_mib"] > 0 for c in costs.values())
        figures = [f"{k} {c['ids_per_s'] / 1e6:.2f}M ids/s, peak {c['peak_mib']:,.0f} MiB" for k, c in costs.items()]
        lines.append(f"  zch {zch:,}: " + "; ".join(figures))
    with capsys.disabled():
        print(
            f"\nMPZCH against the sorted MCH on {torch.cuda.get_device_name()} ({STEPS - WARMUP} timed steps of "
            f"{IDS_PER_STEP:,} ids, dim {DIM}, row-wise Adagrad; sorted MCH: LFU every 10 steps):\n" + "\n".join(lines)
        )
