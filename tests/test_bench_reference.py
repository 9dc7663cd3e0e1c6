"""The plain-PyTorch reference of ``mdr bench train --reference`` (torchrec_mdr/bench/reference.py).

What makes ours / reference a fair ratio: on the same weights and the same batch the reference's
plain tables and our sparse arch give the same logits, for models that read sequences pooled and by
position, on a spec where columns share tables (the candidate item and the history; a multi-valued
column in a sequence table). Also: the plain batch against a hand conversion, the tables' kinds, one
training step of the reference and of the roof against a hand Adam step, and the table's arithmetic.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from data_prep.writer import DatasetWriter, list_array
from torchrec_mdr.bench.reference import (
    REFERENCE,
    ROOF,
    ReferenceLoop,
    ReferenceModel,
    RoofLoop,
    format_reference,
    plain_batch,
)
from torchrec_mdr.bench.train import Cell, TrainBenchOptions
from torchrec_mdr.config import ConfigError
from torchrec_mdr.data.reader import ReaderConfig, make_dataloader
from torchrec_mdr.data.spec import ColumnSpec, DatasetSpec
from torchrec_mdr.models.ranking import RankingModel
from torchrec_mdr.models.registry import ModelConfig

D, L, B = 8, 4, 24
MODELS = ["shared_bottom", "star", "dnn", "din", "ads", "sfpnet"]  # pooled (first three) and positioned


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """120 rows: user (30), item (40, shared with the history), genre (5, shared by a single and a
    multi-valued column and the history's genres), a price; sequences 0..L long."""
    columns = [
        ColumnSpec("click", "label"),
        ColumnSpec("domain", "domain"),
        ColumnSpec("user_id", "id", table="user", cardinality=30, oov="reject"),
        ColumnSpec("item_id", "id", table="item", cardinality=40, oov="reject"),
        ColumnSpec("genre", "id", table="genre", cardinality=5, oov="reject"),
        ColumnSpec("genres", "multi_id", table="genre", cardinality=5, oov="reject"),
        ColumnSpec(
            "hist_item_id", "sequence", table="item", cardinality=40, oov="reject", sequence_group="hist", max_length=L
        ),
        ColumnSpec(
            "hist_genre", "sequence", table="genre", cardinality=5, oov="reject", sequence_group="hist", max_length=L
        ),
        ColumnSpec("price", "dense"),
    ]
    n, rng = 120, np.random.default_rng(0)
    lengths, genre_lengths = rng.integers(0, L + 1, n), rng.integers(0, 3, n)
    offsets, genre_offsets = np.concatenate([[0], np.cumsum(lengths)]), np.concatenate([[0], np.cumsum(genre_lengths)])
    hist = rng.integers(0, 40, offsets[-1])
    rows = {
        "click": rng.integers(0, 2, n).astype(np.int8),
        "domain": rng.integers(0, 3, n),
        "user_id": rng.integers(0, 30, n),
        "item_id": rng.integers(0, 40, n),
        "genre": rng.integers(0, 5, n),
        "genres": list_array(genre_offsets, rng.integers(0, 5, genre_offsets[-1])),
        "hist_item_id": list_array(offsets, hist),
        "hist_genre": list_array(offsets, hist % 5),
        "price": rng.random(n).astype(np.float32),
    }
    path = tmp_path_factory.mktemp("reference") / "toy"
    writer = DatasetWriter(path, "toy", columns, ["a", "b", "c"])
    writer.write("train", rows)
    writer.close()
    return path


def _batch(path: Path):
    return next(iter(make_dataloader(ReaderConfig(path=path, batch_size=B, shuffle=False), "train")))


def _copy_weights(ours: RankingModel, reference: ReferenceModel) -> None:
    """Our model's tables and dense arch into the reference (tables by name, whichever collection)."""
    tables = {
        key.split(".")[-2]: value
        for key, value in ours.sparse_arch.state_dict().items()
        if key.endswith(".weight") and key.split(".")[-3] in ("embedding_bags", "embeddings")
    }
    assert sorted(tables) == sorted(reference.tables) == ["genre", "item", "user"]
    with torch.no_grad():
        for name, table in reference.tables.items():
            table.weight.copy_(tables[name])
    reference.arch.load_state_dict(ours.dense_arch.model.state_dict())


@pytest.mark.parametrize("name", MODELS)
def test_the_reference_gives_our_logits_on_the_same_weights(data: Path, name: str) -> None:
    spec = DatasetSpec.load(data)
    torch.manual_seed(0)
    config = ModelConfig(name=name, embedding_dim=D)
    ours = RankingModel(spec, config).eval()
    reference = ReferenceModel(spec, config).eval()
    assert type(reference.arch) is type(ours.dense_arch.model) and reference.layout == ours.dense_arch.layout
    positioned = name not in ("shared_bottom", "star", "dnn")
    assert isinstance(reference.tables["item"], torch.nn.Embedding) == positioned  # else an EmbeddingBag
    assert isinstance(reference.tables["user"], torch.nn.EmbeddingBag)
    _copy_weights(ours, reference)
    batch = _batch(data)
    lengths = batch.sequence_features["hist_item_id"].lengths()
    assert (lengths == 0).any() and (lengths == L).any()  # empty and full sequences are covered
    assert (
        batch.sparse_features.to_dict()
        if "genres" in batch.sparse_features.keys()
        else batch.sequence_features.to_dict()
    )["genres"].lengths().max() > 1
    expected = ours(batch)[0]
    assert expected.std() > 0  # rows differ: a wrong lookup would show
    torch.testing.assert_close(reference(plain_batch(batch, reference.layout))[0], expected, rtol=1e-5, atol=1e-6)


def test_plain_batch_by_hand(data: Path) -> None:
    spec = DatasetSpec.load(data)
    batch = _batch(data)
    sequences = batch.sequence_features.to_dict()
    positioned = plain_batch(batch, ReferenceModel(spec, ModelConfig(name="din", embedding_dim=D)).layout)
    pooled = plain_batch(batch, ReferenceModel(spec, ModelConfig(name="dnn", embedding_dim=D)).layout)
    history = sequences["hist_item_id"]
    for row, ids in enumerate(history.to_dense()):  # padded left-aligned, zeros after the length
        n = len(ids)
        assert positioned.padded["hist_item_id"][row, :n].tolist() == ids.tolist()
        assert positioned.padded["hist_item_id"][row, n:].tolist() == [0] * (L - n)
        assert positioned.masks["hist"][row].tolist() == [True] * n + [False] * (L - n)
    assert "hist_item_id" not in positioned.bags and not pooled.padded and not pooled.masks
    ids, offsets = pooled.bags["hist_item_id"]  # a pooled group: one bag per row
    assert ids.tolist() == history.values().tolist()
    assert offsets.tolist() == [0] + torch.cumsum(history.lengths(), 0)[:-1].tolist()
    assert pooled.bags["item_id"][1].tolist() == list(range(B))  # one id per row


def _hand_adam(before: torch.Tensor, grad: torch.Tensor, lr: float) -> torch.Tensor:
    """One Adam step from zero moments (betas 0.9, 0.999, eps 1e-8): m-hat = g, v-hat = g²."""
    return before - lr * grad / (grad.abs() + 1e-8)


def test_one_reference_step_is_adam_on_dense_gradients_of_every_table(data: Path) -> None:
    spec = DatasetSpec.load(data)
    torch.manual_seed(0)
    loop = ReferenceLoop(spec, ModelConfig(name="din", embedding_dim=D), [_batch(data)], torch.device("cpu"), 0.01)
    before = {k: v.detach().clone() for k, v in loop.model.named_parameters()}
    model = loop.model
    logits, auxiliary = model(loop.batches[0])
    torch.nn.functional.binary_cross_entropy_with_logits(logits, loop.batches[0].labels).add(auxiliary).backward()
    grads = {k: v.grad.clone() for k, v in model.named_parameters()}
    assert not any(g.is_sparse for g in grads.values())  # dense gradients
    model.zero_grad()
    loop.step()
    after = dict(model.named_parameters())
    for key in ("tables.item.weight", "tables.user.weight", "tables.genre.weight"):
        assert grads[key].abs().sum() > 0
        torch.testing.assert_close(after[key].detach(), _hand_adam(before[key], grads[key], 0.01), rtol=1e-5, atol=1e-6)
    untouched = grads["tables.user.weight"].abs().sum(1) == 0  # rows no batch row read: zero grad, no move
    user = after["tables.user.weight"].detach()
    assert untouched.any() and torch.equal(user[untouched], before["tables.user.weight"][untouched])


def test_the_roof_trains_the_arch_alone_on_fixed_embeddings(data: Path) -> None:
    spec = DatasetSpec.load(data)
    torch.manual_seed(0)
    reference = ReferenceLoop(spec, ModelConfig(name="din", embedding_dim=D), [_batch(data)], torch.device("cpu"), 0.01)
    roof = RoofLoop(reference, spec, 0.01)
    tables = {k: v.detach().clone() for k, v in reference.model.tables.state_dict().items()}
    features, labels = roof.items[0]
    with torch.no_grad():
        embedded = reference.model.embed(reference.batches[0])
    torch.testing.assert_close(features.sequences[0].keys, embedded.sequences[0].keys)
    assert features.fields.requires_grad and not features.dense.requires_grad
    before = {k: v.detach().clone() for k, v in roof.arch.named_parameters()}
    roof.step()
    roof.step()  # the inputs' gradients are reset each step, not accumulated
    assert features.fields.grad is not None and features.sequences[0].keys.grad is not None
    assert any(not torch.equal(before[k], v) for k, v in roof.arch.named_parameters())
    for key, value in reference.model.tables.state_dict().items():  # the reference itself did not move
        assert torch.equal(value, tables[key])
    assert all(torch.equal(a, b) for a, b in zip(reference.model.arch.parameters(), before.values()))
    torch.testing.assert_close(features.fields, embedded.fields)  # the inputs are fixed


def test_reference_table_pairs_rounds() -> None:
    windows = {"plain": [90.0, 100.0, 120.0], REFERENCE: [100.0, 100.0, 100.0], ROOF: [120.0, 200.0, 150.0]}
    cells = [Cell("din", 1, p, w, steps=10, batch_size=8, threads=1) for p, w in windows.items()]
    lines = format_reference(cells, ["din"], [8], ["plain"]).splitlines()
    assert lines[1].split() == [
        "model",
        "threads",
        "batch",
        "roof",
        "reference",
        "plain/ref",
        "min",
        "max",
        "over",
        "plain",
        "over",
        "reference",
    ]
    row = lines[2].split()
    assert row[:5] == ["din", "1", "8", "150", "100"]
    assert [float(v) for v in row[5:8]] == [1.0, 0.9, 1.2]  # per-round 0.9, 1.0, 1.2
    # overheads 1 - 90/120, 1 - 100/200, 1 - 120/150 = 25%, 50%, 20%: median 25%; reference 16.7, 50, 33.3
    assert row[8:] == ["25.0%", "33.3%"]


def test_reference_needs_world_size_one() -> None:
    with pytest.raises(ConfigError, match="'reference': the plain-PyTorch reference is one process"):
        TrainBenchOptions(world_sizes=[1, 2], reference=True).validate()
    TrainBenchOptions(world_sizes=[1], reference=True).validate()


def test_bench_train_reference_end_to_end(tmp_path, capsys) -> None:
    from torchrec_mdr.cli import main

    assert (
        main(
            [
                "bench",
                "train",
                "--data",
                str(tmp_path / "bench"),
                "--rows",
                "1000",
                "--seq-length",
                "4",
                "--models",
                "shared_bottom",
                "din",
                "--world-sizes",
                "1",
                "--pipelines",
                "plain",
                "--batch-sizes",
                "16",
                "32",
                "--embedding-dim",
                "4",
                "--warmup",
                "1",
                "--steps",
                "2",
                "--repeats",
                "2",
                "--batches-in-memory",
                "2",
                "--reference",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("ours / plain-PyTorch reference"))
    rows = [line.split() for line in lines[start + 2 :]]
    assert [(r[0], r[2]) for r in rows] == [
        ("shared_bottom", "16"),
        ("shared_bottom", "32"),
        ("din", "16"),
        ("din", "32"),
    ]
    for row in rows:
        roof, reference, ratio, low, high = (float(v.replace(",", "")) for v in row[3:8])
        assert roof > 0 and reference > 0 and 0 < low <= ratio <= high
        assert all(v.endswith("%") and float(v[:-1]) < 100 for v in row[8:])
