"""Every kind of bad prepared data gets one DataError naming the file, the column and the row."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import write_toy
from torchrec_mdr.cli import main
from torchrec_mdr.config import ConfigError
from torchrec_mdr.data.errors import DataError
from torchrec_mdr.data.reader import ParquetBatches, ReaderConfig
from torchrec_mdr.data.spec import ColumnSpec, DatasetSpec
from torchrec_mdr.data.validate import validate_dataset

FIRST = "train/part-00000.parquet"


def rewrite(path: Path, column: str, values, row_group_size: int = 128, statistics: bool = True) -> None:
    """Replace one column of the first train file, keeping everything else."""
    file = path / FIRST
    table = pq.read_table(file)
    index = table.schema.get_field_index(column)
    array = values if isinstance(values, pa.Array) else pa.array(values)
    table = table.set_column(index, pa.field(column, array.type), array)
    pq.write_table(table, file, row_group_size=row_group_size, write_statistics=statistics)


def first_column(path: Path, column: str) -> np.ndarray:
    return pq.read_table(path / FIRST)[column].to_numpy().copy()


def open_reader(path: Path) -> None:
    """Open the reader (which checks up front) and read the split (which checks every block)."""
    for _ in ParquetBatches(ReaderConfig(path=path, batch_size=64, shuffle=False), "train"):
        pass


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_toy(tmp_path / "toy")


@pytest.mark.parametrize("statistics", [True, False])
def test_negative_id(data, statistics):
    values = first_column(data, "item_id")
    values[137] = -5
    rewrite(data, "item_id", values, statistics=statistics)
    with pytest.raises(DataError, match=rf"{FIRST}, column 'item_id', row 137: negative id -5"):
        open_reader(data)


def test_negative_id_in_sequence(data):
    table = pq.read_table(data / FIRST)
    lists = table["hist_item_id"].to_pylist()
    row = next(i for i, v in enumerate(lists) if i > 200 and len(v) > 1)
    lists[row][1] = -1
    rewrite(data, "hist_item_id", pa.array(lists, pa.list_(pa.int64())))
    with pytest.raises(DataError, match=rf"column 'hist_item_id', row {row}: negative id -1"):
        open_reader(data)


def test_null_id(data):
    values = first_column(data, "item_id").tolist()
    values[3] = None
    rewrite(data, "item_id", pa.array(values, pa.int64()))
    with pytest.raises(DataError, match=r"column 'item_id', row 3: missing \(null\) value"):
        open_reader(data)


def null_inside_list(path: Path, column: str, position: int) -> int:
    """Set value ``position`` of the list of the first row after 200 long enough; returns that row
    (in the second row group, so the row number must count the rows before the block)."""
    lists = pq.read_table(path / FIRST)[column].to_pylist()
    row = next(i for i, v in enumerate(lists) if i > 200 and len(v) > position)
    lists[row][position] = None
    rewrite(path, column, pa.array(lists, pa.list_(pa.int64())))
    return row


@pytest.mark.parametrize("column, position", [("hist_item_id", 1), ("hist_domain", 0), ("tags", 0)])
@pytest.mark.parametrize("statistics", [True, False])
def test_null_inside_a_list(data, capsys, column, position, statistics):
    """A null id inside a sequence or multi_id list: one DataError (not pyarrow's zero-copy error),
    from the reader and from `mdr data validate`."""
    row = null_inside_list(data, column, position)
    pattern = rf"{FIRST}, column '{column}', row {row}: missing \(null\) id at position {position} of the list"
    with pytest.raises(DataError, match=pattern):
        open_reader(data)
    with pytest.raises(DataError, match=pattern):
        validate_dataset(data)
    assert main(["data", "validate", "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert re.search(pattern, err) and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_null_list(data):
    lists = pq.read_table(data / FIRST)["hist_item_id"].to_pylist()
    lists[210] = None
    rewrite(data, "hist_item_id", pa.array(lists, pa.list_(pa.int64())))
    with pytest.raises(DataError, match=r"column 'hist_item_id', row 210: missing \(null\) value"):
        open_reader(data)
    with pytest.raises(DataError, match=r"column 'hist_item_id', row 210: missing \(null\) value"):
        validate_dataset(data)


@pytest.mark.parametrize(
    "column, arrow_type",
    [
        ("price", pa.float32()),
        ("click", pa.int8()),
        ("domain", pa.int64()),
        ("group_id", pa.int64()),
    ],
)
def test_null_scalar(data, column, arrow_type):
    """Nulls in dense, label, domain and key columns (a null group key used to become garbage)."""
    values = first_column(data, column).tolist()
    values[133] = None
    rewrite(data, column, pa.array(values, arrow_type))
    with pytest.raises(DataError, match=rf"column '{column}', row 133: missing \(null\) value"):
        open_reader(data)
    with pytest.raises(DataError, match=rf"column '{column}', row 133: missing \(null\) value"):
        validate_dataset(data)


def test_float_id_column_is_a_type_error(data):
    values = first_column(data, "item_id").astype(np.float64)
    values[5] = np.nan
    rewrite(data, "item_id", values)
    with pytest.raises(DataError, match=r"column 'item_id': type double does not fit kind 'id'"):
        open_reader(data)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_dense(data, bad):
    values = first_column(data, "price")
    values[300] = bad
    rewrite(data, "price", values)
    with pytest.raises(DataError, match=r"column 'price', row 300: dense value .* is not finite"):
        open_reader(data)
    with pytest.raises(DataError, match=r"column 'price', row 300"):
        validate_dataset(data)


@pytest.mark.parametrize("bad", [2, -1])
def test_label_outside_01(data, bad):
    values = first_column(data, "click")
    values[9] = bad
    rewrite(data, "click", values)
    with pytest.raises(DataError, match=rf"column 'click', row 9: label {bad} is not 0 or 1"):
        open_reader(data)


def test_domain_out_of_range(data):
    values = first_column(data, "domain")
    values[250] = 2
    rewrite(data, "domain", values)
    with pytest.raises(DataError, match=r"column 'domain', row 250: domain id 2 is outside \[0, 2\)"):
        open_reader(data)


def test_missing_column(data):
    table = pq.read_table(data / FIRST).drop_columns(["tags"])
    pq.write_table(table, data / FIRST)
    with pytest.raises(DataError, match=r"column 'tags': column is in the dataset spec but missing"):
        open_reader(data)


def test_mistyped_column(data):
    rewrite(data, "tags", first_column(data, "row_id"))
    with pytest.raises(DataError, match=r"column 'tags': type int64 does not fit kind 'multi_id'"):
        open_reader(data)


def test_truncated_file(data):
    file = data / FIRST
    file.write_bytes(file.read_bytes()[:-100])
    with pytest.raises(DataError, match=rf"{FIRST}: not a readable parquet file"):
        open_reader(data)


def test_not_parquet(data):
    (data / FIRST).write_text("user,item\n1,2\n")
    with pytest.raises(DataError, match=rf"{FIRST}: not a readable parquet file"):
        open_reader(data)


def test_missing_file(data):
    (data / FIRST).unlink()
    with pytest.raises(DataError, match=rf"{FIRST}: file listed in the dataset spec does not exist"):
        open_reader(data)


def test_spec_row_count_mismatch(data):
    spec = json.loads((data / "spec.json").read_text())
    spec["splits"]["train"]["rows"] += 1
    (data / "spec.json").write_text(json.dumps(spec))
    with pytest.raises(DataError, match=r"spec.json: split 'train' has 800 rows in its files but the spec says 801"):
        open_reader(data)


def test_spec_column_not_in_files(data):
    spec = json.loads((data / "spec.json").read_text())
    spec["columns"].append({"name": "extra_feature", "kind": "dense"})
    (data / "spec.json").write_text(json.dumps(spec))
    with pytest.raises(DataError, match=r"column 'extra_feature': column is in the dataset spec but missing"):
        open_reader(data)


def test_file_column_not_in_spec(data):
    table = pq.read_table(data / FIRST)
    pq.write_table(table.append_column("surprise", pa.array(np.zeros(table.num_rows))), data / FIRST)
    with pytest.raises(DataError, match=r"columns that the dataset spec does not describe: \['surprise'\]"):
        open_reader(data)


def test_spec_with_unknown_key_or_kind(data):
    spec = json.loads((data / "spec.json").read_text())
    spec["columns"][4]["kind"] = "categorical"
    (data / "spec.json").write_text(json.dumps(spec))
    with pytest.raises(DataError, match=r"spec.json.*columns\[4\].kind.*'categorical' is not one of"):
        open_reader(data)


def test_spec_missing(tmp_path):
    with pytest.raises(DataError, match=r"no dataset spec"):
        ParquetBatches(ReaderConfig(path=tmp_path))


def test_misaligned_sequence_group(data):
    table = pq.read_table(data / FIRST)
    lists = table["hist_domain"].to_pylist()
    lists[42] = lists[42] + [1]
    rewrite(data, "hist_domain", pa.array(lists, pa.list_(pa.int64())))
    with pytest.raises(DataError, match=r"column 'hist_domain', row 42: sequence group 'hist'"):
        open_reader(data)


# --------------------------------------------------------------------------- session column


@pytest.fixture
def session_data(tmp_path: Path) -> Path:
    return write_toy(tmp_path / "toy", session=True)


def test_two_session_columns_are_refused(session_data):
    spec = json.loads((session_data / "spec.json").read_text())
    group = next(c for c in spec["columns"] if c["name"] == "group_id")
    group["kind"] = "session"
    (session_data / "spec.json").write_text(json.dumps(spec))
    with pytest.raises(
        DataError,
        match=r"spec.json: at most one column of kind 'session' is allowed, "
        r"got \['group_id', 'session_id'\]",
    ):
        open_reader(session_data)
    with pytest.raises(ConfigError, match=r"at most one column of kind 'session'"):
        DatasetSpec(
            name="x",
            columns=[
                ColumnSpec("click", "label"),
                ColumnSpec("domain", "domain"),
                ColumnSpec("s1", "session"),
                ColumnSpec("s2", "session"),
            ],
            domain_names=["a"],
            splits={},
        ).validate()


@pytest.mark.parametrize(
    "values, arrow_type",
    [
        (pa.array(np.arange(800, dtype=np.float64)), "double"),
        (pa.array([[i] for i in range(800)], pa.list_(pa.int64())), "list<element: int64>"),
        (pa.array([str(i) for i in range(800)]), "string"),
    ],
)
def test_mistyped_session_column(session_data, values, arrow_type):
    table = pq.read_table(session_data / FIRST)
    rewrite(session_data, "session_id", values.slice(0, table.num_rows))
    with pytest.raises(
        DataError,
        match=rf"{FIRST}, column 'session_id': type {re.escape(arrow_type)} does not "
        rf"fit kind 'session' of the spec",
    ):
        open_reader(session_data)


def test_session_keys_may_be_any_int64(session_data):
    """Like group keys, session keys are compared for equality only: negative or huge values are valid."""
    values = first_column(session_data, "session_id")
    values[:3] = [-7, np.iinfo(np.int64).max, np.iinfo(np.int64).min]
    rewrite(session_data, "session_id", values)
    validate_dataset(session_data)
    batch = next(iter(ParquetBatches(ReaderConfig(path=session_data, batch_size=8, shuffle=False), "train")))
    assert batch.session_ids[:3].tolist() == [-7, np.iinfo(np.int64).max, np.iinfo(np.int64).min]
