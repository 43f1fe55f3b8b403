"""``make gpu-check`` (kernels.gpu_check): skips cleanly without CUDA, names its steps, refuses a
bad budget. What it runs on a GPU is the Triton suite and the benches, tested where they live."""

from __future__ import annotations

import pytest
import torch

from kernels import gpu_check


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_without_cuda_it_says_so_and_exits_0(capsys):
    assert gpu_check.main([]) == 0
    assert "no CUDA device here" in capsys.readouterr().out


def test_dry_run_lists_the_three_steps_within_budget(capsys):
    assert gpu_check.main(["--dry-run", "--budget-s", "300"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n== ") == 3
    assert "tests/unit/test_kernels_triton.py" in out
    assert "bench --device cuda --dtype bfloat16" in out
    assert "--lengths 8192 32768" in out
    limits = [float(line.split("(limit ")[1].split(" s)")[0]) for line in out.splitlines()
              if line.startswith("== ")]  # fmt: skip
    assert all(0 < x <= 300 for x in limits)


@pytest.mark.parametrize("budget", ["0", "-5"])
def test_bad_budget_is_refused(budget, capsys):
    assert gpu_check.main(["--budget-s", budget]) == 2
    assert "--budget-s must be > 0" in capsys.readouterr().err
