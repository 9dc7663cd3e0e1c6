"""``convert(options) -> DatasetSpec``: read, prepare, build the histories chunk by chunk and write the
splits with their notes."""

from __future__ import annotations

import numpy as np

from data_prep.common import SPLITS, progress, take_bags, writer_for
from data_prep.history import build_history
from data_prep.movielens.features import columns, prepare
from data_prep.movielens.files import locate
from data_prep.movielens.options import AGE_DOMAINS, CHUNK_ROWS, GENRE_GROUPS, Options
from data_prep.movielens.readers import READERS
from data_prep.writer import list_array
from torchrec_mdr.data.spec import DatasetSpec


def _utc(seconds: float) -> str:
    return np.datetime64(int(seconds), "s").astype(str) + "Z"


def convert(options: Options) -> DatasetSpec:
    """Convert a MovieLens copy at ``options.src`` into parquet splits + spec.json at ``options.out``."""
    o = options
    files = locate(o.src)
    data = READERS[files.kind](files)
    p = prepare(data, o)
    rows = p.rows
    num_users, num_items = int(rows["user_id"].max()) + 1, int(rows["item_id"].max()) + 1
    events = rows["click"] == 1 if o.history == "positives" else np.ones(len(rows["click"]), dtype=bool)
    # build_history compares times only within a user, so each row's time rank within its user
    # (same order, a few thousand distinct values) stands in for the timestamp: it makes the
    # history builder's np.unique over times cheap (numpy >= 2.3 hashes ~1M distinct ints slowly).
    event_user, event_time = rows["user_id"][events], rows["time_rank"][events]
    event_fields = {"hist_item_id": rows["item_id"][events], "hist_genre": rows["genre"][events]}
    t1, t2 = p.cuts
    domain_names = list(AGE_DOMAINS) if o.domains == "age" else list(GENRE_GROUPS)
    source = (
        f"MovieLens {files.kind} from {o.src}: domains={o.domains}, click = rating >= "
        f"{o.positive_rating:g}, history={o.history} (max {o.max_length}), split "
        f"{'/'.join(f'{x:g}' for x in o.split_fractions)} by time"
    )
    notes = {
        "format": files.kind,
        "files": ", ".join(files.label(i) for i in range(3)),
        "domains": (
            "age groups of the user: <25, 25-34, >=35 (ml-1m codes 1,18 | 25 | 35,45,50,56)"
            if o.domains == "age"
            else "; ".join(f"{name}: {', '.join(genres)}" for name, genres in GENRE_GROUPS.items())
            + " and any other genre (first genre of the item)"
        ),
        "label": f"click = rating >= {o.positive_rating:g}",
        "history": ("all earlier rated items" if o.history == "all" else "earlier positively rated items")
        + ", strictly earlier timestamps only, oldest first",
        "split": f"train: time < {t1} ({_utc(t1)}); valid: {t1} <= time < {t2} ({_utc(t2)}); test: time >= {t2}",
        "row_order": "timestamp, user_id, item_id",
        "ids": "user_id / item_id = rank of the raw id among rated users / movies",
        "users": str(num_users),
        "items": str(num_items),
        "dropped": f"{len(data.users.user) - num_users} users and {len(data.items.item) - num_items} movies "
        "of the side files never rated",
        "genres": " | ".join(p.vocab["genre"]),
        "occupations": " | ".join(p.vocab["occupation"]),
        "zip_prefixes": " | ".join(p.vocab["zip_prefix"]),
        "unknown_release_year_items": str(p.unknown_years),
    }
    scalar = [c for c in rows if c not in ("time", "time_rank")]
    with (
        writer_for(
            o,
            name=f"movielens-{files.kind}",
            columns=columns(o, num_users, num_items, p.vocab),
            domain_names=domain_names,
            source=source,
            notes=notes,
        ) as writer,
        progress(len(p.split), "movielens", unit="rows") as bar,
    ):
        for index, split in enumerate(SPLITS):
            selected = np.flatnonzero(p.split == index)
            for start in range(0, len(selected), CHUNK_ROWS):
                chunk_rows = selected[start : start + CHUNK_ROWS]
                offsets, history = build_history(
                    rows["user_id"][chunk_rows],
                    rows["time_rank"][chunk_rows],
                    event_user,
                    event_time,
                    event_fields,
                    o.max_length,
                )
                chunk: dict[str, object] = {c: rows[c][chunk_rows] for c in scalar}
                genre_offsets, genre_values = take_bags(p.genres_offsets, p.genres_values, chunk_rows)
                chunk["genres"] = list_array(genre_offsets, genre_values)
                for name, values in history.items():
                    chunk[name] = list_array(offsets, values)
                writer.write(split, chunk)
                bar.update(len(chunk_rows))
        return writer.close()
