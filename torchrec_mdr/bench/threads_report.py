"""The options and the table of ``mdr bench threads`` (the measuring is :mod:`torchrec_mdr.bench.threads`): the
rows it measured, their medians, speedups and shares, as text and as markdown."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from torchrec_mdr.config import ConfigError, bounds, doc

STEP_PARTS = ("lookups", "dense arch", "full step")
READER_PARTS = ("reader", "reader, 1 worker")


@dataclass
class ThreadsBenchOptions:
    data: Path = field(default=Path("data/bench-train"), metadata=doc("dataset (generated if missing)"))
    rows: int = field(default=200_000, metadata=bounds(ge=1000, help="rows to generate if the data is missing"))
    seq_length: int = field(default=50, metadata=bounds(ge=1, help="behaviour-sequence length of generated data"))
    models: list[str] = field(
        default_factory=lambda: ["dnn", "din", "ads"], metadata=doc("registered models to measure")
    )
    batch_sizes: list[int] = field(default_factory=lambda: [1024, 4096], metadata=bounds(ge=1, help="rows per step"))
    threads: list[int] = field(
        default_factory=lambda: [1, 2],
        metadata=bounds(ge=1, help="torch thread counts compared (speedups are over the first)"),
    )
    embedding_dim: int = field(default=16, metadata=bounds(ge=1, help="embedding dimension of every table"))
    warmup: int = field(default=3, metadata=bounds(ge=1, help="steps per part and thread count before timing"))
    steps: int = field(default=10, metadata=bounds(ge=1, help="timed steps per window"))
    repeats: int = field(default=5, metadata=bounds(ge=1, help="rounds of windows; cells are medians"))
    batches_in_memory: int = field(default=8, metadata=bounds(ge=1, help="distinct batches cycled through"))
    reader_batches: int = field(
        default=20, metadata=bounds(ge=1, help="batches per reader window (the first of an epoch, from a new iterator)")
    )
    reader: bool = field(default=True, metadata=doc("also time the reader (--no-reader: the step parts only)"))
    omp_wait_policy: Literal["inherit", "active", "passive"] = field(
        default="inherit",
        metadata=doc(
            "OMP_WAIT_POLICY of the measuring process (inherit: this environment's): whether idle OpenMP threads "
            "spin (active) or sleep (passive) after a parallel region"
        ),
    )
    out: Path | None = field(default=None, metadata=doc("also write the table as markdown to this file"))

    def validate(self) -> None:
        from torchrec_mdr.models.registry import MODELS

        unknown = [m for m in self.models if m not in MODELS]
        if unknown:
            raise ConfigError(f"'models': unknown {unknown}; registered models: {sorted(MODELS)}")
        if len(set(self.threads)) < 2 or len(set(self.threads)) != len(self.threads):
            raise ConfigError(f"'threads': give at least two different thread counts, each once (got {self.threads})")
        if not self.batch_sizes:
            raise ConfigError("'batch_sizes' needs at least one entry")


@dataclass
class Row:
    """One part at one batch size: per thread count, the ms per step of each window (round order)."""

    part: str
    model: str  # "-" for the reader
    batch_size: int
    window_ms: dict[int, list[float]]
    other_threads: dict[int, list[float]]  # per window: CPU share of the threads other than the stepping one
    threads_seen: dict[int, list[int]]  # torch.get_num_threads() inside each window

    def ms(self, threads: int) -> float:
        return statistics.median(self.window_ms[threads])

    def speedup(self, base: int, threads: int) -> float:
        """Median ms at ``base`` threads over median ms at ``threads``."""
        return self.ms(base) / self.ms(threads)


def _row_from_json(item: dict) -> Row:
    def keyed(values: dict) -> dict:
        return {int(threads): value for threads, value in values.items()}

    return Row(
        item["part"],
        item["model"],
        item["batch_size"],
        keyed(item["window_ms"]),
        keyed(item["other_threads"]),
        keyed(item["threads_seen"]),
    )


def _percent(shares: list[float]) -> str:
    """The median of the windows that counted CPU time, in percent ("-": none did, the clock ticks being
    1/100 s)."""
    counted = [share for share in shares if share == share]
    return f"{statistics.median(counted):.1%}" if counted else "-"


def table(rows: list[Row], options: ThreadsBenchOptions) -> tuple[list[str], list[list[str]]]:
    """(header, body) of the table: per part, model and batch size the median ms per step at each thread
    count, the speedups over the first count, the share of the full step and the other threads' CPU share."""
    base, others = options.threads[0], options.threads[1:]
    full = {(r.model, r.batch_size): r for r in rows if r.part == "full step"}
    header = ["part", "model", "batch"] + [f"ms@{n}" for n in options.threads]
    header += [f"speedup@{n}" for n in others] + [f"share@{n}" for n in options.threads]
    header += [f"other threads@{n}" for n in others]
    body = []
    parts = list(STEP_PARTS + READER_PARTS)
    models = ["-"] + list(options.models)

    def order(row: Row) -> tuple[bool, int, int, int]:
        return row.part in READER_PARTS, models.index(row.model), row.batch_size, parts.index(row.part)

    for row in sorted(rows, key=order):
        step = full.get((row.model, row.batch_size))
        cells = [row.part, row.model, str(row.batch_size)] + [f"{row.ms(n):.3f}" for n in options.threads]
        cells += [f"{row.speedup(base, n):.3f}" for n in others]
        cells += [f"{row.ms(n) / step.ms(n):.1%}" if step is not None else "-" for n in options.threads]
        cells += [_percent(row.other_threads[n]) for n in others]
        body.append(cells)
    return header, body


def reader_lines(rows: list[Row], options: ThreadsBenchOptions) -> list[str]:
    """Per batch size: the reader's rows/s at each thread count, with and without a worker, and what reading
    in line would add to each model's full step (at the first thread count)."""
    by_key = {(r.part, r.model, r.batch_size): r for r in rows}
    lines = []
    for size in options.batch_sizes:
        for part in READER_PARTS:
            row = by_key.get((part, "-", size))
            if row is None:
                continue
            rates = ", ".join(f"{size / row.ms(n) * 1000:,.0f} at {n} thread(s)" for n in options.threads)
            lines.append(f"{part}, batch {size}: rows/s {rates}")
        inline = by_key.get(("reader", "-", size))
        steps = [by_key[("full step", m, size)] for m in options.models if ("full step", m, size) in by_key]
        if inline is not None and steps:
            base = options.threads[0]
            added = ", ".join(f"{s.model} {inline.ms(base) / s.ms(base):.1%}" for s in steps)
            lines.append(f"reading batch {size} in line adds to the full step at {base} thread(s): {added}")
    return lines


def title(options: ThreadsBenchOptions, omp_wait_policy: str) -> str:
    return (
        f"ms per step{' (reader: per batch)' if options.reader else ''}, median of {options.repeats} rounds x "
        f"{options.steps} steps{f' (reader: {options.reader_batches} batches)' if options.reader else ''}; "
        f"torch threads {', '.join(map(str, options.threads))}; "
        f"world size 1, table_wise, embedding dim {options.embedding_dim}; OMP_WAIT_POLICY {omp_wait_policy}"
    )


def format_text(rows: list[Row], options: ThreadsBenchOptions, omp_wait_policy: str = "") -> str:
    header, body = table(rows, options)
    widths = [max(len(line[i]) for line in [header] + body) + 2 for i in range(len(header))]
    lines = [
        title(options, omp_wait_policy),
        "".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(header, widths))),
    ]
    for cells in body:
        lines.append("".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))))
    return "\n".join(lines + reader_lines(rows, options))


def format_markdown(rows: list[Row], options: ThreadsBenchOptions, omp_wait_policy: str = "") -> str:
    header, body = table(rows, options)
    lines = [title(options, omp_wait_policy), ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * 3 + "---:|" * (len(header) - 3)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    notes = reader_lines(rows, options)
    return "\n".join(lines + ([""] + [f"- {line}" for line in notes] if notes else [])) + "\n"
