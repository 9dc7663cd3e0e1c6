"""Training and evaluation of a registered model on a prepared dataset, sharded with DMP.

One :class:`Trainer` per process (rank). It builds the model with its sparse arch on the meta
device, registers the fused sparse optimizer, shards with DistributedModelParallel, combines the
fused and dense optimizers, and trains with TrainPipelineSparseDist (or TrainPipelineBase / a plain
loop, for comparison), and evaluates with EvalPipelineSparseDist (plain DMP forwards for the other
two). Every rank runs the same number of steps: an epoch is the smallest number
of batches any rank's slice yields. Training lasts ``train.max_steps`` steps when that is set
(epoch after epoch, as many as needed) and ``train.epochs`` epochs otherwise; early stopping
(``train.early_stopping``, :mod:`torchrec_mdr.training.early_stopping`) may end it sooner, on every
rank at the same step, and then the best checkpoint's weights are restored before the final
evaluation. Every evaluation during training is kept in ``metrics.json``'s ``history``.
Evaluation covers every row of the split exactly once: ranks with fewer batches repeat a batch
whose predictions are discarded, so that the sharded collectives stay in step.

Everything that depends on what the run learns — the model, its output NamedTuple, the evaluation
buffer and metrics, the printed table, the TensorBoard scalars of an evaluation, the metrics early
stopping may decide on — is asked of ``self.task`` (:mod:`torchrec_mdr.tasks`: ranking, or the
two-tower retrieval model of ``task = "retrieval"``); the trainer drives steps, evaluations, early
stopping, checkpoints and logs. The model is built and evaluated as the Evaluator
(:mod:`torchrec_mdr.training.evaluate`) does it (:mod:`torchrec_mdr.training.run_model`).
"""

from __future__ import annotations

import itertools
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torchrec.distributed.train_pipeline import TrainPipelineBase, TrainPipelineSparseDist
from tqdm import tqdm

from torchrec_mdr.config import ConfigError, to_dict
from torchrec_mdr.data.batch import Batch
from torchrec_mdr.data.reader import make_dataloader
from torchrec_mdr.errors import TrainingError
from torchrec_mdr.experiment import ExperimentConfig
from torchrec_mdr.sparse.mch.eviction import eviction_stats
from torchrec_mdr.tasks.base import ModelOutput, TaskResult
from torchrec_mdr.training.checkpoint import CheckpointInfo, all_finite, check_identity, data_order, differences
from torchrec_mdr.training.checkpoint_identity import model_options
from torchrec_mdr.training.early_stopping import EarlyStopping
from torchrec_mdr.training.optimizers import LRSchedule
from torchrec_mdr.training.run_model import all_equal_batches, build_sharded, eval_outputs, open_run, seeded_iter
from torchrec_mdr.training.warm_start import warm_start


@dataclass
class Progress:
    epoch: int = 0
    step: int = 0  # optimizer steps done
    batch_in_epoch: int = 0  # batches of the current epoch already trained on


class Trainer:
    def __init__(self, config: ExperimentConfig, run_dir: str | Path, resume: bool = False) -> None:
        """``resume``: continue from the latest complete checkpoint of ``run_dir`` (see
        :mod:`torchrec_mdr.training.checkpoint`; with none, start fresh and say so). Without it, a
        ``run_dir`` that holds checkpoints is refused. (To evaluate a checkpoint without training, see
        :class:`~torchrec_mdr.training.evaluate.Evaluator`.)"""
        self.config = config
        self.run_dir = Path(run_dir)
        parts = open_run(config, self.run_dir)
        self.ctx, self.spec, self.reader_spec, self.task, self.checkpoints, self.identity = parts
        self.last_checkpoint: Path | None = None  # the last complete checkpoint of this run
        self._saved_step = -1  # progress.step of last_checkpoint
        self._losses_saved = 0  # len(step_losses) at the last checkpoint
        self.history: list[dict] = []  # every evaluation during training (metrics.json's "history")
        self.stopper = self._make_stopper()
        resume_from = self._resume_point(resume)
        torch.manual_seed(config.train.seed)
        if self.ctx.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            stored = {**to_dict(config), "model": model_options(config.model)}  # the chosen model's section only
            (self.run_dir / "config.json").write_text(json.dumps(stored, indent=2) + "\n")
        self.model, self.optimizer = build_sharded(config, parts)
        self.train_loader = make_dataloader(
            config.data, "train", self.ctx.rank, self.ctx.world_size, spec=self.reader_spec
        )
        self.steps_per_epoch = all_equal_batches(self.train_loader, self.ctx, dist.ReduceOp.MIN)
        # max_steps, when set, is the length of training: the epochs repeat as needed (see TrainConfig)
        self.total_steps = config.train.max_steps or self.steps_per_epoch * config.train.epochs
        if config.train.max_steps and self.steps_per_epoch == 0:
            raise TrainingError(
                f"the train split of {config.data.path} gives no batch on some rank; cannot "
                f"train train.max_steps={config.train.max_steps} steps"
            )
        self.schedule = LRSchedule(self.optimizer, config.optimizer, self.total_steps)
        self.progress = Progress()
        self.step_losses: list[float] = []  # this rank's loss of every step trained by fit()
        self._pending_losses: list[torch.Tensor] = []  # losses of steps since the last log step
        self.pipeline: TrainPipelineBase | TrainPipelineSparseDist | None = None  # built by train_step
        self.writer = None
        if self.ctx.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run_dir / "tensorboard"))
        self.init_record: dict | None = None  # where a warm-started run came from (metrics.json's init_from)
        if resume_from is not None:
            self._resume(resume_from)
        elif config.train.init_from:
            self.init_record = warm_start(
                config.train.init_from,
                config.train.init_optimizer,
                self.model,
                self.optimizer,
                self.ctx,
                self.identity,
                config.sparse.eviction.tables,
            )

    def _make_stopper(self) -> EarlyStopping | None:
        """The early-stopping tracker of ``train.early_stopping`` (None when disabled)."""
        config = self.config.train.early_stopping
        if not config.enabled:
            return None
        if self.config.train.eval_every is None:
            raise ConfigError(
                "train.early_stopping needs train.eval_every (how often the validation split is evaluated)"
            )
        self.task.check_early_stopping(config)
        return EarlyStopping(config)

    # ------------------------------------------------------------------ checkpoints
    def _resume_point(self, resume: bool) -> CheckpointInfo | None:
        """The checkpoint to resume from, checked against this run's model, optimizer and dataset."""
        latest = self.checkpoints.latest()
        if not resume:
            if latest is not None:
                raise TrainingError(
                    f"{self.run_dir} already holds checkpoint {latest.path.name}: pass --resume to "
                    f"continue from it, or choose another run directory"
                )
            return None
        if latest is None:
            if self.ctx.is_main:
                print(f"--resume: no complete checkpoint in {self.checkpoints.root}; starting fresh")
            return None
        check_identity(latest.record.get("identity", {}), self.identity, latest.path)
        return latest

    def _resume(self, info: CheckpointInfo) -> None:
        """Load model, optimizer, schedule, progress and RNG states. At the checkpoint's world size and
        data settings the run continues exactly; otherwise (say so) the epoch position is carried
        over as the fraction of the epoch's rows already trained on."""
        self.checkpoints.load(info.path, self.model, self.optimizer)
        record = info.record
        self.progress = Progress(**record["progress"])
        self.schedule.load_state_dict(record["schedule"])
        self.history = list(record.get("history", []))
        self.init_record = record.get("init_from")
        if self.stopper is not None:
            self.stopper.load_state_dict(record.get("early_stopping", {}))
            self._remark_best()
        self.last_checkpoint, self._saved_step = info.path, self.progress.step
        saved_order = record.get("data_order", {})
        changed = differences(saved_order, data_order(self.config, self.ctx.world_size), "data")
        if changed:
            rows = (
                self.progress.batch_in_epoch
                * saved_order.get("world_size", self.ctx.world_size)
                * saved_order.get("batch_size", self.config.data.batch_size)
            )
            per_step = self.ctx.world_size * self.config.data.batch_size
            self.progress.batch_in_epoch = min(rows // per_step, self.steps_per_epoch)
        if self.ctx.is_main:
            print(
                f"resuming from {info.path} (step {self.progress.step}, epoch {self.progress.epoch}, "
                f"batch {self.progress.batch_in_epoch} of the epoch)"
            )
            if changed:
                print(
                    "note: the data order differs from the checkpoint's run, so this is not an exact "
                    "continuation: " + "; ".join(changed).replace("data.world_size", "world size")
                )

    def save_checkpoint(self) -> Path | None:
        """Checkpoint the current state (a collective) unless this step is saved already. A non-finite
        loss since the last checkpoint or non-finite weights raise TrainingError instead, so that the
        last good checkpoint is never replaced by a broken state."""
        if self.progress.step in (0, self._saved_step):
            return None
        self._flush_losses()
        self._check_loss(self.step_losses[self._losses_saved :])
        if not all_finite(self.model, self.ctx):
            raise TrainingError(
                f"the model's weights are not finite at step {self.progress.step}; not saving "
                f"a checkpoint{self._checkpoint_note()}"
            )
        record = {
            "model_name": self.task.model_name,
            "progress": asdict(self.progress),
            "schedule": self.schedule.state_dict(),
            "identity": self.identity,
            "data_order": data_order(self.config, self.ctx.world_size),
            "history": self.history,
        }
        if self.stopper is not None:
            record["early_stopping"] = self.stopper.state_dict()
        if self.init_record is not None:
            record["init_from"] = self.init_record
        self.last_checkpoint = self.checkpoints.save(self.model, self.optimizer, record)
        self._saved_step, self._losses_saved = self.progress.step, len(self.step_losses)
        return self.last_checkpoint

    def _flush_losses(self) -> None:
        """Move the steps' loss tensors into ``step_losses`` (floats) with one device sync."""
        if self._pending_losses:
            self.step_losses.extend(torch.stack(self._pending_losses).float().cpu().tolist())
            self._pending_losses = []

    def _checkpoint_note(self) -> str:
        if self.last_checkpoint is None:
            return "; no checkpoint of this run was saved"
        return f"; the last good checkpoint is {self.last_checkpoint} (continue from it with --resume)"

    # ------------------------------------------------------------------ training
    def _make_pipeline(self) -> TrainPipelineBase | TrainPipelineSparseDist | None:
        """The torchrec training pipeline of ``train.pipeline`` over this trainer's model and optimizer
        (None for ``plain``), built once per trainer by :meth:`train_step`."""
        kind = self.config.train.pipeline
        if kind == "sparse_dist":
            return TrainPipelineSparseDist(self.model, self.optimizer, self.ctx.device, execute_all_batches=True)
        if kind == "base":
            return TrainPipelineBase(self.model, self.optimizer, self.ctx.device)
        return None

    def train_step(self, batches: Iterator[Batch]) -> ModelOutput:
        """One optimizer step on the next batch of ``batches`` with the configured loop; returns the
        model's output (the task's NamedTuple: ``loss``, ``domain``, ...). Raises StopIteration when
        ``batches`` is exhausted (a pipeline first finishes the batches it holds). Does not advance
        :attr:`progress`."""
        if self.pipeline is None and self.config.train.pipeline != "plain":
            self.pipeline = self._make_pipeline()
        if self.pipeline is not None:
            try:
                return self.pipeline.progress(batches)
            except StopIteration:  # drained: it trained every batch it took from ``batches``
                if isinstance(self.pipeline, TrainPipelineBase):
                    self.pipeline.reset()  # else it refuses every later iterator (torchrec 1.9.2)
                raise
        batch = next(batches)
        self.model.train()
        self.optimizer.zero_grad()
        loss, output = self.model(batch.to(self.ctx.device))
        loss.backward()
        self.optimizer.step()
        return output

    def epoch_batches(self) -> Iterator[Batch]:
        """The train batches of the current epoch still to train on (from ``progress.batch_in_epoch`` to
        ``steps_per_epoch``), in the epoch's seeded order: what :meth:`fit` feeds :meth:`train_step`."""
        self.train_loader.dataset.set_epoch(self.progress.epoch)
        epoch_batches = seeded_iter(self.train_loader, self.config.train.seed * 100_003 + self.progress.epoch)
        return itertools.islice(epoch_batches, self.progress.batch_in_epoch, self.steps_per_epoch)

    def fit(self) -> dict:
        """Train for the configured epochs / steps; evaluate; write metrics.json. Returns the metrics."""
        cfg = self.config.train
        losses = self.step_losses
        samples = 0
        start = time.perf_counter()
        # On a terminal the bar redraws every second; in a log file (torchx, slurm) every 30 s, so that
        # a long run's log stays readable.
        bar = tqdm(
            total=self.total_steps,
            initial=self.progress.step,
            desc="train",
            unit="step",
            disable=not self.ctx.is_main,
            dynamic_ncols=True,
            mininterval=1.0 if sys.stderr.isatty() else 30.0,
        )
        postfix: dict[str, str] = {}  # loss, samples/s, occupancy and the last evaluation, shown together
        done = self.progress.step >= self.total_steps or self._stop_early()
        while not done and (cfg.max_steps is not None or self.progress.epoch < cfg.epochs):
            batches = self.epoch_batches()
            # The pipeline is fed in segments that end where an evaluation is due: at the end of one it
            # trains every batch it holds, so the evaluation pipeline can take the model over (torchrec's
            # DLRM example does the same); the next segment refills it.
            segment, segment_steps = itertools.islice(batches, self._steps_to_evaluation()), 0
            while True:
                try:
                    output = self.train_step(segment)
                    segment_steps += 1
                except StopIteration:
                    if segment_steps == 0 or self.progress.batch_in_epoch >= self.steps_per_epoch:
                        break
                    segment, segment_steps = itertools.islice(batches, self._steps_to_evaluation()), 0
                    continue
                self.progress.step += 1
                self.progress.batch_in_epoch += 1
                self.schedule.step()
                self._pending_losses.append(output.loss.detach())  # read at log steps: no per-step GPU sync
                samples += int(output.domain.shape[0]) * self.ctx.world_size
                bar.update(1)
                if self.progress.step % cfg.log_every == 0 or self.progress.step == self.total_steps:
                    self._flush_losses()
                    mean_loss = self._check_loss(losses[-cfg.log_every :])
                    rate = samples / (time.perf_counter() - start)
                    self._scalar("train/loss", mean_loss)
                    self._scalar("train/samples_per_sec", rate)
                    postfix.update(loss=f"{mean_loss:.4f}", samples_per_s=f"{rate:,.0f}", **self._log_eviction())
                    bar.set_postfix(postfix, refresh=False)
                stop = False
                if cfg.eval_every and (
                    self.progress.step % cfg.eval_every == 0
                    or (cfg.eval_at_end and self.progress.step >= self.total_steps)
                ):
                    self._flush_losses()
                    result = self.evaluate(cfg.eval_split)
                    postfix.update({f"{cfg.eval_split}_{k}": v for k, v in self.task.headline(result).items()})
                    bar.set_postfix(postfix, refresh=False)
                    stop = self._after_evaluation(result)
                if cfg.checkpoint_every and self.progress.step % cfg.checkpoint_every == 0:
                    self.save_checkpoint()
                if stop or self.progress.step >= self.total_steps:
                    done = True
                    break
            if not done:
                self.progress.epoch += 1
                self.progress.batch_in_epoch = 0
        bar.close()
        wall = time.perf_counter() - start
        self._flush_losses()
        self._check_loss(losses[-cfg.log_every :])
        self.save_checkpoint()
        if self.stopper is not None and self.ctx.is_main and self.stopper.stopped_at is not None:
            print(self.stopper.reason(cfg.eval_split))
        self._restore_best()
        train = {
            "samples_per_sec": samples / wall if wall else 0.0,
            "steps": self.progress.step,
            "wall_sec": wall,
            "final_loss": losses[-1] if losses else float("nan"),
        }
        return self.report(train)

    def _after_evaluation(self, result: TaskResult) -> bool:
        """Record an evaluation of ``train.eval_split`` in the history and, with early stopping, save it as
        the best checkpoint when it is; True when training must stop (the same answer on every rank: the
        metric is broadcast from rank 0)."""
        self.history.append(
            {
                "step": self.progress.step,
                "epoch": self.progress.epoch,
                "split": self.config.train.eval_split,
                **self.task.history(result),
            }
        )
        if self.stopper is None:
            return False
        value = torch.tensor(
            [self.task.stopping_value(result, self.stopper.config)], dtype=torch.float64, device=self.ctx.device
        )
        if self.ctx.world_size > 1:
            dist.broadcast(value, src=0)
        if self.stopper.update(float(value.item()), self.progress.step):
            self.save_checkpoint()
            assert self.last_checkpoint is not None  # saved now, or at this step already
            self.checkpoints.mark_best(self.last_checkpoint)
        return self.stopper.should_stop

    def _remark_best(self) -> None:
        """On resume: point ``checkpoints/best`` at the checkpoint's best step if a crash between saving
        it and marking it left the marker on an older one."""
        step = self.stopper.best_step if self.stopper is not None else None
        if step is None:
            return
        marked = self.checkpoints.best()
        path = self.checkpoints.root / f"step-{step:06d}"
        if (marked is None or marked.step != step) and path.is_dir():
            self.checkpoints.mark_best(path)

    def _stop_early(self) -> bool:
        """At the start of :meth:`fit`: whether a resumed run had already run out of patience."""
        if self.stopper is None or not self.stopper.should_stop:
            return False
        if self.stopper.stopped_at is None:  # resumed with a smaller patience than the checkpoint's run
            self.stopper.stopped_at = self.progress.step
        return True

    def _restore_best(self) -> None:
        """With early stopping, load the best checkpoint's weights (if they are not the current ones) for
        the final evaluation."""
        if self.stopper is None or self.stopper.best_step is None or self.stopper.best_step == self.progress.step:
            return
        best = self.checkpoints.best()
        if best is None or best.step != self.stopper.best_step:
            raise TrainingError(
                f"the best checkpoint (step {self.stopper.best_step}) is missing from "
                f"{self.checkpoints.root}; cannot restore it for the final evaluation"
            )
        if self.ctx.is_main:
            print(f"restoring the best checkpoint {best.path} (step {best.step}) for the final evaluation")
        self.checkpoints.load(best.path, self.model, optimizer=None, restore_rng=False)

    def _steps_to_evaluation(self) -> int | None:
        """Steps until the next evaluation of ``train.eval_every`` (None: no evaluations); with
        ``train.eval_at_end`` the last step is one too, so that the pipeline is drained there."""
        every = self.config.train.eval_every
        if not every:
            return None
        steps = every - self.progress.step % every
        if self.config.train.eval_at_end:
            steps = min(steps, max(self.total_steps - self.progress.step, 1))
        return steps

    def _check_loss(self, recent: list[float]) -> float:
        """Mean recent loss over all ranks; a NaN or inf anywhere stops the run on every rank."""
        value = torch.tensor([sum(recent) / max(len(recent), 1)], dtype=torch.float64, device=self.ctx.device)
        if self.ctx.world_size > 1:
            dist.all_reduce(value)
            value /= self.ctx.world_size
        mean = float(value.item())
        if not math.isfinite(mean):
            raise TrainingError(
                f"the training loss became {mean} at step {self.progress.step}; stopping "
                f"(lower optimizer.dense_lr / optimizer.sparse_lr or set optimizer.grad_clip_norm)"
                f"{self._checkpoint_note()}"
            )
        return mean

    def _log_eviction(self) -> dict[str, str]:
        """TensorBoard scalars of the managed tables (a collective when sharded); {"occ_<table>": "0.93"}."""
        if not self.config.sparse.eviction.tables:
            return {}
        stats = eviction_stats(self.model, self.config.sparse.eviction.tables, self.ctx.device)
        for table, table_stats in stats.items():
            self._scalar(f"eviction/{table}/occupancy", table_stats.occupancy)
            self._scalar(f"eviction/{table}/evicted_ids", table_stats.evicted_ids)
            self._scalar(f"eviction/{table}/admitted_ids", table_stats.admitted_ids)
        return {f"occ_{table}": f"{table_stats.occupancy:.2f}" for table, table_stats in stats.items()}

    def _scalar(self, tag: str, value: float) -> None:
        if self.writer is not None:
            self.writer.add_scalar(tag, value, self.progress.step)

    # ------------------------------------------------------------------ evaluation
    def _eval_outputs(self, split: str) -> Iterator[Any]:
        """The model's outputs on this rank's batches of ``split`` (see
        :func:`~torchrec_mdr.training.run_model.eval_outputs`), the training pipeline detached first."""
        if isinstance(self.pipeline, TrainPipelineSparseDist):
            self.pipeline.detach()  # restore the plain forwards; the next progress() re-attaches
        return eval_outputs(self.model, self.optimizer, self.config, split, self.ctx, self.reader_spec)

    def evaluate(self, split: str) -> TaskResult:
        """The task's metrics over every row of ``split`` (identical on all ranks), logged to TensorBoard."""
        result = self.task.evaluate(self._eval_outputs(split), self.ctx.device)  # no rank gathers all rows
        for tag, value in self.task.scalars(split, result):
            self._scalar(tag, value)
        return result

    def report(self, train: dict) -> dict:
        split = self.config.train.test_split
        result = self.evaluate(split)
        metrics = {
            "model": self.task.model_name,
            "dataset": self.spec.name,
            "split": split,
            **result.to_dict(),
            "train": train,
            "history": self.history,
        }
        if self.init_record is not None:
            metrics["init_from"] = self.init_record
        if self.stopper is not None:
            best = self.checkpoints.best()
            metrics["early_stopping"] = {
                **self.stopper.summary(self.config.train.eval_split),
                "best_checkpoint": str(best.path) if best is not None else None,
            }
            if best is not None:  # the weights evaluated above (restored by fit)
                metrics["checkpoint"] = {"name": "best", "step": best.step, "path": str(best.path)}
        metrics.update(self.task.split_metrics(split))  # ranking: the oracle AUC of synthetic data
        if self.config.sparse.eviction.tables:  # occupancy and eviction counts per managed table
            stats = eviction_stats(self.model, self.config.sparse.eviction.tables, self.ctx.device)
            metrics["eviction"] = {table: table_stats.to_dict() for table, table_stats in stats.items()}
        if self.ctx.is_main:
            (self.run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
            print(self.task.format_table(metrics, self.spec.domain_names))
        if self.writer is not None:
            self.writer.flush()
        return metrics
