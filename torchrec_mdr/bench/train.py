"""``mdr bench train``: training samples/s per model, world size and training loop.

For every world size the benchmark spawns that many processes joined over gloo — over nccl, one
GPU each, with ``device = "cuda"`` — (the torchrun variables set per process, as torchrun would), and each process builds, for every model and loop,
the real :class:`~torchrec_mdr.training.trainer.Trainer` (meta-device sparse arch, fused sparse
optimizer, DMP with the configured sharding, dense optimizer) and runs:

* ``plain`` — the trainer's plain step: zero_grad, forward, backward, step;
* ``base`` — torchrec's ``TrainPipelineBase`` (copies the next batch ahead; no sparse overlap);
* ``sparse_dist`` — torchrec's ``TrainPipelineSparseDist`` (the input all-to-all of batch i+1
  overlaps the forward/backward of batch i), what ``mdr train`` uses by default.

With ``reference`` (world size 1), two more loops per model and batch size take their turns in the
same rounds (:mod:`torchrec_mdr.bench.reference`): ``reference`` — the same registered dense arch fed
by plain ``nn.EmbeddingBag`` / ``nn.Embedding`` tables with dense gradients and one Adam over every
parameter, its batches converted once to plain tensors — and ``roof`` — the dense arch alone (forward,
backward, Adam) on the reference's embedded batches. A second table then gives each loop of ours over
the reference, paired by round, and each loop's overhead above the roof, ``1 - samples/s / roof``.

Measured: ``warmup`` steps are run and discarded, then the loops of one model (one per training loop
and batch size: ``batch_sizes`` measures several in the same rounds), built side by side, take
turns in ``repeats`` rounds: in each round every loop trains ``steps`` steps (a window),
the first loop of a round moving one place each round (plain, base, sparse_dist; base,
sparse_dist, plain; ...), so that no loop always runs first or last. A window's wall time is the
slowest rank's (``clock = "cpu"``: the process's CPU seconds instead of wall seconds), and
``samples/s = steps * batch_size * world_size / seconds``. Each cell reports
the median of its windows, and ``sparse_dist / plain`` is the median (with min and max) of the
per-round ratios: the two windows of one round run back to back, so a burst of outside load on a
shared machine moves both. Batches are read
once (the first ``batches_in_memory`` of the train split) and re-wrapped in fresh
KeyedJaggedTensors for every step, so the figures measure training, not parquet reading (``mdr
bench loader`` measures that). On the GPU the batches stay in pinned host memory and every step
copies its batch to the device (the pipelines on their own stream), as in training; a window is
timed between two ``torch.cuda.synchronize()``. Each process uses ``cores // world_size`` threads unless ``threads``
says otherwise, so every world size uses the same cores.

The dataset is the synthetic one (every behaviour sequence full length), generated on first use.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import socket
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Literal

import torch

from torchrec_mdr.config import ConfigError, bounds, doc
from torchrec_mdr.data.batch import Batch
from torchrec_mdr.data.spec import SPEC_FILE
from torchrec_mdr.experiment import PipelineType, ShardingType

if TYPE_CHECKING:
    from torchrec_mdr.bench import reference
    from torchrec_mdr.models.registry import ModelConfig

PIPELINES: tuple[str, ...] = ("plain", "base", "sparse_dist")


@dataclass
class TrainBenchOptions:
    data: Path = field(default=Path("data/bench-train"), metadata=doc("dataset (generated if missing)"))
    rows: int = field(default=200_000, metadata=bounds(ge=1000, help="rows to generate if the data is missing"))
    seq_length: int = field(default=50, metadata=bounds(ge=1, help="behaviour-sequence length of generated data"))
    models: list[str] = field(default_factory=lambda: ["dnn", "din"], metadata=doc("registered models to measure"))
    world_sizes: list[int] = field(default_factory=lambda: [1, 2], metadata=bounds(ge=1, help="process counts"))
    pipelines: list[PipelineType] = field(
        default_factory=lambda: list(PIPELINES),  # type: ignore[arg-type]
        metadata=doc("training loops: plain, base, sparse_dist"),
    )
    batch_size: int = field(default=512, metadata=bounds(ge=1, help="rows per batch per process"))
    batch_sizes: list[int] = field(
        default_factory=list,
        metadata=bounds(
            ge=1,
            help="several batch sizes per process, their loops taking turns in the same rounds (replaces --batch-size)",
        ),
    )
    embedding_dim: int = field(default=16, metadata=bounds(ge=1, help="embedding dimension of every table"))
    sharding: ShardingType = field(default="table_wise", metadata=doc("sharding of every table (auto: planner)"))
    warmup: int = field(default=20, metadata=bounds(ge=1, help="steps run before timing (discarded)"))
    steps: int = field(default=100, metadata=bounds(ge=1, help="timed steps per window"))
    repeats: int = field(default=5, metadata=bounds(ge=1, help="rounds of timed windows; cells report medians"))
    batches_in_memory: int = field(default=32, metadata=bounds(ge=1, help="distinct batches cycled through"))
    threads: int = field(default=0, metadata=bounds(ge=0, help="torch threads per process (0: cores // world size)"))
    device: Literal["cpu", "cuda"] = field(default="cpu", metadata=doc("cuda: one GPU per process, nccl"))
    mixed_precision: bool = field(default=False, metadata=doc("bf16 autocast of the dense arch (cuda only)"))
    clock: Literal["wall", "cpu"] = field(
        default="wall",
        metadata=doc(
            "what a window's seconds are: wall (elapsed) or cpu (the process's user + system CPU time: steadier "
            "where other jobs share the cores; with one thread per process)"
        ),
    )
    reference: bool = field(
        default=False,
        metadata=doc(
            "also train each model as plain PyTorch (nn.EmbeddingBag / nn.Embedding, dense gradients, Adam on "
            "everything) and its dense arch alone, in the same rounds: ours / reference and the overhead above "
            "the dense arch (world size 1 only)"
        ),
    )

    @property
    def sizes(self) -> list[int]:
        """The batch sizes measured: ``batch_sizes``, or ``[batch_size]``."""
        return list(self.batch_sizes) or [self.batch_size]

    def validate(self) -> None:
        from torchrec_mdr.models.registry import MODELS

        unknown = [m for m in self.models if m not in MODELS]
        if unknown:
            raise ConfigError(f"'models': unknown {unknown}; registered models: {sorted(MODELS)}")
        if not self.pipelines or not self.models or not self.world_sizes:
            raise ConfigError("'models', 'world_sizes' and 'pipelines' need at least one entry each")
        if self.reference and self.world_sizes != [1]:
            raise ConfigError(
                f"'reference': the plain-PyTorch reference is one process; use --world-sizes 1 (got {self.world_sizes})"
            )
        if self.clock == "cpu" and self.device == "cuda":
            raise ConfigError("'clock': cpu time does not measure GPU work; use --clock wall with --device cuda")
        # the checks the trainer would make inside the spawned processes, made here for a clean error
        if self.device == "cuda" and torch.cuda.device_count() < max(self.world_sizes):
            raise ConfigError(
                f"'device': cuda needs one GPU per process, {max(self.world_sizes)} for world sizes "
                f"{self.world_sizes}; this machine has {torch.cuda.device_count()}"
            )
        if self.mixed_precision and self.device != "cuda":
            raise ConfigError("'mixed_precision': bf16 autocast is for the GPU; add --device cuda")
        if self.sharding == "data_parallel" and self.device == "cpu":
            raise ConfigError(
                "'sharding': data_parallel cannot hold the EmbeddingCollection of the sequences "
                "on CPU; use table_wise, row_wise, column_wise or auto"
            )
        if self.sharding == "column_wise" and any(self.embedding_dim % w for w in self.world_sizes):
            raise ConfigError(
                f"'sharding': column_wise needs 'embedding_dim' ({self.embedding_dim}) divisible "
                f"by every world size {self.world_sizes}"
            )


@dataclass
class Cell:
    model: str
    world_size: int
    pipeline: str
    window_samples_per_sec: list[float]  # one per round, in round order
    steps: int  # per window
    batch_size: int  # per process
    threads: int  # torch threads per process while timed

    @property
    def samples_per_sec(self) -> float:
        """The median window."""
        return statistics.median(self.window_samples_per_sec)


def paired_ratios(numerator: Cell, denominator: Cell) -> list[float]:
    """Per round, the samples/s of ``numerator``'s window over ``denominator``'s (same model and world size)."""
    return [a / b for a, b in zip(numerator.window_samples_per_sec, denominator.window_samples_per_sec)]


def ensure_bench_data(path: Path, rows: int, seq_length: int) -> None:
    if (path / SPEC_FILE).is_file():
        return
    from data_prep.synthetic import Options, convert

    print(f"generating {rows:,} rows of benchmark data into {path} ...")
    convert(
        Options(
            out=path, rows=rows, seq_length=seq_length, min_seq_length=seq_length, split_fractions=[0.9, 0.05, 0.05]
        )
    )


# --------------------------------------------------------------------------- inside each process


def _fresh(batches: list[Batch]) -> Iterator[Batch]:
    """Cycle through ``batches`` forever, each time in new KeyedJaggedTensors (no cached offsets)."""
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    def rewrap(kjt: KeyedJaggedTensor) -> KeyedJaggedTensor:
        return KeyedJaggedTensor(kjt.keys(), kjt.values(), lengths=kjt.lengths(), stride=kjt.stride())

    for batch in itertools.cycle(batches):
        yield Batch(
            batch.dense_features,
            rewrap(batch.sparse_features),
            rewrap(batch.sequence_features),
            batch.domain,
            batch.labels,
            batch.group_ids,
            batch.session_ids,
        )


def _read_batches(options: TrainBenchOptions, batch_size: int, rank: int, world_size: int) -> list[Batch]:
    from torchrec_mdr.data.reader import ReaderConfig, make_dataloader

    config = ReaderConfig(path=options.data, batch_size=batch_size, shuffle=False, drop_last=True)
    batches = list(
        itertools.islice(iter(make_dataloader(config, "train", rank, world_size)), options.batches_in_memory)
    )
    if not batches:
        raise ConfigError(
            f"'batch_size' {batch_size}: the train split of {options.data} has no full "
            f"batch per process at world size {world_size}"
        )
    return batches


class _Loop:
    """One model trained by one loop: the trainer, its torchrec pipeline (None: plain) and batches."""

    def __init__(
        self,
        options: TrainBenchOptions,
        model: "str | ModelConfig",
        pipeline: str,
        batch_size: int,
        batches: list[Batch],
        run_dir: Path,
    ) -> None:
        """``model``: a registered name (its default options) or a whole model config."""
        from torchrec_mdr.data.reader import ReaderConfig
        from torchrec_mdr.experiment import ExperimentConfig, SparseConfig, TrainConfig
        from torchrec_mdr.models.registry import ModelConfig
        from torchrec_mdr.training.trainer import Trainer

        if isinstance(model, str):
            model = ModelConfig(name=model, embedding_dim=options.embedding_dim)
        config = ExperimentConfig(
            data=ReaderConfig(path=options.data, batch_size=batch_size, shuffle=False),
            model=model,
            sparse=SparseConfig(sharding=options.sharding),
            train=TrainConfig(
                pipeline=pipeline,  # type: ignore[arg-type]
                device=options.device,
                mixed_precision=options.mixed_precision,
            ),
        )
        self.trainer = Trainer(config, run_dir)
        torch.set_num_threads(_threads(options, self.trainer.ctx.world_size))  # init_distributed sets its own
        self.source = _fresh(batches)

    def step(self) -> None:
        self.trainer.train_step(self.source)

    def close(self) -> None:
        if self.trainer.writer is not None:
            self.trainer.writer.close()


def _timed(
    loop: "_Loop | reference.ReferenceLoop | reference.RoofLoop", steps: int, options: TrainBenchOptions
) -> float:
    """Seconds of ``steps`` steps of ``loop``, the slowest rank's (CPU seconds with ``clock = "cpu"``)."""
    import torch.distributed as dist

    cuda = options.device == "cuda"
    clock = time.process_time if options.clock == "cpu" else time.perf_counter
    if cuda:
        torch.cuda.synchronize()
    dist.barrier()
    start = clock()
    for _ in range(steps):
        loop.step()
    if cuda:
        torch.cuda.synchronize()  # the steps' kernels are queued, not done, when step() returns
    # nccl reduces only CUDA tensors
    seconds = torch.tensor([clock() - start], dtype=torch.float64, device="cuda" if cuda else "cpu")
    dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
    return float(seconds.item())


def _reference_loops(options: TrainBenchOptions, model: str, size: int, batches: list[Batch]) -> dict:
    """(reference, size) and (roof, size) loops of ``model`` (``options.reference``; after our trainers, so
    that the process's CPU memory settings are the same for all)."""
    from torchrec_mdr.bench.reference import REFERENCE, ROOF, ReferenceLoop, RoofLoop
    from torchrec_mdr.data.spec import DatasetSpec
    from torchrec_mdr.experiment import OptimizerConfig
    from torchrec_mdr.models.registry import ModelConfig

    spec = DatasetSpec.load(options.data)
    lr = OptimizerConfig().dense_lr
    reference = ReferenceLoop(
        spec, ModelConfig(name=model, embedding_dim=options.embedding_dim), batches, torch.device(options.device), lr
    )
    return {(REFERENCE, size): reference, (ROOF, size): RoofLoop(reference, spec, lr)}


def round_order(pipelines: list, round_index: int) -> list:
    """The loops' turn in round ``round_index``: rotated by one place per round."""
    shift = round_index % len(pipelines)
    return pipelines[shift:] + pipelines[:shift]


def _measure_model(
    options: TrainBenchOptions, model: str, batches: dict[int, list[Batch]], out: Path, world_size: int
) -> dict[tuple[str, int], list[float]]:
    """(pipeline, batch size) -> seconds of ``options.steps`` steps in each of ``options.repeats`` rounds."""
    loops: dict = {
        (p, size): _Loop(options, model, p, size, batches[size], out / f"run-{world_size}-{model}-{p}-{size}")
        for size in options.sizes
        for p in options.pipelines
    }
    for size in options.sizes if options.reference else []:
        loops.update(_reference_loops(options, model, size, batches[size]))
    for loop in loops.values():
        for _ in range(options.warmup):
            loop.step()
    seconds: dict[tuple[str, int], list[float]] = {key: [] for key in loops}
    for round_index in range(options.repeats):
        for key in round_order(list(loops), round_index):
            seconds[key].append(_timed(loops[key], options.steps, options))
    for loop in loops.values():
        loop.close()
    return seconds


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _threads(options: TrainBenchOptions, world_size: int) -> int:
    return options.threads or max(_cores() // world_size, 1)


def _quiet() -> None:
    """Keep the table readable: torchrec's planner and DMP log and warn for every model built."""
    for name in (None, "torchrec", "fbgemm_gpu", "torch.fx._symbolic_trace"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)


def _worker(rank: int, world_size: int, port: int, options: TrainBenchOptions, out: Path) -> None:
    import torch.distributed as dist

    from torchrec_mdr.training.rank_exit import spawned_rank

    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(_threads(options, world_size))
    _quiet()
    if options.device == "cuda":
        torch.cuda.set_device(rank)
    dist.init_process_group("nccl" if options.device == "cuda" else "gloo", rank=rank, world_size=world_size)
    with spawned_rank():
        batches = {size: _read_batches(options, size, rank, world_size) for size in options.sizes}
        cells = []
        for model in options.models:
            for (pipeline, size), seconds in _measure_model(options, model, batches, out, world_size).items():
                samples = options.steps * size * world_size
                cells.append(
                    Cell(
                        model,
                        world_size,
                        pipeline,
                        [samples / x for x in seconds],
                        options.steps,
                        size,
                        torch.get_num_threads(),
                    ).__dict__
                )
        if rank == 0:
            (out / f"cells-{world_size}.json").write_text(json.dumps(cells))


# --------------------------------------------------------------------------- the launcher


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _device_name(options: TrainBenchOptions) -> str:
    if options.device == "cpu":
        return "cpu"
    precision = ", bf16 autocast" if options.mixed_precision else ""
    return f"cuda ({torch.cuda.get_device_name(0)}{precision})"


def format_table(cells: list[Cell], options: TrainBenchOptions) -> str:
    """One row per (model, world size): median samples/s of every loop, and sparse_dist / plain as the
    median, min and max of the per-round ratios."""
    by_key = {(c.model, c.world_size, c.batch_size, c.pipeline): c for c in cells}
    sizes = sorted({c.batch_size for c in cells})
    ratio = "plain" in options.pipelines and "sparse_dist" in options.pipelines
    header = f"{'model':<14}{'world':>6}{'threads':>8}{'rows/step':>11}" + "".join(
        f"{p:>14}" for p in options.pipelines
    )
    header += f"{'sparse_dist/plain':>19}{'min':>7}{'max':>7}" if ratio else ""
    clock = " of CPU time" if options.clock == "cpu" else ""
    lines = [
        f"training samples/s{clock} (median of {options.repeats} rounds x {options.steps} timed steps after "
        f"{options.warmup} warm-up, batch {', '.join(map(str, sizes))} per process, sharding {options.sharding}, "
        f"embedding dim {options.embedding_dim}) on {_device_name(options)}",
        header,
    ]
    for model, world_size, size in itertools.product(options.models, options.world_sizes, sizes):
        row = [by_key[(model, world_size, size, p)].samples_per_sec for p in options.pipelines]
        threads = by_key[(model, world_size, size, options.pipelines[0])].threads
        line = f"{model:<14}{world_size:>6}{threads:>8}{size * world_size:>11,}"
        line += "".join(f"{value:>14,.0f}" for value in row)
        if ratio:
            ratios = paired_ratios(
                by_key[(model, world_size, size, "sparse_dist")], by_key[(model, world_size, size, "plain")]
            )
            line += f"{statistics.median(ratios):>19.3f}{min(ratios):>7.3f}{max(ratios):>7.3f}"
        lines.append(line)
    if len(sizes) > 1:  # how throughput moves with the batch, paired by round like the loops
        small, large = sizes[0], sizes[-1]
        for model, world_size, pipeline in itertools.product(options.models, options.world_sizes, options.pipelines):
            ratios = paired_ratios(
                by_key[(model, world_size, large, pipeline)], by_key[(model, world_size, small, pipeline)]
            )
            lines.append(
                f"{model} world {world_size} {pipeline}: samples/s at batch {large} / at {small}: median "
                f"{statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})"
            )
    return "\n".join(lines)


def run(options: TrainBenchOptions) -> list[Cell]:
    """Measure every (model, world size, loop) cell; print and return them."""
    import torch.multiprocessing as mp

    ensure_bench_data(options.data, options.rows, options.seq_length)
    cells: list[Cell] = []
    with tempfile.TemporaryDirectory(prefix="mdr-bench-train-") as tmp:
        out = Path(tmp)
        for world_size in options.world_sizes:
            loops = len(options.pipelines) + (2 if options.reference else 0)
            print(f"world size {world_size}: {len(options.models) * loops} cells ...", flush=True)
            mp.spawn(_worker, args=(world_size, _free_port(), options, out), nprocs=world_size, join=True)
            cells += [Cell(**c) for c in json.loads((out / f"cells-{world_size}.json").read_text())]
    print(format_table(cells, options))
    if options.reference:
        from torchrec_mdr.bench.reference import format_reference

        print(format_reference(cells, options.models, options.sizes, options.pipelines, options.clock == "cpu"))
    return cells
