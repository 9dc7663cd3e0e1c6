"""Behaviour sequences built only from strictly earlier events (no leakage), vectorised.

For every impression ``(user, time)`` the history is the user's events with ``event_time < time``,
oldest first, truncated to the ``max_length`` most recent. Events at the same timestamp as the
impression are excluded, so an impression never sees itself or anything logged with it.
"""

from __future__ import annotations

import numpy as np


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    """np.unique by sort + neighbour comparison (np.unique is several times slower on large int64 arrays)."""
    ordered = np.sort(values)
    if ordered.size == 0:
        return ordered
    keep = np.empty(ordered.size, dtype=bool)
    keep[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    return ordered[keep]


def build_history(
    query_user: np.ndarray,
    query_time: np.ndarray,
    event_user: np.ndarray,
    event_time: np.ndarray,
    event_fields: dict[str, np.ndarray],
    max_length: int,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Histories of ``max_length`` most recent strictly-earlier events for every query row.

    Args:
        query_user, query_time: [Q] impressions (any order).
        event_user, event_time: [E] behaviour events (any order).
        event_fields: name -> [E] values to collect per event (e.g. item id, category).
        max_length: keep at most this many (most recent) events.

    Returns:
        offsets: [Q + 1] int64 CSR offsets into the values, aligned with the query rows.
        values: name -> [offsets[-1]] values, oldest first within each row.
    """
    query_user = np.asarray(query_user)
    query_time = np.asarray(query_time)
    event_user = np.asarray(event_user)
    event_time = np.asarray(event_time)
    # Dense ranks keep the composite key small: key = user_rank * num_times + time_rank.
    users = _sorted_unique(np.concatenate([query_user, event_user]))
    times = _sorted_unique(np.concatenate([query_time, event_time]))
    num_times = np.int64(len(times))
    if len(users) * int(num_times) >= 2**62:
        raise ValueError("too many distinct (user, time) pairs in one partition; use more partitions")

    def key(user: np.ndarray, time: np.ndarray) -> np.ndarray:
        return np.searchsorted(users, user).astype(np.int64) * num_times + np.searchsorted(times, time)

    event_key = key(event_user, event_time)
    order = np.argsort(event_key, kind="stable")
    event_key = event_key[order]
    query_user_rank = np.searchsorted(users, query_user).astype(np.int64)
    query_key = query_user_rank * num_times + np.searchsorted(times, query_time)

    end = np.searchsorted(event_key, query_key, side="left")  # first event not strictly earlier
    user_start = np.searchsorted(event_key, query_user_rank * num_times, side="left")
    start = np.maximum(user_start, end - max_length)
    lengths = (end - start).astype(np.int64)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    # Gather index of every output value: start of its row + its position within the row.
    gather = np.repeat(start - offsets[:-1], lengths) + np.arange(offsets[-1], dtype=np.int64)
    source = order[gather]
    return offsets, {name: np.asarray(values)[source] for name, values in event_fields.items()}
