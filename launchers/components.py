"""torchx components: ``mdr train`` under torchrun on ``nnodes`` x ``nproc_per_node`` processes.

    torchx run -s local_cwd launchers/components.py:train --nnodes 1 --nproc_per_node 2 \\
        --config configs/quickstart.toml --out runs/x -- model.name=dnn data.batch_size=512
    torchx run -s slurm -cfg partition=gpu,time=02:00:00 launchers/components.py:train \\
        --nnodes 2 --nproc_per_node 8 --gpu 8 --cpu 64 --memMB 400000 --config configs/quickstart.toml --out runs/x
    torchx run -s kubernetes -cfg queue=default,namespace=recsys launchers/components.py:train \\
        --image REGISTRY/torchrec-mdr:0.1.0 --nnodes 4 --nproc_per_node 8 --gpu 8 --config ... --out /mnt/runs/x

The AppDef is torchx's :func:`torchx.components.dist.ddp` (one role, ``nnodes`` replicas, c10d
rendezvous on the first node) running ``torchrun ... -m torchrec_mdr train --config C --out O
[--set K=V ...]``; every process is one rank of the Trainer, which picks nccl when it sees a GPU and
gloo otherwise. Everything after ``--`` on the torchx command line is a config override for
``mdr train``: ``KEY=VALUE`` (or ``--set=KEY=VALUE``; torchx rejects a repeated ``--set KEY=VALUE``
option), checked here so that a malformed one fails before anything is scheduled.

local_cwd runs in the current directory and shells out to ``torchrun``: run it from the repository
root with the virtualenv's ``bin`` on PATH. On slurm the command runs in the submission directory
(a shared filesystem with the same virtualenv); on kubernetes ``image`` must have this package
installed. See ``launchers/README.md``.
"""

# No `from __future__ import annotations` and typing.Optional / Dict / List: torchx 0.7 reads the
# component's annotations at run time and understands these forms.
from typing import Dict, List, Optional

import torchx.specs as specs
from torchx.components import dist

from torchrec_mdr.config import ConfigError, parse_override

DEFAULT_IMAGE = "torchrec-mdr:latest"
ROLE_NAME = "trainer"


def set_overrides(args: tuple[str, ...] | list[str]) -> list[str]:
    """Normalise config overrides to ``["--set", "KEY=VALUE", ...]`` for ``mdr train``.

    Accepted forms: ``KEY=VALUE``, ``--set=KEY=VALUE`` and ``--set KEY=VALUE``. (torchx's CLI rejects
    an option repeated after ``--``, so several overrides are given as ``KEY=VALUE`` or
    ``--set=KEY=VALUE``.) Raises ValueError naming the first argument that is none of them.
    """
    normalised: list[str] = []
    items = list(args)
    i = 0
    while i < len(items):
        arg = items[i]
        if arg == "--set" and i + 1 < len(items):
            override, i = items[i + 1], i + 2
        elif arg.startswith("--set="):
            override, i = arg[len("--set=") :], i + 1
        elif not arg.startswith("-") and "=" in arg:
            override, i = arg, i + 1
        else:
            raise ValueError(
                f"arguments after '--' must be config overrides of mdr train (KEY=VALUE, "
                f"--set=KEY=VALUE or --set KEY=VALUE); got {arg!r}"
            )
        try:
            parse_override(override)
        except ConfigError as error:
            raise ValueError(str(error)) from None
        normalised += ["--set", override]
    return normalised


def train(
    *overrides: str,
    config: Optional[str] = None,
    out: str = "runs/torchx",
    nnodes: int = 1,
    nproc_per_node: int = 2,
    name: str = "mdr/train",
    image: str = DEFAULT_IMAGE,
    cpu: int = 2,
    gpu: int = 0,
    memMB: int = 8192,
    h: Optional[str] = None,
    env: Optional[Dict[str, str]] = None,
    max_retries: int = 0,
    rdzv_port: int = 29500,
    mounts: Optional[List[str]] = None,
    debug: bool = False,
) -> specs.AppDef:
    """Train a registered model with ``mdr train`` on nnodes x nproc_per_node processes (torchrun).

    Args:
        overrides: config overrides for ``mdr train`` after ``--``: KEY=VALUE or --set=KEY=VALUE
        config: TOML/YAML experiment config, relative to the job's working directory
        out: run directory (config.json, metrics.json, tensorboard, checkpoints); shared by all nodes
        nnodes: number of nodes (scheduler replicas)
        nproc_per_node: trainer processes per node (on GPU nodes at most ``gpu``: one GPU per process)
        name: job name, ``{experiment}/{run}``
        image: container image with torchrec-mdr installed (kubernetes); ignored by local_cwd
        cpu: CPUs per node
        gpu: GPUs per node
        memMB: memory per node in MB
        h: a registered named resource (takes precedence over cpu, gpu, memMB)
        env: extra environment variables (e.g. NCCL_DEBUG=INFO)
        max_retries: scheduler retries of the whole job
        rdzv_port: port of the c10d rendezvous store on the first node (multi-node only)
        mounts: mounts, e.g. type=bind,src=/data,dst=/data[,readonly] (slurm ignores them)
        debug: enable torch's distributed debug flags

    Returns:
        specs.AppDef: one role ``trainer`` with ``nnodes`` replicas running torchrun.
    """
    if nnodes < 1 or nproc_per_node < 1:
        raise ValueError(f"nnodes ({nnodes}) and nproc_per_node ({nproc_per_node}) must be at least 1")
    if gpu > 0 and nproc_per_node > gpu:
        raise ValueError(f"nproc_per_node ({nproc_per_node}) exceeds gpu ({gpu}): each process needs its own GPU")
    train_args = ["train"]
    if config is not None:
        train_args += ["--config", config]
    train_args += ["--out", out, *set_overrides(overrides)]
    env = dict(env or {})
    # torchrun sets 1 thread per process; share the node's CPUs instead (unless the caller chose).
    env.setdefault("OMP_NUM_THREADS", str(max(cpu // nproc_per_node, 1)))
    app = dist.ddp(
        *train_args,
        m="torchrec_mdr",
        image=image,
        name=name,
        h=h,
        cpu=cpu,
        gpu=gpu,
        memMB=memMB,
        j=f"{nnodes}x{nproc_per_node}",
        env=env,
        max_retries=max_retries,
        rdzv_port=rdzv_port,
        mounts=mounts,
        debug=debug,
    )
    app.roles[0].name = ROLE_NAME
    return app
