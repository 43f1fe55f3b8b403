"""Attention-head workbench: load a model, probe its attention, score and steer its heads.

Quick start::

    import workbench
    lm = workbench.load_model()                 # embedded SmolLM2-135M-Instruct
    enc, rec = lm.run_capture("The cat sat on the mat.", layers=[3], heads=[0, 5])
    rec.map(3, 5)                               # (L, L) attention of head L3H5
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from workbench.errors import (
    CaptureTooLargeError,
    CorruptWeightsError,
    EmptyPromptError,
    HeadOutOfRangeError,
    LayerDidNotFireError,
    LayerOutOfRangeError,
    ModelFilesError,
    ModelNotFoundError,
    PromptTooLongError,
    RecordNotFoundError,
    UnsupportedArchitectureError,
    WorkbenchError,
)
from workbench.heads import Head, head_id, parse_head, parse_heads

#: Public names imported on first use, so that ``import workbench`` (and the CLI's ``--help``)
#: does not pay for torch and transformers.
_LAZY = {
    "Encoded": "workbench.lm",
    "LoadedModel": "workbench.lm",
    "load_model": "workbench.lm",
    "wrap_model": "workbench.lm",
    "ModelInfo": "workbench.models",
}

if TYPE_CHECKING:
    from workbench.lm import Encoded, LoadedModel, load_model, wrap_model
    from workbench.models import ModelInfo


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'workbench' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "CaptureTooLargeError",
    "CorruptWeightsError",
    "EmptyPromptError",
    "Encoded",
    "Head",
    "HeadOutOfRangeError",
    "LayerDidNotFireError",
    "LayerOutOfRangeError",
    "LoadedModel",
    "ModelFilesError",
    "ModelInfo",
    "ModelNotFoundError",
    "PromptTooLongError",
    "RecordNotFoundError",
    "UnsupportedArchitectureError",
    "WorkbenchError",
    "head_id",
    "load_model",
    "parse_head",
    "parse_heads",
    "wrap_model",
]
