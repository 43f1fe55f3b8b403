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
    RecordNotFoundError,
    WorkbenchError,
)

__all__ = [
    "CaptureTooLargeError",
    "CorruptWeightsError",
    "EmptyPromptError",
    "HeadOutOfRangeError",
    "LayerDidNotFireError",
    "LayerOutOfRangeError",
    "ModelFilesError",
    "ModelNotFoundError",
    "ProbeError",
    "PromptTooLongError",
    "RecordNotFoundError",
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


class ModelFilesError(WorkbenchError):
    """A model folder was found but its files are missing or unreadable (no tokenizer files,
    a config.json that is not JSON, a truncated or corrupt ``model.safetensors``)."""


class CorruptWeightsError(ModelFilesError):
    """A model loaded but its weights are unusable: logits are not finite on a probe prompt."""
