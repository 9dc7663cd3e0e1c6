"""The ``[sparse]`` configuration section: how tables are sharded and which are managed.

:class:`~torchrec_mdr.experiment.ExperimentConfig` composes it; the sharding code
(:mod:`torchrec_mdr.training.sharding`) and the sparse arch read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from torchrec_mdr.config import doc
from torchrec_mdr.sparse.mch.config import EvictionConfig

ShardingType = Literal["auto", "table_wise", "row_wise", "column_wise", "data_parallel"]


@dataclass
class SparseConfig:
    sharding: ShardingType = field(default="auto", metadata=doc("auto = the torchrec planner"))
    eviction: EvictionConfig = field(default_factory=EvictionConfig)
