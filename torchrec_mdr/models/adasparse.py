"""AdaSparse (Yang et al., CIKM 2022, "AdaSparse: Learning Adaptively Sparse Structures for Multi-Domain
Click-Through Rate Prediction"): one DNN whose hidden neurons are weighted, per row, by a lightweight
domain-aware pruner, so that each domain learns its own sparse sub-network of the shared one.

Shapes (B rows, D_l the width of hidden layer l, L hidden layers, T tasks):

    h^0 = [e_1, ..., e_N, e_domain, dense, s_1, ..., s_S]             [B, W]   (FlatInput)
    e_d = [e_domain, e_f for f in domain_features]                   [B, C]   (domain-aware embedding)
    for l = 1..L:
      v^l = W_p^l [e_d ⊕ h^{l-1}] + b_p^l                            [B, D_l] (the pruner of layer l)
      g^l = φ(v^l)                                                    the weighting factors, by ``variant``:
            binarization  σ(α_t v)        in (0, 1), tends to the step 1[v > 0] as α_t grows
            scaling       β σ(v)          in (0, β): prunes (≈ 0) and strengthens (> 1) neurons
            fusion        β σ(α_t v)      in (0, β), tends to {0, β} as α_t grows
      π^l = g^l ⊙ 1[g^l ≥ ε]                                          factors below ε prune the neuron exactly
      h^l = dropout(ReLU(W^l h^{l-1} + b^l) ⊙ π^l)                    [B, D_l]
    logits = W_o h^L + b_o                                            [B, T]
    α_t = alpha + alpha_step · t, t = training forward passes before this one (the ``step`` buffer)

Flexible sparsity regularisation (training only, ``ArchOutput``'s auxiliary loss): with
r^l = share of zero factors π^l in the batch (detached) and the band [r - tol, r + tol] around the target
share of pruned neurons r (``sparsity_target``, ``sparsity_tolerance``),

    λ^l = +λ if r^l < r - tol  (too dense: push the factors down)
          -λ if r^l > r + tol  (too sparse: push them up)
           0 otherwise
    auxiliary loss = Σ_l λ^l · mean(g^l)                              (an L1 norm: g ≥ 0)

Not checked against the paper's full text: the three variants' formulas follow the public implementations
(Scenario-Wise-Rec's ``Pruner``), and the sign-switched band below is our reading of the paper's "flexible
sparsity regularisation".

Choices where the paper (or our reading of it) is silent, each tested in tests/test_adasparse.py:

* **What the pruner sees**: the domain-aware embedding e_d (the domain-id embedding, the same table as the
  input's domain field, and the embeddings of ``domain_features``) and the layer's input h^{l-1}, neither
  detached; the pruner is one linear layer with a bias ("lightweight").
* **Where**: every hidden layer's outputs, after the ReLU (for π ≥ 0, ReLU(z) ⊙ π = ReLU(z ⊙ π)); the input
  embeddings and the output logits are not pruned. Several tasks share the pruned DNN and get one logit
  each from the output layer (AdaSparse has no towers).
* **The threshold ε** zeroes small factors in every variant, in training and evaluation alike, so that a
  pruned neuron is exactly zero; the regulariser acts on g (before the threshold), so that it can also
  revive a pruned neuron when a layer is too sparse.
* **Temperature**: α_t grows linearly with the number of training forward passes, counted in the
  persistent buffer ``step`` (saved in checkpoints, so a resumed run continues the schedule); evaluation
  uses the current α_t and does not count.
* **Regulariser**: the L1 norm of the factors with a per-layer weight whose sign follows the measured
  sparsity (our reading of "flexible"); r^l is measured over the batch's rows. ``sparsity_weight = 0``
  turns it off (the arch then returns bare logits).
* **Defaults**: ``fusion`` (the form the public implementations default to), β = 2, ε = 0.25, α = 1 growing
  by 1e-4 per step, target share of pruned neurons 0.5 ± 0.1, λ = 0.01, hidden [256, 128, 64].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from torchrec_mdr.config import ConfigError, bounds, doc
from torchrec_mdr.models.blocks import FlatInput
from torchrec_mdr.models.features import ArchOutput, EmbeddedFeatures, FeatureLayout

Variant = Literal["binarization", "scaling", "fusion"]


@dataclass
class AdaSparseConfig:
    """``model.adasparse`` in an experiment config."""

    hidden: list[int] = field(
        default_factory=lambda: [256, 128, 64], metadata=bounds(ge=1, help="widths of the pruned hidden layers")
    )
    variant: Variant = field(
        default="fusion",
        metadata=doc(
            "weighting factors: 'binarization' sigmoid(alpha v), 'scaling' beta sigmoid(v), "
            "'fusion' beta sigmoid(alpha v)"
        ),
    )
    epsilon: float = field(default=0.25, metadata=bounds(ge=0, help="factors below epsilon prune their neuron (0)"))
    beta: float = field(default=2.0, metadata=bounds(gt=0, help="upper bound of 'scaling' and 'fusion' factors"))
    alpha: float = field(default=1.0, metadata=bounds(gt=0, help="initial sigmoid temperature alpha"))
    alpha_step: float = field(default=1e-4, metadata=bounds(ge=0, help="growth of alpha per training step"))
    sparsity_target: float = field(
        default=0.5, metadata=bounds(ge=0, le=1, help="target share of pruned neurons per layer")
    )
    sparsity_tolerance: float = field(
        default=0.1, metadata=bounds(ge=0, help="half-width of the band around the target with no penalty")
    )
    sparsity_weight: float = field(
        default=0.01, metadata=bounds(ge=0, help="lambda of the sparsity regularisation (0: off)")
    )
    domain_features: list[str] = field(
        default_factory=list,
        metadata=doc("id fields that join the domain-id embedding in the pruners' domain-aware input e_d"),
    )
    dropout: float = field(default=0.0, metadata=bounds(ge=0, lt=1, help="dropout after each hidden layer"))

    def validate(self) -> None:
        if not self.hidden:
            raise ConfigError("hidden: needs at least one layer width (the pruned layers)")
        top = 1.0 if self.variant == "binarization" else self.beta
        if self.epsilon >= top:
            raise ConfigError(
                f"epsilon ({self.epsilon}) must be below the largest factor of "
                f"variant {self.variant!r} ({top}): every neuron would be pruned"
            )


def weighting_factors(logits: torch.Tensor, variant: str, alpha: torch.Tensor | float, beta: float) -> torch.Tensor:
    """g = φ(v) of the variant (module docstring). Shapes: [B, D] -> [B, D]."""
    if variant == "binarization":
        return torch.sigmoid(alpha * logits)
    if variant == "scaling":
        return beta * torch.sigmoid(logits)
    return beta * torch.sigmoid(alpha * logits)


def sparsity_loss(
    factors: list[torch.Tensor], soft: list[torch.Tensor], target: float, tolerance: float, weight: float
) -> torch.Tensor:
    """Σ_l λ^l mean(g^l), λ^l = ±weight by the measured share of zero factors (module docstring).

    Shapes: per layer π^l, g^l [B, D_l] -> scalar.
    """
    total = soft[0].new_zeros(())
    for pruned, gate in zip(factors, soft):
        ratio = pruned.detach().eq(0).float().mean()
        sign = (ratio < target - tolerance).float() - (ratio > target + tolerance).float()
        total = total + weight * sign * gate.mean()
    return total


class DomainPruner(nn.Module):
    """The domain-aware pruner of one layer: ``v = W_p [e_d ⊕ h_in] + b_p``, ``π = g ⊙ 1[g ≥ ε]``.

    Shapes: h_in [B, in], e_d [B, C] -> (π, g), each [B, out].
    """

    def __init__(self, in_features: int, domain_width: int, out_features: int, config: AdaSparseConfig) -> None:
        super().__init__()
        self.linear = nn.Linear(domain_width + in_features, out_features)
        self.variant, self.beta, self.epsilon = config.variant, config.beta, config.epsilon

    def forward(
        self, h_in: torch.Tensor, domain: torch.Tensor, alpha: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        gate = weighting_factors(self.linear(torch.cat([domain, h_in], dim=1)), self.variant, alpha, self.beta)
        return gate * (gate >= self.epsilon).to(gate.dtype), gate


class AdaSparseArch(nn.Module):
    """Flat input -> hidden layers weighted by domain-aware pruners -> one logit per task.

    Shapes: EmbeddedFeatures -> logits [B, num_tasks]; in training with ``sparsity_weight > 0``,
    ``ArchOutput(logits, sparsity regularisation)``.

    Example::

        arch = AdaSparseArch(layout, AdaSparseConfig(hidden=[64, 32], variant="binarization"))
        arch.eval()(features).shape  # (B, layout.num_tasks)
    """

    # buffers (registered in __init__)
    step: torch.Tensor

    def __init__(self, layout: FeatureLayout, config: AdaSparseConfig) -> None:
        super().__init__()
        try:
            config.validate()
        except ConfigError as error:
            raise ConfigError(f"model.adasparse: {error}") from None
        self.config = config
        self.input = FlatInput(layout)
        self.domain_fields = layout.field_indices(
            config.domain_features, "model.adasparse.domain_features", unique=True
        )
        domain_width = layout.embedding_dim * (1 + len(self.domain_fields))
        widths = [self.input.width, *config.hidden]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths, widths[1:]))
        self.pruners = nn.ModuleList(DomainPruner(a, domain_width, b, config) for a, b in zip(widths, widths[1:]))
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.output = nn.Linear(widths[-1], layout.num_tasks)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))  # training forward passes so far

    def alpha(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """α_t = alpha + alpha_step · step (a 0-dim tensor of ``dtype``).

        The forward passes its activations' dtype, so that an fx trace reads the buffer (instead of
        baking the step count at tracing time into a constant).
        """
        return self.config.alpha + self.config.alpha_step * self.step.to(dtype)

    def domain_input(self, features: EmbeddedFeatures) -> torch.Tensor:
        """e_d [B, C]: the domain-id embedding, then the ``domain_features`` embeddings."""
        parts = [self.input.domain_embedding(features.domain)]
        parts += [features.fields[:, index] for index in self.domain_fields]
        return torch.cat(parts, dim=1)

    def pruned_network(self, features: EmbeddedFeatures) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """h^L [B, D_L] and every layer's π^l and g^l (lists of [B, D_l])."""
        hidden, domain = self.input(features), self.domain_input(features)
        alpha = self.alpha(hidden.dtype)
        factors, soft = [], []
        for layer, pruner in zip(self.layers, self.pruners):
            pruned, gate = pruner(hidden, domain, alpha)
            hidden = self.dropout(torch.relu(layer(hidden)) * pruned)
            factors.append(pruned)
            soft.append(gate)
        return hidden, factors, soft

    def forward(self, features: EmbeddedFeatures) -> torch.Tensor | ArchOutput:
        hidden, factors, soft = self.pruned_network(features)
        logits = self.output(hidden)
        if not self.training:
            return logits
        with torch.no_grad():  # one from the logits, so that an fx trace records the count (not runs it once)
            self.step.add_(logits.new_ones((), dtype=self.step.dtype))
        config = self.config
        if config.sparsity_weight == 0:
            return logits
        return ArchOutput(
            logits,
            sparsity_loss(factors, soft, config.sparsity_target, config.sparsity_tolerance, config.sparsity_weight),
        )
