"""The statistics of ``mdr bench proof``'s tables: paired differences, the tests and the verdict rules.

Paired differences are taken per (world, seed): the two models saw the same data in the same order
from the same seed. Tests (:mod:`torchrec_mdr.bench.significance`): the exact sign-flip test, and the
unpaired Mann-Whitney U test the SFPNet paper reports (``p_MW``).

**The test is blocked by seed** (``p``): the pairs' differences are averaged over the worlds (datasets)
of each seed, and the sign-flip test runs over those per-seed means. A seed fixes a model's
initialisation and the row order in every world alike (the worlds' tables have the same shapes), and
the differences of the pairs that share a seed were measured to be correlated (the ``seeds`` suite,
:mod:`torchrec_mdr.bench.proof_seeds`; in round 7 of docs/results/v2 the seeds explained 53% of the
spread of the paired differences in the fresh regime, where 33% is expected without a seed effect,
permutation p = 5e-05), so pairs are not independent units and a sign-flip over them overstates the
evidence. ``p_pairs`` (the sign-flip over
the pairs) is kept in the JSON for comparison. On one dataset (MovieLens) the two tests are the same.

Verdicts at the 0.05 level:

* a mechanism **wins** where ``mean Δ > 0`` and ``p < 0.05``, **loses** where ``mean Δ < 0`` and
  ``p < 0.05``, and **ties** otherwise (with fewer than 6 seeds the exact sign-flip test cannot reach
  0.05 — 5 seeds of one sign give p = 2/32 — and the verdict says so);
* on its own planted effect (and on ``all``) a mechanism is expected to win; on ``none`` and on the
  other effects, to tie;
* a table of many cells gets some verdicts by chance: :func:`chance_note` says how many.

Seeds trained in one world each (``--one-world-from``) are units of their own: the test needs no
complete grid of worlds x seeds, and each seed's mean is over the worlds it ran in.
"""

from __future__ import annotations

import math
import statistics

from torchrec_mdr.bench.significance import mann_whitney_p, sign_flip_p

# (model label, dataset name, seed) -> the run's metrics
Results = dict[tuple[str, str, int], dict]


def mean_sd(values: list[float]) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return float("nan"), float("nan")
    return statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else 0.0


def paired_stats(units: list[tuple[int, float]]) -> dict:
    """Statistics of paired differences given as (seed, Δ): mean, sd, wins and the sign-flip p over the units
    (``p_pairs``), and over the per-seed means (``seeds``, ``seed_wins``, ``p``: the test the verdicts use)."""
    deltas = [d for _, d in units]
    by_seed: dict[int, list[float]] = {}
    for seed, d in units:
        by_seed.setdefault(seed, []).append(d)
    seed_means = [statistics.fmean(v) for _, v in sorted(by_seed.items())]
    mean, sd = mean_sd(deltas)
    return {
        "n": len(deltas),
        "delta": mean,
        "sd": sd,
        "wins": sum(d > 0 for d in deltas),
        "p_pairs": sign_flip_p(deltas),
        "seeds": len(seed_means),
        "seed_wins": sum(m > 0 for m in seed_means),
        "p": sign_flip_p(seed_means),
    }


def paired(results: Results, with_label: str, without_label: str, datasets: list[str], seeds: int) -> dict:
    """Δ test AUC (with - without) over every (dataset, seed < ``seeds``) where both ran."""
    keys = [
        (d, s)
        for d in datasets
        for s in range(seeds)
        if (with_label, d, s) in results and (without_label, d, s) in results
    ]
    pairs = [(results[(with_label, d, s)]["auc"], results[(without_label, d, s)]["auc"]) for d, s in keys]
    return {
        **paired_stats([(s, a - b) for (_, s), (a, b) in zip(keys, pairs)]),
        "p_mw": mann_whitney_p([a for a, _ in pairs], [b for _, b in pairs]),
        "with": mean_sd([a for a, _ in pairs])[0],
        "without": mean_sd([b for _, b in pairs])[0],
    }


ALPHA = 0.05  # the level of every verdict
MIN_SEEDS = 6  # the fewest seeds whose exact sign-flip test can reach p < ALPHA (6 of one sign: p = 2/64)


def verdict(c: dict) -> str:
    if c["n"] == 0:
        return "not run"
    if c["seeds"] < MIN_SEEDS:
        return f"too few seeds for p < {ALPHA:g}"
    if c["p"] < ALPHA:
        return "wins" if c["delta"] > 0 else "loses"
    return "ties"


def format_cell(c: dict) -> str:
    if c["n"] == 0:
        return "—"
    return (
        f"{c['delta']:+.4f} ± {c['sd']:.4f} ({c['wins']}/{c['n']}; seeds {c['seed_wins']}/{c['seeds']}, "
        f"p={c['p']:.3g}) **{verdict(c)}**"
    )


def chance_note(cells: list[dict]) -> str:
    """How many of a table's verdicts (``cells``: paired comparisons) chance alone would give. With no real
    difference, each comparison's exact test reaches ``p < ALPHA`` with probability at most ``ALPHA``, so the
    number of wins and losses is at most binomial(comparisons with a verdict, ``ALPHA``) if they are
    independent — they are not quite (a row's cells share its model pair, a column's its datasets and seeds),
    so the tail is a guide, not a test."""
    tested = [c for c in cells if verdict(c) in ("wins", "loses", "ties")]
    if not tested:
        return f"No comparison has the {MIN_SEEDS} seeds a verdict needs."
    n, hits = len(tested), sum(verdict(c) in ("wins", "loses") for c in tested)
    tail = sum(math.comb(n, k) * ALPHA**k * (1 - ALPHA) ** (n - k) for k in range(hits, n + 1))
    note = (
        f"**Chance:** p < {ALPHA:g} in {hits} of the {n} comparisons with a verdict; with no real difference in "
        f"any of them at most {ALPHA * n:.2g} are expected"
    )
    if not hits:
        return note + "."
    return note + (
        f", and {hits} or more come with probability at most {tail:.2g} (binomial, as if the comparisons were "
        "independent)."
    )
