"""The head atlas view: score every head with an analyzer (a background job; quick mode by
default), see the score grid, the table with each score's interval, the ranking's split-half
stability, the analyzer's counts, and its causal check with its verdict (:mod:`.evidence`, on
the shared causal chart of :mod:`workbench.charts`). Clicking a head opens it in the explorer
(:mod:`.explorer.grid`). The form is built from the picked analyzer's signature
(:mod:`.analyzer_form`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from dash import ALL, Input, Output, Patch, State, dash_table, dcc, html, no_update
from dash.dash_table.Format import Format, Scheme
from plotly.colors import get_colorscale

from app import figures, ids, jobs
from app.components import (
    GRAPH_CONFIG,
    QUIET_GRAPH_CONFIG,
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
from app.context import AppContext, JobControls, message_of, watchdog
from app.progress_text import ProgressText
from app.views import agreement
from app.views import analyzer_form as form
from app.views.analyzer_form import analyzer_params, form_values
from app.views.evidence import CAUSAL_HEIGHT, causal_view, evidence_view
from workbench.atlas_charts import atlas_map_figure
from workbench.errors import WorkbenchError

if TYPE_CHECKING:
    import dash


ANALYZER_JOB = JobControls(
    "an",
    (ids.AN_RUN,),
    ids.AN_CANCEL,
    ids.AN_BUSY,
    ids.AN_ERROR,
    showing=(ids.AN_PROGRESS,),
    status=ids.AN_STATUS,
)

NAME = "atlas"
#: attrs shown elsewhere (the causal panel, the evidence lines) or too bulky for the chips.
#: Style of the atlas map's wrapper while no atlas result is picked.
HIDDEN = {"display": "none"}
HIDDEN_ATTRS = (
    "causal",
    "causal_sources",
    "model",
    "analyzer",
    "params",
    "prompts_used",
    "prompts_total",
    "quick",
    "note",
    "uncertainty",
    "stability",
    "feature_stability",
    "per_item",
)
QUICK_HELP = (
    "Untick for the default task sizes chosen by measurement (stable rankings, p-values that "
    "can reach 0.05); retrieval, contextual and safety then take minutes on a CPU."
)
#: The interval columns of a score table (their header adds the interval's level).
INTERVAL_COLUMNS = ("score_lo", "score_hi")


def fixed_fields(name: str, lm: Any, quick: bool = True) -> list[Any]:
    """The four fields with fixed ids (:data:`app.views.analyzer_form.FIXED`), each in a span
    the form hides when the analyzer lacks the parameter; values for analyzer ``name``."""
    state = form.fixed_state(name, quick, lm)
    fields = {f.name: f for f in form.form_fields(name, lm)}

    def wrap(param: str, *children: Any, title: str | None = None) -> html.Span:
        show = {"display": "inline-flex" if param in state else "none"}
        hint = form.range_hint(fields[param]) if param in fields else ""
        return html.Span(
            [*children, muted(hint) if hint and param != "quick" else None],
            id=form.wrap_id(param),
            className="inline-group field",
            style=show,
            title=title or f"{param}: {hint}",
        )

    def check(id_: str, text: str, value: str, on: bool) -> dcc.Checklist:
        options = [{"label": f" {text}", "value": value}]
        return dcc.Checklist(
            id=id_, options=options, value=[value] if on else [], inline=True, className="check"
        )

    return [
        wrap("n_prompts", muted("prompts"), number(ids.AN_NPROMPTS, state.get("n_prompts"))),
        wrap(
            "quick",
            check(ids.AN_QUICK, "quick (small tasks, weak evidence)", "quick", quick),
            title=QUICK_HELP,
        ),
        wrap("causal", check(ids.AN_CAUSAL, "causal check", "causal", state.get("causal", False))),
        wrap("top_k", muted("top-k"), number(ids.AN_TOPK, state.get("top_k", 5))),
    ]


def layout(wb: AppContext) -> dcc.Tab:
    names = [n for n, _ in wb.analyzers]
    default = "sinks" if "sinks" in names else names[0]
    info = wb.info
    table_style = {"fontFamily": figures.FONT, "fontSize": "13px", "padding": "4px 8px"}
    return tab(
        "Head atlas",
        NAME,
        ids.tab(NAME),
        help_text(
            "Score every head with an analyzer (runs in the background; the page "
            "stays usable). The causal check ablates the top-k heads and k random "
            "heads of the same layers: an attention score alone is not an "
            "explanation. Click a head in the grid or the table to open it in the "
            "explorer."
        ),
        controls(
            label("analyzer"),
            dcc.Dropdown(
                id=ids.AN_NAME,
                options=[{"label": n, "value": n} for n in names],
                value=default,
                clearable=False,
                className="dropdown",
            ),
            *fixed_fields(default, wb.lm),
        ),
        html.Div(id=ids.AN_SUMMARY, className="help"),
        html.Div(id=form.FORM, children=form.form_children(default, True, wb.lm)),
        alert(form.FORM_CHECK),
        controls(
            muted("more parameters"),
            text_input(ids.AN_PARAMS, 'JSON, overrides the fields, e.g. {"draws": 2}'),
            button("Run analyzer", ids.AN_RUN, "primary"),
            cancel_button(ids.AN_CANCEL),
        ),
        html.Div(
            className="progress-row",
            children=[
                html.Progress(id=ids.AN_PROGRESS, value="0", max="1", className="progress"),
                html.Span(id=ids.AN_STATUS, className="status"),
            ],
        ),
        alert(ids.AN_ERROR),
        html.Div(id=ids.AN_EVIDENCE, className="help evidence"),
        html.Div(
            className="two-col",
            children=[
                html.Div(
                    className="col-main",
                    children=[
                        dcc.Graph(
                            id=ids.SCORE_GRAPH,
                            figure=figures.score_grid_figure(info.n_layers, info.n_heads),
                            config=GRAPH_CONFIG,
                        )
                    ],
                ),
                html.Div(
                    className="col-side",
                    children=[
                        dcc.Graph(
                            id=ids.CAUSAL_GRAPH,
                            figure=figures.empty_figure(
                                "The causal check appears here.", height=CAUSAL_HEIGHT
                            ),
                            config=QUIET_GRAPH_CONFIG,
                        ),
                        html.Div(id=ids.CAUSAL_INFO, className="help"),
                    ],
                ),
            ],
        ),
        html.Div(
            id=ids.ATLAS_MAP_WRAP,
            style=HIDDEN,
            children=[
                dcc.Graph(id=ids.ATLAS_MAP, figure=figures.empty_figure(""), config=GRAPH_CONFIG)
            ],
        ),
        html.Div(id=ids.AN_ATTRS, className="attrs"),
        dash_table.DataTable(
            id=ids.SCORE_TABLE,
            data=[],
            columns=[],
            sort_action="native",
            sort_by=[{"column_id": "score", "direction": "desc"}],
            filter_action="native",
            page_size=12,
            style_table={"overflowX": "auto"},
            style_cell={**table_style, "textAlign": "right"},
            style_header={"fontWeight": "600", "backgroundColor": "#f5f7fa"},
            style_cell_conditional=[{"if": {"column_id": "head_id"}, "textAlign": "left"}],
        ),
        agreement.layout(wb),
    )


def table_columns(result: dict[str, Any], df: pd.DataFrame) -> list[dict[str, Any]]:
    """DataTable column specs: floats to 4 decimals, booleans as text, the interval columns
    with their level (``score_lo (95% CI)``)."""
    level = ((result.get("attrs") or {}).get("uncertainty") or {}).get("level")
    ci = f"{level:.0%} CI" if isinstance(level, int | float) else "CI"
    columns = []
    for col in result["columns"]:
        name = f"{col} ({ci})" if col in INTERVAL_COLUMNS else col
        spec: dict[str, Any] = {"id": col, "name": name}
        if col in df and pd.api.types.is_float_dtype(df[col]):
            spec.update(type="numeric", format=Format(precision=4, scheme=Scheme.fixed))
        elif col in df and pd.api.types.is_bool_dtype(df[col]):
            spec["presentation"] = "input"
        columns.append(spec)
    return columns


def table_rows(df: pd.DataFrame) -> list[dict[str, Any]]:
    data = df.to_dict("records")
    for row in data:
        for key, value in row.items():
            if isinstance(value, bool | np.bool_):
                row[key] = "yes" if value else "no"
    return data


def attrs_view(result: dict[str, Any]) -> Any:
    """A compact summary of an analyzer's ``df.attrs`` (counts, rates, parameters)."""
    attrs = dict(result.get("attrs") or {})
    items: list = []
    used, total = attrs.get("prompts_used"), attrs.get("prompts_total")
    if used is not None:
        items.append(f"prompts used {used}/{total}")
    if attrs.get("interrupted"):
        items.append("interrupted")
    for key, value in attrs.items():
        if key in HIDDEN_ATTRS or key == "interrupted":
            continue
        if isinstance(value, bool | int | float | str) and value is not None:
            text = f"{value:.4g}" if isinstance(value, float) else str(value)
            if len(text) <= 80:
                items.append(f"{key} {text}")
        elif (
            isinstance(value, list) and value and isinstance(value[0], dict) and "token" in value[0]
        ):
            top = ", ".join(
                f"{figures.token_text(v['token'])} ({v.get('count', '')})" for v in value[:8]
            )
            items.append(f"{key}: {top}")
    params = attrs.get("params") or result.get("params")
    if params:
        items.append("parameters " + ", ".join(f"{k}={v}" for k, v in params.items()))
    return [html.Span(t, className="chip") for t in items]


def register(app: dash.Dash, wb: AppContext) -> None:
    """The analyzer summary line, the analyzer job, and drawing its result."""
    form.register(app, wb)
    agreement.register(app, wb)
    summaries = dict(wb.analyzers)
    n_layers, n_heads = wb.info.n_layers, wb.info.n_heads

    @app.callback(Output(ids.AN_SUMMARY, "children"), Input(ids.AN_NAME, "value"))
    def analyzer_summary(name):
        return f"{name}: {summaries.get(name, '')}" if name else ""

    @app.callback(
        Output(ids.ATLAS_RESULTS, "data"),
        Output(ids.AN_ERROR, "children"),
        Input(ids.AN_RUN, "n_clicks"),
        State(ids.AN_NAME, "value"),
        State(ids.AN_NPROMPTS, "value"),
        State(ids.AN_CAUSAL, "value"),
        State(ids.AN_TOPK, "value"),
        State(ids.AN_QUICK, "value"),
        State(ids.AN_PARAMS, "value"),
        State({"type": form.FIELD, "name": ALL}, "value"),
        State({"type": form.FIELD, "name": ALL}, "id"),
        State(ids.ATLAS_RESULTS, "data"),
        State(ids.SESSION, "data"),
        **ANALYZER_JOB.background(
            [
                Output(ids.AN_PROGRESS, "value"),
                Output(ids.AN_PROGRESS, "max"),
                Output(ids.AN_STATUS, "children"),
            ]
        ),
    )
    def analyzer_job(
        set_progress, n, name, n_prompts, causal, top_k, quick, params_text, values, field_ids,
        results, sid,
    ):  # fmt: skip
        try:
            jobs.setup_worker(wb.job_threads)
            if not name:
                raise WorkbenchError("pick an analyzer")
            raw = {i["name"]: v for i, v in zip(field_ids, values, strict=False)}
            fields = form.fields_params(name, raw, wb.lm)
            fixed = form_values(n_prompts, causal, top_k, quick)
            params = analyzer_params(name, fixed, params_text, wb.lm, fields)
            set_progress(("0", "1", f"Starting {name}…"))

            status = ProgressText()

            def report(desc: str, i: int, total: int) -> None:
                text = status(desc or name, i, total)
                if desc == "causal check":
                    text += " (top-k, then random-k heads ablated)"
                set_progress((str(i), str(max(total, 1)), text))

            result = jobs.run_analyzer(wb.lm, name, params, report)
            done = f"{name}: {len(result['records'])} heads scored in {result['seconds']:.1f} s"
            set_progress(("1", "1", done))
            return {**(results or {}), name: result}, ""
        except Exception as exc:
            set_progress(("0", "1", ""))
            return no_update, f"The {name} job failed: {message_of(exc, f'The {name} job')}"
        finally:
            wb.mark_done(sid, ANALYZER_JOB.kind, n)

    watchdog(app, wb, ANALYZER_JOB)

    @app.callback(
        Output(ids.SCORE_GRAPH, "figure", allow_duplicate=True),
        Output(ids.SCORE_TABLE, "data"),
        Output(ids.SCORE_TABLE, "columns"),
        Output(ids.CAUSAL_GRAPH, "figure"),
        Output(ids.CAUSAL_INFO, "children"),
        Output(ids.AN_ATTRS, "children"),
        Output(ids.AN_EVIDENCE, "children"),
        Output(ids.IV_FROM, "options"),
        Output(ids.ATLAS_MAP, "figure"),
        Output(ids.ATLAS_MAP_WRAP, "style"),
        Input(ids.ATLAS_RESULTS, "data"),
        Input(ids.AN_NAME, "value"),
        prevent_initial_call="initial_duplicate",
    )
    def render_atlas(results, name):
        return (*render_result(results, name), *atlas_map(results, name))

    def render_result(results, name):
        results = results or {}
        options = [{"label": k, "value": k} for k in sorted(results)]
        result = results.get(name)
        patch = Patch()
        if not result:
            patch["data"][0]["z"] = [[None] * n_layers for _ in range(n_heads)]
            patch["layout"]["title"]["text"] = (
                f"Head scores: {name} not run yet in this session" if name else "Head scores"
            )
            empty = figures.empty_figure(
                "Run the analyzer to see its causal check.", height=CAUSAL_HEIGHT
            )
            return patch, [], [], empty, None, None, None, options
        df = pd.DataFrame(result["records"])
        vals = figures.score_grid_values(df, n_layers, n_heads)
        patch["data"][0]["z"] = vals["z"]
        patch["data"][0]["zmin"] = vals["zmin"]
        patch["data"][0]["zmax"] = vals["zmax"]
        patch["data"][0]["colorscale"] = get_colorscale(vals["colorscale"])
        patch["data"][0]["colorbar"]["title"]["text"] = f"{name}<br>score"
        patch["layout"]["title"]["text"] = f"{name}: score per head (click a head to open it)"
        attrs = result.get("attrs") or {}
        cfig, info_children = causal_view(attrs.get("causal"))
        columns = table_columns(result, df)
        return (
            patch,
            table_rows(df),
            columns,
            cfig,
            info_children,
            attrs_view(result),
            evidence_view(attrs),
            options,
        )


def atlas_map(results: dict[str, Any] | None, name: str | None) -> tuple[Any, dict[str, str]]:
    """The atlas analyzer's 2-D map (clusters named by their labels; a click opens the head)
    and its wrapper's style: shown only while the atlas result is picked."""
    result = (results or {}).get(name) if name == "atlas" else None
    if not result or not result.get("records"):
        return no_update, HIDDEN
    return atlas_map_figure(pd.DataFrame(result["records"])), {}
