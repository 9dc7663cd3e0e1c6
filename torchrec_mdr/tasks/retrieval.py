"""The retrieval task (``task = "retrieval"``): ADIN's two-tower model, Recall@K and HitRate@K.

Model: :class:`~torchrec_mdr.retrieval.model.RetrievalModel` (the ``[retrieval]`` section; the ranking
``model`` section is unused but for ``model.embedding_dim``). Its output is a
:class:`~torchrec_mdr.retrieval.model.RetrievalOutput` (loss, user [B, E], item [B, E], item_ids [B],
positive [B], domain [B], group_ids [B]). The run's identity records the towers' structure in place of
the ranking model's options, so that a checkpoint is refused by a run with other towers.

Metrics: the positive rows' user and item vectors are gathered from every rank and ranked
(:mod:`torchrec_mdr.retrieval.metrics`). TensorBoard: ``<split>/recall@K``, ``<split>/hitrate@K`` and
``<split>/recall@K/<domain>`` for every K of ``retrieval.top_k``. Early stopping is not offered (it
decides on AUC or logloss, which this task does not compute).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from torchrec_mdr.config import ConfigError, to_dict
from torchrec_mdr.experiment import EarlyStoppingConfig
from torchrec_mdr.retrieval.metrics import RetrievalBuffer, RetrievalResult, format_retrieval_table, retrieval_metrics
from torchrec_mdr.retrieval.model import RetrievalModel, RetrievalOutput
from torchrec_mdr.tasks.base import Task


class RetrievalPass:
    """One evaluation pass of a two-tower model: the positive rows' vectors into a :class:`RetrievalBuffer`."""

    def __init__(self, task: RetrievalTask) -> None:
        self.task = task
        self.rows = RetrievalBuffer()

    def add(self, output: RetrievalOutput) -> None:
        self.rows.add(output.user, output.item, output.item_ids, output.positive, output.domain, output.group_ids)

    def compute(self, device: torch.device) -> RetrievalResult:
        result = retrieval_metrics(
            *self.rows.gather(device), self.task.spec.domain_names, self.task.config.retrieval.top_k
        )
        result.model = self.task.model_name
        return result


class RetrievalTask(Task):
    name: ClassVar[str] = "retrieval"
    output_type: ClassVar[type] = RetrievalOutput

    @property
    def model_name(self) -> str:
        return self.config.retrieval.model_name

    def identity(self, identity: dict) -> dict:
        """The towers' structure replaces the (unused) ranking model's config."""
        config = self.config
        return {
            **identity,
            "model": {
                "task": "retrieval",
                "embedding_dim": config.model.embedding_dim,
                "retrieval": to_dict(config.retrieval.structure()),
            },
        }

    def build_model(self, dense_device: torch.device, world_size: int, planning_only: bool = False) -> nn.Module:
        config = self.config
        return RetrievalModel(
            self.spec,
            config.model.embedding_dim,
            config.retrieval,
            sparse_device=torch.device("meta"),
            dense_device=dense_device,
            eviction=config.sparse.eviction,
            mc_buckets=world_size,
            mixed_precision=config.train.mixed_precision,
            stream_rows=config.data.batch_size,
            planning_only=planning_only,
        )

    def buffer(self) -> RetrievalPass:
        return RetrievalPass(self)

    def scalars(self, split: str, result: RetrievalResult) -> list[tuple[str, float]]:
        pairs: list[tuple[str, float]] = []
        for k in result.recall:
            pairs += [(f"{split}/recall@{k}", result.recall[k]), (f"{split}/hitrate@{k}", result.hitrate[k])]
            pairs += [
                (f"{split}/recall@{k}/{name}", values[f"recall@{k}"]) for name, values in result.per_domain.items()
            ]
        return pairs

    def headline(self, result: RetrievalResult) -> dict[str, str]:
        return result.headline()

    def history(self, result: RetrievalResult) -> dict[str, Any]:
        """``recall`` and ``hitrate`` {k: value}."""
        return {
            "recall": {str(k): v for k, v in result.recall.items()},
            "hitrate": {str(k): v for k, v in result.hitrate.items()},
        }

    def check_early_stopping(self, config: EarlyStoppingConfig) -> None:
        raise ConfigError(
            "train.early_stopping decides on AUC or logloss, which task = 'retrieval' does not "
            "compute; disable it for retrieval"
        )

    format_table = staticmethod(format_retrieval_table)
