"""``mdr bench accuracy``: do the seed mechanisms do what their papers claim, and nothing without their premise?

Suites (each writes one markdown table under ``out``; see :mod:`torchrec_mdr.bench.accuracy_report`):

* ``planted`` — the planted-effect synthetic data with ``domain_shift > 0``: ADS on each backbone
  (DIN, MHA, CAN) against that backbone, SFPNet against DNN and against its own w/o-STB ablation,
  ADIN against SharedBottom, the other multi-domain baselines beside them; mean ± std over
  ``seeds`` training seeds, AUC Imp. (ADS eq. 14) against each model's base, the oracle AUC;
* ``no_shift`` — the same comparisons on data generated with ``domain_shift = 0`` (the domains share
  one true logit; only their sizes differ): the gains should vanish within the seed noise;
* ``ablation`` — ADS, w/o PCRG, w/o PCRG & PSRG (DIN backbone); SFPNet and each single ablation;
* ``chunk_cost`` — ADS (DIN) parameters, training FLOPs and measured step time of the dense arch
  per items-per-chunk setting, beside DIN (the ADS paper's Fig. 4), with the AUC of each (seed 0);
* ``movielens`` — the ``planted`` comparisons on real MovieLens-100K (age-group domains).

Every training is the real ``mdr train`` path (:class:`~torchrec_mdr.training.trainer.Trainer`: DMP,
fused sparse optimizer, TrainPipelineSparseDist) at world size 1. The seed varies the model
initialisation and the data order; the dataset of a suite is fixed. Each run's ``metrics.json``
stays under ``work/runs/<dataset>/<label>-seed<k>``: an interrupted benchmark continues where it
stopped, suites on one dataset share their common runs, and a finished benchmark re-renders its
tables without training (delete a run's folder to train it again).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from torchrec_mdr.bench.accuracy_setup import SUITES, AccuracyBenchOptions, Variant  # noqa: F401  (re-exported)
from torchrec_mdr.config import ConfigError


def _ads(backbone: str, *extra: str, label: str | None = None, base: str | None = None) -> Variant:
    """An ADS row; ``psrg_shared_init=identity`` pinned: the default the archived v1 results were trained with."""
    return Variant(
        label or f"ADS ({backbone.upper()})",
        "ads",
        (f"model.ads.backbone={backbone}", "model.ads.psrg_shared_init=identity", *extra),
        base or backbone.upper(),
    )


COMPARISONS: tuple[Variant, ...] = (
    Variant("DIN", "din"),
    _ads("din"),
    Variant("MHA", "mha"),
    _ads("mha"),
    Variant("CAN", "can"),
    _ads("can"),
    Variant("DNN", "dnn"),
    Variant("SFPNet w/o STB", "sfpnet", ("model.sfpnet.num_blocks=0",), "DNN"),
    Variant("SFPNet", "sfpnet", (), "DNN", also_against=("SFPNet w/o STB",)),
    Variant("SharedBottom", "shared_bottom"),
    Variant("ADIN", "adin", (), "SharedBottom"),
    Variant("MMoE", "mmoe", (), "SharedBottom"),
    Variant("PLE", "ple", (), "SharedBottom"),
    Variant("STAR", "star", (), "SharedBottom"),
    Variant("PEPNet", "pepnet", (), "SharedBottom"),
)

NULL_COMPARISONS: tuple[Variant, ...] = tuple(
    v for v in COMPARISONS if v.label in {"DIN", "ADS (DIN)", "DNN", "SFPNet w/o STB", "SFPNet", "SharedBottom", "ADIN"}
)

ABLATIONS: tuple[Variant, ...] = (
    _ads("din", label="ADS (DIN)"),
    _ads("din", "model.ads.use_pcrg=false", label="ADS w/o PCRG", base="ADS (DIN)"),
    _ads("din", "model.ads.use_pcrg=false", "model.ads.use_psrg=false", label="ADS w/o PCRG & PSRG", base="ADS (DIN)"),
    Variant("SFPNet", "sfpnet"),
    Variant("SFPNet w/o DAP", "sfpnet", ("model.sfpnet.distribution_aware_pooling=false",), "SFPNet"),
    Variant("SFPNet w/o SAM", "sfpnet", ("model.sfpnet.use_sam=false",), "SFPNet"),
    Variant("SFPNet w/o RTM", "sfpnet", ("model.sfpnet.use_rtm=false",), "SFPNet"),
    Variant("SFPNet w/o S-DNN", "sfpnet", ("model.sfpnet.scenario_aware_dnn=false",), "SFPNet"),
    Variant("SFPNet w/o STB", "sfpnet", ("model.sfpnet.num_blocks=0",), "SFPNet"),
)

CHUNK_SETTINGS: tuple[int, ...] = (1, 2, 5, 10)


def synthetic_data(options: AccuracyBenchOptions, domain_shift: float) -> Path:
    """The suite's planted-effect dataset, generator v1 (generated once; same world seed for every shift)."""
    from data_prep.synthetic import Options, convert
    from torchrec_mdr.data.spec import SPEC_FILE

    path = options.work / f"synthetic-shift{domain_shift:g}-rows{options.rows}"
    if not (path / SPEC_FILE).exists():
        convert(
            Options(
                version=1,
                out=path,
                rows=options.rows,
                users=options.users,
                items=options.items,
                categories=max(2, options.items // 50),
                brands=max(1, options.items // 10),
                seq_length=options.seq_length,
                min_seq_length=min(10, options.seq_length),
                domain_shift=domain_shift,
                overwrite=True,
            )
        )
    return path


def movielens_data(options: AccuracyBenchOptions) -> Path:
    from data_prep.movielens import Options, convert
    from torchrec_mdr.data.spec import SPEC_FILE

    path = options.work / "ml-100k"
    if not (path / SPEC_FILE).exists():
        if not options.movielens_src.exists():
            raise ConfigError(
                f"--movielens-src {options.movielens_src} does not exist; get it with "
                "`pip download --no-deps recbole==1.2.1 -d data/cache` (see the README)"
            )
        if options.movielens_src.suffix in {".whl", ".zip"} and not zipfile.is_zipfile(options.movielens_src):
            raise ConfigError(f"--movielens-src {options.movielens_src} is not a readable zip/wheel")
        convert(Options(src=options.movielens_src, out=path, overwrite=True))
    return path


def run_variant(
    options: AccuracyBenchOptions, suite: str, variant: Variant, data: Path, seed: int, extra: tuple[str, ...] = ()
) -> dict:
    """Train one configuration (or read its finished metrics.json) and return its metrics."""
    from torchrec_mdr.config import load_config
    from torchrec_mdr.experiment import ExperimentConfig
    from torchrec_mdr.training.trainer import Trainer

    run_dir = options.work / "runs" / data.name / f"{variant.slug}-seed{seed}"
    metrics_file = run_dir / "metrics.json"
    if metrics_file.exists():
        return json.loads(metrics_file.read_text())
    movielens = suite == "movielens"
    overrides = [
        f"data.path={data}",
        f"data.batch_size={options.movielens_batch_size if movielens else options.batch_size}",
        f"model.name={variant.model}",
        f"model.embedding_dim={options.embedding_dim}",
        f"train.epochs={options.movielens_epochs if movielens else options.epochs}",
        f"train.seed={seed}",
        "train.log_every=50",
    ]
    if options.max_steps:
        overrides.append(f"train.max_steps={options.max_steps}")
    if options.threads:
        overrides.append(f"train.threads={options.threads}")
    if variant.model == "ads" and not movielens:
        overrides.append(f"model.ads.domain_features={json.dumps(options.ads_domain_features)}")
    config = load_config(ExperimentConfig, None, overrides + list(variant.overrides) + list(extra))
    if run_dir.exists():  # an interrupted run: start it again from scratch
        import shutil

        shutil.rmtree(run_dir)
    print(f"\n[{suite}] {variant.label}, seed {seed}", flush=True)
    return Trainer(config, run_dir).fit()


def selected(options: AccuracyBenchOptions, variants: tuple[Variant, ...]) -> list[Variant]:
    if options.models is None:
        return list(variants)
    return [v for v in variants if v.slug in options.models]


def run(options: AccuracyBenchOptions) -> dict[str, Path]:
    """Run the chosen suites; write their tables (and the plot); return the written files."""
    from torchrec_mdr.bench import accuracy_report as report

    options.validate()
    options.out.mkdir(parents=True, exist_ok=True)
    seeds = range(options.seeds)
    written: dict[str, Path] = {}
    results: dict[str, dict[str, list[dict]]] = {}
    suites = {
        "planted": (COMPARISONS, lambda: synthetic_data(options, options.domain_shift)),
        "no_shift": (NULL_COMPARISONS, lambda: synthetic_data(options, 0.0)),
        "ablation": (ABLATIONS, lambda: synthetic_data(options, options.domain_shift)),
        "movielens": (COMPARISONS, lambda: movielens_data(options)),
    }
    for suite, (variants, make_data) in suites.items():
        if suite not in options.suites:
            continue
        data = make_data()
        chosen = selected(options, variants)
        results[suite] = {v.label: [run_variant(options, suite, v, data, seed) for seed in seeds] for v in chosen}
        written[suite] = report.write_suite(options, suite, chosen, results[suite], data)
    if "chunk_cost" in options.suites:
        from torchrec_mdr.bench.ads_cost import measure_chunk_costs

        data = synthetic_data(options, options.domain_shift)
        chunk_variants: list[tuple[Variant, int | None]] = [(Variant("DIN", "din"), None)] + [
            (_ads("din", f"model.ads.items_per_chunk={c}", label=f"ADS (DIN) chunk {c}"), c) for c in CHUNK_SETTINGS
        ]
        costs = measure_chunk_costs(
            options, data, chunk_variants, lambda variant: run_variant(options, "chunk_cost", variant, data, seed=0)
        )
        written["chunk_cost"] = report.write_chunk_costs(options, costs, data)
    if "planted" in results or "no_shift" in results:
        written["plot"] = report.write_plot(options, results)
    for name, path in written.items():
        print(f"{name}: {path}")
    return written
