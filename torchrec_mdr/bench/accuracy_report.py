"""Tables and the plot of ``mdr bench accuracy``: mean ± std over seeds, AUC Imp., paired per-seed wins.

Every verdict printed in a table's notes is computed from the numbers of that table:

* a comparison "holds" when the model's mean AUC beats its base's and it wins in more than half of
  the seeds (paired by seed: same data order and initialisation seed);
* on the null data a gain is "within the seed noise" when ``|mean Δ| <= 2 sd(Δ)`` over the seeds
  (with one seed there is no noise estimate and the verdict says so).
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import TYPE_CHECKING

from torchrec_mdr.metrics.ranking import auc_improvement

if TYPE_CHECKING:
    from torchrec_mdr.bench.accuracy_setup import AccuracyBenchOptions, Variant

TITLES = {
    "planted": "Planted-effect synthetic data (domain shift > 0)",
    "no_shift": "Null synthetic data (domain shift = 0: identical domains)",
    "ablation": "Ablations on the planted-effect data",
    "movielens": "MovieLens-100K (real data; domains = user age groups)",
}


def mean_std(values: list[float]) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return float("nan"), float("nan")
    return statistics.fmean(finite), (statistics.stdev(finite) if len(finite) > 1 else 0.0)


def _fmt(values: list[float], digits: int = 4) -> str:
    mean, std = mean_std(values)
    return "n/a" if math.isnan(mean) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _domain_aucs(runs: list[dict], name: str) -> list[float]:
    return [run["per_domain"][name]["auc"] for run in runs]


def compare(model_runs: list[dict], base_runs: list[dict], domain: str | None = None) -> dict:
    """Paired by seed: Δ AUC mean/sd, wins, AUC Imp. of the means (overall or one domain)."""
    pick = (lambda r: r["auc"]) if domain is None else (lambda r: r["per_domain"][domain]["auc"])
    deltas = [pick(m) - pick(b) for m, b in zip(model_runs, base_runs)]
    delta_mean, delta_sd = mean_std(deltas)
    model_mean, _ = mean_std([pick(m) for m in model_runs])
    base_mean, _ = mean_std([pick(b) for b in base_runs])
    return {
        "delta": delta_mean,
        "delta_sd": delta_sd,
        "wins": sum(d > 0 for d in deltas),
        "seeds": len(deltas),
        "imp": auc_improvement(model_mean, base_mean),
    }


def _dataset_line(data: Path) -> str:
    from torchrec_mdr.data.spec import DatasetSpec

    spec = DatasetSpec.load(data)
    rows = ", ".join(f"{split} {info.rows:,}" for split, info in spec.splits.items())
    return f"Dataset `{data}`: {spec.source or spec.name}; rows {rows}; domains {', '.join(spec.domain_names)}."


def _command(options: "AccuracyBenchOptions", suite: str) -> str:
    parts = [f"mdr bench accuracy --suites {suite} --seeds {options.seeds}"]
    if options.embedding_dim != 16:
        parts.append(f"--embedding-dim {options.embedding_dim}")
    if suite == "movielens":
        parts.append(
            f"--movielens-epochs {options.movielens_epochs} --movielens-batch-size {options.movielens_batch_size}"
        )
    else:
        parts.append(
            f"--rows {options.rows} --items {options.items} --users {options.users} "
            f"--seq-length {options.seq_length} --epochs {options.epochs} "
            f"--batch-size {options.batch_size}"
        )
        if suite != "no_shift":
            parts.append(f"--domain-shift {options.domain_shift:g}")
    if options.max_steps:
        parts.append(f"--max-steps {options.max_steps}")
    return " ".join(parts)


def verdicts(suite: str, variants: list["Variant"], results: dict[str, list[dict]], domains: list[str]) -> list[str]:
    lines = []
    for variant in variants:
        for base in (variant.base, *variant.also_against):
            if base is None or base not in results:
                continue
            c = compare(results[variant.label], results[base])
            per_domain = [compare(results[variant.label], results[base], d) for d in domains]
            won_domains = sum(p["delta"] > 0 for p in per_domain)
            text = (
                f"{variant.label} vs {base}: Δ AUC {c['delta']:+.4f} ± {c['delta_sd']:.4f} "
                f"(AUC Imp. {c['imp']:+.2f}%), better in {c['wins']}/{c['seeds']} seeds and in "
                f"{won_domains}/{len(domains)} domains"
            )
            lines.append(f"- {text} — **{_verdict(suite, c)}**.")
    return lines


def _verdict(suite: str, c: dict) -> str:
    if suite == "no_shift":
        if c["seeds"] < 2:
            return "one seed: no noise estimate"
        return "within the seed noise" if abs(c["delta"]) <= 2 * c["delta_sd"] else "NOT within the seed noise"
    if suite == "ablation":
        full_better = c["delta"] < 0 and (c["seeds"] - c["wins"]) * 2 > c["seeds"]
        return "the full model is better" if full_better else "the ablation is NOT worse"
    return "holds" if c["delta"] > 0 and c["wins"] * 2 > c["seeds"] else "does NOT hold"


def write_suite(
    options: "AccuracyBenchOptions", suite: str, variants: list["Variant"], results: dict[str, list[dict]], data: Path
) -> Path:
    """``out/<suite>.md``: one row per configuration, oracle row last (synthetic data)."""
    first = next(iter(results.values()))[0]
    domains = list(first["per_domain"])
    header = ["Model", "AUC", "AUC Imp. vs base", "base", *[f"AUC {d}" for d in domains], "GAUC", "logloss"]
    lines = [
        f"# {TITLES[suite]}",
        "",
        _dataset_line(data),
        "",
        f"Produced by `{_command(options, suite)}` ({options.seeds} seed(s); mean ± std over seeds; "
        "AUC Imp. = ADS eq. 14 on the mean AUCs).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for variant in variants:
        runs = results[variant.label]
        imp = ""
        if variant.base and variant.base in results:
            imp = f"{compare(runs, results[variant.base])['imp']:+.2f}%"
        base = variant.base if variant.base in results else ""  # a base outside this table: no column
        cells = [
            variant.label,
            _fmt([r["auc"] for r in runs]),
            imp,
            base,
            *[_fmt(_domain_aucs(runs, d)) for d in domains],
            _fmt([r["gauc"] for r in runs]),
            _fmt([r["logloss"] for r in runs]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    oracle = first.get("oracle_auc")
    if oracle:
        cells = ["Oracle (true logit)", f"{oracle['all']:.4f}", "", "", *[f"{oracle[d]:.4f}" for d in domains], "", ""]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Verdicts (computed from the table)", ""]
    lines += verdicts(suite, variants, results, domains) or ["- no comparison in this selection"]
    if suite == "ablation":
        lines += [
            "",
            "Order of the means: "
            + " > ".join(
                label
                for label, _ in sorted(
                    ((v.label, mean_std([r["auc"] for r in results[v.label]])[0]) for v in variants),
                    key=lambda item: -item[1],
                )
            ),
        ]
    path = options.out / f"{suite}.md"
    path.write_text("\n".join(lines) + "\n")
    raw = {
        label: [{k: r[k] for k in ("auc", "gauc", "logloss", "per_domain", "train")} for r in runs]
        for label, runs in results.items()
    }
    (options.out / f"{suite}.json").write_text(json.dumps(raw, indent=1) + "\n")
    return path


def write_chunk_costs(options: "AccuracyBenchOptions", costs: list[dict], data: Path) -> Path:
    header = [
        "Model",
        "items per chunk",
        "dense params",
        "train GFLOPs / 1k samples",
        "step ms (dense, fwd+bwd)",
        "test AUC (seed 0)",
    ]
    lines = [
        "# ADS cost per items-per-chunk setting (the ADS paper's Fig. 4)",
        "",
        _dataset_line(data),
        "",
        f"Produced by `mdr bench accuracy --suites chunk_cost` (batch {options.batch_size}; FLOPs counted by "
        "torch.utils.flop_counter over one forward + backward of the dense arch on a real batch; step time "
        "= median of measured dense forward + backward passes on this machine; the sparse arch is the "
        "same for every row).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in costs:
        lines.append(
            f"| {row['label']} | {row['items_per_chunk'] or '—'} | {row['params']:,} | "
            f"{row['gflops_per_1k']:.3f} | {row['step_ms']:.1f} | "
            f"{row['auc']:.4f} |"
            if row.get("auc") is not None
            else f"| {row['label']} | {row['items_per_chunk'] or '—'} | {row['params']:,} | "
            f"{row['gflops_per_1k']:.3f} | {row['step_ms']:.1f} | n/a |"
        )
    path = options.out / "chunk_cost.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_plot(options: "AccuracyBenchOptions", results: dict[str, dict[str, list[dict]]]) -> Path:
    """accuracy.png: test AUC (mean, ± std bars) per model on the planted and the null data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [s for s in ("planted", "no_shift") if s in results]
    figure, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4.5), squeeze=False)
    for axis, suite in zip(axes[0], panels):
        labels = list(results[suite])
        stats = [mean_std([r["auc"] for r in results[suite][label]]) for label in labels]
        axis.bar(range(len(labels)), [s[0] for s in stats], yerr=[s[1] for s in stats], capsize=3, color="#4c72b0")
        oracle = next(iter(results[suite].values()))[0].get("oracle_auc", {}).get("all")
        if oracle:
            axis.axhline(oracle, color="#c44e52", linestyle="--", label=f"oracle {oracle:.3f}")
            axis.legend(loc="lower right")
        finite = [s[0] for s in stats if math.isfinite(s[0])]
        if finite:
            axis.set_ylim(min(finite) - 0.02, max(finite + ([oracle] if oracle else [])) + 0.01)
        axis.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
        axis.set_ylabel("test AUC")
        axis.set_title(TITLES[suite], fontsize=10)
    figure.tight_layout()
    path = options.out / "accuracy.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
