"""FRNet: the self-attention unit, the contextual information extractor, the IEU and the Complementary
Selection Gate against hand computations; context- and domain-dependence of the refined fields; the
arch; options rejected at load.

Padding invariance, determinism and the domain test run with the other baselines
(tests/test_baselines.py, ``ARCHS["frnet"]``); the FX traces, a real batch through ``RankingModel``
and distributed training with every registered model.
"""

from __future__ import annotations

import math

import pytest
import torch

from torchrec_mdr.config import ConfigError, from_dict
from torchrec_mdr.models.blocks import FeatureRefinement, FieldSelfAttention, InformationExtractionUnit
from torchrec_mdr.models.features import EmbeddedFeatures, FeatureLayout
from torchrec_mdr.models.frnet import FRNetArch, FRNetConfig
from torchrec_mdr.models.registry import ModelConfig

from helpers import TINY_LENGTHS, TINY_B as B, TINY_D as D, TINY_K as K, TINY_T as T, tiny_features, tiny_layout

LENGTHS = TINY_LENGTHS


def layout(num_dense: int = 2, num_tasks: int = T) -> FeatureLayout:
    return tiny_layout(num_dense, num_tasks)


def features(num_dense: int = 2) -> EmbeddedFeatures:
    return tiny_features(num_dense)


def set_parameters(module: torch.nn.Module, seed: int) -> None:
    """Random values everywhere (PReLU slopes included), so no term hides behind an initial value."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=generator, dtype=p.dtype))


def prelu(x: float, slope: float) -> float:
    return x if x >= 0 else slope * x


def attention_by_loop(attention: FieldSelfAttention, e: torch.Tensor) -> torch.Tensor:
    """O_vec[b, i] = sum_j softmax_j(<q_i, k_j>) v_j W^P, written out for every row and field."""
    wq, wk, wv, wp = (
        m.weight.detach().double() for m in (attention.query, attention.key, attention.value, attention.projection)
    )
    out = torch.zeros(e.shape, dtype=torch.float64)
    for b in range(e.shape[0]):
        q, k, v = e[b] @ wq.T, e[b] @ wk.T, e[b] @ wv.T
        for i in range(e.shape[1]):
            scores = [math.exp(float(q[i] @ k[j])) for j in range(e.shape[1])]
            context = sum(s / sum(scores) * v[j] for j, s in enumerate(scores))
            out[b, i] = context @ wp.T
    return out


def cie_by_loop(context: torch.nn.Sequential, e: torch.Tensor) -> torch.Tensor:
    """h_{l+1} = PReLU(W_l h_l + b_l) from h_0 = flatten(E), unit by unit; the last layer gives O_bit."""
    layers = list(context)
    out = []
    for row in e.flatten(1).double().tolist():
        h = row
        for linear, act in zip(layers[::2], layers[1::2]):
            w, bias, a = linear.weight.tolist(), linear.bias.tolist(), float(act.weight.detach())
            h = [prelu(sum(wi * hi for wi, hi in zip(w_row, h)) + b_i, a) for w_row, b_i in zip(w, bias)]
        out.append(h)
    return torch.tensor(out, dtype=torch.float64)


# --------------------------------------------------------------------------- the IEU's parts by hand


def test_self_attention_unit_by_hand():
    """E = [[1, 0], [0, 1]], every W = I: Q K^T = I, row softmax [e, 1] / (e + 1) = [σ(1), σ(-1)], so
    O_vec = [[σ(1), σ(-1)], [σ(-1), σ(1)]]."""
    attention = FieldSelfAttention(dim=2, attention_size=2)
    with torch.no_grad():
        for m in (attention.query, attention.key, attention.value, attention.projection):
            m.weight.copy_(torch.eye(2))
    s1, s0 = 1 / (1 + math.exp(-1)), 1 / (1 + math.exp(1))
    out = attention(torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]))
    torch.testing.assert_close(out, torch.tensor([[[s1, s0], [s0, s1]]]))


def test_self_attention_unit_equals_the_loop_without_scaling_or_bias():
    torch.manual_seed(0)
    attention = FieldSelfAttention(dim=D, attention_size=4).double()
    assert all(m.bias is None for m in (attention.query, attention.key, attention.value, attention.projection))
    set_parameters(attention, 1)
    e = torch.randn(4, 5, D, dtype=torch.float64)
    torch.testing.assert_close(attention(e), attention_by_loop(attention, e))


def test_contextual_information_extractor_by_hand():
    """No hidden layer: O_bit = PReLU(W flatten(E) + b) with slope 0.25. flatten(E) = [1, 2, 3, 4],
    W = [[1, 0, 0, 0], [0, 0, 0, -1]], b = [1, -2]: pre-activation [2, -6] -> O_bit = [2, -1.5];
    O_vec = [[1, 1], [2, -4]] (set by hand): O_IEU = O_vec ⊙ O_bit = [[2, -1.5], [4, 6]]; the vector-level
    IEU sums over D: [[0.5], [10]]."""
    for weight_type, expected in (("bit", [[[2.0, -1.5], [4.0, 6.0]]]), ("vector", [[[0.5], [10.0]]])):
        ieu = InformationExtractionUnit(num_fields=2, dim=2, attention_size=2, cie_hidden=[], weight_type=weight_type)
        assert len(ieu.context) == 2 and float(ieu.context[1].weight.detach()) == 0.25  # Linear, PReLU(0.25)
        with torch.no_grad():
            ieu.context[0].weight.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, -1.0]]))
            ieu.context[0].bias.copy_(torch.tensor([1.0, -2.0]))
        ieu.attention.forward = lambda vectors: torch.tensor([[[1.0, 1.0], [2.0, -4.0]]])  # O_vec by hand
        e = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
        torch.testing.assert_close(ieu.context(e.flatten(1)), torch.tensor([[2.0, -1.5]]))
        torch.testing.assert_close(ieu(e), torch.tensor(expected))


def test_ieu_is_attention_times_the_broadcast_context_vector():
    torch.manual_seed(0)
    ieu = InformationExtractionUnit(num_fields=4, dim=D, attention_size=5, cie_hidden=[6, 5]).double()
    set_parameters(ieu, 2)
    assert [type(m).__name__ for m in ieu.context] == ["Linear", "PReLU"] * 3  # two hidden layers + O_bit
    e = torch.randn(3, 4, D, dtype=torch.float64)
    o_bit = cie_by_loop(ieu.context, e)
    assert o_bit.shape == (3, D)
    torch.testing.assert_close(ieu(e), attention_by_loop(ieu.attention, e) * o_bit[:, None, :])


# --------------------------------------------------------------------------- the gate and the block


def test_complementary_selection_gate():
    """E_r = E ⊙ σ(W_b) + E_g ⊙ (1 − σ(W_b)) with W_b = IEU_W(E), E_g = IEU_G(E)."""
    torch.manual_seed(0)
    for weight_type in ("bit", "vector"):
        refine = FeatureRefinement(
            num_fields=4, dim=D, attention_size=3, cie_hidden=[5], weight_type=weight_type
        ).double()
        set_parameters(refine, 3)
        e = torch.randn(6, 4, D, dtype=torch.float64)
        w_b = attention_by_loop(refine.ieu_w.attention, e) * cie_by_loop(refine.ieu_w.context, e)[:, None]
        if weight_type == "vector":
            w_b = w_b.sum(dim=2, keepdim=True)  # one weight per field
        e_g = attention_by_loop(refine.ieu_g.attention, e) * cie_by_loop(refine.ieu_g.context, e)[:, None]
        gate = torch.sigmoid(w_b)
        out = refine(e)
        assert out.shape == e.shape
        torch.testing.assert_close(out, e * gate + e_g * (1 - gate))


def test_gate_limits():
    """W_b = 0 (IEU_W's projection zeroed) gives σ = ½: E_r = (E + E_g) / 2; a large W_b keeps E."""
    torch.manual_seed(0)
    refine = FeatureRefinement(num_fields=3, dim=D, attention_size=4, cie_hidden=[8])
    e = torch.randn(5, 3, D)
    with torch.no_grad():
        refine.ieu_w.attention.projection.weight.zero_()
    torch.testing.assert_close(refine(e), (e + refine.ieu_g(e)) / 2)
    refine.ieu_w.forward = lambda vectors: torch.full_like(vectors, 50.0)
    torch.testing.assert_close(refine(e), e)


def test_the_same_feature_is_refined_differently_in_another_context():
    """Rows 0 and 1 share field 0 and differ in field 1: field 0's refined vectors differ (the point of
    the paper); the unrefined field vectors are the same."""
    torch.manual_seed(0)
    refine = FeatureRefinement(num_fields=2, dim=D, attention_size=4, cie_hidden=[8])
    e = torch.randn(2, 2, D)
    e[1, 0] = e[0, 0]
    out = refine(e)
    assert not torch.allclose(out[0, 0], out[1, 0], atol=1e-4)


def test_the_refinement_depends_on_the_domain():
    """Only the domain changes: the id fields' refined vectors change (the domain is a field of E)."""
    torch.manual_seed(0)
    arch = FRNetArch(layout(), FRNetConfig(hidden=[8], attention_size=4, cie_hidden=[8]))
    batch = features()
    other = EmbeddedFeatures(batch.fields, batch.sequences, batch.dense, (batch.domain + 1) % K)
    refined, refined_other = (arch.refinement(arch.input(f)) for f in (batch, other))
    torch.testing.assert_close(arch.input(batch)[:, :2], arch.input(other)[:, :2])
    assert not torch.allclose(refined[:, :2], refined_other[:, :2], atol=1e-4)


def test_block_defaults_are_the_authors_code():
    refine = FeatureRefinement(num_fields=4, dim=D)
    assert refine.ieu_g.attention.query.out_features == 10
    assert [m.out_features for m in refine.ieu_w.context if isinstance(m, torch.nn.Linear)] == [256, D]
    assert not refine.ieu_w.vector_sum and not refine.ieu_g.vector_sum
    with pytest.raises(ValueError, match="weight_type"):
        InformationExtractionUnit(4, D, 10, [], weight_type="scalar")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the arch


def test_logits_are_the_dnn_over_the_refined_field_vectors():
    torch.manual_seed(0)
    arch = FRNetArch(layout(), FRNetConfig(hidden=[8, 4], attention_size=4, cie_hidden=[6])).eval()
    batch = features()
    vectors = arch.input(batch)
    assert vectors.shape == (B, 2 + 1 + 2 + 1, D) and arch.num_fields == 6  # fields, domain, 2 columns, dense
    torch.testing.assert_close(vectors[:, 2], arch.input.domain_embedding.weight[batch.domain])
    refined = vectors * torch.sigmoid(arch.refinement.ieu_w(vectors)) + arch.refinement.ieu_g(vectors) * (
        1 - torch.sigmoid(arch.refinement.ieu_w(vectors))
    )
    logits = arch(batch)
    assert logits.shape == (B, T)
    torch.testing.assert_close(logits, arch.dnn(refined.flatten(1)))
    assert arch.dnn[0].in_features == 6 * D and arch.dnn[-1].out_features == T


def test_vector_weights_one_task_and_no_dense():
    torch.manual_seed(0)
    arch = FRNetArch(layout(num_dense=0, num_tasks=1), FRNetConfig(hidden=[8], weight_type="vector"))
    assert arch.input.dense_field is None and arch.num_fields == 5
    assert arch.refinement.ieu_w.vector_sum and not arch.refinement.ieu_g.vector_sum
    assert arch(features(num_dense=0)).shape == (B, 1)


def test_options_are_checked_at_load():
    config = from_dict(
        ModelConfig, {"name": "frnet", "frnet": {"cie_hidden": [], "weight_type": "vector"}}, prefix="model"
    )
    assert config.frnet.cie_hidden == [] and config.frnet.weight_type == "vector"
    assert FRNetConfig().hidden == [256, 128, 64] and FRNetConfig().cie_hidden == [256]
    for options, key in (
        ({"weight_type": "scalar"}, "weight_type"),
        ({"cie_hidden": [0]}, "cie_hidden"),
        ({"attention_size": 0}, "attention_size"),
        ({"hidden": [8, 0]}, "hidden"),
        ({"dropout": 1.0}, "dropout"),
    ):
        with pytest.raises(ConfigError, match=f"model.frnet.{key}"):
            from_dict(ModelConfig, {"name": "frnet", "frnet": options}, prefix="model")
