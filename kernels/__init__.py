"""Attention kernels that compute the exact output and head statistics together.

Pure tensor math (torch; triton optional and imported lazily). The entry point is
:func:`attention`; :class:`StatsRequest` says which statistics to compute and
:class:`AttentionResult` holds them. No (Lq x Lk) buffer is ever built for a whole head
except for the maps explicitly requested (and the float64 ``reference`` backend, for tests).

Modules, one job each:

- ``requests``: StatsRequest / MapRequest / AttentionResult (the definitions of the statistics).
- ``problem``: argument validation (KernelInputError) into a checked Problem.
- ``dispatch``: ``attention()`` and backend selection.
- ``blockwise``: the PyTorch path (any device): output, LSE and statistics in one sweep;
  ``blockwise_buffers`` sizes its blocks, bands and result buffers, ``blockwise_sweep`` is the
  sweep itself.
- ``flash_cpu``: output + LSE from PyTorch's fused CPU flash op when no statistic is asked.
- ``fused_cpu`` (+ ``fused_cpu.c``): output, LSE and statistics from one C/OpenMP kernel on
  cache-sized tiles, for float32 CPU statistics calls; ``fused_cpu_build`` compiles it once
  per machine (``make install``, or the first call) into the workbench cache.
- ``reference``: float64 eager ground truth (quadratic memory; tests only).
- ``triton_kernels`` / ``triton_backend`` / ``triton_support``: the Triton path (GPU, or CPU
  under ``TRITON_INTERPRET=1``), its launcher, and whether it can run here.
- ``testing``: comparison of a backend against the reference; ``bench_kernels``: timings;
  ``bench_semantics``: timings at Gemma-2 / gpt-oss shapes.

Beyond plain causal/masked attention the kernels model attention-logit softcapping (Gemma 2),
sliding windows computed as a band (O(Lq x w), no Lq x Lk mask) and learned per-head sink
logits (gpt-oss), in every backend; see :func:`attention` and :mod:`kernels.requests`.
"""

from kernels.dispatch import attention, available_backends
from kernels.errors import KernelInputError
from kernels.requests import AttentionResult, MapRequest, StatsRequest

__all__ = [
    "AttentionResult",
    "KernelInputError",
    "MapRequest",
    "StatsRequest",
    "attention",
    "available_backends",
]
