"""Launchers: the torchx component's AppDef, slurm / kubernetes dryruns, and real 2-process local runs
(torchx local_cwd and plain torchrun) that train on a tiny synthetic dataset and write metrics.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import tiny_synthetic
from launchers.components import set_overrides, train

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the virtualenv's bin: torchx, torchrun
LIMIT_S = 300


def cli_env() -> dict[str, str]:
    """torchx's local_cwd shells out to `torchrun`: the virtualenv's bin must be on PATH."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def torchx(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "torchx"), *args], cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=LIMIT_S
    )


# --------------------------------------------------------------------------- the AppDef


def test_appdef_runs_mdr_train_under_torchrun():
    app = train(
        "data.batch_size=512",
        "--set=model.name=dnn",
        "--set",
        "train.max_steps=10",
        config="configs/quickstart.toml",
        out="runs/x",
        nnodes=3,
        nproc_per_node=4,
        cpu=16,
        memMB=32000,
    )
    (role,) = app.roles
    assert app.name == "train" and role.name == "trainer"
    assert role.num_replicas == 3 and role.min_replicas == 3
    assert role.entrypoint == "bash" and role.args[0] == "-c"
    command = role.args[1]
    assert command.startswith("torchrun --rdzv_backend c10d --rdzv_endpoint ")
    assert "--nnodes 3 --nproc_per_node 4" in command
    assert command.endswith(
        "-m torchrec_mdr train --config configs/quickstart.toml --out runs/x "
        "--set data.batch_size=512 --set model.name=dnn --set train.max_steps=10"
    )
    assert (role.resource.cpu, role.resource.gpu, role.resource.memMB) == (16, 0, 32000)
    assert role.env["OMP_NUM_THREADS"] == "4"  # 16 CPUs shared by 4 processes
    assert role.port_map == {"c10d": 29500}
    single = train(out="runs/y", env={"OMP_NUM_THREADS": "7"})
    assert "--rdzv_endpoint localhost:0" in single.roles[0].args[1]  # one node: a free port
    assert "--config" not in single.roles[0].args[1] and single.roles[0].env["OMP_NUM_THREADS"] == "7"


def test_appdef_rejects_bad_arguments():
    with pytest.raises(ValueError, match="must be config overrides of mdr train .* got '--epochs'"):
        train("--epochs", "3")
    with pytest.raises(ValueError, match="must look like key=value"):
        set_overrides(["--set", "model.name"])
    with pytest.raises(ValueError, match=r"nproc_per_node \(8\) exceeds gpu \(4\)"):
        train(nproc_per_node=8, gpu=4)
    assert set_overrides(["a=1", "--set=b.c=[1, 2]", "--set", "d=x"]) == [
        "--set",
        "a=1",
        "--set",
        "b.c=[1, 2]",
        "--set",
        "d=x",
    ]


# --------------------------------------------------------------------------- dryruns


GPU_JOB = [
    "launchers/components.py:train",
    "--nnodes",
    "2",
    "--nproc_per_node",
    "8",
    "--gpu",
    "8",
    "--cpu",
    "64",
    "--memMB",
    "400000",
    "--config",
    "configs/quickstart.toml",
    "--out",
    "/shared/runs/x",
    "--",
    "model.name=dlrm",
    "data.batch_size=4096",
]
TRAIN_CMD = (
    "-m torchrec_mdr train --config configs/quickstart.toml --out /shared/runs/x "
    "--set model.name=dlrm --set data.batch_size=4096"
)


def test_slurm_dryrun():
    result = torchx("run", "--dryrun", "-s", "slurm", "-cfg", "partition=gpu,time=02:00:00", *GPU_JOB)
    assert result.returncode == 0, result.stderr[-3000:]
    script = result.stdout.split("=== SCHEDULER REQUEST ===", 1)[1]
    header = (
        "--requeue --partition=gpu --time=02:00:00 --ntasks-per-node=1 --cpus-per-task=64 --mem=400000 "
        "--gpus-per-task=8"
    )
    assert f"#SBATCH --job-name=trainer-0 {header}" in script
    assert "#SBATCH hetjob" in script and f"#SBATCH --job-name=trainer-1 {header}" in script
    launches = [line for line in script.splitlines() if "torchrun" in line]
    assert len(launches) == 2  # one srun group per node
    for line in launches:
        assert "--rdzv_endpoint ${SLURM_JOB_NODELIST_HET_GROUP_0:=localhost}:29500" in line
        assert "--nnodes 2 --nproc_per_node 8" in line and TRAIN_CMD in line
        assert "OMP_NUM_THREADS=8" in line


def test_kubernetes_dryrun():
    pytest.importorskip("kubernetes", reason="torchx's kubernetes dryrun needs the kubernetes client package")
    # queue comes from the repository's .torchxconfig; its empty workspace means no docker build
    result = torchx(
        "run",
        "--dryrun",
        "-s",
        "kubernetes",
        "-cfg",
        "namespace=recsys",
        GPU_JOB[0],
        "--image",
        "registry.example/torchrec-mdr:0.1.0",
        *GPU_JOB[1:],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    job = yaml.safe_load(result.stdout.split("=== SCHEDULER REQUEST ===", 1)[1])
    assert job["kind"] == "Job" and job["apiVersion"] == "batch.volcano.sh/v1alpha1"
    assert job["spec"]["queue"] == "default" and job["spec"]["schedulerName"] == "volcano"
    tasks = job["spec"]["tasks"]
    assert [t["name"] for t in tasks] == ["trainer-0", "trainer-1"]
    for i, task in enumerate(tasks):
        (container,) = task["template"]["spec"]["containers"]
        assert container["image"] == "registry.example/torchrec-mdr:0.1.0"
        assert container["resources"]["limits"] == {"cpu": "64000m", "memory": "400000M", "nvidia.com/gpu": "8"}
        assert container["command"][:2] == ["bash", "-c"]
        command = container["command"][2]
        assert "--nnodes 2 --nproc_per_node 8" in command and TRAIN_CMD in command
        rank0 = "TORCHX_RANK0_HOST" if i == 0 else "VC_TRAINER_0_HOSTS"
        assert f"--rdzv_endpoint ${{{rank0}:=localhost}}:29500" in command
        assert {"name": "OMP_NUM_THREADS", "value": "8"} in container["env"]
        assert container["ports"] == [{"containerPort": 29500, "name": "c10d"}]


# --------------------------------------------------------------------------- real local runs (2 processes, gloo)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return tiny_synthetic(tmp_path_factory.mktemp("launch") / "syn")


STEPS, BATCH = 4, 64


def check_two_rank_run(out: Path, model: str) -> None:
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == model and metrics["train"]["steps"] == STEPS
    assert metrics["rows"] == 300  # the whole test split, evaluated across both ranks
    train = metrics["train"]
    # samples counted over the world: steps x batch x 2 ranks
    assert round(train["samples_per_sec"] * train["wall_sec"]) == STEPS * BATCH * 2
    assert json.loads((out / "config.json").read_text())["model"]["name"] == model
    # every rank wrote its own part of the final checkpoint: two processes really trained
    final = out / "checkpoints" / f"step-{STEPS:06d}"
    assert (final / "rank0.pt").is_file() and (final / "rank1.pt").is_file()


def test_torchx_local_cwd_two_processes(synthetic, tmp_path):
    out = tmp_path / "run"
    result = torchx(
        "run",
        "-s",
        "local_cwd",
        "-cfg",
        f"log_dir={tmp_path / 'logs'}",
        "launchers/components.py:train",
        "--nnodes",
        "1",
        "--nproc_per_node",
        "2",
        "--config",
        "configs/quickstart.toml",
        "--out",
        str(out),
        "--",
        f"data.path={synthetic}",
        f"data.batch_size={BATCH}",
        f"train.max_steps={STEPS}",
        "model.name=dnn",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    check_two_rank_run(out, "dnn")


def test_torchrun_two_processes(synthetic, tmp_path):
    out = tmp_path / "run"
    result = subprocess.run(
        [
            str(BIN / "torchrun"),
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "torchrec_mdr",
            "train",
            "--config",
            "configs/quickstart.toml",
            "--out",
            str(out),
            "--set",
            f"data.path={synthetic}",
            "--set",
            f"data.batch_size={BATCH}",
            "--set",
            f"train.max_steps={STEPS}",
            "--set",
            "model.name=dlrm",
        ],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=LIMIT_S,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    check_two_rank_run(out, "dlrm")
