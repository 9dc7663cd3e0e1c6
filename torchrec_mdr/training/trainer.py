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

``task = "retrieval"`` trains the two-tower model of :mod:`torchrec_mdr.retrieval` instead (same
sharding, pipeline, checkpoints and resumption); its evaluation collects the positive rows' user and
item vectors and reports Recall@K and HitRate@K (:mod:`torchrec_mdr.retrieval.metrics`).
"""

from __future__ import annotations

import itertools
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Iterator

import torch
import torch.distributed as dist
from torchrec.distributed.train_pipeline import EvalPipelineSparseDist, TrainPipelineBase, TrainPipelineSparseDist
from tqdm import tqdm

from torchrec_mdr.config import ConfigError, to_dict
from torchrec_mdr.data.batch import Batch
from torchrec_mdr.data.reader import BatchLoader, make_dataloader
from torchrec_mdr.data.spec import DatasetSpec
from torchrec_mdr.errors import TrainingError
from torchrec_mdr.experiment import ExperimentConfig
from torchrec_mdr.metrics.ranking import EvalResult
from torchrec_mdr.metrics.sharded import ShardedMetrics
from torchrec_mdr.metrics.table import format_ranking_table
from torchrec_mdr.retrieval.metrics import (RetrievalBuffer, RetrievalResult, format_retrieval_table,
                                            retrieval_metrics)
from torchrec_mdr.sparse.mch.eviction import eviction_stats, managed_reader_spec, prepare_eviction
from torchrec_mdr.training.checkpoint_identity import model_options
from torchrec_mdr.training.checkpoint import (CheckpointInfo, CheckpointManager, all_finite, check_identity,
                                              data_order, differences, run_identity)
from torchrec_mdr.training.distributed import DistContext, init_distributed
from torchrec_mdr.training.early_stopping import EarlyStopping, history_entry
from torchrec_mdr.training.model_factory import build_model
from torchrec_mdr.training.optimizers import LRSchedule, build_optimizer
from torchrec_mdr.training.cpu_memory import keep_freed_memory
from torchrec_mdr.training.sharding import wrap_model
from torchrec_mdr.training.warm_start import dataset_changes, describe, parse_source


@dataclass
class Progress:
    epoch: int = 0
    step: int = 0  # optimizer steps done
    batch_in_epoch: int = 0  # batches of the current epoch already trained on


def _seeded_iter(loader: BatchLoader, seed: int) -> Iterator[Batch]:
    """``iter(loader)`` without a draw from torch's global RNG: a DataLoader draws its workers' base
    seed from ``loader.generator``, the global RNG when None, which would shift dropout's random
    stream by one draw per epoch and per evaluation (and break exact resumption)."""
    loader.generator = torch.Generator().manual_seed(seed)
    return iter(loader)


def _all_equal_batches(loader: BatchLoader, ctx: DistContext, reduce_op: dist.ReduceOp) -> int:
    count = torch.tensor([loader.dataset.num_batches()], dtype=torch.int64, device=ctx.device)  # nccl: on GPU
    if ctx.world_size > 1:
        dist.all_reduce(count, op=reduce_op)
    return int(count.item())


class Trainer:
    def __init__(self, config: ExperimentConfig, run_dir: str | Path, resume: bool = False,
                 evaluate_only: bool = False) -> None:
        """``resume``: continue from the latest complete checkpoint of ``run_dir`` (see
        :mod:`torchrec_mdr.training.checkpoint`; with none, start fresh and say so). Without it, a
        ``run_dir`` that holds checkpoints is refused. ``evaluate_only``: build the model to load a
        checkpoint into and evaluate (``mdr eval``): no config.json, train split or TensorBoard."""
        self.config = config
        self.run_dir = Path(run_dir)
        self.ctx = init_distributed(config.train.device)
        if config.train.threads:
            torch.set_num_threads(config.train.threads)
        if config.train.cpu_keep_freed_memory and self.ctx.device.type == "cpu":
            keep_freed_memory()
        if config.train.mixed_precision and self.ctx.device.type != "cuda":
            raise ConfigError("train.mixed_precision is bf16 autocast on GPU; this run is on the CPU")
        self.spec = DatasetSpec.load(config.data.path)
        prepare_eviction(self.spec, config.sparse.eviction, self.ctx.world_size, config.data.batch_size)
        self.checkpoints = CheckpointManager(self.run_dir, self.ctx, config.train.keep_checkpoints)
        self.identity = run_identity(config, self.spec)
        self.retrieval = config.task == "retrieval"
        self.model_name = config.retrieval.model_name if self.retrieval else config.model.name
        if self.retrieval:  # the towers' structure replaces the (unused) ranking model's config
            self.identity["model"] = {"task": "retrieval", "embedding_dim": config.model.embedding_dim,
                                      "retrieval": to_dict(config.retrieval.structure())}
        self.last_checkpoint: Path | None = None  # the last complete checkpoint of this run
        self._saved_step = -1  # progress.step of last_checkpoint
        self._losses_saved = 0  # len(step_losses) at the last checkpoint
        self.history: list[dict] = []  # every evaluation during training (metrics.json's "history")
        self.stopper = self._make_stopper()
        resume_from = None if evaluate_only else self._resume_point(resume)
        torch.manual_seed(config.train.seed)
        if self.ctx.is_main and not evaluate_only:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            stored = {**to_dict(config), "model": model_options(config.model)}  # the chosen model's section only
            (self.run_dir / "config.json").write_text(json.dumps(stored, indent=2) + "\n")
        model = build_model(config, self.spec, self.ctx.device, self.ctx.world_size)
        self.model = wrap_model(model, config.sparse.sharding, self.ctx)
        self.optimizer = build_optimizer(self.model, config.optimizer)
        self.reader_spec = managed_reader_spec(self.spec, config.sparse.eviction)
        self.train_loader = (None if evaluate_only else
                             make_dataloader(config.data, "train", self.ctx.rank, self.ctx.world_size,
                                             spec=self.reader_spec))
        self.steps_per_epoch = (0 if evaluate_only else
                                _all_equal_batches(self.train_loader, self.ctx, dist.ReduceOp.MIN))
        # max_steps, when set, is the length of training: the epochs repeat as needed (see TrainConfig)
        self.total_steps = config.train.max_steps or self.steps_per_epoch * config.train.epochs
        if config.train.max_steps and self.steps_per_epoch == 0 and not evaluate_only:
            raise TrainingError(f"the train split of {config.data.path} gives no batch on some rank; cannot "
                                f"train train.max_steps={config.train.max_steps} steps")
        self.schedule = LRSchedule(self.optimizer, config.optimizer, self.total_steps)
        self.progress = Progress()
        self.step_losses: list[float] = []  # this rank's loss of every step trained by fit()
        self._pending_losses: list[torch.Tensor] = []  # losses of steps since the last log step
        self.pipeline: TrainPipelineBase | TrainPipelineSparseDist | None = None  # built by train_step
        self.writer = None
        if self.ctx.is_main and not evaluate_only:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run_dir / "tensorboard"))
        self.init_record: dict | None = None  # where a warm-started run came from (metrics.json's init_from)
        if resume_from is not None:
            self._resume(resume_from)
        elif config.train.init_from and not evaluate_only:
            self.init_record = self._warm_start(config.train.init_from, config.train.init_optimizer)

    def _make_stopper(self) -> EarlyStopping | None:
        """The early-stopping tracker of ``train.early_stopping`` (None when disabled)."""
        config = self.config.train.early_stopping
        if not config.enabled:
            return None
        if self.config.train.eval_every is None:
            raise ConfigError("train.early_stopping needs train.eval_every (how often the validation split is "
                              "evaluated)")
        if self.retrieval:
            raise ConfigError("train.early_stopping decides on AUC or logloss, which task = 'retrieval' does not "
                              "compute; disable it for retrieval")
        if config.task is not None and config.task not in self.spec.label_names:
            raise ConfigError(f"train.early_stopping.task = {config.task!r} is not a label of {self.config.data.path}; "
                              f"its labels are {self.spec.label_names}")
        return EarlyStopping(config)

    # ------------------------------------------------------------------ checkpoints
    def _resume_point(self, resume: bool) -> CheckpointInfo | None:
        """The checkpoint to resume from, checked against this run's model, optimizer and dataset."""
        latest = self.checkpoints.latest()
        if not resume:
            if latest is not None:
                raise TrainingError(f"{self.run_dir} already holds checkpoint {latest.path.name}: pass --resume to "
                                    f"continue from it, or choose another run directory")
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
            rows = (self.progress.batch_in_epoch * saved_order.get("world_size", self.ctx.world_size)
                    * saved_order.get("batch_size", self.config.data.batch_size))
            per_step = self.ctx.world_size * self.config.data.batch_size
            self.progress.batch_in_epoch = min(rows // per_step, self.steps_per_epoch)
        if self.ctx.is_main:
            print(f"resuming from {info.path} (step {self.progress.step}, epoch {self.progress.epoch}, "
                  f"batch {self.progress.batch_in_epoch} of the epoch)")
            if changed:
                print("note: the data order differs from the checkpoint's run, so this is not an exact "
                      "continuation: " + "; ".join(changed).replace("data.world_size", "world size"))

    def _warm_start(self, source: str, init_optimizer: bool) -> dict:
        """Load another run's checkpoint ``source`` (``RUN[:latest|best|step-N]``) into the model (and, with
        ``init_optimizer``, the optimizer) after checking it (:mod:`torchrec_mdr.training.warm_start`); a
        collective. Returns the record metrics.json keeps under ``init_from``."""
        run, name = parse_source(source)
        if not (run / "checkpoints").is_dir():
            raise TrainingError(f"train.init_from: {run} holds no checkpoints (expected a run directory of mdr "
                                f"train)")
        source_checkpoints = CheckpointManager(run, self.ctx)
        info = source_checkpoints.resolve(name)
        saved = info.record.get("identity", {})
        check_identity(saved, self.identity, info.path,
                       parts=("model", "eviction", "optimizer") if init_optimizer else ("model", "eviction"))
        grown = dataset_changes(saved.get("dataset", {}), self.identity["dataset"], info.path)
        managed = set(self.config.sparse.eviction.tables)
        moved = managed & grown.keys()  # a managed table's ids may now belong to other shards
        source_checkpoints.load(info.path, self.model, self.optimizer if init_optimizer else None, restore_rng=False,
                                grow=True, reshard_managed=bool(moved) and self.ctx.world_size > 1)
        record = {"run": str(run), "checkpoint": name, "path": str(info.path), "step": info.step,
                  "world_size": info.record.get("world_size"), "optimizer": init_optimizer,
                  "grown_tables": {t: {"rows_before": a, "rows_now": b} for t, (a, b) in sorted(grown.items())},
                  "dataset": saved.get("dataset", {}).get("fingerprint")}
        if self.ctx.is_main:
            print(describe(record, managed))
        return record

    def save_checkpoint(self) -> Path | None:
        """Checkpoint the current state (a collective) unless this step is saved already. A non-finite
        loss since the last checkpoint or non-finite weights raise TrainingError instead, so that the
        last good checkpoint is never replaced by a broken state."""
        if self.progress.step in (0, self._saved_step):
            return None
        self._flush_losses()
        self._check_loss(self.step_losses[self._losses_saved:])
        if not all_finite(self.model, self.ctx):
            raise TrainingError(f"the model's weights are not finite at step {self.progress.step}; not saving "
                                f"a checkpoint{self._checkpoint_note()}")
        record = {"model_name": self.model_name, "progress": asdict(self.progress),
                  "schedule": self.schedule.state_dict(), "identity": self.identity,
                  "data_order": data_order(self.config, self.ctx.world_size), "history": self.history}
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

    def train_step(self, batches: Iterator[Batch]) -> tuple[torch.Tensor, ...]:
        """One optimizer step on the next batch of ``batches`` with the configured loop; returns the
        model's output tuple ``(loss, logits, ...)``. Raises StopIteration when ``batches`` is exhausted
        (a pipeline first finishes the batches it holds). Does not advance :attr:`progress`."""
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
        epoch_batches = _seeded_iter(self.train_loader, self.config.train.seed * 100_003 + self.progress.epoch)
        return itertools.islice(epoch_batches, self.progress.batch_in_epoch, self.steps_per_epoch)

    def fit(self) -> dict:
        """Train for the configured epochs / steps; evaluate; write metrics.json. Returns the metrics."""
        cfg = self.config.train
        losses = self.step_losses
        samples = 0
        start = time.perf_counter()
        # On a terminal the bar redraws every second; in a log file (torchx, slurm) every 30 s, so that
        # a long run's log stays readable.
        bar = tqdm(total=self.total_steps, initial=self.progress.step, desc="train", unit="step",
                   disable=not self.ctx.is_main, dynamic_ncols=True,
                   mininterval=1.0 if sys.stderr.isatty() else 30.0)
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
                self._pending_losses.append(output[0].detach())  # read at log steps: no per-step GPU sync
                samples += int(output[1].shape[0]) * self.ctx.world_size
                bar.update(1)
                if self.progress.step % cfg.log_every == 0 or self.progress.step == self.total_steps:
                    self._flush_losses()
                    mean_loss = self._check_loss(losses[-cfg.log_every:])
                    rate = samples / (time.perf_counter() - start)
                    self._scalar("train/loss", mean_loss)
                    self._scalar("train/samples_per_sec", rate)
                    postfix.update(loss=f"{mean_loss:.4f}", samples_per_s=f"{rate:,.0f}", **self._log_eviction())
                    bar.set_postfix(postfix, refresh=False)
                stop = False
                if cfg.eval_every and self.progress.step % cfg.eval_every == 0:
                    self._flush_losses()
                    result = self.evaluate(cfg.eval_split)
                    headline = (result.headline() if isinstance(result, RetrievalResult)
                                else {"auc": f"{result.auc:.4f}"})
                    postfix.update({f"{cfg.eval_split}_{k}": v for k, v in headline.items()})
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
        self._check_loss(losses[-cfg.log_every:])
        self.save_checkpoint()
        if self.stopper is not None and self.ctx.is_main and self.stopper.stopped_at is not None:
            print(self.stopper.reason(cfg.eval_split))
        self._restore_best()
        train = {"samples_per_sec": samples / wall if wall else 0.0, "steps": self.progress.step, "wall_sec": wall,
                 "final_loss": losses[-1] if losses else float("nan")}
        return self.report(train)

    def _after_evaluation(self, result: EvalResult | RetrievalResult) -> bool:
        """Record an evaluation of ``train.eval_split`` in the history and, with early stopping, save it as
        the best checkpoint when it is; True when training must stop (the same answer on every rank: the
        metric is broadcast from rank 0)."""
        self.history.append(history_entry(result, self.progress.step, self.progress.epoch,
                                          self.config.train.eval_split))
        if self.stopper is None or not isinstance(result, EvalResult):
            return False
        decider = result.task(self.stopper.config.task)  # the first task unless early_stopping.task names one
        value = torch.tensor([getattr(decider, self.stopper.config.metric)], dtype=torch.float64,
                             device=self.ctx.device)
        if self.ctx.world_size > 1:
            dist.broadcast(value, src=0)
        if self.stopper.update(float(value.item()), self.progress.step):
            self.save_checkpoint()
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
            raise TrainingError(f"the best checkpoint (step {self.stopper.best_step}) is missing from "
                                f"{self.checkpoints.root}; cannot restore it for the final evaluation")
        if self.ctx.is_main:
            print(f"restoring the best checkpoint {best.path} (step {best.step}) for the final evaluation")
        self.checkpoints.load(best.path, self.model, optimizer=None, restore_rng=False)

    def _steps_to_evaluation(self) -> int | None:
        """Steps until the next evaluation of ``train.eval_every`` (None: no evaluations)."""
        every = self.config.train.eval_every
        return every - self.progress.step % every if every else None

    def _check_loss(self, recent: list[float]) -> float:
        """Mean recent loss over all ranks; a NaN or inf anywhere stops the run on every rank."""
        value = torch.tensor([sum(recent) / max(len(recent), 1)], dtype=torch.float64, device=self.ctx.device)
        if self.ctx.world_size > 1:
            dist.all_reduce(value)
            value /= self.ctx.world_size
        mean = float(value.item())
        if not math.isfinite(mean):
            raise TrainingError(f"the training loss became {mean} at step {self.progress.step}; stopping "
                                f"(lower optimizer.dense_lr / optimizer.sparse_lr or set optimizer.grad_clip_norm)"
                                f"{self._checkpoint_note()}")
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
    def _eval_outputs(self, split: str) -> Iterator[tuple[torch.Tensor, ...]]:
        """The model's outputs (the second element of its forward) on this rank's batches of ``split``,
        in eval mode without gradients: through torchrec's ``EvalPipelineSparseDist`` (the input
        all-to-all of batch i+1 overlaps the forward of batch i; batches are read by a background
        thread) when ``train.pipeline = "sparse_dist"``, plain DMP forwards otherwise. Ranks with fewer
        batches run a repeat of their last batch, whose output is not yielded, so that the sharded
        collectives stay in step."""
        config = replace(self.config.data, shuffle=False, drop_last=False)
        loader = make_dataloader(config, split, self.ctx.rank, self.ctx.world_size, shuffle=False,
                                 spec=self.reader_spec)
        steps = _all_equal_batches(loader, self.ctx, dist.ReduceOp.MAX)
        if steps and loader.dataset.num_batches() == 0:
            raise TrainingError(f"rank {self.ctx.rank} has no rows of split '{split}' to evaluate")
        real: list[bool] = []  # real[i]: batch i is this rank's own (False: a repeat that keeps step)

        def padded() -> Iterator[Batch]:
            iterator, last = _seeded_iter(loader, self.config.train.seed), None
            for _ in range(steps):
                batch = next(iterator, None)
                real.append(batch is not None)
                last = batch if batch is not None else last
                yield last

        if isinstance(self.pipeline, TrainPipelineSparseDist):
            self.pipeline.detach()  # restore the plain forwards; the next progress() re-attaches
        self.model.eval()
        try:
            with torch.no_grad():
                if self.config.train.pipeline == "sparse_dist":
                    pipeline = EvalPipelineSparseDist(self.model, self.optimizer, self.ctx.device)
                    batches = padded()
                    try:
                        for index in range(steps):
                            output = pipeline.progress(batches)
                            if real[index]:
                                yield output
                    finally:
                        pipeline.detach()  # back to the plain forwards
                        pipeline.reset()  # stops its batch-loading thread
                else:
                    for index, batch in enumerate(padded()):
                        _loss, output = self.model(batch.to(self.ctx.device))
                        if real[index]:
                            yield output
        finally:
            self.model.train()

    def evaluate(self, split: str) -> EvalResult | RetrievalResult:
        """Metrics over every row of ``split`` (identical on all ranks), for every task."""
        if self.retrieval:
            return self._evaluate_retrieval(split)
        labels = self.spec.label_names
        metrics = ShardedMetrics(len(self.spec.domain_names), len(labels), self.spec.session_column is not None)
        for _, logits, task_labels, domain, group, session in self._eval_outputs(split):
            metrics.add(logits, task_labels, domain, group, session)
        result = metrics.compute(self.spec.domain_names, labels, self.ctx.device)  # no rank gathers all rows
        self._task_scalars(split, result)  # the first task under <split>/..., as with one label
        for label, task_result in result.tasks.items():
            self._task_scalars(f"{split}/{label}", task_result)
        return result

    def _task_scalars(self, prefix: str, result: EvalResult) -> None:
        """TensorBoard: ``<prefix>/auc``, ``logloss``, ``gauc``, ``sgauc`` (with sessions), ``auc/<domain>``."""
        self._scalar(f"{prefix}/auc", result.auc)
        self._scalar(f"{prefix}/logloss", result.logloss)
        self._scalar(f"{prefix}/gauc", result.gauc)
        if result.sgauc is not None:  # the dataset has a session column
            self._scalar(f"{prefix}/sgauc", result.sgauc)
        for name, values in result.per_domain.items():
            self._scalar(f"{prefix}/auc/{name}", values["auc"])

    def _evaluate_retrieval(self, split: str) -> RetrievalResult:
        """Recall@K and HitRate@K over the positive rows of ``split`` (identical on all ranks)."""
        buffer = RetrievalBuffer()
        for _, user, item, item_ids, positive, domain, group in self._eval_outputs(split):
            buffer.add(user, item, item_ids, positive, domain, group)
        result = retrieval_metrics(*buffer.gather(self.ctx.device), self.spec.domain_names,
                                   self.config.retrieval.top_k)
        result.model = self.model_name
        for k in result.recall:
            self._scalar(f"{split}/recall@{k}", result.recall[k])
            self._scalar(f"{split}/hitrate@{k}", result.hitrate[k])
            for name, values in result.per_domain.items():
                self._scalar(f"{split}/recall@{k}/{name}", values[f"recall@{k}"])
        return result

    def report(self, train: dict) -> dict:
        split = self.config.train.test_split
        result = self.evaluate(split)
        metrics = {"model": self.model_name, "dataset": self.spec.name, "split": split,
                   **result.to_dict(), "train": train, "history": self.history}
        if self.init_record is not None:
            metrics["init_from"] = self.init_record
        if self.stopper is not None:
            best = self.checkpoints.best()
            metrics["early_stopping"] = {**self.stopper.summary(self.config.train.eval_split),
                                         "best_checkpoint": str(best.path) if best is not None else None}
            if best is not None:  # the weights evaluated above (restored by fit)
                metrics["checkpoint"] = {"name": "best", "step": best.step, "path": str(best.path)}
        oracle = (self.spec.splits.get(split).oracle_auc if split in self.spec.splits and not self.retrieval
                  else {})
        if oracle:
            metrics["oracle_auc"] = oracle
        if self.config.sparse.eviction.tables:  # occupancy and eviction counts per managed table
            stats = eviction_stats(self.model, self.config.sparse.eviction.tables, self.ctx.device)
            metrics["eviction"] = {table: table_stats.to_dict() for table, table_stats in stats.items()}
        if self.ctx.is_main:
            (self.run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
            print(format_table(metrics, self.spec.domain_names))
        if self.writer is not None:
            self.writer.flush()
        return metrics


def format_table(metrics: dict, domain_names: list[str]) -> str:
    """A run's ``metrics.json`` as a table: per domain and overall rows, for every task
    (:func:`~torchrec_mdr.metrics.table.format_ranking_table`), or retrieval's Recall@K / HitRate@K."""
    if metrics.get("task") == "retrieval":
        return format_retrieval_table(metrics, domain_names)
    return format_ranking_table(metrics, domain_names)
