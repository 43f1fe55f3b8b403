"""Plotly figures shared by every face (app, report, notebooks): the causal-evidence chart.

Causal evidence (``df.attrs["causal"]``, see :func:`workbench.analyzers.causal.causal_evidence`)
is a task metric measured three times: nothing ablated (the base), the top-k heads ablated, and
k random heads of the same layers ablated (several draws). One chart shows it everywhere: bars
on the metric's own axis that start at the base (a reference line) and end at the ablated
value, so both the absolute values and the change are read off; a second y axis on the right,
aligned with the first, gives the change from the base, and each random draw is a dot on it.
The traces hold the changes (``y``) and the base (``base``): bar ``i`` spans
``base .. base + y[i]``.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.serialize import finite_or_none

TOP_COLOR = "#d84315"
RANDOM_COLOR = "#5c6bc0"
DRAW_COLOR = "#1a237e"
BASE_COLOR = "#616161"
FONT = "Inter, system-ui, -apple-system, Segoe UI, Roboto, sans-serif"
#: Panels per row of :func:`causal_grid_figure`.
CAUSAL_PANELS_PER_ROW = 4


def _effect_interval(causal: Mapping[str, Any]) -> tuple[float | None, float | None]:
    """The top-k effect's bootstrap interval of a causal check, or Nones."""
    return finite_or_none(causal.get("effect_top_lo")), finite_or_none(causal.get("effect_top_hi"))


def _draws(value: Any) -> list[float]:
    """Random-k draws as floats: a list, or the report table's comma-joined string."""
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    return [v for v in (finite_or_none(x) for x in value or []) if v is not None]


def _axis_range(values: Sequence[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    pad = 0.18 * (hi - lo) if hi > lo else 0.1 * max(abs(hi), 1.0)
    return lo - pad, hi + pad


def add_causal_panel(
    fig: go.Figure, causal: Mapping[str, Any], row: int = 1, col: int = 1, legend: bool = True
) -> None:
    """Draw one causal check into the subplot ``(row, col)`` of ``fig`` (made with
    ``secondary_y`` specs): a bar per ablation from the base to its value, the base line, and
    the random draws on the right-hand "change" axis.

    Args:
        causal: ``k``, ``base``, ``top_k``, ``random_k_mean`` and ``random_k`` (list of draws,
            or a comma-joined string as in the report's causal table).
        legend: show the "each random draw" legend entry (once per figure).
    """
    k = causal.get("k", "k")
    base = finite_or_none(causal.get("base"))
    ref = base if base is not None else 0.0
    names = [f"top-{k} heads ablated", f"random-{k} ablated (mean)"]
    values = [finite_or_none(causal.get("top_k")), finite_or_none(causal.get("random_k_mean"))]
    deltas = [None if v is None or base is None else v - base for v in values]
    fig.add_trace(
        go.Bar(
            x=names,
            y=deltas,
            error_y=_top_interval(causal, deltas[0]),
            base=[ref, ref],
            customdata=[v if v is not None else float("nan") for v in values],
            marker_color=[TOP_COLOR, RANDOM_COLOR],
            text=[
                "" if v is None or d is None else f"{v:.4g} ({d:+.3g})"
                for v, d in zip(values, deltas, strict=True)
            ],
            textposition="outside",
            cliponaxis=False,
            hovertemplate="%{x}: %{customdata:.4f} (change %{y:+.4f})<extra></extra>",
            showlegend=False,
        ),
        row=row,
        col=col,
        secondary_y=False,
    )
    draws = _draws(causal.get("random_k"))
    fig.add_trace(
        go.Scatter(
            x=[names[1]] * len(draws),
            y=[d - ref for d in draws],
            customdata=draws,
            mode="markers",
            marker={"color": DRAW_COLOR, "size": 9, "symbol": "circle-open"},
            name="each random draw",
            legendgroup="draws",
            showlegend=legend and bool(draws),
            hovertemplate="draw %{pointNumber}: %{customdata:.4f} (change %{y:+.4f})"
            "<extra></extra>",
        ),
        row=row,
        col=col,
        secondary_y=True,
    )
    lo, hi = _axis_range([ref, *(v for v in values if v is not None), *draws])
    fig.add_hline(
        y=ref,
        line={"color": BASE_COLOR, "width": 1.5, "dash": "dash"},
        row=row,
        col=col,
        secondary_y=False,
    )
    fig.update_yaxes(range=[lo, hi], fixedrange=True, row=row, col=col, secondary_y=False)
    changes = _round_ticks(lo - ref, hi - ref)
    fig.update_yaxes(
        range=[lo - ref, hi - ref],
        fixedrange=True,
        showgrid=False,
        zeroline=False,
        tickvals=changes,
        ticktext=[f"{v:+.3g}" if v else "0" for v in changes],
        row=row,
        col=col,
        secondary_y=True,
    )
    fig.update_xaxes(fixedrange=True, row=row, col=col)


def _top_interval(causal: Mapping[str, Any], delta: float | None) -> dict[str, Any]:
    """Error bar of the top-k bar: the bootstrap interval over items of the top-k effect
    (``effect_top_lo/hi``, see :func:`workbench.analyzers.uncertainty.causal_significance`),
    drawn on the bar's change axis; nothing when the check has no item-level values."""
    lo, hi = _effect_interval(causal)
    if lo is None or hi is None or delta is None:
        return {"visible": False}
    sign = 1.0 if causal.get("higher_is_better", True) else -1.0
    # effect = sign * (base - top), so top - base = -sign * effect
    ends = sorted((-sign * lo, -sign * hi))
    return {
        "type": "data",
        "symmetric": False,
        "array": [max(ends[1] - delta, 0.0), 0.0],
        "arrayminus": [max(delta - ends[0], 0.0), 0.0],
        "color": "#212121",
        "thickness": 1.5,
        "width": 8,
    }


def verdict_line(causal: Mapping[str, Any], sep: str = "; ") -> str:
    """The check's one-line verdict with its interval (after ``sep``), for titles and tables;
    "" when the check predates significance testing."""
    verdict = causal.get("verdict")
    if not verdict:
        return ""
    lo, hi = _effect_interval(causal)
    level = finite_or_none(causal.get("level")) or 0.95
    if lo is None or hi is None:
        return str(verdict)
    return f"{verdict}{sep}top-k effect {level:.0%} CI [{lo:.3g}, {hi:.3g}]"


#: Characters per verdict line above one panel of :func:`causal_grid_figure` (~340 px wide).
GRID_TITLE_CHARS = 46
#: Characters per line of a causal chart's heading (14 px type).
HEADING_CHARS = 40
#: Characters per line of a causal chart's metric axis title.
AXIS_TITLE_CHARS = 22
#: Characters per title line of a causal chart: the app's panel is ~360 px wide.
TITLE_CHARS = 56


def _title_lines(text: str, width: int = TITLE_CHARS) -> list[str]:
    """``text`` (lines separated by newlines) wrapped at ``width`` characters per line."""
    return [part for line in text.split("\n") for part in textwrap.wrap(line, width)]


def _round_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values in ``[lo, hi]`` (steps of 1, 2 or 5 x 10^k), 0 included
    when it lies inside, so the change axis reads 0 at the unablated value."""
    span = max(hi - lo, 1e-12)
    raw = span / n
    base = 10 ** math.floor(math.log10(raw))
    step = next(m * base for m in (1, 2, 5, 10) if m * base >= raw)
    first = math.ceil(lo / step)
    ticks = [round(i * step, 12) for i in range(first, math.floor(hi / step) + 1)]
    return [0.0 if abs(t) < step * 1e-9 else t for t in ticks]


def causal_figure(causal: Mapping[str, Any], height: int = 340) -> go.Figure:
    """One analyzer's causal check (``df.attrs["causal"]``) as the shared causal chart."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    add_causal_panel(fig, causal)
    better = "higher is better" if causal.get("higher_is_better", True) else "lower is better"
    base = finite_or_none(causal.get("base"))
    base_text = f"{base:.4g}" if base is not None else "?"
    metric = causal.get("metric", "metric")
    heading = _title_lines(f"Causal check: {metric}", HEADING_CHARS)  # a narrow panel too
    verdict = _title_lines(verdict_line(causal, sep="\n"))
    # the axis title is the metric's name only (its details are in the chart title) and wraps:
    # a long one ran past the short plot into the title lines
    axis_title = "<br>".join(textwrap.wrap(str(metric).split(",")[0], AXIS_TITLE_CHARS))
    fig.update_yaxes(title_text=axis_title, zeroline=False, secondary_y=False)
    fig.update_yaxes(title_text="change", secondary_y=True)
    fig.update_layout(
        font={"family": FONT, "size": 12},
        paper_bgcolor="white",
        plot_bgcolor="white",
        height=height,
        title={
            "text": (
                "<br>".join(heading)
                + f"<br><sup>{causal.get('mode', '')} ablation · unablated {base_text} (dashed)"
                f" · {better}</sup>" + "".join(f"<br><sup>{line}</sup>" for line in verdict)
            ),
            "font": {"size": 14},
            "x": 0.01,
            "y": 0.96,
            "yanchor": "top",
        },
        showlegend=bool(_draws(causal.get("random_k"))),
        legend={"orientation": "h", "y": -0.15},
        margin={"l": 70, "r": 60, "t": 55 + 20 * len(heading) + 16 * len(verdict), "b": 50},
    )
    return fig


def causal_grid_figure(
    table: pd.DataFrame,
    per_row: int = CAUSAL_PANELS_PER_ROW,
    vertical_spacing: float | None = None,
) -> go.Figure | None:
    """Several causal checks side by side (the report): one panel per row of ``table``
    (:func:`workbench.report.assemble.causal_table`: ``model``, ``analyzer``, ``metric``,
    ``k``, ``base``, ``top_k``, ``random_k_mean``, ``random_k``), ``per_row`` panels to a row
    (four on screen; two fit a printed double column, see :mod:`workbench.figure_export`),
    rows ``vertical_spacing`` (a fraction of the plot height) apart. None when ``table`` is
    empty."""
    from probes.checks import integer, number, optional

    per_row = integer("per_row", per_row, minimum=1)
    vertical_spacing = optional(number, "vertical_spacing", vertical_spacing, minimum=0, below=1)
    if table.empty:
        return None
    rows = table.to_dict("records")
    several_models = table["model"].nunique() > 1 if "model" in table else False
    verdicts = [
        _title_lines(r["verdict"], GRID_TITLE_CHARS)
        if isinstance(r.get("verdict"), str) and r["verdict"]
        else []
        for r in rows
    ]  # wrapped to the panel's width: a long one ran into its neighbours' titles
    titles = [
        f"{r['analyzer']}<br><sup>{r.get('metric')}"
        + (f" · {r['model']}" if several_models else "")
        + "".join(f"<br>{line}" for line in lines)
        + "</sup>"
        for r, lines in zip(rows, verdicts, strict=True)
    ]
    extra = 14 * max(map(len, verdicts))  # pixels the wrapped verdicts add above each panel
    height = 140 + (380 + extra) * math.ceil(len(rows) / min(per_row, len(rows)))
    ncols = min(per_row, len(rows))
    nrows = math.ceil(len(rows) / ncols)
    spacing = vertical_spacing if vertical_spacing is not None else 0.5 / (nrows * 2)
    fig = make_subplots(
        rows=nrows,
        cols=ncols,
        subplot_titles=titles,
        specs=[[{"secondary_y": True}] * ncols for _ in range(nrows)],
        horizontal_spacing=0.12,
        vertical_spacing=min(spacing, 1 / (nrows - 1)) if nrows > 1 else 0.0,
    )
    for i, row in enumerate(rows):
        r, c = divmod(i, ncols)
        add_causal_panel(fig, row, r + 1, c + 1, legend=i == 0)
    fig.update_layout(
        title={  # pinned to the top: the panels' titles grow upwards with their verdicts
            "text": "Causal evidence: top-k vs k random same-layer heads ablated<br><sup>bars "
            "from the unablated value (dashed) to the ablated one; right axes: change</sup>",
            "yref": "container",
            "y": 1 - 36 / height,
            "yanchor": "top",
        },
        font={"family": FONT, "size": 12},
        plot_bgcolor="white",
        height=height,
        width=max(640, 340 * ncols),
        legend={
            "orientation": "h",
            "x": 1.0,
            "xanchor": "right",
            "yref": "container",
            "y": 0.99,
            "yanchor": "top",
        },
        margin={"t": 150 + extra, "b": 110},
    )
    return fig
