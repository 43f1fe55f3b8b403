"""The Export view: download a figure (PNG/SVG drawn by the browser, or standalone HTML) or a
table (CSV/Parquet) of what the views currently show.

Figures are the graphs of :data:`app.ids.FIGURES`; tables are :data:`TABLES`, each a function
of the page's state. The browser-side PNG/SVG export is built from the same figure ids.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import plotly.io as pio
from dash import Input, Output, State, dcc, html, no_update
from dash.exceptions import PreventUpdate

import workbench
from app import figures, ids
from app.components import alert, button, controls, help_text, tab
from app.context import AppContext, message_of
from workbench.errors import WorkbenchError

if TYPE_CHECKING:
    import dash

NAME = "export"
FIGURE_IDS = list(ids.FIGURES)
EXPIRED = "this run's data has expired; run the prompt again"


@dataclass(frozen=True)
class PageState:
    """What a table export reads from the page."""

    wb: AppContext
    results: dict[str, Any] | None
    analyzer: str | None
    iv_result: dict[str, Any] | None
    view: dict[str, Any] | None
    meta: dict[str, Any] | None
    sid: str | None


def scores_table(s: PageState) -> tuple[pd.DataFrame, str]:
    result = (s.results or {}).get(s.analyzer)
    if not result:
        raise WorkbenchError(f"no {s.analyzer} result yet: run it in the Head atlas first")
    df = pd.DataFrame(result["records"]).drop(columns=["id"], errors="ignore")
    return df, f"{s.analyzer}_scores"


def _intervention(s: PageState) -> dict[str, Any]:
    if not s.iv_result:
        raise WorkbenchError("no intervention result yet: apply one in Intervene first")
    return s.iv_result


def effects_table(s: PageState) -> tuple[pd.DataFrame, str]:
    return pd.DataFrame(_intervention(s)["positions"]), "intervention_effects"


def continuations_table(s: PageState) -> tuple[pd.DataFrame, str]:
    result = _intervention(s)
    row = {k: result[k] for k in ("intervention", "prompt", "base_text", "intervened_text")}
    return pd.DataFrame([row]), "continuations"


def attention_table(s: PageState) -> tuple[pd.DataFrame, str]:
    meta, view = s.meta, s.view
    if not meta or not view or view.get("mode") == "overview":
        raise WorkbenchError(
            "no exact attention map shown: run a prompt and open a head (for a long "
            "prompt, compute its rows first)"
        )
    store, run = s.wb.store, meta["run_id"]
    if view["mode"] == "full":
        maps = store.get(s.sid, run, f"maps/{view['layer']}")
        if maps is None:
            raise WorkbenchError(EXPIRED)
        w = maps[view["head"]].astype(np.float32)
    else:
        window = store.get(s.sid, run, "window")
        if window is None:
            raise WorkbenchError(EXPIRED)
        w = window["map"].astype(np.float32)
    tokens, q0 = meta["tokens"], view["q0"]
    df = pd.DataFrame(w, columns=figures.token_labels(tokens))
    df.insert(0, "query", figures.token_labels(tokens[q0 : q0 + len(w)], q0))
    return df, f"attention_{workbench.head_id(view['layer'], view['head'])}"


@dataclass(frozen=True)
class Table:
    label: str
    frame: Callable[[PageState], tuple[pd.DataFrame, str]]


#: The tables a user can export: name -> label and the function building it.
TABLES = {
    "scores": Table("Head scores of the shown analyzer", scores_table),
    "effects": Table("Intervention effects per position", effects_table),
    "continuations": Table("Base vs intervened continuations", continuations_table),
    "attention": Table("Attention map of the selected head (query x key)", attention_table),
}

#: Browser-side PNG/SVG download of one of the figures (HTML goes through the server).
IMAGE_EXPORT_JS = """
function(n, fmt, which, ...figures) {
    const nu = window.dash_clientside.no_update;
    if (!n || fmt === 'html') { return nu; }
    const names = FIGURE_IDS;
    const fig = figures[names.indexOf(which)];
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
""".replace("FIGURE_IDS", json.dumps(FIGURE_IDS))


def layout(wb: AppContext) -> dcc.Tab:
    def radio(id_: str, options: list[tuple[str, str]], value: str) -> dcc.RadioItems:
        return dcc.RadioItems(
            id=id_,
            options=[{"label": f" {text}", "value": v} for text, v in options],
            value=value,
            inline=True,
            className="radio",
        )

    def dropdown(id_: str, options: dict[str, str], value: str) -> dcc.Dropdown:
        return dcc.Dropdown(
            id=id_,
            options=[{"label": v, "value": k} for k, v in options.items()],
            value=value,
            clearable=False,
            className="dropdown wide",
        )

    return tab(
        "Export",
        NAME,
        ids.tab(NAME),
        help_text(
            "Download what the views currently show. PNG and SVG are drawn by the "
            "browser; HTML is an interactive standalone page (plotly.js inlined, "
            "works offline)."
        ),
        html.H4("Figure"),
        controls(
            dropdown(ids.EX_FIG, ids.FIGURES, ids.HEAD_GRAPH),
            radio(ids.EX_FIG_FORMAT, [(f.upper(), f) for f in ("png", "svg", "html")], "png"),
            button("Download figure", ids.EX_FIG_BTN, "primary"),
        ),
        html.H4("Table"),
        controls(
            dropdown(ids.EX_TABLE, {k: t.label for k, t in TABLES.items()}, "scores"),
            radio(ids.EX_TABLE_FORMAT, [("CSV", "csv"), ("Parquet", "parquet")], "csv"),
            button("Download table", ids.EX_TABLE_BTN, "primary"),
        ),
        alert(ids.EX_ERROR),
    )


def register(app: dash.Dash, wb: AppContext) -> None:
    """Figure export (browser-side images, server-side HTML) and table export."""
    figure_states = [State(f, "figure") for f in FIGURE_IDS]
    app.clientside_callback(
        IMAGE_EXPORT_JS,
        Output(ids.EX_ERROR, "children", allow_duplicate=True),
        Input(ids.EX_FIG_BTN, "n_clicks"),
        State(ids.EX_FIG_FORMAT, "value"),
        State(ids.EX_FIG, "value"),
        *figure_states,
        prevent_initial_call=True,
    )

    @app.callback(
        Output(ids.DOWNLOAD, "data", allow_duplicate=True),
        Output(ids.EX_ERROR, "children"),
        Input(ids.EX_FIG_BTN, "n_clicks"),
        State(ids.EX_FIG_FORMAT, "value"),
        State(ids.EX_FIG, "value"),
        *figure_states,
        prevent_initial_call=True,
    )
    def export_html(_n, fmt, which, *figs):
        if fmt != "html":
            raise PreventUpdate
        fig = dict(zip(FIGURE_IDS, figs, strict=True)).get(which)
        if not fig or not fig.get("data"):
            return no_update, "Nothing to export yet: that figure is empty."
        try:
            text = pio.to_html(fig, include_plotlyjs=True, full_html=True, validate=False)
        except Exception as exc:
            return no_update, message_of(exc, "The HTML export")
        return dcc.send_string(text, f"{which}.html"), ""

    @app.callback(
        Output(ids.DOWNLOAD, "data"),
        Output(ids.EX_ERROR, "children", allow_duplicate=True),
        Input(ids.EX_TABLE_BTN, "n_clicks"),
        State(ids.EX_TABLE, "value"),
        State(ids.EX_TABLE_FORMAT, "value"),
        State(ids.ATLAS_RESULTS, "data"),
        State(ids.AN_NAME, "value"),
        State(ids.IV_RESULT, "data"),
        State(ids.HEAD_VIEW, "data"),
        State(ids.RUN_META, "data"),
        State(ids.SESSION, "data"),
        prevent_initial_call=True,
    )
    def export_table(_n, which, fmt, results, name, iv_result, view, meta, sid):
        state = PageState(wb, results, name, iv_result, view, meta, sid)
        try:
            table = TABLES.get(which)
            if table is None:
                raise WorkbenchError(f"unknown table {which!r}")
            df, stem = table.frame(state)
        except WorkbenchError as exc:
            return no_update, str(exc)
        except Exception as exc:
            return no_update, message_of(exc, "The table export")
        if fmt == "parquet":
            return dcc.send_bytes(
                lambda buf: df.to_parquet(buf, index=False), f"{stem}.parquet"
            ), ""
        return dcc.send_data_frame(df.to_csv, f"{stem}.csv", index=False), ""
