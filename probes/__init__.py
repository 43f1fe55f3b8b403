"""Hook-based capture of attention through the workbench's registered attention function.

Public API:

* :func:`register` - register the attention function with transformers (idempotent).
* :class:`Capture` / :class:`CaptureSpec` - keep maps, q/k/v and per-head outputs.
* :class:`Statistics` / :class:`StatisticsSpec` - head statistics from the kernels, no L x L maps.
* :class:`AttentionHook`, :class:`AttentionCall`, :func:`attached` - write your own hook;
  :class:`HookSession` - a hook that is its own context manager (probes, interventions).
* :class:`ModelLayout` - where a model's attention lives (built by ``workbench``).
"""

from probes.attention_path import (
    ATTENTION_IMPLEMENTATION,
    kernel_backend,
    register,
    uses_workbench_attention,
    workbench_attention,
)
from probes.capture import Capture, CaptureSpec, require_workbench_attention
from probes.errors import (
    CaptureTooLargeError,
    HeadOutOfRangeError,
    LayerDidNotFireError,
    LayerOutOfRangeError,
    ProbeError,
    WorkbenchError,
)
from probes.hooks import AttentionCall, AttentionHook, HookSession, attached, hooks_of
from probes.layout import ModelLayout
from probes.records import LayerRecord, ProbeRecords
from probes.statistics import Statistics, StatisticsSpec

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
