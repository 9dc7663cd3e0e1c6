"""``mdr bench scale`` in its tiny form: the runs, their JSONL logs, results, checks and report."""

from __future__ import annotations

import json
import math

import pytest

from torchrec_mdr.bench.scale import RunSpec, ScaleBenchOptions, plan_runs
from torchrec_mdr.bench.scale_report import KEPT, kept_tail, tenth_rates
from torchrec_mdr.config import ConfigError

ROWS, ITEMS, BATCH, INTERVAL, SEQ = 6000, 600, 128, 5, 5


def _options(tmp_path, **changes) -> ScaleBenchOptions:
    base = dict(
        rows=ROWS,
        items=ITEMS,
        users=100,
        seq_length=SEQ,
        data_root=tmp_path / "data",
        out=tmp_path / "runs",
        models=["din"],
        world_sizes=[1, 2],
        eviction=["zch", "full"],
        eviction_interval=INTERVAL,
        memory_rows=[ROWS],
        zch_curve=[ITEMS // 4],
        curve_steps=0,
        batch_size=BATCH,
        log_every=2,
        warmup_steps=4,
        threads=1,
        doc_path=tmp_path / "docs" / "scale.md",
    )
    return ScaleBenchOptions(**{**base, **changes})


def test_tenth_rates_by_hand():
    """Lines every 10 steps over 100 steps after a warm-up of 10: the first tenth is steps 10-20, the last 90-100."""
    log = [
        {"step": s, "rows_seen": s * 100, "seconds": s / 10 if s <= 50 else 5 + (s - 50) / 5} for s in range(0, 101, 10)
    ]
    rates = tenth_rates(log, warmup_steps=10)
    assert rates["first_steps"] == [10, 20] and rates["last_steps"] == [90, 100]
    assert rates["first_tenth"] == pytest.approx(1000 / 1.0) and rates["last_tenth"] == pytest.approx(1000 / 2.0)
    assert rates["ratio"] == pytest.approx(0.5)
    assert tenth_rates(log[:3], warmup_steps=10) is None  # two lines after the warm-up are not enough


def test_kept_tail(tmp_path):
    doc = tmp_path / "scale.md"
    assert kept_tail(doc) == []  # no report yet
    doc.write_text("# generated\n\nfigures\n")
    assert kept_tail(doc) == []
    doc.write_text(f"# generated\n\n{KEPT}\n\n## MPZCH\n\ntext\n\n")
    assert kept_tail(doc) == [KEPT, "", "## MPZCH", "", "text"]


def test_plan_and_options(tmp_path):
    """Runs of the options (duplicates dropped); the default zch size; bad options fail with ConfigError."""
    options = _options(tmp_path, memory_rows=[ROWS, 3000], zch_curve=[ITEMS // 4, 50], curve_steps=10)
    assert options.managed_size == 150  # a quarter of the items, a multiple of 1 and 2
    assert [r.name for r in plan_runs(options)] == [
        "din-ws1-zch150-rows6000",
        "din-ws1-full-rows6000",
        "din-ws2-zch150-rows6000",
        "din-ws2-full-rows6000",
        "din-ws1-zch150-rows3000",
        "din-ws1-zch150-rows6000-steps10",
        "din-ws1-zch50-rows6000-steps10",
    ]
    assert ScaleBenchOptions(items=1001, world_sizes=[1, 2, 3]).managed_size == 246  # 250 down to a multiple of 6
    with pytest.raises(ConfigError, match="multiple of every world size"):
        _options(tmp_path, zch_size=151).validate()
    with pytest.raises(ConfigError, match="unknown"):
        _options(tmp_path, models=["nope"]).validate()


def _check_run(run: RunSpec, result: dict, log: list[dict], options: ScaleBenchOptions) -> None:
    """A finished run's result and log agree with each other and with the dataset."""
    train_rows = round(run.rows * 0.9)
    per_rank = [train_rows // run.world_size + (r < train_rows % run.world_size) for r in range(run.world_size)]
    steps = min(math.ceil(n / BATCH) for n in per_rank)  # every rank runs the smallest rank's batch count
    if run.max_steps:
        steps = min(steps, run.max_steps)
    assert result["train_rows"] == train_rows and result["steps"] == steps
    if run.max_steps:
        assert result["rows_seen"] == steps * BATCH * run.world_size  # full batches only
    elif run.world_size == 1:
        assert result["rows_seen"] == train_rows  # one epoch: every train row once
    else:
        assert train_rows - BATCH * run.world_size <= result["rows_seen"] <= train_rows
    # the log: a line every log_every steps and at the last step, counts growing, one memory figure per rank
    assert [line["step"] for line in log] == [*range(options.log_every, steps, options.log_every), steps]
    assert log[-1]["rows_seen"] == result["rows_seen"] and log[-1]["seconds"] == pytest.approx(result["wall_sec"])
    assert all(b["rows_seen"] > a["rows_seen"] and b["seconds"] > a["seconds"] for a, b in zip(log, log[1:]))
    for line in log:
        assert len(line["rss_mib"]) == run.world_size and all(
            0 < r <= p for r, p in zip(line["rss_mib"], line["peak_rss_mib"])
        )
        assert line["samples_per_sec"] > 0 and math.isfinite(line["loss"]) and line["load_avg"] >= 0
    assert result["samples_per_sec"] == pytest.approx(result["rows_seen"] / result["wall_sec"])
    assert len(result["peak_rss_mib_train"]) == run.world_size
    assert all(a <= b for a, b in zip(result["peak_rss_mib_train"], result["peak_rss_mib"]))
    # the item table: 16 floats and one row-wise Adagrad float per row; managed: zch rows, slots and history
    parts = result["item_table_parts"]
    assert parts["rows"] == (run.zch_size or ITEMS) * (16 + 1) * 4
    if run.zch_size:
        # torchrec sizes the history from the first batch: 1.25 x interval x its item ids (candidate + sequence)
        assert parts["history"] == run.world_size * int(1.25 * INTERVAL * BATCH * (SEQ + 1)) * 8
        # three int64 per slot (raw id, row, count) and a few small fixed buffers per shard
        assert 24 * run.zch_size <= parts["slots"] <= 24 * run.zch_size + 10_000 * run.world_size
        for table in ("item", "user"):
            stats = result["eviction"][table]
            assert stats["eviction_rounds"] == steps // INTERVAL  # the shards evict on the same steps
            assert 0 < stats["ids_held"] <= run.zch_size - run.world_size  # one unknown-id row per shard
            assert result["occupancy"][table] == pytest.approx(stats["ids_held"] / run.zch_size)
            assert all(line["occupancy"][table] <= 1 for line in log)
        assert 0 < result["eviction_seconds"] < result["wall_sec"]
        assert log[-1]["eviction_seconds"] == result["eviction_seconds"]
    else:
        assert parts["slots"] == parts["history"] == 0 and result["occupancy"] == {} and result["eviction_seconds"] == 0
    checkpoint = result["checkpoint"]
    assert checkpoint["bytes"] > parts["rows"] and checkpoint["save_sec"] > 0 and checkpoint["load_sec"] > 0
    assert 0 < result["test"]["auc"] < 1 and len(result["test"]["per_domain"]) == 3


def test_scale_bench_tiny(tmp_path, capsys):
    """The tiny form end to end: four main runs (world sizes 1 and 2, zch and full), then, in a second call over
    the same folder, the memory and curve runs only (the finished runs are read back, not trained again)."""
    from torchrec_mdr.bench.scale import read_log
    from torchrec_mdr.bench.scale_report import run

    options = _options(tmp_path)
    figures = run(options, command="mdr bench scale --tiny")
    runs = plan_runs(options)
    assert len(runs) == 4
    results = {r.name: json.loads((options.out / r.name / "result.json").read_text()) for r in runs}
    for r in runs:
        _check_run(r, results[r.name], read_log(options, r), options)
    assert figures["memory"]["spread"] is None and set(figures["throughput"]) == set(results)
    assert all(t is not None and t["ratio"] > 0 for t in figures["throughput"].values())
    assert [e["zch_size"] for e in figures["eviction"]] == [150, 150]
    full = {t["world_size"]: t for t in figures["item_table"] if not t["zch_size"]}
    assert full[1]["bytes"] == full[2]["bytes"] == ITEMS * 68  # a full table is the same on one or two ranks
    printed = capsys.readouterr().out
    assert "peak RSS of training vs rows" in printed and "eviction din-ws1-zch150-rows6000" in printed

    hand = [KEPT, "", "## Hand-written", "", "kept across rewrites"]
    options.doc_path.write_text(options.doc_path.read_text() + "\n".join(hand) + "\n")
    mtimes = {name: (options.out / name / "result.json").stat().st_mtime for name in results}
    more = _options(tmp_path, memory_rows=[3000], zch_curve=[50], curve_steps=10)
    figures = run(more, command="mdr bench scale --tiny")
    assert "done earlier" in capsys.readouterr().out
    assert all((options.out / name / "result.json").stat().st_mtime == t for name, t in mtimes.items())
    for r in plan_runs(more)[4:]:
        _check_run(r, json.loads((more.out / r.name / "result.json").read_text()), read_log(more, r), more)
    assert set(figures["memory"]["peak_mib"]) == {3000, ROWS} and figures["memory"]["spread"] >= 0
    curve = {e["name"]: e for e in figures["eviction"]}
    assert curve["din-ws1-zch50-rows6000-steps10"]["rounds"] == 2
    report = more.doc_path.read_text()
    assert "`mdr bench scale --tiny`" in report and "This is a reduced run" in report
    assert report.endswith("\n".join(hand) + "\n") and report.count(KEPT) == 1
    assert report.index("## Notes") < report.index(KEPT)  # the generated part first, then the kept one
    assert "| din | 2 | zch 150 |" in report and "| din | 1 | full |" in report
    history = int(1.25 * INTERVAL * BATCH * (SEQ + 1)) * 8 / 2**20  # per rank, as measured in _check_run
    assert f"item table takes {history:,.1f} MiB per rank here" in report and "Mean 1-minute load average" in report
    assert more.doc_path.with_suffix(".png").stat().st_size > 0
