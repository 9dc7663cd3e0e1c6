"""torchrec_mdr/training/cpu_memory.py: with glibc, freed large tensors stay in the process (no fresh
page faults when the same size is allocated again); the trainer applies it on CPU."""

from __future__ import annotations

import platform
import resource

import pytest
import torch

from torchrec_mdr.experiment import TrainConfig
from torchrec_mdr.training import cpu_memory

glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
MIB_64 = 16 * 1024 * 1024  # float32 values in 64 MiB: above glibc's largest mmap threshold (32 MiB)


def _faults_of_five_steps() -> int:
    """Minor page faults of five 'steps' that each fill and free a 64 MiB tensor (~16k pages)."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        tensor = torch.ones(MIB_64)
        del tensor
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@glibc
def test_freed_large_tensors_are_not_faulted_again() -> None:
    pages = MIB_64 * 4 // resource.getpagesize()
    try:
        assert cpu_memory.glibc_defaults()
        assert _faults_of_five_steps() >= 4 * pages  # mmap / munmap: every step faults its pages in again
        assert cpu_memory.keep_freed_memory()
        _faults_of_five_steps()  # the heap grows once
        assert _faults_of_five_steps() < pages // 4  # then the freed block is reused: (almost) no faults
    finally:
        cpu_memory.keep_freed_memory()  # what a CPU trainer process runs with


def test_on_by_default_for_cpu_training() -> None:
    assert TrainConfig().cpu_keep_freed_memory is True
