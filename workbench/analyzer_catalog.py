"""The analyzers' names, summaries and modules as plain data, readable without importing the
analyzers package (so without torch or pandas): ``workbench scan --list`` answers from here at once.

The registry (:data:`workbench.analyzers.base.ANALYZERS`) stays the source of the classes;
``tests/unit/test_analyzer_catalog.py`` checks that this table lists exactly the registered
analyzers, with their summaries and modules.
"""

from __future__ import annotations

from typing import NamedTuple


class CatalogEntry(NamedTuple):
    """One registered analyzer: the module that registers it and its one-line summary."""

    module: str
    summary: str


#: name -> (module, summary), sorted by name.
CATALOG: dict[str, CatalogEntry] = {
    "atlas": CatalogEntry(
        "workbench.analyzers.atlas",
        "clusters heads by their analyzer scores and attention statistics; 2-D map",
    ),
    "attribution": CatalogEntry(
        "workbench.analyzers.attribution",
        "direct logit attribution and attribution patching for a logit-difference metric",
    ),
    "contextual": CatalogEntry(
        "workbench.analyzers.contextual",
        "attention on the relevant document in multi-document QA; focus directions",
    ),
    "copy_suppression": CatalogEntry(
        "workbench.analyzers.copy_suppression",
        "copy suppression (McDougall et al.): OV circuit most suppresses the attended token",
    ),
    "duplicate_token": CatalogEntry(
        "workbench.analyzers.classic", "share of attention on earlier copies of the current token"
    ),
    "function_vector": CatalogEntry(
        "workbench.analyzers.function_vector",
        "function-vector heads (Todd et al.): indirect effect of mean ICL head outputs",
    ),
    "induction": CatalogEntry(
        "workbench.analyzers.classic",
        "share of attention on the token after an earlier copy of the current one",
    ),
    "previous_token": CatalogEntry(
        "workbench.analyzers.classic", "share of attention on the previous token"
    ),
    "qr_retrieval": CatalogEntry(
        "workbench.analyzers.qr_retrieval",
        "query-focused retrieval heads (QRHead): query-calibrated attention on gold documents",
    ),
    "receiver": CatalogEntry(
        "workbench.analyzers.receiver",
        "receiver heads (Thought Anchors): kurtosis of attention to earlier sentences",
    ),
    "retrieval": CatalogEntry(
        "workbench.analyzers.retrieval",
        "retrieval heads (Wu et al. 2024): copy from a needle during greedy decoding",
    ),
    "safety": CatalogEntry(
        "workbench.analyzers.safety",
        "safety heads: Ships (KL after uniform ablation) and Sahara (Zhou et al. 2025)",
    ),
    "sinks": CatalogEntry(
        "workbench.analyzers.sinks", "first-token sink heads (Gu et al.) and hidden sinks (ACT)"
    ),
    "successor": CatalogEntry(
        "workbench.analyzers.successor",
        "successor heads (Gould et al.): OV circuit maps an ordinal token to the next one",
    ),
}


def catalog_list() -> list[tuple[str, str]]:
    """``(name, summary)`` of every analyzer, sorted by name, without importing any of them."""
    return [(name, entry.summary) for name, entry in sorted(CATALOG.items())]
