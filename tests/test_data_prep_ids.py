"""data_prep.ids: the converters' shared hashing and counting helpers give the values the
converters' own copies gave before they were merged (golden values recorded from those copies),
so that every converted dataset's splits, partitions and vocabularies stay the same bit for bit."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from data_prep import aliccp, synthetic
from data_prep.ids import DenseIdCounter, IdCounter, splitmix64, string_hash, unit_interval, zero_pad

INPUTS = np.array([0, 1, 2, 12345, 2**40, 2**64 - 1], dtype=np.uint64)
# aliccp._mix64 (and synthetic._splitmix64) of INPUTS before the merge
SPLITMIX64 = [
    0xE220A8397B1DCDAF,
    0x910A2DEC89025CC1,
    0x975835DE1C9756CE,
    0x22118258A9D111A0,
    0x1FDD7128F310C389,
    0xE4D971771B652C20,
]
STRINGS = pa.array(["", "a", "sample_1", None, "ünïcode", "x" * 100])
# aliccp.string_hash(STRINGS) and aliccp.string_hash(STRINGS, aliccp._VALID_SEED) before the merge
STRING_HASH = [
    0xE220A8397B1DCDAF,
    0x6C5FF250DF1FEE7C,
    0xAF92BB26CFC5B508,
    0xE220A8397B1DCDAF,
    0x60D72FD1B172EB05,
    0x1438FA12B4432C19,
]
STRING_HASH_VALID_SEED = [
    0x2CCC3372FDCEA2B5,
    0xE66C3A8BD663250E,
    0x107F6D70F338CD09,
    0x2CCC3372FDCEA2B5,
    0xB48B62632EFF7003,
    0xCADDBFCBB90EA2E4,
]
# aliccp._unit_interval(aliccp._mix64(line numbers 2..7 ^ _VALID_SEED)): the preprocessed CSV's valid split
VALID_DRAWS = [
    0.9688828770644712,
    0.6709390244160456,
    0.4366870986118214,
    0.9486815282756235,
    0.2655823204630914,
    0.3161562595512646,
]


def test_splitmix64_matches_the_recorded_values_and_synthetics_copy():
    assert [int(v) for v in splitmix64(INPUTS)] == SPLITMIX64
    signed = np.array([-1, 0, 7], dtype=np.int64)  # other integer dtypes wrap to uint64 first
    np.testing.assert_array_equal(splitmix64(signed), splitmix64(signed.astype(np.uint64)))
    copy = getattr(synthetic, "_splitmix64", None)  # synthetic.py's own copy, while it has one
    if copy is not None:
        np.testing.assert_array_equal(splitmix64(INPUTS), copy(INPUTS))
        np.testing.assert_array_equal(splitmix64(signed), copy(signed))


def test_string_hash_and_unit_interval_match_the_recorded_values():
    assert [int(v) for v in string_hash(STRINGS)] == STRING_HASH
    assert [int(v) for v in string_hash(STRINGS, aliccp._VALID_SEED)] == STRING_HASH_VALID_SEED
    assert aliccp.string_hash is string_hash  # the converter uses the shared one
    lines = np.arange(2, 8, dtype=np.uint64)
    assert unit_interval(splitmix64(lines ^ aliccp._VALID_SEED)).tolist() == VALID_DRAWS


def test_id_counter_counts_non_negative_ids_across_batches():
    counter = IdCounter()
    counter.add(np.array([5, 3, 5, -1, 7, 5, 3]))
    counter.add(np.array([7, 9, -2]))
    ids, counts = counter.items()
    assert ids.tolist() == [3, 5, 7, 9] and counts.tolist() == [2, 3, 2, 1]
    assert counter.vocabulary(2).tolist() == [3, 5, 7]


def test_dense_id_counter_grows_to_the_largest_id():
    counter = DenseIdCounter()
    counter.add(np.array([5, 3, 5, 7, 5, 3]))
    counter.add(np.array([7, 9]))
    counter.add(np.array([], dtype=np.int64))
    assert counter.counts.tolist() == [0, 0, 0, 2, 0, 3, 0, 2, 0, 1]
    assert zero_pad(np.array([1, 2]), 4).tolist() == [1, 2, 0, 0]
    assert zero_pad(np.array([1, 2, 3]), 2).tolist() == [1, 2, 3]
