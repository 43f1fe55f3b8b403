"""Figure builders of the app: pure functions from arrays / DataFrames to Plotly figures.

Conventions shared by every view:

* one attention colour scale (white -> dark blue, :data:`ATTN_SCALE`) for heatmaps, head
  thumbnails and the token view, always on the real 0..1 weight (the "contrast" option bends
  the colour scale, not the values, so hover and colour bars stay in attention units);
* head grids put layers on x and heads on y (H0 at the top), thumbnails and score grids alike;
* token labels show leading spaces as ``␣`` and newlines as ``⏎`` and carry their position.
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

ATTN_SCALE = "Blues"
SCORE_SCALE = "Viridis"
DIVERGING_SCALE = "RdBu_r"
SINK_COLOR = "#c62828"
MUTED = "#9e9e9e"
SELECT_COLOR = "#ff6f00"
MASKED = "#dde2e8"  # background of cells a query cannot see (causal mask)
FONT = "Inter, system-ui, -apple-system, Segoe UI, Roboto, sans-serif"

#: Sink thresholds (Gu et al. for the first token, ACT for later tokens).
FIRST_SINK = 0.3
HIDDEN_SINK = 0.1


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


def _base_layout(fig: go.Figure, **kwargs) -> go.Figure:
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
    return _base_layout(fig, height=height, margin={"l": 10, "r": 10, "t": 10, "b": 10})


# -- pooled maps -----------------------------------------------------------------------------
def pooled_to_mass(pooled: np.ndarray, n_keys: int, block: int) -> np.ndarray:
    """Kernel pooled tiles (mean over the tile's cells) -> attention mass a query of the row
    block puts on the key block (mean over the block's queries; rows sum to 1)."""
    nk = pooled.shape[-1]
    widths = np.array([min(block, n_keys - j * block) for j in range(nk)], dtype=np.float32)
    return pooled * widths


def regroup_mass(mass: np.ndarray, n_tokens: int, block: int, factor: int) -> np.ndarray:
    """Merge ``factor`` x ``factor`` pooled blocks: sum over merged key blocks, row-weighted mean
    over merged query blocks (exact for the mass of :func:`pooled_to_mass`)."""
    if factor <= 1:
        return mass
    n = mass.shape[-1]
    rows = np.array([min(block, n_tokens - i * block) for i in range(n)], dtype=np.float64)
    m = -(-n // factor)
    out = np.zeros((*mass.shape[:-2], m, m), dtype=np.float64)
    for gi in range(m):
        r0, r1 = gi * factor, min(n, (gi + 1) * factor)
        w = rows[r0:r1] / rows[r0:r1].sum()
        block_rows = np.tensordot(w, mass[..., r0:r1, :], axes=([0], [-2]))  # (..., n)
        for gj in range(m):
            out[..., gi, gj] = block_rows[..., gj * factor : (gj + 1) * factor].sum(-1)
    return out.astype(np.float32)


def thumbnail_grid_figure(
    thumbs: np.ndarray,
    contrast: str = "sqrt",
    selected: tuple[int, int] | None = None,
    title: str = "",
) -> go.Figure:
    """All heads at once: a (layers x heads) mosaic of block-pooled maps, one trace.

    ``thumbs`` is (n_layers, n_heads, n, n). Tile of head (l, h) covers x in l +- 0.45 and
    y in h +- 0.45, so hover and clicks round to the head.
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
        fixedrange=True,
        tickfont={"size": 10},
    )
    fig.update_yaxes(
        tickvals=list(range(n_heads)),
        ticktext=[f"H{i}" for i in range(n_heads)],
        range=[n_heads - 0.45, -0.55],
        showgrid=False,
        zeroline=False,
        title_text="head",
        fixedrange=True,
    )
    _base_layout(
        fig,
        height=max(260, 44 * n_heads + 110),
        title={"text": title, "font": {"size": 14}, "x": 0.01},
        margin={"l": 50, "r": 10, "t": 40, "b": 45},
        shapes=selection_shapes(selected),
        clickmode="event",
    )
    return fig


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


# -- one head --------------------------------------------------------------------------------
def sink_colors(sink: np.ndarray, offset: int = 0) -> list[str]:
    """Red for keys above the sink threshold (0.3 for position 0, 0.1 after), grey otherwise."""
    out = []
    for i, s in enumerate(sink):
        pos = offset + i
        thr = FIRST_SINK if pos == 0 else HIDDEN_SINK
        out.append(SINK_COLOR if s > thr else MUTED)
    return out


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
) -> go.Figure:
    """Query x key heatmap of one head with token labels on both axes, a strip of the keys'
    sink scores above it (sinks in red), and the selected query row outlined.

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
        fig.add_trace(
            go.Bar(
                x=list(key_labels),
                y=np.round(sink, 4),
                marker_color=sink_colors(sink),
                hovertemplate="key %{x}<br>" + sink_name + " %{y:.3f}<extra></extra>",
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
    _base_layout(
        fig,
        height=height,
        title={"text": title, "font": {"size": 14}, "x": 0.01},
        margin={"l": 110, "r": 20, "t": 50, "b": 110},
        shapes=query_row_shapes(query_row),
        bargap=0.15,
        plot_bgcolor=MASKED,
    )
    return fig


def causal_visibility(query_positions: np.ndarray, key_positions: np.ndarray) -> np.ndarray:
    """(W, Lk) bool: key position <= query position (what a causal LM's query can see)."""
    return np.asarray(key_positions)[None, :] <= np.asarray(query_positions)[:, None]


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
    _base_layout(
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


def causal_figure(causal: dict[str, Any]) -> go.Figure:
    """How much the task metric moves when the top-k heads are ablated vs k random heads of the
    same layers (bars: change from the unablated value; dots: each random draw)."""
    k = causal.get("k", "k")
    base = causal.get("base")
    names = [f"top-{k} heads ablated", f"random-{k} ablated (mean)"]

    def delta(v):
        return None if v is None or base is None else v - base

    values = [delta(causal.get("top_k")), delta(causal.get("random_k_mean"))]
    fig = go.Figure(
        go.Bar(
            x=names,
            y=values,
            marker_color=["#d84315", "#5c6bc0"],
            text=[f"{v:+.4g}" if v is not None else "" for v in values],
            textposition="outside",
            cliponaxis=False,
            hovertemplate="%{x}: change %{y:+.4f}<extra></extra>",
            showlegend=False,
        )
    )
    draws = [delta(v) for v in causal.get("random_k") or []]
    if draws:
        fig.add_trace(
            go.Scatter(
                x=[names[1]] * len(draws),
                y=draws,
                mode="markers",
                marker={"color": "#1a237e", "size": 9, "symbol": "circle-open"},
                name="each random draw",
                hovertemplate="draw %{pointNumber}: change %{y:+.4f}<extra></extra>",
            )
        )
    fig.add_hline(y=0, line={"color": "#616161", "width": 1})
    better = "higher is better" if causal.get("higher_is_better", True) else "lower is better"
    base_text = f"{base:.4g}" if isinstance(base, int | float) else "?"
    fig.update_yaxes(title_text="change vs unablated", zeroline=False)
    _base_layout(
        fig,
        height=340,
        title={
            "text": (
                f"Causal check: {causal.get('metric', 'metric')}<br><sup>"
                f"{causal.get('mode', '')} ablation · unablated {base_text} · {better}</sup>"
            ),
            "font": {"size": 14},
            "x": 0.01,
            "y": 0.96,
            "yanchor": "top",
        },
        showlegend=bool(draws),
        legend={"orientation": "h", "y": -0.15},
        margin={"l": 70, "r": 10, "t": 75, "b": 50},
    )
    return fig


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
    _base_layout(
        fig,
        height=300 + 180 * (rows - 1),
        showlegend=bool(targets),
        legend={"orientation": "h", "y": 1.0, "yanchor": "bottom", "x": 1.0, "xanchor": "right"},
        margin={"l": 60, "r": 20, "t": 60, "b": 130},
    )
    return fig
