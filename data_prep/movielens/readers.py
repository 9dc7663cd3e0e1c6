"""The readers of the three formats: ratings, users and items as raw in-memory tables, with the
value checks of the package docstring (rating range, gender, age codes, genre flags)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_prep.movielens.files import Kind, SourceFiles, locate
from data_prep.movielens.options import GENRES, MAX_AGE, MAX_RATING, ML1M_AGE_CODES, NO_GENRE
from data_prep.movielens.parsing import parse_numbers, parse_strings, parse_years, read_table, require
from torchrec_mdr.data.errors import DataError


@dataclass
class Ratings:
    user: np.ndarray  # int64 raw ids
    item: np.ndarray  # int64 raw ids
    rating: np.ndarray  # float64
    time: np.ndarray  # int64 seconds
    file: str
    first_line: int  # line number of row 0 (1, or 2 after a header)


@dataclass
class Users:
    user: np.ndarray  # int64 raw ids
    age: np.ndarray  # int64 years or ml-1m code
    gender: np.ndarray  # int64, 0 = M, 1 = F
    occupation: np.ndarray  # str
    zip_code: np.ndarray  # str
    file: str
    first_line: int


@dataclass
class Items:
    item: np.ndarray  # int64 raw ids
    year: np.ndarray  # int64, -1 = unknown
    genre_offsets: np.ndarray  # [items + 1] CSR offsets into genre_ids
    genre_ids: np.ndarray  # int64 ids into genre_names, in the source's order per item
    genre_names: list[str]
    file: str
    first_line: int


@dataclass
class MovieLens:
    kind: Kind
    ratings: Ratings
    users: Users
    items: Items


def _ratings(cols: dict[str, pa.Array], file: str, first_line: int, float_time: bool) -> Ratings:
    rating = parse_numbers(cols["rating"], "float", file, "rating", first_line)
    require(
        (rating >= 0) & (rating <= MAX_RATING), rating, f"is outside [0, {MAX_RATING:g}]", file, "rating", first_line
    )
    if float_time:
        time = parse_numbers(cols["timestamp"], "float", file, "timestamp", first_line)
        require(np.isfinite(time), time, "is not finite", file, "timestamp", first_line)
        time = np.floor(time).astype(np.int64)
    else:
        time = parse_numbers(cols["timestamp"], "int", file, "timestamp", first_line)
    require(time >= 0, time, "is negative", file, "timestamp", first_line)
    return Ratings(
        user=parse_numbers(cols["user_id"], "int", file, "user_id", first_line),
        item=parse_numbers(cols["item_id"], "int", file, "item_id", first_line),
        rating=rating,
        time=time,
        file=file,
        first_line=first_line,
    )


def _users(cols: dict[str, pa.Array], file: str, first_line: int, age_codes: bool) -> Users:
    age = parse_numbers(cols["age"], "int", file, "age", first_line)
    if age_codes:
        require(
            np.isin(age, ML1M_AGE_CODES), age, f"is not an ml-1m age code {ML1M_AGE_CODES}", file, "age", first_line
        )
    else:
        require((age >= 0) & (age <= MAX_AGE), age, f"is not an age in [0, {MAX_AGE}]", file, "age", first_line)
    gender_text = parse_strings(cols["gender"])
    require(np.isin(gender_text, ["M", "F"]), gender_text, "is not a gender (M or F)", file, "gender", first_line)
    return Users(
        user=parse_numbers(cols["user_id"], "int", file, "user_id", first_line),
        age=age,
        gender=(gender_text == "F").astype(np.int64),
        occupation=parse_strings(cols["occupation"]),
        zip_code=parse_strings(cols["zip_code"]),
        file=file,
        first_line=first_line,
    )


def _genre_lists(lists: pa.ListArray) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Per-item genre name lists -> CSR (offsets, ids) over GENRES plus any extra names, sorted."""
    names = np.asarray(pc.utf8_trim_whitespace(lists.flatten()).to_numpy(zero_copy_only=False), dtype=object)
    lengths = pc.list_value_length(lists).fill_null(0).to_numpy().astype(np.int64)
    keep = names != ""
    item_of = np.repeat(np.arange(len(lengths)), lengths)
    names, item_of = names[keep], item_of[keep]
    names = np.where(np.isin(names, NO_GENRE), "unknown", names)
    # An item without any genre gets "unknown".
    empty = np.setdiff1d(np.arange(len(lengths)), item_of)
    names = np.concatenate([names, np.full(len(empty), "unknown", dtype=object)])
    item_of = np.concatenate([item_of, empty])
    order = np.argsort(item_of, kind="stable")
    names, item_of = names[order], item_of[order]
    vocab = list(GENRES) + sorted(set(names.tolist()) - set(GENRES))
    unique, inverse = np.unique(names.astype(str), return_inverse=True)
    ids = np.array([vocab.index(u) for u in unique], dtype=np.int64)[inverse.reshape(-1)]
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(np.bincount(item_of, minlength=len(lengths)), out=offsets[1:])
    return offsets, ids, vocab


def read_ml100k(files: SourceFiles) -> MovieLens:
    """GroupLens ml-100k: u.data (tab), u.user and u.item (pipe, latin-1)."""
    f = files.label(0)
    cols = read_table(
        files.read(0),
        f,
        ["user_id", "item_id", "rating", "timestamp"],
        ["user_id", "item_id", "rating", "timestamp"],
        "\t",
    )
    ratings = _ratings(cols, f, 1, float_time=False)
    f = files.label(1)
    names = ["user_id", "age", "gender", "occupation", "zip_code"]
    users = _users(read_table(files.read(1), f, names, names, "|"), f, 1, age_codes=False)
    f = files.label(2)
    names = ["item_id", "title", "release_date", "video_release_date", "imdb_url", *GENRES]
    cols = read_table(
        files.read(2).decode("latin-1").encode("utf-8"), f, names, ["item_id", "release_date", *GENRES], "|"
    )
    flags = np.stack([parse_numbers(cols[g], "int", f, g, 1) for g in GENRES], axis=1)
    bad = ~np.isin(flags, (0, 1))
    if bad.any():
        row, col = (int(i[0]) for i in np.nonzero(bad))
        raise DataError(f"genre flag {flags[row, col]} is not 0 or 1", file=f, column=GENRES[col], row=1 + row)
    flags[flags.sum(axis=1) == 0, 0] = 1  # no genre -> unknown
    item_row, genre_ids = np.nonzero(flags)  # row-major: genres in flag order per item
    offsets = np.zeros(len(flags) + 1, dtype=np.int64)
    np.cumsum(np.bincount(item_row, minlength=len(flags)), out=offsets[1:])
    items = Items(
        item=parse_numbers(cols["item_id"], "int", f, "item_id", 1),
        year=parse_years(cols["release_date"], r"(?P<year>\d{4})$"),
        genre_offsets=offsets,
        genre_ids=genre_ids.astype(np.int64),
        genre_names=list(GENRES),
        file=f,
        first_line=1,
    )
    return MovieLens("ml-100k", ratings, users, items)


def _double_colon(data: bytes, file: str) -> bytes:
    """ml-1m separates fields by '::', which pyarrow cannot; swap it for the unit separator 0x1f."""
    if b"\x1f" in data:
        raise DataError("contains the control byte 0x1f, which this reader uses as its separator", file=file)
    return data.replace(b"::", b"\x1f")


def read_ml1m(files: SourceFiles) -> MovieLens:
    """GroupLens ml-1m: ratings.dat, users.dat and movies.dat (latin-1), '::'-separated."""
    f = files.label(0)
    names = ["user_id", "item_id", "rating", "timestamp"]
    ratings = _ratings(read_table(_double_colon(files.read(0), f), f, names, names, "\x1f"), f, 1, float_time=False)
    f = files.label(1)
    names = ["user_id", "gender", "age", "occupation", "zip_code"]
    users = _users(read_table(_double_colon(files.read(1), f), f, names, names, "\x1f"), f, 1, age_codes=True)
    f = files.label(2)
    names = ["item_id", "title", "genres"]
    text = _double_colon(files.read(2).decode("latin-1").encode("utf-8"), f)
    cols = read_table(text, f, names, names, "\x1f")
    offsets, ids, vocab = _genre_lists(pc.split_pattern(cols["genres"], "|"))
    items = Items(
        item=parse_numbers(cols["item_id"], "int", f, "item_id", 1),
        year=parse_years(cols["title"], r"\((?P<year>\d{4})\)$"),
        genre_offsets=offsets,
        genre_ids=ids,
        genre_names=vocab,
        file=f,
        first_line=1,
    )
    return MovieLens("ml-1m", ratings, users, items)


def _recbole_table(data: bytes, file: str, required: list[str], optional: tuple[str, ...] = ()) -> dict[str, pa.Array]:
    """A RecBole atomic file: header ``name:type`` tokens, tab-separated; returns the needed fields."""
    header = data.split(b"\n", 1)[0].decode("utf-8-sig", errors="replace").rstrip("\r")
    names = [token.split(":", 1)[0].strip() for token in header.split("\t")]
    for name in required:
        if name not in names:
            raise DataError(f"missing field (the header has {names})", file=file, column=name)
    present = [n for n in optional if n in names]
    if optional and not present:
        raise DataError(
            f"missing field: one of {list(optional)} (the header has {names})", file=file, column=optional[0]
        )
    if len(set(names)) != len(names):
        raise DataError(f"the header names a field twice: {names}", file=file)
    return read_table(data, file, names, required + present[:1], "\t", skip_rows=1)


def read_recbole(files: SourceFiles) -> MovieLens:
    """RecBole atomic files ``<name>.inter / .user / .item`` (also straight from the recbole wheel)."""
    f = files.label(0)
    cols = _recbole_table(files.read(0), f, ["user_id", "item_id", "rating", "timestamp"])
    ratings = _ratings(cols, f, 2, float_time=True)
    f = files.label(1)
    cols = _recbole_table(files.read(1), f, ["user_id", "age", "gender", "occupation", "zip_code"])
    users = _users(cols, f, 2, age_codes=False)
    f = files.label(2)
    cols = _recbole_table(files.read(2), f, ["item_id", "release_year"], optional=("class", "genre"))
    genres = cols["class"] if "class" in cols else cols["genre"]
    offsets, ids, vocab = _genre_lists(pc.utf8_split_whitespace(genres))
    items = Items(
        item=parse_numbers(cols["item_id"], "int", f, "item_id", 2),
        year=parse_years(cols["release_year"], r"^(?P<year>\d{4})$"),
        genre_offsets=offsets,
        genre_ids=ids,
        genre_names=vocab,
        file=f,
        first_line=2,
    )
    return MovieLens("recbole", ratings, users, items)


READERS = {"ml-100k": read_ml100k, "ml-1m": read_ml1m, "recbole": read_recbole}


def read(src: Path) -> MovieLens:
    """Detect and read any supported MovieLens copy into raw in-memory tables."""
    files = locate(src)
    return READERS[files.kind](files)
