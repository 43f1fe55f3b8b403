"""The Export view: download a figure (PNG, SVG or PDF at print size, or standalone HTML) or
a table (CSV/Parquet) of what the views currently show.

Figures are the graphs of :data:`app.ids.FIGURES`; tables are :data:`TABLES`, each a function
of the page's state. Images are drawn on the server by :func:`workbench.figure_export.
figure_bytes` (the same print layout as the report's figure files: a journal column wide,
fonts of at least 7 pt) from the figure the page shows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import plotly.io as pio
from dash import Input, Output, State, dcc, html, no_update

import workbench
from app import figures, ids
from app.components import alert, button, controls, help_text, tab
from app.context import AppContext, message_of
from workbench.errors import WorkbenchError
from workbench.print_layout import COLUMN_MM

if TYPE_CHECKING:
    import dash

NAME = "export"
FIGURE_IDS = list(ids.FIGURES)
EXPIRED = "this run's data has expired; run the prompt again"
#: Figure formats in the order of the radio buttons (HTML third, as before PDF was added).
FIGURE_FORMATS = {"png": "PNG", "svg": "SVG", "html": "HTML", "pdf": "PDF"}
#: Print width of the image downloads.
WIDTHS = {
    "double": f"double column ({COLUMN_MM['double']:g} mm)",
    "single": f"single column ({COLUMN_MM['single']:g} mm)",
}


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


def figure_download(fig: Any, stem: str, fmt: str, width: str = "double") -> dict[str, Any]:
    """The ``dcc.Download`` data of one figure as it is shown, as ``<stem>.<fmt>``: an image
    at print size (``fmt`` png/svg/pdf; ``width`` a key of :data:`WIDTHS`) or standalone HTML
    (plotly.js inlined, works offline). Raises :class:`WorkbenchError` for an empty figure,
    a bad format or width, or a server that cannot draw images."""
    from probes.checks import choice

    fmt = choice("format", fmt, FIGURE_FORMATS)
    width_mm = COLUMN_MM[choice("width", width, WIDTHS)]
    if not isinstance(fig, dict) or not fig.get("data"):
        raise WorkbenchError("Nothing to export yet: that figure is empty.")
    if fmt == "html":
        text = pio.to_html(fig, include_plotlyjs=True, full_html=True, validate=False)
        return dcc.send_string(text, f"{stem}.html")
    from workbench.figure_export import figure_bytes

    return dcc.send_bytes(figure_bytes(fig, fmt, width_mm=width_mm), f"{stem}.{fmt}")


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
            "Download what the views currently show. PNG (300 dpi), SVG and PDF are laid "
            "out for print: a journal column wide, fonts of at least 7 pt, white background. "
            "HTML is an interactive standalone page (plotly.js inlined, works offline). "
            "Each graph's camera button also downloads an SVG, at double-column width."
        ),
        html.H4("Figure"),
        controls(
            dropdown(ids.EX_FIG, ids.FIGURES, ids.HEAD_GRAPH),
            radio(ids.EX_FIG_FORMAT, [(v, k) for k, v in FIGURE_FORMATS.items()], "png"),
            radio(ids.EX_FIG_WIDTH, [(v, k) for k, v in WIDTHS.items()], "double"),
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
    """Figure export (images and HTML, drawn on the server) and table export."""

    @app.callback(
        Output(ids.DOWNLOAD, "data", allow_duplicate=True),
        Output(ids.EX_ERROR, "children"),
        Input(ids.EX_FIG_BTN, "n_clicks"),
        State(ids.EX_FIG_FORMAT, "value"),
        State(ids.EX_FIG_WIDTH, "value"),
        State(ids.EX_FIG, "value"),
        *[State(f, "figure") for f in FIGURE_IDS],
        prevent_initial_call=True,
        running=[(Output(ids.EX_FIG_BTN, "disabled"), True, False)],
    )
    def export_figure(_n, fmt, width, which, *figs):
        fig = dict(zip(FIGURE_IDS, figs, strict=True)).get(which)
        try:
            return figure_download(fig, which, fmt, width), ""
        except WorkbenchError as exc:
            return no_update, str(exc)
        except Exception as exc:
            return no_update, message_of(exc, f"The {fmt} export")

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
