"""Attention-head workbench: load a model, probe its attention, score and steer its heads.

Quick start::

    import workbench
    lm = workbench.load_model()                 # embedded SmolLM2-135M-Instruct
    enc, rec = lm.run_capture("The cat sat on the mat.", layers=[3], heads=[0, 5])
    rec.map(3, 5)                               # (L, L) attention of head L3H5
"""

from workbench.errors import (
    CaptureTooLargeError,
    EmptyPromptError,
    HeadOutOfRangeError,
    LayerDidNotFireError,
    LayerOutOfRangeError,
    ModelNotFoundError,
    PromptTooLongError,
    UnsupportedArchitectureError,
    WorkbenchError,
)
from workbench.heads import Head, head_id, parse_head, parse_heads
from workbench.lm import Encoded, LoadedModel, load_model, wrap_model
from workbench.models import ModelInfo

__all__ = [
    "CaptureTooLargeError",
    "EmptyPromptError",
    "Encoded",
    "Head",
    "HeadOutOfRangeError",
    "LayerDidNotFireError",
    "LayerOutOfRangeError",
    "LoadedModel",
    "ModelInfo",
    "ModelNotFoundError",
    "PromptTooLongError",
    "UnsupportedArchitectureError",
    "WorkbenchError",
    "head_id",
    "load_model",
    "parse_head",
    "parse_heads",
    "wrap_model",
]
