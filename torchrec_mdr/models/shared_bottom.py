"""Shared-Bottom (Caruana 1997, the multi-task baseline) in its multi-domain form.

Each domain plays the role of a task: one shared MLP bottom over the flat input, one tower per
domain, and every row is scored by its own domain's tower::

    FlatInput [B, W] --bottom MLP--> h [B, H] --DomainTowers (K towers, row's own)--> [B, T]

The towers are :class:`~torchrec_mdr.models.blocks.stacked.DomainTowers` (all K evaluated for every row,
each row keeps its own; a domain's tower gets gradient only from its rows).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from torchrec_mdr.config import bounds
from torchrec_mdr.models.blocks import MLP, DomainTowers, FlatInput
from torchrec_mdr.models.features import EmbeddedFeatures, FeatureLayout


@dataclass
class SharedBottomConfig:
    bottom_hidden: list[int] = field(
        default_factory=lambda: [256, 128], metadata=bounds(ge=1, help="shared bottom MLP widths")
    )
    tower_hidden: list[int] = field(
        default_factory=lambda: [64], metadata=bounds(ge=1, help="hidden widths of each domain's tower")
    )
    dropout: float = field(default=0.0, metadata=bounds(ge=0, lt=1, help="dropout after each hidden layer"))


class SharedBottomArch(nn.Module):
    """FlatInput -> shared bottom MLP -> the row's domain tower -> logits.

    Shapes: EmbeddedFeatures -> [B, num_tasks].
    """

    def __init__(self, layout: FeatureLayout, config: SharedBottomConfig) -> None:
        super().__init__()
        self.input = FlatInput(layout)
        self.bottom = MLP(self.input.width, config.bottom_hidden, dropout=config.dropout)
        self.towers = DomainTowers(
            self.bottom.out_features, config.tower_hidden, layout.num_domains, layout.num_tasks, config.dropout
        )

    def forward(self, features: EmbeddedFeatures) -> torch.Tensor:
        return self.towers(self.bottom(self.input(features)), features.domain)
