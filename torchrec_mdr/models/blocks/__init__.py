"""The model toolkit: the blocks every model is composed of, grouped by kind.

=================  =====================================================================================
module             blocks
=================  =====================================================================================
``mlp``            :class:`MLP`
``attention``      target attention of a typed kind (:data:`AttentionKind`: ``din``, ``mha``, ``can``)
                   and its options (:class:`AttentionOptions`): :class:`DINAttention`,
                   :class:`MultiHeadTargetAttention`, :class:`CoActionUnit`
``sequence``       :func:`masked_mean`, :class:`QueryProjection`, :class:`SequenceAttention` (one group:
                   query projection + attention), :class:`SequencePooling` (every group of a layout),
                   :class:`MeanPooling`, :func:`sequence_summary` (``"mean"`` or an attention kind, by name)
``inputs``         :class:`ContextInput` (fields, domain-id embedding, dense; its ``width``),
                   :class:`FlatInput` (the context and the mean-pooled sequences),
                   :class:`FieldVectors` (the same inputs as D-wide fields [B, K, D], each sequence column
                   mean-pooled, dense through a Linear)
``stacked``        per-domain / per-expert layers: :func:`select_domain`, :class:`StackedLinear`,
                   :class:`StackedMLP`, :class:`DomainTowers`
``norm``           :class:`DomainBatchNorm` (DSBN, STAR's partitioned normalisation)
``refinement``     context-aware field refinement (FRNet): :class:`FeatureRefinement` (two
                   :class:`InformationExtractionUnit` s and the complementary selection gate; field
                   vectors [B, K, D] in and out), :class:`FieldSelfAttention`
``generated``      weights generated per row from a condition (APG): :class:`GeneratedLinear` (W_i = U S_i V,
                   decomposed feed-forward), :class:`GeneratedMLP`
=================  =====================================================================================

Named id fields (a model option such as ``domain_features``) are resolved by
:meth:`~torchrec_mdr.models.features.FeatureLayout.field_indices`.
"""

from torchrec_mdr.models.blocks.attention import (
    ATTENTION_KINDS,
    AttentionKind,
    AttentionOptions,
    CoActionUnit,
    DINAttention,
    MultiHeadTargetAttention,
    TargetAttentionConfig,
    build_attention,
    check_attention_kind,
)
from torchrec_mdr.models.blocks.generated import GeneratedLinear, GeneratedMLP
from torchrec_mdr.models.blocks.inputs import ContextInput, FieldVectors, FlatInput
from torchrec_mdr.models.blocks.mlp import MLP
from torchrec_mdr.models.blocks.norm import DomainBatchNorm
from torchrec_mdr.models.blocks.refinement import (
    WEIGHT_TYPES,
    FeatureRefinement,
    FieldSelfAttention,
    InformationExtractionUnit,
    WeightType,
)
from torchrec_mdr.models.blocks.sequence import (
    SEQUENCE_BACKBONES,
    MeanPooling,
    QueryProjection,
    SequenceAttention,
    SequencePooling,
    masked_mean,
    sequence_summary,
)
from torchrec_mdr.models.blocks.stacked import DomainTowers, StackedLinear, StackedMLP, select_domain

__all__ = [
    "ATTENTION_KINDS",
    "AttentionKind",
    "AttentionOptions",
    "CoActionUnit",
    "ContextInput",
    "DINAttention",
    "DomainBatchNorm",
    "DomainTowers",
    "FeatureRefinement",
    "FieldSelfAttention",
    "FieldVectors",
    "FlatInput",
    "GeneratedLinear",
    "GeneratedMLP",
    "InformationExtractionUnit",
    "MLP",
    "MeanPooling",
    "MultiHeadTargetAttention",
    "QueryProjection",
    "SEQUENCE_BACKBONES",
    "SequenceAttention",
    "SequencePooling",
    "StackedLinear",
    "StackedMLP",
    "TargetAttentionConfig",
    "WEIGHT_TYPES",
    "WeightType",
    "build_attention",
    "check_attention_kind",
    "masked_mean",
    "select_domain",
    "sequence_summary",
]
