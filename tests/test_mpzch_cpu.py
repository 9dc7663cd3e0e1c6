"""MPZCH (torchrec's HashZchManagedCollisionModule) on CPU with fbgemm-gpu-cpu 1.8.0: lookups only, no training.

docs/scale.md ("MPZCH") states what runs on CPU and what fails; these tests pin it, so that an fbgemm or
torchrec upgrade that changes it fails here (the doc is then stale, and ``sparse.eviction`` could gain an MPZCH
kind). The cause: fbgemm's CPU kernel of ``fbgemm::zero_collision_hash`` (``fbgemm_gpu/src/faster_hash_ops/
faster_hash.cpp`` at v1.8.0, "Inference ONLY op") checks ``readonly`` (line 329), no ``metadata`` (330), no
``input_metadata`` (331) and ``eviction_threshold == -1`` (332): it finds ids already in the identity table and
never inserts nor evicts one. torchrec's module remaps in training mode with ``readonly=False``
(``torchrec/modules/hash_mc_modules.py:685`` -> ``:451``), so the first training forward fails, sharded or
not, whatever the eviction policy. The training itself is checked on CUDA: ``tests/gpu/test_cuda_mpzch.py``.

The slot of an id is the kernel's: its first probe is ``murmur_hash3_2x64(id, 0, 0) % rows`` (fbgemm's
``common_utils.cuh``, re-implemented below as the reference), then the next rows in turn, up to ``max_probe``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from helpers import MPZCH_INPUT_HASH_SIZE, item_ids, mpzch_model
from multiprocess import spawn

Z = 64
IDS = [5, 7, 10**12, 123456789, MPZCH_INPUT_HASH_SIZE - 1]
IDENTITIES = "collection._managed_collision_collection._managed_collision_modules.item._hash_zch_identities"
MASK = (1 << 64) - 1


def murmur3_2x64(x: int, y: int = 0, seed: int = 0) -> int:
    """fbgemm's ``murmur_hash3_2x64`` (MurmurHash3 x64-128 of two 64-bit words, halves xor-ed), in Python."""
    c1, c2 = 0x87C37B91114253D5, 0x4CF5AD432745937F

    def rotl(v: int, r: int) -> int:
        return ((v << r) | (v >> (64 - r))) & MASK

    def fmix(k: int) -> int:
        k ^= k >> 33
        k = (k * 0xFF51AFD7ED558CCD) & MASK
        k ^= k >> 33
        k = (k * 0xC4CEB9FE1A85EC53) & MASK
        return k ^ (k >> 33)

    h1 = h2 = seed
    h1 ^= (rotl((x * c1) & MASK, 31) * c2) & MASK
    h1 = (rotl(h1, 27) + h2) & MASK
    h1 = (h1 * 5 + 0x52DCE729) & MASK
    h2 ^= (rotl((y * c2) & MASK, 33) * c1) & MASK
    h2 = (rotl(h2, 31) + h1) & MASK
    h2 = (h2 * 5 + 0x38495AB5) & MASK
    h1, h2 = h1 ^ 16, h2 ^ 16
    h1 = (h1 + h2) & MASK
    h2 = (h2 + h1) & MASK
    h1, h2 = fmix(h1), fmix(h2)
    h1 = (h1 + h2) & MASK
    h2 = (h2 + h1) & MASK
    return h1 ^ h2


def first_probe(raw_id: int, rows: int = Z) -> int:
    return murmur3_2x64(raw_id) % rows


def remap(model: nn.Module, ids: list[int]) -> list[int]:
    return model(item_ids(ids))[1]["item"].values().tolist()


@pytest.mark.parametrize("policy", [None, "SINGLE_TTL_EVICTION", "LRU_EVICTION"])
def test_training_forward_is_refused(policy: str | None) -> None:
    model = mpzch_model(Z, torch.device("cpu"), policy=policy).train()
    with pytest.raises(RuntimeError, match="Expected readonly to be true"):
        model(item_ids(IDS))


def test_lookup_without_identities_is_plain_hashing() -> None:
    """An empty identity table (all a CPU run can have): every id takes its first-probe row, collisions included."""
    model = mpzch_model(Z, torch.device("cpu")).eval()
    embeddings, remapped = model(item_ids(IDS))
    expected = [first_probe(i) for i in IDS]
    assert remapped["item"].values().tolist() == expected
    assert remapped["item"].lengths().tolist() == [1] * len(IDS)  # misses keep their length (fallback on)
    assert expected[2] == expected[3] == 32  # 10**12 and 123456789 collide on row 32: nothing tells them apart
    weight = model.state_dict()["collection._embedding_module.embeddings.item.weight"]
    assert torch.equal(embeddings["item"].values(), weight[expected])
    assert remap(model, IDS[::-1]) == expected[::-1]  # the same id, the same row


def test_lookup_probes_identities_loaded_from_a_checkpoint() -> None:
    """Identities a GPU run wrote (here through load_state_dict) are found by probing: the CPU serves them."""
    model = mpzch_model(Z, torch.device("cpu")).eval()
    state = model.state_dict()
    held = IDS[2]  # 10**12: its first-probe row is taken by 123456789, so it sits one row further on
    first = first_probe(held)
    identities = torch.full((Z, 1), -1, dtype=torch.int64)
    identities[first], identities[(first + 1) % Z] = IDS[3], held
    model.load_state_dict({**state, IDENTITIES: identities})
    got = remap(model, IDS)
    assert got[2] == (first + 1) % Z and got[3] == first  # found by probing: no collision any more
    assert got[:2] + got[4:] == [first_probe(i) for i in IDS[:2] + IDS[4:]]  # unknown ids: first-probe rows


def test_eviction_is_refused_even_read_only() -> None:
    model = mpzch_model(Z, torch.device("cpu"), policy="SINGLE_TTL_EVICTION").eval()
    # eval() makes the lookup read-only but torchrec still passes the TTL scores (input_metadata) of its
    # eviction module; reset_intrainer_bulk_eval_mode() drops the eviction module
    with pytest.raises(RuntimeError, match=r"Expected input_metadata.has_value\(\) == false"):
        model(item_ids(IDS))
    (module,) = model.collection._managed_collision_collection._managed_collision_modules.values()
    module.reset_intrainer_bulk_eval_mode()
    assert remap(model, IDS) == [first_probe(i) for i in IDS]
    with pytest.raises(RuntimeError, match=r"Expected metadata.has_value\(\) == false"):
        torch.ops.fbgemm.zero_collision_hash(
            input=torch.tensor(IDS),
            identities=module._hash_zch_identities.data,
            max_probe=8,
            circular_probe=True,
            readonly=True,
            metadata=torch.full((Z, 1), -1, dtype=torch.int32),
        )


def test_state_dict_round_trip(tmp_path: Path) -> None:
    model = mpzch_model(Z, torch.device("cpu"), policy="SINGLE_TTL_EVICTION")
    identities = torch.full((Z, 1), -1, dtype=torch.int64)
    identities[[3, 40]] = torch.tensor([[IDS[0]], [IDS[2]]])
    model.load_state_dict({**model.state_dict(), IDENTITIES: identities})
    state = model.state_dict()
    prefix = IDENTITIES.rsplit(".", 1)[0] + "."
    assert {k[len(prefix) :] for k in state if k.startswith(prefix)} == {
        "_hash_zch_identities",
        "_hash_zch_metadata",
        "_hash_zch_bucket",
    }
    torch.save(state, tmp_path / "state.pt")
    fresh = mpzch_model(Z, torch.device("cpu"), policy="SINGLE_TTL_EVICTION")
    fresh.load_state_dict(torch.load(tmp_path / "state.pt"))
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in state.items())
    for m in (model, fresh):
        m.eval()
        m.collection._managed_collision_collection._managed_collision_modules["item"].reset_intrainer_bulk_eval_mode()
    assert remap(fresh, IDS) == remap(model, IDS)


def _bytes_per_row(module: nn.Module) -> dict[str, float]:
    """Bytes per table row of the module's tensors that grow with the table (``Z`` or more elements)."""
    tensors = dict(module.named_buffers()) | dict(module.named_parameters())
    return {n: t.numel() * t.element_size() / Z for n, t in tensors.items() if t.numel() >= Z}


def test_state_bytes_per_row() -> None:
    """docs/scale.md's memory figures: MPZCH keeps 12 bytes per row (identity int64, expiry hour int32; 8 without
    a policy), the sorted MCH 24 (sorted raw ids, row of each, count: int64) plus one interval's history."""
    from torchrec_mdr.sparse.mch.config import EvictionConfig
    from torchrec_mdr.sparse.mch.eviction import mc_module

    def mpzch(policy: str | None) -> nn.Module:
        return mpzch_model(Z, torch.device("cpu"), policy=policy).collection._managed_collision_collection

    assert _bytes_per_row(mpzch("SINGLE_TTL_EVICTION")) == {
        "_managed_collision_modules.item._hash_zch_identities": 8.0,
        "_managed_collision_modules.item._hash_zch_metadata": 4.0,
    }
    assert sum(_bytes_per_row(mpzch(None)).values()) == 8.0
    mch = mc_module("item", EvictionConfig(tables=["item"], zch_size=Z), placement_range=10**6)
    assert {n: b for n, b in _bytes_per_row(mch).items() if n.startswith("_mch")} == {
        "_mch_sorted_raw_ids": 8.0,
        "_mch_remapped_ids_mapping": 8.0,
        "_mch_counts": 8.0,
    }


# --------------------------------------------------------------------------- sharded (2 ranks, gloo)

HALF = MPZCH_INPUT_HASH_SIZE // 2  # torchrec's row-wise input dist: ids below it go to rank 0, the rest to rank 1
SHARDED_IDS = [[5, 10**12, HALF + 3], [7, HALF + 10**9, 123456789]]  # the batch of each rank


def _parts(tensor) -> list[torch.Tensor]:  # noqa: ANN001 - Tensor or ShardedTensor
    """This rank's tensors of a (possibly sharded) state-dict value."""
    return [s.tensor for s in tensor.local_shards()] if hasattr(tensor, "local_shards") else [tensor]


def _local(tensor) -> torch.Tensor:  # noqa: ANN001 - Tensor or ShardedTensor
    """This rank's values, flattened."""
    return torch.cat([t.flatten() for t in _parts(tensor)])


def _sharded_worker(rank: int, world_size: int, out: Path) -> None:
    import torch.distributed.checkpoint as dcp

    from torchrec.modules.hash_mc_modules import HashZchManagedCollisionModule

    from torchrec_mdr.experiment import OptimizerConfig
    from torchrec_mdr.training.distributed import init_distributed
    from torchrec_mdr.training.optimizers import apply_sparse_optimizer
    from torchrec_mdr.training.sharding import wrap_model

    ctx = init_distributed("cpu")
    model = mpzch_model(Z, torch.device("meta"), policy="SINGLE_TTL_EVICTION", buckets=world_size)
    apply_sparse_optimizer(model, OptimizerConfig(sparse="rowwise_adagrad", sparse_lr=0.1), ctx.device)
    sharded = wrap_model(model, "auto", ctx)  # managed tables: the row_wise, fused hand plan
    plans = [plan for module_plan in sharded.plan.plan.values() for plan in module_plan.values()]
    result: dict = {"plan": [(p.sharding_type, p.compute_kernel) for p in plans]}
    batch = item_ids(SHARDED_IDS[rank])
    try:
        sharded(batch)
    except RuntimeError as error:
        result["train_error"] = str(error).splitlines()[0]
    sharded.eval()
    for module in sharded.modules():
        if isinstance(module, HashZchManagedCollisionModule):
            module.reset_intrainer_bulk_eval_mode()
    result["rows"] = sharded(batch)[1]["item"].values().tolist()
    state = sharded.state_dict()
    keys = sorted(k for k in state if "_hash_zch_" in k)
    before = {k: _local(state[k]).clone() for k in keys}
    dcp.save(state, checkpoint_id=out / "dcp")
    for key in keys:  # overwrite what was saved, in place, then load it back
        for tensor in _parts(state[key]):
            tensor.fill_(7)
    dcp.load(state, checkpoint_id=out / "dcp")
    result["dcp_keys"] = [k.rsplit(".", 1)[1] for k in keys]
    result["dcp_equal"] = all(torch.equal(_local(state[k]), before[k]) for k in keys)
    (out / f"rank{rank}.json").write_text(json.dumps(result))


def test_sharded_on_two_ranks(tmp_path: Path) -> None:
    """DMP on gloo builds, plans and checkpoints an MPZCH table, and looks ids up on their owner shard; it cannot
    train it (the same kernel check)."""
    spawn(_sharded_worker, 2, tmp_path)
    for rank in range(2):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result["plan"] == [["row_wise", "fused"]]
        assert result["train_error"].startswith("Expected readonly to be true")
        # rank r owns rows [32 r, 32 r + 32) and the ids of bucket r; each id takes its first-probe row there
        expected = [Z // 2 * (i >= HALF) + first_probe(i, Z // 2) for i in SHARDED_IDS[rank]]
        assert result["rows"] == expected
        assert sorted(result["dcp_keys"]) == ["_hash_zch_bucket", "_hash_zch_identities", "_hash_zch_metadata"]
        assert result["dcp_equal"]
