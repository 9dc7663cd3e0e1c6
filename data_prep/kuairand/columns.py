"""The output column specs (cardinalities from the vocabularies and side tables)."""

from __future__ import annotations

from data_prep.kuairand.options import USER_CATEGORICAL, USER_DENSE, VIDEO_CATEGORICAL, Options
from data_prep.kuairand.rows import Context
from torchrec_mdr.data.spec import ColumnSpec


def output_columns(options: Options, ctx: Context) -> list[ColumnSpec]:
    users, videos = ctx.users.size + 1, ctx.videos.size + 1
    card = {**ctx.user_side.cardinality, **ctx.video_side.cardinality}
    columns = [ColumnSpec(name, "label", description=f"log column {name}") for name in options.labels]
    columns += [
        ColumnSpec("domain", "domain", description="tab (scenario)"),
        ColumnSpec("group_id", "group", description="raw user_id, for GAUC"),
        ColumnSpec(
            "session_id",
            "session",
            description=f"gap > {options.session_gap_minutes:g} min between "
            "a user's lines starts a session; for S-GAUC",
        ),
        ColumnSpec("user_id", "id", table="user", cardinality=users, oov="reject", description="user (0 unknown)"),
        ColumnSpec("video_id", "id", table="video", cardinality=videos, oov="reject", description="candidate video"),
        ColumnSpec(
            "author_id",
            "id",
            table="author",
            cardinality=card["author_id"],
            oov="reject",
            description="candidate video's author (0 unknown)",
        ),
        ColumnSpec("hour", "id", cardinality=24, oov="reject", description="hour of the impression (hourmin // 100)"),
    ]
    for column in USER_CATEGORICAL:
        columns.append(
            ColumnSpec(
                column, "id", cardinality=card[column], oov="reject", description=f"user feature {column} (0 unknown)"
            )
        )
    for column in VIDEO_CATEGORICAL:
        columns.append(
            ColumnSpec(
                column, "id", cardinality=card[column], oov="reject", description=f"video feature {column} (0 unknown)"
            )
        )
    columns.append(
        ColumnSpec("tag", "multi_id", cardinality=card["tag"], oov="reject", description="video tags ([0] unknown)")
    )
    for name, table in (("hist_video_id", "video"), ("hist_author_id", "author")):
        columns.append(
            ColumnSpec(
                name,
                "sequence",
                table=table,
                cardinality=videos if table == "video" else card["author_id"],
                oov="reject",
                sequence_group="hist",
                max_length=options.max_length,
                description="user's earlier clicked videos, oldest first",
            )
        )
    for column in USER_DENSE:
        columns.append(ColumnSpec(column, "dense", description=f"log1p({column})"))
    columns.append(ColumnSpec("video_duration", "dense", description="log1p(video_duration seconds)"))
    for column in ("server_width", "server_height"):
        columns.append(ColumnSpec(column, "dense", description=f"log1p({column})"))
    columns.append(ColumnSpec("video_age_days", "dense", description="log1p(days from upload_dt to the impression)"))
    return columns
