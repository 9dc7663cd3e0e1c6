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
from torchrec_mdr.models.adin import ADINArch, ADINConfig
from torchrec_mdr.models.ads import ADSArch, ADSConfig
from torchrec_mdr.models.din import DINArch, DINConfig
from torchrec_mdr.models.dnn import DNNArch, DNNConfig
from torchrec_mdr.models.features import FeatureLayout
from torchrec_mdr.models.mmoe import MMoEArch, MMoEConfig
from torchrec_mdr.models.pepnet import PEPNetArch, PEPNetConfig
from torchrec_mdr.models.ple import PLEArch, PLEConfig
from torchrec_mdr.models.shared_bottom import SharedBottomArch, SharedBottomConfig
from torchrec_mdr.models.star import STARArch, STARConfig
from torchrec_mdr.models.sfpnet import SFPNetArch, SFPNetConfig
from torchrec_mdr.models.target_attention import CANArch, CANConfig, MHAArch, MHAConfig


@dataclass(frozen=True)
class ModelEntry:
    arch: Callable[..., nn.Module]  # (layout, its config) -> module
    config_field: str  # the ModelConfig field holding its options
    description: str


MODELS: dict[str, ModelEntry] = {
    "dnn": ModelEntry(DNNArch, "dnn", "shared MLP over all embeddings (BaseDNN)"),
    "din": ModelEntry(DINArch, "din", "DIN target attention over the behaviour sequences"),
    "mha": ModelEntry(MHAArch, "mha", "multi-head target attention over the behaviour sequences"),
    "can": ModelEntry(CANArch, "can", "CAN: candidate-parameterised micro-MLP over each behaviour"),
    "ads": ModelEntry(ADSArch, "ads", "ADS: PSRG + PCRG domain-personalised target attention (din/mha/can)"),
    "adin": ModelEntry(ADINArch, "adin", "ADIN: SE domain interest, shared + domain nets with DSBN, self-training"),
    "sfpnet": ModelEntry(SFPNetArch, "sfpnet", "SFPNet: scenario-tailoring blocks (SAM + RTM), DIN, S-DNN"),
    "shared_bottom": ModelEntry(SharedBottomArch, "shared_bottom", "Shared-Bottom: shared MLP, one tower per domain"),
    "mmoe": ModelEntry(MMoEArch, "mmoe", "MMoE: shared experts, one softmax gate and tower per domain"),
    "ple": ModelEntry(PLEArch, "ple", "PLE: stacked CGC levels (shared + domain experts), towers per domain"),
    "star": ModelEntry(STARArch, "star", "STAR: partitioned norm, star-topology FCN (shared ⊙ domain), aux net"),
    "pepnet": ModelEntry(PEPNetArch, "pepnet", "PEPNet: EPNet domain gates on embeddings, PPNet user gates on towers"),
    "dlrm": ModelEntry(DLRMArch, "dlrm", "DLRM: dense arch, pairwise-dot interaction, over arch"),
    "dlrm_dcn": ModelEntry(DLRMDCNArch, "dlrm_dcn", "DLRM-DCNv2: low-rank cross layers as the interaction"),
}


@dataclass
class ModelConfig:
    name: str = field(default="din", metadata=doc(f"registered model: {', '.join(MODELS)}"))
    embedding_dim: int = field(default=16, metadata=bounds(ge=1, help="embedding dimension of every table"))
    dnn: DNNConfig = field(default_factory=DNNConfig)
    din: DINConfig = field(default_factory=DINConfig)
    mha: MHAConfig = field(default_factory=MHAConfig)
    can: CANConfig = field(default_factory=CANConfig)
    ads: ADSConfig = field(default_factory=ADSConfig)
    adin: ADINConfig = field(default_factory=ADINConfig)
    sfpnet: SFPNetConfig = field(default_factory=SFPNetConfig)
    shared_bottom: SharedBottomConfig = field(default_factory=SharedBottomConfig)
    mmoe: MMoEConfig = field(default_factory=MMoEConfig)
    ple: PLEConfig = field(default_factory=PLEConfig)
    star: STARConfig = field(default_factory=STARConfig)
    pepnet: PEPNetConfig = field(default_factory=PEPNetConfig)
    dlrm: DLRMConfig = field(default_factory=DLRMConfig)
    dlrm_dcn: DLRMDCNConfig = field(default_factory=DLRMDCNConfig)

    def validate(self) -> None:
        if self.name not in MODELS:
            raise ConfigError(f"unknown model {self.name!r}; registered models: {sorted(MODELS)}")


def build_dense_arch(layout: FeatureLayout, config: ModelConfig) -> nn.Module:
    entry = MODELS[config.name]
    return entry.arch(layout, getattr(config, entry.config_field))
