"""Layers whose weights are generated per sample from a condition (APG, Yan et al., NeurIPS 2022,
"APG: Adaptive Parameter Generation Network for Click-Through Rate Prediction"; the parts below
carry the paper's names for them).

A plain layer applies the same ``W`` to every row; a generated layer applies ``W_i = G(z_i)``, made
by a small generator network G from the row's condition ``z_i``:

    basic APG                 W_i = reshape(G(z_i)),            y_i = W_i x_i + b
    low-rank parameterisation W_i = U_i S_i V_i,  U_i [N, K], S_i [K, K], V_i [K, M]
    decomposed feed-forward   y_i = U_i (S_i (V_i x_i)) + b      (never forms the N x M matrix)
    parameter sharing         W_i = U S_i V: U, V learned and shared by all rows, only S_i is
                              generated (common patterns in U, V; the row's own in S_i)
    over-parameterisation     U = U^l U^r, V = V^l V^r with U^l [N, P], U^r [P, K],
                              V^l [K, P], V^r [P, M], P >= K: more parameters in training, the
                              same U, V (and cost) once multiplied out

with x_i [M] the layer input, y_i [N] the output. Per row, the shared form costs O(MK + K^2 + KN)
multiply-adds and the generator emits K^2 numbers (basic APG: O(MN) and M N numbers).
``generation`` picks the form: ``"shared"`` (the paper's full APG, the default), ``"specific"``
(U_i, S_i, V_i all generated) or ``"full"`` (basic APG).

The condition (the paper's group-wise, mix-wise and self-wise strategies): ``"group"`` — a vector
given by the caller, the same for every layer (the domain embedding, a user-group embedding);
``"self"`` — the layer's own input ``x_i``; ``"mix"`` — our reading of mix-wise (several factors
combined): the given vector and the layer input concatenated, ``[z_i, x_i]``. Every layer has its
own generator.

Choices where the paper is silent (pinned in tests/test_apg.py):

* G is an MLP (Linear -> ReLU per hidden width, then a Linear to the generated numbers);
  ``generator_hidden = []`` makes it linear.
* Initialisation: U, V (and U^l, U^r, V^l, V^r) are each drawn as ``nn.Linear`` draws a weight of
  its shape (uniform in ±1/sqrt(fan_in)), so U V starts as two stacked linear layers do. The
  generator's output bias starts at the factors' initial values — S at the identity, generated
  U_i, V_i, W_i at an ``nn.Linear`` draw, a generated bias at 0 — so a generated layer starts as a
  plain (low-rank) layer plus a condition-dependent perturbation.
* The bias is learned and shared (the paper writes y = σ(W x)); ``generate_bias`` generates it too.
* K larger than min(M, N) is cut to min(M, N) (a rank above it adds nothing).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from torchrec_mdr.models.blocks.mlp import MLP

Generation = Literal["shared", "specific", "full"]
GENERATIONS: tuple[str, ...] = ("shared", "specific", "full")
ConditionKind = Literal["group", "self", "mix"]
CONDITION_KINDS: tuple[str, ...] = ("group", "self", "mix")


def _linear_draw(rows: int, columns: int) -> torch.Tensor:
    """[rows, columns] drawn as ``nn.Linear(columns, rows).weight`` is (uniform in ±1/sqrt(columns))."""
    return _uniform([rows, columns], columns)


def _uniform(shape: list[int], fan_in: int) -> torch.Tensor:
    bound = 1.0 / math.sqrt(fan_in)
    return torch.empty(shape).uniform_(-bound, bound)


class GeneratedLinear(nn.Module):
    """A linear layer whose weight is generated per row from a condition (see the module doc).

    Shapes: x [B, in_features], condition [B, condition_width] -> [B, out_features].
    Parameters (``"shared"``): U [N, K] and V [K, M] (or U^l, U^r, V^l, V^r with ``over_rank`` P > 0),
    the generator G: condition -> K^2 (+ N with ``generate_bias``), and a bias [N].

    Example::

        layer = GeneratedLinear(16, 8, condition_width=4, rank=2)
        layer(torch.randn(3, 16), torch.randn(3, 4)).shape  # (3, 8)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        condition_width: int,
        rank: int = 8,
        generation: str = "shared",
        over_rank: int = 0,
        generator_hidden: list[int] | None = None,
        generate_bias: bool = False,
    ) -> None:
        super().__init__()
        if generation not in GENERATIONS:
            raise ValueError(f"generation {generation!r} is not one of {list(GENERATIONS)}")
        self.rank = k = min(rank, in_features, out_features)
        if over_rank and (generation != "shared" or over_rank < k):
            raise ValueError(f"over_rank {over_rank} needs generation 'shared' and over_rank >= rank {k}")
        n, m = out_features, in_features
        self.in_features, self.out_features, self.generation = m, n, generation
        shapes = {"full": [(n, m)], "specific": [(n, k), (k, k), (k, m)], "shared": [(k, k)]}[generation]
        self.shapes = shapes + ([(n,)] if generate_bias else [])
        self.sizes = [math.prod(shape) for shape in self.shapes]
        self.generator = MLP(condition_width, list(generator_hidden or []), out_features=sum(self.sizes))
        start = {
            "full": [_linear_draw(n, m)],
            "specific": [_linear_draw(n, k), torch.eye(k), _linear_draw(k, m)],
            "shared": [torch.eye(k)],
        }[generation] + ([torch.zeros(n)] if generate_bias else [])
        last = self.generator[-1]
        assert isinstance(last, nn.Linear)
        with torch.no_grad():
            last.bias.copy_(torch.cat([t.flatten() for t in start]))
        self.over_rank = over_rank
        if generation == "shared" and over_rank:
            p = over_rank
            self.u_left, self.u_right = nn.Parameter(_linear_draw(n, p)), nn.Parameter(_linear_draw(p, k))
            self.v_left, self.v_right = nn.Parameter(_linear_draw(k, p)), nn.Parameter(_linear_draw(p, m))
        elif generation == "shared":
            self.u, self.v = nn.Parameter(_linear_draw(n, k)), nn.Parameter(_linear_draw(k, m))
        self.bias = None if generate_bias else nn.Parameter(_uniform([n], m))  # nn.Linear's bias range

    def shared_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The shared U [N, K] and V [K, M] (``"shared"`` only); multiplied out when over-parameterised."""
        if self.over_rank:
            return self.u_left @ self.u_right, self.v_left @ self.v_right
        return self.u, self.v

    def generate(self, condition: torch.Tensor) -> list[torch.Tensor]:
        """G(z) cut into the generated tensors, each [B, *shape]: W_i | U_i, S_i, V_i | S_i, then b_i if generated."""
        flat = self.generator(condition)
        ends = [sum(self.sizes[: i + 1]) for i in range(len(self.sizes))]  # slices, not split: fx-traceable
        return [
            flat[:, end - size : end].reshape([-1, *shape]) for end, size, shape in zip(ends, self.sizes, self.shapes)
        ]

    def row_weights(self, condition: torch.Tensor) -> torch.Tensor:
        """Each row's whole W_i [B, N, M] (for inspection and tests; forward never forms it)."""
        generated = self.generate(condition)
        if self.generation == "full":
            return generated[0]
        if self.generation == "specific":
            return generated[0] @ generated[1] @ generated[2]
        u, v = self.shared_factors()
        return u @ generated[0] @ v

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        generated = self.generate(condition)
        if self.generation == "full":
            y = torch.einsum("bnm,bm->bn", generated[0], x)
        elif self.generation == "specific":
            h = torch.einsum("bkm,bm->bk", generated[2], x)  # V_i x
            h = torch.einsum("bjk,bk->bj", generated[1], h)  # S_i (V_i x)
            y = torch.einsum("bnk,bk->bn", generated[0], h)  # U_i (S_i V_i x)
        else:
            u, v = self.shared_factors()
            h = torch.einsum("bjk,bk->bj", generated[0], x @ v.t())  # S_i (V x)
            y = h @ u.t()  # U (S_i V x)
        return y + (generated[-1] if self.bias is None else self.bias)


class GeneratedMLP(nn.Module):
    """Generated layers, each followed by ReLU (and dropout): an MLP whose every weight is per row.

    ``condition`` picks what each layer's generator sees: ``"group"`` the given condition,
    ``"self"`` the layer's input, ``"mix"`` both concatenated (the given condition first).

    Shapes: x [B, in_features], condition [B, condition_width] (unused with ``"self"``) ->
    [B, hidden[-1]] (``out_features``).
    """

    def __init__(
        self,
        in_features: int,
        hidden: list[int],
        condition_width: int,
        condition: str = "group",
        rank: int = 8,
        generation: str = "shared",
        over_rank: int = 0,
        generator_hidden: list[int] | None = None,
        generate_bias: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if condition not in CONDITION_KINDS:
            raise ValueError(f"condition {condition!r} is not one of {list(CONDITION_KINDS)}")
        self.condition = condition
        widths = [in_features, *hidden]
        given = 0 if condition == "self" else condition_width
        self.layers = nn.ModuleList(
            GeneratedLinear(
                a,
                b,
                given + (a if condition != "group" else 0),
                rank,
                generation,
                over_rank,
                generator_hidden,
                generate_bias,
            )
            for a, b in zip(widths, hidden)
        )
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.out_features = widths[-1]

    def layer_condition(self, x: torch.Tensor, condition: torch.Tensor | None) -> torch.Tensor:
        """What a layer's generator sees for layer input ``x``."""
        if self.condition == "self":
            return x
        assert condition is not None, f"a {self.condition!r} condition needs the condition tensor"
        return condition if self.condition == "group" else torch.cat([condition, x], dim=1)

    def forward(self, x: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self.layers:
            x = self.dropout(torch.relu(layer(x, self.layer_condition(x, condition))))
        return x
