"""Side-by-side per-domain AUC of finished runs, with the oracle AUC and AUC Imp. against a base run.

    mdr compare runs/ads runs/din          # the last run is the base of AUC Imp. (ADS paper eq. 14)

When every run has S-GAUC (its data has a session column; SFPNet paper eq. 13), a second table
shows it per domain, with each run's difference to the base in points of S-GAUC.

Runs with several tasks (a ``tasks`` section in metrics.json): when every run has the same tasks, the
tables repeat for each task, titled with its label (the oracle AUC, which belongs to the synthetic
generator's one label, beside the first task only). Otherwise only the top-level metrics — each run's
first task — are compared, as for single-label runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from torchrec_mdr.config import ConfigError
from torchrec_mdr.metrics.ranking import auc_improvement


def load_metrics(run_dir: Path) -> dict:
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        raise ConfigError(f"{path} does not exist: is {run_dir} a finished `mdr train` run?")
    metrics = json.loads(path.read_text())
    if "auc" not in metrics or "per_domain" not in metrics:
        raise ConfigError(f"{path} holds no ranking metrics (auc, per_domain)")
    return metrics


def comparison_table(runs: list[dict], labels: list[str]) -> str:
    """Rows: domains then 'all'; columns: each run's AUC, AUC Imp. of each run vs the last, oracle AUC;
    one such table (and S-GAUC table) per task when every run has the same several tasks."""
    if len(runs) < 2:
        raise ConfigError("compare needs at least two runs (the last one is the base)")
    domains = list(runs[-1]["per_domain"])
    for label, run in zip(labels, runs):
        if list(run["per_domain"]) != domains:
            raise ConfigError(
                f"{label} has domains {list(run['per_domain'])}, the base has {domains}: "
                "runs on different datasets cannot be compared"
            )
    tasks = [list(run.get("tasks", {})) for run in runs]
    if not tasks[0] or any(t != tasks[0] for t in tasks):
        return "\n".join(task_tables(runs, labels, domains))
    lines: list[str] = []
    for index, task in enumerate(tasks[0]):
        views = [{**run["tasks"][task], "oracle_auc": run.get("oracle_auc", {}) if index == 0 else {}} for run in runs]
        lines += ([""] if lines else []) + task_tables(views, labels, domains, task)
    return "\n".join(lines)


def task_tables(runs: list[dict], labels: list[str], domains: list[str], task: str | None = None) -> list[str]:
    """Lines of the AUC table of one task's metrics of each run (and its S-GAUC table when every run has
    S-GAUC); ``task`` names the task in the titles."""
    base_label = labels[-1]
    oracle = runs[-1].get("oracle_auc", {})
    width = max(12, *(len(label) + 2 for label in labels))
    header = f"{'domain':<16}{'rows':>9}" + "".join(f"{label:>{width}}" for label in labels)
    header += "".join(f"{'Imp. ' + label:>{width + 6}}" for label in labels[:-1])
    header += "  oracle AUC" if oracle else ""
    of_task = f" of task {task}" if task is not None else ""
    lines = [f"test AUC{of_task}, AUC Imp. vs {base_label} (ADS eq. 14)", header]

    def row(name: str, pick: Callable[..., dict]) -> str:
        aucs = [pick(run)["auc"] for run in runs]
        line = f"{name:<16}{pick(runs[-1])['rows']:>9,}" + "".join(f"{auc:>{width}.4f}" for auc in aucs)
        line += "".join(f"{auc_improvement(auc, aucs[-1]):>{width + 5}.2f}%" for auc in aucs[:-1])
        return line + (f"  {oracle[name]:.4f}" if name in oracle else "")

    for name in domains:
        lines.append(row(name, lambda run, name=name: run["per_domain"][name]))
    lines.append(row("all", lambda run: run))
    if all("sgauc" in run for run in runs):
        lines += ["", *sgauc_table(runs, labels, domains, width, task)]
    return lines


def sgauc_table(
    runs: list[dict], labels: list[str], domains: list[str], width: int, task: str | None = None
) -> list[str]:
    """Lines of the S-GAUC table: each run's S-GAUC per domain and overall, and its difference to the
    base (the last run) — in S-GAUC points, since eq. 14's ratio to ``AUC - 0.5`` is an AUC convention."""
    base_label = labels[-1]
    header = f"{'domain':<16}{'rows':>9}" + "".join(f"{label:>{width}}" for label in labels)
    header += "".join(f"{'diff ' + label:>{width + 6}}" for label in labels[:-1])
    of_task = f" of task {task}" if task is not None else ""
    lines = [f"test S-GAUC{of_task} (SFPNet eq. 13), difference to {base_label}", header]

    def row(name: str, pick: Callable[..., dict]) -> str:
        values = [pick(run)["sgauc"] for run in runs]
        line = f"{name:<16}{pick(runs[-1])['rows']:>9,}" + "".join(f"{v:>{width}.4f}" for v in values)
        return line + "".join(f"{v - values[-1]:>+{width + 6}.4f}" for v in values[:-1])

    for name in domains:
        lines.append(row(name, lambda run, name=name: run["per_domain"][name]))
    lines.append(row("all", lambda run: run))
    return lines
