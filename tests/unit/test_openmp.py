"""The OpenMP wait policy (workbench.openmp): passive when the workbench is imported first,
the user's own when set, untouched when torch came first, and never passed to the bench's busy
processes (they stand for another program). Each case runs in a fresh interpreter."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = (
    "import os, sys\n"
    "{first}\n"
    "from workbench.openmp import neighbour_environment, wait_policy\n"
    "print(os.environ.get('OMP_WAIT_POLICY'), '|', wait_policy(), '|',"
    " neighbour_environment().get('OMP_WAIT_POLICY'), '|', 'torch' in sys.modules)\n"
)


def run(first: str, **env: str) -> list[str]:
    base = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(first=first)],
        capture_output=True,
        text=True,
        env={**base, **env},
        check=True,
    )
    return [part.strip() for part in out.stdout.strip().split("|")]


def test_importing_the_workbench_first_makes_waits_passive_without_loading_torch():
    policy, words, neighbour, torch_loaded = run("import workbench")
    assert policy == "PASSIVE"
    assert "set by the workbench" in words
    assert neighbour == "None"  # a busy process of the bench keeps OpenMP's default
    assert torch_loaded == "False"  # `workbench --help` stays fast


def test_the_users_own_policy_is_kept_and_passed_on():
    policy, words, neighbour, _ = run("import workbench", OMP_WAIT_POLICY="ACTIVE")
    assert (policy, neighbour) == ("ACTIVE", "ACTIVE")
    assert "from the environment" in words


@pytest.mark.slow
def test_torch_imported_first_is_reported_not_changed():
    policy, words, neighbour, _ = run("import torch\nimport workbench")
    assert (policy, neighbour) == ("None", "None")
    assert "torch was imported before workbench" in words
