"""Generator v2 of the planted-effect data: one zero-able knob per seed mechanism, centred base rates,
sessions within one domain, and the ceilings that say how much of each gap a model closed.

Version 1 (:mod:`data_prep.synthetic`) could not separate the mechanisms: its per-row query
transform ``Q_d`` is absorbed on the key side (the score is bilinear), behaviour items did not depend
on the behaviour's domain (re-weighting by domain only reshuffled noise), and a large accidental
domain constant made overall AUC measure domain separation. Version 2 keeps v1's world (items,
users, activity buckets, Zipf popularity, Markov behaviour domains) and plants, each scaled by its own
knob times ``domain_shift`` (``s_x = effect_x * domain_shift``; 0 removes the effect):

    z = c_d + w_pop pop_c + alpha <u, v_c> + w_price price_c + sum_f R[d, f] w_f e_f(x_f) + beta S
    S = sum_t omega_t < M_{d,a} v_t , Q_{d, g(t)} v_c >
    omega = softmax_t( recency * t / len + s_sfpnet * G[d, d_t] )

(a) **psrg** — ``M_{d,a} = I + s_psrg A_{d,a} / sqrt(k)``: one random transform per (domain, user
    activity bucket) pair of the behaviours the user has seen (ADS's PSRG generates a per-sample
    transform of the behaviours from the domain features; ``user_activity`` is the implicit one).
(b) **pcrg** — ``Q_{d,g} = I + s_pcrg B_{d,g} / sqrt(k)``: the candidate-to-behaviour relation differs by
    domain AND by the behaviour's recency chunk ``g(t) = floor(r_t * position_chunks / seq_length)``
    (``r_t`` = the behaviour's recency rank, 0 = the newest, as ADS's PCRG numbers its query slots:
    :mod:`torchrec_mdr.models.ads`). A per-sample key transform (PSRG) applies one map to every
    position and cannot fit this; per-position queries (PCRG) can.
(c) **sfpnet** — behaviours are re-weighted by ``G[d, d_t]`` (row domain, behaviour domain), and a
    behaviour's item depends on its domain: with probability ``domain_item_share`` its category is one
    of the behaviour domain's own categories (``category % domains == d_t``), so which domains a model
    attends to changes which items it sees.
(d) **dsbn** — every dense feature is observed shifted and scaled per domain,
    ``x_obs = s_dsbn mu_{d,j} + exp(s_dsbn rho_{d,j}) x_true``, while the logit uses ``x_true``
    (price and popularity carry an effect): a per-domain normalisation recovers ``x_true``.
(e) **se** — per-domain field relevance: the categorical fields ``hour``, ``device``, ``user_segment``,
    ``brand_id`` carry hashed per-value effects ``e_f`` weighted by ``R[d, f] = 1 + s_se (2 m_{d,f} - 1)``,
    ``m_{d,f}`` a random 0/1 mask (each field on in at least one domain): at ``s_se = 1`` a field
    matters twice as much in some domains and not at all in the others (the SE domain-interest
    layer's target).

**Centred base rates.** ``c_d`` is solved (bisection on a 20,000-row calibration sample of the world,
every row evaluated as a row of domain ``d``)
so that each domain's mean ``sigmoid(z)`` equals its configured rate ``sigmoid(logit(base_rate) +
domain_shift * base_rate_spread * spread_d)`` with ``spread_d`` evenly spaced in [-0.5, 0.5]: the
realised rates match the configured ones to within sampling noise, and the domain constant alone is
worth little AUC.

**Sessions** stay within one domain: a row's domain is drawn from the domain proportions by a hash of
its session id, so every impression of a session is in one domain.

**Ceilings** (per split, overall and per domain, written to the spec beside the oracle AUC): the AUC of
the labels against the true logit with one mechanism's effect removed — ``without_psrg``,
``without_pcrg``, ``without_sfpnet``, ``without_se`` (knob set to 0, same draws) and ``without_dsbn``
(price and popularity terms replaced by the best single linear function of the *observed* feature
pooled over domains, i.e. what a model without per-domain normalisation can do with it linearly) —
``main`` (every mechanism removed at once) and ``domain_only`` (``c_d`` alone). The gap
``oracle - without_x`` is what mechanism x's effect is worth to an oracle.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from data_prep.synthetic_world import (
    NUM_ACTIVITY,
    NUM_DEVICES,
    NUM_HOURS,
    NUM_SEGMENTS,
    Options,
    SessionCounter,
    World,
    _hash,
    _hash_gaussian,
    _hash_uniform,
)
from data_prep.writer import list_array

MECHANISMS: tuple[str, ...] = ("psrg", "pcrg", "sfpnet", "dsbn", "se")
FIELDS: tuple[str, ...] = ("hour", "device", "user_segment", "brand_id")
DENSE: tuple[str, ...] = ("item_popularity", "user_activity_level", "price", "noise")
CEILINGS: tuple[str, ...] = tuple(f"without_{m}" for m in MECHANISMS) + ("main", "domain_only")
_CALIBRATION_ROWS = 20_000


class WorldV2(World):
    """v1's world plus the v2 mechanisms' parameters and the centred intercepts."""

    def __init__(self, o: Options) -> None:
        super().__init__(o)
        rng = np.random.default_rng([o.seed, 11])
        k, d, c = o.latent_dim, o.domains, o.position_chunks
        scale = 1.0 / math.sqrt(k)
        self.strength = {m: getattr(o, f"{m}_effect") * o.domain_shift for m in MECHANISMS}
        eye = np.eye(k, dtype=np.float32)
        self.psrg_delta = rng.standard_normal((d, NUM_ACTIVITY, k, k)).astype(np.float32) * scale  # A_{d,a}
        self.pcrg_delta = rng.standard_normal((d, c, k, k)).astype(np.float32) * scale  # B_{d,g}
        self.affinity = rng.standard_normal((d, d)).astype(np.float32) * 2.5  # G
        self.dense_shift = rng.standard_normal((d, len(DENSE))) * 1.5  # mu_{d,j}
        self.dense_log_scale = rng.standard_normal((d, len(DENSE))) * 0.5  # rho_{d,j}
        mask = rng.random((d, len(FIELDS))) < 0.5
        mask[rng.integers(0, d, len(FIELDS)), np.arange(len(FIELDS))] = True  # each field on somewhere
        self.field_mask = mask
        self.field_weight = 0.35
        self.price_weight = -0.8
        self.identity = eye
        self.behaviour_share = o.domain_item_share
        self.home_categories = [np.flatnonzero(np.arange(o.categories) % d == dom) for dom in range(d)]
        spread = np.linspace(-0.5, 0.5, d) if d > 1 else np.zeros(1)
        target = math.log(
            o.base_rate / (1 - o.base_rate)
        ) + o.domain_shift * o.base_rate_spread * np.random.default_rng([o.seed, 12]).permutation(spread)
        self.target_rate = 1.0 / (1.0 + np.exp(-target))
        self.intercept = np.zeros(d)
        self._calibrate()

    # parameters under a knob setting -------------------------------------------------------
    def item_transform_v2(self, s: float) -> np.ndarray:
        return self.identity + s * self.psrg_delta  # [d, activity, k, k]

    def query_transform_v2(self, s: float) -> np.ndarray:
        return self.identity + s * self.pcrg_delta  # [d, chunks, k, k]

    def field_relevance(self, s: float) -> np.ndarray:
        return 1.0 + s * (2.0 * self.field_mask - 1.0)  # [d, fields]

    def observe_dense(self, true: np.ndarray, domains: np.ndarray) -> np.ndarray:
        """[R, 4] observed dense features from the true ones (the dsbn effect)."""
        s = self.strength["dsbn"]
        return s * self.dense_shift[domains] + np.exp(s * self.dense_log_scale[domains]) * true

    def pooled_linear(self, j: int) -> tuple[float, float]:
        """Slope and intercept of the best single linear predictor of true feature ``j`` from its observed
        value pooled over domains (true ~ mean m, variance v, independent of the domain)."""
        s, p = self.strength["dsbn"], self.domain_p
        mean, var = self._dense_moments[j]
        shift, gain = s * self.dense_shift[:, j], np.exp(s * self.dense_log_scale[:, j])
        obs_mean = float((p * (shift + gain * mean)).sum())
        obs_second = float((p * ((shift + gain * mean) ** 2 + gain**2 * var)).sum())
        cross = float((p * (shift + gain * mean) * mean + p * gain * var).sum())  # E[obs * true]
        slope = (cross - obs_mean * mean) / max(obs_second - obs_mean**2, 1e-12)
        return slope, mean - slope * obs_mean

    # calibration ---------------------------------------------------------------------------
    def _calibrate(self) -> None:
        rng = np.random.default_rng([self.o.seed, 13])
        users = rng.integers(0, self.o.users, _CALIBRATION_ROWS)
        domains = rng.choice(self.o.domains, size=_CALIBRATION_ROWS, p=self.domain_p)
        draw = draw_rows(self, rng, users, domains)
        self._dense_moments = [(float(x.mean()), float(x.var())) for x in draw["dense_true"].T]
        for dom in range(self.o.domains):
            # every calibration row evaluated as a row of this domain: no sampling noise between domains
            as_domain = {**draw, "domains": np.full_like(domains, dom)}
            z = logits(self, as_domain, ceilings=False)["oracle"]  # the intercept is still 0 here
            low, high = -20.0, 20.0
            for _ in range(60):
                mid = 0.5 * (low + high)
                low, high = (
                    (mid, high) if (1.0 / (1.0 + np.exp(-(z + mid)))).mean() < self.target_rate[dom] else (low, mid)
                )
            self.intercept[dom] = 0.5 * (low + high)


def _home_items(world: WorldV2, rng: np.random.Generator, domains: np.ndarray) -> np.ndarray:
    """Items of the given domains' own categories (any shape), Zipf ranks."""
    o = world.o
    category = np.empty(domains.shape, dtype=np.int64)
    for dom, home in enumerate(world.home_categories):
        where = domains == dom
        category[where] = home[rng.integers(0, len(home), int(where.sum()))]
    rank = np.minimum(np.searchsorted(world.rank_cdf, rng.random(domains.shape)), world.items_per_category - 1)
    return np.minimum(world.rank_index(rank) * o.categories + category, world.items - 1)


def draw_rows(world: WorldV2, rng: np.random.Generator, users: np.ndarray, domains: np.ndarray) -> dict:
    """Every random quantity of the rows ``(users, domains)`` (the labels excepted)."""
    o = world.o
    rows, length = len(users), o.seq_length
    candidates = world.sample_items(rng, users, (rows,), p_preferred=0.5)
    lengths = rng.integers(o.min_seq_length, length + 1, rows)
    behaviour_domains = np.empty((rows, length), dtype=np.int64)
    behaviour_domains[:, 0] = rng.choice(o.domains, size=rows, p=world.domain_p)
    fresh = rng.choice(o.domains, size=(rows, length), p=world.domain_p)
    stay = rng.random((rows, length)) < o.domain_stickiness
    for t in range(1, length):
        behaviour_domains[:, t] = np.where(stay[:, t], behaviour_domains[:, t - 1], fresh[:, t])
    behaviours = world.sample_items(rng, users, (rows, length), p_preferred=0.7)
    home = rng.random((rows, length)) < world.behaviour_share
    behaviours = np.where(home, _home_items(world, rng, behaviour_domains), behaviours)
    popularity_rank = world.popularity_rank(candidates)
    activity = world.user_activity(users)
    dense_true = np.stack(
        [
            1.0 - np.log1p(popularity_rank) / math.log1p(world.items_per_category),
            activity / (NUM_ACTIVITY - 1) + 0.1 * rng.standard_normal(rows),
            _hash_gaussian(candidates, world.salt + 13, 1)[:, 0],
            rng.standard_normal(rows),
        ],
        axis=1,
    )
    fields = {
        "hour": rng.integers(0, NUM_HOURS, rows),
        "device": rng.choice(NUM_DEVICES, size=rows, p=[0.6, 0.3, 0.1]),
        "user_segment": world.user_preferences(users)[0] % NUM_SEGMENTS,
        "brand_id": (_hash(candidates, world.salt + 11) % np.uint64(o.brands)).astype(np.int64),
    }
    return {
        "users": users,
        "domains": domains,
        "activity": activity,
        "candidates": candidates,
        "lengths": lengths,
        "behaviours": behaviours,
        "behaviour_domains": behaviour_domains,
        "dense_true": dense_true,
        "fields": fields,
    }


def relevance(world: WorldV2, draw: dict, psrg: float, pcrg: float) -> np.ndarray:
    """``<M_{d,a} v_t, Q_{d,g(t)} v_c>`` of every behaviour slot [R, T] (padding slots included)."""
    o = world.o
    domains, lengths = draw["domains"], draw["lengths"]
    v_c = world.item_vectors(draw["candidates"])  # [R, k]
    v_t = world.item_vectors(draw["behaviours"])  # [R, T, k]
    keys = np.einsum("rij,rtj->rti", world.item_transform_v2(psrg)[domains, draw["activity"]], v_t)
    queries = np.einsum("rgij,rj->rgi", world.query_transform_v2(pcrg)[domains], v_c)  # [R, chunks, k]
    recency = np.maximum(lengths[:, None] - 1 - np.arange(o.seq_length)[None, :], 0)  # [R, T], 0 = newest
    chunk = recency * o.position_chunks // o.seq_length  # [R, T]
    return np.einsum("rtk,rtk->rt", keys, queries[np.arange(len(lengths))[:, None], chunk])


def _sequence_term(world: WorldV2, draw: dict, psrg: float, pcrg: float, sfpnet: float) -> np.ndarray:
    o = world.o
    domains, lengths = draw["domains"], draw["lengths"]
    mask = np.arange(o.seq_length)[None, :] < lengths[:, None]  # [R, T]
    position = np.arange(o.seq_length)[None, :] / np.maximum(lengths[:, None], 1)
    scores = sfpnet * world.affinity[domains[:, None], draw["behaviour_domains"]] + world.recency * position
    scores = np.where(mask, scores, -np.inf)
    row_max = np.where(lengths[:, None] > 0, scores.max(axis=1, keepdims=True), 0.0)
    weights = np.where(mask, np.exp(scores - row_max), 0.0)
    weights /= np.maximum(weights.sum(axis=1, keepdims=True), 1e-12)
    return (weights * relevance(world, draw, psrg, pcrg)).sum(axis=1) * (lengths > 0)


def logits(world: WorldV2, draw: dict, ceilings: bool = True) -> dict[str, np.ndarray]:
    """The true logit (``oracle``) and (``ceilings``) every ceiling's logit of the rows in ``draw``."""
    s = world.strength
    domains = draw["domains"]
    u = world.user_vectors(draw["users"])
    v_c = world.item_vectors(draw["candidates"])
    dense = draw["dense_true"]
    intercept = world.intercept[domains]
    affinity = world.alpha * (u * v_c).sum(-1)

    def dense_term(x: np.ndarray) -> np.ndarray:
        return world.w_pop * x[:, 0] + world.price_weight * x[:, 2]

    effects = np.stack(
        [
            world.field_weight * _hash_gaussian(draw["fields"][f], world.salt + 501 + 17 * i, 1)[:, 0]
            for i, f in enumerate(FIELDS)
        ],
        axis=1,
    )  # [R, fields]

    def field_term(strength: float) -> np.ndarray:
        return (world.field_relevance(strength)[domains] * effects).sum(1)

    def sequence(**off: float) -> np.ndarray:
        knobs = {m: s[m] for m in ("psrg", "pcrg", "sfpnet")}
        knobs.update(off)
        return world.beta * _sequence_term(world, draw, **knobs)

    base = intercept + affinity
    full_sequence = sequence()
    oracle = base + dense_term(dense) + field_term(s["se"]) + full_sequence
    if not ceilings:
        return {"oracle": oracle}
    observed = world.observe_dense(dense, domains)
    pooled = dense.copy()
    for j in (0, 2):  # the features with an effect, as a pooled linear function of what is observed
        slope, offset = world.pooled_linear(j)
        pooled[:, j] = slope * observed[:, j] + offset
    out = {
        "oracle": oracle,
        "without_psrg": base + dense_term(dense) + field_term(s["se"]) + sequence(psrg=0.0),
        "without_pcrg": base + dense_term(dense) + field_term(s["se"]) + sequence(pcrg=0.0),
        "without_sfpnet": base + dense_term(dense) + field_term(s["se"]) + sequence(sfpnet=0.0),
        "without_dsbn": base + dense_term(pooled) + field_term(s["se"]) + full_sequence,
        "without_se": base + dense_term(dense) + field_term(0.0) + full_sequence,
        "main": base + dense_term(pooled) + field_term(0.0) + sequence(psrg=0.0, pcrg=0.0, sfpnet=0.0),
        "domain_only": intercept.astype(np.float64),
    }
    return out


def session_domains(world: WorldV2, session_ids: np.ndarray) -> np.ndarray:
    """Each row's domain, drawn from the domain proportions by a hash of its session (sessions stay in
    one domain)."""
    u = _hash_uniform(session_ids, world.salt + 23)
    return np.minimum(np.searchsorted(np.cumsum(world.domain_p), u), world.o.domains - 1)


def generate_chunk(
    world: WorldV2, rng: np.random.Generator, rows: int, sessions: SessionCounter
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """One chunk of rows as writer columns (``session_id`` included) and its logits per ceiling."""
    o = world.o
    users = rng.integers(0, o.users, rows)
    session_ids = sessions.assign(users)
    domains = session_domains(world, session_ids)
    draw = draw_rows(world, rng, users, domains)
    z = logits(world, draw)
    labels = (rng.random(rows) < 1.0 / (1.0 + np.exp(-z["oracle"]))).astype(np.int8)
    lengths = draw["lengths"]
    mask = np.arange(o.seq_length)[None, :] < lengths[:, None]
    offsets = np.zeros(rows + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    observed = world.observe_dense(draw["dense_true"], domains).astype(np.float32)
    candidates = draw["candidates"]
    chunk = {
        "click": labels,
        "domain": domains,
        "group_id": users,
        "session_id": session_ids,
        "user_id": users,
        "item_id": candidates,
        "category_id": candidates % o.categories,
        **draw["fields"],
        "user_activity": draw["activity"],
        "hist_item_id": list_array(offsets, draw["behaviours"][mask]),
        "hist_domain": list_array(offsets, draw["behaviour_domains"][mask]),
        **{name: observed[:, j] for j, name in enumerate(DENSE)},
    }
    return chunk, z
