"""``convert(options) -> DatasetSpec``: check the files, pass 1 over the logs, the side tables, then
pass 2 partition by partition, with the notes."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from data_prep.common import progress, writer_for
from data_prep.ids import IdCounter
from data_prep.kuairand.columns import output_columns
from data_prep.kuairand.files import check_header, find_files
from data_prep.kuairand.logs import LogState, log_pass, split_points_from_counts
from data_prep.kuairand.options import (
    AUTO_PARTITION_BYTES,
    NUM_TABS,
    USER_CATEGORICAL,
    USER_DENSE,
    VIDEO_COLUMNS,
    Options,
)
from data_prep.kuairand.rows import Context, partition_rows
from data_prep.kuairand.side_tables import user_table, video_table
from data_prep.partition import DiskPartitioner
from torchrec_mdr.data.errors import DataError
from torchrec_mdr.data.spec import DatasetSpec


def convert(options: Options) -> DatasetSpec:
    """Convert KuaiRand (see the package docstring) and return the spec."""
    options.validate()
    files = find_files(Path(options.src), options.variant)
    if options.include_random and not files.random:
        raise DataError(f"--include-random: no log_random_*_{files.variant}.csv", file=files.standard[0].parent)
    logs = files.standard + (files.random if options.include_random else [])
    check_header(files.users, ("user_id",) + USER_CATEGORICAL + USER_DENSE)
    check_header(files.videos, VIDEO_COLUMNS)
    for path in logs:
        check_header(path, ["user_id", "video_id", "hourmin", "time_ms", "tab", "is_click"] + options.labels)
    num_partitions = options.num_partitions or max(
        1, math.ceil(sum(p.stat().st_size for p in logs) / AUTO_PARTITION_BYTES)
    )
    tmp_dir = Path(options.tmp_dir) if options.tmp_dir is not None else Path(options.out).resolve().parent
    tmp_dir.mkdir(parents=True, exist_ok=True)
    block_size = options.block_size_mb << 20
    state = LogState(IdCounter(), IdCounter(), IdCounter(), IdCounter())
    with DiskPartitioner("user_id", num_partitions, tmp_dir=tmp_dir) as partitioner:
        for path in logs:
            log_pass(path, options, state, partitioner)
        if state.impressions == 0:
            raise DataError(f"no impression left (tabs {options.tabs or 'all'})", file=files.standard[0])
        tabs = np.asarray(options.tabs or state.tabs.vocabulary().tolist(), dtype=np.int64)
        domain_of_tab = np.full(NUM_TABS, -1, dtype=np.int64)
        domain_of_tab[tabs] = np.arange(tabs.size)
        seconds, counts = state.seconds.items()
        cut = split_points_from_counts(seconds, counts, tuple(options.split_fractions))
        videos = state.videos.vocabulary()
        log_users = state.users.vocabulary()
        user_side, users = user_table(files.users, log_users, block_size)
        video_side, upload_day = video_table(files.videos, videos, block_size)
        ctx = Context(options, users, videos, user_side, video_side, upload_day, domain_of_tab, cut)
        notes = {
            "variant": files.variant,
            "logs": ", ".join(p.name for p in logs),
            "domains": ", ".join(f"tab{t} -> {d}" for d, t in enumerate(tabs.tolist())),
            "split": (
                f"by time_ms: train < {cut[0]} s <= valid < {cut[1]} s <= test (fractions {options.split_fractions})"
            ),
            "history": "clicked videos strictly before the impression, all tabs and loaded logs, oldest first",
            "sessions": (
                f"a user's lines (all tabs and loaded logs) split where the gap exceeds "
                f"{options.session_gap_minutes:g} min; session_id = ordinal * (users + 1) + user code"
            ),
            "ids": "re-encoded 1..n per column, 0 = unknown / missing join",
            "log videos with basic features": f"{video_side.matched} of {videos.size}",
            "log users with features": f"{user_side.matched} of {log_users.size}",
            "log lines": f"{state.rows} read, {state.impressions} kept as rows",
        }
        source = (
            f"KuaiRand-{files.variant} in {files.standard[0].parent} (labels={options.labels}, "
            f"tabs={tabs.tolist()}, include_random={options.include_random}, "
            f"max_length={options.max_length}, split_fractions={options.split_fractions}, "
            f"session_gap_minutes={options.session_gap_minutes:g})"
        )
        with writer_for(
            options,
            name=f"kuairand_{files.variant}",
            columns=output_columns(options, ctx),
            domain_names=[f"tab{t}" for t in tabs.tolist()],
            source=source,
            notes=notes,
        ) as writer:
            with progress(num_partitions, "histories", unit="part") as bar:
                for table in partitioner.partitions():
                    for split, chunk in partition_rows(table, ctx):
                        writer.write(split, chunk)
                    bar.update(1)
            return writer.close()
