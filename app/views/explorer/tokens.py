"""Explorer, part 3: the token view (the prompt coloured by the attention each token receives
from the query token; click a token to make it the query)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from dash import Input, Output, State, html

import workbench
from app import figures, ids
from app.components import controls, help_text, muted
from app.components import number as number_box
from app.context import AppContext
from app.views.explorer.figures import HIDDEN_COLOR, SINK_RULES
from workbench import maps

if TYPE_CHECKING:
    import dash

TOKEN_VIEW_MAX = 1500  # tokens shown before the query
TOKEN_VIEW_AFTER = 200  # tokens shown after it


def layout() -> list[Any]:
    return [
        html.H4(id=ids.TOKENS_TITLE, children="Token view"),
        help_text(
            "Tokens coloured by the attention they receive from the query token "
            "(outlined). Click a token to make it the query. Underlined: sinks of this head, "
            "by the sinks analyzer's rule (see the key below the tokens)."
        ),
        controls(muted("query position"), number_box(ids.QUERY_IN, min=0, step=1)),
        html.Div(id=ids.TOKEN_VIEW, className="token-view"),
        html.Div(id=ids.TOKEN_LEGEND, className="legend"),
    ]


def legend_bar(contrast: str, title: str = "attention from the query") -> html.Div:
    """The colour key of the token view (0 .. 1 on the attention scale, and the sink mark)."""
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
            html.Span(SINK_RULES[maps.FIRST_TOKEN_SINK][1], className="muted"),
            html.Span(className="sink-key", style={"borderBottomColor": HIDDEN_COLOR}),
            html.Span(SINK_RULES[maps.HIDDEN_SINK][1], className="muted"),
            html.Span(
                f"· keys seen by fewer than {maps.MIN_QUERIES} queries are not judged",
                className="muted",
            ),
        ],
    )


def attention_row(wb: AppContext, sid: str, run: str, view: dict, pos: int) -> np.ndarray | None:
    """The query's attention over keys (``(L,)``) when the view holds exact rows for it."""
    if view["mode"] == "full":
        maps = wb.store.get(sid, run, f"maps/{view['layer']}")
        return None if maps is None else maps[view["head"], pos].astype(np.float32)
    if view["mode"] == "window" and view["q0"] <= pos < view["q1"]:
        window = wb.store.get(sid, run, "window")
        return None if window is None else window["map"][pos - view["q0"]].astype(np.float32)
    return None


def token_spans(tokens: list[str], row: np.ndarray, rules: np.ndarray, pos: int, contrast: str):
    """One clickable span per token around the query ``pos``; ``rules``: each key's
    :func:`workbench.maps.sink_rules` code (sinks are underlined, their rule in the tooltip)."""
    n = len(tokens)
    lo, hi = max(0, pos - TOKEN_VIEW_MAX), min(n, pos + TOKEN_VIEW_AFTER)
    spans: list = []
    if lo > 0:
        spans.append(html.Span(f"… {lo} earlier tokens not shown … ", className="muted"))
    for i in range(lo, hi):
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
        if rules[i] > 0:
            classes.append("sink")
            tip += f" · {SINK_RULES[int(rules[i])][1]}"
            if rules[i] == maps.HIDDEN_SINK:
                style = {**style, "textDecorationColor": HIDDEN_COLOR}
        spans.append(
            html.Span(
                tokens[i].replace("\n", "⏎\n"),
                id=ids.token(i),
                n_clicks=0,
                className=" ".join(classes),
                style=style,
                title=tip,
            )
        )
    return spans


def register(app: dash.Dash, wb: AppContext) -> None:
    @app.callback(
        Output(ids.TOKEN_VIEW, "children"),
        Output(ids.TOKENS_TITLE, "children"),
        Output(ids.TOKEN_LEGEND, "children"),
        Input(ids.SEL_QUERY, "data"),
        Input(ids.HEAD_VIEW, "data"),
        Input(ids.CONTRAST, "value"),
        State(ids.RUN_META, "data"),
        State(ids.SESSION, "data"),
    )
    def render_tokens(query, view, contrast, meta, sid):
        if not meta or not view:
            hint = html.Span("Run a prompt to see its tokens.", className="muted")
            return hint, "Token view", None
        run, tokens = meta["run_id"], meta["tokens"]
        n = len(tokens)
        pos = (query or {}).get("pos") if (query or {}).get("run_id") == run else None
        pos = n - 1 if pos is None else pos
        hid = workbench.head_id(view["layer"], view["head"])
        qtok = figures.token_text(tokens[pos])
        title = f"Token view: what {hid} attends to from query {pos} {qtok}"
        row = attention_row(wb, sid, run, view, pos)
        if row is None:
            hint = (
                "Long prompt: compute exact rows (above) that include the query to see its "
                "token view, or pick a query inside the computed rows."
            )
            return html.Span(hint, className="muted"), title, None
        sink_all = wb.store.get(sid, run, "sink")
        sink = sink_all[view["layer"], view["head"]] if sink_all is not None else np.zeros(n)
        rules = maps.sink_rules(sink, n_tokens=n, min_queries=maps.MIN_QUERIES)
        spans = token_spans(tokens, row, rules, pos, contrast)
        return spans, title, legend_bar(contrast)
