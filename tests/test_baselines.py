"""The multi-domain baselines: Shared-Bottom, MMoE, PLE, STAR, PEPNet, APG, DeepFM, DCN-V2, FRNet, M2M, AESM²,
AdaSparse, MaskNet, DFFM, MARIA (tiny hand-made features)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchrec_mdr.config import ConfigError, from_dict
from torchrec_mdr.models.adasparse import AdaSparseArch, AdaSparseConfig
from torchrec_mdr.models.aesm2 import AESM2Arch, AESM2Config
from torchrec_mdr.models.apg import APGArch, APGConfig
from torchrec_mdr.models.blocks import DomainBatchNorm, StackedLinear, StackedMLP, TargetAttentionConfig
from torchrec_mdr.models.dcnv2 import DCNv2Arch, DCNv2Config
from torchrec_mdr.models.deepfm import DeepFMArch, DeepFMConfig
from torchrec_mdr.models.dffm import DFFMArch, DFFMConfig
from torchrec_mdr.models.features import ArchOutput, EmbeddedFeatures, EmbeddedSequence, FeatureLayout, SequenceLayout
from torchrec_mdr.models.m2m import M2MArch, M2MConfig
from torchrec_mdr.models.maria import MARIAArch, MARIAConfig
from torchrec_mdr.models.masknet import MaskNetArch, MaskNetConfig
from torchrec_mdr.models.frnet import FRNetArch, FRNetConfig
from torchrec_mdr.models.mmoe import MMoEArch, MMoEConfig
from torchrec_mdr.models.pepnet import EPNet, GateNU, PEPNetArch, PEPNetConfig, PPNetTowers
from torchrec_mdr.models.ple import CGCLevel, PLEArch, PLEConfig
from torchrec_mdr.models.registry import ModelConfig
from torchrec_mdr.models.shared_bottom import SharedBottomArch, SharedBottomConfig
from torchrec_mdr.models.star import StarFCN, STARArch, STARConfig, StarLinear

B, L, D, K, T = 6, 5, 4, 3, 2
FIELDS = ("user_id", "item_id", "user_activity", "hour")


def layout() -> FeatureLayout:
    sequence = SequenceLayout("hist", ("hist_item_id", "hist_domain"), L, ("item_id",))
    return FeatureLayout(
        fields=FIELDS,
        pooled=frozenset({"user_id", "user_activity", "hour"}),
        sequences=(sequence,),
        embedding_dim=D,
        num_dense=3,
        num_domains=K,
        num_tasks=T,
    )


def features(domain: list[int] | None = None, seed: int = 1) -> EmbeddedFeatures:
    generator = torch.Generator().manual_seed(seed)
    mask = torch.arange(L)[None, :] < torch.tensor([5, 3, 1, 0, 4, 2])[:, None]
    keys = torch.randn(B, L, 2 * D, generator=generator) * mask[..., None]
    fields = torch.randn(B, len(FIELDS), D, generator=generator)
    domain = torch.tensor(domain if domain is not None else [0, 1, 2, 0, 1, 2])
    return EmbeddedFeatures(
        fields, [EmbeddedSequence(keys, mask, fields[:, 1])], torch.randn(B, 3, generator=generator), domain
    )


ARCHS = {
    "aesm2": lambda: AESM2Arch(
        layout(),
        AESM2Config(
            scenario_experts=4,
            task_experts=3,
            scenario_specific_top_k=2,
            scenario_shared_top_k=1,
            expert_hidden=[8],
            tower_hidden=[5],
            scenario_features=["user_activity"],
        ),
    ),
    "aesm2_deep": lambda: AESM2Arch(
        layout(),
        AESM2Config(
            scenario_layers=2,
            task_layers=2,
            scenario_experts=3,
            task_experts=3,
            scenario_specific_top_k=2,
            task_specific_top_k=2,
            expert_hidden=[6],
        ),
    ),
    "adasparse": lambda: AdaSparseArch(layout(), AdaSparseConfig(hidden=[8, 6], domain_features=["user_activity"])),
    "adasparse_binarization": lambda: AdaSparseArch(
        layout(), AdaSparseConfig(hidden=[8], variant="binarization", epsilon=0.1)
    ),
    "apg": lambda: APGArch(
        layout(), APGConfig(hidden=[8, 6], rank=3, over_rank=5, generator_hidden=[5], domain_features=["user_activity"])
    ),
    "apg_mix_specific": lambda: APGArch(
        layout(), APGConfig(hidden=[8, 6], rank=2, generation="specific", over_rank=0, condition="mix")
    ),
    "deepfm": lambda: DeepFMArch(layout(), DeepFMConfig(hidden=[8, 6])),
    "dffm": lambda: DFFMArch(
        layout(),
        DFFMConfig(
            domain_network=[5, 3],
            hidden=[8],
            heads=2,
            head_dim=3,
            rank=2,
            dfub_dim=4,
            domain_features=["user_activity"],
        ),
    ),
    "dffm_no_dfub_tanh": lambda: DFFMArch(
        layout(), DFFMConfig(domain_network=[4], activation="tanh", hidden=[8], use_dfub=False)
    ),
    "dcnv2": lambda: DCNv2Arch(layout(), DCNv2Config(cross_layers=2, hidden=[8, 6])),
    "dcnv2_stacked_mixture": lambda: DCNv2Arch(
        layout(), DCNv2Config(structure="stacked", cross_type="mixture", low_rank=4, num_experts=2, hidden=[8])
    ),
    "m2m": lambda: M2MArch(
        layout(),
        M2MConfig(num_experts=3, expert_hidden=[8], view_dim=5, meta_layers=2, scenario_features=["user_activity"]),
    ),
    "m2m_mha": lambda: M2MArch(
        layout(),
        M2MConfig(
            num_experts=2,
            expert_hidden=[8],
            view_dim=4,
            backbone="mha",
            attention=TargetAttentionConfig(heads=2, head_dim=3),
        ),
    ),
    "masknet": lambda: MaskNetArch(layout(), MaskNetConfig(block_widths=[8, 6], reduction_ratio=1.5)),
    "masknet_parallel": lambda: MaskNetArch(
        layout(), MaskNetConfig(form="parallel", parallel_blocks=2, parallel_block_width=5, parallel_hidden=[6])
    ),
    "maria": lambda: MARIAArch(
        layout(),
        MARIAConfig(
            scaling_hidden=5,
            num_refiners=2,
            refiner_dim=3,
            correlation_dim=4,
            num_experts=3,
            expert_hidden=[8],
            tower_hidden=[5],
            scenario_features=["user_activity"],
        ),
    ),
    "maria_mean": lambda: MARIAArch(
        layout(),
        MARIAConfig(backbone="mean", num_refiners=1, refiner_dim=4, num_experts=2, expert_hidden=[6], tower_hidden=[]),
    ),
    "frnet": lambda: FRNetArch(layout(), FRNetConfig(hidden=[8, 6], attention_size=3, cie_hidden=[7])),
    "frnet_vector": lambda: FRNetArch(
        layout(), FRNetConfig(hidden=[8], attention_size=3, cie_hidden=[], weight_type="vector")
    ),
    "shared_bottom": lambda: SharedBottomArch(layout(), SharedBottomConfig(bottom_hidden=[8, 6], tower_hidden=[5])),
    "mmoe": lambda: MMoEArch(layout(), MMoEConfig(num_experts=3, expert_hidden=[8, 6], tower_hidden=[5])),
    "ple": lambda: PLEArch(
        layout(),
        PLEConfig(num_levels=2, num_shared_experts=2, num_specific_experts=2, expert_hidden=[6], tower_hidden=[5]),
    ),
    "ple_one_level": lambda: PLEArch(
        layout(),
        PLEConfig(num_levels=1, num_shared_experts=1, num_specific_experts=2, expert_hidden=[6], tower_hidden=[5]),
    ),
    "star": lambda: STARArch(layout(), STARConfig(hidden=[8, 6], auxiliary_hidden=[5])),
    "pepnet": lambda: PEPNetArch(
        layout(), PEPNetConfig(hidden=[8, 6], gate_hidden=5, domain_features=["user_activity"])
    ),
    # method models on a target-attention backbone (the ADS paper's "DIN +PEPNet" rows)
    "pepnet_din": lambda: PEPNetArch(layout(), PEPNetConfig(hidden=[8, 6], gate_hidden=5, backbone="din")),
    "frnet_mha": lambda: FRNetArch(
        layout(),
        FRNetConfig(
            hidden=[8],
            attention_size=3,
            cie_hidden=[],
            backbone="mha",
            attention=TargetAttentionConfig(heads=2, head_dim=3),
        ),
    ),
    "apg_can": lambda: APGArch(layout(), APGConfig(hidden=[8], rank=2, over_rank=0, backbone="can")),
}


def domain_parameters(name: str, arch: nn.Module) -> list[tuple[str, torch.Tensor, int]]:
    """Every domain-specific parameter as (name, tensor, slots per domain along dim 0)."""
    params = dict(arch.named_parameters())
    out = [(n, p, 1) for n, p in params.items() if n.endswith("domain_embedding.weight")]
    if name in ("shared_bottom", "mmoe", "ple", "ple_one_level") or name.startswith("maria"):
        out += [(n, p, 1) for n, p in params.items() if n.startswith("towers.")]
    if name == "mmoe":
        out += [(n, p, 1) for n, p in params.items() if n.startswith("gates.")]
    if name.startswith("ple"):
        last = f"levels.{len(arch.levels) - 1}."
        out += [(n, p, 1) for n, p in params.items() if n.startswith(last + "domain_gates.")]
        out += [(n, p, arch.levels[-1].num_specific) for n, p in params.items() if n.startswith(last + "specific.")]
    if name.startswith("aesm2"):  # the domain gates (the KL terms train all of them: not in the logits)
        out += [(n, p, 1) for n, p in params.items() if n.startswith("scenario_layers.") and ".gates." in n]
    if name == "star":
        out += [(n, p, 1) for n, p in params.items() if n.split(".")[-1] in ("domain_weight", "domain_bias")]
        out += [("norm.weight", arch.norm.weight, 1), ("norm.bias", arch.norm.bias, 1)]
    return out


# --------------------------------------------------------------------------- every baseline


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_output_shape_determinism_and_padding(name):
    torch.manual_seed(0)
    arch = ARCHS[name]().eval()
    torch.manual_seed(0)
    again = ARCHS[name]().eval()
    batch = features()
    logits = arch(batch)
    assert logits.shape == (B, T) and torch.isfinite(logits).all()
    assert torch.equal(again(batch), logits)  # deterministic given the seed
    # anything at padded positions changes nothing
    keys = batch.sequences[0].keys
    batch.sequences[0].keys = torch.where(batch.sequences[0].mask[..., None], keys, 1e3 * torch.randn_like(keys))
    assert torch.equal(arch(batch), logits)


def logits_of(output: torch.Tensor | ArchOutput) -> torch.Tensor:
    """The logits of an arch's output (in training some archs also return an auxiliary loss)."""
    return output.logits if isinstance(output, ArchOutput) else output


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_domain_parameters_learn_only_from_their_domain(name):
    """All rows in domain 0: every domain-specific parameter of domains 1, 2 gets exactly zero gradient."""
    torch.manual_seed(0)
    arch = ARCHS[name]().train()
    logits_of(arch(features(domain=[0] * B))).sum().backward()
    checked = domain_parameters(name, arch)
    assert checked
    for param_name, param, slots in checked:
        assert param.grad is not None, param_name
        assert param.grad[:slots].abs().sum() > 0, f"{param_name}: domain 0 got no gradient"
        assert torch.equal(param.grad[slots:], torch.zeros_like(param.grad[slots:])), param_name
    # and with rows of every domain, every domain's parameters learn
    arch.zero_grad()
    logits_of(arch(features())).sum().backward()
    for param_name, param, slots in domain_parameters(name, arch):
        for k in range(K):
            assert param.grad[k * slots : (k + 1) * slots].abs().sum() > 0, f"{param_name}[{k}]"


# --------------------------------------------------------------------------- stacked layers


def test_stacked_linear_is_independent_linear_maps():
    layer = StackedLinear(3, 4, 2)
    x = torch.randn(5, 4)
    out = layer(x)
    per_group = torch.randn(5, 3, 4)
    out_per_group = layer(per_group)
    for g in range(3):
        torch.testing.assert_close(out[:, g], x @ layer.weight[g] + layer.bias[g])
        torch.testing.assert_close(out_per_group[:, g], per_group[:, g] @ layer.weight[g] + layer.bias[g])
    assert StackedLinear(3, 4, 2, bias=False).bias is None


# --------------------------------------------------------------------------- MMoE


def test_mmoe_gates_are_distributions_per_domain():
    torch.manual_seed(0)
    arch = MMoEArch(layout(), MMoEConfig(num_experts=4, expert_hidden=[8], tower_hidden=[5]))
    x = arch.input(features())
    gates = arch.gates(x, torch.tensor([0, 1, 2, 0, 1, 2]))
    assert gates.shape == (B, 4) and (gates > 0).all()
    torch.testing.assert_close(gates.sum(-1), torch.ones(B))
    # row b's gate is its own domain's softmax(W_gk x) (no bias, MMoE eq. 5)
    for b, k in enumerate([0, 1, 2, 0, 1, 2]):
        torch.testing.assert_close(gates[b], torch.softmax(x[b] @ arch.gates.logits.weight[k], dim=-1))


def test_mmoe_with_one_expert_is_shared_bottom():
    torch.manual_seed(0)
    mmoe = MMoEArch(layout(), MMoEConfig(num_experts=1, expert_hidden=[8, 6], tower_hidden=[5]))
    bottom = SharedBottomArch(layout(), SharedBottomConfig(bottom_hidden=[8, 6], tower_hidden=[5]))
    with torch.no_grad():
        bottom.input.load_state_dict(mmoe.input.state_dict())
        bottom.towers.load_state_dict(mmoe.towers.state_dict())
        linears = [m for m in bottom.bottom if isinstance(m, nn.Linear)]
        experts = [m for m in mmoe.experts.layers if isinstance(m, StackedLinear)]
        for linear, expert in zip(linears, experts, strict=True):
            linear.weight.copy_(expert.weight[0].T)
            linear.bias.copy_(expert.bias[0])
    batch = features()
    torch.testing.assert_close(mmoe(batch), bottom(batch))


# --------------------------------------------------------------------------- PLE


def expert_outputs(mlp: StackedMLP, x: torch.Tensor, group: int) -> torch.Tensor:
    """One expert of a StackedMLP by hand: [B, in] -> [B, H]."""
    for layer in mlp.layers:
        x = x @ layer.weight[group] + layer.bias[group] if isinstance(layer, StackedLinear) else layer(x)
    return x


def test_ple_domain_gate_covers_exactly_own_and_shared_experts():
    torch.manual_seed(0)
    level = CGCLevel(7, [6], num_domains=K, num_specific=2, num_shared=1, shared_gate=True)
    assert level.domain_gates.weight.shape == (K, 7, 2 + 1)  # own 2 specific + 1 shared
    assert level.shared_gate.weight.shape == (1, 7, K * 2 + 1)  # every expert
    domain_inputs, shared_input = torch.randn(B, K, 7), torch.randn(B, 7)
    domain_out, shared_out = level(domain_inputs, shared_input)
    for b in range(B):
        shared_expert = expert_outputs(level.shared, shared_input[b : b + 1], 0)[0]
        all_specific = []
        for k in range(K):
            own = [expert_outputs(level.specific, domain_inputs[b : b + 1, k], k * 2 + j)[0] for j in range(2)]
            all_specific += [
                expert_outputs(level.specific, domain_inputs[b : b + 1, k], k * 2 + j)[0] for j in range(2)
            ]
            gate = torch.softmax(domain_inputs[b, k] @ level.domain_gates.weight[k], dim=-1)
            expected = gate[0] * own[0] + gate[1] * own[1] + gate[2] * shared_expert
            torch.testing.assert_close(domain_out[b, k], expected)
        gate = torch.softmax(shared_input[b] @ level.shared_gate.weight[0], dim=-1)
        expected = sum(g * e for g, e in zip(gate, [*all_specific, shared_expert]))
        torch.testing.assert_close(shared_out[b], expected)


def test_ple_other_domains_specific_experts_do_not_change_a_row():
    """One level (CGC): changing domain 1's specific experts changes only domain 1's rows."""
    torch.manual_seed(0)
    arch = ARCHS["ple_one_level"]().eval()
    batch = features()
    before = arch(batch)
    with torch.no_grad():
        for layer in arch.levels[0].specific.layers:
            if isinstance(layer, StackedLinear):
                layer.weight[2:4] += 1.0  # domain 1 owns groups 2, 3
    after = arch(batch)
    in_domain_1 = batch.domain == 1
    assert torch.equal(after[~in_domain_1], before[~in_domain_1])
    assert not torch.allclose(after[in_domain_1], before[in_domain_1])


def test_ple_lower_level_specific_experts_feed_the_shared_gate():
    """Below the last level a domain's specific experts reach every row through the shared gate."""
    torch.manual_seed(0)
    arch = ARCHS["ple"]().train()
    arch(features(domain=[0] * B)).sum().backward()
    first = arch.levels[0].specific.layers[0].weight.grad  # [K * 2, in, H]
    assert first[2:].abs().sum() > 0  # domains 1, 2 learn from domain-0 rows (via the shared path)
    last = arch.levels[1].specific.layers[0].weight.grad
    assert torch.equal(last[2:], torch.zeros_like(last[2:]))


# --------------------------------------------------------------------------- STAR


def test_star_layer_matches_hand_computation():
    layer = StarLinear(3, 2, num_domains=2)
    with torch.no_grad():
        layer.shared_weight.copy_(torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.5, 0.0]]))
        layer.shared_bias.copy_(torch.tensor([0.1, -0.2]))
        layer.domain_weight.copy_(
            torch.tensor([[[2.0, 1.0], [0.0, 1.0], [1.0, 3.0]], [[-1.0, 0.5], [1.0, 2.0], [4.0, 1.0]]])
        )
        layer.domain_bias.copy_(torch.tensor([[1.0, 0.0], [0.0, -1.0]]))
    x = torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.5, 2.0], [0.0, 1.0, 1.0]])
    domain = torch.tensor([0, 1, 1])
    out = layer(x, domain)
    for b in range(3):
        d = int(domain[b])
        weight = layer.shared_weight * layer.domain_weight[d]  # W ⊙ W_d
        expected = x[b] @ weight + layer.shared_bias + layer.domain_bias[d]
        torch.testing.assert_close(out[b], expected)
    torch.testing.assert_close(
        out[0], torch.tensor([1 * 2 + 2 * 0 + 3 * 0.5 + 0.1 + 1.0, 1 * 2 + 2 * -1 + 0 + -0.2 + 0.0])
    )


def test_star_domains_start_as_the_shared_network():
    """Domain factors start at W_p = 1, b_p = 0: at initialisation every domain computes the same FCN."""
    torch.manual_seed(0)
    fcn = StarFCN(7, [6, 5], 2, num_domains=K)
    x = torch.randn(B, 7)
    outputs = [fcn(x, torch.full((B,), k)) for k in range(K)]
    for out in outputs[1:]:
        torch.testing.assert_close(out, outputs[0])


def test_star_logit_is_star_network_plus_auxiliary_on_partitioned_norm():
    torch.manual_seed(0)
    arch = STARArch(layout(), STARConfig(hidden=[8], auxiliary_hidden=[5])).train()
    assert isinstance(arch.norm, DomainBatchNorm) and arch.norm.shared_affine
    batch = features()
    x = arch.input(batch)
    expected_norm = DomainBatchNorm(x.shape[1], K, shared_affine=True)
    expected_norm.load_state_dict(arch.norm.state_dict())
    expected = arch.star(expected_norm(x, batch.domain), batch.domain) + arch.auxiliary(x)
    torch.testing.assert_close(arch(batch), expected)
    plain = STARArch(layout(), STARConfig(hidden=[8], auxiliary_hidden=[5], partitioned_norm=False))
    assert plain.norm is None
    x = plain.input(batch)
    torch.testing.assert_close(plain(batch), plain.star(x, batch.domain) + plain.auxiliary(x))


# --------------------------------------------------------------------------- PEPNet


def set_gate(gate: GateNU, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in gate.parameters():
            p.copy_(torch.randn(p.shape, generator=generator))


def gate_by_hand(gate: GateNU, x: torch.Tensor) -> torch.Tensor:
    hidden = torch.relu(x @ gate.first.weight.T + gate.first.bias)
    return gate.gamma * torch.sigmoid(hidden @ gate.second.weight.T + gate.second.bias)


def test_gate_nu_matches_hand_computation():
    gate = GateNU(4, 3, 5, gamma=2.0)
    set_gate(gate, 0)
    x = torch.randn(B, 4)
    out = gate(x)
    torch.testing.assert_close(out, gate_by_hand(gate, x))
    assert ((out > 0) & (out < 2)).all()


@pytest.mark.parametrize("per_field", [True, False])
def test_epnet_gates_match_hand_computation_and_stop_gradient(per_field):
    epnet = EPNet([2, 2, 3], domain_width=2, hidden=4, per_field=per_field)
    set_gate(epnet.gate, 1)
    general = torch.randn(B, 7, requires_grad=True)
    domain_side = torch.randn(B, 2, requires_grad=True)
    out, gate = epnet(general, domain_side)
    expected_gate = gate_by_hand(epnet.gate, torch.cat([domain_side, general], dim=1))
    torch.testing.assert_close(gate, expected_gate)
    if per_field:  # one value per field, broadcast over the field's width
        assert gate.shape == (B, 3)
        scale = torch.cat([gate[:, :1].expand(-1, 2), gate[:, 1:2].expand(-1, 2), gate[:, 2:].expand(-1, 3)], 1)
    else:
        assert gate.shape == (B, 7)
        scale = gate
    torch.testing.assert_close(out, general * scale)
    out.sum().backward()
    # stop-gradient: d(sum O_ep)/dE is the gate alone, nothing flows back through the gate's input
    torch.testing.assert_close(general.grad, scale.detach())
    assert domain_side.grad.abs().sum() > 0  # the domain side learns through the gate


def test_ppnet_matches_hand_computation_and_stops_gradient_into_o_ep():
    towers = PPNetTowers(3, [4], num_tasks=2, prior_width=2, general_width=3, gate_hidden=5)
    for index, gate in enumerate(towers.gates):
        set_gate(gate, 10 + index)
    tower_input = torch.randn(B, 3)
    prior = torch.randn(B, 2, requires_grad=True)
    general = torch.randn(B, 3, requires_grad=True)
    logits = towers(tower_input, prior, general)
    assert logits.shape == (B, 2)
    gate_input = torch.cat([prior, general], dim=1)
    gate0 = gate_by_hand(towers.gates[0], gate_input).view(B, 2, 3)
    gate1 = gate_by_hand(towers.gates[1], gate_input).view(B, 2, 4)
    first, output = towers.layers
    for t in range(2):
        hidden = torch.relu((gate0[:, t] * tower_input) @ first.weight[t] + first.bias[t])
        expected = (gate1[:, t] * hidden) @ output.weight[t] + output.bias[t]
        torch.testing.assert_close(logits[:, t], expected[:, 0])
    logits.sum().backward()
    assert general.grad is None  # ⊘(O_ep): O_ep only reaches PPNet's gates detached
    assert prior.grad.abs().sum() > 0


def test_pepnet_feature_roles_and_whole_model_stop_gradient():
    torch.manual_seed(0)
    arch = PEPNetArch(layout(), PEPNetConfig(hidden=[8], gate_hidden=5))
    assert arch.prior_fields == [0, 2]  # default: the fields named user*
    assert arch.domain_fields == []
    assert arch.epnet.gate.first.in_features == D + (len(FIELDS) * D + 2 * D)  # domain id ⊕ ⊘(E)
    assert arch.epnet.gate.second.out_features == len(FIELDS) + 1  # one gate per field and pooled sequence
    # 'hour' is neither a prior nor a domain feature: its only gradient is through the gated path,
    # so it equals the gradient of the tower input times the EPNet gate
    batch = features()
    batch.fields.requires_grad_(True)
    captured = {}
    arch.epnet.register_forward_hook(lambda module, inputs, output: captured.update(out=output[0], gate=output[1]))
    logits = arch(batch)
    captured["out"].retain_grad()
    logits.sum().backward()
    hour = FIELDS.index("hour")
    expected = captured["out"].grad[:, hour * D : (hour + 1) * D] * captured["gate"][:, hour : hour + 1].detach()
    torch.testing.assert_close(batch.fields.grad[:, hour], expected)


# --------------------------------------------------------------------------- configuration errors


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: MMoEArch(layout(), MMoEConfig(expert_hidden=[])), "model.mmoe.expert_hidden"),
        (lambda: PLEArch(layout(), PLEConfig(expert_hidden=[])), "model.ple.expert_hidden"),
        (lambda: PLEArch(layout(), PLEConfig(num_shared_experts=0, num_specific_experts=0)), "model.ple"),
        (
            lambda: PEPNetArch(layout(), PEPNetConfig(domain_features=["foo"])),
            r"model.pepnet.domain_features: 'foo' is not an id feature of the dataset; id features: \['user_id'",
        ),
        (
            lambda: PEPNetArch(layout(), PEPNetConfig(prior_features=["user_id", "bar"])),
            "model.pepnet.prior_features: 'bar' is not an id feature",
        ),
        (lambda: PEPNetArch(layout(), PEPNetConfig(epnet_gate="row")), "model.pepnet.epnet_gate"),
    ],
)
def test_bad_options_are_config_errors(build, message):
    with pytest.raises(ConfigError, match=message):
        build()


@pytest.mark.parametrize(
    "options, message",
    [
        ({"mmoe": {"num_experts": 0}}, "model.mmoe.num_experts"),
        ({"ple": {"num_levels": 0}}, "model.ple.num_levels"),
        ({"star": {"hidden": [8, 0]}}, "model.star.hidden"),
        ({"pepnet": {"epnet_gate": "row"}}, "model.pepnet.epnet_gate"),
        ({"pepnet": {"gamma": 0}}, "model.pepnet.gamma"),
    ],
)
def test_bad_options_in_a_config_file(options, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(ModelConfig, options, prefix="model")
