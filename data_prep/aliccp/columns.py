"""The output column specs and domain names, the same for both inputs."""

from __future__ import annotations

from data_prep.aliccp.options import DENSE_FIELDS, FIELD_MEANING, MULTI_FIELDS, SINGLE_FIELDS
from torchrec_mdr.data.spec import ColumnKind, ColumnSpec, OovPolicy


def output_columns(multi_kind: ColumnKind, cardinalities: dict[str, int] | None) -> list[ColumnSpec]:
    """The output columns (the same names for both inputs)."""
    oov: OovPolicy = "reject"
    card = cardinalities or {}
    columns = [
        ColumnSpec("click", "label", description="clicked"),
        ColumnSpec("purchase", "label", description="bought (the source's 'buy' / 'purchase')"),
        ColumnSpec("domain", "domain", description="scenario from field 301"),
        ColumnSpec("group_id", "group", description="user (field 101) for GAUC"),
    ]
    for f in SINGLE_FIELDS:
        columns.append(
            ColumnSpec(f"f{f}", "id", cardinality=card.get(f), oov=oov, description=f"field {f}: {FIELD_MEANING[f]}")
        )
    for f in MULTI_FIELDS:
        columns.append(
            ColumnSpec(
                f"f{f}", multi_kind, cardinality=card.get(f), oov=oov, description=f"field {f}: {FIELD_MEANING[f]}"
            )
        )
    for f in DENSE_FIELDS:
        columns.append(ColumnSpec(f"D{f}", "dense", description=f"field {f}: value (sum of the entries' values)"))
    return columns


def domain_names(count: int) -> list[str]:
    return [f"scenario{k + 1}" for k in range(count)]
