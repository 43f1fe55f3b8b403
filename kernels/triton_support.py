"""Whether the Triton backend can run here, without importing triton needlessly."""

from __future__ import annotations

import importlib.util
import os
import sys

import torch


def _interpreter_active() -> bool:
    """True when triton is (or will be, on first import) in interpreter mode."""
    if "triton" not in sys.modules:
        return os.environ.get("TRITON_INTERPRET", "0") == "1"
    try:
        import triton.language as tl
        from triton.runtime.interpreter import InterpretedFunction
    except Exception:  # pragma: no cover - broken triton install
        return False
    return isinstance(tl.sum, InterpretedFunction)


def triton_status(device: torch.device) -> str | None:
    """None if the triton backend can run on ``device``; otherwise the reason why not."""
    if importlib.util.find_spec("triton") is None:
        return "backend 'triton' needs the triton package, which is not installed"
    if device.type == "cuda":
        return None
    if device.type == "cpu":
        if _interpreter_active():
            return None
        if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") == "1":
            return (
                "backend 'triton' on CPU tensors needs triton's interpreter, but triton was "
                "imported before TRITON_INTERPRET=1 was set; set it before the first import"
            )
        return (
            "backend 'triton' on CPU tensors runs only in triton's interpreter: set the "
            "environment variable TRITON_INTERPRET=1 before triton is first imported "
            "(slow; for tests), or use CUDA tensors"
        )
    return (
        f"backend 'triton' does not support device {device}; "
        "use CUDA (or CPU tensors with TRITON_INTERPRET=1)"
    )
