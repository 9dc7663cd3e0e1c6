"""PEPNet (Chang et al., KDD 2023, "Parameter and Embedding Personalized Network for Infusing with
Personalized Prior Information").

    Gate NU      U(x) = gamma * sigmoid(W2 ReLU(W1 x + b1) + b2),  gamma = 2          (eqs. 1-2)
    EPNet        delta_domain = U_ep(E(F_d) ⊕ ⊘(E)),  O_ep = delta_domain ⊗ E          (eqs. 3-4)
    PPNet        delta_task^l = U_pp^l(O_prior ⊕ ⊘(O_ep)),   O_prior = E(F_u) ⊕ ...    (eqs. 5-6)
                 O_pp^l = delta_task^l ⊗ H^l,  H^{l+1} = f(O_pp^l W^l + b^l)             (eqs. 7-8)

(⊘ is stop-gradient, ⊕ concatenation, ⊗ element-wise product.)

How the paper maps onto this library (multi-domain, usually single-task data):

* **Domains enter through EPNet.** ``E(F_d)`` is the domain-id embedding (this arch's own table)
  ⊕ the embeddings of ``domain_features`` (e.g. an implicit domain feature such as an activity
  bucket; default none). ``E``, the general embeddings, are the id-field embeddings and each
  sequence group's behaviours mean-pooled (the same inputs :class:`~torchrec_mdr.models.blocks.FlatInput`
  gives the other baselines) or, with ``backbone = din / mha / can``, pooled by that target attention
  (the candidate attends to the behaviours before EPNet gates the result: the ADS paper's
  "DIN +PEPNet"); the dense features join the tower input ungated. The gate input
  holds ``E`` detached (stop-gradient), so the embeddings learn only through the gated path.
  ``epnet_gate = "field"`` (default) gives one gate per field (each field embedding re-weighted
  as a whole, the reading of the paper's "feature importance"), ``"element"`` one per embedding
  element (what most public implementations do).
* **Tasks are the dataset's tasks.** PPNet has one tower per task (T = num_tasks, usually 1);
  towers are shared by all domains, as in the paper (PEPNet personalises a shared network instead
  of splitting it by domain). ``O_prior`` is the embeddings of ``prior_features`` (default: the
  id fields whose name starts with ``user``) and is not detached (the paper stops only ``O_ep``).
* **Which layers PPNet scales.** Each Gate NU ``U_pp^l`` outputs T * width(H^l) values, one slice
  per task, and scales the input of every Linear of the towers: ``H^1`` is the tower input
  (O_ep ⊕ dense) and ``H^{l>1}`` are the hidden activations, so the last hidden layer is scaled
  before the output Linear (eq. 7 for l = 1..L+1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from torchrec_mdr.config import ConfigError, bounds, doc
from torchrec_mdr.models.blocks import SEQUENCE_BACKBONES, StackedLinear, TargetAttentionConfig, sequence_summary
from torchrec_mdr.models.features import EmbeddedFeatures, FeatureLayout


@dataclass
class PEPNetConfig:
    hidden: list[int] = field(
        default_factory=lambda: [256, 128, 64], metadata=bounds(ge=1, help="hidden widths of each task tower")
    )
    gate_hidden: int = field(default=64, metadata=bounds(ge=1, help="width of every Gate NU's first layer"))
    gamma: float = field(default=2.0, metadata=bounds(gt=0, help="Gate NU scale (gates lie in (0, gamma))"))
    domain_features: list[str] = field(
        default_factory=list,
        metadata=doc(
            "id fields that describe the domain, fed to EPNet's gate with the domain id (e.g. an activity bucket)"
        ),
    )
    prior_features: list[str] | None = field(
        default=None, metadata=doc("PPNet's personalised prior id fields (default: fields named user*)")
    )
    epnet_gate: Literal["field", "element"] = field(
        default="field", metadata=doc("EPNet gate granularity: one per field or one per embedding element")
    )
    dropout: float = field(default=0.0, metadata=bounds(ge=0, lt=1, help="dropout after each hidden layer"))
    backbone: str = field(
        default="mean",
        metadata=doc(
            "how each behaviour sequence becomes one EPNet slot: mean (mean-pooled, the paper's DNN form) or a target "
            "attention, din / mha / can (the ADS paper's 'DIN +PEPNet', 'MHA +PEPNet', 'CAN +PEPNet')"
        ),
    )
    attention: TargetAttentionConfig = field(default_factory=TargetAttentionConfig)

    def validate(self) -> None:  # at load time; the message gets the section ("model.pepnet: ") in front
        if self.backbone not in SEQUENCE_BACKBONES:
            raise ConfigError(f"backbone: {self.backbone!r} is not one of {list(SEQUENCE_BACKBONES)}")


class GateNU(nn.Module):
    """Gate Neural Unit (PEPNet eqs. 1-2): ``gamma * sigmoid(W2 ReLU(W1 x + b1) + b2)``.

    Shapes: [B, in] -> [B, out], every value in (0, gamma).
    """

    def __init__(self, in_features: int, hidden: int, out_features: int, gamma: float = 2.0) -> None:
        super().__init__()
        self.first = nn.Linear(in_features, hidden)
        self.second = nn.Linear(hidden, out_features)
        self.gamma = gamma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gamma * torch.sigmoid(self.second(torch.relu(self.first(x))))


class EPNet(nn.Module):
    """Embedding Personalized Network (PEPNet eqs. 3-4): ``O_ep = U_ep(E(F_d) ⊕ ⊘(E)) ⊗ E``.

    ``E`` is a concatenation of slots (one per field / pooled sequence group) of the given widths;
    with ``per_field`` the gate has one value per slot, broadcast over the slot's width, else one per
    element.

    Shapes: general [B, sum(widths)], domain_side [B, domain_width] -> (O_ep [B, sum(widths)],
    gate [B, len(widths)] or [B, sum(widths)]).
    """

    # buffers (registered in __init__)
    slot_widths: torch.Tensor

    def __init__(
        self, slot_widths: list[int], domain_width: int, hidden: int, per_field: bool, gamma: float = 2.0
    ) -> None:
        super().__init__()
        width = sum(slot_widths)
        self.per_field = per_field
        self.register_buffer("slot_widths", torch.tensor(slot_widths, dtype=torch.long), persistent=False)
        self.gate = GateNU(domain_width + width, hidden, len(slot_widths) if per_field else width, gamma)

    def forward(self, general: torch.Tensor, domain_side: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gate = self.gate(torch.cat([domain_side, general.detach()], dim=1))
        scale = (
            gate.repeat_interleave(self.slot_widths, dim=1, output_size=general.shape[1]) if self.per_field else gate
        )
        return general * scale, gate


class PPNetTowers(nn.Module):
    """Parameter Personalized Network (PEPNet eqs. 5-8): T task towers, every layer input gated.

    ``H^1`` = tower input, for each layer l: ``O^l = U_pp^l(prior ⊕ ⊘(O_ep))[task slice] ⊗ H^l``,
    ``H^{l+1} = ReLU(O^l W^l_t + b^l_t)`` (no ReLU on the output layer, which gives one logit per task).

    Shapes: tower_input [B, in], prior [B, P], general [B, G] (O_ep; detached inside) -> logits [B, T].
    """

    def __init__(
        self,
        in_features: int,
        hidden: list[int],
        num_tasks: int,
        prior_width: int,
        general_width: int,
        gate_hidden: int,
        gamma: float = 2.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        widths = [in_features, *hidden]
        self.num_tasks = num_tasks
        self.layers = nn.ModuleList(StackedLinear(num_tasks, a, b) for a, b in zip(widths, [*hidden, 1]))
        self.gates = nn.ModuleList(
            GateNU(prior_width + general_width, gate_hidden, num_tasks * w, gamma) for w in widths
        )
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def layer_gates(self, prior: torch.Tensor, general: torch.Tensor) -> list[torch.Tensor]:
        """Each layer's gates [B, T, width(H^l)], computed from ``prior ⊕ ⊘(general)``."""
        gate_input = torch.cat([prior, general.detach()], dim=1)
        return [gate(gate_input).view(gate_input.shape[0], self.num_tasks, -1) for gate in self.gates]

    def forward(self, tower_input: torch.Tensor, prior: torch.Tensor, general: torch.Tensor) -> torch.Tensor:
        h = tower_input.unsqueeze(1)  # [B, 1, in]: the same input for every task until gated
        last = len(self.layers) - 1
        for index, (layer, gate) in enumerate(zip(self.layers, self.layer_gates(prior, general))):
            h = layer(gate * h)
            if index < last:
                h = self.dropout(torch.relu(h))
        return h.squeeze(-1)  # [B, T]


class PEPNetArch(nn.Module):
    """EPNet-gated embeddings (domain-personalised) -> PPNet-gated task towers (user-personalised).

    Shapes: EmbeddedFeatures -> [B, num_tasks].
    """

    def __init__(self, layout: FeatureLayout, config: PEPNetConfig) -> None:
        super().__init__()
        if config.epnet_gate not in ("field", "element"):
            raise ConfigError(f"model.pepnet.epnet_gate: {config.epnet_gate!r} is not one of 'field', 'element'")
        dim = layout.embedding_dim
        self.domain_fields = layout.field_indices(config.domain_features, "model.pepnet.domain_features")
        prior_names = (
            config.prior_features
            if config.prior_features is not None
            else [name for name in layout.fields if name.startswith("user")]
        )
        self.prior_fields = layout.field_indices(prior_names, "model.pepnet.prior_features")
        self.pooling = sequence_summary(
            layout, config.backbone, config.attention.options("din"), "model.pepnet.backbone"
        )
        slot_widths = [dim] * len(layout.fields) + list(self.pooling.group_widths)
        if not slot_widths:
            raise ConfigError("model.pepnet: the dataset has no id fields or sequences for EPNet to gate")
        general_width = sum(slot_widths)
        self.domain_embedding = nn.Embedding(layout.num_domains, dim)
        self.epnet = EPNet(
            slot_widths,
            dim * (1 + len(self.domain_fields)),
            config.gate_hidden,
            config.epnet_gate == "field",
            config.gamma,
        )
        self.ppnet = PPNetTowers(
            general_width + layout.num_dense,
            config.hidden,
            layout.num_tasks,
            dim * len(self.prior_fields),
            general_width,
            config.gate_hidden,
            config.gamma,
            config.dropout,
        )

    def forward(self, features: EmbeddedFeatures) -> torch.Tensor:
        fields = features.fields
        general = torch.cat([fields.flatten(1), *self.pooling(features.sequences)], dim=1)
        domain_side = torch.cat(
            [self.domain_embedding(features.domain), fields[:, self.domain_fields].flatten(1)], dim=1
        )
        personalised, _ = self.epnet(general, domain_side)
        prior = fields[:, self.prior_fields].flatten(1)
        return self.ppnet(torch.cat([personalised, features.dense], dim=1), prior, personalised)
