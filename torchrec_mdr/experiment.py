"""The configuration of a training run: one typed tree, loaded from TOML/YAML with ``--set`` overrides.

    mdr train --config configs/quickstart.toml --set model.name=dnn --set data.path=data/ml-100k

Sections: ``task`` (ranking or retrieval), ``data`` (reader), ``model`` (registry name, embedding
dim, per-model options), ``retrieval`` (the two-tower model of ``task = "retrieval"``; ``model.name``
is then unused, ``model.embedding_dim`` still sizes the tables), ``sparse`` (sharding, low-frequency
eviction), ``optimizer`` (fused sparse + dense, schedule, clipping), ``train`` (steps, evaluation,
pipeline, checkpoints, seed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from torchrec_mdr.config import ConfigError, bounds, doc
from torchrec_mdr.data.reader import ReaderConfig
from torchrec_mdr.models.registry import ModelConfig
from torchrec_mdr.retrieval.config import RetrievalConfig
from torchrec_mdr.sparse.config import ShardingType, SparseConfig
from torchrec_mdr.sparse.mch.config import EvictionConfig

# The sections' types, importable from here with the tree that composes them.
__all__ = ["DenseOptimizer", "EvictionConfig", "ExperimentConfig", "OptimizerConfig", "PipelineType", "ShardingType",
           "SparseConfig", "SparseOptimizer", "TrainConfig"]

SparseOptimizer = Literal["rowwise_adagrad", "adagrad", "sgd", "adam"]
DenseOptimizer = Literal["adam", "adagrad", "sgd"]
PipelineType = Literal["sparse_dist", "base", "plain"]


@dataclass
class OptimizerConfig:
    sparse: SparseOptimizer = field(default="rowwise_adagrad", metadata=doc("fused into the backward pass"))
    sparse_lr: float = field(default=0.05, metadata=bounds(gt=0, help="embedding learning rate"))
    dense: DenseOptimizer = field(default="adam", metadata=doc("optimizer of the dense parameters"))
    dense_lr: float = field(default=1e-3, metadata=bounds(gt=0, help="dense learning rate"))
    weight_decay: float = field(default=0.0, metadata=bounds(ge=0, help="dense weight decay"))
    warmup_steps: int = field(default=0, metadata=bounds(ge=0, help="linear warm-up of both rates"))
    decay: Literal["none", "linear", "cosine"] = field(default="none", metadata=doc("decay after warm-up"))
    min_lr_ratio: float = field(default=0.0, metadata=bounds(ge=0, le=1, help="final rate / base rate"))
    grad_clip_norm: float | None = field(default=None, metadata=bounds(gt=0, help="clip the dense gradient norm"))


@dataclass
class TrainConfig:
    epochs: int = field(default=1, metadata=bounds(ge=1, help="passes over the train split"))
    max_steps: int | None = field(default=None, metadata=bounds(ge=1, help="stop after this many steps"))
    eval_every: int | None = field(default=None, metadata=bounds(ge=1, help="evaluate every N steps"))
    eval_split: str = field(default="valid", metadata=doc("split evaluated during training"))
    test_split: str = field(default="test", metadata=doc("split evaluated at the end (reported in metrics.json)"))
    pipeline: PipelineType = field(default="sparse_dist", metadata=doc(
        "TrainPipelineSparseDist (evaluation: EvalPipelineSparseDist), TrainPipelineBase or a plain loop"))
    seed: int = field(default=0, metadata=bounds(ge=0, help="model initialisation and data order"))
    log_every: int = field(default=20, metadata=bounds(ge=1, help="steps between progress updates"))
    checkpoint_every: int | None = field(default=None, metadata=bounds(ge=1, help="steps between checkpoints"))
    keep_checkpoints: int = field(default=2, metadata=bounds(ge=1, help="checkpoints kept"))
    mixed_precision: bool = field(default=False, metadata=doc("bf16 autocast of the dense arch (GPU only)"))
    device: Literal["auto", "cpu", "cuda"] = field(default="auto", metadata=doc("auto: cuda when available"))
    threads: int | None = field(default=None, metadata=bounds(ge=1, help="CPU threads per process (default: the "
                                                                         "cores / the processes on this machine; "
                                                                         "1 on a machine busy with other work)"))


@dataclass
class ExperimentConfig:
    task: Literal["ranking", "retrieval"] = field(default="ranking", metadata=doc(
        "ranking: model.name scores each row (AUC/GAUC); retrieval: a two-tower model (see [retrieval]) "
        "trained by in-batch softmax over the positive rows (Recall@K, HitRate@K)"))
    data: ReaderConfig = field(default_factory=ReaderConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    sparse: SparseConfig = field(default_factory=SparseConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> None:
        if self.optimizer.decay != "none" and self.train.max_steps is None:
            raise ConfigError("optimizer.decay needs train.max_steps (the decay horizon)")
