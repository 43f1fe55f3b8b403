"""Errors raised by probes. ``workbench.errors`` re-exports them under one root type."""

from __future__ import annotations


class WorkbenchError(ValueError):
    """Root of every user-facing workbench error (a ``ValueError``: the input was wrong).

    It lives here, in the lowest package that raises user errors, so that ``probes`` need not
    import ``workbench``; ``workbench.errors`` re-exports it.
    """


class ProbeError(WorkbenchError):
    """A probe was asked for something it cannot do."""


class LayerOutOfRangeError(ProbeError):
    """A requested layer index is outside ``[0, n_layers)``."""


class HeadOutOfRangeError(ProbeError):
    """A requested query-head index is outside ``[0, n_heads)``."""


class CaptureTooLargeError(ProbeError):
    """Full attention maps requested would not fit in the memory budget."""


class LayerDidNotFireError(ProbeError):
    """A layer a probe was attached to never called the workbench attention function.

    This is the silent-hook failure of other tools (TransformerLens #1652) turned into an error:
    usually the model runs another attention implementation or the forward never reached it.
    """


class RecordNotFoundError(ProbeError, KeyError):
    """A probe's records hold no such layer, step, head or batch row (also a ``KeyError``, as
    the records are looked up like a mapping)."""

    __str__ = BaseException.__str__  # the message as written, not KeyError's quoted repr
