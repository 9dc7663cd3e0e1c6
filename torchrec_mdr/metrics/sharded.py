"""Exact ranking metrics of an evaluation pass without gathering every row to every rank.

:class:`ShardedMetrics` gives the same :class:`~torchrec_mdr.metrics.ranking.EvalResult` as
``evaluate_predictions(PredictionBuffer.gather())`` (AUC, logloss, GAUC, S-GAUC, overall and per domain,
per task), but no rank ever holds more than its own rows plus the rows routed to it (about
N / world_size each), and what is reduced across ranks is a fixed-size state:

- **logloss** per (task, domain): the float64 sum of the rows' binary cross-entropy and the row count,
  accumulated batch by batch and all-reduced; overall = the sums over the domains.
- **AUC** per (task, domain), exact: AUC = (C + W) / (P N), P and N the positives and negatives. The
  logits are cut into ``AUC_BINS`` bins by a monotone map (uniform in logit over
  [-``LOGIT_RANGE``, ``LOGIT_RANGE``), the ends clamped into the first and last bin), so a positive
  and a negative in different bins are ordered by their bins: C = sum_b pos_b * sum_{b' < b} neg_b'
  comes from per-(task, domain, label) histograms [T, D + 1, 2, AUC_BINS] accumulated batch by batch
  and all-reduced. W, the pairs inside one bin (ties counting one half), is a Mann-Whitney U per bin:
  each row is sent (``all_to_all``) to the rank that owns its bin (bin % world_size, so neighbouring
  bins, which hold similar row counts, land on different ranks); each rank sums U over its bins and
  only the sums are all-reduced. The overall AUC groups by bin; each domain's by (domain, bin). All
  counts are integers or halves in float64 (exact below 2^53 pairs), so the result is the pairwise
  AUC up to the rounding of one division; the bins only spread the work, they do not approximate.
- **GAUC / S-GAUC** (DIN's GAUC; SFPNet eq. 13): sum_g n_g AUC_g / sum_g n_g over groups with both
  classes. Each row is sent to the rank that owns its group key (a multiplicative hash of the int64
  key, modulo world_size), so each rank holds whole groups; it computes sum n_g AUC_g and sum n_g
  over them (overall by key, per domain by (domain, key), as the direct computation masks a domain
  and then groups) and only these sums are all-reduced. S-GAUC routes by the session key the same way.

At world size 1 nothing is routed or reduced. Rows whose domain is outside [0, num_domains) count
in the overall metrics only (the direct computation's per-domain masks also leave them out).

Why not a library metric: torchrec.metrics' AUC keeps every prediction in list states (concatenated
and gathered at sync, so its memory grows with rows x world size); torchmetrics' BinaryAUROC with
``thresholds=k`` is binned on a linear probability grid (confusion counts at k thresholds), an
approximation whose error the within-bin pairs above would still have to bound. The histogram here
is that binned state, made exact by the within-bin U.

Choices: scores are the logits (AUC is invariant to the monotone sigmoid; logits keep resolution
where probabilities saturate). ``AUC_BINS`` = 2^14 over [-20, 20) (bins of width ~0.0024): the
reduced state per task and domain is 2 x 2^14 float64 (256 KiB), and a rank's share of the
within-bin work stays balanced unless most rows share a few bins (e.g. a constant model; still exact).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from torchrec_mdr.metrics.ranking import EvalResult, mann_whitney_sorted

AUC_BINS = 1 << 14
LOGIT_RANGE = 20.0
_HASH = -7046029254386353131  # 0x9E3779B97F4A7C15 (Fibonacci hashing) as a signed int64
_SUMS = ("auc_u", "gauc", "gauc_rows", "sgauc", "sgauc_rows")  # per (task, domain slot or overall)


def auc_bins(logits: torch.Tensor) -> torch.Tensor:
    """[...] float64 logits -> [...] int64 bins in [0, AUC_BINS), non-decreasing in the logit."""
    width = 2 * LOGIT_RANGE / AUC_BINS
    return torch.floor((logits + LOGIT_RANGE) / width).clamp(0, AUC_BINS - 1).long()


def key_owner(keys: torch.Tensor, world_size: int) -> torch.Tensor:
    """[N] int64 keys -> [N] owning rank in [0, world_size): high bits of key x golden ratio."""
    return torch.remainder((keys * _HASH) >> 32, world_size)


class ShardedMetrics:
    """Accumulates one evaluation pass (:meth:`add` per batch) and computes its metrics (:meth:`compute`).

    Per rank it holds the reduced state (histograms and loss sums, constant in rows; see
    :meth:`state_numel`) and its own rows ([B, 2T + 1] float64: logits, labels, domain slot; [B, 2]
    int64: group, session), which :meth:`compute` routes by bin and by key.
    """

    def __init__(self, num_domains: int, num_tasks: int, sessions: bool = False) -> None:
        self.num_domains, self.num_tasks, self.sessions = num_domains, num_tasks, sessions
        slots = num_domains + 1  # the last slot: rows whose domain is out of range
        self.histogram = torch.zeros(num_tasks, slots, 2, AUC_BINS, dtype=torch.float64)
        self.loss = torch.zeros(num_tasks, slots, 2, dtype=torch.float64)  # BCE sum, rows
        self.values: list[torch.Tensor] = []
        self.keys: list[torch.Tensor] = []

    def state_numel(self) -> int:
        """Elements of the state that is reduced across ranks: T (D + 1) (2 AUC_BINS + 2), whatever the rows."""
        return self.histogram.numel() + self.loss.numel()

    def add(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        domain: torch.Tensor,
        group: torch.Tensor,
        session: torch.Tensor | None = None,
    ) -> None:
        """One batch: logits / labels [B, T] (labels 0/1), domain / group / session [B] (session None: zeros)."""
        if logits.shape != labels.shape or logits.dim() != 2 or logits.shape[1] != self.num_tasks:
            raise ValueError(
                f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} must both be [B, {self.num_tasks}]"
            )
        logits, labels = logits.detach().double().cpu(), labels.detach().double().cpu()
        slot = domain.detach().long().cpu()
        slot = torch.where((slot >= 0) & (slot < self.num_domains), slot, self.num_domains)
        tasks = torch.arange(self.num_tasks)[None, :] * (self.num_domains + 1) + slot[:, None]  # [B, T]
        cell = (tasks * 2 + (labels > 0.5).long()) * AUC_BINS + auc_bins(logits)
        self.histogram.view(-1).index_add_(0, cell.reshape(-1), torch.ones(cell.numel(), dtype=torch.float64))
        bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        self.loss.view(-1).index_add_(0, (tasks * 2).reshape(-1), bce.reshape(-1))
        self.loss.view(-1).index_add_(0, (tasks * 2 + 1).reshape(-1), torch.ones(bce.numel(), dtype=torch.float64))
        if session is None:
            session = torch.zeros_like(group)
        self.values.append(torch.cat([logits, labels, slot.double()[:, None]], dim=1))
        self.keys.append(torch.stack([group.detach().long().cpu(), session.detach().long().cpu()], dim=1))

    def compute(
        self, domain_names: list[str], label_names: list[str] | None = None, device: torch.device | None = None
    ) -> EvalResult:
        """The pass's metrics, identical on every rank (a collective: every rank must call it, once per
        pass: it frees the rows); ``device`` carries the collectives (GPU for nccl). ``label_names``:
        default one task."""
        names = list(label_names) if label_names else [f"task{t}" for t in range(self.num_tasks)]
        if len(names) != self.num_tasks or len(domain_names) != self.num_domains:
            raise ValueError(
                f"{len(names)} labels and {len(domain_names)} domains for metrics of "
                f"{self.num_tasks} tasks and {self.num_domains} domains"
            )
        tasks, slots = self.num_tasks, self.num_domains + 1
        values = torch.cat(self.values) if self.values else torch.zeros(0, 2 * tasks + 1, dtype=torch.float64)
        keys = torch.cat(self.keys) if self.keys else torch.zeros(0, 2, dtype=torch.int64)
        self.values, self.keys = [values], [keys]  # the batches' pieces are freed
        sums = torch.zeros(tasks, slots + 1, len(_SUMS), dtype=torch.float64)  # slot D + 1: overall
        for t in range(tasks):  # exact within-bin pairs, on the rank that owns the bin
            scores, labels, slot = _route(
                [values[:, t], values[:, tasks + t], values[:, 2 * tasks]], auc_bins(values[:, t]), device, hashed=False
            )
            sums[t, :, 0] += torch.from_numpy(
                _group_sums(
                    scores.numpy(), labels.numpy(), slot.long().numpy(), auc_bins(scores).numpy(), slots, by_score=True
                )[:, 0]
            )
        columns = [0, 1] if self.sessions else [0]
        for column in columns:  # GAUC (users), S-GAUC (sessions)
            routed, key = _route([values, keys[:, column]], keys[:, column], device, hashed=True)
            if column == columns[-1]:  # the local rows are not needed any more: free them before the sorts
                self.values, self.keys = [], []
                del values, keys
            code = np.unique(key.numpy(), return_inverse=True)[1].reshape(-1)
            row_slot = routed[:, 2 * tasks].long().numpy()
            for t in range(tasks):
                group = _group_sums(routed[:, t].numpy(), routed[:, tasks + t].numpy(), row_slot, code, slots)
                sums[t, :, 1 + 2 * column : 3 + 2 * column] += torch.from_numpy(group[:, 1:])
            del routed, key, code, row_slot
        state = torch.cat([self.histogram.reshape(-1), self.loss.reshape(-1), sums.reshape(-1)])
        state = _all_reduce(state, device)
        histogram = state[: self.histogram.numel()].view_as(self.histogram).numpy()
        loss = state[self.histogram.numel() : self.state_numel()].view_as(self.loss).numpy()
        reduced_sums = state[self.state_numel() :].view_as(sums).numpy()
        results = [self._task_result(histogram[t], loss[t], reduced_sums[t], domain_names) for t in range(tasks)]
        if tasks == 1:
            return results[0]
        return replace(results[0], tasks=dict(zip(names, results)))

    def _task_result(
        self, histogram: np.ndarray, loss: np.ndarray, sums: np.ndarray, domain_names: list[str]
    ) -> EvalResult:
        """One task from its reduced state: histogram [D + 1, 2, BINS], loss [D + 1, 2], sums [D + 2, 5]."""
        column = {name: i for i, name in enumerate(_SUMS)}

        def metrics(hist: np.ndarray, bce: np.ndarray, row: np.ndarray) -> dict[str, float]:
            out = {
                "auc": _binned_auc(hist, row[column["auc_u"]]),
                "logloss": float(bce[0] / bce[1]) if bce[1] > 0 else float("nan"),
                "gauc": _ratio(row[column["gauc"]], row[column["gauc_rows"]]),
            }
            if self.sessions:
                out["sgauc"] = _ratio(row[column["sgauc"]], row[column["sgauc_rows"]])
            return {**out, "rows": int(bce[1])}

        overall = metrics(histogram.sum(axis=0), loss.sum(axis=0), sums[-1])
        result = EvalResult(
            overall["auc"], overall["logloss"], overall["gauc"], int(overall["rows"]), sgauc=overall.get("sgauc")
        )
        for d, name in enumerate(domain_names):
            result.per_domain[name] = metrics(histogram[d], loss[d], sums[d])
        return result


def _binned_auc(hist: np.ndarray, within: float) -> float:
    """AUC from a [2, BINS] (negatives, positives) histogram and the within-bin U sum."""
    neg, pos = hist[0], hist[1]
    total_pos, total_neg = pos.sum(), neg.sum()
    if total_pos == 0 or total_neg == 0:
        return float("nan")
    below = np.cumsum(neg) - neg  # negatives in lower bins
    return float(((pos * below).sum() + within) / (total_pos * total_neg))


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator > 0 else float("nan")


def _group_sums(
    scores: np.ndarray, labels: np.ndarray, slot: np.ndarray, group: np.ndarray, slots: int, by_score: bool = False
) -> np.ndarray:
    """[slots + 1, 3] sums over this rank's groups of rows [n] (score, label, slot, group code >= 0):
    sum U_g, sum n_g AUC_g and sum n_g over groups with both classes; per slot (groups of equal
    (slot, group)) in the first ``slots`` rows, overall (groups of equal group) in the last.
    ``by_score``: ``group`` is non-decreasing in the score (the AUC bins), so the score order is the
    (group, score) order. Two sorts (score; (group, score) as one int64) and a radix sort by slot."""
    out = np.zeros((slots + 1, 3))
    n = len(scores)
    if n == 0:
        return out
    order = np.argsort(scores)
    ordered = scores[order]
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.cumsum(np.r_[True, ordered[1:] != ordered[:-1]]) - 1  # dense rank of the score
    del ordered
    if not by_score:
        order = np.argsort(group * (int(rank.max()) + 1) + rank)  # by (group, score); < n^2, no overflow
    narrow = slot.astype(np.int16) if slots < 2**15 else slot
    by_slot = order[np.argsort(narrow[order], kind="stable")]  # (slot, group, score): radix for int16
    for rows, per_slot in ((order, False), (by_slot, True)):
        g, r = group[rows], rank[rows]
        group_start = np.r_[True, g[1:] != g[:-1]]
        if per_slot:
            s = slot[rows]
            group_start[1:] |= s[1:] != s[:-1]
        tie_start = group_start.copy()
        tie_start[1:] |= r[1:] != r[:-1]
        del g, r
        starts, size, pos, u = mann_whitney_sorted(labels[rows], group_start, tie_start)
        index = slot[rows[starts]] if per_slot else np.full(len(starts), slots)
        valid = (pos > 0) & (size > pos)
        for column, weights in enumerate(
            (u, np.where(valid, size * u / np.maximum(pos * (size - pos), 1), 0.0), np.where(valid, size, 0.0))
        ):  # U; n_g AUC_g; n_g
            out[:, column] += np.bincount(index, weights=weights, minlength=slots + 1)
    return out


def _world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def _route(
    tensors: list[torch.Tensor], keys: torch.Tensor, device: torch.device | None, hashed: bool
) -> list[torch.Tensor]:
    """Send each row of ``tensors`` (equal length N) to the rank that owns its key in ``keys`` [N] int64
    (``hashed``: :func:`key_owner`, else key % world_size); returns the rows this rank received from
    every rank (rank order). World size 1: ``tensors``."""
    world = _world_size()
    if world == 1:
        return tensors
    device = device or torch.device("cpu")
    owner = key_owner(keys, world) if hashed else torch.remainder(keys, world)
    order = torch.argsort(owner, stable=True)
    send = torch.bincount(owner, minlength=world).to(device)
    receive = torch.empty_like(send)
    dist.all_to_all_single(receive, send)
    send_sizes, receive_sizes = send.tolist(), receive.tolist()
    out = []
    for tensor in tensors:
        received = torch.empty(sum(receive_sizes), *tensor.shape[1:], dtype=tensor.dtype, device=device)
        dist.all_to_all_single(received, tensor[order].to(device), receive_sizes, send_sizes)
        out.append(received.cpu())
    return out


def _all_reduce(state: torch.Tensor, device: torch.device | None) -> torch.Tensor:
    if _world_size() == 1:
        return state
    reduced = state.to(device or torch.device("cpu"))
    dist.all_reduce(reduced)
    return reduced.cpu()
