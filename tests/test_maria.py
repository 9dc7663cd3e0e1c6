"""MARIA: feature scaling, the refiners' selection, the field correlations, the coupling gate and the logits
against hand computations; the options.

Padding invariance, determinism and the per-scenario towers' gradients run with the other baselines
(tests/test_baselines.py, ``ARCHS["maria"]``); the FX traces, DMP and a real batch through ``RankingModel``
with every registered model (tests/test_fx_trace.py, tests/test_distributed.py, tests/test_models.py).
"""

from __future__ import annotations

import pytest
import torch

from torchrec_mdr.config import ConfigError, from_dict
from torchrec_mdr.models.features import EmbeddedFeatures, EmbeddedSequence, FeatureLayout, SequenceLayout
from torchrec_mdr.models.maria import FieldCorrelation, FieldRefiner, MARIAArch, MARIAConfig, coupling_gate
from torchrec_mdr.models.registry import ModelConfig

B, L, D, K, T = 5, 4, 3, 3, 2
LENGTHS = [4, 2, 1, 0, 3]
DOMAINS = [0, 1, 2, 0, 2]


def layout(num_dense: int = 2, num_domains: int = K) -> FeatureLayout:
    sequence = SequenceLayout("hist", ("hist_item_id", "hist_domain"), L, ("item_id",))
    return FeatureLayout(
        fields=("user_id", "item_id", "user_activity"),
        pooled=frozenset({"user_id"}),
        sequences=(sequence,),
        embedding_dim=D,
        num_dense=num_dense,
        num_domains=num_domains,
        num_tasks=T,
    )


def features(num_dense: int = 2, domain: list[int] = DOMAINS) -> EmbeddedFeatures:
    generator = torch.Generator().manual_seed(3)
    mask = torch.arange(L)[None, :] < torch.tensor(LENGTHS)[:, None]
    keys = torch.randn(B, L, 2 * D, generator=generator) * mask[..., None]
    fields = torch.randn(B, 3, D, generator=generator)
    return EmbeddedFeatures(
        fields,
        [EmbeddedSequence(keys, mask, fields[:, 1])],
        torch.randn(B, num_dense, generator=generator),
        torch.tensor(domain),
    )


def small(**options) -> MARIAConfig:
    values = dict(
        scaling_hidden=5,
        num_refiners=2,
        refiner_dim=3,
        correlation_dim=4,
        num_experts=3,
        expert_hidden=[6],
        tower_hidden=[4],
    )
    return MARIAConfig(**{**values, **options})


def test_fields_are_id_fields_pooled_sequence_and_dense():
    arch = MARIAArch(layout(), small(backbone="mean"))
    assert arch.widths == [D, D, D, 2 * D, 2]
    batch = features()
    scenario = arch.scenario(batch)
    torch.testing.assert_close(scenario, arch.scenario_embedding.weight[batch.domain])
    with torch.no_grad():  # a gate of exactly 1 everywhere: FS passes the raw fields
        arch.scaling.gate.second.weight.zero_()
        arch.scaling.gate.second.bias.fill_(0.0)  # 2 σ(0) = 1
    fields = arch.scaled_fields(batch, scenario)
    for i in range(3):
        torch.testing.assert_close(fields[i], batch.fields[:, i])
    torch.testing.assert_close(fields[3], batch.sequences[0].mean())
    torch.testing.assert_close(fields[4], batch.dense)
    assert MARIAArch(layout(num_dense=0), small()).widths == [D, D, D, 2 * D]  # no dense field


def test_scenario_features_join_the_scenario_vector():
    arch = MARIAArch(layout(), small(scenario_features=["user_activity"]))
    batch = features()
    expected = torch.cat([arch.scenario_embedding.weight[batch.domain], batch.fields[:, 2]], dim=1)
    torch.testing.assert_close(arch.scenario(batch), expected)


def test_feature_scaling_is_two_sigmoid_per_element_and_stops_the_gradient():
    """ĥ = 2 σ(W2 ReLU(W1 [e_s ⊕ sg(h)] + b1) + b2) ⊙ h; d(Σ ĥ)/dh is the gate itself."""
    torch.manual_seed(0)
    arch = MARIAArch(layout(), small(backbone="mean"))
    batch = features()
    batch.fields.requires_grad_(True)
    scenario = arch.scenario(batch).detach()
    fields = arch.scaled_fields(batch, scenario)
    h = torch.cat([batch.fields.flatten(1), batch.sequences[0].mean(), batch.dense], dim=1)
    gate = arch.scaling.gate
    hidden = torch.relu(torch.cat([scenario, h], dim=1) @ gate.first.weight.T + gate.first.bias)
    factor = 2 * torch.sigmoid(hidden @ gate.second.weight.T + gate.second.bias)
    assert factor.shape == h.shape  # one factor per element
    torch.testing.assert_close(torch.cat(fields, dim=1), factor * h)
    torch.cat(fields, dim=1).sum().backward()
    torch.testing.assert_close(batch.fields.grad, factor[:, : 3 * D].detach().view(B, 3, D))


def test_refiner_selection_and_weighted_concatenation():
    """Evaluation: β = softmax(sigmoid(W [h ⊕ e_s] + b) / τ); h̃ = [β_1 ReLU(FC_1 h) ⊕ β_2 ReLU(FC_2 h)]."""
    torch.manual_seed(0)
    refiner = FieldRefiner(4, 3, num_refiners=2, refiner_dim=5, temperature=0.5).eval()
    h, scenario = torch.randn(6, 4), torch.randn(6, 3)
    z = torch.sigmoid(torch.cat([h, scenario], 1) @ refiner.selector.weight.T + refiner.selector.bias)
    beta = torch.exp(z / 0.5) / torch.exp(z / 0.5).sum(1, keepdim=True)
    torch.testing.assert_close(refiner.selection(h, scenario), beta)
    w, b = refiner.refiners.weight, refiner.refiners.bias
    expected = torch.cat([beta[:, k : k + 1] * torch.relu(h @ w[k] + b[k]) for k in range(2)], dim=1)
    out = refiner(h, scenario)
    assert out.shape == (6, 10) and refiner.out_features == 10
    torch.testing.assert_close(out, expected)
    assert torch.equal(refiner(h, scenario), out)  # no noise in evaluation


def test_training_selection_is_gumbel_softmax_of_the_sigmoids():
    torch.manual_seed(0)
    refiner = FieldRefiner(4, 3, num_refiners=3, refiner_dim=2, temperature=0.7).train()
    h, scenario = torch.randn(200, 4), torch.randn(200, 3)
    z = torch.sigmoid(refiner.selector(torch.cat([h, scenario], 1)))
    torch.manual_seed(5)
    beta = refiner.selection(h, scenario)
    torch.manual_seed(5)  # the same noise, drawn by hand: g = -log(Exp(1))
    gumbel = -torch.empty_like(z).exponential_().log()
    torch.testing.assert_close(beta, torch.softmax((z + gumbel) / 0.7, dim=-1))
    torch.testing.assert_close(beta.sum(1), torch.ones(200))
    assert not torch.allclose(beta, refiner.eval().selection(h, scenario))  # noisy in training
    one = FieldRefiner(4, 3, num_refiners=1, refiner_dim=2, temperature=0.7).train()
    assert torch.equal(one.selection(h, scenario), torch.ones(200, 1))  # one refiner: β = 1


def test_field_correlation_is_every_pair_of_projected_fields():
    """Q_C = [h̄_1·h̄_2, h̄_1·h̄_3, h̄_2·h̄_3], h̄_f = P_f h_f; checked by a loop and on numbers."""
    torch.manual_seed(0)
    fcm = FieldCorrelation([3, 2, 4], dim=5)
    fields = [torch.randn(6, 3), torch.randn(6, 2), torch.randn(6, 4)]
    projected = [f @ p.weight.T for f, p in zip(fields, fcm.projections)]
    expected = torch.stack([(projected[i] * projected[j]).sum(1) for i, j in [(0, 1), (0, 2), (1, 2)]], dim=1)
    assert fcm.out_features == 3
    torch.testing.assert_close(fcm(fields), expected)
    identity = FieldCorrelation([2, 2, 2], dim=2)
    with torch.no_grad():
        for p in identity.projections:
            p.weight.copy_(torch.eye(2))
    values = [torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([[-1.0, 3.0]])]
    assert identity(values).tolist() == [[2.0, 5.0, 3.0]]
    assert FieldCorrelation([4], dim=2)([torch.randn(3, 4)]).shape == (3, 0)  # one field: no pair


def test_coupling_gate_by_hand():
    """e = [[1,0],[0,2],[1,1]]: α_0 = (0 + 1)/2, α_1 = (0 + 2)/2, α_2 = (1 + 2)/2."""
    embeddings = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    assert coupling_gate(embeddings).tolist() == [0.5, 1.0, 1.5]
    assert coupling_gate(torch.tensor([[3.0, 4.0]])).tolist() == [0.0]  # one scenario: no other


def test_logits_are_own_scenario_tower_plus_alpha_times_extra():
    torch.manual_seed(0)
    arch = MARIAArch(layout(), small()).eval()
    batch = features()
    scenario = arch.scenario(batch)
    x = arch.mixture_input(arch.scaled_fields(batch, scenario), scenario)
    width = sum(r.out_features for r in arch.refiners) + arch.correlation.out_features
    assert x.shape == (B, width) and width == 5 * 2 * 3 + 10
    gate = torch.softmax(torch.cat([x, scenario], 1) @ arch.expert_selector.weight.T + arch.expert_selector.bias, 1)
    experts = arch.experts(x)
    mixed = sum(gate[:, e : e + 1] * experts[:, e] for e in range(3))
    per_scenario = arch.towers.towers(mixed)  # [B, K, T]
    e = arch.scenario_embedding.weight
    logits = arch(batch)
    assert logits.shape == (B, T)
    for b, s in enumerate(DOMAINS):
        alpha = sum(e[s] @ e[j] for j in range(K) if j != s) / (K - 1)
        torch.testing.assert_close(logits[b], per_scenario[b, s] + alpha * arch.extra(mixed[b]))


def test_one_domain_keeps_the_extra_tower_in_the_graph():
    torch.manual_seed(0)
    arch = MARIAArch(layout(num_domains=1), small())
    arch(features(domain=[0] * B)).sum().backward()
    assert all(p.grad is not None and torch.equal(p.grad, torch.zeros_like(p.grad)) for p in arch.extra.parameters())


def test_bad_options_are_config_errors():
    config = from_dict(ModelConfig, {"name": "maria", "maria": {"num_refiners": 1, "backbone": "mha"}}, prefix="model")
    assert config.maria.num_refiners == 1 and config.maria.backbone == "mha"
    for key, value in [
        ("num_refiners", 0),
        ("gumbel_temperature", 0.0),
        ("refiner_dim", 0),
        ("dropout", 1.0),
        ("expert_hidden", [8, 0]),
    ]:
        with pytest.raises(ConfigError, match=f"model.maria.{key}"):
            from_dict(ModelConfig, {"maria": {key: value}}, prefix="model")
    with pytest.raises(ConfigError, match="model.maria: backbone: 'gru' is not one of"):
        from_dict(ModelConfig, {"maria": {"backbone": "gru"}}, prefix="model")
    with pytest.raises(ConfigError, match="model.maria.backbone"):
        MARIAArch(layout(), MARIAConfig(backbone="gru"))
    with pytest.raises(ConfigError, match="model.maria.expert_hidden"):
        MARIAArch(layout(), MARIAConfig(expert_hidden=[]))
    with pytest.raises(ConfigError, match="model.maria.scenario_features: 'city'"):
        MARIAArch(layout(), MARIAConfig(scenario_features=["city"]))
    empty = FeatureLayout(
        fields=(), pooled=frozenset(), sequences=(), embedding_dim=D, num_dense=0, num_domains=K, num_tasks=1
    )
    with pytest.raises(ConfigError, match="model.maria: the dataset has no"):
        MARIAArch(empty, MARIAConfig())
