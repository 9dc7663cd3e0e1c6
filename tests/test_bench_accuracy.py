"""`mdr bench accuracy`: the verdict arithmetic, and a tiny end-to-end run of every suite but MovieLens."""

from __future__ import annotations

import json

import pytest

from torchrec_mdr.bench.accuracy import ABLATIONS, COMPARISONS, AccuracyBenchOptions, Variant, run
from torchrec_mdr.bench.accuracy_report import compare, verdicts
from torchrec_mdr.config import ConfigError
from torchrec_mdr.models.registry import MODELS


def metrics(auc: float, domain_aucs: tuple[float, float]) -> dict:
    return {"auc": auc, "per_domain": {"a": {"auc": domain_aucs[0]}, "b": {"auc": domain_aucs[1]}}}


def test_compare_pairs_seeds_and_computes_auc_improvement():
    model = [metrics(0.70, (0.7, 0.6)), metrics(0.72, (0.7, 0.6)), metrics(0.68, (0.7, 0.6))]
    base = [metrics(0.65, (0.6, 0.7)), metrics(0.73, (0.6, 0.7)), metrics(0.66, (0.6, 0.7))]
    result = compare(model, base)
    assert result["delta"] == pytest.approx((0.05 - 0.01 + 0.02) / 3)
    assert result["wins"] == 2 and result["seeds"] == 3
    assert result["imp"] == pytest.approx(((0.70 - 0.5) / (0.68 - 0.5) - 1) * 100)
    assert compare(model, base, "b")["delta"] == pytest.approx(-0.1)


def test_verdicts_follow_the_numbers():
    variants = [Variant("Base", "dnn"), Variant("Model", "din", base="Base")]
    better = {
        "Base": [metrics(0.60, (0.6, 0.6))] * 3,
        "Model": [metrics(0.62, (0.7, 0.5)), metrics(0.63, (0.7, 0.5)), metrics(0.59, (0.7, 0.5))],
    }
    (line,) = verdicts("planted", variants, better, ["a", "b"])
    assert "better in 2/3 seeds and in 1/2 domains" in line and line.endswith("**holds**.")
    worse = {"Base": better["Base"], "Model": [metrics(0.58, (0.6, 0.6))] * 3}
    assert verdicts("planted", variants, worse, ["a", "b"])[0].endswith("**does NOT hold**.")
    noisy = {
        "Base": [metrics(0.60, (0.6, 0.6))] * 3,
        "Model": [metrics(0.61, (0.6, 0.6)), metrics(0.59, (0.6, 0.6)), metrics(0.605, (0.6, 0.6))],
    }
    assert verdicts("no_shift", variants, noisy, ["a", "b"])[0].endswith("**within the seed noise**.")
    shifted = {
        "Base": noisy["Base"],
        "Model": [metrics(0.65, (0.6, 0.6)), metrics(0.651, (0.6, 0.6)), metrics(0.652, (0.6, 0.6))],
    }
    assert verdicts("no_shift", variants, shifted, ["a", "b"])[0].endswith("**NOT within the seed noise**.")


def test_every_benchmarked_model_is_registered():
    assert {v.model for v in COMPARISONS + ABLATIONS} <= set(MODELS)


def test_unknown_suite_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="--suites: unknown"):
        run(AccuracyBenchOptions(out=tmp_path, suites=["planted", "everything"]))


def test_tiny_benchmark_writes_consistent_tables(tmp_path):
    """CI's tiny form: every synthetic suite on 3,000 rows, 2 seeds, 4 steps per run."""
    options = AccuracyBenchOptions(
        out=tmp_path / "out",
        work=tmp_path / "work",
        seeds=2,
        suites=["planted", "no_shift", "ablation", "chunk_cost"],
        models=["din", "ads-din", "dnn", "sfpnet", "sfpnet-w-o-stb", "sharedbottom", "adin", "ads-w-o-pcrg"],
        rows=3000,
        users=200,
        items=500,
        seq_length=8,
        max_steps=4,
        batch_size=128,
    )
    written = run(options)
    assert set(written) == {"planted", "no_shift", "ablation", "chunk_cost", "plot"}
    planted = written["planted"].read_text()
    raw = json.loads((options.out / "planted.json").read_text())
    for label in ("DIN", "ADS (DIN)", "DNN", "SFPNet", "SharedBottom", "ADIN"):
        aucs = [run["auc"] for run in raw[label]]
        assert len(aucs) == 2
        mean = sum(aucs) / 2
        assert f"| {label} | {mean:.4f} ± " in planted
    assert "Oracle (true logit)" in planted and planted.count("vs DIN: Δ AUC") == 1
    # planted and ablation share their dataset, so ADS (DIN) and SFPNet were trained once
    runs = [p.parent.name for p in (options.work / "runs" / "synthetic-shift1-rows3000").rglob("metrics.json")]
    assert runs.count("ads-din-seed0") == 1
    chunk = written["chunk_cost"].read_text()
    params = [
        int(line.split("|")[3].replace(",", "")) for line in chunk.splitlines() if line.startswith("| ADS (DIN) chunk")
    ]
    assert len(params) == 4 and params == sorted(params, reverse=True)  # fewer chunks, fewer parameters
    assert written["plot"].stat().st_size > 10_000
