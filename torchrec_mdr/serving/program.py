"""The inference program: a trained ranking model re-composed from plain PyTorch, for ``torch.export``.

:class:`InferenceProgram` holds every embedding table as one unsharded tensor (fp32, or 8-bit
row-wise quantised: :func:`quantize_rows`), the managed-collision slot maps of the managed tables,
and a copy of the run's dense arch (the registered model's arch, in eval mode). Its forward takes
plain padded tensors in the order of :func:`input_names`:

* ``dense`` [B, num_dense] float32 and ``domain`` [B] int64;
* one int64 tensor per ``id`` column ([B]), ``multi_id`` column ([B, M], any M) and ``sequence``
  column ([B, max_length], oldest first, left-aligned), padding = -1.

Ids are *raw* ids after the column's out-of-range policy (the loader applies ``hash`` / ``reject``
as the reader does): a managed table maps them to its rows in the program with the same search
as torchrec's ``MCHManagedCollisionModule.remap`` (an id without a slot reads the table's last
row), a plain table indexes its rows directly. The forward then builds exactly the
:class:`~torchrec_mdr.models.features.EmbeddedFeatures` that ``embed_features`` builds from
torchrec's collections (multi-valued columns sum-pooled, sequences zero-padded to ``max_length``
with their mask, the candidate query) and returns the probabilities ``sigmoid(logits)`` [B, T].

Everything is aten ops on ordinary tensors (no fbgemm kernels, no KeyedJaggedTensor), so
``torch.export`` captures it and a plain ``torch`` install runs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from torchrec_mdr.models.features import ArchOutput, EmbeddedFeatures, EmbeddedSequence, FeatureLayout

PAD = -1


@dataclass(frozen=True)
class InputColumn:
    """One id input of the program: its column, kind, table and padded width (None: any width)."""

    name: str
    kind: str  # id | multi_id | sequence
    table: str
    width: int | None


def input_names(columns: list[InputColumn]) -> list[str]:
    """The program's positional inputs, in order."""
    return ["dense", "domain", *(c.name for c in columns)]


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """8-bit row-wise (asymmetric) quantisation of a [rows, D] table.

    Returns ``(codes uint8 [rows, D], scale float32 [rows], bias float32 [rows])`` with
    ``bias = min(row)``, ``scale = (max(row) - min(row)) / 255`` (1 for a constant row) and
    ``codes = round((row - bias) / scale)``; dequantisation is ``codes * scale + bias``, exact to
    ``scale / 2`` per value.
    """
    weight = weight.float()
    low = weight.min(dim=1).values
    high = weight.max(dim=1).values
    scale = (high - low) / 255.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.round((weight - low[:, None]) / scale[:, None]).clamp(0, 255).to(torch.uint8)
    return codes, scale, low


class InferenceProgram(nn.Module):
    """Padded raw-id tensors -> probabilities [B, num_tasks]; see the module docstring.

    Args:
        layout: the run's feature layout.
        arch: the registered model's dense arch (``DenseArch.model``), trained weights, eval mode.
        columns: the id inputs (every id / multi_id / sequence column of the spec, spec order).
        tables: table name -> fp32 weight [rows, D].
        managed: table name -> (sorted raw ids [zch], row of each [zch]) for managed tables.
        int8: store the tables as :func:`quantize_rows` codes and dequantise the rows looked up.
    """

    def __init__(
        self,
        layout: FeatureLayout,
        arch: nn.Module,
        columns: list[InputColumn],
        tables: dict[str, torch.Tensor],
        managed: dict[str, tuple[torch.Tensor, torch.Tensor]],
        int8: bool = False,
    ) -> None:
        super().__init__()
        self.layout = layout
        self.arch = arch.eval()
        self.columns = columns
        self.table_names = sorted(tables)
        self.int8 = int8
        for name in self.table_names:
            weight = tables[name].detach().float().contiguous()
            if int8:
                codes, scale, bias = quantize_rows(weight)
                self.register_buffer(f"codes_{name}", codes)
                self.register_buffer(f"scale_{name}", scale)
                self.register_buffer(f"bias_{name}", bias)
            else:
                self.register_buffer(f"weight_{name}", weight)
        self.managed = sorted(managed)
        for name in self.managed:
            sorted_ids, rows = managed[name]
            self.register_buffer(f"mch_ids_{name}", sorted_ids.detach().clone().long())
            self.register_buffer(f"mch_rows_{name}", rows.detach().clone().long())

    def _rows(self, table: str, ids: torch.Tensor) -> torch.Tensor:
        """Table rows of raw ids (any shape, padding = -1 -> row 0, masked by the caller)."""
        ids = ids.clamp(min=0)
        if table in self.managed:
            sorted_ids = getattr(self, f"mch_ids_{table}")
            slots = getattr(self, f"mch_rows_{table}")
            position = torch.searchsorted(sorted_ids[:-1], ids)
            found = sorted_ids[position] == ids
            unknown = sorted_ids.shape[0] - 1  # torchrec: output_global_offset + zch_size - 1, offset 0 here
            ids = torch.where(found, slots[position], torch.full_like(ids, unknown))
        return ids

    def _lookup(self, table: str, ids: torch.Tensor) -> torch.Tensor:
        """[*ids.shape, D] embeddings of raw ids, zeros at padding."""
        rows = self._rows(table, ids)
        if self.int8:
            codes = getattr(self, f"codes_{table}")[rows].float()
            values = codes * getattr(self, f"scale_{table}")[rows].unsqueeze(-1) + getattr(self, f"bias_{table}")[
                rows
            ].unsqueeze(-1)
        else:
            values = getattr(self, f"weight_{table}")[rows]
        return torch.where((ids != PAD).unsqueeze(-1), values, torch.zeros_like(values))

    def forward(self, dense: torch.Tensor, domain: torch.Tensor, *ids: torch.Tensor) -> torch.Tensor:
        inputs = dict(zip([c.name for c in self.columns], ids))
        looked_up = {c.name: self._lookup(c.table, inputs[c.name]) for c in self.columns}
        batch_size = dense.shape[0]
        kinds = {c.name: c.kind for c in self.columns}
        vectors = [
            looked_up[name] if kinds[name] == "id" else looked_up[name].sum(dim=1) for name in self.layout.fields
        ]
        fields = torch.stack(vectors, dim=1) if vectors else dense.new_zeros(batch_size, 0, self.layout.embedding_dim)
        sequences = []
        for sequence in self.layout.sequences:
            keys = torch.cat([looked_up[f] for f in sequence.fields], dim=-1)
            mask = inputs[sequence.fields[0]] != PAD
            query_parts = [vectors[self.layout.fields.index(f)] for f in sequence.candidate_fields]
            query = torch.cat(query_parts, dim=-1) if query_parts else fields.new_zeros(batch_size, 0)
            sequences.append(EmbeddedSequence(keys, mask, query))
        output: Any = self.arch(EmbeddedFeatures(fields, sequences, dense, domain))
        logits = output.logits if isinstance(output, ArchOutput) else output
        return torch.sigmoid(logits.float())
