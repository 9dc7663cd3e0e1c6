"""Taobao UserBehavior (Tianchi 649) -> parquet splits + spec: the ADS paper's public dataset.

Raw format: ``UserBehavior.csv``, no header, comma-separated
``user_id,item_id,category_id,behavior_type,timestamp`` with ``behavior_type`` in
``{pv, buy, cart, fav}`` and unix seconds. The full file has 100,150,807 rows (3.5 GB).

What the converter produces, and how it reads the ADS paper (SIGIR'25, §3.1, "Taobao"):

* **One row per event** (an impression). The label column is ``positive``: ``pv`` -> 0,
  ``buy`` / ``cart`` / ``fav`` -> 1 ("page view is considered as a negative interaction and the
  other actions are regarded as positive label").
* **Date window.** Rows whose local date (UTC+8, Beijing, by default) lies outside
  ``first_date .. last_date`` (2017-11-25 .. 2017-12-03, both inclusive) are dropped before
  anything else is counted.
* **Filters** ("users with at least 200 interactions and 10 positive actions are filtered, and
  items with at least 10 interactions are filtered" is read as KEEP those users / items), applied
  once each, in this order:

  1. users: keep users with ``>= min_user_interactions`` rows and ``>= min_user_positives``
     positive rows, counted over the rows in the date window;
  2. items: keep items with ``>= min_item_interactions`` rows, counted over the rows of the kept
     users.

  Not iterated to a fixed point: after the item filter a kept user may hold fewer than 200 rows.
  (The paper reports 101,342 users, 500,272 items and 24.02M instances after its filtering.)
* **Ids** are re-encoded to contiguous ``[0, n)``: the vocabulary of each of ``user_id``,
  ``item_id`` and ``category_id`` is the set of raw ids present in the kept rows, and the new id is
  the rank of the raw id in ascending order (so the mapping can be rebuilt from the raw file).
* **Domains.** ``--domains category``: each category is a domain (the paper's setting; ~9.4k
  domains), the domain id equals the re-encoded ``category_id`` and the domain name is the raw
  category id. ``--domains category-bucket`` (default): the ``num_domains - 1`` categories with the
  most kept rows are one domain each (domain 0 is the largest; ties go to the smaller raw id;
  names are raw category ids) and all other categories form the last domain, ``other``. When
  there are no more than ``num_domains`` categories, each is its own domain and there is no
  ``other``.
* **Splits by local day** (day 0 = ``first_date``): the paper's "former 7 days are used for training
  and the rest are for testing" is ``train_days=7``. The trainer needs a validation split, so the
  last ``valid_days`` (default 1) of those training days are held out as ``valid``: by default
  train = days 0-5 (11-25 .. 11-30), valid = day 6 (12-01), test = days 7-8 (12-02 .. 12-03).
* **Features:** ``user_id``, ``item_id``, ``category_id``, ``hour`` (0-23) and ``day_of_week``
  (0 = Monday) of the local time, ``group_id`` (= ``user_id``, for GAUC), ``domain``.
* **Behaviour sequence** (group ``hist``): ``hist_item_id`` (table ``item``) and
  ``hist_category_id`` (table ``category``) of the user's kept events with a timestamp strictly
  earlier than the impression, oldest first, the ``max_length`` most recent. ``--history
  positives`` (default) uses only buy/cart/fav events, the usual choice for target attention on
  Taobao (page views are the negatives being ranked); ``--history all`` uses every event and adds
  ``hist_behavior_type`` (table ``behavior_type``: 0 pv, 1 buy, 2 cart, 3 fav). Histories span
  the split boundaries (a test row sees the user's train-day events) but never the future, and
  only contain kept rows (events of filtered items are not in any vocabulary).

Memory stays bounded for the 3.5 GB file: pass 1 streams the CSV (:func:`stream_csv`, small
blocks, because pyarrow's read-ahead queue holds dozens of them), counts per raw id with
``bincount`` and hash-partitions the rows by user into temporary parquet files
(:class:`DiskPartitioner`, next to the output folder); the later passes read one partition at a
time: (2) item counts over the kept users, (3) the final vocabularies and per-category counts,
(4) re-encode, sort, build histories per block of whole users, split by day and write. Rows are
written grouped by user blocks of ~:data:`CHUNK_ROWS` rows, shuffled within each block (seeded), so
that a parquet row group mixes hundreds of users rather than holding one user's sorted log.
Measured on a synthetic 100M-row, 3.65 GB file in this format (2 CPU cores): 105 s, 0.92 GB peak
resident memory, with the automatic 55 partitions.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_prep.common import SPLITS, OutputOptions, progress, stream_csv, writer_for
from data_prep.history import build_history
from data_prep.ids import DenseIdCounter, zero_pad
from data_prep.partition import DiskPartitioner
from data_prep.writer import DatasetWriter, list_array
from torchrec_mdr.config import ConfigError, bounds, doc
from torchrec_mdr.data.errors import DataError
from torchrec_mdr.data.spec import ColumnSpec, DatasetSpec

RAW_COLUMNS = ["user_id", "item_id", "category_id", "behavior_type", "timestamp"]
BEHAVIORS = ("pv", "buy", "cart", "fav")  # code = position; every code but 0 (pv) is positive
MAX_RAW_ID = 2**31 - 1  # raw ids are counted in arrays indexed by id, so they must fit int32
PARTITION_BYTES = 64 << 20  # automatic partition count: one per 64 MiB of CSV (~1.9M rows)
CSV_BLOCK_BYTES = 4 << 20  # CSV block size (pass 1 peak memory grows with it, through read-ahead)
FLUSH_ROWS = 1 << 21  # window rows gathered before counting and partitioning them (pass 1)
PARTITION_COLUMNS = ("user_id", "item_id", "category_id", "behavior", "second")
CHUNK_ROWS = 1 << 18  # rows (whole users) per history block in the last pass
SECONDS_PER_DAY = 86_400
EPOCH = dt.date(1970, 1, 1)


@dataclass(kw_only=True)
class Options(OutputOptions):
    """Options of ``mdr data taobao``."""

    src: Path = field(metadata=doc(
        "UserBehavior.csv (no header; user_id,item_id,category_id,behavior_type,timestamp)"))
    first_date: str = field(default="2017-11-25", metadata=doc(
        "first local date kept (YYYY-MM-DD); rows before it are dropped"))
    last_date: str = field(default="2017-12-03", metadata=doc(
        "last local date kept (YYYY-MM-DD, inclusive); rows after it are dropped"))
    utc_offset_hours: int = field(default=8, metadata=bounds(
        ge=-12, le=14, help="time zone of the dates, the hour and the day_of_week (Beijing: 8)"))
    train_days: int = field(default=7, metadata=bounds(
        ge=2, help="the first TRAIN_DAYS days of the window are for training (incl. valid); the rest is test"))
    valid_days: int = field(default=1, metadata=bounds(
        ge=1, help="the last VALID_DAYS of the training days form the valid split"))
    min_user_interactions: int = field(default=200, metadata=bounds(
        ge=0, help="keep users with at least this many rows in the window"))
    min_user_positives: int = field(default=10, metadata=bounds(
        ge=0, help="keep users with at least this many buy/cart/fav rows in the window"))
    min_item_interactions: int = field(default=10, metadata=bounds(
        ge=0, help="then keep items with at least this many rows among the kept users"))
    domains: Literal["category-bucket", "category"] = field(default="category-bucket", metadata=doc(
        "category: every category is a domain; category-bucket: the NUM_DOMAINS-1 largest categories "
        "and 'other'"))
    num_domains: int = field(default=10, metadata=bounds(
        ge=2, help="number of domains with --domains category-bucket"))
    history: Literal["positives", "all"] = field(default="positives", metadata=doc(
        "events in the behaviour sequence: buy/cart/fav only, or every behaviour (adds hist_behavior_type)"))
    max_length: int = field(default=50, metadata=bounds(ge=1, help="keep the most recent events of the sequence"))
    num_partitions: int = field(default=0, metadata=bounds(
        ge=0, help="temporary user partitions (memory ~ rows / partitions); 0: one per 64 MiB of input"))
    seed: int = field(default=0, metadata=bounds(ge=0, help="seed of the row shuffle within written blocks"))

    def validate(self) -> None:
        first, last = _parse_date(self.first_date, "first_date"), _parse_date(self.last_date, "last_date")
        if last < first:
            raise ConfigError(f"last_date {self.last_date} is before first_date {self.first_date}")
        days = (last - first).days + 1
        if self.train_days >= days:
            raise ConfigError(f"train_days={self.train_days} leaves no test day in the {days}-day window "
                              f"{self.first_date}..{self.last_date}")
        if self.valid_days >= self.train_days:
            raise ConfigError(f"valid_days={self.valid_days} must be smaller than train_days={self.train_days}")

    @property
    def first_day(self) -> int:
        """Days since 1970-01-01 of ``first_date``."""
        return (_parse_date(self.first_date, "first_date") - EPOCH).days

    @property
    def num_days(self) -> int:
        return (_parse_date(self.last_date, "last_date") - _parse_date(self.first_date, "first_date")).days + 1


def _parse_date(text: str, name: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"{name}: {text!r} is not a date YYYY-MM-DD") from None


# --------------------------------------------------------------------------- vocabularies


def _vocabulary(present: np.ndarray) -> np.ndarray:
    """Raw id -> new id (rank among the present raw ids, ascending), -1 where absent; int32."""
    mapping = np.full(len(present), -1, dtype=np.int32)
    mapping[present] = np.arange(int(present.sum()), dtype=np.int32)
    return mapping


@dataclass
class _RawCounts:
    """What pass 1 learns from the CSV (every count is over the rows inside the date window)."""

    user_rows: DenseIdCounter = field(default_factory=DenseIdCounter)
    user_positives: DenseIdCounter = field(default_factory=DenseIdCounter)
    item_rows: DenseIdCounter = field(default_factory=DenseIdCounter)
    category_rows: DenseIdCounter = field(default_factory=DenseIdCounter)
    rows_read: int = 0
    rows_in_window: int = 0


# --------------------------------------------------------------------------- pass 1: stream the CSV


def _check_batch(batch: pa.RecordBatch, first_row: int, path: Path) -> np.ndarray:
    """Validate one raw batch; returns the behaviour codes (0 pv, 1 buy, 2 cart, 3 fav) as int8.

    Raises a DataError naming the column and the 1-based row of the first bad value: an empty
    field, a negative id or one beyond int32, an unknown behaviour type. The row is the line number
    when the file has no blank lines (pyarrow skips those). Malformed lines (wrong number of fields,
    text in a number) are reported by :func:`stream_csv` with the offending line's text.
    """
    for name in RAW_COLUMNS:
        column = batch.column(name)
        if column.null_count:
            row = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
            raise DataError("empty value", file=path, column=name, row=first_row + row)
    for name in RAW_COLUMNS[:3]:
        ids = batch.column(name).to_numpy()
        bad = (ids < 0) | (ids > MAX_RAW_ID)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError(f"id {ids[row]} is outside [0, {MAX_RAW_ID}]", file=path, column=name,
                            row=first_row + row)
    codes = pc.index_in(batch.column("behavior_type"), value_set=pa.array(BEHAVIORS))
    if codes.null_count:
        row = int(np.flatnonzero(codes.is_null().to_numpy(zero_copy_only=False))[0])
        value = batch.column("behavior_type")[row].as_py()
        raise DataError(f"behavior_type {value!r} is not one of {list(BEHAVIORS)}", file=path,
                        column="behavior_type", row=first_row + row)
    return codes.to_numpy().astype(np.int8)


def _window_seconds(timestamps: np.ndarray, options: Options) -> np.ndarray:
    """Seconds since local midnight of ``first_date`` (negative or past the window: outside it)."""
    return timestamps - (options.first_day * SECONDS_PER_DAY - options.utc_offset_hours * 3600)


class _PendingRows:
    """Rows in the window, gathered over several small CSV blocks and counted / partitioned together.

    Small CSV blocks keep pyarrow's read-ahead queue small (it holds up to a few dozen blocks);
    gathering ~:data:`FLUSH_ROWS` rows before counting and partitioning keeps the per-id count
    arrays from being rebuilt for every block and the temporary parquet row groups large.
    """

    def __init__(self, counts: _RawCounts, partitioner: DiskPartitioner) -> None:
        self.counts, self.partitioner = counts, partitioner
        self.parts: dict[str, list[np.ndarray]] = {name: [] for name in PARTITION_COLUMNS}
        self.rows = 0

    def add(self, **columns: np.ndarray) -> None:
        for name, values in columns.items():
            self.parts[name].append(values)
        self.rows += len(columns["user_id"])
        if self.rows >= FLUSH_ROWS:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        table = {name: np.concatenate(parts) for name, parts in self.parts.items()}
        self.parts = {name: [] for name in PARTITION_COLUMNS}
        self.rows = 0
        user, behavior = table["user_id"], table["behavior"]
        self.counts.rows_in_window += len(user)
        self.counts.user_rows.add(user)
        self.counts.user_positives.add(user[behavior > 0])
        self.counts.item_rows.add(table["item_id"])
        self.counts.category_rows.add(table["category_id"])
        self.partitioner.add(pa.table(table))


def _read_csv(options: Options, partitioner: DiskPartitioner) -> _RawCounts:
    """Pass 1: stream the CSV, validate it, drop rows outside the window, count, partition by user."""
    counts = _RawCounts()
    pending = _PendingRows(counts, partitioner)
    window = options.num_days * SECONDS_PER_DAY
    types = {"user_id": pa.int64(), "item_id": pa.int64(), "category_id": pa.int64(),
             "behavior_type": pa.string(), "timestamp": pa.int64()}
    batches = stream_csv(options.src, RAW_COLUMNS, types, block_size=CSV_BLOCK_BYTES, desc="taobao 1/4 read CSV")
    try:
        for batch in batches:
            behavior = _check_batch(batch, counts.rows_read + 1, options.src)
            counts.rows_read += batch.num_rows
            second = _window_seconds(batch.column("timestamp").to_numpy(), options)
            inside = (second >= 0) & (second < window)
            if inside.any():
                pending.add(user_id=batch.column("user_id").to_numpy()[inside].astype(np.int32),
                            item_id=batch.column("item_id").to_numpy()[inside].astype(np.int32),
                            category_id=batch.column("category_id").to_numpy()[inside].astype(np.int32),
                            behavior=behavior[inside], second=second[inside].astype(np.int32))
    finally:
        batches.close()  # stop pyarrow's read-ahead at once when a bad line ends the pass early
    pending.flush()
    return counts


# --------------------------------------------------------------------------- passes 2 and 3: filters, vocabularies


def _partitions(partitioner: DiskPartitioner, total: int, desc: str) -> Iterator[pa.Table]:
    """The partitions one at a time, with a progress bar over rows."""
    with progress(total, desc, unit="rows") as bar:
        for table in partitioner.partitions():
            yield table
            bar.update(table.num_rows)


@dataclass
class _Vocabularies:
    """Filters and re-encodings decided by passes 1-3 (arrays indexed by raw id)."""

    user_kept: np.ndarray  # bool, user passes the user filter
    item_kept: np.ndarray  # bool, item passes the item filter (over the kept users' rows)
    user: np.ndarray  # int32 raw -> new id (-1: not in the output)
    item: np.ndarray
    category: np.ndarray
    category_raw: np.ndarray  # new category id -> raw id
    category_rows: np.ndarray  # new category id -> kept rows
    rows_after_user_filter: int
    rows_kept: int


def _filters_and_vocabularies(options: Options, counts: _RawCounts,
                              partitioner: DiskPartitioner) -> _Vocabularies:
    """Passes 2 and 3: the user filter (from pass 1), the item filter, then the final vocabularies."""
    user_rows = counts.user_rows.counts
    user_positives = zero_pad(counts.user_positives.counts, len(user_rows))  # it stops at the last positive user
    user_kept = (user_rows >= options.min_user_interactions) & (user_positives >= options.min_user_positives)
    num_items, num_categories = len(counts.item_rows.counts), len(counts.category_rows.counts)
    item_rows = np.zeros(num_items, dtype=np.int64)
    rows_after_user_filter = 0
    for table in _partitions(partitioner, counts.rows_in_window, "taobao 2/4 item filter"):
        item = table["item_id"].to_numpy()[user_kept[table["user_id"].to_numpy()]]
        rows_after_user_filter += len(item)
        item_rows += np.bincount(item, minlength=num_items)
    item_kept = item_rows >= options.min_item_interactions

    user_present = np.zeros(len(user_kept), dtype=bool)
    category_rows = np.zeros(num_categories, dtype=np.int64)
    for table in _partitions(partitioner, counts.rows_in_window, "taobao 3/4 vocabularies"):
        user, item = table["user_id"].to_numpy(), table["item_id"].to_numpy()
        keep = user_kept[user] & item_kept[item]
        user_present[user[keep]] = True
        category_rows += np.bincount(table["category_id"].to_numpy()[keep], minlength=num_categories)
    category_present = category_rows > 0
    # A kept item has >= min_item_interactions kept rows, so every kept item is present (when the
    # threshold is 0, items of the dropped users are kept but never seen: exclude them).
    item_present = item_kept & (item_rows > 0)
    return _Vocabularies(
        user_kept=user_kept, item_kept=item_present, user=_vocabulary(user_present),
        item=_vocabulary(item_present), category=_vocabulary(category_present),
        category_raw=np.flatnonzero(category_present), category_rows=category_rows[category_present],
        rows_after_user_filter=rows_after_user_filter, rows_kept=int(category_rows.sum()))


def _domains(options: Options, vocab: _Vocabularies) -> tuple[np.ndarray, list[str]]:
    """Domain of each new category id, and the domain names (see the module docstring)."""
    num_categories = len(vocab.category_raw)
    names = [str(raw) for raw in vocab.category_raw]
    if options.domains == "category":
        return np.arange(num_categories, dtype=np.int64), names
    by_size = np.lexsort((vocab.category_raw, -vocab.category_rows))  # most rows first, then raw id
    domain = np.empty(num_categories, dtype=np.int64)
    if num_categories <= options.num_domains:
        domain[by_size] = np.arange(num_categories)
        return domain, [names[c] for c in by_size]
    own = options.num_domains - 1
    domain[by_size[:own]] = np.arange(own)
    domain[by_size[own:]] = own
    return domain, [names[c] for c in by_size[:own]] + ["other"]


# --------------------------------------------------------------------------- pass 4: write


def _columns(options: Options, vocab: _Vocabularies) -> list[ColumnSpec]:
    users, items, categories = int(vocab.user.max()) + 1, int(vocab.item.max()) + 1, int(vocab.category.max()) + 1
    hist = dict(kind="sequence", sequence_group="hist", max_length=options.max_length, oov="reject")
    which = "buy/cart/fav events" if options.history == "positives" else "events"
    columns = [
        ColumnSpec("positive", "label", description="1: buy, cart or fav; 0: pv (page view)"),
        ColumnSpec("domain", "domain", description=f"domain ({options.domains}) of the item's category"),
        ColumnSpec("group_id", "group", description="user (re-encoded), for GAUC"),
        ColumnSpec("user_id", "id", table="user", cardinality=users, oov="reject",
                   description="user, re-encoded: rank of the raw id among kept users"),
        ColumnSpec("item_id", "id", table="item", cardinality=items, oov="reject",
                   description="item, re-encoded: rank of the raw id among kept items"),
        ColumnSpec("category_id", "id", table="category", cardinality=categories, oov="reject",
                   description="item category, re-encoded: rank of the raw id among kept categories"),
        ColumnSpec("hour", "id", cardinality=24, oov="reject",
                   description=f"hour of day, UTC{options.utc_offset_hours:+d}"),
        ColumnSpec("day_of_week", "id", cardinality=7, oov="reject",
                   description=f"day of week (0 = Monday), UTC{options.utc_offset_hours:+d}"),
        ColumnSpec("hist_item_id", table="item", cardinality=items,
                   description=f"items of the user's strictly earlier {which}, oldest first", **hist),
        ColumnSpec("hist_category_id", table="category", cardinality=categories,
                   description=f"categories of the user's strictly earlier {which}, oldest first", **hist),
    ]
    if options.history == "all":
        columns.append(ColumnSpec("hist_behavior_type", table="behavior_type", cardinality=len(BEHAVIORS),
                                  description="behaviour of each history event: 0 pv, 1 buy, 2 cart, 3 fav",
                                  **hist))
    return columns


def _user_blocks(user: np.ndarray, block_rows: int) -> list[tuple[int, int]]:
    """[lo, hi) row ranges of about ``block_rows`` rows that never cut a user (``user`` sorted)."""
    starts = np.flatnonzero(np.r_[True, user[1:] != user[:-1]])
    blocks, lo = [], 0
    while lo < len(user):
        # The first user start at or after lo + block_rows ends the block (or the end of the rows).
        i = np.searchsorted(starts, lo + block_rows, side="left")
        hi = int(starts[i]) if i < len(starts) else len(user)
        blocks.append((lo, hi))
        lo = hi
    return blocks


def _write_partition(table: pa.Table, options: Options, vocab: _Vocabularies, domain_of: np.ndarray,
                     writer: DatasetWriter, rng: np.random.Generator) -> None:
    """Filter, re-encode and sort one partition, build histories per block of users, write the splits."""
    user, item = table["user_id"].to_numpy(), table["item_id"].to_numpy()
    keep = vocab.user_kept[user] & vocab.item_kept[item]
    if not keep.any():
        return
    user = vocab.user[user[keep]].astype(np.int64)
    item = vocab.item[item[keep]].astype(np.int64)
    category = vocab.category[table["category_id"].to_numpy()[keep]].astype(np.int64)
    behavior = table["behavior"].to_numpy()[keep]
    second = table["second"].to_numpy()[keep]  # since local midnight of first_date
    order = np.lexsort((second, user))  # stable: same-second events keep their file order
    user, item, category, behavior, second = (a[order] for a in (user, item, category, behavior, second))

    day = second // SECONDS_PER_DAY
    hour = (second // 3600 % 24).astype(np.int64)
    day_of_week = (options.first_day + day + 3) % 7  # 1970-01-01 was a Thursday
    split = np.where(day < options.train_days - options.valid_days, 0, np.where(day < options.train_days, 1, 2))

    for lo, hi in _user_blocks(user, CHUNK_ROWS):
        rows = slice(lo, hi)
        events = behavior[rows] > 0 if options.history == "positives" else np.ones(hi - lo, dtype=bool)
        fields = {"item": item[rows][events], "category": category[rows][events]}
        if options.history == "all":
            fields["behavior"] = behavior[rows][events].astype(np.int64)
        offsets, values = build_history(user[rows], second[rows], user[rows][events],
                                        second[rows][events], fields, options.max_length)
        columns = {
            "positive": (behavior[rows] > 0).astype(np.int8),
            "domain": domain_of[category[rows]],
            "group_id": user[rows],
            "user_id": user[rows],
            "item_id": item[rows],
            "category_id": category[rows],
            "hour": hour[rows],
            "day_of_week": day_of_week[rows],
            "hist_item_id": list_array(offsets, values["item"]),
            "hist_category_id": list_array(offsets, values["category"]),
        }
        if options.history == "all":
            columns["hist_behavior_type"] = list_array(offsets, values["behavior"])
        block = pa.table(columns)
        shuffle = rng.permutation(hi - lo)
        block, block_split = block.take(pa.array(shuffle)), split[rows][shuffle]
        for s, name in enumerate(SPLITS):
            selected = block_split == s
            if selected.any():
                writer.write(name, block.filter(pa.array(selected)))


# --------------------------------------------------------------------------- entry point


def _num_partitions(options: Options) -> int:
    if options.num_partitions:
        return options.num_partitions
    return max(1, math.ceil(options.src.stat().st_size / PARTITION_BYTES))


def convert(options: Options) -> DatasetSpec:
    """Convert UserBehavior.csv into train / valid / test parquet splits and return the spec."""
    options.validate()
    src = Path(options.src)
    if not src.is_file():
        raise DataError("file not found", file=src)
    out = Path(options.out)
    if out.exists() and not options.overwrite:
        raise FileExistsError(f"{out} already exists (pass --overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    num_partitions = _num_partitions(options)

    with DiskPartitioner("user_id", num_partitions, tmp_dir=out.parent) as partitioner:
        counts = _read_csv(options, partitioner)
        if counts.rows_in_window == 0:
            raise DataError(f"no row lies in the date window {options.first_date}..{options.last_date} "
                            f"(UTC{options.utc_offset_hours:+d}) among {counts.rows_read:,} rows", file=src)
        vocab = _filters_and_vocabularies(options, counts, partitioner)
        if vocab.rows_kept == 0:
            raise DataError(
                f"no row is left after the filters (users >= {options.min_user_interactions} interactions and "
                f">= {options.min_user_positives} positives, then items >= {options.min_item_interactions} "
                f"interactions) among {counts.rows_in_window:,} rows in the window", file=src)
        domain_of, domain_names = _domains(options, vocab)
        notes = _notes(options, counts, vocab, num_partitions)
        rng = np.random.default_rng(options.seed)
        with writer_for(options, name="taobao", columns=_columns(options, vocab), domain_names=domain_names,
                        source=_source(options), notes=notes) as writer:
            for table in _partitions(partitioner, counts.rows_in_window, "taobao 4/4 write"):
                _write_partition(table, options, vocab, domain_of, writer, rng)
            spec = writer.close()
    return spec


def _source(options: Options) -> str:
    return (f"Taobao UserBehavior {options.src} ({options.first_date}..{options.last_date} "
            f"UTC{options.utc_offset_hours:+d}; users >= {options.min_user_interactions} interactions & "
            f">= {options.min_user_positives} positives, then items >= {options.min_item_interactions} "
            f"interactions; domains={options.domains}"
            + (f"/{options.num_domains}" if options.domains == "category-bucket" else "")
            + f"; history={options.history}/{options.max_length}; train_days={options.train_days} "
            f"valid_days={options.valid_days})")


def _notes(options: Options, counts: _RawCounts, vocab: _Vocabularies, num_partitions: int) -> dict[str, str]:
    first = _parse_date(options.first_date, "first_date")
    train_end = options.train_days - options.valid_days

    def days(lo: int, hi: int) -> str:
        return f"{first + dt.timedelta(days=lo)}..{first + dt.timedelta(days=hi - 1)}"

    return {
        "label": "positive = 1 for buy/cart/fav, 0 for pv (one row per event)",
        "filters": ("users kept with >= min_user_interactions rows and >= min_user_positives positives "
                    "(counted in the date window), then items kept with >= min_item_interactions rows among "
                    "the kept users; one pass each, not iterated"),
        "ids": "user_id/item_id/category_id = rank of the raw id (ascending) among the ids in the kept rows",
        "domains": ("domain = category_id; names are raw category ids" if options.domains == "category" else
                    "the num_domains-1 categories with most kept rows (names: raw category ids), then 'other'"),
        "history": (f"{'buy/cart/fav' if options.history == 'positives' else 'all'} events strictly earlier "
                    f"than the impression (same second excluded), oldest first, last {options.max_length}; "
                    "kept rows only"),
        "split_days": (f"train {days(0, train_end)}, valid {days(train_end, options.train_days)}, "
                       f"test {days(options.train_days, options.num_days)} (UTC{options.utc_offset_hours:+d})"),
        "rows_read": str(counts.rows_read),
        "rows_in_window": str(counts.rows_in_window),
        "rows_after_user_filter": str(vocab.rows_after_user_filter),
        "rows_kept": str(vocab.rows_kept),
        "users_in_window": str(int((counts.user_rows.counts > 0).sum())),
        "items_in_window": str(int((counts.item_rows.counts > 0).sum())),
        "categories_in_window": str(int((counts.category_rows.counts > 0).sum())),
        "users_kept": str(int(vocab.user.max()) + 1),
        "items_kept": str(int(vocab.item.max()) + 1),
        "categories_kept": str(len(vocab.category_raw)),
        "num_partitions": str(num_partitions),
    }
