"""DFFM: the domain network (eqs 3-6), the domain-enhanced inner products (eqs 2, 7, 8), the behaviour
self-attention with target- and domain-made parameters (eqs 9-12) and the logit (eqs 13-14), against hand
computations; options checked at load.

Padding invariance, determinism and the domain test run with the other baselines
(tests/test_baselines.py, ``ARCHS["dffm"]``); the FX traces, a real batch through ``RankingModel`` and DMP
training with every registered model (tests/test_fx_trace.py, tests/test_models.py, tests/test_distributed.py).
"""

from __future__ import annotations

import math

import pytest
import torch

from torchrec_mdr.config import ConfigError, from_dict
from torchrec_mdr.models.dffm import DFFI, DFUB, DFFMArch, DFFMConfig, DomainNetwork
from torchrec_mdr.models.features import EmbeddedFeatures, EmbeddedSequence, FeatureLayout, SequenceLayout
from torchrec_mdr.models.registry import MODELS, ModelConfig

B, L, D, K, T = 5, 4, 3, 3, 2
LENGTHS = [4, 2, 1, 0, 3]


def layout(num_dense: int = 2) -> FeatureLayout:
    sequence = SequenceLayout("hist", ("hist_item_id", "hist_domain"), L, ("item_id",))
    return FeatureLayout(
        fields=("user_id", "item_id", "user_activity"),
        pooled=frozenset({"user_id", "user_activity"}),
        sequences=(sequence,),
        embedding_dim=D,
        num_dense=num_dense,
        num_domains=K,
        num_tasks=T,
    )


def features(num_dense: int = 2) -> EmbeddedFeatures:
    generator = torch.Generator().manual_seed(3)
    mask = torch.arange(L)[None, :] < torch.tensor(LENGTHS)[:, None]
    keys = torch.randn(B, L, 2 * D, generator=generator) * mask[..., None]
    fields = torch.randn(B, 3, D, generator=generator)
    return EmbeddedFeatures(
        fields,
        [EmbeddedSequence(keys, mask, fields[:, 1])],
        torch.randn(B, num_dense, generator=generator),
        torch.tensor([0, 1, 2, 0, 1]),
    )


def small(**overrides) -> DFFMConfig:
    options = dict(domain_network=[4, 2], hidden=[6], heads=2, head_dim=3, rank=2, dfub_dim=4)
    options.update(overrides)
    return DFFMConfig(**options)


# --------------------------------------------------------------------------- DFFI


def test_domain_network_cuts_weight_then_bias_row_major_by_hand():
    """lift(x) = bias + x * weight; p = [1, 2, 3, 4, 5, 6] -> W = [[1, 2], [3, 4]], b = [5, 6] (eq 6)."""
    net = DomainNetwork(domain_dim=1, in_dim=2, widths=[2])
    with torch.no_grad():
        net.lift.weight.copy_(torch.tensor([[0.0], [0.0], [0.0], [1.0], [0.0], [0.0]]))
        net.lift.bias.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]))
    vectors = torch.tensor([[[1.0, -1.0], [-3.0, 1.0], [0.0, -3.0]]])
    # W e + b: [1 - 2 + 5, 3 - 4 + 6] = [4, 5]; [-3 + 2 + 5, -9 + 4 + 6] = [4, 1]; [-6 + 5, -12 + 6] -> ReLU -> 0
    out = net(torch.tensor([[0.0]]), vectors)
    assert out.tolist() == [[[4.0, 5.0], [4.0, 1.0], [0.0, 0.0]]]
    # the domain moves W[1, 1] (lift weight row 3): with x = 2, W = [[1, 2], [3, 6]]
    out = net(torch.tensor([[2.0]]), vectors)
    assert out.tolist() == [[[4.0, 3.0], [4.0, 3.0], [0.0, 0.0]]]  # [3 - 6 + 6]; [-9 + 6 + 6]; [-18 + 6] -> 0


def test_domain_network_layers_match_an_explicit_loop_and_tanh():
    torch.manual_seed(0)
    net = DomainNetwork(domain_dim=4, in_dim=3, widths=[5, 2], activation="tanh")
    condition, vectors = torch.randn(2, 4), torch.randn(2, 3, 3)
    flat = condition @ net.lift.weight.T + net.lift.bias
    for b in range(2):
        w1, b1 = flat[b, :15].view(5, 3), flat[b, 15:20]
        w2, b2 = flat[b, 20:30].view(2, 5), flat[b, 30:32]
        for k in range(3):
            expected = torch.tanh(w2 @ torch.tanh(w1 @ vectors[b, k] + b1) + b2)
            torch.testing.assert_close(net(condition, vectors)[b, k], expected)


def test_domain_network_starts_as_linear_draws_with_small_domain_deviation():
    torch.manual_seed(0)
    net = DomainNetwork(domain_dim=8, in_dim=16, widths=[32, 16])
    bias = net.lift.bias
    assert torch.equal(bias[16 * 32 : 16 * 32 + 32], torch.zeros(32))  # b^(1) starts at 0
    assert bias[: 16 * 32].abs().max() <= 1 / math.sqrt(16)  # W^(1): an nn.Linear(16, 32) draw
    assert net.lift.weight[: 16 * 32 + 32].abs().max() <= 1 / math.sqrt(8) / math.sqrt(16)
    assert net.lift.weight[16 * 32 + 32 :].abs().max() <= 1 / math.sqrt(8) / math.sqrt(32)
    assert DomainNetwork(3, 4, []).lift is None  # no layers: the identity
    vectors = torch.randn(2, 5, 4)
    assert torch.equal(DomainNetwork(3, 4, [])(torch.randn(2, 3), vectors), vectors)


def test_plain_inner_products_by_hand_without_domain_network():
    """D = identity: <v1,v2>, <v1,v3>, <v2,v3> = (1*0 + 2*1), (1*-1 + 2*3), (0*-1 + 1*3) = 2, 5, 3 (eq 7)."""
    dffi = DFFI(num_fields=3, dim=2, domain_dim=2, config=DFFMConfig(domain_network=[], hidden=[4]))
    vectors = torch.tensor([[[1.0, 2.0], [0.0, 1.0], [-1.0, 3.0]]])
    assert dffi.interactions(vectors, torch.zeros(1, 2)).tolist() == [[2.0, 5.0, 3.0]]


def test_domain_enhanced_inner_products_and_eq8():
    torch.manual_seed(0)
    dffi = DFFI(num_fields=4, dim=3, domain_dim=5, config=DFFMConfig(domain_network=[4, 2], hidden=[6]))
    vectors, condition = torch.randn(2, 4, 3), torch.randn(2, 5)
    enhanced = dffi.domain_network(condition, vectors).detach()
    pairs = dffi.interactions(vectors, condition)
    expected = [[float(enhanced[b, i] @ enhanced[b, j]) for i in range(4) for j in range(i + 1, 4)] for b in range(2)]
    torch.testing.assert_close(pairs, torch.tensor(expected))  # eq 2 for i < j, in order (eq 7)
    torch.testing.assert_close(dffi(vectors, condition), dffi.mlp(torch.cat([pairs, vectors.flatten(1)], 1)))  # eq 8
    other = condition.clone()
    other[1] += 1.0  # another domain: other interactions for that row only
    moved = dffi.interactions(vectors, other)
    assert torch.equal(moved[0], pairs[0]) and not torch.allclose(moved[1], pairs[1])


# --------------------------------------------------------------------------- DFUB


def test_dfub_by_hand_one_head_scalar_widths():
    """d_S = d_h = r = 1, W' = 1, E = c: Q = K = V = c e; two behaviours e = 1, 2.

    c = 1: scores [[1, 2], [2, 4]]; row 0 softmax [1, 2] -> head 1 + 1/(1 + e); row 1 softmax [2, 4] -> 1 + 1/(1 + e^-2)
    weights; h_DFUB = mean of the two rows (W^out = 1)."""
    block = DFUB(key_width=1, condition_width=1, config=DFFMConfig(heads=1, head_dim=1, rank=1, dfub_dim=1))
    with torch.no_grad():
        for linear in (block.query, block.key, block.value, block.output):
            linear.weight.fill_(1.0)
        block.lift.weight.fill_(0.0)
        block.lift.bias.fill_(1.0)
    keys, mask = torch.tensor([[[1.0], [2.0], [9.0]]]), torch.tensor([[True, True, False]])
    sequence = EmbeddedSequence(keys, mask, torch.zeros(1, 0))
    row0 = 1 + 1 / (1 + math.exp(-1))  # softmax([1, 2]) . [1, 2]
    row1 = 1 + 1 / (1 + math.exp(-2))  # softmax([2, 4]) . [1, 2]
    torch.testing.assert_close(block(sequence, torch.zeros(1, 1)), torch.tensor([[(row0 + row1) / 2]]))
    # c = 2 (from the condition through the lift): scores x4, values x2
    with torch.no_grad():
        block.lift.weight.fill_(1.0)
    row0 = 2 * (1 + 1 / (1 + math.exp(-4)))
    row1 = 2 * (1 + 1 / (1 + math.exp(-8)))
    torch.testing.assert_close(block(sequence, torch.ones(1, 1)), torch.tensor([[(row0 + row1) / 2]]))


def reference_dfub(block: DFUB, sequence: EmbeddedSequence, condition: torch.Tensor) -> torch.Tensor:
    """Eqs 9-12 row by row with explicit matrices W^(i) = W'^(i) E^T over the real behaviours only."""
    h, r, d = block.heads, block.rank, block.head_dim
    outputs = []
    for b in range(sequence.keys.shape[0]):
        n = int(sequence.mask[b].sum())
        if n == 0:
            outputs.append(torch.zeros(block.out_features))
            continue
        lifted = block.lift.weight @ torch.cat([sequence.query[b], condition[b]]) + block.lift.bias
        e = lifted.view(d, r)  # E_Q = E_K = E_V [d_h, r]
        history = sequence.keys[b, :n]  # E^h [n, d_S]
        heads = []
        for i in range(h):
            w_q, w_k, w_v = (lin.weight[i * r : (i + 1) * r].T @ e.T for lin in (block.query, block.key, block.value))
            q, k, v = history @ w_q, history @ w_k, history @ w_v  # eq 10
            heads.append(torch.softmax(q @ k.T / math.sqrt(d), dim=-1) @ v)  # eq 9
        out = torch.cat(heads, dim=1) @ block.output.weight.T  # eq 12 [n, d_out]
        outputs.append(out.mean(0))
    return torch.stack(outputs)


def test_dfub_matches_the_equations_row_by_row():
    torch.manual_seed(0)
    block = DFUB(key_width=2 * D, condition_width=D + 2 * D, config=small())
    sequence, condition = features().sequences[0], torch.randn(B, 2 * D)
    out = block(sequence, condition)
    assert out.shape == (B, 4)
    torch.testing.assert_close(out, reference_dfub(block, sequence, condition), rtol=1e-5, atol=1e-6)
    assert torch.equal(out[3], torch.zeros(4))  # the empty sequence


def test_dfub_weights_are_zero_at_padded_behaviours_and_rows_sum_to_one():
    torch.manual_seed(0)
    block = DFUB(key_width=2 * D, condition_width=3 * D, config=small())
    sequence = features().sequences[0]
    condition = block.condition_matrix(sequence.query, torch.randn(B, 2 * D))
    q, k = block.project(block.query, sequence.keys, condition), block.project(block.key, sequence.keys, condition)
    weights = block.attention_weights(q, k, sequence.mask)
    assert weights.shape == (B, 2, L, L)
    for b in range(B):
        real = sequence.mask[b]
        if real.any():  # every query row: zero at the padded behaviours, a distribution over the real ones
            assert torch.equal(weights[b][..., ~real], torch.zeros_like(weights[b][..., ~real]))
            torch.testing.assert_close(weights[b].sum(-1), torch.ones(2, L))


# --------------------------------------------------------------------------- the model


def test_logit_is_a_linear_map_of_dffi_and_dfub():
    torch.manual_seed(0)
    arch = DFFMArch(layout(), small(domain_features=["user_activity"])).eval()
    batch = features()
    condition = arch.domain_features(batch)
    domain = arch.input.domain_embedding(batch.domain)
    torch.testing.assert_close(condition, torch.cat([domain, batch.fields[:, 2]], dim=1))  # E^d
    vectors = arch.input(batch)
    assert vectors.shape == (B, 3 + 1 + 1, D)  # id fields, domain, dense: the sequences are DFUB's
    h_dffi = arch.dffi(vectors, condition)
    h_dfub = reference_dfub(arch.dfub[0], batch.sequences[0], condition)  # E^t = item_id's embedding
    expected = torch.cat([h_dffi, h_dfub], dim=1) @ arch.output.weight.T + arch.output.bias
    logits = arch(batch)
    assert logits.shape == (B, T)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-6)


def test_without_dfub_the_sequences_are_mean_pooled_fields_and_lookups_pooled():
    torch.manual_seed(0)
    arch = DFFMArch(layout(), small(use_dfub=False))
    assert len(arch.dfub) == 0 and arch.input.num_fields == 3 + 1 + 2 + 1
    batch = features()
    pooled = batch.sequences[0].mean()
    batch.sequences[0] = EmbeddedSequence(None, None, batch.sequences[0].query, pooled)  # a pooled lookup
    assert arch(batch).shape == (B, T)
    entry, options = MODELS["dffm"], ModelConfig().dffm
    assert entry.needs_positions(options)
    options.use_dfub = False
    assert not entry.needs_positions(options)


def test_a_group_without_candidate_and_no_dense_features():
    sequence = SequenceLayout("hist", ("hist_domain",), L, ())
    plain = FeatureLayout(
        fields=("user_id",),
        pooled=frozenset({"user_id"}),
        sequences=(sequence,),
        embedding_dim=D,
        num_dense=0,
        num_domains=K,
        num_tasks=1,
    )
    torch.manual_seed(0)
    arch = DFFMArch(plain, small())
    assert arch.dfub[0].lift.in_features == D  # E^t is empty: E^d alone
    mask = torch.arange(L)[None, :] < torch.tensor(LENGTHS)[:, None]
    batch = EmbeddedFeatures(
        torch.randn(B, 1, D),
        [EmbeddedSequence(torch.randn(B, L, D), mask, torch.zeros(B, 0))],
        torch.zeros(B, 0),
        torch.tensor([0, 1, 2, 0, 1]),
    )
    assert arch(batch).shape == (B, 1)


def test_options_are_checked_at_load():
    config = from_dict(
        ModelConfig, {"name": "dffm", "dffm": {"domain_network": [], "activation": "tanh"}}, prefix="model"
    )
    assert config.dffm.domain_network == [] and config.dffm.activation == "tanh"
    for key, value in (
        ("heads", 0),
        ("rank", 0),
        ("head_dim", 0),
        ("dfub_dim", 0),
        ("domain_network", [4, 0]),
        ("hidden", [0]),
        ("dropout", 1.0),
        ("activation", "gelu"),
    ):
        with pytest.raises(ConfigError, match=f"model.dffm.{key}"):
            from_dict(ModelConfig, {"name": "dffm", "dffm": {key: value}}, prefix="model")


def test_unknown_or_repeated_domain_features_name_the_key():
    with pytest.raises(ConfigError, match="model.dffm.domain_features: 'age' is not an id feature"):
        DFFMArch(layout(), small(domain_features=["age"]))
    with pytest.raises(ConfigError, match="model.dffm.domain_features: duplicate"):
        DFFMArch(layout(), small(domain_features=["user_activity", "user_activity"]))
