"""Figures of the attention explorer: the all-heads mosaic and one head's heatmap."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from app.figures import (
    MASKED,
    SELECT_COLOR,
    attention_colorbar,
    attention_colorscale,
    base_layout,
    selection_shapes,
)
from workbench import maps

SINK_COLOR = "#c62828"
HIDDEN_COLOR = "#ef6c00"
MUTED = "#9e9e9e"
UNJUDGED = "#dadada"
#: Colour and words of each :func:`workbench.maps.sink_rules` code (the legend's and the hover's).
SINK_RULES = {
    maps.FIRST_TOKEN_SINK: (
        SINK_COLOR,
        f"first-token sink (score > {maps.FIRST_TOKEN_THRESHOLD}, Gu et al.)",
    ),
    maps.HIDDEN_SINK: (HIDDEN_COLOR, f"hidden sink (score > {maps.HIDDEN_SINK_THRESHOLD}, ACT)"),
    maps.NO_SINK: (MUTED, "no sink"),
    maps.NOT_JUDGED: (UNJUDGED, f"not judged: seen by fewer than {maps.MIN_QUERIES} queries"),
}


def thumbnail_grid_figure(
    thumbs: np.ndarray,
    contrast: str = "sqrt",
    selected: tuple[int, int] | None = None,
    title: str = "",
    uirevision: str | None = None,
) -> go.Figure:
    """All heads at once: a (layers x heads) mosaic of block-pooled maps, one trace.

    ``thumbs`` is (n_layers, n_heads, n, n). Tile of head (l, h) covers x in l +- 0.45 and
    y in h +- 0.45, so hover and clicks round to the head. Dragging a box zooms into a few
    tiles (double-click zooms out); ``uirevision`` keeps the zoom when the colour changes.
    """
    n_layers, n_heads, n, _ = thumbs.shape
    step = 0.9 / n
    offs = -0.45 + (np.arange(n) + 0.5) * step
    xs: list[float] = []
    cols: list[tuple[int, int] | None] = []
    for layer in range(n_layers):
        xs.extend(layer + offs)
        cols.extend((layer, c) for c in range(n))
        if layer < n_layers - 1:
            xs.append(layer + 0.5)
            cols.append(None)
    ys: list[float] = []
    rows: list[tuple[int, int] | None] = []
    for head in range(n_heads):
        ys.extend(head + offs)
        rows.extend((head, r) for r in range(n))
        if head < n_heads - 1:
            ys.append(head + 0.5)
            rows.append(None)
    z = np.full((len(ys), len(xs)), np.nan, dtype=np.float32)
    col_idx = [i for i, c in enumerate(cols) if c is not None]
    for ri, row in enumerate(rows):
        if row is None:
            continue
        head, r = row
        z[ri, col_idx] = thumbs[:, head, r, :].reshape(-1)
    fig = go.Figure(
        go.Heatmap(
            x=np.round(xs, 4),
            y=np.round(ys, 4),
            z=np.round(z, 3),
            zmin=0,
            zmax=1,
            colorscale=attention_colorscale(contrast),
            colorbar=attention_colorbar("attention<br>mass"),
            hoverongaps=False,
            hovertemplate="L%{x:.0f}H%{y:.0f}<br>block mass %{z:.2f}<extra>click to open</extra>",
        )
    )
    fig.update_xaxes(
        tickvals=list(range(n_layers)),
        ticktext=[f"L{i}" for i in range(n_layers)],
        range=[-0.55, n_layers - 0.45],
        showgrid=False,
        zeroline=False,
        title_text="layer",
        tickfont={"size": 10},
    )
    fig.update_yaxes(
        tickvals=list(range(n_heads)),
        ticktext=[f"H{i}" for i in range(n_heads)],
        range=[n_heads - 0.45, -0.55],
        showgrid=False,
        zeroline=False,
        title_text="head",
    )
    base_layout(
        fig,
        height=max(260, 44 * n_heads + 110),
        title={"text": title, "font": {"size": 14}, "x": 0.01},
        margin={"l": 50, "r": 10, "t": 40, "b": 45},
        shapes=selection_shapes(selected),
        clickmode="event",
        dragmode="zoom",
        uirevision=uirevision,
    )
    return fig


def sink_colors(rules: np.ndarray) -> list[str]:
    """The colour of each key's :func:`workbench.maps.sink_rules` code (:data:`SINK_RULES`)."""
    return [SINK_RULES[int(r)][0] for r in rules]


def head_heatmap_figure(
    weights: np.ndarray,
    key_labels: Sequence[str],
    query_labels: Sequence[str],
    sink: np.ndarray | None,
    title: str,
    contrast: str = "sqrt",
    query_row: int | None = None,
    weight_name: str = "weight",
    sink_name: str = "sink score",
    visible: np.ndarray | None = None,
    sink_rules: np.ndarray | None = None,
) -> go.Figure:
    """Query x key heatmap of one head with token labels on both axes, a strip of the keys'
    sink scores above it coloured by the rule that marks each key (``sink_rules``, codes of
    :func:`workbench.maps.sink_rules`; :data:`SINK_RULES`), and the selected query row
    outlined.

    ``visible`` (same shape as ``weights``) marks the cells a query can see; the others
    (future keys under the causal mask) are left blank, grey, so they do not read as zero."""
    z = np.round(weights.astype(np.float32), 4)
    if visible is not None:
        z = np.where(visible, z, np.nan).astype(np.float32)
    fig = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=True,
        row_heights=[0.13, 0.87],
        vertical_spacing=0.02,
    )
    if sink is not None:
        rules = np.full(len(sink), maps.NO_SINK) if sink_rules is None else sink_rules
        fig.add_trace(
            go.Bar(
                x=list(key_labels),
                y=np.round(sink, 4),
                marker_color=sink_colors(rules),
                customdata=[SINK_RULES[int(r)][1] for r in rules],
                hovertemplate="key %{x}<br>" + sink_name + " %{y:.3f}<br>%{customdata}"
                "<extra></extra>",
                showlegend=False,
            ),
            row=1,
            col=1,
        )
    fig.add_trace(
        go.Heatmap(
            x=list(key_labels),
            y=list(query_labels),
            z=z,
            zmin=0,
            zmax=1,
            hoverongaps=False,
            colorscale=attention_colorscale(contrast),
            colorbar={**attention_colorbar(weight_name), "len": 0.8, "y": 0.42},
            hovertemplate=("query %{y}<br>key %{x}<br>" + weight_name + " %{z:.3f}<extra></extra>"),
        ),
        row=2,
        col=1,
    )
    n_q, n_k = len(query_labels), len(key_labels)
    side = max(n_q, n_k)
    height = int(min(900, max(460, 16 * n_q + 220)))
    fig.update_yaxes(title_text="sink", row=1, col=1, range=[0, 1], tickvals=[0, 0.5, 1])
    fig.update_yaxes(
        autorange="reversed", title_text="query token", row=2, col=1, tickfont={"size": 11}
    )
    fig.update_xaxes(title_text="key token", row=2, col=1, tickangle=-60, tickfont={"size": 11})
    fig.update_xaxes(showticklabels=False, row=1, col=1)
    fig.update_xaxes(showgrid=False, zeroline=False)
    fig.update_yaxes(showgrid=False, zeroline=False, row=2, col=1)
    fig.update_yaxes(gridcolor="#eeeeee", row=1, col=1)
    if side > 80:
        fig.update_xaxes(nticks=60, row=2, col=1)
        fig.update_yaxes(nticks=40, row=2, col=1)
    base_layout(
        fig,
        height=height,
        title={"text": title, "font": {"size": 14}, "x": 0.01},
        margin={"l": 110, "r": 20, "t": 50, "b": 110},
        shapes=query_row_shapes(query_row),
        bargap=0.15,
        plot_bgcolor=MASKED,
    )
    return fig


def query_row_shapes(row: int | None) -> list[dict[str, Any]]:
    """Outline of the selected query row (category index ``row`` of the heatmap's y axis),
    after a white background for the sink strip (the plot background is the masked grey)."""
    strip = {
        "type": "rect",
        "xref": "x domain",
        "yref": "y domain",
        "x0": 0,
        "x1": 1,
        "y0": 0,
        "y1": 1,
        "line": {"width": 0},
        "fillcolor": "white",
        "layer": "below",
    }
    if row is None:
        return [strip]
    return [
        strip,
        {
            "type": "rect",
            "xref": "x2 domain",
            "yref": "y2",
            "x0": 0,
            "x1": 1,
            "y0": row - 0.5,
            "y1": row + 0.5,
            "line": {"color": SELECT_COLOR, "width": 2},
            "fillcolor": "rgba(0,0,0,0)",
        },
    ]
