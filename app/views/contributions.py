"""The Contributions view: what every head writes towards one output token of the prompt.

Direct logit attribution per head and per source position
(:func:`workbench.head_contributions.head_contributions`, the attribution analyzer's DLA split by
the position each head reads from) for the prompt's next token or a token the user types. A
layer x head grid, the top heads (each opens its attention map in the explorer) and the top
heads' contributions by source token. Also home of the one "open this head in the explorer"
callback of the one-prompt views (this grid, the top-head links, the patching grid).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
import plotly.graph_objects as go
from dash import ALL, Input, Output, State, ctx, dcc, html, no_update
from dash.exceptions import PreventUpdate

import workbench
from app import figures, ids, jobs
from app.components import (
    GRAPH_CONFIG,
    QUIET_GRAPH_CONFIG,
    alert,
    button,
    cancel_button,
    controls,
    help_text,
    label,
    muted,
    tab,
    text_input,
)
from app.context import AppContext, JobControls, message_of, watchdog
from workbench.head_contributions import head_contributions
from workbench.logit_lens import token_text

if TYPE_CHECKING:
    import dash

NAME = "contributions"
CONTRIB_JOB = JobControls(
    "contrib",
    (ids.CONTRIB_RUN,),
    ids.CONTRIB_CANCEL,
    ids.CONTRIB_BUSY,
    ids.CONTRIB_ERROR,
    status=ids.CONTRIB_STATUS,
)
#: Heads listed (and drawn by source position), by |DLA|.
TOP_HEADS = 12
#: Source positions drawn at most (a long prompt: those the top heads write most from).
MAX_COLUMNS = 96
EMPTY = "Press Compute to see each head's direct contribution to the output token."


# -- shared by the one-prompt views -----------------------------------------------------------
def head_grid(
    values: np.ndarray, title: str, colorbar: str, hover: str, bound: float | None = None
) -> go.Figure:
    """A (layers x heads) grid of signed per-head values (``values`` is (n_layers, n_heads);
    NaN cells stay empty) on the diverging scale centred at 0, H0 on top; click opens a head."""
    n_layers, n_heads = values.shape
    fig = figures.score_grid_figure(n_layers, n_heads, title)
    finite = values[np.isfinite(values)]
    if bound is None:
        bound = float(np.abs(finite).max()) if finite.size else 1.0
    z = [[None if not np.isfinite(v) else round(float(v), 5) for v in row] for row in values.T]
    fig.update_traces(
        z=z,
        colorscale=figures.DIVERGING_SCALE,
        zmin=-(bound or 1.0),
        zmax=bound or 1.0,
        colorbar={"title": {"text": colorbar, "side": "right"}, "thickness": 12},
        hovertemplate=hover + "<extra>click: attention map</extra>",
    )
    return fig


def is_stale(result: dict[str, Any] | None, prompt: str | None, chat: Any) -> bool:
    """True when ``result`` was computed for another prompt (or chat setting) than the box's."""
    return bool(result) and (result["prompt"] != prompt or result["chat"] != bool(chat))


STALE_NOTE = " · stale: the prompt changed since this was computed (compute again to update)"


# -- the job --------------------------------------------------------------------------------
def compute(lm, prompt: str, chat: bool, target: str, foil: str) -> dict[str, Any]:
    """The view's result, JSON-able: per-head DLA, attribution patching, top heads by
    source position."""
    start = time.perf_counter()
    res = head_contributions(lm, prompt, chat=chat, target=target or None, foil=foil or None)
    dla = res.dla.numpy()
    order = np.argsort(-np.abs(dla).reshape(-1))[:TOP_HEADS]
    n_heads = dla.shape[1]
    top = [(int(i) // n_heads, int(i) % n_heads) for i in order]
    return {
        "prompt": prompt,
        "chat": chat,
        "tokens": res.tokens,
        "target": token_text(lm, res.target_id),
        "foil": None if res.foil_id is None else token_text(lm, res.foil_id),
        "metric": res.metric,
        "dla": dla.tolist(),
        "ap": res.attribution_patching.numpy().tolist(),
        "top": [workbench.head_id(a, b) for a, b in top],
        "by_position": [res.by_position[a, b].tolist() for a, b in top],
        "closure": res.closure,
        "seconds": round(time.perf_counter() - start, 2),
    }


# -- layout and figures ---------------------------------------------------------------------
def layout(wb: AppContext) -> dcc.Tab:
    return tab(
        "Contributions",
        NAME,
        ids.tab(NAME),
        help_text(
            "Direct logit attribution (Elhage et al. 2021): what each head writes into the "
            "residual stream at the last position, through the final norm (its scale frozen), "
            "along the output token's unembedding (minus the foil's, if given), split by the "
            "source token the head reads. Heads' direct effects only: what later layers do "
            "with a head's output is not counted (use Patching for total effects)."
        ),
        controls(
            label("output token"),
            text_input(
                ids.CONTRIB_TARGET,
                "blank = the model's next token; or e.g. ' Mary' (leading space counts)",
            ),
            muted("minus"),
            text_input(ids.CONTRIB_FOIL, "optional foil token, e.g. ' John'"),
            button("Compute", ids.CONTRIB_RUN, "primary"),
            cancel_button(ids.CONTRIB_CANCEL),
            html.Span(id=ids.CONTRIB_STATUS, className="status"),
        ),
        alert(ids.CONTRIB_ERROR),
        html.Div(id=ids.CONTRIB_SUMMARY, className="help"),
        html.Div(
            className="two-col",
            children=[
                html.Div(
                    className="col-main",
                    children=dcc.Graph(
                        id=ids.CONTRIB_GRAPH,
                        figure=figures.empty_figure(EMPTY),
                        config=QUIET_GRAPH_CONFIG,
                    ),
                ),
                html.Div(className="col-side", children=html.Div(id=ids.CONTRIB_TOP)),
            ],
        ),
        dcc.Graph(
            id=ids.CONTRIB_POS_GRAPH, figure=figures.empty_figure(EMPTY), config=GRAPH_CONFIG
        ),
    )


def summary(result: dict[str, Any], stale: bool) -> str:
    what = f"logit[{result['target']!r}]" + (
        f" − logit[{result['foil']!r}]" if result["foil"] is not None else ""
    )
    return (
        f"{what} = {result['metric']:.3f} at the last position · {len(result['tokens'])} tokens · "
        f"{result['seconds']:.1f} s" + (STALE_NOTE if stale else "")
    )


def top_list(result: dict[str, Any]) -> html.Div:
    """The top heads by |DLA|, each a link to its attention map."""
    dla = np.asarray(result["dla"])
    items = []
    for hid, row in zip(result["top"], result["by_position"], strict=True):
        head = workbench.parse_head(hid)
        j = int(np.argmax(np.abs(row)))
        items.append(
            html.Li(
                [
                    html.Button(hid, id=ids.open_head(hid), n_clicks=0, className="btn ghost"),
                    f" {dla[head.layer, head.head]:+.3f}",
                    muted(f"  mostly from {figures.token_text(result['tokens'][j])!s} @{j}"),
                ]
            )
        )
    return html.Div(
        [
            html.H4("Top heads by |DLA|"),
            muted("click a head to open its attention map in the explorer"),
            html.Ol(items, style={"paddingLeft": "22px", "lineHeight": "2"}),
        ]
    )


def position_figure(result: dict[str, Any]) -> go.Figure:
    """The top heads' contributions by source position (rows: heads, columns: tokens; past
    :data:`MAX_COLUMNS` tokens only the positions with the largest contributions, in order)."""
    rows = np.asarray(result["by_position"])
    bound = float(np.abs(rows).max()) or 1.0
    labels = figures.token_labels(result["tokens"])
    title = "Top heads by source position"
    if rows.shape[1] > MAX_COLUMNS:
        keep = np.sort(np.argsort(-np.abs(rows).max(0))[:MAX_COLUMNS])
        rows, labels = rows[:, keep], [labels[i] for i in keep]
        title += f" (the {MAX_COLUMNS} positions they write most from)"
    fig = go.Figure(
        go.Heatmap(
            z=rows.round(5).tolist(),
            x=labels,
            y=result["top"],
            colorscale=figures.DIVERGING_SCALE,
            zmin=-bound,
            zmax=bound,
            xgap=1,
            ygap=1,
            colorbar={"title": {"text": "logit", "side": "right"}, "thickness": 12},
            hovertemplate="%{y} reads %{x}<br>contribution %{z:+.4f}<extra></extra>",
        )
    )
    fig.update_yaxes(autorange="reversed", fixedrange=True)
    fig.update_xaxes(tickangle=-45, type="category")
    return figures.base_layout(
        fig,
        height=28 * len(result["top"]) + 190,
        title={"text": title, "font": {"size": 14}, "x": 0.01},
        margin={"l": 70, "r": 20, "t": 40, "b": 110},
    )


# -- callbacks --------------------------------------------------------------------------------
def register(app: dash.Dash, wb: AppContext) -> None:
    lm = wb.lm

    @app.callback(
        Output(ids.CONTRIB_RESULT, "data"),
        Output(ids.CONTRIB_ERROR, "children"),
        Input(ids.CONTRIB_RUN, "n_clicks"),
        State(ids.PROMPT, "value"),
        State(ids.CHAT, "value"),
        State(ids.CONTRIB_TARGET, "value"),
        State(ids.CONTRIB_FOIL, "value"),
        State(ids.SESSION, "data"),
        **CONTRIB_JOB.background([Output(ids.CONTRIB_STATUS, "children")]),
    )
    def contrib_job(set_progress, n, prompt, chat, target, foil, sid):
        try:
            jobs.setup_worker(wb.job_threads)
            set_progress("Running the model (forward, backward, last-row capture)…")
            result = compute(lm, prompt, bool(chat), target or "", foil or "")
            set_progress(f"done in {result['seconds']:.1f} s")
            return result, ""
        except Exception as exc:
            set_progress("")
            return no_update, message_of(exc, "Head contributions")
        finally:
            wb.mark_done(sid, CONTRIB_JOB.kind, n)

    watchdog(app, wb, CONTRIB_JOB)

    @app.callback(
        Output(ids.CONTRIB_GRAPH, "figure"),
        Output(ids.CONTRIB_POS_GRAPH, "figure"),
        Output(ids.CONTRIB_TOP, "children"),
        Input(ids.CONTRIB_RESULT, "data"),
        prevent_initial_call=True,
    )
    def draw(result):
        if not result:
            raise PreventUpdate
        title = f"Direct logit attribution to {result['target']!r}" + (
            f" − {result['foil']!r}" if result["foil"] is not None else ""
        )
        grid = head_grid(np.asarray(result["dla"]), title, "logit", "L%{x}H%{y}<br>DLA %{z:+.4f}")
        return grid, position_figure(result), top_list(result)

    @app.callback(
        Output(ids.CONTRIB_SUMMARY, "children"),
        Input(ids.CONTRIB_RESULT, "data"),
        Input(ids.PROMPT, "value"),
        Input(ids.CHAT, "value"),
        prevent_initial_call=True,
    )
    def show_summary(result, prompt, chat):
        return summary(result, is_stale(result, prompt, chat)) if result else ""

    register_opener(app, wb)


def _clicked_head(click: dict[str, Any] | None) -> tuple[int, int]:
    point = (click or {}).get("points", [{}])[0]
    if "x" not in point or "y" not in point:
        raise PreventUpdate
    return int(point["x"]), int(point["y"])


def register_opener(app: dash.Dash, wb: AppContext) -> None:
    """A head clicked in the contributions or patching grid, or a top-head link, opens in the
    explorer; the prompt is run first when the explorer holds no run of it."""

    @app.callback(
        Output(ids.SEL_HEAD, "data", allow_duplicate=True),
        Output(ids.TABS, "value", allow_duplicate=True),
        Output(ids.SEL_LAYER_IN, "value", allow_duplicate=True),
        Output(ids.SEL_HEAD_IN, "value", allow_duplicate=True),
        Output(ids.RUN_FORWARD, "n_clicks", allow_duplicate=True),
        Input(ids.CONTRIB_GRAPH, "clickData"),
        Input(ids.PATCH_GRAPH, "clickData"),
        Input({"type": ids.CONTRIB_OPEN, "index": ALL}, "n_clicks"),
        State(ids.RUN_META, "data"),
        State(ids.PROMPT, "value"),
        State(ids.CHAT, "value"),
        State(ids.RUN_FORWARD, "n_clicks"),
        State(ids.RUN_BUSY, "data"),
        prevent_initial_call=True,
    )
    def open_in_explorer(contrib_click, patch_click, links, meta, prompt, chat, runs, busy):
        trigger = ctx.triggered_id
        if trigger == ids.CONTRIB_GRAPH:
            layer, head = _clicked_head(contrib_click)
        elif trigger == ids.PATCH_GRAPH:
            layer, head = _clicked_head(patch_click)
        elif isinstance(trigger, dict) and any(links):
            parsed = workbench.parse_head(trigger["index"])
            layer, head = parsed.layer, parsed.head
        else:
            raise PreventUpdate
        wb.lm.head_id(layer, head)
        run = no_update
        if not busy and (not meta or is_stale(meta, prompt, chat)):
            run = (runs or 0) + 1  # the explorer shows the last run: run this prompt
        return {"layer": layer, "head": head}, "explorer", layer, head, run
