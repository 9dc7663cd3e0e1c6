"""Ranking metrics over a whole evaluation pass, identical on every rank.

Predictions are gathered from all ranks (``all_gather`` of padded tensors), then computed once:
AUC and logloss (torchmetrics), per domain, GAUC (impression-weighted mean of per-group AUCs over
groups with both classes, as in the DIN paper) and, for the ADS paper's reports, "AUC Imp."
(eq. 14).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from torchmetrics.functional.classification import binary_auroc


@dataclass
class EvalResult:
    auc: float
    logloss: float
    gauc: float
    rows: int
    per_domain: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"auc": self.auc, "logloss": self.logloss, "gauc": self.gauc, "rows": self.rows,
                "per_domain": self.per_domain}


class PredictionBuffer:
    """Collects (logit, label, domain, group) of the first task over an evaluation pass."""

    def __init__(self) -> None:
        self.parts: list[torch.Tensor] = []

    def add(self, logits: torch.Tensor, labels: torch.Tensor, domain: torch.Tensor, group: torch.Tensor) -> None:
        self.parts.append(torch.stack([logits[:, 0].double(), labels[:, 0].double(), domain.double(),
                                       group.double()], dim=1).cpu())

    def gather(self, device: torch.device | None = None) -> np.ndarray:
        """[N, 4] float64 rows of every rank (rank order); ``device`` carries the collectives (GPU for nccl)."""
        local = torch.cat(self.parts) if self.parts else torch.zeros(0, 4, dtype=torch.float64)
        if not dist.is_initialized() or dist.get_world_size() == 1:
            return local.numpy()
        device = device or torch.device("cpu")
        sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(dist.get_world_size())]
        dist.all_gather(sizes, torch.tensor([len(local)], device=device))
        longest = int(max(s.item() for s in sizes))
        padded = torch.zeros(longest, 4, dtype=torch.float64, device=device)
        padded[:len(local)] = local.to(device)
        gathered = [torch.zeros_like(padded) for _ in sizes]
        dist.all_gather(gathered, padded)
        return torch.cat([g[:int(s.item())] for g, s in zip(gathered, sizes)]).cpu().numpy()


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    if len(labels) == 0 or labels.min() == labels.max():
        return float("nan")
    return float(binary_auroc(torch.from_numpy(scores), torch.from_numpy(labels).long()))


def logloss(logits: np.ndarray, labels: np.ndarray) -> float:
    if len(labels) == 0:
        return float("nan")
    return float(torch.nn.functional.binary_cross_entropy_with_logits(torch.from_numpy(logits),
                                                                      torch.from_numpy(labels)))


def gauc(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> float:
    """sum_g n_g AUC_g / sum_g n_g over groups with both a positive and a negative (ties averaged).

    Vectorised: one sort by (group, score); tie-averaged ranks within each group; per-group
    Mann-Whitney U from the positives' rank sums.
    """
    if len(scores) == 0:
        return float("nan")
    order = np.lexsort((scores, groups))
    s, y, g = scores[order], labels[order], groups[order]
    n = len(s)
    group_start_flags = np.r_[True, g[1:] != g[:-1]]
    group_starts = np.flatnonzero(group_start_flags)
    group_index = np.cumsum(group_start_flags) - 1
    position = np.arange(n) - group_starts[group_index] + 1.0  # 1-based rank within the group
    tie_start_flags = group_start_flags | np.r_[True, s[1:] != s[:-1]]
    tie_starts = np.flatnonzero(tie_start_flags)
    tie_index = np.cumsum(tie_start_flags) - 1
    tie_mean = np.add.reduceat(position, tie_starts) / np.diff(np.r_[tie_starts, n])
    ranks = tie_mean[tie_index]
    size = np.diff(np.r_[group_starts, n]).astype(np.float64)
    pos = np.add.reduceat(y, group_starts)
    neg = size - pos
    rank_sum = np.add.reduceat(ranks * y, group_starts)
    valid = (pos > 0) & (neg > 0)
    if not valid.any():
        return float("nan")
    group_auc = (rank_sum[valid] - pos[valid] * (pos[valid] + 1) / 2) / (pos[valid] * neg[valid])
    return float((size[valid] * group_auc).sum() / size[valid].sum())


def evaluate_predictions(rows: np.ndarray, domain_names: list[str]) -> EvalResult:
    logits, labels, domains, groups = rows[:, 0], rows[:, 1], rows[:, 2].astype(np.int64), rows[:, 3]
    result = EvalResult(auc(logits, labels), logloss(logits, labels), gauc(logits, labels, groups), len(rows))
    for d, name in enumerate(domain_names):
        mask = domains == d
        result.per_domain[name] = {"auc": auc(logits[mask], labels[mask]),
                                   "logloss": logloss(logits[mask], labels[mask]),
                                   "gauc": gauc(logits[mask], labels[mask], groups[mask]),
                                   "rows": int(mask.sum())}
    return result


def auc_improvement(model_auc: float, base_auc: float) -> float:
    """ADS paper eq. 14: ((AUC_model - 0.5) / (AUC_base - 0.5) - 1) x 100 %."""
    return ((model_auc - 0.5) / (base_auc - 0.5) - 1.0) * 100.0
