"""Retrieval metrics over a whole evaluation pass, identical on every rank: Recall@K and HitRate@K.

Every positive row (first label == 1) of the split is one retrieval request: its user vector
(computed from that row's context: domain, behaviour sequence, user features), the item it was
positive on, its domain and its user (the group id). Rows are gathered from all ranks, then:

* **candidate pool** = the distinct items among the split's positive rows (by ``retrieval.item_key``),
  each with the item vector of its first row (rank order, then row order; an item's vector depends
  only on its item features, which a clean dataset repeats identically on every row). The full
  corpus would need every item's features, which the dataset stores only per row. One pool for all
  domains: the item corpus is shared.
* **HitRate@K** = the share of positive rows whose own item is among the K pool items of highest
  ``<u, v>`` for that row.
* **Recall@K** = the mean over users of the user's recall, where a user's recall is the mean over
  the user's positive rows ``r`` of ``|top-K(r) ∩ P| / |P|`` and ``P`` is the set of distinct items the
  user was positive on. Per domain, both restrict the rows to the domain and ``P`` to the user's
  positive items *in that domain*. With one positive row per user, Recall@K = HitRate@K.
* nothing is excluded from a ranking (not the user's other positives, not items of other domains).
* K above the pool size is capped at the pool size (the key keeps the configured K; metrics carry
  ``pool_size``). Ties in score are broken arbitrarily by ``torch.topk``.

Vectorised: scores in chunks of rows (``chunk_elements`` scores at a time), ``torch.topk`` once per
chunk at the largest K, set membership by ``torch.isin`` on (user, item) keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist


@dataclass
class RetrievalResult:
    recall: dict[int, float]
    hitrate: dict[int, float]
    rows: int  # positive rows (retrieval requests)
    users: int
    pool_size: int
    per_domain: dict[str, dict[str, float]] = field(default_factory=dict)
    model: str | None = None  # the model that produced it (``metrics.json``'s "model")

    def headline(self) -> dict[str, str]:
        """A short progress-bar summary: recall at the smallest K."""
        k = min(self.recall)
        return {f"recall@{k}": f"{self.recall[k]:.4f}"}

    def to_dict(self) -> dict:
        out: dict = {}
        if self.model is not None:
            out["model"] = self.model
        out["task"] = "retrieval"
        out.update({f"recall@{k}": v for k, v in self.recall.items()})
        out.update({f"hitrate@{k}": v for k, v in self.hitrate.items()})
        out.update({"rows": self.rows, "users": self.users, "pool_size": self.pool_size, "per_domain": self.per_domain})
        return out


class RetrievalBuffer:
    """Collects (user vector, item vector, item id, domain, group) of the positive rows of an evaluation pass."""

    def __init__(self) -> None:
        self.vectors: list[torch.Tensor] = []
        self.keys: list[torch.Tensor] = []

    def add(
        self,
        user: torch.Tensor,
        item: torch.Tensor,
        item_ids: torch.Tensor,
        positive: torch.Tensor,
        domain: torch.Tensor,
        group: torch.Tensor,
    ) -> None:
        """Keep the rows with ``positive`` [B] bool of user, item [B, E] and item_ids, domain, group [B]."""
        self.vectors.append(torch.cat([user, item], dim=1)[positive].float().cpu())
        self.keys.append(torch.stack([item_ids.long(), domain.long(), group.long()], dim=1)[positive].cpu())

    def gather(
        self, device: torch.device | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(user [N, E], item [N, E], item_ids [N], domain [N], group [N]) of every rank (rank order), on
        ``device`` (which also carries the collectives: GPU for nccl)."""
        device = device or torch.device("cpu")
        vectors = torch.cat(self.vectors) if self.vectors else torch.zeros(0, 0)
        keys = torch.cat(self.keys) if self.keys else torch.zeros(0, 3, dtype=torch.int64)
        vectors, keys = vectors.to(device), keys.to(device)
        if dist.is_initialized() and dist.get_world_size() > 1:
            vectors, keys = _all_gather_rows(vectors, device), _all_gather_rows(keys, device)
        width = vectors.shape[1] // 2
        return vectors[:, :width], vectors[:, width:], keys[:, 0], keys[:, 1], keys[:, 2]


def _all_gather_rows(local: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Concatenate every rank's [n_r, W] rows (rank order); ranks may hold 0 rows (then W may be 0)."""
    world = dist.get_world_size()
    shape = torch.tensor([local.shape[0], local.shape[1]], device=device)
    shapes = [torch.zeros_like(shape) for _ in range(world)]
    dist.all_gather(shapes, shape)
    width = int(max(int(s[1]) for s in shapes))
    longest = int(max(int(s[0]) for s in shapes))
    padded = torch.zeros(longest, width, dtype=local.dtype, device=device)
    if local.numel():
        padded[: local.shape[0]] = local
    gathered = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded)
    return torch.cat([g[: int(s[0])] for g, s in zip(gathered, shapes)])


def retrieval_metrics(
    user: torch.Tensor,
    item: torch.Tensor,
    item_ids: torch.Tensor,
    domain: torch.Tensor,
    group: torch.Tensor,
    domain_names: list[str],
    top_k: list[int],
    chunk_elements: int = 1 << 24,
) -> RetrievalResult:
    """Recall@K and HitRate@K, overall and per domain (see the module docstring for the definitions).

    Shapes: user, item [N, E]; item_ids, domain, group [N] (the positive rows).
    """
    ks = sorted(set(int(k) for k in top_k))
    rows = int(user.shape[0])
    nan = float("nan")
    if rows == 0:
        empty = {
            name: {**{f"recall@{k}": nan for k in ks}, **{f"hitrate@{k}": nan for k in ks}, "rows": 0, "users": 0}
            for name in domain_names
        }
        return RetrievalResult({k: nan for k in ks}, {k: nan for k in ks}, 0, 0, 0, empty)
    device = user.device
    num_domains = len(domain_names)
    pool_ids, target = torch.unique(item_ids, return_inverse=True)  # target: each row's pool index
    pool = int(pool_ids.shape[0])
    first = torch.full((pool,), rows, dtype=torch.long, device=device).scatter_reduce(
        0, target, torch.arange(rows, device=device), reduce="amin"
    )
    pool_vectors = item[first].float()
    users, user_index = torch.unique(group, return_inverse=True)
    num_users = int(users.shape[0])
    pair_index = user_index * num_domains + domain.long()  # (user, domain)
    # the sets P: keys user * pool + item (overall) and (user, domain) * pool + item (per domain)
    all_keys = torch.unique(user_index * pool + target)
    domain_keys = torch.unique(pair_index * pool + target)
    all_sizes = torch.bincount(all_keys // pool, minlength=num_users).double()
    pair_sizes = torch.bincount(domain_keys // pool, minlength=num_users * num_domains).double()

    k_max = min(ks[-1], pool)
    capped = {k: min(k, pool) for k in ks}
    hits = torch.zeros(rows, len(ks), dtype=torch.float64, device=device)  # [N, |K|]
    found_all = torch.zeros_like(hits)  # |top-K ∩ P| per row
    found_domain = torch.zeros_like(hits)
    columns = torch.tensor([capped[k] - 1 for k in ks], device=device)
    chunk = max(1, chunk_elements // max(pool, 1))
    for start in range(0, rows, chunk):
        stop = min(start + chunk, rows)
        top = (user[start:stop].float() @ pool_vectors.T).topk(k_max, dim=1).indices  # [c, k_max]
        own = (top == target[start:stop, None]).cumsum(1).clamp_max(1)
        hits[start:stop] = own.index_select(1, columns).double()
        in_all = torch.isin(user_index[start:stop, None] * pool + top, all_keys).cumsum(1)
        found_all[start:stop] = in_all.index_select(1, columns).double()
        in_domain = torch.isin(pair_index[start:stop, None] * pool + top, domain_keys).cumsum(1)
        found_domain[start:stop] = in_domain.index_select(1, columns).double()
    recall_all = found_all / all_sizes[user_index, None]  # [N, |K|] per-row recall against P(user)
    recall_domain = found_domain / pair_sizes[pair_index, None]  # against P(user, domain)

    def per_group_mean(values: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
        """Mean over groups (present in ``index``) of the mean over each group's rows: [N, |K|] -> [|K|]."""
        sums = torch.zeros(size, values.shape[1], dtype=values.dtype, device=device).index_add_(0, index, values)
        counts = torch.bincount(index, minlength=size)
        present = counts > 0
        return (sums[present] / counts[present, None]).mean(0)

    recall = per_group_mean(recall_all, user_index, num_users)
    hitrate = hits.mean(0)
    result = RetrievalResult(
        {k: float(recall[i]) for i, k in enumerate(ks)},
        {k: float(hitrate[i]) for i, k in enumerate(ks)},
        rows,
        num_users,
        pool,
    )
    for d, name in enumerate(domain_names):
        mask = domain == d
        count = int(mask.sum())
        if count == 0:
            values = {**{f"recall@{k}": nan for k in ks}, **{f"hitrate@{k}": nan for k in ks}}
            result.per_domain[name] = {**values, "rows": 0, "users": 0}
            continue
        d_recall = per_group_mean(recall_domain[mask], pair_index[mask], num_users * num_domains)
        d_hit = hits[mask].mean(0)
        result.per_domain[name] = {
            **{f"recall@{k}": float(d_recall[i]) for i, k in enumerate(ks)},
            **{f"hitrate@{k}": float(d_hit[i]) for i, k in enumerate(ks)},
            "rows": count,
            "users": int(torch.unique(user_index[mask]).shape[0]),
        }
    return result


def format_retrieval_table(metrics: dict, domain_names: list[str]) -> str:
    """The per-domain table of a retrieval run: rows, users, Recall@K and HitRate@K."""
    ks = sorted(int(key.split("@")[1]) for key in metrics if key.startswith("recall@"))
    header = f"{'domain':<20}{'rows':>9}{'users':>8}" + "".join(f"{'R@' + str(k):>9}" for k in ks)
    header += "".join(f"{'HR@' + str(k):>9}" for k in ks)
    split = f" ({metrics['split']} split)" if "split" in metrics else ""
    lines = [
        f"\n{metrics.get('model', 'retrieval')} on {metrics.get('dataset', '?')}{split}: Recall@K and "
        f"HitRate@K over a pool of {metrics.get('pool_size', 0):,} items",
        header,
    ]

    def line(name: str, values: dict) -> str:
        text = f"{name:<20}{values.get('rows', 0):>9,}{values.get('users', 0):>8,}"
        text += "".join(f"{values[f'recall@{k}']:>9.4f}" for k in ks)
        return text + "".join(f"{values[f'hitrate@{k}']:>9.4f}" for k in ks)

    for name in domain_names:
        if name in metrics.get("per_domain", {}):
            lines.append(line(name, metrics["per_domain"][name]))
    lines.append(line("all", metrics))
    train = metrics.get("train")
    if train:
        lines.append(
            f"trained {train['steps']} steps in {train['wall_sec']:.1f} s, {train['samples_per_sec']:,.0f} samples/s"
        )
    return "\n".join(lines)
