"""The checks of ``mdr bench scale`` as figures, and its report (docs/scale.md with a plot).

The checks (issue 14; printed as figures, never asserted by a timed test):

* **memory**: the peak resident memory of training (``VmHWM`` after the last step, the largest rank) of
  the first model at world size 1 with eviction on, at the main row count and at each ``memory_rows``:
  ``spread = max / min - 1`` over those runs, target at most 0.10;
* **throughput**: per main run, samples/s over the last tenth of the steps after ``warmup_steps`` over
  samples/s of the first tenth (both from the log lines that bound each tenth), target at least 0.9;
* **eviction**: per managed run, seconds in eviction rounds over the training wall time (target at most
  0.10 at zch 1M with the default interval) and the curve of seconds per round against the zch size;
* **item table**: the item table's bytes (all ranks) with eviction on and off, per row of the table:
  with eviction the table has ``zch_size`` rows whatever the distinct ids.

The report is rewritten on every call; a hand-written part after the :data:`KEPT` line of an existing
report (docs/scale.md: the MPZCH section) is carried over unchanged (:func:`kept_tail`).
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

from torchrec_mdr.bench.scale import RunSpec, ScaleBenchOptions, plan_runs, run_all

MIB = 2**20
KEPT = "<!-- Hand-written from here on: `mdr bench scale` keeps this part when it rewrites the report. -->"


def tenth_rates(log: list[dict], warmup_steps: int) -> dict[str, Any] | None:
    """samples/s over the first and the last tenth of the logged steps after ``warmup_steps`` (None: too few
    log lines, at least three are needed after the warm-up)."""
    lines = [line for line in log if line["step"] >= warmup_steps]
    if len(lines) < 3:
        return None
    tenth = (lines[-1]["step"] - lines[0]["step"]) / 10
    first_end = next(line for line in lines[1:] if line["step"] >= lines[0]["step"] + tenth)
    last_start = [line for line in lines[:-1] if line["step"] <= lines[-1]["step"] - tenth][-1]

    def rate(a: dict, b: dict) -> float:
        return (b["rows_seen"] - a["rows_seen"]) / (b["seconds"] - a["seconds"])

    first, last = rate(lines[0], first_end), rate(last_start, lines[-1])
    return {
        "first_tenth": first,
        "last_tenth": last,
        "ratio": last / first,
        "first_steps": [lines[0]["step"], first_end["step"]],
        "last_steps": [last_start["step"], lines[-1]["step"]],
    }


def checks(options: ScaleBenchOptions, runs: list[RunSpec], results: list[dict], logs: dict[str, list[dict]]) -> dict:
    """The figures of every check (see the module doc)."""
    by_name = {r.name: result for r, result in zip(runs, results)}
    first = options.models[0]
    memory = [
        by_name[r.name]
        for r in runs
        if r.model == first
        and r.world_size == 1
        and r.zch_size == options.managed_size
        and not r.max_steps
        and (r.kind == "memory" or r.rows == options.rows)
    ]
    peaks = {m["rows"]: max(m["peak_rss_mib_train"]) for m in memory}
    spread = max(peaks.values()) / min(peaks.values()) - 1 if len(peaks) > 1 else None
    throughput = {r.name: tenth_rates(logs[r.name], options.warmup_steps) for r in runs if r.kind == "main"}
    eviction = [
        {
            "name": r.name,
            "kind": r.kind,
            "zch_size": r.zch_size,
            "steps": by_name[r.name]["steps"],
            "seconds": by_name[r.name]["eviction_seconds"],
            "wall_sec": by_name[r.name]["wall_sec"],
            "share": by_name[r.name]["eviction_seconds"] / by_name[r.name]["wall_sec"],
            "rounds": max(by_name[r.name]["eviction"].get(t, {}).get("eviction_rounds", 0) for t in ("item", "user")),
            "item_occupancy": by_name[r.name]["occupancy"].get("item"),
        }
        for r in runs
        if r.zch_size
    ]
    for e in eviction:
        e["per_round"] = e["seconds"] / e["rounds"] if e["rounds"] else None
    tables = [
        {
            "name": r.name,
            "zch_size": r.zch_size,
            "world_size": r.world_size,
            "rows": r.zch_size or by_name[r.name]["distinct_items"],
            "distinct_items": by_name[r.name]["distinct_items"],
            "bytes": by_name[r.name]["item_table_bytes"],
            "parts": by_name[r.name]["item_table_parts"],
        }
        for r in runs
        if r.kind == "main"
    ]
    growth = {
        r.name: [max(logs[r.name][0]["rss_mib"]), max(logs[r.name][-1]["rss_mib"])]
        for r in runs
        if r.kind == "main" and logs[r.name]
    }
    return {
        "memory": {"peak_mib": peaks, "spread": spread, "epoch_growth_mib": growth},
        "throughput": throughput,
        "eviction": eviction,
        "item_table": tables,
    }


def format_checks(figures: dict) -> str:
    lines = ["checks (figures, not pass/fail tests):"]
    memory = figures["memory"]
    peaks = ", ".join(f"{rows:,} rows: {mib:,.0f} MiB" for rows, mib in sorted(memory["peak_mib"].items()))
    spread = "n/a (one row count)" if memory["spread"] is None else f"{memory['spread']:+.1%} (target <= 10%)"
    lines.append(f"  peak RSS of training vs rows: {peaks}; spread {spread}")
    for name, (first, last) in memory.get("epoch_growth_mib", {}).items():
        lines.append(
            f"  RSS over the epoch {name}: {first:,.0f} MiB at the first log line, {last:,.0f} MiB at the "
            f"last ({last - first:+,.0f})"
        )
    for name, t in figures["throughput"].items():
        text = (
            "too few log lines after warm-up"
            if t is None
            else f"first tenth {t['first_tenth']:,.0f}/s, last tenth {t['last_tenth']:,.0f}/s, "
            f"ratio {t['ratio']:.3f} (target >= 0.9)"
        )
        lines.append(f"  samples/s {name}: {text}")
    for e in figures["eviction"]:
        per_round = "-" if e["per_round"] is None else f"{e['per_round']:.3f} s/round"
        lines.append(
            f"  eviction {e['name']}: {e['seconds']:.2f} s of {e['wall_sec']:.0f} s = {e['share']:.2%} "
            f"(target <= 10% at zch 1M), {e['rounds']} rounds, {per_round}"
        )
    for t in figures["item_table"]:
        parts = ", ".join(f"{k} {v / MIB:,.1f}" for k, v in t["parts"].items() if v)
        lines.append(
            f"  item table {t['name']}: {t['bytes'] / MIB:,.1f} MiB ({parts}) for {t['rows']:,} rows, "
            f"{t['distinct_items']:,} distinct items"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- the report


def _machine() -> str:
    import fbgemm_gpu
    import torch
    import torchrec

    cpu = "unknown CPU"
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    try:
        kib = int(
            next(
                line.split()[1]
                for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal:")
            )
        )
        memory = f"{kib / 2**20:.1f} GiB memory"
    except (OSError, StopIteration):
        memory = "memory unknown"
    return (
        f"{os.cpu_count()} cores ({cpu}), {memory}; Python {platform.python_version()}, torch {torch.__version__}, "
        f"torchrec {torchrec.__version__}, fbgemm-gpu {getattr(fbgemm_gpu, '__version__', '?')}; gloo, no GPU"
    )


def _main_table(runs: list[RunSpec], results: list[dict], figures: dict) -> list[str]:
    names = ", ".join(results[0]["test"]["per_domain"]) if results else ""
    rows = [
        "| model | world | tables | steps | rows seen / train rows | wall s | samples/s | last/first tenth | "
        "peak RSS MiB per rank | eviction s (share) | item table MiB | checkpoint MiB | save s | load s | "
        f"test AUC | AUC {names} |",
        "|" + "---|" * 16,
    ]
    for run, r in zip(runs, results):
        if run.kind != "main":
            continue
        t = figures["throughput"].get(run.name)
        domains = ", ".join(f"{v:.4f}" for v in r["test"]["per_domain"].values())
        tables = f"zch {run.zch_size:,}" if run.zch_size else "full"
        share = f"{r['eviction_seconds']:.2f} ({r['eviction_seconds'] / r['wall_sec']:.2%})" if run.zch_size else "-"
        rows.append(
            f"| {run.model} | {run.world_size} | {tables} | {r['steps']:,} | {r['rows_seen']:,} / "
            f"{r['train_rows']:,} | {r['wall_sec']:.0f} | {r['samples_per_sec']:,.0f} | "
            f"{'-' if t is None else format(t['ratio'], '.3f')} | "
            f"{' / '.join(f'{m:,.0f}' for m in r['peak_rss_mib_train'])} | {share} | "
            f"{r['item_table_bytes'] / MIB:,.1f} | {r['checkpoint']['bytes'] / MIB:,.1f} | "
            f"{r['checkpoint']['save_sec']:.2f} | {r['checkpoint']['load_sec']:.2f} | "
            f"{r['test']['auc']:.4f} | {domains} |"
        )
    return rows


def _curve_table(figures: dict) -> list[str]:
    rows = [
        "| run | zch size | steps | rounds | eviction s | s per round | share of wall time | item occupancy |",
        "|" + "---|" * 8,
    ]
    for e in figures["eviction"]:
        per_round = "-" if e["per_round"] is None else f"{e['per_round']:.3f}"
        occupancy = "-" if e["item_occupancy"] is None else f"{e['item_occupancy']:.3f}"
        rows.append(
            f"| {e['name']} | {e['zch_size']:,} | {e['steps']:,} | {e['rounds']} | {e['seconds']:.2f} | "
            f"{per_round} | {e['share']:.2%} | {occupancy} |"
        )
    return rows


def estimate_full(options: ScaleBenchOptions, runs: list[RunSpec], results: list[dict]) -> tuple[float, list[str]]:
    """Training seconds of the default configuration (``ScaleBenchOptions()``), each of its runs at the mean
    samples/s measured here for its world size and eviction setting (training only: no generation, no test
    evaluation)."""
    rates: dict[tuple[int, bool], list[float]] = {}
    for run, r in zip(runs, results):
        if run.kind == "main":
            rates.setdefault((run.world_size, bool(run.zch_size)), []).append(r["samples_per_sec"])
    default = ScaleBenchOptions()
    total, missing = 0.0, []
    for run in plan_runs(default):
        rate = rates.get((run.world_size, bool(run.zch_size)))
        if not rate:
            missing.append(run.name)
            continue
        rows = run.max_steps * default.batch_size * run.world_size if run.max_steps else int(run.rows * 0.9)
        total += rows / (sum(rate) / len(rate))
    return total, missing


def _generation(options: ScaleBenchOptions, full: ScaleBenchOptions) -> str:
    """The data generation's share of the estimate, from the generation times recorded in ``options.out``."""
    records = [json.loads(p.read_text()) for p in sorted(options.out.glob("data-*.json"))]
    rows, seconds = sum(r["rows"] for r in records), sum(r["seconds"] for r in records)
    if not seconds:
        return "plus the data generation (no generation time is recorded in the run folder)"
    needed = full.rows + sum(full.memory_rows)
    return (
        f"plus about {needed / (rows / seconds) / 3600:.1f} h to generate {needed:,} rows at the "
        f"{rows / seconds:,.0f} rows/s measured here"
    )


def _notes(options: ScaleBenchOptions, logs: dict[str, list[dict]]) -> list[str]:
    """What the tables do not say by themselves."""
    notes = [
        "## Notes",
        "",
        "- Eviction seconds are the managed-collision modules' eviction rounds (torchrec's `_coalesce_history`: "
        "the unique count of one interval's history, the LFU scores, the slot update and re-sort), the slowest "
        "rank's. Not included: the per-step recording of ids and the remapping of ids to slots, and the "
        "re-initialisation of evicted rows that the sharded collection runs at the next lookup.",
        "- Samples/s and the tenth-to-tenth ratio are those of the machine as it was: where other jobs share "
        "the cores their load moves both (the plot shows the windows).",
        "- Resident memory rises in steps during an epoch, with and without eviction (the lines 'RSS over the "
        "epoch' above and the plot); the memory check compares the peaks of whole epochs at two row counts.",
        f"- One `zch_size` ({options.managed_size:,}) serves both managed tables (`sparse.eviction` has one size).",
    ]
    if options.managed_size >= options.users:
        notes[-1] += (
            f" It is at least the {options.users:,} users, so the user table holds every user and evicts "
            f"nobody: only the item table ({options.items:,} ids) is under eviction pressure here."
        )
    history = int(1.25 * options.eviction_interval * options.batch_size * (options.seq_length + 1)) * 8
    full = ScaleBenchOptions()
    default = int(1.25 * full.eviction_interval * full.batch_size * (full.seq_length + 1)) * 8
    notes.append(
        f"- The managed-collision history of the item table takes {history / MIB:,.1f} MiB per rank here "
        f"(1.25 x interval x batch x {options.seq_length + 1} item ids per row x 8 bytes, sized by torchrec "
        f"from the first batch); at the default interval {full.eviction_interval} and batch "
        f"{full.batch_size} it is {default / MIB:,.0f} MiB per rank, as much as a full table of "
        f"{default / 68 / 1e6:.1f}M rows of dim 16 with its row-wise Adagrad state: bounded, but by the "
        f"interval and the batch, not by zch."
    )
    loads = [line["load_avg"] for log in logs.values() for line in log if line.get("load_avg") is not None]
    if loads:
        notes.append(
            f"- Mean 1-minute load average over the log lines: {sum(loads) / len(loads):.1f} on {os.cpu_count()} cores."
        )
    if options.eviction_interval != ScaleBenchOptions().eviction_interval:
        notes.append(
            f"- Eviction ran every {options.eviction_interval} steps, not every "
            f"{ScaleBenchOptions().eviction_interval} (the default): a round costs a unique count over one "
            f"interval's ids plus a re-sort of the zch slots, so the slot part is spread over fewer steps "
            f"here and the shares above over-state those of the default interval."
        )
    return notes + [""]


def _plot(runs: list[RunSpec], logs: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    for run in runs:
        log = logs[run.name]
        if run.kind != "main" or not log:
            continue
        total = max(log[-1]["rows_seen"], 1)
        x = [line["rows_seen"] / total for line in log]
        top.plot(x, [line["samples_per_sec"] for line in log], label=run.name, linewidth=1)
        bottom.plot(x, [max(line["rss_mib"]) for line in log], label=run.name, linewidth=1)
    top.set_ylabel("samples/s (window)")
    bottom.set_ylabel("RSS MiB (largest rank)")
    bottom.set_xlabel("fraction of the epoch (rows seen)")
    top.legend(fontsize=7)
    top.grid(alpha=0.3)
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(
    options: ScaleBenchOptions,
    runs: list[RunSpec],
    results: list[dict],
    logs: dict[str, list[dict]],
    figures: dict,
    command: str,
) -> None:
    """docs/scale.md (``options.doc_path``) and its plot (same name, ``.png``)."""
    assert options.doc_path is not None
    options.doc_path.parent.mkdir(parents=True, exist_ok=True)
    plot = options.doc_path.with_suffix(".png")
    _plot(runs, logs, plot)
    full = ScaleBenchOptions()
    reduced = options.rows < full.rows or options.items < full.items or options.users < full.users
    seconds, missing = estimate_full(options, runs, results)
    lines = [
        "# Scale: one epoch on synthetic data, with and without eviction (`mdr bench scale`)",
        "",
        "Written by `mdr bench scale` (torchrec_mdr/bench/scale.py; checks in scale_report.py).",
        "",
        f"**Command:** `{command}`",
        "",
        f"**Machine:** {_machine()}.",
        "",
        f"**Data:** {options.rows:,} rows (splits 0.9/0.05/0.05), {options.items:,} items, "
        f"{options.users:,} users, "
        f"{options.domains} domains, behaviour sequences of {options.seq_length}; batch {options.batch_size} per "
        f"process, embedding dim {options.embedding_dim}; managed tables item and user at zch "
        f"{options.managed_size:,} (LFU, eviction every {options.eviction_interval} steps).",
        "",
    ]
    if reduced:
        estimate = (
            f"about {seconds / 3600:.1f} h of training at the samples/s measured here"
            + (f" (runs without a measured rate left out: {', '.join(missing)})" if missing else "")
            + f" (every model at the rate of the models measured here), {_generation(options, full)}"
        )
        lines += [
            f"**This is a reduced run.** The issue's configuration ({full.rows:,} rows, {full.items:,} items, "
            f"{full.users:,} users, models {', '.join(full.models)}, world sizes 1 and 2, memory check at "
            f"{full.memory_rows[0]:,} rows, zch curve {', '.join(f'{z:,}' for z in full.zch_curve)}) is "
            f"`mdr bench scale --doc-path docs/scale.md` and is still to be run: {estimate}.",
            "",
        ]
    lines += [
        "## Main runs (one epoch each)",
        "",
        *_main_table(runs, results, figures),
        "",
        "Samples/s: rows of all ranks over the training wall time (the slowest rank's loop; reading parquet "
        "included). Peak RSS: `VmHWM` of each rank after the last training step. Item table: its embedding "
        "rows and row-wise optimizer state, and with eviction its managed-collision slots (raw id, slot, "
        "count per slot) and the history of one eviction interval (1.25 x interval x the batch's item ids "
        "x 8 bytes: bounded by the interval and batch, not by the distinct ids), on all ranks. Checkpoint: "
        "DCP save of model and optimizer, then a load back into the model.",
        "",
        "![samples/s and resident memory over the epoch](" + plot.name + ")",
        "",
        "## Checks",
        "",
        "```",
        format_checks(figures),
        "```",
        "",
        "## Eviction cost against the zch size",
        "",
        *_curve_table(figures),
        "",
        *_notes(options, logs),
    ]
    options.doc_path.write_text("\n".join(lines + kept_tail(options.doc_path)) + "\n")


def kept_tail(path: Path) -> list[str]:
    """The lines of ``path`` from the :data:`KEPT` line on (none if the file or the line is missing)."""
    text = path.read_text() if path.exists() else ""
    at = text.find(KEPT)
    return text[at:].rstrip("\n").split("\n") if at >= 0 else []


def run(options: ScaleBenchOptions, command: str = "mdr bench scale") -> dict:
    """``mdr bench scale``: train the runs not done yet, print the checks, write the report when
    ``doc_path`` is set; returns the checks' figures."""
    runs, results, logs = run_all(options)
    figures = checks(options, runs, results, logs)
    print(format_checks(figures), flush=True)
    if options.doc_path is not None:
        write_report(options, runs, results, logs, figures, command)
        print(f"wrote {options.doc_path}", flush=True)
    return figures
