"""``mdr export`` and ``torchrec_mdr.serving``: the exported program scores the test split as the trained model
does (``mdr predict`` / ``mdr eval``), fp32 to 1e-5 and int8 within a stated tolerance; every registered model
exports; raw requests are checked as the reader checks them; a tampered artifact is refused without running it;
``mdr bench serve`` prints its figures.

The run is DIN trained by 2 ranks with managed collision (LFU eviction) on the ``item`` (sequence + candidate,
unpooled) and ``user`` (pooled) tables, so the export gathers row-wise shards and merged slot maps.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from multiprocess import spawn
from torchrec_mdr.cli import main
from torchrec_mdr.data.reader import ReaderConfig, make_dataloader
from torchrec_mdr.data.spec import DatasetSpec
from torchrec_mdr.experiment import ExperimentConfig, OptimizerConfig, TrainConfig
from torchrec_mdr.metrics.ranking import auc
from torchrec_mdr.models.din import DINConfig
from torchrec_mdr.models.ranking import RankingModel
from torchrec_mdr.models.registry import MODELS, ModelConfig
from torchrec_mdr.serving import ArtifactError, load_artifact
from torchrec_mdr.serving.artifact import MANIFEST_FILE, PROGRAM_FILE, encode
from torchrec_mdr.serving.export import export_program, export_run, gather_tables, input_description, sha256
from torchrec_mdr.serving.program import InferenceProgram, InputColumn, quantize_rows
from torchrec_mdr.sparse.config import SparseConfig
from torchrec_mdr.sparse.mch.config import EvictionConfig
from torchrec_mdr.training.evaluate import evaluate_run
from torchrec_mdr.training.predict import predict_run

INT8_PROB_TOLERANCE = 0.02  # max |p_int8 - p_fp32| per row on this run (8-bit codes: scale/2 per value)
INT8_AUC_TOLERANCE = 0.01


def split_table(data: Path, split: str = "test") -> pa.Table:
    spec = json.loads((data / "spec.json").read_text())
    return pa.concat_tables([pq.read_table(data / f) for f in spec["splits"][split]["files"]])


def columns_of(table: pa.Table) -> dict:
    return {name: table[name] for name in table.column_names}


def _train(rank: int, world_size: int, config: ExperimentConfig, out: Path) -> None:
    from torchrec_mdr.training.trainer import Trainer

    Trainer(config, out).fit()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from data_prep.synthetic import Options, convert

    root = tmp_path_factory.mktemp("serving")
    data = root / "syn"
    convert(Options(out=data, rows=3000, users=100, items=60, categories=6, brands=10, seq_length=5, min_seq_length=0))
    config = ExperimentConfig(
        data=ReaderConfig(path=data, batch_size=64),
        model=ModelConfig(name="din", embedding_dim=8, din=DINConfig(attention_hidden=[8], hidden=[16, 8])),
        sparse=SparseConfig(
            sharding="auto", eviction=EvictionConfig(tables=["item", "user"], zch_size=48, eviction_interval=4)
        ),
        optimizer=OptimizerConfig(sparse="rowwise_adagrad", sparse_lr=0.1, dense="adam", dense_lr=0.01),
        train=TrainConfig(max_steps=16, device="cpu", seed=1),
    )
    spawn(_train, 2, config, root / "run")
    return root / "run"


@pytest.fixture(scope="module")
def artifacts(run: Path) -> dict[str, Path]:
    out = run.parent / "artifacts"
    export_run(run, out / "fp32")
    export_run(run, out / "int8", int8=True)
    return {"fp32": out / "fp32", "int8": out / "int8"}


@pytest.fixture(scope="module")
def reference(run: Path) -> np.ndarray:
    """``mdr predict``'s probabilities of the test split (one process), in row order."""
    out = run.parent / "preds"
    predict_run(run, out, keep=[])
    files = sorted(out.glob("*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files]).sort_by("row")["prob_click"].to_numpy()


def data_of(run: Path) -> Path:
    return Path(json.loads((run / "config.json").read_text())["data"]["path"])


def test_export_fp32_scores_equal_the_trained_model(run: Path, artifacts: dict, reference: np.ndarray) -> None:
    model = load_artifact(artifacts["fp32"])
    manifest = model.manifest
    assert manifest["checkpoint"]["world_size"] == 2 and manifest["precision"] == "fp32"
    assert manifest["tables"]["item"] == {"rows": 48, "dim": 8, "managed": True}
    assert manifest["tables"]["category"]["managed"] is False
    assert manifest["labels"] == ["click"] and manifest["domain"]["column"] == "domain"
    table = split_table(data_of(run))
    probs = model.predict(columns_of(table))["click"]
    assert probs.dtype == np.float32 and probs.shape == (table.num_rows,)
    np.testing.assert_allclose(probs, reference, rtol=0, atol=1e-5)
    evaluated = evaluate_run(run, split="test")
    labels = table["click"].to_numpy().astype(np.float64)
    assert auc(probs.astype(np.float64), labels) == pytest.approx(evaluated["auc"], abs=1e-5)
    # one request at a time (python scalars and lists) gives the batch's scores
    for row in (0, 1, 57, table.num_rows - 1):
        request = {name: table[name][row].as_py() for name in table.column_names}
        assert model.predict(request)["click"] == pytest.approx([reference[row]], abs=1e-5)


def test_export_int8_within_tolerance_and_auc_difference(run: Path, artifacts: dict, reference: np.ndarray) -> None:
    model = load_artifact(artifacts["int8"])
    assert model.manifest["precision"] == "int8"
    assert model.manifest["quantization"]["dequantize"] == "codes * scale + bias"
    table = split_table(data_of(run))
    probs = model.predict(columns_of(table))["click"]
    labels = table["click"].to_numpy().astype(np.float64)
    difference = np.abs(probs - reference).max()
    auc_fp32, auc_int8 = auc(reference.astype(np.float64), labels), auc(probs.astype(np.float64), labels)
    print(
        f"int8 vs fp32: max |dp| = {difference:.2e}, AUC {auc_int8:.5f} vs {auc_fp32:.5f} "
        f"(difference {auc_int8 - auc_fp32:+.5f})"
    )
    assert 0 < difference < INT8_PROB_TOLERANCE
    assert abs(auc_int8 - auc_fp32) < INT8_AUC_TOLERANCE


def test_quantize_rows_dequantises_within_half_a_step() -> None:
    weight = torch.randn(50, 16) * torch.linspace(0.01, 3, 50)[:, None]
    weight[3] = 0.5  # a constant row
    codes, scale, bias = quantize_rows(weight)
    assert codes.dtype == torch.uint8 and scale.shape == bias.shape == (50,)
    restored = codes.float() * scale[:, None] + bias[:, None]
    assert ((restored - weight).abs() <= scale[:, None] / 2 + 1e-6).all()
    assert torch.equal(restored[3], weight[3])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from helpers import tiny_synthetic

    return tiny_synthetic(tmp_path_factory.mktemp("tiny") / "syn", rows=600)


@pytest.mark.parametrize("name", list(MODELS))
def test_every_registered_model_exports_and_matches_eager(name: str, tiny: Path) -> None:
    """The plain-PyTorch program of each registered model's arch (untrained, unsharded) gives the eager
    RankingModel's probabilities, at batch 32 and at batch 1 (dynamic batch dimension)."""
    data = tiny
    spec = DatasetSpec.load(data)
    batch = next(iter(make_dataloader(ReaderConfig(path=data, batch_size=32, shuffle=False), "test")))
    torch.manual_seed(0)
    model = RankingModel(spec, ModelConfig(name=name, embedding_dim=16)).eval()
    with torch.no_grad():
        expected = torch.sigmoid(model(batch)[0])
    tables, managed = gather_tables(model.state_dict())
    columns = [
        InputColumn(c.name, c.kind, c.table_name, c.max_length if c.kind == "sequence" else None)
        for c in spec.columns_of("id", "multi_id", "sequence")
    ]
    program = InferenceProgram(model.dense_arch.layout, model.dense_arch.model, columns, tables, managed).eval()
    exported = export_program(program, columns, len(spec.dense_features)).module()
    manifest = input_description(spec, spec)
    table = split_table(data).slice(0, 32)
    with torch.no_grad():
        got = exported(*encode(manifest, columns_of(table)))
        one = exported(*encode(manifest, columns_of(table.slice(5, 1))))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(one, expected[5:6], rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The toy schema without its 2**40-row id: a pooled multi_id column with empty lists, histories of 0-6
    ids cut to the last 4, and item ids up to 79 in a 50-row table with ``oov = "hash"``."""
    from helpers import toy_columns, toy_rows
    from data_prep.writer import DatasetWriter

    path = tmp_path_factory.mktemp("toy") / "toy"
    columns = [c for c in toy_columns(max_length=4, oov="hash") if c.name != "row_id"]
    writer = DatasetWriter(path, "toy", columns, ["a", "b"], row_group_size=64, rows_per_file=1000)
    rows = {k: v for k, v in toy_rows(300, max_item=80).items() if k != "row_id"}
    writer.write("test", rows)
    writer.close()
    return path


@pytest.mark.parametrize("name", ["dnn", "din"])
def test_raw_columns_are_encoded_as_the_reader_reads_them(name: str, toy: Path) -> None:
    """Multi-valued ids (some rows empty), histories longer than max_length and hashed out-of-range ids,
    given raw to the program, score as the reader's batches score in the eager model."""
    spec = DatasetSpec.load(toy)
    reader = make_dataloader(ReaderConfig(path=toy, batch_size=300, shuffle=False), "test")
    batch = next(iter(reader))
    torch.manual_seed(0)
    model = RankingModel(spec, ModelConfig(name=name, embedding_dim=8)).eval()
    with torch.no_grad():
        expected = torch.sigmoid(model(batch)[0])
    tables, managed = gather_tables(model.state_dict())
    columns = [
        InputColumn(c.name, c.kind, c.table_name, c.max_length if c.kind == "sequence" else None)
        for c in spec.columns_of("id", "multi_id", "sequence")
    ]
    program = InferenceProgram(model.dense_arch.layout, model.dense_arch.model, columns, tables, managed).eval()
    exported = export_program(program, columns, len(spec.dense_features)).module()
    table = split_table(toy)
    assert max(len(v) for v in table["hist_item_id"].to_pylist()) > 4 and max(table["item_id"].to_pylist()) >= 50
    assert min(len(v) for v in table["tags"].to_pylist()) == 0
    with torch.no_grad():
        got = exported(*encode(input_description(spec, spec), columns_of(table)))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_loads_in_a_fresh_process_without_the_training_stack(run: Path, artifacts: dict, reference: np.ndarray) -> None:
    table = split_table(data_of(run)).slice(0, 3)
    request = json.dumps({name: table[name].to_pylist() for name in table.column_names})
    code = (
        "import json, sys; from torchrec_mdr.serving import load_artifact; "
        f"m = load_artifact({str(artifacts['fp32'])!r}); p = m.predict(json.loads(sys.stdin.read()))['click']; "
        "print(json.dumps({'probs': p.tolist(), 'torchrec': 'torchrec' in sys.modules, "
        "'dist': __import__('torch').distributed.is_initialized()}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        input=request,
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["torchrec"] is False and out["dist"] is False
    np.testing.assert_allclose(out["probs"], reference[:3], rtol=0, atol=1e-5)


def test_requests_are_checked_like_the_reader(run: Path, artifacts: dict) -> None:
    model = load_artifact(artifacts["fp32"])
    table = split_table(data_of(run))
    request = {name: table[name][0].as_py() for name in table.column_names}
    with pytest.raises(ArtifactError, match="missing input column.*price"):
        model.predict({k: v for k, v in request.items() if k != "price"})
    with pytest.raises(ArtifactError, match="column 'category_id': id 99 is not below its cardinality 6"):
        model.predict({**request, "category_id": 99})  # oov = reject
    with pytest.raises(ArtifactError, match="negative id"):
        model.predict({**request, "brand_id": -3})
    with pytest.raises(ArtifactError, match="sequence group 'hist'"):
        model.predict({**request, "hist_item_id": [1, 2, 3, 4, 5], "hist_domain": [0, 1]})
    with pytest.raises(ArtifactError, match="domain outside"):
        model.predict({**request, "domain": 7})
    # a never-seen raw item id reads the unknown-id row; a history longer than max_length keeps its last 5
    unknown = model.predict({**request, "item_id": 10**9})["click"]
    assert 0 < unknown[0] < 1
    long = {**request, "hist_item_id": [3, 3, *request["hist_item_id"]], "hist_domain": [0, 0, *request["hist_domain"]]}
    if len(request["hist_item_id"]) == 5:
        assert model.predict(long)["click"] == pytest.approx(model.predict(request)["click"], abs=1e-7)


class _Payload:
    def __reduce__(self):  # noqa: ANN204 - a pickle that would run code when loaded
        return (exec, ("open(__import__('os').environ['MDR_PWNED'], 'w').write('ran')",))


def _rewrite(program: Path, replace: dict[str, bytes]) -> None:
    with zipfile.ZipFile(program) as archive:
        entries = {info: archive.read(info.filename) for info in archive.infolist()}
    with zipfile.ZipFile(program, "w") as archive:
        for info, content in entries.items():
            archive.writestr(info, replace.get(info.filename, content))


def _values(tree: object):  # noqa: ANN202 - every dict and list of a JSON tree
    stack = [tree]
    while stack:
        value = stack.pop()
        yield value
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)


def _rehash(folder: Path) -> None:
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    manifest["files"][PROGRAM_FILE] = {
        "sha256": sha256(folder / PROGRAM_FILE),
        "bytes": (folder / PROGRAM_FILE).stat().st_size,
    }
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))


def test_a_tampered_artifact_is_refused(artifacts: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    marker = tmp_path / "pwned"
    monkeypatch.setenv("MDR_PWNED", str(marker))
    # one changed byte of the program: the manifest's hash no longer matches
    changed = tmp_path / "changed"
    shutil.copytree(artifacts["fp32"], changed)
    blob = bytearray((changed / PROGRAM_FILE).read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (changed / PROGRAM_FILE).write_bytes(bytes(blob))
    with pytest.raises(ArtifactError, match="does not match its manifest"):
        load_artifact(changed)
    # a pickle with code in the archive, hash updated to match: refused by reading the archive, never run
    with zipfile.ZipFile(artifacts["fp32"] / PROGRAM_FILE) as archive:
        names = archive.namelist()
    sample = next(n for n in names if "sample_inputs" in n)
    weights_config = next(n for n in names if n.endswith("model_weights_config.json"))
    planted = tmp_path / "planted"
    shutil.copytree(artifacts["fp32"], planted)
    _rewrite(planted / PROGRAM_FILE, {sample: pickle.dumps(_Payload())})
    _rehash(planted)
    with pytest.raises(ArtifactError, match="weights-only load refuses"):
        load_artifact(planted)
    flagged = tmp_path / "flagged"
    shutil.copytree(artifacts["fp32"], flagged)
    with zipfile.ZipFile(flagged / PROGRAM_FILE) as archive:
        config = json.loads(archive.read(weights_config))
    first = next(iter(config["config"]))
    config["config"][first]["use_pickle"] = True
    _rewrite(flagged / PROGRAM_FILE, {weights_config: json.dumps(config).encode()})
    _rehash(flagged)
    with pytest.raises(ArtifactError, match="pickled object"):
        load_artifact(flagged)
    # code in the graph: a guard (exec'd by module()), a node calling a torch function that is not an aten op
    # (resolved by name at load), a symbolic expression (sympify'd at load); hashes updated to match
    model_json = next(n for n in names if n.endswith("models/model.json"))
    with zipfile.ZipFile(artifacts["fp32"] / PROGRAM_FILE) as archive:
        graph = json.loads(archive.read(model_json))
    code = "__import__('os').system('touch ' + __import__('os').environ['MDR_PWNED'])"
    nodes = graph["graph_module"]["graph"]["nodes"]
    symbolic = next(v for v in _values(graph) if isinstance(v, dict) and isinstance(v.get("expr_str"), str))
    for label, edit, message in [
        ("guard", lambda g: g["guards_code"].append(f"{code} == 0"), "not a shape expression"),
        (
            "target",
            lambda g: g["graph_module"]["graph"]["nodes"][len(nodes) // 2].update(target="torch.save"),
            "not an aten operator",
        ),
        (
            "sympify",
            lambda g: next(
                v for v in _values(g) if isinstance(v, dict) and v.get("expr_str") == symbolic["expr_str"]
            ).update(expr_str=code),
            "not a shape expression",
        ),
    ]:
        edited = json.loads(json.dumps(graph))
        edit(edited)
        folder = tmp_path / label
        shutil.copytree(artifacts["fp32"], folder)
        _rewrite(folder / PROGRAM_FILE, {model_json: json.dumps(edited).encode()})
        _rehash(folder)
        with pytest.raises(ArtifactError, match=message):
            load_artifact(folder)
    assert not marker.exists()
    # not an artifact / another format
    with pytest.raises(ArtifactError, match="not an exported artifact"):
        load_artifact(tmp_path)
    manifest = json.loads((flagged / MANIFEST_FILE).read_text())
    (flagged / MANIFEST_FILE).write_text(json.dumps({**manifest, "format": 99}))
    with pytest.raises(ArtifactError, match="format 99"):
        load_artifact(flagged)


def test_cli_export_and_bench_serve(run: Path, artifacts: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli-art"
    assert main(["export", "--run", str(run), "--out", str(out), "--checkpoint", "latest"]) == 0
    assert (out / PROGRAM_FILE).is_file() and json.loads((out / MANIFEST_FILE).read_text())["model"] == "din"
    assert main(["export", "--run", str(run), "--out", str(out)]) == 2  # exists, no --overwrite
    assert "already exists" in capsys.readouterr().err
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "x"), "--checkpoint", "step-3"]) == 2
    assert "no complete checkpoint step-3" in capsys.readouterr().err
    capsys.readouterr()
    assert (
        main(
            [
                "bench",
                "serve",
                "--artifact",
                str(artifacts["fp32"]),
                str(artifacts["int8"]),
                "--requests",
                "10",
                "--warmup",
                "2",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    lines = [line for line in printed.splitlines() if line.startswith(("fp32 ", "int8 "))]
    assert len(lines) == 4 and "click=" in lines[0]
    assert main(["bench", "serve", "--artifact", str(tmp_path)]) == 2


def test_shape_expressions_in_sympy_form_are_plain_and_code_is_not():
    """torch.export writes some sizes in sympy's srepr form (seen on MovieLens-100K: 16 * the batch symbol)."""
    from torchrec_mdr.serving.artifact import _plain_expression

    assert _plain_expression("Mul(Integer(16), Symbol('s78', positive=True, integer=True))")
    assert _plain_expression("Add(Mul(Integer(2), Symbol('s0', integer=True)), Integer(-1))")
    assert _plain_expression("Eq(Mod(s0, 2), 0)") and _plain_expression("L['x'][0].size()[1] == s0")
    assert not _plain_expression("Mul(Integer(16), __import__('os').getpid())")
    assert not _plain_expression("Symbol('s0', evaluate=exec('1'))")
    assert not _plain_expression("Mul.__globals__")
