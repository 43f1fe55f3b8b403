"""The one exception type the kernels raise for bad inputs."""

from __future__ import annotations


class KernelInputError(ValueError):
    """An argument of :func:`kernels.attention` is unusable; the message names it and its value."""
