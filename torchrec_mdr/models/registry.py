"""The model registry: ``model.name`` -> dense arch class and its typed options.

Add a model in five steps (the same list as docs/models.md, "Add a model in five steps"):

1. Write ``torchrec_mdr/models/<name>.py``: an options dataclass ``<Name>Config`` (every field with
   ``bounds(...)`` or ``doc(...)``) and an arch ``<Name>Arch(layout: FeatureLayout, config)`` whose
   forward maps :class:`~torchrec_mdr.models.features.EmbeddedFeatures` to logits [B, num_tasks]
   (or ``ArchOutput``), composed of the toolkit's blocks (:mod:`torchrec_mdr.models.blocks`).
2. Register it here: import the two classes and add one line to :data:`MODELS`,
   ``ModelEntry("<name>", <Name>Arch, <Name>Config, "<one-line description>")``. :class:`ModelConfig`
   is built from :data:`MODELS`, so its options become ``model.<name>.*``. An arch that reads each
   sequence only through ``EmbeddedSequence.mean()`` adds ``sequence_positions=False`` (pooled lookups).
3. Test what is yours in ``tests/test_<name>.py`` against hand computations and add it to ``ARCHS`` in
   ``tests/test_baselines.py`` (padding, determinism, domain gradients); the registry-wide tests pick
   it up by name (``test_models.py``, ``test_fx_trace.py``, ``test_distributed.py``).
4. Document it: its row and its choices in docs/models.md.
5. Train it: ``mdr train --config configs/quickstart.toml --set model.name=<name> --out runs/<name>``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, make_dataclass
from typing import TYPE_CHECKING, Any, Callable

from torch import nn

from torchrec_mdr.config import ConfigError, bounds, doc
from torchrec_mdr.models.adasparse import AdaSparseArch, AdaSparseConfig
from torchrec_mdr.models.adin import ADINArch, ADINConfig
from torchrec_mdr.models.aesm2 import AESM2Arch, AESM2Config
from torchrec_mdr.models.apg import APGArch, APGConfig
from torchrec_mdr.models.dcnv2 import DCNv2Arch, DCNv2Config
from torchrec_mdr.models.dlrm import DLRMArch, DLRMConfig, DLRMDCNArch, DLRMDCNConfig
from torchrec_mdr.models.deepfm import DeepFMArch, DeepFMConfig
from torchrec_mdr.models.dffm import DFFMArch, DFFMConfig
from torchrec_mdr.models.ads import ADSArch, ADSConfig
from torchrec_mdr.models.din import DINArch, DINConfig
from torchrec_mdr.models.dnn import DNNArch, DNNConfig
from torchrec_mdr.models.features import FeatureLayout
from torchrec_mdr.models.frnet import FRNetArch, FRNetConfig
from torchrec_mdr.models.m2m import M2MArch, M2MConfig
from torchrec_mdr.models.maria import MARIAArch, MARIAConfig
from torchrec_mdr.models.masknet import MaskNetArch, MaskNetConfig
from torchrec_mdr.models.mmoe import MMoEArch, MMoEConfig
from torchrec_mdr.models.pepnet import PEPNetArch, PEPNetConfig
from torchrec_mdr.models.ple import PLEArch, PLEConfig
from torchrec_mdr.models.sfpnet import SFPNetArch, SFPNetConfig
from torchrec_mdr.models.shared_bottom import SharedBottomArch, SharedBottomConfig
from torchrec_mdr.models.star import STARArch, STARConfig
from torchrec_mdr.models.target_attention import CANArch, CANConfig, MHAArch, MHAConfig


@dataclass(frozen=True)
class ModelEntry:
    name: str  # model.name, and the section model.<name> holding its options
    arch: Callable[..., nn.Module]  # (layout, its options) -> module
    config: type  # its options dataclass
    description: str
    # whether the arch reads each behaviour's embedding (attention); False: only each sequence's mean
    # (EmbeddedSequence.mean()), which the sparse arch then looks up pooled; a function of the model's
    # options when they decide it (a method model on a target-attention ``backbone``)
    sequence_positions: bool | Callable[[Any], bool] = True

    @property
    def config_field(self) -> str:
        """The :class:`ModelConfig` field holding its options (its name)."""
        return self.name

    def needs_positions(self, options: Any) -> bool:
        """Whether the arch built with ``options`` (its config section) reads the sequences by position."""
        positions = self.sequence_positions
        return bool(positions(options) if callable(positions) else positions)


def _unless_mean_backbone(options: Any) -> bool:
    """Positions for a target-attention ``backbone``; the pooled means for ``"mean"``."""
    return options.backbone != "mean"


def _with_dfub(options: Any) -> bool:
    """DFFM reads every behaviour in DFUB; without it only each sequence column's mean."""
    return bool(options.use_dfub)


MODELS: dict[str, ModelEntry] = {
    entry.name: entry
    for entry in (
        ModelEntry("dnn", DNNArch, DNNConfig, "shared MLP over all embeddings (BaseDNN)", sequence_positions=False),
        ModelEntry("din", DINArch, DINConfig, "DIN target attention over the behaviour sequences"),
        ModelEntry("mha", MHAArch, MHAConfig, "multi-head target attention over the behaviour sequences"),
        ModelEntry("can", CANArch, CANConfig, "CAN: candidate-parameterised micro-MLP over each behaviour"),
        ModelEntry("ads", ADSArch, ADSConfig, "ADS: PSRG + PCRG domain-personalised target attention (din/mha/can)"),
        ModelEntry(
            "adin", ADINArch, ADINConfig, "ADIN: SE domain interest, shared + domain nets with DSBN, self-training"
        ),
        ModelEntry("sfpnet", SFPNetArch, SFPNetConfig, "SFPNet: scenario-tailoring blocks (SAM + RTM), DIN, S-DNN"),
        ModelEntry(
            "shared_bottom",
            SharedBottomArch,
            SharedBottomConfig,
            "Shared-Bottom: shared MLP, one tower per domain",
            sequence_positions=False,
        ),
        ModelEntry(
            "mmoe",
            MMoEArch,
            MMoEConfig,
            "MMoE: shared experts, one softmax gate and tower per domain",
            sequence_positions=False,
        ),
        ModelEntry(
            "ple",
            PLEArch,
            PLEConfig,
            "PLE: stacked CGC levels (shared + domain experts), towers per domain",
            sequence_positions=False,
        ),
        ModelEntry(
            "star",
            STARArch,
            STARConfig,
            "STAR: partitioned norm, star-topology FCN (shared ⊙ domain), aux net",
            sequence_positions=False,
        ),
        ModelEntry(
            "pepnet",
            PEPNetArch,
            PEPNetConfig,
            "PEPNet: EPNet domain gates on embeddings, PPNet user gates "
            "on towers (model.pepnet.backbone: on DIN / MHA / CAN)",
            sequence_positions=_unless_mean_backbone,
        ),
        ModelEntry(
            "deepfm",
            DeepFMArch,
            DeepFMConfig,
            "DeepFM: FM (first + second order) and a DNN over the same fields",
            sequence_positions=False,
        ),
        ModelEntry(
            "maria",
            MARIAArch,
            MARIAConfig,
            "MARIA: scenario feature scaling, refiner selection per field, field "
            "correlations, MoE, scenario towers + coupling-gated extra tower "
            "(model.maria.backbone: din / mha / can / mean)",
            sequence_positions=_unless_mean_backbone,
        ),
        ModelEntry(
            "apg",
            APGArch,
            APGConfig,
            "APG: hidden layers with weights U S_i V, S_i generated from the domain",
            sequence_positions=_unless_mean_backbone,
        ),
        ModelEntry(
            "dcnv2",
            DCNv2Arch,
            DCNv2Config,
            "DCN-V2: full / low-rank / mixture cross layers and a DNN, stacked or parallel",
            sequence_positions=False,
        ),
        ModelEntry(
            "frnet",
            FRNetArch,
            FRNetConfig,
            "FRNet: fields refined by two IEUs and a complementary selection "
            "gate, then a DNN (model.frnet.backbone: on DIN / MHA / CAN)",
            sequence_positions=_unless_mean_backbone,
        ),
        ModelEntry(
            "m2m",
            M2MArch,
            M2MConfig,
            "M2M: experts, scenario-generated meta attention and residual meta towers per task",
            sequence_positions=_unless_mean_backbone,
        ),
        ModelEntry(
            "aesm2",
            AESM2Arch,
            AESM2Config,
            "AESM2: multi-task over multi-scenario expert layers, KL-based "
            "selection of specific and shared experts per row",
            sequence_positions=False,
        ),
        ModelEntry(
            "adasparse",
            AdaSparseArch,
            AdaSparseConfig,
            "AdaSparse: DNN whose neurons are weighted by domain-aware pruners, sparsity regularisation",
            sequence_positions=False,
        ),
        ModelEntry(
            "masknet",
            MaskNetArch,
            MaskNetConfig,
            "MaskNet: MaskBlocks (instance-guided mask, LN, feed-forward), serial or parallel",
            sequence_positions=False,
        ),
        ModelEntry(
            "dffm",
            DFFMArch,
            DFFMConfig,
            "DFFM: domain-generated micro-MLP in the field inner products (DFFI), "
            "target- and domain-parameterised behaviour self-attention (DFUB)",
            sequence_positions=_with_dfub,
        ),
        ModelEntry(
            "dlrm",
            DLRMArch,
            DLRMConfig,
            "DLRM: dense arch, pairwise-dot interaction, over arch",
            sequence_positions=False,
        ),
        ModelEntry(
            "dlrm_dcn",
            DLRMDCNArch,
            DLRMDCNConfig,
            "DLRM-DCNv2: low-rank cross layers as the interaction",
            sequence_positions=False,
        ),
    )
}


def _validate(self: Any) -> None:
    if self.name not in MODELS:
        raise ConfigError(f"unknown model {self.name!r}; registered models: {sorted(MODELS)}")


if TYPE_CHECKING:

    @dataclass
    class ModelConfig:
        """What a type checker sees of the dataclass :func:`~dataclasses.make_dataclass` builds below:
        the chosen model and the embedding dimension, and one options section per registered model."""

        name: str = "din"
        embedding_dim: int = 16

        def __getattr__(self, section: str) -> Any: ...

        def validate(self) -> None: ...
else:
    ModelConfig = make_dataclass(
        "ModelConfig",
        [
            ("name", str, field(default="din", metadata=doc(f"registered model: {', '.join(MODELS)}"))),
            ("embedding_dim", int, field(default=16, metadata=bounds(ge=1, help="embedding dimension of every table"))),
            *((entry.name, entry.config, field(default_factory=entry.config)) for entry in MODELS.values()),
        ],
        namespace={
            "validate": _validate,
            "__doc__": "``model.*``: the chosen model, the embedding dimension and every registered model's "
            "options (``model.<name>.*``, one field per :data:`MODELS` entry).",
        },
    )
    ModelConfig.__module__ = __name__  # pickled and printed as torchrec_mdr.models.registry.ModelConfig


def build_dense_arch(layout: FeatureLayout, config: Any) -> nn.Module:
    """The chosen model's arch (``config``: a :class:`ModelConfig`)."""
    entry = MODELS[config.name]
    return entry.arch(layout, getattr(config, entry.config_field))
