"""Pieces every converter shares: common options, streaming CSV with a progress bar, header and value
checks whose errors name the line, temporal splits and CSR bag gathering (id hashing and counting:
:mod:`data_prep.ids`)."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generator

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
from tqdm import tqdm

from torchrec_mdr.config import ConfigError, bounds, doc
from torchrec_mdr.data.errors import DataError

if TYPE_CHECKING:
    from data_prep.writer import DatasetWriter

SPLITS = ("train", "valid", "test")


@dataclass(kw_only=True)
class OutputOptions:
    """Options of the written dataset, shared by every converter (each converter's Options extends it).

    Keyword-only, so that a converter's own required fields (``src``) can follow in a subclass.
    """

    out: Path = field(metadata=doc("output folder for the parquet splits and spec.json"))
    overwrite: bool = field(default=False, metadata=doc("replace OUT if it exists"))
    row_group_size: int = field(default=65_536, metadata=bounds(ge=1, help="rows per parquet row group"))
    rows_per_file: int = field(default=5_000_000, metadata=bounds(ge=1, help="rows per parquet part file"))


def progress(total: int | None, desc: str, unit: str = "B") -> tqdm:
    """A progress bar on stderr (bytes by default, scaled to kB/MB/GB)."""
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=True,
        unit_divisor=1024 if unit == "B" else 1000,
        dynamic_ncols=True,
        mininterval=0.5,
    )


class _CountingReader(io.RawIOBase):
    """A file wrapper that advances a progress bar by the bytes read."""

    def __init__(self, raw: io.BufferedReader, bar: tqdm) -> None:
        self._raw, self._bar = raw, bar

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:  # a writable buffer (pyarrow passes a memoryview)
        n = self._raw.readinto(buffer)
        self._bar.update(n or 0)
        return n or 0


def stream_csv(
    path: str | Path,
    column_names: list[str] | None,
    column_types: dict[str, pa.DataType],
    delimiter: str = ",",
    block_size: int = 8 << 20,
    desc: str | None = None,
) -> Generator[pa.RecordBatch, None, None]:
    """Stream a (possibly huge) delimited text file as record batches, with a byte progress bar.

    ``block_size`` bounds memory: pyarrow reads ahead several blocks when parsing outruns the
    consumer (64 MiB blocks peaked at 3 GB on Taobao's 3.5 GB file; 8 MiB stays near 1 GB).

    ``column_names=None`` reads the header line. Parse errors become a :class:`DataError` that names
    the file (pyarrow's message carries the offending row's text).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", file=path)
    read_options = pacsv.ReadOptions(column_names=column_names, block_size=block_size)
    parse_options = pacsv.ParseOptions(delimiter=delimiter)
    convert_options = pacsv.ConvertOptions(column_types=column_types, include_columns=list(column_types) or None)
    with open(path, "rb") as raw, progress(path.stat().st_size, desc or path.name) as bar:
        try:
            reader = pacsv.open_csv(
                _CountingReader(raw, bar),
                read_options=read_options,
                parse_options=parse_options,
                convert_options=convert_options,
            )
            for batch in reader:
                yield batch
        except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
            raise DataError(f"cannot parse: {error}", file=path) from None


def header_fields(path: Path) -> list[str]:
    """The field names of a CSV file's header line (byte-order mark, blanks and double quotes removed)."""
    with open(path, "rb") as f:
        line = f.readline().decode("utf-8", errors="replace").lstrip("\ufeff").strip()
    return [name.strip().strip('"') for name in line.split(",")]


def first_null(column: pa.Array | pa.ChunkedArray) -> int | None:
    """Index of the first null of ``column``, or None when it has none."""
    if not column.null_count:
        return None
    return int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])


def check_zero_one(values: np.ndarray, file: str | Path, column: str, first_line: int, what: str = "") -> None:
    """Raise a DataError naming the line of the first value that is neither 0 nor 1.

    ``first_line`` is the file line of ``values[0]``; ``what`` starts the message (``"label "``).
    """
    bad = np.flatnonzero((values != 0) & (values != 1))
    if bad.size:
        raise DataError(
            f"{what}must be 0 or 1, got {values[bad[0]]}", file=file, column=column, row=first_line + int(bad[0])
        )


def temporal_split_points(times: np.ndarray, fractions: tuple[float, ...]) -> tuple[float, float]:
    """Timestamps (t1, t2) such that rows with time < t1 are train, < t2 valid, the rest test.

    ``fractions`` are the target shares of (train, valid, test) rows; cuts fall on timestamp
    boundaries so that no timestamp is split across two splits.
    """
    if abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise ConfigError(f"split fractions {fractions} must be >= 0 and sum to 1")
    ordered = np.sort(times)
    n = len(ordered)
    t1 = ordered[min(int(n * fractions[0]), n - 1)]
    t2 = ordered[min(int(n * (fractions[0] + fractions[1])), n - 1)]
    return t1.item(), max(t1, t2).item()


def writer_for(options: OutputOptions, **kwargs: Any) -> "DatasetWriter":
    """A :class:`DatasetWriter` configured from the shared output options."""
    from data_prep.writer import DatasetWriter

    return DatasetWriter(
        options.out,
        overwrite=options.overwrite,
        row_group_size=options.row_group_size,
        rows_per_file=options.rows_per_file,
        **kwargs,
    )


def take_bags(offsets: np.ndarray, values: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CSR (offsets, values) of the bags ``index`` of a CSR table."""
    lengths = offsets[index + 1] - offsets[index]
    out = np.zeros(index.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=out[1:])
    gather = np.repeat(offsets[index] - out[:-1], lengths) + np.arange(out[-1], dtype=np.int64)
    return out, values[gather]
