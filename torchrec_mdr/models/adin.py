"""ADIN (Jiang et al., CIKM 2022, "Adaptive Domain Interest Network for Multi-domain
Recommendation"), ranking form.

The paper is a two-tower retrieval model; this is its ranking form on the shared data path:

    fields [B, N, D] --DomainInterestLayer (SE block, domain-specific excitation)--> [B, N, D]
    [re-weighted fields, domain embedding, dense, DIN-pooled sequences] -> x [B, W]
    x --SharedAndDomainNetwork (shared MLP  ⊕  row's domain MLP, DSBN after every layer)--> h
    h --StackedMLP (one tower per domain)--> per-domain logits [B, K, T] --select row's domain--> [B, T]

plus the self-training term: confident predictions of the *other* domains' heads on a row become
hard pseudo-labels for those heads (label-level transfer across domains).

Choices made where the paper (or its ranking form) leaves room, each tested in tests/test_adin.py:
    * excitation gate ``2 * sigmoid``: ≈ 1 at initialisation (the layer starts as the identity, so
      switching it off in an ablation does not rescale the input) and able to amplify a field as
      well as suppress it;
    * the SE block re-weights the id fields only; sequences are pooled by DIN attention (as
      :class:`~torchrec_mdr.models.din.DINArch`), the domain id enters as one more embedding;
    * fusion of the shared and domain networks by concatenation (default; ``fusion="sum"`` is the
      alternative): a concatenation followed by the domain-specific tower can express any weighted
      sum, not the other way round;
    * normalisation: Linear -> norm -> ReLU in both networks; with ``use_dsbn`` the norm is
      :class:`DomainBatchNorm` (also in the shared network, whose weights are shared but whose
      statistics are per domain — the point of DSBN); without it a plain shared ``BatchNorm1d``, so
      the ablation isolates domain-specificity, not normalisation itself;
    * self-training: the k-head is applied to the row's own representation (one pass, not K passes
      through domain k's whole path); the loss is the mean BCE over the selected (row, other
      domain, task) triples, times ``pseudo_label_weight``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from torchrec_mdr.config import ConfigError, bounds, doc
from torchrec_mdr.models.blocks import (
    AttentionOptions,
    ContextInput,
    DomainBatchNorm,
    SequencePooling,
    StackedLinear,
    StackedMLP,
    select_domain,
)
from torchrec_mdr.models.features import ArchOutput, EmbeddedFeatures, FeatureLayout


@dataclass
class ADINConfig:
    attention_hidden: list[int] = field(
        default_factory=lambda: [64, 32], metadata=bounds(ge=1, help="DIN attention MLP widths")
    )
    hidden: list[int] = field(
        default_factory=lambda: [256, 128],
        metadata=bounds(ge=1, help="widths of the shared and of each domain network"),
    )
    tower_hidden: list[int] = field(
        default_factory=lambda: [64], metadata=bounds(ge=1, help="hidden widths of each domain's forward tower")
    )
    fusion: Literal["concat", "sum"] = field(
        default="concat", metadata=doc("how the shared and domain networks' outputs are fused")
    )
    interest_reduction: int = field(
        default=2, metadata=bounds(ge=1, help="SE block: excitation hidden width = max(1, fields // this)")
    )
    use_domain_interest: bool = field(default=True, metadata=doc("domain interest adaptation layer (SE block)"))
    use_dsbn: bool = field(default=True, metadata=doc("domain-specific batch norm (else one shared BatchNorm1d)"))
    self_training: bool = field(default=True, metadata=doc("pseudo-labels from the other domains' heads"))
    pseudo_label_threshold: float = field(
        default=0.9, metadata=bounds(ge=0.5, le=1.0, help="confidence for a pseudo-label: p >= t or p <= 1 - t")
    )
    pseudo_label_weight: float = field(default=0.1, metadata=bounds(ge=0, help="weight of the self-training loss"))


class DomainInterestLayer(nn.Module):
    """ADIN's domain interest adaptation layer: an SE block whose excitation is domain-specific.

    Squeeze: ``z = mean_D(E)`` [B, N]. Excitation: ``a = 2 * sigmoid(W2_d · relu(W1 · z + b1) + b2_d)``
    [B, N], ``W1`` shared, ``(W2_d, b2_d)`` of the row's domain ``d``. Re-weight: ``E'_i = a_i * E_i``.

    Shapes: fields [B, N, D], domain [B] -> [B, N, D].
    """

    def __init__(self, num_fields: int, num_domains: int, hidden: int) -> None:
        super().__init__()
        self.shared = nn.Linear(num_fields, hidden)
        self.domain_specific = StackedLinear(num_domains, hidden, num_fields)

    def field_weights(self, fields: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        """[B, N, D], [B] -> [B, N] excitation weights in (0, 2)."""
        squeezed = fields.mean(dim=-1)
        hidden = torch.relu(self.shared(squeezed))
        return 2.0 * torch.sigmoid(select_domain(self.domain_specific(hidden), domain))

    def forward(self, fields: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        return fields * self.field_weights(fields, domain).unsqueeze(-1)


class NormalisedLayer(nn.Module):
    """Linear -> (domain) batch norm -> ReLU. Shapes: x [B, in], domain [B] -> [B, out].

    ``domain_specific``: a :class:`StackedLinear` (one map per domain) read at the row's domain, else one shared Linear.
    ``use_dsbn``: :class:`DomainBatchNorm`, else ``nn.BatchNorm1d``.
    """

    def __init__(
        self, in_features: int, out_features: int, num_domains: int, domain_specific: bool, use_dsbn: bool
    ) -> None:
        super().__init__()
        self.linear = (
            StackedLinear(num_domains, in_features, out_features)
            if domain_specific
            else nn.Linear(in_features, out_features)
        )
        self.norm = DomainBatchNorm(out_features, num_domains) if use_dsbn else nn.BatchNorm1d(out_features)

    def forward(self, x: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        out = self.linear(x)
        if isinstance(self.linear, StackedLinear):
            out = select_domain(out, domain)
        out = self.norm(out, domain) if isinstance(self.norm, DomainBatchNorm) else self.norm(out)
        return torch.relu(out)


class SharedAndDomainNetwork(nn.Module):
    """ADIN's shared network and domain-specific networks, fused.

    ``h_s = MLP_shared(x)``, ``h_d = MLP_d(x)`` for the row's domain ``d`` (same widths), each layer
    Linear -> norm -> ReLU; fused by concatenation ``[h_s, h_d]`` (``out_features = 2 * hidden[-1]``)
    or by sum ``h_s + h_d`` (``out_features = hidden[-1]``).

    Shapes: x [B, in_features], domain [B] -> [B, out_features].
    """

    def __init__(
        self, in_features: int, hidden: list[int], num_domains: int, use_dsbn: bool, fusion: str = "concat"
    ) -> None:
        super().__init__()
        if not hidden:
            raise ValueError("SharedAndDomainNetwork needs at least one hidden layer")
        if fusion not in ("concat", "sum"):
            raise ValueError(f"fusion must be 'concat' or 'sum', got {fusion!r}")
        widths = [in_features, *hidden]
        self.shared = nn.ModuleList(
            NormalisedLayer(a, b, num_domains, False, use_dsbn) for a, b in zip(widths, widths[1:])
        )
        self.domain = nn.ModuleList(
            NormalisedLayer(a, b, num_domains, True, use_dsbn) for a, b in zip(widths, widths[1:])
        )
        self.fusion = fusion
        self.out_features = 2 * hidden[-1] if fusion == "concat" else hidden[-1]

    def forward(self, x: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        shared, specific = x, x
        for layer in self.shared:
            shared = layer(shared, domain)
        for layer in self.domain:
            specific = layer(specific, domain)
        return torch.cat([shared, specific], dim=1) if self.fusion == "concat" else shared + specific


def self_training_loss(per_domain_logits: torch.Tensor, domain: torch.Tensor, threshold: float) -> torch.Tensor:
    """ADIN's self-training term (unweighted): BCE of the other domains' confident heads.

    For row ``b`` of domain ``d``, head ``k != d`` and task ``t``, with ``p = sigmoid(logit)``
    detached: selected when ``p >= threshold`` (pseudo-label 1) or ``p <= 1 - threshold``
    (pseudo-label 0). Returns the mean BCE-with-logits over the selected triples (0 when none);
    the pseudo-label carries no gradient, the logit does.

    Shapes: per_domain_logits [B, K, T], domain [B] -> scalar.
    """
    probabilities = torch.sigmoid(per_domain_logits.detach().float())
    other = F.one_hot(domain.long(), per_domain_logits.shape[1]).eq(0).unsqueeze(-1)  # [B, K, 1]
    positive = probabilities >= threshold
    selected = other & (positive | (probabilities <= 1.0 - threshold))
    losses = F.binary_cross_entropy_with_logits(per_domain_logits.float(), positive.float(), reduction="none")
    weights = selected.float()
    return (losses * weights).sum() / weights.sum().clamp_min(1.0)


class ADINArch(nn.Module):
    """ADIN ranking arch (see the module docstring).

    Shapes: EmbeddedFeatures -> logits [B, num_tasks]; in training with ``self_training``,
    ``ArchOutput(logits, pseudo_label_weight * self-training loss)``.
    """

    def __init__(self, layout: FeatureLayout, config: ADINConfig) -> None:
        super().__init__()
        if not config.hidden:
            raise ConfigError("model.adin.hidden: needs at least one layer width (the shared and domain networks)")
        if config.fusion not in ("concat", "sum"):
            raise ConfigError(f"model.adin.fusion: {config.fusion!r} is not one of 'concat', 'sum'")
        num_fields, num_domains = len(layout.fields), layout.num_domains
        if config.use_domain_interest and num_fields == 0:
            raise ConfigError("model.adin.use_domain_interest: the dataset has no id fields to re-weight")
        self.config = config
        self.domain_interest = (
            DomainInterestLayer(num_fields, num_domains, max(1, num_fields // config.interest_reduction))
            if config.use_domain_interest
            else None
        )
        self.input = ContextInput(layout)
        self.pooling = SequencePooling.of(layout, AttentionOptions("din", din_hidden=config.attention_hidden))
        width = self.input.width + self.pooling.out_features
        self.network = SharedAndDomainNetwork(width, config.hidden, num_domains, config.use_dsbn, config.fusion)
        self.towers = StackedMLP(num_domains, self.network.out_features, config.tower_hidden, layout.num_tasks)

    def per_domain_logits(self, features: EmbeddedFeatures) -> torch.Tensor:
        """EmbeddedFeatures -> every domain head's logits [B, K, num_tasks]."""
        domain = features.domain
        fields = features.fields
        if self.domain_interest is not None:
            fields = self.domain_interest(fields, domain)
        parts = [self.input(features, fields=fields), *self.pooling(features.sequences)]
        return self.towers(self.network(torch.cat(parts, dim=1), domain))

    def forward(self, features: EmbeddedFeatures) -> torch.Tensor | ArchOutput:
        per_domain = self.per_domain_logits(features)
        logits = select_domain(per_domain, features.domain)
        if not (self.training and self.config.self_training):
            return logits
        auxiliary = self_training_loss(per_domain, features.domain, self.config.pseudo_label_threshold)
        return ArchOutput(logits, self.config.pseudo_label_weight * auxiliary)
