"""``mdr bench threads``: what a second torch thread buys each part of a training step, and the reader.

One process (world size 1, gloo, as ``mdr bench train``) builds, for every model in ``models`` and batch
size in ``batch_sizes``, the real :class:`~torchrec_mdr.training.trainer.Trainer` (meta-device sparse arch,
fused row-wise Adagrad in backward, DistributedModelParallel with a ``table_wise`` plan, Adam on the dense
parameters; :class:`torchrec_mdr.bench.train._Loop`) and times three parts of its step:

* ``lookups`` — the sharded sparse arch alone: its forward on the batch's KeyedJaggedTensors and the
  backward of its outputs (zero gradients, so the tables do not drift), which runs fbgemm's fused
  row-wise Adagrad update of the looked-up rows; nothing of the dense arch;
* ``dense arch`` — the dense arch alone on embeddings computed once: forward, loss, backward into its
  parameters and the embedded inputs, one Adam step (``mdr bench train --reference``'s roof,
  :class:`torchrec_mdr.bench.reference.RoofLoop`);
* ``full step`` — the trainer's plain step: zero_grad, DMP forward, backward, optimizer step.

and, per batch size, the streaming reader (:func:`torchrec_mdr.data.reader.make_dataloader`, the training
defaults: shuffled) producing :class:`Batch` objects from parquet:

* ``reader`` — ``num_workers = 0``: reading, checking and batching in this process;
* ``reader, 1 worker`` — ``num_workers = 1``: one worker process reads ahead (it runs with one torch
  thread); this process only unpacks its batches.

A reader window times a fresh iterator over the train split yielding its first ``reader_batches`` batches,
as at the start of an epoch: the worker's start (forked, as under torchrun) and the filling of the first
shuffle buffer are included, in both settings; ms per batch and rows/s over the window.

Timing: every part is run ``warmup`` steps at every thread count, then ``repeats`` rounds. In a round each
part (in an order rotated by one place per round) is timed for one window of ``steps`` steps at every
count of ``threads`` (``torch.set_num_threads`` before each window; the count that goes first also moves
one place per round), so the windows of one part at 1 and 2 threads run back to back. A cell is the
median window in ms per step; ``speedup`` is the median at the first count over the median at the other;
``share`` is a part's median over the full step's median at the same count (for the reader, the lines
under the table: what reading in line adds to each model's full step). ``other threads`` is, at each count
after the first, the share of the process's CPU time spent on threads other than the one running the step
(per-thread CPU clocks from ``/proc``, this process only: not the dataloader worker's; the median window):
about 0 for a part that runs on one thread whatever the count. With OpenMP's default (active) wait policy,
idle pool threads spin for a while after each parallel region and their spin counts here too (also in
a window at fewer threads right after one at more: the rotation puts each order in half the rounds);
``omp_wait_policy = "passive"`` (``OMP_WAIT_POLICY`` of the measuring process,
which OpenMP reads when it loads) leaves only their work.

What to expect of the lookups: fbgemm-gpu-cpu 1.8.0's CPU kernels (``split_embedding_codegen_forward_cpu``,
``split_embedding_backward_codegen_rowwise_adagrad_cpu``, ``split_embedding_nobag_backward_codegen_
rowwise_adagrad_cpu``, csr2csc) are written with ``at::parallel_for`` (FBGEMM v1.8.0,
``fbgemm_gpu/codegen/training/forward/embedding_forward_split_cpu.cpp`` and
``codegen/training/backward/embedding_backward_split_cpu_template.cpp``), but the wheel compiles them
without ``-fopenmp`` (``cmake/modules/GpuCppLibrary.cmake`` adds it only where AVX2 is not found), so
``_OPENMP`` and ATen's ``INTRA_OP_PARALLEL`` are undefined there and every ``at::parallel_for`` takes its
serial branch (torch's ``ATen/Parallel-inl.h``): the installed ``fbgemm_gpu_tbe_common.so`` and
``fbgemm_gpu_tbe_training_backward.so`` import no ``GOMP_*`` / ``omp_*`` symbol and neither
``at::internal::lazy_init_num_threads`` nor ``at::in_parallel_region``, and ``fbgemm.so``'s
``fbgemm::is_radix_sort_accelerated_with_openmp()`` returns false. The lookups run on one thread whatever
``torch.set_num_threads`` says (:mod:`torchrec_mdr.sparse.fbgemm_nobag_cpu` hands the unpooled backward to
the pooled kernel: serial too); only the torch ops around them can use a second one.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from torchrec_mdr.bench.threads_report import (  # noqa: F401  (the table's names, re-exported for callers)
    READER_PARTS,
    STEP_PARTS,
    Row,
    ThreadsBenchOptions,
    _row_from_json,
    format_markdown,
    format_text,
    table,
)
from torchrec_mdr.config import ConfigError
from torchrec_mdr.data.batch import Batch

if TYPE_CHECKING:
    from torchrec_mdr.bench.train import TrainBenchOptions
    from torchrec_mdr.training.trainer import Trainer


# --------------------------------------------------------------------------- CPU time per thread


def thread_cpu_seconds() -> dict[int, float]:
    """Thread id -> user + system CPU seconds of every thread of this process ({} without ``/proc``)."""
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    seconds = {}
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return {}
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/stat") as stat:
                values = stat.read().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        seconds[int(tid)] = (int(values[11]) + int(values[12])) / ticks  # utime, stime (fields 14, 15)
    return seconds


def other_thread_share(before: dict[int, float], after: dict[int, float]) -> float:
    """Share of the CPU time between two :func:`thread_cpu_seconds` readings spent off the calling thread
    (nan when nothing was counted)."""
    spent = {tid: after[tid] - before.get(tid, 0.0) for tid in after}
    total = sum(spent.values())
    return (total - spent.get(threading.get_native_id(), 0.0)) / total if total > 0 else float("nan")


# --------------------------------------------------------------------------- the parts


class LookupLoop:
    """The sharded sparse arch of a trainer alone: forward + backward (its fused optimizer update)."""

    def __init__(self, trainer: "Trainer", batches: list[Batch]) -> None:
        from torchrec_mdr.bench.train import _fresh

        model = trainer.model.module  # DistributedModelParallel -> the TrainModel, unwrapped
        self.sparse_arch: torch.nn.Module = model.model.sparse_arch  # type: ignore[union-attr, assignment]
        self.device = trainer.ctx.device
        self.source = _fresh(batches)

    def step(self) -> None:
        batch = next(self.source).to(self.device)
        pooled, unpooled = self.sparse_arch(batch.sparse_features, batch.sequence_features)
        outputs = ([pooled.values()] if pooled is not None else []) + [j.values() for j in unpooled.values()]
        torch.autograd.backward(outputs, [torch.zeros_like(t) for t in outputs])


def check_reader_batches(available: int, options: ThreadsBenchOptions, batch_size: int) -> None:
    if available < options.reader_batches:
        raise ConfigError(
            f"'reader_batches' {options.reader_batches}: the train split of {options.data} has only {available} "
            f"batches of {batch_size} rows"
        )


class ReaderWindow:
    """The first ``reader_batches`` batches of a fresh iterator over the train split (an epoch's start)."""

    def __init__(self, options: ThreadsBenchOptions, batch_size: int, workers: int) -> None:
        from torchrec_mdr.data.reader import ReaderConfig, make_dataloader

        config = ReaderConfig(path=options.data, batch_size=batch_size, num_workers=workers, drop_last=True)
        self.loader = make_dataloader(config, "train", pin_memory=False)
        self.count = options.reader_batches
        check_reader_batches(self.loader.dataset.num_batches(), options, batch_size)

    def seconds_per_batch(self) -> float:
        start = time.perf_counter()
        batches = iter(self.loader)
        for batch in itertools.islice(batches, self.count):
            assert batch.batch_size > 0
        seconds = time.perf_counter() - start
        del batches  # ends the worker process
        return seconds / self.count


def _step_window(step: Callable[[], None], steps: int) -> Callable[[], float]:
    def window() -> float:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        return (time.perf_counter() - start) / steps

    return window


def _time_rounds(windows: dict[tuple[str, str, int], Callable[[], float]], options: ThreadsBenchOptions) -> list[Row]:
    """Every window at every thread count, ``repeats`` rounds, parts and counts rotated per round."""
    from torchrec_mdr.bench.train import round_order

    rows = {key: Row(*key, {n: [] for n in options.threads}, {n: [] for n in options.threads}, {}) for key in windows}
    for round_index in range(options.repeats):
        for key in round_order(list(windows), round_index):
            for threads in round_order(list(options.threads), round_index):
                torch.set_num_threads(threads)
                before = thread_cpu_seconds()
                seconds = windows[key]()
                rows[key].other_threads[threads].append(other_thread_share(before, thread_cpu_seconds()))
                rows[key].window_ms[threads].append(seconds * 1000)
                rows[key].threads_seen.setdefault(threads, []).append(torch.get_num_threads())
    return list(rows.values())


def _warm(steps: list[Callable[[], object]], options: ThreadsBenchOptions, count: int) -> None:
    """``count`` calls of every step at every thread count (discarded)."""
    for threads in options.threads:
        torch.set_num_threads(threads)
        for step in steps:
            for _ in range(count):
                step()


def _model_rows(options: ThreadsBenchOptions, model: str, batches: dict[int, list[Batch]], out: Path) -> list[Row]:
    from torchrec_mdr.bench.reference import ROOF
    from torchrec_mdr.bench.train import _Loop, _reference_loops

    train = _train_options(options)
    steps: dict[tuple[str, str, int], Callable[[], None]] = {}
    loops = []
    for size in options.batch_sizes:
        full = _Loop(train, model, "plain", size, batches[size], out / f"run-{model}-{size}")
        loops.append(full)
        roof = _reference_loops(train, model, size, batches[size])[(ROOF, size)]
        steps[("lookups", model, size)] = LookupLoop(full.trainer, batches[size]).step
        steps[("dense arch", model, size)] = roof.step
        steps[("full step", model, size)] = full.step
    _warm(list(steps.values()), options, options.warmup)
    rows = _time_rounds({key: _step_window(step, options.steps) for key, step in steps.items()}, options)
    for loop in loops:
        loop.close()
    return rows


def _reader_rows(options: ThreadsBenchOptions) -> list[Row]:
    windows: dict[tuple[str, str, int], Callable[[], float]] = {}
    for size in options.batch_sizes:
        for part, workers in zip(READER_PARTS, (0, 1)):
            windows[(part, "-", size)] = ReaderWindow(options, size, workers).seconds_per_batch
    _warm(list(windows.values()), options, 1)
    return _time_rounds(windows, options)


def _train_options(options: ThreadsBenchOptions) -> "TrainBenchOptions":
    from torchrec_mdr.bench.train import TrainBenchOptions

    return TrainBenchOptions(
        data=options.data,
        embedding_dim=options.embedding_dim,
        batches_in_memory=options.batches_in_memory,
        world_sizes=[1],
        pipelines=["plain"],
        threads=options.threads[0],
    )


def _worker(rank: int, port: int, options: ThreadsBenchOptions, out: Path) -> None:
    import torch.distributed as dist

    from torchrec_mdr.bench.train import _quiet, _read_batches

    os.environ.update(
        RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(options.threads[0])
    _quiet()
    if "fork" in multiprocessing.get_all_start_methods():
        # This process was spawned, so its dataloader workers would be spawned too (a fresh interpreter,
        # ~7 s here, at every window); a trainer launched by torchrun forks them.
        multiprocessing.set_start_method("fork", force=True)
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        train = _train_options(options)
        batches = {size: _read_batches(train, size, 0, 1) for size in options.batch_sizes}
        rows: list[Row] = []
        for model in options.models:
            print(f"{model}: {len(STEP_PARTS) * len(options.batch_sizes)} parts ...", flush=True)
            rows += _model_rows(options, model, batches, out)
        if options.reader:
            rows += _reader_rows(options)
        policy = os.environ.get("OMP_WAIT_POLICY", "unset (OpenMP's default)")
        (out / "rows.json").write_text(json.dumps({"rows": [asdict(row) for row in rows], "omp_wait_policy": policy}))
    finally:
        dist.destroy_process_group()


# --------------------------------------------------------------------------- the launcher


def run(options: ThreadsBenchOptions) -> list[Row]:
    """Measure every part at every thread count in one spawned process; print (and write) the table."""
    import torch.multiprocessing as mp

    from torchrec_mdr.bench.train import _free_port, ensure_bench_data

    ensure_bench_data(options.data, options.rows, options.seq_length)
    if options.reader:  # a clean error here rather than a traceback from the measuring process
        from torchrec_mdr.data.reader import ParquetBatches, ReaderConfig

        for size in options.batch_sizes:
            config = ReaderConfig(path=options.data, batch_size=size, drop_last=True)
            check_reader_batches(ParquetBatches(config, "train").num_batches(), options, size)
    saved = os.environ.get("OMP_WAIT_POLICY")
    if options.omp_wait_policy != "inherit":  # read by OpenMP when the spawned process loads it
        os.environ["OMP_WAIT_POLICY"] = options.omp_wait_policy
    try:
        with tempfile.TemporaryDirectory(prefix="mdr-bench-threads-") as tmp:
            out = Path(tmp)
            mp.spawn(_worker, args=(_free_port(), options, out), nprocs=1, join=True)
            result = json.loads((out / "rows.json").read_text())
            rows, policy = [_row_from_json(item) for item in result["rows"]], result["omp_wait_policy"]
    finally:
        if saved is None:
            os.environ.pop("OMP_WAIT_POLICY", None)
        else:
            os.environ["OMP_WAIT_POLICY"] = saved
    print(format_text(rows, options, policy))
    if options.out is not None:
        options.out.parent.mkdir(parents=True, exist_ok=True)
        options.out.write_text(format_markdown(rows, options, policy))
        print(f"written {options.out}")
    return rows
