"""Callbacks of the app.

State design:

* the model is shared read-only (passed in, kept in :func:`register`'s closure); every forward
  pass runs in a background callback, i.e. in a process forked from the server, so probes and
  interventions attach their hooks to that process's copy only;
* per-session state lives in the browser (``dcc.Store``: run metadata and tokens, selected head
  and query, analyzer tables, intervention results) or, for per-head arrays, in the
  server-side :class:`~app.state.SessionStore` keyed by the page's session id and run id;
* no callback mutates module or closure state.

Every callback catches its errors and writes a readable message into the page; an unexpected
exception is logged with its traceback and reported in one line.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import re
from typing import Any

import numpy as np
import pandas as pd
import plotly.io as pio
from dash import ALL, Input, Output, Patch, State, ctx, dcc, html, no_update
from dash.dash_table.Format import Format, Scheme
from dash.exceptions import PreventUpdate
from plotly.colors import get_colorscale

import workbench
from app import figures, jobs
from app.state import SessionStore
from workbench.errors import WorkbenchError

log = logging.getLogger("workbench.app")

MAX_NEW_TOKENS = 512
MAX_WINDOW_ROWS = 512
TOKEN_VIEW_MAX = 1500
STOPPED = (
    "Stopped: the job was cancelled, or its worker process ended before it finished "
    "(see the server log)."
)


def message_of(exc: BaseException, what: str = "The request") -> str:
    """One readable line for an exception (WorkbenchError messages are written for users)."""
    if isinstance(exc, WorkbenchError):
        return str(exc)
    log.error("%s failed", what, exc_info=exc)
    return (
        f"{what} failed unexpectedly ({type(exc).__name__}: {exc}). The app is still running; "
        "the traceback is in the server log."
    )


def as_int(value: Any, name: str, lo: int | None = None, hi: int | None = None) -> int:
    """A whole number from an input box, or a WorkbenchError naming the field and range."""
    try:
        f = float(value)
        if not math.isfinite(f) or f != int(f):
            raise ValueError
        ivalue = int(f)
    except (TypeError, ValueError):
        raise WorkbenchError(f"{name} must be a whole number, got {value!r}") from None
    if (lo is not None and ivalue < lo) or (hi is not None and ivalue > hi):
        bounds = f"{lo if lo is not None else '-inf'}..{hi if hi is not None else 'inf'}"
        raise WorkbenchError(f"{name} must be in {bounds}, got {ivalue}")
    return ivalue


def label_position(label: Any) -> int | None:
    """Token position from an axis label ``"5 ␣mat"`` (None for other labels)."""
    m = re.match(r"^(\d+) ", str(label))
    return int(m.group(1)) if m else None


def block_start(label: Any) -> int | None:
    """First token of a pooled-block label ``"64–127"``."""
    m = re.match(r"^(\d+)–(\d+)$", str(label))
    return int(m.group(1)) if m else None


def continuation_view(meta: dict[str, Any]) -> Any:
    if meta.get("generated") is None:
        return None
    gen = meta["generated"]
    return html.Div(
        className="continuation",
        children=[
            html.Span("Continuation ", className="label"),
            html.Span(meta["prompt"][-200:], className="muted"),
            html.Mark(gen if gen else "(the model ended its turn at once)", className="gen"),
        ],
    )


def word_diff(a: str, b: str) -> tuple[list, list]:
    """Both texts as spans, words that differ marked (for the side-by-side view)."""
    wa, wb = re.findall(r"\s*\S+|\s+", a), re.findall(r"\s*\S+|\s+", b)
    sm = difflib.SequenceMatcher(a=wa, b=wb, autojunk=False)
    out_a: list = []
    out_b: list = []
    for op, i0, i1, j0, j1 in sm.get_opcodes():
        ta, tb = "".join(wa[i0:i1]), "".join(wb[j0:j1])
        if op == "equal":
            out_a.append(ta)
            out_b.append(tb)
        else:
            if ta:
                out_a.append(html.Mark(ta, className="del"))
            if tb:
                out_b.append(html.Mark(tb, className="ins"))
    return out_a, out_b


def legend_bar(contrast: str, title: str = "attention from the query") -> html.Div:
    stops = np.linspace(0, 1, 21)
    colours = ", ".join(figures.attention_color(w, contrast) for w in stops)
    return html.Div(
        className="legend-row",
        children=[
            html.Span(title, className="muted"),
            html.Span("0", className="legend-tick"),
            html.Span(
                className="legend-bar",
                style={"background": f"linear-gradient(to right, {colours})"},
            ),
            html.Span("1", className="legend-tick"),
            html.Span(className="sink-key"),
            html.Span("sink", className="muted"),
        ],
    )


def register(app, lm, store: SessionStore, *, job_threads: int = 1) -> None:
    """Attach every callback to ``app``; ``lm`` is read only, forwards run in background jobs."""
    info = lm.info
    n_layers, n_heads = info.n_layers, info.n_heads

    def job_key(kind: str, *clicks) -> str:
        return f"{kind}-" + "-".join(str(c or 0) for c in clicks)

    def watchdog(kind: str, busy_id: str, error_id: str, click_ids: list[str]) -> None:
        """Report a job that ended without writing its completion mark (cancelled or killed)."""

        @app.callback(
            Output(error_id, "children", allow_duplicate=True),
            Input(busy_id, "data"),
            *[State(c, "n_clicks") for c in click_ids],
            State("session-id", "data"),
            prevent_initial_call=True,
        )
        def check(busy, *args):
            sid = args[-1]
            if busy or store.job_done(sid, job_key(kind, *args[:-1])):
                raise PreventUpdate
            return STOPPED

    # -- prompt runs -----------------------------------------------------------------------
    @app.callback(
        Output("run-meta", "data"),
        Output("prompt-error", "children"),
        Output("continuation", "children"),
        Input("run-forward", "n_clicks"),
        Input("run-generate", "n_clicks"),
        State("prompt", "value"),
        State("chat", "value"),
        State("n-new", "value"),
        State("session-id", "data"),
        State("run-meta", "data"),
        background=True,
        prevent_initial_call=True,
        running=[
            (Output("run-forward", "disabled"), True, False),
            (Output("run-generate", "disabled"), True, False),
            (Output("run-cancel", "disabled"), False, True),
            (Output("run-busy", "data"), True, False),
        ],
        cancel=[Input("run-cancel", "n_clicks")],
        progress=[Output("run-status", "children")],
        interval=500,
    )
    def run_job(set_progress, n_fwd, n_gen, prompt, chat, n_new, sid, previous):
        try:
            jobs.setup_worker(job_threads)
            new_tokens = 0
            if ctx.triggered_id == "run-generate":
                new_tokens = as_int(n_new, "new tokens", 1, MAX_NEW_TOKENS)
            meta = jobs.run_prompt(
                lm,
                store,
                sid,
                prompt,
                chat=bool(chat),
                new_tokens=new_tokens,
                previous_run=(previous or {}).get("run_id"),
                report=set_progress,
            )
            set_progress(
                f"{meta['n_tokens']} tokens · {meta['seconds']:.1f} s"
                + (
                    ""
                    if meta["full_maps"]
                    else " · long prompt: pooled overview, exact rows on demand"
                )
            )
            return meta, "", continuation_view(meta)
        except Exception as exc:
            set_progress("")
            return no_update, message_of(exc, "The run"), no_update
        finally:
            store.mark_done(sid, job_key("run", n_fwd, n_gen))

    watchdog("run", "run-busy", "prompt-error", ["run-forward", "run-generate"])

    # an error about the previous prompt goes away as soon as the prompt is edited
    app.clientside_callback(
        "function(_value) { return ''; }",
        Output("prompt-error", "children", allow_duplicate=True),
        Input("prompt", "value"),
        prevent_initial_call=True,
    )

    # -- head selection --------------------------------------------------------------------
    @app.callback(
        Output("sel-head", "data"),
        Output("explorer-error", "children"),
        Output("tabs", "value"),
        Output("sel-layer-in", "value"),
        Output("sel-head-in", "value"),
        Input("grid-graph", "clickData"),
        Input("score-graph", "clickData"),
        Input("score-table", "active_cell"),
        Input("open-head", "n_clicks"),
        State("sel-layer-in", "value"),
        State("sel-head-in", "value"),
        prevent_initial_call=True,
    )
    def select_head(grid_click, score_click, cell, _n, layer_in, head_in):
        trigger = ctx.triggered_id
        tab = no_update
        try:
            if trigger == "grid-graph":
                point = (grid_click or {}).get("points", [{}])[0]
                if "x" not in point or "y" not in point:
                    raise PreventUpdate
                layer, head = round(point["x"]), round(point["y"])
            elif trigger == "score-graph":
                point = (score_click or {}).get("points", [{}])[0]
                if "x" not in point or "y" not in point:
                    raise PreventUpdate
                layer, head, tab = int(point["x"]), int(point["y"]), "explorer"
            elif trigger == "score-table":
                if not cell or not cell.get("row_id"):
                    raise PreventUpdate
                parsed = workbench.parse_head(str(cell["row_id"]))
                layer, head, tab = parsed.layer, parsed.head, "explorer"
            else:
                layer = as_int(layer_in, "layer")
                head = as_int(head_in, "head")
            lm.head_id(layer, head)
        except WorkbenchError as exc:
            return no_update, str(exc), no_update, no_update, no_update
        return {"layer": layer, "head": head}, "", tab, layer, head

    @app.callback(
        Output("grid-graph", "figure", allow_duplicate=True),
        Output("score-graph", "figure", allow_duplicate=True),
        Input("sel-head", "data"),
        State("run-meta", "data"),
        prevent_initial_call=True,
    )
    def highlight_head(sel, meta):
        shapes = figures.selection_shapes((sel["layer"], sel["head"]))
        grid, score = Patch(), Patch()
        grid["layout"]["shapes"] = shapes
        score["layout"]["shapes"] = shapes
        return (grid if meta else no_update), score

    # -- all-heads grid --------------------------------------------------------------------
    @app.callback(
        Output("grid-graph", "figure"),
        Input("run-meta", "data"),
        Input("contrast", "value"),
        State("sel-head", "data"),
        State("session-id", "data"),
    )
    def render_grid(meta, contrast, sel, sid):
        if not meta:
            return figures.empty_figure("Run a prompt to see every head's attention here.")
        thumbs = store.get(sid, meta["run_id"], "thumbs")
        if thumbs is None:
            return figures.empty_figure("This run's data has expired; run the prompt again.")
        tb = meta["thumb_block"]
        title = f"{meta['n_tokens']} tokens · each tile = one head" + (
            f" · cells pooled over {tb}-token blocks" if tb > 1 else " · one cell per token"
        )
        return figures.thumbnail_grid_figure(
            thumbs.astype(np.float32),
            contrast,
            selected=(sel["layer"], sel["head"]) if sel else None,
            title=title,
        )

    # -- one head --------------------------------------------------------------------------
    @app.callback(
        Output("head-graph", "figure"),
        Output("head-title", "children"),
        Output("window-controls", "style"),
        Output("head-view", "data"),
        Input("sel-head", "data"),
        Input("run-meta", "data"),
        Input("window-meta", "data"),
        Input("contrast", "value"),
        Input("win-reset", "n_clicks"),
        State("sel-query", "data"),
        State("session-id", "data"),
    )
    def render_head(sel, meta, window_meta, contrast, _reset, query, sid):
        hidden = {"display": "none"}
        layer, head = (sel or {}).get("layer", 0), (sel or {}).get("head", 0)
        hid = workbench.head_id(layer, head)
        if not meta:
            return (
                figures.empty_figure(f"Run a prompt to see {hid}'s attention."),
                f"Selected head: {hid}",
                hidden,
                None,
            )
        try:
            run = meta["run_id"]
            tokens = meta["tokens"]
            n = len(tokens)
            sink_all = store.get(sid, run, "sink")
            if sink_all is None:
                raise WorkbenchError("this run's data has expired; run the prompt again")
            sink = sink_all[layer, head].astype(np.float32)
            labels = figures.token_labels(tokens)
            qpos = (query or {}).get("pos") if (query or {}).get("run_id") == run else None
            qpos = n - 1 if qpos is None else qpos
            if meta["full_maps"]:
                maps = store.get(sid, run, f"maps/{layer}")
                if maps is None:
                    raise WorkbenchError("this run's data has expired; run the prompt again")
                positions = np.arange(n)
                fig = figures.head_heatmap_figure(
                    maps[head].astype(np.float32),
                    labels,
                    labels,
                    sink,
                    f"{hid} · {n} tokens",
                    contrast,
                    query_row=qpos,
                    visible=figures.causal_visibility(positions, positions),
                )
                view = {
                    "mode": "full",
                    "run_id": run,
                    "layer": layer,
                    "head": head,
                    "q0": 0,
                    "q1": n,
                }
                return fig, f"Selected head: {hid}", hidden, view
            shown = {"display": "flex"}
            window = store.get(sid, run, "window")
            use_window = (
                ctx.triggered_id != "win-reset"
                and window is not None
                and window_meta
                and window_meta.get("run_id") == run
                and (window["layer"], window["head"]) == (layer, head)
            )
            if use_window:
                a, b = window["start"], window["end"]
                # keys after the last query row are invisible to every row: leave them out
                fig = figures.head_heatmap_figure(
                    window["map"][:, :b].astype(np.float32),
                    labels[:b],
                    figures.token_labels(tokens[a:b], a),
                    sink[:b],
                    f"{hid} · exact attention of query rows {a}–{b - 1} (of {n} tokens)",
                    contrast,
                    query_row=(qpos - a) if a <= qpos < b else None,
                    visible=figures.causal_visibility(np.arange(a, b), np.arange(b)),
                )
                view = {
                    "mode": "window",
                    "run_id": run,
                    "layer": layer,
                    "head": head,
                    "q0": a,
                    "q1": b,
                }
                return fig, f"Selected head: {hid}", shown, view
            mass = store.get(sid, run, "mass")
            block = meta["block"]
            m = mass[layer, head].astype(np.float32)
            nb = m.shape[-1]
            blabels = figures.span_labels(nb, block, n)
            pad = nb * block - n
            sink_blocks = np.pad(sink, (0, pad)).reshape(nb, block).max(-1)
            fig = figures.head_heatmap_figure(
                m,
                blabels,
                blabels,
                sink_blocks,
                f"{hid} · block-pooled overview ({block}-token blocks) · click a row to compute "
                "its exact attention",
                contrast,
                weight_name="mass",
                sink_name="max sink score",
                visible=figures.causal_visibility(
                    np.minimum(np.arange(1, nb + 1) * block, n) - 1, np.arange(nb) * block
                ),
            )
            view = {"mode": "overview", "run_id": run, "layer": layer, "head": head, "block": block}
            return fig, f"Selected head: {hid}", shown, view
        except WorkbenchError as exc:
            return figures.empty_figure(str(exc)), f"Selected head: {hid}", hidden, None
        except Exception as exc:
            return figures.empty_figure(message_of(exc, "Drawing the head")), hid, hidden, None

    @app.callback(
        Output("sel-query", "data"),
        Output("query-in", "value"),
        Output("win-start", "value"),
        Output("win-end", "value"),
        Output("zoom-request", "data"),
        Input("run-meta", "data"),
        Input("head-graph", "clickData"),
        Input({"type": "tok", "index": ALL}, "n_clicks"),
        Input("query-in", "value"),
        Input("window-meta", "data"),
        State("head-view", "data"),
        State("zoom-request", "data"),
        State("sel-query", "data"),
        prevent_initial_call=True,
    )
    def select_query(meta, click, _tok_clicks, query_in, window, view, zoom_req, current):
        if not meta:
            raise PreventUpdate
        n = meta["n_tokens"]
        run = meta["run_id"]
        trigger = ctx.triggered_id
        nothing = (no_update,) * 5
        if trigger == "run-meta":
            start = max(0, n - 64)
            return {"run_id": run, "pos": n - 1}, n - 1, start, n, no_update
        if trigger == "window-meta":
            # new exact rows: keep the query if they include it, else take their last row
            if not window or window.get("run_id") != run:
                raise PreventUpdate
            pos = (current or {}).get("pos")
            if pos is not None and window["start"] <= pos < window["end"]:
                raise PreventUpdate
            pos = window["end"] - 1
            return {"run_id": run, "pos": pos}, pos, no_update, no_update, no_update
        if trigger == "query-in":
            try:
                pos = as_int(query_in, "query position", 0, n - 1)
            except WorkbenchError:
                raise PreventUpdate from None
            return {"run_id": run, "pos": pos}, no_update, no_update, no_update, no_update
        if isinstance(trigger, dict) and trigger.get("type") == "tok":
            if not ctx.triggered or not ctx.triggered[0].get("value"):
                raise PreventUpdate
            pos = int(trigger["index"])
            return {"run_id": run, "pos": pos}, pos, no_update, no_update, no_update
        if trigger == "head-graph" and click:
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
            if pos is None:
                return nothing
            return {"run_id": run, "pos": pos}, pos, no_update, no_update, no_update
        return nothing

    @app.callback(
        Output("head-graph", "figure", allow_duplicate=True),
        Input("sel-query", "data"),
        Input("head-view", "data"),
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
        patch["layout"]["shapes"] = figures.query_row_shapes(row if inside else None)
        return patch

    @app.callback(
        Output("token-view", "children"),
        Output("tokens-title", "children"),
        Output("token-legend", "children"),
        Input("sel-query", "data"),
        Input("head-view", "data"),
        Input("contrast", "value"),
        State("run-meta", "data"),
        State("session-id", "data"),
    )
    def render_tokens(query, view, contrast, meta, sid):
        if not meta or not view:
            return (
                html.Span("Run a prompt to see its tokens.", className="muted"),
                "Token view",
                None,
            )
        run = meta["run_id"]
        tokens = meta["tokens"]
        n = len(tokens)
        pos = (query or {}).get("pos") if (query or {}).get("run_id") == run else None
        pos = n - 1 if pos is None else pos
        hid = workbench.head_id(view["layer"], view["head"])
        qtok = figures.token_text(tokens[pos])
        title = f"Token view: what {hid} attends to from query {pos} {qtok}"
        row = None
        if view["mode"] == "full":
            maps = store.get(sid, run, f"maps/{view['layer']}")
            if maps is not None:
                row = maps[view["head"], pos].astype(np.float32)
        elif view["mode"] == "window" and view["q0"] <= pos < view["q1"]:
            window = store.get(sid, run, "window")
            if window is not None:
                row = window["map"][pos - view["q0"]].astype(np.float32)
        if row is None:
            hint = (
                "Long prompt: compute exact rows (above) that include the query to see its "
                "token view, or pick a query inside the computed rows."
            )
            return html.Span(hint, className="muted"), title, None
        sink_all = store.get(sid, run, "sink")
        sink = sink_all[view["layer"], view["head"]] if sink_all is not None else np.zeros(n)
        lo = max(0, pos - TOKEN_VIEW_MAX)
        hi = min(n, pos + 200)
        spans: list = []
        if lo > 0:
            spans.append(html.Span(f"… {lo} earlier tokens not shown … ", className="muted"))
        for i in range(lo, hi):
            text = tokens[i].replace("\n", "⏎\n")
            is_sink = float(sink[i]) > (figures.FIRST_SINK if i == 0 else figures.HIDDEN_SINK)
            classes = ["tok"]
            style: dict[str, str] = {}
            if i <= pos:
                w = float(row[i])
                style = {
                    "backgroundColor": figures.attention_color(w, contrast),
                    "color": figures.text_color_on(w, contrast),
                }
                tip = f"{i} {figures.token_text(tokens[i])}: {w:.3f}"
            else:
                classes.append("future")
                tip = f"{i} {figures.token_text(tokens[i])}: after the query (not visible to it)"
            if i == pos:
                classes.append("query")
            if is_sink:
                classes.append("sink")
            spans.append(
                html.Span(
                    text,
                    id={"type": "tok", "index": i},
                    n_clicks=0,
                    className=" ".join(classes),
                    style=style,
                    title=tip,
                )
            )
        return spans, title, legend_bar(contrast)

    @app.callback(
        Output("window-meta", "data"),
        Output("explorer-error", "children", allow_duplicate=True),
        Input("win-show", "n_clicks"),
        Input("zoom-request", "data"),
        State("win-start", "value"),
        State("win-end", "value"),
        State("sel-head", "data"),
        State("run-meta", "data"),
        State("session-id", "data"),
        background=True,
        prevent_initial_call=True,
        running=[
            (Output("win-show", "disabled"), True, False),
            (Output("win-cancel", "disabled"), False, True),
            (Output("zoom-busy", "data"), True, False),
        ],
        cancel=[Input("win-cancel", "n_clicks")],
        progress=[Output("win-status", "children")],
        interval=500,
    )
    def zoom_job(set_progress, n_show, n_req, start, end, sel, meta, sid):
        try:
            jobs.setup_worker(job_threads)
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
            out = jobs.zoom_rows(lm, store, sid, meta, sel["layer"], sel["head"], a, b)
            set_progress("")
            return out, ""
        except Exception as exc:
            set_progress("")
            return no_update, message_of(exc, "Computing the rows")
        finally:
            store.mark_done(sid, job_key("zoom", n_show, n_req))

    # -- head atlas ------------------------------------------------------------------------
    summaries = dict(_analyzer_list())

    @app.callback(Output("an-summary", "children"), Input("an-name", "value"))
    def analyzer_summary(name):
        return f"{name}: {summaries.get(name, '')}" if name else ""

    @app.callback(
        Output("atlas-results", "data"),
        Output("an-error", "children"),
        Input("an-run", "n_clicks"),
        State("an-name", "value"),
        State("an-nprompts", "value"),
        State("an-causal", "value"),
        State("an-topk", "value"),
        State("an-params", "value"),
        State("atlas-results", "data"),
        State("session-id", "data"),
        background=True,
        prevent_initial_call=True,
        running=[
            (Output("an-run", "disabled"), True, False),
            (Output("an-cancel", "disabled"), False, True),
            (Output("an-progress", "style"), {"visibility": "visible"}, {"visibility": "hidden"}),
            (Output("an-busy", "data"), True, False),
        ],
        cancel=[Input("an-cancel", "n_clicks")],
        progress=[
            Output("an-progress", "value"),
            Output("an-progress", "max"),
            Output("an-status", "children"),
        ],
        interval=500,
    )
    def analyzer_job(set_progress, n, name, n_prompts, causal, top_k, params_text, results, sid):
        try:
            jobs.setup_worker(job_threads)
            if not name:
                raise WorkbenchError("pick an analyzer")
            params: dict[str, Any] = {}
            if params_text and params_text.strip():
                try:
                    params = json.loads(params_text)
                except json.JSONDecodeError as exc:
                    raise WorkbenchError(
                        f'more parameters must be JSON, e.g. {{"prompt_tokens": 32}} ({exc.msg})'
                    ) from None
                if not isinstance(params, dict):
                    raise WorkbenchError('more parameters must be a JSON object, e.g. {"draws": 2}')
            params = {
                "n_prompts": as_int(n_prompts, "prompts", 1),
                "causal": bool(causal),
                "top_k": as_int(top_k, "top-k", 1),
                **params,
            }
            set_progress(("0", "1", f"Starting {name}…"))

            def report(desc: str, i: int, total: int) -> None:
                text = f"{desc or name}: {i}/{total}"
                if i >= total and params.get("causal") and desc == name:
                    text += " · causal check (ablating top-k and random-k heads)…"
                set_progress((str(i), str(max(total, 1)), text))

            result = jobs.run_analyzer(lm, name, params, report)
            set_progress(
                (
                    "1",
                    "1",
                    f"{name}: {len(result['records'])} heads scored in {result['seconds']:.1f} s",
                )
            )
            return {**(results or {}), name: result}, ""
        except Exception as exc:
            set_progress(("0", "1", ""))
            return no_update, f"The {name} job failed: {message_of(exc, f'The {name} job')}"
        finally:
            store.mark_done(sid, job_key("an", n))

    watchdog("an", "an-busy", "an-error", ["an-run"])

    @app.callback(
        Output("score-graph", "figure", allow_duplicate=True),
        Output("score-table", "data"),
        Output("score-table", "columns"),
        Output("causal-graph", "figure"),
        Output("causal-info", "children"),
        Output("an-attrs", "children"),
        Output("iv-from", "options"),
        Input("atlas-results", "data"),
        Input("an-name", "value"),
        prevent_initial_call="initial_duplicate",
    )
    def render_atlas(results, name):
        results = results or {}
        options = [{"label": k, "value": k} for k in sorted(results)]
        result = results.get(name)
        patch = Patch()
        if not result:
            patch["data"][0]["z"] = [[None] * n_layers for _ in range(n_heads)]
            patch["layout"]["title"]["text"] = (
                f"Head scores: {name} not run yet in this session" if name else "Head scores"
            )
            empty = figures.empty_figure("Run the analyzer to see its causal check.", height=330)
            return patch, [], [], empty, None, None, options
        df = pd.DataFrame(result["records"])
        vals = figures.score_grid_values(df, n_layers, n_heads)
        patch["data"][0]["z"] = vals["z"]
        patch["data"][0]["zmin"] = vals["zmin"]
        patch["data"][0]["zmax"] = vals["zmax"]
        patch["data"][0]["colorscale"] = get_colorscale(vals["colorscale"])
        patch["data"][0]["colorbar"]["title"]["text"] = f"{name}<br>score"
        patch["layout"]["title"]["text"] = f"{name}: score per head (click a head to open it)"
        columns = []
        for col in result["columns"]:
            spec: dict[str, Any] = {"id": col, "name": col}
            if col in df and pd.api.types.is_float_dtype(df[col]):
                spec.update(type="numeric", format=Format(precision=4, scheme=Scheme.fixed))
            elif col in df and pd.api.types.is_bool_dtype(df[col]):
                spec["presentation"] = "input"
            columns.append(spec)
        data = df.to_dict("records")
        for row in data:
            for key, value in row.items():
                if isinstance(value, bool | np.bool_):
                    row[key] = "yes" if value else "no"
        causal = (result.get("attrs") or {}).get("causal")
        if causal:
            cfig = figures.causal_figure(causal)
            k = causal.get("k")
            base = causal.get("base") or 0.0
            d_top = (causal.get("top_k") or 0.0) - base
            d_rand = (causal.get("random_k_mean") or 0.0) - base
            info_children = [
                html.Div(f"Metric: {causal.get('metric')}"),
                html.Div(
                    f"Change with top-{k} ablated: {d_top:+.4g}; with random-{k}: {d_rand:+.4g}"
                ),
                html.Div(f"Top heads: {', '.join(causal.get('top_heads', []))}"),
                html.Div(
                    "Random heads: "
                    + "; ".join(", ".join(s) for s in causal.get("random_heads", []))
                ),
            ]
        else:
            cfig = figures.empty_figure(
                "No causal check in this result (tick 'causal check' and run again).", height=330
            )
            info_children = None
        return patch, data, columns, cfig, info_children, attrs_view(result), options

    # -- interventions ---------------------------------------------------------------------
    @app.callback(
        Output("iv-heads-info", "children"),
        Output("iv-heads-info", "className"),
        Input("iv-heads", "value"),
        Input("iv-mode", "value"),
    )
    def heads_info(text, mode):
        if mode == "focus":
            return "Focus directions act on the heads stored in the file.", "help"
        if not text or not text.strip():
            return (
                "Pick heads: type ids, add the selected head, or take an analyzer's top-k.",
                "help",
            )
        try:
            heads = jobs.parse_head_list(lm, text)
        except WorkbenchError as exc:
            return str(exc), "help error-text"
        shown = jobs.format_heads(heads[:12]) + (" …" if len(heads) > 12 else "")
        return f"{len(heads)} head{'s' if len(heads) != 1 else ''}: {shown}", "help"

    @app.callback(
        Output("iv-heads", "value"),
        Output("iv-error", "children", allow_duplicate=True),
        Input("iv-add-sel", "n_clicks"),
        Input("iv-topk", "n_clicks"),
        State("sel-head", "data"),
        State("iv-heads", "value"),
        State("iv-from", "value"),
        State("iv-k", "value"),
        State("atlas-results", "data"),
        prevent_initial_call=True,
    )
    def pick_heads(_add, _top, sel, text, source, k, results):
        try:
            if ctx.triggered_id == "iv-add-sel":
                hid = workbench.head_id(sel["layer"], sel["head"])
                current = [p for p in re.split(r"[,\s;]+", text or "") if p]
                if hid.lower() not in (c.lower() for c in current):
                    current.append(hid)
                return ", ".join(current), ""
            if not source or source not in (results or {}):
                raise WorkbenchError(
                    "no analyzer result to take heads from: run one in the Head atlas first, "
                    "then pick it here"
                )
            k = as_int(k, "k", 1, n_layers * n_heads)
            heads = jobs.top_heads_from_records(results[source]["records"], k)
            return jobs.format_heads(heads), ""
        except WorkbenchError as exc:
            return no_update, str(exc)

    @app.callback(
        Output("iv-opt-mean", "style"),
        Output("iv-opt-pasta", "style"),
        Output("iv-opt-act", "style"),
        Output("iv-opt-focus", "style"),
        Output("iv-heads", "disabled"),
        Input("iv-mode", "value"),
    )
    def mode_options(mode):
        def show(m):
            return {"display": "flex"} if mode == m else {"display": "none"}

        return show("mean"), show("pasta"), show("act"), show("focus"), mode == "focus"

    app.clientside_callback(
        """
        function(n) {
            const nu = window.dash_clientside.no_update;
            if (!n) { return [nu, nu]; }
            const el = document.getElementById('prompt');
            if (!el) { return [nu, nu]; }
            const text = el.value.substring(el.selectionStart, el.selectionEnd);
            if (!text) {
                return [nu, 'select text in the prompt box first, then press the button'];
            }
            return [text, nu];
        }
        """,
        Output("iv-emph", "value"),
        Output("iv-emph", "placeholder"),
        Input("iv-use-sel", "n_clicks"),
        prevent_initial_call=True,
    )

    @app.callback(
        Output("iv-result", "data"),
        Output("iv-error", "children"),
        Input("iv-run", "n_clicks"),
        State("prompt", "value"),
        State("chat", "value"),
        State("iv-heads", "value"),
        State("iv-mode", "value"),
        State("iv-ref", "value"),
        State("iv-emph", "value"),
        State("iv-alpha", "value"),
        State("iv-beta", "value"),
        State("iv-focus-path", "value"),
        State("iv-scale", "value"),
        State("iv-targets", "value"),
        State("iv-n", "value"),
        State("session-id", "data"),
        background=True,
        prevent_initial_call=True,
        running=[
            (Output("iv-run", "disabled"), True, False),
            (Output("iv-cancel", "disabled"), False, True),
            (Output("iv-busy", "data"), True, False),
        ],
        cancel=[Input("iv-cancel", "n_clicks")],
        progress=[Output("iv-status", "children")],
        interval=500,
    )
    def intervene_job(
        set_progress, n, prompt, chat, heads, mode, ref, emph, alpha, beta, focus, scale,
        targets, n_new, sid,
    ):  # fmt: skip
        try:
            jobs.setup_worker(job_threads)
            new_tokens = as_int(n_new, "new tokens", 1, MAX_NEW_TOKENS)
            target_list = [t for t in (targets or "").split(",") if t.strip()]
            result = jobs.run_intervention(
                lm,
                prompt,
                chat=bool(chat),
                heads_text=heads,
                mode=mode,
                opts={
                    "reference": ref,
                    "emphasize": emph,
                    "alpha": alpha,
                    "beta": 0.4 if beta is None else beta,
                    "focus_path": focus,
                    "scale": scale,
                },
                targets=target_list,
                new_tokens=new_tokens,
                report=set_progress,
            )
            set_progress(f"done in {result['seconds']:.1f} s")
            return result, ""
        except Exception as exc:
            set_progress("")
            return no_update, message_of(exc, "The intervention")
        finally:
            store.mark_done(sid, job_key("iv", n))

    watchdog("iv", "iv-busy", "iv-error", ["iv-run"])

    @app.callback(
        Output("iv-compare", "children"),
        Output("kl-graph", "figure"),
        Input("iv-result", "data"),
        prevent_initial_call=True,
    )
    def render_intervention(result):
        if not result:
            raise PreventUpdate
        base, new = result["base_text"], result["intervened_text"]
        a, b = word_diff(base, new)
        same = base == new
        note = (
            html.Div("The intervened continuation is identical to the base one.", className="note")
            if same
            else None
        )
        compare = html.Div(
            children=[
                html.Div(
                    className="compare",
                    children=[
                        html.Div(
                            className="compare-card",
                            children=[
                                html.Div("Base model", className="compare-title"),
                                html.Pre(a or "(empty)", id="iv-base-text", className="gen-text"),
                            ],
                        ),
                        html.Div(
                            className="compare-card intervened",
                            children=[
                                html.Div(result["intervention"], className="compare-title"),
                                html.Pre(b or "(empty)", id="iv-new-text", className="gen-text"),
                            ],
                        ),
                    ],
                ),
                note,
            ]
        )
        positions = pd.DataFrame(result["positions"])
        return compare, figures.effects_figure(positions, result.get("targets") or [])

    # -- export ----------------------------------------------------------------------------
    app.clientside_callback(
        """
        function(n, fmt, which, f1, f2, f3, f4, f5) {
            const nu = window.dash_clientside.no_update;
            if (!n || fmt === 'html') { return nu; }
            const figs = {'head-graph': f1, 'grid-graph': f2, 'score-graph': f3,
                          'causal-graph': f4, 'kl-graph': f5};
            const fig = figs[which];
            if (!fig || !fig.data || fig.data.length === 0) {
                return 'Nothing to export yet: that figure is empty.';
            }
            if (!window.Plotly) {
                return 'The plotting library is not loaded yet; open a view with a figure first.';
            }
            const layout = Object.assign({}, fig.layout);
            const width = 1400;
            const height = layout.height || 600;
            window.Plotly.downloadImage({data: fig.data, layout: layout},
                {format: fmt, filename: which, width: width, height: height});
            return '';
        }
        """,
        Output("ex-error", "children", allow_duplicate=True),
        Input("ex-fig-btn", "n_clicks"),
        State("ex-fig-format", "value"),
        State("ex-fig", "value"),
        State("head-graph", "figure"),
        State("grid-graph", "figure"),
        State("score-graph", "figure"),
        State("causal-graph", "figure"),
        State("kl-graph", "figure"),
        prevent_initial_call=True,
    )

    @app.callback(
        Output("download", "data", allow_duplicate=True),
        Output("ex-error", "children"),
        Input("ex-fig-btn", "n_clicks"),
        State("ex-fig-format", "value"),
        State("ex-fig", "value"),
        State("head-graph", "figure"),
        State("grid-graph", "figure"),
        State("score-graph", "figure"),
        State("causal-graph", "figure"),
        State("kl-graph", "figure"),
        prevent_initial_call=True,
    )
    def export_html(_n, fmt, which, *figs):
        if fmt != "html":
            raise PreventUpdate
        names = ["head-graph", "grid-graph", "score-graph", "causal-graph", "kl-graph"]
        fig = dict(zip(names, figs, strict=True)).get(which)
        if not fig or not fig.get("data"):
            return no_update, "Nothing to export yet: that figure is empty."
        try:
            text = pio.to_html(fig, include_plotlyjs=True, full_html=True, validate=False)
        except Exception as exc:
            return no_update, message_of(exc, "The HTML export")
        return dcc.send_string(text, f"{which}.html"), ""

    @app.callback(
        Output("download", "data"),
        Output("ex-error", "children", allow_duplicate=True),
        Input("ex-table-btn", "n_clicks"),
        State("ex-table", "value"),
        State("ex-table-format", "value"),
        State("atlas-results", "data"),
        State("an-name", "value"),
        State("iv-result", "data"),
        State("head-view", "data"),
        State("run-meta", "data"),
        State("session-id", "data"),
        prevent_initial_call=True,
    )
    def export_table(_n, which, fmt, results, name, iv_result, view, meta, sid):
        try:
            df, stem = table_frame(which, results, name, iv_result, view, meta, sid)
        except WorkbenchError as exc:
            return no_update, str(exc)
        except Exception as exc:
            return no_update, message_of(exc, "The table export")
        if fmt == "parquet":
            return dcc.send_bytes(
                lambda buf: df.to_parquet(buf, index=False), f"{stem}.parquet"
            ), ""
        return dcc.send_data_frame(df.to_csv, f"{stem}.csv", index=False), ""

    def table_frame(which, results, name, iv_result, view, meta, sid) -> tuple[pd.DataFrame, str]:
        if which == "scores":
            result = (results or {}).get(name)
            if not result:
                raise WorkbenchError(f"no {name} result yet: run it in the Head atlas first")
            df = pd.DataFrame(result["records"]).drop(columns=["id"], errors="ignore")
            return df, f"{name}_scores"
        if which in ("effects", "continuations"):
            if not iv_result:
                raise WorkbenchError("no intervention result yet: apply one in Intervene first")
            if which == "effects":
                return pd.DataFrame(iv_result["positions"]), "intervention_effects"
            row = {
                k: iv_result[k] for k in ("intervention", "prompt", "base_text", "intervened_text")
            }
            return pd.DataFrame([row]), "continuations"
        if which == "attention":
            if not meta or not view or view.get("mode") == "overview":
                raise WorkbenchError(
                    "no exact attention map shown: run a prompt and open a head (for a long "
                    "prompt, compute its rows first)"
                )
            tokens = meta["tokens"]
            if view["mode"] == "full":
                maps = store.get(sid, meta["run_id"], f"maps/{view['layer']}")
                if maps is None:
                    raise WorkbenchError("this run's data has expired; run the prompt again")
                w = maps[view["head"]].astype(np.float32)
            else:
                window = store.get(sid, meta["run_id"], "window")
                if window is None:
                    raise WorkbenchError("this run's data has expired; run the prompt again")
                w = window["map"].astype(np.float32)
            q0 = view["q0"]
            df = pd.DataFrame(w, columns=figures.token_labels(tokens))
            df.insert(0, "query", figures.token_labels(tokens[q0 : q0 + len(w)], q0))
            return df, f"attention_{workbench.head_id(view['layer'], view['head'])}"
        raise WorkbenchError(f"unknown table {which!r}")


def _analyzer_list() -> list[tuple[str, str]]:
    from workbench import analyzers

    return analyzers.list_analyzers()


def attrs_view(result: dict[str, Any]) -> Any:
    """A compact summary of an analyzer's ``df.attrs`` (counts, rates, parameters)."""
    attrs = dict(result.get("attrs") or {})
    items: list = []
    used, total = attrs.get("prompts_used"), attrs.get("prompts_total")
    if used is not None:
        items.append(f"prompts used {used}/{total}")
    if attrs.get("interrupted"):
        items.append("interrupted")
    for key, value in attrs.items():
        if key in (
            "causal",
            "model",
            "analyzer",
            "params",
            "prompts_used",
            "prompts_total",
            "interrupted",
        ):
            continue
        if isinstance(value, bool | int | float | str) and value is not None:
            text = f"{value:.4g}" if isinstance(value, float) else str(value)
            if len(text) <= 80:
                items.append(f"{key} {text}")
        elif (
            isinstance(value, list) and value and isinstance(value[0], dict) and "token" in value[0]
        ):
            top = ", ".join(
                f"{figures.token_text(v['token'])} ({v.get('count', '')})" for v in value[:8]
            )
            items.append(f"{key}: {top}")
    params = attrs.get("params") or result.get("params")
    if params:
        items.append("parameters " + ", ".join(f"{k}={v}" for k, v in params.items()))
    return [html.Span(t, className="chip") for t in items]
