"""ADIN (ranking form) and domain-specific batch normalisation: equations by hand, domain isolation,
self-training, ablation switches."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchrec_mdr.config import ConfigError
from torchrec_mdr.models import ranking
from torchrec_mdr.models.adin import (
    ADINArch,
    ADINConfig,
    DomainInterestLayer,
    SharedAndDomainNetwork,
    self_training_loss,
)
from torchrec_mdr.models.blocks import DomainBatchNorm, StackedLinear, StackedMLP
from torchrec_mdr.models.features import EmbeddedFeatures, EmbeddedSequence, FeatureLayout, SequenceLayout

B, L, D, K, T = 12, 5, 4, 3, 2

# --------------------------------------------------------------------------- domain-specific batch norm


def two_scale_batch() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    x = torch.randn(10, 3)
    domain = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1, 0, 1])
    x[domain == 1] = 100.0 * x[domain == 1] + 50.0  # domain 1 lives on a very different scale
    return x, domain


def test_dsbn_normalises_each_domain_with_its_own_statistics():
    x, domain = two_scale_batch()
    out = DomainBatchNorm(3, 2)(x, domain)
    for k in (0, 1):
        rows = out[domain == k]
        torch.testing.assert_close(rows.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
        torch.testing.assert_close(rows.std(0, unbiased=False), torch.ones(3), atol=1e-3, rtol=0)
    # one shared BatchNorm over the same batch leaves domain 0 squashed near one value
    shared = nn.BatchNorm1d(3)(x)
    assert shared[domain == 0].std(0, unbiased=False).max() < 0.05


def test_dsbn_running_statistics_are_each_domains_own():
    x, domain = two_scale_batch()
    norm = DomainBatchNorm(3, 2, momentum=1.0)  # running statistics = the last batch's
    norm(x, domain)
    for k in (0, 1):
        torch.testing.assert_close(norm.running_mean[k], x[domain == k].mean(0))
        torch.testing.assert_close(norm.running_var[k], x[domain == k].var(0, unbiased=True))  # unbiased
    assert norm.num_batches_tracked.tolist() == [1, 1]
    # momentum 0.1 from the initial (0, 1): a hand computation
    norm = DomainBatchNorm(3, 2, momentum=0.1)
    norm(x, domain)
    torch.testing.assert_close(norm.running_mean[1], 0.1 * x[domain == 1].mean(0))
    torch.testing.assert_close(norm.running_var[1], 0.9 + 0.1 * x[domain == 1].var(0, unbiased=True))


def test_dsbn_equals_batchnorm1d_when_every_row_is_one_domain():
    x, _ = two_scale_batch()
    norm, reference = DomainBatchNorm(3, 1), nn.BatchNorm1d(3)
    torch.testing.assert_close(norm(x, torch.zeros(10, dtype=torch.long)), reference(x))
    torch.testing.assert_close(norm.running_mean[0], reference.running_mean)
    torch.testing.assert_close(norm.running_var[0], reference.running_var)


def test_dsbn_eval_uses_each_domains_running_statistics():
    x, domain = two_scale_batch()
    norm = DomainBatchNorm(3, 2)
    with torch.no_grad():
        norm.running_mean.copy_(torch.tensor([[1.0, 2.0, 3.0], [40.0, 50.0, 60.0]]))
        norm.running_var.copy_(torch.tensor([[4.0, 1.0, 9.0], [1e4, 2e4, 3e4]]))
        norm.weight.copy_(torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.5, 0.5]]))
        norm.bias.copy_(torch.tensor([[0.0, 1.0, 0.0], [-1.0, 0.0, 1.0]]))
    norm.eval()
    before = norm.running_mean.clone()
    out = norm(x, domain)
    expected = (x - norm.running_mean[domain]) / torch.sqrt(norm.running_var[domain] + norm.eps) * norm.weight[
        domain
    ] + norm.bias[domain]
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(norm(x[:1], domain[:1]), out[:1])  # a row's output ignores the rest of the batch
    assert torch.equal(norm.running_mean, before)  # eval updates nothing


def test_dsbn_leaves_an_absent_domain_untouched():
    x, _ = two_scale_batch()
    domain = torch.tensor([0, 2] * 5)  # domain 1 absent
    norm = DomainBatchNorm(3, 3)
    norm(x, domain).pow(2).sum().backward()
    assert torch.equal(norm.running_mean[1], torch.zeros(3)) and torch.equal(norm.running_var[1], torch.ones(3))
    assert norm.num_batches_tracked.tolist() == [1, 0, 1]
    assert torch.equal(norm.weight.grad[1], torch.zeros(3)) and torch.equal(norm.bias.grad[1], torch.zeros(3))


def test_dsbn_single_row_domain_uses_running_statistics_and_skips_the_update():
    """Choice: a one-row domain in a training batch is normalised like in eval; no NaN, no update."""
    x, _ = two_scale_batch()
    domain = torch.tensor([0, 0, 0, 1, 0, 0, 0, 0, 0, 0])  # domain 1: a single row
    norm = DomainBatchNorm(3, 2)
    with torch.no_grad():
        norm.running_mean[1] = torch.tensor([1.0, -1.0, 0.5])
        norm.running_var[1] = torch.tensor([2.0, 3.0, 4.0])
    x = x.clone().requires_grad_(True)
    out = norm(x, domain)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[3], (x[3] - norm.running_mean[1]) / torch.sqrt(norm.running_var[1] + norm.eps))
    torch.testing.assert_close(norm.running_var[1], torch.tensor([2.0, 3.0, 4.0]))  # not updated
    assert norm.num_batches_tracked.tolist() == [1, 0]
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(norm.weight.grad).all()


def test_dsbn_partitioned_normalisation_affine():
    """STAR: gamma = gamma_shared * gamma_k, beta = beta_shared + beta_k."""
    x, domain = two_scale_batch()
    norm = DomainBatchNorm(3, 2, shared_affine=True)
    with torch.no_grad():
        norm.shared_weight.copy_(torch.tensor([2.0, 3.0, 4.0]))
        norm.shared_bias.copy_(torch.tensor([1.0, 1.0, 1.0]))
        norm.weight.copy_(torch.tensor([[1.0, 0.5, 2.0], [3.0, 1.0, 0.25]]))
        norm.bias.copy_(torch.tensor([[0.0, 1.0, 2.0], [-1.0, -2.0, 0.0]]))
    out = norm(x, domain)
    plain = DomainBatchNorm(3, 2)(x, domain)  # gamma 1, beta 0: the normalised values
    gamma = norm.shared_weight * norm.weight[domain]
    beta = norm.shared_bias + norm.bias[domain]
    torch.testing.assert_close(out, plain * gamma + beta)
    out[domain == 0].sum().backward()  # the shared affine learns from every domain, the partition from its own
    assert norm.shared_weight.grad.abs().sum() > 0 and torch.equal(norm.weight.grad[1], torch.zeros(3))


def test_dsbn_gradient_stays_within_a_domain():
    x, domain = two_scale_batch()
    x = x.clone().requires_grad_(True)
    norm = DomainBatchNorm(3, 2)
    out = norm(x, domain)
    (out[domain == 0] * torch.randn(5, 3)).sum().backward()
    assert torch.equal(x.grad[domain == 1], torch.zeros(5, 3))
    assert torch.equal(norm.weight.grad[1], torch.zeros(3)) and norm.weight.grad[0].abs().sum() > 0


# --------------------------------------------------------------------------- domain interest (SE) layer


def test_domain_interest_layer_matches_hand_computation():
    torch.manual_seed(0)
    fields, domain = torch.randn(4, 3, D), torch.tensor([0, 1, 1, 0])
    layer = DomainInterestLayer(num_fields=3, num_domains=2, hidden=2)
    out = layer(fields, domain)
    for b in range(4):
        d = int(domain[b])
        z = fields[b].mean(-1)  # squeeze: one number per field
        h = torch.relu(layer.shared.weight @ z + layer.shared.bias)
        a = 2 * torch.sigmoid(h @ layer.domain_specific.weight[d] + layer.domain_specific.bias[d])
        torch.testing.assert_close(out[b], a[:, None] * fields[b])
    # a zero domain excitation gives weights 2 * sigmoid(0) = 1: the identity
    with torch.no_grad():
        layer.domain_specific.weight.zero_()
        layer.domain_specific.bias.zero_()
    torch.testing.assert_close(layer(fields, domain), fields)


# --------------------------------------------------------------------------- shared + domain networks, towers


@pytest.mark.parametrize("fusion", ["concat", "sum"])
def test_shared_and_domain_network_fusion(fusion):
    torch.manual_seed(0)
    x, domain = torch.randn(B, 7), torch.arange(B) % K
    network = SharedAndDomainNetwork(7, [6, 5], K, use_dsbn=True, fusion=fusion)
    assert network.out_features == (10 if fusion == "concat" else 5)
    network.eval()  # running statistics: each path can be replayed layer by layer
    out = network(x, domain)
    assert out.shape == (B, network.out_features)
    shared, specific = x, x
    for shared_layer, domain_layer in zip(network.shared, network.domain):
        norm = shared_layer.norm
        shared = torch.relu(norm(shared_layer.linear(shared), domain))
        w, b = domain_layer.linear.weight[domain], domain_layer.linear.bias[domain]
        specific = torch.relu(domain_layer.norm(torch.einsum("bi,bio->bo", specific, w) + b, domain))
    expected = torch.cat([shared, specific], 1) if fusion == "concat" else shared + specific
    torch.testing.assert_close(out, expected)


def test_domain_towers_one_mlp_per_domain():
    torch.manual_seed(0)
    towers = StackedMLP(K, 6, [4], T)
    h = torch.randn(B, 6)
    out = towers(h)
    assert out.shape == (B, K, T)
    first, last = (layer for layer in towers.layers if isinstance(layer, StackedLinear))
    for k in range(K):
        expected = torch.relu(h @ first.weight[k] + first.bias[k]) @ last.weight[k] + last.bias[k]
        torch.testing.assert_close(out[:, k], expected)


# --------------------------------------------------------------------------- the arch


def layout() -> FeatureLayout:
    sequence = SequenceLayout("hist", ("hist_item", "hist_kind"), L, ("item",))
    return FeatureLayout(
        fields=("user", "item", "cat", "hour"),
        pooled=frozenset({"user"}),
        sequences=(sequence,),
        embedding_dim=D,
        num_dense=3,
        num_domains=K,
        num_tasks=T,
    )


def features(domain: torch.Tensor | None = None, seed: int = 1) -> EmbeddedFeatures:
    generator = torch.Generator().manual_seed(seed)
    fields = torch.randn(B, 4, D, generator=generator)
    mask = torch.arange(L)[None, :] < torch.tensor([5, 3, 1, 0, 4, 2, 5, 1, 3, 2, 4, 0])[:, None]
    keys = torch.randn(B, L, 2 * D, generator=generator) * mask[..., None]
    domain = torch.arange(B) % K if domain is None else domain
    return EmbeddedFeatures(
        fields, [EmbeddedSequence(keys, mask, fields[:, 1])], torch.randn(B, 3, generator=generator), domain
    )


def small_config(**overrides) -> ADINConfig:
    options = dict(attention_hidden=[4], hidden=[8, 6], tower_hidden=[4], pseudo_label_threshold=0.6)
    options.update(overrides)
    return ADINConfig(**options)


def domain_specific_parameters(arch: ADINArch) -> dict[str, torch.Tensor]:
    """Every parameter with a leading domain axis: SE excitation, domain MLP, DSBN affine, towers."""
    named = {
        name: p
        for name, p in arch.named_parameters()
        if name.startswith(("domain_interest.domain_specific", "network.domain", "towers"))
        or (name.endswith((".norm.weight", ".norm.bias")))
    }
    assert all(p.shape[0] == K for p in named.values())
    return named


def test_adin_arch_shapes_and_padding():
    torch.manual_seed(0)
    arch = ADINArch(layout(), small_config())
    assert arch.network.out_features == 12  # concat of 6 + 6
    batch = features()
    output = arch(batch)
    assert isinstance(output, ranking.ArchOutput) and output.logits.shape == (B, T)
    arch.eval()
    reference = arch(batch)
    assert isinstance(reference, torch.Tensor) and reference.shape == (B, T)
    # each row reads its own domain's tower
    torch.testing.assert_close(reference, arch.per_domain_logits(batch)[torch.arange(B), batch.domain])
    # padded behaviours change nothing
    sequence = batch.sequences[0]
    sequence.keys = torch.where(sequence.mask[..., None], sequence.keys, torch.randn(B, L, 2 * D))
    assert torch.equal(arch(batch), reference)


def test_adin_is_deterministic_given_the_seed():
    outputs = []
    for _ in range(2):
        torch.manual_seed(3)
        outputs.append(ADINArch(layout(), small_config())(features()).logits)
    assert torch.equal(*outputs)


def test_domain_parameters_get_no_gradient_from_a_batch_without_their_domain():
    torch.manual_seed(0)
    arch = ADINArch(layout(), small_config(self_training=False))  # self-training feeds other heads on purpose
    arch(features(domain=torch.zeros(B, dtype=torch.long))).sum().backward()
    named = domain_specific_parameters(arch)
    assert len(named) == 2 + 4 + 8 + 4  # SE (w, b), domain MLP 2 x (w, b), 4 DSBN x (w, b), towers 2 x (w, b)
    for name, p in named.items():
        assert p.grad[0].abs().sum() > 0, name
        assert torch.equal(p.grad[1:], torch.zeros_like(p.grad[1:])), name
    for module in arch.modules():
        if isinstance(module, DomainBatchNorm):
            assert module.num_batches_tracked.tolist() == [1, 0, 0]


def test_zeroing_one_domains_loss_zeroes_its_parameters_gradients():
    torch.manual_seed(0)
    arch = ADINArch(layout(), small_config(self_training=False))
    batch = features()
    logits = arch(batch)
    row_weight = (batch.domain != 1).float()[:, None]
    (logits * row_weight).sum().backward()
    for name, p in domain_specific_parameters(arch).items():
        assert torch.equal(p.grad[1], torch.zeros_like(p.grad[1])), name
        assert p.grad[0].abs().sum() > 0 and p.grad[2].abs().sum() > 0, name


def test_without_dsbn_a_shared_batch_norm_couples_the_domains():
    """The contrast that motivates DSBN: one BatchNorm's batch statistics mix the domains."""
    torch.manual_seed(0)
    arch = ADINArch(layout(), small_config(self_training=False, use_dsbn=False))
    assert not any(isinstance(m, DomainBatchNorm) for m in arch.modules())
    assert any(isinstance(m, nn.BatchNorm1d) for m in arch.modules())
    batch = features()
    logits = arch(batch)
    (logits * (batch.domain != 1).float()[:, None]).sum().backward()
    assert arch.network.domain[0].linear.weight.grad[1].abs().sum() > 0


# --------------------------------------------------------------------------- self-training


def test_self_training_loss_by_hand():
    logits = torch.tensor(
        [
            [5.0, 3.0, -3.0],  # domain 0: heads 1 (p=.95 -> 1) and 2 (p=.05 -> 0)
            [0.5, 4.0, 2.0],  # domain 1: head 0 p=.62, head 2 p=.88: not confident
            [-2.5, 2.3, 9.0],
        ]
    )[..., None]  # domain 2: head 0 (-> 0), head 1 (p=.909 -> 1)
    domain = torch.tensor([0, 1, 2])
    expected = torch.stack(
        [
            F.softplus(torch.tensor(-3.0)),
            F.softplus(torch.tensor(-3.0)),
            F.softplus(torch.tensor(-2.5)),
            F.softplus(torch.tensor(-2.3)),
        ]
    ).mean()
    torch.testing.assert_close(self_training_loss(logits, domain, threshold=0.9), expected)
    # own-domain heads are never pseudo-labelled (row 0's head 0 at p=.99, row 1's head 1 at p=.98)
    logits = logits.clone().requires_grad_(True)
    self_training_loss(logits, domain, threshold=0.9).backward()
    grad = logits.grad[..., 0]
    selected = torch.tensor([[0, 1, 1], [0, 0, 0], [1, 1, 0]], dtype=torch.bool)
    assert torch.equal(grad[~selected], torch.zeros(5))
    # gradient stopped at the pseudo-label: d/dx BCE(x, y) = sigmoid(x) - y with y a constant
    labels = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    torch.testing.assert_close(grad[selected], ((torch.sigmoid(logits.detach()[..., 0]) - labels) / 4)[selected])


def test_self_training_loss_is_zero_when_nothing_is_confident():
    logits = torch.zeros(4, K, T, requires_grad=True)
    loss = self_training_loss(logits, torch.tensor([0, 1, 2, 0]), threshold=0.9)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))
    assert self_training_loss(torch.full((3, 1, T), 8.0), torch.zeros(3, dtype=torch.long), 0.9).item() == 0.0


def test_arch_returns_the_weighted_self_training_loss_only_in_training():
    torch.manual_seed(0)
    arch = ADINArch(layout(), small_config(pseudo_label_weight=0.3, pseudo_label_threshold=0.5))
    batch = features()
    output = arch(batch)
    assert isinstance(output, ranking.ArchOutput)
    with torch.no_grad():  # still in training: the same batch statistics, the same logits
        per_domain = arch.per_domain_logits(batch)
    torch.testing.assert_close(output.auxiliary_loss, 0.3 * self_training_loss(per_domain, batch.domain, 0.5))
    assert output.auxiliary_loss > 0  # threshold 0.5 selects every other-domain head
    arch.eval()
    assert isinstance(arch(batch), torch.Tensor)
    arch = ADINArch(layout(), small_config(self_training=False))
    assert isinstance(arch(batch), torch.Tensor)  # DenseArch adds a zero auxiliary loss


def test_self_training_carries_labels_to_the_other_domains_heads():
    torch.manual_seed(0)
    arch = ADINArch(layout(), small_config(pseudo_label_threshold=0.5))
    output = arch(features(domain=torch.zeros(B, dtype=torch.long)))
    output.auxiliary_loss.backward()  # label loss left out: only the pseudo-labels
    assert arch.towers.layers[-1].weight.grad[1].abs().sum() > 0
    assert arch.towers.layers[-1].weight.grad[0].abs().sum() == 0  # the own head has real labels instead


# --------------------------------------------------------------------------- switches and config


def test_ablation_switches_remove_their_modules():
    full = ADINArch(layout(), small_config())
    assert isinstance(full.domain_interest, DomainInterestLayer)
    assert any(isinstance(m, DomainBatchNorm) for m in full.modules())
    bare = ADINArch(layout(), small_config(use_domain_interest=False, use_dsbn=False, self_training=False))
    assert bare.domain_interest is None and not any("domain_interest" in n for n, _ in bare.named_parameters())
    assert not any(isinstance(m, DomainBatchNorm) for m in bare.modules())
    assert isinstance(bare(features()), torch.Tensor)
    # the shared/domain split and the towers stay: they are ADIN, not an option
    assert isinstance(bare.towers.layers[0], StackedLinear) and isinstance(bare.network.domain[0].linear, StackedLinear)


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="model.adin.hidden"):
        ADINArch(layout(), small_config(hidden=[]))
    with pytest.raises(ConfigError, match="model.adin.fusion"):
        ADINArch(layout(), small_config(fusion="product"))


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU"))],
)
def test_adin_under_bf16_autocast(device):
    """Mixed precision: DSBN keeps its statistics in float32; the arch stays finite and trainable."""
    torch.manual_seed(0)
    x, domain = two_scale_batch()
    norm = DomainBatchNorm(3, 2).to(device)
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        out = norm(x.to(device).bfloat16(), domain.to(device))
    assert out.dtype == torch.bfloat16 and norm.running_mean.dtype == torch.float32
    torch.testing.assert_close(norm.running_mean[1].cpu(), 0.1 * x.bfloat16().float()[domain == 1].mean(0))
    arch = ADINArch(layout(), small_config()).to(device)
    batch = features()
    batch = EmbeddedFeatures(
        batch.fields.to(device),
        [EmbeddedSequence(s.keys.to(device), s.mask.to(device), s.query.to(device)) for s in batch.sequences],
        batch.dense.to(device),
        batch.domain.to(device),
    )
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        output = arch(batch)
    (output.logits.float().sum() + output.auxiliary_loss).backward()
    assert torch.isfinite(output.logits.float()).all() and torch.isfinite(output.auxiliary_loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in arch.parameters())
