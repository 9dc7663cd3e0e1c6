"""Pass 2: one user partition -> output rows: sessions by the gap rule, histories of earlier clicks,
the joined side features, the time split."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa

from data_prep.common import take_bags
from data_prep.history import build_history
from data_prep.kuairand.options import USER_CATEGORICAL, USER_DENSE, VIDEO_CATEGORICAL, VIDEO_DENSE, Options
from data_prep.kuairand.side_tables import SideTable
from data_prep.writer import list_array

HISTORY_CHUNK_ROWS = 1 << 16  # impressions per build_history call (bounds the sequence output)
MS_PER_DAY = 86_400_000


@dataclass
class Context:
    """What pass 2 needs from the earlier passes: vocabularies, side tables, tab domains and time cuts."""

    options: Options
    users: np.ndarray  # sorted raw user ids (encoded = position + 1)
    videos: np.ndarray  # sorted raw video ids
    user_side: SideTable
    video_side: SideTable
    upload_day: np.ndarray
    domain_of_tab: np.ndarray  # [NUM_TABS] domain or -1
    cut_seconds: tuple[int, int]


def partition_rows(table: pa.Table, ctx: Context) -> Iterator[tuple[str, pa.Table]]:
    """Output chunks (split, rows) of one user partition, histories built per chunk of impressions.

    The partition is sorted by (user, time_ms, file order); a chunk's history events are the clicks
    of the users it covers, so every build_history call sees only a slice of the partition.
    """
    names = dict.fromkeys(
        ["user_id", "time_ms", "seq", "video_id", "hourmin", "tab", "kept", "is_click", *ctx.options.labels]
    )
    log = {name: table[name].to_numpy() for name in names}
    order = np.lexsort((log["seq"], log["time_ms"], log["user_id"]))
    log = {name: values[order] for name, values in log.items()}
    user, time_ms = log["user_id"], log["time_ms"]
    log["session_id"] = session_ids(user, time_ms, ctx.users, ctx.options.session_gap_minutes)
    video = np.searchsorted(ctx.videos, log["video_id"]) + 1
    clicked = log["is_click"] == 1
    kept = np.flatnonzero(log["kept"])
    event_user, event_time = user[clicked], time_ms[clicked]
    event_fields = {"video": video[clicked], "author": ctx.video_side.ids["author_id"][video[clicked]]}
    t1, t2 = ctx.cut_seconds
    for lo in range(0, kept.size, HISTORY_CHUNK_ROWS):
        rows = kept[lo : lo + HISTORY_CHUNK_ROWS]
        first = np.searchsorted(event_user, user[rows[0]], side="left")  # events of the chunk's users
        last = np.searchsorted(event_user, user[rows[-1]], side="right")
        offsets, history = build_history(
            user[rows],
            time_ms[rows],
            event_user[first:last],
            event_time[first:last],
            {k: v[first:last] for k, v in event_fields.items()},
            ctx.options.max_length,
        )
        chunk = _features({name: values[rows] for name, values in log.items()}, video[rows], ctx)
        chunk["hist_video_id"] = list_array(offsets, history["video"])
        chunk["hist_author_id"] = list_array(offsets, history["author"])
        seconds = time_ms[rows] // 1000
        split = np.where(seconds < t1, 0, np.where(seconds < t2, 1, 2))
        chunk_table = pa.table(chunk)
        for s, name in enumerate(("train", "valid", "test")):
            mask = split == s
            if mask.any():
                yield name, chunk_table.filter(pa.array(mask))


def session_ids(user: np.ndarray, time_ms: np.ndarray, users: np.ndarray, gap_minutes: float) -> np.ndarray:
    """Session ids of log lines sorted by (user, time_ms): the gap rule of the package docstring.

    ``users``: the sorted raw user vocabulary (user code = position + 1). Every line of a user must
    be present (a partition holds all of its users' lines).
    """
    if user.size == 0:
        return np.zeros(0, dtype=np.int64)
    first_of_user = np.r_[True, user[1:] != user[:-1]]
    new_session = first_of_user | np.r_[False, np.diff(time_ms) > gap_minutes * 60_000]
    number = np.cumsum(new_session) - 1  # session index within these lines
    ordinal = number - number[np.flatnonzero(first_of_user)][np.cumsum(first_of_user) - 1]
    return ordinal * (users.size + 1) + np.searchsorted(users, user) + 1


def _features(log: dict[str, np.ndarray], video_code: np.ndarray, ctx: Context) -> dict[str, object]:
    """Labels, domain, ids and dense features of impressions (``log``: their log columns)."""
    out: dict[str, object] = {name: log[name] for name in ctx.options.labels}
    out["domain"] = ctx.domain_of_tab[log["tab"]]
    out["group_id"] = log["user_id"]
    out["session_id"] = log["session_id"]
    user_code = np.searchsorted(ctx.users, log["user_id"]) + 1
    out["user_id"] = user_code
    out["video_id"] = video_code
    out["author_id"] = ctx.video_side.ids["author_id"][video_code]
    out["hour"] = (log["hourmin"] // 100) % 24
    for column in USER_CATEGORICAL:
        out[column] = ctx.user_side.ids[column][user_code]
    for column in VIDEO_CATEGORICAL:
        out[column] = ctx.video_side.ids[column][video_code]
    bag_offsets, bag_values = ctx.video_side.bag_offsets, ctx.video_side.bag_values
    assert bag_offsets is not None and bag_values is not None  # set when the side table is read
    offsets, values = take_bags(bag_offsets, bag_values, video_code)
    out["tag"] = list_array(offsets, values)
    for column in USER_DENSE:
        out[column] = ctx.user_side.dense[column][user_code]
    for column in VIDEO_DENSE:
        out[column] = ctx.video_side.dense[column][video_code]
    upload = ctx.upload_day[video_code]
    age = log["time_ms"] // MS_PER_DAY - upload
    out["video_age_days"] = np.where(upload < 0, 0.0, np.log1p(np.maximum(age, 0))).astype(np.float32)
    return out
