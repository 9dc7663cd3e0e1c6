"""FRNet (Wang et al., SIGIR 2022, "Enhancing CTR Prediction with Context-Aware Feature Representation
Learning") with a DNN head: the field vectors are refined from the whole instance after the embedding
layer, then a DNN gives the logits.

    E   = [e_1, ..., e_N, e_domain, s_1, ..., s_S, W_d dense + b_d]        K field vectors [B, K, D]
    E_g = IEU_G(E),  W_b = IEU_W(E)                                          IEU = self-attention ⊙ CIE
    E_r = E ⊙ σ(W_b) + E_g ⊙ (1 − σ(W_b))                                    [B, K, D] (CSGate)
    logits = MLP(flatten(E_r))                                               [B, num_tasks]

The refinement is the toolkit's :class:`~torchrec_mdr.models.blocks.FeatureRefinement` (its docstring
has the IEU's equations and the choices inside it); the field vectors are
:class:`~torchrec_mdr.models.blocks.FieldVectors`, DeepFM's.

How this library's inputs enter and what the paper leaves open (tested in tests/test_frnet.py and
tests/test_baselines.py):

* **Domain**: the domain-id embedding is one more field, so the self-attention, the CIE (which sees the
  concatenation of all fields) and therefore both the complementary features and the gate weights
  depend on the domain: the refinement is domain-aware, the reason FRNet serves as a multi-domain
  baseline.
* **Sequences**: each sequence column of a group is mean-pooled over the real positions and becomes
  one field (an empty sequence gives zeros); **dense features**: one field ``W_d dense + b_d``.
* **Head**: the paper places FRNet after the embedding layer of a base model and reports it on
  several; this model uses its DNN base model: an MLP over flatten(E_r) (ReLU, widths
  ``hidden``, default [256, 128, 64] as the library's other baselines; the paper's per-dataset widths
  are not used). The paper's other bases (DeepFM, DCN, ...) can wrap ``FeatureRefinement`` the same way.
* **Several tasks**: one refinement shared by the tasks, one output unit of the MLP per task (no towers).
* **On a target-attention backbone** (``backbone = din / mha / can``; the ADS paper's "DIN +FRNet"): the
  sequences are no fields; FRNet refines the other field vectors (id fields, domain, dense), the
  backbone's target attention pools each sequence group with the raw candidate as the query, and the MLP
  reads ``[flatten(E_r), pooled sequences]``. FRNet is placed after the embedding layer of the backbone,
  as the paper places it on its base models; the behaviours themselves are not refined (a refinement per
  position would be one FRNet per behaviour).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from torchrec_mdr.config import ConfigError, bounds, doc
from torchrec_mdr.models.blocks import (
    MLP,
    SEQUENCE_BACKBONES,
    FeatureRefinement,
    FieldVectors,
    TargetAttentionConfig,
    WeightType,
    sequence_summary,
)
from torchrec_mdr.models.features import EmbeddedFeatures, FeatureLayout


@dataclass
class FRNetConfig:
    """``model.frnet`` in an experiment config."""

    hidden: list[int] = field(
        default_factory=lambda: [256, 128, 64], metadata=bounds(ge=1, help="DNN head widths over the refined fields")
    )
    dropout: float = field(default=0.0, metadata=bounds(ge=0, lt=1, help="dropout after each hidden DNN layer"))
    attention_size: int = field(default=10, metadata=bounds(ge=1, help="IEU self-attention width d_k"))
    cie_hidden: list[int] = field(
        default_factory=lambda: [256],
        metadata=bounds(
            ge=1, help="hidden widths of the IEUs' contextual information extractor (PReLU MLP; [] = one layer to D)"
        ),
    )
    weight_type: WeightType = field(
        default="bit",
        metadata=doc(
            "IEU_W's weights: 'bit' (one per field and dimension) or 'vector' "
            "(one per field, the IEU output summed over D)"
        ),
    )
    backbone: str = field(
        default="mean",
        metadata=doc(
            "mean: each sequence column mean-pooled into one refined field; din / mha / can: the sequences pooled by "
            "that target attention beside the refined fields ('DIN +FRNet')"
        ),
    )
    attention: TargetAttentionConfig = field(default_factory=TargetAttentionConfig)

    def validate(self) -> None:  # at load time; the message gets the section ("model.frnet: ") in front
        if self.backbone not in SEQUENCE_BACKBONES:
            raise ConfigError(f"backbone: {self.backbone!r} is not one of {list(SEQUENCE_BACKBONES)}")


class FRNetArch(nn.Module):
    """Field vectors -> FeatureRefinement (two IEUs, CSGate) -> MLP -> logits.

    Shapes: EmbeddedFeatures -> E [B, K, D] -> E_r [B, K, D] -> logits [B, num_tasks].

    Example::

        arch = FRNetArch(layout, FRNetConfig(hidden=[64, 32], weight_type="vector"))
        arch(features).shape  # (B, layout.num_tasks)
    """

    def __init__(self, layout: FeatureLayout, config: FRNetConfig) -> None:
        super().__init__()
        dim = layout.embedding_dim
        on_mean = config.backbone == "mean"
        self.input = FieldVectors(layout, with_sequences=on_mean)
        self.num_fields = self.input.num_fields
        self.refinement = FeatureRefinement(
            self.num_fields, dim, config.attention_size, config.cie_hidden, config.weight_type
        )
        self.pooling = (
            None
            if on_mean
            else sequence_summary(layout, config.backbone, config.attention.options("din"), "model.frnet.backbone")
        )
        width = self.num_fields * dim + (0 if self.pooling is None else self.pooling.out_features)
        self.dnn = MLP(width, config.hidden, out_features=layout.num_tasks, dropout=config.dropout)

    def forward(self, features: EmbeddedFeatures) -> torch.Tensor:
        refined = self.refinement(self.input(features)).flatten(1)
        if self.pooling is None:
            return self.dnn(refined)
        return self.dnn(torch.cat([refined, *self.pooling(features.sequences)], dim=1))
