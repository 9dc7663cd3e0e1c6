"""What ``mdr bench accuracy`` trains (:class:`Variant`: a table label, a registered model, its overrides) and
its options (:class:`AccuracyBenchOptions`); shared by the bench (:mod:`torchrec_mdr.bench.accuracy`), its
tables (:mod:`~torchrec_mdr.bench.accuracy_report`), its cost module (:mod:`~torchrec_mdr.bench.ads_cost`) and
the proof and paper-table benches, which train the same kind of variants."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from torchrec_mdr.config import ConfigError, bounds, doc

SUITES: tuple[str, ...] = ("planted", "no_shift", "ablation", "chunk_cost", "movielens")


@dataclass(frozen=True)
class Variant:
    """One trained configuration: a table label, a registered model and its ``--set`` overrides.

    ``base`` names the label it is compared with (AUC Imp. column, verdict); ``also_against`` more
    labels it gets a verdict against."""

    label: str
    model: str
    overrides: tuple[str, ...] = ()
    base: str | None = None
    also_against: tuple[str, ...] = ()

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.label.lower()).strip("-")


@dataclass
class AccuracyBenchOptions:
    out: Path = field(default=Path("docs/results"), metadata=doc("folder for the tables and the plot"))
    work: Path = field(
        default=Path("data/bench-accuracy"), metadata=doc("datasets and per-run metrics (kept: a re-run resumes)")
    )
    suites: list[str] = field(default_factory=lambda: list(SUITES), metadata=doc(f"any of {', '.join(SUITES)}"))
    seeds: int = field(default=3, metadata=bounds(ge=1, help="training seeds per configuration"))
    models: list[str] | None = field(
        default=None, metadata=doc("only these table labels' slugs, e.g. din ads-din (default: all)")
    )
    rows: int = field(default=200_000, metadata=bounds(ge=1000, help="synthetic rows (train/valid/test 80/10/10)"))
    users: int = field(default=5_000, metadata=bounds(ge=1, help="synthetic users"))
    items: int = field(default=2_000, metadata=bounds(ge=1, help="synthetic items"))
    seq_length: int = field(default=30, metadata=bounds(ge=1, help="synthetic behaviour-sequence length"))
    domain_shift: float = field(default=1.0, metadata=bounds(gt=0, help="planted-effect strength of `planted`"))
    epochs: int = field(default=2, metadata=bounds(ge=1, help="training epochs per run"))
    max_steps: int | None = field(
        default=None, metadata=bounds(ge=1, help="steps per run, replacing the epochs (tiny runs)")
    )
    batch_size: int = field(default=1024, metadata=bounds(ge=1, help="rows per batch"))
    embedding_dim: int = field(default=16, metadata=bounds(ge=1, help="embedding dimension"))
    ads_domain_features: list[str] = field(
        default_factory=lambda: ["user_activity"], metadata=doc("ADS implicit domain features on the synthetic data")
    )
    movielens_src: Path = field(
        default=Path("data/cache/recbole-1.2.1-py3-none-any.whl"),
        metadata=doc("MovieLens-100K source for `movielens` (see the README)"),
    )
    movielens_epochs: int = field(default=3, metadata=bounds(ge=1, help="training epochs on MovieLens-100K"))
    movielens_batch_size: int = field(default=512, metadata=bounds(ge=1, help="rows per batch on MovieLens"))
    threads: int | None = field(
        default=None,
        metadata=bounds(ge=1, help="torch threads per run (default: all cores; 1 on a machine shared with other work)"),
    )

    def validate(self) -> None:
        unknown = sorted(set(self.suites) - set(SUITES))
        if unknown:
            raise ConfigError(f"--suites: unknown {unknown}; choose from {list(SUITES)}")
