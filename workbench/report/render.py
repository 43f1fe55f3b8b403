"""The report's figures: one self-contained HTML file (plotly.js inline, opens offline) and
print-size copies of its figures as PNG, SVG and/or PDF (:mod:`workbench.figure_export`:
kaleido driving the system Chromium)."""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from workbench.analyzers.base import QUICK_NOTE
from workbench.figure_export import find_chromium  # also imported from here by callers
from workbench.print_layout import SVG_BUTTON
from workbench.report.assemble import agreement_tables, evidence_summary
from workbench.report.store import atomic_write
from workbench.report.text import brief_line, evidence_lines
from workbench.serialize import jsonable

#: Causal panels to a row in the figure files (two fit a double column; the HTML has four).
PRINT_CAUSAL_PER_ROW = 2
#: Their rows' spacing (fraction of the plot height): room for two-line tick labels above
#: the next row's panel titles when a tall grid is shrunk to a page.
PRINT_CAUSAL_SPACING = 0.14

Results = Mapping[str, Mapping[str, pd.DataFrame]]


def grid_figure(analyzer: str, results: Results):
    """Layer x head heatmaps of one analyzer's score, one panel per model, side by side."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    models = [m for m in results if analyzer in results[m]]
    fig = make_subplots(rows=1, cols=len(models), subplot_titles=models, horizontal_spacing=0.08)
    for i, model in enumerate(models, start=1):
        df = results[model][analyzer]
        n_layers, n_heads = int(df["layer"].max()) + 1, int(df["head"].max()) + 1
        z = np.full((n_layers, n_heads), np.nan)
        z[df["layer"].to_numpy(), df["head"].to_numpy()] = df["score"].to_numpy(dtype=float)
        text = np.empty((n_layers, n_heads), dtype=object)
        text[df["layer"].to_numpy(), df["head"].to_numpy()] = df["head_id"].to_numpy()
        interval = {}
        if {"score_lo", "score_hi"} <= set(df.columns):  # hover shows the score's interval
            span = np.full((n_layers, n_heads, 2), np.nan)
            span[df["layer"].to_numpy(), df["head"].to_numpy()] = df[
                ["score_lo", "score_hi"]
            ].to_numpy(dtype=float)
            interval = {"customdata": span}
        hover = " [%{customdata[0]:.4f}, %{customdata[1]:.4f}]" if interval else ""
        fig.add_trace(
            go.Heatmap(
                z=z,
                text=text,
                **interval,
                hovertemplate="%{text}: %{z:.4f}" + hover + "<extra></extra>",
                colorscale="Viridis",
                showscale=i == len(models),
            ),
            row=1,
            col=i,
        )
        fig.update_xaxes(title_text="head", row=1, col=i)
        fig.update_yaxes(title_text="layer", autorange="reversed", row=1, col=i)
    fig.update_layout(
        title=f"{analyzer}: score per head", height=620, width=max(460, 380 * len(models))
    )
    return fig


def atlas_figure(results: Results):
    """The head atlas embedding (PCA of standardised features), coloured by cluster."""
    from plotly.subplots import make_subplots

    from workbench.atlas_charts import atlas_traces

    models = [m for m in results if "atlas" in results[m]]
    if not models:
        return None
    fig = make_subplots(rows=1, cols=len(models), subplot_titles=models)
    for i, model in enumerate(models, start=1):
        prefix = f"{model}: " if len(models) > 1 else ""
        for trace in atlas_traces(results[model]["atlas"], prefix):
            fig.add_trace(trace, row=1, col=i)
        fig.update_xaxes(title_text="PC 1", row=1, col=i)
        fig.update_yaxes(title_text="PC 2", row=1, col=i)
    fig.update_layout(
        title="Head atlas (hover a point for its head id)",
        height=620,
        width=max(760, 620 * len(models)),
        legend={"orientation": "h", "x": 0.5, "xanchor": "center", "y": -0.15},
    )
    return fig


def example_figure(example: Mapping[str, Any]):
    """One head's attention map on the example prompt."""
    import plotly.graph_objects as go

    tokens = [f"{i}:{t}" for i, t in enumerate(example["tokens"])]
    fig = go.Figure(
        go.Heatmap(z=example["map"], x=tokens, y=tokens, colorscale="Blues", showscale=False)
    )
    fig.update_layout(
        title=f"{example['model']} {example['head_id']} ({example['analyzer']})",
        height=420,
        width=440,
        yaxis={"autorange": "reversed", "title": "query"},
        xaxis={"title": "key", "showticklabels": len(tokens) <= 24},
        margin={"l": 40, "r": 10, "t": 40, "b": 40},
    )
    return fig


def _print_copy(fig, **layout: Any):
    """A copy of ``fig`` with ``layout`` changes (the print copy of an HTML figure)."""
    import plotly.graph_objects as go

    out = go.Figure(fig)
    out.update_layout(**layout)
    return out


#: Columns of the causal table on the page (``evidence/causal.parquet`` holds them all).
CAUSAL_PAGE_COLUMNS = (
    "model",
    "analyzer",
    "metric",
    "k",
    "draws",
    "items",
    "base",
    "top_k",
    "random_k_mean",
    "effect_top",
    "effect_top_lo",
    "effect_top_hi",
    "effect_random",
    "ratio",
    "p_value",
    "verdict",
)
#: Leading columns of a top-heads table: the score with its interval.
SCORE_COLUMNS = ("head_id", "score", "score_lo", "score_hi")
#: Columns of a top-heads table in all.
TOP_COLUMNS = 8


def top_table(df: pd.DataFrame, top_n: int) -> pd.DataFrame:
    """The ``top_n`` best heads of an analyzer's table: head id, score and its interval
    (``score_lo``, ``score_hi``) first, then evidence columns up to :data:`TOP_COLUMNS`."""
    lead = [c for c in SCORE_COLUMNS if c in df.columns]
    rest = [c for c in df.columns if c not in (*lead, "layer", "head")]
    cols = lead + rest[: max(TOP_COLUMNS - len(lead), 0)]
    return df.sort_values("score", ascending=False, kind="stable").head(top_n)[cols]


def _lines(lines: Sequence[str], cls: str = "ev") -> str:
    items = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
    return f"<ul class='{cls}'>{items}</ul>" if lines else ""


def _grid_caption(analyzer: str, results: Results) -> str:
    """Under a layer x head grid: each model's split-half stability and causal verdict."""
    lines = []
    for model, frames in results.items():
        if analyzer in frames:
            line = brief_line(frames[analyzer].attrs)
            if line:
                lines.append(f"{model}: {line}")
    return _lines(lines)


def _evidence_section(results: Results) -> list[str]:
    """Per (model, analyzer): items, split-half stability, causal verdict and interval."""
    table = evidence_summary(results)
    if table.empty:
        return []
    return [
        "<h2 id='evidence'>How far to trust each family</h2>",
        "<p>Split-half stability: Spearman of the head scores from two disjoint halves of the "
        "task items (mean and minimum over random splits) and the overlap of their top-k sets. "
        "Causal: the top-k heads ablated against random same-layer sets (empirical p-value, "
        "bootstrap interval of the top-k effect over items; positive effect = hurts).</p>",
        f"<div class='wide'>{_table(verdict_last(table), 'tbl evidence')}</div>",
    ]


def _agreement_section(results: Results, figures: dict[str, Any], k: int) -> list[str]:
    """Where the families meet (:func:`workbench.analyzers.agreement`), per model with two or
    more: the heatmaps (figure ``agreement``, ``agreement_<j>`` for the j-th further model), the
    pair table and the heads in several top-k sets."""
    from workbench.agreement_charts import agreement_figure

    tables = agreement_tables(results, k)
    parts = ["<h2 id='agreement'>Where the families meet</h2>"] if tables else []
    for j, (model, found) in enumerate(tables.items()):
        name = f"agreement_{j}" if j else "agreement"
        figures[name] = fig = agreement_figure(found, title=f"{model}: where the families meet")
        labels = found.labels.drop(columns=["layer", "head"])
        parts += [
            f"<section class='agreement' data-model='{html.escape(model)}'>",
            f"<p>{html.escape(model)}: top-{found.k} sets (ties at the k-th score left out) and "
            f"Spearman correlation over the heads both score (permutation p-value, "
            f"{found.permutations} shuffles; heads are not independent samples).</p>",
            _div(fig, f"agreement-{j}"),
            f"<div class='wide'>{_table(found.pairs, 'tbl agreement-pairs')}</div>",
            "<h3>Heads in several top-k sets</h3>",
            _table(labels, "tbl agreement-labels") if len(labels) else "<p>None.</p>",
            "</section>",
        ]
    return parts


def verdict_last(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with its ``verdict`` column (a sentence) last, where the page's style lets it
    take the width it needs."""
    if "verdict" not in table.columns:
        return table
    return table[[*table.columns.drop("verdict"), "verdict"]]


def _table(df: pd.DataFrame, cls: str = "tbl") -> str:
    return df.to_html(index=False, classes=cls, border=0, float_format=lambda v: f"{v:.4g}")


def _div(fig, div_id: str) -> str:
    config = {"displaylogo": False, "toImageButtonOptions": dict(SVG_BUTTON)}
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config=config)


STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1500px}
h1{font-size:22px} h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}
.tbl{border-collapse:collapse;font-size:12px;margin:8px 0}
.tbl td,.tbl th{padding:2px 8px;border-bottom:1px solid #eee;text-align:right}
.wide{overflow-x:auto}
.evidence td:last-child{min-width:26em;text-align:left}
.row{display:flex;flex-wrap:wrap;gap:8px} pre{font-size:11px;background:#f6f6f6;padding:8px}
.ev{font-size:12px;color:#333;margin:4px 0 12px 0}
.warn{background:#fff3e0;border-left:4px solid #e65100;padding:8px 12px;font-weight:600}
"""


def render_html(
    path: Path,
    results: Results,
    causal: pd.DataFrame,
    examples: Sequence[Mapping[str, Any]],
    summary: Mapping[str, Any],
    top_n: int = 10,
) -> dict[str, Any]:
    """Write the self-contained report; returns its figures by name for the figure files
    (:func:`write_figures`): ``grid_<analyzer>``, ``atlas``, ``causal`` (laid out for print,
    :data:`PRINT_CAUSAL_PER_ROW` panels to a row) and ``map_<analyzer>_<j>``."""
    from plotly.offline import get_plotlyjs

    from workbench.charts import causal_grid_figure  # plotly is an optional extra

    analyzers = list(dict.fromkeys(a for frames in results.values() for a in frames))
    quick = bool((summary.get("params") or {}).get("quick")) or any(
        df.attrs.get("quick") for frames in results.values() for df in frames.values()
    )
    figures: dict[str, Any] = {}
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        "<title>Attention-head report</title>",
        f"<style>{STYLE}</style>",
        f"<script type='text/javascript'>{get_plotlyjs()}</script>",
        "</head><body>",
        "<h1>Attention-head report</h1>",
        f"<p>Models: {html.escape(', '.join(results))}. Analyzers: "
        f"{html.escape(', '.join(analyzers))}.</p>",
        *([f"<p class='warn' id='quick'>{html.escape(QUICK_NOTE)}</p>"] if quick else []),
        *_evidence_section(results),
        "<h2 id='grids'>Layer x head grids</h2>",
        "<div class='row'>",
    ]
    for analyzer in analyzers:
        fig = grid_figure(analyzer, results)
        figures[f"grid_{analyzer}"] = fig
        parts.append(f"<section class='grid' data-analyzer='{html.escape(analyzer)}'>")
        parts.append(_div(fig, f"grid-{analyzer}"))
        parts.append(_grid_caption(analyzer, results))
        parts.append("</section>")
    parts.append("</div>")
    atlas = atlas_figure(results)
    if atlas is not None:
        figures["atlas"] = _print_copy(atlas, title="Head atlas: PCA of standardised head features")
        parts += ["<h2 id='atlas'>Head atlas</h2>", _div(atlas, "atlas")]
    parts += _agreement_section(results, figures, top_n)
    parts.append("<h2 id='causal'>Causal evidence</h2>")
    fig = causal_grid_figure(causal)
    if fig is not None:
        figures["causal"] = causal_grid_figure(
            causal, per_row=PRINT_CAUSAL_PER_ROW, vertical_spacing=PRINT_CAUSAL_SPACING
        )
        shown = causal[[c for c in CAUSAL_PAGE_COLUMNS if c in causal.columns]]
        parts += [_div(fig, "causal-chart"), _table(shown)]
    else:
        parts.append("<p>No causal checks in this report.</p>")
    parts.append("<h2 id='top'>Top heads</h2>")
    for analyzer in analyzers:
        for model, frames in results.items():
            if analyzer not in frames:
                continue
            df = frames[analyzer]
            parts.append(f"<h3>{html.escape(analyzer)} - {html.escape(model)}</h3>")
            parts.append(_lines(evidence_lines(df.attrs)))
            parts.append(_table(top_table(df, top_n)))
        maps = [e for e in examples if e["analyzer"] == analyzer]
        if maps:
            parts.append("<div class='row'>")
            for j, example in enumerate(maps):
                fig = example_figure(example)
                figures[f"map_{analyzer}_{j}"] = fig
                parts.append(_div(fig, f"map-{analyzer}-{j}"))
            parts.append("</div>")
    parts += [
        "<h2 id='params'>Run parameters</h2>",
        f"<pre>{html.escape(json.dumps(jsonable(summary.get('params', {})), indent=1))}</pre>",
        "<h2 id='versions'>Software versions</h2>",
        f"<pre>{html.escape(json.dumps(summary.get('versions', {}), indent=1))}</pre>",
        "</body></html>",
    ]
    atomic_write(path, "\n".join(parts).encode())
    return figures


def write_figures(
    folder: Path,
    figures: Mapping[str, Any],
    formats: Iterable[str] | str = ("png",),
    **options: Any,
) -> dict[str, Any]:
    """Print-size copies of ``figures`` as ``folder/<name>.<fmt>`` for each of ``formats``
    (``png``, ``svg``, ``pdf``; a list or ``"png,svg"``), drawn by kaleido in the system
    Chromium (never a downloaded one). ``options``: ``width_mm`` (default 183, a double
    column), ``height_mm``, ``font_pt``, ``dpi`` of :func:`workbench.figure_export.export_figure`.

    Returns ``{"written": [...], "browser": path, "formats": [...]}``, or ``{"skipped":
    reason}`` when no Chromium/kaleido is here or drawing fails (the tables are never lost
    for a figure). Bad ``formats`` or ``options`` raise :class:`~workbench.errors.WorkbenchError`.
    """
    from workbench.figure_export import (
        ExportError,
        export_figures,
        figure_formats,
        unavailable_reason,
    )

    formats = figure_formats(formats)
    if not formats:
        return {"skipped": "no figure formats asked for"}
    reason = unavailable_reason()
    if reason is not None:
        return {"skipped": reason}
    try:
        paths = export_figures(folder, figures, formats, **options)
    except ExportError as exc:  # browser / kaleido failures must not lose the tables
        return {"skipped": str(exc)}
    return {
        "written": [p.name for p in paths],
        "browser": find_chromium(),
        "formats": list(formats),
    }


def write_pngs(folder: Path, figures: Mapping[str, Any]) -> dict[str, Any]:
    """PNG copies of ``figures`` at print size (:func:`write_figures` with ``png`` only)."""
    return write_figures(folder, figures, ("png",))
