"""The sparse arch: the dataset spec's tables in an EmbeddingBagCollection and an EmbeddingCollection.

* Pooled features (``Batch.sparse_features``: id / multi_id columns whose table no sequence uses)
  -> EmbeddingBagCollection, sum pooling.
* Unpooled features (``Batch.sequence_features``: the behaviour sequences and the candidate columns
  that share their tables) -> EmbeddingCollection, so that the candidate item and the behaviours
  are looked up in one table.

Both are built on the meta device and materialised by DistributedModelParallel, which shards them
and fuses the sparse optimizer into the backward pass.
"""

from __future__ import annotations

import torch
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, EmbeddingCollection, EmbeddingConfig
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor, KeyedTensor

from torchrec_mdr.data.spec import ColumnSpec, DatasetSpec


def _tables(columns: list[ColumnSpec]) -> dict[str, tuple[int, list[str]]]:
    """table name -> (rows, feature names), in first-use order."""
    tables: dict[str, tuple[int, list[str]]] = {}
    for column in columns:
        tables.setdefault(column.table_name, (column.cardinality, []))[1].append(column.name)
    return tables


def pooled_table_configs(spec: DatasetSpec, embedding_dim: int) -> list[EmbeddingBagConfig]:
    return [EmbeddingBagConfig(name=name, embedding_dim=embedding_dim, num_embeddings=rows, feature_names=features)
            for name, (rows, features) in _tables(spec.pooled_features).items()]


def unpooled_table_configs(spec: DatasetSpec, embedding_dim: int) -> list[EmbeddingConfig]:
    return [EmbeddingConfig(name=name, embedding_dim=embedding_dim, num_embeddings=rows, feature_names=features)
            for name, (rows, features) in _tables(spec.sequence_features).items()]


class SparseArch(nn.Module):
    """Embedding lookups of a batch.

    Args:
        spec: the dataset spec (tables, sizes, which features are pooled).
        embedding_dim: D, the same for every table.
        device: ``meta`` to let DistributedModelParallel materialise (and shard) the tables.

    Call: ``(sparse_features KJT, sequence_features KJT) ->
    (KeyedTensor [B, num_pooled * D], dict feature -> JaggedTensor of [length, D] rows)``.
    """

    def __init__(self, spec: DatasetSpec, embedding_dim: int, device: torch.device | None = None) -> None:
        super().__init__()
        pooled = pooled_table_configs(spec, embedding_dim)
        unpooled = unpooled_table_configs(spec, embedding_dim)
        self.has_pooled = bool(pooled)
        self.has_unpooled = bool(unpooled)
        self.embedding_bag_collection = EmbeddingBagCollection(tables=pooled, device=device) if pooled else None
        self.embedding_collection = EmbeddingCollection(tables=unpooled, device=device) if unpooled else None

    def forward(self, sparse_features: KeyedJaggedTensor,
                sequence_features: KeyedJaggedTensor) -> tuple[KeyedTensor | None, dict[str, JaggedTensor]]:
        pooled = self.embedding_bag_collection(sparse_features) if self.embedding_bag_collection is not None else None
        unpooled = self.embedding_collection(sequence_features) if self.embedding_collection is not None else {}
        return pooled, unpooled
