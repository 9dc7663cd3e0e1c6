"""The Task interface: everything about a run that depends on what it learns, apart from the loop.

A task (``task = "ranking"``: :class:`~torchrec_mdr.tasks.ranking.RankingTask`; ``"retrieval"``:
:class:`~torchrec_mdr.tasks.retrieval.RetrievalTask`) sits between the models and the training system.
It

* builds the module DistributedModelParallel wraps (:meth:`Task.build_model`, tables on ``meta``), whose
  ``forward(batch)`` returns ``(loss, output)`` with ``output`` a NamedTuple of :attr:`Task.output_type`
  (still the tuple TrainPipelineSparseDist hands back; every consumer reads it by name);
* collects the outputs of one evaluation pass (:meth:`Task.buffer`) and reduces them to metrics that
  are identical on every rank (a collective);
* says how those metrics are shown: the printed table (:meth:`Task.format_table`), the TensorBoard
  scalars (:meth:`Task.scalars`), the progress bar's headline, the row of ``metrics.json``'s
  ``history`` and the extra keys of ``metrics.json`` for a split;
* names the metrics early stopping may decide on (:attr:`Task.stopping_metrics`) and reads the deciding
  value from a result.

The Trainer (:mod:`torchrec_mdr.training.trainer`) drives steps, evaluations, early stopping,
checkpoints and logs; the Evaluator (:mod:`torchrec_mdr.training.evaluate`) loads a checkpoint and
evaluates a split; both ask their task for the rest and never branch on the kind of task.

Every task's output has at least ``loss`` (scalar, detached) and ``domain`` ([B], one entry per row of
the batch; the trainer counts samples from it): :class:`ModelOutput`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Protocol

import torch
from torch import nn

from torchrec_mdr.config import ConfigError

if TYPE_CHECKING:
    from torchrec_mdr.data.spec import DatasetSpec
    from torchrec_mdr.experiment import EarlyStoppingConfig, ExperimentConfig


class ModelOutput(Protocol):
    """The fields every task's output NamedTuple has."""

    loss: torch.Tensor  # scalar, detached
    domain: torch.Tensor  # [B]


class TaskResult(Protocol):
    """The metrics of one evaluation pass; ``to_dict()`` is what ``metrics.json`` holds for them."""

    def to_dict(self) -> dict: ...


class EvalBuffer(Protocol):
    """Accumulates one evaluation pass's outputs on this rank."""

    def add(self, output: Any) -> None:
        """Take one batch's output (the task's :attr:`Task.output_type`)."""

    def compute(self, device: torch.device) -> TaskResult:
        """The pass's metrics, identical on every rank; a collective (``device`` carries it: GPU for nccl)."""


class Task(ABC):
    """What a run learns: its model, its outputs, its metrics and how they are shown.

    Args:
        config: the experiment.
        spec: the dataset spec of ``config.data.path``.
    """

    name: ClassVar[str]  # the value of the experiment's ``task`` key
    output_type: ClassVar[type]  # the NamedTuple the model returns beside its loss
    stopping_metrics: ClassVar[tuple[str, ...]] = ()  # the train.early_stopping.metric values it computes

    def __init__(self, config: ExperimentConfig, spec: DatasetSpec) -> None:
        self.config = config
        self.spec = spec

    @property
    @abstractmethod
    def model_name(self) -> str:
        """The name ``metrics.json`` and checkpoints give the model."""

    def identity(self, identity: dict) -> dict:
        """The run's identity (:func:`~torchrec_mdr.training.checkpoint.run_identity`) as this task's
        checkpoints record it; by default unchanged."""
        return identity

    @abstractmethod
    def build_model(self, dense_device: torch.device, world_size: int, planning_only: bool = False) -> nn.Module:
        """The module DMP wraps, embedding tables on ``meta`` (no sparse optimizer yet); see
        :func:`~torchrec_mdr.training.model_factory.build_model` for the arguments."""

    @abstractmethod
    def buffer(self) -> EvalBuffer:
        """An empty buffer for one evaluation pass."""

    def evaluate(self, outputs: Iterable[Any], device: torch.device) -> TaskResult:
        """The metrics of a pass over ``outputs`` (this rank's), identical on every rank; a collective."""
        buffer = self.buffer()
        for output in outputs:
            buffer.add(output)
        return buffer.compute(device)

    @abstractmethod
    def scalars(self, split: str, result: Any) -> list[tuple[str, float]]:
        """The TensorBoard (tag, value) pairs of an evaluation of ``split``, in the order they are written."""

    @abstractmethod
    def headline(self, result: Any) -> dict[str, str]:
        """The progress bar's short summary of an evaluation, e.g. ``{"auc": "0.7012"}``."""

    @abstractmethod
    def history(self, result: Any) -> dict[str, Any]:
        """The headline metrics of one row of ``metrics.json``'s ``history`` (beside step, epoch, split)."""

    def split_metrics(self, split: str) -> dict[str, Any]:
        """Keys ``metrics.json`` adds for an evaluation of ``split`` beside the result's; by default none."""
        return {}

    def check_early_stopping(self, config: EarlyStoppingConfig) -> None:
        """Raise ConfigError when ``train.early_stopping`` (enabled) asks for what this task cannot give."""
        if config.metric not in self.stopping_metrics:
            raise ConfigError(
                f"train.early_stopping.metric = {config.metric!r}: task = {self.name!r} computes "
                f"{', '.join(self.stopping_metrics) or 'no metric early stopping can use'}"
            )

    def stopping_value(self, result: Any, config: EarlyStoppingConfig) -> float:
        """The value of ``config.metric`` in ``result`` that early stopping decides on."""
        raise NotImplementedError(f"task = {self.name!r} has no metric early stopping can use")

    @staticmethod
    @abstractmethod
    def format_table(metrics: dict, domain_names: list[str]) -> str:
        """A ``metrics.json`` of this task (a run's or ``mdr eval``'s) as the printed table."""
