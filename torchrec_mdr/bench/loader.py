"""``mdr bench loader``: rows/s of the parquet reader, per dataloader-worker setting.

The default schema is the synthetic one: 8 id features, one 50-long sequence group of 2 fields
(every row full length), 4 dense features, one label. The dataset is generated on first use.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from torchrec_mdr.config import bounds, doc
from torchrec_mdr.data.reader import ReaderConfig, make_dataloader
from torchrec_mdr.data.spec import SPEC_FILE


@dataclass
class LoaderBenchOptions:
    data: Path = field(default=Path("data/bench-loader"), metadata=doc("dataset (generated if missing)"))
    rows: int = field(default=1_000_000, metadata=bounds(ge=1000, help="rows to generate if the data is missing"))
    split: str = field(default="train", metadata=doc("split to read"))
    batch_size: int = field(default=4096, metadata=bounds(ge=1, help="rows per batch"))
    workers: list[int] = field(
        default_factory=lambda: [0, 1, 2], metadata=bounds(ge=0, help="dataloader worker counts to measure")
    )
    shuffle: bool = field(default=True, metadata=doc("shuffle as in training"))
    repeats: int = field(default=2, metadata=bounds(ge=1, help="epochs per setting; the best is reported"))


def ensure_bench_data(path: Path, rows: int) -> None:
    if (path / SPEC_FILE).is_file():
        return
    from data_prep.synthetic import Options, convert

    print(f"generating {rows:,} rows of benchmark data into {path} ...")
    convert(Options(out=path, rows=rows, seq_length=50, min_seq_length=50, split_fractions=[1.0, 0.0, 0.0]))


def run(options: LoaderBenchOptions) -> list[dict[str, float]]:
    ensure_bench_data(options.data, options.rows)
    results = []
    print(f"{'workers':>8}{'processes':>10}{'rows':>12}{'rows/s':>14}{'rows/s per process':>20}")
    for workers in options.workers:
        config = ReaderConfig(
            path=options.data, batch_size=options.batch_size, num_workers=workers, shuffle=options.shuffle
        )
        loader = make_dataloader(config, split=options.split)
        best = 0.0
        rows = 0
        for epoch in range(options.repeats):
            loader.dataset.set_epoch(epoch)
            start = time.perf_counter()
            rows = sum(batch.batch_size for batch in loader)
            best = max(best, rows / (time.perf_counter() - start))
        processes = max(workers, 1)
        results.append(
            {"workers": workers, "rows": rows, "rows_per_sec": best, "rows_per_sec_per_process": best / processes}
        )
        print(f"{workers:>8}{processes:>10}{rows:>12,}{best:>14,.0f}{best / processes:>20,.0f}")
    return results
