"""Delimited text -> typed columns: the table reader and the number / year parsers, whose errors name
the file, the column and the line."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from torchrec_mdr.data.errors import DataError

_INT = r"^\s*[-+]?\d+\s*$"
_FLOAT = r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"


def read_table(
    data: bytes, file: str, names: list[str], keep: list[str], delimiter: str, skip_rows: int = 0
) -> dict[str, pa.Array]:
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
            raise DataError(
                f"expected {row.expected_columns} fields separated by {delimiter!r}, found "
                f"{row.actual_columns}: {row.text!r}",
                file=file,
                row=row.number if row.number and row.number > 0 else None,
            ) from None
        raise DataError(f"cannot parse: {error}", file=file) from None
    if table.num_rows == 0:
        raise DataError("the file has no data rows", file=file)
    return {k: table[k].combine_chunks() for k in keep}


def _first_bad(ok: pa.Array) -> int | None:
    """Index of the first False (or null) in a boolean array, or None."""
    bad = np.flatnonzero(~ok.fill_null(False).to_numpy(zero_copy_only=False))
    return int(bad[0]) if bad.size else None


def parse_numbers(
    values: pa.Array, kind: Literal["int", "float"], file: str, column: str, first_line: int
) -> np.ndarray:
    """Strings -> int64 or float64, naming the first line that does not parse."""
    bad = _first_bad(pc.match_substring_regex(values, _INT if kind == "int" else _FLOAT))
    if bad is not None:
        what = "a whole number" if kind == "int" else "a number"
        raise DataError(f"{values[bad].as_py()!r} is not {what}", file=file, column=column, row=first_line + bad)
    try:
        return pc.cast(pc.utf8_trim_whitespace(values), pa.int64() if kind == "int" else pa.float64()).to_numpy()
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:  # an integer beyond int64
        raise DataError(f"cannot convert: {error}", file=file, column=column) from None


def parse_strings(values: pa.Array) -> np.ndarray:
    return np.asarray(pc.utf8_trim_whitespace(values).to_numpy(zero_copy_only=False), dtype=object)


def require(ok: np.ndarray, values: np.ndarray, message: str, file: str, column: str, first_line: int) -> None:
    """Raise a DataError at the first row where ``ok`` is False."""
    bad = np.flatnonzero(~ok)
    if bad.size:
        i = int(bad[0])
        value = values[i].item() if isinstance(values[i], np.generic) else values[i]
        raise DataError(f"{value!r} {message}", file=file, column=column, row=first_line + i)


def parse_years(text: pa.Array, pattern: str) -> np.ndarray:
    """The four-digit year captured by ``pattern`` (group ``year``), -1 where there is none."""
    match = pc.extract_regex(pc.utf8_trim_whitespace(text), pattern)
    years = pc.struct_field(match, "year").fill_null("-1")
    return pc.cast(years, pa.int64()).to_numpy()
