"""DNN ("BaseDNN" of the ADS and SFPNet papers): one shared MLP over every embedding.

Behaviour sequences enter mean-pooled over their real (unpadded) positions, the domain id as one
more embedded field, so the baseline sees everything the multi-domain models see.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from torchrec_mdr.config import bounds
from torchrec_mdr.models.blocks import MLP
from torchrec_mdr.models.features import EmbeddedFeatures, FeatureLayout


@dataclass
class DNNConfig:
    hidden: list[int] = field(default_factory=lambda: [256, 128, 64], metadata=bounds(ge=1, help="MLP widths"))
    dropout: float = field(default=0.0, metadata=bounds(ge=0, lt=1, help="dropout after each hidden layer"))


def masked_mean(keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, L, D], [B, L] -> [B, D] mean over real positions (zeros for an empty sequence)."""
    weights = mask.to(keys.dtype)
    return torch.einsum("bl,bld->bd", weights, keys) / weights.sum(1, keepdim=True).clamp_min(1.0)


class DNNArch(nn.Module):
    """[fields, mean-pooled sequences, domain embedding, dense] -> MLP -> logits.

    Shapes: EmbeddedFeatures -> [B, num_tasks].
    """

    def __init__(self, layout: FeatureLayout, config: DNNConfig) -> None:
        super().__init__()
        dim = layout.embedding_dim
        self.domain_embedding = nn.Embedding(layout.num_domains, dim)
        width = (len(layout.fields) + 1) * dim + layout.num_dense
        width += sum(layout.sequence_width(s) for s in layout.sequences)
        self.mlp = MLP(width, config.hidden, out_features=layout.num_tasks, dropout=config.dropout)

    def forward(self, features: EmbeddedFeatures) -> torch.Tensor:
        parts = [features.fields.flatten(1), self.domain_embedding(features.domain), features.dense]
        parts += [masked_mean(s.keys, s.mask) for s in features.sequences]
        return self.mlp(torch.cat(parts, dim=1))
