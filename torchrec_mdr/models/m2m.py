"""M2M (Zhang et al., WSDM 2022, "Leaving No One Behind: A Multi-Scenario Multi-Task Meta Learning
Approach for Advertiser Modeling"): experts over the shared input, and a meta unit whose weights a
meta network generates from the scenario knowledge representation, used twice per task — as the
scorer of a meta attention over the experts and as the layers of a residual meta tower.

    x    = FlatInput(features)  or  ContextInput ⊕ MHA-pooled sequences       [B, W]     backbone
    E_i  = ReLU-MLP_i(x)                                                      [B, E, v]  expert views
    T_t  = σ(W_T e_t + b_T),  e_t a learned embedding of task t               [T, v]     task views
    S    = σ(W_S [e_domain ⊕ e_f for f in scenario_features] + b_S)           [B, v]     scenario knowledge
    Meta unit (K layers, weights generated from S, one set per row):
         W_k = reshape(V_k S + c_k) [n, n],  b_k = U_k S + u_k [n],  h_k = σ(h_{k-1} W_k + b_k)
    Meta attention:  a_{t,i} = v_a · Meta_A(E_i ⊕ T_t),  α_t = softmax_i(a_t),  R_t = Σ_i α_{t,i} E_i
    Meta tower:      L^0_t = R_t,  L^j_t = σ(Meta_{t,j}(L^{j-1}_t) + L^{j-1}_t)   j = 1..J
    logit_t = w_t · L^J_t + b_t

σ is a leaky ReLU (``negative_slope``). The meta units are the paper's "Meta(·)": each layer is a
linear map whose weight and bias are the outputs of a linear meta network of S (the row-vector form
``h W`` is the paper's ``W h`` transposed).

Choices where the paper is silent, or where this library's inputs differ (each tested in
tests/test_m2m.py and tests/test_baselines.py):

* **Backbone.** The paper encodes behaviour and performance sequences with a transformer. Here
  ``backbone = "mean"`` (default) feeds the experts the baselines' flat input (id fields,
  domain-id embedding, dense features, each sequence group mean-pooled over its real positions);
  ``"mha"`` (or ``din``, ``can``) replaces the mean by the toolkit's target attention (the candidate as
  the query; options under ``model.m2m.attention``). No self-attention layer over the behaviours.
* **Scenario knowledge.** S is computed from the domain-id embedding (the same table the experts
  see) and the embeddings of the id fields named in ``scenario_features`` (the paper's scenario
  attributes; none by default); one leaky-ReLU layer of width ``view_dim``.
* **Tasks.** One learned embedding per label of the dataset (width D) through one shared layer gives
  T_t; the attention's meta unit and v_a are shared by the tasks (they differ through T_t); every task
  has its own meta tower (its own meta networks) and its own prediction layer. With one task, T_1 is
  a learned constant.
* **Meta tower layer.** Each layer is a meta unit of K generated layers whose last layer is linear;
  the activation follows the residual sum (``σ(h W + b + h)``), as in a residual block.
* **Initialisation.** A meta network generating an n x n weight starts as ``nn.Linear`` scaled by
  1/sqrt(n), so a generated W starts at the spread of a ``nn.Linear(n, n)`` weight instead of
  sqrt(n) times it (without the scaling the residual tower's activations grow with n per layer).
* **Loss.** The paper trains counts with a Poisson loss; here the logits go to the library's
  binary cross-entropy like every ranking model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from torchrec_mdr.config import ConfigError, bounds, doc
from torchrec_mdr.models.blocks import (
    SEQUENCE_BACKBONES,
    ContextInput,
    StackedMLP,
    TargetAttentionConfig,
    sequence_summary,
)
from torchrec_mdr.models.features import EmbeddedFeatures, FeatureLayout


@dataclass
class M2MConfig:
    num_experts: int = field(default=4, metadata=bounds(ge=1, help="number of expert views E"))
    expert_hidden: list[int] = field(
        default_factory=lambda: [128],
        metadata=bounds(ge=1, help="hidden widths of each expert MLP before its view_dim-wide output layer"),
    )
    view_dim: int = field(
        default=32,
        metadata=bounds(
            ge=1, help="v: width of the expert, task and scenario views (the meta attention unit is 2v wide)"
        ),
    )
    meta_layers: int = field(default=1, metadata=bounds(ge=1, help="K: generated layers per meta unit"))
    tower_layers: int = field(default=2, metadata=bounds(ge=1, help="J: residual meta-tower layers per task"))
    negative_slope: float = field(default=0.2, metadata=bounds(ge=0, lt=1, help="slope of the leaky ReLU σ (0 = ReLU)"))
    scenario_features: list[str] = field(
        default_factory=list,
        metadata=doc("id fields whose embeddings join the domain-id embedding in the scenario knowledge S"),
    )
    backbone: str = field(
        default="mean",
        metadata=doc(
            "how behaviour sequences enter the experts: mean (mean-pooled) or a target attention, din / mha / can"
        ),
    )
    attention: TargetAttentionConfig = field(default_factory=TargetAttentionConfig)

    def validate(self) -> None:  # at load time; the message gets the section ("model.m2m: ") in front
        if self.backbone not in SEQUENCE_BACKBONES:
            raise ConfigError(f"backbone: {self.backbone!r} is not one of {list(SEQUENCE_BACKBONES)}")

    dropout: float = field(default=0.0, metadata=bounds(ge=0, lt=1, help="dropout after each expert hidden layer"))


class MetaUnit(nn.Module):
    """K layers of width n whose weights are generated per row from the scenario knowledge S.

    ``W_k = reshape(V_k S + c_k)`` [n, n], ``b_k = U_k S + u_k`` [n], ``h_k = σ(h_{k-1} W_k + b_k)``;
    with ``last_activation = False`` the last layer is linear (the meta tower adds its residual first).

    Shapes: x [B, M, n] (M inputs per row share the row's weights), scenario [B, s] -> [B, M, n].
    """

    def __init__(
        self, width: int, scenario_width: int, layers: int, negative_slope: float, last_activation: bool = True
    ) -> None:
        super().__init__()
        self.width = width
        weight_generators = [nn.Linear(scenario_width, width * width) for _ in range(layers)]
        self.weight_generators = nn.ModuleList(weight_generators)
        self.bias_generators = nn.ModuleList(nn.Linear(scenario_width, width) for _ in range(layers))
        with torch.no_grad():  # a generated W starts at nn.Linear(width, width)'s spread (module doc)
            for generator in weight_generators:
                generator.weight.mul_(1.0 / math.sqrt(width))
                generator.bias.mul_(1.0 / math.sqrt(width))
        self.activation = nn.LeakyReLU(negative_slope)
        self.last_activation = last_activation

    def weights(self, scenario: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``layer``'s generated W [B, n, n] and b [B, 1, n]."""
        weight = self.weight_generators[layer](scenario).view(-1, self.width, self.width)
        return weight, self.bias_generators[layer](scenario).unsqueeze(1)

    def forward(self, x: torch.Tensor, scenario: torch.Tensor) -> torch.Tensor:
        layers = len(self.weight_generators)
        for layer in range(layers):
            weight, bias = self.weights(scenario, layer)
            x = torch.bmm(x, weight) + bias
            if self.last_activation or layer < layers - 1:
                x = self.activation(x)
        return x


class MetaTower(nn.Module):
    """One task's residual meta tower: ``L^j = σ(Meta_j(L^{j-1}) + L^{j-1})``, j = 1..J.

    Shapes: x [B, v], scenario [B, s] -> [B, v].
    """

    def __init__(self, width: int, scenario_width: int, layers: int, meta_layers: int, negative_slope: float) -> None:
        super().__init__()
        self.units = nn.ModuleList(
            MetaUnit(width, scenario_width, meta_layers, negative_slope, last_activation=False) for _ in range(layers)
        )
        self.activation = nn.LeakyReLU(negative_slope)

    def forward(self, x: torch.Tensor, scenario: torch.Tensor) -> torch.Tensor:
        h = x.unsqueeze(1)  # [B, 1, v]
        for unit in self.units:
            h = self.activation(unit(h, scenario) + h)
        return h.squeeze(1)


class M2MArch(nn.Module):
    """Backbone -> expert views; scenario knowledge -> meta attention (per task) -> meta tower (per task).

    Shapes: EmbeddedFeatures -> [B, num_tasks].
    """

    def __init__(self, layout: FeatureLayout, config: M2MConfig) -> None:
        super().__init__()
        self.scenario_index = layout.field_indices(config.scenario_features, "model.m2m.scenario_features", unique=True)
        dim, view = layout.embedding_dim, config.view_dim
        self.num_tasks, self.num_experts = layout.num_tasks, config.num_experts
        self.input = ContextInput(layout)
        self.pooling = sequence_summary(layout, config.backbone, config.attention.options("mha"), "model.m2m.backbone")
        width = self.input.width + self.pooling.out_features
        self.experts = StackedMLP(config.num_experts, width, [*config.expert_hidden, view], dropout=config.dropout)
        self.activation = nn.LeakyReLU(config.negative_slope)
        self.task_embedding = nn.Embedding(layout.num_tasks, dim)
        self.task_view = nn.Linear(dim, view)
        self.scenario_view = nn.Linear(dim * (1 + len(self.scenario_index)), view)
        self.attention_unit = MetaUnit(2 * view, view, config.meta_layers, config.negative_slope)
        self.attention_vector = nn.Linear(2 * view, 1, bias=False)  # v_a
        self.towers = nn.ModuleList(
            MetaTower(view, view, config.tower_layers, config.meta_layers, config.negative_slope)
            for _ in range(layout.num_tasks)
        )
        bound = 1.0 / math.sqrt(view)  # nn.Linear(v, 1)'s initialisation, one per task
        self.prediction_weight = nn.Parameter(torch.empty(layout.num_tasks, view).uniform_(-bound, bound))
        self.prediction_bias = nn.Parameter(torch.empty(layout.num_tasks).uniform_(-bound, bound))

    def backbone(self, features: EmbeddedFeatures) -> torch.Tensor:
        """x [B, W]: the experts' shared input."""
        return torch.cat([self.input(features), *self.pooling(features.sequences)], dim=1)

    def scenario(self, features: EmbeddedFeatures) -> torch.Tensor:
        """S [B, v]: the scenario knowledge representation."""
        parts = [self.input.domain_embedding(features.domain)] + [features.fields[:, i] for i in self.scenario_index]
        return self.activation(self.scenario_view(torch.cat(parts, dim=1)))

    def task_views(self) -> torch.Tensor:
        """T [T, v]."""
        return self.activation(self.task_view(self.task_embedding.weight))

    def meta_attention(self, experts: torch.Tensor, tasks: torch.Tensor, scenario: torch.Tensor) -> torch.Tensor:
        """α [B, T, E]: each task's softmax over the experts, scored by the meta unit of [E_i ⊕ T_t]."""
        num_tasks, num_experts = self.num_tasks, self.num_experts  # ints fixed at build: only B comes from a tensor
        pairs = torch.cat(
            [
                experts.unsqueeze(1).expand(-1, num_tasks, -1, -1),
                tasks.view(1, num_tasks, 1, -1).expand(experts.shape[0], -1, num_experts, -1),
            ],
            dim=3,
        )
        hidden = self.attention_unit(pairs.flatten(1, 2), scenario)  # [B, T * E, 2v]
        scores = self.attention_vector(hidden).view(-1, num_tasks, num_experts)
        return torch.softmax(scores, dim=2)

    def forward(self, features: EmbeddedFeatures) -> torch.Tensor:
        experts = self.experts(self.backbone(features))  # [B, E, v]
        scenario = self.scenario(features)
        alpha = self.meta_attention(experts, self.task_views(), scenario)
        mixed = torch.einsum("bte,bev->btv", alpha, experts)  # R [B, T, v]
        towers = torch.stack([tower(mixed[:, t], scenario) for t, tower in enumerate(self.towers)], dim=1)
        return (towers * self.prediction_weight).sum(2) + self.prediction_bias  # logit_t = w_t · L_t + b_t [B, T]
