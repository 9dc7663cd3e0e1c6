"""DFFM (Guo, Zhu, Yan, Chen, Liu, Guo, Zheng, Liu, Tang, CIKM 2023, "DFFM: Domain Facilitated Feature Modeling for
CTR Prediction", pp. 4602-4608): the domain is written into the *parameters* of a feature-interaction module (DFFI)
and of a self-attention over the behaviours (DFUB).

Equations (numbers as in the paper's §4; read from a public, translated reproduction of §4 with its equation
numbers, not from the PDF). B rows, K field vectors of width D, L behaviours of width d_S, H heads of width d_h::

    DFFI (§4.2), on PNN's inner product
    E = [e_1, ..., e_K]                       field vectors [B, K, D] (id fields, domain-id embedding, dense)
    D(h): h^(0) = h,  h^(k) = σ(W^(k-1) h^(k-1) + b^(k-1)), k = 1..L,  D(h) = h^(L)     (eqs 3-5)
    W^(k), b^(k) = Reshape(Split(E^d))        E^d: the domain embeddings, concatenated      (eq 6)
    F_domain(e_i, e_j) = <D(e_i), D(e_j)>                                                     (eq 2)
    h_domain = [F_domain(e_i, e_j) for i < j]                 [B, K (K - 1) / 2]             (eq 7)
    h_DFFI = MLP([h_domain, flatten(E)])                                                      (eq 8)

    DFUB (§4.3), a modified multi-head self-attention over E^h [B, L, d_S]
    E_Q = E_K = E_V = Reshape(E^t, E^d)       [B, d_h, r]  (E^t: the target item)
    W_Q^(i) = W_Q'^(i) E_Q^T,  W_K^(i) = W_K'^(i) E_K^T,  W_V^(i) = W_V'^(i) E_V^T  [B, d_S, d_h]  (eq 11)
    Q_i = E^h W_Q^(i),  K_i = E^h W_K^(i),  V_i = E^h W_V^(i)                                 (eq 10)
    head_i = softmax(Q_i K_i^T / sqrt(d_h)) V_i               [B, L, d_h]                    (eq 9)
    h_DFUB = [head_1, ..., head_H] W^out                      [B, L, d_out]                  (eq 12)

    prediction (§4.4): logits = W_o [h_DFFI, pool(h_DFUB)] + b_o   [B, num_tasks]           (eqs 13-14)

Choices where the paper is silent (each tested in tests/test_dffm.py and tests/test_baselines.py):

* **E^d** = the domain-id embedding ⊕ the embeddings of ``domain_features`` (implicit domain indicators such as an
  activity bucket), as ADS's E_D here. **E^t** = the candidate's embeddings in the sequence group's tables
  (``item_id`` for ``hist_item_id``; none for a group without a candidate column).
* **Reshape through a learned lift.** Eqs 6 and 11 reshape the concatenated embeddings themselves, which needs them
  exactly as wide as the parameters they become; the tables here are D wide, so an affine map (``nn.Linear``)
  lifts [E^d] (eq 6) and [E^t, E^d] (eq 11) to the needed width, then Split + Reshape as written. Eq 6's vector is
  cut layer by layer, W^(k) (row-major [out, in]) then b^(k). The lift's bias is a shared part of the parameters.
* **Initialisation of D.** The lift's bias holds an ``nn.Linear`` draw of every layer of D (a shared domain
  network to start from; biases 0), its weight ``nn.Linear``'s divided by √fan_in of the layer it feeds, so each
  row's domain-specific deviation starts at about the spread of an ``nn.Linear`` weight.
* **σ** = ReLU (``activation = "tanh"`` optional), after every layer of D including the last (eq 4 runs over
  k = 1..L). ``domain_network = []`` makes D the identity: PNN's plain inner product (DFFI without the domain).
  One D per row, shared by all K fields (eq 2 applies the same D to e_i and e_j).
* **E_Q = E_K = E_V**: eq 11 writes the same Reshape(E^t, E^d) for the three, so one [d_h, r] matrix per row; Q, K, V
  and the heads differ by their own W'^(i) [d_S, r]. r (``rank``) is ours (default 8). Projections have no bias and
  W^out has none (eqs 10-12 have none).
* **Self-attention, not target attention.** DFUB attends from every behaviour to every behaviour (eq 9: Q, K, V
  all come from E^h; the target enters only through the parameters), so it does not use
  :mod:`~torchrec_mdr.models.blocks.attention`, whose blocks pair query t with key t only.
* **Padding and pooling.** Scores of padded behaviours are masked (weight exactly 0). h_DFUB has one row per
  behaviour and eq 13 concatenates it with the vector h_DFFI without saying how the rows become one vector: it is
  averaged over the real behaviours (an empty sequence gives zeros).
* **Inputs**: dense features are one field ``W_d dense + b_d`` of E (:class:`~.blocks.FieldVectors`, as DeepFM);
  the sequences are read by DFUB only (not fields of E); several sequence groups get one DFUB each. With
  ``use_dfub = false`` (the ablation without DFUB) each sequence column is a mean-pooled field of E instead, and
  the sparse arch then looks the sequences up pooled.
* **Several tasks**: DFFI and DFUB are shared; W_o has one row per task (DFFM has no towers).
* Not built: DFFI on DCN's cross network or AutoInt's self-attention (§5.4.2: D applied to each order's input).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from torchrec_mdr.config import bounds, doc
from torchrec_mdr.models.blocks import MLP, FieldVectors, masked_mean
from torchrec_mdr.models.features import EmbeddedFeatures, EmbeddedSequence, FeatureLayout


@dataclass
class DFFMConfig:
    domain_features: list[str] = field(
        default_factory=list,
        metadata=doc(
            "id fields joined to the domain-id embedding as E^d (implicit domain indicators, e.g. user_activity)"
        ),
    )
    domain_network: list[int] = field(
        default_factory=lambda: [32, 16],
        metadata=bounds(
            ge=1, help="widths of the domain network D's layers (eqs 3-5); []: D is the identity (PNN's inner product)"
        ),
    )
    activation: Literal["relu", "tanh"] = field(default="relu", metadata=doc("σ of eq 4, after every layer of D"))
    hidden: list[int] = field(
        default_factory=lambda: [256, 128, 64], metadata=bounds(ge=1, help="widths of the MLP giving h_DFFI (eq 8)")
    )
    use_dfub: bool = field(
        default=True,
        metadata=doc(
            "the DFUB self-attention over the behaviours (false: each sequence column is a mean-pooled field of E)"
        ),
    )
    heads: int = field(default=2, metadata=bounds(ge=1, help="DFUB attention heads"))
    head_dim: int = field(default=16, metadata=bounds(ge=1, help="d_h: width of each head (eq 9)"))
    rank: int = field(default=8, metadata=bounds(ge=1, help="r: inner width of W'^(i) [d_S, r] and E_Q [d_h, r]"))
    dfub_dim: int = field(default=32, metadata=bounds(ge=1, help="d_out: width of W^out (eq 12)"))
    dropout: float = field(default=0.0, metadata=bounds(ge=0, lt=1, help="dropout after each hidden layer of eq 8"))


@torch.fx.wrap  # reads the dtype: one node in an fx trace
def _mask_padded_keys(scores: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """``scores`` with the dtype's lowest value where ``real`` is False (softmax weight exactly 0)."""
    return scores.masked_fill(~real, torch.finfo(scores.dtype).min)


class DomainNetwork(nn.Module):
    """D(·) of eqs 3-6: a micro-MLP whose weights and biases are cut, per row, from a lift of E^d.

    ``p = lift(E^d)`` is split layer by layer into ``W^(k)`` (row-major [out, in]) and ``b^(k)``; then
    ``h^(k) = σ(W^(k-1) h^(k-1) + b^(k-1))`` for every layer. No layers: the identity.

    Shapes: domain_features [B, d_D], vectors [B, K, in] -> [B, K, out_features].
    """

    def __init__(self, domain_dim: int, in_dim: int, widths: list[int], activation: str = "relu") -> None:
        super().__init__()
        self.shapes = list(zip([in_dim] + widths[:-1], widths))  # (in, out) per layer
        self.num_parameters = sum(i * o + o for i, o in self.shapes)
        self.out_features = widths[-1] if widths else in_dim
        self.activation = nn.Tanh() if activation == "tanh" else nn.ReLU()
        self.lift = nn.Linear(domain_dim, self.num_parameters) if self.shapes else None
        if self.lift is not None:
            self._initialise(self.lift)

    def _initialise(self, lift: nn.Linear) -> None:
        """Bias: an ``nn.Linear`` draw of each layer (biases 0); weight: ``nn.Linear``'s / √fan_in of that layer."""
        with torch.no_grad():
            start = 0
            for fan_in, fan_out in self.shapes:
                size = fan_in * fan_out
                lift.bias[start : start + size] = nn.Linear(fan_in, fan_out).weight.flatten()
                lift.weight[start : start + size + fan_out] /= math.sqrt(fan_in)
                lift.bias[start + size : start + size + fan_out] = 0.0
                start += size + fan_out

    def layers(self, domain_features: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Eq 6: per layer (W [B, out, in], b [B, out]), cut from ``lift(E^d)`` in order."""
        assert self.lift is not None
        flat = self.lift(domain_features)
        parts, start = [], 0
        for fan_in, fan_out in self.shapes:
            weight = flat[:, start : start + fan_in * fan_out].unflatten(-1, (fan_out, fan_in))
            start += fan_in * fan_out
            parts.append((weight, flat[:, start : start + fan_out]))
            start += fan_out
        return parts

    def forward(self, domain_features: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        if self.lift is None:
            return vectors
        x = vectors
        for weight, bias in self.layers(domain_features):  # eqs 3-5
            x = self.activation(torch.einsum("bki,boi->bko", x, weight) + bias.unsqueeze(1))
        return x


class DFFI(nn.Module):
    """Domain-facilitated feature interaction, eqs 2-8: ``MLP([<D(e_i), D(e_j)> for i < j, flatten(E)])``.

    Shapes: vectors [B, K, D], domain_features [B, d_D] -> [B, out_features].
    """

    pair_rows: torch.Tensor
    pair_cols: torch.Tensor

    def __init__(self, num_fields: int, dim: int, domain_dim: int, config: DFFMConfig) -> None:
        super().__init__()
        self.domain_network = DomainNetwork(domain_dim, dim, config.domain_network, config.activation)
        rows, cols = torch.triu_indices(num_fields, num_fields, offset=1)  # the pairs i < j, row by row
        self.register_buffer("pair_rows", rows, persistent=False)
        self.register_buffer("pair_cols", cols, persistent=False)
        self.mlp = MLP(len(rows) + num_fields * dim, config.hidden, dropout=config.dropout)
        self.out_features = self.mlp.out_features

    def interactions(self, vectors: torch.Tensor, domain_features: torch.Tensor) -> torch.Tensor:
        """h_domain of eq 7: [B, K (K - 1) / 2], pairs (0, 1), (0, 2), ..., (1, 2), ..."""
        enhanced = self.domain_network(domain_features, vectors)  # D(e_k) [B, K, out]
        gram = torch.einsum("bid,bjd->bij", enhanced, enhanced)  # eq 2 for every pair
        return gram[:, self.pair_rows, self.pair_cols]

    def forward(self, vectors: torch.Tensor, domain_features: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([self.interactions(vectors, domain_features), vectors.flatten(1)], dim=1))  # eq 8


class DFUB(nn.Module):
    """Domain-facilitated user behaviour, eqs 9-12: self-attention over the behaviours whose Q, K, V maps are
    ``W'^(i) E^T`` with ``E = Reshape(lift([E^t, E^d]))`` [B, d_h, r], then averaged over the real behaviours.

    Shapes: EmbeddedSequence (keys [B, L, d_S], mask [B, L], query E^t [B, Q]), domain_features [B, d_D]
    -> [B, out_features].
    """

    def __init__(self, key_width: int, condition_width: int, config: DFFMConfig) -> None:
        super().__init__()
        self.heads, self.head_dim, self.rank = config.heads, config.head_dim, config.rank
        self.lift = nn.Linear(condition_width, config.head_dim * config.rank)  # Reshape(E^t, E^d) of eq 11
        self.query = nn.Linear(key_width, config.heads * config.rank, bias=False)  # W_Q'^(i) of every head
        self.key = nn.Linear(key_width, config.heads * config.rank, bias=False)  # W_K'^(i)
        self.value = nn.Linear(key_width, config.heads * config.rank, bias=False)  # W_V'^(i)
        self.output = nn.Linear(config.heads * config.head_dim, config.dfub_dim, bias=False)  # W^out, eq 12
        self.out_features = config.dfub_dim

    def condition_matrix(self, target: torch.Tensor, domain_features: torch.Tensor) -> torch.Tensor:
        """E_Q = E_K = E_V of eq 11: [B, d_h, r]."""
        return self.lift(torch.cat([target, domain_features], dim=1)).unflatten(-1, (self.head_dim, self.rank))

    def project(self, linear: nn.Linear, keys: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """``E^h W'^(i) E^T`` for every head (eqs 10-11): [B, L, H, d_h]."""
        inner = linear(keys).unflatten(-1, (self.heads, self.rank))  # E^h W'^(i) [B, L, H, r]
        return torch.einsum("blhr,bdr->blhd", inner, condition)

    def attention_weights(self, queries: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """softmax(Q_i K_i^T / sqrt(d_h)) of eq 9 over the real behaviours: [B, H, L (query), L (key)]."""
        scores = torch.einsum("bthd,bshd->bhts", queries, keys) / math.sqrt(self.head_dim)
        scores = _mask_padded_keys(scores, mask[:, None, None, :])
        return torch.softmax(scores, dim=-1)

    def forward(self, sequence: EmbeddedSequence, domain_features: torch.Tensor) -> torch.Tensor:
        assert sequence.keys is not None and sequence.mask is not None
        condition = self.condition_matrix(sequence.query, domain_features)
        keys, mask = sequence.keys, sequence.mask
        q, k, v = (self.project(linear, keys, condition) for linear in (self.query, self.key, self.value))
        heads = torch.einsum("bhts,bshd->bthd", self.attention_weights(q, k, mask), v)  # eq 9, every head
        return masked_mean(self.output(heads.flatten(2)), mask)  # eq 12, then the mean over real behaviours


class DFFMArch(nn.Module):
    """Field vectors -> DFFI; each behaviour sequence -> DFUB; ``W_o [h_DFFI, h_DFUB] + b_o`` (eqs 13-14).

    Shapes: EmbeddedFeatures -> [B, num_tasks].
    """

    def __init__(self, layout: FeatureLayout, config: DFFMConfig) -> None:
        super().__init__()
        self.domain_field_index = layout.field_indices(
            config.domain_features, "model.dffm.domain_features", unique=True
        )
        self.input = FieldVectors(layout, with_sequences=not config.use_dfub)
        dim = layout.embedding_dim
        domain_dim = (1 + len(self.domain_field_index)) * dim
        self.dffi = DFFI(self.input.num_fields, dim, domain_dim, config)
        dfub = (
            [DFUB(layout.sequence_width(s), layout.query_width(s) + domain_dim, config) for s in layout.sequences]
            if config.use_dfub
            else []
        )
        self.dfub = nn.ModuleList(dfub)
        width = self.dffi.out_features + sum(block.out_features for block in dfub)
        self.output = nn.Linear(width, layout.num_tasks)  # W_o, b_o of eq 14

    def domain_features(self, features: EmbeddedFeatures) -> torch.Tensor:
        """E^d [B, d_D]: the domain-id embedding, then the embeddings of ``domain_features``."""
        domain = self.input.domain_embedding(features.domain)
        return torch.cat([domain, features.fields[:, self.domain_field_index].flatten(1)], dim=1)

    def forward(self, features: EmbeddedFeatures) -> torch.Tensor:
        domain_features = self.domain_features(features)
        parts = [self.dffi(self.input(features), domain_features)]
        parts += [block(sequence, domain_features) for block, sequence in zip(self.dfub, features.sequences)]
        return self.output(torch.cat(parts, dim=1))  # eqs 13-14 (the sigmoid is in the loss)
