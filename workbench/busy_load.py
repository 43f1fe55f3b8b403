"""Busy processes of our own for ``workbench bench --load N``: the loaded ratio, measured side
by side with the quiet one in one run.

A researcher's machine is rarely quiet: another model process shares the cores. Each busy
process here runs torch matrix products on torch's default thread pool, with OpenMP's default
spinning wait (as another program's model process would: the wait policy the workbench sets for
itself, :mod:`workbench.openmp`, is not passed on), starts before the measurement and is killed
when it ends; each also stops by itself after ``max_seconds``, so nothing outlives a crashed
bench.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from probes.checks import integer, number
from workbench.openmp import neighbour_environment

#: What each busy process runs: matrix products until its deadline, "ready" once started.
BUSY_CODE = """
import sys, time
import torch
end = time.monotonic() + float(sys.argv[1])
x = torch.randn(384, 384)
print("ready", flush=True)
while time.monotonic() < end:
    x = torch.tanh(x @ x)
"""
#: The most busy processes a bench may start.
MAX_LOAD = 16


@contextmanager
def busy_processes(n: int, max_seconds: float = 900.0) -> Iterator[list[subprocess.Popen]]:
    """``n`` busy processes for the length of the block (none for ``n = 0``).

    Args:
        n: how many (0..:data:`MAX_LOAD`).
        max_seconds: each process stops by itself after this long, whatever happens here.

    Yields:
        The processes, all running their loop (each has printed "ready").
    """
    integer("load", n, minimum=0, maximum=MAX_LOAD)
    number("max_seconds", max_seconds, minimum=1.0)
    procs: list[subprocess.Popen] = []
    try:
        for _ in range(n):
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", BUSY_CODE, str(max_seconds)],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    text=True,
                    env=neighbour_environment(),
                )
            )
        for proc in procs:  # each imports torch first: wait until its loop runs
            if proc.stdout is None or proc.stdout.readline().strip() != "ready":
                raise RuntimeError(f"busy process {proc.pid} did not start")
        time.sleep(0.5)  # let the loops reach full speed
        yield procs
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()


__all__ = ["MAX_LOAD", "busy_processes"]
