"""AdaSparse: the weighting factors of each variant by hand, the pruned network against a hand-written
loop, the temperature schedule's step counter, the flexible sparsity regularisation, option errors.

Padding invariance, determinism and the domain test run with the other baselines
(tests/test_baselines.py, ``ARCHS["adasparse"]``); the FX traces and a real batch through
``RankingModel`` with every registered model (tests/test_fx_trace.py, tests/test_models.py).
"""

from __future__ import annotations

import math

import pytest
import torch

from torchrec_mdr.config import ConfigError, from_dict
from torchrec_mdr.models.adasparse import AdaSparseArch, AdaSparseConfig, DomainPruner, sparsity_loss, weighting_factors
from torchrec_mdr.models.features import ArchOutput, EmbeddedFeatures, EmbeddedSequence, FeatureLayout, SequenceLayout
from torchrec_mdr.models.registry import ModelConfig

B, L, D, K, T = 5, 4, 3, 3, 2
LENGTHS = [4, 2, 1, 0, 3]
FIELDS = ("user_id", "item_id", "position")


def layout() -> FeatureLayout:
    sequence = SequenceLayout("hist", ("hist_item_id", "hist_domain"), L, ("item_id",))
    return FeatureLayout(
        fields=FIELDS,
        pooled=frozenset({"user_id", "position"}),
        sequences=(sequence,),
        embedding_dim=D,
        num_dense=2,
        num_domains=K,
        num_tasks=T,
    )


def features() -> EmbeddedFeatures:
    generator = torch.Generator().manual_seed(3)
    mask = torch.arange(L)[None, :] < torch.tensor(LENGTHS)[:, None]
    keys = torch.randn(B, L, 2 * D, generator=generator) * mask[..., None]
    fields = torch.randn(B, len(FIELDS), D, generator=generator)
    return EmbeddedFeatures(
        fields,
        [EmbeddedSequence(keys, mask, fields[:, 1])],
        torch.randn(B, 2, generator=generator),
        torch.tensor([0, 1, 2, 0, 1]),
    )


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# --------------------------------------------------------------------------- weighting factors


def test_weighting_factors_by_hand():
    v = torch.tensor([[-2.0, 0.0, 1.5]])
    for variant, alpha, beta, expected in [
        ("binarization", 3.0, 2.0, [sigmoid(-6.0), 0.5, sigmoid(4.5)]),  # σ(α v), β unused
        ("scaling", 3.0, 2.0, [2 * sigmoid(-2.0), 1.0, 2 * sigmoid(1.5)]),  # β σ(v), α unused
        ("fusion", 3.0, 2.0, [2 * sigmoid(-6.0), 1.0, 2 * sigmoid(4.5)]),  # β σ(α v)
    ]:
        got = weighting_factors(v, variant, torch.tensor(alpha), beta)
        torch.testing.assert_close(got, torch.tensor([expected]), msg=variant)


def test_growing_temperature_tends_to_binary_factors():
    v = torch.tensor([[-0.3, 0.2, 1.0, -1.0]])
    binary = weighting_factors(v, "binarization", torch.tensor(1e4), 2.0)
    torch.testing.assert_close(binary, torch.tensor([[0.0, 1.0, 1.0, 0.0]]))
    fused = weighting_factors(v, "fusion", torch.tensor(1e4), 2.0)
    torch.testing.assert_close(fused, torch.tensor([[0.0, 2.0, 2.0, 0.0]]))


def test_pruner_is_one_linear_map_of_domain_and_layer_input_then_threshold():
    config = AdaSparseConfig(variant="scaling", beta=2.0, epsilon=0.5)
    pruner = DomainPruner(2, 1, 3, config)
    with torch.no_grad():  # columns: [e_d | h_in]
        pruner.linear.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, -1.0], [-2.0, 0.0, 0.0]]))
        pruner.linear.bias.copy_(torch.tensor([0.0, 0.5, -1.0]))
    h_in, domain = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.5]])
    pruned, gate = pruner(h_in, domain, torch.tensor(1.0))
    v = [0.5, 1.0 - 2.0 + 0.5, -1.0 - 1.0]  # W_p [e_d ⊕ h] + b
    g = [2 * sigmoid(x) for x in v]  # 1.245, 0.755, 0.238
    torch.testing.assert_close(gate, torch.tensor([g]))
    torch.testing.assert_close(pruned, torch.tensor([[g[0], g[1], 0.0]]))  # 0.238 < ε = 0.5: pruned exactly


# --------------------------------------------------------------------------- the pruned network


def network_by_hand(arch: AdaSparseArch, batch: EmbeddedFeatures) -> torch.Tensor:
    """Row by row, layer by layer, the module docstring's equations (float64)."""
    flat = arch.input(batch).double()
    alpha = arch.config.alpha + arch.config.alpha_step * int(arch.step)
    rows = []
    for b in range(B):
        e_d = torch.cat(
            [arch.input.domain_embedding.weight[batch.domain[b]], batch.fields[b, FIELDS.index("position")]]
        ).double()
        h = flat[b]
        for layer, pruner in zip(arch.layers, arch.pruners):
            v = pruner.linear.weight.double() @ torch.cat([e_d, h]) + pruner.linear.bias.double()
            g = arch.config.beta * torch.sigmoid(alpha * v)  # fusion
            pi = torch.where(g >= arch.config.epsilon, g, torch.zeros_like(g))
            h = torch.relu(layer.weight.double() @ h + layer.bias.double()) * pi
        rows.append(arch.output.weight.double() @ h + arch.output.bias.double())
    return torch.stack(rows).float()


def test_logits_match_the_hand_written_network():
    torch.manual_seed(0)
    arch = AdaSparseArch(
        layout(), AdaSparseConfig(hidden=[6, 4], domain_features=["position"], alpha=1.5, alpha_step=0.25, epsilon=0.9)
    ).eval()
    batch = features()
    assert arch.pruners[0].linear.in_features == 2 * D + arch.input.width  # e_d = domain id ⊕ position
    arch.step.fill_(4)  # α_t = 1.5 + 4 * 0.25 = 2.5
    logits = arch(batch)
    assert logits.shape == (B, T)
    torch.testing.assert_close(logits, network_by_hand(arch, batch), rtol=1e-5, atol=1e-5)
    _, factors, _ = arch.pruned_network(batch)
    assert any((f == 0).any() for f in factors)  # the threshold pruned some neurons (the hand loop covered it)
    assert int(arch.step) == 4  # evaluation does not count


def test_a_pruned_neuron_is_zero_and_passes_no_gradient_to_its_weights():
    torch.manual_seed(0)
    arch = AdaSparseArch(layout(), AdaSparseConfig(hidden=[5], epsilon=1.0, sparsity_weight=0.0)).train()
    with torch.no_grad():
        arch.pruners[0].linear.bias[0] = -50.0  # neuron 0: g ≈ 0 < ε for every row
        arch.pruners[0].linear.bias[1] = 50.0  # neuron 1: g ≈ β, kept for every row
        arch.layers[0].bias[:2] = 5.0  # and both neurons active (ReLU > 0)
    batch = features()
    hidden, factors, _ = arch.pruned_network(batch)
    assert torch.equal(factors[0][:, 0], torch.zeros(B)) and torch.equal(hidden[:, 0], torch.zeros(B))
    arch(batch).sum().backward()
    assert torch.equal(arch.layers[0].weight.grad[0], torch.zeros_like(arch.layers[0].weight.grad[0]))
    assert arch.layers[0].weight.grad[1].abs().sum() > 0


def test_domain_changes_the_factors():
    torch.manual_seed(0)
    arch = AdaSparseArch(layout(), AdaSparseConfig(hidden=[6])).eval()
    batch = features()
    _, before, _ = arch.pruned_network(batch)
    batch.domain = (batch.domain + 1) % K
    _, after, _ = arch.pruned_network(batch)
    assert not torch.allclose(before[0], after[0])


# --------------------------------------------------------------------------- temperature schedule


def test_training_passes_are_counted_and_grow_alpha_and_the_count_is_saved():
    torch.manual_seed(0)
    arch = AdaSparseArch(layout(), AdaSparseConfig(hidden=[4], alpha=1.0, alpha_step=0.5))
    assert int(arch.step) == 0 and float(arch.alpha()) == 1.0
    batch = features()
    arch.train()
    for _ in range(3):
        arch(batch)
    assert int(arch.step) == 3 and float(arch.alpha()) == 2.5
    arch.eval()
    arch(batch)
    assert int(arch.step) == 3
    state = arch.state_dict()
    assert int(state["step"]) == 3
    resumed = AdaSparseArch(layout(), AdaSparseConfig(hidden=[4], alpha=1.0, alpha_step=0.5))
    resumed.load_state_dict(state)
    assert float(resumed.alpha()) == 2.5
    torch.testing.assert_close(resumed.eval()(batch), arch(batch))


def test_the_first_training_pass_uses_the_initial_alpha():
    torch.manual_seed(0)
    arch = AdaSparseArch(layout(), AdaSparseConfig(hidden=[4], alpha=1.0, alpha_step=10.0, sparsity_weight=0.0))
    batch = features()
    expected = arch.eval()(batch)  # α = 1 at step 0
    torch.testing.assert_close(arch.train()(batch), expected)  # no dropout: the same pass, then step 1
    assert not torch.allclose(arch.train()(batch), expected)  # α = 11


# --------------------------------------------------------------------------- sparsity regularisation


def test_sparsity_loss_switches_sign_with_the_measured_sparsity():
    soft = [
        torch.tensor([[0.2, 0.6, 1.0, 1.4]]),
        torch.tensor([[0.1, 0.1, 0.3, 0.5]]),
        torch.tensor([[0.1, 0.9, 0.9, 0.5]]),
    ]
    pruned = [
        torch.tensor([[0.0, 0.6, 1.0, 1.4]]),  # 1/4 pruned < 0.5 - 0.1: too dense, +λ
        torch.tensor([[0.0, 0.0, 0.0, 0.5]]),  # 3/4 > 0.6: too sparse, -λ
        torch.tensor([[0.0, 0.9, 0.9, 0.0]]),
    ]  # 1/2 in the band: 0
    loss = sparsity_loss(pruned, soft, target=0.5, tolerance=0.1, weight=0.2)
    expected = 0.2 * (0.2 + 0.6 + 1.0 + 1.4) / 4 - 0.2 * (0.1 + 0.1 + 0.3 + 0.5) / 4
    torch.testing.assert_close(loss, torch.tensor(expected))


def test_training_returns_the_regularisation_and_it_pushes_factors_down_when_too_dense():
    torch.manual_seed(0)
    config = AdaSparseConfig(hidden=[6, 4], sparsity_target=0.8, sparsity_tolerance=0.1, sparsity_weight=0.5)
    arch = AdaSparseArch(layout(), config).train()
    batch = features()
    _, factors, soft = arch.pruned_network(batch)
    assert all(float(f.eq(0).float().mean()) < 0.7 for f in factors)  # fusion at initialisation: ≈ 1, dense
    output = arch(batch)
    assert isinstance(output, ArchOutput) and output.logits.shape == (B, T)
    torch.testing.assert_close(output.auxiliary_loss, 0.5 * sum(g.mean() for g in soft))
    output.auxiliary_loss.backward()
    # d(mean g)/d(bias_j) = mean over rows of g'(v) > 0 for every pruner bias: descent lowers the factors
    assert (arch.pruners[0].linear.bias.grad > 0).all()
    arch.zero_grad()
    off = AdaSparseArch(layout(), AdaSparseConfig(hidden=[6], sparsity_weight=0.0)).train()
    assert isinstance(off(batch), torch.Tensor)


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    "config, message",
    [
        (AdaSparseConfig(hidden=[]), "model.adasparse: hidden"),
        (AdaSparseConfig(variant="binarization", epsilon=1.0), r"model.adasparse: epsilon \(1.0\) must be below"),
        (AdaSparseConfig(variant="fusion", beta=0.5, epsilon=0.5), "every neuron would be pruned"),
        (AdaSparseConfig(domain_features=["foo"]), "model.adasparse.domain_features: 'foo' is not an id feature"),
        (AdaSparseConfig(domain_features=["position", "position"]), "model.adasparse.domain_features: duplicate"),
    ],
)
def test_bad_options_are_config_errors(config, message):
    with pytest.raises(ConfigError, match=message):
        AdaSparseArch(layout(), config)


def test_options_are_checked_at_load():
    config = from_dict(
        ModelConfig, {"name": "adasparse", "adasparse": {"variant": "scaling", "hidden": [8]}}, prefix="model"
    )
    assert config.adasparse.variant == "scaling" and config.adasparse.hidden == [8]
    for options, message in [
        ({"variant": "step"}, "model.adasparse.variant"),
        ({"sparsity_target": 1.5}, "model.adasparse.sparsity_target"),
        ({"beta": 0}, "model.adasparse.beta"),
        ({"hidden": []}, "model.adasparse: hidden"),
        ({"dropout": 1.0}, "model.adasparse.dropout"),
    ]:
        with pytest.raises(ConfigError, match=message):
            from_dict(ModelConfig, {"adasparse": options}, prefix="model")
