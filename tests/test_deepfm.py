"""DeepFM: the FM part against hand computations, the field vectors, the logit's three parts.

Padding invariance, determinism and the domain test run with the other baselines
(tests/test_baselines.py, ``ARCHS["deepfm"]``); the FX traces and a real batch through
``RankingModel`` with every registered model (tests/test_fx_trace.py, tests/test_models.py).
"""

from __future__ import annotations

import pytest
import torch

from torchrec_mdr.config import ConfigError, from_dict
from torchrec_mdr.models.deepfm import DeepFMArch, DeepFMConfig, fm_second_order
from torchrec_mdr.models.features import EmbeddedFeatures, FeatureLayout
from torchrec_mdr.models.registry import ModelConfig

from helpers import TINY_LENGTHS, TINY_B as B, TINY_D as D, TINY_T as T, tiny_features, tiny_layout

LENGTHS = TINY_LENGTHS


def layout(num_dense: int = 2) -> FeatureLayout:
    return tiny_layout(num_dense)


def features(num_dense: int = 2) -> EmbeddedFeatures:
    return tiny_features(num_dense)


def pairwise_by_loop(vectors: torch.Tensor) -> torch.Tensor:
    """sum_{i<j} <v_i, v_j> for every row, written as the double loop of the FM's definition."""
    out = torch.zeros(vectors.shape[0], 1, dtype=torch.float64)
    for b in range(vectors.shape[0]):
        for i in range(vectors.shape[1]):
            for j in range(i + 1, vectors.shape[1]):
                out[b, 0] += sum(vectors[b, i, d].item() * vectors[b, j, d].item() for d in range(vectors.shape[2]))
    return out


def test_fm_identity_equals_the_double_loop():
    torch.manual_seed(0)
    vectors = torch.randn(4, 6, 5, dtype=torch.float64)
    torch.testing.assert_close(fm_second_order(vectors), pairwise_by_loop(vectors))


def test_fm_second_order_by_hand():
    """Three fields: <v1,v2> + <v1,v3> + <v2,v3> = (1*0 + 2*1) + (1*-1 + 2*3) + (0*-1 + 1*3) = 2 + 5 + 3."""
    vectors = torch.tensor([[[1.0, 2.0], [0.0, 1.0], [-1.0, 3.0]]])
    assert fm_second_order(vectors).tolist() == [[10.0]]
    assert fm_second_order(vectors[:, :1]).tolist() == [[0.0]]  # one field: no pair


def test_field_vectors_are_fields_domain_pooled_sequence_columns_and_dense():
    torch.manual_seed(0)
    arch = DeepFMArch(layout(), DeepFMConfig(hidden=[8]))
    batch = features()
    vectors = arch.field_vectors(batch)
    assert vectors.shape == (B, 2 + 1 + 2 + 1, D) and arch.num_fields == 6
    torch.testing.assert_close(vectors[:, :2], batch.fields)
    torch.testing.assert_close(vectors[:, 2], arch.input.domain_embedding.weight[batch.domain])
    keys = batch.sequences[0].keys
    for b, n in enumerate(LENGTHS):  # each sequence column, averaged over the real positions
        mean = keys[b, :n].mean(0) if n else torch.zeros(2 * D)
        torch.testing.assert_close(vectors[b, 3], mean[:D])  # hist_item_id
        torch.testing.assert_close(vectors[b, 4], mean[D:])  # hist_domain
    dense = arch.input.dense_field
    torch.testing.assert_close(vectors[:, 5], batch.dense @ dense.weight.T + dense.bias)


def test_logit_is_first_order_plus_pairwise_plus_dnn():
    torch.manual_seed(0)
    arch = DeepFMArch(layout(), DeepFMConfig(hidden=[8, 4])).eval()
    batch = features()
    vectors = arch.field_vectors(batch)
    flat = vectors.flatten(1)
    first = flat @ arch.first_order.weight.T + arch.first_order.bias
    expected = first + pairwise_by_loop(vectors.double()).float() + arch.dnn(flat)
    logits = arch(batch)
    assert logits.shape == (B, T)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def test_without_dense_features_there_is_no_dense_field():
    torch.manual_seed(0)
    arch = DeepFMArch(layout(num_dense=0), DeepFMConfig(hidden=[8]))
    assert arch.input.dense_field is None and arch.num_fields == 5
    assert arch(features(num_dense=0)).shape == (B, T)


def test_options_are_checked_at_load():
    config = from_dict(ModelConfig, {"name": "deepfm", "deepfm": {"hidden": [16, 8]}}, prefix="model")
    assert config.deepfm.hidden == [16, 8]
    with pytest.raises(ConfigError, match="model.deepfm.hidden"):
        from_dict(ModelConfig, {"name": "deepfm", "deepfm": {"hidden": [8, 0]}}, prefix="model")
    with pytest.raises(ConfigError, match="model.deepfm.dropout"):
        from_dict(ModelConfig, {"deepfm": {"dropout": 1.0}}, prefix="model")
