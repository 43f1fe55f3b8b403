"""The busy processes of ``workbench bench --load``: they run during the block, are gone after
it (also when it raises), and bad counts are refused before anything starts."""

from __future__ import annotations

import time

import psutil
import pytest

from probes.checks import ArgumentError
from workbench.busy_load import busy_processes


def test_busy_processes_run_during_the_block_and_are_killed_after():
    with busy_processes(2, max_seconds=120) as procs:
        assert len(procs) == 2
        before = [sum(psutil.Process(p.pid).cpu_times()[:2]) for p in procs]
        time.sleep(1.0)
        after = [sum(psutil.Process(p.pid).cpu_times()[:2]) for p in procs]
        assert all(p.poll() is None for p in procs)
        # each spent CPU time in that second: computing, not waiting (a shared machine gives
        # them less than a core each, so no fixed share is asserted)
        assert all(b > a for a, b in zip(before, after, strict=True)), (before, after)
    assert all(p.poll() is not None for p in procs)


def test_busy_processes_are_killed_when_the_block_raises():
    with pytest.raises(KeyError), busy_processes(1, max_seconds=120) as procs:
        raise KeyError("boom")
    assert procs[0].poll() is not None


def test_zero_load_starts_nothing():
    with busy_processes(0) as procs:
        assert procs == []


@pytest.mark.parametrize("n", [-1, 17, 1.5, "2", True])
def test_bad_load_is_refused(n):
    with pytest.raises(ArgumentError, match="load"), busy_processes(n):
        pass
