"""Plotly figure of the cross-family agreement (:func:`workbench.analyzers.agreement`), shared by
the report, the app and notebooks: two families x families heatmaps side by side, the Spearman
correlation of the families' head scores (diverging, -1..1) and the overlap of their top-k sets
(Jaccard 0..1, each cell labelled with the shared-head count). Hovering a cell gives the
permutation p-value and the number of heads of the correlation, or the shared heads."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.analyzers.agreement import Agreement
from workbench.charts import FONT

#: Panels' colour scales: a diverging one centred on 0 for rho, a sequential one for overlap.
RHO_SCALE = "RdBu_r"
OVERLAP_SCALE = "Blues"


def _pair_text(result: Agreement, fmt) -> list[list[str]]:
    """Per-cell hover text from the pair rows (``fmt(row) -> str``); the diagonal says what it
    is."""
    names = list(result.families)
    out = [["" for _ in names] for _ in names]
    for row in result.pairs.itertuples(index=False):
        i, j = names.index(row.family_a), names.index(row.family_b)
        out[i][j] = out[j][i] = fmt(row)
    for i, name in enumerate(names):
        out[i][i] = f"{name}: top-{result.k} set of {len(result.top[name])} heads"
    return out


def agreement_figure(result: Agreement, *, title: str | None = None) -> go.Figure:
    """Two heatmaps of ``result`` (families in the order given, first at the top): Spearman rho
    of the head scores and the Jaccard overlap of the top-k sets, with the values written in
    the cells (rho to 2 decimals; overlap as the shared-head count over the Jaccard index; the
    diagonal: each family's own top-k set)."""
    names = list(result.families)
    rho = result.matrix("spearman").to_numpy()
    jac = result.matrix("jaccard").to_numpy()
    overlap = result.matrix("overlap").to_numpy()
    rho_text = [["n/a" if np.isnan(v) else f"{v:.2f}" for v in row] for row in rho]
    overlap_text = [
        [
            f"{int(o)}<br>{j:.2f}" if np.isfinite(j) else f"{int(o)}"
            for o, j in zip(ro, rj, strict=True)
        ]
        for ro, rj in zip(overlap, jac, strict=True)
    ]
    rho_hover = _pair_text(
        result,
        lambda r: (
            f"{r.family_a} / {r.family_b}: Spearman {r.spearman:.3f}, permutation "
            f"p = {r.p_value:.2g}, over {r.n_heads} heads"
        ),
    )
    overlap_hover = _pair_text(
        result,
        lambda r: (
            f"{r.family_a} / {r.family_b}: {r.overlap} shared of {r.top_a} and {r.top_b}"
            f" (Jaccard {r.jaccard:.2f}): {r.shared or 'none'}"
        ),
    )
    fig = make_subplots(
        rows=1,
        cols=2,
        horizontal_spacing=0.14,
        subplot_titles=("Spearman ρ of head scores", f"top-{result.k} overlap (Jaccard)"),
    )
    panels = (
        (rho, rho_text, rho_hover, RHO_SCALE, -1.0, 1.0, "ρ", 0.44),
        (jac, overlap_text, overlap_hover, OVERLAP_SCALE, 0.0, 1.0, "Jaccard", 1.0),
    )
    for col, (z, text, hover, scale, lo, hi, bar, x) in enumerate(panels, start=1):
        fig.add_trace(
            go.Heatmap(
                z=z,
                x=names,
                y=names,
                text=text,
                customdata=hover,
                texttemplate="%{text}",
                hovertemplate="%{customdata}<extra></extra>",
                colorscale=scale,
                zmin=lo,
                zmax=hi,
                colorbar={"title": {"text": bar}, "x": x, "xanchor": "left", "thickness": 12},
            ),
            row=1,
            col=col,
        )
        fig.update_yaxes(autorange="reversed", showticklabels=col == 1, row=1, col=col)
        fig.update_xaxes(tickangle=-40, row=1, col=col)
    size = 70 * len(names)
    fig.update_layout(
        title=title or f"Where head families meet ({result.model or 'model'}, k = {result.k})",
        font={"family": FONT},
        height=max(360, size + 200),
        width=max(760, 2 * size + 320),
        margin={"l": 120, "r": 80, "t": 80, "b": 110},
    )
    return fig
