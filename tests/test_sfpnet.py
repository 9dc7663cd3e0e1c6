"""SFPNet: distribution-aware pooling, SAM and RTM against hand computations of eqs 2–7, the S-DNN,
padding invariance, the ablation switches, block stacking and configuration errors."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from torchrec_mdr.config import ConfigError, load_config
from torchrec_mdr.experiment import ExperimentConfig
from torchrec_mdr.models.features import EmbeddedFeatures, EmbeddedSequence, FeatureLayout, SequenceLayout
from torchrec_mdr.models.sfpnet import SFPNetArch, SFPNetConfig
from torchrec_mdr.models.sfpnet_blocks import ScenarioAwareDNN, ScenarioTailoringBlock, distribution_aware_pooling

B, L, D = 5, 6, 4
LENGTHS = [6, 3, 1, 0, 4]  # row 3 is an empty sequence, row 2 a single behaviour


def make_mask(lengths: list[int] = LENGTHS) -> torch.Tensor:
    return torch.arange(L)[None, :] < torch.tensor(lengths)[:, None]


def layout() -> FeatureLayout:
    """Two id fields (user, item), one sequence group of two fields (d_g = 2D) whose candidate is item."""
    sequence = SequenceLayout("hist", ("hist_item", "hist_kind"), L, ("item",))
    return FeatureLayout(
        fields=("user", "item"),
        pooled=frozenset({"user"}),
        sequences=(sequence,),
        embedding_dim=D,
        num_dense=3,
        num_domains=3,
        num_tasks=2,
    )


def features(mask: torch.Tensor | None = None, seed: int = 1) -> EmbeddedFeatures:
    mask = make_mask() if mask is None else mask
    generator = torch.Generator().manual_seed(seed)
    fields = torch.randn(B, 2, D, generator=generator)
    keys = torch.randn(B, L, 2 * D, generator=generator) * mask[..., None]
    return EmbeddedFeatures(
        fields,
        [EmbeddedSequence(keys, mask, fields[:, 1])],
        torch.randn(B, 3, generator=generator),
        torch.tensor([0, 1, 2, 0, 1]),
    )


def small(**overrides) -> SFPNetConfig:
    settings = dict(
        num_blocks=1, sam_hidden=6, context_hidden=7, attention_hidden=[5], hidden=[8, 4], dnn_gate_hidden=3
    )
    settings.update(overrides)
    return SFPNetConfig(**settings)


def randomise(module: torch.nn.Module, seed: int = 3) -> None:
    """Set every parameter (layer-norm affine included) to non-default random values."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(0.5 * torch.randn(parameter.shape, generator=generator))


# --------------------------------------------------------------------------- eq 2: distribution-aware pooling


def test_dap_is_mean_and_std_of_the_real_positions_only():
    torch.manual_seed(0)
    mask = make_mask()
    keys = torch.randn(B, L, 3)
    pooled = distribution_aware_pooling(keys, mask)
    assert pooled.shape == (B, 6)
    for b, n in enumerate(LENGTHS):
        real = keys[b, :n].double()
        mean = real.sum(0) / max(n, 1)
        # eq 2 literally: sqrt(E[b^2] - E[b]^2), the population (1/N_b) variance
        variance = (real.pow(2).sum(0) / max(n, 1) - mean.pow(2)).clamp_min(0)
        torch.testing.assert_close(pooled[b].double(), torch.cat([mean, variance.sqrt()]), rtol=1e-5, atol=1e-6)
    assert torch.equal(pooled[3], torch.zeros(6))  # empty sequence: zeros, not NaN
    assert torch.equal(pooled[2, 3:], torch.zeros(3))  # one behaviour: std exactly 0
    # padded positions change nothing, bit for bit
    noisy = torch.where(mask[..., None], keys, 1e3 * torch.randn(B, L, 3))
    assert torch.equal(distribution_aware_pooling(noisy, mask), pooled)
    # w/o DAP: the mean only
    torch.testing.assert_close(distribution_aware_pooling(keys, mask, with_std=False), pooled[:, :3])


def test_dap_gradient_is_finite_for_empty_and_single_behaviour_sequences():
    torch.manual_seed(0)
    keys = torch.randn(B, L, 3, requires_grad=True)
    distribution_aware_pooling(keys, make_mask()).sum().backward()
    assert torch.isfinite(keys.grad).all()
    assert torch.equal(keys.grad[~make_mask()], torch.zeros_like(keys.grad[~make_mask()]))


# --------------------------------------------------------------------------- eqs 3-7 by hand


def layer_norm(h: torch.Tensor, norm: torch.nn.LayerNorm) -> torch.Tensor:
    centred = h - h.mean()
    return centred / torch.sqrt(centred.pow(2).mean() + norm.eps) * norm.weight + norm.bias


def test_sam_gate_and_rtm_recoding_match_eqs_3_to_7_for_one_sample():
    n, d, d_g, d_s = 2, 3, 4, 2
    block = ScenarioTailoringBlock(
        n, d, [d_g], d_s, use_sam=True, use_rtm=True, with_std=True, sam_hidden=5, context_hidden=6
    )
    randomise(block)
    torch.manual_seed(0)
    mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    fields, keys, scenario = torch.randn(2, n, d), torch.randn(2, 4, d_g) * mask[..., None], torch.randn(2, d_s)
    out_fields, (out_keys,) = block(fields, [keys], [mask], scenario)

    x, v, s = fields[0], keys[0, :3], scenario[0]  # sample 0, its 3 real behaviours
    pooled = torch.cat([v.mean(0), v.std(0, unbiased=False)])  # eq 2
    sam, rtm = block.sam.gate, block.rtm
    X = torch.cat([x.flatten(), pooled, s])
    A = torch.sigmoid(
        sam.out.weight @ layer_norm(torch.relu(sam.hidden.weight @ X + sam.hidden.bias), sam.norm) + sam.out.bias
    )  # eq 3
    assert A.shape == (n * d + 2 * d_g,)
    X_hat = torch.cat([x.flatten(), pooled]) * A  # eq 4
    first, second = rtm.aggregate[0], rtm.aggregate[2]
    C = second.weight @ torch.relu(first.weight @ X_hat + first.bias) + second.bias  # eq 5
    # the chosen sequence-context width: one d_g slice per group (not the paper's 2d)
    assert C.shape == (n * d + d_g,) and rtm.context_width == n * d + d_g
    for i in range(n):  # eq 6 on the SAM output x̂_i, with field i's own weights
        x_hat = X_hat[i * d : (i + 1) * d]
        t, g = rtm.field_transform, rtm.field_gate
        expected = (
            torch.relu(x_hat @ t.weight[i] + t.bias[i])
            + torch.sigmoid(x_hat @ g.weight[i] + g.bias[i]) * C[i * d : (i + 1) * d]
        )
        torch.testing.assert_close(out_fields[0, i], expected)
    c_b = C[n * d :]
    W4, W5 = rtm.behaviour_transform[0], rtm.behaviour_gate[0]
    for t in range(3):  # eq 7 on the previous block's (ungated) behaviour
        expected = torch.relu(W4.weight @ v[t] + W4.bias) + torch.sigmoid(W5.weight @ v[t] + W5.bias) * c_b
        torch.testing.assert_close(out_keys[0, t], expected)
    assert torch.equal(out_keys[0, 3], torch.zeros(d_g))  # padding stays zero
    assert torch.equal(out_keys[1, 1:], torch.zeros(3, d_g))


def test_scenario_aware_dnn_matches_eqs_10_and_11():
    dnn = ScenarioAwareDNN(5, [4], num_tasks=1, scenario_width=2, gate_hidden=3, dropout=0.0)
    randomise(dnn)
    h, s = torch.randn(5), torch.randn(2)
    expected = h
    for layer, last in zip(dnn.layers, [False, True]):
        gate = layer.gate
        A = torch.sigmoid(
            gate.out.weight
            @ layer_norm(torch.relu(gate.hidden.weight @ torch.cat([expected, s]) + gate.hidden.bias), gate.norm)
            + gate.out.bias
        )
        expected = layer.linear.weight @ (expected * A) + layer.linear.bias
        expected = expected if last else torch.relu(expected)  # the output layer: gated, no activation
    torch.testing.assert_close(dnn(h[None], s[None])[0], expected)


def test_gate_scale_is_gamma_times_the_paper_gate_and_passes_the_input_at_unit_scale_at_init():
    """dnn_gate_scale = γ (eq 10 with A = γ·σ(·)): with γ = 2 a gate starts ≈ 1, not ≈ ½."""
    torch.manual_seed(0)
    paper = ScenarioAwareDNN(40, [32, 16], num_tasks=1, scenario_width=4, gate_hidden=8, dropout=0.0)
    scaled = ScenarioAwareDNN(40, [32, 16], num_tasks=1, scenario_width=4, gate_hidden=8, dropout=0.0, gate_scale=2.0)
    scaled.load_state_dict(paper.state_dict())  # same parameter names and shapes as the default
    h, s = torch.randn(4096, 40), torch.randn(4096, 4)
    z = torch.cat([h, s], dim=-1)
    gate_paper, gate_scaled = paper.layers[0].gate(z), scaled.layers[0].gate(z)
    torch.testing.assert_close(gate_scaled, 2.0 * gate_paper)
    assert gate_scaled.min() > 0 and gate_scaled.max() < 2
    # default initialisation: the paper's gate halves the input, γ = 2 keeps its scale (within 5 %)
    assert abs(gate_paper.mean().item() - 0.5) < 0.05 and abs(gate_scaled.mean().item() - 1.0) < 0.05
    rms = (h * gate_scaled).pow(2).mean().sqrt() / h.pow(2).mean().sqrt()
    assert 0.95 < rms.item() < 1.15  # E[A²] = E[A]² + Var A: a little above 1
    # eqs 10-11 with γ, layer by layer, the gated output layer included
    expected = h[:3]
    for layer, last in zip(scaled.layers, [False, False, True]):
        gate = 2.0 * torch.sigmoid(
            layer.gate.out(layer.gate.norm(torch.relu(layer.gate.hidden(torch.cat([expected, s[:3]], dim=-1)))))
        )
        expected = layer.linear(expected * gate)
        expected = expected if last else torch.relu(expected)
    torch.testing.assert_close(scaled(h[:3], s[:3]), expected)


def test_ungated_output_layer_is_a_plain_linear_over_the_last_hidden_layer():
    torch.manual_seed(0)
    gated = ScenarioAwareDNN(6, [5, 4], num_tasks=2, scenario_width=3, gate_hidden=3, dropout=0.0)
    plain = ScenarioAwareDNN(6, [5, 4], num_tasks=2, scenario_width=3, gate_hidden=3, dropout=0.0, gate_output=False)
    assert len(gated.layers) == 3 and gated.output is None  # default: parameter names unchanged
    assert len(plain.layers) == 2 and isinstance(plain.output, torch.nn.Linear)
    assert (plain.output.in_features, plain.output.out_features) == (4, 2)
    randomise(plain)
    h, s = torch.randn(B, 6), torch.randn(B, 3)
    hidden = h
    for layer in plain.layers:
        hidden = layer(hidden, s)
    torch.testing.assert_close(plain(h, s), plain.output(hidden))
    # the scenario still reaches the logits through the hidden layers' gates
    assert not torch.equal(plain(h, s), plain(h, s + 1.0))


def noisy_padding():
    """``features()`` with huge random values in every padded sequence position."""
    noisy = features()
    mask = noisy.sequences[0].mask
    noisy.sequences[0].keys = torch.where(mask[..., None], noisy.sequences[0].keys, 1e3 * torch.randn(B, L, 2 * D))
    return noisy


@pytest.mark.parametrize(
    "options",
    [dict(dnn_gate_scale=2.0), dict(gate_output_layer=False), dict(dnn_gate_scale=2.0, gate_output_layer=False)],
)
def test_s_dnn_options_keep_padding_invariance_and_domain_dependence(options):
    torch.manual_seed(0)
    arch = SFPNetArch(layout(), small(num_blocks=2, **options))
    randomise(arch)
    logits = arch(features())
    assert logits.shape == (B, 2) and torch.isfinite(logits).all()
    assert torch.equal(arch(noisy_padding()), logits)
    other_domain = features()
    other_domain.domain = (other_domain.domain + 1) % 3
    assert not torch.allclose(arch(other_domain), logits)
    logits.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in arch.parameters())


def test_s_dnn_defaults_are_the_papers_literal_form():
    config = SFPNetConfig()
    assert config.dnn_gate_scale == 1.0 and config.gate_output_layer is True
    arch = SFPNetArch(layout(), small())
    assert all(layer.gate.scale == 1.0 for layer in arch.dnn.layers) and arch.dnn.output is None


# --------------------------------------------------------------------------- the whole arch


def test_padded_positions_change_no_output_and_empty_sequences_are_finite():
    torch.manual_seed(0)
    arch = SFPNetArch(layout(), small(num_blocks=2))
    randomise(arch)
    reference_features = features()
    logits = arch(reference_features)
    assert logits.shape == (B, 2) and torch.isfinite(logits).all()
    assert torch.equal(arch(noisy_padding()), logits)
    # a real behaviour does matter
    changed = features()
    changed.sequences[0].keys[0, 5] += 1.0
    assert not torch.equal(arch(changed)[0], logits[0])
    logits.sum().backward()  # rows with 0 and 1 behaviours: no NaN through the std
    assert all(torch.isfinite(p.grad).all() for p in arch.parameters())


def test_query_is_the_tailored_candidate_projected_to_the_key_width():
    torch.manual_seed(0)
    arch = SFPNetArch(layout(), small())
    project, attend = arch.pooling[0].query_projection, arch.pooling[0].attention
    assert project.linear.in_features == D and project.linear.out_features == 2 * D
    seen = {}
    attend.register_forward_hook(lambda module, args, out: seen.update(query=args[0]))
    batch = features()
    arch(batch)
    tailored_fields, _ = arch.tailor(batch, arch.scenario(batch))
    torch.testing.assert_close(seen["query"], project(tailored_fields[:, 1]))  # item is field 1


def test_scenario_vector_is_domain_embedding_plus_listed_features():
    arch = SFPNetArch(layout(), small(scenario_features=["user"]))
    batch = features()
    expected = torch.cat([arch.domain_embedding(batch.domain), batch.fields[:, 0]], dim=-1)
    torch.testing.assert_close(arch.scenario(batch), expected)
    default = SFPNetArch(layout(), small())
    assert default.scenario(batch).shape == (B, D)  # the domain-id embedding alone by default
    # the SAM gate reads x ⊕ B ⊕ s_m: n·d + 2·d_g + |s_m|
    assert default.blocks[0].sam.gate.hidden.in_features == 2 * D + 2 * 2 * D + D
    assert arch.blocks[0].sam.gate.hidden.in_features == 2 * D + 2 * 2 * D + 2 * D


def test_gate_stop_gradient_detaches_only_the_s_dnn_gates_view_of_the_scenario_features():
    """Same logits; the gradient into the scenario feature's embedding is the default's minus the
    part that flows through the S-DNN gates (computed here by a forward that detaches by hand)."""
    torch.manual_seed(0)
    default = SFPNetArch(layout(), small(scenario_features=["user"]))
    randomise(default)
    stopped = SFPNetArch(layout(), small(scenario_features=["user"], dnn_gate_stop_gradient=True))
    stopped.load_state_dict(default.state_dict())

    def grads(forward) -> tuple[torch.Tensor, torch.Tensor]:
        batch = features()
        fields = batch.fields.clone().requires_grad_(True)
        batch = EmbeddedFeatures(fields, batch.sequences, batch.dense, batch.domain)
        logits = forward(batch)
        logits.sum().backward()
        return logits.detach(), fields.grad

    def by_hand(batch: EmbeddedFeatures) -> torch.Tensor:  # SFPNetArch.forward, the gates' s_m detached
        scenario = default.scenario(batch)
        fields, behaviours = default.tailor(batch, scenario)
        tailored = [
            EmbeddedSequence(keys, s.mask, default.candidate(fields, index))
            for s, keys, index in zip(batch.sequences, behaviours, default.candidate_index)
        ]
        h = torch.cat([fields.flatten(1), *default.pooling(tailored), batch.dense], dim=-1)
        gate_input = torch.cat([default.domain_embedding(batch.domain), batch.fields[:, 0].detach()], dim=-1)
        return default.dnn(h, gate_input)

    logits, grad = grads(stopped)
    reference_logits, reference_grad = grads(by_hand)
    default_logits, default_grad = grads(default)
    torch.testing.assert_close(logits, default_logits)
    torch.testing.assert_close(grad, reference_grad)
    assert not torch.allclose(grad[:, 0], default_grad[:, 0])  # the gates' share of the user field's gradient
    torch.testing.assert_close(grad[:, 1], default_grad[:, 1])  # item is not in s_m: untouched
    stopped.zero_grad()
    stopped(features()).sum().backward()
    assert stopped.domain_embedding.weight.grad.abs().sum() > 0  # the domain-id embedding still learns


ABLATIONS = {
    "full": ({}, []),
    "wo_dap": (dict(distribution_aware_pooling=False), []),
    "wo_sam": (dict(use_sam=False), ["sam."]),
    "wo_rtm": (dict(use_rtm=False), ["rtm."]),
    "wo_sdnn": (dict(scenario_aware_dnn=False), ["dnn.layers"]),
    "wo_stb": (dict(num_blocks=0), ["blocks."]),
}


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_each_ablation_removes_its_modules_and_still_trains(name):
    overrides, removed = ABLATIONS[name]
    torch.manual_seed(0)
    arch = SFPNetArch(layout(), small(**overrides))
    names = [n for n, _ in arch.named_parameters()]
    for fragment in removed:
        assert not any(fragment in n for n in names), (fragment, names)
    full = [n for n, _ in SFPNetArch(layout(), small()).named_parameters()]
    assert all(fragment and any(fragment in n for n in full) for fragment in removed)
    batch = features()
    if name == "wo_dap":  # the gate and the aggregation read the mean alone: d_g wide, not 2·d_g
        assert arch.blocks[0].sam.gate.hidden.in_features == 2 * D + 2 * D + D
        assert arch.blocks[0].rtm.aggregate[0].in_features == 2 * D + 2 * D
    if name == "wo_rtm":  # the gate covers the fields only; behaviours pass through untouched
        assert arch.blocks[0].sam.gate.out.out_features == 2 * D
        fields, (keys,) = arch.tailor(batch, arch.scenario(batch))
        assert torch.equal(keys, batch.sequences[0].keys)
    if name == "wo_stb":
        fields, (keys,) = arch.tailor(batch, arch.scenario(batch))
        assert torch.equal(fields, batch.fields) and torch.equal(keys, batch.sequences[0].keys)
    if name == "wo_sdnn":  # a plain MLP over H¹ ⊕ s_m, no gate left in the DNN
        assert not any(n.startswith("dnn.") and "gate" in n for n in names)
        assert arch.dnn[0].in_features == 2 * D + 2 * D + 3 + D
    optimizer = torch.optim.SGD(arch.parameters(), lr=0.1)
    labels = torch.randint(0, 2, (B, 2)).float()
    loss = F.binary_cross_entropy_with_logits(arch(batch), labels)
    loss.backward()
    missing = [n for n, p in arch.named_parameters() if p.grad is None]
    assert not missing
    optimizer.step()
    assert F.binary_cross_entropy_with_logits(arch(batch), labels).item() != loss.item()


def test_num_blocks_stacks_that_many_chained_blocks():
    torch.manual_seed(0)
    arch = SFPNetArch(layout(), small(num_blocks=3))
    assert len(arch.blocks) == 3
    names = {n.split(".")[1] for n, _ in arch.named_parameters() if n.startswith("blocks.")}
    assert names == {"0", "1", "2"}
    batch = features()
    scenario = arch.scenario(batch)
    fields, keys = batch.fields, [batch.sequences[0].keys]
    for block in arch.blocks:  # block l+1 reads block l's tailored fields and behaviours
        fields, keys = block(fields, keys, [batch.sequences[0].mask], scenario)
    tailored_fields, tailored_keys = arch.tailor(batch, scenario)
    assert torch.equal(tailored_fields, fields) and torch.equal(tailored_keys[0], keys[0])
    assert SFPNetConfig().num_blocks == 3  # the paper's recommendation (industrial data)


def test_deterministic_given_the_seed():
    outputs = []
    for _ in range(2):
        torch.manual_seed(7)
        outputs.append(SFPNetArch(layout(), small(num_blocks=2))(features()))
    assert torch.equal(*outputs)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(num_blocks=-1), "model.sfpnet.num_blocks"),
        (dict(sam_hidden=0), "model.sfpnet.sam_hidden"),
        (dict(context_hidden=0), "model.sfpnet.context_hidden"),
        (dict(dnn_gate_hidden=0), "model.sfpnet.dnn_gate_hidden"),
        (dict(hidden=[]), "model.sfpnet.hidden"),
        (dict(hidden=[8, 0]), "model.sfpnet.hidden"),
        (dict(attention_hidden=[0]), "model.sfpnet.attention_hidden"),
        (dict(dropout=1.0), "model.sfpnet.dropout"),
        (dict(dnn_gate_scale=0.0), "model.sfpnet.dnn_gate_scale"),
        (dict(dnn_gate_scale=-2.0), "model.sfpnet.dnn_gate_scale"),
        (dict(use_sam=False, use_rtm=False), "model.sfpnet.use_sam, use_rtm"),
        (dict(scenario_features=["foo"]), r"model.sfpnet.scenario_features: 'foo' is not an id feature"),
        (dict(scenario_features=["user", "user"]), "model.sfpnet.scenario_features: duplicate"),
        (dict(dnn_gate_stop_gradient=True), "model.sfpnet.dnn_gate_stop_gradient: needs"),
        (
            dict(dnn_gate_stop_gradient=True, scenario_features=["user"], scenario_aware_dnn=False),
            "model.sfpnet.dnn_gate_stop_gradient: needs",
        ),
    ],
)
def test_bad_sizes_raise_config_errors(overrides, match):
    with pytest.raises(ConfigError, match=match):
        SFPNetArch(layout(), small(**overrides))


def test_no_blocks_without_sam_and_rtm_is_allowed():
    SFPNetArch(layout(), small(num_blocks=0, use_sam=False, use_rtm=False))


@pytest.mark.parametrize(
    "override, match",
    [
        ("model.sfpnet.num_blocks=-1", "num_blocks"),
        ("model.sfpnet.dnn_gate_scale=0", "dnn_gate_scale"),
        ("model.sfpnet.use_rtm=false", None),
    ],
)
def test_config_loading_checks_the_sfpnet_section(override, match):
    overrides = [override] + (["model.sfpnet.use_sam=false"] if match is None else [])
    with pytest.raises(ConfigError, match=match or "use_sam, use_rtm"):
        load_config(ExperimentConfig, None, overrides)
