"""ADS: Adaptive Domain Scaling (Chai et al., SIGIR 2025), papers/ads_sigir25.txt §2.

Per behaviour-sequence group, ADS personalises both sides of a target attention by the domain:

* PSRG (eqs 2–5, :class:`PSRG`) re-codes every behaviour ``e_t -> W e_t + b`` with a per-sample
  ``W = eta * (W_shared ⊙ sigmoid(MLP_w(E_D)))`` and ``b = MLP_b(E_D)``;
* PCRG (eqs 6–7, :class:`PCRG`) generates one query per behaviour (or per chunk of behaviours) from
  ``E_D ⊕ E_Q`` plus the candidate ``E_Q`` itself;
* the backbone target attention (DIN, MHA or CAN, :mod:`.blocks.attention`) pairs query ``t`` with key ``t``
  (eqs 8–12) and the pooled vector joins the other features in the prediction MLP (eq 13).

``E_D`` (the domain features) is the explicit domain-id embedding concatenated with the embeddings of
the id fields named in ``domain_features`` (implicit domain indicators such as an activity bucket).

Ablations (Table 3): ``use_pcrg=False`` feeds the plain candidate query to every position (the tiled
``E_Q``); ``use_pcrg=use_psrg=False`` is the plain backbone over the raw behaviours. The prediction MLP
reads the fields (the ``domain_features`` among them) and the domain-id embedding in every variant, so
the ablated models see the same domain information, only not inside the attention: the comparison
isolates PSRG and PCRG.

Cost: the equations fix ADS's extra work over its backbone — per row ``d_S^2`` generated weights (eq 2) and
``G d_Q`` generated queries (eq 6), per behaviour a ``d_S x d_S`` product (eq 5) — 1.23x DIN's training FLOPs
at ``T = 50``, one query per behaviour, here (``mdr bench ads``; docs/benchmarks.md, "ADS against its
backbone"). The code adds as little as it can to that: eq 5 is one batched product with the bias as its
addend, and the chunk queries reach the positions by one row gather (:func:`select_chunks`).

Choices where the paper is silent (each tested in tests/test_ads.py):

* ``E_Q`` is the candidate's embeddings in the group's tables, linearly projected to the key width
  ``d_S`` when the widths differ (as in DIN here), so ``d_Q = d_S`` and query ``t`` and key ``t`` can
  meet in DIN's ``[q, k, q - k, q * k]`` and CAN's micro-MLP.
* ``W_shared`` starts as the identity plus N(0, 0.01²) noise (``psrg_shared_init``; the exact identity
  leaves the generated off-diagonal weights without gradient; on planted data the two starts tie in test
  AUC with 7 seeds, and only the noisy one beats no PSRG on its effect) and ``eta`` defaults to 2, so at
  initialisation ``W ≈ eta * 0.5 * I = I``: PSRG starts near the identity map and ADS near its backbone.
* Chunk 0 of PCRG covers the *most recent* behaviours: query slot ``g`` serves the behaviours whose
  recency rank (0 = the newest real behaviour) lies in ``[g k, (g + 1) k)``. Sequences here are stored
  oldest first and left-aligned with different lengths per row, so an absolute position means a
  different recency in every row; counting from the newest behaviour gives each generated query the
  same meaning in every row, the short rows use the same (well trained) slots as the long ones, and
  the truncated last chunk (``L`` not divisible by ``k``) is the oldest one. Adjacent behaviours — the
  paper's reason for chunking — stay together either way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import cast

import torch
from torch import nn

from torchrec_mdr.config import ConfigError, bounds, doc
from torchrec_mdr.models.blocks import (
    ATTENTION_KINDS,
    MLP,
    AttentionKind,
    AttentionOptions,
    ContextInput,
    QueryProjection,
    SequenceAttention,
    SequencePooling,
    check_attention_kind,
)
from torchrec_mdr.models.features import EmbeddedFeatures, EmbeddedSequence, FeatureLayout

SHARED_INITS: tuple[str, ...] = ("identity", "identity_noise", "xavier")


@dataclass
class ADSConfig:
    backbone: str = field(
        default="din",
        metadata=doc(f"target attention personalised by ADS (an AttentionKind): {', '.join(ATTENTION_KINDS)}"),
    )
    domain_features: list[str] = field(
        default_factory=list,
        metadata=doc("id fields joined to the domain-id embedding as E_D (implicit domain indicators)"),
    )
    use_psrg: bool = field(default=True, metadata=doc("personalise the behaviours (PSRG, eqs 2-5)"))
    use_pcrg: bool = field(default=True, metadata=doc("personalise the queries (PCRG, eqs 6-7)"))
    eta: float = field(default=2.0, metadata=bounds(gt=0, help="eta of eq 3: scale of sigmoid(MLP_w(E_D))"))
    psrg_shared_init: str = field(
        default="identity_noise",
        metadata=doc(
            "W_shared of eq 3 at initialisation (the paper is silent): identity_noise (identity + N(0, 0.01^2), the "
            "default: every generated weight gets a gradient from the first step; it ties with identity in test AUC "
            "on planted data over 7 seeds), identity (the generated off-diagonal weights get no gradient until "
            "W_shared's off-diagonals move) or xavier"
        ),
    )
    generator_hidden: int = field(default=32, metadata=bounds(ge=1, help="d_h: hidden width of every gen-net"))
    items_per_chunk: int = field(
        default=1, metadata=bounds(ge=1, help="behaviours sharing one generated query (1: one query per behaviour)")
    )
    attention_hidden: list[int] = field(
        default_factory=lambda: [64, 32], metadata=bounds(ge=1, help="DIN backbone: attention MLP widths")
    )
    heads: int = field(default=2, metadata=bounds(ge=1, help="MHA backbone: attention heads"))
    head_dim: int = field(default=16, metadata=bounds(ge=1, help="MHA backbone: d_A per head"))
    micro_hidden: list[int] = field(
        default_factory=lambda: [8, 4], metadata=bounds(ge=1, help="CAN backbone: micro-MLP layer widths")
    )
    orders: int = field(default=1, metadata=bounds(ge=1, help="CAN backbone: multi-order enhancement"))
    hidden: list[int] = field(default_factory=lambda: [256, 128, 64], metadata=bounds(ge=1, help="MLP widths"))
    dropout: float = field(default=0.0, metadata=bounds(ge=0, lt=1, help="dropout after each hidden layer"))

    def attention(self) -> AttentionOptions:
        return AttentionOptions(
            cast(AttentionKind, self.backbone),  # checked by validate()
            din_hidden=self.attention_hidden,
            heads=self.heads,
            head_dim=self.head_dim,
            micro_hidden=self.micro_hidden,
            orders=self.orders,
        )

    def validate(self) -> None:  # at load time; the message gets the section ("model.ads: ") in front
        check_attention_kind(self.backbone, "backbone")
        if self.psrg_shared_init not in SHARED_INITS:
            raise ConfigError(f"psrg_shared_init: {self.psrg_shared_init!r} is not one of {list(SHARED_INITS)}")


def shared_weight_init(dim: int, kind: str) -> torch.Tensor:
    """W_shared [dim, dim] at initialisation (the paper does not say): ``identity`` keeps every behaviour
    as it is at first, so the private generator's off-diagonal outputs receive zero gradient
    (d W / d W_private = eta W_shared) until W_shared's off-diagonals move; ``identity_noise`` adds
    N(0, 0.01^2) so that they get a small gradient from the first step; ``xavier`` is Glorot-uniform."""
    if kind == "identity":
        return torch.eye(dim)
    if kind == "identity_noise":
        return torch.eye(dim) + 0.01 * torch.randn(dim, dim)
    return nn.init.xavier_uniform_(torch.empty(dim, dim))


class PSRG(nn.Module):
    """Personalised sequence representation generation, ADS eqs 2–5.

    ``W_private = sigmoid(MLP_w(E_D))`` (eq 2, two layers, ReLU between), ``W = eta * (W_shared ⊙
    W_private)`` (eq 3), ``b = MLP_b(E_D)`` (eq 4), and every behaviour ``e_t -> W e_t + b`` with ``W``
    reshaped row-major to ``[d_S, d_S]`` (eq 5: ``E_S W^T + b``).

    Shapes: domain_features [B, d_D], keys [B, L, d_S] -> [B, L, d_S].
    """

    def __init__(self, domain_dim: int, seq_dim: int, hidden: int, eta: float, shared_init: str = "identity") -> None:
        super().__init__()
        self.seq_dim, self.eta = seq_dim, eta
        self.weight_generator = MLP(domain_dim, [hidden], out_features=seq_dim * seq_dim)  # eq 2 (pre-sigmoid)
        self.shared_weight = nn.Parameter(shared_weight_init(seq_dim, shared_init).flatten())  # W_shared, eq 3
        self.bias_generator = MLP(domain_dim, [hidden], out_features=seq_dim)  # eq 4

    def generate(self, domain_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample weight [B, d_S, d_S] (eq 3, reshaped) and bias [B, d_S] (eq 4)."""
        private = torch.sigmoid(self.weight_generator(domain_features))
        weight = private * (self.eta * self.shared_weight)  # eta scales the d_S^2 shared weights, not B d_S^2
        return weight.view(-1, self.seq_dim, self.seq_dim), self.bias_generator(domain_features)

    def forward(self, domain_features: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        weight, bias = self.generate(domain_features)
        # eq 5, E_S W^T + b, as one batched matrix product with the bias as its addend (no second pass over
        # the [B, L, d_S] result); the transpose is a view that the product reads as it is
        return torch.baddbmm(bias.unsqueeze(1), keys, weight.transpose(1, 2))


@torch.fx.wrap  # reads the shapes: one node in an fx trace
def select_chunks(chunk_queries: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """[B, G, d], [B, L] int64 -> [B, L, d] with ``out[b, t] = chunk_queries[b, index[b, t]]``.

    One row gather over the flattened ``[B G, d]`` (``index_select``): its backward adds whole d-wide
    rows, where ``gather`` with an index expanded to ``[B, L, d]`` reads a d-times larger index and
    scatter-adds element by element (forward + backward on one CPU thread at B = 1024, L = G = 50, d = 32:
    2.9 ms against gather's 5.1 ms).
    """
    batch, chunks, width = chunk_queries.shape
    rows = index + torch.arange(batch, device=index.device).unsqueeze(1) * chunks
    return chunk_queries.reshape(batch * chunks, width).index_select(0, rows.flatten()).view(batch, -1, width)


class PCRG(nn.Module):
    """Personalised candidate representation generation: the multi-query gen-net, ADS eqs 6–7.

    ``E_Q-private = MLP_q(E_D ⊕ E_Q)`` (eq 6, two layers) gives ``G = ceil(L / k)`` chunk queries of
    width ``d_Q``; chunk ``g`` serves the behaviours of recency rank ``[g k, (g + 1) k)`` (rank 0 = the
    newest real behaviour; see the module docstring for why), and every position's query is its
    chunk's query plus the candidate ``E_Q`` (eq 7, the residual ``tile(E_Q)``). ``k = 1`` is the
    unchunked gen-net (one query per behaviour); ``k >= L`` gives one shared query.

    Shapes: domain_features [B, d_D], query [B, d_Q], mask [B, L] -> queries [B, L, d_Q].
    """

    def __init__(self, domain_dim: int, query_dim: int, length: int, items_per_chunk: int, hidden: int) -> None:
        super().__init__()
        self.query_dim, self.items_per_chunk = query_dim, items_per_chunk
        self.num_chunks = math.ceil(length / items_per_chunk)
        self.generator = MLP(domain_dim + query_dim, [hidden], out_features=self.num_chunks * query_dim)  # eq 6

    def chunk_index(self, mask: torch.Tensor) -> torch.Tensor:
        """[B, L] bool -> [B, L] int64: the chunk serving each position (padding: chunk 0, unused)."""
        real = mask.long()
        recency = real.flip(1).cumsum(1).flip(1) - real  # real behaviours after position t
        return torch.div(recency, self.items_per_chunk, rounding_mode="floor").clamp_max(self.num_chunks - 1)

    def forward(self, domain_features: torch.Tensor, query: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        private = self.generator(torch.cat([domain_features, query], dim=-1))
        # eq 7's residual E_Q added once per chunk ([B, G, d_Q]) rather than once per position ([B, L, d_Q])
        chunk_queries = private.view(-1, self.num_chunks, self.query_dim) + query.unsqueeze(1)
        return select_chunks(chunk_queries, self.chunk_index(mask))


class ADSSequenceBlock(SequenceAttention):
    """One sequence group through ADS: query projection, PSRG, PCRG, then the backbone attention.

    Shapes: EmbeddedSequence (keys [B, L, d_S], query [B, Q], mask [B, L]), domain_features [B, d_D]
    -> [B, out_features].
    """

    def __init__(self, query_width: int, key_width: int, length: int, domain_dim: int, config: ADSConfig) -> None:
        # created in this order (projection, PSRG, PCRG, attention), as ADS has always drawn its initial weights
        projection = QueryProjection(query_width, key_width)
        psrg = (
            PSRG(domain_dim, key_width, config.generator_hidden, config.eta, config.psrg_shared_init)
            if config.use_psrg
            else None
        )
        pcrg = (
            PCRG(domain_dim, key_width, length, config.items_per_chunk, config.generator_hidden)
            if config.use_pcrg
            else None
        )
        super().__init__(projection, config.attention().build(key_width))
        self.psrg, self.pcrg = psrg, pcrg

    def queries_and_keys(
        self, domain_features: torch.Tensor | None, sequence: EmbeddedSequence
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Personalised queries [B, L, d_S] (query t for behaviour t) and behaviours [B, L, d_S]."""
        candidate = self.query_projection(sequence.query)  # E_Q [B, d_S]
        keys = sequence.keys if self.psrg is None else self.psrg(domain_features, sequence.keys)
        if self.pcrg is None:  # w/o PCRG: the candidate, tiled over the positions
            queries = candidate.unsqueeze(1).expand(-1, keys.shape[1], -1)
        else:
            queries = self.pcrg(domain_features, candidate, sequence.mask)
        return queries, keys


class ADSArch(nn.Module):
    """[fields, domain embedding, dense, ADS-pooled sequences] -> MLP -> logits (eq 13).

    Each sequence group has its own :class:`ADSSequenceBlock` (own gen-nets and attention); all share
    ``E_D`` = [domain-id embedding, embeddings of ``domain_features``].
    Shapes: EmbeddedFeatures -> [B, num_tasks].
    """

    def __init__(self, layout: FeatureLayout, config: ADSConfig) -> None:
        super().__init__()
        check_attention_kind(config.backbone, "model.ads.backbone")
        self.domain_field_index = layout.field_indices(config.domain_features, "model.ads.domain_features")
        self.input = ContextInput(layout)
        domain_dim = (1 + len(self.domain_field_index)) * layout.embedding_dim
        self.blocks = SequencePooling(
            ADSSequenceBlock(layout.query_width(s), layout.sequence_width(s), s.max_length, domain_dim, config)
            for s in layout.sequences
        )
        self.mlp = MLP(
            self.input.width + self.blocks.out_features,
            config.hidden,
            out_features=layout.num_tasks,
            dropout=config.dropout,
        )

    def domain_features(self, features: EmbeddedFeatures, domain: torch.Tensor) -> torch.Tensor:
        """E_D [B, d_D]: the domain-id embedding ``domain`` [B, D] then the named fields' embeddings."""
        return torch.cat([domain, features.fields[:, self.domain_field_index].flatten(1)], dim=1)

    def forward(self, features: EmbeddedFeatures) -> torch.Tensor:
        domain = self.input.domain_embedding(features.domain)
        pooled = self.blocks(features.sequences, self.domain_features(features, domain))
        return self.mlp(torch.cat([self.input(features, domain=domain), *pooled], dim=1))
