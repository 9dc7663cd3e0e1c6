"""The plain-PyTorch reference of ``mdr bench train --reference``: a registered model trained the way a
hand-written trainer trains it, and the same model's dense arch alone (the roof).

**Reference** (:class:`ReferenceModel`, :class:`ReferenceLoop`). The SAME dense arch class as ours
(``build_dense_arch`` from the registry, the same :class:`ModelConfig`, the same
:class:`FeatureLayout` and :class:`EmbeddedFeatures` input) fed by plain tables, one per table of the
dataset spec, of the same rows and dimension D (columns that share a table in the spec share it here):

* a table read by position (the behaviour sequences of a model whose registry entry needs positions)
  is an ``nn.Embedding``: each sequence column is looked up as ``[B, L]`` padded ids, ``[B, L, D]``,
  times the ``[B, L]`` mask (padding gives zeros, as ``JaggedTensor.to_padded_dense`` does);
* every other table is an ``nn.EmbeddingBag``; an ``id`` / ``multi_id`` column is a sum-bag
  (ids, offsets) -> ``[B, D]`` (a single id: its embedding), a sequence column of a model that reads
  only sequence means is a mean-bag -> ``[B, D]`` (an empty sequence: zeros) — what our sparse arch
  computes as sum-pooling divided by the length. A sum-bag over an ``nn.Embedding`` table (the
  candidate item of an attention model) calls the same ``F.embedding_bag`` on its weight.

Every table has dense gradients (``sparse=False``); one ``torch.optim.Adam`` holds every parameter,
tables included, at the dense learning rate of the experiment's defaults (``optimizer.dense_lr``);
the loss is the trainer's (task-weighted BCE + the arch's auxiliary loss). Batches are read with our
reader before timing and converted once into plain tensors (:class:`PlainBatch`: ids, offsets,
padded ids, masks) on the loop's device, so a timed step is zero_grad, lookups, arch, loss,
backward, Adam — nothing else. Tables are initialised like torchrec's default, uniform in
``±sqrt(1 / rows)``.

**Roof** (:class:`RoofLoop`): the dense arch alone on the same embedded batches. The reference's
lookups are run once per in-memory batch before timing; the embedded tensors become detached leaves
that require grad, so a roof step is the arch's forward, the loss, the backward into the arch's
parameters AND into the embedded inputs (a trainer of any kind must compute both), and one Adam step
over the arch's parameters (a copy of the reference's arch, with its own optimizer). The *overhead
above the roof* of a loop is ``(step time - roof step time) / step time`` = ``1 - samples/s /
roof samples/s``, per round.

The reference is one process on one device (world size 1); ``format_reference`` prints ours over
the reference and the overheads, both paired by round.
"""

from __future__ import annotations

import copy
import itertools
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from torchrec_mdr.data.batch import Batch
from torchrec_mdr.data.spec import DatasetSpec
from torchrec_mdr.models.features import ArchOutput, EmbeddedFeatures, EmbeddedSequence, FeatureLayout
from torchrec_mdr.models.registry import MODELS, ModelConfig, build_dense_arch
from torchrec_mdr.sparse.arch import pooled_sequence_tables
from torchrec_mdr.training.losses import TaskWeightedBCE, task_weights

REFERENCE, ROOF = "reference", "roof"


@dataclass
class PlainBatch:
    """A batch as plain tensors.

    Attributes:
        bags: column -> (ids [n] int64, offsets [B] int64) for every id / multi_id column and every
            sequence column of a pooled (mean-only) group.
        padded: sequence column of a group read by position -> ids [B, L] int64 (0 past the length).
        masks: such a group's name -> [B, L] bool, True at real behaviours.
        dense: [B, num_dense] float32; domain: [B] int64; labels: [B, T] float32.
    """

    bags: dict[str, tuple[torch.Tensor, torch.Tensor]]
    padded: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor]
    dense: torch.Tensor
    domain: torch.Tensor
    labels: torch.Tensor


def plain_batch(batch: Batch, layout: FeatureLayout, device: torch.device | str = "cpu") -> PlainBatch:
    """Convert our reader's batch (KeyedJaggedTensors) into plain tensors on ``device``, once."""
    jagged = {**batch.sparse_features.to_dict(), **batch.sequence_features.to_dict()}
    bag_columns = list(layout.fields) + [f for s in layout.sequences if s.pooled for f in s.fields]
    bags = {}
    for name in bag_columns:
        lengths = jagged[name].lengths().long()
        offsets = torch.cumsum(lengths, 0) - lengths
        bags[name] = (jagged[name].values().long().to(device), offsets.to(device))
    padded, masks = {}, {}
    for sequence in (s for s in layout.sequences if not s.pooled):
        for name in sequence.fields:
            padded[name] = jagged[name].to_padded_dense(desired_length=sequence.max_length).long().to(device)
        lengths = jagged[sequence.fields[0]].lengths()
        masks[sequence.name] = (torch.arange(sequence.max_length)[None, :] < lengths[:, None]).to(device)
    return PlainBatch(
        bags, padded, masks, batch.dense_features.to(device), batch.domain.to(device), batch.labels.to(device)
    )


def _logits(output: torch.Tensor | ArchOutput, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [B, T] float32, auxiliary loss scalar) of an arch's output, as ``ranking.DenseArch``."""
    if isinstance(output, ArchOutput):
        return output.logits.float(), output.auxiliary_loss.float()
    return output.float(), like.new_zeros(())


class ReferenceModel(nn.Module):
    """Plain tables -> :class:`EmbeddedFeatures` -> the registered model's dense arch.

    Args:
        spec: the dataset spec (tables, their rows, which columns share them).
        config: the model's name, D and options, as for our :class:`~torchrec_mdr.models.ranking.RankingModel`.

    Call: ``PlainBatch -> (logits [B, T] float32, auxiliary loss scalar)``.
    """

    def __init__(self, spec: DatasetSpec, config: ModelConfig) -> None:
        super().__init__()
        entry = MODELS[config.name]
        pool = not entry.needs_positions(getattr(config, entry.config_field))
        self.layout = FeatureLayout.from_spec(spec, config.embedding_dim, pooled_sequence_tables(spec, None, pool))
        columns = {c.name: c for c in spec.columns_of("id", "multi_id", "sequence")}
        self.table_of = {name: column.table_name for name, column in columns.items()}
        positioned = {self.table_of[f] for s in self.layout.sequences if not s.pooled for f in s.fields}
        rows = {c.table_name: int(c.cardinality or 0) for c in columns.values()}  # id columns: always set
        dim = config.embedding_dim
        tables: dict[str, nn.Embedding | nn.EmbeddingBag] = {
            name: nn.Embedding(n, dim) if name in positioned else nn.EmbeddingBag(n, dim, mode="sum")
            for name, n in rows.items()
        }
        for table in tables.values():
            bound = (1.0 / table.num_embeddings) ** 0.5
            nn.init.uniform_(table.weight, -bound, bound)
        self.tables = nn.ModuleDict(tables)
        self.arch = build_dense_arch(self.layout, config)

    def _bag(self, batch: PlainBatch, name: str, mode: str) -> torch.Tensor:
        ids, offsets = batch.bags[name]
        return F.embedding_bag(ids, self.weight(self.table_of[name]), offsets, mode=mode)

    def weight(self, table: str) -> torch.Tensor:
        """The [rows, D] weight of a plain table."""
        weight = self.tables[table].weight
        assert isinstance(weight, torch.Tensor)
        return weight

    def embed(self, batch: PlainBatch) -> EmbeddedFeatures:
        """The lookups: [B, N, D] fields, each sequence's padded [B, L, F * D] keys and mask (or its
        [B, F * D] mean), and the candidate query [B, Q * D]."""
        vectors = [self._bag(batch, name, "sum") for name in self.layout.fields]
        size = batch.dense.shape[0]
        fields_ = torch.stack(vectors, dim=1) if vectors else batch.dense.new_zeros(size, 0, self.layout.embedding_dim)
        sequences = []
        for sequence in self.layout.sequences:
            parts = [vectors[self.layout.fields.index(f)] for f in sequence.candidate_fields]
            query = torch.cat(parts, dim=-1) if parts else batch.dense.new_zeros(size, 0)
            if sequence.pooled:
                means = torch.cat([self._bag(batch, f, "mean") for f in sequence.fields], dim=-1)
                sequences.append(EmbeddedSequence(None, None, query, means))
                continue
            mask = batch.masks[sequence.name]
            keys = torch.cat([self.tables[self.table_of[f]](batch.padded[f]) for f in sequence.fields], dim=-1)
            sequences.append(EmbeddedSequence(keys * mask.unsqueeze(-1).to(keys.dtype), mask, query))
        return EmbeddedFeatures(fields_, sequences, batch.dense, batch.domain)

    def forward(self, batch: PlainBatch) -> tuple[torch.Tensor, torch.Tensor]:
        return _logits(self.arch(self.embed(batch)), batch.dense)


def _loss_fn(spec: DatasetSpec, device: torch.device) -> nn.Module:
    return TaskWeightedBCE(task_weights(None, spec)).to(device)


class ReferenceLoop:
    """The reference trained step by step: zero_grad, forward, loss, backward, Adam over everything.

    Args:
        spec, config: as :class:`ReferenceModel`.
        batches: our reader's batches, converted once here (:func:`plain_batch`) and cycled through.
        device: where the tables, the arch and the batches live.
        lr: Adam's learning rate for every parameter.
    """

    def __init__(
        self, spec: DatasetSpec, config: ModelConfig, batches: list[Batch], device: torch.device, lr: float
    ) -> None:
        self.model = ReferenceModel(spec, config).to(device).train()
        self.batches = [plain_batch(b, self.model.layout, device) for b in batches]
        self.source = itertools.cycle(self.batches)
        self.loss_fn = _loss_fn(spec, device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr)

    def step(self) -> None:
        batch = next(self.source)
        self.optimizer.zero_grad()
        logits, auxiliary_loss = self.model(batch)
        (self.loss_fn(logits, batch.labels) + auxiliary_loss).backward()
        self.optimizer.step()

    def close(self) -> None:
        pass


def _leaves(features: EmbeddedFeatures) -> EmbeddedFeatures:
    """The embedded batch as detached leaves; the embeddings (not dense, domain, mask) require grad."""

    def leaf(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.detach().clone().requires_grad_(tensor.is_floating_point())

    def optional_leaf(tensor: torch.Tensor | None) -> torch.Tensor | None:
        return None if tensor is None else leaf(tensor)

    sequences = [
        EmbeddedSequence(
            optional_leaf(s.keys),
            None if s.mask is None else s.mask.clone(),
            leaf(s.query),
            optional_leaf(s.pooled_mean),
        )
        for s in features.sequences
    ]
    return EmbeddedFeatures(leaf(features.fields), sequences, features.dense.detach().clone(), features.domain.clone())


def _grad_leaves(features: EmbeddedFeatures) -> list[torch.Tensor]:
    tensors = [features.fields] + [getattr(s, f.name) for s in features.sequences for f in fields(s)]
    return [t for t in tensors if isinstance(t, torch.Tensor) and t.requires_grad]


class RoofLoop:
    """The dense arch alone: forward, loss, backward (into its parameters and its embedded inputs), Adam
    over its parameters, on the reference's embedded batches computed once (see the module docstring)."""

    def __init__(self, reference: ReferenceLoop, spec: DatasetSpec, lr: float) -> None:
        self.arch = copy.deepcopy(reference.model.arch).train()
        with torch.no_grad():
            embedded = [reference.model.embed(b) for b in reference.batches]
        self.items = [(_leaves(features), b.labels) for features, b in zip(embedded, reference.batches)]
        self.source = itertools.cycle(self.items)
        self.loss_fn = _loss_fn(spec, reference.batches[0].labels.device)
        self.optimizer = torch.optim.Adam(self.arch.parameters(), lr=lr)

    def step(self) -> None:
        features, labels = next(self.source)
        for tensor in _grad_leaves(features):
            tensor.grad = None
        self.optimizer.zero_grad()
        logits, auxiliary_loss = _logits(self.arch(features), features.dense)
        (self.loss_fn(logits, labels) + auxiliary_loss).backward()
        self.optimizer.step()

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------- the table


class MeasuredCell(Protocol):
    """What the table reads of a measured cell (``bench.train.Cell``)."""

    model: str
    world_size: int
    pipeline: str
    batch_size: int
    threads: int
    window_samples_per_sec: list[float]

    @property
    def samples_per_sec(self) -> float: ...


def _paired(numerator: MeasuredCell, denominator: MeasuredCell) -> list[float]:
    return [a / b for a, b in zip(numerator.window_samples_per_sec, denominator.window_samples_per_sec)]


def format_reference(
    cells: Sequence[MeasuredCell],
    models: Sequence[str],
    sizes: Sequence[int],
    pipelines: Sequence[str],
    cpu_clock: bool = False,
) -> str:
    """Per (model, batch size): the roof's and the reference's samples/s, each of our loops (``pipelines``)
    over the reference (median, min and max of the per-round ratios), and each loop's overhead above the
    roof (median of the per-round ``1 - loop / roof``, in percent)."""
    by_key = {(c.model, c.batch_size, c.pipeline): c for c in cells if c.world_size == 1}
    ours = list(pipelines)
    header = f"{'model':<14}{'threads':>8}{'batch':>7}{'roof':>11}{'reference':>11}"
    header += "".join(f"{p + '/ref':>16}{'min':>8}{'max':>8}" for p in ours)
    header += "".join(f"{'over ' + p:>17}" for p in ours + [REFERENCE])
    lines = [
        f"ours / plain-PyTorch reference (samples/s{' of CPU time' if cpu_clock else ''}, "
        f"paired by round) and overhead above the roof (1 - samples/s / roof samples/s, median %)",
        header,
    ]
    for model, size in itertools.product(models, sizes):
        roof, reference = by_key[(model, size, ROOF)], by_key[(model, size, REFERENCE)]
        line = (
            f"{model:<14}{reference.threads:>8}{size:>7}{roof.samples_per_sec:>11,.0f}"
            f"{reference.samples_per_sec:>11,.0f}"
        )
        for pipeline in ours:
            ratios = _paired(by_key[(model, size, pipeline)], reference)
            line += f"{statistics.median(ratios):>16.3f}{min(ratios):>8.3f}{max(ratios):>8.3f}"
        for pipeline in ours + [REFERENCE]:
            shares = [1.0 - r for r in _paired(by_key[(model, size, pipeline)], roof)]
            line += f"{100 * statistics.median(shares):>16.1f}%"
        lines.append(line)
    return "\n".join(lines)
