"""Shared figure helpers of the app: token labels, the attention colour scale, the page's
figure style, empty figures, the head-selection outline, the atlas score grid and the
intervention effects chart.

Conventions shared by every view:

* one attention colour scale (white -> dark blue, :data:`ATTN_SCALE`) for heatmaps, head
  thumbnails and the token view, always on the real 0..1 weight (the "contrast" option bends
  the colour scale, not the values, so hover and colour bars stay in attention units);
* head grids put layers on x and heads on y (H0 at the top), thumbnails and score grids alike;
* token labels show leading spaces as ``␣`` and newlines as ``⏎`` and carry their position.

Math that interprets the kernels' statistics lives in :mod:`workbench.maps`; the causal chart
in :mod:`workbench.charts`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import sample_colorscale
from plotly.subplots import make_subplots

from workbench.charts import FONT

ATTN_SCALE = "Blues"
SCORE_SCALE = "Viridis"
DIVERGING_SCALE = "RdBu_r"
SELECT_COLOR = "#ff6f00"
MASKED = "#dde2e8"  # background of cells a query cannot see (causal mask)


# -- tokens --------------------------------------------------------------------------------
def token_text(tok: str, limit: int = 14) -> str:
    """A token made visible: leading space as ``␣``, newline ``⏎``, tab ``⇥``, empty ``∅``."""
    s = tok.replace("\r", "").replace("\n", "⏎").replace("\t", "⇥")
    if s.startswith(" "):
        s = "␣" + s[1:]
    if not s:
        s = "∅"
    return s if len(s) <= limit else s[: limit - 1] + "…"


def token_labels(tokens: Sequence[str], start: int = 0) -> list[str]:
    """Unique axis labels ``"5 ␣mat"`` (the position keeps repeated tokens apart)."""
    return [f"{start + i} {token_text(t)}" for i, t in enumerate(tokens)]


def span_labels(n: int, block: int, total: int) -> list[str]:
    """Labels of pooled blocks: token ranges ``"0–31"``."""
    return [f"{i * block}–{min(total, (i + 1) * block) - 1}" for i in range(n)]


# -- colour scales -------------------------------------------------------------------------
def attention_colorscale(contrast: str = "sqrt") -> list[list[Any]]:
    """The attention colour scale on weights 0..1; ``sqrt`` spends more colour on small weights."""
    if contrast != "sqrt":
        pos = np.linspace(0, 1, 11)
        return [[float(p), c] for p, c in zip(pos, _sample(pos), strict=True)]
    pos = np.linspace(0, 1, 33) ** 2
    return [[float(p), c] for p, c in zip(pos, _sample(np.sqrt(pos)), strict=True)]


def _sample(values) -> list[str]:
    return sample_colorscale(ATTN_SCALE, [float(v) for v in values])


def attention_color(weight: float, contrast: str = "sqrt") -> str:
    """CSS colour of one weight on the attention scale."""
    w = min(1.0, max(0.0, float(weight)))
    return _sample([math.sqrt(w) if contrast == "sqrt" else w])[0]


def text_color_on(weight: float, contrast: str = "sqrt") -> str:
    """Black or white text, whichever reads on the attention colour of ``weight``."""
    w = min(1.0, max(0.0, float(weight)))
    level = math.sqrt(w) if contrast == "sqrt" else w
    return "#ffffff" if level > 0.55 else "#111111"


def attention_colorbar(title: str = "attention") -> dict[str, Any]:
    return {
        "title": {"text": title, "side": "right"},
        "tickvals": [0, 0.1, 0.25, 0.5, 0.75, 1.0],
        "thickness": 12,
        "len": 0.9,
    }


def base_layout(fig: go.Figure, **kwargs) -> go.Figure:
    settings: dict[str, Any] = {
        "font": {"family": FONT, "size": 12},
        "paper_bgcolor": "white",
        "plot_bgcolor": "white",
        "margin": {"l": 70, "r": 20, "t": 50, "b": 60},
    }
    settings.update(kwargs)
    fig.update_layout(**settings)
    return fig


def empty_figure(message: str, height: int = 200) -> go.Figure:
    """A blank figure holding one centred hint (what to do to fill it)."""
    fig = go.Figure()
    fig.add_annotation(
        text=message,
        showarrow=False,
        x=0.5,
        y=0.5,
        xref="paper",
        yref="paper",
        font={"size": 14, "color": "#616161"},
    )
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return base_layout(fig, height=height, margin={"l": 10, "r": 10, "t": 10, "b": 10})


def selection_shapes(selected: tuple[int, int] | None) -> list[dict[str, Any]]:
    """Outline of the selected head's cell in a (layer x head) grid."""
    if selected is None:
        return []
    layer, head = selected
    return [
        {
            "type": "rect",
            "x0": layer - 0.5,
            "x1": layer + 0.5,
            "y0": head - 0.5,
            "y1": head + 0.5,
            "xref": "x",
            "yref": "y",
            "line": {"color": SELECT_COLOR, "width": 3},
            "fillcolor": "rgba(0,0,0,0)",
        }
    ]


# -- head atlas ------------------------------------------------------------------------------
def score_grid_figure(n_layers: int, n_heads: int, message: str = "") -> go.Figure:
    """The (layers x heads) score grid skeleton; results arrive as a :class:`dash.Patch`."""
    fig = go.Figure(
        go.Heatmap(
            x=list(range(n_layers)),
            y=list(range(n_heads)),
            z=[[None] * n_layers for _ in range(n_heads)],
            colorscale=SCORE_SCALE,
            colorbar={"title": {"text": "score", "side": "right"}, "thickness": 12},
            hoverongaps=False,
            xgap=1,
            ygap=1,
            hovertemplate="L%{x}H%{y}<br>score %{z:.4f}<extra>click to open</extra>",
        )
    )
    fig.update_xaxes(
        tickvals=list(range(n_layers)),
        ticktext=[f"L{i}" for i in range(n_layers)],
        title_text="layer",
        showgrid=False,
        zeroline=False,
        fixedrange=True,
        tickfont={"size": 10},
        range=[-0.5, n_layers - 0.5],
    )
    fig.update_yaxes(
        tickvals=list(range(n_heads)),
        ticktext=[f"H{i}" for i in range(n_heads)],
        title_text="head",
        range=[n_heads - 0.5, -0.5],
        showgrid=False,
        zeroline=False,
        fixedrange=True,
    )
    base_layout(
        fig,
        height=max(260, 30 * n_heads + 120),
        title={"text": message or "Head scores (run an analyzer)", "font": {"size": 14}, "x": 0.01},
        plot_bgcolor="#f3f5f8",
        margin={"l": 50, "r": 10, "t": 40, "b": 45},
    )
    return fig


def score_grid_values(df: pd.DataFrame, n_layers: int, n_heads: int) -> dict[str, Any]:
    """z matrix (heads x layers), colour scale and range for a score column."""
    z = np.full((n_heads, n_layers), np.nan)
    z[df["head"].to_numpy(int), df["layer"].to_numpy(int)] = df["score"].to_numpy(float)
    finite = z[np.isfinite(z)]
    lo = float(finite.min()) if finite.size else 0.0
    hi = float(finite.max()) if finite.size else 1.0
    if lo < 0 < hi:
        bound = max(-lo, hi)
        scale, zmin, zmax = DIVERGING_SCALE, -bound, bound
    else:
        scale, zmin, zmax = SCORE_SCALE, min(lo, 0.0), hi if hi > lo else lo + 1.0
    zl = [[None if not np.isfinite(v) else round(float(v), 5) for v in row] for row in z]
    return {"z": zl, "colorscale": scale, "zmin": zmin, "zmax": zmax}


# -- interventions ---------------------------------------------------------------------------
def effects_figure(positions: pd.DataFrame, targets: Sequence[str]) -> go.Figure:
    """Per-position KL(base || intervened) of the next-token distribution, and each target's
    log-prob change (intervened - base) under it."""
    labels = token_labels(list(positions["token"]))
    rows = 2 if targets else 1
    fig = make_subplots(
        rows=rows,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.14,
        subplot_titles=(
            ["KL(base ‖ intervened), nats", "Δ log-prob of targets (intervened − base)"][:rows]
        ),
    )
    fig.add_trace(
        go.Bar(
            x=labels,
            y=positions["kl"].round(5),
            marker_color="#5c6bc0",
            name="KL",
            hovertemplate="after %{x}<br>KL %{y:.4f} nats<extra></extra>",
            showlegend=False,
        ),
        row=1,
        col=1,
    )
    palette = ["#d84315", "#2e7d32", "#6a1b9a", "#00838f", "#ef6c00"]
    for i, t in enumerate(targets):
        col = f"delta[{t}]"
        if col not in positions:
            continue
        fig.add_trace(
            go.Scatter(
                x=labels,
                y=positions[col].round(5),
                mode="lines+markers",
                name=f"target {t!r}",
                line={"color": palette[i % len(palette)]},
                hovertemplate="after %{x}<br>Δ log-prob %{y:.3f}<extra>" + repr(t) + "</extra>",
            ),
            row=2,
            col=1,
        )
    if targets:
        fig.add_hline(y=0, line={"color": "#bdbdbd", "width": 1}, row=2, col=1)
    fig.update_xaxes(
        tickangle=-60,
        tickfont={"size": 11},
        title_text="prompt token (the distribution is over the token after it)",
        row=rows,
        col=1,
    )
    base_layout(
        fig,
        height=300 + 180 * (rows - 1),
        showlegend=bool(targets),
        legend={"orientation": "h", "y": 1.0, "yanchor": "bottom", "x": 1.0, "xanchor": "right"},
        margin={"l": 60, "r": 20, "t": 60, "b": 130},
    )
    return fig
