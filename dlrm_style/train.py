"""DLRM / DLRM-DCNv2 training program with the flags of torchrec's DLRM example (``dlrm_main.py``).

    python -m dlrm_style.train --dataset data/synthetic-planted --batch_size 2048 --epochs 1 \\
        --embedding_dim 64 --dense_arch_layer_sizes 512,256,64 --over_arch_layer_sizes 512,512,256,1 \\
        --interaction_type dcn --dcn_num_layers 3 --dcn_low_rank_dim 512 --learning_rate 0.05 --adagrad
    torchrun --nproc_per_node 2 -m dlrm_style.train --dataset DIR ...

There is no second training loop here: the flags are mapped onto the typed
:class:`~torchrec_mdr.experiment.ExperimentConfig` (as ``--set`` overrides, on top of an optional
``--config`` file) and the run is :class:`~torchrec_mdr.training.trainer.Trainer` — DMP sharding,
fused sparse optimizer, TrainPipelineSparseDist, per-domain metrics and ``metrics.json`` in ``--out``.
Flags left out keep the config's value. ``--set KEY=VALUE`` (applied last) reaches every other key.

Mapping, and where it differs from torchrec's example:

* ``--dataset DIR``: a prepared dataset folder (``data.path``), instead of the Criteo-specific flags.
* ``--interaction_type original|dcn`` picks ``model.name = dlrm | dlrm_dcn``; the arch flags go to
  that model's section. ``--dcn_*`` with ``original`` is an error (torchrec ignores them silently).
* ``--adagrad``: Adagrad for the embeddings (fused fbgemm exact Adagrad) and the dense parameters;
  otherwise SGD for both, as in the example. ``--learning_rate`` sets both rates. Its default here is
  0.1: torchrec's 15.0 is tuned for Criteo 1TB with SGD at very large global batches.
* ``--limit_train_batches N`` stops after N training steps in all (``train.max_steps``), not N per epoch.
* ``--validation_freq_within_epoch N`` evaluates the validation split every N steps (``train.eval_every``).
* ``--lr_warmup_steps`` maps to ``optimizer.warmup_steps`` (linear warm-up); the example's polynomial
  ``--lr_decay_*`` have no counterpart (use ``--set optimizer.decay=...``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from torchrec_mdr.config import ConfigError, load_config
from torchrec_mdr.data.errors import DataError
from torchrec_mdr.errors import TrainingError
from torchrec_mdr.experiment import ExperimentConfig

INTERACTIONS = {"original": "dlrm", "dcn": "dlrm_dcn"}


def _sizes(text: str) -> list[int]:
    """'512,256,64' -> [512, 256, 64] (argparse type)."""
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not sizes:
        raise argparse.ArgumentTypeError("expected at least one layer size")
    return sizes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dlrm_style.train", description="torchrec-style DLRM / DLRM-DCNv2 trainer (torchrec-mdr Trainer)"
    )
    add = parser.add_argument
    add("--dataset", type=Path, default=None, help="prepared dataset folder (data.path)")
    add("--out", type=Path, default=Path("runs/dlrm_style"), help="run directory (config, metrics.json, logs)")
    add("--config", type=Path, default=None, help="optional TOML/YAML experiment config the flags override")
    add(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config key, applied after the flags (repeatable)",
    )
    add("--epochs", type=int, default=None, help="passes over the train split (train.epochs)")
    add("--batch_size", type=int, default=None, help="rows per batch per rank (data.batch_size)")
    add(
        "--drop_last_training_batch",
        action="store_true",
        default=None,
        help="drop each rank's last partial batch (data.drop_last)",
    )
    add("--limit_train_batches", type=int, default=None, help="training steps in all (train.max_steps)")
    add("--embedding_dim", type=int, default=None, help="embedding dimension of every table (model.embedding_dim)")
    add(
        "--dense_arch_layer_sizes",
        type=_sizes,
        default=None,
        help="comma-separated DenseArch sizes; the last equals the embedding dimension",
    )
    add(
        "--over_arch_layer_sizes",
        type=_sizes,
        default=None,
        help="comma-separated OverArch sizes; the last equals the number of labels",
    )
    add(
        "--interaction_type",
        choices=list(INTERACTIONS),
        default="original",
        help="original (pairwise dot products, DLRM) or dcn (low-rank cross net, DLRM-DCNv2)",
    )
    add("--dcn_num_layers", type=int, default=None, help="cross layers (dcn only)")
    add("--dcn_low_rank_dim", type=int, default=None, help="rank of each cross layer (dcn only)")
    add(
        "--sequences",
        choices=["mean", "none"],
        default=None,
        help="behaviour sequences as mean-pooled interaction features, or left out",
    )
    add("--learning_rate", type=float, default=0.1, help="embedding and dense learning rate")
    add("--adagrad", action="store_true", help="Adagrad for embeddings and dense parameters (else SGD)")
    add("--lr_warmup_steps", type=int, default=None, help="linear warm-up steps (optimizer.warmup_steps)")
    add(
        "--validation_freq_within_epoch",
        type=int,
        default=None,
        help="evaluate the validation split every N steps (train.eval_every)",
    )
    add(
        "--shuffle_training_set",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="shuffle the train split (data.shuffle)",
    )
    add("--num_workers", type=int, default=None, help="dataloader workers per rank (data.num_workers)")
    add("--seed", type=int, default=None, help="model initialisation and data order (train.seed, data.seed)")
    add("--print_sharding_plan", action="store_true", help="print the sharding plan of every table (rank 0)")
    return parser


def flags_to_overrides(args: argparse.Namespace) -> list[str]:
    """The ``--set``-style overrides that the flags stand for (flags left out contribute nothing)."""
    if args.interaction_type != "dcn" and (args.dcn_num_layers is not None or args.dcn_low_rank_dim is not None):
        raise ConfigError("--dcn_num_layers / --dcn_low_rank_dim apply to --interaction_type dcn only")
    model = INTERACTIONS[args.interaction_type]
    optimizer = "adagrad" if args.adagrad else "sgd"
    pairs: list[tuple[str, object]] = [
        ("model.name", model),
        ("optimizer.sparse", optimizer),
        ("optimizer.dense", optimizer),
        ("optimizer.sparse_lr", args.learning_rate),
        ("optimizer.dense_lr", args.learning_rate),
        ("data.path", args.dataset),
        ("train.epochs", args.epochs),
        ("data.batch_size", args.batch_size),
        ("data.drop_last", args.drop_last_training_batch),
        ("train.max_steps", args.limit_train_batches),
        ("model.embedding_dim", args.embedding_dim),
        (f"model.{model}.dense_arch_layer_sizes", args.dense_arch_layer_sizes),
        (f"model.{model}.over_arch_layer_sizes", args.over_arch_layer_sizes),
        (f"model.{model}.sequences", args.sequences),
        (f"model.{model}.dcn_num_layers", args.dcn_num_layers),
        (f"model.{model}.dcn_low_rank_dim", args.dcn_low_rank_dim),
        ("optimizer.warmup_steps", args.lr_warmup_steps),
        ("train.eval_every", args.validation_freq_within_epoch),
        ("data.shuffle", args.shuffle_training_set),
        ("data.num_workers", args.num_workers),
        ("train.seed", args.seed),
        ("data.seed", args.seed),
    ]
    return [f"{key}={_yaml_value(value)}" for key, value in pairs if value is not None]


def _yaml_value(value: object) -> str:
    """Text that :func:`torchrec_mdr.config.parse_override` reads back as ``value``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float):
        text = repr(value)  # YAML 1.1 reads 1e-05 as a string: give the mantissa a point
        mantissa, _, exponent = text.partition("e")
        return f"{mantissa}.0e{exponent}" if exponent and "." not in mantissa else text
    return str(value)


def build_config(args: argparse.Namespace) -> ExperimentConfig:
    """Config file (optional) <- flags <- ``--set`` overrides, validated as one ExperimentConfig."""
    if args.dataset is None and args.config is None and not any(o.startswith("data.path=") for o in args.overrides):
        raise ConfigError("--dataset is required (a prepared dataset folder; see `mdr data --help`)")
    return load_config(ExperimentConfig, args.config, flags_to_overrides(args) + list(args.overrides))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = build_config(args)
        from torchrec_mdr.training.trainer import Trainer

        trainer = Trainer(config, args.out)
        if args.print_sharding_plan and trainer.ctx.is_main:
            print(trainer.model.plan)
        metrics = trainer.fit()
        if trainer.ctx.is_main:
            print(f"AUROC over {metrics['split']} set: {metrics['auc']:.6f}  (metrics: {args.out / 'metrics.json'})")
    except (ConfigError, DataError, TrainingError) as error:
        print(f"dlrm_style.train: error: {error}", file=sys.stderr)
        return 2
    from torchrec_mdr.training.rank_exit import end_if_one_of_several_ranks

    end_if_one_of_several_ranks()  # a rank of a torchrun job, its work done: no exit-time teardown
    return 0


if __name__ == "__main__":
    sys.exit(main())
