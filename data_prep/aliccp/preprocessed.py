"""The preprocessed CSV (``ali_ccp_{train,val,test}.csv``): header and value checks, and its
conversion (ids kept, valid carved by a hash of the line number when there is no val file)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_prep.aliccp.columns import domain_names, output_columns
from data_prep.aliccp.options import (
    _VALID_SEED,
    CSV_FILES,
    CSV_HEADER,
    DENSE_FIELDS,
    MAX_DOMAINS,
    MULTI_FIELDS,
    SCENARIO_FIELD,
    SINGLE_FIELDS,
    Options,
)
from data_prep.common import check_zero_one, first_null, header_fields, stream_csv, writer_for
from data_prep.ids import splitmix64, unit_interval
from torchrec_mdr.data.errors import DataError
from torchrec_mdr.data.spec import DatasetSpec


def _csv_types() -> dict[str, pa.DataType]:
    return {name: pa.float32() if name.startswith("D") else pa.int64() for name in CSV_HEADER}


def _check_csv_header(path: Path) -> int:
    """Check the header line of a preprocessed CSV file; return the number of data columns."""
    header = header_fields(path)
    missing = [c for c in CSV_HEADER if c not in header]
    if missing:
        raise DataError(
            f"the header lacks column(s) {missing} (expected {','.join(CSV_HEADER)})",
            file=path,
            column=missing[0],
            row=1,
        )
    extra = [c for c in header if c not in CSV_HEADER]
    if extra:
        raise DataError(f"unexpected column(s) {extra} in the header", file=path, column=extra[0], row=1)
    return len(header)


def _csv_chunk(batch: pa.RecordBatch, path: Path, first_line: int) -> dict[str, object]:
    """Validate one block of the preprocessed CSV and map it to the output columns."""
    for name in CSV_HEADER:
        i = first_null(batch[name])
        if i is not None:
            raise DataError("missing value", file=path, column=name, row=first_line + i)
    click = batch["click"].to_numpy()
    purchase = batch["purchase"].to_numpy()
    check_zero_one(click, path, "click", first_line, what="label ")
    check_zero_one(purchase, path, "purchase", first_line, what="label ")
    scenario = batch[SCENARIO_FIELD].to_numpy()
    bad = np.flatnonzero((scenario < 1) | (scenario > MAX_DOMAINS))
    if bad.size:
        raise DataError(
            f"301 (the scenario) must be 1, 2 or 3, got {scenario[bad[0]]}",
            file=path,
            column=SCENARIO_FIELD,
            row=first_line + int(bad[0]),
        )
    out: dict[str, object] = {
        "click": click,
        "purchase": purchase,
        "domain": scenario - 1,
        "group_id": batch["101"].to_numpy(),
    }
    for f in SINGLE_FIELDS + MULTI_FIELDS:
        ids = batch[f].to_numpy()
        negative = np.flatnonzero(ids < 0)
        if negative.size:
            raise DataError(
                f"ids must be >= 0, got {ids[negative[0]]}", file=path, column=f, row=first_line + int(negative[0])
            )
        out[f"f{f}"] = ids
    for f in DENSE_FIELDS:
        out[f"D{f}"] = batch[f"D{f}"].to_numpy()
    return out


def convert_csv(options: Options) -> DatasetSpec:
    src = Path(options.src)
    paths = {split: src / name for split, name in CSV_FILES.items()}
    has_valid = paths["valid"].is_file()
    for path in paths.values():
        if path.is_file():
            _check_csv_header(path)
    source = f"Ali-CCP preprocessed CSV in {src}" + ("" if has_valid else f" (valid_fraction={options.valid_fraction})")
    notes = {
        "input": "preprocessed CSV (ids already re-encoded, D* already scaled)",
        "domains": "scenario1..3 = column 301 values 1..3",
        "ids": "kept as in the CSV; 109_14/110_14/127_14/150_14 are single ids in this form",
        "group_id": "column 101",
        "valid": (
            f"{CSV_FILES['valid']}"
            if has_valid
            else f"{options.valid_fraction:.3f} of {CSV_FILES['train']} by a hash of the line number"
        ),
    }
    writer = writer_for(
        options,
        name="aliccp",
        columns=output_columns("id", None),
        domain_names=domain_names(MAX_DOMAINS),
        source=source,
        notes=notes,
    )
    with writer:
        for split, path in paths.items():
            if not path.is_file():
                continue
            line = 2
            for batch in stream_csv(path, None, _csv_types(), block_size=options.block_size_mb << 20, desc=path.name):
                chunk = pa.table(_csv_chunk(batch, path, line))
                if split == "train" and not has_valid and options.valid_fraction > 0:
                    numbers = np.arange(line, line + batch.num_rows, dtype=np.uint64)
                    valid = pa.array(unit_interval(splitmix64(numbers ^ _VALID_SEED)) < options.valid_fraction)
                    writer.write("train", chunk.filter(pc.invert(valid)))
                    writer.write("valid", chunk.filter(valid))
                else:
                    writer.write(split, chunk)
                line += batch.num_rows
        return writer.close()
