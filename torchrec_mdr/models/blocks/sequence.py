"""Sequence pooling: each behaviour-sequence group reduced to one vector per row.

* :func:`masked_mean` — the mean over the real positions (what the baselines use);
* :class:`QueryProjection` — the candidate query of a group brought to the group's key width;
* :class:`SequenceAttention` — one group: query projection, then a target attention of any
  :data:`~torchrec_mdr.models.blocks.attention.AttentionKind` (ADS subclasses it to personalise the
  queries and keys in between);
* :class:`SequencePooling` — one :class:`SequenceAttention` per group of a layout;
* :class:`MeanPooling` — every group of a layout mean-pooled (the same interface);
* :func:`sequence_summary` — either, by name: ``"mean"`` or an attention kind (``din``, ``mha``, ``can``),
  the ``backbone`` option with which a method model (PEPNet, APG, FRNet) sits on a target-attention
  backbone ("DIN +PEPNet" in the ADS paper's Table 2).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import cast

import torch
from torch import nn

from torchrec_mdr.config import ConfigError
from torchrec_mdr.models.blocks.attention import ATTENTION_KINDS, AttentionKind, AttentionOptions, TargetAttention
from torchrec_mdr.models.features import EmbeddedSequence, FeatureLayout


def masked_mean(keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, L, D], [B, L] -> [B, D] mean over real positions (zeros for an empty sequence)."""
    weights = mask.to(keys.dtype)
    return torch.einsum("bl,bld->bd", weights, keys) / weights.sum(1, keepdim=True).clamp_min(1.0)


class QueryProjection(nn.Module):
    """[B, Q] candidate query -> [B, K] key width (identity when they already match).

    The query of a sequence group is the candidate's embeddings in the group's tables (``item_id``
    for ``hist_item_id``); a group with fields that have no candidate counterpart (``hist_domain``)
    is wider, so the query is linearly projected. A group with no candidate column at all (Q = 0)
    gets a learned constant query.
    """

    def __init__(self, query_width: int, key_width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(max(query_width, 1), key_width) if query_width != key_width else None
        self.no_query = query_width == 0  # no candidate column: a learned constant (fx-traceable: no shape test)

    def forward(self, query: torch.Tensor) -> torch.Tensor:
        if self.linear is None:
            return query
        if self.no_query:
            query = query.new_ones(query.shape[0], 1)
        return self.linear(query)


class SequenceAttention(nn.Module):
    """One sequence group: ``attention(query_projection(query), keys, mask)``.

    :meth:`queries_and_keys` is the seam a model overrides to transform the queries and keys before
    the attention (ADS's PSRG and PCRG); ``context`` is whatever that model passes along (ADS: the
    domain features), ignored here.

    Shapes: EmbeddedSequence (keys [B, L, K], mask [B, L], query [B, Q]) -> [B, out_features].
    """

    def __init__(self, query_projection: QueryProjection, attention: TargetAttention) -> None:
        super().__init__()
        self.query_projection = query_projection
        self.attention = attention
        self.out_features: int = attention.out_features

    def queries_and_keys(
        self, context: torch.Tensor | None, sequence: EmbeddedSequence
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The attention's query ([B, K], or [B, L, K] one per position) and keys [B, L, K]."""
        return self.query_projection(sequence.query), sequence.keys

    def forward(self, sequence: EmbeddedSequence, context: torch.Tensor | None = None) -> torch.Tensor:
        queries, keys = self.queries_and_keys(context, sequence)
        return self.attention(queries, keys, sequence.mask)


class SequencePooling(nn.ModuleList):
    """One :class:`SequenceAttention` per sequence group, in the layout's order.

    Shapes: list of EmbeddedSequence (one per group) -> list of [B, out_features_g];
    ``out_features`` is their total width.

    Example::

        pooling = SequencePooling.of(layout, AttentionOptions("mha", heads=2, head_dim=8))
        pooled = torch.cat(pooling(features.sequences), dim=1)  # [B, pooling.out_features]
    """

    def __init__(self, groups: Iterable[SequenceAttention]) -> None:
        groups = list(groups)
        super().__init__(groups)
        self.group_widths = [group.out_features for group in groups]  # width of each group's pooled vector
        self.out_features = sum(self.group_widths)

    @staticmethod
    def of(layout: FeatureLayout, attention: AttentionOptions) -> "SequencePooling":
        """Target attention of the given kind over every group, the candidate query projected to the keys."""
        # every projection, then every attention: the order in which the models have always drawn their weights
        projections = [QueryProjection(layout.query_width(s), layout.sequence_width(s)) for s in layout.sequences]
        attentions = [attention.build(layout.sequence_width(s)) for s in layout.sequences]
        return SequencePooling(SequenceAttention(p, a) for p, a in zip(projections, attentions))

    def forward(self, sequences: list[EmbeddedSequence], context: torch.Tensor | None = None) -> list[torch.Tensor]:
        return [group(sequence, context) for group, sequence in zip(self, sequences)]


class MeanPooling(nn.Module):
    """Every sequence group mean-pooled over its real positions, with :class:`SequencePooling`'s interface.

    Shapes: list of EmbeddedSequence (one per group) -> list of [B, width_g]; ``group_widths`` the widths,
    ``out_features`` their total.
    """

    def __init__(self, layout: FeatureLayout) -> None:
        super().__init__()
        self.group_widths = [layout.sequence_width(s) for s in layout.sequences]
        self.out_features = sum(self.group_widths)

    def forward(self, sequences: list[EmbeddedSequence], context: torch.Tensor | None = None) -> list[torch.Tensor]:
        return [s.mean() for s in sequences]  # the pooled lookup's mean, or computed from the positions


SEQUENCE_BACKBONES: tuple[str, ...] = ("mean", *ATTENTION_KINDS)


def sequence_summary(
    layout: FeatureLayout, backbone: str, attention: AttentionOptions, key: str
) -> MeanPooling | SequencePooling:
    """The sequence summary named by ``backbone``: :class:`MeanPooling` for ``"mean"``, else the target attention
    of that kind over every group (``attention``'s options; its ``kind`` is replaced). ``key`` names the option
    in the ConfigError for an unknown name."""
    if backbone == "mean":
        return MeanPooling(layout)
    if backbone not in ATTENTION_KINDS:
        raise ConfigError(f"{key}: {backbone!r} is not one of {list(SEQUENCE_BACKBONES)}")
    return SequencePooling.of(layout, replace(attention, kind=cast(AttentionKind, backbone)))  # checked above
