"""The ``seeds`` suite of ``mdr bench proof`` (no training): do the pairs that share a training seed agree
across worlds?

A seed fixes the model's initialisation and the order of the rows, and the worlds' tables have the same
shapes, so a seed starts a model identically in every world. If that start favours one model of a pair, the
pair's difference moves the same way in every world, and the (world, seed) pairs are not independent: the
tables then test over the seeds' means (:mod:`torchrec_mdr.bench.proof_stats`). This suite measures it on
every comparison of the other suites whose grid of worlds x seeds is complete (at least 2 worlds and 3
seeds): the share of the spread of the differences that the seeds explain (``1 / worlds`` expected without
a shared seed effect), and a permutation test that shuffles each world's differences among its seeds
(:func:`torchrec_mdr.bench.significance.shared_seed_p`).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from torchrec_mdr.bench.significance import seed_share, shared_seed_p

if TYPE_CHECKING:
    from torchrec_mdr.bench.accuracy_setup import Variant
    from torchrec_mdr.bench.proof_setup import ProofBenchOptions
    from torchrec_mdr.bench.proof_stats import Results

# (what is compared, the model with, the model without, the data's name, its datasets, one per world)
Cell = tuple[str, "Variant", "Variant", str, list[str]]


def seed_cells(options: "ProofBenchOptions") -> list[Cell]:
    """Every comparison of the specificity, dose, options and ablation suites, on its datasets."""
    from torchrec_mdr.bench.proof_setup import ABLATION_GROUPS, OPTIONS, PAIRS, data_label, dataset_name

    def names(effect: str, dose: float = 1.0) -> list[str]:
        return [dataset_name(options, world, effect, dose) for world in range(options.worlds)]

    cells: list[Cell] = []
    for mechanism, (with_v, without_v) in PAIRS.items():
        for effect in ("none", mechanism, "all"):
            cells.append((mechanism, with_v, without_v, effect, names(effect)))
        for dose in (d for d in options.doses if d not in (0.0, 1.0)):
            cells.append((mechanism, with_v, without_v, data_label(mechanism, dose), names(mechanism, dose)))
    for name, option in OPTIONS.items():
        for dose in options.doses if option.effect != "all" else [1.0]:
            where, datasets = data_label(option.effect, dose), names(option.effect, dose)
            cells.append((f"{name} vs default", option.with_option, option.default, where, datasets))
            cells.append((f"{name} vs {option.bare.label}", option.with_option, option.bare, where, datasets))
    for variants in ABLATION_GROUPS.values():
        by_label = {v.label: v for v in variants}
        for v in variants:
            if v.base in by_label:
                cells.append((f"{v.label} vs {v.base}", v, by_label[v.base], "all", names("all")))
    return list({(c[1].label, c[2].label, c[3]): c for c in cells}.values())  # each comparison once


def seed_jobs(options: "ProofBenchOptions") -> list[tuple["Variant", Path, int]]:
    """The archived runs the suite reads (nothing is trained)."""
    seeds = options.first_seed + options.seeds
    return list(
        {
            (v, options.work / name, seed): None
            for _, with_v, without_v, _, datasets in seed_cells(options)
            for v in (with_v, without_v)
            for name in datasets
            for seed in range(seeds)
        }
    )


def _grid(results: "Results", with_label: str, without_label: str, datasets: list[str], seeds: int) -> np.ndarray:
    """Δ AUC (worlds x seeds) over the seeds 0 .. k-1 that every world has (k may be smaller than ``seeds``)."""
    complete = 0
    while complete < seeds and all(
        (label, d, complete) in results for d in datasets for label in (with_label, without_label)
    ):
        complete += 1
    return np.array(
        [
            [results[(with_label, d, s)]["auc"] - results[(without_label, d, s)]["auc"] for s in range(complete)]
            for d in datasets
        ]
    ).reshape(len(datasets), complete)


def write_seed_effect(options: "ProofBenchOptions", results: "Results") -> Path:
    """seeds.md: per complete comparison, the seeds' mean Δ, the share of the spread they explain and its p."""
    from torchrec_mdr.bench.proof_report import table_header

    seeds = options.first_seed + options.seeds
    rows, grids = [], []
    for what, with_v, without_v, where, datasets in seed_cells(options):
        grid = _grid(results, with_v.label, without_v.label, datasets, seeds)
        if grid.shape[0] >= 2 and grid.shape[1] >= 3:
            rows.append((what, where, grid))
            grids.append(grid)
    lines = table_header(options, "Do the pairs that share a seed agree across worlds?", "seeds")
    lines += [
        "A training seed starts a model identically in every world (same initialisation, same row order), so "
        "the paired differences of one seed may move together. Per comparison with every world × seed run "
        "(at least 2 worlds, 3 seeds): the seeds' mean Δ over the worlds, the share of the spread of Δ the "
        "seeds explain (each world centred; 1 / worlds expected without a shared seed effect), and the p of "
        "a permutation test that shuffles each world's Δ among its seeds (20,000 draws).",
        "",
        "| comparison | data | worlds × seeds | seeds' mean Δ | seed share | p |",
        "|---|---|---|---|---|---|",
    ]
    if grids:
        each, combined = shared_seed_p(grids)
        for (what, where, grid), p in zip(rows, each):
            means = ", ".join(f"{m:+.4f}" for m in grid.mean(axis=0))
            lines.append(
                f"| {what} | {where} | {grid.shape[0]} × {grid.shape[1]} | {means} | {seed_share(grid):.2f} | {p:.3g} |"
            )
        expected = statistics.fmean(1 / g.shape[0] for g in grids)
        mean_share = statistics.fmean(seed_share(g) for g in grids)
        lines += [
            "",
            f"**All {len(grids)} comparisons together:** mean seed share {mean_share:.2f} against {expected:.2f} "
            f"expected without a shared seed effect; permutation p = {combined:.3g} "
            + (
                "— **the pairs of a seed are correlated**: the tables test over the seeds' means."
                if combined < 0.05
                else "— no shared seed effect shown."
            ),
        ]
    else:
        lines.append("| nothing complete yet | | | | | |")
    path = options.out / "seeds.md"
    path.write_text("\n".join(lines) + "\n")
    return path
