"""Ending a rank of a multi-process run without the interpreter's exit-time teardown.

A torch / torchrec workaround, kept to this module. Checked against torch 2.13 (gloo) and torchrec 1.9.2.

**The gap.** ``torch.distributed.destroy_process_group`` is meant to free the process group. It does for a
bare gloo world, but once ``torch.distributed._shard.sharded_tensor`` has been imported in a process with a
live group (torchrec imports it with ``torchrec.distributed``; so does every sharded model here), the
ProcessGroupGloo object stays referenced from C++ after ``destroy_process_group``, with its threads
running: ``gloo_tcp_loop``, two ``pt_gloo_runloop`` and, on rank 0, the TCP store's ``pt_tcpstore_uv``
(:func:`gloo_threads` lists them; tests/test_rank_exit.py pins this behaviour, so a torch that fixes it
fails that test and this module can go). They are then stopped only by the interpreter's and the C++
runtime's exit-time teardown, after the peer ranks may have exited and closed their sockets.

**What it cost.** In this project's 2-rank runs a rank was seen, rarely and only at that point (after its
last step, its files written), to die by SIGABRT with "terminate called without an active exception": a
finished job reported as failed, by torchrun or ``torch.multiprocessing.spawn``. That these threads cause
it is the likely explanation, not a proven one: the abort was never reproduced on demand.

**What this does.** :func:`end_rank` ends a rank that finished its work without that teardown:
``destroy_process_group``, logging, stdout and stderr flushed, then ``os._exit(0)``. Work must be written
and closed before it is called (every writer here closes its files when it returns; checkpoints are
renamed into place when complete). It is called only where a process was started to be one rank of a
world of several: ``mdr`` and ``dlrm_style.train`` under torchrun (their ``main``), the benchmarks'
spawned ranks, the tests' spawned ranks. A failing rank fails as before (its traceback is the report);
in-process use (a world of one, ``main([...])`` from Python) never exits here.
"""

from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager
from typing import Iterator, NoReturn

import torch.distributed as dist

GLOO_THREADS = ("gloo_tcp_loop", "pt_gloo_runloop", "pt_tcpstore_uv")


def gloo_threads() -> list[str]:
    """The names of this process's live gloo / TCP-store threads (Linux: ``/proc/self/task``; else [])."""
    tasks = "/proc/self/task"
    if not os.path.isdir(tasks):
        return []
    names = []
    for task in sorted(os.listdir(tasks)):
        try:
            with open(f"{tasks}/{task}/comm") as comm:
                name = comm.read().strip()
        except OSError:  # the thread ended while listed
            continue
        if name in GLOO_THREADS:
            names.append(name)
    return names


def end_rank() -> NoReturn:
    """End this rank, which finished its work: destroy the process group, flush, ``os._exit(0)`` (no
    exit-time teardown; see the module docstring). No barrier: a rank that fails must not leave the others
    waiting for it; torchrun and ``torch.multiprocessing.spawn`` wait for every rank and report a failed one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or redirected to a closed pipe: nothing left to save
            pass
    os._exit(0)


def end_if_one_of_several_ranks() -> None:
    """At the end of a program's ``main``: end this rank by :func:`end_rank` when it is one rank of an
    initialised world of more than one (torchrun); otherwise return (a world of one, in-process use)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        end_rank()


@contextmanager
def spawned_rank() -> Iterator[None]:
    """The body of a spawned rank: on an exception, destroy the process group and raise (the traceback is the
    report); when the body finishes, :func:`end_rank`: the code after the ``with`` block never runs."""
    try:
        yield
    except BaseException:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        raise
    end_rank()
