"""The options of ``mdr data kuairand`` and the constants of the KuaiRand files: log and side-table
columns, label choices, tabs, the unknown id."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from data_prep.common import OutputOptions
from torchrec_mdr.config import ConfigError, bounds, doc

LOG_HEADER = (
    "user_id",
    "video_id",
    "date",
    "hourmin",
    "time_ms",
    "is_click",
    "is_like",
    "is_follow",
    "is_comment",
    "is_forward",
    "is_hate",
    "long_view",
    "play_time_ms",
    "duration_ms",
    "profile_stay_time",
    "comment_stay_time",
    "is_profile_enter",
    "is_rand",
    "tab",
)
LABEL_CHOICES = (
    "is_click",
    "is_like",
    "is_follow",
    "is_comment",
    "is_forward",
    "is_hate",
    "long_view",
    "is_profile_enter",
)
NUM_TABS = 15
USER_CATEGORICAL = (
    "user_active_degree",
    "is_lowactive_period",
    "is_live_streamer",
    "is_video_author",
    "follow_user_num_range",
    "fans_user_num_range",
    "friend_user_num_range",
    "register_days_range",
) + tuple(f"onehot_feat{i}" for i in range(18))
USER_DENSE = ("follow_user_num", "fans_user_num", "friend_user_num", "register_days")
VIDEO_CATEGORICAL = ("video_type", "upload_type", "visible_status", "music_id", "music_type")
VIDEO_DENSE = ("video_duration", "server_width", "server_height")
VIDEO_COLUMNS = ("video_id", "author_id") + VIDEO_CATEGORICAL + ("upload_dt",) + VIDEO_DENSE + ("tag",)
MISSING_TEXT = ("", "nan", "none", "null", "na", "n/a")
UNKNOWN = 0
AUTO_PARTITION_BYTES = 128 << 20  # --num-partitions 0: one partition per this many bytes of logs


@dataclass(kw_only=True)
class Options(OutputOptions):
    """Options of ``mdr data kuairand``."""

    src: Path = field(metadata=doc("folder with the KuaiRand csv files (or the extracted archive with data/)"))
    variant: str = field(
        default="",
        metadata=doc("file suffix of the variant: 1k, pure or 27k (default: the one user_features_*.csv found)"),
    )
    labels: list[str] = field(
        default_factory=lambda: ["is_click", "long_view", "is_like"],
        metadata=doc(f"label columns, the first is the main one; from {', '.join(LABEL_CHOICES)}"),
    )
    tabs: list[int] = field(
        default_factory=list,
        metadata=doc("keep only these tabs as rows, in this domain order (default: every tab that occurs, ascending)"),
    )
    include_random: bool = field(
        default=False, metadata=doc("also read log_random_*.csv (randomly exposed videos) as impressions and history")
    )
    max_length: int = field(default=50, metadata=bounds(ge=1, help="most recent clicked videos kept per history"))
    session_gap_minutes: float = field(
        default=30.0,
        metadata=bounds(
            gt=0, help="a user's line more than this many minutes after the user's previous line starts a new session"
        ),
    )
    split_fractions: list[float] = field(
        default_factory=lambda: [0.8, 0.1, 0.1], metadata=doc("train, valid, test shares of the rows, cut on time_ms")
    )
    num_partitions: int = field(
        default=0,
        metadata=bounds(
            ge=0, help=f"temporary hash partitions by user (0: one per {AUTO_PARTITION_BYTES >> 20} MiB of logs)"
        ),
    )
    block_size_mb: int = field(default=64, metadata=bounds(ge=1, le=1024, help="CSV read block in MiB"))
    tmp_dir: Path | None = field(
        default=None, metadata=doc("folder for the temporary partitions (default: the parent folder of OUT)")
    )

    def validate(self) -> None:
        unknown = [label for label in self.labels if label not in LABEL_CHOICES]
        if not self.labels or unknown or len(set(self.labels)) != len(self.labels):
            raise ConfigError(f"labels must be distinct names from {list(LABEL_CHOICES)}, got {self.labels}")
        if any(not 0 <= t < NUM_TABS for t in self.tabs) or len(set(self.tabs)) != len(self.tabs):
            raise ConfigError(f"tabs must be distinct values in 0..{NUM_TABS - 1}, got {self.tabs}")
        fractions = self.split_fractions
        if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6 or fractions[0] == 0:
            raise ConfigError(f"split_fractions must be 3 shares >= 0 summing to 1 (train > 0), got {fractions}")
