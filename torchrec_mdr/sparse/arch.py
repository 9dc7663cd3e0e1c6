"""The sparse arch: the dataset spec's tables in an EmbeddingBagCollection and an EmbeddingCollection.

* Pooled features (``Batch.sparse_features``: id / multi_id columns whose table no sequence uses)
  -> EmbeddingBagCollection, sum pooling.
* Unpooled features (``Batch.sequence_features``: the behaviour sequences and the candidate columns
  that share their tables) -> EmbeddingCollection, so that the candidate item and the behaviours
  are looked up in one table.

Both are built on the meta device and materialised by DistributedModelParallel, which shards them
and fuses the sparse optimizer into the backward pass.

Tables named in ``sparse.eviction.tables`` are managed (:mod:`torchrec_mdr.sparse.mch.eviction`): they
have ``zch_size`` rows and live in a ManagedCollisionEmbeddingBagCollection /
ManagedCollisionEmbeddingCollection beside the plain collections, which remaps raw ids to rows and
evicts low-frequency ids. The two pooled (and the two unpooled) outputs are merged, so the dense
side sees the same KeyedTensor / dict either way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, EmbeddingCollection, EmbeddingConfig
from torchrec.modules.mc_embedding_modules import (ManagedCollisionEmbeddingBagCollection,
                                                   ManagedCollisionEmbeddingCollection)
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor, KeyedTensor

from torchrec_mdr.data.spec import ColumnSpec, DatasetSpec
from torchrec_mdr.sparse.mch.eviction import check_eviction, managed_tables, mc_collection

if TYPE_CHECKING:
    from torchrec_mdr.sparse.mch.config import EvictionConfig


def _tables(columns: list[ColumnSpec]) -> dict[str, tuple[int, list[str]]]:
    """table name -> (rows, feature names), in first-use order."""
    tables: dict[str, tuple[int, list[str]]] = {}
    for column in columns:
        tables.setdefault(column.table_name, (column.cardinality, []))[1].append(column.name)
    return tables


def pooled_table_configs(spec: DatasetSpec, embedding_dim: int,
                         eviction: "EvictionConfig | None" = None) -> list[EmbeddingBagConfig]:
    """Pooled tables; a managed one (``eviction.tables``) has ``eviction.zch_size`` rows."""
    managed = managed_tables(eviction)
    return [EmbeddingBagConfig(name=name, embedding_dim=embedding_dim, feature_names=features,
                               num_embeddings=eviction.zch_size if name in managed else rows)
            for name, (rows, features) in _tables(spec.pooled_features).items()]


def unpooled_table_configs(spec: DatasetSpec, embedding_dim: int,
                           eviction: "EvictionConfig | None" = None) -> list[EmbeddingConfig]:
    """Unpooled tables; a managed one (``eviction.tables``) has ``eviction.zch_size`` rows."""
    managed = managed_tables(eviction)
    return [EmbeddingConfig(name=name, embedding_dim=embedding_dim, feature_names=features,
                            num_embeddings=eviction.zch_size if name in managed else rows)
            for name, (rows, features) in _tables(spec.sequence_features).items()]


@torch.fx.wrap
def _merge_pooled(plain: KeyedTensor | None, managed: KeyedTensor | None) -> KeyedTensor | None:
    """One KeyedTensor [B, sum of D] with the keys of both (either may be None)."""
    if plain is None or managed is None:
        return managed if plain is None else plain
    return KeyedTensor(keys=plain.keys() + managed.keys(),
                       length_per_key=plain.length_per_key() + managed.length_per_key(),
                       values=torch.cat([plain.values(), managed.values()], dim=1))


@torch.fx.wrap
def _merge_unpooled(plain: dict[str, JaggedTensor], managed: dict[str, JaggedTensor]) -> dict[str, JaggedTensor]:
    return {**plain, **managed}


class SparseArch(nn.Module):
    """Embedding lookups of a batch.

    Args:
        spec: the dataset spec (tables, sizes, which features are pooled).
        embedding_dim: D, the same for every table.
        device: ``meta`` to let DistributedModelParallel materialise (and shard) the tables.
        eviction: managed-collision settings; its ``tables`` get managed collections (None: none).
        mc_buckets: buckets of each managed-collision module: the world size the model will be
            sharded over (torchrec's planner needs a multiple of it).
        planning_only: a model that is planned (``mdr plan``) and never sharded: with ``device``
            ``meta`` its managed-collision modules stay on meta too (otherwise they are built on
            CPU, zch-sized, because sharding rebuilds them from there).

    Call: ``(sparse_features KJT, sequence_features KJT) ->
    (KeyedTensor [B, num_pooled * D], dict feature -> JaggedTensor of [length, D] rows)``.
    Managed tables take raw ids in ``[0, eviction.input_hash_size)``; other tables take ids below
    their cardinality.
    """

    def __init__(self, spec: DatasetSpec, embedding_dim: int, device: torch.device | None = None,
                 eviction: "EvictionConfig | None" = None, mc_buckets: int = 1,
                 planning_only: bool = False) -> None:
        super().__init__()
        managed = managed_tables(eviction)
        if managed:
            check_eviction(spec, eviction)
        pooled = pooled_table_configs(spec, embedding_dim, eviction)
        unpooled = unpooled_table_configs(spec, embedding_dim, eviction)
        self.has_pooled = bool(pooled)
        self.has_unpooled = bool(unpooled)
        plain_pooled = [c for c in pooled if c.name not in managed]
        plain_unpooled = [c for c in unpooled if c.name not in managed]
        managed_pooled = [c for c in pooled if c.name in managed]
        managed_unpooled = [c for c in unpooled if c.name in managed]
        self.embedding_bag_collection = (EmbeddingBagCollection(tables=plain_pooled, device=device)
                                         if plain_pooled else None)
        self.embedding_collection = (EmbeddingCollection(tables=plain_unpooled, device=device)
                                     if plain_unpooled else None)
        self.managed_embedding_bag_collection = (ManagedCollisionEmbeddingBagCollection(
            EmbeddingBagCollection(tables=managed_pooled, device=device),
            mc_collection(managed_pooled, spec, eviction, mc_buckets, device, planning_only),
            return_remapped_features=False) if managed_pooled else None)
        self.managed_embedding_collection = (ManagedCollisionEmbeddingCollection(
            EmbeddingCollection(tables=managed_unpooled, device=device),
            mc_collection(managed_unpooled, spec, eviction, mc_buckets, device, planning_only),
            return_remapped_features=False) if managed_unpooled else None)

    def forward(self, sparse_features: KeyedJaggedTensor,
                sequence_features: KeyedJaggedTensor) -> tuple[KeyedTensor | None, dict[str, JaggedTensor]]:
        pooled = self.embedding_bag_collection(sparse_features) if self.embedding_bag_collection is not None else None
        unpooled = self.embedding_collection(sequence_features) if self.embedding_collection is not None else {}
        if self.managed_embedding_bag_collection is not None:
            pooled = _merge_pooled(pooled, self.managed_embedding_bag_collection(sparse_features)[0])
        if self.managed_embedding_collection is not None:
            unpooled = _merge_unpooled(unpooled, self.managed_embedding_collection(sequence_features)[0])
        return pooled, unpooled
