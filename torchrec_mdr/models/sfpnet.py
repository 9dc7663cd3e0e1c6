"""SFPNet (Zhang et al., SIGIR 2024; papers/sfpnet_sigir24.txt §4): scenario-tailored behaviours.

``L`` stacked Scenario-Tailoring Blocks re-code every id field and every behaviour with the
scenario (SAM, eqs 2–4) and a per-instance context (RTM, eqs 5–7); DIN target attention pools the
tailored behaviours (eq 8); a scenario-aware DNN whose every layer is gated by the scenario predicts
(eqs 9–11). The blocks are in :mod:`torchrec_mdr.models.sfpnet_blocks`.

Choices where the paper is silent or ambiguous (each one tested in ``tests/test_sfpnet.py``):

* **Scenario vector** ``s_m``: a learned embedding of the domain id (the paper's only scenario
  feature), concatenated with the raw embeddings of the id fields listed in ``scenario_features``
  (none by default; e.g. ``user_activity``, an implicit domain feature of the synthetic data).
  Those fields stay ordinary features x_i as well.
* **Features x_i** that are tailored: every id field (``layout.fields``), each one ``d`` wide; the
  **behaviours** of every sequence group, ``d_g = F_g·d`` wide (the group's fields concatenated per
  position: the paper's "pooled embedding of the clicked item and its attribute features").
* **Sequence context width**: ``d_g`` per group, not the ``2d`` of the paper's slice indices (see
  :class:`~torchrec_mdr.models.sfpnet_blocks.ResidualTailoringModule`).
* **DIN query** of a group: the tailored fields of its candidate columns (``item_id`` for
  ``hist_item_id``), concatenated and linearly projected to ``d_g`` when the widths differ (as
  :class:`~torchrec_mdr.models.din.DINArch` does).
* **Dense features** enter the DNN input: ``H¹ = x_1^L ⊕ … ⊕ x_n^L ⊕ V_1 ⊕ … ⊕ dense`` (the paper
  has none); they are not tailored.
* **S-DNN gates** (eqs 10–11): ``A = γ·σ(…)`` with ``dnn_gate_scale`` = γ, default 1 (the paper's
  σ: every gate ≈ ½ at initialisation, so each of the four gated layers halves its input); the
  output layer (the logits of eq 9) is gated like the hidden ones unless ``gate_output_layer=False``.
  γ = 2 (EPNet/PEPNet's gate, ≈ 1 at initialisation) is a deviation from the paper. On the planted data it
  beats γ = 1 in both regimes (+0.0040 at 100k rows, +0.0106 with 1M rows; 6 of 6 seeds each) and with 1M
  rows turns the S-DNN's cost into a gain (+0.0023 over w/o S-DNN, 6 of 6 seeds); on MovieLens-100K, the one
  real dataset, it is below γ = 1 in 5 of 7 seeds (−0.0024, a tie), where the S-DNN with γ = 1 helps (6 of 7
  seeds). So the default stays the paper's γ = 1: the option wins on synthetic data and leans the other way
  on real data (docs/results/v2/README.md, round 9). Try γ = 2 where SFPNet w/o S-DNN beats SFPNet.
  ``dnn_gate_stop_gradient`` (default off, the paper says nothing of it) detaches the scenario features'
  embeddings in the gates' input s_m, as PEPNet's Gate NU does with its general embeddings: the gates
  then cannot pull the shared field embeddings toward what suits the gating.
* **Ablations** (paper Table 5): ``distribution_aware_pooling=False`` = w/o DAP (mean pooling);
  ``use_sam=False`` = w/o SAM; ``use_rtm=False`` = w/o RTM; ``scenario_aware_dnn=False`` = w/o S-DNN
  (a plain MLP over ``H¹ ⊕ s_m``: the scenario stays an input, ungated); ``num_blocks=0`` = w/o STB
  (DIN and the S-DNN over the raw embeddings).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from torchrec_mdr.config import ConfigError, bounds, doc
from torchrec_mdr.models.blocks import MLP, AttentionOptions, SequencePooling
from torchrec_mdr.models.features import EmbeddedFeatures, EmbeddedSequence, FeatureLayout
from torchrec_mdr.models.sfpnet_blocks import ScenarioAwareDNN, ScenarioTailoringBlock


@dataclass
class SFPNetConfig:
    num_blocks: int = field(
        default=3,
        metadata=bounds(ge=0, help="stacked Scenario-Tailoring Blocks L (paper: 3 industrial, 2 Ali-CCP); 0 = w/o STB"),
    )
    sam_hidden: int = field(default=64, metadata=bounds(ge=1, help="hidden width of the SAM gate (W0, eq 3)"))
    context_hidden: int = field(
        default=128, metadata=bounds(ge=1, help="hidden width of the RTM aggregation MLP (W2, eq 5)")
    )
    distribution_aware_pooling: bool = field(
        default=True, metadata=doc("pool sequences by mean ⊕ std (eq 2); false = mean only (w/o DAP)")
    )
    use_sam: bool = field(default=True, metadata=doc("Scenario-Adaptive Module gate (eqs 3-4); false = w/o SAM"))
    use_rtm: bool = field(default=True, metadata=doc("Residual-Tailoring Module (eqs 5-7); false = w/o RTM"))
    scenario_aware_dnn: bool = field(
        default=True, metadata=doc("gate every DNN layer with the scenario (eqs 10-11); false = plain DNN (w/o S-DNN)")
    )
    scenario_features: list[str] = field(
        default_factory=list,
        metadata=doc("id features whose embeddings join the domain-id embedding in the scenario vector s_m"),
    )
    attention_hidden: list[int] = field(
        default_factory=lambda: [64, 32], metadata=bounds(ge=1, help="DIN attention MLP widths")
    )
    hidden: list[int] = field(
        default_factory=lambda: [256, 128, 64], metadata=bounds(ge=1, help="DNN widths (paper: [256, 128, 64])")
    )
    dnn_gate_hidden: int = field(
        default=64, metadata=bounds(ge=1, help="hidden width of each S-DNN layer's gate (W5, eq 10)")
    )
    dnn_gate_scale: float = field(
        default=1.0,
        metadata=bounds(
            gt=0, help="γ of every S-DNN gate, A = γ·σ(·) (eq 10; paper: 1, gates ≈ ½ at init; 2 = PEPNet's)"
        ),
    )
    dnn_gate_stop_gradient: bool = field(
        default=False,
        metadata=doc(
            "the S-DNN gates read s_m with its scenario features' embeddings detached (PEPNet's stop-gradient on "
            "the embedding part of a gate's input): the gates cannot move the shared field embeddings"
        ),
    )
    gate_output_layer: bool = field(
        default=True,
        metadata=doc(
            "gate the S-DNN output layer like the hidden ones (eqs 10-11); false = a plain linear output layer"
        ),
    )
    dropout: float = field(default=0.0, metadata=bounds(ge=0, lt=1, help="dropout after each hidden DNN layer"))

    def validate(self) -> None:
        for key in ("sam_hidden", "context_hidden", "dnn_gate_hidden"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}: {getattr(self, key)!r} is out of range (must be >= 1)")
        if self.num_blocks < 0:
            raise ConfigError(f"num_blocks: {self.num_blocks!r} is out of range (must be >= 0; 0 = w/o STB)")
        for key in ("hidden", "attention_hidden"):
            if any(width < 1 for width in getattr(self, key)):
                raise ConfigError(f"{key}: every width must be >= 1, got {getattr(self, key)!r}")
        if not self.hidden:
            raise ConfigError("hidden: the DNN needs at least one layer")
        if not self.dnn_gate_scale > 0:
            raise ConfigError(f"dnn_gate_scale: {self.dnn_gate_scale!r} is out of range (must be > 0)")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout: {self.dropout!r} is out of range (must be >= 0 and < 1)")
        if self.dnn_gate_stop_gradient and not (self.scenario_aware_dnn and self.scenario_features):
            raise ConfigError(
                "dnn_gate_stop_gradient: needs the S-DNN (scenario_aware_dnn) and at least one of "
                "scenario_features (without them no gate reads a field embedding)"
            )
        if self.num_blocks > 0 and not (self.use_sam or self.use_rtm):
            raise ConfigError(
                "use_sam, use_rtm: both false, a block would do nothing; set num_blocks = 0 for the w/o STB ablation"
            )


class SFPNetArch(nn.Module):
    """Scenario embedding -> L Scenario-Tailoring Blocks -> DIN per sequence group -> S-DNN -> logits.

    Shapes: EmbeddedFeatures (fields [B, n, d], sequences keys [B, L_g, d_g], dense [B, num_dense],
    domain [B]) -> logits [B, num_tasks].
    """

    def __init__(self, layout: FeatureLayout, config: SFPNetConfig) -> None:
        super().__init__()
        try:
            config.validate()
        except ConfigError as error:
            raise ConfigError(f"model.sfpnet.{error}") from None
        self.scenario_index = layout.field_indices(
            config.scenario_features, "model.sfpnet.scenario_features", unique=True
        )
        self.candidate_index = [layout.field_indices(s.candidate_fields, "candidate_fields") for s in layout.sequences]
        dim, num_fields = layout.embedding_dim, len(layout.fields)
        widths = [layout.sequence_width(s) for s in layout.sequences]
        scenario_width = dim * (1 + len(self.scenario_index))
        self.domain_embedding = nn.Embedding(layout.num_domains, dim)
        self.blocks = nn.ModuleList(
            ScenarioTailoringBlock(
                num_fields,
                dim,
                widths,
                scenario_width,
                use_sam=config.use_sam,
                use_rtm=config.use_rtm,
                with_std=config.distribution_aware_pooling,
                sam_hidden=config.sam_hidden,
                context_hidden=config.context_hidden,
            )
            for _ in range(config.num_blocks)
        )
        self.pooling = SequencePooling.of(layout, AttentionOptions("din", din_hidden=config.attention_hidden))
        width = num_fields * dim + self.pooling.out_features + layout.num_dense  # H¹
        if config.scenario_aware_dnn:
            self.dnn: nn.Module = ScenarioAwareDNN(
                width,
                config.hidden,
                layout.num_tasks,
                scenario_width,
                config.dnn_gate_hidden,
                config.dropout,
                gate_scale=config.dnn_gate_scale,
                gate_output=config.gate_output_layer,
            )
        else:
            self.dnn = MLP(width + scenario_width, config.hidden, out_features=layout.num_tasks, dropout=config.dropout)
        self.scenario_aware_dnn = config.scenario_aware_dnn
        self.dnn_gate_stop_gradient = config.dnn_gate_stop_gradient

    def scenario(self, features: EmbeddedFeatures, detach_fields: bool = False) -> torch.Tensor:
        """s_m: [B, d·(1 + len(scenario_features))]; ``detach_fields``: the listed features' embeddings
        without their gradient (the domain-id embedding keeps it)."""
        parts = [self.domain_embedding(features.domain)]
        parts += [
            features.fields[:, i].detach() if detach_fields else features.fields[:, i] for i in self.scenario_index
        ]
        return torch.cat(parts, dim=-1)

    def tailor(self, features: EmbeddedFeatures, scenario: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The stacked blocks: fields [B, n, d] and behaviours [B, L_g, d_g] after block L."""
        fields = features.fields
        behaviours = [s.keys for s in features.sequences]
        masks = [s.mask for s in features.sequences]
        for block in self.blocks:
            fields, behaviours = block(fields, behaviours, masks, scenario)
        return fields, behaviours

    @staticmethod
    def candidate(fields: torch.Tensor, index: list[int]) -> torch.Tensor:
        """A group's DIN query: its candidate columns' tailored fields [B, Q·d] (Q may be 0)."""
        return fields[:, index].flatten(1) if index else fields.new_zeros(fields.shape[0], 0)

    def forward(self, features: EmbeddedFeatures) -> torch.Tensor:
        scenario = self.scenario(features)
        fields, behaviours = self.tailor(features, scenario)
        tailored = [
            EmbeddedSequence(keys, sequence.mask, self.candidate(fields, index))
            for sequence, keys, index in zip(features.sequences, behaviours, self.candidate_index)
        ]
        parts = [fields.flatten(1), *self.pooling(tailored), features.dense.to(fields.dtype)]  # eq 8
        h = torch.cat(parts, dim=-1)  # H¹ (eq 9)
        if self.scenario_aware_dnn:
            if self.dnn_gate_stop_gradient:
                scenario = self.scenario(features, detach_fields=True)
            return self.dnn(h, scenario)
        return self.dnn(torch.cat([h, scenario], dim=-1))
