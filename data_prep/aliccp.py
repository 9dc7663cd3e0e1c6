"""Ali-CCP (Tianchi dataset 408) -> parquet + spec, from the raw files or the widely shared CSV.

Two inputs are accepted and told apart by the files in ``--src`` (``--input-format`` forces one):

**Raw** (``sample_skeleton_{train,test}.csv`` + ``common_features_{train,test}.csv``, as extracted
from the Tianchi archives; no header, a header line is skipped if present). A skeleton line is
``sample_id,click,buy,common_feature_index,feature_num,feature_list``, a common-features line is
``common_feature_index,feature_num,feature_list``; a feature list holds entries joined by ``\\x01``,
each entry ``field_id\\x02feature_id\\x03value``. The common features are the user side of a sample
and are joined on ``common_feature_index``. Choices made where the format leaves room:

* Ids are **re-encoded per field** after a counting pass over the raw *train* files (the Tianchi
  feature ids are global and sparse): ``0`` = the field is absent from the sample, ``1`` = an id
  not in the vocabulary (seen only in the test files, or fewer than ``--min-count`` times), ``2..``
  = the vocabulary in ascending raw-id order. Cardinality = vocabulary + 2, ``oov="reject"``.
  Counts are per sample for skeleton fields and per common-features line for user fields.
* Single-valued fields (user 101, 121, 122, 124-129; item/context 205, 206, 207, 210, 216; cross
  508, 509, 702, 853) keep their *first* entry when a line repeats the field (counted in the notes).
* Multi-valued fields 109_14, 110_14, 127_14, 150_14 become ``multi_id`` bags holding the
  ``--max-multi-length`` entries with the largest values (the values are behaviour counts), largest
  first, ties in file order; an absent field is an empty bag. The default (20) keeps the output
  moderate: the user's bags are repeated on each of its samples (42M in the raw train set).
* Dense ``D<field>`` for 109_14, 110_14, 127_14, 150_14, 508, 509, 702, 853 = the sum of *all* the
  field's entry values on the line (before the length cap); 0 when the field is absent. The values
  are used as the file gives them, unscaled.
* Field 301 is the scenario. Its (at most three) raw feature ids are taken from
  ``--scenario-ids`` (in domain order) or, by default, discovered in the files and sorted; domain
  ``k`` is named ``scenario{k+1}``. A fourth value (or one outside ``--scenario-ids``) is a
  :class:`DataError` naming file and row; so is a sample without field 301.
* ``group_id`` is the *raw* feature id of field 101 (the user), 0 when absent, so that test users
  unseen in train still form their own GAUC groups.
* Splits: raw train -> ``train`` + ``valid`` (a deterministic hash of ``sample_id`` puts
  ``--valid-fraction`` of the samples in ``valid``), raw test -> ``test``.
* A skeleton line whose ``common_feature_index`` has no common-features line keeps absent user
  fields (counted in the notes); a repeated common-features line: the first one is used.
* Bounded memory: both files of a split are streamed in blocks, parsed with vectorised pyarrow
  string kernels, reduced to fixed columns and hash-partitioned to disk by
  ``common_feature_index`` (one :class:`DiskPartitioner` holding both kinds of line), then joined
  partition by partition.

**Preprocessed CSV** (``ali_ccp_train.csv``, ``ali_ccp_val.csv`` (optional), ``ali_ccp_test.csv``
with header ``click,purchase,101,...,301,109_14,...,D853``): ids are already re-encoded and kept
as they are (cardinality = largest id + 1, ``oov="reject"``), 109_14 etc. are single ids here,
``D*`` are copied, 301 in {1, 2, 3} -> domain 0..2 (``scenario1..3``), ``group_id`` = column 101.
Without ``ali_ccp_val.csv`` the valid split is carved from train by a hash of the line number.

Both inputs give the same column names: labels ``click`` and ``purchase``, ``domain``,
``group_id``, id columns ``f101`` ... ``f853``, ``f109_14`` ... ``f150_14`` (multi_id from the raw
files, id from the CSV) and dense ``D109_14`` ... ``D853``. Ali-CCP has no behaviour sequence, so
the spec has no sequence columns. Row numbers in errors are 1-based line numbers of the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_prep.common import OutputOptions, progress, stream_csv, take_bags, writer_for
from data_prep.ids import IdCounter, splitmix64, string_hash, unit_interval
from data_prep.partition import DiskPartitioner
from data_prep.writer import list_array
from torchrec_mdr.config import ConfigError, bounds, doc
from torchrec_mdr.data.errors import DataError
from torchrec_mdr.data.spec import ColumnSpec, DatasetSpec

USER_FIELDS = ("101", "121", "122", "124", "125", "126", "127", "128", "129")
MULTI_FIELDS = ("109_14", "110_14", "127_14", "150_14")
ITEM_FIELDS = ("205", "206", "207", "210", "216")
CROSS_FIELDS = ("508", "509", "702", "853")
SCENARIO_FIELD = "301"
SINGLE_FIELDS = USER_FIELDS + ITEM_FIELDS + CROSS_FIELDS
DENSE_FIELDS = MULTI_FIELDS + CROSS_FIELDS
COMMON_FIELDS = USER_FIELDS + MULTI_FIELDS  # parsed from common_features_*.csv
SKELETON_FIELDS = ITEM_FIELDS + CROSS_FIELDS + (SCENARIO_FIELD,)  # parsed from sample_skeleton_*.csv
MAX_DOMAINS = 3

FIELD_MEANING = {
    "101": "user id", "121": "user profile category", "122": "user profile group", "124": "gender",
    "125": "age", "126": "consumption level I", "127": "consumption level II", "128": "occupation",
    "129": "geography level", "109_14": "user's categories (by behaviour count)",
    "110_14": "user's shops (by behaviour count)", "127_14": "user's brands (by behaviour count)",
    "150_14": "user's intention nodes (by behaviour count)", "205": "item id", "206": "item category",
    "207": "item shop", "210": "item intention node", "216": "item brand",
    "508": "109_14 x 206 cross", "509": "110_14 x 207 cross", "702": "127_14 x 216 cross",
    "853": "150_14 x 210 cross",
}

RAW_FILES = {"train": ("sample_skeleton_train.csv", "common_features_train.csv"),
             "test": ("sample_skeleton_test.csv", "common_features_test.csv")}
CSV_FILES = {"train": "ali_ccp_train.csv", "valid": "ali_ccp_val.csv", "test": "ali_ccp_test.csv"}
CSV_HEADER = (["click", "purchase"] + list(USER_FIELDS) + list(ITEM_FIELDS) + list(CROSS_FIELDS) +
              [SCENARIO_FIELD] + list(MULTI_FIELDS) + [f"D{f}" for f in DENSE_FIELDS])
SKELETON_COLUMNS = ["sample_id", "click", "buy", "common_feature_index", "feature_num", "feature_list"]
COMMON_COLUMNS = ["common_feature_index", "feature_num", "feature_list"]

ABSENT, UNKNOWN, FIRST_ID = 0, 1, 2  # reserved ids of the raw path
JOIN_CHUNK_ROWS = 1 << 16  # joined samples per written chunk
_VALID_SEED = np.uint64(0x5EED0A11CC9)


@dataclass(kw_only=True)
class Options(OutputOptions):
    """Options of ``mdr data aliccp``."""

    src: Path = field(metadata=doc(
        "folder with the raw files (sample_skeleton_{train,test}.csv, common_features_{train,test}.csv) "
        "or the preprocessed CSV (ali_ccp_train.csv, ali_ccp_test.csv, optional ali_ccp_val.csv)"))
    input_format: Literal["auto", "raw", "csv"] = field(default="auto", metadata=doc(
        "which input to read; auto picks the one whose files are in SRC"))
    valid_fraction: float = field(default=0.1, metadata=bounds(
        ge=0.0, lt=1.0, help="share of the train samples moved to the valid split (deterministic hash)"))
    max_multi_length: int = field(default=20, metadata=bounds(
        ge=1, help="raw input: keep at most this many ids (largest values first) of 109_14/110_14/127_14/150_14"))
    min_count: int = field(default=1, metadata=bounds(
        ge=1, help="raw input: ids seen fewer times in the train files map to the unknown id 1"))
    scenario_ids: list[int] = field(default_factory=list, metadata=doc(
        "raw input: the raw feature ids of field 301 in domain order (default: discovered, sorted)"))
    num_partitions: int = field(default=64, metadata=bounds(
        ge=1, help="raw input: temporary hash partitions (memory ~ rows / partitions)"))
    block_size_mb: int = field(default=64, metadata=bounds(
        ge=1, le=1024, help="CSV read block in MiB (must hold the longest line)"))
    tmp_dir: Path | None = field(default=None, metadata=doc(
        "folder for the temporary partitions (default: the parent folder of OUT)"))

    def validate(self) -> None:
        if len(self.scenario_ids) > MAX_DOMAINS or len(set(self.scenario_ids)) != len(self.scenario_ids):
            raise ConfigError(f"scenario_ids must hold at most {MAX_DOMAINS} distinct ids, got {self.scenario_ids}")


# --------------------------------------------------------------------------- entry point


def convert(options: Options) -> DatasetSpec:
    """Convert Ali-CCP (raw or preprocessed CSV, see the module docstring) and return the spec."""
    options.validate()
    src = Path(options.src)
    if not src.is_dir():
        raise DataError("the source folder does not exist", file=src)
    if detect_format(src, options.input_format) == "raw":
        return _convert_raw(options)
    return _convert_csv(options)


def detect_format(src: Path, requested: str = "auto") -> str:
    """``"raw"`` or ``"csv"``: the requested format after checking that its files exist."""
    has_raw = (src / RAW_FILES["train"][0]).is_file()
    has_csv = (src / CSV_FILES["train"]).is_file()
    if requested == "auto":
        if has_raw and has_csv:
            raise DataError("both the raw files and the preprocessed CSV are here; choose one with "
                            "--input-format raw|csv", file=src)
        if not (has_raw or has_csv):
            archives = sorted(p.name for p in src.glob("*.tar.gz")) + sorted(p.name for p in src.glob("*.zip"))
            hint = f" (extract {', '.join(archives)} first)" if archives else ""
            raise DataError(f"no Ali-CCP files found: expected {', '.join(sum(RAW_FILES.values(), ()))} "
                            f"or {CSV_FILES['train']} and {CSV_FILES['test']}{hint}", file=src)
        requested = "raw" if has_raw else "csv"
    needed = sum(RAW_FILES.values(), ()) if requested == "raw" else (CSV_FILES["train"], CSV_FILES["test"])
    for name in needed:
        if not (src / name).is_file():
            raise DataError(f"file not found (the {requested} Ali-CCP input needs {', '.join(needed)})",
                            file=src / name)
    return requested


# --------------------------------------------------------------------------- shared helpers


def _check_binary(values: np.ndarray, path: Path, column: str, first_line: int) -> None:
    bad = np.flatnonzero((values != 0) & (values != 1))
    if bad.size:
        raise DataError(f"label must be 0 or 1, got {values[bad[0]]}", file=path, column=column,
                        row=first_line + int(bad[0]))


def _header_lines(path: Path, first_column: str) -> int:
    """1 if the file starts with a header line (its first field is ``first_column``), else 0."""
    with open(path, "rb") as f:
        head = f.read(len(first_column) + 1)
    return int(head.rstrip(b"\r\n").split(b",")[0] == first_column.encode())


# --------------------------------------------------------------------------- raw: parsing


@dataclass
class Entries:
    """The parsed feature lists of one block: one element per ``field\\x02id\\x03value`` entry."""

    row: np.ndarray  # int64 row within the block, ascending
    field: np.ndarray  # int64 index into the requested fields, -1 for any other field
    fid: np.ndarray  # int64 raw feature id
    value: np.ndarray  # float64 value
    per_row: np.ndarray  # int64 entries per row (all fields)


def _malformed(path: Path, line: int, entry: str, what: str) -> DataError:
    return DataError(f"malformed feature entry {entry!r}: {what} (expected field_id\\x02feature_id\\x03value "
                     "entries joined by \\x01)", file=path, column="feature_list", row=line)


def parse_feature_lists(lists: pa.Array, fields: Sequence[str], path: Path, first_line: int) -> Entries:
    """Split a block of feature lists into entries with vectorised pyarrow string kernels.

    ``first_line`` is the file line of the block's first row (for error messages). An empty list
    has no entries; an empty entry inside a non-empty list, a missing separator, a non-integer
    feature id or a non-numeric value raises :class:`DataError` naming the line.
    """
    entries = pc.split_pattern(lists, "\x01")
    flat = pc.list_flatten(entries)
    parent = pc.list_parent_indices(entries).to_numpy().astype(np.int64)
    empty = pc.equal(flat, "").to_numpy(zero_copy_only=False)
    if empty.any():
        list_empty = pc.equal(lists, "").to_numpy(zero_copy_only=False)
        bad = np.flatnonzero(empty & ~list_empty[parent])
        if bad.size:
            raise _malformed(path, first_line + int(parent[bad[0]]), "", "empty entry")
        keep = pa.array(~empty)
        flat, parent = flat.filter(keep), parent[~empty]
    per_row = np.bincount(parent, minlength=len(lists)).astype(np.int64)

    def split_two(values: pa.Array, separator: str, what: str) -> tuple[pa.Array, pa.Array]:
        parts = pc.split_pattern(values, separator, max_splits=1)
        bad = np.flatnonzero(pc.list_value_length(parts).to_numpy(zero_copy_only=False) != 2)
        if bad.size:
            i = int(bad[0])
            raise _malformed(path, first_line + int(parent[i]), flat[i].as_py(), what)
        return pc.list_element(parts, 0), pc.list_element(parts, 1)

    field_text, rest = split_two(flat, "\x02", "no \\x02 after the field id")
    fid_text, value_text = split_two(rest, "\x03", "no \\x03 between feature id and value")
    digits = pc.utf8_is_digit(fid_text).to_numpy(zero_copy_only=False)
    if not digits.all():
        i = int(np.flatnonzero(~digits)[0])
        raise _malformed(path, first_line + int(parent[i]), flat[i].as_py(), "the feature id is not an integer")
    try:
        fid = pc.cast(fid_text, pa.int64()).to_numpy()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise DataError("a feature id does not fit in 64 bits", file=path, column="feature_list") from None
    try:
        value = pc.cast(value_text, pa.float64()).to_numpy()
    except pa.ArrowInvalid:
        number = r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^[-+]?(nan|inf|infinity)$"
        ok = pc.match_substring_regex(value_text, number, ignore_case=True).to_numpy(zero_copy_only=False)
        i = int(np.flatnonzero(~ok)[0]) if (~ok).any() else 0
        raise _malformed(path, first_line + int(parent[i]), flat[i].as_py(), "the value is not a number") from None
    field_index = pc.index_in(field_text, value_set=pa.array(list(fields), pa.string()))
    field_index = field_index.fill_null(-1).to_numpy().astype(np.int64)
    return Entries(row=parent, field=field_index, fid=fid, value=value, per_row=per_row)


def first_per_row(rows: np.ndarray, values: np.ndarray, n: int, fill: int = -1) -> tuple[np.ndarray, int]:
    """``[n]`` first value of each row (``fill`` where none) and the number of repeated entries dropped.

    ``rows`` must be ascending (entries in file order).
    """
    out = np.full(n, fill, dtype=np.int64)
    if rows.size == 0:
        return out, 0
    first = np.ones(rows.size, dtype=bool)
    first[1:] = rows[1:] != rows[:-1]
    out[rows[first]] = values[first]
    return out, int(rows.size - first.sum())


def top_by_value(rows: np.ndarray, ids: np.ndarray, values: np.ndarray, n: int,
                 cap: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR bags of at most ``cap`` ids per row, largest value first (ties in file order)."""
    order = np.lexsort((-values, rows))
    rows, ids = rows[order], ids[order]
    counts = np.bincount(rows, minlength=n).astype(np.int64)
    starts = np.cumsum(counts) - counts
    rank = np.arange(rows.size, dtype=np.int64) - np.repeat(starts, counts)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.minimum(counts, cap), out=offsets[1:])
    return offsets, ids[rank < cap]


def encode(raw: np.ndarray, vocabulary: np.ndarray) -> np.ndarray:
    """Raw ids -> ``ABSENT`` (raw < 0), ``UNKNOWN`` (not in the vocabulary) or ``FIRST_ID + rank``."""
    if vocabulary.size == 0:
        return np.where(raw < 0, ABSENT, UNKNOWN).astype(np.int64)
    position = np.minimum(np.searchsorted(vocabulary, raw), vocabulary.size - 1)
    found = vocabulary[position] == raw
    return np.where(raw < 0, ABSENT, np.where(found, position + FIRST_ID, UNKNOWN)).astype(np.int64)


# --------------------------------------------------------------------------- raw: pass 1


@dataclass
class _RawState:
    """What pass 1 learns: vocabularies, scenario values, and counts for the notes."""

    counters: dict[str, IdCounter]
    scenarios: list[int]
    fixed_scenarios: bool
    duplicates: dict[str, int]
    other_field_entries: int = 0
    feature_num_mismatch: int = 0
    purchase_without_click: int = 0
    skeleton_rows: int = 0
    common_rows: int = 0


def _blocks(path: Path, columns: list[str], types: dict[str, pa.DataType],
            block_size: int) -> Iterator[tuple[pa.RecordBatch, int]]:
    """Stream a raw file as record batches with the file line number of each batch's first row."""
    header = _header_lines(path, columns[0])
    names = None if header else columns
    line = header + 1
    for batch in stream_csv(path, names, types, block_size=block_size, desc=path.name):
        yield batch, line
        line += batch.num_rows


def _empty_lists(n: int) -> pa.ListArray:
    return list_array(np.zeros(n + 1, dtype=np.int64), np.zeros(0, dtype=np.int64))


def _partition_schema() -> dict[str, pa.DataType]:
    types: dict[str, pa.DataType] = {"_part": pa.int64(), "key": pa.string(), "is_common": pa.bool_(),
                                     "is_valid": pa.bool_(), "click": pa.int8(), "purchase": pa.int8(),
                                     "scenario": pa.int64()}
    types.update({f"f{f}": pa.int64() for f in SINGLE_FIELDS})
    types.update({f"f{f}": pa.list_(pa.int64()) for f in MULTI_FIELDS})
    types.update({f"D{f}": pa.float32() for f in DENSE_FIELDS})
    return types


def _partition_table(columns: dict[str, object], n: int) -> pa.Table:
    """Fill the columns a line kind does not have (ids -1, empty bags, dense 0) and build the table."""
    arrays = []
    for name, tp in _partition_schema().items():
        value = columns.get(name)
        if value is None:
            if pa.types.is_list(tp):
                value = _empty_lists(n)
            elif tp == pa.int64():
                value = np.full(n, -1, dtype=np.int64)
            elif tp == pa.bool_():
                value = np.zeros(n, dtype=bool)
            else:  # labels (int8) and dense (float32)
                value = np.zeros(n, dtype=np.float32 if tp == pa.float32() else np.int8)
        array = value if isinstance(value, (pa.Array, pa.ChunkedArray)) else pa.array(value)
        arrays.append(array.cast(tp))
    return pa.Table.from_arrays(arrays, names=list(_partition_schema()))


def _count_vocab(state: _RawState, columns: dict[str, object], fields: Sequence[str]) -> None:
    for f in fields:
        value = columns[f"f{f}"]
        ids = pc.list_flatten(value).to_numpy() if isinstance(value, pa.Array) else value
        state.counters[f].add(ids)


def _track_scenarios(state: _RawState, scenario: np.ndarray, path: Path, first_line: int) -> None:
    """Add the block's field-301 values to the known set; raise on a value outside the allowed set."""
    uniq, first = np.unique(scenario, return_index=True)
    new = [(int(i), int(v)) for v, i in zip(uniq, first) if int(v) not in state.scenarios]
    for index, value in sorted(new):
        if state.fixed_scenarios or len(state.scenarios) >= MAX_DOMAINS:
            allowed = ", ".join(str(s) for s in state.scenarios)
            source = "--scenario-ids" if state.fixed_scenarios else "the first three values seen"
            raise DataError(f"field 301 (the scenario) has a value {value} outside the {MAX_DOMAINS} known "
                            f"scenario ids {{{allowed}}} ({source})", file=path, column="feature_list",
                            row=first_line + index)
        state.scenarios.append(value)


def _skeleton_pass(path: Path, options: Options, state: _RawState, partitioner: DiskPartitioner,
                   count: bool) -> None:
    types = {"sample_id": pa.string(), "click": pa.int64(), "buy": pa.int64(),
             "common_feature_index": pa.string(), "feature_num": pa.int64(), "feature_list": pa.string()}
    for batch, line in _blocks(path, SKELETON_COLUMNS, types, options.block_size_mb << 20):
        n = batch.num_rows
        click = batch["click"].to_numpy(zero_copy_only=False)
        buy = batch["buy"].to_numpy(zero_copy_only=False)
        _check_binary(click, path, "click", line)
        _check_binary(buy, path, "buy", line)
        entries = parse_feature_lists(batch["feature_list"], SKELETON_FIELDS, path, line)
        state.other_field_entries += int((entries.field < 0).sum())
        state.feature_num_mismatch += int((entries.per_row != batch["feature_num"].to_numpy()).sum())
        state.purchase_without_click += int(((buy == 1) & (click == 0)).sum())
        columns: dict[str, object] = {}
        for k, f in enumerate(SKELETON_FIELDS):
            mask = entries.field == k
            rows = entries.row[mask]
            ids, dups = first_per_row(rows, entries.fid[mask], n)
            state.duplicates[f] = state.duplicates.get(f, 0) + dups
            if f == SCENARIO_FIELD:
                missing = np.flatnonzero(ids < 0)
                if missing.size:
                    raise DataError("the sample has no field 301 (the scenario)", file=path,
                                    column="feature_list", row=line + int(missing[0]))
                _track_scenarios(state, ids, path, line)
                columns["scenario"] = ids
            else:
                columns[f"f{f}"] = ids
            if f in DENSE_FIELDS:
                columns[f"D{f}"] = np.bincount(rows, weights=entries.value[mask], minlength=n).astype(np.float32)
        if count:
            _count_vocab(state, columns, ITEM_FIELDS + CROSS_FIELDS)
        key = batch["common_feature_index"]
        columns.update(_part=string_hash(key).view(np.int64), key=key, is_common=np.zeros(n, dtype=bool),
                       click=click, purchase=buy)
        if count and options.valid_fraction > 0:
            columns["is_valid"] = unit_interval(string_hash(batch["sample_id"], _VALID_SEED)) < options.valid_fraction
        state.skeleton_rows += n
        partitioner.add(_partition_table(columns, n))


def _common_pass(path: Path, options: Options, state: _RawState, partitioner: DiskPartitioner,
                 count: bool) -> None:
    types = {"common_feature_index": pa.string(), "feature_num": pa.int64(), "feature_list": pa.string()}
    for batch, line in _blocks(path, COMMON_COLUMNS, types, options.block_size_mb << 20):
        n = batch.num_rows
        entries = parse_feature_lists(batch["feature_list"], COMMON_FIELDS, path, line)
        state.other_field_entries += int((entries.field < 0).sum())
        state.feature_num_mismatch += int((entries.per_row != batch["feature_num"].to_numpy()).sum())
        columns: dict[str, object] = {}
        for k, f in enumerate(COMMON_FIELDS):
            mask = entries.field == k
            rows = entries.row[mask]
            if f in MULTI_FIELDS:
                offsets, ids = top_by_value(rows, entries.fid[mask], entries.value[mask], n,
                                            options.max_multi_length)
                columns[f"f{f}"] = list_array(offsets, ids)
            else:
                columns[f"f{f}"], dups = first_per_row(rows, entries.fid[mask], n)
                state.duplicates[f] = state.duplicates.get(f, 0) + dups
            if f in DENSE_FIELDS:
                columns[f"D{f}"] = np.bincount(rows, weights=entries.value[mask], minlength=n).astype(np.float32)
        if count:
            _count_vocab(state, columns, COMMON_FIELDS)
        key = batch["common_feature_index"]
        columns.update(_part=string_hash(key).view(np.int64), key=key, is_common=np.ones(n, dtype=bool))
        state.common_rows += n
        partitioner.add(_partition_table(columns, n))


# --------------------------------------------------------------------------- raw: pass 2


def _bags_with_absent(lists: pa.ListArray | pa.ChunkedArray, vocabulary: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Encoded CSR (offsets, values) of the bags, plus one trailing empty bag for "no common features"."""
    lists = lists.combine_chunks() if isinstance(lists, pa.ChunkedArray) else lists
    offsets = lists.offsets.to_numpy().astype(np.int64)
    values = encode(lists.values.to_numpy()[offsets[0]:offsets[-1]], vocabulary)
    offsets = offsets - offsets[0]
    return np.append(offsets, offsets[-1]), values


def _join_partition(table: pa.Table, vocab: dict[str, np.ndarray], scenarios: np.ndarray,
                    counts: dict[str, int]) -> Iterator[tuple[dict[str, object], np.ndarray]]:
    """Join the skeleton lines of one partition to their common features; encode every column.

    ``scenarios`` are the raw field-301 ids in domain order. The common-features side is encoded
    once per line (not once per joined sample), with one trailing "absent" line that skeleton lines
    without common features point to. Yields the output columns and the ``is_valid`` mask per chunk
    of ``JOIN_CHUNK_ROWS`` skeleton lines (bounding the memory of the expanded bags); adds the lines
    without common features and the repeated common-features lines to ``counts``.
    """
    is_common = table["is_common"].to_numpy(zero_copy_only=False)
    common = table.filter(pa.array(is_common))
    skeleton = table.filter(pa.array(~is_common))
    m = common.num_rows
    match = pc.index_in(skeleton["key"], value_set=common["key"])
    counts["missing"] += match.null_count
    counts["repeated"] += m - len(pc.unique(common["key"]))
    index = match.fill_null(m).to_numpy().astype(np.int64)  # m = the appended "absent" line
    by_value = np.argsort(scenarios)  # scenarios are in domain order; searchsorted needs them sorted
    group = np.append(np.maximum(common["f101"].to_numpy(), 0), 0)
    user = {f: np.append(encode(common[f"f{f}"].to_numpy(), vocab[f]), ABSENT) for f in USER_FIELDS}
    bags = {f: _bags_with_absent(common[f"f{f}"], vocab[f]) for f in MULTI_FIELDS}
    user_dense = {f: np.append(common[f"D{f}"].to_numpy(), np.float32(0)).astype(np.float32) for f in MULTI_FIELDS}
    for lo in range(0, skeleton.num_rows, JOIN_CHUNK_ROWS):
        part = skeleton.slice(lo, JOIN_CHUNK_ROWS)
        rows = index[lo:lo + JOIN_CHUNK_ROWS]
        out: dict[str, object] = {
            "click": part["click"].to_numpy(),
            "purchase": part["purchase"].to_numpy(),
            "domain": by_value[np.searchsorted(scenarios[by_value], part["scenario"].to_numpy())],
            "group_id": group[rows],
        }
        for f in SINGLE_FIELDS:
            out[f"f{f}"] = user[f][rows] if f in USER_FIELDS else encode(part[f"f{f}"].to_numpy(), vocab[f])
        for f in MULTI_FIELDS:
            out[f"f{f}"] = list_array(*take_bags(*bags[f], rows))
        for f in DENSE_FIELDS:
            out[f"D{f}"] = user_dense[f][rows] if f in MULTI_FIELDS else part[f"D{f}"].to_numpy()
        yield out, part["is_valid"].to_numpy(zero_copy_only=False)


def _columns(multi_kind: str, cardinalities: dict[str, int] | None) -> list[ColumnSpec]:
    """The output columns (the same names for both inputs)."""
    oov = "reject"
    card = cardinalities or {}
    columns = [
        ColumnSpec("click", "label", description="clicked"),
        ColumnSpec("purchase", "label", description="bought (the source's 'buy' / 'purchase')"),
        ColumnSpec("domain", "domain", description="scenario from field 301"),
        ColumnSpec("group_id", "group", description="user (field 101) for GAUC"),
    ]
    for f in SINGLE_FIELDS:
        columns.append(ColumnSpec(f"f{f}", "id", cardinality=card.get(f), oov=oov,
                                  description=f"field {f}: {FIELD_MEANING[f]}"))
    for f in MULTI_FIELDS:
        columns.append(ColumnSpec(f"f{f}", multi_kind, cardinality=card.get(f), oov=oov,
                                  description=f"field {f}: {FIELD_MEANING[f]}"))
    for f in DENSE_FIELDS:
        columns.append(ColumnSpec(f"D{f}", "dense", description=f"field {f}: value (sum of the entries' values)"))
    return columns


def _domain_names(count: int) -> list[str]:
    return [f"scenario{k + 1}" for k in range(count)]


def _convert_raw(options: Options) -> DatasetSpec:
    src = Path(options.src)
    tmp_dir = Path(options.tmp_dir) if options.tmp_dir is not None else Path(options.out).resolve().parent
    tmp_dir.mkdir(parents=True, exist_ok=True)
    state = _RawState(counters={f: IdCounter() for f in SINGLE_FIELDS + MULTI_FIELDS},
                      scenarios=list(options.scenario_ids), fixed_scenarios=bool(options.scenario_ids),
                      duplicates={})
    partitioners = {split: DiskPartitioner("_part", options.num_partitions, tmp_dir=tmp_dir)
                    for split in RAW_FILES}
    try:
        for split, (skeleton_name, common_name) in RAW_FILES.items():
            count = split == "train"
            _common_pass(src / common_name, options, state, partitioners[split], count)
            _skeleton_pass(src / skeleton_name, options, state, partitioners[split], count)
        if not state.scenarios:
            raise DataError("no sample found (the skeleton files are empty)", file=src / RAW_FILES["train"][0])
        scenarios = np.asarray(state.scenarios if state.fixed_scenarios else sorted(state.scenarios), np.int64)
        vocab = {f: c.vocabulary(options.min_count) for f, c in state.counters.items()}
        cardinalities = {f: int(v.size) + FIRST_ID for f, v in vocab.items()}
        counts = {"missing": 0, "repeated": 0}
        notes = _raw_notes(options, state, scenarios, cardinalities)
        source = (f"Ali-CCP raw files in {src} (valid_fraction={options.valid_fraction}, "
                  f"max_multi_length={options.max_multi_length}, min_count={options.min_count}, "
                  f"scenario_ids={scenarios.tolist()})")
        writer = writer_for(options, name="aliccp", columns=_columns("multi_id", cardinalities),
                            domain_names=_domain_names(len(scenarios)), source=source, notes=notes)
        with writer:
            for split, partitioner in partitioners.items():
                with progress(options.num_partitions, f"join {split}", unit="part") as bar:
                    for table in partitioner.partitions():
                        for out, is_valid in _join_partition(table, vocab, scenarios, counts):
                            if split == "train":
                                valid = pa.array(is_valid)
                                chunk = pa.table(out)
                                writer.write("train", chunk.filter(pc.invert(valid)))
                                writer.write("valid", chunk.filter(valid))
                            else:
                                writer.write("test", out)
                        bar.update(1)
            writer.notes["skeleton lines without common features"] = str(counts["missing"])
            writer.notes["repeated common-features lines (first used)"] = str(counts["repeated"])
            spec = writer.close()
    finally:
        for partitioner in partitioners.values():
            partitioner.cleanup()
    return spec


def _raw_notes(options: Options, state: _RawState, scenarios: np.ndarray,
               cardinalities: dict[str, int]) -> dict[str, str]:
    names = _domain_names(len(scenarios))
    return {
        "input": "raw Tianchi files (sample_skeleton + common_features)",
        "domains": ", ".join(f"{n} = field 301 feature id {s}" for n, s in zip(names, scenarios.tolist())),
        "ids": (f"per-field vocabulary of the raw train files (min_count={options.min_count}): "
                "0 = field absent, 1 = unknown / rare id, 2.. = vocabulary in raw-id order"),
        "multi_id": (f"109_14/110_14/127_14/150_14: the {options.max_multi_length} entries with the largest "
                     "values, largest first"),
        "dense": "D<field> = sum of the field's entry values on the line (all entries), 0 when absent",
        "group_id": "raw feature id of field 101 (0 when absent)",
        "valid": f"{options.valid_fraction:.3f} of the raw train samples by a hash of sample_id",
        "vocabulary sizes": ", ".join(f"{f}:{c - FIRST_ID}" for f, c in cardinalities.items()),
        "repeated single-valued entries (first kept)": ", ".join(
            f"{f}:{c}" for f, c in state.duplicates.items() if c) or "none",
        "entries of other fields (ignored)": str(state.other_field_entries),
        "lines whose feature_num differs from their entry count": str(state.feature_num_mismatch),
        "samples with buy=1 and click=0 (kept)": str(state.purchase_without_click),
        "raw lines read": f"skeleton {state.skeleton_rows}, common features {state.common_rows}",
    }


# --------------------------------------------------------------------------- preprocessed CSV


def _csv_types() -> dict[str, pa.DataType]:
    return {name: pa.float32() if name.startswith("D") else pa.int64() for name in CSV_HEADER}


def _check_csv_header(path: Path) -> int:
    """Check the header line of a preprocessed CSV file; return the number of data columns."""
    with open(path, "rb") as f:
        header = f.readline().decode("utf-8", errors="replace").lstrip("\ufeff").strip().split(",")
    header = [h.strip().strip('"') for h in header]
    missing = [c for c in CSV_HEADER if c not in header]
    if missing:
        raise DataError(f"the header lacks column(s) {missing} (expected {','.join(CSV_HEADER)})",
                        file=path, column=missing[0], row=1)
    extra = [c for c in header if c not in CSV_HEADER]
    if extra:
        raise DataError(f"unexpected column(s) {extra} in the header", file=path, column=extra[0], row=1)
    return len(header)


def _csv_chunk(batch: pa.RecordBatch, path: Path, first_line: int) -> dict[str, object]:
    """Validate one block of the preprocessed CSV and map it to the output columns."""
    for name in CSV_HEADER:
        if batch[name].null_count:
            i = int(np.flatnonzero(batch[name].is_null().to_numpy(zero_copy_only=False))[0])
            raise DataError("missing value", file=path, column=name, row=first_line + i)
    click = batch["click"].to_numpy()
    purchase = batch["purchase"].to_numpy()
    _check_binary(click, path, "click", first_line)
    _check_binary(purchase, path, "purchase", first_line)
    scenario = batch[SCENARIO_FIELD].to_numpy()
    bad = np.flatnonzero((scenario < 1) | (scenario > MAX_DOMAINS))
    if bad.size:
        raise DataError(f"301 (the scenario) must be 1, 2 or 3, got {scenario[bad[0]]}", file=path,
                        column=SCENARIO_FIELD, row=first_line + int(bad[0]))
    out: dict[str, object] = {"click": click, "purchase": purchase, "domain": scenario - 1,
                              "group_id": batch["101"].to_numpy()}
    for f in SINGLE_FIELDS + MULTI_FIELDS:
        ids = batch[f].to_numpy()
        negative = np.flatnonzero(ids < 0)
        if negative.size:
            raise DataError(f"ids must be >= 0, got {ids[negative[0]]}", file=path, column=f,
                            row=first_line + int(negative[0]))
        out[f"f{f}"] = ids
    for f in DENSE_FIELDS:
        out[f"D{f}"] = batch[f"D{f}"].to_numpy()
    return out


def _convert_csv(options: Options) -> DatasetSpec:
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
        "valid": (f"{CSV_FILES['valid']}" if has_valid else
                  f"{options.valid_fraction:.3f} of {CSV_FILES['train']} by a hash of the line number"),
    }
    writer = writer_for(options, name="aliccp", columns=_columns("id", None), domain_names=_domain_names(MAX_DOMAINS),
                        source=source, notes=notes)
    with writer:
        for split, path in paths.items():
            if not path.is_file():
                continue
            line = 2
            for batch in stream_csv(path, None, _csv_types(), block_size=options.block_size_mb << 20,
                                    desc=path.name):
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
