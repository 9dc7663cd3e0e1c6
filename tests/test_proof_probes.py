"""The probes of ``mdr bench proof --suites probes``: their statistics against hand computations and the
generator, and a tiny end-to-end run on trained ADS models."""

from __future__ import annotations

import json

import numpy as np
import pytest

from data_prep.planted_v2 import WorldV2, _sequence_term, draw_rows, relevance
from data_prep.synthetic_world import Options
from torchrec_mdr.bench.proof import ProofBenchOptions, dataset, run
from torchrec_mdr.bench.proof_probes import paired_vs_none, spearman, summary, true_weights, world_of


def test_spearman_by_hand():
    assert spearman(np.array([1.0, 2.0, 3.0, 4.0]), np.array([10.0, 20.0, 30.0, 40.0])) == pytest.approx(1.0)
    assert spearman(np.array([1.0, 2.0, 3.0]), np.array([3.0, 1.0, 2.0])) == pytest.approx(-0.5)
    # ties get their average rank: x ranks (0.5, 0.5, 2), y ranks (0, 1, 2) -> Pearson of those
    assert spearman(np.array([1.0, 1.0, 5.0]), np.array([1.0, 2.0, 3.0])) == pytest.approx(np.sqrt(3) / 2)


def test_paired_vs_none_by_hand():
    # deltas +0.2, +0.1, -0.05: mean 0.0833, 2 wins of 3; of the 8 sign flips, |sum| >= 0.25 for
    # (+,+,-), (+,+,+) and their negatives -> two-sided p = 4/8
    assert paired_vs_none([(0.5, 0.3), (0.4, 0.3), (0.2, 0.25)], "F") == "F +0.083 (2/3, p = 0.5)"
    assert paired_vs_none([], "rsa") == "rsa —"


def test_true_weights_are_the_generators_behaviour_weights(tmp_path):
    """sum_t omega_t <M v_t, Q v_c> with the probe's omega equals the generator's sequence term."""
    world = WorldV2(
        Options(
            out=tmp_path,
            rows=100,
            users=30,
            items=60,
            categories=6,
            seq_length=8,
            min_seq_length=0,
            version=2,
            sfpnet_effect=1.5,
            seed=4,
        )
    )
    rng = np.random.default_rng(0)
    users = rng.integers(0, 30, 200)
    domains = rng.integers(0, world.o.domains, 200)
    draw = draw_rows(world, rng, users, domains)
    s = world.strength
    rel = relevance(world, draw, s["psrg"], s["pcrg"])
    rows = [draw["behaviour_domains"][r, :n] for r, n in enumerate(draw["lengths"])]
    omega = true_weights(world, domains, rows, affinity=True)
    ours = np.array([(w * rel[r, : len(w)]).sum() for r, w in enumerate(omega)])
    torch_free = _sequence_term(world, draw, s["psrg"], s["pcrg"], s["sfpnet"])
    np.testing.assert_allclose(ours, torch_free, rtol=1e-5, atol=1e-6)
    flat = true_weights(world, domains, rows, affinity=False)  # recency only: the affinity is ignored
    other = [draw["behaviour_domains"][r, :n][::-1] for r, n in enumerate(draw["lengths"])]
    for a, b in zip(flat, true_weights(world, domains, other, affinity=False)):
        np.testing.assert_allclose(a, b)


def test_tiny_probes_read_trained_runs_and_cache(tmp_path, capsys):
    options = ProofBenchOptions(
        out=tmp_path / "out",
        work=tmp_path / "work",
        worlds=1,
        seeds=1,
        rows=3000,
        users=60,
        items=200,
        seq_length=6,
        max_epochs=1,
        patience=1,
        batch_size=256,
        effects=["none", "psrg"],
        mechanisms=["psrg", "pcrg"],
        suites=["specificity", "dose"],
        matrix="diagonal",
        doses=[3.0],
    )
    run(options)
    assert world_of(dataset(options, 0, "psrg")).strength["psrg"] == 1.0
    written = run(ProofBenchOptions(**{**vars(options), "suites": ["probes"]}))
    cache = json.loads((options.out / "probes.json").read_text())
    psrg = {k: v for k, v in cache.items() if k.startswith("psrg/")}
    assert len(psrg) == 6  # none, psrg and psrg at dose 3 (the dose suite's runs), trained and init
    assert f"psrg/{dataset(options, 0, 'psrg', 3.0).name}/0" in psrg
    for value in psrg.values():
        assert 10 <= value["groups"] <= 15 and -1 <= value["rsa"] <= 1 and value["spread"] >= 0  # of 3 x 5 (d, a)
    for key, value in cache.items():
        if key.startswith("pcrg/"):
            assert 0 <= value["distinct"] <= 1 and value["F"] >= 0
        if key.startswith("attention/"):
            assert -1 <= value["corr_full"] <= 1 and value["rows"] > 0
    table = written["probes"].read_text()
    trained = cache[f"psrg/{dataset(options, 0, 'psrg').name}/0"]
    assert f"| psrg | {summary([trained['rsa']])} | " in table
    dosed = cache[f"pcrg/{dataset(options, 0, 'pcrg', 3.0).name}/0"]
    assert f"| pcrg ×3 | {summary([dosed['F']])} | " in table
    assert "| pcrg |" not in table  # pcrg at dose 1 was not trained: no row
    none = cache[f"pcrg/{dataset(options, 0, 'none').name}/0"]
    assert f"- pcrg ×3 − none: {paired_vs_none([(dosed['F'], none['F'])], 'F')}; " in table
    assert "--rows 3000" in table and "--doses 3" in table  # the command names the regime it probed
    capsys.readouterr()
    run(ProofBenchOptions(**{**vars(options), "suites": ["probes"]}))
    assert "probe " not in capsys.readouterr().out  # cached: nothing recomputed
