"""The attention explorer view: every head at a glance, one head in detail, the token view.

Three parts, each with its layout slice and its callbacks: :mod:`.grid` (picker and all-heads
mosaic), :mod:`.head` (one head's heatmap and exact rows of long prompts), :mod:`.tokens`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dash import dcc

from app import ids
from app.components import tab
from app.context import AppContext
from app.views.explorer import grid, head, tokens

if TYPE_CHECKING:
    import dash

NAME = "explorer"


def layout(wb: AppContext) -> dcc.Tab:
    """The explorer's tab."""
    return tab("Explorer", NAME, ids.tab(NAME), *grid.layout(), *head.layout(), *tokens.layout())


def register(app: dash.Dash, wb: AppContext) -> None:
    for part in (grid, head, tokens):
        part.register(app, wb)
