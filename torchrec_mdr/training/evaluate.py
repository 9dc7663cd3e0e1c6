"""A finished run opened for evaluation: the :class:`Evaluator` (``mdr eval``, ``mdr predict``,
``mdr export`` and the proof probes) and :func:`evaluate_run` (``mdr eval``), with the run's typed config
(:func:`run_config`).

The Evaluator builds the run's model exactly as the Trainer does (same process setup, task, model
factory, sharding and seed: :mod:`torchrec_mdr.training.run_model`), loads one of its checkpoints after
the identity check, and evaluates a split through the same evaluation pass and the same task metrics
— without a Trainer: no train split, no config.json, no TensorBoard, no learning-rate schedule.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import torch

from torchrec_mdr.config import from_dict, read_file
from torchrec_mdr.errors import TrainingError
from torchrec_mdr.experiment import ExperimentConfig
from torchrec_mdr.tasks.base import TaskResult
from torchrec_mdr.training.checkpoint import CheckpointInfo
from torchrec_mdr.training.checkpoint_identity import chosen_model_options
from torchrec_mdr.training.run_model import build_sharded, eval_outputs, open_run
from torchrec_mdr.training.warm_start import grown_record, load_grown


def run_config(run_dir: Path) -> ExperimentConfig:
    """The typed config of a run directory (its ``config.json``); a clear error when it is not one."""
    config_file = run_dir / "config.json"
    if not config_file.is_file():
        raise TrainingError(f"{run_dir} is not a run directory: {config_file} does not exist")
    data = read_file(config_file)
    if isinstance(data.get("model"), dict):
        # an older config.json holds every model's options: the others, never read and perhaps changed since,
        # load at their defaults; the chosen model's section stays strict
        data["model"] = chosen_model_options(data["model"])
    return from_dict(ExperimentConfig, data, source=str(config_file))


class Evaluator:
    """The model of run ``run_dir`` with ``config``, ready to load a checkpoint into and evaluate.

    Attributes: ``config``, ``run_dir``, ``ctx``, ``spec``, ``reader_spec``, ``task``, ``checkpoints``,
    ``identity``, ``model`` (DMP-sharded) and ``optimizer`` (the fused + dense optimizer a checkpoint's
    optimizer state can be loaded into; EvalPipelineSparseDist takes it, never steps it). Before
    :meth:`load`, the weights are those a fresh run of ``config`` starts from (same seed).

    Example::

        evaluator = Evaluator(run_config(run), run)
        evaluator.load("best")
        print(evaluator.evaluate("test").to_dict())
    """

    def __init__(self, config: ExperimentConfig, run_dir: str | Path) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        parts = open_run(config, self.run_dir)
        self.ctx, self.spec, self.reader_spec, self.task, self.checkpoints, self.identity = parts
        torch.manual_seed(config.train.seed)  # as the Trainer: the initial weights of a fresh run
        self.model, self.optimizer = build_sharded(config, parts)
        self.grown: dict[str, tuple[int, int]] = {}

    def load(self, checkpoint: str) -> CheckpointInfo:
        """Resolve ``checkpoint`` (latest, best, step-N) of the run, check that it was written for this
        model and managed-collision config and for this dataset or one whose tables it grew into, and load
        its weights (no optimizer, no RNG).

        **Grown tables** (yesterday's run, today's data): the dataset opened (``data.path``) may hold more
        ids than the run's (a larger cardinality, e.g. new items); anything else that differs (a table
        that shrank, a feature that vanished, appeared or changed, other domains or labels) is one
        TrainingError naming it. The checkpoint is loaded by the path warm start uses
        (:func:`~torchrec_mdr.training.warm_start.load_grown`): a grown table's first rows are the
        run's, and the rows of the ids the run never saw keep the initialisation the model was built
        with, which is what ``mdr train --init-from RUN`` with the run's ``train.seed`` gives those rows
        (this Evaluator seeds as the Trainer does). So today's scores are those the warm-started model
        would give before its first step, deterministic for a run, and a row whose ids the run saw scores
        exactly as on the run's own dataset. A managed table keeps its ``zch_size`` slots: nothing
        grows; ids the run never held score with the slot torchrec maps them to. ``grown`` records
        ``{table: (rows in the checkpoint, rows now)}``."""
        info = self.checkpoints.resolve(checkpoint)
        best = self.checkpoints.best() if checkpoint == "latest" else None
        if best is not None and best.step != info.step and self.ctx.is_main:
            print(
                f"note: {checkpoint} is step {info.step}; this run's best evaluation (early stopping, the weights "
                f"its metrics.json reports) is step {best.step}: pass --checkpoint best to use it"
            )
        self.grown = load_grown(
            self.checkpoints,
            info,
            self.model,
            None,
            self.ctx,
            self.identity,
            self.config.sparse.eviction.tables,
            ("model", "eviction"),
            f"score {self.config.data.path} with",
        )
        if self.grown and self.ctx.is_main:
            managed = set(self.config.sparse.eviction.tables)
            print(
                f"note: {self.config.data.path} grew tables since the run's dataset: "
                + ", ".join(
                    f"'{t}' {a:,} -> {b:,} ids" + (" (managed: slots unchanged)" if t in managed else "")
                    for t, (a, b) in sorted(self.grown.items())
                )
                + "; the new ids' rows are initialised as a warm start from this run would initialise them"
            )
        return info

    def outputs(self, split: str) -> Iterator[Any]:
        """The model's outputs (the task's NamedTuple) on this rank's batches of ``split``, every row once
        (:func:`~torchrec_mdr.training.run_model.eval_outputs`); a collective."""
        return eval_outputs(self.model, self.optimizer, self.config, split, self.ctx, self.reader_spec)

    def evaluate(self, split: str) -> TaskResult:
        """The task's metrics over every row of ``split``, identical on all ranks; a collective."""
        return self.task.evaluate(self.outputs(split), self.ctx.device)


def evaluate_run(
    run_dir: str | Path, data: str | Path | None = None, split: str = "test", checkpoint: str = "latest"
) -> dict[str, Any]:
    """Evaluate a checkpoint of a run on ``split`` (``mdr eval``).

    ``checkpoint``: ``latest`` (the default), ``best`` (the best evaluation of early stopping, whose
    weights a run with ``train.early_stopping`` reports in its metrics.json) or ``step-N``.
    The run's ``config.json`` is loaded through the typed config system; ``data`` replaces its
    ``data.path`` by another prepared dataset: the run's spec, or one that only grew tables (today's data
    for yesterday's run; see :meth:`Evaluator.load`).
    Works at any world size (DCP reshards the tables; managed-collision tables through
    :mod:`torchrec_mdr.sparse.mch.reshard`). Prints the per-domain table, writes
    ``RUN_DIR/eval-<split>.json`` (``eval-<split>-<checkpoint>.json`` for another checkpoint than
    ``latest``) and returns those metrics.
    """
    run_dir = Path(run_dir)
    config = run_config(run_dir)
    if data is not None:
        config = replace(config, data=replace(config.data, path=Path(data)))
    evaluator = Evaluator(config, run_dir)
    info = evaluator.load(checkpoint)
    result = evaluator.evaluate(split)
    task, spec = evaluator.task, evaluator.spec
    metrics: dict[str, Any] = {
        "model": task.model_name,
        "dataset": spec.name,
        "data": str(config.data.path),
        "split": split,
        **result.to_dict(),
        "checkpoint": {
            "name": checkpoint,
            "path": str(info.path),
            "step": info.step,
            "world_size": info.record.get("world_size"),
        },
        **task.split_metrics(split),
    }
    if evaluator.grown:
        metrics["grown_tables"] = grown_record(evaluator.grown)
    if evaluator.ctx.is_main:
        out = run_dir / (f"eval-{split}.json" if checkpoint == "latest" else f"eval-{split}-{checkpoint}.json")
        out.write_text(json.dumps(metrics, indent=2) + "\n")
        print(task.format_table(metrics, spec.domain_names))
        print(
            f"checkpoint {info.path} (step {info.step}, written by {info.record.get('world_size')} rank(s)); "
            f"wrote {out}"
        )
    return metrics
