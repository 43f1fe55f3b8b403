"""Analyzers: score every head of a model, with causal evidence.

``ANALYZERS`` maps names to analyzer classes; :func:`analyze` runs one::

    df = workbench.analyzers.analyze("induction", lm)          # DataFrame, one row per head
    df.attrs["causal"]                                          # top-k vs random-k ablation
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from workbench.analyzer_catalog import catalog_list
from workbench.analyzers import (  # noqa: F401  (register)
    atlas,
    attribution,
    classic,
    contextual,
    copy_suppression,
    function_vector,
    qr_retrieval,
    receiver,
    retrieval,
    safety,
    sinks,
    successor,
)
from workbench.analyzers.agreement import Agreement, agreement
from workbench.analyzers.base import (
    ANALYZERS,
    Analyzer,
    AnalyzerArgumentError,
    AnalyzerError,
    Progress,
    Scan,
    get_analyzer,
    head_frame,
    register_analyzer,
    top_heads,
)
from workbench.analyzers.causal import causal_evidence, random_heads_like
from workbench.analyzers.prompts import PromptFileError, as_items, load_prompt_file
from workbench.lm import LoadedModel


def analyze(
    name: str,
    lm: LoadedModel,
    prompts=None,
    *,
    progress: Progress = True,
    **params: Any,
) -> pd.DataFrame:
    """Run the analyzer registered as ``name`` on ``lm``; see :class:`Analyzer`.

    ``progress``: tqdm bar (True), none (False) or ``progress(desc, done, total)``.
    """
    return get_analyzer(name).run(lm, prompts, progress=progress, **params)


def list_analyzers() -> list[tuple[str, str]]:
    """``(name, summary)`` of every registered analyzer, sorted by name (from the catalog,
    :mod:`workbench.analyzer_catalog`, which a test keeps equal to the registry)."""
    return catalog_list()


__all__ = [
    "ANALYZERS",
    "Agreement",
    "Analyzer",
    "AnalyzerArgumentError",
    "AnalyzerError",
    "PromptFileError",
    "Scan",
    "agreement",
    "analyze",
    "as_items",
    "causal_evidence",
    "get_analyzer",
    "head_frame",
    "list_analyzers",
    "load_prompt_file",
    "random_heads_like",
    "register_analyzer",
    "top_heads",
]
