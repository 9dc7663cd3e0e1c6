"""MovieLens -> a multi-domain ranking dataset (``mdr data movielens --src PATH --out DIR``).

Inputs, detected from ``--src`` (a folder, a zip archive, or a RecBole ``.inter`` file):

* **GroupLens ml-100k**, the folder or ``ml-100k.zip``: ``u.data`` (tab-separated
  ``user id, item id, rating, timestamp``), ``u.user`` (``id|age|gender|occupation|zip``) and
  ``u.item`` (latin-1, ``movie id|title|release date|video release date|IMDb URL|`` then 19 genre
  flags in the order of :data:`GENRES`).
* **GroupLens ml-1m**, the folder or ``ml-1m.zip``: ``ratings.dat`` (``UserID::MovieID::Rating::
  Timestamp``), ``users.dat`` (``UserID::Gender::Age::Occupation::Zip-code``, Age one of the codes
  1, 18, 25, 35, 45, 50, 56) and ``movies.dat`` (latin-1, ``MovieID::Title::Genres``, genres joined
  by ``|``; the release year is the ``(YYYY)`` that ends the title).
* **RecBole atomic files**: a folder (or one of its ``.inter`` files) holding ``<name>.inter``,
  ``<name>.user`` and ``<name>.item``, tab-separated, with a header of ``field:type`` tokens. Fields
  used: inter ``user_id, item_id, rating, timestamp``; user ``user_id, age, gender, occupation,
  zip_code``; item ``item_id, release_year`` and the genres, ``class`` (RecBole's ml-100k) or
  ``genre`` (its ml-1m), a space-separated ``token_seq``.
* **The RecBole wheel** ``recbole-1.2.1-py3-none-any.whl`` (any zip): the atomic files under
  ``recbole/dataset_example/ml-100k/`` are read straight out of the archive; nothing is installed.

Any zip is searched for exactly one folder holding ``u.data``, ``ratings.dat`` or ``*.inter``.

Output (one row per rating, every rating kept):

* ``click`` (label) = ``rating >= --positive-rating`` (default 4).
* ``domain``: ``--domains age`` (default) -> the user's age group ``age<25``, ``age25-34``,
  ``age>=35`` (ml-1m codes 1, 18 -> <25; 25 -> 25-34; 35, 45, 50, 56 -> >=35; ml-100k / RecBole
  ages are years and use the same cuts). ``--domains genre`` -> the group of the item's *first*
  genre (:data:`GENRE_GROUPS`):

  - ``action_thriller``: Action, Adventure, Crime, Film-Noir, Horror, Mystery, Sci-Fi, Thriller,
    War, Western (suspense and action);
  - ``comedy_family``: Animation, Children's, Comedy, Fantasy, Musical (light and family);
  - ``drama_other``: Drama, Romance, Documentary, unknown and any genre outside the ml-100k list.

  On the real ML-100K this gives about 42 / 29 / 28 % of the ratings. Note that every source lists
  an item's genres alphabetically (ml-100k's flag order is alphabetical after ``unknown``), so
  "first genre" favours early letters: a film tagged Action and Drama is an ``action_thriller``.
* ``group_id`` = ``user_id`` (GAUC per user).
* Ids: ``user_id`` and ``item_id`` are the rank of the raw id among the *rated* users / items
  (numeric order), so cardinalities are the numbers of distinct rated users / items. Users or
  items present only in the side files are dropped; a rating whose user or item is missing from
  the side file is an error.
* User side: ``gender`` (0 = M, 1 = F), ``age_bucket`` (ml-1m's seven bins: <18, 18-24, 25-34,
  35-44, 45-49, 50-55, 56+; ml-100k ages in years are binned the same way, so a code and a year
  land in the same bucket), ``occupation`` (vocabulary of the user file, sorted), ``zip_prefix``
  (first character of the zip code, upper-cased; ``?`` if empty; ml-100k has Canadian codes such
  as ``T8H1N``).
* Item side: ``genre`` (first genre), ``genres`` (multi_id, all genres), ``release_decade``
  (0 = unknown, 1 = before 1930, 2 = 1930s, ..., 9 = 2000s, 10 = 2010 and later). A release year
  that is not four digits (the real RecBole ML-100K has ``unkonwn`` and ``V``; u.item has an empty
  date) is *unknown*, not an error. An item with no genre gets ``unknown``; so do ml-1m's empty
  genre and later releases' ``(no genres listed)``. Genre ids follow :data:`GENRES` (ml-100k
  order); names outside it (``IMAX`` in later releases) are appended in sorted order.
  ``genre``, ``genres`` and ``hist_genre`` share the table ``genre``.
* ``user_activity`` (id) and ``log_prior_ratings`` (dense): the number of the user's ratings
  *strictly before* this one (all ratings, whatever ``--history``), bucketed (0, 1-4, 5-19, 20-49,
  50-99, 100-199, 200+) and as ``log1p``: an implicit domain feature without leakage.
* Behaviour sequence group ``hist``: ``hist_item_id`` (table ``item``) and ``hist_genre`` (table
  ``genre``, first genre), oldest first, the ``--max-length`` most recent of the user's ratings
  with a timestamp strictly earlier than the row's (:func:`data_prep.history.build_history`), so a
  row never sees its own rating nor anything rated in the same second. ``--history all`` (default)
  takes every rated item (rating is an explicit act of watching, whatever the score);
  ``--history positives`` only ratings with ``click = 1``.
* Split: one global timestamp cut (:func:`data_prep.common.temporal_split_points`) so that about
  ``--split-fractions`` (0.8 0.1 0.1) of the rows are train / valid / test; every train row is
  strictly older than every valid row, and every valid row strictly older than every test row.
  Histories of valid / test rows include earlier train (and valid) ratings, as they would online.
  Rows are written in (timestamp, user_id, item_id) order.

Timestamps are whole seconds (RecBole's ``timestamp:float`` is truncated). Bad raw input (missing
file or column, a line with the wrong number of fields, a value that does not parse or is out of
its domain: a rating outside [0, 5], a gender other than M/F, an ml-1m age code outside the seven,
a genre flag other than 0/1) raises :class:`DataError` naming the file, column and line.
"""

from __future__ import annotations

import posixpath
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from data_prep.common import SPLITS, OutputOptions, progress, take_bags, temporal_split_points, writer_for
from data_prep.history import build_history
from data_prep.writer import list_array
from torchrec_mdr.config import ConfigError, bounds, doc
from torchrec_mdr.data.errors import DataError
from torchrec_mdr.data.spec import ColumnSpec, DatasetSpec

GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
          "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
          "War", "Western")
GENRE_GROUPS: dict[str, tuple[str, ...]] = {
    "action_thriller": ("Action", "Adventure", "Crime", "Film-Noir", "Horror", "Mystery", "Sci-Fi", "Thriller",
                        "War", "Western"),
    "comedy_family": ("Animation", "Children's", "Comedy", "Fantasy", "Musical"),
    "drama_other": ("Drama", "Romance", "Documentary", "unknown"),  # + every genre not in GENRES
}
_FALLBACK_GROUP = 2  # genre group of names outside GENRES
_NO_GENRE = ("", "(no genres listed)")  # spelled "unknown" in the output
AGE_DOMAINS = ("age<25", "age25-34", "age>=35")
AGE_DOMAIN_CUTS = np.array([25, 35])
AGE_BUCKET_EDGES = np.array([18, 25, 35, 45, 50, 56])  # ml-1m's bins
AGE_BUCKETS = ("<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+")
ML1M_AGE_CODES = (1, 18, 25, 35, 45, 50, 56)
MAX_AGE = 120
DECADE_EDGES = np.arange(1930, 2011, 10)  # bucket 0 = unknown, 1 = < 1930, ..., 10 = >= 2010
ACTIVITY_EDGES = np.array([1, 5, 20, 50, 100, 200])  # earlier ratings: 0, 1-4, ..., 200+
MAX_RATING = 5.0
CHUNK_ROWS = 262_144  # rows per history / write chunk (bounds the peak memory of long histories)

Kind = Literal["ml-100k", "ml-1m", "recbole"]
_LAYOUTS: dict[str, tuple[str, str, str]] = {
    "ml-100k": ("u.data", "u.user", "u.item"),
    "ml-1m": ("ratings.dat", "users.dat", "movies.dat"),
}
_INT = r"^\s*[-+]?\d+\s*$"
_FLOAT = r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"


@dataclass(kw_only=True)
class Options(OutputOptions):
    src: Path = field(metadata=doc("ml-100k or ml-1m folder or .zip, a RecBole atomic folder or .inter file, "
                                   "or the recbole wheel (.whl)"))
    domains: Literal["age", "genre"] = field(default="age", metadata=doc(
        "age: user age groups <25 / 25-34 / >=35; genre: group of the item's first genre"))
    positive_rating: float = field(default=4.0, metadata=bounds(gt=0, le=MAX_RATING,
                                                                help="click = 1 when rating >= this"))
    history: Literal["all", "positives"] = field(default="all", metadata=doc(
        "behaviours in hist_*: all earlier rated items, or only earlier positives"))
    max_length: int = field(default=50, metadata=bounds(ge=1, help="most recent behaviours kept per row"))
    split_fractions: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1],
                                         metadata=bounds(ge=0, help="train / valid / test shares of rows "
                                                                    "(one global time cut)"))

    def validate(self) -> None:
        if len(self.split_fractions) != 3 or abs(sum(self.split_fractions) - 1) > 1e-6:
            raise ConfigError(f"split_fractions {self.split_fractions} must be three shares summing to 1")


# --------------------------------------------------------------------------- raw tables


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


# --------------------------------------------------------------------------- finding the files


@dataclass
class SourceFiles:
    """The three files of one MovieLens copy, in a folder or inside a zip archive."""

    kind: Kind
    src: Path
    folder: str  # folder inside the zip ("" for the top), or the folder on disk
    names: tuple[str, str, str]  # ratings, users, items
    zipped: bool

    def path(self, index: int) -> str:
        if self.zipped:
            return posixpath.join(self.folder, self.names[index])
        return str(Path(self.folder) / self.names[index])

    def label(self, index: int) -> str:
        """How error messages name the file: ``archive.zip!member`` inside a zip."""
        return f"{self.src}!{self.path(index)}" if self.zipped else self.path(index)

    def read(self, index: int) -> bytes:
        try:
            if self.zipped:
                with zipfile.ZipFile(self.src) as archive:
                    return archive.read(self.path(index))
            return Path(self.path(index)).read_bytes()
        except (KeyError, FileNotFoundError):
            raise DataError(f"file not found ({self.kind} needs {', '.join(self.names)})",
                            file=self.label(index)) from None
        except (OSError, zipfile.BadZipFile) as error:
            raise DataError(f"cannot read: {error}", file=self.label(index)) from None


def locate(src: Path) -> SourceFiles:
    """Detect the format of ``src`` and name its ratings, users and items files.

    A folder is searched at its top level only; a zip at every level, and must hold exactly one
    dataset. ml-100k wins over ml-1m over RecBole when a folder holds several layouts.
    """
    src = Path(src)
    if not src.exists():
        raise DataError("does not exist", file=src)
    if src.is_file() and src.suffix == ".inter":
        return _recbole_files(src, str(src.parent), src.stem, zipped=False)
    if src.is_dir():
        folders = {str(src): {p.name for p in src.iterdir() if p.is_file()}}
        zipped = False
    elif src.is_file() and zipfile.is_zipfile(src):
        try:
            with zipfile.ZipFile(src) as archive:
                members = [m for m in archive.namelist() if not m.endswith("/")]
        except (OSError, zipfile.BadZipFile) as error:
            raise DataError(f"cannot read the archive: {error}", file=src) from None
        folders = {}
        for member in members:
            folders.setdefault(posixpath.dirname(member), set()).add(posixpath.basename(member))
        zipped = True
    else:
        raise DataError("not a folder, a zip archive (.zip, .whl) or a RecBole .inter file", file=src)
    found: list[SourceFiles] = []
    for folder, names in sorted(folders.items()):
        for kind, layout in _LAYOUTS.items():
            if layout[0] in names:
                found.append(SourceFiles(kind, src, folder, layout, zipped))  # type: ignore[arg-type]
                break
        else:
            found += [_recbole_files(src, folder, name[: -len(".inter")], zipped)
                      for name in sorted(names) if name.endswith(".inter")]
    if not found:
        raise DataError("no MovieLens data: expected u.data (ml-100k), ratings.dat (ml-1m) or a RecBole "
                        "<name>.inter with <name>.user and <name>.item", file=src)
    if len(found) > 1:
        listed = ", ".join(f.label(0) for f in found)
        raise DataError(f"holds several datasets ({listed}); point --src at one of them", file=src)
    return found[0]


def _recbole_files(src: Path, folder: str, name: str, zipped: bool) -> SourceFiles:
    return SourceFiles("recbole", src, folder, (f"{name}.inter", f"{name}.user", f"{name}.item"), zipped)


# --------------------------------------------------------------------------- parsing


def _read_table(data: bytes, file: str, names: list[str], keep: list[str], delimiter: str,
                skip_rows: int = 0) -> dict[str, pa.Array]:
    """Parse delimited text (no quoting) into the ``keep`` columns as strings; errors name the line."""
    invalid: list[pacsv.InvalidRow] = []

    def on_invalid(row: pacsv.InvalidRow) -> str:
        invalid.append(row)
        return "error"

    if not data.strip():
        raise DataError("the file is empty", file=file)
    try:
        table = pacsv.read_csv(
            pa.BufferReader(data),
            read_options=pacsv.ReadOptions(column_names=names, skip_rows=skip_rows, use_threads=False),
            parse_options=pacsv.ParseOptions(delimiter=delimiter, quote_char=False, invalid_row_handler=on_invalid),
            convert_options=pacsv.ConvertOptions(column_types={k: pa.string() for k in keep}, include_columns=keep),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
        if invalid:
            row = invalid[0]
            raise DataError(f"expected {row.expected_columns} fields separated by {delimiter!r}, found "
                            f"{row.actual_columns}: {row.text!r}", file=file,
                            row=row.number if row.number and row.number > 0 else None) from None
        raise DataError(f"cannot parse: {error}", file=file) from None
    if table.num_rows == 0:
        raise DataError("the file has no data rows", file=file)
    return {k: table[k].combine_chunks() for k in keep}


def _first_bad(ok: pa.Array) -> int | None:
    """Index of the first False (or null) in a boolean array, or None."""
    bad = np.flatnonzero(~ok.fill_null(False).to_numpy(zero_copy_only=False))
    return int(bad[0]) if bad.size else None


def _numbers(values: pa.Array, kind: Literal["int", "float"], file: str, column: str, first_line: int) -> np.ndarray:
    """Strings -> int64 or float64, naming the first line that does not parse."""
    bad = _first_bad(pc.match_substring_regex(values, _INT if kind == "int" else _FLOAT))
    if bad is not None:
        what = "a whole number" if kind == "int" else "a number"
        raise DataError(f"{values[bad].as_py()!r} is not {what}", file=file, column=column, row=first_line + bad)
    try:
        return pc.cast(pc.utf8_trim_whitespace(values), pa.int64() if kind == "int" else pa.float64()).to_numpy()
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:  # an integer beyond int64
        raise DataError(f"cannot convert: {error}", file=file, column=column) from None


def _strings(values: pa.Array) -> np.ndarray:
    return np.asarray(pc.utf8_trim_whitespace(values).to_numpy(zero_copy_only=False), dtype=object)


def _check(ok: np.ndarray, values: np.ndarray, message: str, file: str, column: str, first_line: int) -> None:
    """Raise a DataError at the first row where ``ok`` is False."""
    bad = np.flatnonzero(~ok)
    if bad.size:
        i = int(bad[0])
        value = values[i].item() if isinstance(values[i], np.generic) else values[i]
        raise DataError(f"{value!r} {message}", file=file, column=column, row=first_line + i)


def _ratings(cols: dict[str, pa.Array], file: str, first_line: int, float_time: bool) -> Ratings:
    rating = _numbers(cols["rating"], "float", file, "rating", first_line)
    _check((rating >= 0) & (rating <= MAX_RATING), rating, f"is outside [0, {MAX_RATING:g}]", file, "rating",
           first_line)
    if float_time:
        time = _numbers(cols["timestamp"], "float", file, "timestamp", first_line)
        _check(np.isfinite(time), time, "is not finite", file, "timestamp", first_line)
        time = np.floor(time).astype(np.int64)
    else:
        time = _numbers(cols["timestamp"], "int", file, "timestamp", first_line)
    _check(time >= 0, time, "is negative", file, "timestamp", first_line)
    return Ratings(user=_numbers(cols["user_id"], "int", file, "user_id", first_line),
                   item=_numbers(cols["item_id"], "int", file, "item_id", first_line),
                   rating=rating, time=time, file=file, first_line=first_line)


def _users(cols: dict[str, pa.Array], file: str, first_line: int, age_codes: bool) -> Users:
    age = _numbers(cols["age"], "int", file, "age", first_line)
    if age_codes:
        _check(np.isin(age, ML1M_AGE_CODES), age, f"is not an ml-1m age code {ML1M_AGE_CODES}", file, "age",
               first_line)
    else:
        _check((age >= 0) & (age <= MAX_AGE), age, f"is not an age in [0, {MAX_AGE}]", file, "age", first_line)
    gender_text = _strings(cols["gender"])
    _check(np.isin(gender_text, ["M", "F"]), gender_text, "is not a gender (M or F)", file, "gender", first_line)
    return Users(user=_numbers(cols["user_id"], "int", file, "user_id", first_line), age=age,
                 gender=(gender_text == "F").astype(np.int64), occupation=_strings(cols["occupation"]),
                 zip_code=_strings(cols["zip_code"]), file=file, first_line=first_line)


def _years(text: pa.Array, pattern: str) -> np.ndarray:
    """The four-digit year captured by ``pattern`` (group ``year``), -1 where there is none."""
    match = pc.extract_regex(pc.utf8_trim_whitespace(text), pattern)
    years = pc.struct_field(match, "year").fill_null("-1")
    return pc.cast(years, pa.int64()).to_numpy()


def _genre_lists(lists: pa.ListArray) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Per-item genre name lists -> CSR (offsets, ids) over GENRES plus any extra names, sorted."""
    names = np.asarray(pc.utf8_trim_whitespace(lists.flatten()).to_numpy(zero_copy_only=False), dtype=object)
    lengths = pc.list_value_length(lists).fill_null(0).to_numpy().astype(np.int64)
    keep = names != ""
    item_of = np.repeat(np.arange(len(lengths)), lengths)
    names, item_of = names[keep], item_of[keep]
    names = np.where(np.isin(names, _NO_GENRE), "unknown", names)
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
    cols = _read_table(files.read(0), f, ["user_id", "item_id", "rating", "timestamp"],
                       ["user_id", "item_id", "rating", "timestamp"], "\t")
    ratings = _ratings(cols, f, 1, float_time=False)
    f = files.label(1)
    names = ["user_id", "age", "gender", "occupation", "zip_code"]
    users = _users(_read_table(files.read(1), f, names, names, "|"), f, 1, age_codes=False)
    f = files.label(2)
    names = ["item_id", "title", "release_date", "video_release_date", "imdb_url", *GENRES]
    cols = _read_table(files.read(2).decode("latin-1").encode("utf-8"), f, names,
                       ["item_id", "release_date", *GENRES], "|")
    flags = np.stack([_numbers(cols[g], "int", f, g, 1) for g in GENRES], axis=1)
    bad = ~np.isin(flags, (0, 1))
    if bad.any():
        row, col = (int(i[0]) for i in np.nonzero(bad))
        raise DataError(f"genre flag {flags[row, col]} is not 0 or 1", file=f, column=GENRES[col], row=1 + row)
    flags[flags.sum(axis=1) == 0, 0] = 1  # no genre -> unknown
    item_row, genre_ids = np.nonzero(flags)  # row-major: genres in flag order per item
    offsets = np.zeros(len(flags) + 1, dtype=np.int64)
    np.cumsum(np.bincount(item_row, minlength=len(flags)), out=offsets[1:])
    items = Items(item=_numbers(cols["item_id"], "int", f, "item_id", 1),
                  year=_years(cols["release_date"], r"(?P<year>\d{4})$"), genre_offsets=offsets,
                  genre_ids=genre_ids.astype(np.int64), genre_names=list(GENRES), file=f, first_line=1)
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
    ratings = _ratings(_read_table(_double_colon(files.read(0), f), f, names, names, "\x1f"), f, 1,
                       float_time=False)
    f = files.label(1)
    names = ["user_id", "gender", "age", "occupation", "zip_code"]
    users = _users(_read_table(_double_colon(files.read(1), f), f, names, names, "\x1f"), f, 1, age_codes=True)
    f = files.label(2)
    names = ["item_id", "title", "genres"]
    text = _double_colon(files.read(2).decode("latin-1").encode("utf-8"), f)
    cols = _read_table(text, f, names, names, "\x1f")
    offsets, ids, vocab = _genre_lists(pc.split_pattern(cols["genres"], "|"))
    items = Items(item=_numbers(cols["item_id"], "int", f, "item_id", 1),
                  year=_years(cols["title"], r"\((?P<year>\d{4})\)$"), genre_offsets=offsets, genre_ids=ids,
                  genre_names=vocab, file=f, first_line=1)
    return MovieLens("ml-1m", ratings, users, items)


def _recbole_table(data: bytes, file: str, required: list[str], optional: tuple[str, ...] = ()
                   ) -> dict[str, pa.Array]:
    """A RecBole atomic file: header ``name:type`` tokens, tab-separated; returns the needed fields."""
    header = data.split(b"\n", 1)[0].decode("utf-8-sig", errors="replace").rstrip("\r")
    names = [token.split(":", 1)[0].strip() for token in header.split("\t")]
    for name in required:
        if name not in names:
            raise DataError(f"missing field (the header has {names})", file=file, column=name)
    present = [n for n in optional if n in names]
    if optional and not present:
        raise DataError(f"missing field: one of {list(optional)} (the header has {names})", file=file,
                        column=optional[0])
    if len(set(names)) != len(names):
        raise DataError(f"the header names a field twice: {names}", file=file)
    return _read_table(data, file, names, required + present[:1], "\t", skip_rows=1)


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
    items = Items(item=_numbers(cols["item_id"], "int", f, "item_id", 2),
                  year=_years(cols["release_year"], r"^(?P<year>\d{4})$"), genre_offsets=offsets, genre_ids=ids,
                  genre_names=vocab, file=f, first_line=2)
    return MovieLens("recbole", ratings, users, items)


READERS = {"ml-100k": read_ml100k, "ml-1m": read_ml1m, "recbole": read_recbole}


def read(src: Path) -> MovieLens:
    """Detect and read any supported MovieLens copy into raw in-memory tables."""
    files = locate(src)
    return READERS[files.kind](files)


# --------------------------------------------------------------------------- features


def _join(table_ids: np.ndarray, table_file: str, table_first_line: int, query: np.ndarray, query_file: str,
          column: str, query_first_line: int) -> np.ndarray:
    """Row of ``table_ids`` holding each ``query`` id; unknown or duplicated ids raise DataError."""
    order = np.argsort(table_ids, kind="stable")
    ordered = table_ids[order]
    duplicate = np.flatnonzero(ordered[1:] == ordered[:-1])
    if duplicate.size:
        row = int(order[duplicate[0] + 1])
        raise DataError(f"id {table_ids[row]} appears twice", file=table_file, column=column,
                        row=table_first_line + row)
    position = np.minimum(np.searchsorted(ordered, query), len(ordered) - 1)
    missing = np.flatnonzero(ordered[position] != query)
    if missing.size:
        i = int(missing[0])
        raise DataError(f"{column} {query[i]} is not in {table_file}", file=query_file, column=column,
                        row=query_first_line + i)
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
    return np.array([group_of.get(g, _FALLBACK_GROUP) for g in genre_names], dtype=np.int64)


@dataclass
class Prepared:
    """Per-rating columns (sorted by time, user, item), the split of each row, and vocabulary facts."""

    rows: dict[str, np.ndarray]  # scalar columns
    genres_offsets: np.ndarray  # CSR per row of "genres"
    genres_values: np.ndarray
    split: np.ndarray  # 0 train, 1 valid, 2 test
    cuts: tuple[int, int]
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
    zip_prefix, zip_prefixes = _vocabulary(np.where(pc.equal(prefixes, "").to_numpy(zero_copy_only=False), "?",
                                                    prefixes.to_numpy(zero_copy_only=False)))
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


# --------------------------------------------------------------------------- output


def columns(o: Options, num_users: int, num_items: int, vocab: dict[str, list[str]]) -> list[ColumnSpec]:
    """The dataset's columns, every embedded one with its exact cardinality and oov='reject'."""
    genres = len(vocab["genre"])
    label = f"rating >= {o.positive_rating:g}"
    return [
        ColumnSpec("click", "label", description=label),
        ColumnSpec("domain", "domain", description="user age group" if o.domains == "age"
                   else "group of the item's first genre"),
        ColumnSpec("group_id", "group", description="user_id, for GAUC"),
        ColumnSpec("user_id", "id", table="user", cardinality=num_users, oov="reject",
                   description="rank of the raw user id among rated users"),
        ColumnSpec("item_id", "id", table="item", cardinality=num_items, oov="reject",
                   description="rank of the raw movie id among rated movies"),
        ColumnSpec("gender", "id", cardinality=2, oov="reject", description="0 = M, 1 = F"),
        ColumnSpec("age_bucket", "id", cardinality=len(AGE_BUCKETS), oov="reject",
                   description="ml-1m age bins " + " / ".join(AGE_BUCKETS)),
        ColumnSpec("occupation", "id", cardinality=len(vocab["occupation"]), oov="reject"),
        ColumnSpec("zip_prefix", "id", cardinality=len(vocab["zip_prefix"]), oov="reject",
                   description="first character of the zip code"),
        ColumnSpec("user_activity", "id", cardinality=len(ACTIVITY_EDGES) + 1, oov="reject",
                   description="bucket of the user's earlier ratings: 0, 1-4, 5-19, 20-49, 50-99, 100-199, 200+"),
        ColumnSpec("genre", "id", table="genre", cardinality=genres, oov="reject", description="first genre"),
        ColumnSpec("genres", "multi_id", table="genre", cardinality=genres, oov="reject", description="all genres"),
        ColumnSpec("release_decade", "id", cardinality=len(DECADE_EDGES) + 2, oov="reject",
                   description="0 unknown, 1 before 1930, 2 1930s, ..., 9 2000s, 10 from 2010"),
        ColumnSpec("hist_item_id", "sequence", table="item", cardinality=num_items, oov="reject",
                   sequence_group="hist", max_length=o.max_length,
                   description=f"earlier rated movies ({o.history}), oldest first"),
        ColumnSpec("hist_genre", "sequence", table="genre", cardinality=genres, oov="reject",
                   sequence_group="hist", max_length=o.max_length, description="first genre of each behaviour"),
        ColumnSpec("log_prior_ratings", "dense", description="log1p(the user's ratings strictly before this one)"),
    ]


def _utc(seconds: int) -> str:
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
    source = (f"MovieLens {files.kind} from {o.src}: domains={o.domains}, click = rating >= "
              f"{o.positive_rating:g}, history={o.history} (max {o.max_length}), split "
              f"{'/'.join(f'{x:g}' for x in o.split_fractions)} by time")
    notes = {
        "format": files.kind,
        "files": ", ".join(files.label(i) for i in range(3)),
        "domains": ("age groups of the user: <25, 25-34, >=35 (ml-1m codes 1,18 | 25 | 35,45,50,56)"
                    if o.domains == "age" else
                    "; ".join(f"{name}: {', '.join(genres)}" for name, genres in GENRE_GROUPS.items())
                    + " and any other genre (first genre of the item)"),
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
    with writer_for(o, name=f"movielens-{files.kind}", columns=columns(o, num_users, num_items, p.vocab),
                    domain_names=domain_names, source=source, notes=notes) as writer, \
            progress(len(p.split), "movielens", unit="rows") as bar:
        for index, split in enumerate(SPLITS):
            selected = np.flatnonzero(p.split == index)
            for start in range(0, len(selected), CHUNK_ROWS):
                chunk_rows = selected[start:start + CHUNK_ROWS]
                offsets, history = build_history(rows["user_id"][chunk_rows], rows["time_rank"][chunk_rows],
                                                 event_user, event_time, event_fields, o.max_length)
                chunk: dict[str, object] = {c: rows[c][chunk_rows] for c in scalar}
                genre_offsets, genre_values = take_bags(p.genres_offsets, p.genres_values, chunk_rows)
                chunk["genres"] = list_array(genre_offsets, genre_values)
                for name, values in history.items():
                    chunk[name] = list_array(offsets, values)
                writer.write(split, chunk)
                bar.update(len(chunk_rows))
        return writer.close()
