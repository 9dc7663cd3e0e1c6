"""A pytest hook, installed by conftest.py: a test whose spawned process died by SIGABRT / SIGSEGV runs once more."""

from __future__ import annotations

import warnings

import pytest

NATIVE_CRASH = ("terminated with signal SIGABRT", "terminated with signal SIGSEGV")


def _native_crash(reports: list[pytest.TestReport]) -> bool:
    """Whether a test failed only because a process it spawned was killed by SIGABRT / SIGSEGV
    (``torch.multiprocessing.ProcessExitedException``), not by an exception or an assertion of its own."""
    failed = [r for r in reports if r.failed]
    return bool(failed) and all(
        "ProcessExitedException" in r.longreprtext and any(s in r.longreprtext for s in NATIVE_CRASH) for r in failed
    )


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> bool:
    """Run a test once more, with fresh fixtures, when a rank of its gloo world died by a native crash.

    Fresh-clone CI runs saw one rank of a 2-rank run abort at its end, "terminate called without an
    active exception" from a native thread of torch / gloo / fbgemm, in a different 2-rank test each time
    (tests/test_incremental.py, test_bench_train_tiny, test_scale_bench_tiny), mostly on the first run of a
    newly built .venv. Every spawned rank now ends by torchrec_mdr.training.rank_exit.end_rank, which skips
    the exit-time teardown where the abort is thought to come from (not proven: it never reproduced on
    demand); this hook stays as the safety net, and its warning in a CI log says the abort is still there.
    A second failure is reported as it is. An exception or a failed assertion is never retried."""
    from _pytest.runner import runtestprotocol

    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    reports = runtestprotocol(item, nextitem=nextitem, log=False)
    if _native_crash(reports):
        warnings.warn(f"{item.nodeid}: a spawned process crashed natively; running it once more", stacklevel=1)
        reports = runtestprotocol(item, nextitem=nextitem, log=False)
    for report in reports:
        item.ihook.pytest_runtest_logreport(report=report)
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True
