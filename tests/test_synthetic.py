"""The planted-effect generator, version 1 (kept reproducible): schema, oracle AUC, domain shift, sequences."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from data_prep.synthetic import Options, World, convert, generate_chunk, histogram_auc
from torchrec_mdr.config import ConfigError, from_dict
from torchrec_mdr.data.validate import validate_dataset


def exact_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # average ranks for ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1
    ranks[order] = np.repeat(avg, counts)
    pos = labels.astype(bool)
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def options(tmp_path: Path, **kwargs) -> Options:
    base = dict(out=tmp_path / "syn", rows=6000, users=500, items=5000, categories=20, chunk_rows=2000, version=1)
    base.update(kwargs)
    return Options(**base)


def test_histogram_auc_matches_exact():
    rng = np.random.default_rng(0)
    scores = rng.random(5000)
    labels = rng.random(5000) < scores
    bins = np.minimum((scores * 1000).astype(int), 999)
    pos = np.bincount(bins[labels], minlength=1000)
    neg = np.bincount(bins[~labels], minlength=1000)
    assert histogram_auc(pos, neg) == pytest.approx(exact_auc(scores, labels), abs=2e-3)


def test_dataset_spec_and_oracle(tmp_path):
    spec = convert(options(tmp_path))
    assert [spec.splits[s].rows for s in ("train", "valid", "test")] == [4800, 600, 600]
    assert spec.num_domains == 3 and spec.label_names == ["click"]
    assert len(spec.columns_of("id")) == 8 and len(spec.dense_features) == 4
    assert list(spec.sequence_groups) == ["hist"] and len(spec.sequence_groups["hist"]) == 2
    assert spec.column("hist_item_id").table_name == spec.column("item_id").table_name == "item"
    for stats in spec.splits.values():
        assert set(stats.oracle_auc) == {"all", "domain0", "domain1", "domain2"}
        assert all(0.6 < v < 1.0 for v in stats.oracle_auc.values())
    validate_dataset(tmp_path / "syn")  # every value passes the reader's checks


def test_oracle_auc_is_the_auc_of_the_true_logit(tmp_path):
    o = options(tmp_path, rows=4000, split_fractions=[1.0, 0.0, 0.0])
    spec = convert(o)
    world, rng = World(o), np.random.default_rng([o.seed, 2])
    chunks = [generate_chunk(world, rng, 2000) for _ in range(2)]
    logits = np.concatenate([c[1] for c in chunks])
    labels = np.concatenate([c[0]["click"] for c in chunks])
    domains = np.concatenate([c[0]["domain"] for c in chunks])
    written = pq.read_table(tmp_path / "syn" / spec.splits["train"].files[0])
    assert np.array_equal(written["click"].to_numpy(), labels)  # the replay is the written data
    oracle = spec.splits["train"].oracle_auc
    assert oracle["all"] == pytest.approx(exact_auc(logits, labels), abs=2e-3)
    for d in range(3):
        mask = domains == d
        assert oracle[f"domain{d}"] == pytest.approx(exact_auc(logits[mask], labels[mask]), abs=3e-3)


def test_domain_shift_zero_makes_domains_identical(tmp_path):
    null = World(options(tmp_path, domain_shift=0.0))
    k = null.o.latent_dim
    assert np.allclose(null.item_transform, np.eye(k)) and np.allclose(null.query_transform, np.eye(k))
    assert np.allclose(null.item_bias, 0) and np.allclose(null.query_bias, 0)
    assert np.allclose(null.behaviour_affinity, 0) and np.ptp(null.intercept) == 0
    shifted = World(options(tmp_path, domain_shift=1.0))
    assert not np.allclose(shifted.item_transform[0], shifted.item_transform[1])
    assert not np.allclose(shifted.query_transform[0], shifted.query_transform[1])
    assert np.ptp(shifted.behaviour_affinity) > 0 and np.ptp(shifted.intercept) > 0


def test_planted_effect_is_invisible_to_a_domain_agnostic_logit(tmp_path):
    """Same samples, two worlds: the shift-0 logit ranks the shifted world's labels clearly worse."""
    o1 = options(tmp_path, domain_shift=1.0)
    chunk1, logit1 = generate_chunk(World(o1), np.random.default_rng(5), 20000)
    chunk0, logit0 = generate_chunk(World(replace(o1, domain_shift=0.0)), np.random.default_rng(5), 20000)
    assert np.array_equal(chunk0["item_id"], chunk1["item_id"])  # identical features
    labels = chunk1["click"]
    assert exact_auc(logit1, labels) - exact_auc(logit0, labels) > 0.03


def test_sequences(tmp_path):
    o = options(tmp_path, seq_length=20, min_seq_length=5, domain_stickiness=0.9)
    chunk, _ = generate_chunk(World(o), np.random.default_rng(1), 5000)
    lengths = np.diff(chunk["hist_item_id"].offsets.to_numpy())
    assert lengths.min() >= 5 and lengths.max() <= 20
    domains = chunk["hist_domain"]
    same = [np.mean(np.diff(np.array(row)) == 0) for row in domains.to_pylist()]
    p = World(o).domain_p
    chance = 0.9 + 0.1 * (p**2).sum()
    assert np.mean(same) == pytest.approx(chance, abs=0.02)


def test_domain_sizes_follow_proportions_and_deterministic(tmp_path):
    spec = convert(options(tmp_path, domain_proportions=[0.7, 0.2, 0.1], rows=20000))
    share = np.asarray(spec.splits["train"].rows_per_domain) / spec.splits["train"].rows
    assert share == pytest.approx([0.7, 0.2, 0.1], abs=0.02)
    again = convert(options(tmp_path, domain_proportions=[0.7, 0.2, 0.1], rows=20000, out=tmp_path / "again"))
    a = pq.read_table(tmp_path / "syn" / spec.splits["test"].files[0])
    b = pq.read_table(tmp_path / "again" / again.splits["test"].files[0])
    assert a.equals(b)


def test_ten_million_items_cost_no_memory(tmp_path):
    spec = convert(options(tmp_path, items=20_000_000, categories=1000, rows=2000))
    assert spec.tables["item"] == 20_000_000


def test_options_are_validated(tmp_path):
    with pytest.raises(ConfigError, match="min_seq_length"):
        from_dict(Options, {"out": str(tmp_path), "min_seq_length": 60, "seq_length": 50})
    with pytest.raises(ConfigError, match="domain_proportions has 2 entries for 3 domains"):
        from_dict(Options, {"out": str(tmp_path), "domain_proportions": [0.5, 0.5]})


def test_sessions_are_runs_of_one_users_impressions(tmp_path):
    """Each session holds one user's impressions: that user's 1st..L-th rows (in row order) of a
    split, then the next L, ...; chunk boundaries change nothing and no session spans two splits."""
    length = 4
    o = options(tmp_path, rows=3000, users=40, session_length=length, chunk_rows=700)  # chunks cut user runs
    spec = convert(o)
    assert spec.session_column == "session_id" and spec.group_column == "group_id"
    splits = {}
    for split in ("train", "valid", "test"):
        table = pq.read_table(tmp_path / "syn" / spec.splits[split].files[0])
        splits[split] = (table["user_id"].to_numpy(), table["session_id"].to_numpy())
    owners: dict[int, int] = {}
    for split, (users, sessions) in splits.items():
        for user, session in zip(users, sessions):
            assert owners.setdefault(int(session), int(user)) == user  # one user per session
        for user in np.unique(users):
            rows = sessions[users == user]
            # the user's rows in row order: runs of `length` rows share a session, then the next one starts
            expected_runs = np.arange(len(rows)) // length
            assert np.array_equal(np.unique(rows, return_inverse=True)[1], expected_runs), (split, user)
            assert np.all(np.diff(rows) >= 0)  # session ids of a user grow with time
    ids = [set(sessions.tolist()) for _, sessions in splits.values()]
    assert not (ids[0] & ids[1]) and not (ids[1] & ids[2]) and not (ids[0] & ids[2])  # no session spans splits
    sizes = np.bincount(np.unique(splits["train"][1], return_inverse=True)[1])
    assert sizes.max() == length and np.mean(sizes == length) > 0.8  # only a user's last session is shorter
    # brute force over all rows in time order (train, valid, test): the documented id formula
    seen: dict[int, int] = {}
    for users, sessions in splits.values():
        seen = {user: -(-count // length) * length for user, count in seen.items()}  # a split closes sessions
        for user, session in zip(users.tolist(), sessions.tolist()):
            assert session == seen.get(user, 0) // length * o.users + user
            seen[user] = seen.get(user, 0) + 1
