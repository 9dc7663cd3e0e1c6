"""Ranking metrics over a whole evaluation pass, identical on every rank.

The definitions and their direct computation on gathered rows: AUC and logloss (torchmetrics), per
domain, GAUC (impression-weighted mean of per-group AUCs over groups with both classes, as in the DIN
paper), S-GAUC and, for the ADS paper's reports, "AUC Imp." (eq. 14). :class:`PredictionBuffer`
gathers every rank's rows to every rank (``all_gather`` of padded tensors); the trainer instead
uses :class:`~torchrec_mdr.metrics.sharded.ShardedMetrics`, which gives the same numbers without
any rank holding every row. The direct path stays as the reference the tests and ``mdr bench eval``
compare it with.

S-GAUC (SFPNet paper, eq. 13) is ``sum_i #impression_i * AUC_i / sum_i #impression_i`` over the
sessions ``i`` of the spec's ``session`` column: the GAUC formula (:func:`gauc`) with sessions as the
groups, so a session with one class only is skipped and tied scores count one half. Per domain it
groups the domain's rows by session (a session that spans domains contributes its rows in each
domain separately). It exists only when the dataset has a session column: :class:`EvalResult`
then holds ``sgauc`` (overall and per domain) and :meth:`EvalResult.to_dict` writes the ``sgauc``
keys; without one ``sgauc`` is None and the keys are absent from ``metrics.json`` (so that runs on
data without sessions, and the tables made from them, show no meaningless column).

Several tasks (a spec with several labels, e.g. Ali-CCP's click and purchase): every metric above is
computed for each task on its own logit column and label column, over the same rows, domains, users
and sessions. The first task's metrics stay at the top level of :class:`EvalResult` (and of
``metrics.json``: early stopping, ``mdr compare`` and the benchmarks read them there); with more than
one label, :attr:`EvalResult.tasks` holds every task's metrics by label name (the first included), and
``to_dict`` writes them under ``tasks``. A single-label run has no ``tasks`` key, so its
``metrics.json`` keeps its shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torchmetrics.functional.classification import binary_auroc


@dataclass
class EvalResult:
    """Metrics of one evaluation pass.

    ``per_domain[name]`` holds ``auc``, ``logloss``, ``gauc``, ``rows`` and, when the dataset has a
    session column, ``sgauc``. ``sgauc`` is None when it has none (NaN when it has one but no
    session holds both classes).
    """

    auc: float
    logloss: float
    gauc: float
    rows: int
    per_domain: dict[str, dict[str, float]] = field(default_factory=dict)
    sgauc: float | None = None
    tasks: dict[str, EvalResult] = field(default_factory=dict)  # by label name; empty for one label

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"auc": self.auc, "logloss": self.logloss, "gauc": self.gauc}
        if self.sgauc is not None:
            out["sgauc"] = self.sgauc
        out = {**out, "rows": self.rows, "per_domain": self.per_domain}
        if self.tasks:
            out["tasks"] = {name: result.to_dict() for name, result in self.tasks.items()}
        return out

    def task(self, name: str | None) -> EvalResult:
        """The metrics of task ``name`` (a label name); None, or the only label: these top-level ones."""
        if name is None or not self.tasks:
            return self
        if name not in self.tasks:
            raise KeyError(f"no task {name!r}; the tasks are {list(self.tasks)}")
        return self.tasks[name]


PREDICTION_COLUMNS = ("logit", "label", "domain", "group", "session")


def prediction_columns(num_tasks: int = 1) -> tuple[str, ...]:
    """The columns of gathered rows with ``num_tasks`` tasks: each task's logit, each task's label,
    then domain, group, session; for one task exactly :data:`PREDICTION_COLUMNS`."""
    if num_tasks == 1:
        return PREDICTION_COLUMNS
    return (
        *(f"logit_{t}" for t in range(num_tasks)),
        *(f"label_{t}" for t in range(num_tasks)),
        "domain",
        "group",
        "session",
    )


class PredictionBuffer:
    """Collects every task's (logit, label) and the row's (domain, group, session) over an evaluation pass.

    Scores travel as float64 and the keys as int64, so any int64 user or session key (hashed ids
    included) stays exact; :meth:`gather` then codes each key column as dense ranks (``0..n-1``,
    equal iff the keys are equal), which float64 holds exactly.
    """

    def __init__(self) -> None:
        self.values: list[torch.Tensor] = []  # [B, 2T + 1] float64: T logits, T labels, domain
        self.keys: list[torch.Tensor] = []  # [B, 2] int64: group, session
        self.num_tasks: int | None = None  # T, set by the first batch

    def add(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        domain: torch.Tensor,
        group: torch.Tensor,
        session: torch.Tensor | None = None,
    ) -> None:
        """One batch: logits / labels [B, T] (every task is kept), domain / group / session [B]
        (``session`` None: zeros, for data without a session column)."""
        if logits.shape != labels.shape or logits.dim() != 2:
            raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} must both be [B, T]")
        if self.num_tasks is None:
            self.num_tasks = int(logits.shape[1])
        elif logits.shape[1] != self.num_tasks:
            raise ValueError(f"a batch with {logits.shape[1]} tasks after batches with {self.num_tasks}")
        if session is None:
            session = torch.zeros_like(group)
        self.values.append(torch.cat([logits.double(), labels.double(), domain.double()[:, None]], dim=1).cpu())
        self.keys.append(torch.stack([group.long(), session.long()], dim=1).cpu())

    def gather(self, device: torch.device | None = None, num_tasks: int | None = None) -> np.ndarray:
        """[N, 2T + 3] float64 rows of every rank (rank order), columns :func:`prediction_columns` (for one
        task [N, 5], :data:`PREDICTION_COLUMNS`), the group and session columns as dense codes of the keys;
        ``device`` carries the collectives (GPU for nccl). ``num_tasks`` (T) shapes an empty buffer's
        rows: a rank may have no rows of its own (default: this buffer's, else 1)."""
        tasks = num_tasks or self.num_tasks or 1
        if self.num_tasks is not None and tasks != self.num_tasks:
            raise ValueError(f"num_tasks={tasks}, but the buffer holds {self.num_tasks} tasks")
        empty = torch.zeros(0, 2 * tasks + 1, dtype=torch.float64)
        values = _all_gather_rows(torch.cat(self.values) if self.values else empty, device)
        keys = _all_gather_rows(torch.cat(self.keys) if self.keys else torch.zeros(0, 2, dtype=torch.int64), device)
        codes = [np.unique(keys[:, column], return_inverse=True)[1].reshape(-1) for column in range(2)]
        return np.column_stack([values, *codes]).astype(np.float64)


def _all_gather_rows(local: torch.Tensor, device: torch.device | None) -> np.ndarray:
    """Every rank's ``local`` rows, concatenated in rank order (ranks may hold different row counts)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return local.numpy()
    device = device or torch.device("cpu")
    sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([len(local)], device=device))
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros(longest, local.shape[1], dtype=local.dtype, device=device)
    padded[: len(local)] = local.to(device)
    gathered = [torch.zeros_like(padded) for _ in sizes]
    dist.all_gather(gathered, padded)
    return torch.cat([g[: int(s.item())] for g, s in zip(gathered, sizes)]).cpu().numpy()


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    if len(labels) == 0 or labels.min() == labels.max():
        return float("nan")
    return float(binary_auroc(torch.from_numpy(scores), torch.from_numpy(labels).long()))


def logloss(logits: np.ndarray, labels: np.ndarray) -> float:
    if len(labels) == 0:
        return float("nan")
    return float(
        torch.nn.functional.binary_cross_entropy_with_logits(torch.from_numpy(logits), torch.from_numpy(labels))
    )


def gauc(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> float:
    """sum_g n_g AUC_g / sum_g n_g over groups with both a positive and a negative (ties averaged).

    GAUC with users as ``groups``; S-GAUC (SFPNet eq. 13) with sessions as ``groups``.
    """
    if len(scores) == 0:
        return float("nan")
    _, size, pos, u = group_mann_whitney(scores, labels, (groups,))
    neg = size - pos
    valid = (pos > 0) & (neg > 0)
    if not valid.any():
        return float("nan")
    group_auc = u[valid] / (pos[valid] * neg[valid])
    return float((size[valid] * group_auc).sum() / size[valid].sum())


def group_mann_whitney(
    scores: np.ndarray, labels: np.ndarray, keys: tuple[np.ndarray, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per group of rows with equal ``keys`` (major key first): ``(first, size, pos, u)``.

    ``first`` [G] is the index (into the inputs) of one row of each group, ``size`` and ``pos`` [G] its
    rows and positives (float64), ``u`` [G] the Mann-Whitney U of its positives against its negatives:
    the number of (positive, negative) pairs with the positive scored higher, ties counting one half
    (0 when a group has one class only), so that AUC_g = u / (pos * neg).

    Vectorised: one sort by (keys, score) — of a single int64 code (key codes x score ranks) where the
    product of the distinct counts fits, else ``np.lexsort`` (about twice as slow); tie-averaged ranks
    within each group; U from the positives' rank sums (U = R_pos - pos (pos + 1) / 2).
    """
    if len(scores) == 0:
        empty = np.zeros(0, dtype=np.float64)
        return np.zeros(0, dtype=np.int64), empty, empty, empty
    n = len(scores)
    coded = [np.unique(column, return_inverse=True) for column in (*keys, scores)]
    if math.prod(len(distinct) for distinct, _ in coded) < 2**62:
        code = np.zeros(n, dtype=np.int64)
        for distinct, inverse in coded:  # major key first, the score last
            code = code * len(distinct) + inverse.reshape(-1)
        order = np.argsort(code)  # equal codes are equal (keys, score): their order does not matter
        code = code[order]
        score_count = len(coded[-1][0])
        group_start_flags = np.r_[True, code[1:] // score_count != code[:-1] // score_count]
        tie_start_flags = np.r_[True, code[1:] != code[:-1]]
    else:
        order = np.lexsort((scores, *reversed(keys)))  # lexsort: the last key is the primary one
        group_start_flags = np.ones(n, dtype=bool)
        for key in keys:
            ordered = key[order]
            group_start_flags[1:] |= ordered[1:] != ordered[:-1]
        ordered = scores[order]
        tie_start_flags = group_start_flags | np.r_[True, ordered[1:] != ordered[:-1]]
    del coded
    starts, size, pos, u = mann_whitney_sorted(labels[order], group_start_flags, tie_start_flags)
    return order[starts], size, pos, u


def mann_whitney_sorted(
    labels: np.ndarray, group_start_flags: np.ndarray, tie_start_flags: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(starts, size, pos, u)`` of :func:`group_mann_whitney` from rows already sorted by (group, score):
    ``labels`` [n] in that order, ``group_start_flags`` [n] True where a group begins, ``tie_start_flags``
    [n] True where a group begins or the score changes. ``starts`` [G]: each group's first position."""
    n = len(labels)
    group_starts = np.flatnonzero(group_start_flags)
    group_index = np.cumsum(group_start_flags) - 1
    position = np.arange(n) - group_starts[group_index] + 1.0  # 1-based rank within the group
    del group_index
    tie_starts = np.flatnonzero(tie_start_flags)
    tie_mean = np.add.reduceat(position, tie_starts) / np.diff(np.r_[tie_starts, n])
    del position
    ranks = tie_mean[np.cumsum(tie_start_flags) - 1]
    size = np.diff(np.r_[group_starts, n]).astype(np.float64)
    pos = np.add.reduceat(labels, group_starts).astype(np.float64)
    u = np.add.reduceat(ranks * labels, group_starts) - pos * (pos + 1) / 2
    return group_starts, size, pos, u


def evaluate_predictions(
    rows: np.ndarray, domain_names: list[str], sessions: bool = False, label_names: list[str] | None = None
) -> EvalResult:
    """Metrics of gathered rows (columns :func:`prediction_columns` of ``len(label_names)`` tasks; the
    session column may be absent when ``sessions`` is False).

    ``sessions``: whether the dataset has a session column (``spec.session_column is not None``);
    only then is S-GAUC computed. It is a flag, not a guess from the values: an all-zero session
    column is one big session, not a missing one. ``label_names``: the spec's labels (default: one
    task); with more than one, the result's top level is the first task's and
    :attr:`EvalResult.tasks` holds each task's metrics by label name.
    """
    names = list(label_names) if label_names else ["task0"]
    tasks = len(names)
    columns = prediction_columns(tasks)
    if rows.shape[1] not in (len(columns), len(columns) - 1):
        raise ValueError(
            f"rows have {rows.shape[1]} columns; {tasks} task(s) need {list(columns)} "
            f"(the session column may be left out)"
        )
    if sessions and rows.shape[1] < len(columns):
        raise ValueError(
            f"S-GAUC needs the session column: rows have {rows.shape[1]} columns, expected {list(columns)}"
        )
    domains, groups = rows[:, 2 * tasks].astype(np.int64), rows[:, 2 * tasks + 1]
    session_ids = rows[:, 2 * tasks + 2] if sessions else None
    results = [
        _task_metrics(rows[:, t], rows[:, tasks + t], domains, groups, session_ids, domain_names) for t in range(tasks)
    ]
    if tasks == 1:
        return results[0]
    return replace(results[0], tasks=dict(zip(names, results)))  # tasks[name]s hold no tasks of their own


def _task_metrics(
    logits: np.ndarray,
    labels: np.ndarray,
    domains: np.ndarray,
    groups: np.ndarray,
    session_ids: np.ndarray | None,
    domain_names: list[str],
) -> EvalResult:
    """One task's AUC, logloss, GAUC (and S-GAUC with ``session_ids``), overall and per domain."""
    result = EvalResult(
        auc(logits, labels),
        logloss(logits, labels),
        gauc(logits, labels, groups),
        len(logits),
        sgauc=gauc(logits, labels, session_ids) if session_ids is not None else None,
    )
    for d, name in enumerate(domain_names):
        mask = domains == d
        values = {
            "auc": auc(logits[mask], labels[mask]),
            "logloss": logloss(logits[mask], labels[mask]),
            "gauc": gauc(logits[mask], labels[mask], groups[mask]),
        }
        if session_ids is not None:
            values["sgauc"] = gauc(logits[mask], labels[mask], session_ids[mask])
        result.per_domain[name] = {**values, "rows": int(mask.sum())}
    return result


def auc_improvement(model_auc: float, base_auc: float) -> float:
    """ADS paper eq. 14: ((AUC_model - 0.5) / (AUC_base - 0.5) - 1) x 100 %."""
    return ((model_auc - 0.5) / (base_auc - 0.5) - 1.0) * 100.0
