"""The inputs most models start from: the context (id fields, domain-id embedding, dense features),
the baselines' flat input (the context and every sequence group mean-pooled) and the same inputs as
field vectors [B, K, D] for models that work field by field (DeepFM, FRNet)."""

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

    def forward(
        self, features: EmbeddedFeatures, fields: torch.Tensor | None = None, domain: torch.Tensor | None = None
    ) -> torch.Tensor:
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


class FieldVectors(nn.Module):
    """Every input as one D-wide field: ``[e_1, ..., e_N, e_domain, s_1, ..., s_S, W_d dense + b_d]``.

    * id fields: as they are ([B, N, D]; multi-valued ones already sum-pooled);
    * the domain-id embedding: one field (this module owns the table);
    * sequences: each column of each group (``hist_item_id``, ``hist_domain``, ...) mean-pooled over the
      real positions (``EmbeddedSequence.mean()``: an empty sequence gives zeros), one field per column;
    * dense features: one field ``W_d dense + b_d`` (a Linear to the embedding width, as DLRM's dense
      arch does); no field when the dataset has no dense feature (``dense_field`` is then None).

    Shapes: EmbeddedFeatures -> [B, num_fields, D] with
    ``num_fields = N + 1 + sum of the sequence groups' column counts + (1 if num_dense else 0)``.
    """

    def __init__(self, layout: FeatureLayout, with_sequences: bool = True) -> None:
        super().__init__()
        self.dim = dim = layout.embedding_dim
        # with_sequences=False: no sequence field (a model that pools the sequences otherwise, by attention)
        self.sequence_fields = [len(s.fields) for s in layout.sequences] if with_sequences else []
        self.domain_embedding = nn.Embedding(layout.num_domains, dim)
        self.dense_field = nn.Linear(layout.num_dense, dim) if layout.num_dense else None
        self.num_fields = len(layout.fields) + 1 + sum(self.sequence_fields) + (1 if layout.num_dense else 0)

    def forward(self, features: EmbeddedFeatures) -> torch.Tensor:
        parts = [features.fields, self.domain_embedding(features.domain).unsqueeze(1)]
        parts += [s.mean().unflatten(1, (n, self.dim)) for s, n in zip(features.sequences, self.sequence_fields)]
        if self.dense_field is not None:
            parts.append(self.dense_field(features.dense).unsqueeze(1))
        return torch.cat(parts, dim=1)
