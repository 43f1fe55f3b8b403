"""Page layout: the prompt bar and four views (explorer, head atlas, intervene, export).

:func:`make_layout` returns a function Dash calls on every page load, so each load gets a
fresh session id (``dcc.Store`` ``session-id``) and empty per-session stores.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from dash import dash_table, dcc, html

from app import figures
from app.jobs import DEFAULT_REFERENCE, MODES

DEFAULT_PROMPT = "When Mary and John went to the store, John gave a drink to"

GRAPH_CONFIG = {
    "displaylogo": False,
    "toImageButtonOptions": {"format": "png", "scale": 2},
    "modeBarButtonsToRemove": ["lasso2d", "select2d"],
}


def help_text(text: str, **kwargs) -> html.P:
    return html.P(text, className="help", **kwargs)


def alert(id_: str) -> html.Div:
    """An error box: empty (hidden by CSS) until a callback puts a message in it."""
    return html.Div(id=id_, className="alert", role="alert")


def stores() -> list:
    return [
        dcc.Store(id="session-id", data=uuid.uuid4().hex),
        dcc.Store(id="run-meta"),
        dcc.Store(id="sel-head", data={"layer": 0, "head": 0}),
        dcc.Store(id="sel-query"),
        dcc.Store(id="head-view"),
        dcc.Store(id="window-meta"),
        dcc.Store(id="atlas-results", data={}),
        dcc.Store(id="iv-result"),
        dcc.Store(id="run-busy", data=False),
        dcc.Store(id="an-busy", data=False),
        dcc.Store(id="iv-busy", data=False),
        dcc.Store(id="zoom-busy", data=False),
        dcc.Store(id="zoom-request", data=0),
        dcc.Download(id="download"),
    ]


def header(info) -> html.Header:
    return html.Header(
        className="topbar",
        children=[
            html.Div("Attention-head workbench", className="brand"),
            html.Div(
                f"{info.name} · {info.architecture} · {info.n_layers} layers × {info.n_heads} "
                f"query heads ({info.n_kv_heads} KV heads) · context {info.max_context:,} tokens",
                id="model-info",
                className="model-info",
            ),
        ],
    )


def prompt_panel() -> html.Section:
    return html.Section(
        className="card",
        children=[
            html.Div(
                className="card-title-row",
                children=[
                    html.H3("Prompt"),
                    help_text(
                        "Tokenized exactly as typed. Run = one forward pass over the prompt; "
                        "Generate = greedy continuation first, then the views show prompt + "
                        "continuation."
                    ),
                ],
            ),
            dcc.Textarea(
                id="prompt",
                value=DEFAULT_PROMPT,
                className="prompt-box",
                placeholder="Type a prompt…",
                spellCheck=False,
            ),
            html.Div(
                className="controls",
                children=[
                    dcc.Checklist(
                        id="chat",
                        options=[{"label": " chat template", "value": "chat"}],
                        value=[],
                        inline=True,
                        className="check",
                    ),
                    html.Button(
                        "Run forward", id="run-forward", n_clicks=0, className="btn primary"
                    ),
                    html.Div(
                        className="inline-group",
                        children=[
                            html.Button("Generate", id="run-generate", n_clicks=0, className="btn"),
                            dcc.Input(
                                id="n-new",
                                type="number",
                                value=20,
                                min=1,
                                max=512,
                                step=1,
                                className="num",
                            ),
                            html.Span("new tokens", className="muted"),
                        ],
                    ),
                    html.Button(
                        "Cancel", id="run-cancel", n_clicks=0, className="btn ghost", disabled=True
                    ),
                    html.Span(id="run-status", className="status"),
                ],
            ),
            alert("prompt-error"),
            html.Div(id="continuation"),
        ],
    )


def explorer_tab(info) -> dcc.Tab:
    return dcc.Tab(
        label="Attention explorer",
        value="explorer",
        id="tab-explorer",
        children=[
            html.Div(
                className="tab-body",
                children=[
                    html.Div(
                        className="controls",
                        children=[
                            html.Span("Open head", className="label"),
                            html.Span("layer", className="muted"),
                            dcc.Input(
                                id="sel-layer-in", type="number", value=0, step=1, className="num"
                            ),
                            html.Span("head", className="muted"),
                            dcc.Input(
                                id="sel-head-in", type="number", value=0, step=1, className="num"
                            ),
                            html.Button("Open", id="open-head", n_clicks=0, className="btn"),
                            html.Span("colour", className="label spacer"),
                            dcc.RadioItems(
                                id="contrast",
                                options=[
                                    {"label": " √ (shows small weights)", "value": "sqrt"},
                                    {"label": " linear", "value": "linear"},
                                ],
                                value="sqrt",
                                inline=True,
                                className="radio",
                            ),
                        ],
                    ),
                    alert("explorer-error"),
                    html.H4("All heads"),
                    help_text(
                        "Each tile is one head's attention, block-pooled (a cell = attention mass "
                        "a block of queries puts on a block of keys), so this stays fast for long "
                        "prompts. Queries run top to bottom, keys left to right. Click a tile to "
                        "open that head."
                    ),
                    dcc.Loading(
                        dcc.Graph(
                            id="grid-graph",
                            figure=figures.empty_figure(
                                "Run a prompt to see every head's attention here."
                            ),
                            config={**GRAPH_CONFIG, "displayModeBar": False},
                        ),
                        type="dot",
                    ),
                    html.H4(id="head-title", children="Selected head"),
                    help_text(
                        "Rows are query tokens, columns key tokens; hover for the weight. The "
                        "strip above shows each key's sink score (mean attention it receives "
                        "from the queries that see it); red = sink (> 0.3 for the first token, "
                        "> 0.1 after). Grey cells are keys the query cannot see (causal mask). "
                        "Click a cell to make its row the query of the token view.",
                        id="head-help",
                    ),
                    html.Div(
                        id="window-controls",
                        className="controls window-controls",
                        style={"display": "none"},
                        children=[
                            html.Span("Exact attention for query rows", className="label"),
                            dcc.Input(
                                id="win-start", type="number", value=0, min=0, className="num"
                            ),
                            html.Span("to", className="muted"),
                            dcc.Input(
                                id="win-end", type="number", value=64, min=1, className="num"
                            ),
                            html.Button("Compute rows", id="win-show", n_clicks=0, className="btn"),
                            html.Button(
                                "Cancel",
                                id="win-cancel",
                                n_clicks=0,
                                className="btn ghost",
                                disabled=True,
                            ),
                            html.Button(
                                "Back to overview",
                                id="win-reset",
                                n_clicks=0,
                                className="btn ghost",
                            ),
                            html.Span(id="win-status", className="status"),
                        ],
                    ),
                    dcc.Loading(
                        dcc.Graph(
                            id="head-graph",
                            figure=figures.empty_figure("Run a prompt, then click a head."),
                            config=GRAPH_CONFIG,
                        ),
                        type="dot",
                    ),
                    html.H4(id="tokens-title", children="Token view"),
                    help_text(
                        "Tokens coloured by the attention they receive from the query token "
                        "(outlined). Click a token to make it the query. Underlined red: sinks of "
                        "this head."
                    ),
                    html.Div(
                        className="controls",
                        children=[
                            html.Span("query position", className="muted"),
                            dcc.Input(id="query-in", type="number", min=0, step=1, className="num"),
                        ],
                    ),
                    html.Div(id="token-view", className="token-view"),
                    html.Div(id="token-legend", className="legend"),
                ],
            )
        ],
    )


def atlas_tab(info, analyzer_list: list[tuple[str, str]]) -> dcc.Tab:
    default = "sinks" if any(n == "sinks" for n, _ in analyzer_list) else analyzer_list[0][0]
    return dcc.Tab(
        label="Head atlas",
        value="atlas",
        id="tab-atlas",
        children=[
            html.Div(
                className="tab-body",
                children=[
                    help_text(
                        "Score every head with an analyzer (runs in the background; the page "
                        "stays usable). The causal check ablates the top-k heads and k random "
                        "heads of the same layers: an attention score alone is not an "
                        "explanation. Click a head in the grid or the table to open it in the "
                        "explorer."
                    ),
                    html.Div(
                        className="controls",
                        children=[
                            html.Span("analyzer", className="label"),
                            dcc.Dropdown(
                                id="an-name",
                                options=[{"label": n, "value": n} for n, _ in analyzer_list],
                                value=default,
                                clearable=False,
                                className="dropdown",
                            ),
                            html.Span("prompts", className="muted"),
                            dcc.Input(
                                id="an-nprompts",
                                type="number",
                                value=4,
                                min=1,
                                step=1,
                                className="num",
                            ),
                            dcc.Checklist(
                                id="an-causal",
                                options=[{"label": " causal check", "value": "causal"}],
                                value=["causal"],
                                inline=True,
                                className="check",
                            ),
                            html.Span("top-k", className="muted"),
                            dcc.Input(
                                id="an-topk", type="number", value=5, min=1, step=1, className="num"
                            ),
                        ],
                    ),
                    html.Div(id="an-summary", className="help"),
                    html.Div(
                        className="controls",
                        children=[
                            html.Span("more parameters", className="muted"),
                            dcc.Input(
                                id="an-params",
                                type="text",
                                value="",
                                placeholder='JSON, e.g. {"prompt_tokens": 32, "draws": 2}',
                                className="text wide",
                            ),
                            html.Button(
                                "Run analyzer", id="an-run", n_clicks=0, className="btn primary"
                            ),
                            html.Button(
                                "Cancel",
                                id="an-cancel",
                                n_clicks=0,
                                className="btn ghost",
                                disabled=True,
                            ),
                        ],
                    ),
                    html.Div(
                        className="progress-row",
                        children=[
                            html.Progress(
                                id="an-progress", value="0", max="1", className="progress"
                            ),
                            html.Span(id="an-status", className="status"),
                        ],
                    ),
                    alert("an-error"),
                    html.Div(
                        className="two-col",
                        children=[
                            html.Div(
                                className="col-main",
                                children=[
                                    dcc.Graph(
                                        id="score-graph",
                                        figure=figures.score_grid_figure(
                                            info.n_layers, info.n_heads
                                        ),
                                        config=GRAPH_CONFIG,
                                    )
                                ],
                            ),
                            html.Div(
                                className="col-side",
                                children=[
                                    dcc.Graph(
                                        id="causal-graph",
                                        figure=figures.empty_figure(
                                            "The causal check appears here.", height=330
                                        ),
                                        config={**GRAPH_CONFIG, "displayModeBar": False},
                                    ),
                                    html.Div(id="causal-info", className="help"),
                                ],
                            ),
                        ],
                    ),
                    html.Div(id="an-attrs", className="attrs"),
                    dash_table.DataTable(
                        id="score-table",
                        data=[],
                        columns=[],
                        sort_action="native",
                        sort_by=[{"column_id": "score", "direction": "desc"}],
                        filter_action="native",
                        page_size=12,
                        style_table={"overflowX": "auto"},
                        style_cell={
                            "fontFamily": figures.FONT,
                            "fontSize": "13px",
                            "padding": "4px 8px",
                            "textAlign": "right",
                        },
                        style_header={"fontWeight": "600", "backgroundColor": "#f5f7fa"},
                        style_cell_conditional=[
                            {"if": {"column_id": "head_id"}, "textAlign": "left"}
                        ],
                    ),
                ],
            )
        ],
    )


def intervene_tab() -> dcc.Tab:
    mode_options = [{"label": f" {label}", "value": value} for value, label in MODES.items()]
    return dcc.Tab(
        label="Intervene",
        value="intervene",
        id="tab-intervene",
        children=[
            html.Div(
                className="tab-body",
                children=[
                    help_text(
                        "Ablate or steer heads on the prompt above and compare greedy "
                        "continuations. KL(base ‖ intervened) is measured on the next-token "
                        "distribution at every prompt position."
                    ),
                    html.Div(
                        className="controls",
                        children=[
                            html.Span("heads", className="label"),
                            dcc.Input(
                                id="iv-heads",
                                type="text",
                                value="",
                                placeholder="L5H3, L7H1  (L5H* = all heads of layer 5)",
                                className="text wide",
                                debounce=True,
                            ),
                            html.Button(
                                "Add selected head", id="iv-add-sel", n_clicks=0, className="btn"
                            ),
                            html.Span("or top", className="muted"),
                            dcc.Input(
                                id="iv-k", type="number", value=5, min=1, step=1, className="num"
                            ),
                            html.Span("of", className="muted"),
                            dcc.Dropdown(
                                id="iv-from",
                                options=[],
                                placeholder="an analyzer you ran",
                                className="dropdown",
                            ),
                            html.Button("Use top-k", id="iv-topk", n_clicks=0, className="btn"),
                        ],
                    ),
                    html.Div(id="iv-heads-info", className="help"),
                    html.Div(
                        className="controls",
                        children=[
                            html.Span("mode", className="label"),
                            dcc.RadioItems(
                                id="iv-mode",
                                options=mode_options,
                                value="zero",
                                className="radio modes",
                            ),
                        ],
                    ),
                    html.Div(
                        id="iv-opt-mean",
                        className="mode-opts",
                        children=[
                            html.Span(
                                "reference prompts (one per line): the head's output is "
                                "replaced by its mean over them",
                                className="muted",
                            ),
                            dcc.Textarea(id="iv-ref", value=DEFAULT_REFERENCE, className="ref-box"),
                        ],
                    ),
                    html.Div(
                        id="iv-opt-pasta",
                        className="mode-opts controls",
                        children=[
                            html.Span("emphasize", className="muted"),
                            dcc.Input(
                                id="iv-emph",
                                type="text",
                                value="",
                                placeholder="text of the prompt to emphasize",
                                className="text wide",
                            ),
                            html.Button(
                                "Use selection",
                                id="iv-use-sel",
                                n_clicks=0,
                                className="btn",
                                title="select text in the prompt box first",
                            ),
                            html.Span("alpha", className="muted"),
                            dcc.Input(
                                id="iv-alpha",
                                type="number",
                                value=0.01,
                                min=0.001,
                                max=1,
                                step=0.001,
                                className="num",
                            ),
                        ],
                    ),
                    html.Div(
                        id="iv-opt-act",
                        className="mode-opts controls",
                        children=[
                            html.Span("beta (attention kept on hidden sinks)", className="muted"),
                            dcc.Input(
                                id="iv-beta",
                                type="number",
                                value=0.4,
                                min=0,
                                max=1,
                                step=0.05,
                                className="num",
                            ),
                        ],
                    ),
                    html.Div(
                        id="iv-opt-focus",
                        className="mode-opts controls",
                        children=[
                            html.Span("directions file", className="muted"),
                            dcc.Input(
                                id="iv-focus-path",
                                type="text",
                                value="",
                                placeholder="/path/to/focus_directions.safetensors",
                                className="text wide",
                            ),
                            html.Span("scale", className="muted"),
                            dcc.Input(
                                id="iv-scale",
                                type="number",
                                value=0.25,
                                step="any",
                                className="num",
                            ),
                            html.Span("(heads come from the file)", className="muted"),
                        ],
                    ),
                    html.Div(
                        className="controls",
                        children=[
                            html.Span("targets", className="label"),
                            dcc.Input(
                                id="iv-targets",
                                type="text",
                                value="",
                                placeholder="comma-separated: Mary, John (leading space counts)",
                                className="text wide",
                            ),
                            html.Span("new tokens", className="muted"),
                            dcc.Input(
                                id="iv-n",
                                type="number",
                                value=20,
                                min=1,
                                max=256,
                                step=1,
                                className="num",
                            ),
                            html.Button("Apply", id="iv-run", n_clicks=0, className="btn primary"),
                            html.Button(
                                "Cancel",
                                id="iv-cancel",
                                n_clicks=0,
                                className="btn ghost",
                                disabled=True,
                            ),
                            html.Span(id="iv-status", className="status"),
                        ],
                    ),
                    alert("iv-error"),
                    html.Div(id="iv-compare"),
                    dcc.Graph(
                        id="kl-graph",
                        figure=figures.empty_figure(
                            "Apply an intervention to see its effect per token."
                        ),
                        config=GRAPH_CONFIG,
                    ),
                ],
            )
        ],
    )


FIGURES = {
    "head-graph": "Attention heatmap of the selected head",
    "grid-graph": "All-heads grid",
    "score-graph": "Head score grid (atlas)",
    "causal-graph": "Causal check (atlas)",
    "kl-graph": "Per-token KL and target changes (intervene)",
}
TABLES = {
    "scores": "Head scores of the shown analyzer",
    "effects": "Intervention effects per position",
    "continuations": "Base vs intervened continuations",
    "attention": "Attention map of the selected head (query x key)",
}


def export_tab() -> dcc.Tab:
    return dcc.Tab(
        label="Export",
        value="export",
        id="tab-export",
        children=[
            html.Div(
                className="tab-body",
                children=[
                    help_text(
                        "Download what the views currently show. PNG and SVG are drawn by the "
                        "browser; HTML is an interactive standalone page (plotly.js inlined, "
                        "works offline)."
                    ),
                    html.H4("Figure"),
                    html.Div(
                        className="controls",
                        children=[
                            dcc.Dropdown(
                                id="ex-fig",
                                options=[{"label": v, "value": k} for k, v in FIGURES.items()],
                                value="head-graph",
                                clearable=False,
                                className="dropdown wide",
                            ),
                            dcc.RadioItems(
                                id="ex-fig-format",
                                options=[
                                    {"label": f" {f.upper()}", "value": f}
                                    for f in ("png", "svg", "html")
                                ],
                                value="png",
                                inline=True,
                                className="radio",
                            ),
                            html.Button(
                                "Download figure",
                                id="ex-fig-btn",
                                n_clicks=0,
                                className="btn primary",
                            ),
                        ],
                    ),
                    html.H4("Table"),
                    html.Div(
                        className="controls",
                        children=[
                            dcc.Dropdown(
                                id="ex-table",
                                options=[{"label": v, "value": k} for k, v in TABLES.items()],
                                value="scores",
                                clearable=False,
                                className="dropdown wide",
                            ),
                            dcc.RadioItems(
                                id="ex-table-format",
                                options=[
                                    {"label": " CSV", "value": "csv"},
                                    {"label": " Parquet", "value": "parquet"},
                                ],
                                value="csv",
                                inline=True,
                                className="radio",
                            ),
                            html.Button(
                                "Download table",
                                id="ex-table-btn",
                                n_clicks=0,
                                className="btn primary",
                            ),
                        ],
                    ),
                    alert("ex-error"),
                    html.Div(id="ex-dummy", style={"display": "none"}),
                ],
            )
        ],
    )


def make_layout(info, analyzer_list: list[tuple[str, str]]) -> Callable[[], html.Div]:
    """A layout function: Dash calls it per page load (fresh session id each time)."""

    def layout() -> html.Div:
        return html.Div(
            className="page",
            children=[
                *stores(),
                header(info),
                html.Main(
                    className="main",
                    children=[
                        prompt_panel(),
                        dcc.Tabs(
                            id="tabs",
                            value="explorer",
                            className="tabs",
                            children=[
                                explorer_tab(info),
                                atlas_tab(info, analyzer_list),
                                intervene_tab(),
                                export_tab(),
                            ],
                        ),
                    ],
                ),
            ],
        )

    return layout
