"""``convert(options) -> DatasetSpec``: tell the two inputs apart and run the matching conversion."""

from __future__ import annotations

from pathlib import Path

from data_prep.aliccp.options import CSV_FILES, RAW_FILES, Options
from data_prep.aliccp.preprocessed import convert_csv
from data_prep.aliccp.raw_join import convert_raw
from torchrec_mdr.data.errors import DataError
from torchrec_mdr.data.spec import DatasetSpec


def convert(options: Options) -> DatasetSpec:
    """Convert Ali-CCP (raw or preprocessed CSV, see the package docstring) and return the spec."""
    options.validate()
    src = Path(options.src)
    if not src.is_dir():
        raise DataError("the source folder does not exist", file=src)
    if detect_format(src, options.input_format) == "raw":
        return convert_raw(options)
    return convert_csv(options)


def detect_format(src: Path, requested: str = "auto") -> str:
    """``"raw"`` or ``"csv"``: the requested format after checking that its files exist."""
    has_raw = (src / RAW_FILES["train"][0]).is_file()
    has_csv = (src / CSV_FILES["train"]).is_file()
    if requested == "auto":
        if has_raw and has_csv:
            raise DataError(
                "both the raw files and the preprocessed CSV are here; choose one with --input-format raw|csv", file=src
            )
        if not (has_raw or has_csv):
            archives = sorted(p.name for p in src.glob("*.tar.gz")) + sorted(p.name for p in src.glob("*.zip"))
            hint = f" (extract {', '.join(archives)} first)" if archives else ""
            raise DataError(
                f"no Ali-CCP files found: expected {', '.join(sum(RAW_FILES.values(), ()))} "
                f"or {CSV_FILES['train']} and {CSV_FILES['test']}{hint}",
                file=src,
            )
        requested = "raw" if has_raw else "csv"
    needed = sum(RAW_FILES.values(), ()) if requested == "raw" else (CSV_FILES["train"], CSV_FILES["test"])
    for name in needed:
        if not (src / name).is_file():
            raise DataError(
                f"file not found (the {requested} Ali-CCP input needs {', '.join(needed)})", file=src / name
            )
    return requested
