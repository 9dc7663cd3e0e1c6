"""STAR (Sheng et al., CIKM 2021, "One Model to Serve All: Star Topology Adaptive Recommender for
Multi-Domain CTR Prediction").

    x = FlatInput [B, W]
    z = PN(x, p)                       partitioned normalisation (§4.2):
                                       gamma * gamma_p * (x - E_p) / sqrt(Var_p + eps) + beta + beta_p
    star FCN (§4.1), per layer for a row of domain p:
        W*_p = W ⊙ W_p,  b*_p = b + b_p,  out = phi(W*_p^T in + b*_p)
    s_m = star FCN(z)  [B, T]
    s_a = auxiliary network(x)  [B, T]  (§4.3; x holds the domain-indicator embedding)
    logit = s_m + s_a

Choices where the paper leaves room (each tested in tests/test_baselines.py):

* PN runs once, on the star network's input, as in the paper's Figure 3 (embedding -> pooling &
  concatenation -> PN -> star FCN). Its statistics are per domain (:class:`DomainBatchNorm` with
  ``shared_affine``): the paper trains on single-domain batches, so "the batch's moments" are the
  domain's moments; per-domain statistics give the same thing in mixed batches.
* The domain factors start as W_p = 1, b_p = 0 (every domain starts as the shared network, which
  is initialised as ``nn.Linear``); the paper does not give an initialisation.
* The auxiliary network is a two-layer FC (``auxiliary_hidden`` then the logit) over the
  un-normalised flat input, which contains the domain-indicator embedding and every other feature.
* Vectorised, no loop over rows: a star layer evaluates all K domain maps for every row and keeps the
  row's own (K times a plain layer's FLOPs; memory [B, K, out] per layer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from torchrec_mdr.config import bounds, doc
from torchrec_mdr.models.blocks import MLP, DomainBatchNorm, FlatInput, select_domain
from torchrec_mdr.models.features import EmbeddedFeatures, FeatureLayout


@dataclass
class STARConfig:
    hidden: list[int] = field(
        default_factory=lambda: [256, 128, 64], metadata=bounds(ge=1, help="hidden widths of the star-topology FCN")
    )
    auxiliary_hidden: list[int] = field(
        default_factory=lambda: [64], metadata=bounds(ge=1, help="hidden widths of the auxiliary network")
    )
    partitioned_norm: bool = field(default=True, metadata=doc("partitioned normalisation of the star input"))
    dropout: float = field(default=0.0, metadata=bounds(ge=0, lt=1, help="dropout after each hidden layer"))


class StarLinear(nn.Module):
    """One star-topology FC layer (STAR §4.1): ``out_b = in_b (W ⊙ W_p) + b + b_p`` with ``p = domain[b]``.

    Shapes: x [B, in], domain [B] -> [B, out].
    Parameters: shared_weight [in, out], shared_bias [out] (``nn.Linear`` init), domain_weight
    [K, in, out] (init 1), domain_bias [K, out] (init 0).
    """

    def __init__(self, in_features: int, out_features: int, num_domains: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(in_features) if in_features > 0 else 0.0
        self.shared_weight = nn.Parameter(torch.empty(in_features, out_features).uniform_(-bound, bound))
        self.shared_bias = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound))
        self.domain_weight = nn.Parameter(torch.ones(num_domains, in_features, out_features))
        self.domain_bias = nn.Parameter(torch.zeros(num_domains, out_features))

    def forward(self, x: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        weight = self.shared_weight * self.domain_weight  # [K, in, out]
        out = torch.einsum("bi,kio->bko", x, weight) + (self.shared_bias + self.domain_bias)
        return select_domain(out, domain)


class StarFCN(nn.Module):
    """Star-topology FCN: StarLinear -> ReLU (-> dropout) per hidden layer, then a StarLinear to T logits.

    Shapes: x [B, in], domain [B] -> [B, out_features].
    """

    def __init__(
        self, in_features: int, hidden: list[int], out_features: int, num_domains: int, dropout: float = 0.0
    ) -> None:
        super().__init__()
        widths = [in_features, *hidden, out_features]
        self.layers = nn.ModuleList(StarLinear(a, b, num_domains) for a, b in zip(widths, widths[1:]))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        for index, layer in enumerate(self.layers):
            x = layer(x, domain)
            if index < last:
                x = self.dropout(torch.relu(x))
        return x


class STARArch(nn.Module):
    """FlatInput -> PN -> star FCN, plus the auxiliary network's logit.

    Shapes: EmbeddedFeatures -> [B, num_tasks].
    """

    def __init__(self, layout: FeatureLayout, config: STARConfig) -> None:
        super().__init__()
        self.input = FlatInput(layout)
        width = self.input.width
        self.norm = DomainBatchNorm(width, layout.num_domains, shared_affine=True) if config.partitioned_norm else None
        self.star = StarFCN(width, config.hidden, layout.num_tasks, layout.num_domains, config.dropout)
        self.auxiliary = MLP(width, config.auxiliary_hidden, out_features=layout.num_tasks, dropout=config.dropout)

    def forward(self, features: EmbeddedFeatures) -> torch.Tensor:
        x = self.input(features)
        z = self.norm(x, features.domain) if self.norm is not None else x
        return self.star(z, features.domain) + self.auxiliary(x)
