"""The ranking model every registered model shares: SparseArch -> dense arch -> logits, and its loss.

The forward is shaped for TrainPipelineSparseDist: the sharded collections are called at the top
of the call graph on attributes of the batch, and everything after them lives in one module
(:class:`DenseArch`) that the pipeline's tracer treats as a leaf.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedTensor

from torchrec_mdr.data.batch import Batch
from torchrec_mdr.data.spec import DatasetSpec
from torchrec_mdr.models.features import ArchOutput, FeatureLayout, embed_features
from torchrec_mdr.models.registry import MODELS, ModelConfig, build_dense_arch
from torchrec_mdr.sparse.arch import SparseArch, pooled_sequence_tables

if TYPE_CHECKING:
    from torchrec_mdr.sparse.mch.config import EvictionConfig


class DenseArch(nn.Module):
    """Embeddings -> :class:`EmbeddedFeatures` -> the registered model's arch -> (logits, auxiliary loss).

    Returns ``(logits [B, num_tasks] float32, auxiliary_loss scalar)``; the auxiliary loss is 0 for
    archs that return bare logits.
    """

    def __init__(self, layout: FeatureLayout, config: ModelConfig, mixed_precision: bool = False) -> None:
        super().__init__()
        self.layout = layout
        self.model = build_dense_arch(layout, config)
        self.mixed_precision = mixed_precision  # bf16 autocast on CUDA; logits come back as float32

    def forward(
        self, pooled: KeyedTensor | None, unpooled: dict[str, JaggedTensor], dense: torch.Tensor, domain: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        features = embed_features(self.layout, pooled, unpooled, dense, domain)
        if self.mixed_precision and dense.device.type == "cuda":  # without it, fx-traceable (no autocast)
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
                output = self.model(features)
        else:
            output = self.model(features)
        if isinstance(output, ArchOutput):
            return output.logits.float(), output.auxiliary_loss.float()
        return output.float(), dense.new_zeros(())


class RankingModel(nn.Module):
    """Batch -> (logits [B, num_tasks], auxiliary loss scalar); see :class:`DenseArch`.

    Args:
        spec: dataset spec (features, tables, domains, labels).
        config: model name, embedding dimension and the model's options.
        sparse_device: device of the embedding tables at construction (``meta`` under DMP).
        dense_device: device of the dense parameters.
        eviction, mc_buckets: managed-collision tables and their bucket count (the world size);
            see :mod:`torchrec_mdr.sparse.mch.eviction`.
        mixed_precision: bf16 autocast of the dense arch on CUDA.
        planning_only: see :class:`~torchrec_mdr.sparse.arch.SparseArch` (``mdr plan``).
        pooled_sequences: look the sequences up pooled (their means) rather than by position; None:
            as the model's registry entry says (``sequence_positions``). Attention models need positions.
    """

    def __init__(
        self,
        spec: DatasetSpec,
        config: ModelConfig,
        sparse_device: torch.device | None = None,
        dense_device: torch.device | None = None,
        eviction: "EvictionConfig | None" = None,
        mc_buckets: int = 1,
        mixed_precision: bool = False,
        planning_only: bool = False,
        pooled_sequences: bool | None = None,
    ) -> None:
        super().__init__()
        entry = MODELS[config.name]
        pool = (
            not entry.needs_positions(getattr(config, entry.config_field))
            if pooled_sequences is None
            else pooled_sequences
        )
        tables = pooled_sequence_tables(spec, eviction, pool)
        self.sparse_arch = SparseArch(
            spec,
            config.embedding_dim,
            device=sparse_device,
            eviction=eviction,
            mc_buckets=mc_buckets,
            planning_only=planning_only,
            pooled_sequences=tables,
        )
        self.dense_arch = DenseArch(
            FeatureLayout.from_spec(spec, config.embedding_dim, tables), config, mixed_precision
        ).to(dense_device)

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        pooled, unpooled = self.sparse_arch(batch.sparse_features, batch.sequence_features)
        return self.dense_arch(pooled, unpooled, batch.dense_features, batch.domain)


class RankingOutput(NamedTuple):
    """What :class:`TrainModel` returns beside its loss, detached: one row per impression of the batch.

    A NamedTuple (so still the tuple TrainPipelineSparseDist passes through), read by name.
    """

    loss: torch.Tensor  # scalar: the batch's loss (auxiliary loss included)
    logits: torch.Tensor  # [B, T] float32, one column per task (label)
    labels: torch.Tensor  # [B, T] 0/1
    domain: torch.Tensor  # [B] domain ids
    group_ids: torch.Tensor  # [B] the GAUC group key (user)
    session_ids: torch.Tensor  # [B] the S-GAUC key (session; unused without a session column)


class TrainModel(nn.Module):
    """RankingModel + binary cross-entropy (mean over rows and tasks), in the pipeline's contract.

    ``forward(batch) -> (loss, RankingOutput(loss, logits [B, T], labels [B, T], domain [B], group_ids [B],
    session_ids [B]))``; the loss includes the arch's auxiliary loss (zero for most models). The
    keys travel with the outputs so that evaluation groups rows for GAUC and S-GAUC.
    """

    def __init__(self, model: RankingModel, loss_fn: nn.Module | None = None) -> None:
        """``loss_fn(logits [B, T], labels [B, T]) -> scalar``; default the mean BCE over rows and tasks (the
        trainer passes the task-weighted sum of :mod:`torchrec_mdr.training.losses`)."""
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn if loss_fn is not None else nn.BCEWithLogitsLoss()

    def forward(self, batch: Batch) -> tuple[torch.Tensor, RankingOutput]:
        logits, auxiliary_loss = self.model(batch)
        loss = self.loss_fn(logits, batch.labels) + auxiliary_loss
        return loss, RankingOutput(
            loss.detach(), logits.detach(), batch.labels, batch.domain, batch.group_ids, batch.session_ids
        )
