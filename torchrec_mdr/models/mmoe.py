"""MMoE (Ma et al., KDD 2018, "Modeling Task Relationships in Multi-task Learning with Multi-gate
Mixture-of-Experts") in its multi-domain form: each domain plays the role of a task.

    FlatInput x [B, W] --E expert MLPs--> f_e(x) [B, E, H]
    g^k(x) = softmax(W_gk x)                          (eq. 5; one gate per domain k, no bias)
    f^k(x) = sum_e g^k(x)_e f_e(x)                    (eq. 4)
    y = h^{d(b)}(f^{d(b)}(x))                          (eq. 3; the row's own domain tower)

Only the row's own domain gate is evaluated in the mixture (gathered from all K gates' logits), so a
domain's gate and tower receive gradient only from that domain's rows; the experts are shared.
With one expert the gate is the constant 1 and MMoE is the Shared-Bottom model (tested).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from torchrec_mdr.config import ConfigError, bounds
from torchrec_mdr.models.blocks import DomainTowers, FlatInput, StackedLinear, StackedMLP, select_domain
from torchrec_mdr.models.features import EmbeddedFeatures, FeatureLayout


@dataclass
class MMoEConfig:
    num_experts: int = field(default=4, metadata=bounds(ge=1, help="number of shared experts"))
    expert_hidden: list[int] = field(
        default_factory=lambda: [256, 128], metadata=bounds(ge=1, help="widths of each expert MLP")
    )
    tower_hidden: list[int] = field(
        default_factory=lambda: [64], metadata=bounds(ge=1, help="hidden widths of each domain's tower")
    )
    dropout: float = field(default=0.0, metadata=bounds(ge=0, lt=1, help="dropout after each hidden layer"))


class DomainGates(nn.Module):
    """One softmax gate per domain over E experts, ``g^k(x) = softmax(W_gk x)`` (MMoE eq. 5).

    Shapes: x [B, in], domain [B] -> the row's own domain gate [B, E] (each row sums to 1).
    Parameters: weight [K, in, E] (domain k's gate is slot k).
    """

    def __init__(self, in_features: int, num_domains: int, num_experts: int) -> None:
        super().__init__()
        self.logits = StackedLinear(num_domains, in_features, num_experts, bias=False)

    def forward(self, x: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        return torch.softmax(select_domain(self.logits(x), domain), dim=-1)


class MMoEArch(nn.Module):
    """FlatInput -> E shared experts -> the row's domain gate mixes them -> the row's domain tower.

    Shapes: EmbeddedFeatures -> [B, num_tasks].
    """

    def __init__(self, layout: FeatureLayout, config: MMoEConfig) -> None:
        super().__init__()
        if not config.expert_hidden:
            raise ConfigError("model.mmoe.expert_hidden: needs at least one layer width (an expert is an MLP)")
        self.input = FlatInput(layout)
        self.experts = StackedMLP(config.num_experts, self.input.width, config.expert_hidden, dropout=config.dropout)
        self.gates = DomainGates(self.input.width, layout.num_domains, config.num_experts)
        self.towers = DomainTowers(
            self.experts.out_features, config.tower_hidden, layout.num_domains, layout.num_tasks, config.dropout
        )

    def forward(self, features: EmbeddedFeatures) -> torch.Tensor:
        x = self.input(features)
        gate = self.gates(x, features.domain)  # [B, E]
        mixed = torch.einsum("be,beh->bh", gate, self.experts(x))  # [B, H]
        return self.towers(mixed, features.domain)
