"""DLRM and DLRM-DCNv2 as dense archs of the shared ranking model (same sparse arch, same data path).

torchrec's ``torchrec/models/dlrm.py`` builds DLRM from four archs: SparseArch (pooled embeddings
[B, F, D]), DenseArch (an MLP that maps the dense features to one more D-vector), an interaction
arch and OverArch (an MLP to the logit). Here the SparseArch is torchrec-mdr's (EmbeddingBagCollection
+ EmbeddingCollection, sharded by DMP); the three dense-side archs are torchrec's own modules
(:class:`torchrec.models.dlrm.DenseArch`, :class:`~torchrec.models.dlrm.InteractionArch`,
:class:`~torchrec.models.dlrm.InteractionDCNArch` with
:class:`torchrec.modules.crossnet.LowRankCrossNet`, :class:`~torchrec.models.dlrm.OverArch`), fed from
:class:`~torchrec_mdr.models.features.EmbeddedFeatures`.

The F "sparse features" of the interaction, in this order (each [B, D]):

1. every id / multi_id column of the spec (``EmbeddedFeatures.fields``, spec order; multi-valued
   ones sum-pooled);
2. the domain id, embedded by a table of this arch (as DNN and DIN see it);
3. with ``sequences = "mean"`` (the default) every field of every behaviour sequence, mean-pooled over
   its real (unpadded) positions: ``hist_item_id`` becomes one vector that meets the candidate's
   ``item_id`` in a dot product (the user-interest x candidate term of a two-tower model). With
   ``sequences = "none"`` the sequences are left out, which is DLRM as published (no sequences).

The dense features [B, num_dense] go through the DenseArch to the (F+1)-th vector; a dataset without
dense features feeds a constant 1 instead (the DenseArch then learns a bias vector). The
DenseArch's last size must therefore equal ``model.embedding_dim``, and the OverArch's last size the
number of labels (1 for a click model) — the same rules as torchrec's DLRM example flags
``--dense_arch_layer_sizes 512,256,64 --embedding_dim 64 --over_arch_layer_sizes 512,512,256,1``.

Shapes (B rows, D = embedding_dim, F interaction features, T labels):

* DLRM: dense [B, D], sparse [B, F, D] -> pairwise dots of the F+1 vectors, upper triangle
  [B, (F+1)F/2], concatenated after the dense vector -> [B, D + (F+1)F/2] -> OverArch -> [B, T].
* DLRM-DCN: [dense, sparse] flattened [B, (F+1) D] -> ``dcn_num_layers`` low-rank cross layers
  ``x_{l+1} = x_0 * (W_l (V_l x_l) + b_l) + x_l`` (W_l: [(F+1)D, r], V_l: [r, (F+1)D]) ->
  [B, (F+1) D] -> OverArch -> [B, T].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn
from torchrec.models.dlrm import DenseArch, InteractionArch, InteractionDCNArch, OverArch
from torchrec.modules.crossnet import LowRankCrossNet

from torchrec_mdr.config import ConfigError, bounds, doc
from torchrec_mdr.models.features import EmbeddedFeatures, FeatureLayout

SequenceMode = Literal["mean", "none"]


@dataclass
class DLRMConfig:
    """DLRM (pairwise-dot interaction): ``model.dlrm`` in an experiment config."""

    dense_arch_layer_sizes: list[int] = field(
        default_factory=lambda: [64, 16],
        metadata=bounds(ge=1, help="DenseArch MLP sizes; the last must equal model.embedding_dim"),
    )
    over_arch_layer_sizes: list[int] = field(
        default_factory=lambda: [128, 64, 1],
        metadata=bounds(ge=1, help="OverArch MLP sizes; the last must equal the number of labels"),
    )
    sequences: SequenceMode = field(
        default="mean",
        metadata=doc(
            "behaviour sequences: mean-pooled, one interaction feature per "
            "sequence field ('mean'), or left out ('none')"
        ),
    )

    def validate(self) -> None:
        if not self.dense_arch_layer_sizes:
            raise ConfigError("dense_arch_layer_sizes must list at least one layer size")
        if len(self.over_arch_layer_sizes) < 2:
            raise ConfigError(
                f"over_arch_layer_sizes {self.over_arch_layer_sizes} must list at least two "
                f"sizes (hidden layers, then the output size)"
            )


@dataclass
class DLRMDCNConfig(DLRMConfig):
    """DLRM-DCNv2 (low-rank cross-net interaction): ``model.dlrm_dcn`` in an experiment config."""

    dcn_num_layers: int = field(default=3, metadata=bounds(ge=1, help="low-rank cross layers"))
    dcn_low_rank_dim: int = field(default=32, metadata=bounds(ge=1, help="rank r of each cross layer"))


def num_interaction_features(layout: FeatureLayout, sequences: SequenceMode) -> int:
    """F: id/multi_id fields + the domain + (with ``sequences = 'mean'``) every sequence field."""
    count = len(layout.fields) + 1
    if sequences == "mean":
        count += sum(len(s.fields) for s in layout.sequences)
    return count


def check_sizes(layout: FeatureLayout, config: DLRMConfig, section: str) -> None:
    """Raise ConfigError (naming the keys) when the arch sizes do not fit the data or embeddings."""
    dim = layout.embedding_dim
    if config.dense_arch_layer_sizes[-1] != dim:
        raise ConfigError(
            f"model.{section}.dense_arch_layer_sizes {config.dense_arch_layer_sizes} must end in "
            f"model.embedding_dim ({dim}): the DenseArch output is one more vector in the interaction"
        )
    if config.over_arch_layer_sizes[-1] != layout.num_tasks:
        raise ConfigError(
            f"model.{section}.over_arch_layer_sizes {config.over_arch_layer_sizes} must end in the "
            f"number of labels of the dataset ({layout.num_tasks})"
        )


class DLRMArch(nn.Module):
    """DLRM over :class:`EmbeddedFeatures`: DenseArch, pairwise-dot InteractionArch, OverArch.

    Shapes: EmbeddedFeatures (fields [B, N, D], dense [B, num_dense]) -> logits [B, num_tasks].
    """

    section = "dlrm"

    def __init__(self, layout: FeatureLayout, config: DLRMConfig) -> None:
        super().__init__()
        check_sizes(layout, config, self.section)
        dim = layout.embedding_dim
        self.num_dense = layout.num_dense
        self.sequences = config.sequences
        self.num_sparse_features = num_interaction_features(layout, config.sequences)
        self.domain_embedding = nn.Embedding(layout.num_domains, dim)
        self.dense_arch = DenseArch(max(layout.num_dense, 1), list(config.dense_arch_layer_sizes))
        self.inter_arch = self._interaction(dim, config)
        self.over_arch = OverArch(self._over_in_features(dim), list(config.over_arch_layer_sizes))

    def _interaction(self, dim: int, config: DLRMConfig) -> nn.Module:
        return InteractionArch(num_sparse_features=self.num_sparse_features)

    def _over_in_features(self, dim: int) -> int:
        f = self.num_sparse_features
        return dim + f + f * (f - 1) // 2  # D + C(F + 1, 2)

    def dense_input(self, features: EmbeddedFeatures) -> torch.Tensor:
        """[B, num_dense], or a constant [B, 1] of ones for a dataset without dense features."""
        if self.num_dense:
            return features.dense
        return features.dense.new_ones(features.dense.shape[0], 1)

    def sparse_features(self, features: EmbeddedFeatures) -> torch.Tensor:
        """[B, F, D]: fields, then the domain embedding, then mean-pooled sequence fields."""
        parts = [features.fields, self.domain_embedding(features.domain).unsqueeze(1)]
        if self.sequences == "mean":
            for sequence in features.sequences:
                pooled = sequence.mean()  # [B, G * D]
                parts.append(pooled.view(pooled.shape[0], -1, features.fields.shape[-1]))
        return torch.cat(parts, dim=1)

    def forward(self, features: EmbeddedFeatures) -> torch.Tensor:
        embedded_dense = self.dense_arch(self.dense_input(features))  # [B, D]
        interacted = self.inter_arch(dense_features=embedded_dense, sparse_features=self.sparse_features(features))
        return self.over_arch(interacted)


class DLRMDCNArch(DLRMArch):
    """DLRM-DCNv2: the interaction is torchrec's LowRankCrossNet over the flattened [dense, sparse].

    Shapes: EmbeddedFeatures -> cross net [B, (F+1) D] -> OverArch -> logits [B, num_tasks].
    """

    section = "dlrm_dcn"

    def _interaction(self, dim: int, config: DLRMConfig) -> nn.Module:
        assert isinstance(config, DLRMDCNConfig)
        crossnet = LowRankCrossNet(
            in_features=(self.num_sparse_features + 1) * dim,
            num_layers=config.dcn_num_layers,
            low_rank=config.dcn_low_rank_dim,
        )
        return InteractionDCNArch(num_sparse_features=self.num_sparse_features, crossnet=crossnet)

    def _over_in_features(self, dim: int) -> int:
        return (self.num_sparse_features + 1) * dim
