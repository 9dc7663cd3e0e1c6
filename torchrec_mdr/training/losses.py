"""The ranking loss over several tasks: each task's binary cross-entropy, weighted, summed.

A dataset spec with T labels (Ali-CCP: click, purchase; KuaiRand: is_click, long_view, is_like) makes
every ranking model return logits [B, T]. With z_bt the logit and y_bt the label of row b, task t,
and w_t the weight of task t (``train.task_weights``, default 1.0 each)::

    L = sum_t w_t * (1 / B) * sum_b BCE(z_bt, y_bt),   BCE(z, y) = -y log sigma(z) - (1 - y) log(1 - sigma(z))

the multi-task objective of the shared-bottom / MMoE / PLE papers (a weighted sum of the tasks'
losses). Choices where those papers are silent:

* each task's loss is the mean over the batch's rows (every row carries every label), so a weight is
  the task's share of the gradient whatever the batch size;
* the tasks are summed, not averaged: with T tasks that all weigh 1.0, L is T times the mean over rows
  and tasks (``nn.BCEWithLogitsLoss``, the loss before per-task weights existed); for one label the
  loss is exactly what it was;
* weights are fixed for the whole run (no uncertainty weighting or GradNorm) and may be 0 (the task is
  still evaluated, but does not train the model); at least one must be positive.

:func:`task_weights` resolves ``train.task_weights`` against the spec's labels, with a ConfigError
naming the key when the counts differ.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from torchrec_mdr.config import ConfigError
from torchrec_mdr.data.spec import DatasetSpec


class TaskWeightedBCE(nn.Module):
    """``forward(logits [B, T], labels [B, T]) -> scalar``: sum_t w_t * mean_b BCE(logits[b, t], labels[b, t]).

    Args:
        weights: w_t, one per task (length T).

    Example::

        loss_fn = TaskWeightedBCE([1.0, 0.5])
        loss = loss_fn(torch.zeros(4, 2), torch.ones(4, 2))  # (1.0 + 0.5) * log 2
    """

    # buffers (registered in __init__)
    weights: torch.Tensor

    def __init__(self, weights: Sequence[float]) -> None:
        super().__init__()
        # not persistent: checkpoints keep the state dict they had (the weights live in config.json)
        self.register_buffer("weights", torch.tensor(list(weights), dtype=torch.float32), persistent=False)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        per_task = F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(dim=0)  # [T]
        return (per_task * self.weights.to(per_task.dtype)).sum()


def task_weights(weights: Sequence[float] | None, spec: DatasetSpec) -> list[float]:
    """``train.task_weights`` for the spec's labels: 1.0 each when unset; a ConfigError naming the key
    when the count is not the number of labels."""
    labels = spec.label_names
    if weights is None:
        return [1.0] * len(labels)
    if len(weights) != len(labels):
        raise ConfigError(
            f"train.task_weights has {len(weights)} value(s) {list(weights)}, but the dataset "
            f"{spec.name} has {len(labels)} label(s) {labels}: give one weight per label, in that order"
        )
    return [float(w) for w in weights]
