"""Memory budget checks for captures that keep tensors."""

from __future__ import annotations

import psutil
import torch

DEFAULT_BUDGET_FRACTION = 0.5


def available_bytes(device: torch.device | str) -> int:
    """Free memory on ``device``: host RAM for CPU, free device memory for CUDA."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return int(psutil.virtual_memory().available)


def default_budget(device: torch.device | str) -> int:
    """Half of what is free on ``device`` now: room left for the forward pass itself."""
    return int(available_bytes(device) * DEFAULT_BUDGET_FRACTION)


def human_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 KB'`` (decimal units, as memory figures are usually quoted)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")
