"""PLE (Tang et al., RecSys 2020, "Progressive Layered Extraction") in its multi-domain form: each
domain plays the role of a task.

One CGC (Customized Gate Control) level j, for every domain k (eqs. 2-5 of the paper)::

    S^{k,j} = [E_{k,1}, ..., E_{k,m_s}, E_{s,1}, ..., E_{s,m_h}]    own specific experts + shared experts
    g^{k,j} = softmax(W^{k,j} g^{k,j-1}) . S^{k,j}(g^{k,j-1})         gate input: domain k's previous output

and, at every level but the last, a shared gate over *all* experts (every domain's specific ones and
the shared ones) whose input and output are the shared path ``g^{s,j-1} -> g^{s,j}``. Level 1 takes
the flat input on every path. After ``num_levels`` levels the row's own domain output goes through
its own domain tower (eq. 1, ``y^k = t^k(g^{k,N})``).

Gradient flow (a property of PLE itself, tested): the last level's specific experts, the domain
gates of the last level and the towers receive gradient only from their domain's rows. Below the
last level a domain's specific experts also feed the shared gate, so they learn from every row
(that is how PLE shares knowledge across tasks; with ``num_levels = 1`` PLE is CGC and nothing
domain-specific is shared).

Every domain's path is computed for every row (the shared gates need them); the last level is also
computed for all domains and the row's own is gathered, which keeps the code vectorised at the
cost of K times the last level's FLOPs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from torchrec_mdr.config import ConfigError, bounds
from torchrec_mdr.models.blocks import DomainTowers, FlatInput, StackedLinear, StackedMLP, select_domain
from torchrec_mdr.models.features import EmbeddedFeatures, FeatureLayout


@dataclass
class PLEConfig:
    num_levels: int = field(default=2, metadata=bounds(ge=1, help="stacked CGC levels (1 = CGC)"))
    num_shared_experts: int = field(default=1, metadata=bounds(ge=0, help="shared experts per level"))
    num_specific_experts: int = field(default=1, metadata=bounds(ge=0, help="experts per domain per level"))
    expert_hidden: list[int] = field(
        default_factory=lambda: [256], metadata=bounds(ge=1, help="widths of each expert MLP (every level)")
    )
    tower_hidden: list[int] = field(
        default_factory=lambda: [64], metadata=bounds(ge=1, help="hidden widths of each domain's tower")
    )
    dropout: float = field(default=0.0, metadata=bounds(ge=0, lt=1, help="dropout after each hidden layer"))


class CGCLevel(nn.Module):
    """One Customized Gate Control level (PLE eqs. 2-5), for K domains.

    Shapes: domain_inputs [B, K, in] (each domain's previous output; level 1: the flat input
    expanded), shared_input [B, in] -> (domain_outputs [B, K, H], shared_output [B, H] or None when
    the level has no shared gate, i.e. it is the last one).
    Expert order: specific experts grouped by domain (domain k owns groups
    ``k * num_specific .. (k + 1) * num_specific - 1``), then the shared experts; a domain gate's
    weights are ``[own specific..., shared...]``.
    """

    def __init__(
        self,
        in_features: int,
        hidden: list[int],
        num_domains: int,
        num_specific: int,
        num_shared: int,
        shared_gate: bool,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_domains, self.num_specific, self.num_shared = num_domains, num_specific, num_shared
        self.specific = (
            StackedMLP(num_domains * num_specific, in_features, hidden, dropout=dropout) if num_specific else None
        )
        self.shared = StackedMLP(num_shared, in_features, hidden, dropout=dropout) if num_shared else None
        self.domain_gates = StackedLinear(num_domains, in_features, num_specific + num_shared, bias=False)
        self.shared_gate = (
            StackedLinear(1, in_features, num_domains * num_specific + num_shared, bias=False) if shared_gate else None
        )
        self.out_features = hidden[-1]

    def domain_gate_weights(self, domain_inputs: torch.Tensor) -> torch.Tensor:
        """[B, K, in] -> softmax weights [B, K, num_specific + num_shared] (own specific, then shared)."""
        return torch.softmax(self.domain_gates(domain_inputs), dim=-1)

    def forward(
        self, domain_inputs: torch.Tensor, shared_input: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, num_domains = domain_inputs.shape[0], self.num_domains
        experts = []  # per domain: [B, K, n, H]
        all_experts = []  # for the shared gate: [B, n, H]
        if self.specific is not None:
            specific_inputs = domain_inputs.repeat_interleave(self.num_specific, dim=1)  # [B, K * m_s, in]
            specific = self.specific(specific_inputs)  # [B, K * m_s, H]
            experts.append(specific.view(batch, num_domains, self.num_specific, -1))
            all_experts.append(specific)
        if self.shared is not None:
            shared = self.shared(shared_input)  # [B, m_h, H]
            experts.append(shared.unsqueeze(1).expand(-1, num_domains, -1, -1))
            all_experts.append(shared)
        per_domain = torch.cat(experts, dim=2)  # [B, K, m_s + m_h, H]
        domain_outputs = torch.einsum("bke,bkeh->bkh", self.domain_gate_weights(domain_inputs), per_domain)
        if self.shared_gate is None:
            return domain_outputs, None
        weights = torch.softmax(self.shared_gate(shared_input).squeeze(1), dim=-1)  # [B, K * m_s + m_h]
        shared_output = torch.einsum("be,beh->bh", weights, torch.cat(all_experts, dim=1))
        return domain_outputs, shared_output


class PLEArch(nn.Module):
    """FlatInput -> ``num_levels`` CGC levels -> the row's domain output -> the row's domain tower.

    Shapes: EmbeddedFeatures -> [B, num_tasks].
    """

    def __init__(self, layout: FeatureLayout, config: PLEConfig) -> None:
        super().__init__()
        if not config.expert_hidden:
            raise ConfigError("model.ple.expert_hidden: needs at least one layer width (an expert is an MLP)")
        if config.num_specific_experts + config.num_shared_experts == 0:
            raise ConfigError(
                "model.ple: num_specific_experts + num_shared_experts must be at least 1 "
                "(a domain gate needs an expert to weigh)"
            )
        self.input = FlatInput(layout)
        self.num_domains = layout.num_domains
        width = self.input.width
        levels = []
        for level in range(config.num_levels):
            levels.append(
                CGCLevel(
                    width,
                    config.expert_hidden,
                    layout.num_domains,
                    config.num_specific_experts,
                    config.num_shared_experts,
                    shared_gate=level < config.num_levels - 1,
                    dropout=config.dropout,
                )
            )
            width = levels[-1].out_features
        self.levels = nn.ModuleList(levels)
        self.towers = DomainTowers(width, config.tower_hidden, layout.num_domains, layout.num_tasks, config.dropout)

    def forward(self, features: EmbeddedFeatures) -> torch.Tensor:
        x = self.input(features)
        domain_inputs, shared_input = x.unsqueeze(1).expand(-1, self.num_domains, -1), x
        for level in self.levels:
            domain_inputs, shared_input = level(domain_inputs, shared_input)
        return self.towers(select_domain(domain_inputs, features.domain), features.domain)
