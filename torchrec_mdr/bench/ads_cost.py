"""ADS cost per items-per-chunk setting (the ADS paper's Fig. 4): parameters, FLOPs, step time, AUC.

The sparse arch is identical for every setting, so the cost is measured on the dense arch alone:
one real batch of the dataset is embedded once (an unsharded sparse arch, no gradient), then each
dense arch runs forward + backward on those embeddings. FLOPs come from
``torch.utils.flop_counter.FlopCounterMode`` (matrix multiplications and their gradients, which is
what the gen-nets and attention cost); the step time is the median of ``timed_steps`` passes after
``warmup_steps``. The AUC of each setting is a full ``mdr train`` run (seed 0).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

if TYPE_CHECKING:
    from torchrec_mdr.bench.accuracy_setup import AccuracyBenchOptions, Variant
    from torchrec_mdr.data.spec import DatasetSpec
    from torchrec_mdr.models.features import EmbeddedFeatures, FeatureLayout

WARMUP_STEPS = 3
TIMED_STEPS = 40


def _embedded_batch(data: Path, options: AccuracyBenchOptions) -> tuple[FeatureLayout, EmbeddedFeatures, DatasetSpec]:
    """One train batch as EmbeddedFeatures (random-initialised tables; the cost does not depend on values)."""
    from torchrec_mdr.data.reader import ReaderConfig, make_dataloader
    from torchrec_mdr.data.spec import DatasetSpec
    from torchrec_mdr.models.features import FeatureLayout, embed_features
    from torchrec_mdr.sparse.arch import SparseArch

    spec = DatasetSpec.load(data)
    batch = next(iter(make_dataloader(ReaderConfig(path=data, batch_size=options.batch_size, shuffle=False), "train")))
    sparse = SparseArch(spec, options.embedding_dim)
    layout = FeatureLayout.from_spec(spec, options.embedding_dim)
    with torch.no_grad():
        pooled, unpooled = sparse(batch.sparse_features, batch.sequence_features)
        features = embed_features(layout, pooled, unpooled, batch.dense_features, batch.domain)
    return layout, features, spec


def _dense_cost(arch: torch.nn.Module, features: EmbeddedFeatures, batch_size: int) -> tuple[int, float, float]:
    """(parameters, GFLOPs per 1,000 samples for forward + backward, median step milliseconds)."""

    def step() -> None:
        arch.zero_grad(set_to_none=True)
        output = arch(features)
        logits = output if isinstance(output, torch.Tensor) else output.logits
        logits.sum().backward()

    params = sum(p.numel() for p in arch.parameters())
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    gflops_per_1k = counter.get_total_flops() / 1e9 * 1000 / batch_size
    for _ in range(WARMUP_STEPS):
        step()
    times = []
    for _ in range(TIMED_STEPS):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1000)
    return params, gflops_per_1k, statistics.median(times)


def measure_chunk_costs(
    options: "AccuracyBenchOptions",
    data: Path,
    variants: list[tuple["Variant", int | None]],
    train: Callable[["Variant"], dict],
) -> list[dict]:
    """One row per (variant, items per chunk): the backbone (DIN, chunk None) and each ADS (DIN) setting, as
    the caller (:mod:`torchrec_mdr.bench.accuracy`) lists them; ``train`` gives a variant's finished metrics."""
    from torchrec_mdr.config import load_config
    from torchrec_mdr.models.registry import ModelConfig, build_dense_arch

    layout, features, _spec = _embedded_batch(data, options)
    rows = []
    for variant, chunk in variants:
        overrides = [f"name={variant.model}", f"embedding_dim={options.embedding_dim}"]
        overrides += [o.removeprefix("model.") for o in variant.overrides]
        if variant.model == "ads":
            overrides.append(f"ads.domain_features={list(options.ads_domain_features)}")
        torch.manual_seed(0)
        arch = build_dense_arch(layout, load_config(ModelConfig, None, overrides))
        params, gflops, step_ms = _dense_cost(arch, features, options.batch_size)
        metrics = train(variant)
        rows.append(
            {
                "label": variant.label,
                "items_per_chunk": chunk,
                "params": params,
                "gflops_per_1k": gflops,
                "step_ms": step_ms,
                "auc": metrics.get("auc"),
            }
        )
        print(
            f"{variant.label}: {params:,} params, {gflops:.3f} GFLOPs/1k samples, {step_ms:.1f} ms/step, "
            f"AUC {metrics.get('auc', float('nan')):.4f}",
            flush=True,
        )
    return rows
