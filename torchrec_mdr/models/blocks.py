"""Small building blocks shared by the models: MLP, DIN target attention."""

from __future__ import annotations

import torch
from torch import nn


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
        if query.dim() == 2:
            query = query.unsqueeze(1).expand_as(keys)
        scores = self.scorer(torch.cat([query, keys, query - keys, query * keys], dim=-1)).squeeze(-1)
        weights = scores * mask.to(scores.dtype)
        return torch.einsum("bl,bld->bd", weights, keys)
