"""The options of ``mdr data aliccp`` and the constants of both inputs: the fields and their meaning,
the file names and headers, the reserved ids of the raw path."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from data_prep.common import OutputOptions
from torchrec_mdr.config import ConfigError, bounds, doc

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
    "101": "user id",
    "121": "user profile category",
    "122": "user profile group",
    "124": "gender",
    "125": "age",
    "126": "consumption level I",
    "127": "consumption level II",
    "128": "occupation",
    "129": "geography level",
    "109_14": "user's categories (by behaviour count)",
    "110_14": "user's shops (by behaviour count)",
    "127_14": "user's brands (by behaviour count)",
    "150_14": "user's intention nodes (by behaviour count)",
    "205": "item id",
    "206": "item category",
    "207": "item shop",
    "210": "item intention node",
    "216": "item brand",
    "508": "109_14 x 206 cross",
    "509": "110_14 x 207 cross",
    "702": "127_14 x 216 cross",
    "853": "150_14 x 210 cross",
}

RAW_FILES = {
    "train": ("sample_skeleton_train.csv", "common_features_train.csv"),
    "test": ("sample_skeleton_test.csv", "common_features_test.csv"),
}
CSV_FILES = {"train": "ali_ccp_train.csv", "valid": "ali_ccp_val.csv", "test": "ali_ccp_test.csv"}
CSV_HEADER = (
    ["click", "purchase"]
    + list(USER_FIELDS)
    + list(ITEM_FIELDS)
    + list(CROSS_FIELDS)
    + [SCENARIO_FIELD]
    + list(MULTI_FIELDS)
    + [f"D{f}" for f in DENSE_FIELDS]
)
SKELETON_COLUMNS = ["sample_id", "click", "buy", "common_feature_index", "feature_num", "feature_list"]
COMMON_COLUMNS = ["common_feature_index", "feature_num", "feature_list"]

ABSENT, UNKNOWN, FIRST_ID = 0, 1, 2  # reserved ids of the raw path
_VALID_SEED = np.uint64(0x5EED0A11CC9)


@dataclass(kw_only=True)
class Options(OutputOptions):
    """Options of ``mdr data aliccp``."""

    src: Path = field(
        metadata=doc(
            "folder with the raw files (sample_skeleton_{train,test}.csv, common_features_{train,test}.csv) "
            "or the preprocessed CSV (ali_ccp_train.csv, ali_ccp_test.csv, optional ali_ccp_val.csv)"
        )
    )
    input_format: Literal["auto", "raw", "csv"] = field(
        default="auto", metadata=doc("which input to read; auto picks the one whose files are in SRC")
    )
    valid_fraction: float = field(
        default=0.1,
        metadata=bounds(
            ge=0.0, lt=1.0, help="share of the train samples moved to the valid split (deterministic hash)"
        ),
    )
    max_multi_length: int = field(
        default=20,
        metadata=bounds(
            ge=1, help="raw input: keep at most this many ids (largest values first) of 109_14/110_14/127_14/150_14"
        ),
    )
    min_count: int = field(
        default=1,
        metadata=bounds(ge=1, help="raw input: ids seen fewer times in the train files map to the unknown id 1"),
    )
    scenario_ids: list[int] = field(
        default_factory=list,
        metadata=doc("raw input: the raw feature ids of field 301 in domain order (default: discovered, sorted)"),
    )
    num_partitions: int = field(
        default=64, metadata=bounds(ge=1, help="raw input: temporary hash partitions (memory ~ rows / partitions)")
    )
    block_size_mb: int = field(
        default=64, metadata=bounds(ge=1, le=1024, help="CSV read block in MiB (must hold the longest line)")
    )
    tmp_dir: Path | None = field(
        default=None, metadata=doc("folder for the temporary partitions (default: the parent folder of OUT)")
    )

    def validate(self) -> None:
        if len(self.scenario_ids) > MAX_DOMAINS or len(set(self.scenario_ids)) != len(self.scenario_ids):
            raise ConfigError(f"scenario_ids must hold at most {MAX_DOMAINS} distinct ids, got {self.scenario_ids}")
