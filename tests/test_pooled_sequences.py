"""Sequences looked up pooled for models that read only their means (sparse/arch.py, models/features.py):
the same logits as the unpooled path on the same weights, the means against a hand computation
(empty sequences give zeros), which tables go pooled, and that attention models keep positions."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import small_synthetic
from torchrec_mdr.data.reader import ReaderConfig, make_dataloader
from torchrec_mdr.data.spec import DatasetSpec
from torchrec_mdr.models.ranking import RankingModel
from torchrec_mdr.models.registry import MODELS, ModelConfig
from torchrec_mdr.sparse.arch import pooled_sequence_tables
from torchrec_mdr.sparse.mch.config import EvictionConfig

D = 16  # the default dimension (DLRM ties its dense arch to it)
POOL_ONLY = sorted(name for name, entry in MODELS.items() if not entry.needs_positions(getattr(ModelConfig(), name)))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return small_synthetic(tmp_path_factory.mktemp("pooled") / "syn")


def _batch(path: Path, batch_size: int = 64):
    return next(iter(make_dataloader(ReaderConfig(path=path, batch_size=batch_size, shuffle=False), "train")))


def _tables(model: RankingModel) -> dict[str, torch.Tensor]:
    """table name -> weight [rows, D], whichever collection holds it."""
    return {
        key.split(".")[-2]: value
        for key, value in model.sparse_arch.state_dict().items()
        if key.endswith(".weight") and key.split(".")[-3] in ("embedding_bags", "embeddings")
    }


def test_the_registry_says_which_models_need_positions() -> None:
    assert POOL_ONLY == [
        "adasparse",
        "aesm2",
        "apg",
        "dcnv2",
        "deepfm",
        "dlrm",
        "dlrm_dcn",
        "dnn",
        "frnet",
        "m2m",
        "masknet",
        "mmoe",
        "pepnet",
        "ple",
        "shared_bottom",
        "star",
    ]
    config = ModelConfig()
    assert all(
        MODELS[name].needs_positions(getattr(config, name))
        for name in ("din", "mha", "can", "ads", "sfpnet", "adin", "dffm")
    )
    for name in ("pepnet", "apg", "m2m", "frnet"):  # on a target-attention backbone they read every position
        options = getattr(config, name)
        options.backbone = "din"
        assert MODELS[name].needs_positions(options)
    config.dffm.use_dfub = False  # DFFM without its behaviour attention reads only the means
    assert not MODELS["dffm"].needs_positions(config.dffm)


@pytest.mark.parametrize("name", POOL_ONLY)
def test_pooled_and_unpooled_lookups_give_the_same_logits(synthetic: Path, name: str) -> None:
    spec = DatasetSpec.load(synthetic)
    torch.manual_seed(0)
    unpooled = RankingModel(spec, ModelConfig(name=name, embedding_dim=D), pooled_sequences=False).eval()
    pooled = RankingModel(spec, ModelConfig(name=name, embedding_dim=D)).eval()  # the registry: pooled
    assert unpooled.sparse_arch.sequence_bag_collection is None and unpooled.sparse_arch.embedding_collection
    assert pooled.sparse_arch.embedding_collection is None and pooled.sparse_arch.sequence_bag_collection
    pooled.dense_arch.load_state_dict(unpooled.dense_arch.state_dict())
    source = _tables(unpooled)
    with torch.no_grad():
        for table, weight in _tables(pooled).items():
            weight.copy_(source[table])
    batch = _batch(synthetic)
    assert (batch.sequence_features["hist_item_id"].lengths() == 0).any()  # empty sequences are covered
    torch.testing.assert_close(pooled(batch)[0], unpooled(batch)[0], rtol=1e-5, atol=1e-6)


def test_pooled_sequences_are_means_over_real_positions(synthetic: Path) -> None:
    spec = DatasetSpec.load(synthetic)
    torch.manual_seed(0)
    model = RankingModel(spec, ModelConfig(name="dnn", embedding_dim=D))
    batch = _batch(synthetic)
    pooled, unpooled = model.sparse_arch(batch.sparse_features, batch.sequence_features)
    assert unpooled == {}
    out = pooled.to_dict()
    tables = _tables(model)
    sequences = batch.sequence_features.to_dict()
    for feature, table in (("hist_item_id", "item"), ("hist_domain", "hist_domain")):
        jagged = sequences[feature]
        for b, ids in enumerate(jagged.to_dense()):
            expected = tables[table][ids].mean(0) if len(ids) else torch.zeros(D)
            torch.testing.assert_close(out[feature][b], expected)
    torch.testing.assert_close(out["item_id"], tables["item"][sequences["item_id"].values()])  # same table
    (sequence,) = model.dense_arch.layout.sequences
    assert sequence.pooled and "item_id" in model.dense_arch.layout.pooled


def test_attention_models_keep_positions(synthetic: Path) -> None:
    model = RankingModel(DatasetSpec.load(synthetic), ModelConfig(name="din", embedding_dim=D))
    assert model.sparse_arch.sequence_bag_collection is None and model.sparse_arch.embedding_collection
    assert not any(s.pooled for s in model.dense_arch.layout.sequences)


def test_managed_sequence_tables_stay_unpooled(synthetic: Path) -> None:
    spec = DatasetSpec.load(synthetic)
    assert pooled_sequence_tables(spec) == {"item", "hist_domain"}
    assert pooled_sequence_tables(spec, pool=False) == frozenset()
    # the group hist_item_id + hist_domain has a managed table: the whole group stays unpooled
    assert pooled_sequence_tables(spec, EvictionConfig(tables=["item"], zch_size=64)) == frozenset()
    assert pooled_sequence_tables(spec, EvictionConfig(tables=["user"], zch_size=64)) == {"item", "hist_domain"}
