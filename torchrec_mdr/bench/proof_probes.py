"""Probes that only a planted world allows (``mdr bench proof --suites probes``): did a trained model learn
the structure its mechanism is meant for? They read the finished runs' best checkpoints (no training) and
forward the test split once, catching the dense arch's inputs with a forward hook.

* **psrg** (runs of "ADS w/o PCRG"): PSRG generates one behaviour transform ``W`` per value of its domain
  features ``E_D`` (here the domain and the ``user_activity`` bucket, so one ``W_{d,a}`` per pair). The
  planted transforms are ``M_{d,a} = I + s A_{d,a}`` in the generator's latent space, which the model's
  embedding space matches only up to an unknown linear map, so recovery is measured basis-free, as a
  representational similarity: the Spearman correlation, over the pairs of (d, a) groups, between
  ``||W_g - W_h||_F`` and ``||A_g - A_h||_F``. The same statistic on a model trained where the effect is
  absent (``none``; the world's ``A`` exists, unplanted) is the chance level. Also reported: the spread
  ``mean_g ||W_g - mean W|| / ||mean W||`` (0 = one transform for every group).
* **pcrg** (runs of "ADS"): PCRG's private queries, one per recency slot ``t`` (0 = newest). The planted
  relation changes by recency chunk (``position_chunks`` chunks of ``seq_length / position_chunks``
  slots). ``distinct`` = the share of the private queries' variance that lies between the slots of a row
  (0 = every slot gets the same query); ``F`` = between-planted-chunk over within-planted-chunk variance
  of the slots' queries (per row, then averaged): above 1 when the slots of one planted chunk have
  learned similar queries and different chunks different ones.
* **attention** (runs of "ADS w/o PCRG & PSRG", identical to DIN): the Pearson correlation, per row with
  at least 3 behaviours, of DIN's attention weights with the true behaviour weights ``omega_t`` of the
  generator (softmax of ``recency * t / len + s_sfpnet G[d, d_t]``), and with ``omega`` without the
  domain-affinity term (recency only). DIN's weights also depend on the candidate, ``omega`` does not,
  so 1 is out of reach; the question is whether training moves them towards it.
"""

from __future__ import annotations

import ast
import itertools
import math
import statistics
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

PROBED: dict[str, tuple[str, tuple[str, ...]]] = {  # probe -> (the runs' label, the datasets probed)
    "psrg": ("ADS w/o PCRG", ("none", "psrg", "all")),
    "pcrg": ("ADS", ("none", "pcrg", "all")),
    "attention": ("ADS w/o PCRG & PSRG", ("none", "psrg", "all")),
}


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (the Pearson correlation of the ranks; ties get their average rank)."""
    from torchrec_mdr.bench.significance import mid_ranks

    return float(np.corrcoef(mid_ranks(x), mid_ranks(y))[0, 1])


def world_of(data: Path):
    """The generator's world of a planted dataset, rebuilt from the options its spec records."""
    from data_prep.planted_v2 import WorldV2
    from data_prep.synthetic_world import Options
    from torchrec_mdr.data.spec import DatasetSpec

    options = ast.literal_eval(DatasetSpec.load(data).notes["options"])
    options["split_fractions"] = tuple(options["split_fractions"])
    return WorldV2(Options(out=data, **options))


class _Catcher:
    """Forward hooks on the RankingModel (its batch) and the DenseArch (its arranged features)."""

    def __init__(self, model: torch.nn.Module, probe) -> None:
        from torchrec_mdr.models.features import embed_features
        from torchrec_mdr.models.ranking import DenseArch, RankingModel

        ranking = next(m for m in model.modules() if isinstance(m, RankingModel))
        dense = next(m for m in model.modules() if isinstance(m, DenseArch))
        self.batch = None

        def keep_batch(_module, args):
            self.batch = args[0]

        def on_dense(module, args, _output):
            features = embed_features(module.layout, *args)
            with torch.no_grad():
                probe(module.model, features, self.batch)

        self.handles = [ranking.register_forward_pre_hook(keep_batch), dense.register_forward_hook(on_dense)]

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def _forward_test_split(run: Path, probe, checkpoint: str = "best") -> None:
    from torchrec_mdr.training.evaluate import Evaluator, run_config

    config = run_config(run)
    config = replace(config, train=replace(config.train, pipeline="plain"))
    evaluator = Evaluator(config, run)
    if checkpoint:
        evaluator.load(checkpoint)
    catcher = _Catcher(evaluator.model, probe)
    try:
        for _ in evaluator.outputs("test"):
            pass
    finally:
        catcher.close()


def _ids(kjt, key: str) -> np.ndarray:
    return kjt[key].values().numpy()


def probe_psrg(run: Path, data: Path, checkpoint: str = "best") -> dict:
    groups: dict[tuple[int, int], np.ndarray] = {}

    def probe(arch, features, batch):
        block = arch.blocks[0]
        domain_features = arch.domain_features(features, arch.input.domain_embedding(features.domain))
        weight, _bias = block.psrg.generate(domain_features)
        activity = _ids(batch.sparse_features, "user_activity")
        for row, key in enumerate(zip(features.domain.tolist(), activity.tolist())):
            if key not in groups:
                groups[key] = weight[row].numpy().copy()
            elif not np.allclose(groups[key], weight[row].numpy(), atol=1e-5):
                raise AssertionError(f"PSRG's W differs within (domain, activity) group {key}")

    _forward_test_split(run, probe, checkpoint)
    world = world_of(data)
    keys = sorted(groups)
    generated = np.stack([groups[k].ravel() for k in keys])
    planted = np.stack([world.psrg_delta[d, a].ravel() for d, a in keys])
    pairs = list(itertools.combinations(range(len(keys)), 2))
    distance = lambda m: np.array([np.linalg.norm(m[i] - m[j]) for i, j in pairs])  # noqa: E731
    mean = generated.mean(0)
    spread = float(np.mean([np.linalg.norm(w - mean) for w in generated]) / max(np.linalg.norm(mean), 1e-12))
    return {"groups": len(keys), "rsa": spearman(distance(generated), distance(planted)), "spread": spread}


def probe_pcrg(run: Path, data: Path, checkpoint: str = "best") -> dict:
    world = world_of(data)
    chunks, length = world.o.position_chunks, world.o.seq_length
    between, total, f_values = [], [], []

    def probe(arch, features, batch):
        block = arch.blocks[0]
        domain_features = arch.domain_features(features, arch.input.domain_embedding(features.domain))
        candidate = block.query_projection(features.sequences[0].query)
        private = block.pcrg.generator(torch.cat([domain_features, candidate], dim=-1))
        private = private.view(private.shape[0], block.pcrg.num_chunks, -1).numpy()  # [B, slots, d]
        slots = min(private.shape[1], length)
        private = private[:, :slots]
        row_mean = private.mean(1, keepdims=True)
        between.append(((private - row_mean) ** 2).sum(-1).mean(1))
        total.append((private**2).sum(-1).mean(1))
        planted_chunk = np.arange(slots) * block.pcrg.items_per_chunk * chunks // length
        means = np.stack([private[:, planted_chunk == g].mean(1) for g in range(chunks)], 1)  # [B, chunks, d]
        within = ((private - means[:, planted_chunk]) ** 2).sum(-1).mean(1)
        across = ((means - row_mean) ** 2).sum(-1).mean(1)
        f_values.append(across / np.maximum(within, 1e-12))

    _forward_test_split(run, probe, checkpoint)
    return {
        "distinct": float(np.concatenate(between).mean() / np.concatenate(total).mean()),
        "F": float(np.median(np.concatenate(f_values))),
    }


def true_weights(world, domain: np.ndarray, behaviour_domains: list[np.ndarray], affinity: bool) -> list[np.ndarray]:
    """omega_t of every row (over its real behaviours, oldest first), as data_prep.planted_v2 computes it."""
    s = world.strength["sfpnet"] if affinity else 0.0
    out = []
    for d, row in zip(domain, behaviour_domains):
        if len(row) == 0:
            out.append(np.zeros(0))
            continue
        scores = world.recency * np.arange(len(row)) / max(len(row), 1) + s * world.affinity[d, row]
        weights = np.exp(scores - scores.max())
        out.append(weights / weights.sum())
    return out


def probe_attention(run: Path, data: Path, checkpoint: str = "best") -> dict:
    world = world_of(data)
    full: list[float] = []
    recency_only: list[float] = []

    def probe(arch, features, batch):
        block, sequence = arch.blocks[0], features.sequences[0]
        queries, keys = block.queries_and_keys(None, sequence)
        attention = block.attention
        query = queries.unsqueeze(1).expand(-1, keys.shape[1], -1) if queries.dim() == 2 else queries
        scores = attention.scorer(torch.cat([query, keys, query - keys, query * keys], dim=-1)).squeeze(-1).numpy()
        hist = batch.sequence_features["hist_domain"]
        lengths, values = hist.lengths().numpy(), hist.values().numpy()
        rows = np.split(values, np.cumsum(lengths)[:-1])
        domain = features.domain.numpy()
        for name, target in (("full", full), ("recency", recency_only)):
            omega = true_weights(world, domain, rows, affinity=name == "full")
            for b, (n, w) in enumerate(zip(lengths, omega)):
                if n >= 3 and np.std(scores[b, :n]) > 0:
                    target.append(float(np.corrcoef(scores[b, :n], w)[0, 1]))

    _forward_test_split(run, probe, checkpoint)
    return {"corr_full": statistics.fmean(full), "corr_recency": statistics.fmean(recency_only), "rows": len(full)}


PROBES = {"psrg": probe_psrg, "pcrg": probe_pcrg, "attention": probe_attention}


def paired_vs_none(pairs: list[tuple[float, float]], stat: str) -> str:
    """``stat`` on a planted dataset minus on ``none``, paired by (world, seed): mean, wins / pairs and the
    exact sign-flip p."""
    from torchrec_mdr.bench.significance import sign_flip_p

    deltas = [a - b for a, b in pairs if math.isfinite(a) and math.isfinite(b)]
    if not deltas:
        return f"{stat} —"
    wins = sum(d > 0 for d in deltas)
    return f"{stat} {statistics.fmean(deltas):+.3f} ({wins}/{len(deltas)}, p = {sign_flip_p(deltas):.3g})"


def summary(values: list[float]) -> str:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "—"
    sd = statistics.stdev(finite) if len(finite) > 1 else 0.0
    return f"{statistics.fmean(finite):.3f} ± {sd:.3f} (n={len(finite)})"


def probed_datasets(options, effects: tuple[str, ...]) -> list[tuple[str, float]]:
    """(effect, dose) of every dataset a probe reads: ``none`` and ``all`` as planted, a mechanism's own
    effect at dose 1 (the specificity suite's) and at each of ``options.doses`` (the dose suite's)."""
    return [
        (effect, dose)
        for effect in effects
        for dose in ([1.0] if effect in ("none", "all") else dict.fromkeys([1.0, *(d for d in options.doses if d)]))
    ]


def write_probes(options) -> Path:
    """probes.md and probes.json: every probe on every local run it applies to (``seeds`` x ``worlds``) and
    on the untrained model (the run's config without a checkpoint: the initialisation of seed 0). Results
    are cached in probes.json, so a re-run computes only what is new; runs without a local checkpoint are
    skipped (the archive keeps metrics only)."""
    import json

    from torchrec_mdr.bench.proof_report import command_line
    from torchrec_mdr.bench.proof_setup import ABLATIONS, dataset_name, run_dir

    cache_file = options.out / "probes.json"
    cache = json.loads(cache_file.read_text()) if cache_file.exists() else {}
    seeds = options.first_seed + options.seeds
    for probe, (label, effects) in PROBED.items():
        variant = next(v for v in ABLATIONS if v.label == label)
        for effect, dose in probed_datasets(options, effects):
            for world in range(options.worlds):
                data = options.work / dataset_name(options, world, effect, dose)
                for seed in [*range(seeds), "init"]:
                    key = f"{probe}/{data.name}/{seed}"
                    run = run_dir(options, variant, data, 0 if seed == "init" else seed)
                    if key in cache or not (run / "checkpoints").is_dir():
                        continue
                    print(f"probe {key}", flush=True)
                    cache[key] = PROBES[probe](run, data, checkpoint="" if seed == "init" else "best")
                    cache_file.write_text(json.dumps(cache, indent=1, sort_keys=True) + "\n")
    lines = [
        "# Probes: did the trained mechanisms learn the planted structure?",
        "",
        f"Produced by `{command_line(options, 'probes')}` from the best checkpoints of the specificity and dose "
        "runs (test split; `torchrec_mdr/bench/proof_probes.py` defines each statistic). Each cell: mean ± sd "
        "over the worlds and seeds probed; *init* = the same model untrained (seed 0's initialisation); "
        "`psrg ×3`: the psrg effect at dose 3. A dataset without local checkpoints has no row.",
        "",
    ]
    columns = {"psrg": ("rsa", "spread"), "pcrg": ("F", "distinct"), "attention": ("corr_full", "corr_recency")}
    for probe, (label, effects) in PROBED.items():
        lines += [
            f"## {probe} ({label})",
            "",
            "| dataset | " + " | ".join(f"{c} trained | {c} init" for c in columns[probe]) + " |",
            "|" + "---|" * (1 + 2 * len(columns[probe])),
        ]
        paired_lines: list[str] = []
        for effect, dose in probed_datasets(options, effects):
            names = [dataset_name(options, w, effect, dose) for w in range(options.worlds)]
            trained = [cache[k] for n in names for s in range(seeds) if (k := f"{probe}/{n}/{s}") in cache]
            init = [cache[k] for n in names if (k := f"{probe}/{n}/init") in cache]
            if not trained and not init:
                continue
            cells = []
            for c in columns[probe]:
                cells += [summary([r[c] for r in trained]), summary([r[c] for r in init])]
            row = effect if dose == 1.0 else f"{effect} ×{dose:g}"
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
            if effect != "none":
                none = [dataset_name(options, w, "none") for w in range(options.worlds)]
                pairs = [
                    (cache[a], cache[b])
                    for w in range(options.worlds)
                    for s in range(seeds)
                    if (a := f"{probe}/{names[w]}/{s}") in cache and (b := f"{probe}/{none[w]}/{s}") in cache
                ]
                if pairs:
                    paired_lines.append(
                        f"- {row} − none: "
                        + "; ".join(paired_vs_none([(x[c], y[c]) for x, y in pairs], c) for c in columns[probe])
                    )
        lines.append("")
        if paired_lines:
            lines += ["Paired with `none` (same world and seed; sign-flip p):", "", *paired_lines, ""]
    path = options.out / "probes.md"
    path.write_text("\n".join(lines))
    return path
