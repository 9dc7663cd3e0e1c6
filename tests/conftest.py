"""pytest hooks (the GPU check's option and collection) and shared fixtures; the helpers the test modules
import are in ``helpers.py``."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import write_toy
from native_crash import pytest_runtest_protocol  # noqa: F401  (the hook: a native crash of a spawned rank runs a test once more)


GPU_TESTS = Path(__file__).parent / "gpu"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--gpu", action="store_true", help="collect tests/gpu, the GPU check (make test-gpu)")


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """tests/gpu is the GPU check: `pytest tests` (`make test`, CI) leaves it out unless given --gpu
    (a path named on the command line, as `make test-gpu` does, is always collected)."""
    if collection_path == GPU_TESTS and not config.getoption("--gpu"):
        return True
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test of tests/gpu is skipped on a machine without CUDA."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (the GPU check: make test-gpu)")
    for item in items:
        if GPU_TESTS in Path(item.fspath).parents:
            item.add_marker(skip)


@pytest.fixture
def toy_dataset(tmp_path: Path) -> Path:
    return write_toy(tmp_path / "toy")
