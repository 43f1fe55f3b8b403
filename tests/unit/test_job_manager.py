"""The app's background-job manager: no result is dropped, a dead job says so, jobs are daemonic.

These drive the manager the way Dash's poll does (``get_result`` then ``job_running``) with
real forked job processes built by Dash's own ``make_job_fn``; no browser, no model.
"""

from __future__ import annotations

import os
import time

import dash
import diskcache
import pytest

from app.job_manager import JobManager, exit_reason


def quick_job() -> str:
    return "done"


def dying_job() -> str:
    os._exit(3)


def sleeping_job() -> str:
    time.sleep(60)
    return "late"


def start(manager: dash.DiskcacheManager, fn, key: str) -> int:
    job_fn = manager.make_job_fn(fn, progress=False)
    return manager.call_job_fn(key, job_fn, [], {})


def wait_ended(pid: int, manager: dash.DiskcacheManager, key: str, timeout: float = 30) -> None:
    """Until the job process has ended (its result, if any, is then written)."""
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return
        time.sleep(0.05)
    raise AssertionError(f"job {pid} still running after {timeout} s")


@pytest.fixture
def cache(tmp_path):
    with diskcache.Cache(str(tmp_path / "jobs")) as c:
        yield c


def test_stock_manager_drops_a_result_written_between_the_two_reads(cache):
    """The bug this module fixes, shown on Dash's own manager (so the test below can fail)."""
    stock = dash.DiskcacheManager(cache)
    pid = start(stock, quick_job, "k-stock")
    wait_ended(pid, stock, "k-stock")
    # Dash's poll read UNDEFINED just before the job wrote "done"; it then asks job_running:
    assert stock.job_running(pid) is False  # -> "cancelled": the page stops polling
    assert stock.result_ready("k-stock")  # ... although the result is there


def test_an_ended_job_with_an_unread_result_counts_as_running(cache):
    manager = JobManager(cache)
    pid = start(manager, quick_job, "k1")
    wait_ended(pid, manager, "k1")
    assert manager.job_running(pid) is True  # the next poll reads the result
    assert manager.get_result("k1", pid) == "done"
    assert manager.job_running(pid) is False  # read: nothing left to wait for


def test_a_job_that_dies_without_a_result_reports_its_exit_code(cache):
    manager = JobManager(cache)
    pid = start(manager, dying_job, "k2")
    wait_ended(pid, manager, "k2")
    result = manager.get_result("k2", pid)
    assert "background_callback_error" in result
    assert "exit code 3" in result["background_callback_error"]["msg"]
    assert manager.job_running(pid) is False


def test_a_cancelled_job_is_not_reported_as_a_crash(cache):
    manager = JobManager(cache)
    pid = start(manager, sleeping_job, "k3")
    assert manager.job_running(pid) is True
    assert manager.get_result("k3", pid) is manager.UNDEFINED  # still running
    manager.terminate_job(pid)
    wait_ended(pid, manager, "k3")
    assert manager.get_result("k3", pid) is manager.UNDEFINED
    assert manager.job_running(pid) is False


def test_jobs_are_daemonic_and_terminate_all_stops_them(cache):
    manager = JobManager(cache)
    pid = start(manager, sleeping_job, "k4")
    process = manager._processes[pid]
    assert process.daemon  # the interpreter never waits for a stuck job at exit
    manager.terminate_all()
    assert not process.is_alive()


@pytest.mark.parametrize(
    ("code", "text"),
    [(3, "exit code 3"), (-9, "SIGKILL: out of memory?"), (-11, "SIGSEGV"), (None, "unknown")],
)
def test_exit_reason(code, text):
    assert text in exit_reason(code)
