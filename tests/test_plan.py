"""`mdr plan`: torchrec's planner for a hypothetical cluster, on small topologies and the shipped ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from torchrec_mdr.cli import main
from torchrec_mdr.config import ConfigError, load_config
from torchrec_mdr.data.spec import DatasetSpec
from torchrec_mdr.experiment import ExperimentConfig
from torchrec_mdr.training.cluster import GB, ClusterConfig, parse_table_rows, scale_tables
from torchrec_mdr.training.cluster_plan import plan_cluster, pooling_factors
from torchrec_mdr.training.plan_report import rank_ranges

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.toml"


@pytest.fixture(scope="module")
def spec_dir(tmp_path_factory) -> Path:
    """A tiny synthetic dataset: only its spec matters (tables user, item, ... and a 50-long history)."""
    out = tmp_path_factory.mktemp("plan") / "syn"
    assert (
        main(
            [
                "data",
                "synthetic",
                "--out",
                str(out),
                "--rows",
                "600",
                "--users",
                "50",
                "--items",
                "300",
                "--categories",
                "10",
                "--domains",
                "3",
            ]
        )
        == 0
    )
    return out


def experiment(*overrides: str) -> ExperimentConfig:
    return load_config(ExperimentConfig, QUICKSTART, ["model.embedding_dim=64", *overrides])


def small_cluster(world_size: int = 2, hbm_gb: float = 1.0, ddr_gb: float = 0.0) -> ClusterConfig:
    return ClusterConfig(world_size=world_size, local_world_size=min(world_size, 2), hbm_gb=hbm_gb, ddr_gb=ddr_gb)


@pytest.mark.parametrize("world_size", [2, 4])
def test_plan_fits_small_topology(spec_dir, world_size):
    spec = DatasetSpec.load(spec_dir)
    plan = plan_cluster(experiment(), spec, small_cluster(world_size))
    assert plan.fits and plan.breaking_table is None and plan.verdict.startswith("FITS")
    assert sorted(t.name for t in plan.tables) == sorted(spec.tables)
    for table in plan.tables:
        assert table.sharding_type != "data_parallel"  # as the trainer's planner: every table keeps the fused optimizer
        assert table.compute_kernel.startswith("fused") and table.ranks
        assert all(0 <= r < world_size for r in table.ranks)
        assert (table.rows, table.dim) == (spec.tables[table.name], 64)
    assert len(plan.ranks) == world_size
    assert sum(r.hbm for r in plan.ranks) == sum(t.hbm for t in plan.tables)
    assert all(r.hbm <= plan.hbm_for_tables for r in plan.ranks)
    assert 0 < plan.hbm_for_tables < 0.85 * GB + 1  # 15% and the dense and input buffers are reserved


def test_table_that_cannot_fit_alone_is_named(spec_dir):
    spec = scale_tables(DatasetSpec.load(spec_dir), {"item": 20_000_000})  # ~5 GiB, the cluster ~1.6 GiB
    plan = plan_cluster(experiment(), spec, small_cluster())
    assert not plan.fits and plan.breaking_table == "item" and not plan.tables
    assert "DOES NOT FIT" in plan.verdict and "table 'item' (20,000,000 x 64) does not fit even alone" in plan.verdict
    assert "GiB of HBM (fused)" in plan.verdict


def test_table_whose_addition_breaks_the_plan_is_named(spec_dir):
    """user (4M rows) fits alone in 2 x 1 GiB, and so does item (3M), not both: item, planned second, breaks it."""
    spec = scale_tables(DatasetSpec.load(spec_dir), {"user": 4_000_000, "item": 3_000_000})
    plan = plan_cluster(experiment(), spec, small_cluster())
    assert not plan.fits and plan.breaking_table == "item"
    assert "planned largest first, user fit and adding 'item' does not" in plan.verdict


def test_host_memory_lets_a_large_table_fit_with_uvm_caching(spec_dir):
    spec = scale_tables(DatasetSpec.load(spec_dir), {"item": 8_000_000})
    plan = plan_cluster(experiment(), spec, small_cluster(ddr_gb=8))
    item = next(t for t in plan.tables if t.name == "item")
    assert plan.fits and item.compute_kernel in ("fused_uvm_caching", "fused_uvm") and item.ddr > 0
    assert "in host memory" in plan.verdict


def test_plan_follows_the_config(spec_dir):
    spec = DatasetSpec.load(spec_dir)
    table_wise = plan_cluster(experiment("sparse.sharding=table_wise"), spec, small_cluster(4))
    assert {t.sharding_type for t in table_wise.tables} == {"table_wise"}
    managed = plan_cluster(
        experiment("sparse.eviction.tables=[item]", "sparse.eviction.zch_size=1000"), spec, small_cluster(4)
    )
    item = next(t for t in managed.tables if t.name == "item")
    assert (item.rows, item.sharding_type, item.compute_kernel) == (1000, "row_wise", "fused")
    assert item.collection.endswith("managed_embedding_collection") and item.ranks == [0, 1, 2, 3]


def test_pooling_factors_come_from_the_spec(spec_dir):
    spec = DatasetSpec.load(spec_dir)
    factors = pooling_factors(spec)
    assert factors["hist_item_id"] == spec.column("hist_item_id").max_length == 50
    assert factors["user_id"] == 1.0


def test_table_rows_parsing():
    assert parse_table_rows(["item=1e9", "user=250000"]) == {"item": 1_000_000_000, "user": 250_000}
    for bad in ["item", "item=x", "item=0", "item=1.5", "=5"]:
        with pytest.raises(ConfigError, match="TABLE=ROWS"):
            parse_table_rows([bad])


def test_rank_ranges():
    assert rank_ranges([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    assert rank_ranges([3]) == "3"


def test_cli_plan_prints_tables_and_exits_1_when_it_does_not_fit(spec_dir, capsys):
    args = [
        "plan",
        "--config",
        str(QUICKSTART),
        "--set",
        "model.embedding_dim=64",
        "--spec",
        str(spec_dir),
        "--world-size",
        "2",
        "--local-world-size",
        "2",
        "--hbm-gb",
        "1",
        "--ddr-gb",
        "0",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "cluster 2 x cuda (1 host(s) of 2), HBM 1 GiB + DDR 0 GiB per rank" in out
    assert "hist_domain" in out and "verdict: FITS" in out
    assert main(args + ["--table-rows", "item=2e7"]) == 1
    captured = capsys.readouterr()
    assert captured.err == "" and "Traceback" not in captured.out
    assert "<- breaks the plan" in captured.out and "verdict: DOES NOT FIT" in captured.out
    assert main(args + ["--table-rows", "items=5"]) == 2
    assert "no embedding table 'items'" in capsys.readouterr().err
    assert main(args + ["--world-size", "3"]) == 2
    assert "world_size 3 is not a multiple of local_world_size 2" in capsys.readouterr().err


@pytest.mark.parametrize("name, world_size", [("8xa100", 8), ("64xa100", 64)])
def test_shipped_clusters_plan_the_paper_scale(spec_dir, capsys, name, world_size):
    """The example clusters hold the ADS paper's scale: billion-row item and user tables, dimension 64."""
    path = ROOT / "configs" / "clusters" / f"{name}.toml"
    cluster = load_config(ClusterConfig, path)
    assert (cluster.world_size, cluster.local_world_size, cluster.device, cluster.hbm_gb) == (world_size, 8, "cuda", 80)
    assert (
        main(
            [
                "plan",
                "--config",
                str(QUICKSTART),
                "--set",
                "model.embedding_dim=64",
                "--spec",
                str(spec_dir),
                "--table-rows",
                "item=1e9",
                "user=1e9",
                "--cluster",
                str(path),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith(("item ", "user "))}
    assert rows["item"][1:4] == ["EC", "1,000,000,000", "64"] and rows["user"][1:4] == ["EBC", "1,000,000,000", "64"]
    assert all(row[5].startswith("fused") for row in rows.values()) and "verdict: FITS" in out


def test_no_placement_at_all_is_one_config_error(spec_dir):
    """On a CPU cluster torchrec's planner has no sharding for a managed-collision EBC (torchrec #2958)."""
    config = experiment("sparse.eviction.tables=[user]", "sparse.eviction.zch_size=1000")
    cluster = ClusterConfig(world_size=2, local_world_size=2, device="cpu", ddr_gb=4)
    with pytest.raises(
        ConfigError,
        match=r"offers table 'user' \(ManagedCollisionEmbeddingBagCollection\) no "
        r"sharding type and kernel on cpu .*plan with --device cuda",
    ):
        plan_cluster(config, DatasetSpec.load(spec_dir), cluster)


def test_retrieval_config_plans_its_towers_tables(spec_dir):
    config = load_config(ExperimentConfig, ROOT / "configs" / "retrieval.toml")
    spec = DatasetSpec.load(spec_dir)
    plan = plan_cluster(config, spec, small_cluster(2))
    assert plan.fits and sorted(t.name for t in plan.tables) == sorted(spec.tables)
