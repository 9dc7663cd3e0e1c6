"""Generator v2: one zero-able knob per mechanism, ceilings, centred base rates, sessions in one domain."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from data_prep import planted_v2
from data_prep.synthetic import Options, SessionCounter, convert
from torchrec_mdr.data.spec import DatasetSpec
from torchrec_mdr.data.validate import validate_dataset

from tests.test_synthetic import exact_auc


def options(tmp_path: Path, **kwargs) -> Options:
    base = dict(
        out=tmp_path / "v2",
        rows=6000,
        users=500,
        items=2000,
        categories=20,
        seq_length=20,
        min_seq_length=5,
        chunk_rows=3000,
        version=2,
    )
    base.update(kwargs)
    return Options(**base)


def read(path: Path, split: str = "train"):
    return pq.read_table(sorted((path / split).glob("*.parquet"))[0])


def test_spec_records_oracle_and_every_ceiling(tmp_path):
    spec = convert(options(tmp_path))
    validate_dataset(tmp_path / "v2")
    spec = DatasetSpec.load(tmp_path / "v2")  # the ceilings survive a round trip through spec.json
    for stats in spec.splits.values():
        assert set(stats.ceilings) == set(planted_v2.CEILINGS)
        for aucs in stats.ceilings.values():
            assert set(aucs) == {"all", "domain0", "domain1", "domain2"}
        # the domain constant alone separates nothing inside a domain
        assert all(stats.ceilings["domain_only"][f"domain{d}"] == pytest.approx(0.5) for d in range(3))
        assert stats.oracle_auc["all"] > stats.ceilings["main"]["all"]


@pytest.mark.parametrize("mechanism", planted_v2.MECHANISMS)
def test_a_knob_at_zero_removes_exactly_its_effect(tmp_path, mechanism):
    """With one knob at 0, its ceiling is the oracle itself; the other effects still cost their ceilings."""
    spec = convert(options(tmp_path, rows=3000, **{f"{mechanism}_effect": 0.0}))
    stats = spec.splits["train"]
    assert stats.ceilings[f"without_{mechanism}"] == pytest.approx(stats.oracle_auc, abs=1e-12)
    others = [m for m in planted_v2.MECHANISMS if m != mechanism]
    assert all(stats.ceilings[f"without_{m}"]["all"] < stats.oracle_auc["all"] for m in others)


def test_no_shift_means_no_mechanism(tmp_path):
    spec = convert(options(tmp_path, rows=3000, domain_shift=0.0))
    stats = spec.splits["train"]
    for name in (*(f"without_{m}" for m in planted_v2.MECHANISMS), "main"):
        assert stats.ceilings[name] == pytest.approx(stats.oracle_auc, abs=1e-12)
    assert stats.ceilings["domain_only"]["all"] == pytest.approx(0.5)  # and equal base rates


def test_realised_rates_match_the_configured_ones(tmp_path):
    o = options(tmp_path, rows=40_000, users=4000, chunk_rows=20_000, split_fractions=[1.0, 0.0, 0.0])
    spec = convert(o)
    world = planted_v2.WorldV2(o)
    stats = spec.splits["train"]
    rates = np.asarray(stats.positives_per_domain["click"]) / np.asarray(stats.rows_per_domain)
    assert np.abs(rates - world.target_rate).max() < 0.02, (rates, world.target_rate)
    assert world.target_rate.min() < world.target_rate.max()  # the spread is kept, not the v1 constant


def test_oracle_and_ceilings_are_the_aucs_of_the_replayed_logits(tmp_path):
    o = options(tmp_path, rows=4000, split_fractions=[1.0, 0.0, 0.0], chunk_rows=4000)
    spec = convert(o)
    world = planted_v2.WorldV2(o)
    rng = np.random.default_rng([o.seed, 2])
    sessions = SessionCounter(o.users, o.session_length)
    sessions.start_split()
    chunk, z = planted_v2.generate_chunk(world, rng, 4000, sessions)
    written = read(tmp_path / "v2")
    assert np.array_equal(written["click"].to_numpy(), chunk["click"])
    labels = chunk["click"].astype(bool)
    stats = spec.splits["train"]
    assert stats.oracle_auc["all"] == pytest.approx(exact_auc(z["oracle"], labels), abs=2e-3)
    for name in ("without_psrg", "without_pcrg", "main"):
        assert stats.ceilings[name]["all"] == pytest.approx(exact_auc(z[name], labels), abs=2e-3)


def test_sessions_stay_within_one_domain(tmp_path):
    convert(options(tmp_path))
    table = read(tmp_path / "v2")
    sessions, domains = table["session_id"].to_numpy(), table["domain"].to_numpy()
    order = np.argsort(sessions, kind="stable")
    same_session = sessions[order][1:] == sessions[order][:-1]
    assert same_session.sum() > 100
    assert np.all(domains[order][1:][same_session] == domains[order][:-1][same_session])


def test_behaviour_items_depend_on_the_behaviour_domain(tmp_path):
    o = options(tmp_path, domain_item_share=1.0, categories=21)
    convert(o)
    table = read(tmp_path / "v2")
    items = np.concatenate(table["hist_item_id"].to_numpy(zero_copy_only=False))
    behaviour_domains = np.concatenate(table["hist_domain"].to_numpy(zero_copy_only=False))
    assert np.array_equal((items % o.categories) % o.domains, behaviour_domains)


def test_pcrg_relation_varies_by_position_chunk_and_psrg_by_activity(tmp_path):
    world = planted_v2.WorldV2(options(tmp_path))
    q = world.query_transform_v2(1.0)  # [d, chunks, k, k]
    assert not np.allclose(q[0, 0], q[0, 1]) and not np.allclose(q[0, 0], q[1, 0])
    assert np.allclose(world.query_transform_v2(0.0), np.eye(world.o.latent_dim))
    m = world.item_transform_v2(1.0)  # [d, activity, k, k]
    assert not np.allclose(m[0, 0], m[0, 1]) and not np.allclose(m[0, 0], m[1, 0])


def test_dsbn_shift_is_undone_by_per_domain_standardisation(tmp_path):
    world = planted_v2.WorldV2(options(tmp_path))
    rng = np.random.default_rng(5)
    domains = rng.integers(0, 3, 30_000)
    true = rng.standard_normal((30_000, 4))
    observed = world.observe_dense(true, domains)
    means = [observed[domains == d, 2].mean() for d in range(3)]
    assert max(means) - min(means) > 0.5  # the domains' observed price distributions differ
    for d in range(3):
        rows = domains == d
        standardised = (observed[rows] - observed[rows].mean(0)) / observed[rows].std(0)
        assert np.corrcoef(standardised[:, 2], true[rows, 2])[0, 1] == pytest.approx(1.0)


def test_pooled_linear_is_the_least_squares_fit(tmp_path):
    world = planted_v2.WorldV2(options(tmp_path))
    rng = np.random.default_rng(6)
    n = 200_000
    domains = rng.choice(3, size=n, p=world.domain_p)
    mean, var = world._dense_moments[2]
    true = np.zeros((n, 4))
    true[:, 2] = mean + np.sqrt(var) * rng.standard_normal(n)
    observed = world.observe_dense(true, domains)[:, 2]
    slope, offset = world.pooled_linear(2)
    fit_slope, fit_offset = np.polyfit(observed, true[:, 2], 1)
    assert slope == pytest.approx(fit_slope, abs=0.01) and offset == pytest.approx(fit_offset, abs=0.01)


def test_se_relevance_switches_fields_per_domain(tmp_path):
    world = planted_v2.WorldV2(options(tmp_path))
    relevance = world.field_relevance(1.0)
    assert set(np.unique(relevance)) <= {0.0, 2.0}
    assert np.all(relevance.max(axis=0) == 2.0)  # every field matters in some domain
    assert np.all(world.field_relevance(0.0) == 1.0)


def test_pcrg_chunks_count_from_the_newest_behaviour(tmp_path):
    """ADS's PCRG numbers its query slots by recency (0 = newest): the planted relation does too, so the
    same newest behaviours meet the same query transform whatever the sequence's length."""
    world = planted_v2.WorldV2(options(tmp_path, seq_length=4, min_seq_length=1, position_chunks=4))
    x, y, p, q = 11, 12, 13, 14
    draw = {
        "domains": np.array([1, 1, 1]),
        "activity": np.array([0, 0, 0]),
        "candidates": np.array([7, 7, 7]),
        "lengths": np.array([2, 4, 1]),
        "behaviours": np.array([[x, y, 0, 0], [p, q, x, y], [x, 0, 0, 0]]),
    }
    r = planted_v2.relevance(world, draw, psrg=0.0, pcrg=1.0)
    assert r[0, 1] == pytest.approx(r[1, 3]) and r[0, 0] == pytest.approx(r[1, 2])  # y newest, x second
    assert r[2, 0] != pytest.approx(r[0, 0])  # x newest vs x second newest: another chunk's relation
    unplanted = planted_v2.relevance(world, draw, psrg=0.0, pcrg=0.0)
    assert unplanted[2, 0] == pytest.approx(unplanted[0, 0])
