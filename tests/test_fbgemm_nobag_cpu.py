"""The unpooled CPU row-wise Adagrad backward routed through fbgemm's pooled kernel
(torchrec_mdr/sparse/fbgemm_nobag_cpu.py): the update against a hand computation, shared tables,
the version pin and the refused options."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation, PoolingMode
from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
    ComputeDevice,
    OptimType,
    SplitTableBatchedEmbeddingBagsCodegen,
)

from torchrec_mdr.errors import TrainingError
from torchrec_mdr.sparse import fbgemm_nobag_cpu
from tests.multiprocess import spawn

D, LR, EPS = 4, 0.1, 1e-3


def _tbe() -> SplitTableBatchedEmbeddingBagsCodegen:
    """Table A (10 rows) read by features 0 and 1 (a candidate and its sequence), table B (7 rows) by feature 2."""
    return SplitTableBatchedEmbeddingBagsCodegen(
        [(10, D, EmbeddingLocation.HOST, ComputeDevice.CPU), (7, D, EmbeddingLocation.HOST, ComputeDevice.CPU)],
        feature_table_map=[0, 0, 1],
        optimizer=OptimType.EXACT_ROWWISE_ADAGRAD,
        pooling_mode=PoolingMode.NONE,
        learning_rate=LR,
        eps=EPS,
    )


# 3 features x batch 3, feature-major; feature 0 (table A): 4 | 4 | 2; feature 1 (table A): [4, 1] | [] | [9, 9, 4];
# feature 2 (table B): [6] | [0, 6] | [6, 3]
LENGTHS = torch.tensor([1, 1, 1, 2, 0, 3, 1, 2, 2])
INDICES = torch.tensor([4, 4, 2, 4, 1, 9, 9, 4, 6, 0, 6, 6, 3])
TABLE_OF_LOOKUP = [0] * 8 + [1] * 5


def _hand_update(weights: list[torch.Tensor], grad: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Row-wise Adagrad by hand: per table and distinct row, G = sum of its lookups' gradients,
    m = 0 + mean_d G^2, w -= lr * G / (sqrt(m) + eps)."""
    new_weights = [w.clone() for w in weights]
    momenta = [torch.zeros(w.shape[0]) for w in weights]
    for table, w in enumerate(weights):
        rows = {int(i) for i, t in zip(INDICES, TABLE_OF_LOOKUP) if t == table}
        for row in rows:
            g = sum(grad[k] for k, (i, t) in enumerate(zip(INDICES, TABLE_OF_LOOKUP)) if t == table and int(i) == row)
            momenta[table][row] = (g * g).mean()
            new_weights[table][row] = w[row] - LR * g / (momenta[table][row].sqrt() + EPS)
    return new_weights, momenta


def test_unpooled_update_equals_hand_rowwise_adagrad_with_a_shared_table() -> None:
    assert fbgemm_nobag_cpu.install()  # fbgemm-gpu-cpu 1.8.0 here: ours becomes the CPU kernel
    assert "fbgemm_nobag_cpu.py" in torch._C._dispatch_dump(f"fbgemm::{fbgemm_nobag_cpu.OP}")
    torch.manual_seed(0)
    tbe = _tbe()
    before = [w.detach().clone() for w in tbe.split_embedding_weights()]
    grad = torch.randn(INDICES.numel(), D)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), LENGTHS.cumsum(0)])
    out = tbe(INDICES, offsets)
    assert out.shape == (13, D)
    torch.testing.assert_close(out, torch.cat([before[t][i] for i, t in zip(INDICES, TABLE_OF_LOOKUP)]).view(13, D))
    (out * grad).sum().backward()
    expected_weights, expected_momenta = _hand_update(before, grad)
    for got, want in zip(tbe.split_embedding_weights(), expected_weights):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    momenta = tbe.split_optimizer_states()
    for got, want in zip(momenta, expected_momenta):
        torch.testing.assert_close(got[0].view(-1), want, rtol=1e-5, atol=1e-7)
    # row 4 of table A: read by feature 0 (twice) and feature 1 (twice): one update from the sum of four
    assert expected_momenta[0][4] > 0 and int((INDICES[:8] == 4).sum()) == 4


def test_untouched_rows_and_an_empty_batch_stay() -> None:
    fbgemm_nobag_cpu.install()
    tbe = _tbe()
    before = [w.detach().clone() for w in tbe.split_embedding_weights()]
    out = tbe(torch.zeros(0, dtype=torch.long), torch.zeros(10, dtype=torch.long))
    out.sum().backward()
    for got, want in zip(tbe.split_embedding_weights(), before):
        assert torch.equal(got, want)


def test_refuses_weight_decay_and_max_norm() -> None:
    tbe = _tbe()
    args = (
        torch.zeros(1, D),
        tbe.weights_host,
        tbe.weights_placements,
        tbe.weights_offsets,
        D,
        tbe.hash_size_cumsum,
        0,
        torch.zeros(1, dtype=torch.long),
        torch.tensor([0, 1, 1, 1]),
        False,
        tbe.momentum1_host,
        tbe.momentum1_placements,
        tbe.momentum1_offsets,
        torch.tensor(LR),
    )
    with pytest.raises(TrainingError, match="weight_decay"):
        fbgemm_nobag_cpu.nobag_backward_via_pooled(*args, EPS, 0.01)
    with pytest.raises(TrainingError, match="max_norm"):
        fbgemm_nobag_cpu.nobag_backward_via_pooled(*args, EPS, 0.0, 0, 1.0)


def test_other_fbgemm_versions_keep_fbgemms_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    import fbgemm_gpu

    monkeypatch.setattr(fbgemm_nobag_cpu, "_library", None)
    monkeypatch.setattr(fbgemm_gpu, "__version__", "1.9.0", raising=False)
    assert fbgemm_nobag_cpu.install() is False


def test_table_rows_from_fbgemms_per_feature_cumsum() -> None:
    tbe = _tbe()
    cumsum = tbe.hash_size_cumsum.tolist()
    assert cumsum == [0, 0, 10, 17]  # the cumsum steps at a table's last feature
    assert [fbgemm_nobag_cpu._table_rows(cumsum, t) for t in range(3)] == [10, 10, 7]


class _Sequences(nn.Module):
    """An EmbeddingCollection (table ``item``: a candidate column and its sequence) -> sum(values * g)."""

    def __init__(self) -> None:
        super().__init__()
        from torchrec import EmbeddingCollection, EmbeddingConfig

        self.ec = EmbeddingCollection(
            tables=[EmbeddingConfig(name="item", embedding_dim=D, num_embeddings=10, feature_names=["cand", "seq"])],
            device=torch.device("meta"),
        )

    def forward(self, kjt, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001 - a KeyedJaggedTensor
        out = self.ec(kjt)
        return (torch.cat([out["cand"].values(), out["seq"].values()]) * grad).sum()


def _sharded_worker(rank: int, world_size: int, out: Path) -> None:
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    from torchrec_mdr.experiment import OptimizerConfig
    from torchrec_mdr.training.distributed import init_distributed
    from torchrec_mdr.training.optimizers import apply_sparse_optimizer
    from torchrec_mdr.training.sharding import wrap_model

    ctx = init_distributed("cpu")
    torch.manual_seed(0)
    model = _Sequences()
    apply_sparse_optimizer(model, OptimizerConfig(sparse="rowwise_adagrad", sparse_lr=LR), ctx.device)
    sharded = wrap_model(model, "table_wise", ctx)
    ours = "fbgemm_nobag_cpu.py" in torch._C._dispatch_dump(f"fbgemm::{fbgemm_nobag_cpu.OP}")

    def table() -> torch.Tensor:  # world size 1, table_wise: the one local shard is the whole table
        (weight,) = [t for name, t in sharded.state_dict().items() if name.endswith("item.weight")]
        return weight.local_shards()[0].tensor.detach().clone()

    before = table()
    # cand: 4 | 4 | 2 ; seq: [4, 1] | [] | [9, 9, 4]  (batch 3)
    kjt = KeyedJaggedTensor.from_lengths_sync(
        ["cand", "seq"], torch.tensor([4, 4, 2, 4, 1, 9, 9, 4]), torch.tensor([1, 1, 1, 2, 0, 3])
    )
    grad = torch.randn(8, D)
    sharded(kjt, grad).backward()  # the fused optimizer updates the table in backward
    torch.save({"ours": ours, "before": before, "after": table(), "grad": grad}, out / "result.pt")


def test_sharded_embedding_collection_trains_through_the_pooled_kernel(tmp_path: Path) -> None:
    """wrap_model installs the kernel on CPU; a DMP-sharded EmbeddingCollection's fused update is the hand one."""
    spawn(_sharded_worker, 1, tmp_path)
    result = torch.load(tmp_path / "result.pt")
    assert result["ours"]
    before, grad = result["before"], result["grad"]
    rows = [4, 4, 2, 4, 1, 9, 9, 4]
    expected = before.clone()
    for row in set(rows):
        g = sum(grad[k] for k, r in enumerate(rows) if r == row)
        expected[row] = before[row] - LR * g / ((g * g).mean().sqrt() + 1e-10)
    torch.testing.assert_close(result["after"], expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(result["after"][[0, 3, 5, 6, 7, 8]], before[[0, 3, 5, 6, 7, 8]])  # rows not looked up
