"""Where the head families meet, in the head atlas view: for the analyzers run in this session
(``ids.ATLAS_RESULTS``), every pair's top-k overlap and Spearman correlation of head scores
(:func:`workbench.analyzers.agreement`) as two heatmaps and a table, and the heads in several
top-k sets. A section of the atlas tab (not a tab of its own): :func:`layout` goes in the atlas
tab's children and :func:`register` next to the atlas callbacks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pandas as pd
from dash import Input, Output, dash_table, dcc, html
from dash.dash_table.Format import Format, Scheme

from app import figures, ids
from app.components import GRAPH_CONFIG, alert, controls, help_text, muted, number
from app.context import AppContext, as_int, message_of
from workbench.agreement_charts import agreement_figure
from workbench.analyzers import agreement
from workbench.analyzers.agreement import NOT_FAMILIES

if TYPE_CHECKING:
    import dash

AG_K, AG_GRAPH, AG_PAIRS, AG_LABELS = ids.AG_K, ids.AG_GRAPH, ids.AG_PAIRS, ids.AG_LABELS
AG_NOTE, AG_ERROR = ids.AG_NOTE, ids.AG_ERROR
DEFAULT_K = 10
#: Shuffles of the permutation p-values here (the report uses 10,000): p >= 1/2001.
APP_PERMUTATIONS = 2000
PAIR_COLUMNS = (
    "family_a",
    "family_b",
    "overlap",
    "top_a",
    "top_b",
    "jaccard",
    "spearman",
    "p_value",
    "n_heads",
    "shared",
)
FLOAT_COLUMNS = ("jaccard", "spearman", "p_value")


def session_frames(results: Mapping[str, Any] | None) -> dict[str, pd.DataFrame]:
    """``{analyzer: head table}`` of the session's analyzer results (the atlas store: each
    ``{"records": [...], "attrs": {...}}``), head families only (no atlas clusters); JSON
    nulls become NaN scores."""
    out = {}
    for name, result in (results or {}).items():
        if name in NOT_FAMILIES or not result or not result.get("records"):
            continue
        df = pd.DataFrame(result["records"])
        if "score" in df.columns:
            df["score"] = df["score"].astype(float)
        df.attrs["model"] = (result.get("attrs") or {}).get("model")
        out[name] = df
    return out


def agreement_view(results: Mapping[str, Any] | None, k: Any) -> dict[str, Any]:
    """What the section shows for the session's ``results`` at top-``k`` (the k box's value):
    ``figure``, ``pairs`` (table rows), ``columns`` (their specs), ``labels`` (rows of the
    heads in several top-k sets), ``note`` (one line) and ``error`` (one line, or "").
    Fewer than two families: an empty figure saying what to run; a bad ``k``: the error."""
    frames = session_frames(results)
    empty = {"pairs": [], "columns": _columns(), "labels": [], "error": ""}
    if len(frames) < 2:
        ran = ", ".join(frames) or "none yet"
        note = f"Run two or more analyzers in this session to compare them (run so far: {ran})."
        return {**empty, "figure": figures.empty_figure(note, height=260), "note": note}
    try:
        n_heads = min(len(df) for df in frames.values())
        found = agreement(frames, k=as_int(k, "top-k", 1, n_heads), permutations=APP_PERMUTATIONS)
    except Exception as exc:  # shown in the section's error box, the app keeps running
        message = message_of(exc, "The agreement table")
        fig = figures.empty_figure("No agreement table: see the message above.", height=260)
        return {**empty, "figure": fig, "note": "", "error": message}
    pairs = found.pairs[list(PAIR_COLUMNS)]
    note = (
        f"{len(frames)} families, top-{found.k} sets (heads tied at the k-th score left out); "
        f"Spearman over the heads both score, permutation p-value from {found.permutations} "
        "shuffles (heads are not independent samples: a guide, not a test)."
    )
    return {
        "figure": agreement_figure(found),
        "pairs": pairs.to_dict("records"),
        "columns": _columns(),
        "labels": found.labels.drop(columns=["layer", "head"]).to_dict("records"),
        "note": note,
        "error": "",
    }


def _columns() -> list[dict[str, Any]]:
    specs = []
    for col in PAIR_COLUMNS:
        spec: dict[str, Any] = {"id": col, "name": col.replace("_", " ")}
        if col in FLOAT_COLUMNS:
            spec.update(type="numeric", format=Format(precision=3, scheme=Scheme.fixed))
        specs.append(spec)
    return specs


def layout(wb: AppContext) -> html.Div:
    """The section (put it in the atlas tab's children)."""
    cell = {"fontFamily": figures.FONT, "fontSize": "13px", "padding": "4px 8px"}
    header = {"fontWeight": "600", "backgroundColor": "#f5f7fa"}
    return html.Div(
        id="agreement-section",
        className="agreement",
        children=[
            html.H3("Where the families meet"),
            help_text(
                "Every pair of the analyzers run above: how many of their top-k heads they "
                "share and how their scores over all heads correlate (Spearman). A head in "
                "several top-k sets carries several labels."
            ),
            controls(muted("top-k"), number(AG_K, DEFAULT_K, min=1, step=1)),
            alert(AG_ERROR),
            html.Div(id=AG_NOTE, className="help"),
            dcc.Graph(
                id=AG_GRAPH,
                figure=figures.empty_figure("Run two or more analyzers to compare them."),
                config=GRAPH_CONFIG,
            ),
            dash_table.DataTable(
                id=AG_PAIRS,
                data=[],
                columns=_columns(),
                sort_action="native",
                page_size=15,
                style_table={"overflowX": "auto"},
                style_cell={**cell, "textAlign": "right"},
                style_header=header,
            ),
            html.H4("Heads in several top-k sets"),
            dash_table.DataTable(
                id=AG_LABELS,
                data=[],
                columns=[{"id": c, "name": c} for c in ("head_id", "n_labels", "families")],
                page_size=10,
                style_cell={**cell, "textAlign": "left"},
                style_header=header,
            ),
        ],
    )


def register(app: dash.Dash, wb: AppContext) -> None:
    """Redraw the section when the session's analyzer results or the k box change."""

    @app.callback(
        Output(AG_GRAPH, "figure"),
        Output(AG_PAIRS, "data"),
        Output(AG_PAIRS, "columns"),
        Output(AG_LABELS, "data"),
        Output(AG_NOTE, "children"),
        Output(AG_ERROR, "children"),
        Input(ids.ATLAS_RESULTS, "data"),
        Input(AG_K, "value"),
    )
    def render_agreement(results, k):
        view = agreement_view(results, k)
        return (
            view["figure"],
            view["pairs"],
            view["columns"],
            view["labels"],
            view["note"],
            view["error"],
        )
