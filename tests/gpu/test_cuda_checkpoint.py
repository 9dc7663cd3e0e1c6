"""A checkpoint written on the GPU loads on a machine without one (`mdr eval` in a CPU-only process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import tiny_synthetic
from gpu_helpers import cuda_config, fresh_process_group  # noqa: F401 - autouse fixture
from torchrec_mdr.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[2]
STEPS = 6


def test_checkpoint_saved_on_gpu_loads_on_cpu(tmp_path):
    data = tiny_synthetic(tmp_path / "syn")
    run = tmp_path / "run"
    # device auto: cuda here, the CPU in the evaluating process; one managed table, so that its
    # managed-collision state (ids, counts) crosses over too
    config = cuda_config(
        data,
        "train.device=auto",
        f"train.max_steps={STEPS}",
        f"train.checkpoint_every={STEPS}",
        "sparse.eviction.tables=[item]",
        "sparse.eviction.zch_size=64",
        "sparse.eviction.eviction_interval=2",
    )
    trainer = Trainer(config, run)
    assert trainer.ctx.device.type == "cuda"
    metrics = trainer.fit()
    assert trainer.last_checkpoint is not None
    env = {
        **os.environ,
        "CUDA_VISIBLE_DEVICES": "",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    result = subprocess.run(
        [sys.executable, "-m", "torchrec_mdr", "eval", "--run", str(run), "--split", "test"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    on_cpu = json.loads((run / "eval-test.json").read_text())
    assert on_cpu["checkpoint"]["step"] == STEPS
    assert on_cpu["auc"] == pytest.approx(metrics["auc"], abs=2e-3)  # same weights; CPU and GPU kernels round apart
    assert on_cpu["logloss"] == pytest.approx(metrics["logloss"], abs=2e-3)
