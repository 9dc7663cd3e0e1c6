"""KuaiRand converter: joins, tab domains, temporal split and leakage-free click histories."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_prep import kuairand
from data_prep.common import temporal_split_points
from torchrec_mdr.data.errors import DataError

USERS = (10, 20, 30, 40, 50)  # 50 has no line in user_features
TABLE_USERS = (10, 20, 30, 40, 60)  # 60 never appears in the logs
VIDEOS = tuple(range(100, 120))  # 118 and 119 have no line in video_features_basic
TABLE_VIDEOS = tuple(range(100, 118)) + (999,)
EVENTS_PER_USER = 12
BASE_MS = 1_649_419_200_000  # 2022-04-08 12:00:00 UTC
TABS = (0, 1, 3)
UPLOAD_DAY = "2022-04-01"


def events() -> list[dict]:
    """All standard-log events (deterministic); user 10 has two events at the same millisecond."""
    rows = []
    for u, user in enumerate(USERS):
        for k in range(EVENTS_PER_USER):
            rows.append(
                dict(
                    user_id=user,
                    video_id=VIDEOS[(u * 3 + k) % len(VIDEOS)],
                    time_ms=BASE_MS + k * 7 * 3_600_000 + u * 1000,
                    tab=TABS[(k + u) % 3],
                    is_click=int((2 * k + u) % 5 != 0),
                    is_like=int(k % 4 == 0),
                    long_view=int(k % 2 == 0),
                )
            )
    # A second event of user 10 at the very time of its 6th event (clicked): neither sees the other.
    twin = dict(rows[5])
    twin.update(video_id=VIDEOS[-1] if VIDEOS[-1] != rows[5]["video_id"] else VIDEOS[-2], is_click=1)
    assert twin["video_id"] not in {r["video_id"] for r in rows[:EVENTS_PER_USER]}
    rows.append(twin)
    return rows


def random_events() -> list[dict]:
    return [
        dict(user_id=20, video_id=VIDEOS[0], time_ms=BASE_MS + 500, tab=1, is_click=1, is_like=0, long_view=0),
        dict(
            user_id=30,
            video_id=VIDEOS[5],
            time_ms=BASE_MS + 86_400_000 * 3 + 7,
            tab=0,
            is_click=0,
            is_like=1,
            long_view=1,
        ),
    ]


def log_line(e: dict) -> str:
    seconds = e["time_ms"] // 1000
    hour = (seconds // 3600) % 24
    values = dict(
        e,
        date=20220408,
        hourmin=hour * 100 + 5,
        is_follow=0,
        is_comment=0,
        is_forward=0,
        is_hate=0,
        play_time_ms=1000,
        duration_ms=2000,
        profile_stay_time=0,
        comment_stay_time=0,
        is_profile_enter=0,
        is_rand=0,
    )
    return ",".join(str(values[c]) for c in kuairand.LOG_HEADER)


def write_logs(path: Path, rows: list[dict], header: tuple[str, ...] = kuairand.LOG_HEADER) -> None:
    lines = [",".join(header)] + [log_line(e) for e in rows]
    if header != kuairand.LOG_HEADER:
        keep = [kuairand.LOG_HEADER.index(c) for c in header]
        lines = lines[:1] + [",".join(line.split(",")[i] for i in keep) for line in lines[1:]]
    path.write_text("\n".join(lines) + "\n")


def user_line(user: int) -> str:
    i = TABLE_USERS.index(user)
    degree = ("high_active", "full_active", "middle_active", "UNKNOWN")[i % 4]
    values = [user, degree, i % 2, 0, 1, 9 * (i + 1), '"(0,10]"', 300, '"[100,1k)"', 0, "0", 100 + i, "730+"]
    values += [(i + k) % 3 if k != 4 else "" for k in range(18)]  # onehot_feat4 empty -> unknown
    return ",".join(str(v) for v in values)


def video_line(video: int) -> str:
    i = TABLE_VIDEOS.index(video)
    tag = {0: '"1,2"', 1: "", 2: "3"}[i % 3]
    duration = "" if i == 4 else f"{(i + 1) * 1000}.0"
    values = [
        video,
        5000 + i % 4,
        "NORMAL" if i % 5 else "AD",
        UPLOAD_DAY,
        "ShortImport",
        1,
        duration,
        720,
        1280,
        77 + i % 2,
        4,
        tag,
    ]
    return ",".join(str(v) for v in values)


USER_HEADER = (
    "user_id,user_active_degree,is_lowactive_period,is_live_streamer,is_video_author,follow_user_num,"
    "follow_user_num_range,fans_user_num,fans_user_num_range,friend_user_num,friend_user_num_range,"
    "register_days,register_days_range," + ",".join(f"onehot_feat{k}" for k in range(18))
)
VIDEO_HEADER = (
    "video_id,author_id,video_type,upload_dt,upload_type,visible_status,video_duration,server_width,"
    "server_height,music_id,music_type,tag"
)


def write_raw(folder: Path, variant: str = "1k") -> Path:
    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    rows = events()
    cut = BASE_MS + 6 * 7 * 3_600_000
    write_logs(data / f"log_standard_4_08_to_4_21_{variant}.csv", [e for e in rows if e["time_ms"] < cut])
    write_logs(data / f"log_standard_4_22_to_5_08_{variant}.csv", [e for e in rows if e["time_ms"] >= cut])
    write_logs(data / f"log_random_4_22_to_5_08_{variant}.csv", random_events())
    (data / f"user_features_{variant}.csv").write_text(
        "\n".join([USER_HEADER] + [user_line(u) for u in TABLE_USERS]) + "\n"
    )
    (data / f"video_features_basic_{variant}.csv").write_text(
        "\n".join([VIDEO_HEADER] + [video_line(v) for v in TABLE_VIDEOS]) + "\n"
    )
    return folder


def convert(src: Path, out: Path, **kwargs):
    return kuairand.convert(kuairand.Options(src=src, out=out, **kwargs))


def read_split(out: Path, spec, split: str) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in spec.files(out, split)])


def raw_rows(out: Path, spec, split: str, all_events: list[dict]) -> tuple[pa.Table, list[dict]]:
    """The split's table and, per row, the raw event it came from (by user and decoded video)."""
    table = read_split(out, spec, split)
    by_key = {(e["user_id"], e["video_id"]): e for e in all_events}
    videos = sorted({e["video_id"] for e in all_events})
    rows = [by_key[(u, videos[v - 1])] for u, v in zip(table["group_id"].to_pylist(), table["video_id"].to_pylist())]
    return table, rows


def expected_history(event: dict, all_events: list[dict], max_length: int) -> list[int]:
    """Brute force: the user's clicked videos strictly before the event, oldest first, as raw ids."""
    earlier = sorted(
        (
            e
            for e in all_events
            if e["user_id"] == event["user_id"] and e["is_click"] == 1 and e["time_ms"] < event["time_ms"]
        ),
        key=lambda e: e["time_ms"],
    )
    return [e["video_id"] for e in earlier][-max_length:]


@pytest.fixture
def converted(tmp_path: Path):
    src = write_raw(tmp_path / "KuaiRand-1K")
    out = tmp_path / "out"
    return src, out, convert(src, out, max_length=4, num_partitions=2)


def test_rows_domains_labels_and_temporal_split(converted):
    _, out, spec = converted
    all_events = events()
    assert sum(s.rows for s in spec.splits.values()) == len(all_events)
    assert spec.domain_names == ["tab0", "tab1", "tab3"]
    assert spec.label_names == ["is_click", "long_view", "is_like"]
    seconds = np.asarray([e["time_ms"] // 1000 for e in all_events])
    t1, t2 = temporal_split_points(seconds, (0.8, 0.1, 0.1))
    per_domain = np.zeros(3, dtype=int)
    for split in ("train", "valid", "test"):
        table, rows = raw_rows(out, spec, split, all_events)
        times = np.asarray([e["time_ms"] // 1000 for e in rows])
        low, high = {"train": (0, t1), "valid": (t1, t2), "test": (t2, np.inf)}[split]
        assert np.all((times >= low) & (times < high)), split
        assert table.num_rows == int(((seconds >= low) & (seconds < high)).sum())
        assert table["domain"].to_pylist() == [TABS.index(e["tab"]) for e in rows]
        for label in ("is_click", "long_view", "is_like"):
            assert table[label].to_pylist() == [e[label] for e in rows]
        per_domain += np.asarray(spec.splits[split].rows_per_domain)
    np.testing.assert_array_equal(per_domain, np.bincount([TABS.index(e["tab"]) for e in all_events]))
    assert spec.splits["train"].rows > spec.splits["test"].rows > 0


def test_histories_are_strictly_earlier_clicks(converted):
    _, out, spec = converted
    all_events = events()
    videos = sorted({e["video_id"] for e in all_events})
    time_of = {(e["user_id"], e["video_id"]): e["time_ms"] for e in all_events}
    checked_nonempty = 0
    for split in ("train", "valid", "test"):
        table, rows = raw_rows(out, spec, split, all_events)
        for hist, event in zip(table["hist_video_id"].to_pylist(), rows):
            raw_hist = [videos[v - 1] for v in hist]
            assert raw_hist == expected_history(event, all_events, 4)
            assert event["video_id"] not in raw_hist  # the impression never sees itself
            assert all(time_of[(event["user_id"], v)] < event["time_ms"] for v in raw_hist)
            checked_nonempty += bool(hist)
        author_of = _author_of(out, spec)
        assert table["hist_author_id"].to_pylist() == [
            [author_of.get(v, -1) for v in h] for h in table["hist_video_id"].to_pylist()
        ]
    assert checked_nonempty > 20
    # The two same-millisecond events of user 10 do not see each other.
    twin_time = all_events[5]["time_ms"]
    train = [raw_rows(out, spec, s, all_events) for s in ("train", "valid", "test")]
    twins = [
        (h, e)
        for t, rows in train
        for h, e in zip(t["hist_video_id"].to_pylist(), rows)
        if e["user_id"] == 10 and e["time_ms"] == twin_time
    ]
    assert len(twins) == 2
    for hist, _event in twins:
        others = {e["video_id"] for e in all_events if e["user_id"] == 10 and e["time_ms"] == twin_time}
        assert not others & {videos[v - 1] for v in hist}
    hist_spec = spec.column("hist_video_id")
    assert hist_spec.table == "video" and spec.column("video_id").table == "video"
    assert spec.column("hist_author_id").table == spec.column("author_id").table == "author"
    assert hist_spec.sequence_group == "hist" and hist_spec.max_length == 4


def _author_of(out: Path, spec) -> dict[int, int]:
    """Video code -> author code, as the candidate columns give them."""
    author_of = {}
    for split in spec.splits:
        t = read_split(out, spec, split)
        author_of.update(zip(t["video_id"].to_pylist(), t["author_id"].to_pylist()))
    return author_of


def test_side_feature_joins_with_unknown_ids(converted):
    _, out, spec = converted
    all_events = events()
    tables = [raw_rows(out, spec, s, all_events) for s in ("train", "valid", "test")]
    table = pa.concat_tables([t for t, _ in tables])
    rows = [e for _, r in tables for e in r]
    users = np.asarray([e["user_id"] for e in rows])
    videos = np.asarray([e["video_id"] for e in rows])
    # user_id codes: the union of log and table users, sorted: 10,20,30,40,50,60 -> 1..6.
    np.testing.assert_array_equal(table["user_id"].to_numpy(), np.searchsorted([10, 20, 30, 40, 50, 60], users) + 1)
    np.testing.assert_array_equal(table["group_id"].to_numpy(), users)
    assert spec.column("user_id").cardinality == 7
    # user_active_degree vocabulary (sorted): UNKNOWN, full_active, high_active, middle_active -> 1..4.
    degree = {10: 3, 20: 2, 30: 4, 40: 1, 50: 0}
    assert table["user_active_degree"].to_pylist() == [degree[u] for u in users]
    assert spec.column("user_active_degree").cardinality == 5
    missing_user = users == 50
    for column in kuairand.USER_CATEGORICAL:
        assert np.all(table[column].to_numpy()[missing_user] == kuairand.UNKNOWN), column
    assert np.all(table["onehot_feat4"].to_numpy() == kuairand.UNKNOWN)  # empty in the table
    follow = {10: 9, 20: 18, 30: 27, 40: 36, 50: None}
    np.testing.assert_allclose(
        table["follow_user_num"].to_numpy(), [np.log1p(follow[u]) if follow[u] else 0.0 for u in users], rtol=1e-6
    )
    # Videos 118, 119 have no basic features: author, categories and tag bag unknown.
    missing_video = videos >= 118
    assert missing_video.any()
    for column in ("author_id",) + kuairand.VIDEO_CATEGORICAL:
        assert np.all(table[column].to_numpy()[missing_video] == kuairand.UNKNOWN), column
        assert np.all(table[column].to_numpy()[~missing_video] > 0), column
    tags = table["tag"].to_pylist()
    # Tag vocabulary 1, 2, 3 -> codes 1..3; i % 3 == 0 -> [1, 2], 1 -> empty -> [0], 2 -> [3].
    expected_tags = {0: [1, 2], 1: [0], 2: [3]}
    for bag, video in zip(tags, videos):
        assert bag == ([0] if video >= 118 else expected_tags[TABLE_VIDEOS.index(video) % 3])
    author = {v: 5000 + TABLE_VIDEOS.index(v) % 4 for v in TABLE_VIDEOS[:-1]}
    assert table["author_id"].to_pylist() == [0 if v >= 118 else author[v] - 5000 + 1 for v in videos]
    # Dense: duration in seconds (video index 4 has none), video age from upload_dt.
    duration = [0.0 if v >= 118 or TABLE_VIDEOS.index(v) == 4 else np.log1p(TABLE_VIDEOS.index(v) + 1) for v in videos]
    np.testing.assert_allclose(table["video_duration"].to_numpy(), duration, rtol=1e-6)
    upload_day = np.datetime64(UPLOAD_DAY).astype("datetime64[D]").astype(np.int64)
    age = [0.0 if e["video_id"] >= 118 else np.log1p(e["time_ms"] // 86_400_000 - upload_day) for e in rows]
    np.testing.assert_allclose(table["video_age_days"].to_numpy(), age, rtol=1e-6)
    assert table["hour"].to_pylist() == [(e["time_ms"] // 3_600_000) % 24 for e in rows]
    assert spec.notes["log videos with basic features"] == "18 of 20"
    assert spec.notes["log users with features"] == "4 of 5"


def test_tab_filter_keeps_cross_tab_history(tmp_path):
    src = write_raw(tmp_path / "raw")
    out = tmp_path / "out"
    spec = convert(src, out, tabs=[3, 0], max_length=50, num_partitions=1)
    all_events = events()
    kept = [e for e in all_events if e["tab"] in (3, 0)]
    assert spec.domain_names == ["tab3", "tab0"]
    assert sum(s.rows for s in spec.splits.values()) == len(kept)
    videos = sorted({e["video_id"] for e in all_events})
    seen_other_tab = False
    for split in spec.splits:
        table, rows = raw_rows(out, spec, split, all_events)
        assert table["domain"].to_pylist() == [(3, 0).index(e["tab"]) for e in rows]
        for hist, event in zip(table["hist_video_id"].to_pylist(), rows):
            raw_hist = [videos[v - 1] for v in hist]
            assert raw_hist == expected_history(event, all_events, 50)  # clicks of every tab count
            tabs = {e["tab"] for e in all_events if e["user_id"] == event["user_id"] and e["video_id"] in raw_hist}
            seen_other_tab |= 1 in tabs
    assert seen_other_tab


def test_partition_count_does_not_change_output(tmp_path, converted):
    src, out, spec = converted
    out1 = tmp_path / "one"
    spec1 = convert(src, out1, max_length=4, num_partitions=1)
    assert {k: v.rows for k, v in spec.splits.items()} == {k: v.rows for k, v in spec1.splits.items()}
    for split in spec.splits:
        a = read_split(out, spec, split).sort_by([("group_id", "ascending"), ("video_id", "ascending")])
        b = read_split(out1, spec1, split).sort_by([("group_id", "ascending"), ("video_id", "ascending")])
        assert a.equals(b), split


def test_random_log_and_label_options(tmp_path):
    src = write_raw(tmp_path / "raw")
    spec = convert(src, tmp_path / "out", include_random=True, labels=["is_like"], split_fractions=[0.5, 0.25, 0.25])
    assert sum(s.rows for s in spec.splits.values()) == len(events()) + len(random_events())
    assert spec.label_names == ["is_like"]
    assert "log_random_4_22_to_5_08_1k.csv" in spec.notes["logs"]
    all_events = events() + random_events()
    table, rows = raw_rows(tmp_path / "out", spec, "train", all_events)
    assert table["is_like"].to_pylist() == [e["is_like"] for e in rows]
    assert spec.splits["train"].rows == pytest.approx(0.5 * len(all_events), abs=2)


def test_split_points_from_counts_match_temporal_split_points():
    rng = np.random.default_rng(1)
    times = rng.integers(0, 50, size=1000)
    values, counts = np.unique(times, return_counts=True)
    for fractions in ((0.8, 0.1, 0.1), (0.5, 0.5, 0.0), (1.0, 0.0, 0.0), (0.34, 0.33, 0.33)):
        assert kuairand.split_points_from_counts(values, counts, fractions) == temporal_split_points(times, fractions)


def test_missing_files_and_columns_are_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        convert(tmp_path / "nowhere", tmp_path / "out")
    src = write_raw(tmp_path / "raw")
    (src / "data" / "user_features_1k.csv").unlink()
    with pytest.raises(DataError, match="variant"):
        convert(src, tmp_path / "out")
    with pytest.raises(DataError, match="file not found") as info:
        convert(src, tmp_path / "out", variant="1k")
    assert info.value.file.endswith("user_features_1k.csv")
    src = write_raw(tmp_path / "raw2")
    path = src / "data" / "log_standard_4_22_to_5_08_1k.csv"
    rows = [e for e in events() if e["time_ms"] >= BASE_MS + 6 * 7 * 3_600_000]
    write_logs(path, rows, header=tuple(c for c in kuairand.LOG_HEADER if c != "time_ms"))
    with pytest.raises(DataError, match="time_ms") as info:
        convert(src, tmp_path / "out")
    assert info.value.column == "time_ms" and info.value.row == 1 and info.value.file.endswith(path.name)
    src = write_raw(tmp_path / "raw3")
    path = src / "data" / "video_features_basic_1k.csv"
    path.write_text(path.read_text().replace(",tag\n", "\n", 1))
    with pytest.raises(DataError, match="tag"):
        convert(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "column, value, message", [("tab", 15, "0..14"), ("is_click", 2, "0 or 1"), ("time_ms", "", "missing value")]
)
def test_bad_log_values_are_errors(tmp_path, column, value, message):
    src = write_raw(tmp_path / "raw")
    path = src / "data" / "log_standard_4_08_to_4_21_1k.csv"
    lines = path.read_text().splitlines()
    fields = lines[3].split(",")
    fields[kuairand.LOG_HEADER.index(column)] = str(value)
    lines[3] = ",".join(fields)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=message) as info:
        convert(src, tmp_path / "out")
    assert info.value.row == 4 and info.value.column == column and info.value.file.endswith(path.name)


def expected_session_ordinals(all_events: list[dict], gap_minutes: float) -> dict[tuple[int, int], int]:
    """Brute force of the gap rule: (user, raw video) -> the index of its session among the user's sessions."""
    out = {}
    for user in {e["user_id"] for e in all_events}:
        mine = sorted((e for e in all_events if e["user_id"] == user), key=lambda e: e["time_ms"])
        ordinal = 0
        for before, event in zip([None] + mine[:-1], mine):
            if before is not None and event["time_ms"] - before["time_ms"] > gap_minutes * 60_000:
                ordinal += 1
            out[(user, event["video_id"])] = ordinal
    return out


@pytest.mark.parametrize(
    "options, random_log, sessions_per_user",
    [
        # 30 min: events 7 h apart are separate sessions; user 10's two events at one millisecond share one,
        # as do user 20's random-log event and its first standard event 0.5 s later
        (dict(include_random=True), True, None),
        # exactly 7 h between lines is not more than 7 h: one session per user
        (dict(session_gap_minutes=420), False, 1),
        # tabs 3 and 0 only: kept rows are 7 or 14 h apart, but the skipped tab-1 lines (never rows)
        # still chain them within 8 h, so every user keeps one session
        (dict(tabs=[3, 0], session_gap_minutes=480), False, 1),
    ],
)
def test_sessions_follow_the_gap_rule_over_all_log_lines(tmp_path, options, random_log, sessions_per_user):
    src = write_raw(tmp_path / "raw")
    out = tmp_path / "out"
    spec = convert(src, out, max_length=4, num_partitions=2, **options)
    assert spec.session_column == "session_id"
    all_events = events() + (random_events() if random_log else [])
    reference = expected_session_ordinals(all_events, options.get("session_gap_minutes", 30))
    users_plus_one = spec.column("user_id").cardinality  # log and table users (encoded 1..n) + unknown
    sessions_of: dict[int, set[int]] = {}
    for split in spec.splits:
        table, rows = raw_rows(out, spec, split, all_events)
        codes = table["user_id"].to_pylist()
        for session, code, event in zip(table["session_id"].to_pylist(), codes, rows):
            assert session == reference[(event["user_id"], event["video_id"])] * users_plus_one + code
            sessions_of.setdefault(event["user_id"], set()).add(session)
    if sessions_per_user is not None:
        assert all(len(s) == sessions_per_user for s in sessions_of.values())
    else:
        assert len(sessions_of[10]) == EVENTS_PER_USER  # 13 lines of user 10, two of them at one millisecond
        assert len(sessions_of[20]) == EVENTS_PER_USER  # 13 lines of user 20, the random one 0.5 s before another
    every = [s for sessions in sessions_of.values() for s in sessions]
    assert len(set(every)) == len(every)  # no session id is shared by two users
