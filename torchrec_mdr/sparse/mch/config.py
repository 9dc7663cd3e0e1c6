"""The ``[sparse.eviction]`` configuration section: which tables are managed and how they evict.

It lives beside the managed-collision code that reads it (:mod:`torchrec_mdr.sparse.mch.eviction`)
and depends only on :mod:`torchrec_mdr.config`, so that the sparse arch, the MCH modules and the
experiment config can all import it without importing one another.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from torchrec_mdr.config import bounds, doc

EvictionPolicy = Literal["lfu", "lru", "distance_lfu"]


@dataclass
class EvictionConfig:
    """Managed collision with low-frequency eviction (torchrec MCHManagedCollisionModule)."""

    tables: list[str] = field(default_factory=list, metadata=doc("tables to manage (empty: none)"))
    policy: EvictionPolicy = field(default="lfu", metadata=doc("which ids lose their slot at eviction"))
    zch_size: int = field(default=100_000, metadata=bounds(ge=1, help="rows kept per managed table"))
    eviction_interval: int = field(default=1000, metadata=bounds(ge=1, help="training steps between evictions"))
    input_hash_size: int = field(default=2**40, metadata=bounds(ge=1, help="raw ids are hashed into this range"))
