"""``mdr bench scale``: one epoch of DIN and ADS on tens of millions of synthetic rows, with and without eviction.

What it runs (every run is one process group of ``world size`` processes joined over gloo, launched with
torchrun's environment variables as ``mdr bench train`` does, training the real
:class:`~torchrec_mdr.training.trainer.Trainer`: DMP, fused sparse optimizer, TrainPipelineSparseDist):

* **main runs**: every model of ``models`` x world size of ``world_sizes`` x ``eviction`` (``zch``: LFU
  managed collision on the ``item`` and ``user`` tables at ``zch_size`` rows each; ``full``: full tables),
  one epoch of the train split of the ``rows``-row dataset;
* **memory runs**: the first model, world size 1, zch, one epoch of a dataset of each of
  ``memory_rows`` rows (same items, users and sequences): the peak resident memory must not grow with rows;
* **curve runs**: the first model, world size 1, managed at each zch size of ``zch_curve``, for
  ``curve_steps`` steps (0: the epoch): the cost of eviction against the zch size.

A run that another already covers (same name: model, world size, zch size, rows, steps) runs once, so
``--memory-rows`` equal to ``--rows`` or a ``--zch-curve`` size equal to the main runs' (with
``--curve-steps 0``) adds no run.

Datasets come from the streaming synthetic generator (:mod:`data_prep.synthetic`, every behaviour sequence
``seq_length`` long, splits 0.9 / 0.05 / 0.05) into ``data/scale-<rows>`` folders, generated once: a
folder with a spec is reused when its rows, items, users, sequence length and domains match (a
ConfigError when they do not); an interrupted generation leaves no spec and is generated again. The
generation's seconds go to ``<out>/data-<rows>.json``.

Every ``log_every`` steps rank 0 appends one line to ``<out>/<run>/log.jsonl``: the step, rows seen (all
ranks), seconds since the first step, samples/s of the window since the last line, the loss, every rank's
resident memory now and at its peak (``VmRSS`` / ``VmHWM``, MiB), the managed tables' occupancy and ids
held, the cumulative seconds spent in eviction rounds (the slowest rank's:
:attr:`~torchrec_mdr.sparse.mch.eviction.TrackedMCHModule.eviction_seconds`) and the machine's 1-minute load
average (other jobs on the same cores move samples/s). At the end of the epoch a
checkpoint is saved (timed; its size on disk) and loaded back into the model (timed), the test split is
evaluated (AUC overall and per domain) and ``<out>/<run>/result.json`` is written. A run whose
``result.json`` exists is skipped, so an interrupted benchmark resumes with the next unfinished run (an
unfinished run starts again from its first step: its log must cover one uninterrupted epoch). The checks and
docs/scale.md are made by :mod:`torchrec_mdr.bench.scale_report`, whose ``run`` is the command.

Choices the issue leaves open: one ``zch_size`` for both managed tables (``sparse.eviction`` has one size;
default: a quarter of the item ids, rounded down to a multiple of every world size); the item table's memory
is the bytes of its tensors on all ranks (embedding rows, the row-wise Adagrad state, and for a managed table
the managed-collision buffers including the history of one eviction interval), read from the model and
optimizer after training.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import socket
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch

from torchrec_mdr.config import ConfigError, bounds, doc

if TYPE_CHECKING:
    from torchrec_mdr.experiment import ExperimentConfig
    from torchrec_mdr.training.trainer import Trainer

Eviction = Literal["zch", "full"]
MANAGED = ["item", "user"]


@dataclass
class ScaleBenchOptions:
    rows: int = field(default=20_000_000, metadata=bounds(ge=1000, help="rows of the main dataset (all splits)"))
    items: int = field(default=10_000_000, metadata=bounds(ge=1000, help="distinct items"))
    users: int = field(default=2_000_000, metadata=bounds(ge=10, help="distinct users"))
    seq_length: int = field(default=50, metadata=bounds(ge=1, help="behaviour-sequence length (every row full)"))
    domains: int = field(default=3, metadata=bounds(ge=1, le=64, help="domains"))
    data_root: Path = field(default=Path("data"), metadata=doc("datasets go to <data-root>/scale-<rows>"))
    out: Path = field(default=Path("runs/scale"), metadata=doc("run directories, logs and results"))
    models: list[str] = field(default_factory=lambda: ["din", "ads"], metadata=doc("registered models"))
    world_sizes: list[int] = field(default_factory=lambda: [1, 2], metadata=bounds(ge=1, help="process counts"))
    eviction: list[Eviction] = field(
        default_factory=lambda: ["zch", "full"],
        metadata=doc("main runs with LFU-managed item and user tables of zch_size rows (zch), with full tables (full)"),
    )
    zch_size: int = field(
        default=0,
        metadata=bounds(
            ge=0, help="rows of each managed table (0: a quarter of the items, a multiple of every world size)"
        ),
    )
    eviction_interval: int = field(default=1000, metadata=bounds(ge=1, help="steps between eviction rounds"))
    memory_rows: list[int] = field(
        default_factory=lambda: [5_000_000],
        metadata=bounds(
            ge=1000, help="row counts of the memory check (first model, world size 1, zch; --rows adds no run)"
        ),
    )
    zch_curve: list[int] = field(
        default_factory=lambda: [100_000, 1_000_000, 4_000_000],
        metadata=bounds(ge=2, help="zch sizes of the eviction-cost curve (first model, world size 1)"),
    )
    curve_steps: int = field(default=5000, metadata=bounds(ge=0, help="steps of each curve run (0: the epoch)"))
    batch_size: int = field(default=1024, metadata=bounds(ge=1, help="rows per batch per process"))
    embedding_dim: int = field(default=16, metadata=bounds(ge=1, help="embedding dimension"))
    log_every: int = field(default=50, metadata=bounds(ge=1, help="steps between log lines"))
    threads: int = field(
        default=0,
        metadata=bounds(
            ge=0, help="torch threads per process (0: cores / world size; 1 is faster where other jobs share the cores)"
        ),
    )
    warmup_steps: int = field(default=100, metadata=bounds(ge=0, help="steps left out of the throughput check"))
    doc_path: Path | None = field(default=None, metadata=doc("write the report (markdown, and a plot beside it)"))

    def validate(self) -> None:
        from torchrec_mdr.models.registry import MODELS

        unknown = [m for m in self.models if m not in MODELS]
        if unknown:
            raise ConfigError(f"'models': unknown {unknown}; registered models: {sorted(MODELS)}")
        if not self.models or not self.world_sizes or not self.eviction:
            raise ConfigError("'models', 'world_sizes' and 'eviction' need at least one entry each")
        step = math.lcm(*self.world_sizes)
        if self.zch_size and self.zch_size % step:
            raise ConfigError(
                f"'zch_size' {self.zch_size} must be a multiple of every world size {self.world_sizes} "
                f"(each rank holds an equal shard of a managed table)"
            )
        if self.managed_size < 2 * max(self.world_sizes):
            raise ConfigError(f"'zch_size' {self.managed_size} is too small for world size {max(self.world_sizes)}")

    @property
    def managed_size(self) -> int:
        """``zch_size``, or a quarter of the items rounded down to a multiple of every world size."""
        step = math.lcm(*self.world_sizes)
        return self.zch_size or max(self.items // 4 // step * step, step)


@dataclass(frozen=True)
class RunSpec:
    kind: Literal["main", "memory", "curve"]
    model: str
    world_size: int
    zch_size: int  # 0: full tables
    rows: int  # of the dataset
    max_steps: int | None = None  # None: one epoch

    @property
    def name(self) -> str:
        tables = f"zch{self.zch_size}" if self.zch_size else "full"
        steps = f"-steps{self.max_steps}" if self.max_steps else ""
        return f"{self.model}-ws{self.world_size}-{tables}-rows{self.rows}{steps}"


def plan_runs(options: ScaleBenchOptions) -> list[RunSpec]:
    """The runs of ``options``, in order: main, memory, curve (duplicates dropped)."""
    runs = [
        RunSpec("main", m, w, options.managed_size if e == "zch" else 0, options.rows)
        for m in options.models
        for w in options.world_sizes
        for e in options.eviction
    ]
    first = options.models[0]
    runs += [RunSpec("memory", first, 1, options.managed_size, rows) for rows in options.memory_rows]
    runs += [RunSpec("curve", first, 1, zch, options.rows, options.curve_steps or None) for zch in options.zch_curve]
    unique: dict[str, RunSpec] = {}
    for run in runs:
        unique.setdefault(run.name, run)
    return list(unique.values())


# --------------------------------------------------------------------------- data


def data_path(options: ScaleBenchOptions, rows: int) -> Path:
    return options.data_root / f"scale-{rows}"


def ensure_data(options: ScaleBenchOptions, rows: int) -> Path:
    """The dataset of ``rows`` rows, generated when missing; ConfigError if an existing one differs."""
    from data_prep.synthetic import Options, convert
    from torchrec_mdr.data.spec import SPEC_FILE, DatasetSpec

    path = data_path(options, rows)
    if (path / SPEC_FILE).is_file():
        spec = DatasetSpec.load(path)
        have = {
            "rows": sum(s.rows for s in spec.splits.values()),
            "items": spec.tables.get("item"),
            "users": spec.tables.get("user"),
            "domains": len(spec.domain_names),
            "seq_length": max((c.max_length or 0) for c in spec.columns_of("sequence")),
        }
        want = {
            "rows": rows,
            "items": options.items,
            "users": options.users,
            "domains": options.domains,
            "seq_length": options.seq_length,
        }
        if have != want:
            raise ConfigError(
                f"{path} holds a dataset with {have}, not the requested {want}: remove it or choose another --data-root"
            )
        return path
    print(f"generating {rows:,} rows ({options.items:,} items, {options.users:,} users) into {path} ...", flush=True)
    begin = time.perf_counter()
    convert(
        Options(
            out=path,
            rows=rows,
            items=options.items,
            users=options.users,
            domains=options.domains,
            seq_length=options.seq_length,
            min_seq_length=options.seq_length,
            split_fractions=[0.9, 0.05, 0.05],
            overwrite=True,
        )
    )
    options.out.mkdir(parents=True, exist_ok=True)
    (options.out / f"data-{rows}.json").write_text(json.dumps({"rows": rows, "seconds": time.perf_counter() - begin}))
    return path


# --------------------------------------------------------------------------- inside each process


def status_mib(name: str) -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (its peak) of this process in MiB (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(name + ":")) / 1024
    except (OSError, StopIteration):
        return 0.0


def table_bytes(model: torch.nn.Module, optimizer: object, table: str) -> list[float]:
    """Bytes this rank holds for embedding table ``table``: [its weight shards and optimizer state (entries of
    the model's and optimizer's state dicts under ``<table>``), its managed-collision slot buffers, the
    managed-collision history of one eviction interval]."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor
    from torch.distributed.tensor import DTensor

    from torchrec_mdr.sparse.mch.eviction import tracked_modules

    def local(value: object) -> int:
        if isinstance(value, ShardedTensor):
            return sum(s.tensor.numel() * s.tensor.element_size() for s in value.local_shards())
        if isinstance(value, DTensor):
            value = value.to_local()
        return value.numel() * value.element_size() if isinstance(value, torch.Tensor) else 0

    def is_table(key: str) -> bool:
        return (f".{table}." in key or key.startswith(f"{table}.")) and "_managed_collision" not in key

    rows = sum(local(v) for k, v in torch.nn.Module.state_dict(model).items() if is_table(k) and k.endswith(".weight"))
    for key, state in optimizer.state_dict()["state"].items():  # type: ignore[attr-defined]
        if is_table(str(key)):
            rows += sum(local(v) for v in (state.values() if isinstance(state, dict) else [state]))
    slots = history = 0
    for module in tracked_modules(model):
        if module.table == table:
            slots += sum(local(t) for t in module.buffers())
            history += sum(local(t) for t in getattr(module, "_history_metadata", {}).values())
            history += local(getattr(module, "_history_accumulator", None))
    return [float(rows), float(slots), float(history)]


class _Logger:
    """Rank 0's JSONL writer; every method is a collective (memory and eviction time come from every rank)."""

    def __init__(self, trainer: "Trainer", path: Path) -> None:
        self.trainer, self.path = trainer, path
        self.last_rows = 0
        self.last_seconds = 0.0

    def gather(self, values: list[float]) -> torch.Tensor:
        import torch.distributed as dist

        local = torch.tensor(values, dtype=torch.float64)
        if dist.get_world_size() == 1:
            return local[None]
        out = [torch.zeros_like(local) for _ in range(dist.get_world_size())]
        dist.all_gather(out, local)
        return torch.stack(out)

    def line(self, step: int, rows: int, seconds: float, loss: float) -> dict:
        from torchrec_mdr.sparse.mch.eviction import eviction_seconds, eviction_stats

        trainer = self.trainer
        ranks = self.gather([status_mib("VmRSS"), status_mib("VmHWM"), eviction_seconds(trainer.model)])
        tables = trainer.config.sparse.eviction.tables
        stats = eviction_stats(trainer.model, tables, trainer.ctx.device) if tables else {}
        window = seconds - self.last_seconds
        record = {
            "step": step,
            "rows_seen": rows,
            "seconds": seconds,
            "samples_per_sec": (rows - self.last_rows) / window if window > 0 else 0.0,
            "loss": loss,
            "rss_mib": ranks[:, 0].tolist(),
            "peak_rss_mib": ranks[:, 1].tolist(),
            "eviction_seconds": float(ranks[:, 2].max()),
            "occupancy": {t: s.occupancy for t, s in stats.items()},
            "ids_held": {t: s.ids_held for t, s in stats.items()},
            "eviction_rounds": {t: s.eviction_rounds for t, s in stats.items()},
            "load_avg": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        }
        self.last_rows, self.last_seconds = rows, seconds
        if trainer.ctx.is_main:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        return record


def _train_epoch(trainer: "Trainer", logger: _Logger, run: RunSpec, log_every: int) -> dict:
    """Train the run's steps, logging every ``log_every``; returns the last log line."""
    import torch.distributed as dist

    total = min(run.max_steps or trainer.steps_per_epoch, trainer.steps_per_epoch)
    batches = trainer.epoch_batches()
    rows = torch.zeros(1, dtype=torch.int64)
    record: dict = {}
    start = time.perf_counter()
    while trainer.progress.step < total:
        try:
            output = trainer.train_step(batches)
        except StopIteration:
            break
        trainer.progress.step += 1
        trainer.progress.batch_in_epoch += 1
        trainer.schedule.step()
        rows += int(output.domain.shape[0])
        step = trainer.progress.step
        if step % log_every == 0 or step == total:
            seen = rows.clone()
            if trainer.ctx.world_size > 1:
                dist.all_reduce(seen)
            record = logger.line(step, int(seen), time.perf_counter() - start, float(output.loss.detach()))
    return record


def _checkpoint_costs(trainer: "Trainer") -> dict:
    """Save a checkpoint and load it back, timed (the slowest rank); its size on disk."""
    import torch.distributed as dist

    dist.barrier()
    begin = time.perf_counter()
    path = trainer.save_checkpoint()
    save = time.perf_counter() - begin
    assert path is not None  # the bench saves once, here (no checkpoint_every), so this step is not saved yet
    dist.barrier()
    begin = time.perf_counter()
    trainer.checkpoints.load(path, trainer.model, trainer.optimizer)
    load = time.perf_counter() - begin
    seconds = torch.tensor([save, load], dtype=torch.float64)
    dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return {"path": str(path), "bytes": size, "save_sec": float(seconds[0]), "load_sec": float(seconds[1])}


def _config(options: ScaleBenchOptions, run: RunSpec, data: Path) -> "ExperimentConfig":
    from torchrec_mdr.data.reader import ReaderConfig
    from torchrec_mdr.experiment import ExperimentConfig, SparseConfig, TrainConfig
    from torchrec_mdr.models.registry import ModelConfig
    from torchrec_mdr.sparse.mch.config import EvictionConfig

    eviction = (
        EvictionConfig(tables=list(MANAGED), zch_size=run.zch_size, eviction_interval=options.eviction_interval)
        if run.zch_size
        else EvictionConfig()
    )
    return ExperimentConfig(
        data=ReaderConfig(path=data, batch_size=options.batch_size),
        model=ModelConfig(name=run.model, embedding_dim=options.embedding_dim),
        sparse=SparseConfig(sharding="auto", eviction=eviction),
        train=TrainConfig(
            device="cpu",
            log_every=options.log_every,
            max_steps=run.max_steps,
            keep_checkpoints=1,
            threads=options.threads or None,
        ),
    )


def _worker(
    rank: int, world_size: int, port: int, options: ScaleBenchOptions, run: RunSpec, data: Path, run_dir: Path
) -> None:

    from torchrec_mdr.data.spec import DatasetSpec
    from torchrec_mdr.training.rank_exit import spawned_rank
    from torchrec_mdr.training.trainer import Trainer

    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    for name in (None, "torchrec", "fbgemm_gpu", "torch.fx._symbolic_trace"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    trainer = Trainer(_config(options, run, data), run_dir)
    with spawned_rank():
        try:
            logger = _Logger(trainer, run_dir / "log.jsonl")
            last = _train_epoch(trainer, logger, run, options.log_every)
            checkpoint = _checkpoint_costs(trainer)
            peak = logger.gather([status_mib("VmHWM")])[:, 0].tolist()  # after training and the checkpoint
            item = logger.gather(table_bytes(trainer.model, trainer.optimizer, "item")).sum(dim=0).tolist()
            metrics = trainer.report(
                {
                    "samples_per_sec": last["rows_seen"] / last["seconds"],
                    "steps": last["step"],
                    "wall_sec": last["seconds"],
                }
            )
            if trainer.ctx.is_main:
                spec = DatasetSpec.load(data)
                result = {
                    **asdict(run),
                    "name": run.name,
                    "train_rows": spec.splits["train"].rows,
                    "distinct_items": spec.tables["item"],
                    "batch_size": options.batch_size,
                    "eviction_interval": options.eviction_interval if run.zch_size else None,
                    "threads": torch.get_num_threads(),
                    "steps": last["step"],
                    "rows_seen": last["rows_seen"],
                    "wall_sec": last["seconds"],
                    "samples_per_sec": last["rows_seen"] / last["seconds"],
                    "eviction_seconds": last["eviction_seconds"],
                    "peak_rss_mib_train": last["peak_rss_mib"],
                    "peak_rss_mib": peak,
                    "item_table_bytes": int(sum(item)),
                    "item_table_parts": dict(zip(("rows", "slots", "history"), map(int, item))),
                    "checkpoint": checkpoint,
                    "occupancy": last["occupancy"],
                    "eviction": metrics.get("eviction", {}),
                    "test": {
                        "auc": metrics["auc"],
                        "logloss": metrics["logloss"],
                        "per_domain": {d: v["auc"] for d, v in metrics["per_domain"].items()},
                    },
                }
                tmp = run_dir / "result.json.tmp"
                tmp.write_text(json.dumps(result, indent=2) + "\n")
                tmp.replace(run_dir / "result.json")
        finally:
            if trainer.writer is not None:
                trainer.writer.close()


# --------------------------------------------------------------------------- the launcher


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_one(options: ScaleBenchOptions, run: RunSpec) -> dict:
    """The result of ``run``: read from ``result.json`` when it exists, else trained (from scratch)."""
    import torch.multiprocessing as mp

    run_dir = options.out / run.name
    result = run_dir / "result.json"
    if result.is_file():
        print(f"{run.name}: done earlier, read {result}", flush=True)
        return json.loads(result.read_text())
    data = ensure_data(options, run.rows)
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an unfinished earlier attempt
    run_dir.mkdir(parents=True)
    print(f"{run.name}: training ...", flush=True)
    mp.spawn(
        _worker, args=(run.world_size, _free_port(), options, run, data, run_dir), nprocs=run.world_size, join=True
    )
    return json.loads(result.read_text())


def read_log(options: ScaleBenchOptions, run: RunSpec) -> list[dict]:
    path = options.out / run.name / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_all(options: ScaleBenchOptions) -> tuple[list[RunSpec], list[dict], dict[str, list[dict]]]:
    """Train every planned run not done yet: the runs, their results and their logs (by run name)."""
    runs = plan_runs(options)
    print(f"mdr bench scale: {len(runs)} runs into {options.out}", flush=True)
    results = [run_one(options, r) for r in runs]
    return runs, results, {r.name: read_log(options, r) for r in runs}
