"""``mdr bench table --paper ads|sfpnet``: a seed paper's comparison table, trained on your prepared dataset and
written in the paper's own layout.

* ``ads`` — ADS (SIGIR 2025) Table 2: the DNN-based group (DNN, DeepFM, DCNv2, APG, AdaSparse, DFFM, MaskNet),
  then one group per target-attention backbone (DIN, MHA, CAN), each with "+FRNet", "+PEPNet" and "+ADS" on
  that backbone; per task: Overall AUC, Overall Imp. (eq. 14, against DNN) and the AUC of every domain. The
  best row of each group is bold; ADS gets a ``*`` where it beats the group's second best with p < 0.05
  (paired sign-flip test over the seeds).
* ``sfpnet`` — SFPNet (SIGIR 2024) Table 4: BaseDNN, DeepFM, SharedBottom, MMoE, PLE, STAR, AESM2, AdaSparse,
  PEPNet, MARIA, SFPNet; AUC per scenario (domain), the first task. SFPNet gets a ``*`` in a scenario where it
  beats the best baseline with Mann-Whitney p < 0.05 (the paper's test).

Rows whose model the library does not have are listed as such (never filled in). Every run is the proof
benchmark's protocol (:mod:`torchrec_mdr.bench.proof`: ``mdr train``, early stopping on the validation AUC,
best checkpoint restored, one thread per run, ``--jobs`` at once, finished runs archived beside the table so a
re-run resumes). ``--domain-features`` names the implicit domain fields that ADS (E_D), SFPNet and MARIA (scenario
vector), PEPNet, APG, AdaSparse and DFFM (their domain side) receive, the same for all of them.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from torchrec_mdr.bench.accuracy_setup import Variant
from torchrec_mdr.config import ConfigError, bounds, doc

PAPERS: tuple[str, ...] = ("ads", "sfpnet")
MISSING = "not in the library"


@dataclass
class PaperTableOptions:
    paper: str = field(default="ads", metadata=doc(f"whose table: {', '.join(PAPERS)}"))
    data: Path = field(default=Path("data/synthetic-v2"), metadata=doc("a prepared dataset (mdr data ...)"))
    out: Path = field(default=Path("docs/results/tables"), metadata=doc("folder for the table (and its runs)"))
    work: Path = field(default=Path("data/bench-table"), metadata=doc("per-run folders (kept: a re-run resumes)"))
    seeds: int = field(default=3, metadata=bounds(ge=1, help="training seeds per model"))
    domain_features: list[str] = field(
        default_factory=list,
        metadata=doc(
            "implicit domain id fields given to ADS, SFPNet, MARIA, PEPNet, APG, AdaSparse and DFFM "
            "(e.g. user_activity)"
        ),
    )
    max_epochs: int = field(default=10, metadata=bounds(ge=1, help="epochs at most (early stopping ends sooner)"))
    patience: int = field(default=2, metadata=bounds(ge=1, help="evaluations without a better validation AUC"))
    evals_per_epoch: int = field(default=1, metadata=bounds(ge=1, help="validation evaluations per epoch"))
    batch_size: int = field(default=1024, metadata=bounds(ge=1, help="rows per batch"))
    embedding_dim: int = field(default=16, metadata=bounds(ge=1, help="embedding dimension"))
    jobs: int = field(default=1, metadata=bounds(ge=1, help="runs trained at once (one thread each)"))
    train: bool = field(default=True, metadata=doc("false: render the table from the finished runs only"))

    def validate(self) -> None:
        if self.paper not in PAPERS:
            raise ConfigError(f"--paper must be one of {list(PAPERS)}, not {self.paper!r}")


def _on(model: str, key: str, features: list[str], *extra: str) -> tuple[str, ...]:
    return ((f"model.{model}.{key}={json.dumps(features)}",) if features else ()) + extra


def rows(options: PaperTableOptions) -> list[tuple[str, list[Variant | str]]]:
    """The table's groups: (group title, rows); a row is a Variant, or a label the library lacks."""
    f = options.domain_features
    if options.paper == "sfpnet":
        return [
            (
                "",
                [
                    Variant("BaseDNN", "dnn"),
                    Variant("DeepFM", "deepfm"),
                    Variant("SharedBottom", "shared_bottom"),
                    Variant("MMoE", "mmoe"),
                    Variant("PLE", "ple"),
                    Variant("STAR", "star"),
                    Variant("AESM2", "aesm2"),
                    Variant("AdaSparse", "adasparse", _on("adasparse", "domain_features", f)),
                    Variant("PEPNet", "pepnet", _on("pepnet", "domain_features", f)),
                    Variant("MARIA", "maria", _on("maria", "scenario_features", f)),
                    Variant("SFPNet", "sfpnet", _on("sfpnet", "scenario_features", f)),
                ],
            )
        ]
    groups: list[tuple[str, list[Variant | str]]] = [
        (
            "DNN-based",
            [
                Variant("DNN", "dnn"),
                Variant("DeepFM", "deepfm"),
                Variant("DCNv2", "dcnv2"),
                Variant("APG", "apg", _on("apg", "domain_features", f)),
                Variant("AdaSparse", "adasparse", _on("adasparse", "domain_features", f)),
                Variant("DFFM", "dffm", _on("dffm", "domain_features", f)),
                Variant("MaskNet", "masknet"),
            ],
        )
    ]
    for backbone in ("din", "mha", "can"):
        name = backbone.upper()
        groups.append(
            (
                name,
                [
                    Variant(name, backbone),
                    Variant(f"{name} +FRNet", "frnet", (f"model.frnet.backbone={backbone}",)),
                    Variant(
                        f"{name} +PEPNet",
                        "pepnet",
                        _on("pepnet", "domain_features", f, f"model.pepnet.backbone={backbone}"),
                    ),
                    Variant(f"{name} +ADS", "ads", _on("ads", "domain_features", f, f"model.ads.backbone={backbone}")),
                ],
            )
        )
    return groups


def _variants(options: PaperTableOptions) -> list[Variant]:
    return [row for _, group in rows(options) for row in group if isinstance(row, Variant)]


def _value(metrics: dict, task: str | None, domain: str | None) -> float:
    scope = metrics["tasks"][task] if task is not None and "tasks" in metrics else metrics
    value = scope["per_domain"][domain]["auc"] if domain is not None else scope["auc"]
    return float(value) if value is not None else float("nan")


def _mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.fmean(finite) if finite else float("nan")


def _missing(label: str, columns: int) -> str:
    """A table row for a model the library does not have (never filled with numbers)."""
    return f"| {label} | {MISSING} |" + " |" * (columns - 2)


def render(options: PaperTableOptions, results: dict[tuple[str, str, int], dict]) -> str:
    """The table in the paper's layout from the runs' metrics (``results[(label, dataset, seed)]``)."""
    from torchrec_mdr.bench.significance import mann_whitney_p, sign_flip_p
    from torchrec_mdr.data.spec import DatasetSpec
    from torchrec_mdr.metrics.ranking import auc_improvement

    spec = DatasetSpec.load(options.data)
    dataset, domains = options.data.name, list(spec.domain_names)
    tasks: list[str | None] = list(spec.label_names) if len(spec.label_names) > 1 else [None]
    if options.paper == "sfpnet":
        tasks = tasks[:1]

    def runs(label: str, task: str | None, domain: str | None) -> list[float]:
        return [
            _value(results[(label, dataset, s)], task, domain)
            for s in range(options.seeds)
            if (label, dataset, s) in results
        ]

    lines = [
        f"# {'ADS Table 2' if options.paper == 'ads' else 'SFPNet Table 4'} on `{dataset}`",
        "",
        f"Produced by `mdr bench table --paper {options.paper} --data {options.data} --seeds {options.seeds}"
        + (f" --domain-features {' '.join(options.domain_features)}" if options.domain_features else "")
        + f" --max-epochs {options.max_epochs} --patience {options.patience}"
        + (f" --evals-per-epoch {options.evals_per_epoch}" if options.evals_per_epoch != 1 else "")
        + (f" --batch-size {options.batch_size}" if options.batch_size != 1024 else "")
        + (f" --embedding-dim {options.embedding_dim}" if options.embedding_dim != 16 else "")
        + "` (test AUC, mean over the seeds "
        "run; each run early-stopped on the validation AUC). Rows marked '" + MISSING + "' are models the "
        "library does not implement.",
        "",
    ]
    if options.paper == "ads":
        header = ["Models"]
        for task in tasks:
            name = f" ({task})" if task else ""
            header += [f"Overall{name}", f"Overall Imp.{name}", *(f"{d}{name}" for d in domains)]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        base = {task: _mean(runs("DNN", task, None)) for task in tasks}
        for title, group in rows(options):
            lines.append(f"| *{title}* |" + " |" * (len(header) - 1))
            labelled = [r for r in group if isinstance(r, Variant)]
            overall = {r.label: _mean(runs(r.label, tasks[0], None)) for r in labelled}
            ranked = sorted((v, k) for k, v in overall.items() if math.isfinite(v))
            best = ranked[-1][1] if ranked else None
            for row in group:
                if isinstance(row, str):
                    lines.append(_missing(row, len(header)))
                    continue
                cells = [row.label]
                for task in tasks:
                    auc = _mean(runs(row.label, task, None))
                    imp = (
                        auc_improvement(auc, base[task])
                        if math.isfinite(auc) and math.isfinite(base[task])
                        else float("nan")
                    )
                    cells += [
                        f"{auc:.4f}",
                        "-" if row.label == "DNN" else f"{imp:+.2f}%",
                        *(f"{_mean(runs(row.label, task, d)):.4f}" for d in domains),
                    ]
                if row.label == best:
                    cells[1] = f"**{cells[1]}**"
                if row.label.endswith("+ADS") and len(ranked) > 1:
                    second = ranked[-1][1] if ranked[-1][1] != row.label else ranked[-2][1]
                    deltas = [a - b for a, b in zip(runs(row.label, tasks[0], None), runs(second, tasks[0], None))]
                    if deltas and statistics.fmean(deltas) > 0 and sign_flip_p(deltas) < 0.05:
                        cells[1] += "*"
                lines.append("| " + " | ".join(cells) + " |")
        lines += [
            "",
            "Bold: the best Overall AUC of each group; `*`: ADS above the group's second best with p < 0.05 "
            "(paired sign-flip test over the seeds; with fewer than 6 seeds it cannot be reached).",
        ]
    else:
        header = ["Method", *domains]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        group = rows(options)[0][1]
        baselines = [r.label for r in group if isinstance(r, Variant) and r.label != "SFPNet"]
        for row in group:
            if isinstance(row, str):
                lines.append(_missing(row, len(header)))
                continue
            cells = [row.label]
            for d in domains:
                value = _mean(runs(row.label, None, d))
                cell = f"{value:.4f}"
                if row.label == "SFPNet":
                    scored = {b: _mean(runs(b, None, d)) for b in baselines}
                    scored = {b: v for b, v in scored.items() if math.isfinite(v)}
                    best = max(scored, key=lambda b: scored[b]) if scored else None
                    if (
                        best is not None
                        and value > scored[best]
                        and mann_whitney_p(runs("SFPNet", None, d), runs(best, None, d)) < 0.05
                    ):
                        cell += "*"
                cells.append(cell)
            lines.append("| " + " | ".join(cells) + " |")
        lines += [
            "",
            "`*`: SFPNet above the best baseline of that scenario with Mann-Whitney p < 0.05 over the seeds "
            f"(as the paper reports; with {options.seeds} seed(s) per side the smallest attainable p is "
            f"{2 / math.comb(2 * options.seeds, options.seeds):.3g}).",
        ]
    return "\n".join(lines + _training_time(options, results, dataset)) + "\n"


def _training_time(options: PaperTableOptions, results: dict[tuple[str, str, int], dict], dataset: str) -> list[str]:
    """The table's cost: training seconds per run (one thread each), in total and per row."""
    seconds: dict[str, list[float]] = {}
    for variant in _variants(options):
        for seed in range(options.seeds):
            wall = results.get((variant.label, dataset, seed), {}).get("train", {}).get("wall_sec")
            if wall is not None:
                seconds.setdefault(variant.label, []).append(float(wall))
    if not seconds:
        return []
    total = sum(sum(v) for v in seconds.values())
    return [
        "",
        f"Training time: {sum(len(v) for v in seconds.values())} runs, {total / 60:.1f} min in all: the wall time of "
        f"each run's training loop, evaluations included, one thread per run and {options.jobs} run(s) at once "
        "(on a busy machine this overstates the CPU time). Mean seconds per run: "
        + ", ".join(f"{label} {statistics.fmean(v):.0f}" for label, v in seconds.items())
        + ".",
    ]


def run(options: PaperTableOptions) -> Path:
    """Train what is missing, then write ``out/<paper>-<dataset>.md``."""
    from torchrec_mdr.bench.proof import train_all

    options.validate()
    if not (options.data / "spec.json").exists():
        raise ConfigError(f"--data {options.data} is not a prepared dataset (no spec.json): prepare it with mdr data")
    options.out.mkdir(parents=True, exist_ok=True)
    jobs = [(v, options.data, seed) for seed in range(options.seeds) for v in _variants(options)]
    results = train_all(options, jobs)  # type: ignore[arg-type]  # the same run protocol fields
    path = options.out / f"{options.paper}-{options.data.name}.md"
    path.write_text(render(options, results))
    print(f"{options.paper} table: {path}")
    return path
