"""``mdr bench proof``: does each seed mechanism win where its effect is planted, and tie where it is not?

Runs on generator v2 (:mod:`data_prep.planted_v2`), one dataset per (world seed, planted effect):
``none`` (every mechanism's knob at 0), one dataset per mechanism with only its knob on (``psrg``,
``pcrg``, ``sfpnet``, ``dsbn``, ``se``) and ``all``. Suites (each writes a table under ``out``; see
:mod:`torchrec_mdr.bench.proof_report`):

* ``specificity`` — for each mechanism, the paired test AUC difference "model with it" minus "without it"
  (:data:`PAIRS`) on every planted dataset, over ``worlds`` x ``seeds`` pairs, with the sign-flip and
  Mann-Whitney p-values: a mechanism should win on its own effect (and on ``all``) and tie elsewhere;
* ``ablation`` — the papers' ablation orders on ``all`` (ADS > w/o PCRG > w/o PCRG & PSRG; SFPNet
  against each single ablation; ADIN against w/o DSBN, w/o SE, w/o self-training);
* ``models`` — DNN, DIN, ADS, SFPNet, SharedBottom, ADIN on ``all``: test AUC against the oracle and the
  ceilings, and the learning curves (validation AUC per epoch) of ``curves.png``;
* ``dose`` — each mechanism's pair on its own effect planted ``doses`` times stronger (beside dose 0 =
  ``none`` and dose 1 = the specificity datasets): does a mechanism win once its effect is large enough,
  and how large must it be?
* ``options`` — the options whose defaults item 5 questions (:data:`OPTIONS`: PSRG's ``W_shared``
  initialisation on the psrg effect at ``doses``, SFPNet's S-DNN gate scale and stop-gradient on
  ``all``), each paired with the default model and with the model without the mechanism it concerns
  (``Option.bare``; ``alternatives`` chooses which);
* ``movielens`` — the ``models`` suite's models on real MovieLens-100K (age-group domains), ``seeds``
  seeds, same protocol: mean ± sd and the paired test against each model's base; also the chosen
  ``alternatives`` that concern the whole model (SFPNet's gate options), paired with the default model,
  and the ablations of the ``movielens_ablations`` groups, each paired with its full model;
* ``seeds`` — no training: do the pairs that share a training seed agree across worlds (the reason the
  tables test over the seeds' means; :mod:`torchrec_mdr.bench.proof_seeds`)?
* ``probes`` — no training: what the specificity runs' mechanisms learned, measured against the planted
  parameters (:mod:`torchrec_mdr.bench.proof_probes`);
* ``scaling`` — DNN, DIN, ADS, SFPNet on world 0 with every effect planted at ``scale_rows`` rows (first
  seed): does the gap to the ceilings shrink, and do the seed models pull ahead of their bases, with
  more data?

Every run is ``mdr train`` (DMP, fused sparse optimizer, TrainPipelineSparseDist, world size 1, one
CPU thread: many small runs side by side, ``--jobs`` at once) with early stopping on the validation
AUC (one evaluation per epoch, ``patience``), the best
checkpoint restored for the test split; ``max_epochs`` bounds it. ADS and SFPNet both get the implicit
domain feature ``user_activity`` (the planted PSRG transform depends on it). The seed sets the
initialisation (``train.seed``) and the data order (``data.seed``). Each run's ``metrics.json`` stays under
``work/runs/<dataset>/<label>-seed<k>``, and a copy under ``out/runs/`` (committed with the tables): an
interrupted benchmark resumes, also on a fresh machine, suites share their common runs, ``--jobs`` runs
several at once, and a finished benchmark re-renders its tables without training.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from torchrec_mdr.bench.accuracy_setup import Variant
from torchrec_mdr.bench.proof_setup import (  # noqa: F401  (re-exported for callers of the bench)
    ABLATIONS,
    EFFECTS,
    MECHANISMS,
    MODELS,
    OPTIONS,
    PAIRS,
    SCALING_LABELS,
    SUITES,
    ProofBenchOptions,
    archived,
    chosen_ablations,
    dataset_name,
    model_slugs,
    movielens_models,
    run_dir,
    seed_worlds,
)


def dataset(options: ProofBenchOptions, world: int, effect: str, dose: float = 1.0, generate: bool = True) -> Path:
    """The generator-v2 dataset of ``world`` with only ``effect`` planted (``all``: every one; ``none``: no
    mechanism, the domains differ only in size and base rate), each planted knob at ``dose``. Generated
    once (``generate=False``: only its path)."""
    from data_prep.synthetic import Options, convert
    from torchrec_mdr.data.spec import SPEC_FILE

    path = options.work / dataset_name(options, world, effect, dose)
    if generate and not (path / SPEC_FILE).exists():
        knobs: dict[str, Any] = {f"{m}_effect": dose * float(effect == "all" or effect == m) for m in MECHANISMS}
        convert(
            Options(
                out=path,
                rows=options.rows,
                users=options.users,
                items=options.items,
                categories=max(3, options.items // 25),
                brands=max(1, options.items // 10),
                seq_length=options.seq_length,
                min_seq_length=min(10, options.seq_length),
                seed=world,
                version=2,
                overwrite=True,
                **knobs,
            )
        )
    return path


def movielens(options: ProofBenchOptions) -> Path:
    """MovieLens-100K (domains = user age groups, click = rating >= 4, split by time), converted once."""
    from data_prep.movielens import Options, convert
    from torchrec_mdr.config import ConfigError
    from torchrec_mdr.data.spec import SPEC_FILE

    path = options.work / "ml-100k"
    if not (path / SPEC_FILE).exists():
        if not options.movielens_src.exists():
            raise ConfigError(
                f"--movielens-src {options.movielens_src} does not exist; get it with "
                "`pip download --no-deps recbole==1.2.1 -d data/cache` (see the README)"
            )
        convert(Options(src=options.movielens_src, out=path, overwrite=True))
    return path


def overrides(options: ProofBenchOptions, variant: Variant, data: Path, seed: int) -> list[str]:
    from torchrec_mdr.data.spec import DatasetSpec

    train_rows = DatasetSpec.load(data).splits["train"].rows
    epoch_steps = math.ceil(train_rows / options.batch_size)
    every = math.ceil(epoch_steps / options.evals_per_epoch)
    return [
        f"data.path={data}",
        f"data.batch_size={options.batch_size}",
        f"data.seed={seed}",
        f"model.name={variant.model}",
        f"model.embedding_dim={options.embedding_dim}",
        f"train.seed={seed}",
        "train.threads=1",
        "train.device=cpu",
        f"train.log_every={every}",
        f"train.max_steps={options.max_epochs * epoch_steps}",
        f"train.eval_every={every}",
        # pinned: every archived run was trained without the evaluation at the last step (in the fresh regime,
        # 782 steps and an evaluation every 98, the last 96 steps were never kept); one protocol per table
        "train.eval_at_end=false",
        "train.early_stopping.enabled=true",
        "train.early_stopping.metric=auc",
        f"train.early_stopping.patience={options.patience}",
        *variant.overrides,
    ]


def _train(arguments: list[str], run_dir: str, resume: bool = False) -> dict:
    """One run in a fresh process (``--jobs``): config from overrides, the real trainer; ``resume``:
    continue an interrupted run from its latest checkpoint (exact: same data order, early stopping state)."""
    from torchrec_mdr.config import load_config
    from torchrec_mdr.experiment import ExperimentConfig
    from torchrec_mdr.training.trainer import Trainer

    config = load_config(ExperimentConfig, None, arguments)
    return Trainer(config, Path(run_dir), resume=resume).fit()


def _interrupted(folder: Path) -> bool:
    """Whether ``folder`` holds an interrupted run that can resume (a complete checkpoint); other leftovers
    (a run killed before its first checkpoint) are removed so that the run starts again from scratch."""
    import torch

    from torchrec_mdr.training.checkpoint import CheckpointManager
    from torchrec_mdr.training.distributed import DistContext

    if not folder.exists():
        return False
    if CheckpointManager(folder, DistContext(0, 1, 0, torch.device("cpu"), "gloo")).latest() is not None:
        return True
    shutil.rmtree(folder)
    return False


def finished_and_pending(
    options: ProofBenchOptions, jobs: list[tuple[Variant, Path, int]]
) -> tuple[dict[tuple[str, str, int], dict], list[tuple[Variant, Path, int, Path]]]:
    """The finished runs' metrics (archived, or finished in ``work`` and archived now), and the runs to train
    (none with ``--no-train``; with ``--train-only``, only those models' runs)."""
    results: dict[tuple[str, str, int], dict] = {}
    pending = []
    unique = {(v.slug, d, s): (v, d, s) for v, d, s in jobs}  # one run per (label, dataset, seed)
    for variant, data, seed in unique.values():
        folder, archive = run_dir(options, variant, data, seed), archived(options, variant, data, seed)
        if (folder / "metrics.json").exists() and not archive.exists():
            archive.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(folder / "metrics.json", archive)
        if archive.exists():
            results[(variant.label, data.name, seed)] = json.loads(archive.read_text())
        else:
            pending.append((variant, data, seed, folder))
    if not options.train:
        pending = []
    elif options.train_only:
        pending = [job for job in pending if job[0].slug in options.train_only]
    return results, pending


def train_all(options: ProofBenchOptions, jobs: list[tuple[Variant, Path, int]]) -> dict[tuple[str, str, int], dict]:
    """Train every (variant, dataset, seed) not finished yet; return all their metrics."""
    results, pending = finished_and_pending(options, jobs)
    total = len(pending)
    if total:
        print(f"bench proof: {len(results)} runs done, {total} to train ({options.jobs} at once)", flush=True)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with ProcessPoolExecutor(max_workers=options.jobs, mp_context=get_context("spawn")) as pool:
        futures = {}
        for variant, data, seed, folder in pending:
            futures[pool.submit(_train, overrides(options, variant, data, seed), str(folder), _interrupted(folder))] = (
                variant,
                data,
                seed,
            )
        for done, future in enumerate(as_completed(futures), 1):
            variant, data, seed = futures[future]
            metrics = future.result()
            results[(variant.label, data.name, seed)] = metrics
            archive = archived(options, variant, data, seed)
            archive.parent.mkdir(parents=True, exist_ok=True)
            archive.write_text(json.dumps(metrics, indent=1) + "\n")
            print(
                f"[{done}/{total}] {data.name} {variant.label} seed {seed}: test AUC {metrics['auc']:.4f} "
                f"(best epoch step {metrics.get('early_stopping', {}).get('best_step')})",
                file=sys.stderr,
                flush=True,
            )
    return results


def option_datasets(
    options: ProofBenchOptions, world: int, defaults: bool = False, generate: bool = True
) -> list[tuple[Variant, Path]]:
    """The ``options`` suite's (model with the option, dataset) of a world; ``defaults``: the default model and
    the bare one instead, whose runs other suites train (dose, specificity, ablation) and the options table only
    reads."""
    return [
        (model, dataset(options, world, option.effect, dose, generate))
        for name, option in OPTIONS.items()
        if name in options.alternatives
        for dose in (options.doses if option.effect != "all" else [1.0])
        for model in ((option.default, option.bare) if defaults else (option.with_option,))
    ]


def planned_jobs(options: ProofBenchOptions, generate: bool = True) -> list[tuple[Variant, Path, int]]:
    """Every run the chosen suites need (datasets generated on the way unless ``generate`` is false), seed by
    seed: the first seed of every world is trained before the second seed of any, so that a partial benchmark
    covers the worlds; each seed in :func:`seed_worlds`."""
    jobs: list[tuple[Variant, Path, int]] = []
    if "scaling" in options.suites:
        scaling = [v for v in MODELS if v.label in SCALING_LABELS]
        for rows in options.scale_rows:
            data = dataset(replace(options, rows=rows), 0, "all", generate=generate)
            jobs += [(v, data, options.first_seed) for v in scaling]
    for seed in range(options.first_seed, options.first_seed + options.seeds):
        worlds = seed_worlds(options, seed)
        for world in worlds:
            if "specificity" in options.suites:
                for effect in options.effects:
                    data = dataset(options, world, effect, generate=generate)
                    for mechanism in options.mechanisms:
                        if options.matrix == "full" or effect in ("none", "all", mechanism):
                            jobs += [(v, data, seed) for v in PAIRS[mechanism]]
            if "dose" in options.suites:
                for mechanism in options.mechanisms:
                    for dose in options.doses:
                        data = dataset(options, world, mechanism, dose, generate=generate)
                        jobs += [(v, data, seed) for v in PAIRS[mechanism]]
            if "options" in options.suites:
                jobs += [(with_v, data, seed) for with_v, data in option_datasets(options, world, generate=generate)]
            if "movielens" in options.suites and world == worlds[0]:  # one real dataset: seeds only
                jobs += [
                    (v, movielens(options), seed)
                    for v in movielens_models(options.alternatives, options.movielens_ablations)
                ]
            if {"ablation", "models"} & set(options.suites):
                data = dataset(options, world, "all", generate=generate)
                chosen = (tuple(chosen_ablations(options.ablation_models)) if "ablation" in options.suites else ()) + (
                    MODELS if "models" in options.suites else ()
                )
                jobs += [(v, data, seed) for v in chosen]
    return jobs


def pooled_jobs(options: ProofBenchOptions) -> list[tuple[Variant, Path, int]]:
    """Every run the chosen suites' tables read, as far as it is archived (no dataset generated): every seed
    below ``first_seed + seeds`` in every world (earlier calls, and seeds a call trained in one world only),
    and the other suites' runs that the dose table (doses 0 and 1: the specificity datasets) and the options
    table (the default models and the bare ones) compare against."""
    pooled = replace(options, first_seed=0, seeds=options.first_seed + options.seeds, one_world_from=None)
    jobs = planned_jobs(pooled, generate=False)
    for seed in range(pooled.seeds):
        for world in range(options.worlds):
            if "dose" in options.suites:
                jobs += [
                    (v, options.work / dataset_name(options, world, effect), seed)
                    for mechanism in options.mechanisms
                    for effect in ("none", mechanism)
                    for v in PAIRS[mechanism]
                ]
            if "options" in options.suites:
                jobs += [(v, data, seed) for v, data in option_datasets(options, world, defaults=True, generate=False)]
    return jobs


def run(options: ProofBenchOptions) -> dict[str, Path]:
    """Train what is missing, then write the chosen suites' tables; return the written files."""
    from torchrec_mdr.bench import proof_report as report
    from torchrec_mdr.bench.proof_dose_report import write_dose, write_options

    options.validate()
    options.out.mkdir(parents=True, exist_ok=True)
    train_all(options, planned_jobs(options))
    results = train_all(replace(options, train=False), pooled_jobs(options))
    written = {"ceilings": report.write_ceilings(options)}
    if "specificity" in options.suites:
        written["specificity"] = report.write_specificity(options, results)
    if "ablation" in options.suites:
        written["ablation"] = report.write_ablation(options, results)
    if "models" in options.suites:
        written["models"] = report.write_models(options, results)
        written["curves"] = report.write_curves(options)
    if "scaling" in options.suites:
        written["scaling"] = report.write_scaling(options, results)
    if "movielens" in options.suites:
        written["movielens"] = report.write_movielens(options, results)
    if "dose" in options.suites:
        written["dose"] = write_dose(options, results)
    if "options" in options.suites:
        written["options"] = write_options(options, results)
    if "seeds" in options.suites:  # no training: the other suites' archived runs
        from torchrec_mdr.bench.proof_seeds import seed_jobs, write_seed_effect

        results.update(train_all(replace(options, train=False), seed_jobs(options)))
        written["seeds"] = write_seed_effect(options, results)
    if "probes" in options.suites:
        from torchrec_mdr.bench.proof_probes import write_probes

        written["probes"] = write_probes(options)
    for name, path in written.items():
        print(f"{name}: {path}")
    return written
