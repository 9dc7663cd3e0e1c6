"""The target-attention models DIN, MHA and CAN: one arch, three attention kinds.

    ContextInput [fields, domain-id embedding, dense]
    ⊕ SequencePooling (per group: candidate query projected to the key width, then the attention)
    -> MLP -> logits

These are the backbones of the ADS paper's Table 2 (the models that ADS personalises). DIN has its
own module (``din.py``: the first of them, with its paper's notes); MHA and CAN are here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from torchrec_mdr.config import bounds
from torchrec_mdr.models.blocks import MLP, AttentionOptions, ContextInput, SequencePooling
from torchrec_mdr.models.features import EmbeddedFeatures, FeatureLayout


@dataclass
class MHAConfig:
    heads: int = field(default=2, metadata=bounds(ge=1, help="attention heads"))
    head_dim: int = field(default=16, metadata=bounds(ge=1, help="d_A: query/key/value width per head"))
    hidden: list[int] = field(default_factory=lambda: [256, 128, 64], metadata=bounds(ge=1, help="MLP widths"))
    dropout: float = field(default=0.0, metadata=bounds(ge=0, lt=1, help="dropout after each hidden layer"))

    def attention(self) -> AttentionOptions:
        return AttentionOptions("mha", heads=self.heads, head_dim=self.head_dim)


@dataclass
class CANConfig:
    micro_hidden: list[int] = field(
        default_factory=lambda: [8, 4], metadata=bounds(ge=1, help="co-action micro-MLP layer widths")
    )
    orders: int = field(default=1, metadata=bounds(ge=1, help="CAN multi-order enhancement: powers 1..orders"))
    hidden: list[int] = field(default_factory=lambda: [256, 128, 64], metadata=bounds(ge=1, help="MLP widths"))
    dropout: float = field(default=0.0, metadata=bounds(ge=0, lt=1, help="dropout after each hidden layer"))

    def attention(self) -> AttentionOptions:
        return AttentionOptions("can", micro_hidden=self.micro_hidden, orders=self.orders)


class TargetAttentionArch(nn.Module):
    """[fields, domain embedding, dense, attention-pooled sequences] -> MLP -> logits.

    Shapes: EmbeddedFeatures -> [B, num_tasks].
    """

    def __init__(self, layout: FeatureLayout, attention: AttentionOptions, hidden: list[int], dropout: float) -> None:
        super().__init__()
        self.input = ContextInput(layout)
        self.pooling = SequencePooling.of(layout, attention)
        self.mlp = MLP(
            self.input.width + self.pooling.out_features, hidden, out_features=layout.num_tasks, dropout=dropout
        )

    def forward(self, features: EmbeddedFeatures) -> torch.Tensor:
        return self.mlp(torch.cat([self.input(features), *self.pooling(features.sequences)], dim=1))


class MHAArch(TargetAttentionArch):
    """Multi-head target attention backbone (ADS eqs 8–12 with a per-row query)."""

    def __init__(self, layout: FeatureLayout, config: MHAConfig) -> None:
        super().__init__(layout, config.attention(), config.hidden, config.dropout)


class CANArch(TargetAttentionArch):
    """CAN backbone: the candidate parameterises a micro-MLP applied to every behaviour."""

    def __init__(self, layout: FeatureLayout, config: CANConfig) -> None:
        super().__init__(layout, config.attention(), config.hidden, config.dropout)
