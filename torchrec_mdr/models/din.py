"""DIN (Zhou et al., KDD 2018): target attention over each behaviour sequence, then an MLP.

The query of a sequence group is the candidate's embeddings in the same tables as the group's
fields (``item_id`` for ``hist_item_id``). When the group has fields without a candidate
counterpart (``hist_domain``), the query is linearly projected to the key width — a choice of
this implementation, as DIN assumes matching query and key fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from torchrec_mdr.config import bounds
from torchrec_mdr.models.blocks import MLP, DINAttention
from torchrec_mdr.models.features import EmbeddedFeatures, FeatureLayout


@dataclass
class DINConfig:
    attention_hidden: list[int] = field(default_factory=lambda: [64, 32],
                                        metadata=bounds(ge=1, help="attention MLP widths"))
    hidden: list[int] = field(default_factory=lambda: [256, 128, 64], metadata=bounds(ge=1, help="MLP widths"))
    dropout: float = field(default=0.0, metadata=bounds(ge=0, lt=1, help="dropout after each hidden layer"))


class QueryProjection(nn.Module):
    """[B, Q] candidate query -> [B, K] key width (identity when they already match)."""

    def __init__(self, query_width: int, key_width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(max(query_width, 1), key_width) if query_width != key_width else None
        self.no_query = query_width == 0  # no candidate column: a learned constant (fx-traceable: no shape test)

    def forward(self, query: torch.Tensor) -> torch.Tensor:
        if self.linear is None:
            return query
        if self.no_query:
            query = query.new_ones(query.shape[0], 1)
        return self.linear(query)


class DINArch(nn.Module):
    """[fields, attention-pooled sequences, domain embedding, dense] -> MLP -> logits.

    Shapes: EmbeddedFeatures -> [B, num_tasks].
    """

    def __init__(self, layout: FeatureLayout, config: DINConfig) -> None:
        super().__init__()
        dim = layout.embedding_dim
        self.domain_embedding = nn.Embedding(layout.num_domains, dim)
        self.queries = nn.ModuleList(QueryProjection(layout.query_width(s), layout.sequence_width(s))
                                     for s in layout.sequences)
        self.attentions = nn.ModuleList(DINAttention(layout.sequence_width(s), config.attention_hidden)
                                        for s in layout.sequences)
        width = (len(layout.fields) + 1) * dim + layout.num_dense
        width += sum(layout.sequence_width(s) for s in layout.sequences)
        self.mlp = MLP(width, config.hidden, out_features=layout.num_tasks, dropout=config.dropout)

    def forward(self, features: EmbeddedFeatures) -> torch.Tensor:
        parts = [features.fields.flatten(1), self.domain_embedding(features.domain), features.dense]
        for sequence, project, attend in zip(features.sequences, self.queries, self.attentions):
            parts.append(attend(project(sequence.query), sequence.keys, sequence.mask))
        return self.mlp(torch.cat(parts, dim=1))
