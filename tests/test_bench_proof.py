"""`mdr bench proof`: the exact tests, the verdict rules, and CI's tiny end-to-end run."""

from __future__ import annotations

import ast
import itertools
import json
import math
import shutil
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from torchrec_mdr.bench.proof import (
    ABLATIONS,
    MODELS,
    OPTIONS,
    PAIRS,
    ProofBenchOptions,
    archived,
    chosen_ablations,
    dataset_name,
    model_slugs,
    movielens_models,
    planned_jobs,
    pooled_jobs,
    run,
    run_dir,
)
from torchrec_mdr.bench.proof_stats import chance_note, paired, verdict
from torchrec_mdr.bench.significance import mann_whitney_p, sign_flip_p
from torchrec_mdr.config import ConfigError, from_dict
from torchrec_mdr.data.spec import DatasetSpec
from torchrec_mdr.models.registry import MODELS as REGISTRY


def tiny_options(tmp_path: Path, **settings: object) -> ProofBenchOptions:
    """The tests' benchmark: one world, one seed, folders under ``tmp_path`` (``settings`` override)."""
    return ProofBenchOptions(
        **{"out": tmp_path / "out", "work": tmp_path / "work", "worlds": 1, "seeds": 1, **settings}
    )


def tiny_world(tmp_path: Path, **settings: object) -> ProofBenchOptions:
    """:func:`tiny_options` on a world of 1,000 rows, 50 users, 200 items and sequences of 4 (the tables'
    tests: datasets are named, rarely generated)."""
    return tiny_options(tmp_path, **{"rows": 1000, "users": 50, "items": 200, "seq_length": 4, **settings})


def brute_force_mann_whitney(a: list[float], b: list[float]) -> float:
    """Two-sided p from every split of the pooled values into groups of len(a) and len(b)."""
    pooled = a + b
    ranks = np.argsort(np.argsort(pooled)) + 1.0
    observed = abs(ranks[: len(a)].sum() - len(a) * (len(pooled) + 1) / 2)
    sums = [
        abs(ranks[list(c)].sum() - len(a) * (len(pooled) + 1) / 2)
        for c in itertools.combinations(range(len(pooled)), len(a))
    ]
    return float(np.mean([s >= observed - 1e-9 for s in sums]))


def test_sign_flip_p_is_exact():
    assert sign_flip_p([0.01] * 5) == pytest.approx(2 / 32)  # all 5 positive: the two extreme signings
    assert sign_flip_p([0.01] * 6) == pytest.approx(2 / 64)
    assert sign_flip_p([0.01, -0.01, 0.02, 0.0, 0.005]) == pytest.approx(
        np.mean(
            [
                abs(np.dot(s, [0.01, -0.01, 0.02, 0.0, 0.005])) >= 0.025 - 1e-12
                for s in itertools.product((-1, 1), repeat=5)
            ]
        )
    )
    assert math.isnan(sign_flip_p([]))


def test_mann_whitney_p_matches_enumeration():
    rng = np.random.default_rng(0)
    for m, n in ((5, 5), (3, 4), (6, 5)):
        a, b = rng.normal(0.6, 0.02, m).tolist(), rng.normal(0.61, 0.02, n).tolist()
        assert mann_whitney_p(a, b) == pytest.approx(brute_force_mann_whitney(a, b))
    assert mann_whitney_p([1, 2, 3, 4, 5], [6, 7, 8, 9, 10]) == pytest.approx(2 / 252)
    assert mann_whitney_p([1, 3, 5], [2, 4, 6]) == pytest.approx(0.7)


def test_paired_differences_and_verdicts():
    results = {("A", f"d{w}", s): {"auc": 0.70 + 0.01 * s} for w in range(3) for s in range(6)}
    results |= {("B", f"d{w}", s): {"auc": 0.69 + 0.01 * s} for w in range(3) for s in range(6)}
    c = paired(results, "A", "B", ["d0", "d1", "d2"], 6)
    assert c["n"] == 18 and c["wins"] == 18 and c["delta"] == pytest.approx(0.01)
    assert c["seeds"] == 6 and c["seed_wins"] == 6 and c["p"] == pytest.approx(2 / 64)  # tested over the seeds
    assert c["p_pairs"] == pytest.approx(2 / 2**18)
    assert verdict(c) == "wins"
    assert verdict(paired(results, "B", "A", ["d0", "d1", "d2"], 6)) == "loses"
    # 15 pairs of one sign, but 5 seeds: the best p is 2/32
    five = paired(results, "A", "B", ["d0", "d1", "d2"], 5)
    assert five["n"] == 15 and five["p"] == pytest.approx(2 / 32)
    assert verdict(five) == "too few seeds for p < 0.05"
    assert verdict(paired(results, "A", "B", ["d0"], 4)) == "too few seeds for p < 0.05"
    noisy = {("A", "d0", s): {"auc": 0.70 + (0.01 if s % 2 else -0.01)} for s in range(6)}
    noisy |= {("B", "d0", s): {"auc": 0.70} for s in range(6)}
    assert verdict(paired(noisy, "A", "B", ["d0"], 6)) == "ties"


def test_pairs_that_share_a_seed_are_tested_as_one_unit():
    """Seed 5 loses in all 3 worlds, seeds 0-4 win in all: over the 18 pairs the sign-flip p would be
    2 (C(18,15) + C(18,16) + C(18,17) + 1) / 2^18 = 0.0075, but the 6 seed means give 2 (6 + 1) / 64."""
    results = {("B", f"d{w}", s): {"auc": 0.70} for w in range(3) for s in range(6)}
    results |= {("A", f"d{w}", s): {"auc": 0.70 + (0.01 if s < 5 else -0.01)} for w in range(3) for s in range(6)}
    c = paired(results, "A", "B", ["d0", "d1", "d2"], 6)
    assert (c["wins"], c["seed_wins"]) == (15, 5)
    assert c["p_pairs"] == pytest.approx(2 * (816 + 153 + 18 + 1) / 2**18)
    assert c["p"] == pytest.approx(14 / 64) and verdict(c) == "ties"


def test_chance_note_counts_the_verdicts_chance_would_give():
    results = {("B", "d0", s): {"auc": 0.70} for s in range(6)}
    results |= {("A", "d0", s): {"auc": 0.71} for s in range(6)}  # a win: 6/6 seeds, p = 2/64
    results |= {("C", "d0", s): {"auc": 0.70 + (0.01 if s % 2 else -0.01)} for s in range(6)}  # a tie
    win, tie = paired(results, "A", "B", ["d0"], 6), paired(results, "C", "B", ["d0"], 6)
    few = paired(results, "A", "B", ["d0"], 5)  # no verdict: not counted
    note = chance_note([win] + [tie] * 9 + [few])
    # 1 of 10 cells; P(at least 1 of Binomial(10, 0.05)) = 1 - 0.95^10 = 0.4013
    assert note.startswith("**Chance:** p < 0.05 in 1 of the 10 comparisons with a verdict;")
    assert "at most 0.5 are expected, and 1 or more come with probability at most 0.4 " in note
    assert chance_note([tie] * 9).endswith(
        "in 0 of the 9 comparisons with a verdict; with no real difference in any of them at most 0.45 are expected."
    )
    assert chance_note([few]) == "No comparison has the 6 seeds a verdict needs."


def test_every_benchmarked_model_is_registered_and_pairs_differ_by_one_switch():
    assert {v.model for v in ABLATIONS + MODELS} <= set(REGISTRY)
    for mechanism, (with_v, without_v) in PAIRS.items():
        assert with_v.model == without_v.model
        assert len(set(without_v.overrides) - set(with_v.overrides)) == 1, mechanism


def test_unknown_effect_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="--effects: unknown"):
        run(ProofBenchOptions(out=tmp_path, effects=["none", "everything"]))


def test_tiny_proof_writes_consistent_tables_and_resumes(tmp_path, capsys):
    """CI's tiny form: one world, two seeds, 2,000 rows, at most 2 epochs, two planted datasets."""
    options = ProofBenchOptions(
        out=tmp_path / "out",
        work=tmp_path / "work",
        worlds=1,
        seeds=2,
        rows=2000,
        users=100,
        items=300,
        seq_length=6,
        max_epochs=2,
        patience=1,
        batch_size=256,
        effects=["none", "pcrg"],
        mechanisms=["pcrg"],
        suites=["specificity"],
    )
    written = run(options)
    assert set(written) == {"ceilings", "specificity"}
    raw = json.loads((options.out / "specificity.json").read_text())
    cell = raw["pcrg"]["pcrg"]
    data = options.work / dataset_name(options, 0, "pcrg")
    runs = {
        (v.label, seed): json.loads((run_dir(options, v, data, seed) / "metrics.json").read_text())
        for v in PAIRS["pcrg"]
        for seed in range(2)
    }
    deltas = [runs[("ADS", s)]["auc"] - runs[("ADS w/o PCRG", s)]["auc"] for s in range(2)]
    assert cell["n"] == 2 and cell["delta"] == pytest.approx(sum(deltas) / 2)
    for metrics in runs.values():  # early stopping ran: one evaluation per epoch, at most 2
        assert 1 <= len(metrics["history"]) <= 2
    table = written["specificity"].read_text()
    assert f"{cell['delta']:+.4f}" in table and "too few seeds" in table
    ceilings = written["ceilings"].read_text()
    assert dataset_name(options, 0, "none") in ceilings and dataset_name(options, 0, "pcrg") in ceilings
    capsys.readouterr()
    run(options)  # a finished benchmark re-renders without training
    assert "to train" not in capsys.readouterr().out
    shutil.rmtree(options.work / "runs")  # a fresh machine: the archived metrics beside the tables suffice
    assert run(options)["specificity"].read_text() == table
    assert "to train" not in capsys.readouterr().out


def test_an_interrupted_run_resumes_from_its_checkpoint_to_the_same_result(tmp_path, capfd):
    options = tiny_options(
        tmp_path,
        rows=2000,
        users=100,
        items=300,
        seq_length=6,
        max_epochs=2,
        patience=2,
        batch_size=256,
        effects=["pcrg"],
        mechanisms=["pcrg"],
        suites=["specificity"],
    )
    run(options)
    ads = PAIRS["pcrg"][0]
    data = options.work / dataset_name(options, 0, "pcrg")
    folder, archive = run_dir(options, ads, data, 0), archived(options, ads, data, 0)
    finished = json.loads(archive.read_text())
    # the state a kill leaves after the first epoch's checkpoint: no metrics, no later checkpoint
    checkpoints = sorted((folder / "checkpoints").glob("step-*"))
    assert len(checkpoints) == 2
    shutil.rmtree(checkpoints[-1])
    (folder / "checkpoints" / "latest").write_text(checkpoints[0].name)
    (folder / "metrics.json").unlink()
    archive.unlink()
    capfd.readouterr()
    run(options)
    assert f"resuming from {checkpoints[0]}" in capfd.readouterr().out
    resumed = json.loads(archive.read_text())
    assert resumed["auc"] == finished["auc"] and resumed["history"] == finished["history"]


def test_diagonal_matrix_plans_own_none_and_all(tmp_path):
    options = ProofBenchOptions(
        out=tmp_path / "out",
        work=tmp_path / "work",
        worlds=2,
        seeds=2,
        rows=1000,
        users=50,
        items=200,
        seq_length=4,
        suites=["specificity"],
        matrix="diagonal",
    )
    jobs = planned_jobs(options)
    cells = {(v.label, d.name) for v, d, _ in jobs}
    name = partial(dataset_name, options)
    assert ("ADS", name(0, "pcrg")) in cells and ("ADS", name(0, "sfpnet")) not in cells
    assert ("SFPNet", name(1, "none")) in cells and ("SFPNet", name(1, "all")) in cells
    assert [s for _, _, s in jobs] == sorted(s for _, _, s in jobs)  # seed by seed over the worlds
    full = planned_jobs(ProofBenchOptions(**{**vars(options), "matrix": "full"}))
    assert len(full) == 2 * 2 * 7 * 10 and len(jobs) == 2 * 2 * 3 * 10


def test_one_world_seeds_train_in_one_world_and_the_tables_pool_every_archived_run(tmp_path):
    options = tiny_world(tmp_path, worlds=3, seeds=5, suites=["specificity"], effects=["none"], mechanisms=["dsbn"])
    one_world = replace(options, one_world_from=2)
    grid = {(d.name, s) for _, d, s in planned_jobs(one_world, generate=False)}
    name = partial(dataset_name, options, effect="none")
    assert grid == {(name(w), s) for s in (0, 1) for w in range(3)} | {(name(2), 2), (name(0), 3), (name(1), 4)}
    assert not (options.work / name(0)).exists()  # generate=False: paths only
    # the archive: seeds 0-1 in every world, seed 2 also in world 1 (an earlier all-worlds call), seeds 3-4
    # in their own world; with - without = +0.01 in every pair, except seed 2's world-1 pair (-0.03)
    with_v, without_v = PAIRS["dsbn"]
    for world, seed in sorted(grid | {(name(1), 2)}):
        delta = -0.03 if (world, seed) == (name(1), 2) else 0.01
        for variant, auc in ((with_v, 0.7 + delta), (without_v, 0.7)):
            path = archived(options, variant, Path(world), seed)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"auc": auc}))
    run(replace(one_world, train=False, first_seed=3, seeds=2))
    table = (options.out / "specificity.md").read_text()
    assert "--seeds 5" in table and "--one-world-from 2" in table
    assert "seeds from 2 on were added in one world each (world = seed mod 3" in table
    row = next(line for line in table.splitlines() if line.startswith("| dsbn"))
    # seeds 0-2 from the archive too: 10 pairs, 9 won; seed 2's mean is (0.01 - 0.03) / 2 < 0, four seeds
    # win: p = (1 + 5 + 5 + 1) / 32
    assert "(9/10; seeds 4/5, p=0.375)" in row


def test_tiny_scaling_suite_trains_each_row_count(tmp_path):
    options = tiny_options(
        tmp_path,
        rows=1500,
        users=60,
        items=200,
        seq_length=5,
        max_epochs=1,
        patience=1,
        batch_size=256,
        suites=["scaling"],
        scale_rows=[1500, 3000],
    )
    table = run(options)["scaling"].read_text()
    for rows in (1500, 3000):
        data = options.work / dataset_name(ProofBenchOptions(**{**vars(options), "rows": rows}), 0, "all")
        aucs = {
            v.label: json.loads((run_dir(options, v, data, 0) / "metrics.json").read_text())["auc"]
            for v in MODELS
            if v.label in ("DNN", "DIN", "ADS", "SFPNet")
        }
        assert f"| {rows:,} | " + " | ".join(f"{aucs[label]:.4f}" for label in ("DNN", "DIN", "ADS", "SFPNet")) in table
        assert f"{aucs['ADS'] - aucs['DIN']:+.4f}" in table


def test_tiny_dose_suite_plants_the_knob_stronger_and_tables_the_pairs(tmp_path):
    """The dose suite trains each mechanism's pair on its own effect at each dose (the knob times the dose)
    and tables it beside dose 0 (``none``) and dose 1 (the specificity dataset) when those ran."""
    options = tiny_options(
        tmp_path,
        rows=1500,
        users=60,
        items=200,
        seq_length=5,
        max_epochs=1,
        patience=1,
        batch_size=256,
        suites=["dose"],
        mechanisms=["se"],
        doses=[2.5],
    )
    jobs = planned_jobs(options)
    assert {(v.label, d.name) for v, d, _ in jobs} == {
        (v.label, dataset_name(options, 0, "se", 2.5)) for v in PAIRS["se"]
    }
    assert dataset_name(options, 0, "se", 2.5) != dataset_name(options, 0, "se")
    spec = DatasetSpec.load(jobs[0][1])
    assert ast.literal_eval(spec.notes["effects"]) == {"psrg": 0.0, "pcrg": 0.0, "sfpnet": 0.0, "dsbn": 0.0, "se": 2.5}
    written = run(options)
    raw = json.loads((options.out / "dose.json").read_text())
    data = jobs[0][1]
    aucs = {
        v.label: json.loads((run_dir(options, v, data, 0) / "metrics.json").read_text())["auc"] for v in PAIRS["se"]
    }
    cell = raw["se"]["2.5"]
    assert cell["n"] == 1 and cell["delta"] == pytest.approx(aucs["ADIN"] - aucs["ADIN w/o SE"])
    test = spec.splits["test"]
    assert cell["gap"] == pytest.approx(test.oracle_auc["all"] - test.ceilings["without_se"]["all"])
    assert cell["closed_without"] == pytest.approx(
        (aucs["ADIN w/o SE"] - test.ceilings["without_se"]["all"]) / cell["gap"]
    )
    assert raw["se"]["0"]["n"] == 0 and raw["se"]["1"]["n"] == 0  # not run here: shown as such
    assert f"{cell['delta']:+.4f}" in written["dose"].read_text()


def test_options_suite_pairs_each_option_with_its_default_on_its_data(tmp_path):
    options = tiny_world(
        tmp_path,
        suites=["options"],
        doses=[3.0],
    )
    cells = {(v.label, d.name) for v, d, _ in planned_jobs(options)}
    read = {(v.label, d.name) for v, d, _ in pooled_jobs(options)}
    for with_v, default, effect, bare in OPTIONS.values():
        dose = 1.0 if effect == "all" else 3.0
        name = dataset_name(options, 0, effect, dose)
        assert (with_v.label, name) in cells
        assert with_v.model == default.model == bare.model
        assert len(set(with_v.overrides) - set(default.overrides)) == 1
        # the bare model: the default without the mechanism the option concerns (one switch off)
        assert len(set(bare.overrides) - set(default.overrides)) == 1
        assert {(default.label, name), (bare.label, name)} <= read  # read by the table, trained by other suites
    assert len(cells) == len(OPTIONS)  # the default models' runs belong to the dose and specificity suites
    assert OPTIONS["psrg_shared_init=xavier"].bare == PAIRS["psrg"][1]
    assert "model.sfpnet.scenario_aware_dnn=false" in OPTIONS["dnn_gate_scale=2"].bare.overrides


def test_options_table_pairs_the_option_with_the_default_and_the_bare_model(tmp_path):
    from torchrec_mdr.bench.proof_dose_report import write_options

    options = ProofBenchOptions(out=tmp_path, work=tmp_path, worlds=3, seeds=6, doses=[3.0])
    xavier, default, _, _ = OPTIONS["psrg_shared_init=xavier"]
    bare = PAIRS["psrg"][1]
    results = {}
    for world, seed in itertools.product(range(3), range(6)):
        name = dataset_name(options, world, "psrg", 3.0)
        results[(default.label, name, seed)] = {"auc": 0.70 + 0.01 * world}
        results[(xavier.label, name, seed)] = {"auc": 0.71 + 0.01 * world + 0.001 * seed}
        results[(bare.label, name, seed)] = {"auc": 0.72 + 0.01 * world}
    gate, sfpnet, _, no_sdnn = OPTIONS["dnn_gate_scale=2"]
    for world, seed in itertools.product(range(3), range(2)):  # 2 seeds, and the bare model in world 0 only
        name = dataset_name(options, world, "all")
        results[(sfpnet.label, name, seed)] = {"auc": 0.75}
        results[(gate.label, name, seed)] = {"auc": 0.76}
        if world == 0:
            results[(no_sdnn.label, name, seed)] = {"auc": 0.77}
    table = write_options(options, results).read_text()
    gate_row = next(line for line in table.splitlines() if line.startswith("| dnn_gate_scale=2"))
    assert "| all | 0.7600 | 0.7500 | +0.0100 ± 0.0000 (6/6; seeds 2/2, p=0.5)" in gate_row
    assert gate_row.endswith(
        "| -0.0100 ± 0.0000 (0/2; seeds 0/2, p=0.5) **too few seeds for p < 0.05** vs SFPNet w/o S-DNN |"
    )
    row = next(line for line in table.splitlines() if line.startswith("| psrg_shared_init=xavier"))
    # Δ = 0.01 + 0.001 seed: mean 0.0125, sd 0.001 sqrt(17.5 / 17) over the 18 pairs; 6 seeds of one sign
    assert "| psrg × 3 | 0.7225 | 0.7100 | +0.0125 ± 0.0018 (18/18; seeds 6/6, p=0.0312) **wins** |" in row
    assert "-0.0075 ± 0.0018 (0/18; seeds 0/6, p=0.0312) **loses** vs ADS w/o PCRG & PSRG" in row
    assert "identity_noise" not in table and "stop_gradient" not in table  # not run: no row


def test_evals_per_epoch_sets_the_evaluation_clock(tmp_path):
    from torchrec_mdr.bench.proof import dataset, overrides

    options = ProofBenchOptions(
        out=tmp_path,
        work=tmp_path,
        rows=2000,
        users=50,
        items=200,
        seq_length=4,
        batch_size=100,
        max_epochs=1,
        evals_per_epoch=4,
    )
    data = dataset(options, 0, "none")
    epoch_steps = -(-DatasetSpec.load(data).splits["train"].rows // 100)
    args = overrides(options, PAIRS["psrg"][0], data, 0)
    assert f"train.eval_every={-(-epoch_steps // 4)}" in args and f"train.max_steps={epoch_steps}" in args
    assert "train.eval_at_end=false" in args  # the archived runs' protocol


def test_movielens_suite_trains_every_model_per_seed_and_tables_them_against_their_bases(tmp_path):
    from test_convert_movielens import write_ml100k

    from torchrec_mdr.bench.proof_report import write_movielens

    options = ProofBenchOptions(
        out=tmp_path / "out",
        work=tmp_path / "work",
        worlds=3,
        seeds=2,
        suites=["movielens"],
        movielens_src=write_ml100k(tmp_path / "ml-100k"),
    )
    jobs = planned_jobs(options)
    gate_options = ["SFPNet, S-DNN gate scale 2", "SFPNet, S-DNN gates stop-gradient"]  # the whole-model options
    assert sorted((v.label, d.name, s) for v, d, s in jobs) == sorted(
        (label, "ml-100k", s) for label in [v.label for v in MODELS] + gate_options for s in range(2)
    )  # one dataset: worlds do not multiply; PSRG's options concern its effect only
    assert DatasetSpec.load(jobs[0][1]).domain_names == ["age<25", "age25-34", "age>=35"]
    chosen = replace(options, alternatives=["psrg_shared_init=xavier", "dnn_gate_scale=2"])
    variants = movielens_models(chosen.alternatives)
    assert [v.label for v in variants] == [v.label for v in MODELS] + gate_options[:1]
    results = {
        (v.label, "ml-100k", s): {"auc": 0.70 + 0.01 * i + 0.001 * s} for i, v in enumerate(variants) for s in range(2)
    }
    results[("SFPNet, S-DNN gate scale 2", "ml-100k", 1)]["auc"] -= 0.02  # one pair lost against SFPNet
    options.out.mkdir()
    table = write_movielens(chosen, results).read_text()
    rows = {line.split(" | ")[0][2:]: line for line in table.splitlines() if line.startswith("| ")}
    din, ads, gate = rows["DIN"], rows["ADS"], rows["SFPNet, S-DNN gate scale 2"]
    assert din.startswith("| DIN | 0.7105 ± 0.0007 |") and "| DIN | +0.0100 ± 0.0000 (2/2; 2/2)" in ads
    # SFPNet is MODELS[3] (0.73 + 0.001 s); the gate option is row 7: +0.04, then +0.04 - 0.02
    assert gate.startswith("| SFPNet, S-DNN gate scale 2 | 0.7605 ± 0.0134 | SFPNet | +0.0300 ± 0.0141 (2/2; 2/2)")
    assert "--suites movielens --seeds 2" in table
    assert "--alternatives psrg_shared_init=xavier dnn_gate_scale=2" in table


def test_movielens_ablations_train_each_group_variant_once_and_table_it_against_its_full_model(tmp_path):
    from test_convert_movielens import write_ml100k

    from torchrec_mdr.bench.proof_report import write_movielens

    options = ProofBenchOptions(
        out=tmp_path / "out",
        work=tmp_path / "work",
        seeds=2,
        suites=["movielens"],
        alternatives=[],
        movielens_ablations=["ads", "adin"],
        movielens_src=write_ml100k(tmp_path / "ml-100k"),
    )
    jobs = planned_jobs(options)
    ablated = ["ADS w/o PCRG", "ADS w/o PCRG & PSRG", "ADIN w/o DSBN", "ADIN w/o SE", "ADIN w/o self-training"]
    # ADS and ADIN are among MODELS already (the same overrides): trained once
    assert sorted((v.label, s) for v, _, s in jobs) == sorted(
        (label, s) for label in [v.label for v in MODELS] + ablated for s in range(2)
    )
    auc = {"ADS": 0.72, "ADS w/o PCRG": 0.71, "ADS w/o PCRG & PSRG": 0.715, "ADIN": 0.70, "ADIN w/o DSBN": 0.69}
    auc |= {"ADIN w/o SE": 0.68, "ADIN w/o self-training": 0.67, "DIN": 0.70, "SharedBottom": 0.71}
    results = {(label, "ml-100k", s): {"auc": a + 0.001 * s} for label, a in auc.items() for s in range(2)}
    results[("ADIN w/o DSBN", "ml-100k", 1)]["auc"] += 0.025  # one pair lost by ADIN
    options.out.mkdir()
    table = write_movielens(options, results).read_text()
    main, ablations = table.split("## Ablations on MovieLens-100K")
    assert "| ADS w/o PCRG |" not in main and "| ADS | 0.7205 ± 0.0007 | DIN | +0.0200 ± 0.0000 (2/2; 2/2)" in main
    rows = {line.split(" | ")[0][2:]: line for line in ablations.splitlines() if line.startswith("| ")}
    assert rows["ADS w/o PCRG"].startswith("| ADS w/o PCRG | 0.7105 ± 0.0007 | ADS | -0.0100 ± 0.0000 (0/2; 0/2)")
    # 0.69 and 0.716 against 0.70 and 0.701: -0.01, then +0.015
    assert rows["ADIN w/o DSBN"].startswith("| ADIN w/o DSBN | 0.7030 ± 0.0184 | ADIN | +0.0025 ± 0.0177 (1/2; 1/2)")
    orders = ablations.split("## The papers' orders")[1]
    assert "- ADS > ADS w/o PCRG > ADS w/o PCRG & PSRG: **does NOT hold**" in orders  # 0.7105 < 0.7155
    assert (
        "- ADIN > ADIN w/o DSBN: **does NOT hold** (ADIN 0.7005, ADIN w/o DSBN 0.7030; over the 2 seed runs" in orders
    )
    assert "- ADIN > ADIN w/o SE: **holds** in the means" in orders
    assert "--suites movielens --seeds 2 --max-epochs 10 --patience 2 --batch-size 1024 --alternatives " in table
    assert table.split("`")[1].endswith("--movielens-ablations ads adin")
    with pytest.raises(ConfigError, match="--movielens-ablations: unknown"):
        replace(options, movielens_ablations=["din"]).validate()


def test_alternatives_choose_which_options_are_trained_and_tabled(tmp_path):
    from torchrec_mdr.bench.proof_dose_report import write_options

    options = ProofBenchOptions(
        out=tmp_path,
        work=tmp_path / "work",
        worlds=1,
        seeds=1,
        rows=1000,
        users=50,
        items=200,
        seq_length=4,
        suites=["options"],
        doses=[3.0],
        alternatives=["psrg_shared_init=identity_noise"],
    )
    identity, default, _, _ = OPTIONS["psrg_shared_init=identity_noise"]
    assert {v.label for v, _, _ in planned_jobs(options)} == {identity.label}
    xavier = OPTIONS["psrg_shared_init=xavier"][0]
    name = dataset_name(options, 0, "psrg", 3.0)
    results = {
        (label, name, 0): {"auc": auc}
        for label, auc in ((default.label, 0.70), (identity.label, 0.71), (xavier.label, 0.72))
    }
    table = write_options(options, results).read_text()
    assert "--alternatives psrg_shared_init=identity_noise" in table
    assert "| psrg_shared_init=identity_noise | psrg × 3 | 0.7100 | 0.7000 |" in table
    assert "xavier" not in table  # archived, but not chosen: no row
    with pytest.raises(ConfigError, match="--alternatives: unknown"):
        ProofBenchOptions(alternatives=["gate=3"]).validate()


def test_ceilings_table_lists_the_dose_datasets_too(tmp_path):
    from torchrec_mdr.bench.proof import dataset
    from torchrec_mdr.bench.proof_report import write_ceilings

    options = ProofBenchOptions(
        out=tmp_path, work=tmp_path / "work", worlds=1, rows=1000, users=50, items=200, seq_length=4, doses=[3.0, 0.0]
    )
    dataset(options, 0, "pcrg", 3.0)
    dataset(options, 0, "none")
    rows = [line for line in write_ceilings(options).read_text().splitlines() if line.startswith("| v2-")]
    # dose 0 is the none dataset: listed once, not once more per mechanism
    assert [r.split(" | ")[0] for r in rows] == [
        f"| {dataset_name(options, 0, e, d)}" for e, d in (("none", 1.0), ("pcrg", 3.0))
    ]


def test_ablation_models_choose_whose_ablations_are_trained_and_tabled(tmp_path):
    from torchrec_mdr.bench.proof_report import write_ablation

    options = tiny_world(tmp_path, suites=["ablation"])
    options.ablation_models = ["ads", "adin"]
    labels = [v.label for v, _, _ in planned_jobs(options)]
    assert labels == ["ADS", "ADS w/o PCRG", "ADS w/o PCRG & PSRG", "ADIN", "ADIN w/o DSBN", "ADIN w/o SE"] + [
        "ADIN w/o self-training"
    ]
    name = dataset_name(options, 0, "all")
    results = {(label, name, 0): {"auc": 0.70 + i / 100} for i, label in enumerate(labels + ["SFPNet"])}
    options.out.mkdir()
    table = write_ablation(options, results).read_text()
    assert "--ablation-models ads adin" in table
    assert "| ADIN w/o DSBN |" in table and "SFPNet" not in table  # archived, but not chosen: no row
    assert "ADS > ADS w/o PCRG > ADS w/o PCRG & PSRG: **does NOT hold**" in table  # 0.70 < 0.71 < 0.72
    with pytest.raises(ConfigError, match="--ablation-models: unknown"):
        ProofBenchOptions(ablation_models=["star"]).validate()


def test_train_only_trains_the_chosen_models_and_still_reads_every_archived_run(tmp_path):
    from torchrec_mdr.bench.proof import finished_and_pending

    options = ProofBenchOptions(out=tmp_path / "out", work=tmp_path / "work", suites=["ablation"])
    variants = chosen_ablations(["sfpnet"])
    data = tmp_path / "work" / dataset_name(options, 0, "all")
    jobs = [(v, data, seed) for seed in (0, 1) for v in variants]
    for variant in variants:  # seed 0 finished and archived for every model
        path = archived(options, variant, data, 0)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"auc": 0.7}))
    results, pending = finished_and_pending(options, jobs)
    assert len(results) == 6 and [p[:3] for p in pending] == [(v, data, 1) for v in variants]
    only = replace(options, train_only=["sfpnet", "sfpnet-w-o-sam"])
    results, pending = finished_and_pending(only, jobs)
    assert len(results) == 6 and [(v.label, s) for v, _, s, _ in pending] == [("SFPNet", 1), ("SFPNet w/o SAM", 1)]
    assert finished_and_pending(replace(options, train=False), jobs)[1] == []
    assert "sfpnet-w-o-s-dnn" in model_slugs() and "adin-w-o-self-training" in model_slugs()
    with pytest.raises(ConfigError, match="--train-only: unknown"):
        ProofBenchOptions(train_only=["SFPNet w/o SAM"]).validate()  # a label, not its run-file name


def test_the_tables_command_names_the_chosen_effects():
    from torchrec_mdr.bench.proof_report import command_line

    assert "--effects" not in command_line(ProofBenchOptions(suites=["specificity"]), "specificity")
    chosen = command_line(ProofBenchOptions(suites=["specificity"], effects=["none", "pcrg"]), "specificity")
    assert "--effects none pcrg --matrix full" in chosen


def test_the_ads_noise_ablation_group_checks_ads_order_with_the_default_psrg_start(tmp_path):
    from torchrec_mdr.bench.proof_report import write_ablation

    options = tiny_world(tmp_path, suites=["ablation"])
    options.ablation_models = ["ads_noise"]
    jobs = planned_jobs(options)
    labels = [v.label for v, _, _ in jobs]
    assert labels == ["ADS, W_shared identity+noise", "ADS w/o PCRG, W_shared identity+noise", "ADS w/o PCRG & PSRG"]
    full, no_pcrg, neither = (v for v, _, _ in jobs)
    assert full.overrides[-1] == "model.ads.psrg_shared_init=identity_noise"  # the later override wins
    assert "model.ads.use_pcrg=false" in no_pcrg.overrides and "model.ads.use_pcrg=false" not in full.overrides
    assert no_pcrg.base == full.label and neither.base == full.label  # compared with the full model of their start
    # the same runs as the options suite's variant and the ads group's bare model (shared by label)
    assert no_pcrg.slug == OPTIONS["psrg_shared_init=identity_noise"][0].slug
    name = dataset_name(options, 0, "all")
    results = {(label, name, 0): {"auc": auc} for label, auc in zip(labels, (0.73, 0.72, 0.71))}
    options.out.mkdir()
    table = write_ablation(options, results).read_text()
    assert "--ablation-models ads_noise" in table
    chain = "ADS, W_shared identity+noise > ADS w/o PCRG, W_shared identity+noise > ADS w/o PCRG & PSRG"
    assert f"{chain}: **holds** in the means" in table
    assert "| ADS w/o PCRG & PSRG | 0.7100 ± 0.0000 | " in table
    assert "ADS > ADS w/o PCRG" not in table  # the ads group was not chosen


def test_an_ablation_order_compares_only_the_runs_every_model_of_it_has(tmp_path):
    """--train-only adds seeds to some models: the full model's extra seeds must not decide an order."""
    from torchrec_mdr.bench.proof_report import write_ablation

    options = tiny_world(tmp_path, suites=["ablation"])
    options.ablation_models, options.seeds = ["ads"], 2
    name = dataset_name(options, 0, "all")
    results = {("ADS", name, s): {"auc": auc} for s, auc in ((0, 0.70), (1, 0.80))}  # mean 0.75 over 2 seeds
    results |= {("ADS w/o PCRG", name, 0): {"auc": 0.72}, ("ADS w/o PCRG & PSRG", name, 0): {"auc": 0.71}}
    options.out.mkdir()
    table = write_ablation(options, results).read_text()
    assert "| ADS | 0.7500 ± 0.0707 |" in table  # the table row keeps every run
    assert (
        "ADS > ADS w/o PCRG > ADS w/o PCRG & PSRG: **does NOT hold** (ADS 0.7000, ADS w/o PCRG 0.7200, "
        "ADS w/o PCRG & PSRG 0.7100; over the 1 (world, seed) runs they all have)"
    ) in table


def test_specificity_verdicts_of_a_table_without_the_own_effect_column(tmp_path):
    """A table of `none` alone (the fresh regime's) still gets a verdict line per mechanism: where its effect
    is absent it should tie; here psrg loses in 6 of 6 seeds and se ties (5 of 6, p = 4 / 64)."""
    from torchrec_mdr.bench.proof_report import write_specificity

    options = tiny_world(tmp_path, worlds=1, seeds=6, effects=["none"])
    options.mechanisms = ["psrg", "se"]
    results = {}
    for world, seed in itertools.product(range(1), range(6)):
        name = dataset_name(options, world, "none")
        bump = 0.001 * (seed + 1)  # every pair differs, never by 0
        (with_psrg, without_psrg), (with_se, without_se) = PAIRS["psrg"], PAIRS["se"]
        results[(with_psrg.label, name, seed)] = {"auc": 0.70}
        results[(without_psrg.label, name, seed)] = {"auc": 0.70 + bump}  # psrg loses everywhere
        results[(with_se.label, name, seed)] = {"auc": 0.70 + (bump if seed else -bump)}  # 5 wins, 1 loss
        results[(without_se.label, name, seed)] = {"auc": 0.70}
    options.out.mkdir()
    table = write_specificity(options, results).read_text()
    assert (
        "- **psrg**: its own effect is not in this table. Neither wins nor loses where the effect is absent: 0/1 "
        "(none: loses)." in table
    )
    assert (
        "- **se**: its own effect is not in this table. Neither wins nor loses where the effect is absent: 1/1 "
        "(none: ties)." in table
    )
    assert "nothing run yet" not in table


def test_specificity_averages_the_cells_where_the_effect_is_absent_per_world_and_seed(tmp_path):
    """psrg loses 5 of 6 seeds on `none`, its smallest pair a win (cell p = 4 / 64); on `pcrg` it loses all 6,
    twice as much (p = 2 / 64). Averaged per (world, seed): 6 units, all losses (p = 2 / 64), mean
    (-0.0005 - 1.5 (0.002 + ... + 0.006)) / 6 = -0.0051; not 12 pairs pooled as if independent."""
    from torchrec_mdr.bench.proof_report import write_specificity

    options = tiny_world(tmp_path, worlds=1, seeds=6, effects=["none", "pcrg"])
    options.mechanisms = ["psrg"]
    with_psrg, without_psrg = PAIRS["psrg"]
    results = {}
    for effect, world, seed in itertools.product(["none", "pcrg"], range(1), range(6)):
        name = dataset_name(options, world, effect)
        bump = 0.001 * (seed + 1)
        delta = (bump if world == seed == 0 else -bump) if effect == "none" else -2 * bump
        results[(with_psrg.label, name, seed)] = {"auc": 0.70 + delta}
        results[(without_psrg.label, name, seed)] = {"auc": 0.70}
    options.out.mkdir()
    table = write_specificity(options, results).read_text()
    assert "(1/6; seeds 1/6, p=0.0625) **ties**" in table and "(0/6; seeds 0/6, p=0.0312) **loses**" in table
    verdicts = next(line for line in table.splitlines() if line.startswith("- **psrg**"))
    assert (
        "absent: 1/2 (none: ties, pcrg: loses). Those cells averaged per (world, seed), tested by seed: -0.0051 ± "
        in verdicts
    )
    assert verdicts.endswith("(0/6; seeds 0/6, p=0.0312) **loses**.")  # unit (0, 0): (+0.001 - 0.002) / 2 < 0


def test_dose_0_is_the_none_dataset_so_an_option_can_be_tried_where_no_effect_is_planted(tmp_path):
    from torchrec_mdr.bench.proof_dose_report import write_options

    options = tiny_world(
        tmp_path,
        suites=["options"],
        doses=[0.0, 3.0],
        alternatives=["psrg_shared_init=identity_noise"],
    )
    options.validate()
    assert dataset_name(options, 0, "psrg", 0.0) == dataset_name(options, 0, "none")
    noisy, default, _, _ = OPTIONS["psrg_shared_init=identity_noise"]
    names = sorted({data.name for _, data, _ in planned_jobs(options)})
    assert names == sorted([dataset_name(options, 0, "none"), dataset_name(options, 0, "psrg", 3.0)])
    results = {
        (label, dataset_name(options, 0, "none"), 0): {"auc": auc}
        for label, auc in ((default.label, 0.70), (noisy.label, 0.69), (PAIRS["psrg"][1].label, 0.71))
    }
    options.out.mkdir()
    table = write_options(options, results).read_text()
    assert "| psrg_shared_init=identity_noise | none | 0.6900 | 0.7000 |" in table
    assert "--doses 0 3" in table
    with pytest.raises(ConfigError, match="doses"):  # 0 is allowed now, a negative strength is not
        from_dict(ProofBenchOptions, {"doses": [-1.0]})
