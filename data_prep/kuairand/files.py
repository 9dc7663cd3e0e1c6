"""Finding a variant's files (in ``--src`` or its ``data/`` folder), checking headers, and streaming a
headed CSV with the line number of each block and errors for missing values."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow as pa

from data_prep.common import first_null, header_fields, stream_csv
from data_prep.kuairand.options import USER_DENSE, VIDEO_DENSE
from torchrec_mdr.data.errors import DataError


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
        found = sorted(p.name[len("user_features_") : -len(".csv")] for p in folder.glob("user_features_*.csv"))
        if len(found) != 1:
            what = (
                f"several variants ({', '.join(found)}); choose one with --variant"
                if found
                else "no user_features_*.csv"
            )
            raise DataError(f"cannot tell the KuaiRand variant: {what}", file=folder)
        variant = found[0]

    def logs(kind: str) -> list[Path]:
        whole = set(folder.glob(f"log_{kind}_*_{variant}.csv"))
        return sorted(whole | set(folder.glob(f"log_{kind}_*_{variant}_part*.csv")))

    files = Files(
        variant,
        logs("standard"),
        logs("random"),
        folder / f"user_features_{variant}.csv",
        folder / f"video_features_basic_{variant}.csv",
    )
    if not files.standard:
        raise DataError(f"file not found: no log_standard_*_{variant}.csv", file=folder)
    for path in (files.users, files.videos):
        if not path.is_file():
            raise DataError("file not found", file=path)
    return files


def check_header(path: Path, required: tuple[str, ...] | list[str]) -> None:
    """Raise DataError naming the first required column the header line of ``path`` lacks."""
    header = header_fields(path)
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(f"the header lacks column(s) {missing}", file=path, column=missing[0], row=1)


def stream_checked(path: Path, types: dict[str, pa.DataType], block_size: int) -> Iterator[tuple[pa.RecordBatch, int]]:
    """Batches of a headed CSV with the line number of each batch's first row; nulls are errors."""
    check_header(path, list(types))
    line = 2
    for batch in stream_csv(path, None, types, block_size=block_size, desc=path.name):
        for name in types:
            column = batch[name]
            if pa.types.is_string(column.type) or name in _NULLABLE:
                continue
            i = first_null(column)
            if i is not None:
                raise DataError("missing value", file=path, column=name, row=line + i)
        yield batch, line
        line += batch.num_rows


_NULLABLE = set(USER_DENSE) | set(VIDEO_DENSE) | {"author_id"}
