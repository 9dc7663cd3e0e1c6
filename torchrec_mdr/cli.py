"""The ``mdr`` command line (also ``python -m torchrec_mdr``).

    mdr data <converter> --out DIR [options]   prepare a dataset (synthetic, movielens, taobao, aliccp, kuairand)
    mdr data show --data DIR                   print a dataset's spec and per-domain statistics
    mdr data validate --data DIR               check every file and value against the spec
    mdr bench loader [--data DIR]              reader throughput (rows/s)
    mdr bench train [--data DIR]               training samples/s per model, world size and loop
    mdr bench threads [--models ...]           what a second torch thread buys lookups, dense arch, step, reader
    mdr bench ads [--seq-lengths ...]          ADS step time / its backbone's, per T and items per chunk
    mdr bench accuracy [--suites ...]          mechanisms vs their bases (generator v1): tables in docs/results
    mdr bench proof [--suites ...]             each mechanism on each planted effect (generator v2), paired tests
    mdr bench table --paper ads|sfpnet --data DIR   a seed paper's comparison table on your data, in its layout
    mdr bench eval [--rows N ...]              eval-pass time and peak memory, gathered vs sharded metrics
    mdr bench scale [--rows N ...]             one epoch at scale: throughput, memory, eviction (docs/scale.md)
    mdr demo [--data DIR]                      the main job for now: data, its spec, one epoch read
    mdr train --config FILE --out RUN_DIR [--set k=v] [--resume]   train (--resume: from the latest checkpoint)
    mdr train ... --init-from RUN[:best|:step-N]               warm start from another run (e.g. yesterday's)
    mdr eval --run RUN_DIR [--data DIR] [--split S] [--checkpoint best|latest|step-N]   evaluate a checkpoint
    mdr predict --run RUN_DIR --out DIR [--data DIR] [--split S] [--keep a,b]   score every row of a split
    mdr export --run RUN_DIR --out DIR [--checkpoint C] [--int8]   a self-contained inference artifact
    mdr bench serve --artifact DIR [DIR ...]   serving latency at batch 1 and 256, artifact size, AUC
    mdr compare --runs RUN_A RUN_B             per-domain AUC side by side (per task), AUC Imp. of A vs B, oracle AUC
    mdr plan --config FILE --cluster FILE [--table-rows item=1e9] [--world-size N ...]
                                               torchrec's sharding plan for a GPU cluster, planned here

Every option is a field of a typed dataclass; errors in options or data are printed as one line
naming the option, file, column or row, and the command exits with status 2 (``mdr plan`` exits
with status 1 when its verdict is that the model does not fit).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from torchrec_mdr.config import ConfigError, add_dataclass_arguments, bounds, dataclass_from_args, doc
from torchrec_mdr.data.errors import DataError
from torchrec_mdr.errors import TrainingError
from torchrec_mdr.serving.artifact import ArtifactError


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
    data: Path = field(
        default=Path("data/synthetic-v2"), metadata=doc("dataset folder (generated if missing, with generator v2)")
    )
    rows: int = field(default=200_000, metadata=bounds(ge=100, help="rows to generate if the data is missing"))
    users: int = field(
        default=500,
        metadata=bounds(
            ge=1,
            help="users of generated data (400 rows each: with thousands of users the models overfit in one epoch)",
        ),
    )
    items: int = field(
        default=500,
        metadata=bounds(ge=1, help="items of generated data (few enough that their embeddings are learned in one run)"),
    )
    seq_length: int = field(default=30, metadata=bounds(ge=1, help="behaviour-sequence length of generated data"))
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


def _cmd_bench_eval(args: argparse.Namespace) -> None:
    from torchrec_mdr.bench.eval_cost import EvalBenchOptions, run

    run(dataclass_from_args(EvalBenchOptions, args))


def _cmd_bench_scale(args: argparse.Namespace) -> None:
    from torchrec_mdr.bench.scale import ScaleBenchOptions
    from torchrec_mdr.bench.scale_report import run

    run(dataclass_from_args(ScaleBenchOptions, args), command=" ".join(["mdr", *sys.argv[1:]]))


def _cmd_bench_train(args: argparse.Namespace) -> None:
    from torchrec_mdr.bench.train import TrainBenchOptions, run

    run(dataclass_from_args(TrainBenchOptions, args))


def _cmd_bench_threads(args: argparse.Namespace) -> None:
    from torchrec_mdr.bench.threads import ThreadsBenchOptions, run

    run(dataclass_from_args(ThreadsBenchOptions, args))


def _cmd_bench_ads(args: argparse.Namespace) -> None:
    from torchrec_mdr.bench.ads_backbone import AdsBenchOptions, run

    run(dataclass_from_args(AdsBenchOptions, args))


def _cmd_bench_accuracy(args: argparse.Namespace) -> None:
    from torchrec_mdr.bench.accuracy import AccuracyBenchOptions, run

    run(dataclass_from_args(AccuracyBenchOptions, args))


def _cmd_bench_proof(args: argparse.Namespace) -> None:
    from torchrec_mdr.bench.proof import ProofBenchOptions, run

    run(dataclass_from_args(ProofBenchOptions, args))


def _cmd_bench_table(args: argparse.Namespace) -> None:
    from torchrec_mdr.bench.paper_table import PaperTableOptions, run

    run(dataclass_from_args(PaperTableOptions, args))


def _cmd_demo(args: argparse.Namespace) -> None:
    from torchrec_mdr.data.reader import ReaderConfig, make_dataloader
    from torchrec_mdr.data.spec import SPEC_FILE, DatasetSpec

    options = dataclass_from_args(DemoOptions, args)
    if not (options.data / SPEC_FILE).is_file():
        from data_prep.synthetic import Options, convert

        print(f"generating the default synthetic dataset into {options.data} ...")
        convert(
            Options(
                out=options.data,
                rows=options.rows,
                users=options.users,
                items=options.items,
                categories=max(3, options.items // 25),
                brands=max(1, options.items // 10),
                seq_length=options.seq_length,
            )
        )
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
    print(
        f"\nread one epoch of 'train': {rows:,} rows in {batches} batches, {seconds:.2f} s, "
        f"{rows / seconds:,.0f} rows/s ({options.num_workers} dataloader workers)"
    )
    print(
        f"last batch: dense {tuple(batch.dense_features.shape)}, pooled keys {batch.sparse_features.keys()}, "
        f"sequence keys {batch.sequence_features.keys()}, labels {tuple(batch.labels.shape)}"
    )


def _cmd_train(args: argparse.Namespace) -> None:
    from torchrec_mdr.config import load_config
    from torchrec_mdr.experiment import ExperimentConfig
    from torchrec_mdr.training.trainer import Trainer

    overrides = list(args.overrides) + ([f"train.init_from={args.init_from}"] if args.init_from else [])
    config = load_config(ExperimentConfig, args.config, overrides)
    Trainer(config, args.out, resume=args.resume).fit()


def _cmd_plan(args: argparse.Namespace) -> None:
    from torchrec_mdr.config import from_dict, load_config, parse_override, read_file
    from torchrec_mdr.data.spec import DatasetSpec
    from torchrec_mdr.experiment import ExperimentConfig
    from torchrec_mdr.training.cluster import ClusterConfig, parse_table_rows, scale_tables
    from torchrec_mdr.training.cluster_plan import plan_cluster
    from torchrec_mdr.training.plan_report import format_plan

    config = load_config(ExperimentConfig, args.config, args.overrides)
    flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(ClusterConfig) if hasattr(args, f.name)}
    cluster_keys = {
        **(read_file(args.cluster) if args.cluster else {}),
        **{name: parse_override(f"{name}={value}")[1] for name, value in flags.items()},
    }
    source = (
        " with ".join(
            filter(None, [str(args.cluster) if args.cluster else None, "command-line flags" if flags else None])
        )
        or "cluster defaults"
    )
    cluster = from_dict(ClusterConfig, cluster_keys, source=source)
    spec_path = args.spec or config.data.path
    rows = parse_table_rows(args.table_rows)
    spec = scale_tables(DatasetSpec.load(spec_path), rows)
    plan = plan_cluster(config, spec, cluster)
    model = config.retrieval.model_name if config.task == "retrieval" else config.model.name
    eviction = config.sparse.eviction
    managed = f", eviction of {', '.join(eviction.tables)} at zch_size {eviction.zch_size:,}" if eviction.tables else ""
    scaled = f" (scaled: {', '.join(f'{t} {n:,} rows' for t, n in rows.items())})" if rows else ""
    header = (
        f"mdr plan: model {model} (embedding_dim {config.model.embedding_dim}, sparse.sharding "
        f"{config.sparse.sharding}, optimizer.sparse {config.optimizer.sparse}{managed})\n"
        f"cluster {cluster.describe()}\n"
        f"batch {plan.batch_size:,} per rank ({plan.batch_size * cluster.world_size:,} in all); "
        f"spec {spec_path}{scaled}"
    )
    print(format_plan(plan, header))
    if not plan.fits:
        raise PlanDoesNotFit()


class PlanDoesNotFit(Exception):
    """``mdr plan`` printed a verdict that the model does not fit: exit status 1, nothing more to say."""


@dataclass
class CompareOptions:
    runs: list[Path] = field(metadata=doc("finished run directories; the last is the base of AUC Imp."))


def _cmd_compare(args: argparse.Namespace) -> None:
    from torchrec_mdr.metrics.compare import comparison_table, load_metrics

    options = dataclass_from_args(CompareOptions, args)
    runs = [load_metrics(run) for run in options.runs]
    print(comparison_table(runs, [run["model"] for run in runs]))


# torchrun reads an abbreviated --run as its own --run-path: under torchrun, spell it --run-dir
_RUN_HELP = "run directory (holds config.json and checkpoints/); --run-dir under torchrun"
_DATA_HELP = (
    "prepared dataset to {what} (default: the run's data.path): the run's spec, or one whose tables "
    "grew (e.g. the next day's ids): ids the run never saw get the rows a warm start from the run "
    "would give them (a fresh run's initialisation with its train.seed); any other spec difference "
    "is an error"
)


@dataclass
class EvalOptions:
    run: Path = field(metadata=doc(_RUN_HELP, aliases=("--run-dir",)))
    data: Path | None = field(default=None, metadata=doc(_DATA_HELP.format(what="evaluate")))
    split: str = field(default="test", metadata=doc("split to evaluate"))
    checkpoint: str = field(
        default="latest",
        metadata=doc("latest, best (the best validation evaluation of train.early_stopping) or step-N"),
    )


def _cmd_eval(args: argparse.Namespace) -> None:
    from torchrec_mdr.training.evaluate import evaluate_run

    options = dataclass_from_args(EvalOptions, args)
    evaluate_run(options.run, data=options.data, split=options.split, checkpoint=options.checkpoint)


@dataclass
class PredictOptions:
    run: Path = field(metadata=doc(_RUN_HELP, aliases=("--run-dir",)))
    out: Path = field(metadata=doc("output folder of parquet part files (written atomically)"))
    data: Path | None = field(default=None, metadata=doc(_DATA_HELP.format(what="score")))
    split: str = field(default="test", metadata=doc("split to score"))
    keep: str | None = field(
        default=None,
        metadata=doc("comma-separated columns copied to the output (default: the spec's group key; '' for none)"),
    )
    checkpoint: str = field(default="latest", metadata=doc("latest, best or step-N"))
    overwrite: bool = field(default=False, metadata=doc("replace --out if it exists"))


def _cmd_predict(args: argparse.Namespace) -> None:
    from torchrec_mdr.training.predict import predict_run

    options = dataclass_from_args(PredictOptions, args)
    keep = None if options.keep is None else [c.strip() for c in options.keep.split(",") if c.strip()]
    predict_run(
        options.run,
        options.out,
        data=options.data,
        split=options.split,
        keep=keep,
        checkpoint=options.checkpoint,
        overwrite=options.overwrite,
    )


@dataclass
class ExportOptions:
    run: Path = field(metadata=doc(_RUN_HELP, aliases=("--run-dir",)))
    out: Path = field(metadata=doc("artifact folder: program.pt2 + manifest.json (written atomically)"))
    checkpoint: str = field(default="latest", metadata=doc("latest, best or step-N"))
    int8: bool = field(default=False, metadata=doc("8-bit row-wise quantised embedding tables"))
    overwrite: bool = field(default=False, metadata=doc("replace --out if it exists"))


def _cmd_export(args: argparse.Namespace) -> None:
    from torchrec_mdr.serving.export import export_run

    options = dataclass_from_args(ExportOptions, args)
    export_run(options.run, options.out, checkpoint=options.checkpoint, int8=options.int8, overwrite=options.overwrite)


def _cmd_bench_serve(args: argparse.Namespace) -> None:
    from torchrec_mdr.bench.serve import ServeBenchOptions, run

    run(dataclass_from_args(ServeBenchOptions, args))


def _subcommand(
    parent: Any, name: str, help_text: str, options: type, handler: Callable[..., int | None]
) -> argparse.ArgumentParser:
    """A subcommand whose flags are the fields of the ``options`` dataclass."""
    parser = parent.add_parser(name, help=help_text, description=help_text)
    add_dataclass_arguments(parser, options)
    parser.set_defaults(handler=handler)
    return parser


def build_parser() -> argparse.ArgumentParser:
    from data_prep.registry import CONVERTERS

    parser = argparse.ArgumentParser(prog="mdr", description="torchrec-mdr: multi-domain ranking on TorchRec")
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="prepare, inspect and validate datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    for name, converter in CONVERTERS.items():
        _subcommand(
            data_commands,
            name,
            converter.help,
            converter.module().Options,
            lambda args, name=name: _cmd_convert(name, args),
        )
    _subcommand(data_commands, "show", "print a dataset's spec and per-domain statistics", DataFolderOptions, _cmd_show)
    _subcommand(data_commands, "validate", "check files and values against the spec", ValidateOptions, _cmd_validate)

    from torchrec_mdr.bench.accuracy import AccuracyBenchOptions
    from torchrec_mdr.bench.ads_backbone import AdsBenchOptions
    from torchrec_mdr.bench.eval_cost import EvalBenchOptions
    from torchrec_mdr.bench.loader import LoaderBenchOptions
    from torchrec_mdr.bench.paper_table import PaperTableOptions
    from torchrec_mdr.bench.proof import ProofBenchOptions
    from torchrec_mdr.bench.scale import ScaleBenchOptions
    from torchrec_mdr.bench.serve import ServeBenchOptions
    from torchrec_mdr.bench.threads import ThreadsBenchOptions
    from torchrec_mdr.bench.train import TrainBenchOptions

    bench = commands.add_parser("bench", help="benchmarks that print figures")
    bench_commands = bench.add_subparsers(dest="bench_command", required=True)
    _subcommand(
        bench_commands, "loader", "reader rows/s per dataloader-worker setting", LoaderBenchOptions, _cmd_bench_loader
    )
    _subcommand(
        bench_commands, "train", "training samples/s: models x world sizes x loops", TrainBenchOptions, _cmd_bench_train
    )
    _subcommand(
        bench_commands,
        "threads",
        "ms per step of the lookups, the dense arch, the full step and the reader at 1 and 2 torch threads, "
        "interleaved in one process: speedups and each part's share of the step",
        ThreadsBenchOptions,
        _cmd_bench_threads,
    )
    _subcommand(
        bench_commands,
        "ads",
        "ADS's training step time over its backbone's (DIN): sequence lengths x "
        "items per chunk, paired per round, and a torch.profiler breakdown",
        AdsBenchOptions,
        _cmd_bench_ads,
    )
    _subcommand(
        bench_commands,
        "accuracy",
        "the seed mechanisms vs their bases on planted-effect, null and real data: tables and a plot",
        AccuracyBenchOptions,
        _cmd_bench_accuracy,
    )
    _subcommand(
        bench_commands,
        "proof",
        "each seed mechanism with vs without it on each planted effect of "
        "generator v2 (worlds x seeds, paired tests), ablations, learning curves",
        ProofBenchOptions,
        _cmd_bench_proof,
    )
    _subcommand(
        bench_commands,
        "table",
        "a seed paper's comparison table (ADS Table 2, SFPNet Table 4) trained on "
        "a prepared dataset over seeds, in the paper's layout",
        PaperTableOptions,
        _cmd_bench_table,
    )
    _subcommand(
        bench_commands,
        "eval",
        "time and peak memory of an evaluation pass: metrics from gathered rows "
        "vs sharded (reduced state, rows routed by key)",
        EvalBenchOptions,
        _cmd_bench_eval,
    )
    _subcommand(
        bench_commands,
        "scale",
        "one epoch of DIN and ADS on a large synthetic dataset at world sizes 1 "
        "and 2, with LFU eviction and full tables: samples/s, memory, occupancy, eviction time, checkpoint "
        "and AUC logged; the scale checks as figures; docs/scale.md",
        ScaleBenchOptions,
        _cmd_bench_scale,
    )
    _subcommand(
        bench_commands,
        "serve",
        "latency of exported artifacts (batch 1 and 256, median and p99) and their size",
        ServeBenchOptions,
        _cmd_bench_serve,
    )

    train = commands.add_parser("train", help="train a registered model on a prepared dataset")
    train.add_argument("--config", type=Path, default=None, help="TOML or YAML experiment config")
    train.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set model.name=dnn (repeatable)",
    )
    train.add_argument("--out", type=Path, required=True, help="run directory (config, metrics, checkpoints)")
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue from the latest complete checkpoint in --out (fresh start if there is none)",
    )
    train.add_argument(
        "--init-from",
        default=None,
        metavar="RUN[:CHECKPOINT]",
        help="warm start from another run's checkpoint (latest, or :best / :step-N), e.g. yesterday's "
        "run on today's data: = --set train.init_from=RUN; add --set train.init_optimizer=true "
        "to carry the optimizer states too",
    )
    train.set_defaults(handler=_cmd_train)

    from torchrec_mdr.training.cluster import ClusterConfig

    plan = commands.add_parser(
        "plan",
        help="plan the sharding of a run for a GPU cluster (no GPU needed)",
        description="torchrec's planner for a hypothetical cluster: per table the sharding "
        "type, kernel and ranks; per rank the memory; and a verdict",
    )
    plan.add_argument("--config", type=Path, default=None, help="TOML or YAML experiment config (as mdr train)")
    plan.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override an experiment config key (repeatable)",
    )
    plan.add_argument(
        "--spec",
        type=Path,
        default=None,
        help="dataset folder or spec.json (default: the config's data.path); no data rows are read",
    )
    plan.add_argument(
        "--table-rows",
        nargs="+",
        default=[],
        metavar="TABLE=ROWS",
        help="resize tables of the spec, e.g. item=1e9 user=2e8",
    )
    plan.add_argument(
        "--cluster", type=Path, default=None, help="cluster TOML (configs/clusters/); the flags below override its keys"
    )
    add_dataclass_arguments(plan, ClusterConfig)
    plan.set_defaults(handler=_cmd_plan)

    _subcommand(
        commands,
        "eval",
        "evaluate a run's checkpoint (latest, best or step-N) on a split; writes RUN_DIR/eval-<split>.json",
        EvalOptions,
        _cmd_eval,
    )
    _subcommand(
        commands,
        "predict",
        "score every row of a split with a run's checkpoint: parquet parts of row, "
        "domain, prob_<label> and --keep columns",
        PredictOptions,
        _cmd_predict,
    )
    _subcommand(
        commands,
        "export",
        "a self-contained inference artifact of a ranking run (torch.export program "
        "+ manifest), loadable with torchrec_mdr.serving",
        ExportOptions,
        _cmd_export,
    )
    _subcommand(
        commands,
        "compare",
        "per-domain AUC of finished runs side by side (a table per task), with AUC Imp. vs the last",
        CompareOptions,
        _cmd_compare,
    )
    _subcommand(
        commands, "demo", "generate the default data if missing, show it, read one epoch", DemoOptions, _cmd_demo
    )
    return parser


def _quiet_libraries() -> None:
    """Keep torchrec's planner notices and deprecation chatter off the user's terminal.

    They concern torchrec's own internals (topology construction, storage estimates, DDP flags) and
    say nothing actionable about a run; errors still come through.
    """
    logging.getLogger("torchrec").setLevel(logging.ERROR)
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torchrec\..*")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"fbgemm_gpu\..*")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_libraries()
    try:
        args.handler(args)
    except (ConfigError, DataError, FileExistsError, TrainingError, ArtifactError) as error:
        print(f"mdr: error: {error}", file=sys.stderr)
        return 2
    except PlanDoesNotFit:
        return 1
    except KeyboardInterrupt:
        print("mdr: interrupted", file=sys.stderr)
        return 130
    from torchrec_mdr.training.rank_exit import end_if_one_of_several_ranks

    end_if_one_of_several_ranks()  # a rank of a torchrun job, its work done: no exit-time teardown
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
