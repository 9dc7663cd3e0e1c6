"""The training batch: what the reader yields and every model consumes."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
from torchrec.streamable import Pipelineable


@dataclass
class Batch(Pipelineable):
    """One batch of ``B`` impressions.

    Attributes:
        dense_features: [B, num_dense] float32.
        sparse_features: pooled features for the EmbeddingBagCollection: the ``id`` and ``multi_id``
            columns whose table no sequence uses, in spec order; an ``id`` has length 1 per row.
        sequence_features: unpooled features for the EmbeddingCollection: first the ``id`` /
            ``multi_id`` columns that share a table with a sequence (e.g. the candidate ``item_id``
            next to ``hist_item_id``), then the behaviour sequences grouped by sequence group,
            oldest first, at most ``max_length`` per row; the fields of a group have equal lengths
            per row.
        domain: [B] int64 domain id in [0, num_domains).
        labels: [B, num_labels] float32 in {0, 1}, columns in spec label order.
        group_ids: [B] int64 GAUC group key (user/session); zeros when the spec has none.
        session_ids: [B] int64 S-GAUC session key (the spec's ``session`` column); zeros when the
            spec has none (the metrics then report no S-GAUC: they ask the spec, not the zeros).
    """

    dense_features: torch.Tensor
    sparse_features: KeyedJaggedTensor
    sequence_features: KeyedJaggedTensor
    domain: torch.Tensor
    labels: torch.Tensor
    group_ids: torch.Tensor
    session_ids: torch.Tensor

    @property
    def batch_size(self) -> int:
        return int(self.domain.shape[0])

    def to(self, device: torch.device, non_blocking: bool = False) -> "Batch":
        return Batch(
            dense_features=self.dense_features.to(device=device, non_blocking=non_blocking),
            sparse_features=self.sparse_features.to(device=device, non_blocking=non_blocking),
            sequence_features=self.sequence_features.to(device=device, non_blocking=non_blocking),
            domain=self.domain.to(device=device, non_blocking=non_blocking),
            labels=self.labels.to(device=device, non_blocking=non_blocking),
            group_ids=self.group_ids.to(device=device, non_blocking=non_blocking),
            session_ids=self.session_ids.to(device=device, non_blocking=non_blocking),
        )

    def record_stream(self, stream: torch.Stream) -> None:
        self.dense_features.record_stream(stream)
        self.sparse_features.record_stream(stream)
        self.sequence_features.record_stream(stream)
        self.domain.record_stream(stream)
        self.labels.record_stream(stream)
        self.group_ids.record_stream(stream)
        self.session_ids.record_stream(stream)

    def pin_memory(self) -> "Batch":
        return Batch(
            dense_features=self.dense_features.pin_memory(),
            sparse_features=self.sparse_features.pin_memory(),
            sequence_features=self.sequence_features.pin_memory(),
            domain=self.domain.pin_memory(),
            labels=self.labels.pin_memory(),
            group_ids=self.group_ids.pin_memory(),
            session_ids=self.session_ids.pin_memory(),
        )
