"""DNN and DIN: target attention masking, the query projection, embedded-feature layout, shapes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import small_synthetic
from data_prep.synthetic import Options, convert
from torchrec_mdr.config import ConfigError, load_config
from torchrec_mdr.data.reader import ReaderConfig, make_dataloader
from torchrec_mdr.data.spec import DatasetSpec
from torchrec_mdr.models.blocks import MLP, DINAttention
from torchrec_mdr.models.blocks import QueryProjection
from torchrec_mdr.models.din import DINArch, DINConfig
from torchrec_mdr.models.blocks import masked_mean
from torchrec_mdr.models.dnn import DNNArch, DNNConfig
from torchrec_mdr.models.features import EmbeddedFeatures, EmbeddedSequence, FeatureLayout, SequenceLayout
from torchrec_mdr.models.ranking import RankingModel
from torchrec_mdr.models.registry import MODELS, ModelConfig
from torchrec_mdr.experiment import ExperimentConfig
from torchrec_mdr.training.trainer import Trainer

B, L, D = 5, 6, 4


def lengths_and_mask(lengths: list[int], max_length: int = L) -> torch.Tensor:
    return torch.arange(max_length)[None, :] < torch.tensor(lengths)[:, None]


@pytest.fixture
def attention_inputs():
    torch.manual_seed(0)
    mask = lengths_and_mask([6, 3, 1, 0, 4])
    return torch.randn(B, D), torch.randn(B, L, D), mask


# --------------------------------------------------------------------------- DIN attention


def test_din_attention_matches_explicit_sum(attention_inputs):
    query, keys, mask = attention_inputs
    attention = DINAttention(D, [8, 4])
    out = attention(query, keys, mask)
    assert out.shape == (B, D)
    for b in range(B):
        expected = torch.zeros(D)
        for t in range(int(mask[b].sum())):
            q, k = query[b], keys[b, t]
            score = attention.scorer(torch.cat([q, k, q - k, q * k]))  # unnormalised, as in DIN
            expected += score[0] * k
        torch.testing.assert_close(out[b], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("per_position_query", [False, True])
def test_din_attention_ignores_padded_positions(attention_inputs, per_position_query):
    query, keys, mask = attention_inputs
    if per_position_query:  # the ADS form: one query per position
        query = torch.randn(B, L, D)
    attention = DINAttention(D, [8])
    out = attention(query, keys, mask)
    # anything at padded positions (keys, and per-position queries) changes nothing, bit for bit
    noisy_keys = torch.where(mask[..., None], keys, 1e3 * torch.randn(B, L, D))
    noisy_query = torch.where(mask[..., None], query, torch.randn(B, L, D)) if per_position_query else query
    assert torch.equal(attention(noisy_query, noisy_keys, mask), out)
    assert torch.equal(out[3], torch.zeros(D))  # an empty sequence pools to exactly zero
    # a real position does matter
    changed = keys.clone()
    changed[0, 5] += 1.0
    assert not torch.equal(attention(query, changed, mask)[0], out[0])


def test_din_attention_gradient_is_zero_at_padded_keys(attention_inputs):
    query, keys, mask = attention_inputs
    keys = keys.clone().requires_grad_(True)
    DINAttention(D, [8])(query, keys, mask).sum().backward()
    assert torch.equal(keys.grad[~mask], torch.zeros_like(keys.grad[~mask]))
    assert keys.grad[mask].abs().sum() > 0


# --------------------------------------------------------------------------- query projection


def test_query_projection_identity_when_widths_match():
    projection = QueryProjection(8, 8)
    query = torch.randn(3, 8)
    assert projection.linear is None and projection(query) is query


def test_query_projection_to_key_width():
    projection = QueryProjection(4, 8)  # item_id only vs (hist_item_id, hist_domain)
    query = torch.randn(3, 4)
    out = projection(query)
    assert out.shape == (3, 8)
    torch.testing.assert_close(out, query @ projection.linear.weight.T + projection.linear.bias)


def test_query_projection_without_candidate_is_a_learned_constant():
    projection = QueryProjection(0, 8)  # no candidate column in the group's tables
    out = projection(torch.zeros(3, 0))
    assert out.shape == (3, 8)
    expected = projection.linear.weight[:, 0] + projection.linear.bias
    for row in out:
        torch.testing.assert_close(row, expected)


# --------------------------------------------------------------------------- dense archs on hand-made features


def hand_layout(candidates: tuple[str, ...]) -> FeatureLayout:
    sequence = SequenceLayout("hist", ("hist_item", "hist_kind"), L, candidates)
    fields = ("user", "item") if candidates else ("user",)
    return FeatureLayout(
        fields=fields,
        pooled=frozenset({"user"}),
        sequences=(sequence,),
        embedding_dim=D,
        num_dense=3,
        num_domains=2,
        num_tasks=2,
    )


def hand_features(layout: FeatureLayout, mask: torch.Tensor) -> EmbeddedFeatures:
    torch.manual_seed(1)
    fields = torch.randn(B, len(layout.fields), D)
    keys = torch.randn(B, L, 2 * D) * mask[..., None]
    query = fields[:, 1] if layout.sequences[0].candidate_fields else torch.zeros(B, 0)
    return EmbeddedFeatures(
        fields, [EmbeddedSequence(keys, mask, query)], torch.randn(B, 3), torch.tensor([0, 1, 1, 0, 1])
    )


@pytest.mark.parametrize("candidates", [("item",), ()])
def test_din_arch_shapes_and_query_path(candidates):
    layout = hand_layout(candidates)
    arch = DINArch(layout, DINConfig(attention_hidden=[8], hidden=[16]))
    projection = arch.pooling[0].query_projection.linear
    # one candidate field (D wide) against two sequence fields (2D wide): projected; none: from a constant
    assert projection is not None and projection.in_features == (D if candidates else 1)
    assert projection.out_features == 2 * D
    mask = lengths_and_mask([6, 3, 1, 0, 4])
    features = hand_features(layout, mask)
    logits = arch(features)
    assert logits.shape == (B, 2)
    # the projected query reaches the attention: changing the candidate changes the logits
    if candidates:
        features.fields[:, 1] += 1.0
        features.sequences[0].query = features.fields[:, 1]
        assert not torch.allclose(arch(features), logits)
    # padded keys change nothing
    features = hand_features(layout, mask)
    reference = arch(features)
    features.sequences[0].keys = torch.where(mask[..., None], features.sequences[0].keys, torch.randn(B, L, 2 * D))
    assert torch.equal(arch(features), reference)


def test_dnn_arch_shapes_and_masked_mean():
    layout = hand_layout(("item",))
    arch = DNNArch(layout, DNNConfig(hidden=[16, 8]))
    assert arch.mlp[0].in_features == (2 + 1) * D + 3 + 2 * D  # fields + domain, dense, pooled sequence
    mask = lengths_and_mask([6, 3, 1, 0, 4])
    features = hand_features(layout, mask)
    assert arch(features).shape == (B, 2)
    keys = features.sequences[0].keys
    pooled = masked_mean(keys, mask)
    torch.testing.assert_close(pooled[1], keys[1, :3].mean(0))
    torch.testing.assert_close(pooled[2], keys[2, 0])
    assert torch.equal(pooled[3], torch.zeros(2 * D))  # empty sequence: zeros, not NaN
    noisy = torch.where(mask[..., None], keys, torch.randn_like(keys))
    assert torch.equal(masked_mean(noisy, mask), pooled)


def test_mlp_shapes():
    mlp = MLP(10, [8, 4], out_features=3, dropout=0.1)
    assert mlp.out_features == 3 and mlp(torch.randn(7, 10)).shape == (7, 3)
    assert MLP(10, [8]).out_features == 8


# --------------------------------------------------------------------------- the full model on real batches


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return small_synthetic(tmp_path_factory.mktemp("models") / "syn")


def first_batch(path: Path, batch_size: int = 32):
    return next(iter(make_dataloader(ReaderConfig(path=path, batch_size=batch_size, shuffle=False), "train")))


def test_feature_layout_of_the_synthetic_spec(synthetic):
    layout = FeatureLayout.from_spec(DatasetSpec.load(synthetic), embedding_dim=D)
    assert layout.fields == (
        "user_id",
        "item_id",
        "category_id",
        "brand_id",
        "user_segment",
        "user_activity",
        "hour",
        "device",
    )
    assert "item_id" not in layout.pooled and "user_id" in layout.pooled  # item shares the sequence table
    (hist,) = layout.sequences
    assert hist.fields == ("hist_item_id", "hist_domain") and hist.candidate_fields == ("item_id",)
    assert layout.query_width(hist) == D and layout.sequence_width(hist) == 2 * D
    assert (layout.num_dense, layout.num_domains, layout.num_tasks) == (4, 3, 1)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_ranking_model_on_a_real_batch(synthetic, name):
    """Every registered model at its default sizes (some tie their widths to the default dimension)."""
    torch.manual_seed(0)
    spec = DatasetSpec.load(synthetic)
    model = RankingModel(spec, ModelConfig(name=name))
    batch = first_batch(synthetic)
    logits, auxiliary_loss = model(batch)
    assert logits.shape == (32, 1) and torch.isfinite(logits).all()
    assert auxiliary_loss.shape == () and torch.isfinite(auxiliary_loss)
    (logits.sum() + auxiliary_loss).backward()  # every dense parameter gets a gradient
    missing = [n for n, p in model.dense_arch.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"


def test_embedded_features_match_the_tables(synthetic):
    """keys = the item / domain table rows of the behaviours, zero padded; query = the candidate's row."""
    from torchrec_mdr.models.features import embed_features

    torch.manual_seed(0)
    spec = DatasetSpec.load(synthetic)
    model = RankingModel(spec, ModelConfig(name="din", embedding_dim=D))
    batch = first_batch(synthetic)
    pooled, unpooled = model.sparse_arch(batch.sparse_features, batch.sequence_features)
    features = embed_features(model.dense_arch.layout, pooled, unpooled, batch.dense_features, batch.domain)
    tables = model.sparse_arch.embedding_collection.embeddings
    sequences = batch.sequence_features.to_dict()
    (hist,) = features.sequences
    lengths = sequences["hist_item_id"].lengths()
    assert torch.equal(hist.mask, lengths_and_mask(lengths.tolist(), 5))
    assert hist.keys.shape == (32, 5, 2 * D) and features.fields.shape == (32, 8, D)
    item = tables["item"].weight
    domain = tables["hist_domain"].weight
    item_rows = sequences["hist_item_id"].to_dense()
    kind_rows = sequences["hist_domain"].to_dense()
    for b in range(32):
        n = int(lengths[b])
        ids, kinds = item_rows[b], kind_rows[b]
        torch.testing.assert_close(hist.keys[b, :n], torch.cat([item[ids], domain[kinds]], dim=1))
        assert torch.equal(hist.keys[b, n:], torch.zeros(5 - n, 2 * D))
    item_ids = sequences["item_id"].values()
    torch.testing.assert_close(hist.query, item[item_ids])
    torch.testing.assert_close(features.fields[:, 1], item[item_ids])  # item_id is field 1
    user = model.sparse_arch.embedding_bag_collection.embedding_bags["user"].weight
    torch.testing.assert_close(features.fields[:, 0], user[batch.sparse_features["user_id"].values()])


def test_mixed_precision_needs_a_gpu(tmp_path):
    """bf16 autocast is a GPU feature: asking for it on the CPU is a clear error before training."""
    if torch.cuda.is_available():  # pragma: no cover - GPU machines only
        pytest.skip("this machine has a GPU")
    data = tmp_path / "syn"
    convert(Options(version=1, out=data, rows=300, users=20, items=50, categories=5, seq_length=4, min_seq_length=1))
    config = load_config(
        ExperimentConfig, None, [f"data.path={data}", "train.mixed_precision=true", "train.device=cpu"]
    )
    with pytest.raises(ConfigError, match="mixed_precision is bf16 autocast on GPU"):
        Trainer(config, tmp_path / "run")
