"""Early stopping on the validation split of a training run.

Each evaluation during training becomes a row of ``metrics.json``'s ``history`` (step, epoch, split
and the task's headline metrics: :meth:`~torchrec_mdr.tasks.base.Task.history`).
:class:`EarlyStopping` follows one metric of those evaluations (``train.early_stopping``; the task
reads it from a result: :meth:`~torchrec_mdr.tasks.base.Task.stopping_value`):
it says when an evaluation is the best so far (the trainer then saves a checkpoint and names it
``checkpoints/best``) and when ``patience`` evaluations in a row have not improved on the best by
more than ``min_delta`` (the trainer then stops). Its state travels in each checkpoint's
``state.json``, so that a resumed run stops where an uninterrupted one would.

Every rank must take the same decisions: :meth:`EarlyStopping.update` is given a value that the
trainer first broadcasts from rank 0.
"""

from __future__ import annotations

import math
from typing import Any

from torchrec_mdr.experiment import EarlyStoppingConfig


class EarlyStopping:
    """Tracks the best value of ``config.metric`` over a run's evaluations.

    Args:
        config: the ``train.early_stopping`` section (metric, patience, min_delta).

    Example::

        stopper = EarlyStopping(EarlyStoppingConfig(enabled=True, metric="auc", patience=2))
        stopper.update(0.70, step=10)  # True: the first evaluation is the best so far
        stopper.update(0.69, step=20)  # False
        stopper.update(0.68, step=30)  # False; stopper.should_stop is now True
    """

    def __init__(self, config: EarlyStoppingConfig) -> None:
        self.config = config
        self.best_value: float | None = None
        self.best_step: int | None = None
        self.bad_evaluations = 0  # evaluations since the best one
        self.stopped_at: int | None = None  # the step at which patience ran out

    def improves(self, value: float) -> bool:
        """Whether ``value`` beats the best so far by more than ``min_delta`` (NaN never does)."""
        if math.isnan(value):
            return False
        if self.best_value is None:
            return True
        if self.config.metric == "logloss":
            return value < self.best_value - self.config.min_delta
        return value > self.best_value + self.config.min_delta

    def update(self, value: float, step: int) -> bool:
        """Fold in the evaluation at ``step``; True when it is the new best (save it as the best checkpoint)."""
        if self.improves(value):
            self.best_value, self.best_step, self.bad_evaluations = value, step, 0
            return True
        self.bad_evaluations += 1
        if self.should_stop and self.stopped_at is None:
            self.stopped_at = step
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad_evaluations >= self.config.patience

    def reason(self, split: str) -> str:
        """One line saying why training stopped."""
        metric = self.config.metric + (f" of task {self.config.task}" if self.config.task is not None else "")
        return (
            f"early stopping at step {self.stopped_at}: {split} {metric} has not improved by more "
            f"than {self.config.min_delta} for {self.bad_evaluations} evaluation(s); the best, "
            f"{self.best_value:.6f}, was at step {self.best_step}"
        )

    def state_dict(self) -> dict[str, Any]:
        """Plain JSON values (kept in each checkpoint's ``state.json``)."""
        return {
            "best_value": self.best_value,
            "best_step": self.best_step,
            "bad_evaluations": self.bad_evaluations,
            "stopped_at": self.stopped_at,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict` (a checkpoint written without early stopping gives ``{}``: fresh)."""
        self.best_value = state.get("best_value")
        self.best_step = state.get("best_step")
        self.bad_evaluations = int(state.get("bad_evaluations", 0))
        self.stopped_at = state.get("stopped_at")

    def summary(self, split: str) -> dict[str, Any]:
        """The ``early_stopping`` section of ``metrics.json`` (``task`` only when one is named)."""
        summary = {
            "split": split,
            "metric": self.config.metric,
            "patience": self.config.patience,
            "min_delta": self.config.min_delta,
            "best_step": self.best_step,
            "best_value": self.best_value,
            "stopped_early": self.stopped_at is not None,
            "stopped_at_step": self.stopped_at,
        }
        if self.config.task is not None:
            summary["task"] = self.config.task
        return summary
