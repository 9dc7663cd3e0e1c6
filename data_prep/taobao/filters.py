"""Passes 2 and 3: the user and item filters, the vocabularies (raw id -> rank among kept ids) and the
category domains."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa

from data_prep.common import progress
from data_prep.ids import zero_pad
from data_prep.partition import DiskPartitioner
from data_prep.taobao.options import Options
from data_prep.taobao.read import RawCounts


def partition_tables(partitioner: DiskPartitioner, total: int, desc: str) -> Iterator[pa.Table]:
    """The partitions one at a time, with a progress bar over rows."""
    with progress(total, desc, unit="rows") as bar:
        for table in partitioner.partitions():
            yield table
            bar.update(table.num_rows)


def _vocabulary(present: np.ndarray) -> np.ndarray:
    """Raw id -> new id (rank among the present raw ids, ascending), -1 where absent; int32."""
    mapping = np.full(len(present), -1, dtype=np.int32)
    mapping[present] = np.arange(int(present.sum()), dtype=np.int32)
    return mapping


@dataclass
class Vocabularies:
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


def filters_and_vocabularies(options: Options, counts: RawCounts, partitioner: DiskPartitioner) -> Vocabularies:
    """Passes 2 and 3: the user filter (from pass 1), the item filter, then the final vocabularies."""
    user_rows = counts.user_rows.counts
    user_positives = zero_pad(counts.user_positives.counts, len(user_rows))  # it stops at the last positive user
    user_kept = (user_rows >= options.min_user_interactions) & (user_positives >= options.min_user_positives)
    num_items, num_categories = len(counts.item_rows.counts), len(counts.category_rows.counts)
    item_rows = np.zeros(num_items, dtype=np.int64)
    rows_after_user_filter = 0
    for table in partition_tables(partitioner, counts.rows_in_window, "taobao 2/4 item filter"):
        item = table["item_id"].to_numpy()[user_kept[table["user_id"].to_numpy()]]
        rows_after_user_filter += len(item)
        item_rows += np.bincount(item, minlength=num_items)
    item_kept = item_rows >= options.min_item_interactions

    user_present = np.zeros(len(user_kept), dtype=bool)
    category_rows = np.zeros(num_categories, dtype=np.int64)
    for table in partition_tables(partitioner, counts.rows_in_window, "taobao 3/4 vocabularies"):
        user, item = table["user_id"].to_numpy(), table["item_id"].to_numpy()
        keep = user_kept[user] & item_kept[item]
        user_present[user[keep]] = True
        category_rows += np.bincount(table["category_id"].to_numpy()[keep], minlength=num_categories)
    category_present = category_rows > 0
    # A kept item has >= min_item_interactions kept rows, so every kept item is present (when the
    # threshold is 0, items of the dropped users are kept but never seen: exclude them).
    item_present = item_kept & (item_rows > 0)
    return Vocabularies(
        user_kept=user_kept,
        item_kept=item_present,
        user=_vocabulary(user_present),
        item=_vocabulary(item_present),
        category=_vocabulary(category_present),
        category_raw=np.flatnonzero(category_present),
        category_rows=category_rows[category_present],
        rows_after_user_filter=rows_after_user_filter,
        rows_kept=int(category_rows.sum()),
    )


def category_domains(options: Options, vocab: Vocabularies) -> tuple[np.ndarray, list[str]]:
    """Domain of each new category id, and the domain names (see the package docstring)."""
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
