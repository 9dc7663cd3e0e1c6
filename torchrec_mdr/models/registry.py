"""The model registry: ``model.name`` -> dense arch class and its typed config.

To add a model: write ``models/<name>.py`` with a config dataclass and an arch module whose
forward maps :class:`~torchrec_mdr.models.features.EmbeddedFeatures` to logits [B, num_tasks],
then add one entry to :data:`MODELS` and one field to :class:`ModelConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from dlrm_style.models import DLRMArch, DLRMConfig, DLRMDCNArch, DLRMDCNConfig
from torchrec_mdr.config import ConfigError, bounds, doc
from torchrec_mdr.models.din import DINArch, DINConfig
from torchrec_mdr.models.dnn import DNNArch, DNNConfig
from torchrec_mdr.models.features import FeatureLayout


@dataclass(frozen=True)
class ModelEntry:
    arch: Callable[..., nn.Module]  # (layout, its config) -> module
    config_field: str  # the ModelConfig field holding its options
    description: str


MODELS: dict[str, ModelEntry] = {
    "dnn": ModelEntry(DNNArch, "dnn", "shared MLP over all embeddings (BaseDNN)"),
    "din": ModelEntry(DINArch, "din", "DIN target attention over the behaviour sequences"),
    "dlrm": ModelEntry(DLRMArch, "dlrm", "DLRM: dense arch, pairwise-dot interaction, over arch"),
    "dlrm_dcn": ModelEntry(DLRMDCNArch, "dlrm_dcn", "DLRM-DCNv2: low-rank cross layers as the interaction"),
}


@dataclass
class ModelConfig:
    name: str = field(default="din", metadata=doc(f"registered model: {', '.join(MODELS)}"))
    embedding_dim: int = field(default=16, metadata=bounds(ge=1, help="embedding dimension of every table"))
    dnn: DNNConfig = field(default_factory=DNNConfig)
    din: DINConfig = field(default_factory=DINConfig)
    dlrm: DLRMConfig = field(default_factory=DLRMConfig)
    dlrm_dcn: DLRMDCNConfig = field(default_factory=DLRMDCNConfig)

    def validate(self) -> None:
        if self.name not in MODELS:
            raise ConfigError(f"unknown model {self.name!r}; registered models: {sorted(MODELS)}")


def build_dense_arch(layout: FeatureLayout, config: ModelConfig) -> nn.Module:
    entry = MODELS[config.name]
    return entry.arch(layout, getattr(config, entry.config_field))
