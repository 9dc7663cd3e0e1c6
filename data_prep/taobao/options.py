"""The options of ``mdr data taobao`` (with their date checks) and the constants of the raw format."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from data_prep.common import OutputOptions
from torchrec_mdr.config import ConfigError, bounds, doc

RAW_COLUMNS = ["user_id", "item_id", "category_id", "behavior_type", "timestamp"]
BEHAVIORS = ("pv", "buy", "cart", "fav")  # code = position; every code but 0 (pv) is positive
SECONDS_PER_DAY = 86_400
EPOCH = dt.date(1970, 1, 1)


@dataclass(kw_only=True)
class Options(OutputOptions):
    """Options of ``mdr data taobao``."""

    src: Path = field(metadata=doc("UserBehavior.csv (no header; user_id,item_id,category_id,behavior_type,timestamp)"))
    first_date: str = field(
        default="2017-11-25", metadata=doc("first local date kept (YYYY-MM-DD); rows before it are dropped")
    )
    last_date: str = field(
        default="2017-12-03", metadata=doc("last local date kept (YYYY-MM-DD, inclusive); rows after it are dropped")
    )
    utc_offset_hours: int = field(
        default=8,
        metadata=bounds(ge=-12, le=14, help="time zone of the dates, the hour and the day_of_week (Beijing: 8)"),
    )
    train_days: int = field(
        default=7,
        metadata=bounds(
            ge=2, help="the first TRAIN_DAYS days of the window are for training (incl. valid); the rest is test"
        ),
    )
    valid_days: int = field(
        default=1, metadata=bounds(ge=1, help="the last VALID_DAYS of the training days form the valid split")
    )
    min_user_interactions: int = field(
        default=200, metadata=bounds(ge=0, help="keep users with at least this many rows in the window")
    )
    min_user_positives: int = field(
        default=10, metadata=bounds(ge=0, help="keep users with at least this many buy/cart/fav rows in the window")
    )
    min_item_interactions: int = field(
        default=10, metadata=bounds(ge=0, help="then keep items with at least this many rows among the kept users")
    )
    domains: Literal["category-bucket", "category"] = field(
        default="category-bucket",
        metadata=doc(
            "category: every category is a domain; category-bucket: the NUM_DOMAINS-1 largest categories and 'other'"
        ),
    )
    num_domains: int = field(default=10, metadata=bounds(ge=2, help="number of domains with --domains category-bucket"))
    history: Literal["positives", "all"] = field(
        default="positives",
        metadata=doc(
            "events in the behaviour sequence: buy/cart/fav only, or every behaviour (adds hist_behavior_type)"
        ),
    )
    max_length: int = field(default=50, metadata=bounds(ge=1, help="keep the most recent events of the sequence"))
    num_partitions: int = field(
        default=0,
        metadata=bounds(
            ge=0, help="temporary user partitions (memory ~ rows / partitions); 0: one per 64 MiB of input"
        ),
    )
    seed: int = field(default=0, metadata=bounds(ge=0, help="seed of the row shuffle within written blocks"))

    def validate(self) -> None:
        first, last = parse_date(self.first_date, "first_date"), parse_date(self.last_date, "last_date")
        if last < first:
            raise ConfigError(f"last_date {self.last_date} is before first_date {self.first_date}")
        days = (last - first).days + 1
        if self.train_days >= days:
            raise ConfigError(
                f"train_days={self.train_days} leaves no test day in the {days}-day window "
                f"{self.first_date}..{self.last_date}"
            )
        if self.valid_days >= self.train_days:
            raise ConfigError(f"valid_days={self.valid_days} must be smaller than train_days={self.train_days}")

    @property
    def first_day(self) -> int:
        """Days since 1970-01-01 of ``first_date``."""
        return (parse_date(self.first_date, "first_date") - EPOCH).days

    @property
    def num_days(self) -> int:
        return (parse_date(self.last_date, "last_date") - parse_date(self.first_date, "first_date")).days + 1


def parse_date(text: str, name: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"{name}: {text!r} is not a date YYYY-MM-DD") from None
