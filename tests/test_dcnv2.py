"""DCN-V2: the cross layers against hand computations (full, low-rank, mixture), the bounded degree of
the crosses, the input, the three structures and the combination layer, options rejected at load.

Padding invariance, determinism and the domain test run with the other baselines
(tests/test_baselines.py, ``ARCHS["dcnv2"]``); the FX traces, a real batch through ``RankingModel``,
distributed training and export with every registered model.
"""

from __future__ import annotations

import pytest
import torch

from torchrec_mdr.config import ConfigError, from_dict
from torchrec_mdr.models.dcnv2 import DCNv2Arch, DCNv2Config, cross_network
from torchrec_mdr.models.features import EmbeddedFeatures, FeatureLayout
from torchrec_mdr.models.registry import ModelConfig

from helpers import TINY_LENGTHS, TINY_B as B, TINY_D as D, TINY_T as T, tiny_features, tiny_layout

LENGTHS = TINY_LENGTHS
WIDTH = (2 + 1) * D + 2 + 2 * D  # fields + domain, dense, one sequence group of two columns = 17


def layout(num_tasks: int = T) -> FeatureLayout:
    return tiny_layout(num_tasks=num_tasks)


def features() -> EmbeddedFeatures:
    return tiny_features()


def set_parameters(module: torch.nn.Module, seed: int) -> None:
    """Random values everywhere, biases included (torchrec starts them at zero)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=generator))


# --------------------------------------------------------------------------- cross layers by hand


def test_full_cross_layers_by_hand():
    """x0 = [1, 2]; layer 0: W0 x0 + b0 = [1, 3] + [0.5, -1] = [1.5, 2], x1 = x0 ⊙ [1.5, 2] + x0 = [2.5, 6];
    layer 1: W1 x1 = [6, 5], x2 = x0 ⊙ [6, 5] + x1 = [6, 10] + [2.5, 6] = [8.5, 16]."""
    cross = cross_network(2, DCNv2Config(cross_type="full", cross_layers=2))
    with torch.no_grad():
        cross.kernels[0].copy_(torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
        cross.bias[0].copy_(torch.tensor([[0.5], [-1.0]]))
        cross.kernels[1].copy_(torch.tensor([[0.0, 1.0], [2.0, 0.0]]))
        cross.bias[1].zero_()
    assert cross(torch.tensor([[1.0, 2.0]])).tolist() == [[8.5, 16.0]]


def test_low_rank_cross_layer_by_hand_and_as_the_full_layer_of_u_v_transposed():
    """x0 = [1, 2, 3], U = [1, 0, 2]^T, V^T = [1, 1, 0], b = [0, 1, 0]: V^T x0 = 3, U 3 + b = [3, 1, 6],
    x1 = x0 ⊙ [3, 1, 6] + x0 = [3, 2, 18] + [1, 2, 3] = [4, 4, 21]."""
    cross = cross_network(3, DCNv2Config(cross_type="low_rank", cross_layers=1, low_rank=1))
    with torch.no_grad():
        cross.W_kernels[0].copy_(torch.tensor([[1.0], [0.0], [2.0]]))  # U [W, r]
        cross.V_kernels[0].copy_(torch.tensor([[1.0, 1.0, 0.0]]))  # V^T [r, W]
        cross.bias[0].copy_(torch.tensor([0.0, 1.0, 0.0]))
    assert cross(torch.tensor([[1.0, 2.0, 3.0]])).tolist() == [[4.0, 4.0, 21.0]]
    # a rank-r layer is the full layer with W = U V^T
    low = cross_network(7, DCNv2Config(cross_type="low_rank", cross_layers=2, low_rank=3))
    full = cross_network(7, DCNv2Config(cross_type="full", cross_layers=2))
    set_parameters(low, 0)
    with torch.no_grad():
        for layer in range(2):
            full.kernels[layer].copy_(low.W_kernels[layer] @ low.V_kernels[layer])
            full.bias[layer].copy_(low.bias[layer][:, None])
    x = torch.randn(6, 7)
    torch.testing.assert_close(low(x), full(x))


def mixture_by_hand(cross: torch.nn.Module, x0: torch.Tensor, num_layers: int, num_experts: int) -> torch.Tensor:
    """x_{l+1} = sum_i softmax_i(w_i^T x_l) x0 ⊙ (U_i relu(C_i relu(V_i^T x_l)) + b_l) + x_l, row by row."""
    out = torch.empty_like(x0)
    for b in range(x0.shape[0]):
        x = x0[b]
        for layer in range(num_layers):
            experts, scores = [], []
            for i in range(num_experts):
                u, c, v = cross.U_kernels[layer][i], cross.C_kernels[layer][i], cross.V_kernels[layer][i]
                experts.append(x0[b] * (u @ torch.relu(c @ torch.relu(v @ x)) + cross.bias[layer][:, 0]))
                scores.append(x @ cross.gates[i].weight[0] if num_experts > 1 else torch.tensor(0.0))
            gate = torch.softmax(torch.stack(scores), dim=0)
            x = sum(g * e for g, e in zip(gate, experts)) + x
        out[b] = x
    return out


@pytest.mark.parametrize("num_experts", [1, 3])
def test_mixture_of_low_rank_experts_by_hand(num_experts):
    cross = cross_network(6, DCNv2Config(cross_type="mixture", cross_layers=2, low_rank=2, num_experts=num_experts))
    set_parameters(cross, 1)
    assert (cross.gates is None) == (num_experts == 1)  # one expert: no gate
    x0 = torch.randn(4, 6)
    torch.testing.assert_close(cross(x0), mixture_by_hand(cross, x0, 2, num_experts))


@pytest.mark.parametrize("cross_type", ["full", "low_rank", "mixture"])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_l_cross_layers_are_a_polynomial_of_degree_l_plus_one(cross_type, num_layers):
    """f(t x0) is a polynomial in t of degree L1 + 1 for full and low-rank layers: its (L1 + 2)-th finite
    difference vanishes, its (L1 + 1)-th does not. The mixture's ReLUs and softmax gates are not
    polynomial: there the (L1 + 2)-th difference does not vanish."""
    cross = cross_network(5, DCNv2Config(cross_type=cross_type, cross_layers=num_layers, low_rank=2)).double()
    set_parameters(cross, 2)
    x0 = torch.randn(3, 5, dtype=torch.float64)
    values = torch.stack([cross(t * x0) for t in torch.arange(num_layers + 3, dtype=torch.float64)])
    below, at = torch.diff(values, n=num_layers + 1, dim=0), torch.diff(values, n=num_layers + 2, dim=0)
    assert below.abs().max() > 1e-3
    if cross_type == "mixture":
        assert at.abs().max() > 1e-6
    else:
        assert at.abs().max() < 1e-8 * values.abs().max()


def test_parameter_counts_of_the_three_cross_layers():
    """Full: L (W^2 + W); low-rank: L (2 W r + W); mixture: L (K (2 W r + r^2) + W) + K W (gates)."""

    def count(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    w, r, experts, layers = 10, 3, 4, 2
    config = DCNv2Config(cross_layers=layers, low_rank=r, num_experts=experts)
    assert count(cross_network(w, config)) == layers * (w * w + w)
    config.cross_type = "low_rank"
    assert count(cross_network(w, config)) == layers * (2 * w * r + w)
    config.cross_type = "mixture"
    assert count(cross_network(w, config)) == layers * (experts * (2 * w * r + r * r) + w) + experts * w


# --------------------------------------------------------------------------- the arch


def test_input_is_fields_domain_dense_and_pooled_sequence_columns():
    torch.manual_seed(0)
    arch = DCNv2Arch(layout(), DCNv2Config(hidden=[8]))
    batch = features()
    x0 = arch.input(batch)
    assert x0.shape == (B, WIDTH) and arch.input.width == WIDTH
    torch.testing.assert_close(x0[:, : 2 * D], batch.fields.flatten(1))
    torch.testing.assert_close(x0[:, 2 * D : 3 * D], arch.input.domain_embedding.weight[batch.domain])
    torch.testing.assert_close(x0[:, 3 * D : 3 * D + 2], batch.dense)  # dense as it is (no projection)
    keys = batch.sequences[0].keys
    for b, n in enumerate(LENGTHS):  # both sequence columns, averaged over the real positions
        mean = keys[b, :n].mean(0) if n else torch.zeros(2 * D)
        torch.testing.assert_close(x0[b, 3 * D + 2 :], mean)


@pytest.mark.parametrize("cross_type", ["full", "low_rank", "mixture"])
def test_structures_compose_cross_deep_and_combination(cross_type):
    batch = features()
    logits = {}
    for structure in ("parallel", "stacked", "cross_only"):
        torch.manual_seed(0)
        config = DCNv2Config(structure=structure, cross_type=cross_type, low_rank=4, num_experts=2, hidden=[8, 5])
        arch = DCNv2Arch(layout(), config).eval()
        set_parameters(arch.cross, 3)
        x0 = arch.input(batch)
        crossed = arch.cross(x0)
        if structure == "parallel":
            final = torch.cat([crossed, arch.deep(x0)], dim=1)
        else:
            final = arch.deep(crossed) if structure == "stacked" else crossed
        assert final.shape == (B, {"parallel": WIDTH + 5, "stacked": 5, "cross_only": WIDTH}[structure])
        assert arch.combination.weight.shape == (T, final.shape[1])  # one w_logit per task
        logits[structure] = arch(batch)
        torch.testing.assert_close(logits[structure], final @ arch.combination.weight.T + arch.combination.bias)
    assert DCNv2Arch(layout(), DCNv2Config(structure="cross_only", hidden=[])).deep is None
    assert not torch.allclose(logits["parallel"], logits["stacked"])


def test_deep_network_is_relu_layers_and_one_logit_per_task():
    torch.manual_seed(0)
    arch = DCNv2Arch(layout(num_tasks=1), DCNv2Config(structure="stacked", hidden=[6, 4])).eval()
    x = torch.randn(B, WIDTH)
    first, second = arch.deep[0], arch.deep[2]
    expected = torch.relu(torch.relu(x @ first.weight.T + first.bias) @ second.weight.T + second.bias)
    torch.testing.assert_close(arch.deep(x), expected)
    assert arch(features()).shape == (B, 1)


def test_options_are_checked_at_load():
    config = from_dict(
        ModelConfig,
        {"name": "dcnv2", "dcnv2": {"structure": "stacked", "cross_type": "mixture", "low_rank": 8, "num_experts": 2}},
        prefix="model",
    )
    assert (config.dcnv2.structure, config.dcnv2.cross_type, config.dcnv2.num_experts) == ("stacked", "mixture", 2)
    assert from_dict(ModelConfig, {"dcnv2": {"structure": "cross_only", "hidden": []}}, prefix="model")
    with pytest.raises(ConfigError, match="model.dcnv2.structure"):
        from_dict(ModelConfig, {"dcnv2": {"structure": "serial"}}, prefix="model")
    with pytest.raises(ConfigError, match="model.dcnv2.cross_type"):
        from_dict(ModelConfig, {"dcnv2": {"cross_type": "vector"}}, prefix="model")
    for key in ("cross_layers", "low_rank", "num_experts"):
        with pytest.raises(ConfigError, match=f"model.dcnv2.{key}"):
            from_dict(ModelConfig, {"dcnv2": {key: 0}}, prefix="model")
    with pytest.raises(ConfigError, match="model.dcnv2: hidden must list at least one width for structure 'parallel'"):
        from_dict(ModelConfig, {"dcnv2": {"hidden": []}}, prefix="model")


@pytest.mark.parametrize("cross_type", ["low_rank", "mixture"])
def test_a_rank_of_at_least_the_cross_width_is_rejected(cross_type):
    with pytest.raises(ConfigError, match=rf"model.dcnv2.low_rank \({WIDTH}\) must be below the cross width {WIDTH}"):
        DCNv2Arch(layout(), DCNv2Config(cross_type=cross_type, low_rank=WIDTH))
    DCNv2Arch(layout(), DCNv2Config(cross_type=cross_type, low_rank=WIDTH - 1))
    DCNv2Arch(layout(), DCNv2Config(cross_type="full", low_rank=WIDTH))  # the rank is unused by full layers


@pytest.mark.parametrize("cross_type", ["full", "low_rank", "mixture"])
def test_cross_layers_start_with_zero_biases_and_bias_free_gates(cross_type):
    torch.manual_seed(0)
    cross = cross_network(WIDTH, DCNv2Config(cross_type=cross_type, low_rank=4, num_experts=3))
    assert all(torch.equal(b, torch.zeros_like(b)) for b in cross.bias)
    kernels = [p for n, p in cross.named_parameters() if "kernels" in n]
    assert kernels and all(p.abs().sum() > 0 for p in kernels)
    if cross_type == "mixture":
        assert all(gate.bias is None for gate in cross.gates)
