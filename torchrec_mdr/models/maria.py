"""MARIA (Tian et al., SIGIR 2023, "Multi-Scenario Ranking with Adaptive Feature Learning", arXiv 2306.16732):
the scenario enters the bottom of the network (feature scaling, feature refinement, feature correlation), then a
mixture of experts feeds one tower per scenario plus an extra shared tower weighted by a coupling gate.

    h_1 .. h_F      the fields after the encoder: each id field, each sequence group pooled by target
                    attention (the paper's behaviour field ĥ_b), the dense features      [B, w_f]
    e_s             the row's scenario embedding (⊕ the ``scenario_features`` embeddings)  [B, S]
    FS   ĥ = γ σ(W2 ReLU(W1 [e_s ⊕ sg(h)] + b1) + b2) ⊙ h,  γ = 2,  h = h_1 ⊕ .. ⊕ h_F
    FR   β_f = GS(sigmoid(FCN([ĥ_f ⊕ e_s]))) ∈ R^{N_r}                                     (paper's FR eq.)
         h̃_f = [β_f1 FC_f1(ĥ_f) ⊕ .. ⊕ β_fN FC_fN(ĥ_f)]                                     [B, N_r · r]
    FCM  h̄_f = P_f ĥ_f,  Q_C = [h̄_1 · h̄_2 ⊕ h̄_1 · h̄_3 ⊕ .. ⊕ h̄_{F-1} · h̄_F]             (paper's FCM eq.)
    MoE  x = h̃_1 ⊕ .. ⊕ h̃_F ⊕ Q_C,  m = Σ_e g_e f_e(x),  g = softmax(W_g [x ⊕ e_s])
    α_s = 1/(N_s − 1) Σ_{j ≠ s} e_s · e_{s_j}                                                (coupling gate)
    logits = tower_s(m) + α_s · tower_extra(m)                                                [B, num_tasks]

Sources: the three marked equations and the architecture (the paper's Figure 3: Feature Scaling over all fields,
one Selector with its Refiners per field, FCM beside them, experts with an expert selector, Scene1..N towers of
which only the row's scenario delivers, an Extra tower behind the Coupling Gate) were read from the paper's
equation and figure images; the paper's text (and so its equation numbers) was not available. FS is described,
not given as an equation, in what was available: a scaling factor for every feature element, in [0, 2], whose
gradient does not flow back into the embeddings, "as EPNet"; it is written here as PEPNet's EPNet gate.

Choices where those sources are silent (each one tested in tests/test_maria.py):

* **Fields.** Each id field is one field (the paper groups the user's, the target's, ... features into five
  fields: a finer grouping here, so every field gets its own selector), each sequence group one field (pooled by
  ``backbone``: DIN by default, the paper's target attention; ``mean`` for the pooled lookups), the dense
  features one field (their raw values) when there are any. The domain id is not a field: it is the scenario.
* **Scenario vector.** ``e_s``: a learned embedding of the domain id, ⊕ the raw embeddings of the
  ``scenario_features`` id fields (none by default); FS, every selector and the expert selector read it. The
  coupling gate reads only the domain-id embedding table (``e_{s_j}`` is an embedding per scenario).
* **FS** is one gate over the concatenated fields (EPNet's Gate NU: ``scaling_hidden`` wide, γ = 2), the
  fields detached in its input.
* **FR.** ``FC_fk(h) = ReLU(W_fk h + b_fk)``, ``refiner_dim`` = r wide; the selector's FCN is one linear layer;
  ``num_refiners`` = N_r is the same for every field (the paper's counts vary per field, "usually 2 or 1").
  GS is the Gumbel-softmax of the sigmoid outputs at temperature τ = ``gumbel_temperature`` in training,
  ``softmax(sigmoid(·)/τ)`` (no noise) in evaluation, so evaluation is deterministic; with N_r = 1, β = 1.
* **FCM.** ``P_f`` is a linear map without bias to ``correlation_dim`` for every field; the pairs are i < j in
  field order; the correlations read the scaled fields ĥ (FCM sits beside FR in the figure).
* **MoE.** ``num_experts`` expert MLPs (``expert_hidden``, ReLU) shared by all scenarios; one expert selector
  (softmax over the experts) reading the MoE input and ``e_s`` (the figure draws the scenario into it).
* **Towers.** One MLP per scenario (``tower_hidden``) and one extra MLP of the same shape, each with one output
  unit per task, the towers' outputs summed as logits. α_s is the raw mean of dot products (no squashing, as
  written); it trains the other scenarios' embeddings too. With one domain, α = 0 (no other scenario).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from torchrec_mdr.config import ConfigError, bounds, doc
from torchrec_mdr.models.blocks import (
    MLP,
    SEQUENCE_BACKBONES,
    DomainTowers,
    StackedLinear,
    StackedMLP,
    TargetAttentionConfig,
    sequence_summary,
)
from torchrec_mdr.models.features import EmbeddedFeatures, FeatureLayout
from torchrec_mdr.models.pepnet import EPNet


@dataclass
class MARIAConfig:
    """``model.maria`` in an experiment config."""

    backbone: str = field(
        default="din",
        metadata=doc(
            "how each behaviour sequence becomes its field: din / mha / can target attention (the paper: target "
            "attention) or mean (mean-pooled)"
        ),
    )
    attention: TargetAttentionConfig = field(default_factory=TargetAttentionConfig)
    scenario_features: list[str] = field(
        default_factory=list,
        metadata=doc("id features whose embeddings join the domain-id embedding in the scenario vector e_s"),
    )
    scaling_hidden: int = field(default=64, metadata=bounds(ge=1, help="hidden width of the feature-scaling gate"))
    num_refiners: int = field(default=2, metadata=bounds(ge=1, help="refiners per field N_r (paper: 2 or 1)"))
    refiner_dim: int = field(default=16, metadata=bounds(ge=1, help="output width r of every refiner"))
    gumbel_temperature: float = field(default=1.0, metadata=bounds(gt=0, help="τ of the selectors' Gumbel-softmax"))
    correlation_dim: int = field(default=16, metadata=bounds(ge=1, help="width the FCM projects every field to"))
    num_experts: int = field(default=4, metadata=bounds(ge=1, help="experts of the MoE"))
    expert_hidden: list[int] = field(
        default_factory=lambda: [256, 128], metadata=bounds(ge=1, help="widths of each expert MLP")
    )
    tower_hidden: list[int] = field(
        default_factory=lambda: [64], metadata=bounds(ge=1, help="hidden widths of each scenario tower and the extra")
    )
    dropout: float = field(default=0.0, metadata=bounds(ge=0, lt=1, help="dropout after each hidden layer"))

    def validate(self) -> None:  # at load time; the message gets the section ("model.maria: ") in front
        if self.backbone not in SEQUENCE_BACKBONES:
            raise ConfigError(f"backbone: {self.backbone!r} is not one of {list(SEQUENCE_BACKBONES)}")
        if not self.expert_hidden:
            raise ConfigError("expert_hidden: needs at least one layer width (an expert is an MLP)")


class FieldRefiner(nn.Module):
    """FR for one field: N_r refiners and the scenario-aware selector that weights them.

    ``β = GS(sigmoid(W_s [ĥ ⊕ e_s] + b_s))``, ``h̃ = [β_1 ReLU(FC_1(ĥ)) ⊕ .. ⊕ β_N ReLU(FC_N(ĥ))]``.

    Shapes: h (one field) [B, w], scenario [B, S] -> [B, N_r · r]; :meth:`selection` -> β [B, N_r] (rows sum to 1).
    """

    def __init__(
        self, width: int, scenario_width: int, num_refiners: int, refiner_dim: int, temperature: float
    ) -> None:
        super().__init__()
        self.refiners = StackedLinear(num_refiners, width, refiner_dim)
        self.selector = nn.Linear(width + scenario_width, num_refiners)
        self.temperature = temperature
        self.out_features = num_refiners * refiner_dim

    def selection(self, h: torch.Tensor, scenario: torch.Tensor) -> torch.Tensor:
        logits = torch.sigmoid(self.selector(torch.cat([h, scenario], dim=1)))
        if self.training:  # Gumbel noise, a differentiable stand-in for picking one refiner
            return F.gumbel_softmax(logits, tau=self.temperature, dim=-1)
        return torch.softmax(logits / self.temperature, dim=-1)

    def forward(self, h: torch.Tensor, scenario: torch.Tensor) -> torch.Tensor:
        beta = self.selection(h, scenario)
        refined = torch.relu(self.refiners(h))  # [B, N_r, r]
        return (beta.unsqueeze(-1) * refined).flatten(1)


class FieldCorrelation(nn.Module):
    """FCM: every field projected to one width, then the dot product of every pair (i < j) of fields.

    Shapes: F fields [B, w_f] -> Q_C [B, F (F − 1) / 2].
    """

    left: torch.Tensor
    right: torch.Tensor

    def __init__(self, widths: list[int], dim: int) -> None:
        super().__init__()
        self.projections = nn.ModuleList(nn.Linear(width, dim, bias=False) for width in widths)
        left, right = torch.triu_indices(len(widths), len(widths), offset=1)
        self.register_buffer("left", left, persistent=False)
        self.register_buffer("right", right, persistent=False)
        self.out_features = len(left)

    def forward(self, fields: list[torch.Tensor]) -> torch.Tensor:
        projected = torch.stack([p(f) for p, f in zip(self.projections, fields)], dim=1)  # [B, F, c]
        return (projected[:, self.left] * projected[:, self.right]).sum(-1)


@torch.fx.wrap  # reads the table's size: one node in an fx trace
def coupling_gate(embeddings: torch.Tensor) -> torch.Tensor:
    """α of every scenario, ``α_s = 1/(N_s − 1) Σ_{j≠s} e_s · e_j`` (0 with one scenario).

    Shapes: [N_s, D] -> [N_s].
    """
    similarity = embeddings @ embeddings.T
    others = similarity.sum(1) - similarity.diagonal()
    return others / max(embeddings.shape[0] - 1, 1)


class MARIAArch(nn.Module):
    """Fields -> FS -> FR per field ⊕ FCM -> MoE -> the row's scenario tower + α_s · extra tower.

    Shapes: EmbeddedFeatures -> logits [B, num_tasks].

    Example::

        arch = MARIAArch(layout, MARIAConfig(num_refiners=2, refiner_dim=8, expert_hidden=[64]))
        arch(features).shape  # (B, layout.num_tasks)
    """

    def __init__(self, layout: FeatureLayout, config: MARIAConfig) -> None:
        super().__init__()
        try:
            config.validate()
        except ConfigError as error:
            raise ConfigError(f"model.maria.{error}") from None
        dim = layout.embedding_dim
        self.scenario_index = layout.field_indices(
            config.scenario_features, "model.maria.scenario_features", unique=True
        )
        self.pooling = sequence_summary(
            layout, config.backbone, config.attention.options("din"), "model.maria.backbone"
        )
        self.widths = [dim] * len(layout.fields) + list(self.pooling.group_widths)
        self.widths += [layout.num_dense] if layout.num_dense else []
        ends = torch.tensor(self.widths).cumsum(0).tolist()
        self.bounds = list(zip([0, *ends[:-1]], ends))  # each field's columns in the concatenation
        if not self.widths:
            raise ConfigError("model.maria: the dataset has no id, sequence or dense feature to scale")
        scenario_width = dim * (1 + len(self.scenario_index))
        self.scenario_embedding = nn.Embedding(layout.num_domains, dim)
        self.scaling = EPNet(self.widths, scenario_width, config.scaling_hidden, per_field=False)
        refiners = [
            FieldRefiner(width, scenario_width, config.num_refiners, config.refiner_dim, config.gumbel_temperature)
            for width in self.widths
        ]
        self.refiners = nn.ModuleList(refiners)
        self.correlation = FieldCorrelation(self.widths, config.correlation_dim)
        width = sum(r.out_features for r in refiners) + self.correlation.out_features
        self.experts = StackedMLP(config.num_experts, width, config.expert_hidden, dropout=config.dropout)
        self.expert_selector = nn.Linear(width + scenario_width, config.num_experts)
        hidden = self.experts.out_features
        self.towers = DomainTowers(hidden, config.tower_hidden, layout.num_domains, layout.num_tasks, config.dropout)
        self.extra = MLP(hidden, config.tower_hidden, out_features=layout.num_tasks, dropout=config.dropout)

    def scenario(self, features: EmbeddedFeatures) -> torch.Tensor:
        """e_s: [B, D · (1 + len(scenario_features))]."""
        parts = [self.scenario_embedding(features.domain)] + [features.fields[:, i] for i in self.scenario_index]
        return torch.cat(parts, dim=1)

    def scaled_fields(self, features: EmbeddedFeatures, scenario: torch.Tensor) -> list[torch.Tensor]:
        """FS: the fields ĥ_1 .. ĥ_F (each [B, w_f]) after the element-wise scenario scaling."""
        fields = features.fields
        parts = [fields.flatten(1), *self.pooling(features.sequences), features.dense.to(fields.dtype)]
        scaled, _ = self.scaling(torch.cat(parts, dim=1), scenario)
        return [scaled[:, start:end] for start, end in self.bounds]  # static slices (fx-traceable)

    def mixture_input(self, fields: list[torch.Tensor], scenario: torch.Tensor) -> torch.Tensor:
        """x = h̃_1 ⊕ .. ⊕ h̃_F ⊕ Q_C."""
        refined = [refiner(f, scenario) for refiner, f in zip(self.refiners, fields)]
        return torch.cat([*refined, self.correlation(fields)], dim=1)

    def forward(self, features: EmbeddedFeatures) -> torch.Tensor:
        scenario = self.scenario(features)
        x = self.mixture_input(self.scaled_fields(features, scenario), scenario)
        gate = torch.softmax(self.expert_selector(torch.cat([x, scenario], dim=1)), dim=-1)  # [B, E]
        mixed = torch.einsum("be,beh->bh", gate, self.experts(x))
        alpha = coupling_gate(self.scenario_embedding.weight)[features.domain]  # [B]
        return self.towers(mixed, features.domain) + alpha.unsqueeze(1) * self.extra(mixed)
