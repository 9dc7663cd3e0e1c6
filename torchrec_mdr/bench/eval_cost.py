"""``mdr bench eval``: time and peak memory of one evaluation pass, gathered vs sharded metrics.

For every (rows, world size, path) cell the benchmark spawns ``world size`` fresh processes joined over
gloo. Each rank feeds ``rows / world size`` synthetic predictions in batches of ``--batch-size`` to
one metrics path and computes the pass's metrics (AUC, logloss, GAUC, S-GAUC, overall and per domain,
per task):

- ``gather``: the previous path, :class:`~torchrec_mdr.metrics.ranking.PredictionBuffer` (all-gather
  of every rank's rows to every rank) then ``evaluate_predictions`` in numpy on each rank;
- ``sharded``: :class:`~torchrec_mdr.metrics.sharded.ShardedMetrics` (reduced histograms and sums, rows
  routed by bin and by group key).

Predictions are made batch by batch from a seeded generator (logit ~ N(-1, 1.5), label ~
Bernoulli(sigmoid(logit)), 3 domains, ``rows / 20`` users shared across ranks, 4 sessions per user),
so the inputs take no memory of their own. Reported per cell: wall seconds of the pass (the adds and
the final computation, the slowest rank), the final computation alone, and the peak resident memory
the pass added per rank (``VmHWM`` of /proc/self/status, reset before the pass, minus ``VmRSS`` before it;
the largest rank). Both paths get the same rows, and the benchmark checks they give the same metrics.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from torchrec_mdr.config import ConfigError, bounds, doc

PATHS = ("gather", "sharded")
DOMAINS = ["d0", "d1", "d2"]


@dataclass
class EvalBenchOptions:
    rows: list[int] = field(
        default_factory=lambda: [2_000_000],
        metadata=bounds(ge=1000, help="rows per pass (all ranks together); one cell each"),
    )
    world_sizes: list[int] = field(default_factory=lambda: [1, 2], metadata=bounds(ge=1, help="processes (gloo)"))
    paths: list[str] = field(default_factory=lambda: list(PATHS), metadata=doc(f"metric paths among {PATHS}"))
    batch_size: int = field(default=4096, metadata=bounds(ge=1, help="rows per batch per rank"))
    tasks: int = field(default=1, metadata=bounds(ge=1, le=8, help="tasks (logit and label columns)"))
    threads: int = field(default=1, metadata=bounds(ge=1, help="torch threads per process"))
    out: Path | None = field(default=None, metadata=doc("write the cells as JSON here"))

    def __post_init__(self) -> None:
        unknown = [p for p in self.paths if p not in PATHS]
        if unknown:
            raise ConfigError(f"paths: unknown {unknown}; choose among {list(PATHS)}")


def _status_kib(name: str) -> int:
    """``VmRSS`` (resident now) or ``VmHWM`` (its high-water mark) of this process, KiB (Linux)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(name + ":"))


def _reset_peak() -> None:
    """Start the high-water mark afresh (Linux >= 4.0); elsewhere it keeps the import's peak (an over-estimate)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _batch(options: EvalBenchOptions, rows: int, rank: int, index: int, size: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(rank * 1_000_003 + index)
    logits = torch.randn(size, options.tasks, generator=generator, dtype=torch.float64) * 1.5 - 1.0
    labels = torch.rand(size, options.tasks, generator=generator, dtype=torch.float64) < torch.sigmoid(logits)
    domain = torch.randint(0, len(DOMAINS), (size,), generator=generator)
    group = torch.randint(0, max(rows // 20, 1), (size,), generator=generator)
    session = group * 4 + torch.randint(0, 4, (size,), generator=generator)
    return [logits.float(), labels.double(), domain, group, session]


def _pass(options: EvalBenchOptions, path: str, rows: int, rank: int, world_size: int) -> tuple[dict, float, float]:
    """One pass of ``path`` over this rank's share: (metrics dict, seconds of the pass, of the computation)."""
    from torchrec_mdr.metrics.ranking import PredictionBuffer, evaluate_predictions
    from torchrec_mdr.metrics.sharded import ShardedMetrics

    labels = [f"task{t}" for t in range(options.tasks)]
    metrics = ShardedMetrics(len(DOMAINS), options.tasks, sessions=True) if path == "sharded" else PredictionBuffer()
    local = rows // world_size + (rank < rows % world_size)
    seconds = 0.0
    for index, start in enumerate(range(0, local, options.batch_size)):
        batch = _batch(options, rows, rank, index, min(options.batch_size, local - start))
        begin = time.perf_counter()
        metrics.add(*batch)
        seconds += time.perf_counter() - begin
    begin = time.perf_counter()
    if isinstance(metrics, ShardedMetrics):  # path == "sharded"
        result = metrics.compute(DOMAINS, labels)
    else:
        result = evaluate_predictions(
            metrics.gather(num_tasks=options.tasks), DOMAINS, sessions=True, label_names=labels
        )
    compute = time.perf_counter() - begin
    return result.to_dict(), seconds + compute, compute


def _worker(rank: int, world_size: int, port: int, options: EvalBenchOptions, path: str, rows: int, out: Path) -> None:
    import torch.distributed as dist

    from torchrec_mdr.training.rank_exit import spawned_rank

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(options.threads)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    with spawned_rank():
        _reset_peak()
        before = _status_kib("VmRSS")
        result, seconds, compute = _pass(options, path, rows, rank, world_size)
        peak = _status_kib("VmHWM")
        (out / f"{path}-{rows}-{world_size}-{rank}.json").write_text(
            json.dumps({"result": result, "seconds": seconds, "compute": compute, "peak_mib": (peak - before) / 1024})
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _max_abs_difference(a: dict, b: dict) -> float:
    """Largest |a - b| over the numeric leaves of two metrics dicts of the same shape (NaN = NaN)."""
    worst = 0.0
    for key, value in a.items():
        if isinstance(value, dict):
            worst = max(worst, _max_abs_difference(value, b[key]))
        elif not (value != value and b[key] != b[key]):
            worst = max(worst, abs(value - b[key]))
    return worst


def run(options: EvalBenchOptions) -> list[dict]:
    """Measure every cell; print a table (and the largest metric difference between the paths) and return them."""
    import torch.multiprocessing as mp

    cells = []
    print(
        f"eval pass, {options.tasks} task(s), batch {options.batch_size} per rank, {options.threads} thread(s) per "
        f"process\n{HEADER}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="mdr-bench-eval-") as tmp:
        out = Path(tmp)
        for rows in options.rows:
            for world_size in options.world_sizes:
                results = {}
                for path in options.paths:
                    mp.spawn(
                        _worker, args=(world_size, _free_port(), options, path, rows, out), nprocs=world_size, join=True
                    )
                    ranks = [
                        json.loads((out / f"{path}-{rows}-{world_size}-{r}.json").read_text())
                        for r in range(world_size)
                    ]
                    results[path] = ranks[0]["result"]
                    cells.append(
                        {
                            "rows": rows,
                            "world_size": world_size,
                            "path": path,
                            "tasks": options.tasks,
                            "seconds": max(r["seconds"] for r in ranks),
                            "compute_seconds": max(r["compute"] for r in ranks),
                            "peak_mib_per_rank": max(r["peak_mib"] for r in ranks),
                            "auc": ranks[0]["result"]["auc"],
                        }
                    )
                    print(_line(cells[-1]), flush=True)
                if len(results) == 2:
                    print(
                        f"  largest |gather - sharded| over all metrics: "
                        f"{_max_abs_difference(results['gather'], results['sharded']):.2e}",
                        flush=True,
                    )
    if options.out is not None:
        options.out.write_text(json.dumps(cells, indent=2) + "\n")
    return cells


def _line(cell: dict) -> str:
    return (
        f"{cell['rows']:>12,}{cell['world_size']:>6}  {cell['path']:<8}{cell['seconds']:>10.1f}"
        f"{cell['compute_seconds']:>10.1f}{cell['peak_mib_per_rank']:>14,.0f}"
    )


HEADER = f"{'rows':>12}{'world':>6}  {'path':<8}{'eval s':>10}{'compute s':>10}{'peak MiB/rank':>14}"
