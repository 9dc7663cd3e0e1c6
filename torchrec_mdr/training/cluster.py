"""A hypothetical cluster for ``mdr plan``, and the dataset spec scaled up to production table sizes.

A cluster is a small TOML file (``configs/clusters/*.toml``) of :class:`ClusterConfig` keys; every
key can also be given (or overridden) on the command line (``--world-size 64 --hbm-gb 80``).
Sizes are per rank (one GPU): ``hbm_gb`` is its memory, ``ddr_gb`` the host memory it may use
(the host's memory divided by its GPUs). Bandwidths left out take torchrec's planner defaults.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal

from torchrec_mdr.config import ConfigError, bounds, doc
from torchrec_mdr.data.spec import EMBEDDED_KINDS, DatasetSpec

GB = 1024**3


@dataclass
class ClusterConfig:
    """The machines a plan is made for (sizes per rank, i.e. per GPU)."""

    name: str = field(default="", metadata=doc("what the cluster is (printed with the plan)"))
    world_size: int = field(default=8, metadata=bounds(ge=1, help="ranks (GPUs) in all"))
    local_world_size: int = field(default=8, metadata=bounds(ge=1, help="ranks per host"))
    device: Literal["cuda", "cpu"] = field(default="cuda", metadata=doc("compute device of every rank"))
    hbm_gb: float = field(default=80.0, metadata=bounds(gt=0, help="GPU memory per rank, GiB"))
    ddr_gb: float = field(default=128.0, metadata=bounds(ge=0, help="host memory per rank, GiB"))
    batch_size: int | None = field(
        default=None, metadata=bounds(ge=1, help="batch per rank (default: the config's data.batch_size)")
    )
    hbm_bw_gbps: float | None = field(default=None, metadata=bounds(gt=0, help="GPU memory bandwidth, GB/s"))
    ddr_bw_gbps: float | None = field(default=None, metadata=bounds(gt=0, help="host memory bandwidth per rank, GB/s"))
    intra_host_bw_gbps: float | None = field(
        default=None, metadata=bounds(gt=0, help="bandwidth between the ranks of one host, GB/s")
    )
    inter_host_bw_gbps: float | None = field(
        default=None, metadata=bounds(gt=0, help="network bandwidth per rank between hosts, GB/s")
    )

    def validate(self) -> None:
        if self.world_size % self.local_world_size:
            raise ConfigError(
                f"world_size {self.world_size} is not a multiple of local_world_size {self.local_world_size}"
            )

    @property
    def hosts(self) -> int:
        return self.world_size // self.local_world_size

    def describe(self) -> str:
        memory = f"HBM {self.hbm_gb:g} GiB" if self.device == "cuda" else "no HBM"
        title = f"{self.name}: " if self.name else ""
        return (
            f"{title}{self.world_size} x {self.device} ({self.hosts} host(s) of {self.local_world_size}), "
            f"{memory} + DDR {self.ddr_gb:g} GiB per rank"
        )


def parse_table_rows(items: list[str]) -> dict[str, int]:
    """``["item=1e9", "user=2.5e8"]`` -> ``{"item": 1_000_000_000, "user": 250_000_000}``."""
    rows = {}
    for text in items:
        name, _, value = text.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not name or not math.isfinite(number) or number < 1 or number != int(number):
            raise ConfigError(
                f"--table-rows {text!r}: expected TABLE=ROWS with a whole number of rows >= 1, e.g. item=1e9"
            )
        rows[name] = int(number)
    return rows


def scale_tables(spec: DatasetSpec, rows: dict[str, int]) -> DatasetSpec:
    """The spec with the given tables resized (every column naming a table gets its new size)."""
    tables = spec.tables
    unknown = sorted(set(rows) - set(tables))
    if unknown:
        raise ConfigError(
            f"--table-rows: the dataset spec has no embedding table {unknown[0]!r} (its tables: {', '.join(tables)})"
        )
    columns = [
        dataclasses.replace(c, cardinality=rows[c.table_name])
        if c.kind in EMBEDDED_KINDS and c.table_name in rows
        else c
        for c in spec.columns
    ]
    return dataclasses.replace(spec, columns=columns)
