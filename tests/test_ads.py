"""ADS (PSRG, PCRG, ablations) and the target-attention backbones MHA and CAN, against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from torchrec_mdr.config import ConfigError, from_dict
from torchrec_mdr.models.ads import ADSArch, ADSConfig, PCRG, PSRG
from torchrec_mdr.models.blocks import AttentionOptions, CoActionUnit, MultiHeadTargetAttention, build_attention
from torchrec_mdr.models.din import DINArch, DINConfig
from torchrec_mdr.models.features import EmbeddedFeatures, EmbeddedSequence, FeatureLayout, SequenceLayout
from torchrec_mdr.models.registry import ModelConfig
from torchrec_mdr.models.target_attention import TargetAttentionArch

B, L, D = 4, 5, 3  # batch, sequence length, embedding dim
LENGTHS = [5, 3, 1, 0]  # a full row, two partial rows, an empty row


def make_mask(lengths: list[int] = LENGTHS, length: int = L) -> torch.Tensor:
    return torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]


def with_noisy_padding(tensor: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The same tensor with large random values at the padded positions."""
    return torch.where(mask[..., None], tensor, 1e3 * torch.randn_like(tensor))


def tiny_layout(length: int = L) -> FeatureLayout:
    hist = SequenceLayout("hist", ("hist_item_id", "hist_domain"), length, ("item_id",))
    return FeatureLayout(
        fields=("user_id", "item_id", "user_activity"),
        pooled=frozenset(),
        sequences=(hist,),
        embedding_dim=D,
        num_dense=2,
        num_domains=3,
        num_tasks=1,
    )


def tiny_features(layout: FeatureLayout, lengths: list[int] = LENGTHS) -> EmbeddedFeatures:
    (hist,) = layout.sequences
    mask = make_mask(lengths, hist.max_length)
    keys = torch.randn(len(lengths), hist.max_length, layout.sequence_width(hist)) * mask[..., None]
    return EmbeddedFeatures(
        fields=torch.randn(len(lengths), len(layout.fields), D),
        sequences=[EmbeddedSequence(keys, mask, torch.randn(len(lengths), D))],
        dense=torch.randn(len(lengths), 2),
        domain=torch.tensor([0, 1, 2, 1][: len(lengths)]),
    )


def small_ads(**options) -> ADSConfig:
    settings = dict(generator_hidden=4, attention_hidden=[4], heads=2, head_dim=2, micro_hidden=[3, 2], hidden=[8])
    settings.update(options)
    return ADSConfig(**settings)


# --------------------------------------------------------------------------- PSRG (eqs 2-5)


def test_psrg_with_set_weights_matches_eqs_2_to_5():
    d_domain, d_s, d_h, eta = 2, 2, 2, 1.5
    psrg = PSRG(d_domain, d_s, d_h, eta)
    w1, b1 = torch.tensor([[1.0, -1.0], [0.5, 2.0]]), torch.tensor([0.1, -0.2])
    w2, b2 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 1.0], [2.0, -0.5]]), torch.tensor([0.0, 0.3, -0.1, 0.2])
    v1, c1 = torch.tensor([[0.3, 0.7], [-1.0, 0.4]]), torch.tensor([0.0, 0.5])
    v2, c2 = torch.tensor([[1.0, -2.0], [0.5, 0.5]]), torch.tensor([0.25, -0.75])
    shared = torch.tensor([1.0, -2.0, 0.5, 3.0])
    with torch.no_grad():
        psrg.weight_generator[0].weight.copy_(w1), psrg.weight_generator[0].bias.copy_(b1)
        psrg.weight_generator[2].weight.copy_(w2), psrg.weight_generator[2].bias.copy_(b2)
        psrg.bias_generator[0].weight.copy_(v1), psrg.bias_generator[0].bias.copy_(c1)
        psrg.bias_generator[2].weight.copy_(v2), psrg.bias_generator[2].bias.copy_(c2)
        psrg.shared_weight.copy_(shared)
    domain_features = torch.tensor([[0.5, -1.0], [2.0, 1.0]])
    keys = torch.tensor([[[1.0, 2.0], [-1.0, 0.5], [0.0, 0.0]], [[3.0, -1.0], [0.2, 0.2], [1.0, 1.0]]])
    out = psrg(domain_features, keys)
    relu = lambda x: [max(v, 0.0) for v in x]  # noqa: E731
    sigmoid = lambda v: 1.0 / (1.0 + math.exp(-v))  # noqa: E731
    for b in range(2):
        e_d = domain_features[b].tolist()
        h = relu([sum(w1[i, j].item() * e_d[j] for j in range(2)) + b1[i].item() for i in range(2)])
        private = [sigmoid(sum(w2[o, i].item() * h[i] for i in range(2)) + b2[o].item()) for o in range(4)]  # eq 2
        weight = [eta * shared[o].item() * private[o] for o in range(4)]  # eq 3, row-major [[w0, w1], [w2, w3]]
        hb = relu([sum(v1[i, j].item() * e_d[j] for j in range(2)) + c1[i].item() for i in range(2)])
        bias = [sum(v2[o, i].item() * hb[i] for i in range(2)) + c2[o].item() for o in range(2)]  # eq 4
        for t in range(3):
            e = keys[b, t].tolist()
            expected = [weight[2 * i] * e[0] + weight[2 * i + 1] * e[1] + bias[i] for i in range(2)]  # eq 5: W e + b
            torch.testing.assert_close(out[b, t], torch.tensor(expected), rtol=1e-5, atol=1e-6)


def test_psrg_starts_as_the_identity_when_the_generators_output_zero():
    """W_shared = I and eta = 2: sigmoid(0) = 1/2 gives W = I; with a zero bias PSRG is the identity."""
    psrg = PSRG(4, 6, 5, eta=2.0)
    with torch.no_grad():
        for generator in (psrg.weight_generator, psrg.bias_generator):
            generator[2].weight.zero_(), generator[2].bias.zero_()
    keys = torch.randn(3, L, 6)
    torch.testing.assert_close(psrg(torch.randn(3, 4), keys), keys)


@pytest.mark.parametrize("init", ["identity", "identity_noise", "xavier"])
def test_psrg_shared_init_decides_whether_off_diagonal_generators_learn(init):
    """d W / d W_private = eta W_shared: with W_shared = I the generator's off-diagonal outputs get exactly
    zero gradient at the first step; identity + noise and Xavier give them one."""
    torch.manual_seed(0)
    psrg = PSRG(4, 6, 5, eta=2.0, shared_init=init)
    psrg(torch.randn(8, 4), torch.randn(8, L, 6)).square().sum().backward()
    grad = psrg.weight_generator[2].weight.grad.view(6, 6, -1)  # output unit (i, j) of W_private
    off_diagonal = ~torch.eye(6, dtype=torch.bool)
    if init == "identity":
        assert torch.count_nonzero(grad[off_diagonal]) == 0 and torch.count_nonzero(grad[~off_diagonal]) > 0
    else:
        assert torch.count_nonzero(grad[off_diagonal]) > 0


def test_unknown_psrg_shared_init_is_a_config_error():
    with pytest.raises(ConfigError, match="psrg_shared_init"):
        from_dict(ADSConfig, {"psrg_shared_init": "orthogonal"})


# --------------------------------------------------------------------------- PCRG (eqs 6-7)


def pcrg_private(pcrg: PCRG, domain_features: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """E_Q-private of eq 6 computed by hand from the gen-net's layers: [B, G, d_Q]."""
    first, second = pcrg.generator[0], pcrg.generator[2]
    x = torch.cat([domain_features, query], dim=1)
    hidden = torch.relu(x @ first.weight.T + first.bias)
    return (hidden @ second.weight.T + second.bias).view(len(x), pcrg.num_chunks, -1)


def test_pcrg_one_query_per_behaviour_counts_from_the_newest():
    torch.manual_seed(0)
    pcrg = PCRG(domain_dim=2, query_dim=D, length=L, items_per_chunk=1, hidden=4)
    domain_features, query, mask = torch.randn(B, 2), torch.randn(B, D), make_mask()
    out = pcrg(domain_features, query, mask)
    private = pcrg_private(pcrg, domain_features, query)
    assert out.shape == (B, L, D) and pcrg.num_chunks == L
    for b, n in enumerate(LENGTHS):
        for t in range(n):  # behaviour t (oldest first) has recency n - 1 - t; the newest gets query 0
            torch.testing.assert_close(out[b, t], private[b, n - 1 - t] + query[b])  # eq 7
    # the full row uses every generated query once, in reverse storage order
    torch.testing.assert_close(out[0], private[0].flip(0) + query[0])


def test_pcrg_chunks_repeat_queries_and_truncate_the_oldest_chunk():
    torch.manual_seed(0)
    pcrg = PCRG(domain_dim=2, query_dim=D, length=L, items_per_chunk=2, hidden=4)
    assert pcrg.num_chunks == 3  # ceil(5 / 2): the last chunk holds one behaviour
    domain_features, query, mask = torch.randn(B, 2), torch.randn(B, D), make_mask()
    out = pcrg(domain_features, query, mask)
    private = pcrg_private(pcrg, domain_features, query)
    expected_chunks = {0: [2, 1, 1, 0, 0], 1: [1, 0, 0], 2: [0]}  # row -> chunk of each real position
    for b, chunks in expected_chunks.items():
        for t, g in enumerate(chunks):
            torch.testing.assert_close(out[b, t], private[b, g] + query[b])


@pytest.mark.parametrize("items_per_chunk", [L, L + 3])
def test_pcrg_with_one_chunk_gives_one_shared_query(items_per_chunk):
    torch.manual_seed(0)
    pcrg = PCRG(domain_dim=2, query_dim=D, length=L, items_per_chunk=items_per_chunk, hidden=4)
    assert pcrg.num_chunks == 1
    domain_features, query, mask = torch.randn(B, 2), torch.randn(B, D), make_mask()
    out = pcrg(domain_features, query, mask)
    shared = pcrg_private(pcrg, domain_features, query)[:, 0] + query
    torch.testing.assert_close(out, shared[:, None, :].expand(B, L, D))


def psrg_as_first_written(psrg: PSRG, domain_features: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Eqs 2-5 in their first, direct form: eta (W_shared ⊙ W_private), an einsum, then the bias."""
    weight = psrg.eta * (psrg.shared_weight * torch.sigmoid(psrg.weight_generator(domain_features)))
    weight = weight.view(-1, psrg.seq_dim, psrg.seq_dim)
    return torch.einsum("blj,bij->bli", keys, weight) + psrg.bias_generator(domain_features).unsqueeze(1)


def pcrg_as_first_written(
    pcrg: PCRG, domain_features: torch.Tensor, query: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Eqs 6-7 in their first form: the chunk queries gathered per position, then E_Q added per position."""
    private = pcrg.generator(torch.cat([domain_features, query], dim=-1)).view(-1, pcrg.num_chunks, pcrg.query_dim)
    index = pcrg.chunk_index(mask).unsqueeze(-1).expand(-1, -1, pcrg.query_dim)
    return private.gather(1, index) + query.unsqueeze(1)


def outputs_and_gradients(module: torch.nn.Module, forward, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """The output of ``forward(*inputs)`` and the gradients of a fixed random loss on it, of every parameter
    of ``module`` and every input."""
    module.zero_grad(set_to_none=True)
    inputs = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in inputs]
    out = forward(*inputs)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(7))
    (out * weights).sum().backward()
    grads = [p.grad for p in module.parameters()] + [x.grad for x in inputs if x.is_floating_point()]
    return [out.detach(), *grads]


@pytest.mark.parametrize("eta", [2.0, 1.3])
def test_psrg_computes_what_its_first_form_computed(eta):
    """PSRG's batched product with the bias as addend (and eta on W_shared) equals eqs 2-5 written directly:
    output and every gradient, within float rounding."""
    torch.manual_seed(0)
    psrg = PSRG(6, 8, 5, eta=eta, shared_init="xavier")
    inputs = [torch.randn(16, 6), torch.randn(16, 11, 8)]
    fast = outputs_and_gradients(psrg, psrg, inputs)
    direct = outputs_and_gradients(psrg, lambda d, k: psrg_as_first_written(psrg, d, k), inputs)
    for a, b in zip(fast, direct):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("items_per_chunk", [1, 2, 3, 11, 20])
def test_pcrg_computes_what_its_first_form_computed(items_per_chunk):
    """PCRG's row gather of the chunk queries (E_Q added once per chunk) equals the per-position gather then
    E_Q added per position: output exactly, gradients within float rounding; rows of every length."""
    torch.manual_seed(0)
    length = 11
    pcrg = PCRG(domain_dim=3, query_dim=4, length=length, items_per_chunk=items_per_chunk, hidden=5)
    mask = make_mask([11, 7, 1, 0, 4, 10], length)
    inputs = [torch.randn(6, 3), torch.randn(6, 4), mask]
    fast = outputs_and_gradients(pcrg, pcrg, inputs)
    direct = outputs_and_gradients(pcrg, lambda d, q, m: pcrg_as_first_written(pcrg, d, q, m), inputs)
    assert torch.equal(fast[0], direct[0])
    for a, b in zip(fast[1:], direct[1:]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- attention blocks


def make_attention(backbone: str, dim: int) -> torch.nn.Module:
    return build_attention(backbone, dim, din_hidden=[4], heads=2, head_dim=3, micro_hidden=[3, 2], orders=2)


@pytest.mark.parametrize("backbone", ["din", "mha", "can"])
@pytest.mark.parametrize("per_position_query", [False, True])
def test_padded_positions_change_no_attention_output(backbone, per_position_query):
    torch.manual_seed(0)
    attention = make_attention(backbone, D)
    mask, keys = make_mask(), torch.randn(B, L, D)
    query = torch.randn(B, L, D) if per_position_query else torch.randn(B, D)
    out = attention(query, keys, mask)
    assert out.shape == (B, attention.out_features) and torch.isfinite(out).all()
    noisy_query = with_noisy_padding(query, mask) if per_position_query else query
    assert torch.equal(attention(noisy_query, with_noisy_padding(keys, mask), mask), out)
    assert torch.equal(out[3], torch.zeros(attention.out_features))  # an all-padding row pools to zero
    changed = keys.clone()
    changed[1, 2] += 1.0  # a real position does matter
    assert not torch.equal(attention(query, changed, mask)[1], out[1])


def test_mha_with_a_row_query_equals_hand_written_softmax_attention():
    torch.manual_seed(0)
    heads, head_dim, dq, dk = 2, 3, 4, 5
    attention = MultiHeadTargetAttention(dq, dk, heads, head_dim)
    query, keys, mask = torch.randn(B, dq), torch.randn(B, L, dk), make_mask()
    out = attention(query, keys, mask).detach()
    attention.requires_grad_(False)
    for b, n in enumerate(LENGTHS):
        expected = []
        for h in range(heads):
            rows = slice(h * head_dim, (h + 1) * head_dim)
            w_q, w_k, w_v = (m.weight[rows] for m in (attention.query, attention.key, attention.value))
            q = w_q @ query[b]  # eq 8
            scores = [float(q @ (w_k @ keys[b, t])) / math.sqrt(head_dim) for t in range(n)]  # eqs 9, 11
            top = max(scores, default=0.0)
            exp = [math.exp(s - top) for s in scores]
            z = [e / sum(exp) for e in exp]  # eq 12: softmax over the real positions only
            expected.append(sum((z[t] * (w_v @ keys[b, t]) for t in range(n)), torch.zeros(head_dim)))  # eq 10, 12
        torch.testing.assert_close(out[b], torch.cat(expected), rtol=1e-5, atol=1e-6)


def test_mha_pairs_query_t_with_key_t():
    torch.manual_seed(0)
    attention = MultiHeadTargetAttention(D, D, heads=1, head_dim=2)
    queries, keys, mask = torch.randn(B, L, D), torch.randn(B, L, D), make_mask()
    weights = attention.attention_weights(queries, keys, mask)[:, 0]  # [B, L]
    b, n = 1, LENGTHS[1]
    scores = torch.stack([attention.query(queries[b, t]) @ attention.key(keys[b, t]) for t in range(n)]) / math.sqrt(2)
    torch.testing.assert_close(weights[b, :n], torch.softmax(scores, 0))
    assert torch.equal(weights[b, n:], torch.zeros(L - n))


def hand_micro_mlp(parameters: torch.Tensor, e: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    """CAN's micro-MLP written out: slice [W1, b1, W2, b2, ...] from the flat parameter vector."""
    outputs, x, start, fan_in = [], e, 0, e.shape[0]
    for index, fan_out in enumerate(sizes):
        weight = parameters[start : start + fan_in * fan_out].view(fan_in, fan_out)
        start += fan_in * fan_out
        bias = parameters[start : start + fan_out]
        start += fan_out
        x = (torch.tanh(x) if index > 0 else x) @ weight + bias
        outputs.append(x)
        fan_in = fan_out
    return outputs


@pytest.mark.parametrize("per_position_query", [False, True])
def test_can_equals_a_hand_written_micro_mlp(per_position_query):
    torch.manual_seed(0)
    sizes, orders = [3, 2], 2
    unit = CoActionUnit(D, D, sizes, orders)
    assert unit.num_parameters == D * 3 + 3 + 3 * 2 + 2 and unit.out_features == orders * 5
    keys, mask = torch.randn(B, L, D), make_mask()
    query = torch.randn(B, L, D) if per_position_query else torch.randn(B, D)
    out = unit(query, keys, mask)
    b, n = 1, LENGTHS[1]
    expected = torch.zeros(unit.out_features)
    for t in range(n):  # behaviour t is transformed by the micro-MLP its own query parameterises
        parameters = unit.induction(query[b, t] if per_position_query else query[b])
        expected += torch.cat(
            hand_micro_mlp(parameters, keys[b, t], sizes) + hand_micro_mlp(parameters, keys[b, t] ** 2, sizes)
        )
    torch.testing.assert_close(out[b], expected, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- the ADS arch


@pytest.mark.parametrize("backbone", ["din", "mha", "can"])
def test_ads_output_ignores_padded_behaviours(backbone):
    torch.manual_seed(0)
    layout = tiny_layout()
    model = ADSArch(layout, small_ads(backbone=backbone, domain_features=["user_activity"], items_per_chunk=2))
    features = tiny_features(layout)
    out = model(features)
    assert out.shape == (B, 1) and torch.isfinite(out).all()
    (sequence,) = features.sequences
    noisy = EmbeddedSequence(with_noisy_padding(sequence.keys, sequence.mask), sequence.mask, sequence.query)
    assert torch.equal(model(EmbeddedFeatures(features.fields, [noisy], features.dense, features.domain)), out)


def test_ads_uses_the_domain_features_in_the_generators():
    torch.manual_seed(0)
    layout = tiny_layout()
    model = ADSArch(layout, small_ads(domain_features=["user_activity"]))
    features = tiny_features(layout)
    block = model.blocks[0]
    domain_features = model.domain_features(features, model.input.domain_embedding(features.domain))
    assert domain_features.shape == (B, 2 * D)
    torch.testing.assert_close(domain_features[:, D:], features.fields[:, 2])  # user_activity's embedding
    assert block.psrg.weight_generator[0].in_features == 2 * D
    assert block.pcrg.generator[0].in_features == 2 * D + 2 * D  # E_D ⊕ E_Q (projected to d_S = 2 D)


def test_ablation_switches_remove_the_modules():
    torch.manual_seed(0)
    layout = tiny_layout()
    features = tiny_features(layout)
    (sequence,) = features.sequences
    names = {
        key: {n for n, _ in ADSArch(layout, small_ads(**key_options)).named_parameters()}
        for key, key_options in {
            "full": {},
            "no_pcrg": dict(use_pcrg=False),
            "neither": dict(use_pcrg=False, use_psrg=False),
        }.items()
    }
    assert any(".psrg." in n for n in names["full"]) and any(".pcrg." in n for n in names["full"])
    assert not any(".pcrg." in n for n in names["no_pcrg"]) and any(".psrg." in n for n in names["no_pcrg"])
    assert not any(".pcrg." in n or ".psrg." in n for n in names["neither"])

    model = ADSArch(layout, small_ads(use_pcrg=False))
    block = model.blocks[0]
    domain_features = model.domain_features(features, model.input.domain_embedding(features.domain))
    queries, keys = block.queries_and_keys(domain_features, sequence)
    candidate = block.query_projection(sequence.query)  # w/o PCRG: the candidate, tiled
    assert torch.equal(queries, candidate[:, None, :].expand(B, L, 2 * D))
    torch.testing.assert_close(keys, block.psrg(domain_features, sequence.keys))

    model = ADSArch(layout, small_ads(use_pcrg=False, use_psrg=False))
    block = model.blocks[0]
    queries, keys = block.queries_and_keys(domain_features, sequence)
    assert torch.equal(keys, sequence.keys)  # w/o both: the raw behaviours
    pooled = block.attention(block.query_projection(sequence.query), sequence.keys, sequence.mask)
    domain = model.input.domain_embedding(features.domain)
    expected = model.mlp(torch.cat([features.fields.flatten(1), domain, features.dense, pooled], dim=1))
    torch.testing.assert_close(model(features), expected)  # the plain backbone arch


def test_parameter_count_grows_as_chunks_shrink():
    """Fig. 4: fewer items per chunk -> more generated queries -> more parameters (G d_S (d_h + 1) each)."""
    length, layout = 10, tiny_layout(10)
    counts = {
        k: sum(p.numel() for p in ADSArch(layout, small_ads(items_per_chunk=k)).parameters()) for k in (10, 5, 2, 1)
    }
    assert counts[10] < counts[5] < counts[2] < counts[1]
    d_s, d_h = 2 * D, 4
    assert counts[1] - counts[10] == (length - 1) * d_s * (d_h + 1)


def test_unknown_backbone_or_domain_feature_is_a_config_error():
    layout = tiny_layout()
    with pytest.raises(ConfigError, match=r"model\.ads\.backbone: 'gru'"):
        ADSArch(layout, small_ads(backbone="gru"))
    with pytest.raises(ConfigError, match=r"model\.ads\.domain_features: 'city'.*\['user_id', 'item_id', "):
        ADSArch(layout, small_ads(domain_features=["user_activity", "city"]))
    with pytest.raises(ConfigError, match=r"model\.ads.*backbone: 'gru'"):  # and at load time
        from_dict(ModelConfig, {"name": "ads", "ads": {"backbone": "gru"}}, prefix="model")


def test_models_are_deterministic_given_the_seed():
    layout = tiny_layout()
    features = tiny_features(layout)
    outputs = []
    for _ in range(2):
        torch.manual_seed(3)
        outputs.append(ADSArch(layout, small_ads(backbone="mha", items_per_chunk=2))(features))
    assert torch.equal(*outputs)


# --------------------------------------------------------------------------- backbone archs


def test_target_attention_arch_with_din_reproduces_din_arch():
    layout = tiny_layout()
    features = tiny_features(layout)
    torch.manual_seed(0)
    din = DINArch(layout, DINConfig(attention_hidden=[4], hidden=[8]))
    torch.manual_seed(0)
    generic = TargetAttentionArch(layout, AttentionOptions("din", din_hidden=[4]), [8], 0.0)
    assert torch.equal(generic(features), din(features))
