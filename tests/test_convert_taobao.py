"""Tests of the Taobao UserBehavior converter on tiny files written in the exact raw format."""

from __future__ import annotations

import argparse
import datetime as dt
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from data_prep import taobao
from data_prep.taobao import Options, convert
from torchrec_mdr.config import ConfigError, add_dataclass_arguments, dataclass_from_args
from torchrec_mdr.data.errors import DataError

BEIJING = dt.timezone(dt.timedelta(hours=8))
POSITIVE = {"pv": 0, "buy": 1, "cart": 1, "fav": 1}
CODE = {"pv": 0, "buy": 1, "cart": 2, "fav": 3}
NO_FILTERS = dict(min_user_interactions=0, min_user_positives=0, min_item_interactions=0)


def ts(day: int, hour: int = 12, minute: int = 0, second: int = 0) -> int:
    """Unix seconds of 2017-11-25 + ``day`` days at the given Beijing wall-clock time."""
    start = dt.datetime(2017, 11, 25, tzinfo=BEIJING)
    return int((start + dt.timedelta(days=day, hours=hour, minutes=minute, seconds=second)).timestamp())


def write_csv(path: Path, rows: list[tuple]) -> Path:
    path.write_text("".join(",".join(str(v) for v in row) + "\n" for row in rows))
    return path


def run(tmp_path: Path, rows: list[tuple], name: str = "out", **options) -> tuple:
    """Write ``rows`` as UserBehavior.csv, convert, and return (spec, {split: [row dicts]})."""
    src = write_csv(tmp_path / "UserBehavior.csv", rows)
    settings = {**NO_FILTERS, "num_partitions": 1, **options}
    spec = convert(Options(src=src, out=tmp_path / name, overwrite=True, **settings))
    out = {split: pq.read_table(spec.files(tmp_path / name, split)).to_pylist() for split in spec.splits}
    return spec, out


def all_rows(out: dict) -> list[dict]:
    return [r for rows in out.values() for r in rows]


def vocab(values) -> dict[int, int]:
    """The documented re-encoding: raw id -> rank among the kept raw ids (ascending)."""
    return {raw: new for new, raw in enumerate(sorted(set(values)))}


# --------------------------------------------------------------------------- a brute-force reference


def random_log(seed: int, rows: int = 2_500) -> list[tuple]:
    """A small log with skewed users/items, coarse timestamps (same-second ties) and rows outside the window."""
    rng = np.random.default_rng(seed)
    users = rng.choice(np.arange(1, 41) * 7919, rows, p=np.arange(40, 0, -1) / np.arange(40, 0, -1).sum())
    items = rng.zipf(1.6, rows) % 90 + 1
    behaviors = rng.choice(list(POSITIVE), rows, p=[0.6, 0.15, 0.15, 0.1])
    times = ts(-1) + 1800 * rng.integers(0, 11 * 48, rows)  # from 11-24 to 12-04: some rows fall outside
    return [(int(u), int(i), int(i) % 6 * 1000 + 5, b, int(t)) for u, i, b, t in zip(users, items, behaviors, times)]


def reference(
    log: list[tuple], min_user: int, min_pos: int, min_item: int, num_domains: int, max_length: int, history: str
) -> list[tuple]:
    """The converter's documented behaviour, row by row in plain Python."""
    lo, hi = ts(0, 0), ts(9, 0)
    window = [(n, *r) for n, r in enumerate(log) if lo <= r[4] < hi]
    user_rows = Counter(r[1] for r in window)
    user_pos = Counter(r[1] for r in window if POSITIVE[r[4]])
    users = {u for u in user_rows if user_rows[u] >= min_user and user_pos[u] >= min_pos}
    item_rows = Counter(r[2] for r in window if r[1] in users)
    kept = [r for r in window if r[1] in users and item_rows[r[2]] >= min_item]
    uv, iv, cv = vocab(r[1] for r in kept), vocab(r[2] for r in kept), vocab(r[3] for r in kept)
    cat_rows = Counter(r[3] for r in kept)
    ranked = sorted(cat_rows, key=lambda c: (-cat_rows[c], c))
    domain = {c: min(rank, num_domains - 1) for rank, c in enumerate(ranked)}
    expected = []
    for _n, u, i, c, b, t in kept:
        local = dt.datetime.fromtimestamp(t, BEIJING)
        day = (local.date() - dt.date(2017, 11, 25)).days
        split = "train" if day < 6 else "valid" if day < 7 else "test"
        events = sorted(
            (e for e in kept if e[1] == u and e[5] < t and (history == "all" or POSITIVE[e[4]])),
            key=lambda e: (e[5], e[0]),
        )[-max_length:]
        row = (
            split,
            uv[u],
            iv[i],
            cv[c],
            local.hour,
            local.weekday(),
            domain[c],
            POSITIVE[b],
            tuple(iv[e[2]] for e in events),
            tuple(cv[e[3]] for e in events),
        )
        if history == "all":
            row += (tuple(CODE[e[4]] for e in events),)
        expected.append(row)
    return sorted(expected)


def as_tuples(out: dict, history: str) -> list[tuple]:
    rows = []
    for split, split_rows in out.items():
        for r in split_rows:
            assert r["group_id"] == r["user_id"]
            row = (
                split,
                r["user_id"],
                r["item_id"],
                r["category_id"],
                r["hour"],
                r["day_of_week"],
                r["domain"],
                r["positive"],
                tuple(r["hist_item_id"]),
                tuple(r["hist_category_id"]),
            )
            if history == "all":
                row += (tuple(r["hist_behavior_type"]),)
            rows.append(row)
    return sorted(rows)


@pytest.mark.parametrize("history", ["positives", "all"])
def test_matches_brute_force_reference(tmp_path: Path, history: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(taobao.write, "CHUNK_ROWS", 50)  # many history blocks of whole users
    log = random_log(seed=1)
    options = dict(
        min_user_interactions=40,
        min_user_positives=12,
        min_item_interactions=5,
        num_domains=3,
        max_length=3,
        history=history,
    )
    spec, out = run(tmp_path, log, **options)
    expected = reference(log, 40, 12, 5, 3, 3, history)
    assert 0 < len(expected) < len(log)  # the filters and the window really remove rows
    assert as_tuples(out, history) == expected
    assert int(spec.notes["rows_kept"]) == len(expected)
    assert spec.column("hist_item_id").max_length == 3


def test_partition_count_does_not_change_the_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = random_log(seed=2)
    options = dict(min_user_interactions=30, min_user_positives=5, min_item_interactions=3, max_length=5)
    spec1, one = run(tmp_path, log, name="one", num_partitions=1, **options)
    # Many small CSV blocks and partition flushes: the rows do not change either.
    monkeypatch.setattr(taobao.read, "CSV_BLOCK_BYTES", 4096)
    monkeypatch.setattr(taobao.read, "FLUSH_ROWS", 300)
    spec3, three = run(tmp_path, log, name="three", num_partitions=3, **options)
    assert spec3.notes["num_partitions"] == "3"
    assert as_tuples(one, "positives") == as_tuples(three, "positives")
    assert spec1.domain_names == spec3.domain_names and spec1.tables == spec3.tables
    assert {s: st.rows_per_domain for s, st in spec1.splits.items()} == {
        s: st.rows_per_domain for s, st in spec3.splits.items()
    }


def test_user_blocks_never_cut_a_user() -> None:
    user = np.repeat(np.arange(6), [3, 1, 5, 2, 2, 4])
    blocks = taobao.user_blocks(user, 4)
    assert blocks == [(0, 4), (4, 9), (9, 13), (13, 17)]
    assert taobao.user_blocks(user, 100) == [(0, 17)]


# --------------------------------------------------------------------------- targeted behaviour


def test_label_mapping(tmp_path: Path) -> None:
    log = [(1, 10 + n, 7, b, ts(n)) for n, b in enumerate(["pv", "buy", "cart", "fav", "pv"])]
    spec, out = run(tmp_path, log)
    items = vocab(r[1] for r in log)
    labels = {r["item_id"]: r["positive"] for r in all_rows(out)}
    assert labels == {items[10]: 0, items[11]: 1, items[12]: 1, items[13]: 1, items[14]: 0}
    assert spec.label_names == ["positive"]
    assert spec.splits["train"].positives_per_domain["positive"] == [3]  # days 0-5 hold the 3 positives


def test_date_window_uses_beijing_time(tmp_path: Path) -> None:
    log = [
        (1, 1, 7, "pv", ts(0, 0) - 1),  # 2017-11-24 23:59:59 Beijing: out
        (1, 2, 7, "pv", ts(0, 0)),  # 2017-11-25 00:00:00: in (although 2017-11-24 in UTC)
        (1, 3, 7, "pv", ts(8, 23, 59, 59)),  # 2017-12-03 23:59:59: in
        (1, 4, 7, "pv", ts(9, 0)),  # 2017-12-04 00:00:00: out
        (1, 5, 7, "pv", 0),  # 1970: out
        (1, 6, 7, "pv", 2_000_000_000),  # 2033: out
    ]
    spec, out = run(tmp_path, log)
    assert spec.notes["rows_read"] == "6" and spec.notes["rows_in_window"] == "2"
    assert spec.column("item_id").cardinality == 2
    assert {s: len(rows) for s, rows in out.items()} == {"train": 1, "test": 1}
    first = out["train"][0]
    assert (first["hour"], first["day_of_week"]) == (0, 5)  # Saturday 00:00 Beijing
    last = out["test"][0]
    assert (last["hour"], last["day_of_week"]) == (23, 6)  # Sunday 23:59 Beijing

    # A custom window and time zone: 2017-11-25 .. 2017-11-27 in UTC.
    utc = dt.timezone.utc
    log_utc = [
        (1, n, 7, "pv", int(dt.datetime(2017, 11, 24 + n // 2, 23 * (n % 2), tzinfo=utc).timestamp())) for n in range(8)
    ]  # 11-24 00h, 11-24 23h, 11-25 00h, ..., 11-27 23h
    spec, out = run(
        tmp_path,
        log_utc,
        first_date="2017-11-25",
        last_date="2017-11-27",
        utc_offset_hours=0,
        train_days=2,
        valid_days=1,
    )
    items = vocab([2, 3, 4, 5, 6, 7])
    got = {s: sorted(r["item_id"] for r in rows) for s, rows in out.items()}
    assert got == {"train": [items[2], items[3]], "valid": [items[4], items[5]], "test": [items[6], items[7]]}
    assert (
        spec.notes["split_days"] == "train 2017-11-25..2017-11-25, valid 2017-11-26..2017-11-26, "
        "test 2017-11-27..2017-11-27 (UTC+0)"
    )


def test_day_split(tmp_path: Path) -> None:
    # Item = 100 + day, at the first and the last second of every Beijing day of the window.
    log = [(1, 100 + day, 7, "buy", ts(day, 0) + second) for day in range(9) for second in (0, 86_399)]
    spec, out = run(tmp_path, log)
    decode = {new: raw - 100 for raw, new in vocab(r[1] for r in log).items()}
    days = {s: sorted({decode[r["item_id"]] for r in rows}) for s, rows in out.items()}
    assert days == {"train": [0, 1, 2, 3, 4, 5], "valid": [6], "test": [7, 8]}
    assert [spec.splits[s].rows for s in ("train", "valid", "test")] == [12, 2, 4]

    spec, out = run(tmp_path, log, train_days=5, valid_days=2)
    days = {s: sorted({decode[r["item_id"]] for r in rows}) for s, rows in out.items()}
    assert days == {"train": [0, 1, 2], "valid": [3, 4], "test": [5, 6, 7, 8]}


def test_filters_users_then_items(tmp_path: Path) -> None:
    log = (
        [
            (1, 50, 7, "buy", ts(0)),
            (1, 50, 7, "buy", ts(1)),
            (1, 51, 7, "pv", ts(2)),
            (1, 51, 7, "pv", ts(3)),
            (1, 60, 8, "pv", ts(4)),
            (1, 61, 8, "pv", ts(5)),
        ]  # 6 rows, 2 positives: kept
        + [(2, 61, 8, "buy" if d == 0 else "pv", ts(d)) for d in range(6)]  # 6 rows, 1 positive: dropped
        + [(3, 60, 8, "buy", ts(d)) for d in range(4)]  # 4 rows: dropped
    )
    spec, out = run(tmp_path, log, min_user_interactions=5, min_user_positives=2, min_item_interactions=2)
    assert spec.notes["rows_after_user_filter"] == "6"  # user 1 only
    # Among user 1's rows items 50 and 51 have 2 rows each; 60 and 61 one each (though 5 and 7 in the
    # whole window: counting items before the user filter would have kept them).
    assert spec.notes["rows_kept"] == "4"
    items = vocab([50, 51])
    assert sorted(r["item_id"] for r in all_rows(out)) == [items[50]] * 2 + [items[51]] * 2
    assert {r["user_id"] for r in all_rows(out)} == {0}
    assert spec.tables["user"] == 1 and spec.tables["item"] == 2 and spec.tables["category"] == 1
    assert spec.domain_names == ["7"]


def test_empty_result_after_filters_is_a_data_error(tmp_path: Path) -> None:
    log = [(1, 1, 7, "pv", ts(0))]
    with pytest.raises(DataError, match="no row is left after the filters"):
        run(tmp_path, log, min_user_interactions=2)
    with pytest.raises(DataError, match="no row lies in the date window"):
        run(tmp_path, [(1, 1, 7, "pv", 0)])


def test_domains_per_category(tmp_path: Path) -> None:
    log = [(1, 10 + n, 900 - 100 * (n % 3), "pv", ts(n % 9)) for n in range(12)]
    spec, out = run(tmp_path, log, domains="category")
    assert spec.domain_names == ["700", "800", "900"]  # raw ids, in the order of the re-encoded category_id
    for r in all_rows(out):
        assert r["domain"] == r["category_id"]
    categories = {raw: new for raw, new in vocab(r[2] for r in log).items()}
    items = vocab(r[1] for r in log)
    for _u, i, c, *_ in log:
        assert {r["category_id"] for r in all_rows(out) if r["item_id"] == items[i]} == {categories[c]}


def test_domains_category_buckets(tmp_path: Path) -> None:
    sizes = {30: 5, 10: 4, 20: 4, 40: 2, 50: 1}  # categories 10 and 20 tie: the smaller raw id ranks first
    log = [(1, c * 10 + n, c, "buy" if n == 0 else "pv", ts(n)) for c, k in sizes.items() for n in range(k)]
    spec, out = run(tmp_path, log, num_domains=3)
    assert spec.domain_names == ["30", "10", "other"]
    assert spec.splits["train"].rows_per_domain == [5, 4, 4 + 2 + 1]
    categories = vocab(sizes)
    expected = {categories[30]: 0, categories[10]: 1, categories[20]: 2, categories[40]: 2, categories[50]: 2}
    assert {r["category_id"]: r["domain"] for r in all_rows(out)} == expected

    spec, _ = run(tmp_path, log, num_domains=5)  # as many domains as categories: no "other"
    assert spec.domain_names == ["30", "10", "20", "40", "50"]
    assert spec.splits["train"].rows_per_domain == [5, 4, 4, 2, 1]


def test_ids_are_consistent_across_splits_and_histories(tmp_path: Path) -> None:
    log = [
        (5, 900, 3, "buy", ts(0)),
        (5, 901, 4, "pv", ts(1)),  # train
        (5, 902, 3, "cart", ts(6)),  # valid
        (5, 900, 3, "pv", ts(7)),
        (6, 900, 3, "fav", ts(8)),
        (6, 903, 4, "pv", ts(8, 13)),  # test
    ]
    spec, out = run(tmp_path, log)
    items, categories = vocab([900, 901, 902, 903]), vocab([3, 4])
    assert spec.tables == {"user": 2, "item": 4, "category": 2, "hour": 24, "day_of_week": 7}
    # Raw item 900 appears in train (user 5's buy) and twice in test (user 5's pv, user 6's fav).
    train_900 = [r["item_id"] for r in out["train"] if r["positive"] == 1]
    test_900 = sorted(r["item_id"] for r in out["test"] if r["category_id"] == categories[3])
    assert train_900 == [items[900]] and test_900 == [items[900]] * 2
    test_900 = next(r for r in out["test"] if r["user_id"] == 0)
    assert test_900["hist_item_id"] == [items[900], items[902]]  # user 5's earlier buy and cart
    assert test_900["hist_category_id"] == [categories[3], categories[3]]
    other_user = next(r for r in out["test"] if r["user_id"] == 1 and r["item_id"] == items[903])
    assert other_user["hist_item_id"] == [items[900]]  # only user 6's own history
    for column in ("item_id", "category_id"):
        assert spec.column(f"hist_{column}").table == spec.column(column).table


def test_history_is_strictly_earlier_and_respects_the_behaviour_option(tmp_path: Path) -> None:
    t1, t2, t3 = ts(0, 9), ts(0, 10), ts(0, 11)
    log = [
        (1, 10, 7, "buy", t1),
        (1, 11, 7, "pv", t2),
        (1, 12, 7, "buy", t2),
        (1, 14, 7, "cart", t2),
        (1, 13, 7, "fav", t3),
        (1, 15, 7, "pv", t3 + 1),
    ]
    items = vocab(r[1] for r in log)

    def histories(out: dict, column: str = "hist_item_id") -> dict[int, list[int]]:
        decode = {new: raw for raw, new in items.items()}
        return {
            decode[r["item_id"]]: [decode[i] if column == "hist_item_id" else i for i in r[column]]
            for r in all_rows(out)
        }

    spec, out = run(tmp_path, log)
    # Same-second events (11, 12, 14 at t2) never see each other or themselves; pv never enters.
    assert histories(out) == {10: [], 11: [10], 12: [10], 14: [10], 13: [10, 12, 14], 15: [10, 12, 14, 13]}
    assert "hist_behavior_type" not in [c.name for c in spec.columns]

    spec, out = run(tmp_path, log, history="all", max_length=3)
    assert histories(out) == {10: [], 11: [10], 12: [10], 14: [10], 13: [11, 12, 14], 15: [12, 14, 13]}
    assert histories(out, "hist_behavior_type")[15] == [CODE["buy"], CODE["cart"], CODE["fav"]]
    assert spec.column("hist_behavior_type").sequence_group == "hist"


def test_history_leakage_on_random_data(tmp_path: Path) -> None:
    log = random_log(seed=3)
    # Make each (user, item) pair identifiable: keep the first event of every pair only.
    seen, unique = set(), []
    for r in log:
        if (r[0], r[1]) not in seen:
            seen.add((r[0], r[1]))
            unique.append(r)
    spec, out = run(tmp_path, unique, min_user_interactions=5, max_length=50, history="all")
    lo, hi = ts(0, 0), ts(9, 0)
    window = [r for r in unique if lo <= r[4] < hi]
    kept_users = {u for u, n in Counter(r[0] for r in window).items() if n >= 5}
    kept = [r for r in window if r[0] in kept_users]
    users, items = vocab(r[0] for r in kept), vocab(r[1] for r in kept)
    time = {(users[u], items[i]): t for u, i, _, _, t in kept}
    checked = 0
    for r in all_rows(out):
        now = time[(r["user_id"], r["item_id"])]
        assert r["item_id"] not in r["hist_item_id"]  # never its own event
        for past in r["hist_item_id"]:
            assert time[(r["user_id"], past)] < now
            checked += 1
        assert [time[(r["user_id"], p)] for p in r["hist_item_id"]] == sorted(
            time[(r["user_id"], p)] for p in r["hist_item_id"]
        )  # oldest first
    assert checked > 1000


# --------------------------------------------------------------------------- bad input and options


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found") as error:
        convert(Options(src=tmp_path / "nope.csv", out=tmp_path / "out"))
    assert error.value.file == str(tmp_path / "nope.csv")


@pytest.mark.parametrize(
    "line, column, match",
    [
        ("1,2,3,click,1511544070", "behavior_type", "'click' is not one of"),
        ("1,2,3,pv,", "timestamp", "empty value"),
        ("-1,2,3,pv,1511544070", "user_id", "outside"),
        ("1,2,3,pv,1511544070,9", None, "Expected 5 columns, got 6"),
        ("1,2,3,pv", None, "Expected 5 columns, got 4"),
        ("1,2,3,pv,2017-11-25", None, "cannot parse"),
        ("1,2,3,pv,1511544070.5", None, "cannot parse"),
        ("1,x,3,pv,1511544070", None, "cannot parse"),
    ],
)
def test_bad_lines_are_data_errors(tmp_path: Path, line: str, column: str | None, match: str) -> None:
    src = tmp_path / "UserBehavior.csv"
    src.write_text(f"1,2,3,pv,1511544070\n{line}\n1,2,3,buy,1511544071\n")
    with pytest.raises(DataError, match=match) as error:
        convert(Options(src=src, out=tmp_path / "out", **NO_FILTERS))
    assert error.value.file == str(src)
    if column is not None:
        assert (error.value.column, error.value.row) == (column, 2)
    assert not (tmp_path / "out").exists()


def test_bad_line_deep_in_a_multi_block_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(taobao.read, "CSV_BLOCK_BYTES", 4096)  # ~170 lines per block
    rows = [(1, n, 7, "pv", ts(0)) for n in range(2_000)]
    rows[1_234] = (1, 1_234, 7, "PV", ts(0))
    src = write_csv(tmp_path / "UserBehavior.csv", rows)
    with pytest.raises(DataError, match="'PV' is not one of") as error:
        convert(Options(src=src, out=tmp_path / "out", **NO_FILTERS))
    assert (error.value.column, error.value.row) == ("behavior_type", 1_235)


def test_bad_options(tmp_path: Path) -> None:
    src = write_csv(tmp_path / "UserBehavior.csv", [(1, 1, 1, "pv", ts(0))])
    with pytest.raises(ConfigError, match="not a date"):
        convert(Options(src=src, out=tmp_path / "out", first_date="25/11/2017"))
    with pytest.raises(ConfigError, match="no test day"):
        convert(Options(src=src, out=tmp_path / "out", train_days=9))
    with pytest.raises(ConfigError, match="valid_days"):
        convert(Options(src=src, out=tmp_path / "out", valid_days=7))
    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError):
        convert(Options(src=src, out=tmp_path / "out", **NO_FILTERS))


def test_command_line_flags(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, Options)
    args = parser.parse_args(
        [
            "--src",
            "UserBehavior.csv",
            "--out",
            "out",
            "--domains",
            "category",
            "--min-user-interactions",
            "50",
            "--train-days",
            "6",
            "--history",
            "all",
        ]
    )
    options = dataclass_from_args(Options, args)
    assert (options.src, options.domains, options.min_user_interactions, options.train_days, options.history) == (
        Path("UserBehavior.csv"),
        "category",
        50,
        6,
        "all",
    )
    assert (options.num_domains, options.max_length, options.min_user_positives) == (10, 50, 10)
    with pytest.raises(SystemExit):
        parser.parse_args(["--src", "a", "--out", "b", "--domains", "brand"])
