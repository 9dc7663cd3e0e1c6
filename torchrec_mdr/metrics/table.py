"""The printed table of a ranking run's ``metrics.json`` (after ``mdr train`` and ``mdr eval``).

One block per task: rows are the domains then ``all``; columns rows, AUC, GAUC, S-GAUC (only when the
metrics have ``sgauc``, i.e. the data has a session column), logloss, and the oracle AUC of synthetic
data (it belongs to the generator's one label, so it is shown beside the first task only). A
single-label run prints one block, as before tasks existed; a run with several labels prints one block
per label of its ``tasks`` section, titled with the label.
"""

from __future__ import annotations


def format_ranking_table(metrics: dict, domain_names: list[str]) -> str:
    """``metrics`` (a ranking run's ``metrics.json``) as text: a title, one block per task, the training line."""
    tasks = metrics.get("tasks") or {None: metrics}
    lines = []
    for index, (label, task_metrics) in enumerate(tasks.items()):
        title = f"\n{metrics['model']} on {metrics['dataset']} ({metrics['split']} split"
        lines.append(title + (f", task {label})" if label is not None else ")"))
        lines += _task_block(task_metrics, domain_names, metrics.get("oracle_auc", {}) if index == 0 else {})
    train = metrics.get("train")
    if train:
        lines.append(
            f"trained {train['steps']} steps in {train['wall_sec']:.1f} s, {train['samples_per_sec']:,.0f} samples/s"
        )
    return "\n".join(lines)


def _task_block(metrics: dict, domain_names: list[str], oracle: dict) -> list[str]:
    """The header and the per-domain and overall rows of one task's metrics."""
    sessions = "sgauc" in metrics  # only runs on data with a session column have S-GAUC

    def values(m: dict) -> str:
        return (
            f"{m['auc']:>9.4f}{m['gauc']:>9.4f}" + (f"{m['sgauc']:>9.4f}" if sessions else "") + f"{m['logloss']:>9.4f}"
        )

    header = (
        f"{'domain':<20}{'rows':>10}{'AUC':>9}{'GAUC':>9}"
        + (f"{'S-GAUC':>9}" if sessions else "")
        + f"{'logloss':>9}"
        + ("  oracle AUC" if oracle else "")
    )
    lines = [header]
    for name in domain_names:
        d = metrics["per_domain"][name]
        line = f"{name:<20}{d['rows']:>10,}{values(d)}"
        lines.append(line + (f"  {oracle[name]:.4f}" if name in oracle else ""))
    line = f"{'all':<20}{metrics['rows']:>10,}{values(metrics)}"
    lines.append(line + (f"  {oracle['all']:.4f}" if "all" in oracle else ""))
    return lines
