"""The ``seeds`` suite of `mdr bench proof`: the share of the paired differences' spread the seeds explain,
its permutation test, and the table."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from test_bench_proof import tiny_world

from torchrec_mdr.bench.proof_seeds import seed_cells, write_seed_effect
from torchrec_mdr.bench.proof_setup import PAIRS, dataset_name
from torchrec_mdr.bench.significance import seed_share, shared_seed_p

ALIGNED = np.array([[1.0, 2, 3, 4, 5], [2, 3, 4, 5, 6], [0, 1, 2, 3, 4]])  # each world: the same order of seeds
LATIN = np.array([[1.0, 2, 3], [2, 3, 1], [3, 1, 2]])  # every seed has the same mean over the worlds


def test_seed_share_is_one_when_the_seeds_order_every_world_alike_and_zero_when_they_cancel():
    assert seed_share(ALIGNED) == pytest.approx(1.0)  # world offsets are removed first
    assert seed_share(LATIN) == pytest.approx(0.0)
    # one world reversed: seed means of the centred rows (-2, -1, 0, 1, 2) / 3, sum of squares 10 / 9, total 30
    mixed = np.array([[1.0, 2, 3, 4, 5], [1, 2, 3, 4, 5], [5, 4, 3, 2, 1]])
    assert seed_share(mixed) == pytest.approx(3 * (10 / 9) / 30)


def test_shared_seed_p_is_small_only_for_aligned_seeds():
    (p_aligned, p_latin), combined = shared_seed_p([ALIGNED, LATIN], draws=5000)
    # aligned: only the shuffles that give worlds 2 and 3 the order of world 1 reach a share of 1: 1 / 120^2
    assert p_aligned <= 5 / 5001
    assert p_latin == 1.0  # every shuffle's share is >= 0
    assert 0 < combined < 1
    rng = np.random.default_rng(3)
    null = [rng.normal(size=(3, 5)) for _ in range(8)]
    assert shared_seed_p(null, draws=5000)[1] > 0.05  # no seed effect planted


def test_seed_cells_name_every_comparison_once(tmp_path):
    options = tiny_world(tmp_path, worlds=2, doses=[3.0])
    cells = seed_cells(options)
    keys = [(c[1].label, c[2].label, c[3]) for c in cells]
    assert len(keys) == len(set(keys))
    assert ("ADS", "ADS w/o PCRG", "pcrg × 3") in keys and ("ADIN", "ADIN w/o SE", "none") in keys
    assert ("SFPNet w/o S-DNN", "SFPNet", "all") in keys  # the ablations on all
    # each option against its default and against the model without its mechanism
    assert ("SFPNet, S-DNN gate scale 2", "SFPNet", "all") in keys
    assert ("SFPNet, S-DNN gate scale 2", "SFPNet w/o S-DNN", "all") in keys
    assert ("ADS w/o PCRG, W_shared xavier", "ADS w/o PCRG & PSRG", "psrg × 3") in keys
    assert all(len(c[4]) == 2 for c in cells)  # one dataset per world


def test_seeds_table_finds_a_seed_effect_planted_in_the_differences(tmp_path):
    """PCRG on `none`: seed s moves the pair by 0.001 s in every world (plus a world offset): share 1, p
    tiny; SE on `none`: a Latin square, share 0; PSRG: only 2 seeds, not tabled."""
    options = tiny_world(tmp_path, worlds=3, seeds=3, effects=["none"])
    results = {}
    for world, seed in itertools.product(range(3), range(3)):
        name = dataset_name(options, world, "none")
        for mechanism, delta in (("pcrg", 0.001 * seed + 0.01 * world), ("se", 0.001 * ((seed + world) % 3))):
            with_v, without_v = PAIRS[mechanism]
            results[(with_v.label, name, seed)] = {"auc": 0.7 + delta}
            results[(without_v.label, name, seed)] = {"auc": 0.7}
        if seed < 2:
            results[(PAIRS["psrg"][0].label, name, seed)] = {"auc": 0.7}
            results[(PAIRS["psrg"][1].label, name, seed)] = {"auc": 0.7}
    options.out.mkdir()
    table = write_seed_effect(options, results).read_text()
    rows = {line.split(" | ")[0][2:]: line for line in table.splitlines() if line.startswith("| ")}
    pcrg, se = rows["pcrg"], rows["se"]
    assert pcrg.startswith("| pcrg | none | 3 × 3 | +0.0100, +0.0110, +0.0120 | 1.00 |")
    # a share of 1 needs worlds 2 and 3 shuffled into world 1's order: 1 in 6^2 shuffles
    assert float(pcrg.split(" | ")[-1].rstrip(" |")) == pytest.approx(1 / 36, abs=0.005)
    assert se.startswith("| se | none | 3 × 3 | +0.0010, +0.0010, +0.0010 | 0.00 | 1 |")
    assert "psrg" not in rows  # 2 seeds: too few to table
    combined = next(line for line in table.splitlines() if line.startswith("**All 2 comparisons"))
    assert "mean seed share 0.50 against 0.33 expected" in combined
    assert math.isfinite(float(combined.split("permutation p = ")[1].split(" ")[0]))
