"""The two-tower retrieval form of ADIN (task = "retrieval"): loss, frequency estimate, metrics, trainer.

* in-batch sampled softmax with log-Q equals a hand computation; duplicates of the positive's item
  are masked; a batch without positives gives loss 0 and zero (not missing) gradients everywhere;
* the streaming frequency estimate converges to the true per-step sampling probability and
  follows its documented choices (duplicates count once, first sighting, hash collisions);
* Recall@K / HitRate@K overall and per domain equal a hand computation and a brute-force reference;
* the towers see only their own features (no candidate leaks into the user vector; padding changes
  nothing); bad feature names raise ConfigError naming the key;
* ``Trainer(task="retrieval").fit()`` writes metrics.json with recall keys, ``mdr eval`` reproduces
  them from the checkpoint, and training beats a random ranking by a clear margin.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from helpers import tiny_synthetic
from torchrec_mdr.config import ConfigError, load_config
from torchrec_mdr.data.reader import ReaderConfig, make_dataloader
from torchrec_mdr.data.spec import DatasetSpec
from torchrec_mdr.experiment import ExperimentConfig, OptimizerConfig, TrainConfig
from torchrec_mdr.models.features import FeatureLayout
from torchrec_mdr.models.registry import ModelConfig
from torchrec_mdr.retrieval.config import RetrievalConfig
from torchrec_mdr.retrieval.metrics import RetrievalBuffer, retrieval_metrics
from torchrec_mdr.retrieval.model import RetrievalModel, in_batch_softmax_loss
from torchrec_mdr.retrieval.sampling import StreamingFrequencyEstimator

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(user_hidden=[16], item_hidden=[16], output_dim=8, frequency_buckets=512)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return tiny_synthetic(tmp_path_factory.mktemp("retrieval") / "synthetic", rows=1000)


def first_batch(path: Path, batch_size: int = 64):
    return next(iter(make_dataloader(ReaderConfig(path=path, batch_size=batch_size, shuffle=False), "train")))


def small_model(path: Path, **options) -> RetrievalModel:
    torch.manual_seed(0)
    config = RetrievalConfig(**{**SMALL, **options})
    return RetrievalModel(DatasetSpec.load(path), 4, config)


# --------------------------------------------------------------------------- the loss


def reference_loss(user, item, ids, positive, temperature, log_q) -> float:
    """Mean over positive rows i of -log softmax_i over the positive columns j (same item as i: dropped)."""
    rows = [i for i in range(len(ids)) if positive[i]]
    total = 0.0
    for i in rows:
        logits = {}
        for j in rows:
            if j != i and ids[j] == ids[i]:
                continue
            logits[j] = float(user[i] @ item[j]) / temperature - (float(log_q[j]) if log_q is not None else 0.0)
        total += -(logits[i] - math.log(sum(math.exp(v) for v in logits.values())))
    return total / max(len(rows), 1)


def test_in_batch_softmax_with_log_q_equals_hand_computation():
    user = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [0.8, -0.6]])
    item = torch.tensor([[0.8, 0.6], [0.0, 1.0], [1.0, 0.0], [-0.6, 0.8]])
    ids = torch.tensor([10, 11, 12, 13])
    positive = torch.tensor([True, True, False, True])
    log_q = torch.log(torch.tensor([0.5, 0.1, 0.9, 0.2]))
    loss = in_batch_softmax_loss(user, item, ids, positive, 0.5, log_q)
    # row 0 by hand: logits over columns {0, 1, 3} = <u0, v_j> / 0.5 - log q_j
    row0 = [0.8 / 0.5 - math.log(0.5), 0.0 / 0.5 - math.log(0.1), -0.6 / 0.5 - math.log(0.2)]
    row0_loss = -(row0[0] - math.log(sum(math.exp(v) for v in row0)))
    row1 = [
        (0.6 * 0.8 + 0.8 * 0.6) / 0.5 - math.log(0.5),
        0.8 / 0.5 - math.log(0.1),
        (0.6 * -0.6 + 0.8 * 0.8) / 0.5 - math.log(0.2),
    ]
    row1_loss = -(row1[1] - math.log(sum(math.exp(v) for v in row1)))
    row3 = [
        (0.8 * 0.8 - 0.6 * 0.6) / 0.5 - math.log(0.5),
        -0.6 / 0.5 - math.log(0.1),
        (0.8 * -0.6 - 0.6 * 0.8) / 0.5 - math.log(0.2),
    ]
    row3_loss = -(row3[2] - math.log(sum(math.exp(v) for v in row3)))
    assert loss.item() == pytest.approx((row0_loss + row1_loss + row3_loss) / 3, rel=1e-5)
    assert loss.item() == pytest.approx(reference_loss(user, item, ids, positive, 0.5, log_q), rel=1e-5)
    # without the correction: plain in-batch softmax
    plain = in_batch_softmax_loss(user, item, ids, positive, 0.5, None)
    assert plain.item() == pytest.approx(reference_loss(user, item, ids, positive, 0.5, None), rel=1e-5)
    assert plain.item() != pytest.approx(loss.item())


def test_duplicate_items_of_the_positive_are_masked():
    torch.manual_seed(0)
    user = torch.nn.functional.normalize(torch.randn(6, 4), dim=-1)
    item = torch.nn.functional.normalize(torch.randn(6, 4), dim=-1)
    ids = torch.tensor([7, 8, 7, 9, 8, 5])  # rows 0 and 2 share item 7, rows 1 and 4 share item 8
    item[2], item[4] = item[0], item[1]  # the same item has the same vector
    positive = torch.ones(6, dtype=torch.bool)
    log_q = -torch.rand(6)
    loss = in_batch_softmax_loss(user, item, ids, positive, 0.1, log_q)
    assert loss.item() == pytest.approx(reference_loss(user, item, ids, positive, 0.1, log_q), rel=1e-5)
    # explicitly: each row's softmax runs over every column but the other rows of its own item
    logits = user @ item.T / 0.1 - log_q[None, :]
    dropped = {0: [2], 1: [4], 2: [0], 3: [], 4: [1], 5: []}
    by_hand = [
        -(logits[i, i] - torch.logsumexp(logits[i, [j for j in range(6) if j not in dropped[i]]], 0)) for i in range(6)
    ]
    assert loss.item() == pytest.approx(torch.stack(by_hand).mean().item(), rel=1e-5)
    unmasked = torch.stack([-(logits[i, i] - torch.logsumexp(logits[i], 0)) for i in range(6)]).mean()
    assert loss.item() < unmasked.item()  # a duplicate left in would count as a negative as strong as the positive
    grad_user = user.clone().requires_grad_(True)
    in_batch_softmax_loss(grad_user, item, ids, positive, 0.1, log_q).backward()
    assert torch.isfinite(grad_user.grad).all()


def test_batch_without_positives_gives_zero_loss_and_zero_gradients():
    user = torch.randn(5, 3, requires_grad=True)
    item = torch.randn(5, 3, requires_grad=True)
    loss = in_batch_softmax_loss(user, item, torch.arange(5), torch.zeros(5, dtype=torch.bool), 0.05, torch.zeros(5))
    assert loss.item() == 0.0
    loss.backward()
    for grad in (user.grad, item.grad):
        assert grad is not None and torch.equal(grad, torch.zeros_like(grad))
    # one positive: a softmax over one column is 0 too, still with finite gradients
    one = in_batch_softmax_loss(user, item, torch.arange(5), torch.tensor([False, True, False, False, False]), 0.05)
    assert one.item() == pytest.approx(0.0, abs=1e-6)


def test_model_batch_without_positives_reaches_every_parameter(synthetic):
    batch = first_batch(synthetic)
    batch.labels = torch.zeros_like(batch.labels)
    model = small_model(synthetic)
    loss, (_, user, item, item_ids, positive, *_rest) = model(batch)
    assert loss.item() == 0.0 and not positive.any()
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name  # backward reached it (DDP, fused optimizers stay in step)
        assert torch.isfinite(parameter.grad).all(), name
    # a batch with positives trains every dense parameter (none is unused)
    model = small_model(synthetic)
    batch = first_batch(synthetic)
    loss, (_, _, _, _, positive, *_rest) = model(batch)
    assert positive.sum() >= 2 and loss.item() > 0
    loss.backward()
    dense = {n: p for n, p in model.named_parameters() if n.startswith("dense_arch.")}
    assert dense and all(p.grad is not None and p.grad.abs().sum() > 0 for p in dense.values()), [
        n for n, p in dense.items() if p.grad is None or p.grad.abs().sum() == 0
    ]


# --------------------------------------------------------------------------- the frequency estimate


def test_frequency_estimate_converges_to_the_sampling_probability():
    generator = torch.Generator().manual_seed(0)
    probabilities = torch.tensor([0.3, 0.15, 0.1, 0.05, 0.02, 0.01] + [0.37 / 20] * 20)
    rows = 8
    estimator = StreamingFrequencyEstimator(buckets=64, alpha=0.01)
    for _ in range(4000):
        estimator.update(torch.multinomial(probabilities, rows, replacement=True, generator=generator))
    true = 1 - (1 - probabilities) ** rows  # P(the item appears in a step's batch)
    estimate = estimator.probability(torch.arange(len(probabilities)))
    assert torch.allclose(estimate, true, rtol=0.2), torch.stack([estimate, true])
    # the popular items are estimated tightly, and the order of the probabilities is kept
    assert torch.allclose(estimate[:4], true[:4], rtol=0.08)
    assert estimate[0] > estimate[1] > estimate[2] > estimate[3] > estimate[4]
    assert int(estimator.step) == 4000


def test_frequency_estimate_choices():
    estimator = StreamingFrequencyEstimator(buckets=10, alpha=0.5)
    assert estimator.probability(torch.tensor([3])).item() == 1.0  # never seen
    estimator.update(torch.tensor([3, 3, 3, 4]), valid=torch.tensor([True, True, True, False]))
    # step 1, first sighting: B = t = 1; duplicates count once; invalid rows change nothing
    assert estimator.gap[3].item() == 1.0 and int(estimator.last_seen[3]) == 1
    assert int(estimator.last_seen[4]) == 0
    estimator.update(torch.tensor([5]))  # step 2
    estimator.update(torch.tensor([5]))  # step 3
    estimator.update(torch.tensor([3]))  # step 4: gap 3 -> B = 0.5 * 1 + 0.5 * 3 = 2
    assert estimator.gap[3].item() == 2.0
    assert estimator.gap[5].item() == pytest.approx(0.5 * 2 + 0.5 * 1)  # first at t = 2, then gap 1
    assert estimator.log_probability(torch.tensor([13])).item() == pytest.approx(-math.log(2.0))  # 13 = 3 mod 10
    assert estimator.gap[10].item() == 0.0 and int(estimator.last_seen[10]) == 0  # the spare bucket


# --------------------------------------------------------------------------- metrics


def brute_force(user, item, ids, domain, group, domain_names, ks):
    """The metrics' definitions as plain loops (tie-free inputs)."""
    pool = sorted(set(ids.tolist()))
    vector = {}
    for r, i in enumerate(ids.tolist()):
        vector.setdefault(i, item[r])
    pool_vectors = torch.stack([vector[i] for i in pool])
    out = {}

    def top(r, k):
        scores = pool_vectors @ user[r]
        return {pool[j] for j in scores.argsort(descending=True)[: min(k, len(pool))].tolist()}

    for scope in [None, *range(len(domain_names))]:
        rows = [r for r in range(len(ids)) if scope is None or int(domain[r]) == scope]
        for k in ks:
            hit = sum(int(ids[r]) in top(r, k) for r in rows) / len(rows)
            by_user: dict[int, list[float]] = {}
            for r in rows:
                g = int(group[r])
                positives = {int(ids[s]) for s in rows if int(group[s]) == g}
                by_user.setdefault(g, []).append(len(top(r, k) & positives) / len(positives))
            recall = sum(sum(v) / len(v) for v in by_user.values()) / len(by_user)
            out[(scope, k)] = (recall, hit)
    return out


def test_recall_and_hitrate_equal_a_hand_computation():
    # pool: items 100 (x axis), 200 (y axis), 300 (diagonal); user 1 has positives {100, 200} in domain 0
    # and {300} in domain 1; user 2 has {200} in domain 1.
    s = 1 / math.sqrt(2)
    item = torch.tensor([[1.0, 0.0], [0.0, 1.0], [s, s], [0.0, 1.0]])
    ids = torch.tensor([100, 200, 300, 200])
    user = torch.tensor([[1.0, 0.1], [1.0, 0.2], [0.1, 1.0], [1.0, -0.5]])
    # row 0 ranks 100, 300, 200; row 1 ranks 100, 300, 200; row 2 ranks 200, 300, 100; row 3 ranks 100, 300, 200
    domain = torch.tensor([0, 0, 1, 1])
    group = torch.tensor([1, 1, 1, 2])
    result = retrieval_metrics(user, item, ids, domain, group, ["a", "b"], [1, 2, 5])
    assert result.pool_size == 3 and result.rows == 4 and result.users == 2
    # HitRate@1: row 0 (100: top) yes, row 1 (200: top is 100) no, row 2 (300: top is 200) no, row 3 no
    assert result.hitrate[1] == pytest.approx(1 / 4)
    # HitRate@2: rows 0 yes, 1 no (200 is third), 2 yes (300 second), 3 no (200 third)
    assert result.hitrate[2] == pytest.approx(2 / 4)
    assert result.hitrate[5] == 1.0  # K capped at the pool size: everything is retrieved
    # Recall@1 overall: user 1, P = {100, 200, 300}: rows 0, 1 retrieve {100} -> 1/3 each, row 2 {200} -> 1/3;
    # user 2, P = {200}: row 3 retrieves {100} -> 0. Mean over users: (1/3 + 0) / 2.
    assert result.recall[1] == pytest.approx((1 / 3 + 0) / 2)
    # Recall@2 overall: user 1 rows 0, 1: {100, 300} -> 2/3; row 2: {200, 300} -> 2/3; user 2: {100, 300} -> 0
    assert result.recall[2] == pytest.approx((2 / 3 + 0) / 2)
    # per domain a: user 1, P = {100, 200}: rows 0, 1 retrieve {100} -> 1/2 each
    assert result.per_domain["a"]["recall@1"] == pytest.approx(1 / 2)
    assert result.per_domain["a"]["hitrate@1"] == pytest.approx(1 / 2)
    assert result.per_domain["a"]["rows"] == 2 and result.per_domain["a"]["users"] == 1
    # per domain b: user 1, P = {300}: row 2 retrieves {200} -> 0; user 2, P = {200}: {100} -> 0
    assert result.per_domain["b"]["recall@1"] == 0.0
    assert result.per_domain["b"]["recall@2"] == pytest.approx((1 + 0) / 2)  # row 2 gets 300 at rank 2
    assert result.per_domain["b"]["hitrate@2"] == pytest.approx(1 / 2)
    as_dict = result.to_dict()
    assert as_dict["task"] == "retrieval" and as_dict["recall@2"] == result.recall[2]
    assert set(as_dict["per_domain"]["a"]) == {
        "recall@1",
        "recall@2",
        "recall@5",
        "hitrate@1",
        "hitrate@2",
        "hitrate@5",
        "rows",
        "users",
    }


def test_metrics_equal_a_brute_force_reference_in_chunks():
    generator = torch.Generator().manual_seed(1)
    rows, items = 60, 15
    catalogue = torch.nn.functional.normalize(torch.randn(items, 6, generator=generator), dim=-1)
    ids = torch.randint(0, items, (rows,), generator=generator) * 7 + 3
    item = catalogue[(ids - 3) // 7]
    user = torch.randn(rows, 6, generator=generator)
    domain = torch.randint(0, 3, (rows,), generator=generator)
    group = torch.randint(0, 12, (rows,), generator=generator) + 1000
    names = ["d0", "d1", "d2"]
    ks = [1, 3, 8]
    expected = brute_force(user, item, ids, domain, group, names, ks)
    for chunk_elements in (1 << 24, 20):  # one chunk, and chunks of one row
        result = retrieval_metrics(user, item, ids, domain, group, names, ks, chunk_elements=chunk_elements)
        for k in ks:
            assert result.recall[k] == pytest.approx(expected[(None, k)][0])
            assert result.hitrate[k] == pytest.approx(expected[(None, k)][1])
            for d, name in enumerate(names):
                assert result.per_domain[name][f"recall@{k}"] == pytest.approx(expected[(d, k)][0])
                assert result.per_domain[name][f"hitrate@{k}"] == pytest.approx(expected[(d, k)][1])


def test_buffer_keeps_only_positive_rows_and_empty_passes_give_nan():
    buffer = RetrievalBuffer()
    user, item = torch.randn(4, 3), torch.randn(4, 3)
    positive = torch.tensor([True, False, True, False])
    buffer.add(user, item, torch.arange(4), positive, torch.zeros(4, dtype=torch.long), torch.arange(4))
    got_user, got_item, ids, domain, group = buffer.gather()
    assert torch.equal(got_user, user[positive]) and torch.equal(got_item, item[positive])
    assert ids.tolist() == [0, 2] and group.tolist() == [0, 2]
    empty = retrieval_metrics(*RetrievalBuffer().gather(), ["a"], [10])
    assert empty.rows == 0 and math.isnan(empty.recall[10]) and empty.per_domain["a"]["rows"] == 0


# --------------------------------------------------------------------------- towers and configuration


def test_towers_see_only_their_own_features_and_padding_changes_nothing(synthetic):
    model = small_model(synthetic, item_fields=["item_id", "category_id", "brand_id"], item_dense=["price"])
    arch = model.dense_arch.eval()
    batch = first_batch(synthetic)
    pooled, unpooled = model.sparse_arch(batch.sparse_features, batch.sequence_features)
    from torchrec_mdr.models.features import embed_features

    features = embed_features(arch.layout, pooled, unpooled, batch.dense_features, batch.domain)
    with torch.no_grad():
        user, item = arch.vectors(features)
        assert torch.allclose(user.norm(dim=-1), torch.ones(len(user))) and item.shape == user.shape
        fields = arch.layout.fields
        changed = features.fields.clone()
        for name in ("item_id", "category_id", "brand_id"):
            changed[:, fields.index(name)] += 1.0
        dense = features.dense.clone()
        dense[:, 2] += 5.0  # price: item side only
        features_item = type(features)(changed, features.sequences, dense, features.domain)
        user_again, item_again = arch.vectors(features_item)
        assert torch.equal(user_again, user) and not torch.allclose(item_again, item)
        changed = features.fields.clone()
        changed[:, fields.index("user_id")] += 1.0
        user_again, item_again = arch.vectors(
            type(features)(changed, features.sequences, features.dense, features.domain)
        )
        assert torch.equal(item_again, item) and not torch.allclose(user_again, user)
        # padded sequence positions change nothing
        (sequence,) = features.sequences
        noisy = torch.where(sequence.mask[..., None], sequence.keys, 1e3 * torch.randn_like(sequence.keys))
        padded = type(sequence)(noisy, sequence.mask, sequence.query)
        user_again, _ = arch.vectors(type(features)(features.fields, [padded], features.dense, features.domain))
        assert torch.equal(user_again, user)


def test_default_item_fields_are_the_candidate_fields(synthetic):
    arch = small_model(synthetic).dense_arch
    layout = FeatureLayout.from_spec(DatasetSpec.load(synthetic), 4)
    assert [layout.fields[i] for i in arch.features.item_fields] == ["item_id"]
    assert arch.features.item_key == "item_id" and not arch.features.item_key_pooled
    assert "user_id" in [layout.fields[i] for i in arch.features.user_fields]
    assert arch.features.user_dense == () and arch.features.item_dense == ()
    # an item key from the pooled features (its table is no sequence's) is read from the pooled KJT
    model = small_model(synthetic, item_fields=["category_id", "item_id"])
    assert model.dense_arch.features.item_key == "category_id" and model.dense_arch.features.item_key_pooled
    batch = first_batch(synthetic)
    _, (_, _, _, item_ids, *_rest) = model(batch)
    assert torch.equal(item_ids, batch.sparse_features["category_id"].values())


@pytest.mark.parametrize(
    "options, key",
    [
        (dict(item_fields=["item_id", "nope"]), "retrieval.item_fields: 'nope' is not an id feature"),
        (dict(item_fields=["hist_item_id"]), "retrieval.item_fields: 'hist_item_id'"),
        (dict(item_fields=["item_id"], item_key="category_id"), "retrieval.item_key"),
        (dict(user_dense=["price", "nope"]), "retrieval.user_dense: 'nope' is not a dense feature"),
        (dict(item_dense=["user_id"]), "retrieval.item_dense"),
        (
            dict(
                item_fields=[
                    "user_id",
                    "item_id",
                    "category_id",
                    "brand_id",
                    "user_segment",
                    "user_activity",
                    "hour",
                    "device",
                ]
            ),
            "retrieval.use_domain_interest",
        ),
        (dict(user_hidden=[]), "retrieval.user_hidden"),
    ],
)
def test_bad_feature_names_raise_config_error(synthetic, options, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.").replace("(", r"\(")):
        small_model(synthetic, **options)


def test_config_file_and_validation():
    config = load_config(ExperimentConfig, ROOT / "configs" / "retrieval.toml")
    assert config.task == "retrieval" and config.retrieval.model == "adin"
    assert config.retrieval.item_fields == ["item_id", "category_id", "brand_id"]
    assert load_config(ExperimentConfig).task == "ranking"  # the default stays ranking
    with pytest.raises(ConfigError, match="retrieval.top_k"):
        load_config(ExperimentConfig, None, ["retrieval.top_k=[]"])
    with pytest.raises(ConfigError, match="task"):
        load_config(ExperimentConfig, None, ["task=recall"])


# --------------------------------------------------------------------------- the trainer


def retrieval_experiment(data: Path, **train) -> ExperimentConfig:
    return ExperimentConfig(
        task="retrieval",
        data=ReaderConfig(path=data, batch_size=train.pop("batch_size", 64), seed=1),
        model=ModelConfig(embedding_dim=8),
        retrieval=RetrievalConfig(
            item_fields=["item_id", "category_id", "brand_id"],
            user_hidden=[32],
            item_hidden=[32],
            output_dim=16,
            temperature=0.1,
            top_k=[5, 10],
            frequency_buckets=4096,
        ),
        optimizer=OptimizerConfig(sparse_lr=0.1, dense_lr=0.01),
        train=TrainConfig(device="cpu", log_every=5, seed=2, **train),
    )


def fit_single_threaded(trainer) -> dict:
    """``trainer.fit()`` on one intra-op thread (the Trainer's init sets its own count): with matrices this
    small, OpenMP threads mostly wait for each other, 20x slower on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return trainer.fit()
    finally:
        torch.set_num_threads(threads)


def test_trainer_writes_retrieval_metrics_and_eval_reproduces_them(synthetic, tmp_path):
    from torchrec_mdr.training.evaluate import evaluate_run
    from torchrec_mdr.training.trainer import Trainer

    run = tmp_path / "run"
    config = retrieval_experiment(synthetic, max_steps=4, pipeline="sparse_dist", eval_every=2)  # + valid evals
    metrics = fit_single_threaded(Trainer(config, run))
    written = json.loads((run / "metrics.json").read_text())
    assert written["model"] == "adin_retrieval" and written["task"] == "retrieval"
    for key in ("recall@5", "recall@10", "hitrate@5", "hitrate@10", "pool_size", "rows", "users"):
        assert key in written, key
    assert set(written["per_domain"]) == {"domain0", "domain1", "domain2"}
    assert "oracle_auc" not in written and "auc" not in written
    assert written["train"]["steps"] == 4 and math.isfinite(written["train"]["final_loss"])
    state = json.loads((run / "checkpoints" / "step-000004" / "state.json").read_text())
    assert state["model_name"] == "adin_retrieval" and state["identity"]["model"]["task"] == "retrieval"
    again = evaluate_run(run)  # the checkpoint (with its frequency estimate) reproduces the metrics
    assert again["model"] == "adin_retrieval"
    for key in ("recall@5", "recall@10", "hitrate@5", "hitrate@10"):
        assert again[key] == pytest.approx(metrics[key]), key
    # a retrieval checkpoint is refused by a run with other towers
    from torchrec_mdr.errors import TrainingError

    other = retrieval_experiment(synthetic, max_steps=4)
    other.retrieval.output_dim = 32
    with pytest.raises(TrainingError, match="retrieval.output_dim"):
        Trainer(other, run, resume=True)


def test_resume_is_exact_with_the_frequency_estimate(synthetic, tmp_path):
    """The estimate's arrays are model buffers: a run stopped at step 3 and resumed gives the same losses
    and the same estimate as a run trained straight through."""
    from torchrec_mdr.training.trainer import Trainer

    def run(path: Path, steps: int, resume: bool = False) -> Trainer:
        trainer = Trainer(
            retrieval_experiment(synthetic, max_steps=steps, pipeline="plain", batch_size=32), path, resume=resume
        )
        fit_single_threaded(trainer)
        return trainer

    straight = run(tmp_path / "straight", 6)
    first = run(tmp_path / "resumed", 3)
    rest = run(tmp_path / "resumed", 6, resume=True)
    assert first.step_losses + rest.step_losses == straight.step_losses
    estimate = {k: v for k, v in straight.model.module.dense_arch.frequency.state_dict().items()}
    for key, value in rest.model.module.dense_arch.frequency.state_dict().items():
        assert torch.equal(value, estimate[key]), key
    assert int(estimate["step"]) == 6


def test_training_beats_a_random_ranking(tmp_path):
    from torchrec_mdr.training.trainer import Trainer

    data = tiny_synthetic(
        tmp_path / "data", rows=4500, users=100, items=300, categories=10, split_fractions=[0.7, 0.05, 0.25]
    )  # ~200 test positives over ~100 items
    trainer = Trainer(retrieval_experiment(data, epochs=3, pipeline="plain"), tmp_path / "run")
    metrics = fit_single_threaded(trainer)
    assert metrics["train"]["steps"] >= 100 and metrics["rows"] >= 150
    random_hitrate = 10 / metrics["pool_size"]  # a random ranking's expected HitRate@10 (and Recall@10)
    assert metrics["hitrate@10"] > 2.5 * random_hitrate, (metrics["hitrate@10"], random_hitrate)  # ~3.6x seen
    assert metrics["recall@10"] > 2.5 * random_hitrate, (metrics["recall@10"], random_hitrate)


def _two_rank_worker(rank: int, world_size: int, data: Path, out: Path) -> None:
    from torchrec_mdr.training.trainer import Trainer

    config = retrieval_experiment(data, max_steps=6, pipeline="sparse_dist", batch_size=16)
    config.sparse.sharding = "row_wise"
    trainer = Trainer(config, out / "run")
    metrics = trainer.fit()
    frequency = trainer.model.module.dense_arch.frequency
    torch.save(
        {"metrics": metrics, "buffers": {k: v.clone() for k, v in frequency.state_dict().items()}},
        out / f"rank{rank}.pt",
    )


def test_two_ranks_share_one_frequency_stream_and_gather_every_positive(synthetic, tmp_path):
    from multiprocess import spawn

    spawn(_two_rank_worker, 2, synthetic, tmp_path)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    # the estimate is fed every rank's positives (all-gathered): identical on both ranks
    for key, value in results[0]["buffers"].items():
        assert torch.equal(value, results[1]["buffers"][key]), key
    assert int(results[0]["buffers"]["step"]) == 6 and (results[0]["buffers"]["last_seen"] > 0).sum() > 0
    # the metrics cover every positive row of the test split, and both ranks report the same
    positives = sum(
        int(b.labels[:, 0].sum())
        for b in make_dataloader(ReaderConfig(path=synthetic, batch_size=64, shuffle=False), "test")
    )
    assert results[0]["metrics"]["rows"] == results[1]["metrics"]["rows"] == positives
    assert results[0]["metrics"]["recall@10"] == results[1]["metrics"]["recall@10"]
