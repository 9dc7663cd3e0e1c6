"""The text ``mdr plan`` prints for a :class:`~torchrec_mdr.training.cluster_plan.ClusterPlan`."""

from __future__ import annotations

from torchrec_mdr.training.cluster import GB
from torchrec_mdr.training.cluster_plan import ClusterPlan, RankUse

COLLECTIONS = {
    "embedding_bag_collection": "EBC",
    "embedding_collection": "EC",
    "sequence_bag_collection": "EBC-seq",
    "managed_embedding_bag_collection": "MC-EBC",
    "managed_embedding_collection": "MC-EC",
}


def rank_ranges(ranks: list[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0-2,5,7-8"``."""
    parts: list[str] = []
    start = prev = None
    for r in sorted(ranks) + [None]:
        if r is not None and prev is not None and r == prev + 1:
            prev = r
            continue
        if start is not None:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = r
    return ",".join(parts)


def _grouped(ranks: list[RankUse]) -> list[tuple[list[int], RankUse]]:
    """Consecutive ranks whose use rounds to the same figures, as one row."""
    groups: list[tuple[list[int], RankUse]] = []
    key = None
    for use in ranks:
        this = (f"{use.hbm / GB:.1f}", f"{use.ddr / GB:.1f}", f"{use.perf_ms:.2f}")  # as printed
        if groups and this == key:
            groups[-1][0].append(use.rank)
        else:
            groups.append(([use.rank], use))
            key = this
    return groups


def format_plan(plan: ClusterPlan, header: str) -> str:
    """The per-table plan, the per-rank use, the reservation and the verdict."""
    lines = [header, ""]
    if plan.tables:
        lines.append(
            f"{'table':<16}{'coll.':<8}{'rows':>15}{'dim':>5}  {'sharding':<18}{'kernel':<19}"
            f"{'ranks':<12}{'HBM GiB':>10}{'DDR GiB':>10}{'perf ms':>9}"
        )
        for t in sorted(plan.tables, key=lambda t: -t.rows * t.dim):
            collection = COLLECTIONS.get(t.collection.rsplit(".", 1)[-1], t.collection)
            lines.append(
                f"{t.name:<16}{collection:<8}{t.rows:>15,}{t.dim:>5}  {t.sharding_type:<18}"
                f"{t.compute_kernel:<19}{rank_ranges(t.ranks):<12}{t.hbm / GB:>10,.2f}{t.ddr / GB:>10,.2f}"
                f"{t.perf_ms:>9.2f}"
            )
        lines += [
            "(HBM / DDR: the table's shards together; perf: the planner's estimate for its slowest shard, "
            "forward and backward lookups and their communication per batch)",
            "",
            "per rank (consecutive ranks with the same use share a row): tables' memory and the planner's "
            "estimate per batch",
            f"{'ranks':<12}{'HBM GiB':>10}{'DDR GiB':>10}{'perf ms':>10}",
        ]
        for ranks, use in _grouped(plan.ranks):
            lines.append(f"{rank_ranges(ranks):<12}{use.hbm / GB:>10,.1f}{use.ddr / GB:>10,.1f}{use.perf_ms:>10.2f}")
        tier = "HBM" if plan.cluster.device == "cuda" else "DDR"
        lines.append(
            f"left for tables per rank after the planner's reservation (15% of {tier}, dense parameters "
            f"{plan.reserved_dense / GB:,.2f} GiB, input buffers {plan.reserved_inputs / GB:,.2f} GiB): "
            f"HBM {plan.hbm_for_tables / GB:,.2f} GiB, DDR {plan.ddr_for_tables / GB:,.2f} GiB"
        )
        lines.append("")
    else:
        lines.append(f"{'table':<16}{'rows':>15}{'dim':>5}")
        for name, (rows, dim) in sorted(plan.table_sizes.items(), key=lambda kv: -kv[1][0] * kv[1][1]):
            mark = "  <- breaks the plan" if name == plan.breaking_table else ""
            lines.append(f"{name:<16}{rows:>15,}{dim:>5}{mark}")
        lines.append("")
    lines.append(f"verdict: {plan.verdict}")
    return "\n".join(lines)
