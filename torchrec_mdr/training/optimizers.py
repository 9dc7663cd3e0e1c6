"""Optimizers: a fused sparse optimizer applied in backward, a dense one, combined; their schedule."""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn
from torchrec.optim import RowWiseAdagrad
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection

from torchrec_mdr.config import ConfigError
from torchrec_mdr.experiment import OptimizerConfig

SPARSE_OPTIMIZERS = {
    "rowwise_adagrad": RowWiseAdagrad,
    "adagrad": torch.optim.Adagrad,
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
}
DENSE_OPTIMIZERS = {"adam": torch.optim.Adam, "adagrad": torch.optim.Adagrad, "sgd": torch.optim.SGD}


def apply_sparse_optimizer(model: nn.Module, config: OptimizerConfig, device: torch.device) -> None:
    """Register the fused sparse optimizer on every embedding table (before DMP wraps the model)."""
    if config.sparse == "adam" and device.type == "cpu":
        raise ConfigError(
            "optimizer.sparse = adam: fbgemm's fused CPU kernels do not support Adam "
            "(use rowwise_adagrad, adagrad or sgd on CPU; adam works on GPU)"
        )
    params = [
        p
        for m in model.modules()
        if isinstance(m, (EmbeddingBagCollection, EmbeddingCollection))
        for p in m.parameters()
    ]
    # A fresh dict: DMP renames "lr" in the dict it is given (torchrec gotcha).
    apply_optimizer_in_backward(SPARSE_OPTIMIZERS[config.sparse], params, {"lr": config.sparse_lr})


def build_optimizer(model: nn.Module, config: OptimizerConfig) -> KeyedOptimizer:
    """The DMP model's fused optimizer combined with the dense optimizer over every other parameter
    (data-parallel tables included: they get no in-backward optimizer)."""
    dense_params = dict(in_backward_optimizer_filter(model.named_parameters()))
    dense_class = DENSE_OPTIMIZERS[config.dense]

    def make(params: Any) -> torch.optim.Optimizer:
        return dense_class(params, lr=config.dense_lr, weight_decay=config.weight_decay)

    dense = (
        ClippedOptimizer(dense_params, make, config.grad_clip_norm)
        if config.grad_clip_norm
        else KeyedOptimizerWrapper(dense_params, make)
    )
    return CombinedOptimizer([model.fused_optimizer, dense])


class ClippedOptimizer(KeyedOptimizerWrapper):
    """A dense optimizer that clips its parameters' total gradient norm before each step."""

    def __init__(
        self, params: dict[str, nn.Parameter], make: Callable[[Any], torch.optim.Optimizer], max_norm: float
    ) -> None:
        super().__init__(params, make)
        self.max_norm = max_norm

    def step(self, closure: Any = None) -> None:  # torch.optim signature
        torch.nn.utils.clip_grad_norm_([p for p in self.params.values() if p.grad is not None], self.max_norm)
        super().step(closure)


def lr_factor(step: int, config: OptimizerConfig, total_steps: int | None) -> float:
    """Multiplier of the base rates at ``step``: linear warm-up, then none / linear / cosine decay."""
    if config.warmup_steps and step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.decay == "none" or not total_steps:
        return 1.0
    span = max(total_steps - config.warmup_steps, 1)
    progress = min(max(step - config.warmup_steps, 0) / span, 1.0)
    shape = 1.0 - progress if config.decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return config.min_lr_ratio + (1.0 - config.min_lr_ratio) * shape


class LRSchedule:
    """Sets every param group's ``lr`` to base * :func:`lr_factor` (fused and dense groups alike)."""

    def __init__(self, optimizer: KeyedOptimizer, config: OptimizerConfig, total_steps: int | None) -> None:
        self.optimizer = optimizer
        self.config = config
        self.total_steps = total_steps
        self.base = [group["lr"] for group in optimizer.param_groups]
        self.step_count = 0
        self.apply()

    def apply(self) -> None:
        factor = lr_factor(self.step_count, self.config, self.total_steps)
        for group, base in zip(self.optimizer.param_groups, self.base):
            group["lr"] = base * factor

    def step(self) -> None:
        self.step_count += 1
        self.apply()

    def state_dict(self) -> dict[str, int]:
        return {"step_count": self.step_count}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step_count = int(state["step_count"])
        self.apply()
