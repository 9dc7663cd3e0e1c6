"""Ali-CCP converter: raw Tianchi files (real \\x01\\x02\\x03 separators) and the preprocessed CSV."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_prep import aliccp
from torchrec_mdr.data.errors import DataError

SCENARIOS = (9003, 9001, 9002)  # raw feature ids of field 301 (deliberately unsorted in the data)
NUM_USERS = 6
TRAIN_SAMPLES = range(1, 121)
TEST_SAMPLES = range(1001, 1031)
MISSING_KEY = "ffffffffffffffff"  # a test sample whose common features do not exist


def entry(field: str, fid: int, value: float = 1.0) -> str:
    return f"{field}\x02{fid}\x03{value}"


def key_of(user: int) -> str:
    return f"{0xABC0000000000000 + user * 7919:016x}"


def user_entries(user: int) -> list[str]:
    entries = [
        entry("101", 1000 + user),
        entry("121", 2000 + user % 3),
        entry("122", 2100 + user % 2),
        entry("124", 3100 + user % 2),
        entry("125", 3200),
        entry("126", 3300),
        entry("127", 3400),
        entry("128", 3500),
        entry("129", 3600 + user % 4),
    ]
    # 109_14: four entries; the two largest values are kept in the tests (largest first).
    entries += [
        entry("109_14", 5000 + user, 1.0),
        entry("109_14", 5010, 2.0 + user),
        entry("109_14", 5020, 0.5),
        entry("109_14", 5030, 3.0 + user),
    ]
    if user % 2 == 0:
        entries.append(entry("110_14", 6000 + user, 1.5))
    entries.append(entry("150_14", 6500, 0.25))
    return entries


def sample(sid: int, test: bool = False) -> tuple[str, int, int, list[str]]:
    user = sid % NUM_USERS if not test else sid % (NUM_USERS + 1)
    key = key_of(user) if sid != TEST_SAMPLES[-1] else MISSING_KEY
    item = 100000 + (sid if not test else sid - 1000)
    entries = [
        entry("205", item),
        entry("206", 7000 + sid % 5),
        entry("207", 7100 + sid % 3),
        entry("216", 999999 if test else 7200),
        entry("508", 8000 + sid % 2, sid / 10),
    ]
    if sid % 4:
        entries.append(entry("210", 8100))
        if sid % 7 == 0:
            entries.append(entry("210", 8199))  # repeated single-valued field: the first is kept
    entries.append(entry("301", SCENARIOS[sid % 3]))
    click = sid % 2
    buy = int(click == 1 and sid % 6 == 1)
    return key, click, buy, entries


def skeleton_line(sid: int, key: str, click: int, buy: int, entries: list[str]) -> str:
    return f"{sid},{click},{buy},{key},{len(entries)},{chr(1).join(entries)}"


def common_line(key: str, entries: list[str]) -> str:
    return f"{key},{len(entries)},{chr(1).join(entries)}"


def write_raw(folder: Path, test_lines_extra: list[str] = ()) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, samples, users in (("train", TRAIN_SAMPLES, NUM_USERS), ("test", TEST_SAMPLES, NUM_USERS + 1)):
        lines = []
        for sid in samples:
            key, click, buy, entries = sample(sid, test=split == "test")
            lines.append(skeleton_line(sid, key, click, buy, entries))
        if split == "test":
            lines += list(test_lines_extra)
        (folder / f"sample_skeleton_{split}.csv").write_text("\n".join(lines) + "\n")
        common = [common_line(key_of(u), user_entries(u)) for u in range(users)]
        (folder / f"common_features_{split}.csv").write_text("\n".join(common) + "\n")
    return folder


def read_split(out: Path, spec, split: str) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in spec.files(out, split)])


def convert(src: Path, out: Path, **kwargs):
    return aliccp.convert(aliccp.Options(src=src, out=out, **kwargs))


@pytest.fixture
def raw(tmp_path: Path):
    src = write_raw(tmp_path / "raw")
    out = tmp_path / "out"
    spec = convert(src, out, max_multi_length=2, num_partitions=3)
    return src, out, spec


def item_of(encoded_205: np.ndarray) -> np.ndarray:
    """Decode f205 (vocabulary = items 100001..100120 in order, ids from 2) back to the sample number."""
    return encoded_205 - aliccp.FIRST_ID + 1


def test_raw_splits_domains_and_labels(raw):
    _, out, spec = raw
    assert spec.domain_names == ["scenario1", "scenario2", "scenario3"]
    assert spec.splits["train"].rows + spec.splits["valid"].rows == len(TRAIN_SAMPLES)
    assert 0 < spec.splits["valid"].rows < 0.3 * len(TRAIN_SAMPLES)
    assert spec.splits["test"].rows == len(TEST_SAMPLES)
    # 301 -> domain: raw ids sorted (9001 -> 0, 9002 -> 1, 9003 -> 2).
    for split in ("train", "valid", "test"):
        table = read_split(out, spec, split)
        sids = item_of(table["f205"].to_numpy()) + (1000 if split == "test" else 0)
        expected_domain = np.searchsorted([9001, 9002, 9003], np.asarray(SCENARIOS)[sids % 3])
        np.testing.assert_array_equal(table["domain"].to_numpy(), expected_domain)
        np.testing.assert_array_equal(table["click"].to_numpy(), sids % 2)
        buys = ((sids % 2 == 1) & (sids % 6 == 1)).astype(int)
        np.testing.assert_array_equal(table["purchase"].to_numpy(), buys)
    both = np.asarray(spec.splits["train"].rows_per_domain) + np.asarray(spec.splits["valid"].rows_per_domain)
    expected = np.bincount(np.searchsorted([9001, 9002, 9003], [SCENARIOS[s % 3] for s in TRAIN_SAMPLES]))
    np.testing.assert_array_equal(both, expected)
    assert spec.splits["test"].rows_per_domain == [10, 10, 10]
    assert "9001" in spec.notes["domains"]


def test_raw_common_features_join_multi_and_dense(raw):
    _, out, spec = raw
    train = pa.concat_tables([read_split(out, spec, "train"), read_split(out, spec, "valid")])
    sids = item_of(train["f205"].to_numpy())
    users = sids % NUM_USERS
    # group_id is the raw user id; f101 its re-encoding (users 1000..1005 in order).
    np.testing.assert_array_equal(train["group_id"].to_numpy(), 1000 + users)
    np.testing.assert_array_equal(train["f101"].to_numpy(), users + aliccp.FIRST_ID)
    # 121 = 2000 + user % 3 -> vocabulary [2000, 2001, 2002].
    np.testing.assert_array_equal(train["f121"].to_numpy(), users % 3 + aliccp.FIRST_ID)
    # 109_14: user u holds (5000+u, 1.0), (5010, 2+u), (5020, 0.5), (5030, 3+u); capped at 2, largest
    # value first -> [5030, 5010]; only kept ids enter the vocabulary: 5010 -> 2, 5030 -> 3.
    assert train["f109_14"].to_pylist() == [[3, 2]] * len(users)
    assert spec.column("f109_14").cardinality == 2 + aliccp.FIRST_ID
    np.testing.assert_allclose(train["D109_14"].to_numpy(), 1.0 + 2.0 + 0.5 + 3.0 + 2 * users, rtol=1e-6)
    # 110_14 only for even users; 127_14 never present -> empty bag, dense 0.
    assert [len(b) for b in train["f110_14"].to_pylist()] == [1 if u % 2 == 0 else 0 for u in users]
    np.testing.assert_allclose(train["D110_14"].to_numpy(), np.where(users % 2 == 0, 1.5, 0.0))
    assert all(b == [] for b in train["f127_14"].to_pylist())
    assert np.all(train["D127_14"].to_numpy() == 0)
    np.testing.assert_allclose(train["D150_14"].to_numpy(), 0.25)
    # Skeleton-side fields: 508's value is the dense D508; 210 absent when sid % 4 == 0, first kept when repeated.
    np.testing.assert_allclose(train["D508"].to_numpy(), sids / 10, rtol=1e-6)
    np.testing.assert_array_equal(train["f210"].to_numpy(), np.where(sids % 4 == 0, aliccp.ABSENT, aliccp.FIRST_ID))
    assert np.all(train["D702"].to_numpy() == 0)
    assert "210:" in spec.notes["repeated single-valued entries (first kept)"]


def test_raw_test_split_unknown_ids_and_missing_join(raw):
    _, out, spec = raw
    test = read_split(out, spec, "test")
    sids = item_of(test["f205"].to_numpy()) + 1000
    # 216 = 999999 only in the test files -> unknown id; user 6 only in test -> unknown f101, raw group.
    assert np.all(test["f216"].to_numpy() == aliccp.UNKNOWN)
    users = sids % (NUM_USERS + 1)
    missing = sids == TEST_SAMPLES[-1]
    known = ~missing & (users < NUM_USERS)
    np.testing.assert_array_equal(test["f101"].to_numpy()[known], users[known] + aliccp.FIRST_ID)
    new_user = ~missing & (users == NUM_USERS)
    assert new_user.any() and np.all(test["f101"].to_numpy()[new_user] == aliccp.UNKNOWN)
    np.testing.assert_array_equal(test["group_id"].to_numpy()[new_user], 1000 + NUM_USERS)
    # The sample whose common_feature_index has no common-features line: user fields absent.
    assert missing.sum() == 1
    row = test.filter(pa.array(missing)).to_pylist()[0]
    assert row["f101"] == aliccp.ABSENT and row["group_id"] == 0 and row["f109_14"] == [] and row["D109_14"] == 0
    assert spec.notes["skeleton lines without common features"] == "1"
    columns = {c.name: c for c in spec.columns}
    assert columns["f205"].cardinality == len(TRAIN_SAMPLES) + aliccp.FIRST_ID
    assert columns["f205"].oov == "reject" and columns["f109_14"].kind == "multi_id"
    assert not spec.columns_of("sequence")


@pytest.mark.parametrize("partitions", [1, 64])  # 64: some partitions hold skeleton lines only
def test_raw_partition_count_does_not_change_output(tmp_path, raw, partitions):
    src, out, spec = raw
    out1 = tmp_path / "other"
    spec1 = convert(src, out1, max_multi_length=2, num_partitions=partitions)
    for split in ("train", "valid", "test"):
        a = read_split(out, spec, split).sort_by("f205")
        b = read_split(out1, spec1, split).sort_by("f205")
        assert a.equals(b), split
    assert [c.cardinality for c in spec.columns] == [c.cardinality for c in spec1.columns]


def test_raw_valid_fraction_and_header_line(tmp_path):
    src = write_raw(tmp_path / "raw")
    path = src / "sample_skeleton_train.csv"
    path.write_text("sample_id,click,buy,common_feature_index,feature_num,feature_list\n" + path.read_text())
    spec = convert(src, tmp_path / "out", valid_fraction=0.0)
    assert spec.splits["train"].rows == len(TRAIN_SAMPLES)
    assert "valid" not in spec.splits or spec.splits["valid"].rows == 0


def test_raw_scenario_ids_option_sets_domain_order(tmp_path):
    src = write_raw(tmp_path / "raw")
    spec = convert(src, tmp_path / "out", scenario_ids=[9003, 9001, 9002])
    test = read_split(tmp_path / "out", spec, "test")
    sids = item_of(test["f205"].to_numpy()) + 1000
    np.testing.assert_array_equal(test["domain"].to_numpy(), sids % 3)  # domain k = SCENARIOS[k]


def test_raw_fourth_scenario_value_is_an_error(tmp_path):
    extra = skeleton_line(2000, key_of(1), 0, 0, [entry("205", 100001), entry("301", 9004)])
    src = write_raw(tmp_path / "raw", test_lines_extra=[extra])
    with pytest.raises(DataError) as info:
        convert(src, tmp_path / "out")
    assert info.value.file.endswith("sample_skeleton_test.csv")
    assert info.value.row == len(TEST_SAMPLES) + 1
    assert "9004" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_raw_value_outside_scenario_ids_is_an_error(tmp_path):
    src = write_raw(tmp_path / "raw")
    with pytest.raises(DataError, match="9003") as info:
        convert(src, tmp_path / "out", scenario_ids=[9001, 9002])
    assert info.value.file.endswith("sample_skeleton_train.csv")
    assert info.value.row == 3  # sample 3 is the first with 301 = 9003


@pytest.mark.parametrize(
    "bad, what",
    [
        ("205\x02100003", "no \\\\x03"),
        ("205100003\x031.0", "no \\\\x02"),
        ("205\x02abc\x031.0", "not an integer"),
        ("205\x02100003\x03x1", "not a number"),
        ("205\x02100003\x031.0\x01\x01301\x029001\x031.0", "empty entry"),
    ],
)
def test_raw_malformed_feature_entry_is_an_error(tmp_path, bad, what):
    src = write_raw(tmp_path / "raw")
    path = src / "sample_skeleton_train.csv"
    lines = path.read_text().splitlines()
    lines[2] = f"3,0,0,{key_of(3)},1,{bad}"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=what) as info:
        convert(src, tmp_path / "out")
    assert info.value.file.endswith("sample_skeleton_train.csv") and info.value.row == 3
    assert info.value.column == "feature_list"


def test_raw_missing_scenario_and_bad_label_are_errors(tmp_path):
    src = write_raw(tmp_path / "raw")
    path = src / "sample_skeleton_train.csv"
    lines = path.read_text().splitlines()
    lines[4] = f"5,1,0,{key_of(5)},1,{entry('205', 100005)}"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="no field 301") as info:
        convert(src, tmp_path / "out")
    assert info.value.row == 5
    lines[4] = f"5,2,0,{key_of(5)},2,{entry('205', 100005)}{chr(1)}{entry('301', 9001)}"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="0 or 1") as info:
        convert(src, tmp_path / "out")
    assert info.value.column == "click" and info.value.row == 5


def test_missing_files_are_errors(tmp_path):
    with pytest.raises(DataError, match="no Ali-CCP files"):
        convert(tmp_path, tmp_path / "out")
    with pytest.raises(DataError, match="does not exist"):
        convert(tmp_path / "nowhere", tmp_path / "out")
    src = write_raw(tmp_path / "raw")
    (src / "common_features_test.csv").unlink()
    with pytest.raises(DataError, match="file not found") as info:
        convert(src, tmp_path / "out")
    assert info.value.file.endswith("common_features_test.csv")


# --------------------------------------------------------------------------- preprocessed CSV


def write_csv(folder: Path, rows: dict[str, int], with_valid: bool = True, scenario: int | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, name in aliccp.CSV_FILES.items():
        if split == "valid" and not with_valid:
            continue
        n = rows[split]
        lines = [",".join(aliccp.CSV_HEADER)]
        for i in range(n):
            click = i % 2
            values = [click, int(click and i % 4 == 1)]
            values += [(i + k) % (5 + k) for k in range(len(aliccp.SINGLE_FIELDS))]
            values += [scenario if scenario is not None and i == n - 1 else 1 + i % 3]
            values += [(i * 3 + k) % 11 for k in range(len(aliccp.MULTI_FIELDS))]
            values += [f"{x:.4f}" for x in rng.random(len(aliccp.DENSE_FIELDS))]
            lines.append(",".join(str(v) for v in values))
        (folder / name).write_text("\n".join(lines) + "\n")
    return folder


def test_csv_input_same_column_names_as_raw(tmp_path, raw):
    _, _, raw_spec = raw
    src = write_csv(tmp_path / "csv", {"train": 30, "valid": 9, "test": 12})
    out = tmp_path / "csv_out"
    spec = convert(src, out)
    assert [c.name for c in spec.columns] == [c.name for c in raw_spec.columns]
    assert spec.column("f109_14").kind == "id" and raw_spec.column("f109_14").kind == "multi_id"
    multi = {f"f{f}" for f in aliccp.MULTI_FIELDS}
    assert all(
        spec.column(name).kind == raw_spec.column(name).kind
        for name in (c.name for c in spec.columns)
        if name not in multi
    )
    assert (spec.splits["train"].rows, spec.splits["valid"].rows, spec.splits["test"].rows) == (30, 9, 12)
    assert spec.splits["test"].rows_per_domain == [4, 4, 4]
    test = read_split(out, spec, "test")
    i = np.arange(12)
    np.testing.assert_array_equal(test["domain"].to_numpy(), i % 3)  # 301 = 1 + i % 3 -> domain i % 3
    np.testing.assert_array_equal(test["group_id"].to_numpy(), test["f101"].to_numpy())
    np.testing.assert_array_equal(test["f101"].to_numpy(), i % 5)
    assert spec.column("f101").cardinality == 5  # largest id + 1 over all splits
    assert spec.column("D853").kind == "dense"


def test_csv_without_val_file_carves_valid(tmp_path):
    src = write_csv(tmp_path / "csv", {"train": 200, "test": 10}, with_valid=False)
    spec = convert(src, tmp_path / "out", valid_fraction=0.2)
    assert spec.splits["train"].rows + spec.splits["valid"].rows == 200
    assert 15 < spec.splits["valid"].rows < 70


def test_csv_scenario_outside_1_2_3_is_an_error(tmp_path):
    src = write_csv(tmp_path / "csv", {"train": 20, "valid": 5, "test": 7}, scenario=4)
    with pytest.raises(DataError, match="1, 2 or 3") as info:
        convert(src, tmp_path / "out")
    assert info.value.file.endswith("ali_ccp_train.csv") and info.value.column == "301"
    assert info.value.row == 21  # header is line 1, the last of 20 rows is line 21


def test_csv_missing_column_and_ambiguous_input_are_errors(tmp_path):
    src = write_csv(tmp_path / "csv", {"train": 5, "valid": 5, "test": 5})
    path = src / "ali_ccp_test.csv"
    lines = [",".join(line.split(",")[:-1]) for line in path.read_text().splitlines()]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="D853") as info:
        convert(src, tmp_path / "out")
    assert info.value.column == "D853"
    write_raw(src)
    with pytest.raises(DataError, match="input-format"):
        convert(src, tmp_path / "out")
    shutil.rmtree(tmp_path / "out", ignore_errors=True)
    spec = convert(src, tmp_path / "out", input_format="raw")
    assert spec.splits["test"].rows == len(TEST_SAMPLES)


def test_string_hash_ignores_chunking_and_slicing():
    keys = pa.array(["abc", "", key_of(1), "x" * 300, "abd"])
    h = aliccp.string_hash(keys)
    assert len(set(h.tolist())) == 5
    np.testing.assert_array_equal(aliccp.string_hash(keys.slice(2, 3)), h[2:])
    np.testing.assert_array_equal(aliccp.string_hash(pa.chunked_array([keys.slice(0, 2), keys.slice(2)])), h)
    np.testing.assert_array_equal(aliccp.string_hash(keys.cast(pa.large_string())), h)
