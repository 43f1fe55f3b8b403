"""Attention kernels that compute the exact output and head statistics together.

Pure tensor math (torch; triton optional and imported lazily). The entry point is
:func:`attention`; :class:`StatsRequest` says which statistics to compute and
:class:`AttentionResult` holds them. No (Lq x Lk) buffer is ever built for a whole head
except for the maps explicitly requested (and the float64 ``reference`` backend, for tests).
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
