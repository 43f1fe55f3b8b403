"""The Logit lens view: every layer's residual stream read through the final norm and the
unembedding (:func:`workbench.logit_lens.logit_lens`; nostalgebraist 2020), as a layers x
positions heatmap of the followed token's probability or rank, or of the lens' top-1
probability, each cell labelled with the lens' top token."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
import plotly.graph_objects as go
from dash import Input, Output, State, dcc, html, no_update
from dash.exceptions import PreventUpdate

from app import figures, ids, jobs
from app.components import (
    GRAPH_CONFIG,
    alert,
    button,
    cancel_button,
    controls,
    help_text,
    label,
    muted,
    number,
    tab,
    text_input,
)
from app.context import AppContext, JobControls, as_int, message_of, watchdog
from app.views.contributions import STALE_NOTE, is_stale
from workbench.logit_lens import logit_lens, token_text

if TYPE_CHECKING:
    import dash

NAME = "lens"
LENS_JOB = JobControls(
    "lens", (ids.LENS_RUN,), ids.LENS_CANCEL, ids.LENS_BUSY, ids.LENS_ERROR, status=ids.LENS_STATUS
)
#: Positions read by default (the last ones) and at most.
DEFAULT_POSITIONS, MAX_POSITIONS = 16, 256
#: Cells carry their top token as text up to this many positions (beyond, hover only).
TEXT_POSITIONS = 40
TOP_K = 5
#: What the heatmap shows: value -> (radio label, colour-bar title).
SHOWS = {
    "prob": ("probability of the followed token", "probability"),
    "rank": ("rank of the followed token (log scale)", "log10 rank"),
    "top": ("top-1 probability", "probability"),
}
EMPTY = "Press Compute to read every layer through the unembedding."


def compute(lm, prompt: str, chat: bool, target: str, last: int) -> dict[str, Any]:
    """The lens of the last ``last`` positions, JSON-able (token strings instead of ids)."""
    start = time.perf_counter()
    n = lm.encode(prompt, chat=chat).n_tokens
    positions = range(max(0, n - last), n)
    lens = logit_lens(
        lm, prompt, chat=chat, target=target or None, positions=positions, top_k=TOP_K
    )
    vocab = {int(t): token_text(lm, int(t)) for t in lens.top_ids.unique().tolist()}
    vocab.update({int(t): token_text(lm, int(t)) for t in lens.target_ids.tolist()})
    return {
        "prompt": prompt,
        "chat": chat,
        "tokens": lens.tokens,
        "positions": lens.positions,
        "layers": lens.layers,
        "fixed_target": bool(target),
        "top_tokens": [[[vocab[int(t)] for t in cell] for cell in row] for row in lens.top_ids],
        "top_probs": lens.top_probs.numpy().round(5).tolist(),
        "targets": [vocab[int(t)] for t in lens.target_ids],
        "target_probs": lens.target_probs.numpy().round(6).tolist(),
        "target_ranks": lens.target_ranks.numpy().tolist(),
        "seconds": round(time.perf_counter() - start, 2),
    }


def layout(wb: AppContext) -> dcc.Tab:
    return tab(
        "Logit lens",
        NAME,
        ids.tab(NAME),
        help_text(
            "The logit lens (nostalgebraist 2020): the residual stream after each layer, put "
            "through the model's final norm and unembedding, as if the model stopped there. "
            "Row 'embed' is the stream entering layer 0; the top row is the model's own output. "
            "The cell at position i predicts token i + 1; its label is the lens' top token."
        ),
        controls(
            label("follow token"),
            text_input(ids.LENS_TARGET, "blank = each position's next token; or e.g. ' Mary'"),
            muted("last"),
            number(ids.LENS_LAST, DEFAULT_POSITIONS, min=1, max=MAX_POSITIONS, step=1),
            muted("positions"),
            button("Compute", ids.LENS_RUN, "primary"),
            cancel_button(ids.LENS_CANCEL),
            html.Span(id=ids.LENS_STATUS, className="status"),
        ),
        controls(
            label("colour"),
            dcc.RadioItems(
                id=ids.LENS_SHOW,
                options=[{"label": f" {text}", "value": key} for key, (text, _) in SHOWS.items()],
                value="prob",
                inline=True,
                className="radio",
            ),
        ),
        alert(ids.LENS_ERROR),
        html.Div(id=ids.LENS_SUMMARY, className="help"),
        dcc.Graph(id=ids.LENS_GRAPH, figure=figures.empty_figure(EMPTY), config=GRAPH_CONFIG),
    )


def _hover(result: dict[str, Any], s: int, p: int) -> str:
    tops = " ".join(
        f"{figures.token_text(t)} {q:.2f}"
        for t, q in zip(result["top_tokens"][s][p], result["top_probs"][s][p], strict=True)
    )
    followed = figures.token_text(result["targets"][p])
    return (
        f"top: {tops}<br>{followed}: p {result['target_probs'][s][p]:.4f}, "
        f"rank {result['target_ranks'][s][p]}"
    )


def lens_figure(result: dict[str, Any], show: str) -> go.Figure:
    """Rows: streams (embed at the bottom, the last layer on top); columns: positions."""
    probs = np.asarray(result["target_probs"])
    if show == "rank":
        z = np.log10(np.asarray(result["target_ranks"], dtype=float))
        scale, zmin, zmax = figures.ATTN_SCALE + "_r", 0.0, max(1.0, float(z.max()))
    elif show == "top":
        z, scale, zmin, zmax = np.asarray(result["top_probs"])[:, :, 0], figures.ATTN_SCALE, 0, 1
    else:
        z, scale, zmin, zmax = probs, figures.ATTN_SCALE, 0, 1
    positions = result["positions"]
    x = [f"{p} {figures.token_text(result['tokens'][p])}" for p in positions]
    n_streams = len(result["layers"])
    hover = [[_hover(result, s, i) for i in range(len(positions))] for s in range(n_streams)]
    text = [[figures.token_text(cell[0], 8) for cell in row] for row in result["top_tokens"]]
    fig = go.Figure(
        go.Heatmap(
            z=np.round(z, 5).tolist(),
            x=x,
            y=result["layers"],
            customdata=hover,
            text=text,
            texttemplate="%{text}" if len(positions) <= TEXT_POSITIONS else None,
            textfont={"size": 9},
            colorscale=scale,
            zmin=zmin,
            zmax=zmax,
            xgap=1,
            ygap=1,
            colorbar={"title": {"text": SHOWS[show][1], "side": "right"}, "thickness": 12},
            hovertemplate="%{y} · %{x}<br>%{customdata}<extra></extra>",
        )
    )
    fig.update_xaxes(tickangle=-45, side="bottom")
    fig.update_yaxes(fixedrange=True, dtick=1, tickfont={"size": 10})
    what = (
        "each position's next token" if not result["fixed_target"] else repr(result["targets"][0])
    )
    return figures.base_layout(
        fig,
        height=max(420, 19 * n_streams + 170),
        title={"text": f"Logit lens · followed: {what}", "font": {"size": 14}, "x": 0.01},
        margin={"l": 60, "r": 20, "t": 40, "b": 110},
    )


def summary(result: dict[str, Any], stale: bool) -> str:
    last = len(result["layers"]) - 1
    first = next(
        (result["layers"][s] for s in range(last + 1) if result["target_ranks"][s][-1] == 1),
        None,
    )
    followed = figures.token_text(result["targets"][-1])
    where = f"first the top token at {first}" if first else "never the top token"
    return (
        f"{len(result['positions'])} of {len(result['tokens'])} positions · last position: "
        f"{followed} (p {result['target_probs'][last][-1]:.3f} at the output) is {where} · "
        f"{result['seconds']:.1f} s" + (STALE_NOTE if stale else "")
    )


def register(app: dash.Dash, wb: AppContext) -> None:
    lm = wb.lm

    @app.callback(
        Output(ids.LENS_RESULT, "data"),
        Output(ids.LENS_ERROR, "children"),
        Input(ids.LENS_RUN, "n_clicks"),
        State(ids.PROMPT, "value"),
        State(ids.CHAT, "value"),
        State(ids.LENS_TARGET, "value"),
        State(ids.LENS_LAST, "value"),
        State(ids.SESSION, "data"),
        **LENS_JOB.background([Output(ids.LENS_STATUS, "children")]),
    )
    def lens_job(set_progress, n, prompt, chat, target, last, sid):
        try:
            jobs.setup_worker(wb.job_threads)
            last = as_int(last, "positions", 1, MAX_POSITIONS)
            set_progress(
                f"Running the model and reading {len(lm.layout.attention_modules) + 1} streams…"
            )
            result = compute(lm, prompt, bool(chat), target or "", last)
            set_progress(f"done in {result['seconds']:.1f} s")
            return result, ""
        except Exception as exc:
            set_progress("")
            return no_update, message_of(exc, "The logit lens")
        finally:
            wb.mark_done(sid, LENS_JOB.kind, n)

    watchdog(app, wb, LENS_JOB)

    @app.callback(
        Output(ids.LENS_GRAPH, "figure"),
        Input(ids.LENS_RESULT, "data"),
        Input(ids.LENS_SHOW, "value"),
        prevent_initial_call=True,
    )
    def draw(result, show):
        if not result:
            raise PreventUpdate
        return lens_figure(result, show if show in SHOWS else "prob")

    @app.callback(
        Output(ids.LENS_SUMMARY, "children"),
        Input(ids.LENS_RESULT, "data"),
        Input(ids.PROMPT, "value"),
        Input(ids.CHAT, "value"),
        prevent_initial_call=True,
    )
    def show_summary(result, prompt, chat):
        return summary(result, is_stale(result, prompt, chat)) if result else ""
