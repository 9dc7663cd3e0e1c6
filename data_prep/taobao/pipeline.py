"""``convert(options) -> DatasetSpec``: the four passes in order, with the source line and the notes."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import numpy as np

from data_prep.common import writer_for
from data_prep.partition import DiskPartitioner
from data_prep.taobao.filters import Vocabularies, category_domains, filters_and_vocabularies, partition_tables
from data_prep.taobao.options import Options, parse_date
from data_prep.taobao.read import RawCounts, read_csv
from data_prep.taobao.write import output_columns, write_partition
from torchrec_mdr.data.errors import DataError
from torchrec_mdr.data.spec import DatasetSpec

PARTITION_BYTES = 64 << 20  # automatic partition count: one per 64 MiB of CSV (~1.9M rows)


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
        counts = read_csv(options, partitioner)
        if counts.rows_in_window == 0:
            raise DataError(
                f"no row lies in the date window {options.first_date}..{options.last_date} "
                f"(UTC{options.utc_offset_hours:+d}) among {counts.rows_read:,} rows",
                file=src,
            )
        vocab = filters_and_vocabularies(options, counts, partitioner)
        if vocab.rows_kept == 0:
            raise DataError(
                f"no row is left after the filters (users >= {options.min_user_interactions} interactions and "
                f">= {options.min_user_positives} positives, then items >= {options.min_item_interactions} "
                f"interactions) among {counts.rows_in_window:,} rows in the window",
                file=src,
            )
        domain_of, domain_names = category_domains(options, vocab)
        notes = _notes(options, counts, vocab, num_partitions)
        rng = np.random.default_rng(options.seed)
        with writer_for(
            options,
            name="taobao",
            columns=output_columns(options, vocab),
            domain_names=domain_names,
            source=_source(options),
            notes=notes,
        ) as writer:
            for table in partition_tables(partitioner, counts.rows_in_window, "taobao 4/4 write"):
                write_partition(table, options, vocab, domain_of, writer, rng)
            spec = writer.close()
    return spec


def _source(options: Options) -> str:
    return (
        f"Taobao UserBehavior {options.src} ({options.first_date}..{options.last_date} "
        f"UTC{options.utc_offset_hours:+d}; users >= {options.min_user_interactions} interactions & "
        f">= {options.min_user_positives} positives, then items >= {options.min_item_interactions} "
        f"interactions; domains={options.domains}"
        + (f"/{options.num_domains}" if options.domains == "category-bucket" else "")
        + f"; history={options.history}/{options.max_length}; train_days={options.train_days} "
        f"valid_days={options.valid_days})"
    )


def _notes(options: Options, counts: RawCounts, vocab: Vocabularies, num_partitions: int) -> dict[str, str]:
    first = parse_date(options.first_date, "first_date")
    train_end = options.train_days - options.valid_days

    def days(lo: int, hi: int) -> str:
        return f"{first + dt.timedelta(days=lo)}..{first + dt.timedelta(days=hi - 1)}"

    return {
        "label": "positive = 1 for buy/cart/fav, 0 for pv (one row per event)",
        "filters": (
            "users kept with >= min_user_interactions rows and >= min_user_positives positives "
            "(counted in the date window), then items kept with >= min_item_interactions rows among "
            "the kept users; one pass each, not iterated"
        ),
        "ids": "user_id/item_id/category_id = rank of the raw id (ascending) among the ids in the kept rows",
        "domains": (
            "domain = category_id; names are raw category ids"
            if options.domains == "category"
            else "the num_domains-1 categories with most kept rows (names: raw category ids), then 'other'"
        ),
        "history": (
            f"{'buy/cart/fav' if options.history == 'positives' else 'all'} events strictly earlier "
            f"than the impression (same second excluded), oldest first, last {options.max_length}; "
            "kept rows only"
        ),
        "split_days": (
            f"train {days(0, train_end)}, valid {days(train_end, options.train_days)}, "
            f"test {days(options.train_days, options.num_days)} (UTC{options.utc_offset_hours:+d})"
        ),
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
