"""Exception types of the workbench.

Every error a user can cause (bad model name, empty prompt, head out of range, a capture too
large for memory) is a :class:`WorkbenchError` whose message names the offending value and the
allowed range, so the CLI and the app can show it as one line instead of a traceback.
"""

from __future__ import annotations

from probes.errors import (
    CaptureTooLargeError,
    HeadOutOfRangeError,
    LayerDidNotFireError,
    LayerOutOfRangeError,
    ProbeError,
    WorkbenchError,
)

__all__ = [
    "CaptureTooLargeError",
    "EmptyPromptError",
    "HeadOutOfRangeError",
    "LayerDidNotFireError",
    "LayerOutOfRangeError",
    "ModelNotFoundError",
    "ProbeError",
    "PromptTooLongError",
    "UnsupportedArchitectureError",
    "WorkbenchError",
]


class ModelNotFoundError(WorkbenchError):
    """The requested model is neither a local folder nor in the local Hugging Face cache."""


class UnsupportedArchitectureError(WorkbenchError):
    """The model's ``model_type`` has no row in the architecture table."""


class EmptyPromptError(WorkbenchError):
    """A prompt is empty or whitespace only."""


class PromptTooLongError(WorkbenchError):
    """A prompt has more tokens than the model's context window."""
