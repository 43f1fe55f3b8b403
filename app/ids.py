"""Every component id of the page, defined once.

Layouts, callbacks, clientside JavaScript (built from these names) and the browser tests all
refer to the same strings; nothing else spells an id.
"""

from __future__ import annotations

# -- page-wide stores (browser-side state) ----------------------------------------------------
SESSION = "session-id"  # a fresh uuid per page load: the key of server-side arrays
RUN_META = "run-meta"  # the current run: id, tokens, sizes
SEL_HEAD = "sel-head"  # {"layer", "head"} opened in the explorer
SEL_QUERY = "sel-query"  # {"run_id", "pos"} query token of the token view
HEAD_VIEW = "head-view"  # what the head heatmap shows (full / window / overview)
WINDOW_META = "window-meta"  # the last exact query rows computed for a long prompt
ATLAS_RESULTS = "atlas-results"  # {analyzer: result} of this session
IV_RESULT = "iv-result"  # the last intervention's result
RUN_BUSY, AN_BUSY, IV_BUSY, ZOOM_BUSY = "run-busy", "an-busy", "iv-busy", "zoom-busy"
ZOOM_REQUEST = "zoom-request"  # bumped by a click on an overview row: compute its rows
DOWNLOAD = "download"
MODEL_INFO = "model-info"
TABS = "tabs"
# the permalink (app.views.permalink): the address bar, the token the page shows, its link line
URL, VIEW_TOKEN, PERMALINK, PERMALINK_A = "url", "view-token", "permalink", "permalink-a"


def tab(view: str) -> str:
    """Id of a view's tab (``tab-explorer``...)."""
    return f"tab-{view}"


# -- prompt -----------------------------------------------------------------------------------
PROMPT, CHAT, N_NEW = "prompt", "chat", "n-new"
RUN_FORWARD, RUN_GENERATE, RUN_CANCEL = "run-forward", "run-generate", "run-cancel"
RUN_STATUS, PROMPT_ERROR, CONTINUATION = "run-status", "prompt-error", "continuation"

# -- explorer ---------------------------------------------------------------------------------
SEL_LAYER_IN, SEL_HEAD_IN, OPEN_HEAD = "sel-layer-in", "sel-head-in", "open-head"
CONTRAST, EXPLORER_ERROR = "contrast", "explorer-error"
GRID_GRAPH, HEAD_GRAPH = "grid-graph", "head-graph"
HEAD_TITLE, HEAD_HELP = "head-title", "head-help"
WINDOW_CONTROLS, WIN_START, WIN_END = "window-controls", "win-start", "win-end"
WIN_SHOW, WIN_CANCEL, WIN_RESET, WIN_STATUS = "win-show", "win-cancel", "win-reset", "win-status"
TOKENS_TITLE, QUERY_IN, TOKEN_VIEW, TOKEN_LEGEND = (
    "tokens-title",
    "query-in",
    "token-view",
    "token-legend",
)
TOKEN_TYPE = "tok"  # pattern-matching id {"type": "tok", "index": position} of a token span


def token(position: int) -> dict[str, object]:
    """Id of the token span at ``position`` in the token view."""
    return {"type": TOKEN_TYPE, "index": position}


# -- head atlas -------------------------------------------------------------------------------
AN_NAME, AN_NPROMPTS, AN_CAUSAL, AN_TOPK = "an-name", "an-nprompts", "an-causal", "an-topk"
AN_SUMMARY, AN_PARAMS, AN_RUN, AN_CANCEL = "an-summary", "an-params", "an-run", "an-cancel"
AN_PROGRESS, AN_STATUS, AN_ERROR, AN_ATTRS = "an-progress", "an-status", "an-error", "an-attrs"
SCORE_GRAPH, CAUSAL_GRAPH, CAUSAL_INFO = "score-graph", "causal-graph", "causal-info"
ATLAS_MAP, ATLAS_MAP_WRAP = "atlas-map", "atlas-map-wrap"  # the atlas analyzer's 2-D map
# where the families meet (app.views.agreement): top-k, heatmaps, pair table, labels
AG_K, AG_GRAPH, AG_PAIRS, AG_LABELS = "ag-k", "ag-graph", "ag-pairs", "ag-labels"
AG_NOTE, AG_ERROR = "ag-note", "ag-error"
SCORE_TABLE = "score-table"
AN_QUICK, AN_EVIDENCE = "an-quick", "an-evidence"  # quick-mode box; stability/intervals line

# -- intervene --------------------------------------------------------------------------------
IV_HEADS, IV_ADD_SEL, IV_K, IV_FROM, IV_TOPK = (
    "iv-heads",
    "iv-add-sel",
    "iv-k",
    "iv-from",
    "iv-topk",
)
IV_HEADS_INFO, IV_MODE = "iv-heads-info", "iv-mode"
IV_REF, IV_EMPH, IV_USE_SEL, IV_ALPHA = "iv-ref", "iv-emph", "iv-use-sel", "iv-alpha"
IV_BETA, IV_FOCUS_PATH, IV_SCALE = "iv-beta", "iv-focus-path", "iv-scale"
IV_TARGETS, IV_N, IV_RUN, IV_CANCEL = "iv-targets", "iv-n", "iv-run", "iv-cancel"
IV_STATUS, IV_ERROR, IV_COMPARE, KL_GRAPH = "iv-status", "iv-error", "iv-compare", "kl-graph"
IV_BASE_TEXT, IV_NEW_TEXT = "iv-base-text", "iv-new-text"


def iv_options(mode: str) -> str:
    """Id of the options panel of intervention ``mode`` (``iv-opt-pasta``...)."""
    return f"iv-opt-{mode}"


# -- one-prompt views: head contributions, logit lens, patching -------------------------------
CONTRIB_RESULT, LENS_RESULT, PATCH_RESULT = "contrib-result", "lens-result", "patch-result"
CONTRIB_BUSY, LENS_BUSY, PATCH_BUSY = "contrib-busy", "lens-busy", "patch-busy"
CONTRIB_TARGET, CONTRIB_FOIL, CONTRIB_RUN, CONTRIB_CANCEL = (
    "contrib-target",
    "contrib-foil",
    "contrib-run",
    "contrib-cancel",
)
CONTRIB_STATUS, CONTRIB_ERROR, CONTRIB_SUMMARY = (
    "contrib-status",
    "contrib-error",
    "contrib-summary",
)
CONTRIB_GRAPH, CONTRIB_POS_GRAPH, CONTRIB_TOP = "contrib-graph", "contrib-pos-graph", "contrib-top"
CONTRIB_OPEN = "contrib-open"  # pattern-matching id {"type": "contrib-open", "index": "L23H3"}
LENS_TARGET, LENS_LAST, LENS_SHOW, LENS_RUN, LENS_CANCEL = (
    "lens-target",
    "lens-last",
    "lens-show",
    "lens-run",
    "lens-cancel",
)
LENS_STATUS, LENS_ERROR, LENS_SUMMARY, LENS_GRAPH = (
    "lens-status",
    "lens-error",
    "lens-summary",
    "lens-graph",
)
PATCH_CORRUPT, PATCH_TOKENS, PATCH_METRIC = "patch-corrupt", "patch-tokens", "patch-metric"
PATCH_ANSWER, PATCH_FOIL, PATCH_RUN, PATCH_CANCEL = (
    "patch-answer",
    "patch-foil",
    "patch-run",
    "patch-cancel",
)
PATCH_STATUS, PATCH_ERROR, PATCH_SUMMARY, PATCH_GRAPH = (
    "patch-status",
    "patch-error",
    "patch-summary",
    "patch-graph",
)


def open_head(hid: str) -> dict[str, str]:
    """Id of a "open this head in the explorer" link of the contributions view."""
    return {"type": CONTRIB_OPEN, "index": hid}


# -- export -----------------------------------------------------------------------------------
EX_FIG, EX_FIG_FORMAT, EX_FIG_BTN = "ex-fig", "ex-fig-format", "ex-fig-btn"
EX_FIG_WIDTH = "ex-fig-width"
EX_TABLE, EX_TABLE_FORMAT, EX_TABLE_BTN = "ex-table", "ex-table-format", "ex-table-btn"
EX_ERROR = "ex-error"

#: The figures a user can export, by graph id.
FIGURES = {
    HEAD_GRAPH: "Attention heatmap of the selected head",
    GRID_GRAPH: "All-heads grid",
    SCORE_GRAPH: "Head score grid (atlas)",
    ATLAS_MAP: "Head atlas map (atlas analyzer)",
    AG_GRAPH: "Family agreement (atlas)",
    CAUSAL_GRAPH: "Causal check (atlas)",
    KL_GRAPH: "Per-token KL and target changes (intervene)",
    CONTRIB_GRAPH: "Head contributions to the output token (DLA grid)",
    CONTRIB_POS_GRAPH: "Head contributions by source position",
    LENS_GRAPH: "Logit lens (layers x positions)",
    PATCH_GRAPH: "Activation patching per head (clean -> corrupted)",
}
