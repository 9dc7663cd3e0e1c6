"""The building blocks of SFPNet (Zhang et al., SIGIR 2024, papers/sfpnet_sigir24.txt §4).

* :func:`distribution_aware_pooling` — eq 2 (and the mean pooling of the "w/o DAP" ablation);
* :class:`ScenarioGate` — ``σ(W1·LN(ReLU(W0·z + b0)) + b1)``, the gate of eq 3 and of eq 10;
* :class:`ScenarioAdaptiveModule` (SAM) — eqs 3–4;
* :class:`ResidualTailoringModule` (RTM) — eqs 5–7;
* :class:`ScenarioTailoringBlock` — one SAM followed by one RTM (§4, Figure 3);
* :class:`ScenarioAwareDNN` (S-DNN) — eqs 9–11.

Notation: ``n`` id fields of width ``d`` (the embedding dimension), one behaviour sequence per
sequence group ``g`` with behaviours of width ``d_g`` (the group's fields concatenated, ``F_g · d``),
the scenario vector ``s_m`` of width ``d_s``. Every block keeps the widths (``d_l = d_{l-1}``): the
paper allows a per-block width but never uses it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from torchrec_mdr.models.blocks import MLP, masked_mean

_VARIANCE_FLOOR = 1e-12  # below it the std is exactly 0 (and its gradient 0, not inf)


def distribution_aware_pooling(keys: torch.Tensor, mask: torch.Tensor, with_std: bool = True) -> torch.Tensor:
    """Eq 2: ``B = mean_t(b_t) ⊕ sqrt(mean_t(b_t²) − mean_t(b_t)²)`` over the real positions only.

    The variance is computed in the equivalent two-pass form ``mean_t((b_t − μ)²)`` (the population
    variance of eq 2, without its cancellation error), in float32. A sequence of length 0 or 1 has
    variance 0 and pools to ``mean ⊕ 0`` — zeros for an empty one, never NaN; the square root is taken
    only where the variance exceeds 1e-12, so its gradient stays finite. ``with_std=False`` is the mean
    pooling of the "w/o DAP" ablation.

    Shapes: keys [B, L, d_g], mask [B, L] bool -> [B, 2·d_g] (or [B, d_g] without the std).
    """
    mean = masked_mean(keys.float(), mask)
    if not with_std:
        return mean.to(keys.dtype)
    weights = mask.to(torch.float32).unsqueeze(-1)
    centred = (keys.float() - mean.unsqueeze(1)) * weights
    variance = centred.pow(2).sum(1) / weights.sum(1).clamp_min(1.0)
    positive = variance > _VARIANCE_FLOOR
    std = torch.where(positive, variance.clamp_min(_VARIANCE_FLOOR).sqrt(), torch.zeros_like(variance))
    return torch.cat([mean, std], dim=-1).to(keys.dtype)


class ScenarioGate(nn.Module):
    """``A = γ·σ(W1·LN(ReLU(W0·z + b0)) + b1)`` — the gate of eq 3 (SAM) and of eq 10 (S-DNN).

    The layer norm has its elementwise affine parameters (the paper only says "LN"). ``scale`` is
    γ: the paper's gates have γ = 1 (values in (0, 1), ≈ ½ at initialisation); γ = 2 is the gate of
    EPNet/PEPNet (≈ 1 at initialisation, so a gated input passes at its own scale).

    Shapes: z [B, in_width] -> A [B, out_width], values in (0, γ).
    """

    def __init__(self, in_width: int, hidden: int, out_width: int, scale: float = 1.0) -> None:
        super().__init__()
        if scale <= 0:
            raise ValueError(f"gate scale must be > 0, got {scale!r}")
        self.scale = scale
        self.hidden = nn.Linear(in_width, hidden)  # W0, b0 (eq 3) / W5, b5 (eq 10)
        self.norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, out_width)  # W1, b1 (eq 3) / W6, b6 (eq 10)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.out(self.norm(torch.relu(self.hidden(z)))))
        return gate if self.scale == 1.0 else self.scale * gate


class ScenarioAdaptiveModule(nn.Module):
    """SAM, eqs 3–4: gate the instance's features with the scenario.

    ``X = x_1 ⊕ … ⊕ x_n ⊕ B ⊕ s_m`` (B: the pooled sequences, one slice per group),
    ``A = ScenarioGate(X)`` and ``X̂ = (x_1 ⊕ … ⊕ x_n ⊕ B) ⊗ A``. Only the first ``gated_width``
    elements of ``x ⊕ B`` are gated (and returned): all of them when the RTM follows; the fields
    alone in the "w/o RTM" ablation, where the pooled sequence has no consumer after the gate (it
    still conditions the gate).

    Shapes: flat [B, n·d + Σ|B_g|], scenario [B, d_s] -> X̂ [B, gated_width].
    """

    def __init__(self, flat_width: int, scenario_width: int, hidden: int, gated_width: int) -> None:
        super().__init__()
        self.gated_width = gated_width
        self.gate = ScenarioGate(flat_width + scenario_width, hidden, gated_width)

    def forward(self, flat: torch.Tensor, scenario: torch.Tensor) -> torch.Tensor:
        gate = self.gate(torch.cat([flat, scenario], dim=-1))  # eq 3
        return flat[:, : self.gated_width] * gate  # eq 4


class PerFieldLinear(nn.Module):
    """One independent ``Linear(d_in, d_out)`` per field (the ``W_{x_i}`` of eq 6), batched.

    Initialised like ``nn.Linear`` (uniform in ±1/sqrt(d_in)).

    Shapes: [B, n, d_in] -> [B, n, d_out].
    """

    def __init__(self, num_fields: int, in_features: int, out_features: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.empty(num_fields, in_features, out_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(num_fields, out_features).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bni,nio->bno", x, self.weight.to(x.dtype)) + self.bias.to(x.dtype)


class ResidualTailoringModule(nn.Module):
    """RTM, eqs 5–7: one context slice per feature, then the residual re-coding.

    * Eq 5 (aggregation): ``C = W3·ReLU(W2·X̂ + b2) + b3``.
    * Eq 6 (each id field i, its own weights): ``x_i' = ReLU(W_{i,1}·x̂_i + b) + σ(W_{i,2}·x̂_i + b') ⊗ c_i``,
      where ``x̂_i`` is field i's slice of the SAM output (the paper: "the scenario-adaptive
      representation of the i-th feature output by SAM").
    * Eq 7 (each behaviour t of group g, weights shared over t): ``v_t' = ReLU(W4·v_t + b4) +
      σ(W5·v_t + b5) ⊗ c_g``, where ``v_t`` is the previous block's behaviour (SAM gates only the pooled
      sequence, never single behaviours).

    The "residual connection" of the paper is the additive form of eqs 6–7 itself (a transformed copy
    of the input plus the gated context); no identity skip is added, as the equations have none.

    Width of a sequence's context slice (the paper is inconsistent: it slices
    ``c_b = C[n·d : (n+2)·d]``, 2d wide like the mean ⊕ std it pools, yet multiplies it elementwise
    with ``v_t ∈ R^d`` in eq 7): we give each group a slice exactly as wide as its behaviours,
    ``d_g``, so that eq 7 is well-typed with no extra projection and every output of eq 5 is used.
    ``C`` is therefore ``n·d + Σ_g d_g`` wide (the paper's ``(n+2)·d`` has ``2d`` there).
    Padded positions of the re-coded behaviours are set back to 0.

    Shapes: X̂ [B, n·d + Σ|B_g|], behaviours [B, L_g, d_g], masks [B, L_g]
    -> fields [B, n, d], behaviours [B, L_g, d_g].
    """

    def __init__(self, num_fields: int, dim: int, behaviour_widths: list[int], in_width: int, hidden: int) -> None:
        super().__init__()
        self.num_fields, self.dim = num_fields, dim
        self.behaviour_widths = list(behaviour_widths)
        self.context_width = num_fields * dim + sum(behaviour_widths)
        self.aggregate = MLP(in_width, [hidden], out_features=self.context_width)  # eq 5
        self.field_transform = PerFieldLinear(num_fields, dim, dim)  # W_{x_i,1}
        self.field_gate = PerFieldLinear(num_fields, dim, dim)  # W_{x_i,2}
        self.behaviour_transform = nn.ModuleList(nn.Linear(w, w) for w in behaviour_widths)  # W4
        self.behaviour_gate = nn.ModuleList(nn.Linear(w, w) for w in behaviour_widths)  # W5

    def forward(
        self, gated: torch.Tensor, behaviours: list[torch.Tensor], masks: list[torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        batch, field_width = gated.shape[0], self.num_fields * self.dim
        context = self.aggregate(gated)  # eq 5
        field_context = context[:, :field_width].reshape(batch, self.num_fields, self.dim)
        x_hat = gated[:, :field_width].reshape(batch, self.num_fields, self.dim)
        fields = torch.relu(self.field_transform(x_hat)) + torch.sigmoid(self.field_gate(x_hat)) * field_context
        tailored, offset = [], field_width
        for v, mask, width, transform, gate in zip(
            behaviours, masks, self.behaviour_widths, self.behaviour_transform, self.behaviour_gate
        ):
            c_g = context[:, offset : offset + width].unsqueeze(1)  # [B, 1, d_g], shared by every behaviour
            offset += width
            recoded = torch.relu(transform(v)) + torch.sigmoid(gate(v)) * c_g  # eq 7
            tailored.append(torch.where(mask.unsqueeze(-1), recoded, torch.zeros_like(recoded)))
        return fields, tailored


class ScenarioTailoringBlock(nn.Module):
    """One Scenario-Tailoring Block: pooling (eq 2) -> SAM (eqs 3–4) -> RTM (eqs 5–7).

    Ablations: ``use_sam=False`` ("w/o SAM") feeds ``x ⊕ B`` ungated to the RTM (the block then sees
    no scenario); ``use_rtm=False`` ("w/o RTM") returns the SAM-gated fields and the behaviours
    unchanged (a PEPNet-style embedding gate); ``with_std=False`` ("w/o DAP") pools by the mean only.

    Shapes: fields [B, n, d], behaviours [B, L_g, d_g], masks [B, L_g], scenario [B, d_s]
    -> fields [B, n, d], behaviours [B, L_g, d_g].
    """

    def __init__(
        self,
        num_fields: int,
        dim: int,
        behaviour_widths: list[int],
        scenario_width: int,
        *,
        use_sam: bool,
        use_rtm: bool,
        with_std: bool,
        sam_hidden: int,
        context_hidden: int,
    ) -> None:
        super().__init__()
        if not (use_sam or use_rtm):
            raise ValueError("a Scenario-Tailoring Block needs the SAM or the RTM")
        self.with_std = with_std
        pooled_width = sum((2 if with_std else 1) * w for w in behaviour_widths)
        flat_width = num_fields * dim + pooled_width
        gated_width = flat_width if use_rtm else num_fields * dim
        self.sam = ScenarioAdaptiveModule(flat_width, scenario_width, sam_hidden, gated_width) if use_sam else None
        self.rtm = (
            ResidualTailoringModule(num_fields, dim, behaviour_widths, flat_width, context_hidden) if use_rtm else None
        )

    def forward(
        self, fields: torch.Tensor, behaviours: list[torch.Tensor], masks: list[torch.Tensor], scenario: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        pooled = [distribution_aware_pooling(v, m, self.with_std) for v, m in zip(behaviours, masks)]
        flat = torch.cat([fields.flatten(1), *pooled], dim=-1)
        gated = self.sam(flat, scenario) if self.sam is not None else flat
        if self.rtm is None:
            return gated.reshape(fields.shape), behaviours
        return self.rtm(gated, behaviours, masks)


class ScenarioAwareLayer(nn.Module):
    """One S-DNN layer, eqs 10–11: ``H' = act(W7·(H ⊗ A) + b7)``, ``A = γ·ScenarioGate(H ⊕ s_m)``.

    ``gate_scale`` is γ (1 in the paper; see :class:`ScenarioGate`).

    Shapes: H [B, in_width], scenario [B, d_s] -> [B, out_width].
    """

    def __init__(
        self,
        in_width: int,
        out_width: int,
        scenario_width: int,
        gate_hidden: int,
        activation: bool,
        dropout: float,
        gate_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.gate = ScenarioGate(in_width + scenario_width, gate_hidden, in_width, gate_scale)  # eq 10
        self.linear = nn.Linear(in_width, out_width)  # W7, b7
        self.activation = nn.ReLU() if activation else nn.Identity()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, h: torch.Tensor, scenario: torch.Tensor) -> torch.Tensor:
        gate = self.gate(torch.cat([h, scenario], dim=-1))
        return self.dropout(self.activation(self.linear(h * gate)))  # eq 11


class ScenarioAwareDNN(nn.Module):
    """S-DNN, eqs 9–11: every hidden layer gated by the scenario; the output layer by default too.

    The hidden layers are eq 11 with ReLU; the output layer (``hidden[-1] -> num_tasks``, the
    logits that eq 9's σ turns into probabilities) is gated the same way but has no activation
    (``gate_output=True``, the default), or is a plain ``Linear`` (``gate_output=False``; the paper
    does not say whether its last layer is one of the gated "j-th layers"). ``gate_scale`` is the γ of
    every gate (:class:`ScenarioGate`; 1 in the paper).

    Shapes: H¹ [B, in_width], scenario [B, d_s] -> logits [B, num_tasks].
    """

    def __init__(
        self,
        in_width: int,
        hidden: list[int],
        num_tasks: int,
        scenario_width: int,
        gate_hidden: int,
        dropout: float,
        gate_scale: float = 1.0,
        gate_output: bool = True,
    ) -> None:
        super().__init__()
        widths = [in_width, *hidden]
        self.layers = nn.ModuleList(
            ScenarioAwareLayer(
                a, b, scenario_width, gate_hidden, activation=True, dropout=dropout, gate_scale=gate_scale
            )
            for a, b in zip(widths[:-1], widths[1:])
        )
        # The gated output layer stays the last of ``layers`` (the parameter names of the default).
        self.output: nn.Linear | None = None
        if gate_output:
            self.layers.append(
                ScenarioAwareLayer(
                    widths[-1],
                    num_tasks,
                    scenario_width,
                    gate_hidden,
                    activation=False,
                    dropout=0.0,
                    gate_scale=gate_scale,
                )
            )
        else:
            self.output = nn.Linear(widths[-1], num_tasks)

    def forward(self, h: torch.Tensor, scenario: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            h = layer(h, scenario)
        return h if self.output is None else self.output(h)
