"""``mdr bench ads``: ADS's training step against its backbone's, per sequence length and chunk size.

The ADS paper (§3.5) reports +3.6% training time over its backbone at industrial scale. This measures the
same quantity here: for every behaviour-sequence length ``T`` in ``seq_lengths``, a synthetic dataset of
``rows`` rows whose every sequence is ``T`` long is generated once under ``data_root`` (``seq<T>``), and one
process (world size 1, gloo, ``threads`` torch threads) builds side by side the real
:class:`~torchrec_mdr.training.trainer.Trainer` of the backbone (``backbone``: DIN by default) and of ADS on
that backbone for each items-per-chunk setting in ``chunks`` (``domain_features`` as ADS's implicit domain
indicators). Each trains the full plain step: sharded sparse forward, dense forward, backward with the fused
row-wise Adagrad of the tables, Adam on the dense parameters.

Timing is ``mdr bench train``'s (:mod:`torchrec_mdr.bench.train`): ``warmup`` steps each, then ``repeats``
rounds in which every variant trains ``steps`` steps, the first variant of a round moving one place each
round; ``clock = "cpu"`` counts the process's CPU seconds (steadier where other jobs share the cores). The
table gives, per ``T`` and chunk setting, ADS's seconds over the backbone's **per round** (median, min and
max over rounds: the windows of a round run back to back, so outside load moves both), and the backbone's
milliseconds per step.

``profile_seq_length`` (0: none): after the rounds at that ``T``, ``torch.profiler`` records
``profile_steps`` single steps of every variant, the variants alternating (after one discarded recording:
the profiler's first start costs time of its own), and the table lists the operators by self time per
step, the backbone's beside each ADS variant's, sorted by ADS's extra time: where ADS's extra cost goes.
The profiler times operators by the wall clock; on a shared machine each recording is scaled by its step's
CPU time over its wall time (the waits counted as evenly spread over the operators), and the table gives
each operator's mean over the recordings.

Before the warm-up, ``torch.utils.flop_counter`` counts one step of every variant: the FLOPs table (ADS over
its backbone) is the ratio that the equations alone set, against which the measured time ratio is read.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch

from torchrec_mdr.config import ConfigError, bounds, doc

if TYPE_CHECKING:
    from torchrec_mdr.bench.train import _Loop
    from torchrec_mdr.models.registry import ModelConfig


@dataclass
class AdsBenchOptions:
    data_root: Path = field(
        default=Path("data/bench-ads"),
        metadata=doc("folder of the generated datasets, one per sequence length (seq<T>; generated if missing)"),
    )
    rows: int = field(default=50_000, metadata=bounds(ge=1000, help="rows of each generated dataset"))
    seq_lengths: list[int] = field(
        default_factory=lambda: [20, 50, 100],
        metadata=bounds(ge=1, help="behaviour-sequence lengths T (every row full length)"),
    )
    chunks: list[int] = field(
        default_factory=lambda: [1, 5, 10], metadata=bounds(ge=1, help="ADS items-per-chunk settings, each one variant")
    )
    backbone: str = field(default="din", metadata=doc("the backbone model and ADS's backbone: din, mha or can"))
    domain_features: list[str] = field(
        default_factory=lambda: ["user_activity"],
        metadata=doc("ADS's implicit domain indicators (model.ads.domain_features)"),
    )
    batch_size: int = field(default=1024, metadata=bounds(ge=1, help="rows per step"))
    embedding_dim: int = field(default=16, metadata=bounds(ge=1, help="embedding dimension of every table"))
    warmup: int = field(default=5, metadata=bounds(ge=1, help="steps per variant before timing (discarded)"))
    steps: int = field(default=10, metadata=bounds(ge=1, help="timed steps per variant per round"))
    repeats: int = field(default=5, metadata=bounds(ge=1, help="rounds; ratios are per round"))
    batches_in_memory: int = field(default=8, metadata=bounds(ge=1, help="distinct batches cycled through"))
    threads: int = field(default=1, metadata=bounds(ge=1, help="torch threads"))
    clock: Literal["wall", "cpu"] = field(
        default="cpu", metadata=doc("what a window's seconds are: cpu (the process's CPU time) or wall")
    )
    profile_seq_length: int = field(
        default=50,
        metadata=bounds(ge=0, help="T at which torch.profiler breaks the step down by operator (0: no profile)"),
    )
    profile_steps: int = field(
        default=10, metadata=bounds(ge=1, help="one-step recordings per variant (the table gives each operator's mean)")
    )
    profile_top: int = field(default=15, metadata=bounds(ge=1, help="operators listed"))

    def validate(self) -> None:
        from torchrec_mdr.models.blocks import ATTENTION_KINDS

        if self.backbone not in ATTENTION_KINDS:
            raise ConfigError(f"'backbone': {self.backbone!r} is not one of {list(ATTENTION_KINDS)}")
        if self.profile_seq_length and self.profile_seq_length not in self.seq_lengths:
            raise ConfigError(
                f"'profile_seq_length': {self.profile_seq_length} is not one of 'seq_lengths' "
                f"{self.seq_lengths} (0: no profile)"
            )


def variants(options: AdsBenchOptions) -> list[str]:
    """The labels, the backbone first: ``din``, ``ads k=1``, ``ads k=5``, ..."""
    return [options.backbone] + [f"ads k={k}" for k in options.chunks]


def _model_config(options: AdsBenchOptions, label: str) -> "ModelConfig":
    from torchrec_mdr.config import load_config
    from torchrec_mdr.models.registry import ModelConfig

    overrides = [f"embedding_dim={options.embedding_dim}"]
    if label == options.backbone:
        return load_config(ModelConfig, None, overrides + [f"name={label}"])
    chunk = int(label.removeprefix("ads k="))
    return load_config(
        ModelConfig,
        None,
        overrides
        + [
            "name=ads",
            f"ads.backbone={options.backbone}",
            f"ads.items_per_chunk={chunk}",
            f"ads.domain_features={json.dumps(options.domain_features)}",
        ],
    )


# --------------------------------------------------------------------------- inside the process


def _profile_step(loop: "_Loop") -> dict[str, float]:
    """Operator -> self milliseconds of one step of ``loop``, scaled by the step's process CPU time over its
    wall time (the profiler times operators by the wall clock; where other jobs share the cores this counts
    the waits as evenly spread over the operators)."""
    from torch.profiler import ProfilerActivity, profile

    wall, cpu = time.perf_counter(), time.process_time()
    with profile(activities=[ProfilerActivity.CPU]) as recording:
        loop.step()
    scale = min((time.process_time() - cpu) / max(time.perf_counter() - wall, 1e-9), 1.0)
    return {event.key: event.self_cpu_time_total / 1000 * scale for event in recording.key_averages()}


def _flops(loop: "_Loop") -> int:
    """Floating-point operations of one training step as ``torch.utils.flop_counter`` counts them: the
    matrix products (and their gradients) of the dense arch; the embedding kernels have no formula."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        loop.step()
    return counter.get_total_flops()


def _profile(loops: dict, steps: int) -> dict[str, dict[str, float]]:
    """Label -> operator -> its mean self ms per step over ``steps`` one-step recordings, each scaled to the
    CPU time of its step (recordings of the variants alternate, rotated like the timed rounds); ``(all)``:
    the mean of the steps' totals."""
    from torchrec_mdr.bench.train import round_order

    _profile_step(next(iter(loops.values())))  # discarded: the profiler's own start-up
    steps_of: dict[str, list[dict[str, float]]] = {label: [] for label in loops}
    for index in range(steps):
        for label in round_order(list(loops), index):
            steps_of[label].append(_profile_step(loops[label]))
    means = {}
    for label, recorded in steps_of.items():
        ops = set().union(*recorded)
        means[label] = {op: statistics.fmean(step.get(op, 0.0) for step in recorded) for op in ops}
        means[label]["(all)"] = statistics.fmean(sum(step.values()) for step in recorded)
    return means


def _worker(rank: int, port: int, options: AdsBenchOptions, seq_length: int, out: Path) -> None:
    import os

    import torch.distributed as dist

    from torchrec_mdr.bench.train import TrainBenchOptions, _Loop, _quiet, _read_batches, _timed, round_order

    os.environ.update(
        RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(options.threads)
    _quiet()
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        train = TrainBenchOptions(
            data=options.data_root / f"seq{seq_length}",
            embedding_dim=options.embedding_dim,
            batches_in_memory=options.batches_in_memory,
            threads=options.threads,
            clock=options.clock,
            world_sizes=[1],
            pipelines=["plain"],
        )
        batches = _read_batches(train, options.batch_size, 0, 1)
        labels = variants(options)
        loops = {
            label: _Loop(
                train,
                _model_config(options, label),
                "plain",
                options.batch_size,
                batches,
                out / f"run-{seq_length}-{index}",
            )
            for index, label in enumerate(labels)
        }
        flops = {label: _flops(loop) for label, loop in loops.items()}
        for loop in loops.values():
            for _ in range(options.warmup):
                loop.step()
        seconds: dict[str, list[float]] = {label: [] for label in labels}
        for round_index in range(options.repeats):
            for label in round_order(labels, round_index):
                seconds[label].append(_timed(loops[label], options.steps, train))
        result: dict = {"seconds": seconds, "flops": flops}
        if seq_length == options.profile_seq_length:
            result["profile"] = _profile(loops, options.profile_steps)
        for loop in loops.values():
            loop.close()
        (out / f"result-{seq_length}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


# --------------------------------------------------------------------------- tables


def round_ratios(seconds: dict[str, list[float]], label: str, baseline: str) -> list[float]:
    """Per round, ``label``'s seconds over ``baseline``'s (its step time as a multiple of the backbone's)."""
    return [a / b for a, b in zip(seconds[label], seconds[baseline])]


def format_ratio_table(
    results: dict[int, dict[str, list[float]]], options: AdsBenchOptions, flops: dict[int, dict[str, int]] | None = None
) -> str:
    """One row per T: the backbone's ms per step (median round) and, per chunk setting, ADS / backbone step
    time as the median (min-max) of the per-round ratios; with ``flops`` (T -> label -> FLOPs of a step),
    a second table of ADS / backbone FLOPs: the ratio the equations alone would give."""
    labels = variants(options)
    clock = "CPU" if options.clock == "cpu" else "wall"
    lines = [
        f"ADS ({options.backbone}) step time / {options.backbone} step time, {clock} time: median (min-max) "
        f"of {options.repeats} rounds x {options.steps} steps after {options.warmup} warm-up, batch "
        f"{options.batch_size}, {options.threads} thread(s), embedding dim {options.embedding_dim}",
        f"{'T':>5}{options.backbone + ' ms/step':>16}" + "".join(f"{label:>22}" for label in labels[1:]),
    ]
    for seq_length, seconds in sorted(results.items()):
        base_ms = statistics.median(seconds[labels[0]]) / options.steps * 1000
        line = f"{seq_length:>5}{base_ms:>16.1f}"
        for label in labels[1:]:
            ratios = round_ratios(seconds, label, labels[0])
            line += f"{statistics.median(ratios):>10.3f} ({min(ratios):.3f}-{max(ratios):.3f})"
        lines.append(line)
    if flops:
        lines += [
            f"training FLOPs per step (matrix products, forward + backward): ADS / {options.backbone}",
            f"{'T':>5}{options.backbone + ' GFLOPs':>16}" + "".join(f"{label:>22}" for label in labels[1:]),
        ]
        for seq_length, counts in sorted(flops.items()):
            lines.append(
                f"{seq_length:>5}{counts[labels[0]] / 1e9:>16.3f}"
                + "".join(f"{counts[label] / counts[labels[0]]:>22.3f}" for label in labels[1:])
            )
    return "\n".join(lines)


def format_profile(profile: dict[str, dict[str, float]], options: AdsBenchOptions) -> str:
    """Operators by self CPU ms per step: the backbone's, then each ADS variant's, sorted by the first ADS
    variant's extra time over the backbone's; a total line first."""
    labels = variants(options)
    base, first = labels[0], labels[1]
    ops = sorted(
        set().union(*(profile[label] for label in labels)) - {"(all)"},
        key=lambda op: profile[base].get(op, 0.0) - profile[first].get(op, 0.0),
    )
    lines = [
        f"self CPU ms per step at T = {options.profile_seq_length} (mean of {options.profile_steps} one-step "
        f"recordings), sorted by {first} - {base}",
        f"{'operator':<60}" + "".join(f"{label:>10}" for label in labels) + f"{'extra':>10}",
    ]
    for op in ["(all)"] + ops[: options.profile_top]:
        values = [profile[label].get(op, 0.0) for label in labels]
        lines.append(f"{op[:59]:<60}" + "".join(f"{v:>10.2f}" for v in values) + f"{values[1] - values[0]:>10.2f}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the launcher


def run(options: AdsBenchOptions) -> dict[int, dict]:
    """Time every (T, variant) cell, print the ratio table (and the profile); return T -> the raw results."""
    import torch.multiprocessing as mp

    from torchrec_mdr.bench.train import _free_port, ensure_bench_data

    results: dict[int, dict] = {}
    with tempfile.TemporaryDirectory(prefix="mdr-bench-ads-") as tmp:
        out = Path(tmp)
        for seq_length in options.seq_lengths:
            ensure_bench_data(options.data_root / f"seq{seq_length}", options.rows, seq_length)
            print(f"T = {seq_length}: {len(variants(options))} variants ...", flush=True)
            mp.spawn(_worker, args=(_free_port(), options, seq_length, out), nprocs=1, join=True)
            results[seq_length] = json.loads((out / f"result-{seq_length}.json").read_text())
    print(
        format_ratio_table(
            {t: r["seconds"] for t, r in results.items()}, options, {t: r["flops"] for t, r in results.items()}
        )
    )
    if options.profile_seq_length:
        print(format_profile(results[options.profile_seq_length]["profile"], options))
    return results
