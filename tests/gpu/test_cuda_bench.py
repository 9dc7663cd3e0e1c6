"""`mdr bench train --device cuda`: samples/s of every loop on the GPU (nccl, fused kernels)."""

from __future__ import annotations

from gpu_helpers import fresh_process_group  # noqa: F401 - autouse fixture
from torchrec_mdr.bench.train import PIPELINES, TrainBenchOptions, run


def test_bench_train_on_cuda(tmp_path, capsys):
    options = TrainBenchOptions(
        data=tmp_path / "bench",
        rows=4000,
        seq_length=10,
        models=["dlrm", "din"],
        world_sizes=[1],
        batch_size=256,
        warmup=2,
        steps=5,
        repeats=2,
        batches_in_memory=4,
        device="cuda",
    )
    cells = run(options)
    assert {(c.model, c.pipeline) for c in cells} == {(m, p) for m in options.models for p in PIPELINES}
    assert all(c.samples_per_sec > 0 and len(c.window_samples_per_sec) == 2 for c in cells)
    out = capsys.readouterr().out
    assert "on cuda (" in out and "dlrm" in out and "din" in out
