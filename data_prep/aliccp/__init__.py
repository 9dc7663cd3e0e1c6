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

Where the code lives: :mod:`~data_prep.aliccp.options` (``Options``, fields, file names, reserved ids),
:mod:`~data_prep.aliccp.pipeline` (``convert``: which input, then its conversion),
:mod:`~data_prep.aliccp.raw_entries` (feature lists -> entries, id encoding),
:mod:`~data_prep.aliccp.raw_read` (raw pass 1: parse, count, partition),
:mod:`~data_prep.aliccp.raw_join` (raw pass 2: join, encode, write; notes),
:mod:`~data_prep.aliccp.preprocessed` (the preprocessed CSV) and
:mod:`~data_prep.aliccp.columns` (the column specs both inputs share).
"""

from data_prep.aliccp.options import (
    _VALID_SEED,
    ABSENT,
    CSV_FILES,
    CSV_HEADER,
    DENSE_FIELDS,
    FIRST_ID,
    MULTI_FIELDS,
    RAW_FILES,
    SINGLE_FIELDS,
    UNKNOWN,
    Options,
)
from data_prep.aliccp.pipeline import convert, detect_format
from data_prep.aliccp.raw_entries import encode, parse_feature_lists
from data_prep.ids import string_hash

__all__ = [
    "ABSENT",
    "CSV_FILES",
    "CSV_HEADER",
    "DENSE_FIELDS",
    "FIRST_ID",
    "MULTI_FIELDS",
    "RAW_FILES",
    "SINGLE_FIELDS",
    "UNKNOWN",
    "_VALID_SEED",
    "Options",
    "convert",
    "detect_format",
    "encode",
    "parse_feature_lists",
    "string_hash",
]
