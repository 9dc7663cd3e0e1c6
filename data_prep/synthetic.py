"""Planted-effect synthetic multi-domain data: ground truth known, oracle AUC (and, version 2, the
ceilings) recorded in the spec.

The world, its options and the session rule are in :mod:`data_prep.synthetic_world` (version 1's true
logit is described there); version 2's separable mechanisms in :mod:`data_prep.planted_v2`. This module
writes either: :func:`convert` generates chunk by chunk (memory does not grow with ``rows``) and records
the AUCs from fine histograms of ``sigmoid(logit)`` (exact up to ties inside a bin of width 1e-4).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from data_prep import planted_v2
from data_prep.common import SPLITS, progress, writer_for
from data_prep.synthetic_world import (  # noqa: F401  (re-exported: the generator's public names)
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
    _splitmix64,
    items_on_day,
)
from data_prep.writer import list_array
from torchrec_mdr.data.spec import ColumnSpec, DatasetSpec

_HIST_BINS = 10_000


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
        ColumnSpec(
            "session_id",
            "session",
            description=f"runs of {o.session_length} consecutive impressions of one user, for S-GAUC",
        ),
        ColumnSpec("user_id", "id", table="user", cardinality=o.users, oov="reject"),
        ColumnSpec("item_id", "id", table="item", cardinality=items_on_day(o), oov="reject"),
        ColumnSpec("category_id", "id", table="category", cardinality=o.categories, oov="reject"),
        ColumnSpec("brand_id", "id", table="brand", cardinality=o.brands, oov="reject"),
        ColumnSpec("user_segment", "id", cardinality=NUM_SEGMENTS, oov="reject"),
        ColumnSpec(
            "user_activity",
            "id",
            cardinality=NUM_ACTIVITY,
            oov="reject",
            description="activity bucket: an implicit domain feature (ADS)",
        ),
        ColumnSpec("hour", "id", cardinality=NUM_HOURS, oov="reject"),
        ColumnSpec("device", "id", cardinality=NUM_DEVICES, oov="reject"),
        ColumnSpec(
            "hist_item_id",
            "sequence",
            table="item",
            cardinality=items_on_day(o),
            oov="reject",
            sequence_group="hist",
            max_length=length,
        ),
        ColumnSpec(
            "hist_domain",
            "sequence",
            table="hist_domain",
            cardinality=o.domains,
            oov="reject",
            sequence_group="hist",
            max_length=length,
            description="domain the behaviour happened in",
        ),
        ColumnSpec("item_popularity", "dense", description="-log(popularity rank) scaled to ~[0, 1]"),
        ColumnSpec("user_activity_level", "dense", description="activity bucket / 4 plus noise"),
        ColumnSpec("price", "dense", description="log price (hashed per item), standardised"),
        ColumnSpec("noise", "dense", description="irrelevant feature"),
    ]


def generate_chunk(world: World, rng: np.random.Generator, rows: int) -> tuple[dict[str, Any], np.ndarray]:
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
    v_c = world.item_vectors(candidates)  # [R, k]
    v_t = world.item_vectors(behaviours)  # [R, T, k]
    u = world.user_vectors(users)  # [R, k]
    query = np.einsum("rij,rj->ri", world.query_transform[domains], v_c) + world.query_bias[domains]
    transform = world.item_transform[domains, activity]  # [R, k, k]
    projected = np.einsum("rji,rj->ri", transform, query)  # M^T (Q v_c + q)
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
    popularity_rank = world.popularity_rank(candidates)
    item_popularity = 1.0 - np.log1p(popularity_rank) / math.log1p(world.items_per_category)
    logit = (
        world.intercept[domains]
        + world.w_pop * item_popularity
        + world.alpha * (u * v_c).sum(-1)
        + world.beta * sequence_term
    )
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
    o = options
    v2 = o.version == 2
    world = planted_v2.WorldV2(o) if v2 else World(o)
    rng = np.random.default_rng([o.seed, 2] if o.day == 0 else [o.seed, 2, o.day])  # day 0: the base data
    cuts = np.cumsum(np.round(np.asarray(o.split_fractions) * o.rows).astype(np.int64))
    cuts[-1] = o.rows
    split_ranges = dict(zip(SPLITS, zip(np.concatenate([[0], cuts[:-1]]), cuts)))
    domain_names = [f"domain{d}" for d in range(o.domains)]
    sessions = SessionCounter(o.users, o.session_length)
    source = (
        f"synthetic planted-effect generator v{o.version}: rows={o.rows} users={o.users} items={o.items} "
        f"domains={o.domains} domain_shift={o.domain_shift} seq_length={o.seq_length} seed={o.seed}"
    )
    # day 0's spec is the one written before days existed
    skipped = ("out", "overwrite") + (("day", "new_items_per_day") if o.day == 0 else ())
    if o.day:
        source += f" day={o.day} (items {world.items}: {world.items - o.items} new since day 0)"
    notes = {
        "generator": "data_prep.planted_v2" if v2 else "data_prep.synthetic",
        "options": repr({k: v for k, v in vars(o).items() if k not in skipped}),
        "domain_proportions": repr(world.domain_p.round(4).tolist()),
        "sessions": (
            f"each user's rows in time (row) order cut into runs of {o.session_length}; "
            "no session spans two splits; session_id = ordinal * users + user"
            + ("; a session's rows share one domain" if v2 else "")
        ),
    }
    if isinstance(world, planted_v2.WorldV2):  # v2
        notes["target_rates"] = repr(world.target_rate.round(4).tolist())
        notes["effects"] = repr({m: round(float(v), 4) for m, v in world.strength.items()})
    names = ["oracle", *planted_v2.CEILINGS] if v2 else ["oracle"]
    with (
        writer_for(
            o, name="synthetic", columns=columns(o), domain_names=domain_names, source=source, notes=notes
        ) as writer,
        progress(o.rows, "synthetic", unit="rows") as bar,
    ):
        for split, (start, stop) in split_ranges.items():
            histograms = _Histograms(names, o.domains)
            sessions.start_split()
            for chunk_start in range(int(start), int(stop), o.chunk_rows):
                rows = min(o.chunk_rows, int(stop) - chunk_start)
                if isinstance(world, planted_v2.WorldV2):  # v2
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
