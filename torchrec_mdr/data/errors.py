"""The one error type for bad data: it names the file, the column and, where it applies, the row."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """Bad input data. ``str(error)`` reads ``FILE, column 'COL', row N: what is wrong``."""

    def __init__(
        self, message: str, file: str | Path | None = None, column: str | None = None, row: int | None = None
    ) -> None:
        self.file = str(file) if file is not None else None
        self.column = column
        self.row = row
        self.reason = message
        where = [
            part
            for part in (
                self.file,
                f"column '{column}'" if column is not None else None,
                f"row {row}" if row is not None else None,
            )
            if part
        ]
        super().__init__(f"{', '.join(where)}: {message}" if where else message)
