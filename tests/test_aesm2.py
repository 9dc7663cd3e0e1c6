"""AESM²: the expert selection (KL scores, top-K, masking), one layer, the auxiliary loss and the whole
logit against hand computations.

Padding invariance, determinism and the domain test run with the other baselines
(tests/test_baselines.py, ``ARCHS["aesm2"]`` and ``ARCHS["aesm2_deep"]``); the FX traces and a real
batch through ``RankingModel`` with every registered model (tests/test_fx_trace.py, tests/test_models.py).
"""

from __future__ import annotations

import math

import pytest
import torch

from torchrec_mdr.config import ConfigError, from_dict
from torchrec_mdr.models.aesm2 import AESM2Arch, AESM2Config, ExpertSelectionLayer, select_experts
from torchrec_mdr.models.features import ArchOutput, EmbeddedFeatures, EmbeddedSequence, FeatureLayout, SequenceLayout
from torchrec_mdr.models.registry import ModelConfig

B, L, D, K, T = 5, 4, 3, 3, 2
FIELDS = ("user_id", "item_id", "user_level")
LENGTHS = [4, 2, 1, 0, 3]
LOG3 = math.log(3.0)


def layout(num_tasks: int = T, num_domains: int = K) -> FeatureLayout:
    sequence = SequenceLayout("hist", ("hist_item_id", "hist_domain"), L, ("item_id",))
    return FeatureLayout(
        fields=FIELDS,
        pooled=frozenset({"user_id", "user_level"}),
        sequences=(sequence,),
        embedding_dim=D,
        num_dense=2,
        num_domains=num_domains,
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


def small_arch(num_tasks: int = T, **options) -> AESM2Arch:
    torch.manual_seed(0)
    config = dict(
        scenario_experts=4,
        task_experts=3,
        scenario_specific_top_k=2,
        scenario_shared_top_k=1,
        task_specific_top_k=1,
        task_shared_top_k=1,
        expert_hidden=[6],
        tower_hidden=[5],
    )
    config.update(options)
    return AESM2Arch(layout(num_tasks), AESM2Config(**config)).eval()


def kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) = sum_j p_j log(p_j / q_j), with 0 log 0 = 0."""
    terms = torch.where(p > 0, p * torch.log(p / q), torch.zeros_like(p))
    return terms.sum()


# --------------------------------------------------------------------------- expert selection


def test_selection_by_hand():
    """G = 2 gates, E = 3 experts. Columns (expert k's logits over the gates): [ln 3, 0], [0, 0], [0, ln 3]
    give P[:, k] = [3/4, 1/4], [1/2, 1/2], [1/4, 3/4].

    Owner 0: KL_sp = -log P[0, k] = [log 4/3, log 2, log 4]; KL_sh = -log 2 - (log P0 + log P1) / 2
    = [½ log 4/3, 0, ½ log 4/3]. Top-1 of each: specific expert 0, shared expert 1.
    Owner 1: KL_sp = [log 4, log 2, log 4/3]: specific expert 2, shared expert 1.
    """
    logits = torch.tensor([[LOG3, 0.0, 0.0], [0.0, 0.0, LOG3]]).expand(2, -1, -1)
    selection = select_experts(logits, torch.tensor([0, 1]), specific_top_k=1, shared_top_k=1)
    assert selection.mask.tolist() == [[True, True, False], [False, True, True]]
    torch.testing.assert_close(selection.specific_kl, torch.tensor([[math.log(4 / 3)], [math.log(4 / 3)]]))
    torch.testing.assert_close(selection.shared_kl, torch.zeros(2, 1), atol=1e-6, rtol=0)
    # top-2 specific for owner 0: experts 0 (log 4/3) and 1 (log 2), the smallest first
    selection = select_experts(logits, torch.tensor([0, 1]), specific_top_k=2, shared_top_k=2)
    torch.testing.assert_close(selection.specific_kl[0], torch.tensor([math.log(4 / 3), math.log(2.0)]))
    torch.testing.assert_close(selection.shared_kl[0], torch.tensor([0.0, 0.5 * math.log(4 / 3)]), atol=1e-6, rtol=0)
    assert selection.mask[0, :2].all() and selection.mask[1, 1:].all()  # (experts 0 and 2 tie for shared)


def test_selection_scores_are_the_kl_divergences():
    """Random gates: every selected score equals KL(onehot || P[:, k]) / KL(uniform || P[:, k]) computed
    from the definition, and the selected experts are those of the smallest scores."""
    torch.manual_seed(0)
    n, g, e = 4, 3, 5
    logits, owner = torch.randn(n, g, e, dtype=torch.float64), torch.tensor([0, 2, 1, 2])
    selection = select_experts(logits, owner, specific_top_k=2, shared_top_k=3)
    p = torch.softmax(logits, dim=1)
    for row in range(n):
        onehot = torch.nn.functional.one_hot(owner[row], g).double()
        uniform = torch.full((g,), 1.0 / g, dtype=torch.float64)
        specific = torch.stack([kl(onehot, p[row, :, k]) for k in range(e)])
        shared = torch.stack([kl(uniform, p[row, :, k]) for k in range(e)])
        torch.testing.assert_close(selection.specific_kl[row], specific.sort().values[:2])
        torch.testing.assert_close(selection.shared_kl[row], shared.sort().values[:3])
        chosen = set(specific.argsort()[:2].tolist()) | set(shared.argsort()[:3].tolist())
        assert set(selection.mask[row].nonzero().flatten().tolist()) == chosen


# --------------------------------------------------------------------------- one layer


def test_layer_mixes_the_selected_experts_with_the_owners_gate():
    torch.manual_seed(0)
    layer = ExpertSelectionLayer(4, 2, [5], num_experts=4, num_gates=3, specific_top_k=1, shared_top_k=1).eval()
    x, condition, owner = torch.randn(B, 4), torch.randn(B, 2), torch.tensor([0, 1, 2, 0, 1])
    out, specific_kl, shared_kl = layer(x, condition, owner)
    gate_input = torch.cat([x, condition], dim=1)
    for b in range(B):
        logits = torch.stack([gate_input[b] @ layer.gates.weight[j] + layer.gates.bias[j] for j in range(3)])  # [G, E]
        p = torch.softmax(logits, dim=0)
        specific = -torch.log(p[owner[b]])
        shared = -math.log(3) - torch.log(p).mean(0)
        selected = sorted({int(specific.argmin()), int(shared.argmin())})
        weights = torch.softmax(logits[owner[b], selected], dim=0)  # the owner's gate over the selected ones
        experts = layer.experts(x[b : b + 1])[0]  # [E, H]
        torch.testing.assert_close(out[b], weights @ experts[selected])
    selection = select_experts(layer.gates(gate_input), owner, 1, 1)
    torch.testing.assert_close(specific_kl, selection.specific_kl.mean())
    torch.testing.assert_close(shared_kl, selection.shared_kl.mean())


def test_unselected_experts_get_no_weight_and_no_gradient():
    torch.manual_seed(0)
    layer = ExpertSelectionLayer(4, 0, [5], num_experts=6, num_gates=2, specific_top_k=1, shared_top_k=1).eval()
    x = torch.randn(1, 4)
    owner = torch.tensor([1])
    out, _, _ = layer(x, x[:, :0], owner)
    out.sum().backward()
    mask = select_experts(layer.gates(x), owner, 1, 1).mask[0]
    assert 1 <= int(mask.sum()) <= 2
    grad = layer.experts.layers[0].weight.grad  # [E, in, H]
    assert torch.equal(grad[~mask], torch.zeros_like(grad[~mask]))
    assert (grad[mask].abs().sum((1, 2)) > 0).all()
    gate_grad = layer.gates.weight.grad  # only the owner's gate learns through the mixing weights
    assert torch.equal(gate_grad[0], torch.zeros_like(gate_grad[0]))


def test_noise_moves_the_selection_not_the_mixing_weights():
    """Training: the selection and the KL use g + noise_scale * E * ε; the weights use the clean g."""
    torch.manual_seed(0)
    layer = ExpertSelectionLayer(
        4, 0, [5], num_experts=5, num_gates=3, specific_top_k=2, shared_top_k=1, noise_scale=0.4
    ).train()
    x, owner = torch.randn(B, 4), torch.tensor([0, 1, 2, 0, 1])
    torch.manual_seed(7)
    out, specific_kl, shared_kl = layer(x, x[:, :0], owner)
    logits = layer.gates(x)
    torch.manual_seed(7)
    noisy = logits + 0.4 * 5 * torch.randn_like(logits)
    selection = select_experts(noisy, owner, 2, 1)
    assert not torch.equal(selection.mask, select_experts(logits, owner, 2, 1).mask)  # the noise mattered
    own = logits[torch.arange(B), owner]
    weights = torch.softmax(own.masked_fill(~selection.mask, float("-inf")), dim=1)
    torch.testing.assert_close(out, torch.einsum("ne,neh->nh", weights, layer.experts(x)))
    torch.testing.assert_close(specific_kl, selection.specific_kl.mean())
    torch.testing.assert_close(shared_kl, selection.shared_kl.mean())
    layer.eval()  # no noise in evaluation
    assert torch.equal(layer(x, x[:, :0], owner)[0], layer(x, x[:, :0], owner)[0])


def test_one_gate_is_a_plain_softmax_gate():
    torch.manual_seed(0)
    layer = ExpertSelectionLayer(4, 1, [5], num_experts=3, num_gates=1, specific_top_k=1, shared_top_k=1).train()
    x, condition = torch.randn(B, 4), torch.randn(B, 1)
    out, specific_kl, shared_kl = layer(x, condition, torch.zeros(B, dtype=torch.long))
    weights = torch.softmax(layer.gates(torch.cat([x, condition], 1))[:, 0], dim=1)
    torch.testing.assert_close(out, torch.einsum("ne,neh->nh", weights, layer.experts(x)))
    assert specific_kl.item() == 0.0 and shared_kl.item() == 0.0


# --------------------------------------------------------------------------- the arch


def test_logits_by_hand():
    """x -> scenario layer (owner: the domain, condition s) -> per task: task layer (owner t, condition
    s ⊕ e_t) -> tower t."""
    arch = small_arch(scenario_features=["user_level"])
    batch = features()
    x = arch.input(batch)
    assert x.shape == (B, (len(FIELDS) + 1) * D + 2 + 2 * D)
    s = torch.cat([arch.input.domain_embedding.weight[batch.domain], batch.fields[:, 2]], dim=1)
    torch.testing.assert_close(arch.indicator(batch), s)
    h, _, _ = arch.scenario_layers[0](x, s, batch.domain)
    logits = arch(batch)
    assert logits.shape == (B, T)
    for t in range(T):
        task = torch.full((B,), t)
        condition = torch.cat([s, arch.task_embedding.weight[task]], dim=1)
        h_t, _, _ = arch.task_layers[0](h, condition, task)
        tower = arch.towers.layers  # StackedMLP: Linear(G) -> ReLU -> Linear(G)
        hidden = torch.relu(h_t @ tower[0].weight[t] + tower[0].bias[t])
        torch.testing.assert_close(logits[:, t], hidden @ tower[2].weight[t, :, 0] + tower[2].bias[t, 0])


def test_training_returns_the_weighted_kl_terms():
    arch = small_arch(
        scenario_layers=2, task_layers=2, specific_loss_weight=0.3, shared_loss_weight=0.7, noise_scale=0.0
    ).train()
    batch = features()
    output = arch(batch)
    assert isinstance(output, ArchOutput) and output.logits.shape == (B, T)
    torch.testing.assert_close(output.logits, arch.eval()(batch))
    x, s = arch.input(batch), arch.indicator(batch)
    specific, shared = 0.0, 0.0
    for layer in arch.scenario_layers:
        x, a, b = layer(x, s, batch.domain)
        specific, shared = specific + a, shared + b
    tasks = torch.arange(T).repeat(B)  # row b * T + t
    h = x.repeat_interleave(T, dim=0)
    condition = torch.cat([s.repeat_interleave(T, dim=0), arch.task_embedding(tasks)], dim=1)
    for layer in arch.task_layers:
        h, a, b = layer(h, condition, tasks)
        specific, shared = specific + a, shared + b
    assert specific > 0 and shared > 0
    torch.testing.assert_close(output.auxiliary_loss, 0.3 * specific + 0.7 * shared)


def test_auxiliary_loss_trains_every_gate():
    """The KL terms see every gate's column of P, so rows of domain 0 train the other domains' gates too
    (the label loss does not: test_baselines' domain test)."""
    arch = small_arch().train()
    arch(features(domain=[0] * B)).auxiliary_loss.backward()
    gates = arch.scenario_layers[0].gates.weight.grad
    assert all(gates[k].abs().sum() > 0 for k in range(K))


def test_a_task_owns_its_tower_and_a_row_its_domain():
    arch = small_arch()
    batch = features(domain=[0] * B)
    before = arch(batch)
    with torch.no_grad():
        arch.towers.layers[2].bias[1].add_(1.0)
    after = arch(batch)
    assert torch.equal(after[:, 0], before[:, 0]) and not torch.allclose(after[:, 1], before[:, 1])
    moved = arch(features(domain=[1, 0, 0, 0, 0]))
    assert not torch.allclose(moved[0], after[0])
    torch.testing.assert_close(moved[1:], after[1:], rtol=0, atol=0)


def test_one_task():
    """One task: the task layer has one gate (a plain softmax gate), so only the scenario layer adds KL terms."""
    arch = small_arch(num_tasks=1, noise_scale=0.0).train()
    batch = features()
    output = arch(batch)
    assert output.logits.shape == (B, 1) and arch.task_layers[0].num_gates == 1
    _, specific, shared = arch.scenario_layers[0](arch.input(batch), arch.indicator(batch), batch.domain)
    torch.testing.assert_close(output.auxiliary_loss, 0.1 * specific + 0.1 * shared)
    only_scenario = small_arch(num_tasks=1, task_layers=0).train()
    assert only_scenario.task_embedding is None and only_scenario(batch).logits.shape == (B, 1)


def test_without_layers_the_towers_see_the_input():
    arch = small_arch(scenario_layers=0, task_layers=0).train()
    output = arch(features())
    assert output.logits.shape == (B, T) and output.auxiliary_loss.item() == 0.0


def test_every_parameter_learns():
    arch = small_arch(scenario_features=["user_level"], scenario_layers=2, task_layers=2).train()
    output = arch(features())
    (output.logits.sum() + output.auxiliary_loss).backward()
    silent = [n for n, p in arch.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not silent


# --------------------------------------------------------------------------- options


def test_options_are_checked_at_load():
    config = from_dict(
        ModelConfig, {"name": "aesm2", "aesm2": {"scenario_experts": 3, "task_layers": 2}}, prefix="model"
    )
    assert config.aesm2.scenario_experts == 3 and config.aesm2.task_layers == 2
    for options, key in [
        ({"scenario_experts": 0}, "scenario_experts"),
        ({"task_specific_top_k": 0}, "task_specific_top_k"),
        ({"noise_scale": -1.0}, "noise_scale"),
        ({"shared_loss_weight": -0.1}, "shared_loss_weight"),
        ({"expert_hidden": [0]}, "expert_hidden"),
        ({"dropout": 1.0}, "dropout"),
        ({"scenario_layers": -1}, "scenario_layers"),
    ]:
        with pytest.raises(ConfigError, match=f"model.aesm2.{key}"):
            from_dict(ModelConfig, {"aesm2": options}, prefix="model")


@pytest.mark.parametrize(
    "options, message",
    [
        ({"scenario_features": ["foo"]}, r"model.aesm2.scenario_features: 'foo' is not an id feature"),
        ({"scenario_features": ["user_level", "user_level"]}, "model.aesm2.scenario_features: duplicate"),
        ({"expert_hidden": []}, "model.aesm2.expert_hidden: needs at least one"),
        ({"scenario_experts": 2, "scenario_shared_top_k": 3}, "model.aesm2.scenario_shared_top_k: 3 is more than"),
        ({"task_experts": 1, "task_specific_top_k": 2}, "model.aesm2.task_specific_top_k: 2 is more than"),
    ],
)
def test_bad_options_building_the_arch(options, message):
    with pytest.raises(ConfigError, match=message):
        AESM2Arch(layout(), AESM2Config(**options))
