"""Explorer, part 1: the head picker and the all-heads mosaic (one block-pooled tile a head).

A head is opened from this grid, from the atlas' score grid or table, or by number; the
selection is :data:`app.ids.SEL_HEAD` and is outlined in both grids.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from dash import Input, Output, Patch, State, ctx, dcc, html, no_update
from dash.exceptions import PreventUpdate

import workbench
from app import figures, ids
from app.components import QUIET_GRAPH_CONFIG, alert, button, controls, help_text, label, muted
from app.components import number as number_box
from app.context import AppContext, as_int
from app.views.explorer.figures import thumbnail_grid_figure
from workbench.errors import WorkbenchError

if TYPE_CHECKING:
    import dash

EMPTY_GRID = "Run a prompt to see every head's attention here."
STALE = "explorer-stale"  # the stale mark (shown while the prompt differs from the run's)
STALE_TEXT = "stale: the prompt changed since this was computed (run it again to update)"
STALE_STYLE = {
    "background": "#fff8e1",
    "borderLeft": "4px solid #f9a825",
    "padding": "6px 10px",
    "margin": "8px 0",
    "fontSize": "13px",
}
#: The mark, in the browser (the prompt can be long: it is not sent to the server per key):
#: stale when the prompt text or the chat-template choice differs from the run's.
STALE_JS = (
    "function(prompt, chat, meta) {"
    " if (!meta) { return ['', {display: 'none'}]; }"
    " const same = prompt === meta.prompt && ((chat || []).length > 0) === !!meta.chat;"
    f" return same ? ['', {{display: 'none'}}] : [{STALE_TEXT!r}, {STALE_STYLE!r}]; }}"
)


def layout() -> list[Any]:
    """The picker row, the error box and the all-heads grid."""
    return [
        controls(
            label("Open head"),
            muted("layer"),
            number_box(ids.SEL_LAYER_IN, 0, step=1),
            muted("head"),
            number_box(ids.SEL_HEAD_IN, 0, step=1),
            button("Open", ids.OPEN_HEAD),
            label("colour", "spacer"),
            dcc.RadioItems(
                id=ids.CONTRAST,
                options=[
                    {"label": " √ (shows small weights)", "value": "sqrt"},
                    {"label": " linear", "value": "linear"},
                ],
                value="sqrt",
                inline=True,
                className="radio",
            ),
        ),
        alert(ids.EXPLORER_ERROR),
        html.Div(id=STALE, role="status", style={"display": "none"}),
        html.H4("All heads"),
        help_text(
            "Each tile is one head's attention, block-pooled (a cell = attention mass "
            "a block of queries puts on a block of keys), so this stays fast for long "
            "prompts. Queries run top to bottom, keys left to right. Click a tile to "
            "open that head; drag a box over a few tiles to zoom in on them."
        ),
        dcc.Loading(
            dcc.Graph(
                id=ids.GRID_GRAPH,
                figure=figures.empty_figure(EMPTY_GRID),
                config=QUIET_GRAPH_CONFIG,
            ),
            type="dot",
        ),
    ]


def _clicked_point(click: dict[str, Any] | None) -> dict[str, Any]:
    point = (click or {}).get("points", [{}])[0]
    if "x" not in point or "y" not in point:
        raise PreventUpdate
    return point


def _from_grid(clicks: dict[str, Any], _layer_in, _head_in):
    point = _clicked_point(clicks[ids.GRID_GRAPH])
    return round(point["x"]), round(point["y"]), no_update


def _from_score_grid(clicks: dict[str, Any], _layer_in, _head_in):
    point = _clicked_point(clicks[ids.SCORE_GRAPH])
    return int(point["x"]), int(point["y"]), "explorer"


def _from_atlas_map(clicks: dict[str, Any], _layer_in, _head_in):
    point = (clicks[ids.ATLAS_MAP] or {}).get("points", [{}])[0]
    if not point.get("customdata"):
        raise PreventUpdate
    parsed = workbench.parse_head(str(point["customdata"]))
    return parsed.layer, parsed.head, "explorer"


def _from_score_table(clicks: dict[str, Any], _layer_in, _head_in):
    cell = clicks[ids.SCORE_TABLE]
    if not cell or not cell.get("row_id"):
        raise PreventUpdate
    parsed = workbench.parse_head(str(cell["row_id"]))
    return parsed.layer, parsed.head, "explorer"


def _from_inputs(_clicks: dict[str, Any], layer_in, head_in):
    return as_int(layer_in, "layer"), as_int(head_in, "head"), no_update


#: How each way of opening a head reads (layer, head, tab to show) from the clicks (each
#: source's click data by id) and the layer/head inputs.
OPENERS = {
    ids.GRID_GRAPH: _from_grid,
    ids.SCORE_GRAPH: _from_score_grid,
    ids.ATLAS_MAP: _from_atlas_map,
    ids.SCORE_TABLE: _from_score_table,
    ids.OPEN_HEAD: _from_inputs,
}


def register(app: dash.Dash, wb: AppContext) -> None:
    """Head selection, its outline in both grids, drawing the mosaic, and the stale mark."""
    app.clientside_callback(
        STALE_JS,
        Output(STALE, "children"),
        Output(STALE, "style"),
        Input(ids.PROMPT, "value"),
        Input(ids.CHAT, "value"),
        Input(ids.RUN_META, "data"),
    )

    @app.callback(
        Output(ids.SEL_HEAD, "data"),
        Output(ids.EXPLORER_ERROR, "children"),
        Output(ids.TABS, "value"),
        Output(ids.SEL_LAYER_IN, "value"),
        Output(ids.SEL_HEAD_IN, "value"),
        Input(ids.GRID_GRAPH, "clickData"),
        Input(ids.SCORE_GRAPH, "clickData"),
        Input(ids.ATLAS_MAP, "clickData"),
        Input(ids.SCORE_TABLE, "active_cell"),
        Input(ids.OPEN_HEAD, "n_clicks"),
        State(ids.SEL_LAYER_IN, "value"),
        State(ids.SEL_HEAD_IN, "value"),
        prevent_initial_call=True,
    )
    def select_head(grid_click, score_click, map_click, cell, _n, layer_in, head_in):
        opener = OPENERS.get(ctx.triggered_id, _from_inputs)
        clicks = {
            ids.GRID_GRAPH: grid_click,
            ids.SCORE_GRAPH: score_click,
            ids.ATLAS_MAP: map_click,
            ids.SCORE_TABLE: cell,
        }
        try:
            layer, head, tab = opener(clicks, layer_in, head_in)
            wb.lm.head_id(layer, head)
        except WorkbenchError as exc:
            return no_update, str(exc), no_update, no_update, no_update
        return {"layer": layer, "head": head}, "", tab, layer, head

    @app.callback(
        Output(ids.GRID_GRAPH, "figure", allow_duplicate=True),
        Output(ids.SCORE_GRAPH, "figure", allow_duplicate=True),
        Input(ids.SEL_HEAD, "data"),
        State(ids.RUN_META, "data"),
        prevent_initial_call=True,
    )
    def highlight_head(sel, meta):
        shapes = figures.selection_shapes((sel["layer"], sel["head"]))
        grid, score = Patch(), Patch()
        grid["layout"]["shapes"] = shapes
        score["layout"]["shapes"] = shapes
        return (grid if meta else no_update), score

    @app.callback(
        Output(ids.GRID_GRAPH, "figure"),
        Input(ids.RUN_META, "data"),
        Input(ids.CONTRAST, "value"),
        State(ids.SEL_HEAD, "data"),
        State(ids.SESSION, "data"),
    )
    def render_grid(meta, contrast, sel, sid):
        if not meta:
            return figures.empty_figure(EMPTY_GRID)
        thumbs = wb.store.get(sid, meta["run_id"], "thumbs")
        if thumbs is None:
            return figures.empty_figure("This run's data has expired; run the prompt again.")
        tb = meta["thumb_block"]
        title = (
            f"{meta['n_tokens']} tokens · each tile = one head"
            + (f" · cells pooled over {tb}-token blocks" if tb > 1 else " · one cell per token")
            + " · drag a box to zoom, double-click to zoom out"
        )
        return thumbnail_grid_figure(
            thumbs.astype(np.float32),
            contrast,
            selected=(sel["layer"], sel["head"]) if sel else None,
            title=title,
            uirevision=meta["run_id"],
        )
