"""The configuration of a training run: one typed tree, loaded from TOML/YAML with ``--set`` overrides.

    mdr train --config configs/quickstart.toml --set model.name=dnn --set data.path=data/ml-100k

Sections: ``task`` (ranking or retrieval), ``data`` (reader), ``model`` (registry name, embedding
dim, per-model options), ``retrieval`` (the two-tower model of ``task = "retrieval"``; ``model.name``
is then unused, ``model.embedding_dim`` still sizes the tables), ``sparse`` (sharding, low-frequency
eviction), ``optimizer`` (fused sparse + dense, schedule, clipping), ``train`` (steps, evaluation,
early stopping, pipeline, checkpoints, seed).

Steps: ``train.max_steps``, when set, is the length of training (the train split is passed over
as many times as needed and ``train.epochs`` is ignored); otherwise ``train.epochs`` passes.
Seeds: ``train.seed`` drives the model (initialisation, dropout, every random draw of training);
``data.seed`` drives the data order (the shuffle of row groups and rows, combined with the epoch).
Changing one leaves the other's stream as it was.
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
__all__ = [
    "DenseOptimizer",
    "EvictionConfig",
    "ExperimentConfig",
    "OptimizerConfig",
    "PipelineType",
    "ShardingType",
    "SparseConfig",
    "SparseOptimizer",
    "TrainConfig",
]

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
class EarlyStoppingConfig:
    """Stop training when the validation metric stops improving, and keep the best checkpoint.

    Every ``train.eval_every`` steps the trainer evaluates ``train.eval_split``; an evaluation whose
    ``metric`` beats the best so far by more than ``min_delta`` (AUC higher, logloss lower) saves a
    checkpoint and names it ``checkpoints/best`` (never deleted by ``train.keep_checkpoints``);
    ``patience`` evaluations in a row without one stop the run. The best checkpoint's weights are
    then restored for the final ``train.test_split`` evaluation, and ``metrics.json`` names its step.
    With several labels, ``task`` names the label whose metric decides (default: the first label).
    """

    enabled: bool = field(default=False, metadata=doc("stop when the validation metric stops improving"))
    metric: Literal["auc", "logloss"] = field(
        default="auc",
        metadata=doc("metric of train.eval_split that decides (auc: higher is better; logloss: lower is better)"),
    )
    patience: int = field(default=3, metadata=bounds(ge=1, help="evaluations without improvement before stopping"))
    min_delta: float = field(default=0.0, metadata=bounds(ge=0, help="smallest change that counts as an improvement"))
    task: str | None = field(
        default=None,
        metadata=doc(
            "label name of the task whose metric decides (one of the dataset's labels; default: the first label)"
        ),
    )


@dataclass
class TrainConfig:
    epochs: int = field(
        default=1,
        metadata=bounds(ge=1, help=("passes over the train split; used only when train.max_steps is not set")),
    )
    max_steps: int | None = field(
        default=None,
        metadata=bounds(
            ge=1,
            help=(
                "train exactly this many steps, passing over the train split as many times as needed "
                "(train.epochs is then ignored); early stopping may end sooner"
            ),
        ),
    )
    eval_every: int | None = field(
        default=None,
        metadata=bounds(
            ge=1,
            help=("evaluate train.eval_split every N steps (each evaluation is recorded in metrics.json's history)"),
        ),
    )
    eval_at_end: bool = field(
        default=True,
        metadata=doc(
            "also evaluate train.eval_split at the last step when it is not a multiple of train.eval_every, so "
            "that early stopping can keep the end of training (false: evaluations at multiples of eval_every "
            "only, and the steps after the last of them are never kept by early stopping); a run resumed "
            "with a larger train.max_steps keeps that evaluation in its history and early stopping's count"
        ),
    )
    eval_split: str = field(default="valid", metadata=doc("split evaluated during training"))
    test_split: str = field(default="test", metadata=doc("split evaluated at the end (reported in metrics.json)"))
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    task_weights: list[float] | None = field(
        default=None,
        metadata=bounds(
            ge=0,
            help=(
                "weight of each task's binary cross-entropy in the loss, one per label of the dataset in the spec's "
                "order (loss = sum over tasks of weight x mean BCE); default: 1.0 for every task"
            ),
        ),
    )
    pipeline: PipelineType = field(
        default="sparse_dist",
        metadata=doc("TrainPipelineSparseDist (evaluation: EvalPipelineSparseDist), TrainPipelineBase or a plain loop"),
    )
    seed: int = field(
        default=0,
        metadata=bounds(
            ge=0,
            help=(
                "model initialisation, dropout and every other random draw of the model; the order of the rows "
                "is data.seed's"
            ),
        ),
    )
    log_every: int = field(default=20, metadata=bounds(ge=1, help="steps between progress updates"))
    checkpoint_every: int | None = field(default=None, metadata=bounds(ge=1, help="steps between checkpoints"))
    keep_checkpoints: int = field(
        default=2, metadata=bounds(ge=1, help=("checkpoints kept (the best one of early stopping is kept besides)"))
    )
    init_from: str | None = field(
        default=None,
        metadata=doc(
            "warm start: RUN or RUN:latest|best|step-N, another run's checkpoint whose embeddings, managed-collision "
            "slots, dense weights (and, with train.init_optimizer, optimizer states) this run starts from; the "
            "dataset may grow tables; the step and the schedule restart at 0 (mdr train --init-from)"
        ),
    )
    init_optimizer: bool = field(
        default=False,
        metadata=doc(
            "with train.init_from: also carry the sparse and dense optimizers' states (else they start fresh)"
        ),
    )
    mixed_precision: bool = field(default=False, metadata=doc("bf16 autocast of the dense arch (GPU only)"))
    device: Literal["auto", "cpu", "cuda"] = field(default="auto", metadata=doc("auto: cuda when available"))
    threads: int | None = field(
        default=None,
        metadata=bounds(
            ge=1,
            help="CPU threads per process (default: the "
            "cores / the processes on this machine; "
            "1 on a machine busy with other work)",
        ),
    )
    cpu_keep_freed_memory: bool = field(
        default=True,
        metadata=doc(
            "on CPU (glibc): serve large tensors from the heap and keep freed memory, instead of mmap/munmap and "
            "fresh page faults every step (torchrec_mdr.training.cpu_memory); the process keeps its peak memory"
        ),
    )

    def validate(self) -> None:
        if self.init_optimizer and not self.init_from:
            raise ConfigError("train.init_optimizer needs train.init_from (the run whose optimizer state to carry)")
        if self.early_stopping.enabled and self.eval_every is None:
            raise ConfigError(
                "train.early_stopping needs train.eval_every (how often the validation split is evaluated)"
            )
        if self.task_weights is not None and not any(w > 0 for w in self.task_weights):
            raise ConfigError(f"train.task_weights {self.task_weights}: at least one task needs a weight > 0")


@dataclass
class ExperimentConfig:
    task: Literal["ranking", "retrieval"] = field(
        default="ranking",
        metadata=doc(
            "ranking: model.name scores each row (AUC/GAUC); retrieval: a two-tower model (see [retrieval]) "
            "trained by in-batch softmax over the positive rows (Recall@K, HitRate@K)"
        ),
    )
    data: ReaderConfig = field(default_factory=ReaderConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    sparse: SparseConfig = field(default_factory=SparseConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> None:
        if self.optimizer.decay != "none" and self.train.max_steps is None:
            raise ConfigError("optimizer.decay needs train.max_steps (the decay horizon)")
        if self.task == "retrieval" and self.train.task_weights is not None:
            raise ConfigError(
                "train.task_weights weighs the ranking tasks' losses; task = 'retrieval' trains on "
                "the first label's positives only: leave it unset"
            )
        if self.task == "retrieval" and self.train.early_stopping.enabled:
            raise ConfigError(
                "train.early_stopping decides on AUC or logloss, which task = 'retrieval' does "
                "not compute; disable it for retrieval"
            )
