"""Target-attention backbones MHA and CAN: the DIN model (``din.py``) with another attention block.

Same input and query handling as :class:`~torchrec_mdr.models.din.DINArch`: each sequence group's
query is the candidate's embeddings in the group's tables, linearly projected to the key width when
the widths differ (``QueryProjection``); the attention-pooled sequences join the fields, the
domain-id embedding and the dense features in one MLP. These are the "MHA" and "CAN" rows of the
ADS paper's Table 2 (the backbones that ADS personalises); ``din`` keeps its own module and config.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from torchrec_mdr.config import bounds
from torchrec_mdr.models.attention import build_attention
from torchrec_mdr.models.blocks import MLP
from torchrec_mdr.models.din import QueryProjection
from torchrec_mdr.models.features import EmbeddedFeatures, FeatureLayout


@dataclass
class MHAConfig:
    heads: int = field(default=2, metadata=bounds(ge=1, help="attention heads"))
    head_dim: int = field(default=16, metadata=bounds(ge=1, help="d_A: query/key/value width per head"))
    hidden: list[int] = field(default_factory=lambda: [256, 128, 64], metadata=bounds(ge=1, help="MLP widths"))
    dropout: float = field(default=0.0, metadata=bounds(ge=0, lt=1, help="dropout after each hidden layer"))


@dataclass
class CANConfig:
    micro_hidden: list[int] = field(default_factory=lambda: [8, 4],
                                    metadata=bounds(ge=1, help="co-action micro-MLP layer widths"))
    orders: int = field(default=1, metadata=bounds(ge=1, help="CAN multi-order enhancement: powers 1..orders"))
    hidden: list[int] = field(default_factory=lambda: [256, 128, 64], metadata=bounds(ge=1, help="MLP widths"))
    dropout: float = field(default=0.0, metadata=bounds(ge=0, lt=1, help="dropout after each hidden layer"))


class TargetAttentionArch(nn.Module):
    """[fields, attention-pooled sequences, domain embedding, dense] -> MLP -> logits.

    ``backbone`` picks the attention (``din``, ``mha`` or ``can``, see :mod:`.attention`).
    Shapes: EmbeddedFeatures -> [B, num_tasks].
    """

    def __init__(self, layout: FeatureLayout, backbone: str, hidden: list[int], dropout: float,
                 **attention_options) -> None:
        super().__init__()
        dim = layout.embedding_dim
        self.domain_embedding = nn.Embedding(layout.num_domains, dim)
        self.queries = nn.ModuleList(QueryProjection(layout.query_width(s), layout.sequence_width(s))
                                     for s in layout.sequences)
        self.attentions = nn.ModuleList(build_attention(backbone, layout.sequence_width(s), **attention_options)
                                        for s in layout.sequences)
        width = (len(layout.fields) + 1) * dim + layout.num_dense
        width += sum(attention.out_features for attention in self.attentions)
        self.mlp = MLP(width, hidden, out_features=layout.num_tasks, dropout=dropout)

    def forward(self, features: EmbeddedFeatures) -> torch.Tensor:
        parts = [features.fields.flatten(1), self.domain_embedding(features.domain), features.dense]
        for sequence, project, attend in zip(features.sequences, self.queries, self.attentions):
            parts.append(attend(project(sequence.query), sequence.keys, sequence.mask))
        return self.mlp(torch.cat(parts, dim=1))


_UNUSED = dict(din_hidden=[1], heads=1, head_dim=1, micro_hidden=[1], orders=1)  # options of other backbones


class MHAArch(TargetAttentionArch):
    """Multi-head target attention backbone (ADS eqs 8–12 with a per-row query)."""

    def __init__(self, layout: FeatureLayout, config: MHAConfig) -> None:
        super().__init__(layout, "mha", config.hidden, config.dropout,
                         **{**_UNUSED, "heads": config.heads, "head_dim": config.head_dim})


class CANArch(TargetAttentionArch):
    """CAN backbone: the candidate parameterises a micro-MLP applied to every behaviour."""

    def __init__(self, layout: FeatureLayout, config: CANConfig) -> None:
        super().__init__(layout, "can", config.hidden, config.dropout,
                         **{**_UNUSED, "micro_hidden": config.micro_hidden, "orders": config.orders})
