"""Planted-effect synthetic multi-domain data: ground truth known, oracle AUC recorded in the spec.

The world (all of it derived from ``seed``; nothing per-entity is stored, so 10M+ ids cost no memory):

* ``items`` items in ``categories`` categories. Item ``i`` has category ``i % C`` and popularity rank
  ``i // C``; candidates and behaviours draw ranks from a Zipf law. Its latent vector
  ``v_i = normalise(mu_category + 0.5 eps_i)`` (``eps_i`` hashed from ``(seed, i)``), its brand is hashed.
* ``users`` users, each with two preferred categories, a latent interest
  ``u = normalise(mu_p1 + mu_p2 + 0.5 eps_u)``, a segment and an activity bucket (an *implicit domain
  feature* in the ADS sense).
* ``domains`` domains of unequal size (``domain_proportions``). Each row's behaviour sequence holds
  items that carry their own domain; the domain of behaviour ``t`` follows a Markov chain that stays
  in the previous behaviour's domain with probability ``domain_stickiness``.

The true logit of row ``(user u, domain d, candidate c, behaviours v_1..v_T in domains d_1..d_T)`` is

    z = b + s * delta_d + w_pop * popularity_c + alpha * <u, v_c> + beta * S
    S = sum_t omega_t * < M_{d,a} v_t + m_d ,  Q_d v_c + q_d >
    omega = softmax_t( s * G[d, d_t] + recency * t / T )

with ``s = domain_shift`` and three planted domain-specific mechanisms, each zero at ``s = 0``:

(a) a domain-specific transform of the items the user has seen, ``M_{d,a} = I + s (A_d + 0.5 A'_a)``
    (``a`` = the user's activity bucket) and bias ``m_d = s a_d`` — what ADS's PSRG claims to capture;
(b) a domain-specific candidate-to-behaviour relation, ``Q_d = I + s B_d``, ``q_d = s b_d`` — PCRG;
(c) a domain-specific re-weighting of behaviours by the behaviour's domain, ``G[d, d_t]`` — SFPNet.

``delta_d`` spreads the domains' base rates (scaled by ``s`` too, so that at ``s = 0`` the label
distribution given the features is identical in every domain; only the domains' sizes differ).
Labels are ``Bernoulli(sigmoid(z))``; the oracle AUC is the AUC of ``z`` itself against those labels,
computed per split and per domain from fine histograms (exact up to ties inside a bin of width 1e-4
in probability) and written to the spec. Rows are generated in chunks; memory does not grow with
``rows``.

Sessions (the ``session_id`` column, the key of S-GAUC): time is the row order — rows are generated
in order, the train split first, then valid, then test. Each user's rows, in that order, are cut into
sessions of ``session_length`` consecutive impressions (the user's 1st to L-th row form one session,
the (L+1)-th to 2L-th the next, ...); a session never spans two splits (a user's count is rounded up
to a multiple of L at each split's start), so a user's last session in a split may be shorter.
``session_id = ordinal * users + user`` where ``ordinal`` is the session's index among the user's
sessions: every session belongs to exactly one user. This needs one int64 counter per user
(:class:`SessionCounter`); sessions do not enter the true logit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from data_prep.common import SPLITS, OutputOptions, progress, writer_for
from data_prep.writer import list_array
from torchrec_mdr.config import ConfigError, bounds
from torchrec_mdr.data.spec import ColumnSpec, DatasetSpec

_HIST_BINS = 10_000
NUM_HOURS = 24
NUM_DEVICES = 3
NUM_SEGMENTS = 32
NUM_ACTIVITY = 5


@dataclass(kw_only=True)
class Options(OutputOptions):
    rows: int = field(default=200_000, metadata=bounds(ge=10, help="rows over all splits"))
    users: int = field(default=20_000, metadata=bounds(ge=1, help="distinct users"))
    items: int = field(default=200_000, metadata=bounds(ge=1, help="distinct items (10M+ costs no memory)"))
    categories: int = field(default=200, metadata=bounds(ge=2, help="item categories"))
    brands: int = field(default=2_000, metadata=bounds(ge=1, help="item brands"))
    domains: int = field(default=3, metadata=bounds(ge=1, help="number of domains"))
    domain_proportions: list[float] | None = field(
        default=None, metadata=bounds(gt=0, help="relative domain sizes (default: geometric, ratio 0.6)"))
    domain_shift: float = field(default=1.0, metadata=bounds(ge=0, help="strength of the planted domain "
                                                                         "effects; 0 = identical domains"))
    base_rate: float = field(default=0.15, metadata=bounds(gt=0, lt=1, help="mean positive rate"))
    base_rate_spread: float = field(default=1.0, metadata=bounds(ge=0, help="logit spread of the domains' "
                                                                            "base rates at domain_shift 1"))
    seq_length: int = field(default=50, metadata=bounds(ge=1, help="longest behaviour sequence"))
    min_seq_length: int = field(default=10, metadata=bounds(ge=0, help="shortest behaviour sequence"))
    domain_stickiness: float = field(default=0.7, metadata=bounds(ge=0, le=1, help="P(behaviour stays in the "
                                                                                 "previous behaviour's domain)"))
    zipf_exponent: float = field(default=1.1, metadata=bounds(gt=0, help="Zipf exponent of item popularity"))
    latent_dim: int = field(default=8, metadata=bounds(ge=2, help="dimension of the true latent vectors"))
    split_fractions: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1],
                                         metadata=bounds(ge=0, help="train / valid / test shares"))
    session_length: int = field(default=5, metadata=bounds(ge=1, help="impressions per session: each user's "
                                                                  "rows, in time order, cut into runs of this many"))
    chunk_rows: int = field(default=50_000, metadata=bounds(ge=1, help="rows generated per chunk"))
    seed: int = field(default=0, metadata=bounds(ge=0, help="world and sampling seed"))
    version: int = field(default=2, metadata=bounds(ge=1, le=2, help="generator version: 2 plants one separable "
                                                              "effect per mechanism (data_prep/planted_v2.py); "
                                                              "1 reproduces the first generator"))
    psrg_effect: float = field(default=1.0, metadata=bounds(ge=0, help="v2: (domain, activity) transform of the "
                                                                        "behaviours (ADS PSRG's target); 0 = off"))
    pcrg_effect: float = field(default=1.0, metadata=bounds(ge=0, help="v2: query by domain and position chunk "
                                                                        "(ADS PCRG's target); 0 = off"))
    sfpnet_effect: float = field(default=1.0, metadata=bounds(ge=0, help="v2: behaviours weighted by (row domain, "
                                                                          "behaviour domain) (SFPNet's target)"))
    dsbn_effect: float = field(default=1.0, metadata=bounds(ge=0, help="v2: per-domain shift and scale of the "
                                                                        "dense features (ADIN DSBN's target)"))
    se_effect: float = field(default=1.0, metadata=bounds(ge=0, help="v2: per-domain field relevance (ADIN's SE "
                                                                      "domain-interest layer's target)"))
    position_chunks: int = field(default=5, metadata=bounds(ge=1, help="v2: position chunks of the PCRG effect"))
    domain_item_share: float = field(default=0.5, metadata=bounds(ge=0, le=1, help="v2: share of behaviours whose "
                                                                                    "item is from the behaviour "
                                                                                    "domain's own categories"))

    def validate(self) -> None:
        if self.min_seq_length > self.seq_length:
            raise ConfigError(f"min_seq_length ({self.min_seq_length}) exceeds seq_length ({self.seq_length})")
        if len(self.split_fractions) != 3 or abs(sum(self.split_fractions) - 1) > 1e-6:
            raise ConfigError(f"split_fractions {self.split_fractions} must be three shares summing to 1")
        if self.domain_proportions is not None and len(self.domain_proportions) != self.domains:
            raise ConfigError(f"domain_proportions has {len(self.domain_proportions)} entries for "
                              f"{self.domains} domains")
        if self.items < self.categories:
            raise ConfigError(f"items ({self.items}) must be >= categories ({self.categories})")
        if self.version == 2 and self.categories < self.domains:
            raise ConfigError(f"categories ({self.categories}) must be >= domains ({self.domains}) for version 2")
        if self.version == 2 and self.position_chunks > self.seq_length:
            raise ConfigError(f"position_chunks ({self.position_chunks}) exceeds seq_length ({self.seq_length})")


# --------------------------------------------------------------------------- hashing


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _hash(ids: np.ndarray, salt: int) -> np.ndarray:
    return _splitmix64(np.asarray(ids, dtype=np.uint64) * np.uint64(0x100000001B3) + np.uint64(salt))


def _hash_uniform(ids: np.ndarray, salt: int) -> np.ndarray:
    """Uniform in (0, 1) per id, deterministic."""
    return ((_hash(ids, salt) >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)


def _hash_gaussian(ids: np.ndarray, salt: int, dim: int) -> np.ndarray:
    """[len(ids), dim] standard normal vectors, deterministic per id (Box-Muller on hashed uniforms)."""
    ids = np.asarray(ids, dtype=np.uint64)
    out = np.empty((len(ids), dim), dtype=np.float32)
    for j in range(dim):
        u1 = _hash_uniform(ids, salt + 2 * j + 1)
        u2 = _hash_uniform(ids, salt + 2 * j + 2)
        out[:, j] = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
    return out


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-6)


# --------------------------------------------------------------------------- the world


class World:
    """The fixed ground truth: category centres, domain matrices, sampling tables."""

    def __init__(self, o: Options) -> None:
        self.o = o
        rng = np.random.default_rng([o.seed, 1])
        k, d = o.latent_dim, o.domains
        s = o.domain_shift
        self.salt = o.seed * 1_000_003
        self.category_centres = rng.standard_normal((o.categories, k)).astype(np.float32)
        eye = np.eye(k, dtype=np.float32)
        scale = 1.0 / math.sqrt(k)
        domain_transform = rng.standard_normal((d, k, k)).astype(np.float32) * scale
        activity_transform = rng.standard_normal((NUM_ACTIVITY, k, k)).astype(np.float32) * scale
        # (a) M_{d,a} = I + s (A_d + 0.5 A'_a), m_d = s a_d          [d, activity, k, k], [d, k]
        self.item_transform = eye + s * (domain_transform[:, None] + 0.5 * activity_transform[None, :])
        self.item_bias = s * rng.standard_normal((d, k)).astype(np.float32) * 0.5
        # (b) Q_d = I + s B_d, q_d = s b_d                                       [d, k, k], [d, k]
        self.query_transform = eye + s * rng.standard_normal((d, k, k)).astype(np.float32) * scale
        self.query_bias = s * rng.standard_normal((d, k)).astype(np.float32) * 0.5
        # (c) behaviour-domain affinity G[d, d_t]                                         [d, d]
        self.behaviour_affinity = s * rng.standard_normal((d, d)).astype(np.float32) * 1.5
        spread = np.linspace(-0.5, 0.5, d) if d > 1 else np.zeros(1)
        self.intercept = (math.log(o.base_rate / (1 - o.base_rate)) - 1.0
                          + s * o.base_rate_spread * rng.permutation(spread))
        proportions = np.asarray(o.domain_proportions or [0.6 ** i for i in range(d)], dtype=np.float64)
        self.domain_p = proportions / proportions.sum()
        self.items_per_category = max(o.items // o.categories, 1)
        ranks = np.arange(1, self.items_per_category + 1, dtype=np.float64)
        zipf = ranks ** -o.zipf_exponent
        self.rank_cdf = np.cumsum(zipf / zipf.sum())
        self.alpha, self.beta, self.w_pop, self.recency = 1.5, 3.0, 0.3, 1.0

    # entities ---------------------------------------------------------------------------
    def item_vectors(self, items: np.ndarray) -> np.ndarray:
        unique, inverse = np.unique(items, return_inverse=True)
        centre = self.category_centres[unique % self.o.categories]
        vectors = _normalise(centre + 0.5 * _hash_gaussian(unique, self.salt + 101, self.o.latent_dim))
        return vectors[inverse.reshape(items.shape)]

    def user_preferences(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c = self.o.categories
        first = (_hash(users, self.salt + 7) % np.uint64(c)).astype(np.int64)
        second = (_hash(users, self.salt + 8) % np.uint64(c)).astype(np.int64)
        return first, second

    def user_vectors(self, users: np.ndarray) -> np.ndarray:
        first, second = self.user_preferences(users)
        noise = _hash_gaussian(users, self.salt + 301, self.o.latent_dim)
        return _normalise(self.category_centres[first] + self.category_centres[second] + 0.5 * noise)

    def user_activity(self, users: np.ndarray) -> np.ndarray:
        """Activity bucket 0..4 (skewed: most users are light)."""
        u = _hash_uniform(users, self.salt + 9)
        return np.minimum((u ** 2 * NUM_ACTIVITY).astype(np.int64), NUM_ACTIVITY - 1)

    # sampling ---------------------------------------------------------------------------
    def sample_items(self, rng: np.random.Generator, users: np.ndarray, shape: tuple[int, ...],
                     p_preferred: float) -> np.ndarray:
        """Items for ``users`` (broadcast over ``shape``): a preferred category w.p. ``p_preferred``."""
        first, second = self.user_preferences(users)
        first = np.broadcast_to(first.reshape(-1, *([1] * (len(shape) - 1))), shape)
        second = np.broadcast_to(second.reshape(-1, *([1] * (len(shape) - 1))), shape)
        pick = rng.random(shape)
        category = np.where(pick < p_preferred / 2, first,
                            np.where(pick < p_preferred, second, rng.integers(0, self.o.categories, shape)))
        rank = np.minimum(np.searchsorted(self.rank_cdf, rng.random(shape)), self.items_per_category - 1)
        return np.minimum(rank * self.o.categories + category, self.o.items - 1)


def histogram_auc(positives: np.ndarray, negatives: np.ndarray) -> float:
    """AUC from per-bin positive and negative counts of a score (bins in increasing score order)."""
    pos, neg = positives.astype(np.float64), negatives.astype(np.float64)
    total_pos, total_neg = pos.sum(), neg.sum()
    if total_pos == 0 or total_neg == 0:
        return float("nan")
    negatives_below = np.cumsum(neg) - neg
    return float((pos * (negatives_below + 0.5 * neg)).sum() / (total_pos * total_neg))


# --------------------------------------------------------------------------- generation


def columns(o: Options) -> list[ColumnSpec]:
    length = o.seq_length
    return [
        ColumnSpec("click", "label", description="Bernoulli(sigmoid(true logit))"),
        ColumnSpec("domain", "domain"),
        ColumnSpec("group_id", "group", description="user id, for GAUC"),
        ColumnSpec("session_id", "session", description=f"runs of {o.session_length} consecutive impressions "
                                                           "of one user, for S-GAUC"),
        ColumnSpec("user_id", "id", table="user", cardinality=o.users, oov="reject"),
        ColumnSpec("item_id", "id", table="item", cardinality=o.items, oov="reject"),
        ColumnSpec("category_id", "id", table="category", cardinality=o.categories, oov="reject"),
        ColumnSpec("brand_id", "id", table="brand", cardinality=o.brands, oov="reject"),
        ColumnSpec("user_segment", "id", cardinality=NUM_SEGMENTS, oov="reject"),
        ColumnSpec("user_activity", "id", cardinality=NUM_ACTIVITY, oov="reject",
                   description="activity bucket: an implicit domain feature (ADS)"),
        ColumnSpec("hour", "id", cardinality=NUM_HOURS, oov="reject"),
        ColumnSpec("device", "id", cardinality=NUM_DEVICES, oov="reject"),
        ColumnSpec("hist_item_id", "sequence", table="item", cardinality=o.items, oov="reject",
                   sequence_group="hist", max_length=length),
        ColumnSpec("hist_domain", "sequence", table="hist_domain", cardinality=o.domains, oov="reject",
                   sequence_group="hist", max_length=length, description="domain the behaviour happened in"),
        ColumnSpec("item_popularity", "dense", description="-log(popularity rank) scaled to ~[0, 1]"),
        ColumnSpec("user_activity_level", "dense", description="activity bucket / 4 plus noise"),
        ColumnSpec("price", "dense", description="log price (hashed per item), standardised"),
        ColumnSpec("noise", "dense", description="irrelevant feature"),
    ]


class SessionCounter:
    """Session ids of a stream of impressions (the rule of the module docstring).

    Holds, per user, the number of impressions seen so far; :meth:`assign` numbers the rows of a
    chunk in row order, :meth:`start_split` closes every open session.
    """

    def __init__(self, users: int, session_length: int) -> None:
        self.users = users
        self.length = session_length
        self.seen = np.zeros(users, dtype=np.int64)

    def start_split(self) -> None:
        """Round every user's count up to a multiple of the session length: no session spans two splits."""
        self.seen = -(-self.seen // self.length) * self.length

    def assign(self, users: np.ndarray) -> np.ndarray:
        """int64 session ids of rows of ``users`` (in time order), continuing from earlier chunks."""
        users = np.asarray(users, dtype=np.int64)
        order = np.argsort(users, kind="stable")  # row order kept within each user
        sorted_users = users[order]
        starts = np.r_[True, sorted_users[1:] != sorted_users[:-1]] if users.size else np.zeros(0, dtype=bool)
        first = np.flatnonzero(starts)
        occurrence = np.empty_like(users)
        occurrence[order] = np.arange(users.size) - first[np.cumsum(starts) - 1]  # earlier rows of the user here
        ordinal = (self.seen[users] + occurrence) // self.length
        self.seen[sorted_users[first]] += np.diff(np.r_[first, users.size])
        return ordinal * self.users + users


def generate_chunk(world: World, rng: np.random.Generator, rows: int) -> tuple[dict[str, object], np.ndarray]:
    """One chunk of rows as writer columns (all but ``session_id``, which continues from earlier
    chunks: :class:`SessionCounter`), and its true logits [rows]."""
    o = world.o
    users = rng.integers(0, o.users, rows)
    domains = rng.choice(o.domains, size=rows, p=world.domain_p)
    activity = world.user_activity(users)
    candidates = world.sample_items(rng, users, (rows,), p_preferred=0.5)
    lengths = rng.integers(o.min_seq_length, o.seq_length + 1, rows)
    mask = np.arange(o.seq_length)[None, :] < lengths[:, None]  # [rows, T] valid positions (oldest first)
    behaviours = world.sample_items(rng, users, (rows, o.seq_length), p_preferred=0.7)
    behaviour_domains = np.empty((rows, o.seq_length), dtype=np.int64)
    behaviour_domains[:, 0] = rng.choice(o.domains, size=rows, p=world.domain_p)
    fresh = rng.choice(o.domains, size=(rows, o.seq_length), p=world.domain_p)
    stay = rng.random((rows, o.seq_length)) < o.domain_stickiness
    for t in range(1, o.seq_length):
        behaviour_domains[:, t] = np.where(stay[:, t], behaviour_domains[:, t - 1], fresh[:, t])

    # True logit.
    v_c = world.item_vectors(candidates)                                  # [R, k]
    v_t = world.item_vectors(behaviours)                                  # [R, T, k]
    u = world.user_vectors(users)                                         # [R, k]
    query = np.einsum("rij,rj->ri", world.query_transform[domains], v_c) + world.query_bias[domains]
    transform = world.item_transform[domains, activity]                   # [R, k, k]
    projected = np.einsum("rji,rj->ri", transform, query)                 # M^T (Q v_c + q)
    relevance = np.einsum("rtk,rk->rt", v_t, projected) + (world.item_bias[domains] * query).sum(-1)[:, None]
    # Behaviours are left-aligned here (oldest first): position t of a row is its (t+1)-th oldest one.
    position = np.arange(o.seq_length)[None, :] / np.maximum(lengths[:, None], 1)
    scores = world.behaviour_affinity[domains[:, None], behaviour_domains] + world.recency * position
    scores = np.where(mask, scores, -np.inf)
    row_max = np.where(lengths[:, None] > 0, scores.max(axis=1, keepdims=True), 0.0)  # empty rows: -inf
    weights = np.exp(scores - row_max)
    weights = np.where(mask, weights, 0.0)
    weights /= np.maximum(weights.sum(axis=1, keepdims=True), 1e-12)
    sequence_term = (weights * relevance).sum(axis=1) * (lengths > 0)
    popularity_rank = candidates // o.categories
    item_popularity = 1.0 - np.log1p(popularity_rank) / math.log1p(world.items_per_category)
    logit = (world.intercept[domains] + world.w_pop * item_popularity
             + world.alpha * (u * v_c).sum(-1) + world.beta * sequence_term)
    labels = (rng.random(rows) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int8)

    offsets = np.zeros(rows + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    chunk = {
        "click": labels,
        "domain": domains,
        "group_id": users,
        "user_id": users,
        "item_id": candidates,
        "category_id": candidates % o.categories,
        "brand_id": (_hash(candidates, world.salt + 11) % np.uint64(o.brands)).astype(np.int64),
        "user_segment": world.user_preferences(users)[0] % NUM_SEGMENTS,
        "user_activity": activity,
        "hour": rng.integers(0, NUM_HOURS, rows),
        "device": rng.choice(NUM_DEVICES, size=rows, p=[0.6, 0.3, 0.1]),
        "hist_item_id": list_array(offsets, behaviours[mask]),
        "hist_domain": list_array(offsets, behaviour_domains[mask]),
        "item_popularity": item_popularity.astype(np.float32),
        "user_activity_level": (activity / (NUM_ACTIVITY - 1) + 0.1 * rng.standard_normal(rows)).astype(np.float32),
        "price": (_hash_gaussian(candidates, world.salt + 13, 1)[:, 0]).astype(np.float32),
        "noise": rng.standard_normal(rows).astype(np.float32),
    }
    return chunk, logit


class _Histograms:
    """Per-domain histograms of ``sigmoid(score)`` by label, for exact-to-1e-4 AUCs of several scores."""

    def __init__(self, names: list[str], domains: int) -> None:
        self.positives = {n: np.zeros((domains, _HIST_BINS), dtype=np.int64) for n in names}
        self.negatives = {n: np.zeros((domains, _HIST_BINS), dtype=np.int64) for n in names}

    def add(self, scores: dict[str, np.ndarray], domains: np.ndarray, labels: np.ndarray) -> None:
        label = labels.astype(bool)
        for name in self.positives:
            probability_bin = np.minimum((_HIST_BINS / (1.0 + np.exp(-scores[name]))).astype(np.int64), _HIST_BINS - 1)
            flat = domains * _HIST_BINS + probability_bin
            shape = self.positives[name].shape
            self.positives[name] += np.bincount(flat[label], minlength=shape[0] * shape[1]).reshape(shape)
            self.negatives[name] += np.bincount(flat[~label], minlength=shape[0] * shape[1]).reshape(shape)

    def aucs(self, name: str, domain_names: list[str]) -> dict[str, float]:
        pos, neg = self.positives[name], self.negatives[name]
        out = {"all": histogram_auc(pos.sum(0), neg.sum(0))}
        out.update({n: histogram_auc(pos[d], neg[d]) for d, n in enumerate(domain_names)})
        return out


def convert(options: Options) -> DatasetSpec:
    """Generate the dataset chunk by chunk and write it with its oracle AUCs (and, v2, its ceilings)."""
    from data_prep import planted_v2

    o = options
    v2 = o.version == 2
    world = planted_v2.WorldV2(o) if v2 else World(o)
    rng = np.random.default_rng([o.seed, 2])
    cuts = np.cumsum(np.round(np.asarray(o.split_fractions) * o.rows).astype(np.int64))
    cuts[-1] = o.rows
    split_ranges = dict(zip(SPLITS, zip(np.concatenate([[0], cuts[:-1]]), cuts)))
    domain_names = [f"domain{d}" for d in range(o.domains)]
    sessions = SessionCounter(o.users, o.session_length)
    source = (f"synthetic planted-effect generator v{o.version}: rows={o.rows} users={o.users} items={o.items} "
              f"domains={o.domains} domain_shift={o.domain_shift} seq_length={o.seq_length} seed={o.seed}")
    notes = {"generator": "data_prep.planted_v2" if v2 else "data_prep.synthetic",
             "options": repr({k: v for k, v in vars(o).items() if k not in ("out", "overwrite")}),
             "domain_proportions": repr(world.domain_p.round(4).tolist()),
             "sessions": (f"each user's rows in time (row) order cut into runs of {o.session_length}; "
                          "no session spans two splits; session_id = ordinal * users + user"
                          + ("; a session's rows share one domain" if v2 else ""))}
    if v2:
        notes["target_rates"] = repr(world.target_rate.round(4).tolist())
        notes["effects"] = repr({m: round(float(v), 4) for m, v in world.strength.items()})
    names = ["oracle", *planted_v2.CEILINGS] if v2 else ["oracle"]
    with writer_for(o, name="synthetic", columns=columns(o), domain_names=domain_names, source=source,
                    notes=notes) as writer, progress(o.rows, "synthetic", unit="rows") as bar:
        for split, (start, stop) in split_ranges.items():
            histograms = _Histograms(names, o.domains)
            sessions.start_split()
            for chunk_start in range(int(start), int(stop), o.chunk_rows):
                rows = min(o.chunk_rows, int(stop) - chunk_start)
                if v2:
                    chunk, scores = planted_v2.generate_chunk(world, rng, rows, sessions)
                else:
                    chunk, logit = generate_chunk(world, rng, rows)
                    chunk["session_id"] = sessions.assign(chunk["user_id"])
                    scores = {"oracle": logit}
                writer.write(split, chunk)
                histograms.add(scores, chunk["domain"], chunk["click"])
                bar.update(rows)
            writer.set_oracle_auc(split, histograms.aucs("oracle", domain_names))
            if v2:
                writer.set_ceilings(split, {n: histograms.aucs(n, domain_names) for n in planted_v2.CEILINGS})
        return writer.close()
