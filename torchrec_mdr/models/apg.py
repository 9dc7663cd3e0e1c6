"""APG (Yan et al., NeurIPS 2022, "APG: Adaptive Parameter Generation Network for Click-Through Rate
Prediction"): a DNN whose every hidden layer's weight is generated per sample from a condition.

    x   = [fields, domain embedding, dense, pooled sequences]         the baselines' flat input [B, M_0]
          (sequences mean-pooled; ``backbone = din / mha / can``: pooled by that target attention)
    z_i = [e_domain(i), e_f(i) for f in domain_features]              the condition (group-wise) [B, C]
    h^l = ReLU(U_l S_l(z_i) V_l h^{l-1} + b_l),   S_l(z) = reshape(G_l(z)) [K, K]
          computed as U_l (S_l (V_l h)): O(M K + K^2 + K N) per row, never the N x M matrix
    U_l = U^l_l U^r_l,  V_l = V^l_l V^r_l   when over_rank P > 0 (over-parameterisation)
    logits = W_o h^L + b_o                                                             [B, num_tasks]

The generated layers are :class:`~torchrec_mdr.models.blocks.GeneratedMLP` (``blocks/generated.py``,
which holds the equations, the three ``generation`` forms — shared U, V (default), generated U_i,
S_i, V_i, basic full W_i — and the initialisation).

How this library's inputs enter (the paper conditions on user / item groups or on the input; each
choice is tested in tests/test_apg.py and tests/test_baselines.py):

* **Condition = the domain.** ``condition = "group"`` (default): z_i is the domain-id embedding
  (the same table as the input's domain field) ⊕ the embeddings of ``domain_features`` (named id
  fields describing the domain, e.g. an activity bucket; default none). Rows of one domain (and one
  value of each domain feature) share their weights, so the model is a per-domain network whose
  K x K cores are generated from a learned domain vector. ``"self"`` conditions each layer on its
  own input (the paper's self-wise, no domain beyond the input's domain field), ``"mix"`` on both.
* **Which layers are generated.** Every hidden layer; the output layer (N = num_tasks, so K <= 1)
  is a plain shared Linear, one logit per task (APG has no towers).
* **Defaults** (ours, not tuned): K = 8, P = 64 (over-parameterised), a generator with one hidden
  layer of 64, shared U, V, the hidden widths of the other baselines ([256, 128, 64]).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from torchrec_mdr.config import ConfigError, bounds, doc
from torchrec_mdr.models.blocks import (
    SEQUENCE_BACKBONES,
    ContextInput,
    GeneratedMLP,
    TargetAttentionConfig,
    sequence_summary,
)
from torchrec_mdr.models.features import EmbeddedFeatures, FeatureLayout


@dataclass
class APGConfig:
    hidden: list[int] = field(
        default_factory=lambda: [256, 128, 64], metadata=bounds(ge=1, help="widths of the generated hidden layers")
    )
    rank: int = field(
        default=8, metadata=bounds(ge=1, help="K: the generated core S is K x K (cut to a layer's min(in, out))")
    )
    generation: Literal["shared", "specific", "full"] = field(
        default="shared",
        metadata=doc(
            "what is generated per row: shared (S_i; U, V shared by all rows, the paper's APG), specific "
            "(U_i, S_i, V_i) or full (the whole W_i, basic APG)"
        ),
    )
    over_rank: int = field(
        default=64,
        metadata=bounds(ge=0, help="P: over-parameterise U = U^l U^r, V = V^l V^r (0: off; shared only, P >= K)"),
    )
    condition: Literal["group", "self", "mix"] = field(
        default="group",
        metadata=doc(
            "what the generators see: group (domain embedding + domain_features), self (the layer input), mix (both)"
        ),
    )
    domain_features: list[str] = field(
        default_factory=list,
        metadata=doc("id fields added to the domain embedding in the condition (e.g. an activity bucket)"),
    )
    generator_hidden: list[int] = field(
        default_factory=lambda: [64],
        metadata=bounds(ge=1, help="hidden widths of each layer's generator MLP ([]: a linear generator)"),
    )
    generate_bias: bool = field(default=False, metadata=doc("generate each layer's bias too (default: shared)"))
    dropout: float = field(default=0.0, metadata=bounds(ge=0, lt=1, help="dropout after each hidden layer"))
    backbone: str = field(
        default="mean",
        metadata=doc(
            "how each behaviour sequence enters the input: mean (mean-pooled, as the other DNN baselines) or a target "
            "attention, din / mha / can (APG on a sequence backbone, e.g. 'DIN +APG')"
        ),
    )
    attention: TargetAttentionConfig = field(default_factory=TargetAttentionConfig)

    def validate(self) -> None:  # at load time; the message gets the section ("model.apg: ") in front
        if self.backbone not in SEQUENCE_BACKBONES:
            raise ConfigError(f"backbone: {self.backbone!r} is not one of {list(SEQUENCE_BACKBONES)}")
        if self.over_rank and self.generation != "shared":
            raise ConfigError(
                f"over_rank: over-parameterisation needs shared U, V (generation = 'shared'), "
                f"not {self.generation!r}; set over_rank = 0"
            )
        if 0 < self.over_rank < self.rank:
            raise ConfigError(f"over_rank: {self.over_rank} is below rank {self.rank} (P must be >= K, or 0)")
        if self.condition == "self" and self.domain_features:
            raise ConfigError("domain_features: unused with condition = 'self' (the layer input is the condition)")


class APGArch(nn.Module):
    """Flat input -> generated hidden layers (weights from the domain condition) -> Linear -> logits.

    Shapes: EmbeddedFeatures -> [B, num_tasks].
    """

    def __init__(self, layout: FeatureLayout, config: APGConfig) -> None:
        super().__init__()
        try:
            config.validate()
        except ConfigError as error:
            raise ConfigError(f"model.apg: {error}") from None
        self.domain_fields = layout.field_indices(config.domain_features, "model.apg.domain_features")
        self.input = ContextInput(layout)
        self.pooling = sequence_summary(layout, config.backbone, config.attention.options("din"), "model.apg.backbone")
        condition_width = layout.embedding_dim * (1 + len(self.domain_fields))
        self.mlp = GeneratedMLP(
            self.input.width + self.pooling.out_features,
            config.hidden,
            condition_width,
            config.condition,
            config.rank,
            config.generation,
            config.over_rank,
            config.generator_hidden,
            config.generate_bias,
            config.dropout,
        )
        self.output = nn.Linear(self.mlp.out_features, layout.num_tasks)

    def condition(self, features: EmbeddedFeatures) -> torch.Tensor:
        """z [B, (1 + len(domain_features)) * D]: the domain embedding, then the named domain-side fields."""
        return torch.cat(
            [self.input.domain_embedding(features.domain), features.fields[:, self.domain_fields].flatten(1)], dim=1
        )

    def forward(self, features: EmbeddedFeatures) -> torch.Tensor:
        x = torch.cat([self.input(features), *self.pooling(features.sequences)], dim=1)  # the flat input with "mean"
        return self.output(self.mlp(x, self.condition(features)))
