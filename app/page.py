"""The page: browser-side stores, the header, the prompt bar and the tabbed views.

:func:`make_layout` returns a function Dash calls on every page load, so each load gets a
fresh session id (:data:`app.ids.SESSION`) and empty per-session stores.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from dash import dcc, html

from app import ids, views
from app.context import AppContext
from app.views import permalink, prompt

if TYPE_CHECKING:
    from workbench.models import ModelInfo


def stores() -> list:
    """Per-session browser-side state (see :mod:`app.ids` for what each holds)."""
    return [
        dcc.Store(id=ids.SESSION, data=uuid.uuid4().hex),
        dcc.Store(id=ids.RUN_META),
        dcc.Store(id=ids.SEL_HEAD, data={"layer": 0, "head": 0}),
        dcc.Store(id=ids.SEL_QUERY),
        dcc.Store(id=ids.HEAD_VIEW),
        dcc.Store(id=ids.WINDOW_META),
        dcc.Store(id=ids.ATLAS_RESULTS, data={}),
        dcc.Store(id=ids.IV_RESULT),
        *[dcc.Store(id=r) for r in (ids.CONTRIB_RESULT, ids.LENS_RESULT, ids.PATCH_RESULT)],
        *[dcc.Store(id=busy, data=False) for busy in (ids.RUN_BUSY, ids.AN_BUSY, ids.IV_BUSY)],
        *[dcc.Store(id=b, data=False) for b in (ids.CONTRIB_BUSY, ids.LENS_BUSY, ids.PATCH_BUSY)],
        dcc.Store(id=ids.ZOOM_BUSY, data=False),
        dcc.Store(id=ids.ZOOM_REQUEST, data=0),
        dcc.Download(id=ids.DOWNLOAD),
        *permalink.stores(),
    ]


def header(info: ModelInfo) -> html.Header:
    return html.Header(
        className="topbar",
        children=[
            html.Div("Attention-head workbench", className="brand"),
            html.Div(
                f"{info.name} · {info.architecture} · {info.n_layers} layers × {info.n_heads} "
                f"query heads ({info.n_kv_heads} KV heads) · context {info.max_context:,} tokens",
                id=ids.MODEL_INFO,
                className="model-info",
            ),
        ],
    )


def make_layout(wb: AppContext) -> Callable[[], html.Div]:
    """A layout function: Dash calls it per page load (fresh session id each time)."""

    def layout() -> html.Div:
        return html.Div(
            className="page",
            children=[
                *stores(),
                header(wb.info),
                html.Main(
                    className="main",
                    children=[
                        prompt.layout(),
                        permalink.link_line(),
                        dcc.Tabs(
                            id=ids.TABS,
                            value=views.TABS[0].NAME,
                            className="tabs",
                            children=[view.layout(wb) for view in views.TABS],
                        ),
                    ],
                ),
            ],
        )

    return layout
