"""Raw input, pass 2: join each partition's skeleton lines to their common features, encode every
column and write the splits; the notes of the raw conversion."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_prep.aliccp.columns import domain_names, output_columns
from data_prep.aliccp.options import (
    ABSENT,
    DENSE_FIELDS,
    FIRST_ID,
    MULTI_FIELDS,
    RAW_FILES,
    SINGLE_FIELDS,
    USER_FIELDS,
    Options,
)
from data_prep.aliccp.raw_entries import encode
from data_prep.aliccp.raw_read import RawState, common_pass, skeleton_pass
from data_prep.common import progress, take_bags, writer_for
from data_prep.ids import IdCounter
from data_prep.partition import DiskPartitioner
from data_prep.writer import list_array
from torchrec_mdr.data.errors import DataError
from torchrec_mdr.data.spec import DatasetSpec

JOIN_CHUNK_ROWS = 1 << 16  # joined samples per written chunk


def _bags_with_absent(lists: pa.ListArray | pa.ChunkedArray, vocabulary: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Encoded CSR (offsets, values) of the bags, plus one trailing empty bag for "no common features"."""
    lists = lists.combine_chunks() if isinstance(lists, pa.ChunkedArray) else lists
    offsets = lists.offsets.to_numpy().astype(np.int64)
    values = encode(lists.values.to_numpy()[offsets[0] : offsets[-1]], vocabulary)
    offsets = offsets - offsets[0]
    return np.append(offsets, offsets[-1]), values


def _join_partition(
    table: pa.Table, vocab: dict[str, np.ndarray], scenarios: np.ndarray, counts: dict[str, int]
) -> Iterator[tuple[dict[str, object], np.ndarray]]:
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
        rows = index[lo : lo + JOIN_CHUNK_ROWS]
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


def convert_raw(options: Options) -> DatasetSpec:
    src = Path(options.src)
    tmp_dir = Path(options.tmp_dir) if options.tmp_dir is not None else Path(options.out).resolve().parent
    tmp_dir.mkdir(parents=True, exist_ok=True)
    state = RawState(
        counters={f: IdCounter() for f in SINGLE_FIELDS + MULTI_FIELDS},
        scenarios=list(options.scenario_ids),
        fixed_scenarios=bool(options.scenario_ids),
        duplicates={},
    )
    partitioners = {split: DiskPartitioner("_part", options.num_partitions, tmp_dir=tmp_dir) for split in RAW_FILES}
    try:
        for split, (skeleton_name, common_name) in RAW_FILES.items():
            count = split == "train"
            common_pass(src / common_name, options, state, partitioners[split], count)
            skeleton_pass(src / skeleton_name, options, state, partitioners[split], count)
        if not state.scenarios:
            raise DataError("no sample found (the skeleton files are empty)", file=src / RAW_FILES["train"][0])
        scenarios = np.asarray(state.scenarios if state.fixed_scenarios else sorted(state.scenarios), np.int64)
        vocab = {f: c.vocabulary(options.min_count) for f, c in state.counters.items()}
        cardinalities = {f: int(v.size) + FIRST_ID for f, v in vocab.items()}
        counts = {"missing": 0, "repeated": 0}
        notes = _raw_notes(options, state, scenarios, cardinalities)
        source = (
            f"Ali-CCP raw files in {src} (valid_fraction={options.valid_fraction}, "
            f"max_multi_length={options.max_multi_length}, min_count={options.min_count}, "
            f"scenario_ids={scenarios.tolist()})"
        )
        writer = writer_for(
            options,
            name="aliccp",
            columns=output_columns("multi_id", cardinalities),
            domain_names=domain_names(len(scenarios)),
            source=source,
            notes=notes,
        )
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


def _raw_notes(
    options: Options, state: RawState, scenarios: np.ndarray, cardinalities: dict[str, int]
) -> dict[str, str]:
    names = domain_names(len(scenarios))
    return {
        "input": "raw Tianchi files (sample_skeleton + common_features)",
        "domains": ", ".join(f"{n} = field 301 feature id {s}" for n, s in zip(names, scenarios.tolist())),
        "ids": (
            f"per-field vocabulary of the raw train files (min_count={options.min_count}): "
            "0 = field absent, 1 = unknown / rare id, 2.. = vocabulary in raw-id order"
        ),
        "multi_id": (
            f"109_14/110_14/127_14/150_14: the {options.max_multi_length} entries with the largest "
            "values, largest first"
        ),
        "dense": "D<field> = sum of the field's entry values on the line (all entries), 0 when absent",
        "group_id": "raw feature id of field 101 (0 when absent)",
        "valid": f"{options.valid_fraction:.3f} of the raw train samples by a hash of sample_id",
        "vocabulary sizes": ", ".join(f"{f}:{c - FIRST_ID}" for f, c in cardinalities.items()),
        "repeated single-valued entries (first kept)": ", ".join(f"{f}:{c}" for f, c in state.duplicates.items() if c)
        or "none",
        "entries of other fields (ignored)": str(state.other_field_entries),
        "lines whose feature_num differs from their entry count": str(state.feature_num_mismatch),
        "samples with buy=1 and click=0 (kept)": str(state.purchase_without_click),
        "raw lines read": f"skeleton {state.skeleton_rows}, common features {state.common_rows}",
    }
