"""The ``[retrieval]`` section of an experiment config (read when ``task = "retrieval"``).

Names are checked against the dataset when the model is built (:class:`RetrievalModel`), where the
spec is known; a bad name raises ConfigError naming the key (``retrieval.item_fields`` ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from torchrec_mdr.config import ConfigError, bounds, doc

UserTower = Literal["adin", "dnn"]


@dataclass
class RetrievalConfig:
    model: UserTower = field(
        default="adin",
        metadata=doc(
            "user tower: 'adin' (domain interest layer + shared and domain networks with DSBN) or 'dnn' "
            "(a plain MLP over the same input: the two-tower baseline); reported as '<model>_retrieval'"
        ),
    )
    item_fields: list[str] | None = field(
        default=None,
        metadata=doc(
            "id features of the item tower; every other id feature goes to the user tower "
            "(default: the sequence groups' candidate fields, e.g. item_id)"
        ),
    )
    item_key: str | None = field(
        default=None,
        metadata=doc(
            "the single-valued id feature that identifies an item (duplicates, candidate pool, frequency "
            "estimate); default: the first of item_fields"
        ),
    )
    user_dense: bool | list[str] = field(
        default=False,
        metadata=doc(
            "dense features of the user tower: true = all, false = none, or a list of names. Off by "
            "default: a row's dense features often describe the candidate (price, popularity), which "
            "must not reach the user tower"
        ),
    )
    item_dense: bool | list[str] = field(
        default=False, metadata=doc("dense features of the item tower: true = all, false = none, or a list of names")
    )
    output_dim: int = field(default=64, metadata=bounds(ge=1, help="width of the user and item vectors"))
    user_hidden: list[int] = field(
        default_factory=lambda: [256, 128],
        metadata=bounds(ge=1, help="user tower widths (ADIN: of the shared and of each domain network)"),
    )
    item_hidden: list[int] = field(default_factory=lambda: [128], metadata=bounds(ge=1, help="item tower widths"))
    fusion: Literal["concat", "sum"] = field(
        default="concat", metadata=doc("ADIN: how the shared and domain networks' outputs are fused")
    )
    interest_reduction: int = field(
        default=2, metadata=bounds(ge=1, help="ADIN SE block: excitation hidden width = max(1, user fields // this)")
    )
    use_domain_interest: bool = field(default=True, metadata=doc("ADIN: domain interest adaptation layer"))
    use_dsbn: bool = field(default=True, metadata=doc("ADIN: domain-specific batch norm (else BatchNorm1d)"))
    temperature: float = field(default=0.05, metadata=bounds(gt=0, help="softmax temperature of <u, v>"))
    log_q_correction: bool = field(
        default=True, metadata=doc("subtract log q(item) from the in-batch logits (Yi et al. 2019)")
    )
    frequency_buckets: int = field(
        default=1 << 20, metadata=bounds(ge=1, help="hash buckets of the streaming item-frequency estimate")
    )
    frequency_alpha: float = field(
        default=0.05, metadata=bounds(gt=0, le=1, help="learning rate of the streaming gap estimate")
    )
    top_k: list[int] = field(
        default_factory=lambda: [10, 50, 100],
        metadata=bounds(ge=1, help="K of Recall@K and HitRate@K (capped at the candidate pool's size)"),
    )

    def validate(self) -> None:
        if not self.top_k:
            raise ConfigError("retrieval.top_k: give at least one K")
        if self.item_fields is not None and not self.item_fields:
            raise ConfigError("retrieval.item_fields: give at least one id feature (or leave it unset)")

    @property
    def model_name(self) -> str:
        """The name a retrieval run reports (``metrics.json``'s ``model``)."""
        return f"{self.model}_retrieval"

    def structure(self) -> dict[str, Any]:
        """The options that decide the model's parameters and buffers (a checkpoint must agree on them)."""
        keep = (
            "model",
            "item_fields",
            "item_key",
            "user_dense",
            "item_dense",
            "output_dim",
            "user_hidden",
            "item_hidden",
            "fusion",
            "interest_reduction",
            "use_domain_interest",
            "use_dsbn",
            "frequency_buckets",
        )
        return {name: getattr(self, name) for name in keep}
