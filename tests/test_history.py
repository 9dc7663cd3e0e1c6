"""Strictly-earlier behaviour sequences equal a brute-force reference, ties included."""

from __future__ import annotations

import numpy as np

from data_prep.history import build_history


def reference(query_user, query_time, event_user, event_time, items, max_length):
    out = []
    order = np.lexsort((np.arange(len(event_time)), event_time, event_user))
    for u, t in zip(query_user, query_time):
        earlier = [i for i in order if event_user[i] == u and event_time[i] < t]
        out.append([items[i] for i in earlier][-max_length:] if max_length else [])
    return out


def test_matches_brute_force_with_ties():
    rng = np.random.default_rng(0)
    for _trial in range(5):
        n = 300
        users = rng.integers(0, 12, n)
        times = rng.integers(0, 40, n)  # many ties
        items = rng.integers(0, 1000, n)
        positive = rng.random(n) < 0.4
        for max_length in (1, 3, 50):
            offsets, values = build_history(
                users, times, users[positive], times[positive], {"item": items[positive]}, max_length
            )
            got = [values["item"][offsets[i] : offsets[i + 1]].tolist() for i in range(n)]
            assert got == reference(users, times, users[positive], times[positive], items[positive], max_length)


def test_no_leakage_of_own_or_later_events():
    users = np.array([7, 7, 7, 7, 9])
    times = np.array([100, 200, 200, 300, 100])
    items = np.array([1, 2, 3, 4, 5])
    offsets, values = build_history(users, times, users, times, {"item": items, "time": times}, 10)
    rows = [values["item"][offsets[i] : offsets[i + 1]].tolist() for i in range(5)]
    assert rows == [[], [1], [1], [1, 2, 3], []]
    for i in range(5):
        assert (values["time"][offsets[i] : offsets[i + 1]] < times[i]).all()
        assert items[i] not in rows[i]
