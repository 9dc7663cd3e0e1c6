"""The dataset spec: one JSON file (``spec.json``) next to the parquet, written by every converter.

It describes every column, the domains, the labels and the splits, and it is the single source of
truth for the reader and for the sparse arch (tables, their sizes, sequence groups).

Column kinds (the batch contract of DESIGN.md):

========== ================= ==================================================================
kind       parquet type      meaning
========== ================= ==================================================================
id         int64             one categorical id per row -> pooled KeyedJaggedTensor (length 1)
multi_id   list<int64>       a bag of ids per row -> pooled KeyedJaggedTensor
sequence   list<int64>       behaviour sequence, oldest first; the fields of one ``sequence_group``
                             are aligned and equally long per row -> sequence KeyedJaggedTensor
dense      float32           one continuous feature
label      int8/int64/float  0 or 1
domain     int64             the row's domain (scenario) in [0, num_domains)
group      int64             grouping key for GAUC (user or session)
session    int64             session key for S-GAUC (SFPNet eq. 13): the impressions of one
                             user's session share one value; optional, at most one column
========== ================= ==================================================================

``group`` and ``session`` are keys, not features: no model embeds them, and their values may be
any int64 (they are compared for equality only). At most one column of each kind.

Ids of an embedded column must lie in ``[0, cardinality)``. An id at or above it is either hashed
into range (``oov = "hash"``: ``id mod cardinality``) or rejected (``oov = "reject"``) by the reader.
Negative ids are always an error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, cast

from torchrec_mdr.config import ConfigError, from_dict, to_dict
from torchrec_mdr.data.errors import DataError

SPEC_FILE = "spec.json"
SPEC_FORMAT_VERSION = 1

ColumnKind = Literal["id", "multi_id", "sequence", "dense", "label", "domain", "group", "session"]
OovPolicy = Literal["hash", "reject"]
EMBEDDED_KINDS = ("id", "multi_id", "sequence")
KEY_KINDS = ("group", "session")  # int64 keys the metrics group rows by; never embedded, never range-checked


@dataclass
class ColumnSpec:
    """One parquet column."""

    name: str
    kind: ColumnKind
    table: str | None = None  # embedding table; columns naming the same table share it (default: own name)
    cardinality: int | None = None  # rows of the table: valid ids are [0, cardinality)
    oov: OovPolicy = "hash"  # what the reader does with ids >= cardinality
    sequence_group: str | None = None  # sequence columns: the group whose fields are aligned
    max_length: int | None = None  # sequence / multi_id: keep at most this many (most recent) ids
    description: str = ""

    @property
    def table_name(self) -> str:
        return self.table or self.name

    def validate(self) -> None:
        if self.kind in EMBEDDED_KINDS and (self.cardinality is None or self.cardinality < 1):
            raise ConfigError(f"column '{self.name}' of kind {self.kind} needs a cardinality >= 1")
        if self.kind == "sequence" and (not self.sequence_group or not self.max_length):
            raise ConfigError(f"sequence column '{self.name}' needs sequence_group and max_length")
        if self.kind != "sequence" and self.sequence_group:
            raise ConfigError(f"column '{self.name}' is not a sequence but names a sequence_group")
        if self.max_length is not None and self.max_length < 1:
            raise ConfigError(f"column '{self.name}': max_length must be >= 1")


@dataclass
class SplitStats:
    """Row counts of one split (``train``, ``valid``, ``test``) and the files that hold it."""

    files: list[str]  # relative to the dataset folder
    rows: int
    rows_per_domain: list[int]
    positives_per_domain: dict[str, list[int]]  # label name -> positives per domain
    oracle_auc: dict[str, float] = field(default_factory=dict)  # "all" and domain names (synthetic data)
    # partial oracles of generator v2: name (e.g. "without_psrg", "main") -> "all" and domain names
    ceilings: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class DatasetSpec:
    """Everything a reader or a model needs to know about a prepared dataset."""

    name: str
    columns: list[ColumnSpec]
    domain_names: list[str]
    splits: dict[str, SplitStats]
    source: str = ""  # what it was converted from, and how
    format_version: int = SPEC_FORMAT_VERSION
    notes: dict[str, str] = field(default_factory=dict)  # free-form facts (generator parameters...)

    # ------------------------------------------------------------------ derived views
    def columns_of(self, *kinds: str) -> list[ColumnSpec]:
        return [c for c in self.columns if c.kind in kinds]

    def column(self, name: str) -> ColumnSpec:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    @property
    def num_domains(self) -> int:
        return len(self.domain_names)

    @property
    def label_names(self) -> list[str]:
        return [c.name for c in self.columns_of("label")]

    @property
    def domain_column(self) -> str:
        return self.columns_of("domain")[0].name

    @property
    def group_column(self) -> str | None:
        groups = self.columns_of("group")
        return groups[0].name if groups else None

    @property
    def session_column(self) -> str | None:
        """The ``session`` column (the S-GAUC key), or None when the dataset has no sessions."""
        sessions = self.columns_of("session")
        return sessions[0].name if sessions else None

    @property
    def sequence_tables(self) -> set[str]:
        """Tables that some sequence column looks up (they live in the EmbeddingCollection)."""
        return {c.table_name for c in self.columns_of("sequence")}

    @property
    def pooled_features(self) -> list[ColumnSpec]:
        """``id``/``multi_id`` columns whose table no sequence uses: the pooled KJT (EmbeddingBagCollection)."""
        return [c for c in self.columns_of("id", "multi_id") if c.table_name not in self.sequence_tables]

    @property
    def sequence_features(self) -> list[ColumnSpec]:
        """The unpooled KJT (EmbeddingCollection): first the ``id``/``multi_id`` columns that share a
        table with a sequence (the candidate item of target attention, looked up in the same table as
        the behaviours), then the sequence columns, grouped by sequence group."""
        candidates = [c for c in self.columns_of("id", "multi_id") if c.table_name in self.sequence_tables]
        return candidates + [c for group in self.sequence_groups.values() for c in group]

    @property
    def sequence_groups(self) -> dict[str, list[ColumnSpec]]:
        groups: dict[str, list[ColumnSpec]] = {}
        for c in self.columns_of("sequence"):
            groups.setdefault(cast(str, c.sequence_group), []).append(c)  # ColumnSpec.validate: has one
        return groups

    @property
    def dense_features(self) -> list[str]:
        return [c.name for c in self.columns_of("dense")]

    @property
    def tables(self) -> dict[str, int]:
        """Embedding table name -> number of rows."""
        return {
            c.table_name: cast(int, c.cardinality)  # ColumnSpec.validate: has one
            for c in self.columns_of(*EMBEDDED_KINDS)
        }

    def validate(self) -> None:
        names = [c.name for c in self.columns]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ConfigError(f"columns appear twice: {duplicated}")
        if len(self.columns_of("domain")) != 1:
            raise ConfigError("exactly one column of kind 'domain' is required")
        if not self.columns_of("label"):
            raise ConfigError("at least one column of kind 'label' is required")
        for kind in KEY_KINDS:
            keyed = self.columns_of(kind)
            if len(keyed) > 1:
                raise ConfigError(f"at most one column of kind '{kind}' is allowed, got {[c.name for c in keyed]}")
        if not self.domain_names:
            raise ConfigError("domain_names is empty")
        sizes: dict[str, int | None] = {}
        for c in self.columns_of(*EMBEDDED_KINDS):
            if sizes.setdefault(c.table_name, c.cardinality) != c.cardinality:
                raise ConfigError(
                    f"columns sharing table '{c.table_name}' disagree on its cardinality "
                    f"({sizes[c.table_name]} vs {c.cardinality} for '{c.name}')"
                )
        for group, cols in self.sequence_groups.items():
            lengths = {cast(int, c.max_length) for c in cols}  # ColumnSpec.validate: has one
            if len(lengths) != 1:
                raise ConfigError(f"sequence group '{group}' has fields of different max_length {sorted(lengths)}")
        for split, stats in self.splits.items():
            if len(stats.rows_per_domain) != self.num_domains:
                raise ConfigError(
                    f"split '{split}': rows_per_domain has {len(stats.rows_per_domain)} entries, "
                    f"expected {self.num_domains}"
                )

    # ------------------------------------------------------------------ files
    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / SPEC_FILE
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(to_dict(self), indent=2) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, folder: str | Path) -> "DatasetSpec":
        folder = Path(folder)
        path = folder / SPEC_FILE if folder.is_dir() or not folder.suffix else folder
        if not path.is_file():
            raise DataError(f"no dataset spec: {path} does not exist (prepare data with `mdr data ...`)", file=path)
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise DataError(f"the dataset spec is not valid JSON: {error}", file=path) from None
        if not isinstance(data, dict):
            raise DataError("the dataset spec must be a JSON object", file=path)
        if data.get("format_version", SPEC_FORMAT_VERSION) != SPEC_FORMAT_VERSION:
            raise DataError(
                f"spec format_version {data.get('format_version')} is not supported "
                f"(this version reads {SPEC_FORMAT_VERSION})",
                file=path,
            )
        try:
            return from_dict(cls, data, source=str(path))
        except ConfigError as error:
            raise DataError(str(error), file=path) from None

    def files(self, folder: str | Path, split: str) -> list[Path]:
        if split not in self.splits:
            raise DataError(
                f"the dataset has no split '{split}' (it has {sorted(self.splits)})", file=Path(folder) / SPEC_FILE
            )
        return [Path(folder) / f for f in self.splits[split].files]

    def describe(self) -> str:
        """A human-readable summary: columns, domains, splits with per-domain rows and positive rates."""
        lines = [f"dataset {self.name!r}  ({self.source})" if self.source else f"dataset {self.name!r}"]
        lines.append(f"{'column':<22}{'kind':<10}{'table':<18}{'size':>12}  group/max_len")
        for c in self.columns:
            size = f"{c.cardinality:,}" if c.cardinality else ""
            extra = (
                f"{c.sequence_group}/{c.max_length}"
                if c.kind == "sequence"
                else (f"max {c.max_length}" if c.max_length else "")
            )
            table = c.table_name if c.kind in EMBEDDED_KINDS else ""
            lines.append(f"{c.name:<22}{c.kind:<10}{table:<18}{size:>12}  {extra}")
        label = self.label_names[0]
        for split, stats in self.splits.items():
            lines.append(f"\nsplit {split}: {stats.rows:,} rows in {len(stats.files)} file(s)")
            header = f"  {'domain':<20}{'rows':>12}{'share':>8}{label + ' rate':>14}"
            oracle = bool(stats.oracle_auc)
            lines.append(header + ("  oracle AUC" if oracle else ""))
            for d, name in enumerate(self.domain_names):
                rows = stats.rows_per_domain[d]
                pos = stats.positives_per_domain.get(label, [0] * self.num_domains)[d]
                rate = pos / rows if rows else float("nan")
                share = rows / stats.rows if stats.rows else float("nan")
                row = f"  {name:<20}{rows:>12,}{share:>8.1%}{rate:>14.4f}"
                if oracle and name in stats.oracle_auc:
                    row += f"  {stats.oracle_auc[name]:.4f}"
                lines.append(row)
            if oracle and "all" in stats.oracle_auc:
                lines.append(f"  {'all':<20}{stats.rows:>12,}{'':>8}{'':>14}  {stats.oracle_auc['all']:.4f}")
        return "\n".join(lines)
