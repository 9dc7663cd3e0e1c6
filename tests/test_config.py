"""The typed config system: files, overrides, validation errors that name key and file."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from torchrec_mdr.config import ConfigError, add_dataclass_arguments, bounds, dataclass_from_args, load_config, to_dict


@dataclass
class Optim:
    name: Literal["adam", "adagrad"] = "adam"
    lr: float = field(default=0.01, metadata=bounds(gt=0))


@dataclass
class Run:
    data: Path = Path("data/x")
    batch_size: int = field(default=128, metadata=bounds(ge=1))
    layers: list[int] = field(default_factory=lambda: [64, 32], metadata=bounds(ge=1))
    optim: Optim = field(default_factory=Optim)
    note: str | None = None
    shuffle: bool = True

    def validate(self) -> None:
        if self.batch_size > 10_000:
            raise ConfigError("batch_size above 10000 is not supported here")


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_toml_and_yaml_give_the_same_config(tmp_path):
    toml = write(tmp_path, "a.toml", 'batch_size = 256\nlayers = [8]\n[optim]\nname = "adagrad"\nlr = 0.1\n')
    yaml = write(tmp_path, "a.yaml", "batch_size: 256\nlayers: [8]\noptim:\n  name: adagrad\n  lr: 0.1\n")
    a, b = load_config(Run, toml), load_config(Run, yaml)
    assert a == b
    assert a.optim == Optim("adagrad", 0.1) and a.layers == [8] and a.data == Path("data/x")


def test_overrides_use_dotted_keys(tmp_path):
    path = write(tmp_path, "a.toml", "batch_size = 256\n")
    run = load_config(Run, path, ["optim.lr=0.5", "data=/tmp/d", "layers=[1, 2, 3]", "note=hello", "shuffle=false"])
    assert run.optim.lr == 0.5 and run.data == Path("/tmp/d") and run.layers == [1, 2, 3]
    assert run.note == "hello" and run.shuffle is False and run.batch_size == 256
    assert to_dict(run)["data"] == "/tmp/d"


def test_unknown_key_names_key_and_file(tmp_path):
    path = write(tmp_path, "a.toml", "[optim]\nlearning_rate = 0.1\n")
    with pytest.raises(
        ConfigError, match=r"unknown key 'optim.learning_rate' in .*a.toml; known keys: \['lr', 'name'\]"
    ):
        load_config(Run, path)
    with pytest.raises(ConfigError, match=r"unknown key 'batchsize' in --set overrides"):
        load_config(Run, None, ["batchsize=3"])


def test_wrong_type_names_key_and_file(tmp_path):
    path = write(tmp_path, "a.yaml", "batch_size: many\n")
    with pytest.raises(ConfigError, match=r"'batch_size' in .*a.yaml: expected an integer, got 'many'"):
        load_config(Run, path)
    with pytest.raises(
        ConfigError, match=r"'optim.name' in --set overrides: 'sgd' is not one of \['adam', 'adagrad'\]"
    ):
        load_config(Run, None, ["optim.name=sgd"])
    with pytest.raises(ConfigError, match=r"'layers\[1\]'.*expected an integer"):
        load_config(Run, None, ["layers=[1, x]"])


def test_out_of_range_names_key(tmp_path):
    path = write(tmp_path, "a.toml", "[optim]\nlr = -1.0\n")
    with pytest.raises(ConfigError, match=r"'optim.lr' in .*a.toml: -1.0 is out of range \(must be > 0\)"):
        load_config(Run, path)
    with pytest.raises(ConfigError, match=r"'layers' .*: 0 is out of range"):
        load_config(Run, None, ["layers=[4, 0]"])
    with pytest.raises(ConfigError, match=r"batch_size above 10000"):
        load_config(Run, None, ["batch_size=20000"])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match=r"does not exist"):
        load_config(Run, tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match=r"is not valid"):
        load_config(Run, write(tmp_path, "b.toml", "batch_size = = 3\n"))
    with pytest.raises(ConfigError, match=r"unknown format"):
        load_config(Run, write(tmp_path, "b.ini", "x"))
    with pytest.raises(ConfigError, match=r"must look like key=value"):
        load_config(Run, None, ["batch_size"])


def test_command_line_flags_from_dataclass():
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, Optim)
    assert dataclass_from_args(Optim, parser.parse_args(["--lr", "0.3"])) == Optim("adam", 0.3)
    with pytest.raises(SystemExit):
        parser.parse_args(["--name", "sgd"])
    with pytest.raises(ConfigError, match=r"'lr' in command line: -2.0 is out of range"):
        dataclass_from_args(Optim, parser.parse_args(["--lr", "-2"]))
