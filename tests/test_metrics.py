"""Ranking metrics: AUC, GAUC, S-GAUC, logloss and AUC Imp. against brute-force references, and the
trainer's 2-rank evaluation against a direct computation on the gathered predictions."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist

from helpers import strip_sessions
from multiprocess import spawn
from test_distributed import assemble, experiment, local_state
from torchrec_mdr.data.reader import make_dataloader
from torchrec_mdr.data.spec import DatasetSpec
from torchrec_mdr.metrics.compare import comparison_table
from torchrec_mdr.metrics.ranking import (
    PredictionBuffer,
    auc,
    auc_improvement,
    evaluate_predictions,
    gauc,
    logloss,
    prediction_columns,
)
from torchrec_mdr.models.ranking import RankingModel, TrainModel
from torchrec_mdr.tasks import format_table

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
    assert gauc(np.r_[scores, extra_scores], np.r_[labels, extra_labels], np.r_[groups, extra_groups]) == pytest.approx(
        expected
    )
    assert math.isnan(gauc(extra_scores, extra_labels, extra_groups))


def test_logloss_known_values():
    assert logloss(np.zeros(4), np.array([0.0, 1.0, 1.0, 0.0])) == pytest.approx(math.log(2))
    logits = np.array([2.0, -1.0, 0.5, -3.0])
    labels = np.array([1.0, 0.0, 0.0, 1.0])
    by_hand = (
        -(
            math.log(1 / (1 + math.exp(-2)))
            + math.log(1 - 1 / (1 + math.exp(1)))
            + math.log(1 - 1 / (1 + math.exp(-0.5)))
            + math.log(1 / (1 + math.exp(3)))
        )
        / 4
    )
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


# --------------------------------------------------------------------------- S-GAUC


def sgauc_example() -> tuple[np.ndarray, np.ndarray]:
    """Hand-made rows (columns logit, label, domain, group, session) and the expected S-GAUC values.

    session 10 (user 1, domain 0): scores 0.9+ 0.3- 0.5-           AUC 1      3 rows
    session 11 (user 1, domains 1 and 0): 0.4+ 0.4- (domain 1), 0.2- 0.7+ (domain 0)
                                  pairs (0.4,0.4) 1/2, (0.4,0.2) 1, (0.7,0.4) 1, (0.7,0.2) 1: 3.5/4
    session 12 (user 2, domain 1): 0.6+ 0.3+                      one class: skipped
    session 13 (user 2, domain 0): 0.1+ 0.8-                      AUC 0      2 rows
    session 14 (user 3, domain 2): 0.5- 0.5-                      one class: skipped
    """
    rows = np.array(
        [
            # logit label domain group session
            [0.9, 1, 0, 1, 10],
            [0.3, 0, 0, 1, 10],
            [0.5, 0, 0, 1, 10],
            [0.4, 1, 1, 1, 11],
            [0.4, 0, 1, 1, 11],
            [0.2, 0, 0, 1, 11],
            [0.7, 1, 0, 1, 11],
            [0.6, 1, 1, 2, 12],
            [0.3, 1, 1, 2, 12],
            [0.1, 1, 0, 2, 13],
            [0.8, 0, 0, 2, 13],
            [0.5, 0, 2, 3, 14],
            [0.5, 0, 2, 3, 14],
        ],
        dtype=np.float64,
    )
    expected = {
        "all": (3 * 1.0 + 4 * 3.5 / 4 + 2 * 0.0) / (3 + 4 + 2),
        # domain 0: session 10 (AUC 1, 3 rows), session 11's 0.2- 0.7+ (AUC 1, 2 rows), session 13 (AUC 0, 2 rows)
        "a": (3 * 1.0 + 2 * 1.0 + 2 * 0.0) / 7,
        # domain 1: session 11's tied 0.4+ 0.4- (AUC 1/2, 2 rows); session 12 has one class
        "b": 0.5,
        "c": float("nan"),  # only session 14, one class
    }
    return rows, expected


def test_sgauc_of_a_hand_made_example():
    rows, expected = sgauc_example()
    result = evaluate_predictions(rows, ["a", "b", "c"], sessions=True)
    assert result.sgauc == pytest.approx(expected["all"], abs=1e-12)
    logits, labels, sessions = rows[:, 0], rows[:, 1], rows[:, 4]
    assert result.sgauc == pytest.approx(per_group_auc(logits, labels, sessions), abs=1e-12)
    # by user the same rows give another number: S-GAUC groups by the session column, not the group one
    assert result.gauc == pytest.approx(per_group_auc(logits, labels, rows[:, 3]), abs=1e-12)
    assert abs(result.gauc - result.sgauc) > 0.05
    for name in "abc":
        assert result.per_domain[name]["sgauc"] == pytest.approx(expected[name], abs=1e-12, nan_ok=True)
    assert math.isnan(result.per_domain["c"]["sgauc"])
    assert result.to_dict()["sgauc"] == result.sgauc
    assert list(result.to_dict()) == ["auc", "logloss", "gauc", "sgauc", "rows", "per_domain"]
    # the rows' order changes nothing
    order = np.random.default_rng(0).permutation(len(rows))
    assert evaluate_predictions(rows[order], ["a", "b", "c"], sessions=True).sgauc == pytest.approx(result.sgauc)


def test_sgauc_matches_per_session_reference_per_domain():
    rng = np.random.default_rng(3)
    n = 1500
    users = rng.integers(0, 30, n)
    sessions = users * 1000 + rng.integers(0, 6, n)  # up to six sessions per user
    logits = np.round(rng.normal(size=n), 1)  # ties within sessions
    labels = (rng.random(n) < 1 / (1 + np.exp(-logits))).astype(np.float64)
    domains = rng.integers(0, 3, n)
    rows = np.stack([logits, labels, domains, users, sessions], axis=1).astype(np.float64)
    result = evaluate_predictions(rows, ["a", "b", "c"], sessions=True)
    assert result.sgauc == pytest.approx(per_group_auc(logits, labels, sessions), abs=1e-12)
    for d, name in enumerate("abc"):
        m = domains == d
        assert result.per_domain[name]["sgauc"] == pytest.approx(
            per_group_auc(logits[m], labels[m], sessions[m]), abs=1e-12
        )
        assert result.per_domain[name]["gauc"] == pytest.approx(
            per_group_auc(logits[m], labels[m], users[m]), abs=1e-12
        )


def test_without_sessions_there_is_no_sgauc():
    rows, _ = sgauc_example()
    result = evaluate_predictions(rows, ["a", "b", "c"])  # the dataset has no session column
    assert result.sgauc is None
    assert "sgauc" not in result.to_dict()
    assert all("sgauc" not in values for values in result.per_domain.values())
    # a session column of zeros is one session of every row when the flag says sessions exist:
    # the flag decides, the values are not guessed from
    zeros = rows.copy()
    zeros[:, 4] = 0
    one_session = evaluate_predictions(zeros, ["a", "b", "c"], sessions=True)
    assert one_session.sgauc == pytest.approx(pairwise_auc(rows[:, 0], rows[:, 1]), abs=1e-12)
    # rows of the older 4-column layout still evaluate without sessions, and refuse S-GAUC
    assert evaluate_predictions(rows[:, :4], ["a", "b", "c"]).gauc == result.gauc
    with pytest.raises(ValueError, match="S-GAUC needs the session column"):
        evaluate_predictions(rows[:, :4], ["a", "b", "c"], sessions=True)


def test_prediction_buffer_carries_the_session_column():
    buffer = PredictionBuffer()
    logits = torch.tensor([[0.5], [-1.0]])
    labels = torch.tensor([[1.0], [0.0]])
    buffer.add(logits, labels, torch.tensor([1, 0]), torch.tensor([7, 8]), torch.tensor([70, 80]))
    buffer.add(logits[:1], labels[:1], torch.tensor([2]), torch.tensor([9]))  # no session: zeros
    # keys become dense codes: groups 7, 8, 9 -> 0, 1, 2; sessions 70, 80, 0 -> 1, 2, 0
    np.testing.assert_array_equal(buffer.gather(), [[0.5, 1, 1, 0, 1], [-1, 0, 0, 1, 2], [0.5, 1, 2, 2, 0]])
    assert PredictionBuffer().gather().shape == (0, 5)


def test_prediction_buffer_keeps_every_task():
    """Columns: each task's logit, each task's label, domain, group, session (prediction_columns(T))."""
    buffer = PredictionBuffer()
    logits = torch.tensor([[0.5, 9.0], [-1.0, -2.0]])
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    buffer.add(logits, labels, torch.tensor([1, 0]), torch.tensor([7, 8]), torch.tensor([70, 80]))
    np.testing.assert_array_equal(buffer.gather(), [[0.5, 9, 1, 0, 1, 0, 0], [-1, -2, 0, 1, 0, 1, 1]])
    assert prediction_columns(2) == ("logit_0", "logit_1", "label_0", "label_1", "domain", "group", "session")
    assert PredictionBuffer().gather(num_tasks=3).shape == (0, 9)  # a rank without rows still has T's width
    with pytest.raises(ValueError, match="1 tasks after batches with 2"):
        buffer.add(logits[:, :1], labels[:, :1], torch.tensor([0]), torch.tensor([1]))


def test_hashed_int64_keys_stay_distinct():
    """2**53 and 2**53 + 1 are one float64 but two users: their rows must form two GAUC groups."""
    big = 2**53
    buffer = PredictionBuffer()
    scores = torch.tensor([[0.9], [0.1], [0.2], [0.8]])
    labels = torch.tensor([[1.0], [0.0], [1.0], [0.0]])
    keys = torch.tensor([big, big, big + 1, big + 1])
    buffer.add(scores, labels, torch.zeros(4, dtype=torch.long), keys, -keys)
    rows = buffer.gather()
    assert list(rows[:, 3]) == [0, 0, 1, 1] and list(rows[:, 4]) == [1, 1, 0, 0]
    result = evaluate_predictions(rows, ["a"], sessions=True)
    # user big ranks its pair right (AUC 1), user big + 1 wrong (AUC 0): (2 * 1 + 2 * 0) / 4
    assert result.gauc == 0.5 and result.sgauc == 0.5
    merged = gauc(scores[:, 0].double().numpy(), labels[:, 0].double().numpy(), keys.double().numpy())
    assert merged == 0.75  # what float64 keys would have computed: one group of four rows


def _metrics_json(result, model: str = "m") -> dict:
    return {"model": model, "dataset": "d", "split": "test", **result.to_dict()}


def test_table_and_compare_show_sgauc_only_when_present():
    rows, expected = sgauc_example()
    with_sessions = _metrics_json(evaluate_predictions(rows, ["a", "b", "c"], sessions=True))
    without = _metrics_json(evaluate_predictions(rows, ["a", "b", "c"]))
    table = format_table(with_sessions, ["a", "b", "c"]).splitlines()
    header = table[2].split()
    assert header == ["domain", "rows", "AUC", "GAUC", "S-GAUC", "logloss"]
    all_row = table[-1].split()
    assert all_row[0] == "all" and float(all_row[header.index("S-GAUC")]) == pytest.approx(expected["all"], abs=1e-4)
    a_row = table[3].split()
    assert a_row[0] == "a" and float(a_row[header.index("S-GAUC")]) == pytest.approx(expected["a"], abs=1e-4)
    plain = format_table(without, ["a", "b", "c"])
    assert "S-GAUC" not in plain and plain.splitlines()[2].split() == ["domain", "rows", "AUC", "GAUC", "logloss"]
    # mdr compare: an S-GAUC table when every run has it, none when one lacks it
    for run in (with_sessions, without):  # AUC Imp. needs a base AUC other than 0.5 (this example's)
        for m in (run, *run["per_domain"].values()):
            m["auc"] = 0.7
    better = json.loads(json.dumps(with_sessions))
    better["sgauc"] += 0.01
    both = comparison_table([better, with_sessions], ["new", "base"])
    assert "test S-GAUC (SFPNet eq. 13), difference to base" in both
    last = both.splitlines()[-1].split()
    assert last[0] == "all" and float(last[-1]) == pytest.approx(0.01, abs=1e-4)
    assert float(last[2]) == pytest.approx(expected["all"] + 0.01, abs=1e-4)
    assert "S-GAUC" not in comparison_table([without, with_sessions], ["old", "base"])


# --------------------------------------------------------------------------- across 2 ranks


def metrics_dataset(path: Path) -> Path:
    """121 test rows: 60 / 61 per rank, so with batches of 10 the ranks run 6 and 7 batches."""
    from data_prep.synthetic import Options, convert

    convert(
        Options(
            version=1,
            out=path,
            rows=1001,
            users=12,
            items=60,
            categories=6,
            brands=10,
            seq_length=5,
            min_seq_length=0,
            base_rate=0.3,
            split_fractions=[0.779, 0.1, 0.121],
        )
    )
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
            _loss, (_, logits, labels, domain, group, session) = trainer.model(batches[min(step, len(batches) - 1)])
            if step < len(batches):
                rows.append(
                    torch.stack(
                        [
                            logits[:, 0].double(),
                            labels[:, 0].double(),
                            domain.double(),
                            group.double(),
                            session.double(),
                        ],
                        dim=1,
                    )
                )
    torch.save(
        {
            "metrics": metrics,
            "rows": torch.cat(rows).numpy(),
            "batches": len(batches),
            "state": local_state(trainer.model),
        },
        out / f"metrics-{rank}.pt",
    )


@pytest.fixture(scope="module")
def two_rank_eval(tmp_path_factory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("metrics")
    data = metrics_dataset(out / "data")
    spawn(_metrics_worker, 2, data, out)
    ranks = [torch.load(out / f"metrics-{r}.pt", weights_only=False) for r in range(2)]
    return {"data": data, "ranks": ranks, "out": out}


def test_trainer_metrics_equal_direct_computation(two_rank_eval):
    ranks = two_rank_eval["ranks"]
    spec = DatasetSpec.load(two_rank_eval["data"])
    assert spec.session_column == "session_id"
    assert [r["batches"] for r in ranks] == [6, 7]  # uneven: the padding step's output is discarded
    rows = np.concatenate([r["rows"] for r in ranks])
    assert len(rows) == spec.splits["test"].rows == 121
    logits, labels, domains, groups = rows[:, 0], rows[:, 1], rows[:, 2].astype(int), rows[:, 3]
    sessions = rows[:, 4]
    # some sessions have rows on both ranks: S-GAUC is right only over the gathered predictions
    assert set(ranks[0]["rows"][:, 4]) & set(ranks[1]["rows"][:, 4])
    for r in ranks:
        m = r["metrics"]
        assert m["rows"] == 121
        assert m["auc"] == pytest.approx(pairwise_auc(logits, labels), abs=AUC_TOL)
        assert m["gauc"] == pytest.approx(per_group_auc(logits, labels, groups), abs=1e-9)
        assert m["sgauc"] == pytest.approx(per_group_auc(logits, labels, sessions), abs=1e-9)
        assert not math.isnan(m["sgauc"]) and m["sgauc"] != pytest.approx(m["gauc"], abs=1e-6)
        assert m["logloss"] == pytest.approx(reference_logloss(logits, labels), rel=1e-9)
        for d, name in enumerate(spec.domain_names):
            mask = domains == d
            values = m["per_domain"][name]
            assert values["rows"] == int(mask.sum()) > 0
            assert values["auc"] == pytest.approx(pairwise_auc(logits[mask], labels[mask]), abs=AUC_TOL, nan_ok=True)
            assert values["gauc"] == pytest.approx(
                per_group_auc(logits[mask], labels[mask], groups[mask]), abs=1e-9, nan_ok=True
            )
            assert values["sgauc"] == pytest.approx(
                per_group_auc(logits[mask], labels[mask], sessions[mask]), abs=1e-9, nan_ok=True
            )
            assert values["logloss"] == pytest.approx(reference_logloss(logits[mask], labels[mask]), rel=1e-9)
    assert 0 < sum(not math.isnan(v["gauc"]) for v in ranks[0]["metrics"]["per_domain"].values())
    assert 0 < sum(not math.isnan(v["sgauc"]) for v in ranks[0]["metrics"]["per_domain"].values())
    written = json.loads((two_rank_eval["out"] / "run" / "metrics.json").read_text())
    assert written["sgauc"] == pytest.approx(ranks[0]["metrics"]["sgauc"])
    assert "S-GAUC" in format_table(written, spec.domain_names)
    assert "test/sgauc" in scalar_tags(two_rank_eval["out"] / "run")


def scalar_tags(run_dir: Path) -> list[str]:
    """The TensorBoard scalar tags a run wrote."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return events.Tags()["scalars"]


def _no_session_worker(rank: int, world_size: int, data: Path, out: Path) -> None:
    from torchrec_mdr.training.trainer import Trainer

    Trainer(experiment(data, "table_wise", "plain", batch_size=10, max_steps=2), out / "run").fit()


def test_data_without_a_session_column_has_no_sgauc(tmp_path):
    """A dataset prepared before session columns existed (the column dropped from files and spec):
    training and evaluation work, metrics.json has no ``sgauc`` key, the table no S-GAUC column."""
    data = strip_sessions(metrics_dataset(tmp_path / "data"))
    assert DatasetSpec.load(data).session_column is None
    spawn(_no_session_worker, 1, data, tmp_path)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["rows"] == 121 and not math.isnan(metrics["gauc"])
    assert "sgauc" not in metrics and all("sgauc" not in v for v in metrics["per_domain"].values())
    assert "S-GAUC" not in format_table(metrics, DatasetSpec.load(data).domain_names)
    tags = scalar_tags(tmp_path / "run")
    assert "test/gauc" in tags and "test/sgauc" not in tags


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
