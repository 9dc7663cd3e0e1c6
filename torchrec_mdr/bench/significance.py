"""Exact two-sided tests for small samples of paired runs (no SciPy needed).

* :func:`sign_flip_p` — the paired randomisation test: under the null (the mechanism does nothing) the
  sign of each paired difference is a fair coin, so the p-value is the share of the ``2^n`` sign
  assignments whose ``|mean|`` is at least the observed one (exact for ``n <= 20``; a fixed-seed
  Monte-Carlo estimate with 200,000 draws above). Its smallest attainable two-sided p is ``2 / 2^n``:
  0.0625 with 5 pairs, so one world of 5 seeds can never reach 0.05 — pool the worlds (3 x 5 = 15 pairs)
  to test at that level.
* :func:`mann_whitney_p` — the unpaired Mann-Whitney U test the SFPNet paper reports, exact by counting
  the rank-sum distribution with dynamic programming (ties get mid-ranks; exact without ties).
* :func:`seed_share` and :func:`shared_seed_p` — whether paired differences that share a training seed move
  together across worlds: the share of their spread the seeds explain, and its permutation test.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

_EXACT_LIMIT = 20


def sign_flip_p(deltas: list[float]) -> float:
    """Two-sided p of the paired sign-flip test on the mean of ``deltas`` (NaN for no pairs)."""
    d = np.asarray([x for x in deltas if math.isfinite(x)], dtype=np.float64)
    n = len(d)
    if n == 0:
        return float("nan")
    observed = abs(d.mean()) - 1e-12
    if n <= _EXACT_LIMIT:
        signs = np.array(list(itertools.product((-1.0, 1.0), repeat=n)))
    else:
        signs = np.random.default_rng(0).choice((-1.0, 1.0), size=(200_000, n))
    return float((np.abs(signs @ d / n) >= observed).mean())


def mid_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``values``, tied values sharing their mean rank."""
    values = np.asarray(values)
    order = values.argsort(kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    for value in np.unique(values):
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def mann_whitney_p(a: list[float], b: list[float]) -> float:
    """Two-sided p of the Mann-Whitney U test of samples ``a`` and ``b`` (exact rank-sum distribution)."""
    a = [x for x in a if math.isfinite(x)]
    b = [x for x in b if math.isfinite(x)]
    m, n = len(a), len(b)
    if m == 0 or n == 0:
        return float("nan")
    ranks = mid_ranks(np.asarray(a + b))
    doubled = np.rint(2 * ranks).astype(np.int64)  # ranks are multiples of 0.5
    observed = int(doubled[:m].sum())
    # count[k][s]: ways to pick k of the ranks with doubled sum s
    total = int(doubled.sum())
    count = np.zeros((m + 1, total + 1), dtype=np.float64)
    count[0, 0] = 1.0
    for r in doubled:
        count[1:, r:] += count[:-1, :-r].copy()
    distribution = count[m] / count[m].sum()
    expected = m * (m + n + 1)  # doubled mean rank sum
    deviation = abs(observed - expected)
    sums = np.arange(total + 1)
    return float(min(1.0, distribution[np.abs(sums - expected) >= deviation].sum()))


def seed_share(grid: np.ndarray) -> np.ndarray | float:
    """Share of the spread of paired differences ``grid`` (worlds x seeds; or a stack of such grids, ``[..., worlds,
    seeds]``) that the seeds explain: each world's row centred on its mean, ``worlds x`` the sum of squares of the
    seed means over the total sum of squares (0 where nothing varies). Without an effect shared by the pairs of a
    seed (the seeds' columns exchangeable within each world) its expectation is ``1 / worlds``."""
    centred = grid - grid.mean(axis=-1, keepdims=True)
    total = (centred**2).sum(axis=(-2, -1))
    explained = grid.shape[-2] * (centred.mean(axis=-2) ** 2).sum(axis=-1)
    share = np.divide(explained, total, out=np.zeros_like(explained, dtype=np.float64), where=total > 0)
    return float(share) if share.ndim == 0 else share


def shared_seed_p(grids: list[np.ndarray], draws: int = 20_000) -> tuple[list[float], float]:
    """Permutation test of a seed effect shared across worlds: each world's differences are shuffled among its
    seeds independently (a fixed-seed Monte-Carlo of ``draws`` shuffles). Returns each grid's p of its
    :func:`seed_share`, and the p of the grids' mean share (every grid shuffled in the same draw); ``(k + 1) /
    (draws + 1)``, so never 0."""
    rng = np.random.default_rng(0)
    observed = np.array([seed_share(g) for g in grids])
    permuted_shares = np.empty((draws, len(grids)))
    for i, grid in enumerate(grids):
        order = rng.random((draws, *grid.shape)).argsort(axis=2)
        permuted_shares[:, i] = seed_share(np.take_along_axis(np.broadcast_to(grid, (draws, *grid.shape)), order, 2))
    each = [float(((permuted_shares[:, i] >= observed[i] - 1e-12).sum() + 1) / (draws + 1)) for i in range(len(grids))]
    combined = float(((permuted_shares.mean(axis=1) >= observed.mean() - 1e-12).sum() + 1) / (draws + 1))
    return each, combined
