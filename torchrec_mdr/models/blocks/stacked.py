"""Per-domain and stacked layers: G independent linear maps / MLPs held in single tensors (one batched
contraction), and :func:`select_domain`, which keeps each row's own domain slice.

Used for everything per domain or per expert (ADIN's domain networks and towers, the towers, experts
and gates of SharedBottom, MMoE, PLE, PEPNet). A domain's parameters live in slot ``k`` of those
tensors and, read through :func:`select_domain`, receive gradient only from rows of domain ``k``;
domains absent from a batch get an exact zero gradient, never ``None``, so optimizers and DDP see
every parameter every step. The price: every group is evaluated for every
row (K times the FLOPs of one tower, small for the few domains these models target).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def select_domain(per_domain: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
    """Each row's own domain slice: [B, K, ...], [B] -> [B, ...].

    A gather, so a domain-specific head only receives gradient from its own domain's rows.
    """
    flat = per_domain.unsqueeze(-1).flatten(2)  # [B, K, R]; written without the rank, so fx can trace it
    index = domain.long().view(-1, 1, 1).expand(-1, 1, flat.shape[2])
    return flat.gather(1, index).view_as(per_domain[:, 0])


@torch.fx.wrap  # rank-dependent: one node in an fx trace
def _stacked_matmul(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x [B, in] (shared by the groups) or [B, G, in], weight [G, in, out] -> [B, G, out]."""
    if x.dim() == 2:
        return torch.einsum("bi,gio->bgo", x, weight)
    return torch.einsum("bgi,gio->bgo", x, weight)


@torch.fx.wrap
def _per_group(x: torch.Tensor, groups: int) -> torch.Tensor:
    """x [B, in] -> [B, G, in] (a view); [B, G, in] unchanged."""
    return x.unsqueeze(1).expand(-1, groups, -1) if x.dim() == 2 else x


class StackedLinear(nn.Module):
    """G independent linear maps in one tensor: ``out[b, g] = x[b] W_g + b_g`` (or ``x[b, g] W_g + b_g``).

    Each ``W_g`` is initialised as ``nn.Linear`` would be. ``bias=False`` gives the plain linear
    maps the gates of MMoE / PLE use.

    Shapes: x [B, in] (the same input for every group) or [B, G, in] -> [B, G, out].
    Parameters: weight [G, in, out], bias [G, out].
    """

    def __init__(self, groups: int, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(groups, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(groups, out_features)) if bias else None
        bound = 1.0 / math.sqrt(in_features) if in_features > 0 else 0.0  # nn.Linear's default init
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _stacked_matmul(x, self.weight)
        return out if self.bias is None else out + self.bias


class StackedMLP(nn.Module):
    """G independent MLPs (Linear -> ReLU (-> dropout) per hidden layer, optional final Linear).

    Shapes: x [B, in] or [B, G, in] -> [B, G, hidden[-1] or out_features].
    """

    def __init__(
        self, groups: int, in_features: int, hidden: list[int], out_features: int | None = None, dropout: float = 0.0
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for size in hidden:
            layers += [StackedLinear(groups, width, size), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = size
        if out_features is not None:
            layers.append(StackedLinear(groups, width, out_features))
            width = out_features
        self.layers = nn.Sequential(*layers)
        self.groups = groups
        self.out_features = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.layers:  # no layer at all: the input, once per group
            return _per_group(x, self.groups)
        return self.layers(x)


class DomainTowers(nn.Module):
    """One MLP tower per domain; each row gets its own domain's output.

    Shapes: x [B, in], domain [B] -> [B, out_features] (via [B, K, out_features] and a gather).
    """

    def __init__(
        self, in_features: int, hidden: list[int], num_domains: int, out_features: int, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.towers = StackedMLP(num_domains, in_features, hidden, out_features, dropout)

    def forward(self, x: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        return select_domain(self.towers(x), domain)
