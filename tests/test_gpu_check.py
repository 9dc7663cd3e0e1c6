"""The GPU check stays out of `make test` / CI, and skips cleanly on a machine without CUDA."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import GPU_TESTS, pytest_ignore_collect

ROOT = Path(__file__).resolve().parents[1]


class _Options:
    def __init__(self, gpu: bool) -> None:
        self.gpu = gpu

    def getoption(self, name: str) -> bool:
        assert name == "--gpu"
        return self.gpu


def test_tests_gpu_is_collected_only_with_the_flag():
    assert pytest_ignore_collect(GPU_TESTS, _Options(gpu=False)) is True
    assert pytest_ignore_collect(GPU_TESTS, _Options(gpu=True)) is None
    assert pytest_ignore_collect(GPU_TESTS.parent / "test_plan.py", _Options(gpu=False)) is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the check runs instead")
def test_gpu_check_skips_every_test_without_cuda():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "--gpu", "-p", "no:cacheprovider", "tests/gpu"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert " skipped" in summary and "passed" not in summary and "failed" not in summary and "error" not in summary
