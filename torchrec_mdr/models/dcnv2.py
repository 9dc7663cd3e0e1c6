"""DCN-V2 (Wang et al., WWW 2021, "DCN V2: Improved Deep & Cross Network and Practical Lessons for
Web-scale Learning to Rank Systems"): a cross network of explicit, bounded-degree feature crosses and
a deep network, stacked or in parallel, then one combination layer.

Shapes (B rows, W the width of the flat input):

    x_0 = [e_1, ..., e_N, e_domain, dense, s_1, ..., s_S]             [B, W]   (embedding layer)
    cross layer l, one of ``cross_type``:
      full      x_{l+1} = x_0 ⊙ (W_l x_l + b_l) + x_l                  W_l: [W, W]        (eq. 1)
      low_rank  x_{l+1} = x_0 ⊙ (U_l (V_l^T x_l) + b_l) + x_l          U_l, V_l: [W, r]   (eq. 2)
      mixture   x_{l+1} = Σ_i G_i(x_l) E_i(x_l) + x_l                  (mixture of low-rank experts)
                E_i(x_l) = x_0 ⊙ (U_l^i g(C_l^i g(V_l^iT x_l)) + b_l)  C_l^i: [r, r]
    deep layer: h_{l+1} = ReLU(W_l h_l + b_l)
    ``structure``:
      stacked     x_final = h_{L2} of the deep network over x_{L1}
      parallel    x_final = [x_{L1}; h_{L2} of the deep network over x_0]
      cross_only  x_final = x_{L1}                                     (the cross network alone)
    logits = w_logit^T x_final + b                                     [B, num_tasks] (combination layer)

The cross networks are torchrec's own modules (:class:`torchrec.modules.crossnet.CrossNet`,
:class:`~torchrec.modules.crossnet.LowRankCrossNet`, :class:`~torchrec.modules.crossnet.LowRankMixtureCrossNet`),
the ones DLRM-DCN (:mod:`torchrec_mdr.models.dlrm`) uses; the deep network is the toolkit's :class:`MLP`.

Choices where the paper is silent (each tested in tests/test_dcnv2.py and tests/test_baselines.py):

* **Input**: x_0 is :class:`~torchrec_mdr.models.blocks.FlatInput` (the DNN baseline's input): every id
  field, the domain-id embedding (so the crosses include domain x feature terms), the dense features
  as they are (the paper's ``x_dense``; no projection), and each sequence group mean-pooled over its
  real positions (an empty sequence gives zeros).
* **Mixture**: g = ReLU; the gate G_i is a softmax over the experts of ``w_i^T x_l`` (no bias); one
  bias b_l per layer shared by the experts (as E_i is written); ``num_experts = 1`` is one expert
  without a gate.
* **Initialisation**: torchrec's: Xavier-normal kernels, zero biases.
* **Combination layer**: a bias beside w_logit (a base-rate offset); several tasks share the cross and
  deep networks and get one logit each (one row of w_logit per task), DCN-V2 has no towers.
* **Defaults**: ``parallel`` (the structure of DCN, which V2 keeps as one of two), 3 full-rank cross
  layers, rank 32 and 4 experts for the low-rank forms, a [256, 128, 64] deep network. A rank of at
  least W saves nothing over the full matrix and is rejected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn
from torchrec.modules.crossnet import CrossNet, LowRankCrossNet, LowRankMixtureCrossNet

from torchrec_mdr.config import ConfigError, bounds, doc
from torchrec_mdr.models.blocks import MLP, FlatInput
from torchrec_mdr.models.features import EmbeddedFeatures, FeatureLayout

CrossType = Literal["full", "low_rank", "mixture"]
Structure = Literal["parallel", "stacked", "cross_only"]


@dataclass
class DCNv2Config:
    """``model.dcnv2`` in an experiment config."""

    structure: Structure = field(
        default="parallel",
        metadata=doc(
            "'parallel': [cross(x0); deep(x0)], 'stacked': deep(cross(x0)), "
            "'cross_only': cross(x0); then the combination layer"
        ),
    )
    cross_type: CrossType = field(
        default="full",
        metadata=doc(
            "cross layer: 'full' (W x, eq. 1), 'low_rank' (U V^T x, eq. 2) or 'mixture' (gated low-rank experts)"
        ),
    )
    cross_layers: int = field(default=3, metadata=bounds(ge=1, help="number of cross layers L1"))
    low_rank: int = field(default=32, metadata=bounds(ge=1, help="rank r of 'low_rank' and 'mixture' layers"))
    num_experts: int = field(default=4, metadata=bounds(ge=1, help="experts per 'mixture' layer"))
    hidden: list[int] = field(
        default_factory=lambda: [256, 128, 64],
        metadata=bounds(ge=1, help="deep network widths (unused by 'cross_only')"),
    )
    dropout: float = field(default=0.0, metadata=bounds(ge=0, lt=1, help="dropout after each deep layer"))

    def validate(self) -> None:
        if self.structure != "cross_only" and not self.hidden:
            raise ConfigError(
                f"hidden must list at least one width for structure {self.structure!r} "
                f"(structure = 'cross_only' has no deep network)"
            )


def cross_network(width: int, config: DCNv2Config) -> nn.Module:
    """torchrec's cross network of ``config.cross_type``: [B, width] -> [B, width]."""
    if config.cross_type != "full" and config.low_rank >= width:
        raise ConfigError(
            f"model.dcnv2.low_rank ({config.low_rank}) must be below the cross width {width} "
            f"(a rank of at least the width saves nothing: use cross_type = 'full')"
        )
    if config.cross_type == "full":
        return CrossNet(width, config.cross_layers)
    if config.cross_type == "low_rank":
        return LowRankCrossNet(width, config.cross_layers, low_rank=config.low_rank)
    return LowRankMixtureCrossNet(
        width, config.cross_layers, num_experts=config.num_experts, low_rank=config.low_rank, activation=torch.relu
    )


class DCNv2Arch(nn.Module):
    """Flat input x_0 -> cross network and deep network (stacked / parallel) -> combination layer.

    Shapes: EmbeddedFeatures -> x_0 [B, W] -> x_final [B, W or H or W + H] -> logits [B, num_tasks].

    Example::

        arch = DCNv2Arch(layout, DCNv2Config(structure="stacked", cross_type="low_rank", low_rank=8))
        arch(features).shape  # (B, layout.num_tasks)
    """

    def __init__(self, layout: FeatureLayout, config: DCNv2Config) -> None:
        super().__init__()
        self.structure = config.structure
        self.input = FlatInput(layout)
        width = self.input.width
        self.cross = cross_network(width, config)
        self.deep = None if config.structure == "cross_only" else MLP(width, config.hidden, dropout=config.dropout)
        final = {
            "cross_only": width,
            "stacked": config.hidden[-1] if config.hidden else width,
            "parallel": width + (config.hidden[-1] if config.hidden else 0),
        }[config.structure]
        self.combination = nn.Linear(final, layout.num_tasks)

    def final(self, x0: torch.Tensor) -> torch.Tensor:
        """x_final of the structure: [B, W] -> [B, W | H | W + H]."""
        crossed = self.cross(x0)
        if self.deep is None:
            return crossed
        if self.structure == "stacked":
            return self.deep(crossed)
        return torch.cat([crossed, self.deep(x0)], dim=1)

    def forward(self, features: EmbeddedFeatures) -> torch.Tensor:
        return self.combination(self.final(self.input(features)))
