"""Target attention: one candidate (or one query per behaviour) attends to a behaviour sequence.

The three kinds share one signature and one option set (:class:`AttentionOptions`, whose ``kind`` is
:data:`AttentionKind`): DIN's MLP scorer (:class:`DINAttention`), multi-head scaled dot-product
attention (:class:`MultiHeadTargetAttention`, ADS eqs 8–12) and CAN's co-action unit
(:class:`CoActionUnit`). Each takes either one query per row ([B, Dq]: classic target attention, the
candidate attends to every behaviour) or one query per position ([B, L, Dq]: ADS's personalised
queries, query ``t`` is paired with behaviour ``t`` only). Padded positions (mask False) get weight
exactly zero, and an all-padding row pools to a zero vector (never NaN). Every block has
``out_features``, the width of what it returns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, get_args

import torch
from torch import nn

from torchrec_mdr.config import ConfigError, bounds
from torchrec_mdr.models.blocks.mlp import MLP

AttentionKind = Literal["din", "mha", "can"]
ATTENTION_KINDS: tuple[str, ...] = tuple(sorted(get_args(AttentionKind)))
BACKBONES = ATTENTION_KINDS  # the name ADS's config uses ("backbone")


@dataclass(frozen=True)
class AttentionOptions:
    """Which target attention, and its options (each kind reads its own; the others are ignored).

    A model's config turns its own keys into one of these (``DINConfig.attention()``, ...), so
    DIN, MHA, CAN and ADS build their attention the same way.
    """

    kind: AttentionKind = "din"
    din_hidden: list[int] = field(default_factory=lambda: [64, 32])  # DIN: scorer MLP widths
    heads: int = 2  # MHA
    head_dim: int = 16  # MHA: d_A
    micro_hidden: list[int] = field(default_factory=lambda: [8, 4])  # CAN: micro-MLP widths
    orders: int = 1  # CAN: multi-order enhancement

    def build(self, dim: int) -> TargetAttention:
        """The attention for queries and keys of width ``dim``; ``.out_features`` is its output width."""
        return build_attention(
            self.kind,
            dim,
            din_hidden=self.din_hidden,
            heads=self.heads,
            head_dim=self.head_dim,
            micro_hidden=self.micro_hidden,
            orders=self.orders,
        )


@dataclass
class TargetAttentionConfig:
    """A model's ``<model>.attention`` section: the options of whichever target attention it runs (each kind
    reads its own keys); :meth:`options` turns it into :class:`AttentionOptions` of a chosen kind."""

    din_hidden: list[int] = field(
        default_factory=lambda: [64, 32], metadata=bounds(ge=1, help="DIN: the scorer MLP's widths")
    )
    heads: int = field(default=2, metadata=bounds(ge=1, help="MHA: attention heads"))
    head_dim: int = field(default=16, metadata=bounds(ge=1, help="MHA: d_A, the query/key/value width per head"))
    micro_hidden: list[int] = field(
        default_factory=lambda: [8, 4], metadata=bounds(ge=1, help="CAN: the co-action micro-MLP's widths")
    )
    orders: int = field(default=1, metadata=bounds(ge=1, help="CAN: multi-order enhancement, powers 1..orders"))

    def options(self, kind: str) -> AttentionOptions:
        return AttentionOptions(
            kind,  # type: ignore[arg-type]
            din_hidden=self.din_hidden,
            heads=self.heads,
            head_dim=self.head_dim,
            micro_hidden=self.micro_hidden,
            orders=self.orders,
        )


def check_attention_kind(kind: str, key: str) -> None:
    """ConfigError naming ``key`` unless ``kind`` is an :data:`AttentionKind` (for archs built without a
    config file; a config file is checked by its ``Literal`` type at load)."""
    if kind not in ATTENTION_KINDS:
        raise ConfigError(f"{key}: {kind!r} is not one of {list(ATTENTION_KINDS)}")


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
        self.out_features = dim

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        query = per_position_query(query, keys)
        scores = self.scorer(torch.cat([query, keys, query - keys, query * keys], dim=-1)).squeeze(-1)
        weights = scores * mask.to(scores.dtype)
        return torch.einsum("bl,bld->bd", weights, keys)


@torch.fx.wrap  # reads the dtype: one node in an fx trace
def _lowest_at_padding(scores: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """``scores`` with the dtype's lowest value where ``real`` is False (softmax weight exactly 0)."""
    return scores.masked_fill(~real, torch.finfo(scores.dtype).min)


class MultiHeadTargetAttention(nn.Module):
    """Multi-head scaled dot-product target attention, ADS eqs 8–12 (Vaswani et al. 2017, one query).

    Per head ``h``: ``Q = E_Q W_Q^h`` (eq 8), ``K = E_S W_K^h`` (eq 9), ``V = E_S W_V^h`` (eq 10);
    ``z'[t] = Q_t . K_t / sqrt(d_A)`` (eq 11) with query ``t`` paired with key ``t`` (a per-row query
    is the same ``Q`` for every ``t``); ``z = softmax_t(z')`` over the real positions only, and
    ``s^h = sum_t z[t] V_t`` (eq 12). The heads' outputs are concatenated; there is no output
    projection (eq 12 stops at ``s``; the MLP that follows mixes the heads). Projections have no bias,
    as in eqs 8–10.

    Padding: scores at padded positions are replaced by the dtype's lowest value before the softmax,
    so they get weight exactly 0 (``exp`` underflows); the weights are then multiplied by the mask so
    an all-padding row (uniform softmax over equal scores) pools to exactly zero, never NaN.

    Shapes: query [B, Dq] or [B, L, Dq], keys [B, L, Dk], mask [B, L] -> [B, heads * head_dim].
    """

    def __init__(self, query_dim: int, key_dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.out_features = heads * head_dim
        self.query = nn.Linear(query_dim, heads * head_dim, bias=False)  # W_Q of all heads
        self.key = nn.Linear(key_dim, heads * head_dim, bias=False)  # W_K
        self.value = nn.Linear(key_dim, heads * head_dim, bias=False)  # W_V

    def attention_weights(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """z of eq 12: [B, heads, L], zero at padded positions, each row summing to 1 (or 0 if empty)."""
        batch, length = keys.shape[:2]
        q = self.query(per_position_query(query, keys)).view(batch, length, self.heads, self.head_dim)
        k = self.key(keys).view(batch, length, self.heads, self.head_dim)
        scores = torch.einsum("blhd,blhd->bhl", q, k) / math.sqrt(self.head_dim)  # eq 11
        real = mask.unsqueeze(1)  # [B, 1, L]
        scores = _lowest_at_padding(scores, real)
        return torch.softmax(scores, dim=-1) * real.to(scores.dtype)

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, length = keys.shape[:2]
        weights = self.attention_weights(query, keys, mask)
        v = self.value(keys).view(batch, length, self.heads, self.head_dim)
        pooled = torch.einsum("bhl,blhd->bhd", weights.to(v.dtype), v)  # eq 12
        return pooled.reshape(batch, self.out_features)


class CoActionUnit(nn.Module):
    """CAN's co-action unit (Bian et al., WSDM 2022) applied to a behaviour sequence.

    The query (the candidate; with ADS, behaviour ``t``'s personalised query) is turned into the
    parameters of a micro-MLP: ``p = P(query)`` is cut into ``W_1 [Dk, h_1], b_1 [h_1], W_2 [h_1, h_2],
    b_2 [h_2], ...`` and applied to each behaviour embedding ``e_t``:
    ``x_1 = e_t W_1 + b_1``, ``x_{i+1} = tanh(x_i) W_{i+1} + b_{i+1}`` (tanh between layers, none after
    the last, as in CAN's reference code). The unit's output for a behaviour is the concatenation of
    every layer's output ``[x_1, ..., x_n]`` (again as CAN's code), and with ``orders > 1`` CAN's
    multi-order enhancement runs the same micro-MLP on ``e_t^c`` (element-wise power) for
    ``c = 1..orders`` and concatenates the results. Outputs are summed over the real positions.

    Choice of this implementation: CAN looks the micro-MLP parameters up in a dedicated, wide
    "induction" embedding table; here the candidate has one shared embedding (of the key width), so
    ``P`` is a learned linear map from the query to the parameter vector. Padded positions are
    replaced by zeros after the micro-MLP (``torch.where``), so they add exactly nothing.

    Shapes: query [B, Dq] or [B, L, Dq], keys [B, L, Dk], mask [B, L] -> [B, orders * sum(hidden)].
    """

    def __init__(self, query_dim: int, key_dim: int, hidden: list[int], orders: int = 1) -> None:
        super().__init__()
        self.shapes = list(zip([key_dim] + hidden[:-1], hidden))  # (in, out) per micro-layer
        self.orders = orders
        self.num_parameters = sum(i * o + o for i, o in self.shapes)
        self.induction = nn.Linear(query_dim, self.num_parameters)  # P: query -> micro-MLP parameters
        self.out_features = orders * sum(hidden)

    def micro_parameters(self, query: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """[..., Dq] -> per layer (weight [..., in, out], bias [..., out]), cut from ``P(query)`` in order."""
        flat = self.induction(query)
        parts, start = [], 0
        for fan_in, fan_out in self.shapes:
            weight = flat[..., start : start + fan_in * fan_out].unflatten(-1, (fan_in, fan_out))
            start += fan_in * fan_out
            parts.append((weight, flat[..., start : start + fan_out]))
            start += fan_out
        return parts

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        layers = self.micro_parameters(per_position_query(query, keys))  # weights [B, L, in, out]
        outputs = []
        for order in range(1, self.orders + 1):
            x = keys if order == 1 else keys**order
            for index, (weight, bias) in enumerate(layers):
                if index > 0:
                    x = torch.tanh(x)
                x = torch.einsum("bli,blio->blo", x, weight) + bias
                outputs.append(x)
        per_position = torch.cat(outputs, dim=-1)  # [B, L, out_features]
        per_position = torch.where(mask.unsqueeze(-1), per_position, torch.zeros_like(per_position))
        return per_position.sum(dim=1)


# any of the three kinds (one signature, an ``out_features``)
TargetAttention = DINAttention | MultiHeadTargetAttention | CoActionUnit


def build_attention(
    kind: str, dim: int, *, din_hidden: list[int], heads: int, head_dim: int, micro_hidden: list[int], orders: int
) -> TargetAttention:
    """The named target attention for queries and keys of width ``dim``; ``.out_features`` its width."""
    if kind == "din":
        return DINAttention(dim, din_hidden)
    if kind == "mha":
        return MultiHeadTargetAttention(dim, dim, heads, head_dim)
    if kind == "can":
        return CoActionUnit(dim, dim, micro_hidden, orders)
    raise ValueError(f"unknown target attention {kind!r}; choose one of {list(ATTENTION_KINDS)}")
