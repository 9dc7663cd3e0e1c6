"""KuaiRand (1K / Pure / 27K) -> parquet + spec: one row per logged impression, ``tab`` = scenario.

Input (``--src``, or its ``data/`` sub-folder as the archives extract): ``log_standard_*_<v>.csv``
(and ``..._<v>_part<N>.csv``), optionally ``log_random_*_<v>.csv`` (``--include-random``),
``user_features_<v>.csv`` and ``video_features_basic_<v>.csv``, where ``<v>`` is the variant
(``1k``, ``pure``, ``27k``; found from the one ``user_features_*.csv`` unless ``--variant`` is given).

Choices made where the data or the brief leave room:

* Rows: every log line whose ``tab`` is kept (``--tabs``, default all tabs that occur) is one
  impression. Domains are the kept tabs in ``--tabs`` order (default: ascending), named ``tab<k>``.
  A tab outside 0..14 is a :class:`DataError`.
* Labels: ``--labels`` (default ``is_click long_view is_like``), named as in the log; each must be
  0/1.
* Ids are re-encoded to ``1..n`` with ``0`` = unknown (a missing join or an empty value):
  ``user_id`` over the users of the logs and of the user table, ``video_id`` over the videos of the
  logs, ``author_id`` and every other categorical column over the rows of the side tables that
  the logs use. Cardinality = n + 1, ``oov="reject"``. ``group_id`` is the raw user id.
* Sessions (``session_id``, the key of S-GAUC): the log has no session id, so sessions are cut by a
  gap rule on ``time_ms``. A user's loaded log lines (every tab, every loaded log — as for the
  history — not only the kept rows), in time order, start a new session at the user's first line
  and at every line more than ``--session-gap-minutes`` (default 30) after the user's previous line.
  ``session_id = ordinal * (users + 1) + user code`` with ``ordinal`` the session's index among the
  user's sessions (0-based) and the user code of ``user_id``: each session belongs to one user, and
  the id does not depend on the partitioning. The split cuts on time, so a session that straddles a
  cut has rows in both splits (S-GAUC of a split sees the session's rows in that split).
* User side: ``user_active_degree``, ``is_lowactive_period``, ``is_live_streamer``,
  ``is_video_author``, the four ``*_range`` columns and ``onehot_feat0..17`` are ids; the counts
  ``follow_user_num``, ``fans_user_num``, ``friend_user_num``, ``register_days`` are dense
  ``log1p`` (0 when unknown).
* Video side: ``author_id``, ``video_type``, ``upload_type``, ``visible_status``, ``music_id``,
  ``music_type`` are ids; ``tag`` (comma-separated) is a ``multi_id`` bag (``[0]`` when unknown or
  empty); ``video_duration`` (seconds), ``server_width``, ``server_height`` are dense ``log1p``, and
  ``video_age_days`` = ``log1p`` of the days from ``upload_dt`` to the impression (0 when unknown).
  ``hour`` = ``hourmin // 100`` (mod 24) is an id of the impression context.
* History (sequence group ``hist``): ``hist_video_id`` (table ``video``) and ``hist_author_id``
  (table ``author``) are the user's clicked (``is_click = 1``) videos with ``time_ms`` strictly
  before the impression, oldest first, the ``--max-length`` most recent. Clicks in every tab and in
  every loaded log count (also tabs not kept as rows): the behaviour is the user's, across scenarios.
* Split: temporal by ``time_ms`` over the kept rows: ``--split-fractions`` (default 0.8 0.1 0.1)
  with the cut rule of :func:`data_prep.common.temporal_split_points`, applied to whole seconds (so
  memory does not grow with the number of distinct milliseconds; no second straddles two splits).
* Bounded memory: the logs are streamed and hash-partitioned by user to disk
  (:class:`DiskPartitioner`), and each partition's histories are built in chunks of users. The
  side tables are held in memory (the video table only for the videos the logs use).

Row numbers in errors are 1-based line numbers of the file (the header is line 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_prep.common import OutputOptions, progress, stream_csv, take_bags, writer_for
from data_prep.ids import IdCounter
from data_prep.history import build_history
from data_prep.partition import DiskPartitioner
from data_prep.writer import list_array
from torchrec_mdr.config import ConfigError, bounds, doc
from torchrec_mdr.data.errors import DataError
from torchrec_mdr.data.spec import ColumnSpec, DatasetSpec

LOG_HEADER = ("user_id", "video_id", "date", "hourmin", "time_ms", "is_click", "is_like", "is_follow",
              "is_comment", "is_forward", "is_hate", "long_view", "play_time_ms", "duration_ms",
              "profile_stay_time", "comment_stay_time", "is_profile_enter", "is_rand", "tab")
LABEL_CHOICES = ("is_click", "is_like", "is_follow", "is_comment", "is_forward", "is_hate", "long_view",
                 "is_profile_enter")
NUM_TABS = 15
USER_CATEGORICAL = (("user_active_degree", "is_lowactive_period", "is_live_streamer", "is_video_author",
                     "follow_user_num_range", "fans_user_num_range", "friend_user_num_range",
                     "register_days_range") + tuple(f"onehot_feat{i}" for i in range(18)))
USER_DENSE = ("follow_user_num", "fans_user_num", "friend_user_num", "register_days")
VIDEO_CATEGORICAL = ("video_type", "upload_type", "visible_status", "music_id", "music_type")
VIDEO_DENSE = ("video_duration", "server_width", "server_height")
VIDEO_COLUMNS = ("video_id", "author_id") + VIDEO_CATEGORICAL + ("upload_dt",) + VIDEO_DENSE + ("tag",)
MISSING_TEXT = ("", "nan", "none", "null", "na", "n/a")
UNKNOWN = 0
HISTORY_CHUNK_ROWS = 1 << 16  # impressions per build_history call (bounds the sequence output)
AUTO_PARTITION_BYTES = 128 << 20  # --num-partitions 0: one partition per this many bytes of logs
MS_PER_DAY = 86_400_000


@dataclass(kw_only=True)
class Options(OutputOptions):
    """Options of ``mdr data kuairand``."""

    src: Path = field(metadata=doc("folder with the KuaiRand csv files (or the extracted archive with data/)"))
    variant: str = field(default="", metadata=doc(
        "file suffix of the variant: 1k, pure or 27k (default: the one user_features_*.csv found)"))
    labels: list[str] = field(default_factory=lambda: ["is_click", "long_view", "is_like"], metadata=doc(
        f"label columns, the first is the main one; from {', '.join(LABEL_CHOICES)}"))
    tabs: list[int] = field(default_factory=list, metadata=doc(
        "keep only these tabs as rows, in this domain order (default: every tab that occurs, ascending)"))
    include_random: bool = field(default=False, metadata=doc(
        "also read log_random_*.csv (randomly exposed videos) as impressions and history"))
    max_length: int = field(default=50, metadata=bounds(ge=1, help="most recent clicked videos kept per history"))
    session_gap_minutes: float = field(default=30.0, metadata=bounds(
        gt=0, help="a user's line more than this many minutes after the user's previous line starts a new session"))
    split_fractions: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1], metadata=doc(
        "train, valid, test shares of the rows, cut on time_ms"))
    num_partitions: int = field(default=0, metadata=bounds(
        ge=0, help=f"temporary hash partitions by user (0: one per {AUTO_PARTITION_BYTES >> 20} MiB of logs)"))
    block_size_mb: int = field(default=64, metadata=bounds(ge=1, le=1024, help="CSV read block in MiB"))
    tmp_dir: Path | None = field(default=None, metadata=doc(
        "folder for the temporary partitions (default: the parent folder of OUT)"))

    def validate(self) -> None:
        unknown = [label for label in self.labels if label not in LABEL_CHOICES]
        if not self.labels or unknown or len(set(self.labels)) != len(self.labels):
            raise ConfigError(f"labels must be distinct names from {list(LABEL_CHOICES)}, got {self.labels}")
        if any(not 0 <= t < NUM_TABS for t in self.tabs) or len(set(self.tabs)) != len(self.tabs):
            raise ConfigError(f"tabs must be distinct values in 0..{NUM_TABS - 1}, got {self.tabs}")
        fractions = self.split_fractions
        if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6 or fractions[0] == 0:
            raise ConfigError(f"split_fractions must be 3 shares >= 0 summing to 1 (train > 0), got {fractions}")


# --------------------------------------------------------------------------- files


@dataclass
class Files:
    """The input files of one variant."""

    variant: str
    standard: list[Path]
    random: list[Path]
    users: Path
    videos: Path


def find_files(src: Path, variant: str = "") -> Files:
    """Locate the files of a variant in ``src`` or ``src/data``; raise DataError naming what is missing."""
    if not src.is_dir():
        raise DataError("the source folder does not exist", file=src)
    folder = next((f for f in (src, src / "data") if f.is_dir() and any(f.glob("log_standard_*.csv"))), src)
    if not variant:
        found = sorted(p.name[len("user_features_"):-len(".csv")] for p in folder.glob("user_features_*.csv"))
        if len(found) != 1:
            what = f"several variants ({', '.join(found)}); choose one with --variant" if found else \
                "no user_features_*.csv"
            raise DataError(f"cannot tell the KuaiRand variant: {what}", file=folder)
        variant = found[0]

    def logs(kind: str) -> list[Path]:
        whole = set(folder.glob(f"log_{kind}_*_{variant}.csv"))
        return sorted(whole | set(folder.glob(f"log_{kind}_*_{variant}_part*.csv")))

    files = Files(variant, logs("standard"), logs("random"), folder / f"user_features_{variant}.csv",
                  folder / f"video_features_basic_{variant}.csv")
    if not files.standard:
        raise DataError(f"file not found: no log_standard_*_{variant}.csv", file=folder)
    for path in (files.users, files.videos):
        if not path.is_file():
            raise DataError("file not found", file=path)
    return files


def check_header(path: Path, required: tuple[str, ...] | list[str]) -> None:
    """Raise DataError naming the first required column the header line of ``path`` lacks."""
    with open(path, "rb") as f:
        line = f.readline().decode("utf-8", errors="replace").lstrip("\ufeff").strip()
    header = [h.strip().strip('"') for h in line.split(",")]
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(f"the header lacks column(s) {missing}", file=path, column=missing[0], row=1)


def _stream(path: Path, types: dict[str, pa.DataType], block_size: int) -> Iterator[tuple[pa.RecordBatch, int]]:
    """Batches of a headed CSV with the line number of each batch's first row; nulls are errors."""
    check_header(path, list(types))
    line = 2
    for batch in stream_csv(path, None, types, block_size=block_size, desc=path.name):
        for name in types:
            column = batch[name]
            if column.null_count and not pa.types.is_string(column.type) and name not in _NULLABLE:
                i = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
                raise DataError("missing value", file=path, column=name, row=line + i)
        yield batch, line
        line += batch.num_rows


_NULLABLE = set(USER_DENSE) | set(VIDEO_DENSE) | {"author_id"}


# --------------------------------------------------------------------------- pass 1: logs


@dataclass
class _LogState:
    users: IdCounter
    videos: IdCounter
    seconds: IdCounter  # impressions per whole second
    tabs: IdCounter
    rows: int = 0
    impressions: int = 0


def _log_pass(path: Path, options: Options, state: _LogState, partitioner: DiskPartitioner) -> None:
    """Stream one log into the partitioner (every line: history) and count its kept impressions."""
    label_names = list(dict.fromkeys(["is_click"] + options.labels))
    types = {"user_id": pa.int64(), "video_id": pa.int64(), "hourmin": pa.int64(), "time_ms": pa.int64(),
             "tab": pa.int64(), **{name: pa.int64() for name in label_names}}
    keep_tabs = np.asarray(options.tabs, dtype=np.int64)
    for batch, line in _stream(path, types, options.block_size_mb << 20):
        tab = batch["tab"].to_numpy()
        bad = np.flatnonzero((tab < 0) | (tab >= NUM_TABS))
        if bad.size:
            raise DataError(f"tab must lie in 0..{NUM_TABS - 1}, got {tab[bad[0]]}", file=path, column="tab",
                            row=line + int(bad[0]))
        for name in label_names:
            values = batch[name].to_numpy()
            bad = np.flatnonzero((values != 0) & (values != 1))
            if bad.size:
                raise DataError(f"must be 0 or 1, got {values[bad[0]]}", file=path, column=name,
                                row=line + int(bad[0]))
        for name in ("user_id", "video_id"):
            bad = np.flatnonzero(batch[name].to_numpy() < 0)
            if bad.size:
                raise DataError("ids must be >= 0", file=path, column=name, row=line + int(bad[0]))
        kept = np.isin(tab, keep_tabs) if keep_tabs.size else np.ones(len(tab), dtype=bool)
        time_ms = batch["time_ms"].to_numpy()
        state.users.add(batch["user_id"].to_numpy())
        state.videos.add(batch["video_id"].to_numpy())
        state.seconds.add(time_ms[kept] // 1000)
        state.tabs.add(tab[kept])
        columns = {name: batch[name] for name in types}
        columns["kept"] = pa.array(kept)
        columns["seq"] = pa.array(np.arange(state.rows, state.rows + batch.num_rows, dtype=np.int64))
        partitioner.add(pa.table(columns))
        state.rows += batch.num_rows
        state.impressions += int(kept.sum())


def split_points_from_counts(values: np.ndarray, counts: np.ndarray,
                             fractions: tuple[float, float, float]) -> tuple[int, int]:
    """:func:`temporal_split_points` of ``np.repeat(values, counts)`` without expanding it."""
    order = np.argsort(values, kind="stable")
    values, counts = np.asarray(values)[order], np.asarray(counts)[order]
    cumulative = np.cumsum(counts)
    n = int(cumulative[-1])

    def value_at(index: int) -> int:
        return int(values[np.searchsorted(cumulative, index, side="right")])

    t1 = value_at(min(int(n * fractions[0]), n - 1))
    t2 = value_at(min(int(n * (fractions[0] + fractions[1])), n - 1))
    return t1, max(t1, t2)


# --------------------------------------------------------------------------- side tables


def encode_text(values: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, int]:
    """Categorical text -> codes ``1..n`` in sorted order, ``0`` for missing ('', 'nan', ...); and n."""
    text = pc.utf8_trim_whitespace(pc.cast(values, pa.string()).fill_null(""))
    missing = pc.is_in(pc.utf8_lower(text), value_set=pa.array(MISSING_TEXT)).to_numpy(zero_copy_only=False)
    vocabulary = pc.unique(text.filter(pa.array(~missing)))
    vocabulary = pc.take(vocabulary, pc.sort_indices(vocabulary))
    codes = pc.index_in(text, value_set=vocabulary).fill_null(-1).to_numpy() + 1
    codes = np.where(missing, UNKNOWN, codes).astype(np.int64)
    return codes, len(vocabulary)


def log1p_dense(values: pa.Array | pa.ChunkedArray, scale: float = 1.0) -> np.ndarray:
    """``log1p(max(x * scale, 0))`` as float32, 0 for missing values."""
    x = pc.cast(values, pa.float64()).fill_null(0.0).to_numpy(zero_copy_only=False)
    x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    return np.log1p(np.maximum(x * scale, 0.0)).astype(np.float32)


@dataclass
class SideTable:
    """Features indexed by an encoded id (row 0 = unknown): ids, dense values, CSR bags."""

    ids: dict[str, np.ndarray]
    cardinality: dict[str, int]
    dense: dict[str, np.ndarray]
    bag_offsets: np.ndarray | None = None
    bag_values: np.ndarray | None = None
    matched: int = 0  # ids of the logs found in the table


def _read_table(path: Path, types: dict[str, pa.DataType], block_size: int,
                keep_ids: np.ndarray | None = None) -> pa.Table:
    """Read a side table (streamed), keeping only rows whose first column is in ``keep_ids``."""
    key = next(iter(types))
    batches = []
    value_set = pa.array(keep_ids) if keep_ids is not None else None
    for batch, _ in _stream(path, types, block_size):
        if value_set is not None:
            batch = batch.filter(pc.is_in(batch[key], value_set=value_set))
        batches.append(batch)
    table = pa.Table.from_batches(batches, schema=batches[0].schema) if batches else None
    if table is None:
        return pa.table({name: pa.array([], tp) for name, tp in types.items()})
    ids = table[key].to_numpy()
    _, first = np.unique(ids, return_index=True)  # a repeated id: the first line wins
    return table.take(pa.array(np.sort(first)))


def user_table(path: Path, log_users: np.ndarray, block_size: int) -> tuple[SideTable, np.ndarray]:
    """User features indexed by the encoded user id, and the user vocabulary.

    The vocabulary is the sorted union of the log's and the table's users (encoded = position + 1).
    """
    types = {"user_id": pa.int64(), **{c: pa.string() for c in USER_CATEGORICAL},
             **{c: pa.float64() for c in USER_DENSE}}
    table = _read_table(path, types, block_size)
    table_users = table["user_id"].to_numpy()
    vocabulary = np.union1d(log_users, table_users)
    rows = np.searchsorted(vocabulary, table_users) + 1
    size = vocabulary.size + 1
    side = SideTable(ids={}, cardinality={}, dense={}, matched=int(np.isin(log_users, table_users).sum()))
    for column in USER_CATEGORICAL:
        codes, n = encode_text(table[column])
        side.ids[column] = _scatter(rows, codes, size, np.int64)
        side.cardinality[column] = n + 1
    for column in USER_DENSE:
        side.dense[column] = _scatter(rows, log1p_dense(table[column]), size, np.float32)
    return side, vocabulary


def video_table(path: Path, vocabulary: np.ndarray, block_size: int) -> tuple[SideTable, np.ndarray]:
    """Video features indexed by the encoded video id, and the upload day (days since 1970, -1 unknown)."""
    types = {"video_id": pa.int64(), "author_id": pa.int64(), **{c: pa.string() for c in VIDEO_CATEGORICAL},
             "upload_dt": pa.string(), **{c: pa.float64() for c in VIDEO_DENSE}, "tag": pa.string()}
    table = _read_table(path, types, block_size, keep_ids=vocabulary)
    rows = np.searchsorted(vocabulary, table["video_id"].to_numpy()) + 1
    size = vocabulary.size + 1
    side = SideTable(ids={}, cardinality={}, dense={}, matched=table.num_rows)
    authors = table["author_id"]
    author_vocabulary = np.unique(pc.drop_null(authors).to_numpy())
    author_codes = np.searchsorted(author_vocabulary, authors.fill_null(0).to_numpy()) + 1
    side.ids["author_id"] = _scatter(rows, np.where(authors.is_null().to_numpy(zero_copy_only=False), UNKNOWN,
                                                    author_codes), size, np.int64)
    side.cardinality["author_id"] = author_vocabulary.size + 1
    for column in VIDEO_CATEGORICAL:
        codes, n = encode_text(table[column])
        side.ids[column] = _scatter(rows, codes, size, np.int64)
        side.cardinality[column] = n + 1
    side.dense["video_duration"] = _scatter(rows, log1p_dense(table["video_duration"], 1e-3), size, np.float32)
    for column in ("server_width", "server_height"):
        side.dense[column] = _scatter(rows, log1p_dense(table[column]), size, np.float32)
    upload = pc.strptime(pc.utf8_trim_whitespace(table["upload_dt"]), format="%Y-%m-%d", unit="s",
                         error_is_null=True)
    days = pc.cast(upload, pa.int64()).fill_null(-1).to_numpy() // 86_400  # unknown -> -1
    upload_day = _scatter(rows, days, size, np.int64, fill=-1)
    # Tags: comma-separated tokens -> codes 1..n; a video without tags (or unknown) -> [0].
    tags = pc.split_pattern(pc.fill_null(table["tag"], ""), ",")
    tokens = pc.utf8_trim_whitespace(pc.list_flatten(tags))
    parent = pc.list_parent_indices(tags).to_numpy().astype(np.int64)
    codes, n = encode_text(tokens)
    side.cardinality["tag"] = n + 1
    present = codes != UNKNOWN
    token_video = rows[parent[present]]  # the encoded video of every tag token
    order = np.argsort(token_video, kind="stable")
    token_video, token_code = token_video[order], codes[present][order]
    counts = np.bincount(token_video, minlength=size)
    offsets = np.zeros(size + 1, dtype=np.int64)
    np.cumsum(np.maximum(counts, 1), out=offsets[1:])
    values = np.full(offsets[-1], UNKNOWN, dtype=np.int64)
    rank = np.arange(token_video.size) - np.repeat(np.cumsum(counts) - counts, counts)
    values[offsets[token_video] + rank] = token_code
    side.bag_offsets, side.bag_values = offsets, values
    return side, upload_day


def _scatter(rows: np.ndarray, values: np.ndarray, size: int, dtype: type, fill: float = 0) -> np.ndarray:
    out = np.full(size, fill, dtype=dtype)
    out[rows] = values
    return out


# --------------------------------------------------------------------------- pass 2: partitions


@dataclass
class _Context:
    options: Options
    users: np.ndarray  # sorted raw user ids (encoded = position + 1)
    videos: np.ndarray  # sorted raw video ids
    user_side: SideTable
    video_side: SideTable
    upload_day: np.ndarray
    domain_of_tab: np.ndarray  # [NUM_TABS] domain or -1
    cut_seconds: tuple[int, int]


def _partition_rows(table: pa.Table, ctx: _Context) -> Iterator[tuple[str, pa.Table]]:
    """Output chunks (split, rows) of one user partition, histories built per chunk of impressions.

    The partition is sorted by (user, time_ms, file order); a chunk's history events are the clicks
    of the users it covers, so every build_history call sees only a slice of the partition.
    """
    names = dict.fromkeys(["user_id", "time_ms", "seq", "video_id", "hourmin", "tab", "kept", "is_click",
                           *ctx.options.labels])
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
        rows = kept[lo:lo + HISTORY_CHUNK_ROWS]
        first = np.searchsorted(event_user, user[rows[0]], side="left")  # events of the chunk's users
        last = np.searchsorted(event_user, user[rows[-1]], side="right")
        offsets, history = build_history(user[rows], time_ms[rows], event_user[first:last],
                                         event_time[first:last],
                                         {k: v[first:last] for k, v in event_fields.items()},
                                         ctx.options.max_length)
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
    """Session ids of log lines sorted by (user, time_ms): the gap rule of the module docstring.

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


def _features(log: dict[str, np.ndarray], video_code: np.ndarray, ctx: _Context) -> dict[str, object]:
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
    offsets, values = take_bags(ctx.video_side.bag_offsets, ctx.video_side.bag_values, video_code)
    out["tag"] = list_array(offsets, values)
    for column in USER_DENSE:
        out[column] = ctx.user_side.dense[column][user_code]
    for column in VIDEO_DENSE:
        out[column] = ctx.video_side.dense[column][video_code]
    upload = ctx.upload_day[video_code]
    age = log["time_ms"] // MS_PER_DAY - upload
    out["video_age_days"] = np.where(upload < 0, 0.0, np.log1p(np.maximum(age, 0))).astype(np.float32)
    return out


def _columns(options: Options, ctx: _Context) -> list[ColumnSpec]:
    users, videos = ctx.users.size + 1, ctx.videos.size + 1
    card = {**ctx.user_side.cardinality, **ctx.video_side.cardinality}
    columns = [ColumnSpec(name, "label", description=f"log column {name}") for name in options.labels]
    columns += [
        ColumnSpec("domain", "domain", description="tab (scenario)"),
        ColumnSpec("group_id", "group", description="raw user_id, for GAUC"),
        ColumnSpec("session_id", "session", description=f"gap > {options.session_gap_minutes:g} min between "
                                                           "a user's lines starts a session; for S-GAUC"),
        ColumnSpec("user_id", "id", table="user", cardinality=users, oov="reject", description="user (0 unknown)"),
        ColumnSpec("video_id", "id", table="video", cardinality=videos, oov="reject", description="candidate video"),
        ColumnSpec("author_id", "id", table="author", cardinality=card["author_id"], oov="reject",
                   description="candidate video's author (0 unknown)"),
        ColumnSpec("hour", "id", cardinality=24, oov="reject", description="hour of the impression (hourmin // 100)"),
    ]
    for column in USER_CATEGORICAL:
        columns.append(ColumnSpec(column, "id", cardinality=card[column], oov="reject",
                                  description=f"user feature {column} (0 unknown)"))
    for column in VIDEO_CATEGORICAL:
        columns.append(ColumnSpec(column, "id", cardinality=card[column], oov="reject",
                                  description=f"video feature {column} (0 unknown)"))
    columns.append(ColumnSpec("tag", "multi_id", cardinality=card["tag"], oov="reject",
                              description="video tags ([0] unknown)"))
    for name, table in (("hist_video_id", "video"), ("hist_author_id", "author")):
        columns.append(ColumnSpec(name, "sequence", table=table, cardinality=videos if table == "video"
                                  else card["author_id"], oov="reject", sequence_group="hist",
                                  max_length=options.max_length,
                                  description="user's earlier clicked videos, oldest first"))
    for column in USER_DENSE:
        columns.append(ColumnSpec(column, "dense", description=f"log1p({column})"))
    columns.append(ColumnSpec("video_duration", "dense", description="log1p(video_duration seconds)"))
    for column in ("server_width", "server_height"):
        columns.append(ColumnSpec(column, "dense", description=f"log1p({column})"))
    columns.append(ColumnSpec("video_age_days", "dense", description="log1p(days from upload_dt to the impression)"))
    return columns


# --------------------------------------------------------------------------- entry point


def convert(options: Options) -> DatasetSpec:
    """Convert KuaiRand (see the module docstring) and return the spec."""
    options.validate()
    files = find_files(Path(options.src), options.variant)
    if options.include_random and not files.random:
        raise DataError(f"--include-random: no log_random_*_{files.variant}.csv", file=files.standard[0].parent)
    logs = files.standard + (files.random if options.include_random else [])
    check_header(files.users, ("user_id",) + USER_CATEGORICAL + USER_DENSE)
    check_header(files.videos, VIDEO_COLUMNS)
    for path in logs:
        check_header(path, ["user_id", "video_id", "hourmin", "time_ms", "tab", "is_click"] + options.labels)
    num_partitions = options.num_partitions or max(1, math.ceil(sum(p.stat().st_size for p in logs)
                                                                 / AUTO_PARTITION_BYTES))
    tmp_dir = Path(options.tmp_dir) if options.tmp_dir is not None else Path(options.out).resolve().parent
    tmp_dir.mkdir(parents=True, exist_ok=True)
    block_size = options.block_size_mb << 20
    state = _LogState(IdCounter(), IdCounter(), IdCounter(), IdCounter())
    with DiskPartitioner("user_id", num_partitions, tmp_dir=tmp_dir) as partitioner:
        for path in logs:
            _log_pass(path, options, state, partitioner)
        if state.impressions == 0:
            raise DataError(f"no impression left (tabs {options.tabs or 'all'})", file=files.standard[0])
        tabs = np.asarray(options.tabs or state.tabs.vocabulary().tolist(), dtype=np.int64)
        domain_of_tab = np.full(NUM_TABS, -1, dtype=np.int64)
        domain_of_tab[tabs] = np.arange(tabs.size)
        seconds, counts = state.seconds.items()
        cut = split_points_from_counts(seconds, counts, tuple(options.split_fractions))
        videos = state.videos.vocabulary()
        log_users = state.users.vocabulary()
        user_side, users = user_table(files.users, log_users, block_size)
        video_side, upload_day = video_table(files.videos, videos, block_size)
        ctx = _Context(options, users, videos, user_side, video_side, upload_day, domain_of_tab, cut)
        notes = {
            "variant": files.variant,
            "logs": ", ".join(p.name for p in logs),
            "domains": ", ".join(f"tab{t} -> {d}" for d, t in enumerate(tabs.tolist())),
            "split": (f"by time_ms: train < {cut[0]} s <= valid < {cut[1]} s <= test "
                      f"(fractions {options.split_fractions})"),
            "history": "clicked videos strictly before the impression, all tabs and loaded logs, oldest first",
            "sessions": (f"a user's lines (all tabs and loaded logs) split where the gap exceeds "
                         f"{options.session_gap_minutes:g} min; session_id = ordinal * (users + 1) + user code"),
            "ids": "re-encoded 1..n per column, 0 = unknown / missing join",
            "log videos with basic features": f"{video_side.matched} of {videos.size}",
            "log users with features": f"{user_side.matched} of {log_users.size}",
            "log lines": f"{state.rows} read, {state.impressions} kept as rows",
        }
        source = (f"KuaiRand-{files.variant} in {files.standard[0].parent} (labels={options.labels}, "
                  f"tabs={tabs.tolist()}, include_random={options.include_random}, "
                  f"max_length={options.max_length}, split_fractions={options.split_fractions}, "
                  f"session_gap_minutes={options.session_gap_minutes:g})")
        with writer_for(options, name=f"kuairand_{files.variant}", columns=_columns(options, ctx),
                        domain_names=[f"tab{t}" for t in tabs.tolist()], source=source, notes=notes) as writer:
            with progress(num_partitions, "histories", unit="part") as bar:
                for table in partitioner.partitions():
                    for split, chunk in _partition_rows(table, ctx):
                        writer.write(split, chunk)
                    bar.update(1)
            return writer.close()
