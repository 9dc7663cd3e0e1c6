"""DIN (Zhou et al., KDD 2018): target attention over each behaviour sequence, then an MLP.

The query of a sequence group is the candidate's embeddings in the same tables as the group's
fields (``item_id`` for ``hist_item_id``). When the group has fields without a candidate
counterpart (``hist_domain``), the query is linearly projected to the key width — a choice of
this implementation, as DIN assumes matching query and key fields
(:class:`~torchrec_mdr.models.blocks.sequence.QueryProjection`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torchrec_mdr.config import bounds
from torchrec_mdr.models.blocks import AttentionOptions
from torchrec_mdr.models.features import FeatureLayout
from torchrec_mdr.models.target_attention import TargetAttentionArch


@dataclass
class DINConfig:
    attention_hidden: list[int] = field(
        default_factory=lambda: [64, 32], metadata=bounds(ge=1, help="attention MLP widths")
    )
    hidden: list[int] = field(default_factory=lambda: [256, 128, 64], metadata=bounds(ge=1, help="MLP widths"))
    dropout: float = field(default=0.0, metadata=bounds(ge=0, lt=1, help="dropout after each hidden layer"))

    def attention(self) -> AttentionOptions:
        return AttentionOptions("din", din_hidden=self.attention_hidden)


class DINArch(TargetAttentionArch):
    """[fields, domain embedding, dense, DIN-pooled sequences] -> MLP -> logits.

    Shapes: EmbeddedFeatures -> [B, num_tasks].
    """

    def __init__(self, layout: FeatureLayout, config: DINConfig) -> None:
        super().__init__(layout, config.attention(), config.hidden, config.dropout)
