"""MaskNet (Wang, She, Zhang, DLP-KDD 2021, "MaskNet: Introducing Feature-Wise Multiplication to CTR
Ranking Models by Instance-Guided Mask", arXiv 2102.07619): MaskBlocks — an instance-guided mask, a
feed-forward layer and layer normalisation — stacked one after another (SerMaskNet) or side by side
(ParaMaskNet).

Shapes (B rows, K fields of width D, m = K·D):

    V_emb = concat(e_1, ..., e_K)                                  [B, m]            (eq. 4)
    V_mask = W_d2 ReLU(W_d1 V_emb + β_d1) + β_d2                    [B, z]            (eq. 5)
        W_d1: [t, m] aggregation, W_d2: [z, t] projection, t = int(r · z), r = ``reduction_ratio``
    LN(x) = g ⊙ (x − μ) / δ + b over the entries of x                                 (eq. 8)
    LN_EMB(V_emb) = concat(LN(e_1), ..., LN(e_K))                   [B, m]            (eq. 9)
    MaskBlock on feature embedding:
        V_maskedEMB = V_mask ⊙ LN_EMB(V_emb)                                          (eq. 11)
        V_output = ReLU(LN(W_i V_maskedEMB))                        [B, q]            (eqs. 10, 12)
    MaskBlock on MaskBlock (previous output V_output^p):
        V_output = ReLU(LN(W_i (V_mask ⊙ V_output^p)))                                (eqs. 13, 14)
    ``form = "serial"`` (SerMaskNet): a MaskBlock on feature embedding, then MaskBlocks on MaskBlock
        (widths ``block_widths``); the last output goes to the prediction layer.
    ``form = "parallel"`` (ParaMaskNet): ``parallel_blocks`` = u MaskBlocks on feature embedding, each
        ``parallel_block_width`` = q wide,
        V_merge = concat(V_output^1, ..., V_output^u)               [B, u·q]          (eq. 15)
        H_l = ReLU(W_l H_{l−1} + β_l), H_0 = V_merge                (``parallel_hidden``; eq. 16)
    logits = w_0 + w^T (last output)                                [B, num_tasks]    (eq. 17, before σ)

Every MaskBlock has its own instance-guided mask, whose input is always the raw V_emb (not LN_EMB(V_emb)),
and whose width z is that of what it masks (m, or the previous block's q). Equation numbers are the
arXiv text's; the equations were checked against a published reading of the paper that quotes them with
these numbers and against FuxiCTR's MaskNet (same structure: mask from the raw embedding, LN_EMB on the
masked side, bias-free W_i, LN before ReLU, aggregation width t = r · z).

How this library's inputs enter and what the paper leaves open (tested in tests/test_masknet.py and
tests/test_baselines.py):

* **Fields**: V_emb is the toolkit's :class:`~torchrec_mdr.models.blocks.FieldVectors` (DeepFM's and
  FRNet's): the id fields, the domain-id embedding as one field (so every mask depends on the domain:
  the instance-guided mask is domain-aware), each sequence column mean-pooled over its real positions
  (the DNN baseline's pooled sequences; an empty sequence gives zeros, which LN_EMB maps to that field's
  bias b), and the dense features as one field ``W_d dense + b_d`` (D wide, so LN_EMB normalises it like
  any field; layer-normalising the raw dense values would zero a single dense feature).
* **LN_EMB**: each field has its own gain and bias (K·D parameters each; the paper's eq. 9 does not say
  whether they are shared; FuxiCTR keeps one LayerNorm per field). LN uses ε = 1e-5 inside δ (torch's).
* **Biases**: W_i has no bias when LN follows (eq. 12 writes none, LN's b takes its place); with
  ``hidden_norm = false`` (the paper's "w/o LN" ablation) it gets one, a plain feed-forward layer.
* **Reduction ratio**: r = t / z, the aggregation layer r times as wide as the projection (the paper
  sets r = 2 in its experiments and reports little effect from 1 to 5); default 2. A ratio that leaves
  the aggregation layer no neuron is a ConfigError.
* **Form**: the ADS paper lists "MaskNet" without saying which; the default is ``serial``, the form
  FuxiCTR's MaskNet defaults to (its config template: SerialMaskNet, three 400-wide blocks, the paper's
  DNN size); the MaskNet paper reports the two forms as comparable. The serial widths default to the
  library's DNN widths [256, 128, 64], so SerMaskNet differs from the DNN baseline only by the masks and
  the normalisation. Parallel defaults (ours): 3 blocks of 64, then a [128, 64] feed-forward network.
* **Several tasks**: the blocks are shared; the prediction layer gives one logit per task (no towers).
* Dropout (``dropout``, default 0) after each MaskBlock's ReLU and each feed-forward ReLU; initialisation
  is torch's default for every layer (the paper gives none).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from torchrec_mdr.config import ConfigError, bounds, doc
from torchrec_mdr.models.blocks import MLP, FieldVectors
from torchrec_mdr.models.features import EmbeddedFeatures, FeatureLayout

Form = Literal["serial", "parallel"]


@dataclass
class MaskNetConfig:
    """``model.masknet`` in an experiment config."""

    form: Form = field(
        default="serial",
        metadata=doc(
            "'serial' (SerMaskNet: MaskBlocks stacked, widths block_widths) or 'parallel' (ParaMaskNet: "
            "parallel_blocks MaskBlocks on the embedding, concatenated, then parallel_hidden)"
        ),
    )
    block_widths: list[int] = field(
        default_factory=lambda: [256, 128, 64],
        metadata=bounds(ge=1, help="serial: output width q of each stacked MaskBlock (one block per entry)"),
    )
    parallel_blocks: int = field(default=3, metadata=bounds(ge=1, help="parallel: number u of MaskBlocks"))
    parallel_block_width: int = field(
        default=64, metadata=bounds(ge=1, help="parallel: output width q of each MaskBlock")
    )
    parallel_hidden: list[int] = field(
        default_factory=lambda: [128, 64],
        metadata=bounds(ge=1, help="parallel: feed-forward widths over the concatenated blocks (eq. 16; [] = none)"),
    )
    reduction_ratio: float = field(
        default=2.0,
        metadata=bounds(gt=0, help="r = aggregation width / projection width of every instance-guided mask"),
    )
    embedding_norm: bool = field(default=True, metadata=doc("LN_EMB: layer-normalise each field before masking"))
    hidden_norm: bool = field(default=True, metadata=doc("LN inside each MaskBlock, before its ReLU"))
    dropout: float = field(default=0.0, metadata=bounds(ge=0, lt=1, help="dropout after each block / hidden layer"))

    def validate(self) -> None:
        if self.form == "serial" and not self.block_widths:
            raise ConfigError("block_widths must list at least one width for form 'serial'")


class InstanceGuidedMask(nn.Module):
    """V_mask = W_d2 ReLU(W_d1 V_emb + β_d1) + β_d2 (eq. 5), aggregation width t = int(r · z).

    Shapes: [B, m] -> [B, z].
    """

    def __init__(self, in_features: int, out_features: int, reduction_ratio: float) -> None:
        super().__init__()
        width = int(reduction_ratio * out_features)
        if width < 1:
            raise ConfigError(
                f"model.masknet.reduction_ratio ({reduction_ratio}) leaves the aggregation layer of "
                f"a {out_features}-wide mask without a neuron (int(r * {out_features}) = {width})"
            )
        self.aggregation = nn.Linear(in_features, width)
        self.projection = nn.Linear(width, out_features)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.projection(torch.relu(self.aggregation(embedding)))


class MaskBlock(nn.Module):
    """V_output = ReLU(LN(W_i (V_mask ⊙ V_in))) with V_mask from the raw embedding (eqs. 11-14).

    ``V_in`` is LN_EMB(V_emb) for a MaskBlock on feature embedding, the previous block's output for a
    MaskBlock on MaskBlock. Shapes: V_emb [B, m], V_in [B, z] -> [B, q].
    """

    def __init__(
        self,
        embedding_width: int,
        in_features: int,
        out_features: int,
        reduction_ratio: float,
        norm: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.mask = InstanceGuidedMask(embedding_width, in_features, reduction_ratio)
        self.hidden = nn.Linear(in_features, out_features, bias=not norm)
        self.norm = nn.LayerNorm(out_features) if norm else None
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None

    def forward(self, embedding: torch.Tensor, block_input: torch.Tensor) -> torch.Tensor:
        hidden = self.hidden(self.mask(embedding) * block_input)
        if self.norm is not None:
            hidden = self.norm(hidden)
        hidden = torch.relu(hidden)
        return self.dropout(hidden) if self.dropout is not None else hidden


class FieldLayerNorm(nn.Module):
    """LN_EMB (eq. 9): each field vector normalised over its D entries, with its own gain and bias.

    Shapes: [B, K, D] -> [B, K, D].
    """

    def __init__(self, num_fields: int, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_fields, dim))
        self.bias = nn.Parameter(torch.zeros(num_fields, dim))

    def forward(self, fields: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(fields, fields.shape[-1:], eps=self.eps) * self.weight + self.bias


class MaskNetArch(nn.Module):
    """Field vectors -> MaskBlocks (serial or parallel) -> prediction layer -> logits.

    Shapes: EmbeddedFeatures -> V_emb [B, K·D] -> [B, q or H] -> logits [B, num_tasks].

    Example::

        arch = MaskNetArch(layout, MaskNetConfig(form="parallel", parallel_blocks=2))
        arch(features).shape  # (B, layout.num_tasks)
    """

    def __init__(self, layout: FeatureLayout, config: MaskNetConfig) -> None:
        super().__init__()
        config.validate()
        self.serial = config.form == "serial"
        self.input = FieldVectors(layout)
        self.num_fields = self.input.num_fields
        width = self.num_fields * layout.embedding_dim
        self.embedding_norm = FieldLayerNorm(self.num_fields, layout.embedding_dim) if config.embedding_norm else None

        def block(in_features: int, out_features: int) -> MaskBlock:
            return MaskBlock(
                width, in_features, out_features, config.reduction_ratio, config.hidden_norm, config.dropout
            )

        if self.serial:
            widths = [width, *config.block_widths]
            self.blocks = nn.ModuleList(block(widths[i], widths[i + 1]) for i in range(len(config.block_widths)))
            self.head: nn.Module = nn.Linear(widths[-1], layout.num_tasks)
        else:
            self.blocks = nn.ModuleList(
                block(width, config.parallel_block_width) for _ in range(config.parallel_blocks)
            )
            self.head = MLP(
                config.parallel_blocks * config.parallel_block_width,
                config.parallel_hidden,
                out_features=layout.num_tasks,
                dropout=config.dropout,
            )

    def embeddings(self, features: EmbeddedFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        """(V_emb, LN_EMB(V_emb)), both [B, K·D] (the second is V_emb itself without ``embedding_norm``)."""
        fields = self.input(features)
        normed = self.embedding_norm(fields) if self.embedding_norm is not None else fields
        return fields.flatten(1), normed.flatten(1)

    def forward(self, features: EmbeddedFeatures) -> torch.Tensor:
        embedding, normed = self.embeddings(features)
        if self.serial:
            hidden = normed
            for block in self.blocks:
                hidden = block(embedding, hidden)
        else:
            hidden = torch.cat([block(embedding, normed) for block in self.blocks], dim=1)
        return self.head(hidden)
