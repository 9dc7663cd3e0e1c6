"""KuaiRand (1K / Pure / 27K) -> parquet + spec: one row per logged impression, ``tab`` = scenario.

Input (``--src``, or its ``data/`` sub-folder as the archives extract): ``log_standard_*_<v>.csv``
(and ``..._<v>_part<N>.csv``), optionally ``log_random_*_<v>.csv`` (``--include-random``),
``user_features_<v>.csv`` and ``video_features_basic_<v>.csv``, where ``<v>`` is the variant
(``1k``, ``pure``, ``27k``; found from the one ``user_features_*.csv`` unless ``--variant`` is given).

Choices made where the data or the brief leave room:

* Rows: every log line whose ``tab`` is kept (``--tabs``, default all tabs that occur) is one
  impression. Domains are the kept tabs in ``--tabs`` order (default: ascending), named ``tab<k>``.
  A tab outside 0..14 is a :class:`DataError`.
* Labels: ``--labels`` (default ``is_click long_view is_like``), named as in the log; each must be
  0/1.
* Ids are re-encoded to ``1..n`` with ``0`` = unknown (a missing join or an empty value):
  ``user_id`` over the users of the logs and of the user table, ``video_id`` over the videos of the
  logs, ``author_id`` and every other categorical column over the rows of the side tables that
  the logs use. Cardinality = n + 1, ``oov="reject"``. ``group_id`` is the raw user id.
* Sessions (``session_id``, the key of S-GAUC): the log has no session id, so sessions are cut by a
  gap rule on ``time_ms``. A user's loaded log lines (every tab, every loaded log — as for the
  history — not only the kept rows), in time order, start a new session at the user's first line
  and at every line more than ``--session-gap-minutes`` (default 30) after the user's previous line.
  ``session_id = ordinal * (users + 1) + user code`` with ``ordinal`` the session's index among the
  user's sessions (0-based) and the user code of ``user_id``: each session belongs to one user, and
  the id does not depend on the partitioning. The split cuts on time, so a session that straddles a
  cut has rows in both splits (S-GAUC of a split sees the session's rows in that split).
* User side: ``user_active_degree``, ``is_lowactive_period``, ``is_live_streamer``,
  ``is_video_author``, the four ``*_range`` columns and ``onehot_feat0..17`` are ids; the counts
  ``follow_user_num``, ``fans_user_num``, ``friend_user_num``, ``register_days`` are dense
  ``log1p`` (0 when unknown).
* Video side: ``author_id``, ``video_type``, ``upload_type``, ``visible_status``, ``music_id``,
  ``music_type`` are ids; ``tag`` (comma-separated) is a ``multi_id`` bag (``[0]`` when unknown or
  empty); ``video_duration`` (seconds), ``server_width``, ``server_height`` are dense ``log1p``, and
  ``video_age_days`` = ``log1p`` of the days from ``upload_dt`` to the impression (0 when unknown).
  ``hour`` = ``hourmin // 100`` (mod 24) is an id of the impression context.
* History (sequence group ``hist``): ``hist_video_id`` (table ``video``) and ``hist_author_id``
  (table ``author``) are the user's clicked (``is_click = 1``) videos with ``time_ms`` strictly
  before the impression, oldest first, the ``--max-length`` most recent. Clicks in every tab and in
  every loaded log count (also tabs not kept as rows): the behaviour is the user's, across scenarios.
* Split: temporal by ``time_ms`` over the kept rows: ``--split-fractions`` (default 0.8 0.1 0.1)
  with the cut rule of :func:`data_prep.common.temporal_split_points`, applied to whole seconds (so
  memory does not grow with the number of distinct milliseconds; no second straddles two splits).
* Bounded memory: the logs are streamed and hash-partitioned by user to disk
  (:class:`DiskPartitioner`), and each partition's histories are built in chunks of users. The
  side tables are held in memory (the video table only for the videos the logs use).

Row numbers in errors are 1-based line numbers of the file (the header is line 1).

Where the code lives: :mod:`~data_prep.kuairand.options` (``Options`` and the files' columns),
:mod:`~data_prep.kuairand.files` (finding the files, header checks, streaming),
:mod:`~data_prep.kuairand.logs` (pass 1 over the logs, time cuts),
:mod:`~data_prep.kuairand.side_tables` (user and video features),
:mod:`~data_prep.kuairand.rows` (pass 2: sessions, histories, joined features, split),
:mod:`~data_prep.kuairand.columns` (the column specs) and
:mod:`~data_prep.kuairand.pipeline` (``convert``: the passes in order, the notes).
"""

from data_prep.kuairand.files import find_files
from data_prep.kuairand.logs import split_points_from_counts
from data_prep.kuairand.options import (
    LABEL_CHOICES,
    LOG_HEADER,
    UNKNOWN,
    USER_CATEGORICAL,
    USER_DENSE,
    VIDEO_CATEGORICAL,
    VIDEO_DENSE,
    Options,
)
from data_prep.kuairand.pipeline import convert
from data_prep.kuairand.rows import session_ids

__all__ = [
    "LABEL_CHOICES",
    "LOG_HEADER",
    "UNKNOWN",
    "USER_CATEGORICAL",
    "USER_DENSE",
    "VIDEO_CATEGORICAL",
    "VIDEO_DENSE",
    "Options",
    "convert",
    "find_files",
    "session_ids",
    "split_points_from_counts",
]
