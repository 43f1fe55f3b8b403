"""Independent re-implementations of the papers' own head-scoring code ("the reference way").

Each function follows the reference repository's code line by line (cited in its docstring),
not the workbench's: transformers' eager attention maps (``output_attentions=True``), one
prompt at a time, plain loops. Nothing here imports the workbench's analyzers: their value is
independence. They serve the peer-agreement tests (``tests/peer``, issue 15, item 4) and the
analyzer-throughput bench (:mod:`workbench.bench_analyzers`, issue 14, item 3). The only
adaptations are the ones the model and library versions force, each said where it occurs.

One module per family:

* :mod:`.common`: :func:`agreement` (Spearman over all heads, top-5 overlap), :func:`report`;
* :mod:`.retrieval`: nightdessert/Retrieval_Head (needle tests, ROUGE-1 recall);
* :mod:`.sinks`: sail-sg/Attention-Sink (first-token sink scores, Sink rate);
* :mod:`.classic`: TransformerLens ``head_detector`` ("mul" pattern scores, induction heads);
* :mod:`.ships`: ydyjya/SafetyHeadAttribution (Ships);
* :mod:`.contextual`: billzyx/focus_direction (contextual heads).
"""

from __future__ import annotations

from workbench.peer_rules.classic import detect_head, induction_detection_pattern
from workbench.peer_rules.common import TOP_K, agreement, head_names, report
from workbench.peer_rules.contextual import (
    contextual_example,
    find_best_idx,
    get_text_idx_range,
    original_decoding_with_cache,
    show_and_save_scores,
)
from workbench.peer_rules.retrieval import (
    STEMMER,
    find_needle_idx,
    retrieval_head_scores,
    retrieval_test,
    rouge1_recall,
)
from workbench.peer_rules.ships import get_ships, ships_kl
from workbench.peer_rules.sinks import (
    compute_attention_sink,
    measure_attention_sink,
    sink_importance,
)

__all__ = [
    "STEMMER",
    "TOP_K",
    "agreement",
    "compute_attention_sink",
    "contextual_example",
    "detect_head",
    "find_best_idx",
    "find_needle_idx",
    "get_ships",
    "get_text_idx_range",
    "head_names",
    "induction_detection_pattern",
    "measure_attention_sink",
    "original_decoding_with_cache",
    "report",
    "retrieval_head_scores",
    "retrieval_test",
    "rouge1_recall",
    "ships_kl",
    "show_and_save_scores",
    "sink_importance",
]
