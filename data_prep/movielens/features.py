"""Ratings -> output columns: joins to the side files, vocabularies, domains, the user's prior
activity, the time split, and the column specs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_prep.common import take_bags, temporal_split_points
from data_prep.movielens.options import (
    ACTIVITY_EDGES,
    AGE_BUCKET_EDGES,
    AGE_BUCKETS,
    AGE_DOMAIN_CUTS,
    DECADE_EDGES,
    FALLBACK_GROUP,
    GENRE_GROUPS,
    Options,
)
from data_prep.movielens.readers import MovieLens
from torchrec_mdr.data.errors import DataError
from torchrec_mdr.data.spec import ColumnSpec


def _join(
    table_ids: np.ndarray,
    table_file: str,
    table_first_line: int,
    query: np.ndarray,
    query_file: str,
    column: str,
    query_first_line: int,
) -> np.ndarray:
    """Row of ``table_ids`` holding each ``query`` id; unknown or duplicated ids raise DataError."""
    order = np.argsort(table_ids, kind="stable")
    ordered = table_ids[order]
    duplicate = np.flatnonzero(ordered[1:] == ordered[:-1])
    if duplicate.size:
        row = int(order[duplicate[0] + 1])
        raise DataError(
            f"id {table_ids[row]} appears twice", file=table_file, column=column, row=table_first_line + row
        )
    position = np.minimum(np.searchsorted(ordered, query), len(ordered) - 1)
    missing = np.flatnonzero(ordered[position] != query)
    if missing.size:
        i = int(missing[0])
        raise DataError(
            f"{column} {query[i]} is not in {table_file}", file=query_file, column=column, row=query_first_line + i
        )
    return order[position]


def _vocabulary(values: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Contiguous ids of string values in sorted order, and the vocabulary."""
    unique, inverse = np.unique(values.astype(str), return_inverse=True)
    return inverse.reshape(-1).astype(np.int64), unique.tolist()


def within_user_times(user: np.ndarray, time: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the dense rank of its time among its user's distinct times, and how many of the
    user's rows have a strictly earlier time (ties count as not earlier)."""
    order = np.lexsort((time, user))
    u, t = user[order], time[order]
    new_user = np.diff(u, prepend=u[:1] - 1) != 0  # first row of each user (in user, time order)
    new_key = new_user | (np.diff(t, prepend=t[:1] - 1) != 0)  # first row of each (user, time)
    position = np.arange(len(u))
    user_start = np.maximum.accumulate(np.where(new_user, position, 0))
    key_start = np.maximum.accumulate(np.where(new_key, position, 0))
    key_index = np.cumsum(new_key) - 1
    user_first_key = np.maximum.accumulate(np.where(new_user, key_index, 0))
    rank, earlier = np.empty(len(u), dtype=np.int64), np.empty(len(u), dtype=np.int64)
    rank[order] = key_index - user_first_key
    earlier[order] = key_start - user_start
    return rank, earlier


def genre_groups(genre_names: list[str]) -> np.ndarray:
    """Domain (index into GENRE_GROUPS) of every genre id."""
    group_of = {g: d for d, genres in enumerate(GENRE_GROUPS.values()) for g in genres}
    return np.array([group_of.get(g, FALLBACK_GROUP) for g in genre_names], dtype=np.int64)


@dataclass
class Prepared:
    """Per-rating columns (sorted by time, user, item), the split of each row, and vocabulary facts."""

    rows: dict[str, np.ndarray]  # scalar columns
    genres_offsets: np.ndarray  # CSR per row of "genres"
    genres_values: np.ndarray
    split: np.ndarray  # 0 train, 1 valid, 2 test
    cuts: tuple[float, float]
    vocab: dict[str, list[str]]
    unknown_years: int


def prepare(data: MovieLens, o: Options) -> Prepared:
    """Join, encode and split the ratings (everything but the histories)."""
    r, u, it = data.ratings, data.users, data.items
    user_row = _join(u.user, u.file, u.first_line, r.user, r.file, "user_id", r.first_line)
    item_row = _join(it.item, it.file, it.first_line, r.item, r.file, "item_id", r.first_line)
    user_id = np.unique(r.user, return_inverse=True)[1].reshape(-1).astype(np.int64)
    item_id = np.unique(r.item, return_inverse=True)[1].reshape(-1).astype(np.int64)
    occupation, occupations = _vocabulary(u.occupation)
    prefixes = pc.utf8_upper(pc.utf8_slice_codeunits(pa.array(u.zip_code, pa.string()), 0, 1))
    zip_prefix, zip_prefixes = _vocabulary(
        np.where(pc.equal(prefixes, "").to_numpy(zero_copy_only=False), "?", prefixes.to_numpy(zero_copy_only=False))
    )
    first_genre = it.genre_ids[it.genre_offsets[:-1]]
    decade = np.where(it.year < 0, 0, np.searchsorted(DECADE_EDGES, it.year, side="right") + 1)
    age = u.age[user_row]
    if o.domains == "age":
        domain = np.searchsorted(AGE_DOMAIN_CUTS, age, side="right")
    else:
        domain = genre_groups(it.genre_names)[first_genre[item_row]]
    time_rank, prior = within_user_times(user_id, r.time)
    rows = {
        "click": (r.rating >= o.positive_rating).astype(np.int64),
        "domain": domain.astype(np.int64),
        "group_id": user_id,
        "user_id": user_id,
        "item_id": item_id,
        "gender": u.gender[user_row],
        "age_bucket": np.searchsorted(AGE_BUCKET_EDGES, age, side="right").astype(np.int64),
        "occupation": occupation[user_row],
        "zip_prefix": zip_prefix[user_row],
        "user_activity": np.searchsorted(ACTIVITY_EDGES, prior, side="right").astype(np.int64),
        "genre": first_genre[item_row],
        "release_decade": decade[item_row].astype(np.int64),
        "log_prior_ratings": np.log1p(prior).astype(np.float32),
        "time": r.time,
        "time_rank": time_rank,
        "item_row": item_row,
    }
    order = np.lexsort((item_id, user_id, r.time))
    rows = {k: v[order] for k, v in rows.items()}
    genres_offsets, genres_values = take_bags(it.genre_offsets, it.genre_ids, rows.pop("item_row"))
    t1, t2 = temporal_split_points(rows["time"], tuple(o.split_fractions))
    split = (rows["time"] >= t1).astype(np.int64) + (rows["time"] >= t2)
    vocab = {"genre": it.genre_names, "occupation": occupations, "zip_prefix": zip_prefixes}
    unknown = int(np.sum(it.year[np.unique(item_row)] < 0))
    return Prepared(rows, genres_offsets, genres_values, split, (t1, t2), vocab, unknown)


def columns(o: Options, num_users: int, num_items: int, vocab: dict[str, list[str]]) -> list[ColumnSpec]:
    """The dataset's columns, every embedded one with its exact cardinality and oov='reject'."""
    genres = len(vocab["genre"])
    label = f"rating >= {o.positive_rating:g}"
    return [
        ColumnSpec("click", "label", description=label),
        ColumnSpec(
            "domain",
            "domain",
            description="user age group" if o.domains == "age" else "group of the item's first genre",
        ),
        ColumnSpec("group_id", "group", description="user_id, for GAUC"),
        ColumnSpec(
            "user_id",
            "id",
            table="user",
            cardinality=num_users,
            oov="reject",
            description="rank of the raw user id among rated users",
        ),
        ColumnSpec(
            "item_id",
            "id",
            table="item",
            cardinality=num_items,
            oov="reject",
            description="rank of the raw movie id among rated movies",
        ),
        ColumnSpec("gender", "id", cardinality=2, oov="reject", description="0 = M, 1 = F"),
        ColumnSpec(
            "age_bucket",
            "id",
            cardinality=len(AGE_BUCKETS),
            oov="reject",
            description="ml-1m age bins " + " / ".join(AGE_BUCKETS),
        ),
        ColumnSpec("occupation", "id", cardinality=len(vocab["occupation"]), oov="reject"),
        ColumnSpec(
            "zip_prefix",
            "id",
            cardinality=len(vocab["zip_prefix"]),
            oov="reject",
            description="first character of the zip code",
        ),
        ColumnSpec(
            "user_activity",
            "id",
            cardinality=len(ACTIVITY_EDGES) + 1,
            oov="reject",
            description="bucket of the user's earlier ratings: 0, 1-4, 5-19, 20-49, 50-99, 100-199, 200+",
        ),
        ColumnSpec("genre", "id", table="genre", cardinality=genres, oov="reject", description="first genre"),
        ColumnSpec("genres", "multi_id", table="genre", cardinality=genres, oov="reject", description="all genres"),
        ColumnSpec(
            "release_decade",
            "id",
            cardinality=len(DECADE_EDGES) + 2,
            oov="reject",
            description="0 unknown, 1 before 1930, 2 1930s, ..., 9 2000s, 10 from 2010",
        ),
        ColumnSpec(
            "hist_item_id",
            "sequence",
            table="item",
            cardinality=num_items,
            oov="reject",
            sequence_group="hist",
            max_length=o.max_length,
            description=f"earlier rated movies ({o.history}), oldest first",
        ),
        ColumnSpec(
            "hist_genre",
            "sequence",
            table="genre",
            cardinality=genres,
            oov="reject",
            sequence_group="hist",
            max_length=o.max_length,
            description="first genre of each behaviour",
        ),
        ColumnSpec("log_prior_ratings", "dense", description="log1p(the user's ratings strictly before this one)"),
    ]
