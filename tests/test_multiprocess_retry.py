"""The conftest hook of tests/native_crash.py, run in a pytest of its own: a native crash of a spawned
process reruns the test once; an assertion is never rerun; a second crash is reported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).parent

PROBE = """
import os, signal
from pathlib import Path
import torch.multiprocessing as mp

COUNTS = Path(os.environ["PROBE_COUNTS"])

def _run(rank, name, crashes):
    path = COUNTS / name
    n = int(path.read_text()) if path.exists() else 0
    path.write_text(str(n + 1))
    if n < crashes:
        os.kill(os.getpid(), signal.SIGABRT)

def test_crashes_once():
    mp.spawn(_run, args=("once", 1), nprocs=1, join=True)

def test_crashes_twice():
    mp.spawn(_run, args=("twice", 2), nprocs=1, join=True)

def test_fails_an_assertion():
    path = COUNTS / "assertion"
    path.write_text(str(int(path.read_text()) + 1 if path.exists() else 1))
    assert False
"""


def test_a_native_crash_reruns_a_test_once_and_an_assertion_never(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text("from native_crash import pytest_runtest_protocol  # noqa: F401\n")
    (tmp_path / "test_probe.py").write_text(PROBE)
    counts = tmp_path / "counts"
    counts.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "PROBE_COUNTS": str(counts),
    }
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    out = result.stdout
    assert "1 passed" in out and "2 failed" in out, out
    failed = sorted(line.split("::", 1)[1].split()[0] for line in out.splitlines() if line.startswith("FAILED"))
    assert failed == ["test_crashes_twice", "test_fails_an_assertion"], out
    assert {p.name: int(p.read_text()) for p in counts.iterdir()} == {"once": 2, "twice": 2, "assertion": 1}
