"""``mdr bench threads`` (torchrec_mdr/bench/threads.py): the thread count switches between windows, the
table's structure, and speedups / shares computed from the reported medians."""

from __future__ import annotations

import math
import os
import time

import pytest
import torch

from torchrec_mdr.bench.threads import (
    READER_PARTS,
    STEP_PARTS,
    Row,
    ThreadsBenchOptions,
    format_markdown,
    other_thread_share,
    run,
    table,
    thread_cpu_seconds,
)


def _matmul_share(threads: int) -> float:
    """The CPU share of threads other than this one while 1024 x 1024 matmuls run at ``threads``."""
    torch.set_num_threads(threads)
    assert torch.get_num_threads() == threads
    x = torch.randn(1024, 1024)
    x @ x  # the pool starts (or shrinks) here
    time.sleep(0.2)  # idle pool threads stop spinning
    before = thread_cpu_seconds()
    for _ in range(12):
        x @ x
    return other_thread_share(before, thread_cpu_seconds())


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="per-thread CPU clocks come from /proc")
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_set_num_threads_takes_effect_between_windows():
    """A timing check would fail on a busy shared machine; the CPU time of each thread does not: at 2
    threads the second thread computes about half of the matmuls, at 1 thread none (switched both ways)."""
    saved = torch.get_num_threads()
    try:
        shares = {(index, threads): _matmul_share(threads) for index, threads in enumerate([2, 1, 2, 1])}
    finally:
        torch.set_num_threads(saved)
    for (_, threads), share in shares.items():
        if threads == 2:
            assert 0.25 < share < 0.75, shares
        else:
            assert share < 0.1, shares


def _row(part: str, model: str, ms1: list[float], ms2: list[float]) -> Row:
    return Row(part, model, 8, {1: ms1, 2: ms2}, {1: [0.0] * 3, 2: [0.4, float("nan"), 0.5]}, {1: [1] * 3, 2: [2] * 3})


def test_speedup_is_the_ratio_of_the_medians_and_shares_are_of_the_full_step():
    options = ThreadsBenchOptions(models=["dnn"], batch_sizes=[8], repeats=3)
    # per-round ratios 1/2 = 2.0, 10/5 = 2.0, 3/30 = 0.1: their median would be 2.0; the medians' ratio is 3/5
    rows = [
        _row("lookups", "dnn", [1.0, 10.0, 3.0], [2.0, 5.0, 30.0]),
        _row("full step", "dnn", [4.0, 12.0, 6.0], [8.0, 10.0, 40.0]),
    ]
    header, body = table(rows, options)
    assert header == ["part", "model", "batch", "ms@1", "ms@2", "speedup@2", "share@1", "share@2", "other threads@2"]
    lookups, full = body  # the step's parts in STEP_PARTS order
    assert lookups == ["lookups", "dnn", "8", "3.000", "5.000", "0.600", "50.0%", "50.0%", "45.0%"]
    assert full[3:8] == ["6.000", "10.000", "0.600", "100.0%", "100.0%"]
    markdown = format_markdown(rows, options, "passive").splitlines()
    assert markdown[0].endswith("OMP_WAIT_POLICY passive") and markdown[1] == ""
    assert markdown[2] == "| " + " | ".join(header) + " |"
    assert markdown[4] == "| " + " | ".join(lookups) + " |"


def test_bad_options_are_one_line_errors(capsys):
    from torchrec_mdr.cli import main

    assert main(["bench", "threads", "--threads", "2", "2"]) == 2
    assert "'threads': give at least two different thread counts" in capsys.readouterr().err
    assert main(["bench", "threads", "--models", "nonexistent"]) == 2
    assert "'models': unknown ['nonexistent']" in capsys.readouterr().err


def _number(cell: str) -> float:
    return float(cell.rstrip("%"))


def test_bench_threads_tiny(tmp_path, capsys, monkeypatch):
    """One model, one batch size, two rounds of one-step windows: every part at both counts, with the thread
    count in force inside every window, and the printed numbers consistent with each other."""
    options = ThreadsBenchOptions(
        data=tmp_path / "bench",
        rows=1000,
        seq_length=4,
        models=["dnn"],
        batch_sizes=[16],
        embedding_dim=4,
        warmup=1,
        steps=1,
        repeats=2,
        batches_in_memory=2,
        reader_batches=2,
        out=tmp_path / "threads.md",
        omp_wait_policy="passive",
    )
    monkeypatch.setenv("OMP_WAIT_POLICY", "active")
    rows = run(options)
    assert os.environ["OMP_WAIT_POLICY"] == "active"  # set for the measuring process only
    assert [(r.part, r.model, r.batch_size) for r in rows] == [(p, "dnn", 16) for p in STEP_PARTS] + [
        (p, "-", 16) for p in READER_PARTS
    ]
    for row in rows:
        assert row.threads_seen == {1: [1, 1], 2: [2, 2]}  # torch.set_num_threads took effect in every window
        assert all(math.isfinite(ms) and ms > 0 for n in (1, 2) for ms in row.window_ms[n]), row
    lines = capsys.readouterr().out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("part"))
    assert lines[start - 1].endswith("OMP_WAIT_POLICY passive")  # as the measuring process saw it
    printed = lines[start + 1 : start + 6]
    assert [line[:18].strip() for line in printed] == list(STEP_PARTS + READER_PARTS)
    by_part = {row.part: row for row in rows}
    for line in printed:
        cells = line[18:].split()
        ms1, ms2, speedup = (float(c) for c in cells[2:5])
        row = by_part[line[:18].strip()]
        assert (ms1, ms2) == (round(row.ms(1), 3), round(row.ms(2), 3))
        assert speedup == pytest.approx(row.ms(1) / row.ms(2), abs=5e-4)
        if row.part == "full step":
            assert cells[5:7] == ["100.0%", "100.0%"]
        elif row.part in STEP_PARTS:
            share = _number(cells[5]) / 100
            assert share == pytest.approx(row.ms(1) / by_part["full step"].ms(1), abs=5e-4)
        else:
            assert cells[5:7] == ["-", "-"]
    assert any(line.startswith("reading batch 16 in line adds to the full step at 1 thread(s): dnn ") for line in lines)
    markdown = options.out.read_text().splitlines()
    assert markdown[2].startswith("| part | model | batch | ms@1 | ms@2 | speedup@2 |")
    assert len([line for line in markdown if line.startswith("| ")]) == 1 + len(rows)
