"""DNN ("BaseDNN" of the ADS and SFPNet papers): one shared MLP over every embedding.

Behaviour sequences enter mean-pooled over their real (unpadded) positions, the domain id as one
more embedded field, so the baseline sees everything the multi-domain models see.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from torchrec_mdr.config import bounds
from torchrec_mdr.models.blocks import MLP, FlatInput
from torchrec_mdr.models.features import EmbeddedFeatures, FeatureLayout


@dataclass
class DNNConfig:
    hidden: list[int] = field(default_factory=lambda: [256, 128, 64], metadata=bounds(ge=1, help="MLP widths"))
    dropout: float = field(default=0.0, metadata=bounds(ge=0, lt=1, help="dropout after each hidden layer"))


class DNNArch(nn.Module):
    """[fields, mean-pooled sequences, domain embedding, dense] -> MLP -> logits.

    Shapes: EmbeddedFeatures -> [B, num_tasks].
    """

    def __init__(self, layout: FeatureLayout, config: DNNConfig) -> None:
        super().__init__()
        self.input = FlatInput(layout)
        self.mlp = MLP(self.input.width, config.hidden, out_features=layout.num_tasks, dropout=config.dropout)

    def forward(self, features: EmbeddedFeatures) -> torch.Tensor:
        return self.mlp(self.input(features))
