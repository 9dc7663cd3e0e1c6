"""Small building blocks shared by the models: MLP, DIN target attention, the flat input, domain selection."""

from __future__ import annotations

import torch
from torch import nn

from torchrec_mdr.models.features import EmbeddedFeatures, FeatureLayout


class MLP(nn.Sequential):
    """Linear -> activation (-> dropout) per hidden layer; ``out_features`` adds a final plain Linear.

    Shapes: [..., in_features] -> [..., hidden[-1] or out_features].
    """

    def __init__(self, in_features: int, hidden: list[int], out_features: int | None = None,
                 dropout: float = 0.0, activation: type[nn.Module] = nn.ReLU) -> None:
        layers: list[nn.Module] = []
        width = in_features
        for size in hidden:
            layers += [nn.Linear(width, size), activation()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = size
        if out_features is not None:
            layers.append(nn.Linear(width, out_features))
            width = out_features
        super().__init__(*layers)
        self.out_features = width


@torch.fx.wrap  # rank-dependent: one node in an fx trace
def per_position_query(query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """[B, D] or [B, L, D] query -> [B, L, D] (a view when the query is per row)."""
    if query.dim() == 2:
        return query.unsqueeze(1).expand(-1, keys.shape[1], -1)
    return query


class DINAttention(nn.Module):
    """DIN target attention (Zhou et al. 2018): an MLP scores each behaviour against the query.

    ``score_t = MLP([q, k_t, q - k_t, q * k_t])``, no softmax (DIN keeps the scores unnormalised so
    that the intensity of interest survives); padded positions get weight exactly 0.
    The query may be one vector per row ([B, D]) or one per position ([B, L, D], as ADS feeds it).

    Shapes: query [B, D] or [B, L, D], keys [B, L, D], mask [B, L] -> pooled [B, D].
    """

    def __init__(self, dim: int, hidden: list[int]) -> None:
        super().__init__()
        self.scorer = MLP(4 * dim, hidden, out_features=1, activation=nn.Sigmoid)

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        query = per_position_query(query, keys)
        scores = self.scorer(torch.cat([query, keys, query - keys, query * keys], dim=-1)).squeeze(-1)
        weights = scores * mask.to(scores.dtype)
        return torch.einsum("bl,bld->bd", weights, keys)


def masked_mean(keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, L, D], [B, L] -> [B, D] mean over real positions (zeros for an empty sequence)."""
    weights = mask.to(keys.dtype)
    return torch.einsum("bl,bld->bd", weights, keys) / weights.sum(1, keepdim=True).clamp_min(1.0)


def select_domain(per_domain: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
    """Each row's own domain slice: [B, K, ...], [B] -> [B, ...].

    A gather, so a domain-specific head only receives gradient from its own domain's rows.
    """
    flat = per_domain.unsqueeze(-1).flatten(2)  # [B, K, R]; written without the rank, so fx can trace it
    index = domain.long().view(-1, 1, 1).expand(-1, 1, flat.shape[2])
    return flat.gather(1, index).view_as(per_domain[:, 0])


class FlatInput(nn.Module):
    """The baselines' input: [fields, domain-id embedding, dense, mean-pooled sequences] concatenated.

    Shapes: EmbeddedFeatures -> [B, width] with
    ``width = (N + 1) * D + num_dense + sum of the sequence widths``.
    """

    def __init__(self, layout: FeatureLayout) -> None:
        super().__init__()
        self.domain_embedding = nn.Embedding(layout.num_domains, layout.embedding_dim)
        self.width = ((len(layout.fields) + 1) * layout.embedding_dim + layout.num_dense
                      + sum(layout.sequence_width(s) for s in layout.sequences))

    def forward(self, features: EmbeddedFeatures) -> torch.Tensor:
        parts = [features.fields.flatten(1), self.domain_embedding(features.domain), features.dense]
        parts += [masked_mean(s.keys, s.mask) for s in features.sequences]
        return torch.cat(parts, dim=1)
