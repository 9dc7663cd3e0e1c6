"""Pass 4: re-encode, sort and split one user partition, build its histories per block of whole users
and write the shuffled blocks; the output column specs."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from data_prep.common import SPLITS
from data_prep.history import build_history
from data_prep.taobao.filters import Vocabularies
from data_prep.taobao.options import BEHAVIORS, SECONDS_PER_DAY, Options
from data_prep.writer import DatasetWriter, list_array
from torchrec_mdr.data.spec import ColumnSpec

CHUNK_ROWS = 1 << 18  # rows (whole users) per history block in the last pass


def output_columns(options: Options, vocab: Vocabularies) -> list[ColumnSpec]:
    users, items, categories = int(vocab.user.max()) + 1, int(vocab.item.max()) + 1, int(vocab.category.max()) + 1
    hist: dict[str, Any] = dict(kind="sequence", sequence_group="hist", max_length=options.max_length, oov="reject")
    which = "buy/cart/fav events" if options.history == "positives" else "events"
    columns = [
        ColumnSpec("positive", "label", description="1: buy, cart or fav; 0: pv (page view)"),
        ColumnSpec("domain", "domain", description=f"domain ({options.domains}) of the item's category"),
        ColumnSpec("group_id", "group", description="user (re-encoded), for GAUC"),
        ColumnSpec(
            "user_id",
            "id",
            table="user",
            cardinality=users,
            oov="reject",
            description="user, re-encoded: rank of the raw id among kept users",
        ),
        ColumnSpec(
            "item_id",
            "id",
            table="item",
            cardinality=items,
            oov="reject",
            description="item, re-encoded: rank of the raw id among kept items",
        ),
        ColumnSpec(
            "category_id",
            "id",
            table="category",
            cardinality=categories,
            oov="reject",
            description="item category, re-encoded: rank of the raw id among kept categories",
        ),
        ColumnSpec(
            "hour", "id", cardinality=24, oov="reject", description=f"hour of day, UTC{options.utc_offset_hours:+d}"
        ),
        ColumnSpec(
            "day_of_week",
            "id",
            cardinality=7,
            oov="reject",
            description=f"day of week (0 = Monday), UTC{options.utc_offset_hours:+d}",
        ),
        ColumnSpec(
            "hist_item_id",
            table="item",
            cardinality=items,
            description=f"items of the user's strictly earlier {which}, oldest first",
            **hist,
        ),
        ColumnSpec(
            "hist_category_id",
            table="category",
            cardinality=categories,
            description=f"categories of the user's strictly earlier {which}, oldest first",
            **hist,
        ),
    ]
    if options.history == "all":
        columns.append(
            ColumnSpec(
                "hist_behavior_type",
                table="behavior_type",
                cardinality=len(BEHAVIORS),
                description="behaviour of each history event: 0 pv, 1 buy, 2 cart, 3 fav",
                **hist,
            )
        )
    return columns


def user_blocks(user: np.ndarray, block_rows: int) -> list[tuple[int, int]]:
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


def write_partition(
    table: pa.Table,
    options: Options,
    vocab: Vocabularies,
    domain_of: np.ndarray,
    writer: DatasetWriter,
    rng: np.random.Generator,
) -> None:
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

    for lo, hi in user_blocks(user, CHUNK_ROWS):
        rows = slice(lo, hi)
        events = behavior[rows] > 0 if options.history == "positives" else np.ones(hi - lo, dtype=bool)
        fields = {"item": item[rows][events], "category": category[rows][events]}
        if options.history == "all":
            fields["behavior"] = behavior[rows][events].astype(np.int64)
        offsets, values = build_history(
            user[rows], second[rows], user[rows][events], second[rows][events], fields, options.max_length
        )
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
