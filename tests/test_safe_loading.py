"""Loading a checkpoint never runs code: tampered side files and DCP metadata are refused.

A tampered file here is a pickle whose payload, when unpickled by a trusting loader, would create a
marker file (``exec``); the tests check that loading refuses it with one error naming the file and
that the marker never appears. Checkpoints as written today load with ``weights_only=True`` and no
extra allowances; side files of the previous format (numpy's RNG state as an array) still load.
"""

from __future__ import annotations

import pickle
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from torchrec_mdr.errors import TrainingError
from torchrec_mdr.experiment import ExperimentConfig, OptimizerConfig, TrainConfig
from torchrec_mdr.data.reader import ReaderConfig
from torchrec_mdr.models.registry import ModelConfig
from torchrec_mdr.training.checkpoint import rng_state, set_rng_state
from torchrec_mdr.training.evaluate import evaluate_run
from torchrec_mdr.safe_files import check_dcp_metadata, load_side_file


class Payload:
    """Unpickled by a trusting loader, it creates ``marker`` (a stand-in for any code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204 - the pickle protocol
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-step run (DNN on tiny planted-effect data) with its final checkpoint."""
    from data_prep.synthetic import Options, convert
    from torchrec_mdr.training.trainer import Trainer

    root = tmp_path_factory.mktemp("safe")
    data = root / "syn"
    convert(Options(out=data, rows=600, users=40, items=60, categories=6, brands=10, seq_length=5, min_seq_length=0))
    config = ExperimentConfig(
        data=ReaderConfig(path=data, batch_size=64),
        model=ModelConfig(name="dnn", embedding_dim=4),
        optimizer=OptimizerConfig(dense="adam"),
        train=TrainConfig(max_steps=2, device="cpu", pipeline="plain", seed=1),
    )
    Trainer(config, root / "run").fit()
    return root / "run"


def copy_run(run: Path, to: Path) -> tuple[Path, Path]:
    """A copy of ``run`` and its final checkpoint folder."""
    shutil.copytree(run, to)
    (checkpoint,) = [p for p in (to / "checkpoints").iterdir() if p.is_dir()]
    return to, checkpoint


def test_side_files_load_weights_only_without_allowances(run: Path) -> None:
    (checkpoint,) = [p for p in (run / "checkpoints").iterdir() if p.is_dir()]
    rank_file = checkpoint / "rank0.pt"
    assert torch.serialization.get_unsafe_globals_in_checkpoint(rank_file) == []
    state = torch.load(rank_file, weights_only=True)
    assert set(state) == {"rng", "modules"}
    random.random(), np.random.rand(), torch.rand(1)  # move every stream, then restore the saved one
    set_rng_state(state["rng"])
    assert torch.equal(torch.get_rng_state(), state["rng"]["torch"])
    assert rng_state()["numpy"]["pos"] == state["rng"]["numpy"]["pos"]


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path: Path) -> None:
    saved = rng_state()
    expected = (random.random(), float(np.random.rand()), np.random.normal(), float(torch.rand(1)))
    torch.save({"rng": saved}, tmp_path / "rng.pt")
    random.random(), np.random.rand(), torch.rand(3)
    set_rng_state(load_side_file(tmp_path / "rng.pt")["rng"])
    assert (random.random(), float(np.random.rand()), np.random.normal(), float(torch.rand(1))) == expected


def test_side_files_of_the_previous_format_still_load(tmp_path: Path) -> None:
    """Before this format, numpy's RNG state was kept as numpy's own tuple (an array inside)."""
    old = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    expected = (random.random(), float(np.random.rand()))
    torch.save({"rng": old, "modules": {}}, tmp_path / "rank0.pt")
    np.random.rand(5), random.random()
    set_rng_state(load_side_file(tmp_path / "rank0.pt")["rng"])
    assert (random.random(), float(np.random.rand())) == expected


def test_a_tampered_side_file_is_refused_and_nothing_runs(run: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    copy, checkpoint = copy_run(run, tmp_path / "run")
    state = torch.load(checkpoint / "rank0.pt", weights_only=True)
    state["modules"] = Payload(marker)
    torch.save(state, checkpoint / "rank0.pt")
    with pytest.raises(TrainingError) as error:
        load_side_file(checkpoint / "rank0.pt")
    assert str(checkpoint / "rank0.pt") in str(error.value) and "builtins.exec" in str(error.value)
    with pytest.raises(TrainingError, match=r"refusing to load .*rank0\.pt"):
        evaluate_run(copy)  # the run's own loader goes through the same check
    assert not marker.exists()
    (checkpoint / "rank0.pt").write_bytes(b"not a torch file")
    with pytest.raises(TrainingError, match=r"cannot read checkpoint file .*rank0\.pt"):
        load_side_file(checkpoint / "rank0.pt")


def test_tampered_dcp_metadata_is_refused_and_nothing_runs(run: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    copy, checkpoint = copy_run(run, tmp_path / "run")
    check_dcp_metadata(checkpoint)  # as written: accepted
    metadata = pickle.loads((checkpoint / ".metadata").read_bytes())
    metadata.planner_data = Payload(marker)
    (checkpoint / ".metadata").write_bytes(pickle.dumps(metadata))
    with pytest.raises(TrainingError, match=r"refusing to load .*\.metadata: it refers to builtins\.exec"):
        evaluate_run(copy)
    assert not marker.exists()


def test_dcp_entries_stored_as_pickled_bytes_are_refused(run: Path, tmp_path: Path) -> None:
    """DCP loads bytes entries with torch.load(weights_only=False): a checkpoint declaring one is refused."""
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    _copy, checkpoint = copy_run(run, tmp_path / "run")
    metadata = pickle.loads((checkpoint / ".metadata").read_bytes())
    key = next(iter(metadata.state_dict_metadata))
    metadata.state_dict_metadata[key] = BytesStorageMetadata()
    (checkpoint / ".metadata").write_bytes(pickle.dumps(metadata))
    with pytest.raises(TrainingError, match="refusing to load checkpoint .*stored as pickled objects"):
        check_dcp_metadata(checkpoint)
