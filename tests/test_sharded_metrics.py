"""ShardedMetrics: the same metrics as the direct computation on gathered rows (exact AUC, GAUC,
S-GAUC, logloss per domain and task), at 1 and 2 ranks (gloo), with a reduced state whose size does not
depend on the rows and rows routed so that no rank receives everyone's."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from multiprocess import spawn
from test_metrics import pairwise_auc, per_group_auc, reference_logloss
from torchrec_mdr.metrics.ranking import PredictionBuffer, evaluate_predictions
from torchrec_mdr.metrics.sharded import AUC_BINS, LOGIT_RANGE, ShardedMetrics, _route, auc_bins, key_owner

DOMAINS = ["a", "b", "c"]


def _rows(n: int, tasks: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """Logits rounded to 0.01 (many ties inside one bin and across bins), a few beyond the bin range,
    3 domains plus some rows of an unknown domain (5), users and sessions as sparse int64 keys."""
    rng = np.random.default_rng(seed)
    logits = np.round(rng.normal(0, 2, (n, tasks)), 2)
    logits[:5] = [[25.0] * tasks, [-30.0] * tasks, [21.0] * tasks, [-20.5] * tasks, [0.0] * tasks]
    labels = (rng.random((n, tasks)) < 1 / (1 + np.exp(-logits))).astype(np.float64)
    domain = rng.choice([0, 1, 2, 5], n, p=[0.5, 0.3, 0.15, 0.05])
    users = rng.integers(-(2**62), 2**62, n // 15 + 1)
    group = users[rng.integers(0, len(users), n)]
    session = group * 7 + rng.integers(0, 3, n)  # a few sessions per user; they may span domains
    return {"logits": logits, "labels": labels, "domain": domain, "group": group, "session": session}


def _feed(metrics, rows: dict[str, np.ndarray], index: np.ndarray, batch: int = 97) -> None:
    for start in range(0, len(index), batch):
        part = index[start : start + batch]
        metrics.add(*(torch.from_numpy(rows[k][part]) for k in ("logits", "labels", "domain", "group", "session")))


def _flat(d: dict, prefix: str = "") -> dict[str, float]:
    out = {}
    for key, value in d.items():
        out.update(_flat(value, f"{prefix}{key}/") if isinstance(value, dict) else {prefix + key: value})
    return out


def _direct(rows: dict[str, np.ndarray], sessions: bool = True) -> dict:
    buffer = PredictionBuffer()
    _feed(buffer, rows, np.arange(len(rows["domain"])))
    names = [f"t{t}" for t in range(rows["logits"].shape[1])]
    return evaluate_predictions(buffer.gather(), DOMAINS, sessions=sessions, label_names=names).to_dict()


def _assert_same(got: dict, expected: dict, auc_tol: float) -> None:
    got, expected = _flat(got), _flat(expected)
    assert list(got) == list(expected)  # the same keys in the same order: metrics.json keeps its shape
    for key, value in expected.items():
        tol = auc_tol if key.endswith("/auc") or key == "auc" else 1e-12
        assert got[key] == pytest.approx(value, abs=tol, nan_ok=True), key


def test_bins_are_monotone_and_cover_every_logit():
    logits = torch.tensor(
        [-1e9, -LOGIT_RANGE - 1, -LOGIT_RANGE, -1e-9, 0.0, 1e-9, 3.0, LOGIT_RANGE - 1e-9, 1e9], dtype=torch.float64
    )
    bins = auc_bins(logits)
    assert bins.tolist() == sorted(bins.tolist()) and bins[0] == 0 and bins[-1] == AUC_BINS - 1
    assert bins[1] == bins[2] == 0 and bins[4] == AUC_BINS // 2 and bins[3] == AUC_BINS // 2 - 1
    owners = key_owner(torch.arange(-5000, 5000, 2, dtype=torch.int64) * 1024, 4)  # even, strided keys
    counts = torch.bincount(owners, minlength=4)
    assert owners.min() >= 0 and owners.max() < 4 and counts.min() > 0.2 * len(owners)  # spread over ranks


def test_one_process_equals_pairwise_references():
    """Hand-checkable: AUC over all pairs, GAUC/S-GAUC per group, logloss, per domain."""
    rows = _rows(600, tasks=2)
    metrics = ShardedMetrics(3, 2, sessions=True)
    _feed(metrics, rows, np.arange(600))
    result = metrics.compute(DOMAINS, ["t0", "t1"])
    for t, name in enumerate(["t0", "t1"]):
        task = result.task(name)
        s, y = rows["logits"][:, t], rows["labels"][:, t]
        assert task.auc == pytest.approx(pairwise_auc(s, y), abs=1e-12)
        assert task.gauc == pytest.approx(per_group_auc(s, y, rows["group"]), abs=1e-12)
        assert task.sgauc == pytest.approx(per_group_auc(s, y, rows["session"]), abs=1e-12)
        assert task.logloss == pytest.approx(reference_logloss(s, y), rel=1e-12)
        assert task.rows == 600
        for d, domain in enumerate(DOMAINS):
            mask = rows["domain"] == d
            values = task.per_domain[domain]
            assert values["auc"] == pytest.approx(pairwise_auc(s[mask], y[mask]), abs=1e-12)
            assert values["gauc"] == pytest.approx(per_group_auc(s[mask], y[mask], rows["group"][mask]), abs=1e-12)
            assert values["rows"] == mask.sum()
    assert result.auc == result.tasks["t0"].auc and result.tasks["t0"].auc != result.tasks["t1"].auc


def test_one_process_equals_direct_computation_and_edge_cases():
    rows = _rows(2000, tasks=1)
    for sessions in (True, False):
        metrics = ShardedMetrics(3, 1, sessions=sessions)
        _feed(metrics, rows, np.arange(2000))
        _assert_same(metrics.compute(DOMAINS).to_dict(), _direct(rows, sessions), auc_tol=1e-6)
    empty = ShardedMetrics(3, 1).compute(DOMAINS).to_dict()
    assert empty["rows"] == 0 and all(math.isnan(empty[k]) for k in ("auc", "logloss", "gauc"))
    one_class = ShardedMetrics(3, 1)
    one_class.add(
        torch.tensor([[0.3], [0.1]]), torch.tensor([[1.0], [1.0]]), torch.tensor([0, 0]), torch.tensor([1, 1])
    )
    result = one_class.compute(DOMAINS)
    assert math.isnan(result.auc) and math.isnan(result.gauc) and result.logloss > 0
    assert math.isnan(result.per_domain["b"]["logloss"]) and result.per_domain["b"]["rows"] == 0
    with pytest.raises(ValueError, match="must both be"):
        one_class.add(torch.zeros(2, 2), torch.zeros(2, 2), torch.zeros(2), torch.zeros(2))


def test_reduced_state_does_not_grow_with_rows():
    """The state that crosses ranks has a size fixed by tasks, domains and bins, not by the rows."""
    sizes = []
    for n in (100, 10_000):
        metrics = ShardedMetrics(3, 2, sessions=True)
        _feed(metrics, _rows(n), np.arange(n), batch=100)
        sizes.append((metrics.state_numel(), metrics.histogram.shape, metrics.loss.shape))
    assert sizes[0] == sizes[1] and sizes[0][0] == 2 * 4 * (2 * AUC_BINS + 2)


def _worker(rank: int, world_size: int, n: int, out: Path) -> None:
    dist.init_process_group("gloo")
    rows = _rows(n, tasks=2)
    # ranks hold uneven shares of the rows (rank 0 a third), like a last partial batch
    index = np.arange(n // 3) if rank == 0 else np.arange(n // 3, n)
    metrics = ShardedMetrics(3, 2, sessions=True)
    _feed(metrics, rows, index)
    result = metrics.compute(DOMAINS, ["t0", "t1"]).to_dict()
    # a rank without any row (an eval split smaller than the world): still one collective call each
    alone = ShardedMetrics(3, 2, sessions=True)
    _feed(alone, rows, np.arange(n) if rank == 1 else np.arange(0))
    result_alone = alone.compute(DOMAINS, ["t0", "t1"]).to_dict()
    keys = torch.from_numpy(rows["group"][index])
    (routed,) = _route([keys], keys, None, hashed=True)
    owned = key_owner(routed, world_size)
    (out / f"rank{rank}.json").write_text(
        json.dumps(
            {
                "result": result,
                "alone": result_alone,
                "received": len(routed),
                "sent": len(index),
                "own_keys_only": bool((owned == rank).all()),
            }
        )
    )


def test_two_ranks_equal_direct_computation(tmp_path):
    n = 3000
    spawn(_worker, 2, n, tmp_path)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["result"] == ranks[1]["result"]  # identical on every rank
    assert ranks[0]["alone"] == ranks[1]["alone"]
    _assert_same(ranks[0]["alone"], ranks[0]["result"], auc_tol=1e-12)  # the same rows, all on rank 1
    _assert_same(ranks[0]["result"], _direct(_rows(n, tasks=2)), auc_tol=1e-6)
    for t in range(2):  # and the exact pairwise AUC, closer than torchmetrics' float32 one
        s, y = _rows(n)["logits"][:, t], _rows(n)["labels"][:, t]
        assert ranks[0]["result"]["tasks"][f"t{t}"]["auc"] == pytest.approx(pairwise_auc(s, y), abs=1e-12)
    # every group went to one rank only, and no rank received all the rows
    assert all(rank["own_keys_only"] for rank in ranks)
    assert sum(rank["received"] for rank in ranks) == n and max(rank["received"] for rank in ranks) < 0.7 * n


def test_bench_eval_cli_runs_both_paths(tmp_path, capsys):
    """``mdr bench eval``: one cell per path, the same AUC from both, a printed table; bad paths fail."""
    from torchrec_mdr.bench.eval_cost import EvalBenchOptions
    from torchrec_mdr.cli import main
    from torchrec_mdr.config import ConfigError

    out = tmp_path / "cells.json"
    main(["bench", "eval", "--rows", "3000", "--world-sizes", "1", "--batch-size", "512", "--out", str(out)])
    cells = json.loads(out.read_text())
    assert [c["path"] for c in cells] == ["gather", "sharded"] and all(c["rows"] == 3000 for c in cells)
    assert cells[0]["auc"] == pytest.approx(cells[1]["auc"], abs=1e-6) and 0.5 < cells[0]["auc"] < 1
    assert all(c["peak_mib_per_rank"] >= 0 and c["seconds"] >= c["compute_seconds"] > 0 for c in cells)
    printed = capsys.readouterr().out
    assert "peak MiB/rank" in printed and "largest |gather - sharded|" in printed
    with pytest.raises(ConfigError, match="unknown"):
        EvalBenchOptions(paths=["allgather"])
