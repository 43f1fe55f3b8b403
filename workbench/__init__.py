"""Attention-head workbench: load a model, probe its attention, score and steer its heads.

Quick start::

    import workbench
    lm = workbench.load_model()                 # embedded SmolLM2-135M-Instruct
    enc, rec = lm.run_capture("The cat sat on the mat.", layers=[3], heads=[0, 5])
    rec.map(3, 5)                               # (L, L) attention of head L3H5
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from probes.lazy import lazy_exports

# first, before anything loads torch: its threads will wait passively (workbench.openmp)
from workbench import openmp as _openmp  # noqa: F401
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
from workbench.heads import Head, format_heads, head_id, parse_head, parse_heads

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


__getattr__ = lazy_exports("workbench", _LAZY)


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
    "format_heads",
    "head_id",
    "load_model",
    "parse_head",
    "parse_heads",
    "wrap_model",
]
