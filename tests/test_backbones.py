"""Method models on a target-attention backbone (``model.<name>.backbone``): the ADS paper's "DIN +PEPNet"
rows. The block (``sequence_summary``) and PEPNet on DIN against a composition by hand; APG's is in
tests/test_apg.py; padding, determinism and domain gradients in tests/test_baselines.py (``pepnet_din``,
``apg_can``)."""

from __future__ import annotations

import pytest
import torch

from torchrec_mdr.config import ConfigError, from_dict
from torchrec_mdr.models.blocks import (
    AttentionOptions,
    MeanPooling,
    SequencePooling,
    TargetAttentionConfig,
    masked_mean,
    sequence_summary,
)
from torchrec_mdr.models.pepnet import PEPNetArch, PEPNetConfig
from torchrec_mdr.models.registry import ModelConfig
from test_baselines import B, D, features, layout


def test_sequence_summary_by_name():
    mean = sequence_summary(layout(), "mean", AttentionOptions(), "k")
    batch = features()
    sequence = batch.sequences[0]
    assert isinstance(mean, MeanPooling) and mean.group_widths == [2 * D]
    torch.testing.assert_close(mean(batch.sequences)[0], masked_mean(sequence.keys, sequence.mask))
    mha = sequence_summary(layout(), "mha", TargetAttentionConfig(heads=3, head_dim=5).options("din"), "k")
    assert isinstance(mha, SequencePooling) and mha.group_widths == [15] and mha.out_features == 15
    assert mha(batch.sequences)[0].shape == (B, 15)
    with pytest.raises(ConfigError, match=r"model.x.backbone: 'lstm' is not one of \['mean', 'can', 'din', 'mha'\]"):
        sequence_summary(layout(), "lstm", AttentionOptions(), "model.x.backbone")


def test_pepnet_on_din_gates_the_attention_pooled_sequence():
    """general = [fields, DIN(candidate, behaviours)]: EPNet gates it by domain, PPNet towers read it."""
    torch.manual_seed(0)
    arch = PEPNetArch(layout(), PEPNetConfig(hidden=[6], gate_hidden=4, backbone="din")).eval()
    batch = features()
    pooled = arch.pooling[0](batch.sequences[0])
    general = torch.cat([batch.fields.flatten(1), pooled], dim=1)
    personalised, _ = arch.epnet(general, arch.domain_embedding(batch.domain))
    prior = batch.fields[:, [0, 2]].flatten(1)  # user_id, user_activity: the fields named user*
    expected = arch.ppnet(torch.cat([personalised, batch.dense], dim=1), prior, personalised)
    torch.testing.assert_close(arch(batch), expected)
    mean = PEPNetArch(layout(), PEPNetConfig(hidden=[6], gate_hidden=4)).eval()
    assert not any(name.startswith("pooling") for name, _ in mean.named_parameters())  # the paper's form: no attention
    assert sum(p.numel() for n, p in arch.named_parameters() if n.startswith("pooling.0.attention")) > 0


def test_backbone_is_one_config_line():
    config = from_dict(
        ModelConfig, {"name": "pepnet", "pepnet": {"backbone": "can", "attention": {"orders": 2}}}, prefix="model"
    )
    assert config.pepnet.backbone == "can" and config.pepnet.attention.options("can").orders == 2
    assert from_dict(ModelConfig, {"name": "apg", "apg": {"backbone": "mha"}}, prefix="model").apg.backbone == "mha"


def test_frnet_on_din_refines_the_fields_and_attends_to_the_raw_behaviours():
    from torchrec_mdr.models.frnet import FRNetArch, FRNetConfig

    torch.manual_seed(0)
    arch = FRNetArch(layout(), FRNetConfig(hidden=[6], attention_size=3, cie_hidden=[], backbone="din")).eval()
    batch = features()
    assert arch.num_fields == 4 + 1 + 1  # id fields, domain, dense: no sequence field
    refined = arch.refinement(arch.input(batch)).flatten(1)
    expected = arch.dnn(torch.cat([refined, arch.pooling[0](batch.sequences[0])], dim=1))
    torch.testing.assert_close(arch(batch), expected)
    assert FRNetArch(layout(), FRNetConfig(hidden=[6], cie_hidden=[])).num_fields == 4 + 1 + 2 + 1  # mean: columns
