"""A finished run opened for evaluation: ``mdr eval`` (:func:`evaluate_run`), and the pieces that
``mdr predict`` and ``mdr export`` share with it — the run's config (:func:`run_config`) and one of its
checkpoints loaded into an evaluation-only Trainer after the identity check (:func:`load_for_evaluation`).

It sits above both the Trainer and the checkpoint files, so neither has to import the other's caller.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from torchrec_mdr.config import load_config
from torchrec_mdr.errors import TrainingError
from torchrec_mdr.experiment import ExperimentConfig
from torchrec_mdr.training.checkpoint import CheckpointInfo, check_identity
from torchrec_mdr.training.trainer import Trainer, format_table


def run_config(run_dir: Path) -> ExperimentConfig:
    """The typed config of a run directory (its ``config.json``); a clear error when it is not one."""
    config_file = run_dir / "config.json"
    if not config_file.is_file():
        raise TrainingError(f"{run_dir} is not a run directory: {config_file} does not exist")
    return load_config(ExperimentConfig, config_file)


def load_for_evaluation(trainer: Trainer, checkpoint: str) -> CheckpointInfo:
    """Resolve ``checkpoint`` (latest, best, step-N) of the trainer's run, check that it was written for
    this model, managed-collision config and dataset, and load its weights (no optimizer, no RNG)."""
    info = trainer.checkpoints.resolve(checkpoint)
    best = trainer.checkpoints.best() if checkpoint == "latest" else None
    if best is not None and best.step != info.step and trainer.ctx.is_main:
        print(f"note: {checkpoint} is step {info.step}; this run's best evaluation (early stopping, the weights its "
              f"metrics.json reports) is step {best.step}: pass --checkpoint best to use it")
    check_identity(info.record.get("identity", {}), trainer.identity, info.path,
                   parts=("model", "eviction", "dataset"))
    trainer.checkpoints.load(info.path, trainer.model, optimizer=None, restore_rng=False)
    return info


def evaluate_run(run_dir: str | Path, data: str | Path | None = None, split: str = "test",
                 checkpoint: str = "latest") -> dict[str, Any]:
    """Evaluate a checkpoint of a run on ``split`` (``mdr eval``).

    ``checkpoint``: ``latest`` (the default), ``best`` (the best evaluation of early stopping, whose
    weights a run with ``train.early_stopping`` reports in its metrics.json) or ``step-N``.
    The run's ``config.json`` is loaded through the typed config system; ``data`` replaces its
    ``data.path`` by another prepared dataset, which must have the checkpoint's spec fingerprint.
    Works at any world size (DCP reshards the tables; managed-collision tables through
    :mod:`torchrec_mdr.sparse.mch.reshard`). Prints the per-domain table, writes
    ``RUN_DIR/eval-<split>.json`` (``eval-<split>-<checkpoint>.json`` for another checkpoint than
    ``latest``) and returns those metrics.
    """
    run_dir = Path(run_dir)
    config = run_config(run_dir)
    if data is not None:
        config = replace(config, data=replace(config.data, path=Path(data)))
    trainer = Trainer(config, run_dir, evaluate_only=True)
    info = load_for_evaluation(trainer, checkpoint)
    result = trainer.evaluate(split)
    metrics: dict[str, Any] = {"model": trainer.model_name, "dataset": trainer.spec.name, "data": str(config.data.path),
                               "split": split, **result.to_dict(),
                               "checkpoint": {"name": checkpoint, "path": str(info.path), "step": info.step,
                                              "world_size": info.record.get("world_size")}}
    stats = trainer.spec.splits.get(split)
    if stats is not None and stats.oracle_auc and not trainer.retrieval:
        metrics["oracle_auc"] = stats.oracle_auc
    if trainer.ctx.is_main:
        out = run_dir / (f"eval-{split}.json" if checkpoint == "latest" else f"eval-{split}-{checkpoint}.json")
        out.write_text(json.dumps(metrics, indent=2) + "\n")
        print(format_table(metrics, trainer.spec.domain_names))
        print(f"checkpoint {info.path} (step {info.step}, written by {info.record.get('world_size')} rank(s)); "
              f"wrote {out}")
    return metrics
