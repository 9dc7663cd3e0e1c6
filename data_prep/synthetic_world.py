"""The planted-effect generator's world and options (version 1's true logit; version 2 in
:mod:`data_prep.planted_v2` builds on this world). Generation and writing: :mod:`data_prep.synthetic`.

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

from data_prep.common import OutputOptions
from torchrec_mdr.config import ConfigError, bounds

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
        default=None, metadata=bounds(gt=0, help="relative domain sizes (default: geometric, ratio 0.6)")
    )
    domain_shift: float = field(
        default=1.0, metadata=bounds(ge=0, help="strength of the planted domain effects; 0 = identical domains")
    )
    base_rate: float = field(default=0.15, metadata=bounds(gt=0, lt=1, help="mean positive rate"))
    base_rate_spread: float = field(
        default=1.0, metadata=bounds(ge=0, help="logit spread of the domains' base rates at domain_shift 1")
    )
    seq_length: int = field(default=50, metadata=bounds(ge=1, help="longest behaviour sequence"))
    min_seq_length: int = field(default=10, metadata=bounds(ge=0, help="shortest behaviour sequence"))
    domain_stickiness: float = field(
        default=0.7, metadata=bounds(ge=0, le=1, help="P(behaviour stays in the previous behaviour's domain)")
    )
    zipf_exponent: float = field(default=1.1, metadata=bounds(gt=0, help="Zipf exponent of item popularity"))
    latent_dim: int = field(default=8, metadata=bounds(ge=2, help="dimension of the true latent vectors"))
    split_fractions: list[float] = field(
        default_factory=lambda: [0.8, 0.1, 0.1], metadata=bounds(ge=0, help="train / valid / test shares")
    )
    session_length: int = field(
        default=5,
        metadata=bounds(
            ge=1, help="impressions per session: each user's rows, in time order, cut into runs of this many"
        ),
    )
    chunk_rows: int = field(default=50_000, metadata=bounds(ge=1, help="rows generated per chunk"))
    seed: int = field(default=0, metadata=bounds(ge=0, help="world and sampling seed"))
    version: int = field(
        default=2,
        metadata=bounds(
            ge=1,
            le=2,
            help="generator version: 2 plants one separable "
            "effect per mechanism (data_prep/planted_v2.py); "
            "1 reproduces the first generator",
        ),
    )
    psrg_effect: float = field(
        default=1.0,
        metadata=bounds(ge=0, help="v2: (domain, activity) transform of the behaviours (ADS PSRG's target); 0 = off"),
    )
    pcrg_effect: float = field(
        default=1.0, metadata=bounds(ge=0, help="v2: query by domain and position chunk (ADS PCRG's target); 0 = off")
    )
    sfpnet_effect: float = field(
        default=1.0,
        metadata=bounds(ge=0, help="v2: behaviours weighted by (row domain, behaviour domain) (SFPNet's target)"),
    )
    dsbn_effect: float = field(
        default=1.0,
        metadata=bounds(ge=0, help="v2: per-domain shift and scale of the dense features (ADIN DSBN's target)"),
    )
    se_effect: float = field(
        default=1.0,
        metadata=bounds(ge=0, help="v2: per-domain field relevance (ADIN's SE domain-interest layer's target)"),
    )
    position_chunks: int = field(default=5, metadata=bounds(ge=1, help="v2: position chunks of the PCRG effect"))
    domain_item_share: float = field(
        default=0.5,
        metadata=bounds(
            ge=0, le=1, help="v2: share of behaviours whose item is from the behaviour domain's own categories"
        ),
    )
    day: int = field(
        default=0,
        metadata=bounds(
            ge=0,
            help=(
                "day of the same world (same seed): day K > 0 adds K x new_items_per_day new item ids, which take the "
                "top popularity ranks (every older item moves down), and draws its rows afresh; 0 = the base data"
            ),
        ),
    )
    new_items_per_day: float = field(
        default=0.05,
        metadata=bounds(
            gt=0, le=1, help=("new items per day, as a share of the base items (at least one per category)")
        ),
    )

    def validate(self) -> None:
        if self.min_seq_length > self.seq_length:
            raise ConfigError(f"min_seq_length ({self.min_seq_length}) exceeds seq_length ({self.seq_length})")
        if len(self.split_fractions) != 3 or abs(sum(self.split_fractions) - 1) > 1e-6:
            raise ConfigError(f"split_fractions {self.split_fractions} must be three shares summing to 1")
        if self.domain_proportions is not None and len(self.domain_proportions) != self.domains:
            raise ConfigError(
                f"domain_proportions has {len(self.domain_proportions)} entries for {self.domains} domains"
            )
        if self.items < self.categories:
            raise ConfigError(f"items ({self.items}) must be >= categories ({self.categories})")
        if self.version == 2 and self.categories < self.domains:
            raise ConfigError(f"categories ({self.categories}) must be >= domains ({self.domains}) for version 2")
        if self.version == 2 and self.position_chunks > self.seq_length:
            raise ConfigError(f"position_chunks ({self.position_chunks}) exceeds seq_length ({self.seq_length})")


# --------------------------------------------------------------------------- days


def new_items_per_category(o: Options) -> int:
    """Items added per category and day (0 on day 0)."""
    return max(1, round(max(o.items // o.categories, 1) * o.new_items_per_day)) if o.day else 0


def items_on_day(o: Options) -> int:
    """The item id range of day ``o.day``: ``o.items`` plus the items added on days 1..day."""
    return o.items + o.day * new_items_per_category(o) * o.categories


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
        self.intercept = (
            math.log(o.base_rate / (1 - o.base_rate)) - 1.0 + s * o.base_rate_spread * rng.permutation(spread)
        )
        proportions = np.asarray(o.domain_proportions or [0.6**i for i in range(d)], dtype=np.float64)
        self.domain_p = proportions / proportions.sum()
        self.items = items_on_day(o)  # o.items on day 0
        self.new_per_category = new_items_per_category(o)
        self.base_items_per_category = max(o.items // o.categories, 1)
        self.items_per_category = max(self.items // o.categories, 1)
        ranks = np.arange(1, self.items_per_category + 1, dtype=np.float64)
        zipf = ranks**-o.zipf_exponent
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
        return np.minimum((u**2 * NUM_ACTIVITY).astype(np.int64), NUM_ACTIVITY - 1)

    # sampling ---------------------------------------------------------------------------
    def sample_items(
        self, rng: np.random.Generator, users: np.ndarray, shape: tuple[int, ...], p_preferred: float
    ) -> np.ndarray:
        """Items for ``users`` (broadcast over ``shape``): a preferred category w.p. ``p_preferred``."""
        first, second = self.user_preferences(users)
        first = np.broadcast_to(first.reshape(-1, *([1] * (len(shape) - 1))), shape)
        second = np.broadcast_to(second.reshape(-1, *([1] * (len(shape) - 1))), shape)
        pick = rng.random(shape)
        category = np.where(
            pick < p_preferred / 2,
            first,
            np.where(pick < p_preferred, second, rng.integers(0, self.o.categories, shape)),
        )
        rank = np.minimum(np.searchsorted(self.rank_cdf, rng.random(shape)), self.items_per_category - 1)
        return np.minimum(self.rank_index(rank) * self.o.categories + category, self.items - 1)

    # days -------------------------------------------------------------------------------
    def rank_index(self, rank: np.ndarray) -> np.ndarray:
        """The in-category index (``item // categories``) of the item at popularity rank ``rank`` on this day.

        Day 0: the rank itself. Day K: ranks ``[0, K g)`` are the items added on days K, K-1, ..., 1 (``g``
        per category and day, newest first), and the base items follow in their day-0 order, K g ranks
        lower."""
        shift = self.o.day * self.new_per_category
        if shift == 0:
            return rank
        base = self.base_items_per_category
        block, within = rank // self.new_per_category, rank % self.new_per_category
        new = base + (self.o.day - 1 - block) * self.new_per_category + within
        return np.where(rank < shift, new, rank - shift)

    def popularity_rank(self, items: np.ndarray) -> np.ndarray:
        """This day's popularity rank of each item (the inverse of :meth:`rank_index`); day 0: ``item // C``."""
        index = items // self.o.categories
        shift = self.o.day * self.new_per_category
        if shift == 0:
            return index
        base = self.base_items_per_category
        age = (index - base) // self.new_per_category + 1  # the day it was added (for index >= base)
        new = (self.o.day - age) * self.new_per_category + (index - base) % self.new_per_category
        return np.minimum(np.where(index < base, index + shift, new), self.items_per_category - 1)


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
