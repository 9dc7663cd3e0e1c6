"""The ``dose`` and ``options`` tables of ``mdr bench proof`` (dose.md, options.md): each mechanism on its own
effect planted more strongly, and the questioned defaults against their alternatives (item 5 of the proof);
the other tables are in :mod:`torchrec_mdr.bench.proof_report`."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchrec_mdr.bench.proof_report import dataset_spec, pooled_seeds, table_header
from torchrec_mdr.bench.proof_stats import Results, format_cell, paired, verdict

if TYPE_CHECKING:
    from torchrec_mdr.bench.proof_setup import Option, ProofBenchOptions


def write_dose(options: "ProofBenchOptions", results: Results) -> Path:
    """dose.md: each mechanism's pair on its own effect at dose 0 (``none``), 1 (its specificity dataset) and
    every ``doses`` strength — with the oracle gap of the effect and the share of it the mechanism closes."""
    from torchrec_mdr.bench.proof_setup import PAIRS, dataset_name

    doses = [0.0, 1.0, *sorted(d for d in options.doses if d not in (0.0, 1.0))]
    lines = table_header(options, "Dose: each mechanism on its own effect, planted more strongly", "dose")
    lines += [
        "Each cell: mean Δ test AUC (with − without) ± sd (wins/pairs; seeds whose mean Δ is positive, p by "
        "seed) over the worlds and seeds run; "
        "gap = oracle − ceiling without the mechanism's effect (what the effect is worth to an oracle, mean "
        "over worlds); closed = Δ / gap; the model without it = (its AUC − the ceiling without the effect) / "
        "gap, how much of the effect the model lacking the mechanism already captures (negative: it is below "
        "even that ceiling). Dose 0 is the `none` dataset, dose 1 the specificity suite's.",
        "",
        "| mechanism (with vs without) | " + " | ".join(f"dose {d:g}" for d in doses) + " |",
        "|" + "---|" * (len(doses) + 1),
    ]
    verdict_lines: list[str] = []
    raw: dict[str, dict[str, Any]] = {}  # mechanism -> dose -> paired comparison
    for mechanism in options.mechanisms:
        with_v, without_v = PAIRS[mechanism]
        cells, raw[mechanism] = [], {}
        for dose in doses:
            effect = "none" if dose == 0.0 else mechanism
            names = [dataset_name(options, w, effect, dose or 1.0) for w in range(options.worlds)]
            c = paired(results, with_v.label, without_v.label, names, pooled_seeds(options))
            gaps, base_shares = [], []
            for name in names:
                spec = dataset_spec(options, name)
                if spec is not None:
                    test = spec.splits["test"]
                    ceiling = test.ceilings[f"without_{mechanism}"]["all"]
                    gaps.append(test.oracle_auc["all"] - ceiling)
                    base_shares += [
                        (results[(without_v.label, name, seed)]["auc"] - ceiling) / gaps[-1]
                        for seed in range(pooled_seeds(options))
                        if (without_v.label, name, seed) in results and gaps[-1] > 0
                    ]
            c["gap"] = statistics.fmean(gaps) if gaps else float("nan")
            c["closed"] = c["delta"] / c["gap"] if c["n"] and c["gap"] > 0 else float("nan")
            # how far the model WITHOUT the mechanism already got: (its AUC - ceiling without the effect) / gap
            c["closed_without"] = statistics.fmean(base_shares) if base_shares else float("nan")
            raw[mechanism][f"{dose:g}"] = c
            cell = format_cell(c)
            if c["n"] and math.isfinite(c["closed"]):
                cell += (
                    f"; gap {c['gap']:.4f}, closed {c['closed']:.0%}; the model without it: {c['closed_without']:.0%}"
                )
            cells.append(cell)
        lines.append(f"| {mechanism} ({with_v.label} vs {without_v.label}) | " + " | ".join(cells) + " |")
        run = [(d, raw[mechanism][f"{d:g}"]) for d in doses if d > 1.0 and raw[mechanism][f"{d:g}"]["n"]]
        for dose, c in run:
            verdict_lines.append(
                f"- **{mechanism}** at dose {dose:g} (oracle gap {c['gap']:.4f}): Δ {c['delta']:+.4f} "
                f"(p={c['p']:.3g}, p_MW={c['p_mw']:.3g}) — **{verdict(c)}**; it closes "
                f"{c['closed']:.0%} of the gap."
            )
    lines += ["", "## Verdicts (computed from the table)", ""] + (verdict_lines or ["- nothing run yet"])
    path = options.out / "dose.md"
    path.write_text("\n".join(lines) + "\n")
    (options.out / "dose.json").write_text(json.dumps(raw, indent=1) + "\n")
    return path


_OPTION_HEADER = [
    "| option | dataset | with the option | default | Δ vs default | p_MW | Δ vs no mechanism |",
    "|---|---|---|---|---|---|---|",
]


def _option_row(
    options: "ProofBenchOptions", results: Results, name: str, option: "Option", datasets: list[str], where: str
) -> tuple[str, str] | None:
    """One option's row of :data:`_OPTION_HEADER` on ``datasets`` (paired against the default model and against
    the model without the mechanism), and its verdict line; None where no pair is archived."""
    c = paired(results, option.with_option.label, option.default.label, datasets, pooled_seeds(options))
    if not c["n"]:
        return None
    bare = paired(results, option.with_option.label, option.bare.label, datasets, pooled_seeds(options))
    bare_cell = f"{format_cell(bare)} vs {option.bare.label}" if bare["n"] else "—"
    row = (
        f"| {name} | {where} | {c['with']:.4f} | {c['without']:.4f} | {format_cell(c)} | {c['p_mw']:.3g} "
        f"| {bare_cell} |"
    )
    verdict_line = (
        f"- **{name}** on {where}: {verdict(c)} against the default "
        f"(Δ {c['delta']:+.4f}, {c['wins']}/{c['n']}; seeds {c['seed_wins']}/{c['seeds']}, p={c['p']:.3g})."
    )
    return row, verdict_line


def write_options(options: "ProofBenchOptions", results: Results) -> Path:
    """options.md: each questioned option against the default model, paired, on the data it targets."""
    from torchrec_mdr.bench.proof_setup import OPTIONS, data_label, dataset_name

    lines = table_header(options, "Options: the questioned defaults against the alternatives", "options")
    lines += _OPTION_HEADER
    verdict_lines = []
    for name, option in OPTIONS.items():
        if name not in options.alternatives:
            continue
        for dose in options.doses if option.effect != "all" else [1.0]:
            datasets = [dataset_name(options, w, option.effect, dose) for w in range(options.worlds)]
            row = _option_row(options, results, name, option, datasets, data_label(option.effect, dose))
            if row:
                lines.append(row[0])
                verdict_lines.append(row[1])
    lines += ["", "## Verdicts (computed from the table)", ""] + (verdict_lines or ["- nothing run yet"])
    path = options.out / "options.md"
    path.write_text("\n".join(lines) + "\n")
    return path
