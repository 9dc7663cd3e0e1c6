"""MovieLens converter: ml-100k (folder and zip), ml-1m, RecBole atomic files, and the real ML-100K
read straight out of the recbole wheel.

The tiny inputs below are one logical dataset written in each raw format, so every format must
produce the same rows; a plain-Python reference (:func:`reference`) computes the expected rows,
domains, labels and histories independently of the converter.
"""

from __future__ import annotations

import math
import subprocess
import sys
import time
import zipfile
from argparse import ArgumentParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_prep.movielens import GENRES, Options, convert
from torchrec_mdr.config import add_dataclass_arguments, dataclass_from_args
from torchrec_mdr.data.errors import DataError
from torchrec_mdr.data.spec import DatasetSpec

# --------------------------------------------------------------------------- one tiny logical dataset

# id, age in years (ml-100k / RecBole), ml-1m age code, gender, occupation, zip
USERS = [
    (1, 24, 18, "M", "technician", "85711"),  # age<25, bucket 18-24
    (2, 25, 25, "F", "other", "94043"),  # age25-34
    (3, 34, 25, "M", "writer", "T8H1N"),  # age25-34, Canadian zip
    (4, 35, 35, "F", "educator", "02138"),  # age>=35
    (5, 17, 1, "M", "student", "55105"),  # age<25, bucket <18
    (6, 56, 56, "F", "retired", ""),  # age>=35, bucket 56+, no zip
    (7, 40, 35, "M", "none", "99999"),  # never rates: dropped
]
OCCUPATION_CODES = {
    "other": 0,
    "educator": 1,
    "none": 2,
    "retired": 13,
    "student": 4,
    "technician": 17,
    "writer": 20,
}  # ml-1m numbers occupations
# id, title, release year (None = unknown), genres in the source's (alphabetical) order
ITEMS = [
    (10, "Toy Story", 1995, ("Animation", "Children's", "Comedy")),
    (20, "GoldenEye", 1995, ("Action", "Adventure", "Thriller")),
    (30, "Café Society", 1975, ("Drama", "Romance")),  # latin-1 title in ml-100k / ml-1m
    (40, "Mystery Reel", None, ()),  # no date, no genre -> unknown
    (50, "Old One", 1925, ("Action", "Drama")),
    (99, "Never Rated", 1999, ("Comedy",)),  # dropped
]
# user, item, rating, timestamp. Sorted times: 16 rows < 1040 (train), 1040 and 1050 (valid),
# 1060 and 1070 (test). User 1 rates items 20 and 30 in the same second (1010).
RATINGS = [
    (1, 10, 5, 1000),
    (2, 10, 4, 1001),
    (2, 20, 5, 1002),
    (2, 30, 1, 1003),
    (3, 10, 3, 1004),
    (3, 50, 4, 1005),
    (4, 20, 4, 1006),
    (4, 30, 5, 1007),
    (4, 40, 4, 1008),
    (5, 10, 2, 1009),
    (1, 30, 4, 1010),
    (1, 20, 3, 1010),
    (5, 50, 5, 1011),
    (6, 30, 4, 1012),
    (1, 40, 2, 1020),
    (1, 50, 4, 1030),
    (2, 40, 4, 1040),
    (3, 20, 2, 1050),
    (6, 10, 5, 1060),
    (5, 30, 3, 1070),
]
AGE_DOMAINS = ["age<25", "age25-34", "age>=35"]
GENRE_DOMAIN = {10: 1, 20: 0, 30: 2, 40: 2, 50: 0}  # comedy_family / action_thriller / drama_other


def _ml100k_item_line(item: tuple) -> str:
    item_id, title, year, genres = item
    date = f"01-Jan-{year}" if year else ""
    flags = "|".join("1" if g in genres else "0" for g in GENRES)
    return f"{item_id}|{title} ({year or '????'})|{date}||http://imdb/{item_id}|{flags}"


def write_ml100k(folder: Path, ratings: list[str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = ratings or [f"{u}\t{i}\t{r}\t{t}" for u, i, r, t in RATINGS]
    (folder / "u.data").write_text("\n".join(lines) + "\n")
    (folder / "u.user").write_text("".join(f"{u}|{age}|{g}|{occ}|{z}\n" for u, age, _, g, occ, z in USERS))
    (folder / "u.item").write_bytes("".join(_ml100k_item_line(i) + "\n" for i in ITEMS).encode("latin-1"))
    return folder


def write_ml1m(folder: Path, users: list[str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.dat").write_text("".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in RATINGS))
    lines = users or [f"{u}::{g}::{code}::{OCCUPATION_CODES[occ]}::{z}" for u, _, code, g, occ, z in USERS]
    (folder / "users.dat").write_text("\n".join(lines) + "\n")
    movies = "".join(
        f"{i}::{title}{f' ({year})' if year else ''}::{'|'.join(genres)}\n" for i, title, year, genres in ITEMS
    )
    (folder / "movies.dat").write_bytes(movies.encode("latin-1"))
    return folder


def write_recbole(folder: Path, name: str = "ml-tiny", user_header: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        + "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in RATINGS)
    )
    header = user_header or "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token"
    columns = header.count("\t") + 1
    (folder / f"{name}.user").write_text(
        header
        + "\n"
        + "".join("\t".join(str(v) for v in (u, age, g, occ, z)[:columns]) + "\n" for u, age, _, g, occ, z in USERS)
    )
    (folder / f"{name}.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        + "".join(f"{i}\t{title}\t{year or 'unkonwn'}\t{' '.join(genres)}\n" for i, title, year, genres in ITEMS)
    )
    return folder


def zip_folder(folder: Path, archive: Path, prefix: str) -> Path:
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted(folder.iterdir()):
            z.write(path, f"{prefix}/{path.name}")
    return archive


# --------------------------------------------------------------------------- reference and reading


def reference(domains: str = "age", history: str = "all", max_length: int = 50, threshold: float = 4.0) -> list[dict]:
    """Expected rows with plain Python, in the converter's order (time, user, item)."""
    age = {u: a for u, a, *_ in USERS}
    first_genre = {i: (GENRES.index(g[0]) if g else 0) for i, _, _, g in ITEMS}
    rows = []
    for u, i, r, t in sorted(RATINGS, key=lambda x: (x[3], x[0], x[1])):
        events = sorted(
            (e for e in RATINGS if e[0] == u and e[3] < t and (history == "all" or e[2] >= threshold)),
            key=lambda e: (e[3], e[1]),
        )[-max_length:]
        domain = (0 if age[u] < 25 else 1 if age[u] < 35 else 2) if domains == "age" else GENRE_DOMAIN[i]
        rows.append(
            {
                "user": u,
                "item": i,
                "time": t,
                "click": int(r >= threshold),
                "domain": domain,
                "split": "train" if t < 1040 else "valid" if t < 1060 else "test",
                "hist": [e[1] for e in events],
                "hist_genre": [first_genre[e[1]] for e in events],
                "prior": sum(1 for e in RATINGS if e[0] == u and e[3] < t),
            }
        )
    return rows


RAW_USERS = sorted({u for u, *_ in RATINGS})  # encoded id = position
RAW_ITEMS = sorted({i for _, i, *_ in RATINGS})


def load(out: Path) -> tuple[DatasetSpec, dict[str, pa.Table]]:
    spec = DatasetSpec.load(out)
    return spec, {s: pa.concat_tables([pq.read_table(f) for f in spec.files(out, s)]) for s in spec.splits}


def run(src: Path, out: Path, **kwargs) -> tuple[DatasetSpec, dict[str, pa.Table]]:
    spec = convert(Options(src=src, out=out, **kwargs))
    assert DatasetSpec.load(out) == spec
    return load(out)


def as_reference(spec: DatasetSpec, tables: dict[str, pa.Table]) -> list[dict]:
    """The converter's rows in the reference's shape (raw user / item ids)."""
    rows = []
    for split in ("train", "valid", "test"):
        for r in tables[split].to_pylist():
            rows.append(
                {
                    "user": RAW_USERS[r["user_id"]],
                    "item": RAW_ITEMS[r["item_id"]],
                    "click": r["click"],
                    "domain": r["domain"],
                    "split": split,
                    "hist": [RAW_ITEMS[i] for i in r["hist_item_id"]],
                    "hist_genre": r["hist_genre"],
                }
            )
    return rows


def strip(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("time", "prior")} for r in rows]


# --------------------------------------------------------------------------- the formats agree with the reference


@pytest.fixture(params=["ml-100k", "ml-100k.zip", "ml-1m", "ml-1m.zip", "recbole", "recbole.inter", "recbole.whl"])
def source(request, tmp_path) -> Path:
    kind = request.param
    if kind == "ml-100k":
        return write_ml100k(tmp_path / "ml-100k")
    if kind == "ml-100k.zip":
        return zip_folder(write_ml100k(tmp_path / "raw"), tmp_path / "ml-100k.zip", "ml-100k")
    if kind == "ml-1m":
        return write_ml1m(tmp_path / "ml-1m")
    if kind == "ml-1m.zip":
        return zip_folder(write_ml1m(tmp_path / "raw"), tmp_path / "ml-1m.zip", "ml-1m")
    if kind == "recbole":
        return write_recbole(tmp_path / "atomic")
    if kind == "recbole.whl":  # laid out like the recbole wheel, with unrelated members around it
        (tmp_path / "pkg").mkdir()
        (tmp_path / "pkg" / "__init__.py").write_text("")
        wheel = zip_folder(write_recbole(tmp_path / "atomic"), tmp_path / "fake.whl", "recbole/dataset_example/ml-tiny")
        with zipfile.ZipFile(wheel, "a") as z:
            z.write(tmp_path / "pkg" / "__init__.py", "recbole/__init__.py")
        return wheel
    return write_recbole(tmp_path / "atomic") / "ml-tiny.inter"


def test_every_format_gives_the_reference_rows(source, tmp_path):
    spec, tables = run(source, tmp_path / "out")
    assert strip(reference()) == as_reference(spec, tables)
    assert spec.domain_names == AGE_DOMAINS
    # Per split and domain (user 1, 5: <25; 2, 3: 25-34; 4, 6: >=35), by hand.
    assert {s: spec.splits[s].rows for s in spec.splits} == {"train": 16, "valid": 2, "test": 2}
    assert spec.splits["train"].rows_per_domain == [7, 5, 4]
    assert spec.splits["valid"].rows_per_domain == [0, 2, 0]
    assert spec.splits["test"].rows_per_domain == [1, 0, 1]
    assert spec.splits["train"].positives_per_domain["click"] == [4, 3, 4]
    assert spec.splits["valid"].positives_per_domain["click"] == [0, 1, 0]
    assert spec.splits["test"].positives_per_domain["click"] == [0, 0, 1]
    # Ids: contiguous over rated users / items only (user 7 and item 99 never rate).
    assert spec.column("user_id").cardinality == 6 and spec.column("item_id").cardinality == 5
    assert spec.column("hist_item_id").cardinality == 5 and spec.column("hist_item_id").table == "item"
    assert spec.column("genre").table == spec.column("hist_genre").table == spec.column("genres").table == "genre"
    assert spec.column("genre").cardinality == len(GENRES)


def test_side_feature_joins(tmp_path):
    spec, tables = run(write_ml100k(tmp_path / "ml-100k"), tmp_path / "out")
    rows = pa.concat_tables(tables.values()).to_pylist()
    occupations = spec.notes["occupations"].split(" | ")
    prefixes = spec.notes["zip_prefixes"].split(" | ")
    users = {u: (g, occ, z) for u, _, _, g, occ, z in USERS}
    items = {i: (year, genres) for i, _, year, genres in ITEMS}
    for r in rows:
        u, i = RAW_USERS[r["user_id"]], RAW_ITEMS[r["item_id"]]
        gender, occupation, zip_code = users[u]
        assert r["group_id"] == r["user_id"]
        assert r["gender"] == (gender == "F")
        assert occupations[r["occupation"]] == occupation
        assert prefixes[r["zip_prefix"]] == (zip_code[:1] or "?")
        year, genres = items[i]
        assert [GENRES[g] for g in r["genres"]] == (list(genres) or ["unknown"])
        assert GENRES[r["genre"]] == (genres[0] if genres else "unknown")
        assert r["release_decade"] == {1995: 8, 1975: 6, 1925: 1, None: 0}[year]
    by_user = {RAW_USERS[r["user_id"]]: r["age_bucket"] for r in rows}
    assert by_user == {1: 1, 2: 2, 3: 2, 4: 3, 5: 0, 6: 6}  # <18 0, 18-24 1, 25-34 2, 35-44 3, 56+ 6
    # Earlier-ratings features, ties not counted as earlier.
    expected = {(r["user"], r["item"]): r["prior"] for r in reference()}
    for r in rows:
        prior = expected[RAW_USERS[r["user_id"]], RAW_ITEMS[r["item_id"]]]
        assert math.isclose(r["log_prior_ratings"], math.log1p(prior), rel_tol=1e-6)
        assert r["user_activity"] == (0 if prior == 0 else 1 if prior < 5 else 2)


def test_ml1m_age_codes_map_to_the_same_groups_and_buckets(tmp_path):
    a = pa.concat_tables(run(write_ml100k(tmp_path / "a"), tmp_path / "oa")[1].values())
    b = pa.concat_tables(run(write_ml1m(tmp_path / "b"), tmp_path / "ob")[1].values())
    for column in (
        "domain",
        "age_bucket",
        "gender",
        "zip_prefix",
        "user_id",
        "item_id",
        "genre",
        "genres",
        "release_decade",
        "hist_item_id",
    ):
        assert a[column].to_pylist() == b[column].to_pylist(), column


def test_label_threshold_option(tmp_path):
    spec, tables = run(write_ml100k(tmp_path / "raw"), tmp_path / "out", positive_rating=5.0)
    assert strip(reference(threshold=5.0)) == as_reference(spec, tables)
    assert spec.splits["train"].positives_per_domain["click"] == [2, 1, 1]


def test_genre_domains(tmp_path):
    spec, tables = run(write_ml100k(tmp_path / "raw"), tmp_path / "out", domains="genre")
    assert spec.domain_names == ["action_thriller", "comedy_family", "drama_other"]
    assert strip(reference(domains="genre")) == as_reference(spec, tables)
    rows = pa.concat_tables(tables.values()).to_pylist()
    assert {RAW_ITEMS[r["item_id"]]: r["domain"] for r in rows} == GENRE_DOMAIN
    # Train: items 20, 50 -> 0 (6 rows); 10 -> 1 (4 rows); 30, 40 -> 2 (6 rows).
    assert spec.splits["train"].rows_per_domain == [6, 4, 6]


def test_temporal_split_boundaries(tmp_path):
    spec, tables = run(write_ml100k(tmp_path / "raw"), tmp_path / "out")
    times = {(u, i): t for u, i, _, t in RATINGS}
    split_times = {
        s: [
            times[RAW_USERS[u], RAW_ITEMS[i]]
            for u, i in zip(tables[s]["user_id"].to_pylist(), tables[s]["item_id"].to_pylist())
        ]
        for s in tables
    }
    assert max(split_times["train"]) < min(split_times["valid"])
    assert max(split_times["valid"]) < min(split_times["test"])
    assert split_times["train"] == sorted(split_times["train"])  # rows in time order
    assert "time < 1040" in spec.notes["split"] and "time >= 1060" in spec.notes["split"]
    # Other fractions: half / quarter / quarter of 20 rows, cut on timestamps 1010 and 1030.
    spec, _ = run(write_ml100k(tmp_path / "raw2"), tmp_path / "out2", split_fractions=[0.5, 0.25, 0.25])
    assert [spec.splits[s].rows for s in ("train", "valid", "test")] == [10, 5, 5]


def test_histories_are_strictly_earlier(tmp_path):
    spec, tables = run(write_ml100k(tmp_path / "raw"), tmp_path / "out")
    hist = {(r["user"], r["item"]): r["hist"] for r in as_reference(spec, tables)}
    # Items 20 and 30 were rated in the same second: neither sees the other, nor itself.
    assert hist[1, 20] == [10] and hist[1, 30] == [10]
    assert hist[1, 40] == [10, 20, 30] and hist[1, 50] == [10, 20, 30, 40]
    assert hist[1, 10] == []  # the first rating has no history
    # Valid / test rows see earlier train ratings.
    assert hist[2, 40] == [10, 20, 30] and hist[5, 30] == [10, 50]
    times = {(u, i): t for u, i, _, t in RATINGS}
    for (u, i), items in hist.items():
        assert i not in items
        assert all(times[u, h] < times[u, i] for h in items)
    for split in tables:
        lengths = [len(x) for x in tables[split]["hist_item_id"].to_pylist()]
        assert lengths == [len(x) for x in tables[split]["hist_genre"].to_pylist()]


def test_history_options(tmp_path):
    spec, tables = run(write_ml100k(tmp_path / "raw"), tmp_path / "out", history="positives", max_length=2)
    assert strip(reference(history="positives", max_length=2)) == as_reference(spec, tables)
    hist = {(r["user"], r["item"]): r["hist"] for r in as_reference(spec, tables)}
    assert hist[1, 50] == [10, 30]  # 20 (rating 3) and 40 (rating 2) are not positives
    assert spec.column("hist_item_id").max_length == 2
    spec, tables = run(write_ml100k(tmp_path / "raw2"), tmp_path / "out2", max_length=2)
    hist = {(r["user"], r["item"]): r["hist"] for r in as_reference(spec, tables)}
    assert hist[1, 50] == [30, 40]  # the two most recent, oldest first


def test_command_line_flags():
    parser = ArgumentParser()
    add_dataclass_arguments(parser, Options)
    args = parser.parse_args(
        [
            "--src",
            "x",
            "--out",
            "y",
            "--domains",
            "genre",
            "--history",
            "positives",
            "--positive-rating",
            "3.5",
            "--max-length",
            "20",
            "--split-fractions",
            "0.7",
            "0.2",
            "0.1",
        ]
    )
    o = dataclass_from_args(Options, args)
    assert (o.domains, o.history, o.positive_rating, o.max_length) == ("genre", "positives", 3.5, 20)
    assert o.split_fractions == [0.7, 0.2, 0.1]


# --------------------------------------------------------------------------- bad input


def test_missing_file(tmp_path):
    folder = write_ml100k(tmp_path / "raw")
    (folder / "u.item").unlink()
    with pytest.raises(DataError, match="file not found") as error:
        convert(Options(src=folder, out=tmp_path / "out"))
    assert error.value.file.endswith("u.item")
    assert not (tmp_path / "out").exists()


def test_missing_file_in_zip(tmp_path):
    folder = write_ml1m(tmp_path / "raw")
    (folder / "users.dat").unlink()
    archive = zip_folder(folder, tmp_path / "ml-1m.zip", "ml-1m")
    with pytest.raises(DataError, match="file not found") as error:
        convert(Options(src=archive, out=tmp_path / "out"))
    assert error.value.file == f"{archive}!ml-1m/users.dat"


def test_no_dataset(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no MovieLens data"):
        convert(Options(src=tmp_path / "empty", out=tmp_path / "out"))
    with pytest.raises(DataError, match="does not exist"):
        convert(Options(src=tmp_path / "nowhere", out=tmp_path / "out"))


def test_archive_with_two_datasets(tmp_path):
    archive = zip_folder(write_ml100k(tmp_path / "a"), tmp_path / "two.zip", "ml-100k")
    with zipfile.ZipFile(archive, "a") as z:
        for path in write_ml1m(tmp_path / "b").iterdir():
            z.write(path, f"ml-1m/{path.name}")
    with pytest.raises(DataError, match="several datasets"):
        convert(Options(src=archive, out=tmp_path / "out"))


def test_malformed_line(tmp_path):
    lines = [f"{u}\t{i}\t{r}\t{t}" for u, i, r, t in RATINGS]
    lines[4] = "3\t10\t3"  # line 5 lacks its timestamp
    folder = write_ml100k(tmp_path / "raw", ratings=lines)
    with pytest.raises(DataError, match="expected 4 fields") as error:
        convert(Options(src=folder, out=tmp_path / "out"))
    assert error.value.file.endswith("u.data") and error.value.row == 5


def test_unparsable_value(tmp_path):
    lines = [f"{u}\t{i}\t{r}\t{t}" for u, i, r, t in RATINGS]
    lines[2] = "2\t20\tfive\t1002"
    with pytest.raises(DataError, match="'five' is not a number") as error:
        convert(Options(src=write_ml100k(tmp_path / "raw", ratings=lines), out=tmp_path / "out"))
    assert (error.value.column, error.value.row) == ("rating", 3)


def test_rating_out_of_range(tmp_path):
    lines = [f"{u}\t{i}\t{r}\t{t}" for u, i, r, t in RATINGS]
    lines[0] = "1\t10\t7\t1000"
    with pytest.raises(DataError, match="outside") as error:
        convert(Options(src=write_ml100k(tmp_path / "raw", ratings=lines), out=tmp_path / "out"))
    assert (error.value.column, error.value.row) == ("rating", 1)


def test_unknown_user_in_ratings(tmp_path):
    lines = [f"{u}\t{i}\t{r}\t{t}" for u, i, r, t in RATINGS] + ["42\t10\t4\t2000"]
    with pytest.raises(DataError, match="user_id 42 is not in") as error:
        convert(Options(src=write_ml100k(tmp_path / "raw", ratings=lines), out=tmp_path / "out"))
    assert error.value.row == len(RATINGS) + 1


def test_bad_ml1m_age_code_and_gender(tmp_path):
    users = [f"{u}::{g}::{code}::{OCCUPATION_CODES[occ]}::{z}" for u, _, code, g, occ, z in USERS]
    users[1] = "2::F::30::0::94043"
    with pytest.raises(DataError, match="not an ml-1m age code") as error:
        convert(Options(src=write_ml1m(tmp_path / "a", users=users), out=tmp_path / "out"))
    assert (error.value.column, error.value.row) == ("age", 2)
    users[1] = "2::X::25::0::94043"
    with pytest.raises(DataError, match="not a gender") as error:
        convert(Options(src=write_ml1m(tmp_path / "b", users=users), out=tmp_path / "out"))
    assert error.value.column == "gender"


def test_recbole_missing_column(tmp_path):
    folder = write_recbole(tmp_path / "atomic", user_header="user_id:token\tage:token")
    with pytest.raises(DataError, match="missing field") as error:
        convert(Options(src=folder, out=tmp_path / "out"))
    assert error.value.column == "gender" and error.value.file.endswith("ml-tiny.user")


def test_recbole_bad_line_number_counts_the_header(tmp_path):
    folder = write_recbole(tmp_path / "atomic")
    inter = folder / "ml-tiny.inter"
    lines = inter.read_text().splitlines()
    lines[3] = lines[3] + "\textra"  # line 4 of the file (header is line 1)
    inter.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="expected 4 fields") as error:
        convert(Options(src=folder, out=tmp_path / "out"))
    assert error.value.row == 4


def test_bad_split_fractions():
    from torchrec_mdr.config import ConfigError, from_dict

    with pytest.raises(ConfigError, match="split_fractions"):
        from_dict(Options, {"src": "x", "out": "y", "split_fractions": [0.5, 0.2]})


# --------------------------------------------------------------------------- real data: ML-100K from the recbole wheel

WHEEL = "recbole-1.2.1-py3-none-any.whl"
MEMBER = "recbole/dataset_example/ml-100k/ml-100k"


@pytest.fixture(scope="session")
def recbole_wheel() -> Path:
    """The recbole 1.2.1 wheel in <repo>/data/cache (git-ignored), downloaded once if missing."""
    cache = Path(__file__).resolve().parents[1] / "data" / "cache"
    wheel = cache / WHEEL
    if not wheel.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        try:
            done = subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "recbole==1.2.1", "-d", str(cache)],
                capture_output=True,
                text=True,
                timeout=300,
            )
        except subprocess.TimeoutExpired:
            pytest.skip("downloading recbole==1.2.1 timed out")
        if done.returncode != 0 or not wheel.is_file():
            pytest.skip(f"cannot download recbole==1.2.1: {done.stderr.strip()[-300:]}")
    return wheel


@pytest.mark.network
def test_real_ml100k_from_the_recbole_wheel(recbole_wheel, tmp_path):
    started = time.perf_counter()
    spec = convert(Options(src=recbole_wheel, out=tmp_path / "ml100k"))
    seconds = time.perf_counter() - started
    print(f"\n{spec.describe()}\nconverted the real ML-100K in {seconds:.2f} s")
    for split, stats in spec.splits.items():
        print(split, "rows per domain", stats.rows_per_domain, "positives", stats.positives_per_domain["click"])

    # Independent facts from the raw files in the wheel.
    with zipfile.ZipFile(recbole_wheel) as z:
        inter = [line.split("\t") for line in z.read(f"{MEMBER}.inter").decode().splitlines()[1:]]
        users = [line.split("\t") for line in z.read(f"{MEMBER}.user").decode().splitlines()[1:]]
    age = {u[0]: int(u[1]) for u in users}
    raw_domain = np.bincount([0 if age[r[0]] < 25 else 1 if age[r[0]] < 35 else 2 for r in inter], minlength=3)
    assert len(inter) == 100_000

    assert sum(s.rows for s in spec.splits.values()) == 100_000
    assert spec.column("user_id").cardinality == 943 and spec.column("item_id").cardinality == 1682
    assert spec.domain_names == ["age<25", "age25-34", "age>=35"]
    assert all(min(s.rows_per_domain) > 0 for s in spec.splits.values())
    assert np.sum([s.rows_per_domain for s in spec.splits.values()], axis=0).tolist() == raw_domain.tolist()
    assert sum(sum(s.positives_per_domain["click"]) for s in spec.splits.values()) == sum(
        float(r[2]) >= 4 for r in inter
    )
    assert 0.75 < spec.splits["train"].rows / 100_000 < 0.85

    # Leakage: every history item was rated by the same user strictly before the row's time, the
    # row's own item never appears, and the history is the min(50, earlier ratings) most recent.
    _, tables = load(tmp_path / "ml100k")
    t = pa.concat_tables(tables[s] for s in ("train", "valid", "test"))
    user = t["user_id"].to_numpy()
    item = t["item_id"].to_numpy()
    num_items = spec.column("item_id").cardinality
    raw_time = {(int(r[0]), int(r[1])): int(float(r[3])) for r in inter}
    raw_users = sorted({int(r[0]) for r in inter})
    raw_items = sorted({int(r[1]) for r in inter})
    row_time = np.array([raw_time[raw_users[u], raw_items[i]] for u, i in zip(user, item)])
    assert np.all(np.diff(row_time) >= 0)  # time order across the three splits
    time_of = {(u, i): tt for u, i, tt in zip(user.tolist(), item.tolist(), row_time.tolist())}
    assert len(time_of) == 100_000  # (user, item) pairs are unique in ML-100K
    hist = t["hist_item_id"].combine_chunks()
    offsets = hist.offsets.to_numpy()
    lengths = np.diff(offsets)
    hist_user = np.repeat(user, lengths)
    hist_item = hist.values.to_numpy()
    key = user.astype(np.int64) * num_items + item
    order = np.argsort(key)
    position = order[np.searchsorted(key[order], hist_user.astype(np.int64) * num_items + hist_item)]
    hist_time = row_time[position]
    assert np.all(hist_time < np.repeat(row_time, lengths))
    assert not np.any(hist_item == np.repeat(item, lengths))
    assert np.all(lengths <= 50) and lengths.max() == 50
    user_time = np.sort(user.astype(np.int64) << 32 | row_time)
    first_of_user = np.searchsorted(user_time, user.astype(np.int64) << 32)
    earlier = np.searchsorted(user_time, user.astype(np.int64) << 32 | row_time) - first_of_user
    assert np.array_equal(lengths, np.minimum(earlier, 50))
    # Oldest first, and the last behaviour is the user's latest rating before the row.
    last = offsets[1:][lengths > 0] - 1
    inner = np.ones(len(hist_time), dtype=bool)
    inner[last] = False
    assert np.all(np.diff(hist_time)[inner[:-1]] >= 0)
    latest = user_time[first_of_user + earlier - 1][lengths > 0] & 0xFFFFFFFF
    assert np.array_equal(hist_time[last], latest)
