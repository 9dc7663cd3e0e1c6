"""The options of ``mdr data movielens`` and the constants of the format: genres and their domain
groups, age domains and buckets, the bucket edges of the derived features."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from data_prep.common import OutputOptions
from torchrec_mdr.config import ConfigError, bounds, doc

GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
GENRE_GROUPS: dict[str, tuple[str, ...]] = {
    "action_thriller": (
        "Action",
        "Adventure",
        "Crime",
        "Film-Noir",
        "Horror",
        "Mystery",
        "Sci-Fi",
        "Thriller",
        "War",
        "Western",
    ),
    "comedy_family": ("Animation", "Children's", "Comedy", "Fantasy", "Musical"),
    "drama_other": ("Drama", "Romance", "Documentary", "unknown"),  # + every genre not in GENRES
}
FALLBACK_GROUP = 2  # genre group of names outside GENRES
NO_GENRE = ("", "(no genres listed)")  # spelled "unknown" in the output
AGE_DOMAINS = ("age<25", "age25-34", "age>=35")
AGE_DOMAIN_CUTS = np.array([25, 35])
AGE_BUCKET_EDGES = np.array([18, 25, 35, 45, 50, 56])  # ml-1m's bins
AGE_BUCKETS = ("<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+")
ML1M_AGE_CODES = (1, 18, 25, 35, 45, 50, 56)
MAX_AGE = 120
DECADE_EDGES = np.arange(1930, 2011, 10)  # bucket 0 = unknown, 1 = < 1930, ..., 10 = >= 2010
ACTIVITY_EDGES = np.array([1, 5, 20, 50, 100, 200])  # earlier ratings: 0, 1-4, ..., 200+
MAX_RATING = 5.0
CHUNK_ROWS = 262_144  # rows per history / write chunk (bounds the peak memory of long histories)


@dataclass(kw_only=True)
class Options(OutputOptions):
    src: Path = field(
        metadata=doc(
            "ml-100k or ml-1m folder or .zip, a RecBole atomic folder or .inter file, or the recbole wheel (.whl)"
        )
    )
    domains: Literal["age", "genre"] = field(
        default="age", metadata=doc("age: user age groups <25 / 25-34 / >=35; genre: group of the item's first genre")
    )
    positive_rating: float = field(
        default=4.0, metadata=bounds(gt=0, le=MAX_RATING, help="click = 1 when rating >= this")
    )
    history: Literal["all", "positives"] = field(
        default="all", metadata=doc("behaviours in hist_*: all earlier rated items, or only earlier positives")
    )
    max_length: int = field(default=50, metadata=bounds(ge=1, help="most recent behaviours kept per row"))
    split_fractions: list[float] = field(
        default_factory=lambda: [0.8, 0.1, 0.1],
        metadata=bounds(ge=0, help="train / valid / test shares of rows (one global time cut)"),
    )

    def validate(self) -> None:
        if len(self.split_fractions) != 3 or abs(sum(self.split_fractions) - 1) > 1e-6:
            raise ConfigError(f"split_fractions {self.split_fractions} must be three shares summing to 1")
