"""Intervene, result part: base vs intervened continuation side by side (differing words
marked) and the per-token KL / target-change chart."""

from __future__ import annotations

import difflib
import re
from typing import TYPE_CHECKING, Any

import pandas as pd
from dash import Input, Output, html
from dash.exceptions import PreventUpdate

from app import figures, ids
from app.context import AppContext

if TYPE_CHECKING:
    import dash


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


def card(title: str, text: list, text_id: str, extra: str = "") -> html.Div:
    return html.Div(
        className=f"compare-card {extra}".strip(),
        children=[
            html.Div(title, className="compare-title"),
            html.Pre(text or "(empty)", id=text_id, className="gen-text"),
        ],
    )


def comparison(result: dict[str, Any]) -> html.Div:
    """The two continuations side by side, and a note when they are identical."""
    base, new = result["base_text"], result["intervened_text"]
    a, b = word_diff(base, new)
    note = (
        html.Div("The intervened continuation is identical to the base one.", className="note")
        if base == new
        else None
    )
    cards = [
        card("Base model", a, ids.IV_BASE_TEXT),
        card(result["intervention"], b, ids.IV_NEW_TEXT, "intervened"),
    ]
    return html.Div(children=[html.Div(className="compare", children=cards), note])


def register(app: dash.Dash, wb: AppContext) -> None:
    @app.callback(
        Output(ids.IV_COMPARE, "children"),
        Output(ids.KL_GRAPH, "figure"),
        Input(ids.IV_RESULT, "data"),
        prevent_initial_call=True,
    )
    def render_intervention(result):
        if not result:
            raise PreventUpdate
        positions = pd.DataFrame(result["positions"])
        return comparison(result), figures.effects_figure(positions, result.get("targets") or [])
