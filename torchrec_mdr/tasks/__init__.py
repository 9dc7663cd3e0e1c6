"""What a run learns, apart from the loop that trains it: the Task interface and its two tasks.

* :mod:`~torchrec_mdr.tasks.base`: :class:`~torchrec_mdr.tasks.base.Task` (model, output NamedTuple,
  evaluation buffer, metrics, tables, TensorBoard scalars, early-stopping metrics);
* :mod:`~torchrec_mdr.tasks.ranking`: ``task = "ranking"`` (AUC, logloss, GAUC per domain and label);
* :mod:`~torchrec_mdr.tasks.retrieval`: ``task = "retrieval"`` (ADIN two-tower, Recall@K, HitRate@K).

Layering: tasks sit above the models and metrics and below the trainer, evaluator and CLI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torchrec_mdr.tasks.base import Task
from torchrec_mdr.tasks.ranking import RankingTask
from torchrec_mdr.tasks.retrieval import RetrievalTask

if TYPE_CHECKING:
    from torchrec_mdr.data.spec import DatasetSpec
    from torchrec_mdr.experiment import ExperimentConfig

TASKS: dict[str, type[Task]] = {task.name: task for task in (RankingTask, RetrievalTask)}


def make_task(config: ExperimentConfig, spec: DatasetSpec) -> Task:
    """The task of ``config.task`` for the dataset ``spec``."""
    return TASKS[config.task](config, spec)


def format_table(metrics: dict, domain_names: list[str]) -> str:
    """A ``metrics.json`` (a run's or ``mdr eval``'s) as its task's table: per domain and overall rows for
    every label (ranking), or Recall@K / HitRate@K (retrieval, whose metrics carry ``"task": "retrieval"``)."""
    return TASKS[metrics.get("task", "ranking")].format_table(metrics, domain_names)


__all__ = ["TASKS", "RankingTask", "RetrievalTask", "Task", "format_table", "make_task"]
