"""MaskNet: the instance-guided mask, LN_EMB and the MaskBlock against hand computations, both forms end to
end against a re-computation from the weights, the ablation switches and the options rejected at load.

Padding invariance, determinism and the domain test run with the other baselines
(tests/test_baselines.py, ``ARCHS["masknet"]``, ``ARCHS["masknet_parallel"]``); the FX traces and a real
batch through ``RankingModel`` with every registered model (tests/test_fx_trace.py, tests/test_models.py).
"""

from __future__ import annotations

import math

import pytest
import torch

from torchrec_mdr.config import ConfigError, from_dict
from torchrec_mdr.models.features import EmbeddedFeatures, FeatureLayout
from torchrec_mdr.models.masknet import FieldLayerNorm, InstanceGuidedMask, MaskBlock, MaskNetArch, MaskNetConfig
from torchrec_mdr.models.registry import ModelConfig

from helpers import TINY_LENGTHS, TINY_B as B, TINY_D as D, TINY_K as K, TINY_T as T, tiny_features, tiny_layout

LENGTHS = TINY_LENGTHS
NUM_FIELDS = 2 + 1 + 2 + 1  # user_id, item_id, domain, hist_item_id, hist_domain, dense


def layout() -> FeatureLayout:
    return tiny_layout()


def features() -> EmbeddedFeatures:
    return tiny_features(seed=5)


def set_(linear: torch.nn.Linear, weight: list, bias: list | None = None) -> None:
    with torch.no_grad():
        linear.weight.copy_(torch.tensor(weight))
        if bias is not None:
            linear.bias.copy_(torch.tensor(bias))


# --------------------------------------------------------------------------- the parts, by hand


def test_instance_guided_mask_by_hand():
    """V_mask = W_d2 ReLU(W_d1 V_emb + β_d1) + β_d2 (eq. 5) with r = 1: t = z = 2.

    V_emb = [3, 1]; W_d1 V_emb + β_d1 = [3 - 1 + 0, 6 + 0 - 1] = [2, 5]; ReLU keeps it;
    W_d2 [2, 5] + β_d2 = [2 + 0.5, 2 + 5 - 1] = [2.5, 6].  V_emb = [-3, 0]: [-3, -7] -> ReLU 0 -> β_d2.
    """
    mask = InstanceGuidedMask(2, 2, reduction_ratio=1.0)
    set_(mask.aggregation, [[1.0, -1.0], [2.0, 0.0]], [0.0, -1.0])
    set_(mask.projection, [[1.0, 0.0], [1.0, 1.0]], [0.5, -1.0])
    assert mask(torch.tensor([[3.0, 1.0], [-3.0, 0.0]])).tolist() == [[2.5, 6.0], [0.5, -1.0]]


@pytest.mark.parametrize("ratio, out, aggregation", [(2.0, 4, 8), (1.5, 3, 4), (0.5, 6, 3), (1.0, 5, 5)])
def test_aggregation_width_is_reduction_ratio_times_the_mask_width(ratio, out, aggregation):
    mask = InstanceGuidedMask(7, out, reduction_ratio=ratio)
    assert (mask.aggregation.in_features, mask.aggregation.out_features) == (7, aggregation)
    assert (mask.projection.in_features, mask.projection.out_features) == (aggregation, out)


def test_a_ratio_without_an_aggregation_neuron_is_a_config_error():
    with pytest.raises(
        ConfigError,
        match=r"model.masknet.reduction_ratio \(0.1\) leaves the aggregation layer of "
        r"a 4-wide mask without a neuron",
    ):
        InstanceGuidedMask(8, 4, reduction_ratio=0.1)


def test_field_layer_norm_by_hand():
    """Each field over its own D entries: [1, 2, 3] has μ = 2, δ² = 2/3 -> ±sqrt(3/2) and 0; then g ⊙ · + b."""
    norm = FieldLayerNorm(2, 3, eps=0.0)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([[1.0, 1.0, 1.0], [2.0, 1.0, -1.0]]))
        norm.bias.copy_(torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.5, 0.5]]))
    fields = torch.tensor([[[1.0, 2.0, 3.0], [10.0, 10.0, 13.0]]])
    out = norm(fields)
    s = math.sqrt(1.5)
    torch.testing.assert_close(out[0, 0], torch.tensor([-s, 0.0, s]))
    # [10, 10, 13]: μ = 11, δ² = (1 + 1 + 4) / 3 = 2 -> [-1, -1, 2] / sqrt(2), then gain [2, 1, -1], bias 0.5
    r = math.sqrt(2.0)
    torch.testing.assert_close(out[0, 1], torch.tensor([-2 / r + 0.5, -1 / r + 0.5, -2 / r + 0.5]))


def test_field_layer_norm_is_one_layer_norm_per_field():
    torch.manual_seed(0)
    norm = FieldLayerNorm(4, 5)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    fields = torch.randn(6, 4, 5)
    for k in range(4):
        layer = torch.nn.LayerNorm(5)
        with torch.no_grad():
            layer.weight.copy_(norm.weight[k])
            layer.bias.copy_(norm.bias[k])
        torch.testing.assert_close(norm(fields)[:, k], layer(fields[:, k]))


def test_mask_block_by_hand():
    """ReLU(LN(W_i (V_mask ⊙ V_in))) (eqs. 11-14): the mask comes from V_emb, it multiplies V_in.

    V_emb = [1, 0] -> aggregation (identity, r = 1) [1, 0] -> projection [[2, 0], [0, 1]] + [0, 3] = [2, 3];
    V_in = [1, -1] -> V_mask ⊙ V_in = [2, -3]; W_i = [[1, 0], [0, 1], [1, 1]] -> [2, -3, -1];
    LN: μ = -2/3, [8/3, -7/3, -1/3] / δ with δ² = (64 + 49 + 1) / 27; ReLU keeps the first entry.
    """
    block = MaskBlock(2, 2, 3, reduction_ratio=1.0)
    set_(block.mask.aggregation, [[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0])
    set_(block.mask.projection, [[2.0, 0.0], [0.0, 1.0]], [0.0, 3.0])
    set_(block.hidden, [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert block.hidden.bias is None  # LN's bias takes its place (eq. 12 writes none)
    out = block(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, -1.0]]))
    delta = math.sqrt(114 / 27 + 1e-5)
    torch.testing.assert_close(out, torch.tensor([[8 / 3 / delta, 0.0, 0.0]]))


def test_mask_block_without_layer_norm_is_a_plain_masked_layer():
    """``hidden_norm = false`` (the paper's w/o LN): ReLU(W_i (V_mask ⊙ V_in) + b)."""
    block = MaskBlock(2, 2, 2, reduction_ratio=1.0, norm=False)
    assert block.norm is None
    set_(block.mask.aggregation, [[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0])
    set_(block.mask.projection, [[1.0, 0.0], [0.0, 1.0]], [1.0, 1.0])  # V_mask = V_emb + 1 for V_emb >= 0
    set_(block.hidden, [[1.0, 1.0], [1.0, -1.0]], [0.5, -10.0])
    out = block(torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 1.0]]))
    # V_mask = [2, 3]; masked = [6, 3]; W masked + b = [9.5, -7] -> ReLU [9.5, 0]
    assert out.tolist() == [[9.5, 0.0]]


# --------------------------------------------------------------------------- the whole model


def by_hand(arch: MaskNetArch, batch: EmbeddedFeatures) -> torch.Tensor:
    """Both forms re-computed from the weights, every LN written out."""
    fields = arch.input(batch)  # [B, K, D]: checked against its parts in tests/test_deepfm.py
    mean = fields.mean(-1, keepdim=True)
    variance = ((fields - mean) ** 2).mean(-1, keepdim=True)
    normed = (fields - mean) / torch.sqrt(variance + 1e-5) * arch.embedding_norm.weight + arch.embedding_norm.bias
    embedding, hidden = fields.flatten(1), normed.flatten(1)

    def block(module: MaskBlock, block_input: torch.Tensor) -> torch.Tensor:
        aggregation, projection = module.mask.aggregation, module.mask.projection
        mask = torch.relu(embedding @ aggregation.weight.T + aggregation.bias) @ projection.weight.T + projection.bias
        h = (mask * block_input) @ module.hidden.weight.T
        mu, var = h.mean(-1, keepdim=True), h.var(-1, unbiased=False, keepdim=True)
        return torch.relu((h - mu) / torch.sqrt(var + 1e-5) * module.norm.weight + module.norm.bias)

    if arch.serial:
        for module in arch.blocks:
            hidden = block(module, hidden)
        return hidden @ arch.head.weight.T + arch.head.bias
    merged = torch.cat([block(module, hidden) for module in arch.blocks], dim=1)
    first, output = arch.head[0], arch.head[2]
    return torch.relu(merged @ first.weight.T + first.bias) @ output.weight.T + output.bias


def randomise(arch: MaskNetArch) -> None:
    """Non-trivial LN gains and biases (they start at 1 and 0)."""
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for name, param in arch.named_parameters():
            if "norm" in name:
                param.copy_(torch.randn(param.shape, generator=generator))


def test_serial_masknet_matches_the_equations():
    torch.manual_seed(0)
    arch = MaskNetArch(layout(), MaskNetConfig(block_widths=[7, 4, 5], reduction_ratio=1.5)).eval()
    randomise(arch)
    assert arch.serial and len(arch.blocks) == 3
    m = NUM_FIELDS * D
    # first block masks LN_EMB(V_emb) (z = m); the next ones the previous output; all masks read V_emb
    assert [(b.mask.aggregation.in_features, b.mask.projection.out_features) for b in arch.blocks] == [
        (m, m),
        (m, 7),
        (m, 4),
    ]
    assert [b.mask.aggregation.out_features for b in arch.blocks] == [int(1.5 * m), 10, 6]
    assert [(b.hidden.in_features, b.hidden.out_features) for b in arch.blocks] == [(m, 7), (7, 4), (4, 5)]
    batch = features()
    logits = arch(batch)
    assert logits.shape == (B, T)
    torch.testing.assert_close(logits, by_hand(arch, batch), rtol=1e-5, atol=1e-5)


def test_parallel_masknet_matches_the_equations():
    torch.manual_seed(0)
    config = MaskNetConfig(form="parallel", parallel_blocks=3, parallel_block_width=4, parallel_hidden=[6])
    arch = MaskNetArch(layout(), config).eval()
    randomise(arch)
    m = NUM_FIELDS * D
    assert not arch.serial and len(arch.blocks) == 3
    # every block is a MaskBlock on feature embedding: it masks LN_EMB(V_emb), z = m, output q = 4
    assert all(
        (b.mask.projection.out_features, b.hidden.in_features, b.hidden.out_features) == (m, m, 4) for b in arch.blocks
    )
    assert arch.head[0].in_features == 3 * 4  # V_merge (eq. 15)
    batch = features()
    torch.testing.assert_close(arch(batch), by_hand(arch, batch), rtol=1e-5, atol=1e-5)


def test_blocks_differ_and_the_mask_reads_the_raw_embedding():
    """The mask's input is V_emb, not LN_EMB(V_emb): a change of the LN_EMB gain changes only the masked side."""
    torch.manual_seed(0)
    arch = MaskNetArch(layout(), MaskNetConfig(form="parallel", parallel_blocks=2, parallel_hidden=[])).eval()
    batch = features()
    embedding, normed = arch.embeddings(batch)
    masks = [block.mask(embedding) for block in arch.blocks]
    assert not torch.allclose(masks[0], masks[1])  # each block its own mask
    seen = []
    arch.blocks[0].mask.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    with torch.no_grad():
        arch.embedding_norm.weight.mul_(3.0)
    arch(batch)
    torch.testing.assert_close(seen[0], embedding)
    assert not torch.allclose(arch.embeddings(batch)[1], normed)


def test_without_embedding_norm_the_blocks_read_the_raw_embedding():
    torch.manual_seed(0)
    arch = MaskNetArch(layout(), MaskNetConfig(block_widths=[5], embedding_norm=False, hidden_norm=False))
    assert arch.embedding_norm is None and arch.blocks[0].norm is None and arch.blocks[0].hidden.bias is not None
    batch = features()
    embedding, normed = arch.embeddings(batch)
    assert torch.equal(embedding, normed)
    block = arch.blocks[0]
    expected = arch.head(torch.relu(block.hidden(block.mask(embedding) * embedding)))
    torch.testing.assert_close(arch(batch), expected)


def test_parallel_without_hidden_layers_predicts_from_the_merged_blocks():
    torch.manual_seed(0)
    arch = MaskNetArch(
        layout(), MaskNetConfig(form="parallel", parallel_blocks=2, parallel_block_width=3, parallel_hidden=[])
    )
    assert len(arch.head) == 1 and arch.head[0].in_features == 6 and arch.head[0].out_features == T
    assert arch(features()).shape == (B, T)


def test_the_mask_depends_on_the_domain():
    """The domain-id embedding is one field of V_emb, so every mask (and the logit) changes with the domain."""
    torch.manual_seed(0)
    arch = MaskNetArch(layout(), MaskNetConfig(block_widths=[6])).eval()
    batch = features()
    moved = features()
    moved.domain = (batch.domain + 1) % K
    masks = [arch.blocks[0].mask(arch.embeddings(b)[0]) for b in (batch, moved)]
    assert (masks[0] - masks[1]).abs().amax(dim=1).min() > 0
    assert not torch.allclose(arch(batch), arch(moved))


# --------------------------------------------------------------------------- options


def test_options_are_checked_at_load():
    config = from_dict(
        ModelConfig,
        {"name": "masknet", "masknet": {"form": "parallel", "block_widths": [], "parallel_hidden": []}},
        prefix="model",
    )
    assert config.masknet.form == "parallel" and config.masknet.block_widths == []
    assert ModelConfig().masknet.form == "serial" and ModelConfig().masknet.reduction_ratio == 2.0
    with pytest.raises(ConfigError, match="model.masknet.form"):
        from_dict(ModelConfig, {"masknet": {"form": "stacked"}}, prefix="model")
    with pytest.raises(ConfigError, match="model.masknet: block_widths must list at least one width for form 'serial'"):
        from_dict(ModelConfig, {"masknet": {"block_widths": []}}, prefix="model")
    for key, value in [
        ("block_widths", [8, 0]),
        ("parallel_blocks", 0),
        ("parallel_block_width", 0),
        ("parallel_hidden", [0]),
        ("reduction_ratio", 0),
        ("dropout", 1.0),
    ]:
        with pytest.raises(ConfigError, match=f"model.masknet.{key}"):
            from_dict(ModelConfig, {"masknet": {key: value}}, prefix="model")
    with pytest.raises(ConfigError, match="block_widths must list"):  # the arch checks it too
        MaskNetArch(layout(), MaskNetConfig(block_widths=[]))
