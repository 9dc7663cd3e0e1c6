"""M2M: the meta unit, meta attention, meta tower and the whole logit against hand computations.

Padding invariance, determinism and the domain test run with the other baselines
(tests/test_baselines.py, ``ARCHS["m2m"]`` and ``ARCHS["m2m_mha"]``); the FX traces and a real batch
through ``RankingModel`` with every registered model (tests/test_fx_trace.py, tests/test_models.py).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from torchrec_mdr.config import ConfigError, from_dict
from torchrec_mdr.models.features import EmbeddedFeatures, EmbeddedSequence, FeatureLayout, SequenceLayout
from torchrec_mdr.models.blocks import TargetAttentionConfig
from torchrec_mdr.models.m2m import M2MArch, M2MConfig, MetaTower, MetaUnit
from torchrec_mdr.models.registry import ModelConfig

B, L, D, K, T = 5, 4, 3, 3, 2
FIELDS = ("user_id", "item_id", "user_level")
LENGTHS = [4, 2, 1, 0, 3]
SLOPE = 0.2


def layout(num_tasks: int = T) -> FeatureLayout:
    sequence = SequenceLayout("hist", ("hist_item_id", "hist_domain"), L, ("item_id",))
    return FeatureLayout(
        fields=FIELDS,
        pooled=frozenset({"user_id", "user_level"}),
        sequences=(sequence,),
        embedding_dim=D,
        num_dense=2,
        num_domains=K,
        num_tasks=num_tasks,
    )


def features(domain: list[int] | None = None) -> EmbeddedFeatures:
    generator = torch.Generator().manual_seed(3)
    mask = torch.arange(L)[None, :] < torch.tensor(LENGTHS)[:, None]
    keys = torch.randn(B, L, 2 * D, generator=generator) * mask[..., None]
    fields = torch.randn(B, len(FIELDS), D, generator=generator)
    return EmbeddedFeatures(
        fields,
        [EmbeddedSequence(keys, mask, fields[:, 1])],
        torch.randn(B, 2, generator=generator),
        torch.tensor(domain or [0, 1, 2, 0, 1]),
    )


def leaky(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x > 0, x, SLOPE * x)


def small_arch(**options) -> M2MArch:
    torch.manual_seed(0)
    config = M2MConfig(num_experts=3, expert_hidden=[6], view_dim=4, meta_layers=2, tower_layers=2, **options)
    return M2MArch(layout(), config).eval()


# --------------------------------------------------------------------------- meta unit


def test_meta_unit_by_hand():
    """n = 2, one scenario value s = 2: W = reshape(V s + c), b = U s + u, h = σ(x W + b)."""
    unit = MetaUnit(2, 1, layers=1, negative_slope=SLOPE)
    with torch.no_grad():
        unit.weight_generators[0].weight.copy_(torch.tensor([[1.0], [0.0], [-1.0], [0.5]]))
        unit.weight_generators[0].bias.copy_(torch.tensor([0.0, 1.0, 0.0, 0.0]))
        unit.bias_generators[0].weight.copy_(torch.tensor([[1.0], [-1.0]]))
        unit.bias_generators[0].bias.copy_(torch.tensor([0.0, -1.0]))
    # W = [[2, 1], [-2, 1]], b = [2, -3]; x = [1, 3]: x W + b = [2 - 6 + 2, 1 + 3 - 3] = [-2, 1]
    out = unit(torch.tensor([[[1.0, 3.0]]]), torch.tensor([[2.0]]))
    torch.testing.assert_close(out, torch.tensor([[[SLOPE * -2.0, 1.0]]]))
    weight, bias = unit.weights(torch.tensor([[2.0]]), 0)
    torch.testing.assert_close(weight, torch.tensor([[[2.0, 1.0], [-2.0, 1.0]]]))
    torch.testing.assert_close(bias, torch.tensor([[[2.0, -3.0]]]))


def test_meta_unit_generates_one_network_per_row():
    torch.manual_seed(0)
    unit = MetaUnit(3, 4, layers=2, negative_slope=SLOPE, last_activation=False)
    x, scenario = torch.randn(B, 2, 3), torch.randn(B, 4)
    out = unit(x, scenario)
    for b in range(B):
        h = x[b]
        for k, (weights, biases) in enumerate(zip(unit.weight_generators, unit.bias_generators)):
            weight = (weights.weight @ scenario[b] + weights.bias).view(3, 3)
            h = h @ weight + biases.weight @ scenario[b] + biases.bias
            h = leaky(h) if k == 0 else h  # last layer linear
        torch.testing.assert_close(out[b], h)


def test_generated_weights_start_at_linear_spread():
    """The meta network of an n x n weight starts as nn.Linear scaled by 1/sqrt(n)."""
    torch.manual_seed(0)
    n, s = 16, 8
    unit = MetaUnit(n, s, layers=1, negative_slope=SLOPE)
    generator = unit.weight_generators[0]
    bound = 1 / math.sqrt(s) / math.sqrt(n)
    assert generator.weight.abs().max() <= bound and generator.weight.abs().max() > 0.9 * bound
    assert generator.bias.abs().max() <= bound
    weight, _ = unit.weights(torch.rand(64, s), 0)
    assert weight.std() < 1 / math.sqrt(n)  # nn.Linear(n, n)'s weight: std 1 / sqrt(3 n)


def test_meta_tower_is_residual():
    torch.manual_seed(0)
    tower = MetaTower(3, 4, layers=2, meta_layers=1, negative_slope=SLOPE)
    x, scenario = torch.randn(B, 3), torch.randn(B, 4)
    h = x
    for unit in tower.units:  # L^j = σ(L^{j-1} W_j + b_j + L^{j-1})
        weight, bias = unit.weights(scenario, 0)
        h = leaky(torch.bmm(h.unsqueeze(1), weight).squeeze(1) + bias.squeeze(1) + h)
    torch.testing.assert_close(tower(x, scenario), h)


# --------------------------------------------------------------------------- the arch


def test_scenario_knowledge_and_task_views():
    arch = small_arch(scenario_features=["user_level"])
    batch = features()
    domain = arch.input.domain_embedding.weight[batch.domain]
    s_input = torch.cat([domain, batch.fields[:, 2]], dim=1)
    torch.testing.assert_close(
        arch.scenario(batch), leaky(s_input @ arch.scenario_view.weight.T + arch.scenario_view.bias)
    )
    tasks = arch.task_views()
    assert tasks.shape == (T, 4)
    torch.testing.assert_close(tasks, leaky(arch.task_embedding.weight @ arch.task_view.weight.T + arch.task_view.bias))


def test_meta_attention_is_a_softmax_over_experts_per_task():
    arch = small_arch()
    batch = features()
    experts = arch.experts(arch.backbone(batch))
    scenario, tasks = arch.scenario(batch), arch.task_views()
    alpha = arch.meta_attention(experts, tasks, scenario)
    assert alpha.shape == (B, T, 3)
    torch.testing.assert_close(alpha.sum(2), torch.ones(B, T))
    for b in range(B):
        for t in range(T):
            scores = []
            for i in range(3):
                pair = torch.cat([experts[b, i], tasks[t]]).view(1, 1, -1)  # E_i ⊕ T_t
                hidden = arch.attention_unit(pair, scenario[b : b + 1])[0, 0]
                scores.append(hidden @ arch.attention_vector.weight[0])  # v_a · Meta(E_i ⊕ T_t)
            torch.testing.assert_close(alpha[b, t], torch.softmax(torch.stack(scores), 0))


def test_logit_is_prediction_of_meta_tower_of_attended_experts():
    arch = small_arch()
    batch = features()
    x = arch.backbone(batch)
    assert x.shape == (B, (len(FIELDS) + 1) * D + 2 + 2 * D)  # FlatInput: fields, domain, dense, mean-pooled
    experts = arch.experts(x)
    scenario = arch.scenario(batch)
    alpha = arch.meta_attention(experts, arch.task_views(), scenario)
    logits = arch(batch)
    assert logits.shape == (B, T)
    for t in range(T):
        mixed = (alpha[:, t, :, None] * experts).sum(1)  # R_t = Σ_i α_{t,i} E_i
        tower = arch.towers[t](mixed, scenario)
        expected = tower @ arch.prediction_weight[t] + arch.prediction_bias[t]
        torch.testing.assert_close(logits[:, t], expected)


def test_a_task_owns_its_tower():
    arch = small_arch()
    batch = features()
    before = arch(batch)
    with torch.no_grad():
        arch.towers[1].units[0].bias_generators[0].bias.add_(1.0)
    after = arch(batch)
    assert torch.equal(after[:, 0], before[:, 0]) and not torch.allclose(after[:, 1], before[:, 1])


def test_the_scenario_changes_the_generated_networks():
    """Same features, another domain: other generated weights (and logits); a row ignores the others' domains."""
    arch = small_arch()
    batch = features(domain=[0] * B)
    logits = arch(batch)
    moved = arch(features(domain=[1, 0, 0, 0, 0]))
    assert not torch.allclose(moved[0], logits[0])
    torch.testing.assert_close(moved[1:], logits[1:], rtol=0, atol=0)


def test_multi_head_sequence_pooling():
    arch = small_arch(backbone="mha", attention=TargetAttentionConfig(heads=2, head_dim=5))
    assert arch.pooling.out_features == 2 * 5
    x = arch.backbone(features())
    assert x.shape == (B, arch.input.width + arch.pooling.out_features)
    assert arch(features()).shape == (B, T)


def test_one_task():
    torch.manual_seed(0)
    arch = M2MArch(layout(num_tasks=1), M2MConfig(view_dim=4, expert_hidden=[]))
    assert arch(features()).shape == (B, 1) and len(arch.towers) == 1


# --------------------------------------------------------------------------- options


def test_options_are_checked_at_load():
    config = from_dict(ModelConfig, {"name": "m2m", "m2m": {"num_experts": 2, "backbone": "mha"}}, prefix="model")
    assert config.m2m.num_experts == 2 and config.m2m.backbone == "mha"
    for options, key in [
        ({"num_experts": 0}, "num_experts"),
        ({"view_dim": 0}, "view_dim"),
        ({"tower_layers": 0}, "tower_layers"),
        ({"negative_slope": 1.0}, "negative_slope"),
        ({"backbone": "gru"}, "backbone"),
        ({"expert_hidden": [0]}, "expert_hidden"),
    ]:
        with pytest.raises(ConfigError, match=f"model.m2m(\\.|: ){key}"):
            from_dict(ModelConfig, {"m2m": options}, prefix="model")


@pytest.mark.parametrize(
    "options, message",
    [
        ({"scenario_features": ["foo"]}, r"model.m2m.scenario_features: 'foo' is not an id feature"),
        ({"scenario_features": ["user_level", "user_level"]}, "model.m2m.scenario_features: duplicate"),
        ({"backbone": "gru"}, "model.m2m.backbone: 'gru' is not one of"),
    ],
)
def test_bad_options_building_the_arch(options, message):
    with pytest.raises(ConfigError, match=message):
        M2MArch(layout(), M2MConfig(**options))


def test_every_parameter_learns():
    arch = small_arch(scenario_features=["user_level"]).train()
    arch(features()).sum().backward()
    silent = [n for n, p in arch.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not silent
    assert isinstance(arch.attention_vector, nn.Linear) and arch.attention_vector.bias is None
