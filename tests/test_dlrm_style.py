"""DLRM and DLRM-DCNv2 (torchrec_mdr/models/dlrm.py): shapes, interaction numerics by hand, training; and
the dlrm_style program."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from helpers import tiny_synthetic
from dlrm_style.train import build_config, build_parser, flags_to_overrides
from dlrm_style.train import main as program_main
from torchrec_mdr.config import ConfigError, load_config
from torchrec_mdr.experiment import ExperimentConfig
from torchrec_mdr.models.dlrm import DLRMArch, DLRMConfig, DLRMDCNArch, DLRMDCNConfig
from torchrec_mdr.models.features import EmbeddedFeatures, EmbeddedSequence, FeatureLayout, SequenceLayout
from torchrec_mdr.models.registry import MODELS

REPO = Path(__file__).resolve().parents[1]
D = 4


def layout(num_dense: int = 3, num_tasks: int = 1) -> FeatureLayout:
    """Two id fields, one sequence group of two fields (length 3), 2 domains."""
    hist = SequenceLayout("hist", ("hist_item", "hist_domain"), 3, ("item",))
    return FeatureLayout(
        fields=("user", "item"),
        pooled=frozenset({"user", "item"}),
        sequences=(hist,),
        embedding_dim=D,
        num_dense=num_dense,
        num_domains=2,
        num_tasks=num_tasks,
    )


def features(batch: int = 3, num_dense: int = 3, seed: int = 0) -> EmbeddedFeatures:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([3, 1, 0, 2, 3, 1][:batch])
    mask = torch.arange(3)[None, :] < lengths[:, None]
    keys = torch.randn(batch, 3, 2 * D, generator=g) * mask[..., None]
    fields = torch.randn(batch, 2, D, generator=g)
    return EmbeddedFeatures(
        fields=fields,
        sequences=[EmbeddedSequence(keys, mask, fields[:, 1])],
        dense=torch.randn(batch, num_dense, generator=g),
        domain=torch.arange(batch) % 2,
    )


def small(config_class, **kw):
    return config_class(dense_arch_layer_sizes=[8, D], over_arch_layer_sizes=[6, kw.pop("tasks", 1)], **kw)


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("arch_class,config_class", [(DLRMArch, DLRMConfig), (DLRMDCNArch, DLRMDCNConfig)])
@pytest.mark.parametrize("sequences,num_features", [("mean", 5), ("none", 3)])
@pytest.mark.parametrize("num_dense", [3, 0])
def test_forward_shapes(arch_class, config_class, sequences, num_features, num_dense):
    tasks = 2
    arch = arch_class(layout(num_dense, num_tasks=tasks), small(config_class, tasks=tasks, sequences=sequences))
    x = features(batch=5, num_dense=num_dense)
    assert arch.num_sparse_features == num_features  # 2 fields + domain (+ 2 mean-pooled sequence fields)
    sparse = arch.sparse_features(x)
    assert sparse.shape == (5, num_features, D)
    dense = arch.dense_arch(arch.dense_input(x))
    assert dense.shape == (5, D)
    inter = arch.inter_arch(dense_features=dense, sparse_features=sparse)
    width = D + num_features * (num_features + 1) // 2 if arch_class is DLRMArch else (num_features + 1) * D
    assert inter.shape == (5, width)
    logits = arch(x)
    assert logits.shape == (5, tasks) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert arch.domain_embedding.weight.grad is not None and arch.domain_embedding.weight.grad.abs().sum() > 0


def test_sparse_features_order_and_masked_sequence_mean():
    arch = DLRMArch(layout(), small(DLRMConfig))
    x = features(batch=3)
    sparse = arch.sparse_features(x)
    keys, mask = x.sequences[0].keys, x.sequences[0].mask
    for b in range(3):
        assert torch.equal(sparse[b, 0], x.fields[b, 0]) and torch.equal(sparse[b, 1], x.fields[b, 1])
        assert torch.equal(sparse[b, 2], arch.domain_embedding.weight[x.domain[b]])
        real = [t for t in range(3) if mask[b, t]]
        for f in range(2):  # hist_item, then hist_domain: each the mean over the real positions only
            expected = (sum(keys[b, t, f * D : (f + 1) * D] for t in real) / len(real)) if real else torch.zeros(D)
            torch.testing.assert_close(sparse[b, 3 + f], expected)
    assert torch.equal(sparse[2, 3:], torch.zeros(2, D))  # row 2 has an empty sequence


# --------------------------------------------------------------------------- numerics by hand


def test_pairwise_interaction_matches_hand_computation():
    arch = DLRMArch(layout(), small(DLRMConfig, sequences="none"))  # F = 3
    dense = torch.tensor([[1.0, 2.0, 0.0, -1.0], [0.5, 0.0, 1.0, 2.0]])
    sparse = torch.tensor(
        [
            [[1.0, 0.0, 1.0, 0.0], [2.0, 1.0, 0.0, 1.0], [0.0, 0.0, 3.0, 1.0]],
            [[1.0, 1.0, 1.0, 1.0], [0.0, 2.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 1.0]],
        ]
    )
    out = arch.inter_arch(dense_features=dense, sparse_features=sparse)
    for b in range(2):
        vectors = [dense[b].tolist()] + sparse[b].tolist()
        dots = [
            sum(p * q for p, q in zip(vectors[i], vectors[j], strict=True))
            for i, j in itertools.combinations(range(4), 2)
        ]
        assert out[b].tolist() == dense[b].tolist() + dots  # dense, then <x_i, x_j> for i < j, row-major
    # spot check one value: row 0, <dense, sparse_1> = 1*2 + 2*1 + 0 + (-1)*1 = 3
    assert out[0, D + 1].item() == 3.0


def test_dcn_cross_layers_match_hand_computation():
    config = small(DLRMDCNConfig, sequences="none", dcn_num_layers=2, dcn_low_rank_dim=2)
    arch = DLRMDCNArch(layout(), config)  # F = 3: cross net over (3 + 1) * 4 = 16 features
    n = 16
    g = torch.Generator().manual_seed(1)
    crossnet = arch.inter_arch.crossnet
    with torch.no_grad():
        for layer in range(2):
            crossnet.W_kernels[layer].copy_(torch.randn(n, 2, generator=g) * 0.3)
            crossnet.V_kernels[layer].copy_(torch.randn(2, n, generator=g) * 0.3)
            crossnet.bias[layer].copy_(torch.randn(n, generator=g) * 0.1)
    dense = torch.randn(2, D, generator=g)
    sparse = torch.randn(2, 3, D, generator=g)
    out = arch.inter_arch(dense_features=dense, sparse_features=sparse)
    for b in range(2):
        x0 = dense[b].tolist() + [v for row in sparse[b].tolist() for v in row]  # [dense, f1, f2, f3]
        x = list(x0)
        for layer in range(2):
            W, V, bias = (
                crossnet.W_kernels[layer].tolist(),
                crossnet.V_kernels[layer].tolist(),
                crossnet.bias[layer].tolist(),
            )
            vx = [sum(V[r][k] * x[k] for k in range(n)) for r in range(2)]
            wvx = [sum(W[i][r] * vx[r] for r in range(2)) for i in range(n)]
            x = [x0[i] * (wvx[i] + bias[i]) + x[i] for i in range(n)]  # x_{l+1} = x0 * (W V x_l + b) + x_l
        torch.testing.assert_close(out[b], torch.tensor(x), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- config


def test_registry_and_config_errors():
    assert {"dlrm", "dlrm_dcn"} <= set(MODELS)
    config = load_config(
        ExperimentConfig,
        None,
        ["model.name=dlrm_dcn", "model.dlrm_dcn.dcn_num_layers=2", "model.dlrm_dcn.over_arch_layer_sizes=[32, 1]"],
    )
    assert config.model.dlrm_dcn.dcn_num_layers == 2 and config.model.dlrm_dcn.over_arch_layer_sizes == [32, 1]
    with pytest.raises(ConfigError, match="over_arch_layer_sizes .* at least two"):
        load_config(ExperimentConfig, None, ["model.name=dlrm", "model.dlrm.over_arch_layer_sizes=[1]"])
    with pytest.raises(ConfigError, match="dcn_low_rank_dim"):
        load_config(ExperimentConfig, None, ["model.dlrm_dcn.dcn_low_rank_dim=0"])
    with pytest.raises(
        ConfigError,
        match=r"model.dlrm.dense_arch_layer_sizes \[8, 8\] must end in "
        r"model.embedding_dim \(4\)",
    ):
        DLRMArch(layout(), DLRMConfig(dense_arch_layer_sizes=[8, 8], over_arch_layer_sizes=[6, 1]))
    with pytest.raises(
        ConfigError,
        match=r"model.dlrm_dcn.over_arch_layer_sizes \[6, 1\] must end in the "
        r"number of labels of the dataset \(2\)",
    ):
        DLRMDCNArch(layout(num_tasks=2), small(DLRMDCNConfig))


def test_program_flags_map_onto_the_experiment_config(tmp_path):
    parser = build_parser()
    args = parser.parse_args(
        [
            "--dataset",
            str(tmp_path),
            "--batch_size",
            "256",
            "--epochs",
            "2",
            "--embedding_dim",
            "8",
            "--dense_arch_layer_sizes",
            "32,8",
            "--over_arch_layer_sizes",
            "64,16,1",
            "--interaction_type",
            "dcn",
            "--dcn_num_layers",
            "2",
            "--dcn_low_rank_dim",
            "4",
            "--learning_rate",
            "1e-5",
            "--adagrad",
            "--limit_train_batches",
            "7",
            "--seed",
            "3",
            "--no-shuffle_training_set",
            "--set",
            "optimizer.dense_lr=0.5",
        ]
    )
    config = build_config(args)
    assert config.data.path == tmp_path and config.data.batch_size == 256 and config.data.shuffle is False
    assert config.model.name == "dlrm_dcn" and config.model.embedding_dim == 8
    dcn = config.model.dlrm_dcn
    assert (dcn.dense_arch_layer_sizes, dcn.over_arch_layer_sizes, dcn.dcn_num_layers, dcn.dcn_low_rank_dim) == (
        [32, 8],
        [64, 16, 1],
        2,
        4,
    )
    assert (config.optimizer.sparse, config.optimizer.dense) == ("adagrad", "adagrad")
    assert config.optimizer.sparse_lr == 1e-5 and config.optimizer.dense_lr == 0.5  # --set wins over the flag
    assert (config.train.epochs, config.train.max_steps, config.train.seed, config.data.seed) == (2, 7, 3, 3)
    # without --adagrad: SGD for both, as torchrec's example; the interaction picks the model section
    plain = build_config(parser.parse_args(["--dataset", str(tmp_path), "--over_arch_layer_sizes", "4,1"]))
    assert plain.model.name == "dlrm" and plain.model.dlrm.over_arch_layer_sizes == [4, 1]
    assert (plain.optimizer.sparse, plain.optimizer.dense, plain.optimizer.sparse_lr) == ("sgd", "sgd", 0.1)
    with pytest.raises(ConfigError, match="--dcn_num_layers / --dcn_low_rank_dim apply to --interaction_type dcn"):
        flags_to_overrides(parser.parse_args(["--dataset", "x", "--dcn_num_layers", "2"]))
    with pytest.raises(ConfigError, match="--dataset is required"):
        build_config(parser.parse_args([]))
    with pytest.raises(SystemExit):
        parser.parse_args(["--dense_arch_layer_sizes", "64,x"])


# --------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return tiny_synthetic(tmp_path_factory.mktemp("dlrm") / "syn")


@pytest.fixture
def world_of_one():
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


def test_trainer_steps_reduce_the_loss(synthetic, tmp_path, world_of_one):
    from torchrec_mdr.training.trainer import Trainer

    config = load_config(
        ExperimentConfig,
        None,
        [
            f"data.path={synthetic}",
            "data.batch_size=128",
            "model.name=dlrm_dcn",
            "model.embedding_dim=8",
            "model.dlrm_dcn.dense_arch_layer_sizes=[16, 8]",
            "model.dlrm_dcn.over_arch_layer_sizes=[32, 16, 1]",
            "model.dlrm_dcn.dcn_num_layers=2",
            "model.dlrm_dcn.dcn_low_rank_dim=8",
            "optimizer.dense_lr=0.01",
            "train.epochs=2",
        ],
    )
    trainer = Trainer(config, tmp_path / "run")
    before = trainer.evaluate("train")
    metrics = trainer.fit()
    after = trainer.evaluate("train")
    assert metrics["model"] == "dlrm_dcn" and metrics["train"]["steps"] == 2 * 19  # 2,400 rows / 128, twice
    # measured: train logloss 0.69 -> 0.24-0.25, train AUC -> 0.95, test AUC 0.85 (seeds 0-2)
    assert after.logloss < before.logloss - 0.2, (before.logloss, after.logloss)
    assert after.auc > 0.85 and metrics["auc"] > 0.75
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["model"] == "dlrm_dcn" and set(saved["per_domain"]) == {"domain0", "domain1", "domain2"}


def test_mdr_train_with_model_dlrm_and_one_line_errors(synthetic, tmp_path, capsys, world_of_one):
    from torchrec_mdr.cli import main

    common = [
        "train",
        "--set",
        f"data.path={synthetic}",
        "--set",
        "data.batch_size=256",
        "--set",
        "train.max_steps=3",
        "--set",
        "model.name=dlrm",
    ]
    assert main(common + ["--out", str(tmp_path / "dlrm")]) == 0
    assert json.loads((tmp_path / "dlrm" / "metrics.json").read_text())["model"] == "dlrm"
    assert "dlrm on synthetic" in capsys.readouterr().out
    bad = common + ["--set", "model.embedding_dim=8", "--out", str(tmp_path / "bad")]
    assert main(bad) == 2
    err = capsys.readouterr().err
    assert "model.dlrm.dense_arch_layer_sizes [64, 16] must end in model.embedding_dim (8)" in err
    assert "Traceback" not in err
    assert program_main(["--dataset", str(synthetic), "--embedding_dim", "8", "--out", str(tmp_path / "p")]) == 2
    assert capsys.readouterr().err.startswith("dlrm_style.train: error: model.dlrm.dense_arch_layer_sizes")


def test_program_runs_end_to_end(synthetic, tmp_path):
    out = tmp_path / "program"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dlrm_style.train",
            "--dataset",
            str(synthetic),
            "--batch_size",
            "128",
            "--epochs",
            "1",
            "--limit_train_batches",
            "6",
            "--embedding_dim",
            "8",
            "--dense_arch_layer_sizes",
            "16,8",
            "--over_arch_layer_sizes",
            "32,1",
            "--interaction_type",
            "dcn",
            "--dcn_num_layers",
            "2",
            "--dcn_low_rank_dim",
            "4",
            "--learning_rate",
            "0.05",
            "--adagrad",
            "--print_sharding_plan",
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == "dlrm_dcn" and metrics["train"]["steps"] == 6 and 0.0 <= metrics["auc"] <= 1.0
    assert metrics["rows"] == 300  # the whole test split
    assert "AUROC over test set:" in result.stdout and "sharding type" in result.stdout
    config = json.loads((out / "config.json").read_text())
    assert config["optimizer"]["sparse"] == "adagrad" and config["optimizer"]["sparse_lr"] == 0.05
    assert config["model"]["dlrm_dcn"]["dcn_low_rank_dim"] == 4
