"""Torch's OpenMP threads sleep while they wait (``OMP_WAIT_POLICY=PASSIVE``) unless told
otherwise, so the statistics sweep keeps its speed on a shared machine.

By default each thread of torch's CPU pool spins for a while at every barrier between ops. On
a machine whose cores are shared with another busy process, spinning threads take the cores
the working threads need: the blockwise statistics sweep (many mid-size ops, a barrier each)
took 2.46x the time of plain SDPA at 4,096 tokens beside one busy process, and 1.30x with
passive waiting, in the same measurement (``workbench bench --load 1``; README, Performance).
OpenMP reads the variable once, when torch loads it, so this only takes effect when the
workbench is imported before torch; :func:`wait_policy` says what holds in this process.
This module imports nothing heavy (the CLI stays fast).
"""

from __future__ import annotations

import os
import sys

VARIABLE = "OMP_WAIT_POLICY"
#: Whether the user's environment set the policy itself (then it is left alone, also for the
#: processes the workbench starts).
USER_SET = VARIABLE in os.environ
#: Whether torch was already imported when the workbench was (then the policy cannot change).
TORCH_FIRST = "torch" in sys.modules


def prefer_passive_wait() -> None:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` when the user did not set it and torch is not loaded
    yet (called when ``workbench`` is imported)."""
    if not USER_SET and not TORCH_FIRST:
        os.environ[VARIABLE] = "PASSIVE"


def wait_policy() -> str:
    """What holds in this process, in words (printed by ``workbench bench``)."""
    if USER_SET:
        return f"{VARIABLE}={os.environ.get(VARIABLE)} (from the environment)"
    if TORCH_FIRST:
        return "OpenMP default (torch was imported before workbench)"
    return f"{VARIABLE}=PASSIVE (set by the workbench)"


def neighbour_environment() -> dict[str, str]:
    """The environment for a process that stands for *another* program (the bench's busy
    processes): the user's own, without the policy the workbench set for itself."""
    env = dict(os.environ)
    if not USER_SET:
        env.pop(VARIABLE, None)
    return env


prefer_passive_wait()  # on import: ``workbench/__init__`` imports this module first

__all__ = ["neighbour_environment", "prefer_passive_wait", "wait_policy"]
