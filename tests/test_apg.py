"""APG: the generated layer (W_i = U S_i V, decomposed feed-forward, over-parameterisation, the other
generation forms) against hand computations, the conditions, the arch, options rejected at load.

Padding invariance, determinism and the domain test run with the other baselines
(tests/test_baselines.py, ``ARCHS["apg"]``); the FX traces and a real batch through ``RankingModel``
with every registered model (tests/test_fx_trace.py, tests/test_models.py).
"""

from __future__ import annotations

import pytest
import torch

from torchrec_mdr.config import ConfigError, from_dict
from torchrec_mdr.models.apg import APGArch, APGConfig
from torchrec_mdr.models.blocks import GeneratedLinear, GeneratedMLP, TargetAttentionConfig, masked_mean
from torchrec_mdr.models.features import EmbeddedFeatures, EmbeddedSequence, FeatureLayout, SequenceLayout
from torchrec_mdr.models.registry import ModelConfig

B, L, D, K, T = 6, 4, 3, 3, 2
FIELDS = ("user_id", "item_id", "user_activity")


def layout() -> FeatureLayout:
    sequence = SequenceLayout("hist", ("hist_item_id", "hist_domain"), L, ("item_id",))
    return FeatureLayout(
        fields=FIELDS,
        pooled=frozenset({"user_id", "user_activity"}),
        sequences=(sequence,),
        embedding_dim=D,
        num_dense=2,
        num_domains=K,
        num_tasks=T,
    )


def features(domain: tuple[int, ...] = (0, 1, 2, 0, 1, 2)) -> EmbeddedFeatures:
    generator = torch.Generator().manual_seed(5)
    mask = torch.arange(L)[None, :] < torch.tensor([4, 2, 1, 0, 3, 4])[:, None]
    keys = torch.randn(B, L, 2 * D, generator=generator) * mask[..., None]
    fields = torch.randn(B, len(FIELDS), D, generator=generator)
    return EmbeddedFeatures(
        fields,
        [EmbeddedSequence(keys, mask, fields[:, 1])],
        torch.randn(B, 2, generator=generator),
        torch.tensor(domain),
    )


def explicit(layer: GeneratedLinear, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
    """y_b = W_b x_b + bias, row by row, with W_b formed as a whole matrix (what forward never does)."""
    weight = layer.row_weights(condition)
    bias = layer.generate(condition)[-1] if layer.bias is None else layer.bias.expand(len(x), -1)
    return torch.stack([weight[b] @ x[b] + bias[b] for b in range(len(x))])


# --------------------------------------------------------------------------- the generated layer


def test_decomposed_forward_by_hand():
    """G(z) = b + w z with b = vec(I), w = e_2: S(z) = [[1, z], [0, 1]]; V = [[1, 0, 1], [0, 2, 0]],
    U = [[1, 0], [1, -1]], bias = [0.5, -0.5].
    x = [1, 2, 3], z = 2:   V x = [4, 4], S V x = [12, 4], U S V x = [12, 8]    -> [12.5, 7.5]
    x = [1, 0, -1], z = 0:  V x = [0, 0]                                       -> [0.5, -0.5]
    x = [0, 1, 0], z = -1:  V x = [0, 2], S V x = [-2, 2], U S V x = [-2, -4]  -> [-1.5, -4.5]"""
    layer = GeneratedLinear(3, 2, condition_width=1, rank=2, generator_hidden=[])
    with torch.no_grad():
        layer.generator[-1].weight.copy_(torch.tensor([[0.0], [1.0], [0.0], [0.0]]))
        layer.u.copy_(torch.tensor([[1.0, 0.0], [1.0, -1.0]]))
        layer.v.copy_(torch.tensor([[1.0, 0.0, 1.0], [0.0, 2.0, 0.0]]))
        layer.bias.copy_(torch.tensor([0.5, -0.5]))
    x = torch.tensor([[1.0, 2.0, 3.0], [1.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    z = torch.tensor([[2.0], [0.0], [-1.0]])
    assert layer.generator[-1].bias.tolist() == [1.0, 0.0, 0.0, 1.0]  # S starts at the identity
    assert layer(x, z).tolist() == [[12.5, 7.5], [0.5, -0.5], [-1.5, -4.5]]
    # the whole W of row 0: U S V = [[1, 4, 1], [1, 2, 1]]
    assert layer.row_weights(z)[0].tolist() == [[1.0, 4.0, 1.0], [1.0, 2.0, 1.0]]


@pytest.mark.parametrize(
    "generation,over_rank,generate_bias",
    [
        ("shared", 0, False),
        ("shared", 7, False),
        ("shared", 7, True),
        ("specific", 0, False),
        ("specific", 0, True),
        ("full", 0, False),
        ("full", 0, True),
    ],
)
def test_every_form_is_a_per_row_linear_map(generation, over_rank, generate_bias):
    torch.manual_seed(0)
    layer = GeneratedLinear(
        5,
        4,
        condition_width=3,
        rank=2,
        generation=generation,
        over_rank=over_rank,
        generator_hidden=[6],
        generate_bias=generate_bias,
    )
    x, z = torch.randn(B, 5), torch.randn(B, 3)
    torch.testing.assert_close(layer(x, z), explicit(layer, x, z))
    assert (layer.bias is None) == generate_bias
    # the generated numbers: K^2 (shared), N K + K^2 + K M (specific), N M (full), + N for a bias
    sizes = {"shared": 2 * 2, "specific": 4 * 2 + 2 * 2 + 2 * 5, "full": 4 * 5}[generation]
    assert layer.generator[-1].out_features == sizes + (4 if generate_bias else 0)


def test_low_rank_forms_multiply_their_factors():
    torch.manual_seed(0)
    z = torch.randn(B, 3)
    specific = GeneratedLinear(5, 4, 3, rank=2, generation="specific")
    u, s, v = specific.generate(z)
    assert (u.shape, s.shape, v.shape) == ((B, 4, 2), (B, 2, 2), (B, 2, 5))
    torch.testing.assert_close(specific.row_weights(z), torch.stack([u[b] @ s[b] @ v[b] for b in range(B)]))
    shared = GeneratedLinear(5, 4, 3, rank=2)
    (s,) = shared.generate(z)
    torch.testing.assert_close(shared.row_weights(z), torch.stack([shared.u @ s[b] @ shared.v for b in range(B)]))
    assert torch.linalg.matrix_rank(shared.row_weights(z)[0]).item() <= 2


def test_over_parameterisation_is_the_product_of_its_factors():
    """U = U^l U^r, V = V^l V^r: the same layer as a plain shared one holding the products."""
    torch.manual_seed(0)
    over = GeneratedLinear(5, 4, 3, rank=2, over_rank=9, generator_hidden=[6])
    assert over.u_left.shape == (4, 9) and over.u_right.shape == (9, 2)
    assert over.v_left.shape == (2, 9) and over.v_right.shape == (9, 5)
    plain = GeneratedLinear(5, 4, 3, rank=2, generator_hidden=[6])
    with torch.no_grad():
        plain.generator.load_state_dict(over.generator.state_dict())
        plain.u.copy_(over.u_left @ over.u_right)
        plain.v.copy_(over.v_left @ over.v_right)
        plain.bias.copy_(over.bias)
    x, z = torch.randn(B, 5), torch.randn(B, 3)
    torch.testing.assert_close(over(x, z), plain(x, z))
    u, v = over.shared_factors()
    torch.testing.assert_close(u, over.u_left @ over.u_right)
    factors = (over.u_left, over.u_right, over.v_left, over.v_right)
    assert sum(p.numel() for p in factors) == 4 * 9 + 9 * 2 + 2 * 9 + 9 * 5


@pytest.mark.parametrize("generation", ["shared", "specific", "full"])
def test_a_generator_without_condition_signal_is_a_plain_layer(generation):
    """The generator's output bias holds the factors' initial values (S = I): with its last weight at 0,
    every row gets the same W (U V for shared, U_0 I V_0 for specific, W_0 for full)."""
    torch.manual_seed(0)
    layer = GeneratedLinear(5, 4, 3, rank=2, generation=generation, generator_hidden=[6])
    with torch.no_grad():
        layer.generator[-1].weight.zero_()
    weight = layer.row_weights(torch.randn(B, 3))
    for b in range(1, B):
        torch.testing.assert_close(weight[b], weight[0])
    if generation == "shared":
        torch.testing.assert_close(weight[0], layer.u @ layer.v)
    if generation == "specific":
        u, s, v = layer.generate(torch.zeros(1, 3))
        torch.testing.assert_close(s[0], torch.eye(2))
        assert u.abs().max() <= 1 / 2**0.5 and v.abs().max() <= 1 / 5**0.5  # nn.Linear's ranges
    if generation == "full":
        assert weight.abs().max() <= 1 / 5**0.5


def test_rank_is_cut_to_the_layer_and_bad_forms_are_refused():
    assert GeneratedLinear(10, 3, 2, rank=8).rank == 3
    assert GeneratedLinear(10, 3, 2, rank=8).generator[-1].out_features == 9
    with pytest.raises(ValueError, match="generation"):
        GeneratedLinear(4, 4, 2, generation="diagonal")
    with pytest.raises(ValueError, match="over_rank"):
        GeneratedLinear(4, 4, 2, rank=3, over_rank=2)
    with pytest.raises(ValueError, match="over_rank"):
        GeneratedLinear(4, 4, 2, rank=3, generation="full", over_rank=8)


@pytest.mark.parametrize("condition", ["group", "self", "mix"])
def test_generated_mlp_conditions(condition):
    """group: every layer's generator sees z; self: the layer's input; mix: [z, input]."""
    torch.manual_seed(0)
    mlp = GeneratedMLP(5, [4, 3], condition_width=2, condition=condition, rank=2, generator_hidden=[6])
    widths = {"group": [2, 2], "self": [5, 4], "mix": [7, 6]}[condition]
    assert [layer.generator[0].in_features for layer in mlp.layers] == widths
    x, z = torch.randn(B, 5), torch.randn(B, 2)
    h = x
    for layer in mlp.layers:
        seen = {"group": z, "self": h, "mix": torch.cat([z, h], dim=1)}[condition]
        h = torch.relu(explicit(layer, h, seen))
    torch.testing.assert_close(mlp(x, None if condition == "self" else z), h)
    assert mlp.out_features == 3
    with pytest.raises(ValueError, match="condition"):
        GeneratedMLP(5, [4], 2, condition="domain")


# --------------------------------------------------------------------------- the arch


def test_arch_is_generated_layers_over_the_flat_input_conditioned_on_the_domain():
    torch.manual_seed(0)
    arch = APGArch(
        layout(), APGConfig(hidden=[6, 4], rank=2, over_rank=5, generator_hidden=[5], domain_features=["user_activity"])
    ).eval()
    batch = features()
    z = arch.condition(batch)
    torch.testing.assert_close(
        z, torch.cat([arch.input.domain_embedding.weight[batch.domain], batch.fields[:, 2]], dim=1)
    )
    sequence = batch.sequences[0]
    h = torch.cat([arch.input(batch), masked_mean(sequence.keys, sequence.mask)], dim=1)  # the flat input
    for layer in arch.mlp.layers:
        h = torch.relu(explicit(layer, h, z))
    expected = h @ arch.output.weight.T + arch.output.bias
    logits = arch(batch)
    assert logits.shape == (B, T)
    torch.testing.assert_close(logits, expected)


def test_a_target_attention_backbone_replaces_the_mean_pooling():
    """backbone = din: the input is [context, DIN-pooled sequence] ('DIN +APG'); mha widens it to its heads."""
    torch.manual_seed(0)
    arch = APGArch(layout(), APGConfig(hidden=[6], rank=2, backbone="din")).eval()
    batch = features()
    h = torch.cat([arch.input(batch), arch.pooling[0](batch.sequences[0])], dim=1)
    z = arch.condition(batch)
    expected = torch.relu(explicit(arch.mlp.layers[0], h, z)) @ arch.output.weight.T + arch.output.bias
    torch.testing.assert_close(arch(batch), expected)
    mha = APGArch(layout(), APGConfig(hidden=[6], backbone="mha", attention=TargetAttentionConfig(heads=3, head_dim=4)))
    assert mha.mlp.layers[0].in_features == mha.input.width + 3 * 4
    with pytest.raises(ConfigError, match="model.apg: backbone: 'gru'"):
        APGArch(layout(), APGConfig(backbone="gru"))


def test_rows_with_the_same_condition_share_their_weights():
    """Rows 0 and 3 (domain 0) with the same domain feature get the same W; row 1 (domain 1) another."""
    torch.manual_seed(0)
    arch = APGArch(layout(), APGConfig(hidden=[6], rank=2, domain_features=["user_activity"]))
    batch = features()
    batch.fields[3, 2] = batch.fields[0, 2]
    weight = arch.mlp.layers[0].row_weights(arch.condition(batch))
    torch.testing.assert_close(weight[3], weight[0])
    assert not torch.allclose(weight[1], weight[0])
    # without domain features the condition is the domain alone: all rows of a domain share W
    arch = APGArch(layout(), APGConfig(hidden=[6], rank=2))
    weight = arch.mlp.layers[0].row_weights(arch.condition(features()))
    torch.testing.assert_close(weight[4], weight[1])


def test_self_condition_ignores_the_domain_vector():
    torch.manual_seed(0)
    arch = APGArch(layout(), APGConfig(hidden=[6, 4], rank=2, condition="self", over_rank=0)).eval()
    assert arch.mlp.layers[0].generator[0].in_features == arch.input.width + 2 * D  # context + pooled sequence
    batch = features()
    sequence = batch.sequences[0]
    h = torch.cat([arch.input(batch), masked_mean(sequence.keys, sequence.mask)], dim=1)
    for layer in arch.mlp.layers:
        h = torch.relu(explicit(layer, h, h))
    torch.testing.assert_close(arch(batch), arch.output(h))


def test_options_are_checked_at_load():
    config = from_dict(
        ModelConfig, {"name": "apg", "apg": {"rank": 4, "over_rank": 0, "generation": "full"}}, prefix="model"
    )
    assert (config.apg.rank, config.apg.generation) == (4, "full")
    assert APGConfig().rank == 8 and APGConfig().over_rank == 64 and APGConfig().generation == "shared"
    for options, match in [
        ({"generation": "specific"}, "model.apg: over_rank: over-parameterisation needs shared U, V"),
        ({"rank": 8, "over_rank": 4}, "model.apg: over_rank: 4 is below rank 8"),
        ({"condition": "self", "domain_features": ["user_activity"]}, "model.apg: domain_features: unused"),
        ({"generation": "diagonal"}, "model.apg.generation"),
        ({"condition": "domain"}, "model.apg.condition"),
        ({"rank": 0}, "model.apg.rank"),
        ({"hidden": [8, 0]}, "model.apg.hidden"),
        ({"over_rank": -1}, "model.apg.over_rank"),
        ({"dropout": 1.0}, "model.apg.dropout"),
    ]:
        with pytest.raises(ConfigError, match=match):
            from_dict(ModelConfig, {"name": "apg", "apg": options}, prefix="model")


def test_arch_refuses_bad_options_and_unknown_fields():
    with pytest.raises(ConfigError, match="model.apg: over_rank"):
        APGArch(layout(), APGConfig(generation="full"))
    with pytest.raises(ConfigError, match=r"model.apg.domain_features: 'tab' is not an id feature"):
        APGArch(layout(), APGConfig(domain_features=["tab"]))


@pytest.mark.parametrize(
    "condition,generation,over_rank", [("group", "shared", 5), ("self", "specific", 0), ("mix", "full", 0)]
)
def test_generated_mlp_traces_with_fx(condition, generation, over_rank):
    """Every form is one fx graph (the pipeline traces the dense arch) that gives the eager outputs."""
    torch.manual_seed(0)
    mlp = GeneratedMLP(
        5, [4, 3], 2, condition, rank=2, generation=generation, over_rank=over_rank, generate_bias=generation == "full"
    )
    traced = torch.fx.symbolic_trace(mlp)
    for batch in (B, 1):
        x, z = torch.randn(batch, 5), torch.randn(batch, 2)
        torch.testing.assert_close(traced(x, z), mlp(x, z))
