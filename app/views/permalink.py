"""The permalink of the page (:mod:`app.permalink`): the URL follows the view, and opening a
``?view=`` link restores it.

Saving: after each run, head selection, tab change or analyzer result, the view (the run's
prompt text and chat flag, the selected head, the tab, the picked analyzer, the session's
analyzer results) is stored on the server and the address bar shows ``?view=<token>`` (no page
reload). A view needs a run: before the first run there is nothing to link to.

Restoring: on a page load with ``?view=<token>``, the prompt, chat flag, head, tab, analyzer and
analyzer results are put back, and the prompt runs again (its maps are recomputed, the analyzer
results are not). :data:`app.ids.VIEW_TOKEN` holds the token the page shows, so the saving side
changing the address does not restore again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dash import Input, Output, State, dcc, html, no_update
from dash.exceptions import PreventUpdate

from app import ids
from app.context import AppContext
from app.permalink import load_view, save_view, token_of

if TYPE_CHECKING:
    import dash


def stores() -> list:
    """The address bar and the token of the view the page shows."""
    return [dcc.Location(id=ids.URL, refresh=False), dcc.Store(id=ids.VIEW_TOKEN)]


def link_line() -> html.Div:
    """Where the page says what its link is (or why a link could not be restored)."""
    return html.Div(id=ids.PERMALINK, className="help permalink")


def register(app: dash.Dash, wb: AppContext) -> None:
    """Saving the view into the URL, and restoring it from a ``?view=`` link."""

    @app.callback(
        Output(ids.URL, "search"),
        Output(ids.VIEW_TOKEN, "data"),
        Output(ids.PERMALINK, "children"),
        Input(ids.RUN_META, "data"),
        Input(ids.SEL_HEAD, "data"),
        Input(ids.TABS, "value"),
        Input(ids.ATLAS_RESULTS, "data"),
        Input(ids.AN_NAME, "value"),
        State(ids.VIEW_TOKEN, "data"),
        prevent_initial_call=True,
    )
    def save(meta, head, tab, results, analyzer, shown):
        if not meta:  # nothing has run: no view to link to yet
            raise PreventUpdate
        view = {
            "model": wb.info.name,
            "text": meta.get("text"),
            "chat": bool(meta.get("text_chat")),
            "head": head,
            "tab": tab,
            "analyzer": analyzer,
            "results": results or {},
        }
        token = save_view(wb.store, view)
        if token == shown:
            raise PreventUpdate
        return f"?view={token}", token, link_text(token)

    @app.callback(
        Output(ids.PROMPT, "value", allow_duplicate=True),
        Output(ids.CHAT, "value", allow_duplicate=True),
        Output(ids.SEL_HEAD, "data", allow_duplicate=True),
        Output(ids.TABS, "value", allow_duplicate=True),
        Output(ids.ATLAS_RESULTS, "data", allow_duplicate=True),
        Output(ids.AN_NAME, "value", allow_duplicate=True),
        Output(ids.RUN_FORWARD, "n_clicks", allow_duplicate=True),
        Output(ids.VIEW_TOKEN, "data", allow_duplicate=True),
        Output(ids.PERMALINK, "children", allow_duplicate=True),
        Input(ids.URL, "search"),
        State(ids.VIEW_TOKEN, "data"),
        State(ids.RUN_FORWARD, "n_clicks"),
        prevent_initial_call="initial_duplicate",
    )
    def restore(search, shown, clicks):
        token = token_of(search)
        if token is None or token == shown:  # no link, or the page's own (just saved)
            raise PreventUpdate
        view = load_view(wb.store, token)
        if view is None:
            note = (
                f"The link's view {token} is not on this server (views are kept 30 days, "
                "on the server that made them)."
            )
            return (*[no_update] * 8, note)
        if view.get("model") != wb.info.name:
            note = f"The link's view {token} was made with {view.get('model')}, not {wb.info.name}."
            return (*[no_update] * 8, note)
        return (
            view.get("text") or "",
            ["chat"] if view.get("chat") else [],
            view.get("head") or no_update,
            view.get("tab") or no_update,
            view.get("results") or {},
            view.get("analyzer") or no_update,
            (clicks or 0) + 1,  # run the prompt again: its maps are recomputed
            token,
            link_text(token, restored=True),
        )


def link_text(token: str, restored: bool = False) -> list[Any]:
    """The line under the prompt: the view's link (relative to this page)."""
    lead = "Restored view" if restored else "Link to this view"
    return [f"{lead}: ", html.A(f"?view={token}", href=f"?view={token}", id=ids.PERMALINK_A)]
