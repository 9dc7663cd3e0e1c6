"""The sparse arch: the dataset spec's tables in an EmbeddingBagCollection and an EmbeddingCollection.

* Pooled features (``Batch.sparse_features``: id / multi_id columns whose table no sequence uses)
  -> EmbeddingBagCollection, sum pooling.
* Unpooled features (``Batch.sequence_features``: the behaviour sequences and the candidate columns
  that share their tables) -> EmbeddingCollection, so that the candidate item and the behaviours
  are looked up in one table.
* Pooled sequence tables (``pooled_sequence_tables``: models that read only the mean of each
  sequence, :func:`pooled_sequence_tables`) -> a second EmbeddingBagCollection over
  ``Batch.sequence_features``, sum pooling, the sequence columns then divided by their lengths:
  the mean over the real positions (an empty sequence gives zeros), through fbgemm's fused pooled
  kernels instead of unpooled lookups, padding and a masked mean. The candidate columns of those
  tables come out of it pooled as well (a single id: its embedding), still in the same table.

Both are built on the meta device and materialised by DistributedModelParallel, which shards them
and fuses the sparse optimizer into the backward pass.

Tables named in ``sparse.eviction.tables`` are managed (:mod:`torchrec_mdr.sparse.mch.eviction`): they
have ``zch_size`` rows and live in a ManagedCollisionEmbeddingBagCollection /
ManagedCollisionEmbeddingCollection beside the plain collections, which remaps raw ids to rows and
evicts low-frequency ids. The pooled (and the two unpooled) outputs are merged, so the dense
side sees the same KeyedTensor / dict either way. Managed sequence tables are always looked up
unpooled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, EmbeddingCollection, EmbeddingConfig
from torchrec.modules.mc_embedding_modules import (
    ManagedCollisionEmbeddingBagCollection,
    ManagedCollisionEmbeddingCollection,
)
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


def pooled_table_configs(
    spec: DatasetSpec, embedding_dim: int, eviction: "EvictionConfig | None" = None
) -> list[EmbeddingBagConfig]:
    """Pooled tables; a managed one (``eviction.tables``) has ``eviction.zch_size`` rows."""
    managed = managed_tables(eviction)
    return [
        EmbeddingBagConfig(
            name=name,
            embedding_dim=embedding_dim,
            feature_names=features,
            num_embeddings=eviction.zch_size if name in managed else rows,
        )
        for name, (rows, features) in _tables(spec.pooled_features).items()
    ]


def unpooled_table_configs(
    spec: DatasetSpec, embedding_dim: int, eviction: "EvictionConfig | None" = None
) -> list[EmbeddingConfig]:
    """Unpooled tables; a managed one (``eviction.tables``) has ``eviction.zch_size`` rows."""
    managed = managed_tables(eviction)
    return [
        EmbeddingConfig(
            name=name,
            embedding_dim=embedding_dim,
            feature_names=features,
            num_embeddings=eviction.zch_size if name in managed else rows,
        )
        for name, (rows, features) in _tables(spec.sequence_features).items()
    ]


def pooled_sequence_tables(
    spec: DatasetSpec, eviction: "EvictionConfig | None" = None, pool: bool = True
) -> frozenset[str]:
    """The sequence tables to look up pooled when the model reads only sequence means (``pool``): those
    of the sequence groups without a managed table, less any table that a group with one also uses."""
    if not pool:
        return frozenset()
    managed = managed_tables(eviction)
    groups = [{c.table_name for c in columns} for columns in spec.sequence_groups.values()]
    poolable = {t for tables in groups if not tables & managed for t in tables}
    blocked = {t for tables in groups if tables & managed for t in tables}
    return frozenset(poolable - blocked)


@torch.fx.wrap
def _sequence_means(sums: KeyedTensor, features: KeyedJaggedTensor, sequences: list[str]) -> KeyedTensor:
    """``sums`` with each ``sequences`` key divided by its row's length in ``features`` (at least 1)."""
    names = features.keys()
    lengths = features.lengths().view(len(names), -1)
    parts = []
    for key, part in zip(sums.keys(), sums.values().split(sums.length_per_key(), dim=1)):
        if key in sequences:
            part = part / lengths[names.index(key)].clamp_min(1).unsqueeze(1).to(part.dtype)
        parts.append(part)
    return KeyedTensor(keys=sums.keys(), length_per_key=sums.length_per_key(), values=torch.cat(parts, dim=1))


@torch.fx.wrap
def _merge_pooled(plain: KeyedTensor | None, managed: KeyedTensor | None) -> KeyedTensor | None:
    """One KeyedTensor [B, sum of D] with the keys of both (either may be None)."""
    if plain is None or managed is None:
        return managed if plain is None else plain
    return KeyedTensor(
        keys=plain.keys() + managed.keys(),
        length_per_key=plain.length_per_key() + managed.length_per_key(),
        values=torch.cat([plain.values(), managed.values()], dim=1),
    )


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
        pooled_sequences: sequence tables looked up pooled (:func:`pooled_sequence_tables`); their
            features come out in the KeyedTensor, sequence columns as means over real positions.

    Call: ``(sparse_features KJT, sequence_features KJT) ->
    (KeyedTensor [B, num_pooled * D], dict feature -> JaggedTensor of [length, D] rows)``; the
    KeyedTensor holds the pooled features and the features of ``pooled_sequences`` tables.
    Managed tables take raw ids in ``[0, eviction.input_hash_size)``; other tables take ids below
    their cardinality.
    """

    def __init__(
        self,
        spec: DatasetSpec,
        embedding_dim: int,
        device: torch.device | None = None,
        eviction: "EvictionConfig | None" = None,
        mc_buckets: int = 1,
        planning_only: bool = False,
        pooled_sequences: frozenset[str] = frozenset(),
    ) -> None:
        super().__init__()
        managed = managed_tables(eviction)
        if managed:
            check_eviction(spec, eviction)
        pooled = pooled_table_configs(spec, embedding_dim, eviction)
        unpooled = unpooled_table_configs(spec, embedding_dim, eviction)
        self.has_pooled = bool(pooled)
        self.has_unpooled = bool(unpooled)
        plain_pooled = [c for c in pooled if c.name not in managed]
        plain_unpooled = [c for c in unpooled if c.name not in managed and c.name not in pooled_sequences]
        sequence_bags = [
            EmbeddingBagConfig(
                name=c.name,
                embedding_dim=c.embedding_dim,
                num_embeddings=c.num_embeddings,
                feature_names=c.feature_names,
            )
            for c in unpooled
            if c.name in pooled_sequences and c.name not in managed
        ]
        self.sequence_means = [c.name for c in spec.columns_of("sequence") if c.table_name in pooled_sequences]
        managed_pooled = [c for c in pooled if c.name in managed]
        managed_unpooled = [c for c in unpooled if c.name in managed]
        self.embedding_bag_collection = (
            EmbeddingBagCollection(tables=plain_pooled, device=device) if plain_pooled else None
        )
        self.embedding_collection = (
            EmbeddingCollection(tables=plain_unpooled, device=device) if plain_unpooled else None
        )
        self.sequence_bag_collection = (
            EmbeddingBagCollection(tables=sequence_bags, device=device) if sequence_bags else None
        )
        self.managed_embedding_bag_collection = (
            ManagedCollisionEmbeddingBagCollection(
                EmbeddingBagCollection(tables=managed_pooled, device=device),
                mc_collection(managed_pooled, spec, eviction, mc_buckets, device, planning_only),
                return_remapped_features=False,
            )
            if managed_pooled
            else None
        )
        self.managed_embedding_collection = (
            ManagedCollisionEmbeddingCollection(
                EmbeddingCollection(tables=managed_unpooled, device=device),
                mc_collection(managed_unpooled, spec, eviction, mc_buckets, device, planning_only),
                return_remapped_features=False,
            )
            if managed_unpooled
            else None
        )

    def forward(
        self, sparse_features: KeyedJaggedTensor, sequence_features: KeyedJaggedTensor
    ) -> tuple[KeyedTensor | None, dict[str, JaggedTensor]]:
        pooled = self.embedding_bag_collection(sparse_features) if self.embedding_bag_collection is not None else None
        unpooled = self.embedding_collection(sequence_features) if self.embedding_collection is not None else {}
        if self.sequence_bag_collection is not None:
            sums = self.sequence_bag_collection(sequence_features)
            pooled = _merge_pooled(pooled, _sequence_means(sums, sequence_features, self.sequence_means))
        if self.managed_embedding_bag_collection is not None:
            pooled = _merge_pooled(pooled, self.managed_embedding_bag_collection(sparse_features)[0])
        if self.managed_embedding_collection is not None:
            unpooled = _merge_unpooled(unpooled, self.managed_embedding_collection(sequence_features)[0])
        return pooled, unpooled
