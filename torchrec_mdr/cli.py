"""The ``mdr`` command line (also ``python -m torchrec_mdr``).

    mdr data <converter> --out DIR [options]   prepare a dataset (synthetic, movielens, taobao, aliccp, kuairand)
    mdr data show --data DIR                   print a dataset's spec and per-domain statistics
    mdr data validate --data DIR               check every file and value against the spec
    mdr bench loader [--data DIR]              reader throughput (rows/s)
    mdr demo [--data DIR]                      the main job for now: data, its spec, one epoch read

Every option is a field of a typed dataclass; errors in options or data are printed as one line
naming the option, file, column or row, and the command exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from torchrec_mdr.config import ConfigError, add_dataclass_arguments, bounds, dataclass_from_args, doc
from torchrec_mdr.data.errors import DataError
from torchrec_mdr.errors import TrainingError


@dataclass
class DataFolderOptions:
    data: Path = field(metadata=doc("prepared dataset folder (holds spec.json)"))


@dataclass
class ValidateOptions:
    data: Path = field(metadata=doc("prepared dataset folder (holds spec.json)"))
    split: list[str] | None = field(default=None, metadata=doc("splits to check (default: all)"))
    metadata_only: bool = field(default=False, metadata=doc("check schema and statistics only, not every value"))


@dataclass
class DemoOptions:
    data: Path = field(default=Path("data/synthetic-default"), metadata=doc("dataset folder (generated if missing)"))
    rows: int = field(default=200_000, metadata=bounds(ge=100, help="rows to generate if the data is missing"))
    batch_size: int = field(default=4096, metadata=bounds(ge=1, help="rows per batch"))
    num_workers: int = field(default=0, metadata=bounds(ge=0, help="dataloader workers"))


def _cmd_convert(name: str, args: argparse.Namespace) -> None:
    from data_prep.registry import CONVERTERS

    module = CONVERTERS[name].module()
    options = dataclass_from_args(module.Options, args)
    start = time.perf_counter()
    spec = module.convert(options)
    print(spec.describe())
    print(f"\nwrote {options.out} in {time.perf_counter() - start:.1f} s")


def _cmd_show(args: argparse.Namespace) -> None:
    from torchrec_mdr.data.spec import DatasetSpec

    options = dataclass_from_args(DataFolderOptions, args)
    print(DatasetSpec.load(options.data).describe())


def _cmd_validate(args: argparse.Namespace) -> None:
    from torchrec_mdr.data.validate import validate_dataset

    options = dataclass_from_args(ValidateOptions, args)
    spec = validate_dataset(options.data, options.split, full=not options.metadata_only)
    splits = options.split or list(spec.splits)
    rows = sum(spec.splits[s].rows for s in splits)
    level = "schema and statistics" if options.metadata_only else "every value"
    print(f"{options.data}: OK ({level} of {rows:,} rows in splits {', '.join(splits)})")


def _cmd_bench_loader(args: argparse.Namespace) -> None:
    from torchrec_mdr.bench.loader import LoaderBenchOptions, run

    run(dataclass_from_args(LoaderBenchOptions, args))


def _cmd_demo(args: argparse.Namespace) -> None:
    from torchrec_mdr.data.reader import ReaderConfig, make_dataloader
    from torchrec_mdr.data.spec import SPEC_FILE, DatasetSpec

    options = dataclass_from_args(DemoOptions, args)
    if not (options.data / SPEC_FILE).is_file():
        from data_prep.synthetic import Options, convert

        print(f"generating the default synthetic dataset into {options.data} ...")
        convert(Options(out=options.data, rows=options.rows))
    spec = DatasetSpec.load(options.data)
    print(spec.describe())
    config = ReaderConfig(path=options.data, batch_size=options.batch_size, num_workers=options.num_workers)
    loader = make_dataloader(config, split="train")
    start = time.perf_counter()
    rows = batches = 0
    for batch in loader:
        rows += batch.batch_size
        batches += 1
    seconds = time.perf_counter() - start
    print(f"\nread one epoch of 'train': {rows:,} rows in {batches} batches, {seconds:.2f} s, "
          f"{rows / seconds:,.0f} rows/s ({options.num_workers} dataloader workers)")
    print(f"last batch: dense {tuple(batch.dense_features.shape)}, pooled keys {batch.sparse_features.keys()}, "
          f"sequence keys {batch.sequence_features.keys()}, labels {tuple(batch.labels.shape)}")


def _cmd_train(args: argparse.Namespace) -> None:
    from torchrec_mdr.config import load_config
    from torchrec_mdr.experiment import ExperimentConfig
    from torchrec_mdr.training.trainer import Trainer

    config = load_config(ExperimentConfig, args.config, args.overrides)
    Trainer(config, args.out).fit()


def build_parser() -> argparse.ArgumentParser:
    from data_prep.registry import CONVERTERS

    parser = argparse.ArgumentParser(prog="mdr", description="torchrec-mdr: multi-domain ranking on TorchRec")
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="prepare, inspect and validate datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    for name, converter in CONVERTERS.items():
        sub = data_commands.add_parser(name, help=converter.help, description=converter.help)
        add_dataclass_arguments(sub, converter.module().Options)
        sub.set_defaults(handler=lambda args, name=name: _cmd_convert(name, args))
    show = data_commands.add_parser("show", help="print a dataset's spec and per-domain statistics")
    add_dataclass_arguments(show, DataFolderOptions)
    show.set_defaults(handler=_cmd_show)
    validate = data_commands.add_parser("validate", help="check files and values against the spec")
    add_dataclass_arguments(validate, ValidateOptions)
    validate.set_defaults(handler=_cmd_validate)

    bench = commands.add_parser("bench", help="benchmarks that print figures")
    bench_commands = bench.add_subparsers(dest="bench_command", required=True)
    from torchrec_mdr.bench.loader import LoaderBenchOptions

    loader = bench_commands.add_parser("loader", help="reader rows/s per dataloader-worker setting")
    add_dataclass_arguments(loader, LoaderBenchOptions)
    loader.set_defaults(handler=_cmd_bench_loader)

    train = commands.add_parser("train", help="train a registered model on a prepared dataset")
    train.add_argument("--config", type=Path, default=None, help="TOML or YAML experiment config")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. --set model.name=dnn (repeatable)")
    train.add_argument("--out", type=Path, required=True, help="run directory (config, metrics, checkpoints)")
    train.set_defaults(handler=_cmd_train)

    demo = commands.add_parser("demo", help="generate the default data if missing, show it, read one epoch")
    add_dataclass_arguments(demo, DemoOptions)
    demo.set_defaults(handler=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.handler(args)
    except (ConfigError, DataError, FileExistsError, TrainingError) as error:
        print(f"mdr: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mdr: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
