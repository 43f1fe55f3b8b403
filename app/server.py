"""Dash app entry point. For now one view: prompt -> one head's attention heatmap.

The full app (explorer grid, head atlas, interventions) is the app issue; this page already goes
through the same public API a notebook uses (``workbench.load_model`` / ``run_capture``).
"""

from __future__ import annotations

import dash
import plotly.graph_objects as go
from dash import Input, Output, State, dcc, html

import workbench
from workbench.errors import WorkbenchError


def heatmap_figure(tokens: list[str], attention, title: str) -> go.Figure:
    """Query x key heatmap with token labels; hover shows query, key and weight."""
    labels = [f"{i}:{t!r}"[:24] for i, t in enumerate(tokens)]
    fig = go.Figure(
        go.Heatmap(
            z=attention,
            x=labels,
            y=labels[-len(attention) :],
            colorscale="Blues",
            zmin=0.0,
            zmax=1.0,
            colorbar={"title": "weight"},
            hovertemplate="query %{y}<br>key %{x}<br>weight %{z:.3f}<extra></extra>",
        )
    )
    fig.update_layout(
        title=title, yaxis={"autorange": "reversed"}, margin={"l": 120, "b": 120}, height=640
    )
    return fig


def create_app(lm: workbench.LoadedModel) -> dash.Dash:
    """Build the Dash app around one loaded model."""
    app = dash.Dash(__name__, title="Attention workbench")
    info = lm.info
    app.layout = html.Div(
        style={"fontFamily": "sans-serif", "maxWidth": "1100px", "margin": "auto"},
        children=[
            html.H2("Attention-head workbench"),
            html.P(
                f"{info.name}: {info.architecture}, {info.n_layers} layers x {info.n_heads} "
                f"query heads ({info.n_kv_heads} KV heads), context {info.max_context}",
                id="model-info",
            ),
            dcc.Textarea(
                id="prompt",
                value="The cat sat on the mat. The cat sat on the",
                style={"width": "100%", "height": "80px"},
            ),
            html.Div(
                [
                    html.Label("layer "),
                    dcc.Input(id="layer", type="number", value=0, min=0, step=1),
                    html.Label(" head "),
                    dcc.Input(id="head", type="number", value=0, min=0, step=1),
                    dcc.Checklist(
                        id="chat",
                        options=[{"label": " chat template", "value": "chat"}],
                        value=[],
                        inline=True,
                    ),
                    html.Button("Run", id="run", n_clicks=0),
                ],
                style={"display": "flex", "gap": "8px", "alignItems": "center"},
            ),
            html.Div(id="error", style={"color": "#b00020", "margin": "8px 0"}),
            dcc.Loading(dcc.Graph(id="heatmap")),
        ],
    )

    @app.callback(
        Output("heatmap", "figure"),
        Output("error", "children"),
        Input("run", "n_clicks"),
        State("prompt", "value"),
        State("layer", "value"),
        State("head", "value"),
        State("chat", "value"),
    )
    def run(_n, prompt, layer, head, chat):
        try:
            layer, head = int(layer or 0), int(head or 0)
            hid = lm.head_id(layer, head)
            enc, rec = lm.run_capture(prompt or "", chat=bool(chat), layers=[layer], heads=[head])
            fig = heatmap_figure(enc.tokens, rec.map(layer, head).numpy(), f"attention of {hid}")
            return fig, ""
        except WorkbenchError as exc:
            return dash.no_update, f"error: {exc}"

    return app


def serve(model: str | None = None, host: str = "127.0.0.1", port: int = 8050, debug=False):
    """Load ``model`` and serve the app (bound to 127.0.0.1 unless told otherwise)."""
    lm = workbench.load_model(model)
    create_app(lm).run(host=host, port=port, debug=debug)
