"""The ranking task (``task = "ranking"``): a registered model's logits per label, AUC / logloss / GAUC.

Model: :class:`~torchrec_mdr.models.ranking.TrainModel` around the registered
:class:`~torchrec_mdr.models.ranking.RankingModel`, with the task-weighted BCE of
:mod:`torchrec_mdr.training.losses` (``train.task_weights``, checked against the spec's labels). Its
output is a :class:`~torchrec_mdr.models.ranking.RankingOutput` (loss, logits [B, T], labels [B, T],
domain [B], group_ids [B], session_ids [B]).

Metrics: :class:`~torchrec_mdr.metrics.sharded.ShardedMetrics` over every row of the split (no rank
gathers all rows): AUC, logloss, GAUC and, with a session column, S-GAUC, overall and per domain, for
every task (label). TensorBoard: ``<split>/auc``, ``logloss``, ``gauc``, ``sgauc``, ``auc/<domain>`` of
the first task (as with one label), then the same under ``<split>/<label>/`` for every label.
Early stopping decides on ``auc`` or ``logloss`` of the first task, or of ``train.early_stopping.task``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from torchrec_mdr.config import ConfigError
from torchrec_mdr.data.spec import DatasetSpec
from torchrec_mdr.experiment import EarlyStoppingConfig
from torchrec_mdr.metrics.ranking import EvalResult
from torchrec_mdr.metrics.sharded import ShardedMetrics
from torchrec_mdr.metrics.table import format_ranking_table
from torchrec_mdr.models.ranking import RankingModel, RankingOutput, TrainModel
from torchrec_mdr.tasks.base import Task
from torchrec_mdr.training.losses import TaskWeightedBCE, task_weights


class RankingBuffer:
    """One evaluation pass of a ranking model: its outputs into :class:`ShardedMetrics`."""

    def __init__(self, spec: DatasetSpec) -> None:
        self.spec = spec
        self.metrics = ShardedMetrics(len(spec.domain_names), len(spec.label_names), spec.session_column is not None)

    def add(self, output: RankingOutput) -> None:
        self.metrics.add(output.logits, output.labels, output.domain, output.group_ids, output.session_ids)

    def compute(self, device: torch.device) -> EvalResult:
        return self.metrics.compute(self.spec.domain_names, self.spec.label_names, device)


class RankingTask(Task):
    name: ClassVar[str] = "ranking"
    output_type: ClassVar[type] = RankingOutput
    stopping_metrics: ClassVar[tuple[str, ...]] = ("auc", "logloss")

    @property
    def model_name(self) -> str:
        return self.config.model.name

    def build_model(self, dense_device: torch.device, world_size: int, planning_only: bool = False) -> nn.Module:
        config = self.config
        # each task's BCE weighted and summed (for one label: TrainModel's default mean BCE, the same number)
        loss_fn = TaskWeightedBCE(task_weights(config.train.task_weights, self.spec)).to(dense_device)
        return TrainModel(
            RankingModel(
                self.spec,
                config.model,
                sparse_device=torch.device("meta"),
                dense_device=dense_device,
                eviction=config.sparse.eviction,
                mc_buckets=world_size,
                mixed_precision=config.train.mixed_precision,
                planning_only=planning_only,
            ),
            loss_fn=loss_fn,
        )

    def buffer(self) -> RankingBuffer:
        return RankingBuffer(self.spec)

    def scalars(self, split: str, result: EvalResult) -> list[tuple[str, float]]:
        pairs = _task_scalars(split, result)  # the first task under <split>/..., as with one label
        for label, task_result in result.tasks.items():
            pairs += _task_scalars(f"{split}/{label}", task_result)
        return pairs

    def headline(self, result: EvalResult) -> dict[str, str]:
        return {"auc": f"{result.auc:.4f}"}

    def history(self, result: EvalResult) -> dict[str, Any]:
        """``auc``, ``logloss``, ``gauc`` and ``per_domain`` {name: auc} of the first task, and with several
        labels ``tasks`` {label: the same four}."""
        entry = _headline(result)
        if result.tasks:
            entry["tasks"] = {label: _headline(task) for label, task in result.tasks.items()}
        return entry

    def split_metrics(self, split: str) -> dict[str, Any]:
        """``oracle_auc`` when the spec knows the split's oracle AUC (synthetic data)."""
        stats = self.spec.splits.get(split)
        return {"oracle_auc": stats.oracle_auc} if stats is not None and stats.oracle_auc else {}

    def check_early_stopping(self, config: EarlyStoppingConfig) -> None:
        super().check_early_stopping(config)
        if config.task is not None and config.task not in self.spec.label_names:
            raise ConfigError(
                f"train.early_stopping.task = {config.task!r} is not a label of {self.config.data.path}; "
                f"its labels are {self.spec.label_names}"
            )

    def stopping_value(self, result: EvalResult, config: EarlyStoppingConfig) -> float:
        decider = result.task(config.task)  # the first task unless early_stopping.task names one
        return float(getattr(decider, config.metric))

    format_table = staticmethod(format_ranking_table)


def _task_scalars(prefix: str, result: EvalResult) -> list[tuple[str, float]]:
    """``<prefix>/auc``, ``logloss``, ``gauc``, ``sgauc`` (with sessions), ``auc/<domain>``."""
    pairs = [(f"{prefix}/auc", result.auc), (f"{prefix}/logloss", result.logloss), (f"{prefix}/gauc", result.gauc)]
    if result.sgauc is not None:  # the dataset has a session column
        pairs.append((f"{prefix}/sgauc", result.sgauc))
    pairs += [(f"{prefix}/auc/{name}", values["auc"]) for name, values in result.per_domain.items()]
    return pairs


def _headline(result: EvalResult) -> dict[str, Any]:
    return {
        "auc": result.auc,
        "logloss": result.logloss,
        "gauc": result.gauc,
        "per_domain": {name: values["auc"] for name, values in result.per_domain.items()},
    }
