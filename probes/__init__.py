"""Hook-based capture of attention through the workbench's registered attention function.

Public API:

* :func:`register` - register the attention function with transformers (idempotent).
* :class:`Capture` / :class:`CaptureSpec` - keep maps, q/k/v and per-head outputs.
* :class:`Statistics` / :class:`StatisticsSpec` - head statistics from the kernels, no L x L maps.
* :class:`AttentionHook`, :class:`AttentionCall`, :func:`attached` - write your own hook;
  :class:`HookSession` - a hook that is its own context manager (probes, interventions).
* :class:`ModelLayout` - where a model's attention lives (built by ``workbench``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from probes.errors import (
    CaptureTooLargeError,
    HeadOutOfRangeError,
    LayerDidNotFireError,
    LayerOutOfRangeError,
    ProbeError,
    RecordNotFoundError,
    WorkbenchError,
)
from probes.lazy import lazy_exports

#: Where each lazily imported public name lives: importing ``probes`` (or ``probes.errors``,
#: which every front-end needs for its error type) must not import torch or transformers.
_LAZY = {
    "ATTENTION_IMPLEMENTATION": "probes.attention_path",
    "kernel_backend": "probes.attention_path",
    "register": "probes.attention_path",
    "uses_workbench_attention": "probes.attention_path",
    "workbench_attention": "probes.attention_path",
    "Capture": "probes.capture",
    "CaptureSpec": "probes.capture",
    "require_workbench_attention": "probes.capture",
    "AttentionCall": "probes.hooks",
    "AttentionHook": "probes.hooks",
    "HookSession": "probes.hooks",
    "attached": "probes.hooks",
    "hooks_of": "probes.hooks",
    "ModelLayout": "probes.layout",
    "LayerRecord": "probes.records",
    "ProbeRecords": "probes.records",
    "Statistics": "probes.statistics",
    "StatisticsSpec": "probes.statistics",
}

if TYPE_CHECKING:
    from probes.attention_path import (
        ATTENTION_IMPLEMENTATION,
        kernel_backend,
        register,
        uses_workbench_attention,
        workbench_attention,
    )
    from probes.capture import Capture, CaptureSpec, require_workbench_attention
    from probes.hooks import AttentionCall, AttentionHook, HookSession, attached, hooks_of
    from probes.layout import ModelLayout
    from probes.records import LayerRecord, ProbeRecords
    from probes.statistics import Statistics, StatisticsSpec


__getattr__ = lazy_exports("probes", _LAZY)


__all__ = [
    "ATTENTION_IMPLEMENTATION",
    "AttentionCall",
    "AttentionHook",
    "Capture",
    "CaptureSpec",
    "CaptureTooLargeError",
    "HeadOutOfRangeError",
    "HookSession",
    "LayerDidNotFireError",
    "LayerOutOfRangeError",
    "LayerRecord",
    "ModelLayout",
    "ProbeError",
    "ProbeRecords",
    "RecordNotFoundError",
    "Statistics",
    "StatisticsSpec",
    "WorkbenchError",
    "attached",
    "hooks_of",
    "kernel_backend",
    "register",
    "require_workbench_attention",
    "uses_workbench_attention",
    "workbench_attention",
]
