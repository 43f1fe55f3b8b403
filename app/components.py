"""Small layout pieces every view uses (help lines, error boxes, number inputs, graph config)."""

from __future__ import annotations

from typing import Any

from dash import dcc, html

from workbench.print_layout import SVG_BUTTON

#: Every graph's camera button downloads an SVG a printed double column wide (183 mm).
GRAPH_CONFIG = {
    "displaylogo": False,
    "toImageButtonOptions": dict(SVG_BUTTON),
    "modeBarButtonsToRemove": ["lasso2d", "select2d"],
}
#: Graphs whose other mode-bar buttons only get in the way (grids users click, small charts):
#: the download button alone.
QUIET_GRAPH_CONFIG = {**GRAPH_CONFIG, "modeBarButtons": [["toImage"]]}


def help_text(text: str, **kwargs: Any) -> html.P:
    return html.P(text, className="help", **kwargs)


def alert(id_: str) -> html.Div:
    """An error box: empty (hidden by CSS) until a callback puts a message in it."""
    return html.Div(id=id_, className="alert", role="alert")


def muted(text: str) -> html.Span:
    return html.Span(text, className="muted")


def label(text: str, extra: str = "") -> html.Span:
    return html.Span(text, className=f"label {extra}".strip())


#: Width of a number box: Dash 4 puts two 32-px stepper buttons inside it, so the 112 px of
#: the stylesheet left 46 px of text and cut a 4-digit value ("1686" showed "168"); this leaves
#: 72 px, room for 6 digits.
NUMBER_WIDTH = "136px"


def number(id_: str, value: Any = None, **kwargs: Any) -> dcc.Input:
    """A small number box, wide enough for 6 digits."""
    style = {"width": NUMBER_WIDTH, **kwargs.pop("style", {})}
    return dcc.Input(id=id_, type="number", value=value, className="num", style=style, **kwargs)


def text_input(id_: str, placeholder: str, **kwargs: Any) -> dcc.Input:
    """A wide one-line text box."""
    return dcc.Input(
        id=id_, type="text", value="", placeholder=placeholder, className="text wide", **kwargs
    )


def button(text: str, id_: str, kind: str = "", **kwargs: Any) -> html.Button:
    """A button (``kind``: "primary", "ghost" or plain)."""
    return html.Button(text, id=id_, n_clicks=0, className=f"btn {kind}".strip(), **kwargs)


def cancel_button(id_: str) -> html.Button:
    """The Cancel button of a background job (enabled while the job runs)."""
    return button("Cancel", id_, "ghost", disabled=True)


def controls(*children: Any, extra: str = "", **kwargs: Any) -> html.Div:
    """A row of controls."""
    return html.Div(className=f"controls {extra}".strip(), children=list(children), **kwargs)


def tab(label_: str, value: str, tab_id: str, *children: Any) -> dcc.Tab:
    """A view's tab with its body."""
    return dcc.Tab(
        label=label_,
        value=value,
        id=tab_id,
        children=[html.Div(className="tab-body", children=list(children))],
    )
