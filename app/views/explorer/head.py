"""Explorer, part 2: one head's query x key heatmap, and exact rows of a long prompt.

Short prompts keep every head's full map, so the heatmap is instant. Long prompts show a
block-pooled overview; clicking a row (or "Compute rows") runs a background job for the exact
attention of a window of query rows (:func:`app.jobs.zoom_rows`).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import numpy as np
from dash import ALL, Input, Output, Patch, State, ctx, dcc, html, no_update
from dash.exceptions import PreventUpdate

import workbench
from app import figures, ids, jobs
from app.components import GRAPH_CONFIG, button, cancel_button, controls, help_text, label, muted
from app.components import number as number_box
from app.context import AppContext, JobControls, as_int, message_of
from app.views.explorer.figures import head_heatmap_figure, query_row_shapes
from workbench import maps
from workbench.errors import WorkbenchError

if TYPE_CHECKING:
    import dash


ZOOM_JOB = JobControls("zoom", (ids.WIN_SHOW,), ids.WIN_CANCEL, ids.ZOOM_BUSY, ids.EXPLORER_ERROR)

#: Query rows one exact-rows job computes (a few pixels a row in the heatmap).
MAX_WINDOW_ROWS = 256
EXPIRED = "this run's data has expired; run the prompt again"


def layout() -> list[Any]:
    """Title, help, the exact-rows controls (long prompts) and the heatmap."""
    return [
        html.H4(id=ids.HEAD_TITLE, children="Selected head"),
        help_text(
            "Rows are query tokens, columns key tokens; hover for the weight. The "
            "strip above shows each key's sink score (mean attention it receives "
            "from the queries that see it), coloured by the sinks analyzer's rule: red = "
            f"first-token sink (key 0 over {maps.FIRST_TOKEN_THRESHOLD}, Gu et al.), orange = "
            f"hidden sink (a later key over {maps.HIDDEN_SINK_THRESHOLD}, ACT), grey = no sink, "
            f"light grey = not judged (seen by fewer than {maps.MIN_QUERIES} queries, so its "
            "score is the mean of a few weights). Grey cells are keys the query cannot see "
            "(causal mask). Click a cell to make its row the query of the token view.",
            id=ids.HEAD_HELP,
        ),
        controls(
            label("Exact attention for query rows"),
            number_box(ids.WIN_START, 0, min=0),
            muted("to"),
            number_box(ids.WIN_END, 64, min=1),
            button("Compute rows", ids.WIN_SHOW),
            cancel_button(ids.WIN_CANCEL),
            button("Back to overview", ids.WIN_RESET, "ghost"),
            html.Span(id=ids.WIN_STATUS, className="status"),
            extra="window-controls",
            id=ids.WINDOW_CONTROLS,
            style={"display": "none"},
        ),
        dcc.Loading(
            dcc.Graph(
                id=ids.HEAD_GRAPH,
                figure=figures.empty_figure("Run a prompt, then click a head."),
                config=GRAPH_CONFIG,
            ),
            type="dot",
        ),
    ]


def label_position(label_: Any) -> int | None:
    """Token position from an axis label ``"5 ␣mat"`` (None for other labels)."""
    m = re.match(r"^(\d+) ", str(label_))
    return int(m.group(1)) if m else None


def block_start(label_: Any) -> int | None:
    """First token of a pooled-block label ``"64–127"``."""
    m = re.match(r"^(\d+)–(\d+)$", str(label_))
    return int(m.group(1)) if m else None


def _view(mode: str, meta: dict[str, Any], layer: int, head: int, **extra: Any) -> dict:
    return {"mode": mode, "run_id": meta["run_id"], "layer": layer, "head": head, **extra}


def sink_rules(meta: dict[str, Any], sink: np.ndarray) -> np.ndarray:
    """``(L,)`` rule codes of the prompt's keys (:func:`workbench.maps.sink_rules`), judged
    only where at least :data:`workbench.maps.MIN_QUERIES` queries see the key."""
    return maps.sink_rules(sink, n_tokens=meta["n_tokens"], min_queries=maps.MIN_QUERIES)


def full_view(wb, sid, meta, layer, head, sink, contrast, qpos):
    """Heatmap of a short prompt's stored full map."""
    n = meta["n_tokens"]
    maps_ = wb.store.get(sid, meta["run_id"], f"maps/{layer}")
    if maps_ is None:
        raise WorkbenchError(EXPIRED)
    labels = figures.token_labels(meta["tokens"])
    positions = np.arange(n)
    fig = head_heatmap_figure(
        maps_[head].astype(np.float32),
        labels,
        labels,
        sink,
        f"{workbench.head_id(layer, head)} · {n} tokens",
        contrast,
        query_row=qpos,
        visible=maps.causal_visibility(positions, positions),
        sink_rules=sink_rules(meta, sink),
    )
    return fig, _view("full", meta, layer, head, q0=0, q1=n)


def window_view(window, meta, layer, head, sink, contrast, qpos):
    """Heatmap of the exact rows ``[a, b)`` computed for a long prompt, on the key columns of
    :func:`workbench.maps.window_key_columns`: the first keys and the rows' local keys one by
    one, the keys between summed into one column (so columns stay readable at 8k tokens)."""
    a, b, n, tokens = window["start"], window["end"], meta["n_tokens"], meta["tokens"]
    cols = maps.window_key_columns(a, b)
    summed = f" · Σ column = keys {cols.first}–{cols.lo - 1} summed" if cols.summed else ""
    fig = head_heatmap_figure(
        cols.weights(window["map"].astype(np.float32)),
        cols.labels(figures.token_labels(tokens)),
        figures.token_labels(tokens[a:b], a),
        cols.sink_scores(sink),
        f"{workbench.head_id(layer, head)} · exact attention of query rows {a}–{b - 1} "
        f"(of {n} tokens){summed}",
        contrast,
        query_row=(qpos - a) if a <= qpos < b else None,
        visible=cols.visibility(np.arange(a, b)),
        sink_rules=cols.sink_rules(sink_rules(meta, sink)),
    )
    return fig, _view("window", meta, layer, head, q0=a, q1=b)


def overview(wb, sid, meta, layer, head, sink, contrast):
    """Block-pooled overview of a long prompt (mass per block)."""
    n, block = meta["n_tokens"], meta["block"]
    m = wb.store.get(sid, meta["run_id"], "mass")[layer, head].astype(np.float32)
    nb = m.shape[-1]
    blabels = figures.span_labels(nb, block, n)
    fig = head_heatmap_figure(
        m,
        blabels,
        blabels,
        maps.block_max(sink, block, nb),
        f"{workbench.head_id(layer, head)} · block-pooled overview ({block}-token blocks) · "
        "click a row to compute its exact attention",
        contrast,
        weight_name="mass",
        sink_name="max sink score",
        visible=maps.block_visibility(nb, block, n),
        sink_rules=maps.block_sink_rules(sink_rules(meta, sink), block, nb),
    )
    return fig, _view("overview", meta, layer, head, block=block)


def register(app: dash.Dash, wb: AppContext) -> None:
    """Drawing the head, picking the query row, outlining it, and the exact-rows job."""

    @app.callback(
        Output(ids.HEAD_GRAPH, "figure"),
        Output(ids.HEAD_TITLE, "children"),
        Output(ids.WINDOW_CONTROLS, "style"),
        Output(ids.HEAD_VIEW, "data"),
        Input(ids.SEL_HEAD, "data"),
        Input(ids.RUN_META, "data"),
        Input(ids.WINDOW_META, "data"),
        Input(ids.CONTRAST, "value"),
        Input(ids.WIN_RESET, "n_clicks"),
        State(ids.SEL_QUERY, "data"),
        State(ids.SESSION, "data"),
    )
    def render_head(sel, meta, window_meta, contrast, _reset, query, sid):
        hidden = {"display": "none"}
        layer, head = (sel or {}).get("layer", 0), (sel or {}).get("head", 0)
        hid = workbench.head_id(layer, head)
        title = f"Selected head: {hid}"
        if not meta:
            return (
                figures.empty_figure(f"Run a prompt to see {hid}'s attention."),
                title,
                hidden,
                None,
            )
        try:
            run = meta["run_id"]
            sink_all = wb.store.get(sid, run, "sink")
            if sink_all is None:
                raise WorkbenchError(EXPIRED)
            sink = sink_all[layer, head].astype(np.float32)
            qpos = (query or {}).get("pos") if (query or {}).get("run_id") == run else None
            qpos = meta["n_tokens"] - 1 if qpos is None else qpos
            if meta["full_maps"]:
                fig, view = full_view(wb, sid, meta, layer, head, sink, contrast, qpos)
                return fig, title, hidden, view
            window = wb.store.get(sid, run, "window")
            use_window = (
                ctx.triggered_id != ids.WIN_RESET
                and window is not None
                and window_meta
                and window_meta.get("run_id") == run
                and (window["layer"], window["head"]) == (layer, head)
            )
            if use_window:
                fig, view = window_view(window, meta, layer, head, sink, contrast, qpos)
            else:
                fig, view = overview(wb, sid, meta, layer, head, sink, contrast)
            return fig, title, {"display": "flex"}, view
        except WorkbenchError as exc:
            return figures.empty_figure(str(exc)), title, hidden, None
        except Exception as exc:
            return figures.empty_figure(message_of(exc, "Drawing the head")), hid, hidden, None

    @app.callback(
        Output(ids.SEL_QUERY, "data"),
        Output(ids.QUERY_IN, "value"),
        Output(ids.WIN_START, "value"),
        Output(ids.WIN_END, "value"),
        Output(ids.ZOOM_REQUEST, "data"),
        Input(ids.RUN_META, "data"),
        Input(ids.HEAD_GRAPH, "clickData"),
        Input({"type": ids.TOKEN_TYPE, "index": ALL}, "n_clicks"),
        Input(ids.QUERY_IN, "value"),
        Input(ids.WINDOW_META, "data"),
        State(ids.HEAD_VIEW, "data"),
        State(ids.ZOOM_REQUEST, "data"),
        State(ids.SEL_QUERY, "data"),
        prevent_initial_call=True,
    )
    def select_query(meta, click, _tok_clicks, query_in, window, view, zoom_req, current):
        if not meta:
            raise PreventUpdate
        n, run, trigger = meta["n_tokens"], meta["run_id"], ctx.triggered_id
        nothing = (no_update,) * 5

        def pick(pos: int, show: Any = None) -> tuple:
            return {"run_id": run, "pos": pos}, show, no_update, no_update, no_update

        if trigger == ids.RUN_META:
            return {"run_id": run, "pos": n - 1}, n - 1, max(0, n - 64), n, no_update
        if trigger == ids.WINDOW_META:
            # new exact rows: keep the query if they include it, else take their last row
            if not window or window.get("run_id") != run:
                raise PreventUpdate
            pos = (current or {}).get("pos")
            if pos is not None and window["start"] <= pos < window["end"]:
                raise PreventUpdate
            return pick(window["end"] - 1, window["end"] - 1)
        if trigger == ids.QUERY_IN:
            try:
                return pick(as_int(query_in, "query position", 0, n - 1), no_update)
            except WorkbenchError:
                raise PreventUpdate from None
        if isinstance(trigger, dict) and trigger.get("type") == ids.TOKEN_TYPE:
            if not ctx.triggered or not ctx.triggered[0].get("value"):
                raise PreventUpdate
            return pick(int(trigger["index"]), int(trigger["index"]))
        if trigger == ids.HEAD_GRAPH and click:
            point = click.get("points", [{}])[0]
            if "z" not in point:
                return nothing
            if view and view.get("mode") == "overview":
                a = block_start(point.get("y"))
                if a is None:
                    return nothing
                end = min(n, a + max(view.get("block", 1), 32))
                return no_update, no_update, a, end, (zoom_req or 0) + 1
            pos = label_position(point.get("y"))
            return nothing if pos is None else pick(pos, pos)
        return nothing

    @app.callback(
        Output(ids.HEAD_GRAPH, "figure", allow_duplicate=True),
        Input(ids.SEL_QUERY, "data"),
        Input(ids.HEAD_VIEW, "data"),
        prevent_initial_call=True,
    )
    def highlight_query(query, view):
        if not query or not view or view.get("mode") == "overview":
            raise PreventUpdate
        if view.get("run_id") != query.get("run_id"):
            raise PreventUpdate
        row = query["pos"] - view["q0"]
        patch = Patch()
        inside = 0 <= row < view["q1"] - view["q0"]
        patch["layout"]["shapes"] = query_row_shapes(row if inside else None)
        return patch

    @app.callback(
        Output(ids.WINDOW_META, "data"),
        Output(ids.EXPLORER_ERROR, "children", allow_duplicate=True),
        Input(ids.WIN_SHOW, "n_clicks"),
        Input(ids.ZOOM_REQUEST, "data"),
        State(ids.WIN_START, "value"),
        State(ids.WIN_END, "value"),
        State(ids.SEL_HEAD, "data"),
        State(ids.RUN_META, "data"),
        State(ids.SESSION, "data"),
        **ZOOM_JOB.background([Output(ids.WIN_STATUS, "children")]),
    )
    def zoom_job(set_progress, n_show, n_req, start, end, sel, meta, sid):
        try:
            jobs.setup_worker(wb.job_threads)
            if not meta:
                raise WorkbenchError("run a prompt first")
            n = meta["n_tokens"]
            a = as_int(start, "first query row", 0, n - 1)
            b = as_int(end, "end row", a + 1, n)
            if b - a > MAX_WINDOW_ROWS:
                raise WorkbenchError(
                    f"at most {MAX_WINDOW_ROWS} query rows at a time; asked for {b - a}"
                )
            set_progress(f"Computing rows {a}–{b - 1}…")
            out = jobs.zoom_rows(wb.lm, wb.store, sid, meta, sel["layer"], sel["head"], a, b)
            set_progress("")
            return out, ""
        except Exception as exc:
            set_progress("")
            return no_update, message_of(exc, "Computing the rows")
        finally:
            wb.mark_done(sid, ZOOM_JOB.kind, n_show, n_req)
