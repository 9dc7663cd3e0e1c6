"""Tables and plots of ``mdr bench proof``; every verdict is computed from the numbers it prints, by the
tests and rules of :mod:`torchrec_mdr.bench.proof_stats` (paired differences per (world, seed), tested by
seed)."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import TYPE_CHECKING

from torchrec_mdr.bench.proof_stats import (
    Results,
    chance_note,
    format_cell,
    mean_sd,
    paired,
    paired_stats,
    verdict,
)

if TYPE_CHECKING:
    from torchrec_mdr.bench.accuracy_setup import Variant
    from torchrec_mdr.bench.proof_setup import ProofBenchOptions
    from torchrec_mdr.data.spec import DatasetSpec


def pooled_seeds(options: "ProofBenchOptions") -> int:
    """Seeds the tables pool: 0 .. first_seed + seeds - 1 (earlier seeds from the archive)."""
    return options.first_seed + options.seeds


def _grid_words(options: "ProofBenchOptions") -> str:
    """The (world, seed) pairs a cell pools, in words."""
    grid = f"{options.worlds} world(s) × {pooled_seeds(options)} seed(s)"
    if options.one_world_from is None or options.one_world_from >= pooled_seeds(options):
        return grid
    return (
        f"{grid} at most: seeds from {options.one_world_from} on were added in one world each (world = seed mod "
        f"{options.worlds}; runs an earlier call trained in other worlds are pooled too), so the cells differ in "
        "their pairs, counted in each cell; every seed is one unit of the test"
    )


def _averaged_per_run(
    options: "ProofBenchOptions", results: Results, with_label: str, without_label: str, effects: list[str]
) -> dict:
    """Δ (with - without) averaged over ``effects``, one value per (world, seed) where every effect has the pair.
    Averaging, not pooling the pairs: a world's datasets share its users and items, so its pairs on several
    effects are not independent; the (world, seed) units are (and the test blocks them by seed)."""
    units = []
    for world in range(options.worlds):
        names = [_world_datasets(options, e)[world] for e in effects]
        for seed in range(pooled_seeds(options)):
            keys = [((with_label, d, seed), (without_label, d, seed)) for d in names]
            if all(a in results and b in results for a, b in keys):
                units.append((seed, statistics.fmean(results[a]["auc"] - results[b]["auc"] for a, b in keys)))
    return paired_stats(units)


def best_epoch(metrics: dict) -> int | None:
    """1-based epoch of the restored best checkpoint (from the evaluation history)."""
    step = metrics.get("early_stopping", {}).get("best_step")
    return next((h["epoch"] + 1 for h in metrics.get("history", []) if h["step"] == step), None)


def _world_datasets(options: "ProofBenchOptions", effect: str) -> list[str]:
    from torchrec_mdr.bench.proof_setup import dataset_name

    return [dataset_name(options, w, effect) for w in range(options.worlds)]


def dataset_spec(options: "ProofBenchOptions", name: str) -> DatasetSpec | None:
    from torchrec_mdr.data.spec import SPEC_FILE, DatasetSpec

    path = options.work / name
    return DatasetSpec.load(path) if (path / SPEC_FILE).exists() else None


def _ceiling_gap(options: "ProofBenchOptions", effect: str, mechanism: str) -> float:
    """Mean over worlds of oracle - without_<mechanism> on the test split of ``effect``'s datasets."""
    gaps = []
    for name in _world_datasets(options, effect):
        spec = dataset_spec(options, name)
        if spec is not None:
            test = spec.splits["test"]
            gaps.append(test.oracle_auc["all"] - test.ceilings[f"without_{mechanism}"]["all"])
    return statistics.fmean(gaps) if gaps else float("nan")


def command_line(options: "ProofBenchOptions", suite: str) -> str:
    """The ``mdr bench proof`` command line that reproduces ``suite``'s table (only the options it reads)."""
    from torchrec_mdr.bench.proof_setup import ABLATION_MODELS, EFFECTS, MECHANISMS, OPTIONS

    protocol = (
        f" --seeds {pooled_seeds(options)} --max-epochs {options.max_epochs} --patience {options.patience} "
        f"--batch-size {options.batch_size}"
        + (f" --evals-per-epoch {options.evals_per_epoch}" if options.evals_per_epoch != 1 else "")
        + (f" --one-world-from {options.one_world_from}" if options.one_world_from is not None else "")
    )
    alternatives = (
        " --alternatives " + " ".join(options.alternatives) if list(options.alternatives) != list(OPTIONS) else ""
    )
    if suite == "movielens":  # one real dataset: no generator options
        ablations = (
            " --movielens-ablations " + " ".join(options.movielens_ablations) if options.movielens_ablations else ""
        )
        return f"mdr bench proof --suites movielens{protocol}{alternatives}{ablations}"
    command = (
        f"mdr bench proof --suites {suite} --worlds {options.worlds}{protocol} --rows {options.rows} "
        f"--users {options.users} --items {options.items} --seq-length {options.seq_length}"
    )
    if suite in ("specificity", "dose") and list(options.mechanisms) != list(MECHANISMS):
        command += " --mechanisms " + " ".join(options.mechanisms)
    if suite == "specificity":
        if list(options.effects) != list(EFFECTS):
            command += " --effects " + " ".join(options.effects)
        command += f" --matrix {options.matrix}"
    if suite == "ablation" and list(options.ablation_models) != list(ABLATION_MODELS):
        command += " --ablation-models " + " ".join(options.ablation_models)
    if suite in ("dose", "options", "probes", "seeds"):
        command += " --doses " + " ".join(f"{d:g}" for d in options.doses)
    if suite == "options":
        command += alternatives
    if suite == "scaling":
        command += " --scale-rows " + " ".join(str(r) for r in options.scale_rows)
    return command


def table_header(options: "ProofBenchOptions", title: str, suite: str) -> list[str]:
    return [
        f"# {title}",
        "",
        f"Produced by `{command_line(options, suite)}` (generator v2, "
        "`data_prep/planted_v2.py`; early stopping on the validation AUC, best checkpoint restored; "
        "test AUC; Δ = paired difference per (world, seed); p = exact sign-flip test over the seeds' mean Δ "
        "(pairs that share a seed are not independent), p_MW = Mann-Whitney U; see "
        "`torchrec_mdr/bench/proof_stats.py` for the verdict rules).",
        "",
    ]


def write_ceilings(options: "ProofBenchOptions") -> Path:
    from data_prep.planted_v2 import CEILINGS
    from torchrec_mdr.bench.proof_setup import EFFECTS, MECHANISMS, dataset_name

    lines = [
        "# Generator v2: oracle and ceilings (test split, all domains)",
        "",
        "Each ceiling is the AUC of the labels against the true logit with one mechanism's effect "
        "removed (`data_prep/planted_v2.py`); oracle − ceiling is what that effect is worth to an oracle.",
        "",
        "| dataset | oracle | " + " | ".join(CEILINGS) + " | realised rates | configured rates |",
        "|" + "---|" * (len(CEILINGS) + 4),
    ]
    for world in range(options.worlds):
        for effect, dose in [(e, 1.0) for e in EFFECTS] + [
            (e, d) for e in MECHANISMS for d in options.doses if d not in (0.0, 1.0)
        ]:  # dose 0 is the none dataset, dose 1 each effect's own: both listed already
            name = dataset_name(options, world, effect, dose)
            spec = dataset_spec(options, name)
            if spec is None:
                continue
            test = spec.splits["test"]
            rates = [p / max(r, 1) for p, r in zip(test.positives_per_domain["click"], test.rows_per_domain)]
            lines.append(
                f"| {name} | {test.oracle_auc['all']:.4f} | "
                + " | ".join(f"{test.ceilings[c]['all']:.4f}" for c in CEILINGS)
                + f" | {' / '.join(f'{r:.3f}' for r in rates)} | {spec.notes.get('target_rates', '')} |"
            )
    path = options.out / "ceilings.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_specificity(options: "ProofBenchOptions", results: Results) -> Path:
    from torchrec_mdr.bench.proof_setup import PAIRS

    effects = list(options.effects)
    lines = table_header(
        options, "Specificity: each mechanism, with minus without, on each planted effect", "specificity"
    )
    lines += [
        f"Each cell: mean Δ test AUC ± sd (wins/pairs; seeds whose mean Δ over the worlds is positive, p of "
        f"the sign-flip test over those seed means) over {_grid_words(options)}. "
        "Rows: the mechanism and the pair of models that differ only by it.",
        "",
        "| mechanism (with vs without) | " + " | ".join(effects) + " |",
        "|" + "---|" * (len(effects) + 1),
    ]
    raw: dict[str, dict[str, dict]] = {}
    verdict_lines = []
    for mechanism in options.mechanisms:
        with_v, without_v = PAIRS[mechanism]
        raw[mechanism] = {
            e: paired(results, with_v.label, without_v.label, _world_datasets(options, e), pooled_seeds(options))
            for e in effects
        }
        lines.append(
            f"| {mechanism} ({with_v.label} vs {without_v.label}) | "
            + " | ".join(format_cell(raw[mechanism][e]) for e in effects)
            + " |"
        )
        own = raw[mechanism].get(mechanism)
        expected_ties = [e for e in effects if e not in (mechanism, "all") and raw[mechanism][e]["n"]]
        ties = [e for e in expected_ties if verdict(raw[mechanism][e]) not in ("wins", "loses")]
        absent = (
            f"Neither wins nor loses where the effect is absent: {len(ties)}/{len(expected_ties)} "
            f"({', '.join(e + ': ' + verdict(raw[mechanism][e]) for e in expected_ties) or 'none run'})."
        )
        if len(expected_ties) > 1:  # a small cost or gain that no single cell can show
            pooled = _averaged_per_run(options, results, with_v.label, without_v.label, expected_ties)
            absent += f" Those cells averaged per (world, seed), tested by seed: {format_cell(pooled)}."
        if own and own["n"]:
            gap = _ceiling_gap(options, mechanism, mechanism)
            closed = own["delta"] / gap if gap and math.isfinite(gap) and gap > 0 else float("nan")
            verdict_lines.append(
                f"- **{mechanism}**: on its own effect Δ {own['delta']:+.4f} (p={own['p']:.3g}, "
                f"p_MW={own['p_mw']:.3g}) — "
                f"**{verdict(own)}** (expected: wins); the oracle gap of the effect is {gap:.4f}, the mechanism "
                f"closes {closed:.0%} of it. {absent}"
            )
        elif expected_ties:
            verdict_lines.append(f"- **{mechanism}**: its own effect is not in this table. {absent}")
    lines += ["", "## Verdicts (computed from the table)", ""] + (verdict_lines or ["- nothing run yet"])
    lines += ["", chance_note([c for cells in raw.values() for c in cells.values()])]
    path = options.out / "specificity.md"
    path.write_text("\n".join(lines) + "\n")
    (options.out / "specificity.json").write_text(json.dumps(raw, indent=1) + "\n")
    return path


def _table(
    options: "ProofBenchOptions", variants: list["Variant"], results: Results, datasets: list[str], with_ceiling: bool
) -> list[str]:
    header = ["Model", "test AUC", "base", "Δ vs base (wins/pairs; seeds)", "p", "p_MW", "best epoch (mean)"]
    if with_ceiling:
        header.insert(2, "share of oracle − main closed")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    oracle, main, compared = [], [], []
    for name in datasets:
        spec = dataset_spec(options, name)
        if spec is not None and spec.splits["test"].oracle_auc:  # planted data (real data has no oracle)
            oracle.append(spec.splits["test"].oracle_auc["all"])
            main.append(spec.splits["test"].ceilings["main"]["all"])
    for v in variants:
        runs = [
            results[(v.label, d, s)]
            for d in datasets
            for s in range(pooled_seeds(options))
            if (v.label, d, s) in results
        ]
        if not runs:
            continue
        mean, sd = mean_sd([r["auc"] for r in runs])
        epochs = [e for e in (best_epoch(r) for r in runs) if e is not None]
        cells = [
            v.label,
            f"{mean:.4f} ± {sd:.4f}",
            v.base or "",
            "",
            "",
            "",
            f"{statistics.fmean(epochs):.1f}" if epochs else "n/a",
        ]
        if v.base:
            c = paired(results, v.label, v.base, datasets, pooled_seeds(options))
            compared.append(c)
            cells[3:6] = [
                f"{c['delta']:+.4f} ± {c['sd']:.4f} ({c['wins']}/{c['n']}; {c['seed_wins']}/{c['seeds']}) "
                f"**{verdict(c)}**",
                f"{c['p']:.3g}",
                f"{c['p_mw']:.3g}",
            ]
        if with_ceiling:
            share = (
                (mean - statistics.fmean(main)) / (statistics.fmean(oracle) - statistics.fmean(main))
                if oracle
                else float("nan")
            )
            cells.insert(2, f"{share:.0%}")
        lines.append("| " + " | ".join(cells) + " |")
    if compared:
        lines += ["", chance_note(compared)]
    if oracle:
        lines += [
            "",
            f"Oracle AUC {statistics.fmean(oracle):.4f}, main-effects ceiling "
            f"{statistics.fmean(main):.4f} (mean over worlds).",
        ]
    return lines


def write_ablation(options: "ProofBenchOptions", results: Results) -> Path:
    from torchrec_mdr.bench.proof_setup import chosen_ablations

    ablations = chosen_ablations(options.ablation_models)
    datasets = _world_datasets(options, "all")
    lines = table_header(options, "Ablations on generator v2 with every effect planted", "ablation")
    lines += _table(options, ablations, results, datasets, with_ceiling=True)
    lines += _orders(options, results, datasets, options.ablation_models)
    path = options.out / "ablation.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _orders(
    options: "ProofBenchOptions", results: Results, datasets: list[str], groups: list[str], runs: str = "(world, seed)"
) -> list[str]:
    """The papers' orders of the chosen ablation groups, each checked on the means over the (dataset, seed) runs
    every model of the order has (a paired comparison); ``runs`` names those runs in the text."""
    from torchrec_mdr.bench.proof_setup import ABLATION_ORDERS

    lines = ["", "## The papers' orders (computed from the table)", ""]
    for chain in (chain for group, chains in ABLATION_ORDERS.items() if group in groups for chain in chains):
        keys = [
            (d, s)
            for d in datasets
            for s in range(pooled_seeds(options))
            if all((label, d, s) in results for label in chain)
        ]
        if not keys:
            continue
        means = {label: statistics.fmean(results[(label, d, s)]["auc"] for d, s in keys) for label in chain}
        holds = all(means[a] > means[b] for a, b in zip(chain, chain[1:]))
        lines.append(
            f"- {' > '.join(chain)}: "
            + ("**holds** in the means" if holds else "**does NOT hold**")
            + " ("
            + ", ".join(f"{label} {means[label]:.4f}" for label in chain)
            + f"; over the {len(keys)} {runs} runs they all have)"
        )
    return lines


def write_models(options: "ProofBenchOptions", results: Results) -> Path:
    from torchrec_mdr.bench.proof_setup import MODELS

    lines = table_header(options, "Models on generator v2 with every effect planted", "models")
    lines += _table(options, list(MODELS), results, _world_datasets(options, "all"), with_ceiling=True)
    lines += ["", "Learning curves (validation AUC per epoch, world 0): `curves.png`."]
    path = options.out / "models.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_curves(options: "ProofBenchOptions") -> Path:
    """curves.png: validation AUC per epoch of each model of the ``models`` suite (world 0, every seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from torchrec_mdr.bench.proof_setup import MODELS, dataset_name, run_dir

    data = options.work / dataset_name(options, 0, "all")
    spec = dataset_spec(options, data.name)
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for v in MODELS:
        for seed in range(pooled_seeds(options)):
            metrics_file = run_dir(options, v, data, seed) / "metrics.json"
            if not metrics_file.exists():
                continue
            history = [h for h in json.loads(metrics_file.read_text()).get("history", []) if "auc" in h]
            axis.plot(
                [h["epoch"] + 1 for h in history],
                [h["auc"] for h in history],
                color=f"C{MODELS.index(v)}",
                alpha=0.7,
                label=v.label if seed == 0 else None,
            )
    if spec is not None:
        axis.axhline(spec.splits["valid"].oracle_auc["all"], color="black", linestyle="--", label="oracle (valid)")
        axis.axhline(
            spec.splits["valid"].ceilings["main"]["all"], color="grey", linestyle=":", label="main-effects ceiling"
        )
    axis.set_xlabel("epoch")
    axis.set_ylabel("validation AUC")
    axis.set_title("Generator v2, every effect planted (world 0)", fontsize=10)
    axis.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    path = options.out / "curves.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write_scaling(options: "ProofBenchOptions", results: Results) -> Path:
    """scaling.md: test AUC per model and row count (world 0, every effect planted, first seed)."""
    from dataclasses import replace

    from torchrec_mdr.bench.proof_setup import SCALING_LABELS, dataset_name

    header = ["rows", *SCALING_LABELS, "ADS − DIN", "SFPNet − DNN", "main ceiling", "oracle", "best epochs"]
    lines = table_header(options, "Scaling: the same world with more rows", "scaling")
    lines += [
        f"World 0, every effect planted, seed {options.first_seed}; rows over train / valid / test 80/10/10.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for rows in options.scale_rows:
        name = dataset_name(replace(options, rows=rows), 0, "all")
        runs = {label: results.get((label, name, options.first_seed)) for label in SCALING_LABELS}
        spec = dataset_spec(options, name)
        if spec is None or not any(runs.values()):
            continue
        auc = {label: r["auc"] if r else float("nan") for label, r in runs.items()}
        test = spec.splits["test"]
        epochs = "/".join(str(best_epoch(r)) if r else "—" for r in runs.values())
        lines.append(
            f"| {rows:,} | "
            + " | ".join(f"{auc[label]:.4f}" for label in SCALING_LABELS)
            + f" | {auc['ADS'] - auc['DIN']:+.4f} | {auc['SFPNet'] - auc['DNN']:+.4f}"
            + f" | {test.ceilings['main']['all']:.4f} | {test.oracle_auc['all']:.4f} | {epochs} |"
        )
    lines += [
        "",
        "Best epochs in the order of the model columns. One seed per cell: a difference below about "
        "0.003 is within the seed noise measured in `models.md`.",
    ]
    path = options.out / "scaling.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_movielens(options: "ProofBenchOptions", results: Results) -> Path:
    """movielens.md: the models suite's models (and the whole-model options) on MovieLens-100K, paired against
    their bases."""
    from torchrec_mdr.bench.proof_setup import chosen_ablations, movielens_models

    lines = table_header(options, "MovieLens-100K (real data; domains = user age groups)", "movielens")
    lines += [
        "Converted by `mdr data movielens` from the RecBole wheel (click = rating >= 4, history = all earlier "
        "ratings, at most 50; one time cut 80/10/10). ADS and SFPNet get `user_activity` (earlier ratings, "
        "bucketed) as their implicit domain feature, as on the planted data.",
        "",
    ]
    models = movielens_models(options.alternatives)
    lines += _table(options, list(models), results, ["ml-100k"], with_ceiling=False)
    if options.movielens_ablations:
        lines += ["", "## Ablations on MovieLens-100K", ""]
        lines += _table(
            options, chosen_ablations(options.movielens_ablations), results, ["ml-100k"], with_ceiling=False
        )
        lines += _orders(options, results, ["ml-100k"], options.movielens_ablations, runs="seed")
    path = options.out / "movielens.md"
    path.write_text("\n".join(lines) + "\n")
    return path
