"""Embedded features as dense archs want them (field vectors, padded sequences, candidate queries),
and what archs may return besides logits (:class:`ArchOutput`).

The sparse arch returns what torchrec's collections return — a KeyedTensor of pooled embeddings
(EmbeddingBagCollection) and a dict of JaggedTensors (EmbeddingCollection). :class:`FeatureLayout`
(built once from the dataset spec) and :func:`embed_features` turn them into one
:class:`EmbeddedFeatures` with fixed shapes, so every model reads the same, documented tensors.

A sequence group is looked up in one of two forms, by what the model reads (its registry entry's
``sequence_positions``): *positions* — every behaviour's embedding, padded to ``max_length``
(attention models), or *pooled* — only the mean over the real positions, which the sparse arch
takes from the EmbeddingBagCollection's fused pooled kernels (:attr:`SequenceLayout.pooled`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedTensor

from torchrec_mdr.config import ConfigError
from torchrec_mdr.data.spec import DatasetSpec


@dataclass(frozen=True)
class SequenceLayout:
    """One behaviour-sequence group and the candidate columns that share its tables."""

    name: str
    fields: tuple[str, ...]  # the group's sequence columns
    max_length: int
    candidate_fields: tuple[str, ...]  # id columns looked up in the same tables (the attention query)
    pooled: bool = False  # only the mean over real positions is looked up (no keys / mask)


@dataclass(frozen=True)
class FeatureLayout:
    """Which features exist and in what order, derived from a dataset spec."""

    fields: tuple[str, ...]  # every id / multi_id column, spec order: one [B, D] vector each
    pooled: frozenset[str]  # the fields that come pooled from the EmbeddingBagCollection
    sequences: tuple[SequenceLayout, ...]
    embedding_dim: int
    num_dense: int
    num_domains: int
    num_tasks: int

    @staticmethod
    def from_spec(
        spec: DatasetSpec, embedding_dim: int, pooled_tables: frozenset[str] = frozenset()
    ) -> "FeatureLayout":
        """``pooled_tables``: the sequence tables the sparse arch looks up pooled
        (:func:`~torchrec_mdr.sparse.arch.pooled_sequence_tables`); a group is pooled when all its tables are."""
        ids = spec.columns_of("id", "multi_id")
        sequences = []
        for group, columns in spec.sequence_groups.items():
            tables = [c.table_name for c in columns]
            candidates = tuple(c.name for table in tables for c in spec.columns_of("id") if c.table_name == table)
            length = cast(int, columns[0].max_length)  # ColumnSpec.validate: a sequence column has one
            sequences.append(
                SequenceLayout(
                    group,
                    tuple(c.name for c in columns),
                    length,
                    candidates,
                    pooled=all(t in pooled_tables for t in tables),
                )
            )
        return FeatureLayout(
            fields=tuple(c.name for c in ids),
            pooled=frozenset(
                c.name for c in ids if c.table_name not in spec.sequence_tables or c.table_name in pooled_tables
            ),
            sequences=tuple(sequences),
            embedding_dim=embedding_dim,
            num_dense=len(spec.dense_features),
            num_domains=spec.num_domains,
            num_tasks=len(spec.label_names),
        )

    def field_indices(self, names: Sequence[str], key: str, unique: bool = False) -> list[int]:
        """Positions of the named id fields in :attr:`fields` (a model option such as ``domain_features``).

        ConfigError naming ``key`` (e.g. ``model.ads.domain_features``) for the first name that is not
        an id field, listing those that are; with ``unique``, also for a name given twice.
        """
        for name in names:
            if name not in self.fields:
                raise ConfigError(
                    f"{key}: {name!r} is not an id feature of the dataset; id features: {list(self.fields)}"
                )
        if unique and len(set(names)) != len(names):
            raise ConfigError(f"{key}: duplicate names in {list(names)}")
        return [self.fields.index(name) for name in names]

    def sequence_width(self, sequence: SequenceLayout) -> int:
        return len(sequence.fields) * self.embedding_dim

    def query_width(self, sequence: SequenceLayout) -> int:
        return len(sequence.candidate_fields) * self.embedding_dim


@dataclass
class EmbeddedSequence:
    """A behaviour sequence: padded positions, or (a pooled group) only their mean.

    Attributes:
        keys: [B, L, F * D] the group's field embeddings concatenated per position, oldest first,
            left-aligned (positions ``>= length`` are zero padding); None for a pooled group.
        mask: [B, L] bool, True at real behaviours; None for a pooled group.
        query: [B, Q * D] the candidate's embeddings in the same tables (Q may be 0).
        pooled_mean: [B, F * D] the mean over real positions (zeros for an empty sequence), given for
            a pooled group; read it through :meth:`mean`, which computes it from the positions otherwise.
    """

    keys: torch.Tensor | None
    mask: torch.Tensor | None
    query: torch.Tensor
    pooled_mean: torch.Tensor | None = None

    def mean(self) -> torch.Tensor:
        """[B, F * D] the mean of the group's embeddings over its real positions (an empty sequence: zeros)."""
        if self.pooled_mean is not None:
            return self.pooled_mean
        assert self.keys is not None and self.mask is not None
        weights = self.mask.to(self.keys.dtype)
        return torch.einsum("bl,bld->bd", weights, self.keys) / weights.sum(1, keepdim=True).clamp_min(1.0)


@dataclass
class EmbeddedFeatures:
    """Everything a dense arch receives.

    Attributes:
        fields: [B, N, D] one vector per id / multi_id column (multi-valued ones sum-pooled).
        sequences: one :class:`EmbeddedSequence` per sequence group, in spec order.
        dense: [B, num_dense] float32.
        domain: [B] int64 domain id.
    """

    fields: torch.Tensor
    sequences: list[EmbeddedSequence]
    dense: torch.Tensor
    domain: torch.Tensor


@torch.fx.wrap  # one node in an fx trace (its tensor sizes come from the batch)
def _sum_pool(jagged: JaggedTensor, batch_size: int) -> torch.Tensor:
    """[B, D] sum of each row's embeddings (rows of length 0 give zeros)."""
    values = jagged.values()
    lengths = jagged.lengths().long()
    rows = torch.repeat_interleave(torch.arange(batch_size, device=values.device), lengths)
    return torch.zeros(batch_size, values.shape[-1], dtype=values.dtype, device=values.device).index_add_(
        0, rows, values
    )


def embed_features(
    layout: FeatureLayout,
    pooled: KeyedTensor,
    unpooled: dict[str, JaggedTensor],
    dense: torch.Tensor,
    domain: torch.Tensor,
) -> EmbeddedFeatures:
    """Arrange the sparse arch's outputs by the layout (see :class:`EmbeddedFeatures` for shapes)."""
    batch_size = dense.shape[0]
    pooled_dict = pooled.to_dict() if layout.pooled or any(s.pooled for s in layout.sequences) else {}
    vectors = []
    for name in layout.fields:
        vectors.append(pooled_dict[name] if name in layout.pooled else _sum_pool(unpooled[name], batch_size))
    fields = (
        torch.stack(vectors, dim=1)
        if vectors
        else torch.zeros(batch_size, 0, layout.embedding_dim, device=dense.device)
    )
    sequences = []
    for sequence in layout.sequences:
        query_parts = [vectors[layout.fields.index(f)] for f in sequence.candidate_fields]
        query = torch.cat(query_parts, dim=-1) if query_parts else fields.new_zeros(batch_size, 0)
        if sequence.pooled:  # the sparse arch's KeyedTensor holds each field's mean over real positions
            means = torch.cat([pooled_dict[f] for f in sequence.fields], dim=-1)
            sequences.append(EmbeddedSequence(None, None, query, means))
            continue
        padded = [unpooled[f].to_padded_dense(desired_length=sequence.max_length) for f in sequence.fields]
        lengths = unpooled[sequence.fields[0]].lengths()
        mask = torch.arange(sequence.max_length, device=dense.device)[None, :] < lengths[:, None]
        sequences.append(EmbeddedSequence(torch.cat(padded, dim=-1), mask, query))
    return EmbeddedFeatures(fields, sequences, dense, domain)


@dataclass
class ArchOutput:
    """What a model arch may return instead of bare logits (unpacked by ``ranking.DenseArch``).

    Attributes:
        logits: [B, num_tasks].
        auxiliary_loss: scalar added to the label loss in training (e.g. ADIN's self-training term);
            archs return it only while ``self.training``.
    """

    logits: torch.Tensor
    auxiliary_loss: torch.Tensor
