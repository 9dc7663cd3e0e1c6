"""The inputs most models start from: the context (id fields, domain-id embedding, dense features)
and the baselines' flat input (the context and every sequence group mean-pooled)."""

from __future__ import annotations

import torch
from torch import nn

from torchrec_mdr.models.features import EmbeddedFeatures, FeatureLayout


class ContextInput(nn.Module):
    """``[fields, domain-id embedding, dense]`` concatenated; owns the domain-id embedding table.

    ``fields`` replaces ``features.fields`` (e.g. ADIN's re-weighted fields) and ``domain`` the
    domain-id embedding when the model has already looked it up (ADS reuses it in E_D).

    Shapes: EmbeddedFeatures -> [B, width] with ``width = (N + 1) * D + num_dense``.
    """

    def __init__(self, layout: FeatureLayout) -> None:
        super().__init__()
        self.domain_embedding = nn.Embedding(layout.num_domains, layout.embedding_dim)
        self.width = (len(layout.fields) + 1) * layout.embedding_dim + layout.num_dense

    def forward(self, features: EmbeddedFeatures, fields: torch.Tensor | None = None,
                domain: torch.Tensor | None = None) -> torch.Tensor:
        fields = features.fields if fields is None else fields
        domain = self.domain_embedding(features.domain) if domain is None else domain
        return torch.cat([fields.flatten(1), domain, features.dense], dim=1)


class FlatInput(ContextInput):
    """The baselines' input: the context, then every sequence group mean-pooled over its real positions.

    Shapes: EmbeddedFeatures -> [B, width] with
    ``width = (N + 1) * D + num_dense + sum of the sequence widths``.
    """

    def __init__(self, layout: FeatureLayout) -> None:
        super().__init__(layout)
        self.width += sum(layout.sequence_width(s) for s in layout.sequences)

    def forward(self, features: EmbeddedFeatures) -> torch.Tensor:  # type: ignore[override]
        parts = [super().forward(features)] + [s.mean() for s in features.sequences]
        return torch.cat(parts, dim=1)
