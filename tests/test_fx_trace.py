"""torch.fx tracing of every registered model, as TrainPipelineSparseDist traces it and deeper.

Two levels:

* **The pipeline's trace** (what TrainPipelineSparseDist needs today). torchrec's ``_rewrite_model``
  traces the whole train model with its pipeline ``Tracer``, whose leaves are the sharded modules
  and every module that holds none (``_get_leaf_module_names``): so it traces ``TrainModel ->
  RankingModel -> SparseArch`` and stops at the embedding collections and at the dense arch. A
  collection is pipelined only when every input of its call node comes straight from the batch
  (``NodeArgsHelper.get_node_args`` finds them all); otherwise torchrec silently runs it
  unpipelined. Here the unsharded collections stand in for their sharded forms (torchrec's own
  leaf rule and argument check run on them, with ``ShardedModule`` widened to include them).
* **The dense arch's full trace** (everything after the embeddings: ``embed_features`` and the
  model's arch). torchrec traces into it only when a module is marked ``_is_pytorch_fx_traceable``,
  and fx-based transforms and export need it; like torchrec's own arch tests, every registered
  arch must trace with ``torchrec.fx.symbolic_trace`` and give exactly the eager outputs, in
  evaluation and in training mode.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torchrec.fx
from torchrec import EmbeddingBagCollection, EmbeddingCollection
from torchrec.distributed.train_pipeline import tracing
from torchrec.distributed.train_pipeline.pipeline_context import TrainPipelineContext
from torchrec.modules.mc_embedding_modules import (
    ManagedCollisionEmbeddingBagCollection,
    ManagedCollisionEmbeddingCollection,
)

from helpers import small_synthetic
from torchrec_mdr.data.reader import ReaderConfig, make_dataloader
from torchrec_mdr.data.spec import DatasetSpec
from torchrec_mdr.models.ranking import RankingModel, TrainModel
from torchrec_mdr.models.registry import MODELS, ModelConfig
from torchrec_mdr.sparse.mch.config import EvictionConfig
from torchrec_mdr.sparse.mch.eviction import managed_reader_spec

COLLECTIONS = (
    EmbeddingBagCollection,
    EmbeddingCollection,
    ManagedCollisionEmbeddingBagCollection,
    ManagedCollisionEmbeddingCollection,
)  # sharded by DMP: the pipeline's leaves
EVICTION = EvictionConfig(tables=["item", "user"], zch_size=40, eviction_interval=2)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return small_synthetic(tmp_path_factory.mktemp("fx") / "syn")


def first_batch(path: Path, spec: DatasetSpec | None = None, batch_size: int = 32):
    """The first training batch (``spec``: the reader's spec, e.g. with managed tables' id ranges)."""
    config = ReaderConfig(path=path, batch_size=batch_size, shuffle=False)
    return next(iter(make_dataloader(config, "train", spec=spec)))


def assert_same(traced: object, eager: object) -> None:
    """Equal nested tuples of tensors (bit for bit)."""
    if isinstance(eager, torch.Tensor):
        assert torch.equal(traced, eager)
        return
    assert type(traced) is type(eager) and len(traced) == len(eager)
    for a, b in zip(traced, eager):
        assert_same(a, b)


# --------------------------------------------------------------------------- the pipeline's trace


def pipeline_trace(model: torch.nn.Module, monkeypatch) -> tuple[torch.fx.Graph, list[str]]:
    """The graph torchrec's ``_rewrite_model`` would trace, with the collections taken as sharded."""
    monkeypatch.setattr(tracing, "ShardedModule", (tracing.ShardedModule, *COLLECTIONS))
    leaves = tracing._get_leaf_module_names(model)
    return tracing.Tracer(leaf_modules=leaves).trace(model), leaves


def check_pipelineable(model: TrainModel, batch, monkeypatch) -> list[str]:
    """Trace as the pipeline does; assert every collection would be pipelined and the traced model
    gives the eager outputs. Returns the pipelined collections' names."""
    graph, leaves = pipeline_trace(model, monkeypatch)
    assert "model.dense_arch" in leaves  # the pipeline never traces into the dense arch
    found_collections = [name for name, m in model.named_modules() if isinstance(m, COLLECTIONS)]
    collections = {
        name
        for name in found_collections  # the outermost (a managed one holds a plain one)
        if not any(name.startswith(outer + ".") for outer in found_collections)
    }
    helper = tracing.NodeArgsHelper(model, TrainPipelineContext(), pipeline_postproc=False)
    called = []
    for node in graph.nodes:
        if node.op == "call_module" and node.target in collections:
            _, found = helper.get_node_args(node)
            assert found == len(node.args) + len(node.kwargs), f"{node.target} would not be pipelined"
            called.append(node.target)
    assert sorted(called) == sorted(collections)  # each called once, at top level of the trace
    traced = torch.fx.GraphModule(model, graph)
    assert_same(traced(batch), model(batch))
    return called


@pytest.mark.parametrize("name", sorted(MODELS))
def test_train_model_traces_as_the_pipeline_traces_it(synthetic, name, monkeypatch):
    torch.manual_seed(0)
    spec = DatasetSpec.load(synthetic)
    model = TrainModel(RankingModel(spec, ModelConfig(name=name))).eval()
    called = check_pipelineable(model, first_batch(synthetic), monkeypatch)
    assert called  # the synthetic data has pooled and sequence features


def test_managed_collision_collections_are_pipelined(synthetic, monkeypatch):
    """With eviction on, the managed collections (what DMP shards as ShardedManagedCollision*) too."""
    torch.manual_seed(0)
    spec = DatasetSpec.load(synthetic)
    model = TrainModel(RankingModel(spec, ModelConfig(name="din"), eviction=EVICTION)).eval()
    called = check_pipelineable(model, first_batch(synthetic, managed_reader_spec(spec, EVICTION)), monkeypatch)
    assert any(name.endswith("managed_embedding_collection") for name in called)
    assert any(name.endswith("managed_embedding_bag_collection") for name in called)


# --------------------------------------------------------------------------- the dense arch's full trace


def sparse_outputs(model: RankingModel, batch) -> tuple:
    """The dense arch's inputs: the sparse arch's outputs, dense features and domains of ``batch``."""
    with torch.no_grad():
        pooled, unpooled = model.sparse_arch(batch.sparse_features, batch.sequence_features)
    return pooled, unpooled, batch.dense_features, batch.domain


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_dense_arch_traces_and_matches_eager(synthetic, name, training):
    """One trace, two batch sizes (no size is baked into the graph); the same outputs and the same
    buffer updates (training-mode batch-norm statistics) as the eager arch, bit for bit."""
    torch.manual_seed(0)
    spec = DatasetSpec.load(synthetic)
    model = RankingModel(spec, ModelConfig(name=name)).train(training)
    eager_arch = copy.deepcopy(model.dense_arch)
    traced = torchrec.fx.symbolic_trace(model.dense_arch)
    assert isinstance(traced, torch.fx.GraphModule)
    for batch_size in (32, 17):
        inputs = sparse_outputs(model, first_batch(synthetic, batch_size=batch_size))
        torch.manual_seed(1)
        traced_out = traced(*inputs)
        torch.manual_seed(1)
        eager_out = eager_arch(*inputs)
        assert_same(traced_out, eager_out)
        assert traced_out[0].shape[0] == batch_size
    traced_state, eager_state = traced.state_dict(), eager_arch.state_dict()
    if training:  # every parameter and buffer takes part (evaluation leaves e.g. num_batches_tracked out)
        assert set(eager_state) <= set(traced_state)
    for key in set(eager_state) & set(traced_state):
        assert torch.equal(traced_state[key], eager_state[key]), key
