"""Ranking metrics: AUC, GAUC, logloss and AUC Imp. against brute-force references, and the
trainer's 2-rank evaluation against a direct computation on the gathered predictions."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist

from multiprocess import spawn
from test_distributed import assemble, experiment, local_state
from torchrec_mdr.data.reader import make_dataloader
from torchrec_mdr.data.spec import DatasetSpec
from torchrec_mdr.metrics.ranking import auc, auc_improvement, evaluate_predictions, gauc, logloss
from torchrec_mdr.models.ranking import RankingModel, TrainModel

# torchmetrics' binary_auroc returns float32 (exact counts, float32 rates): ~1e-7 from the exact value.
# GAUC and logloss are float64 throughout and are compared to 1e-9.
AUC_TOL = 1e-6

# --------------------------------------------------------------------------- brute-force references


def pairwise_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counting one half, over all pairs."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def per_group_auc(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> float:
    """Impression-weighted mean of the pairwise AUC of every group that has both classes."""
    total = weight = 0.0
    for g in np.unique(groups):
        rows = groups == g
        value = pairwise_auc(scores[rows], labels[rows])
        if not math.isnan(value):
            total += rows.sum() * value
            weight += rows.sum()
    return total / weight if weight else float("nan")


def reference_logloss(logits: np.ndarray, labels: np.ndarray) -> float:
    p = 1.0 / (1.0 + np.exp(-logits))
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


# --------------------------------------------------------------------------- single-process metrics


def test_auc_matches_pairwise_count_with_ties():
    rng = np.random.default_rng(0)
    for n in (2, 7, 300):
        scores = rng.integers(0, 5, n).astype(np.float64)  # many ties
        labels = (rng.random(n) < 0.4).astype(np.float64)
        labels[:2] = [0.0, 1.0]
        assert auc(scores, labels) == pytest.approx(pairwise_auc(scores, labels), abs=AUC_TOL)
    assert auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0.0, 0.0, 1.0, 1.0])) == pytest.approx(0.75)
    assert math.isnan(auc(np.array([0.3, 0.2]), np.array([1.0, 1.0])))  # one class: undefined
    assert math.isnan(auc(np.array([]), np.array([])))


def test_gauc_matches_per_group_reference():
    rng = np.random.default_rng(1)
    n = 2000
    groups = rng.integers(0, 60, n).astype(np.float64)
    scores = np.round(rng.normal(size=n), 1)  # ties within groups
    labels = (rng.random(n) < 1 / (1 + np.exp(-2 * scores))).astype(np.float64)
    assert gauc(scores, labels, groups) == pytest.approx(per_group_auc(scores, labels, groups), abs=1e-12)
    # shuffling rows changes nothing
    order = rng.permutation(n)
    assert gauc(scores[order], labels[order], groups[order]) == pytest.approx(gauc(scores, labels, groups), abs=1e-12)


def test_gauc_ignores_single_class_groups():
    scores = np.array([0.9, 0.1, 0.4, 0.6, 0.2, 0.8])
    labels = np.array([1.0, 0.0, 1.0, 0.0, 0.0, 1.0])
    groups = np.array([0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    # group 0: AUC 1 over 2 rows; group 1: positives {0.4, 0.8} vs negatives {0.6, 0.2}: 3/4 over 4 rows
    expected = (2 * 1.0 + 4 * 0.75) / 6
    assert gauc(scores, labels, groups) == pytest.approx(expected)
    # groups with only positives or only negatives add nothing, whatever their size or scores
    extra_scores = np.array([0.0, 5.0, -3.0, 0.5, 0.5, 0.5, 0.5])
    extra_labels = np.array([1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    extra_groups = np.array([7.0, 7.0, 7.0, 8.0, 8.0, 8.0, 8.0])
    assert gauc(np.r_[scores, extra_scores], np.r_[labels, extra_labels], np.r_[groups, extra_groups]) \
        == pytest.approx(expected)
    assert math.isnan(gauc(extra_scores, extra_labels, extra_groups))


def test_logloss_known_values():
    assert logloss(np.zeros(4), np.array([0.0, 1.0, 1.0, 0.0])) == pytest.approx(math.log(2))
    logits = np.array([2.0, -1.0, 0.5, -3.0])
    labels = np.array([1.0, 0.0, 0.0, 1.0])
    by_hand = -(math.log(1 / (1 + math.exp(-2))) + math.log(1 - 1 / (1 + math.exp(1)))
                + math.log(1 - 1 / (1 + math.exp(-0.5))) + math.log(1 / (1 + math.exp(3)))) / 4
    assert logloss(logits, labels) == pytest.approx(by_hand, rel=1e-12)
    assert by_hand == pytest.approx(reference_logloss(logits, labels), rel=1e-12)
    # large logits stay finite (computed from logits, not from clipped probabilities)
    assert logloss(np.array([200.0, -200.0]), np.array([0.0, 1.0])) == pytest.approx(200.0)


def test_auc_improvement_reproduces_ads_table_2():
    """ADS eq. 14 on the paper's own Table 2 numbers (rounded to 2 decimals there)."""
    taobao_dnn = 0.6490
    assert auc_improvement(0.6503, taobao_dnn) == pytest.approx(0.87, abs=0.005)  # DeepFM
    assert auc_improvement(0.6507, taobao_dnn) == pytest.approx(1.14, abs=0.005)  # DIN + ADS
    assert auc_improvement(0.6484, taobao_dnn) == pytest.approx(-0.40, abs=0.005)  # APG
    douyin_ads_dnn = 0.8461
    assert auc_improvement(0.8477, douyin_ads_dnn) == pytest.approx(0.46, abs=0.005)  # DIN + ADS
    assert auc_improvement(0.75, 0.70) == pytest.approx(25.0)  # (0.25 / 0.20 - 1) x 100
    assert auc_improvement(0.70, 0.70) == 0.0


def test_evaluate_predictions_per_domain():
    rng = np.random.default_rng(2)
    n = 500
    logits = rng.normal(size=n)
    labels = (rng.random(n) < 0.3).astype(np.float64)
    domains = rng.integers(0, 3, n)
    domains[labels == 0] = np.where(domains[labels == 0] == 2, 1, domains[labels == 0])  # domain 2: positives only
    groups = rng.integers(0, 40, n)
    rows = np.stack([logits, labels, domains, groups], axis=1).astype(np.float64)
    result = evaluate_predictions(rows, ["a", "b", "c"])
    assert result.rows == n
    assert result.auc == pytest.approx(pairwise_auc(logits, labels), abs=AUC_TOL)
    assert result.gauc == pytest.approx(per_group_auc(logits, labels, groups), abs=1e-12)
    assert result.logloss == pytest.approx(reference_logloss(logits, labels), rel=1e-9)
    for d, name in enumerate("abc"):
        m = domains == d
        values = result.per_domain[name]
        assert values["rows"] == int(m.sum())
        if name == "c":
            assert math.isnan(values["auc"]) and math.isnan(values["gauc"])
        else:
            assert values["auc"] == pytest.approx(pairwise_auc(logits[m], labels[m]), abs=AUC_TOL)
            assert values["gauc"] == pytest.approx(per_group_auc(logits[m], labels[m], groups[m]), abs=1e-12)
        assert values["logloss"] == pytest.approx(reference_logloss(logits[m], labels[m]), rel=1e-9)


# --------------------------------------------------------------------------- across 2 ranks


def metrics_dataset(path: Path) -> Path:
    """121 test rows: 60 / 61 per rank, so with batches of 10 the ranks run 6 and 7 batches."""
    from data_prep.synthetic import Options, convert

    convert(Options(out=path, rows=1001, users=12, items=60, categories=6, brands=10, seq_length=5,
                    min_seq_length=0, base_rate=0.3, split_fractions=[0.779, 0.1, 0.121]))
    return path


def _metrics_worker(rank: int, world_size: int, data: Path, out: Path) -> None:
    from torchrec_mdr.training.trainer import Trainer

    config = experiment(data, "row_wise", "sparse_dist", batch_size=10, max_steps=8)
    trainer = Trainer(config, out / "run")
    metrics = trainer.fit()  # trains, then evaluates the test split across both ranks
    # The same predictions, computed directly: this rank's own rows of the test split, no gathering.
    loader = make_dataloader(replace(config.data, shuffle=False), "test", rank, world_size, shuffle=False)
    batches = list(loader)
    steps = torch.tensor([len(batches)])
    dist.all_reduce(steps, op=dist.ReduceOp.MAX)
    rows = []
    trainer.model.eval()
    with torch.no_grad():
        for step in range(int(steps)):  # a rank out of batches repeats one to keep collectives in step
            _loss, (_, logits, labels, domain, group) = trainer.model(batches[min(step, len(batches) - 1)])
            if step < len(batches):
                rows.append(torch.stack([logits[:, 0].double(), labels[:, 0].double(), domain.double(),
                                         group.double()], dim=1))
    torch.save({"metrics": metrics, "rows": torch.cat(rows).numpy(), "batches": len(batches),
                "state": local_state(trainer.model)}, out / f"metrics-{rank}.pt")


@pytest.fixture(scope="module")
def two_rank_eval(tmp_path_factory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("metrics")
    data = metrics_dataset(out / "data")
    spawn(_metrics_worker, 2, data, out)
    ranks = [torch.load(out / f"metrics-{r}.pt", weights_only=False) for r in range(2)]
    return {"data": data, "ranks": ranks}


def test_trainer_metrics_equal_direct_computation(two_rank_eval):
    ranks = two_rank_eval["ranks"]
    spec = DatasetSpec.load(two_rank_eval["data"])
    assert [r["batches"] for r in ranks] == [6, 7]  # uneven: the padding step's output is discarded
    rows = np.concatenate([r["rows"] for r in ranks])
    assert len(rows) == spec.splits["test"].rows == 121
    logits, labels, domains, groups = rows[:, 0], rows[:, 1], rows[:, 2].astype(int), rows[:, 3]
    for r in ranks:
        m = r["metrics"]
        assert m["rows"] == 121
        assert m["auc"] == pytest.approx(pairwise_auc(logits, labels), abs=AUC_TOL)
        assert m["gauc"] == pytest.approx(per_group_auc(logits, labels, groups), abs=1e-9)
        assert m["logloss"] == pytest.approx(reference_logloss(logits, labels), rel=1e-9)
        for d, name in enumerate(spec.domain_names):
            mask = domains == d
            values = m["per_domain"][name]
            assert values["rows"] == int(mask.sum()) > 0
            assert values["auc"] == pytest.approx(pairwise_auc(logits[mask], labels[mask]), abs=AUC_TOL,
                                                  nan_ok=True)
            assert values["gauc"] == pytest.approx(per_group_auc(logits[mask], labels[mask], groups[mask]),
                                                   abs=1e-9, nan_ok=True)
            assert values["logloss"] == pytest.approx(reference_logloss(logits[mask], labels[mask]), rel=1e-9)
    assert 0 < sum(not math.isnan(v["gauc"]) for v in ranks[0]["metrics"]["per_domain"].values())


def test_gathered_predictions_equal_an_unsharded_model(two_rank_eval):
    """The trained sharded weights, loaded into an unsharded model in this process, predict the same
    logits for the whole test split (row order differs, so compare sorted)."""
    ranks = two_rank_eval["ranks"]
    data = two_rank_eval["data"]
    config = experiment(data)
    model = TrainModel(RankingModel(DatasetSpec.load(data), config.model))
    model.load_state_dict(assemble([r["state"] for r in ranks]))
    model.eval()
    loader = make_dataloader(replace(config.data, batch_size=1000), "test", shuffle=False)
    with torch.no_grad():
        parts = [model(batch)[1] for batch in loader]
    logits = torch.cat([p[1][:, 0] for p in parts]).double().numpy()
    labels = torch.cat([p[2][:, 0] for p in parts]).double().numpy()
    gathered = np.concatenate([r["rows"] for r in ranks])
    np.testing.assert_allclose(np.sort(logits), np.sort(gathered[:, 0]), rtol=1e-5, atol=1e-6)
    assert labels.sum() == gathered[:, 1].sum()
    assert ranks[0]["metrics"]["auc"] == pytest.approx(pairwise_auc(logits, labels), abs=1e-6)
