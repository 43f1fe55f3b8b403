"""The head atlas map: the 2-D embedding of the atlas analyzer's head features, one scatter
trace per cluster named by its label (``"high <feature>"``), hover and click carrying the
head id. The report's atlas figure and the app's atlas map draw these same traces."""

from __future__ import annotations

import html

import pandas as pd
import plotly.graph_objects as go

MAP_HEIGHT = 520


def atlas_traces(df: pd.DataFrame, name_prefix: str = "") -> list[go.Scatter]:
    """One trace per ``cluster_label`` of an atlas table (columns ``x``, ``y`` = the PCA map,
    ``cluster``, ``cluster_label``, ``head_id``), in cluster order (0 = the largest);
    ``customdata`` holds the head ids, so a click names its head."""
    missing = {"x", "y", "cluster", "cluster_label", "head_id"} - set(df.columns)
    if missing:
        raise ValueError(f"not an atlas table: no column(s) {sorted(missing)}")
    traces = []
    for (_, label), part in df.groupby(["cluster", "cluster_label"], sort=True):
        traces.append(
            go.Scatter(
                x=part["x"],
                y=part["y"],
                mode="markers",
                name=f"{name_prefix}{label}",
                text=part["head_id"],
                customdata=part["head_id"],
                marker={"size": 8, "line": {"width": 0.5, "color": "white"}},
                hovertemplate="%{text}<extra>" + html.escape(str(label)) + "</extra>",
            )
        )
    return traces


def atlas_map_figure(df: pd.DataFrame, title: str | None = None) -> go.Figure:
    """The atlas map of one model: clusters coloured and named in the legend, PC axes."""
    fig = go.Figure(atlas_traces(df))
    fig.update_layout(
        title=title or "Head atlas: PCA of standardised head features (click a head to open it)",
        height=MAP_HEIGHT,
        xaxis_title="PC 1",
        yaxis_title="PC 2",
        legend={"title": {"text": "cluster"}},
        margin={"l": 60, "r": 20, "t": 60, "b": 50},
    )
    return fig
