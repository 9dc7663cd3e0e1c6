"""What ``mdr bench proof`` trains and where it keeps it: the options, the compared variants (each
mechanism's pair of models that differ only by it), and the names of datasets and runs. Shared by
:mod:`torchrec_mdr.bench.proof` (training) and :mod:`torchrec_mdr.bench.proof_report` (tables)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

from torchrec_mdr.bench.accuracy_setup import Variant
from torchrec_mdr.config import ConfigError, bounds, doc

SUITES: tuple[str, ...] = (
    "specificity",
    "ablation",
    "models",
    "scaling",
    "dose",
    "probes",
    "options",
    "movielens",
    "seeds",
)
EFFECTS: tuple[str, ...] = ("none", "psrg", "pcrg", "sfpnet", "dsbn", "se", "all")
MECHANISMS: tuple[str, ...] = ("psrg", "pcrg", "sfpnet", "dsbn", "se")

# psrg_shared_init=identity: the default these benchmarks' archived ADS runs were trained with (the default is
# identity_noise since the options suite measured it); pinned so that every label keeps meaning what it did
_ADS = ("model.ads.backbone=din", 'model.ads.domain_features=["user_activity"]', "model.ads.psrg_shared_init=identity")
_SFP = ('model.sfpnet.scenario_features=["user_activity"]',)
ADS = Variant("ADS", "ads", _ADS)
ADS_NO_PCRG = Variant("ADS w/o PCRG", "ads", (*_ADS, "model.ads.use_pcrg=false"), "ADS")
ADS_NEITHER = Variant(
    "ADS w/o PCRG & PSRG", "ads", (*_ADS, "model.ads.use_pcrg=false", "model.ads.use_psrg=false"), "ADS"
)
SFPNET = Variant("SFPNet", "sfpnet", _SFP)
SFPNET_NO_STB = Variant("SFPNet w/o STB", "sfpnet", (*_SFP, "model.sfpnet.num_blocks=0"), "SFPNet")
SFPNET_NO_SDNN = Variant("SFPNet w/o S-DNN", "sfpnet", (*_SFP, "model.sfpnet.scenario_aware_dnn=false"), "SFPNet")
ADIN = Variant("ADIN", "adin")
ADIN_NO_DSBN = Variant("ADIN w/o DSBN", "adin", ("model.adin.use_dsbn=false",), "ADIN")
ADIN_NO_SE = Variant("ADIN w/o SE", "adin", ("model.adin.use_domain_interest=false",), "ADIN")

# mechanism -> (the model with it, the same model without it)
PAIRS: dict[str, tuple[Variant, Variant]] = {
    "psrg": (ADS_NO_PCRG, ADS_NEITHER),
    "pcrg": (ADS, ADS_NO_PCRG),
    "sfpnet": (SFPNET, SFPNET_NO_STB),
    "dsbn": (ADIN, ADIN_NO_DSBN),
    "se": (ADIN, ADIN_NO_SE),
}

_ADS_NOISE = (*_ADS, "model.ads.psrg_shared_init=identity_noise")  # the later option wins: the current default
# ADS's ablation order again with PSRG's default start (identity + noise, the options suite's finding); the
# ablated rows are compared with the full model of their own start
ADS_NOISE = Variant("ADS, W_shared identity+noise", "ads", _ADS_NOISE, "ADS")
ADS_NO_PCRG_NOISE = Variant(
    "ADS w/o PCRG, W_shared identity+noise", "ads", (*_ADS_NOISE, "model.ads.use_pcrg=false"), ADS_NOISE.label
)

# the ablation suite's groups (``--ablation-models``), each a full model and its single ablations
ABLATION_GROUPS: dict[str, tuple[Variant, ...]] = {
    "ads": (ADS, ADS_NO_PCRG, ADS_NEITHER),
    "ads_noise": (ADS_NOISE, ADS_NO_PCRG_NOISE, replace(ADS_NEITHER, base=ADS_NOISE.label)),
    "sfpnet": (
        SFPNET,
        Variant("SFPNet w/o DAP", "sfpnet", (*_SFP, "model.sfpnet.distribution_aware_pooling=false"), "SFPNet"),
        Variant("SFPNet w/o SAM", "sfpnet", (*_SFP, "model.sfpnet.use_sam=false"), "SFPNet"),
        Variant("SFPNet w/o RTM", "sfpnet", (*_SFP, "model.sfpnet.use_rtm=false"), "SFPNet"),
        SFPNET_NO_SDNN,
        SFPNET_NO_STB,
    ),
    "adin": (
        ADIN,
        ADIN_NO_DSBN,
        ADIN_NO_SE,
        Variant("ADIN w/o self-training", "adin", ("model.adin.self_training=false",), "ADIN"),
    ),
}
# every ablation variant once (by label)
ABLATIONS: tuple[Variant, ...] = tuple({v.label: v for group in ABLATION_GROUPS.values() for v in group}.values())


def _each_below_the_full(variants: tuple[Variant, ...]) -> tuple[tuple[str, ...], ...]:
    return tuple((variants[0].label, v.label) for v in variants[1:])


# the papers' orders the ablation table checks: each chain must be decreasing in mean test AUC
ABLATION_ORDERS: dict[str, tuple[tuple[str, ...], ...]] = {
    "ads": ((ADS.label, ADS_NO_PCRG.label, ADS_NEITHER.label),),  # ADS > w/o PCRG > w/o PCRG & PSRG
    "ads_noise": ((ADS_NOISE.label, ADS_NO_PCRG_NOISE.label, ADS_NEITHER.label),),
    "sfpnet": _each_below_the_full(ABLATION_GROUPS["sfpnet"]),
    "adin": _each_below_the_full(ABLATION_GROUPS["adin"]),
}

# the default ``--ablation-models``: the papers' own ablations (``ads_noise`` on request)
ABLATION_MODELS: tuple[str, ...] = ("ads", "sfpnet", "adin")


def chosen_ablations(ablation_models: list[str]) -> list[Variant]:
    """The ablation suite's variants of the chosen groups, in the table's order (a variant shared by two
    groups appears in each, with that group's base)."""
    return [v for group, variants in ABLATION_GROUPS.items() if group in ablation_models for v in variants]


class Option(NamedTuple):
    """One questioned option of the ``options`` suite (issue item 5)."""

    with_option: Variant  # the model with the option
    default: Variant  # the same model with the default
    effect: str  # the planted effect it is tested on, at the ``doses`` strengths ("all": at dose 1)
    bare: Variant  # the model without the mechanism the option concerns: does the mechanism pay with it?


OPTIONS: dict[str, Option] = {
    "psrg_shared_init=xavier": Option(
        Variant(
            "ADS w/o PCRG, W_shared xavier",
            "ads",
            (*_ADS, "model.ads.use_pcrg=false", "model.ads.psrg_shared_init=xavier"),
            "ADS w/o PCRG",
        ),
        ADS_NO_PCRG,
        "psrg",
        ADS_NEITHER,
    ),
    "psrg_shared_init=identity_noise": Option(
        Variant(
            "ADS w/o PCRG, W_shared identity+noise",
            "ads",
            (*_ADS, "model.ads.use_pcrg=false", "model.ads.psrg_shared_init=identity_noise"),
            "ADS w/o PCRG",
        ),
        ADS_NO_PCRG,
        "psrg",
        ADS_NEITHER,
    ),
    "dnn_gate_scale=2": Option(
        Variant("SFPNet, S-DNN gate scale 2", "sfpnet", (*_SFP, "model.sfpnet.dnn_gate_scale=2.0"), "SFPNet"),
        SFPNET,
        "all",
        SFPNET_NO_SDNN,
    ),
    "dnn_gate_stop_gradient=true": Option(
        Variant(
            "SFPNet, S-DNN gates stop-gradient", "sfpnet", (*_SFP, "model.sfpnet.dnn_gate_stop_gradient=true"), "SFPNet"
        ),
        SFPNET,
        "all",
        SFPNET_NO_SDNN,
    ),
}

# the models of the ``scaling`` suite: do the seed models pull ahead of their bases with more rows?
SCALING_LABELS: tuple[str, ...] = ("DNN", "DIN", "ADS", "SFPNet")

MODELS: tuple[Variant, ...] = (
    Variant("DNN", "dnn"),
    Variant("DIN", "din"),
    Variant("ADS", "ads", _ADS, "DIN"),
    Variant("SFPNet", "sfpnet", _SFP, "DNN"),
    Variant("SharedBottom", "shared_bottom"),
    Variant("ADIN", "adin", (), "SharedBottom"),
    # no domain mechanism, but explicit inner products (FM): can the backbone learn the bilinear main effects?
    Variant("DeepFM", "deepfm", (), "DNN"),
)


def movielens_models(alternatives: list[str], ablation_groups: tuple[str, ...] | list[str] = ()) -> tuple[Variant, ...]:
    """The ``movielens`` suite's models: :data:`MODELS`, then each chosen option of :data:`OPTIONS` that
    concerns the whole model (tried on ``all``), paired with its default model: an option that could become a
    default is checked on the real data too; then the chosen ``ablation_groups``' variants (once each by label:
    the full models are already among :data:`MODELS`, with the same overrides)."""
    chosen = MODELS + tuple(
        option.with_option for name, option in OPTIONS.items() if name in alternatives and option.effect == "all"
    )
    known = {v.label for v in chosen}
    return chosen + tuple(
        {v.label: v for v in chosen_ablations(list(ablation_groups)) if v.label not in known}.values()
    )


@dataclass
class ProofBenchOptions:
    out: Path = field(default=Path("docs/results/v2"), metadata=doc("folder for the tables and plots"))
    work: Path = field(
        default=Path("data/bench-proof"), metadata=doc("datasets and per-run metrics (kept: a re-run resumes)")
    )
    suites: list[str] = field(default_factory=lambda: list(SUITES), metadata=doc(f"any of {', '.join(SUITES)}"))
    effects: list[str] = field(
        default_factory=lambda: list(EFFECTS),
        metadata=doc(f"planted datasets of the specificity suite: any of {', '.join(EFFECTS)}"),
    )
    mechanisms: list[str] = field(
        default_factory=lambda: list(MECHANISMS),
        metadata=doc(f"rows of the specificity suite: any of {', '.join(MECHANISMS)}"),
    )
    worlds: int = field(default=3, metadata=bounds(ge=1, help="generator worlds (world seeds 0..N-1)"))
    seeds: int = field(default=5, metadata=bounds(ge=1, help="training seeds per world"))
    first_seed: int = field(
        default=0,
        metadata=bounds(
            ge=0,
            help="train seeds first_seed .. first_seed + seeds - 1 "
            "(to add seeds on another machine); the tables "
            "pool every archived seed below first_seed + seeds",
        ),
    )
    one_world_from: int | None = field(
        default=None,
        metadata=bounds(
            ge=0,
            help="seeds from this one on are trained in one world each (world = seed mod worlds), so that no "
            "two of their pairs share a seed: each is a unit of its own in the seed-blocked test, at 1 / worlds "
            "of the runs (default: every seed in every world)",
        ),
    )
    rows: int = field(default=100_000, metadata=bounds(ge=1000, help="rows per dataset (train/valid/test 80/10/10)"))
    users: int = field(
        default=500,
        metadata=bounds(
            ge=1, help="users (200 rows each at the default rows: with 5,000 the models overfit after one epoch)"
        ),
    )
    items: int = field(default=500, metadata=bounds(ge=1, help="items (categories = items / 25)"))
    seq_length: int = field(default=30, metadata=bounds(ge=1, help="behaviour-sequence length"))
    scale_rows: list[int] = field(
        default_factory=lambda: [100_000, 300_000, 1_000_000],
        metadata=bounds(
            ge=1000, help="rows of the scaling suite's datasets (world 0, every effect planted, first seed only)"
        ),
    )
    movielens_src: Path = field(
        default=Path("data/cache/recbole-1.2.1-py3-none-any.whl"),
        metadata=doc("movielens suite: the MovieLens-100K source (the RecBole wheel ships it; see the README)"),
    )
    doses: list[float] = field(
        default_factory=lambda: [3.0],
        metadata=bounds(
            ge=0,
            help="dose suite: each mechanism's own knob at these strengths (1 = the specificity suite's "
            "dataset, 0 = none; both are pooled into the dose table when run); options suite: the option on "
            "its effect at these strengths (0: on none, where no effect is planted)",
        ),
    )
    alternatives: list[str] = field(
        default_factory=lambda: list(OPTIONS),
        metadata=doc(
            "options suite: which questioned options to train and table (keys of OPTIONS: " + ", ".join(OPTIONS) + ")"
        ),
    )
    max_epochs: int = field(default=10, metadata=bounds(ge=1, help="epochs at most (early stopping ends sooner)"))
    patience: int = field(
        default=2, metadata=bounds(ge=1, help="evaluations without a better validation AUC before stopping")
    )
    evals_per_epoch: int = field(
        default=1,
        metadata=bounds(
            ge=1,
            help=(
                "validation evaluations per epoch (early stopping's clock); with --max-epochs 1 and many rows every "
                "row is seen once: the fresh-data regime, free of the one-epoch overfitting of ID embeddings"
            ),
        ),
    )
    batch_size: int = field(default=1024, metadata=bounds(ge=1, help="rows per batch"))
    embedding_dim: int = field(default=16, metadata=bounds(ge=1, help="embedding dimension"))
    ablation_models: list[str] = field(
        default_factory=lambda: list(ABLATION_MODELS),
        metadata=doc(
            f"ablation suite: whose ablations to train and table, any of {', '.join(ABLATION_GROUPS)} "
            "(ads_noise: ADS's order with PSRG's default identity+noise start)"
        ),
    )
    movielens_ablations: list[str] = field(
        default_factory=list,
        metadata=doc(
            f"movielens suite: also train these groups' ablations on MovieLens-100K, any of "
            f"{', '.join(ABLATION_GROUPS)} (each variant paired with its full model, the papers' orders checked)"
        ),
    )
    matrix: str = field(
        default="full",
        metadata=doc(
            "specificity cells: full = every mechanism on every planted dataset; diagonal = each mechanism on "
            "none, its own effect and all"
        ),
    )
    train_only: list[str] = field(
        default_factory=list,
        metadata=doc(
            "train only the runs of these models (their run-file names: sfpnet-w-o-sam, adin, ...), e.g. to add "
            "seeds to some cells of a table; the tables still read every archived run (default: every model)"
        ),
    )
    jobs: int = field(default=1, metadata=bounds(ge=1, help="runs trained at once (one thread each)"))
    train: bool = field(
        default=True, metadata=doc("false: train nothing, render the tables from the finished and archived runs")
    )

    def validate(self) -> None:
        if self.matrix not in ("full", "diagonal"):
            raise ConfigError(f"--matrix must be full or diagonal, not {self.matrix!r}")
        for name, chosen, known in (
            ("suites", self.suites, SUITES),
            ("effects", self.effects, EFFECTS),
            ("mechanisms", self.mechanisms, MECHANISMS),
            ("alternatives", self.alternatives, OPTIONS),
            ("ablation-models", self.ablation_models, ABLATION_GROUPS),
            ("movielens-ablations", self.movielens_ablations, ABLATION_GROUPS),
            ("train-only", self.train_only, model_slugs()),
        ):
            unknown = sorted(set(chosen) - set(known))
            if unknown:
                raise ConfigError(f"--{name}: unknown {unknown}; choose from {list(known)}")


def seed_worlds(options: ProofBenchOptions, seed: int) -> list[int]:
    """The worlds ``seed`` is trained in: all of them, or from ``one_world_from`` on, world ``seed mod worlds``."""
    if options.one_world_from is not None and seed >= options.one_world_from:
        return [seed % options.worlds]
    return list(range(options.worlds))


def model_slugs() -> list[str]:
    """The run-file name of every model the suites train (``--train-only`` chooses among them)."""
    variants = [*MODELS, *ABLATIONS, *(v for pair in PAIRS.values() for v in pair)]
    variants += [option.with_option for option in OPTIONS.values()]
    return list(dict.fromkeys(v.slug for v in variants))


def dataset_name(options: ProofBenchOptions, world: int, effect: str, dose: float = 1.0) -> str:
    """The folder name of a world's dataset: every generator setting the bench varies is in it (``dose``:
    the planted knob's strength, named only when it is not 1; dose 0 is the ``none`` dataset)."""
    if dose == 0.0:  # no knob on: the none dataset, whatever effect was named
        effect, dose = "none", 1.0
    strength = "" if dose == 1.0 else f"-dose{dose:g}"
    return (
        f"v2-world{world}-{effect}{strength}-rows{options.rows}-users{options.users}-items{options.items}"
        f"-seq{options.seq_length}"
    )


def data_label(effect: str, dose: float = 1.0) -> str:
    """How the tables name a planted dataset: ``none`` (dose 0 or the none dataset), ``psrg``, ``psrg × 3``."""
    if dose == 0.0 or effect == "none":
        return "none"
    return effect + (f" × {dose:g}" if dose != 1.0 else "")


def run_dir(options: ProofBenchOptions, variant: Variant, data: Path, seed: int) -> Path:
    return options.work / "runs" / data.name / f"{variant.slug}-seed{seed}"


def archived(options: ProofBenchOptions, variant: Variant, data: Path, seed: int) -> Path:
    """The copy of a finished run's metrics.json kept beside the tables (committed, so that the benchmark
    resumes on a fresh machine)."""
    return options.out / "runs" / data.name / f"{variant.slug}-seed{seed}.json"
