"""The report's figures: one self-contained HTML file (plotly.js inline, opens offline) and
PNG copies of the main figures (kaleido driving the system Chromium)."""

from __future__ import annotations

import html
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from workbench.report.store import atomic_write
from workbench.serialize import jsonable

CHROMIUM_CANDIDATES = (
    "/usr/bin/chromium",
    "/usr/bin/chromium-browser",
    "/usr/bin/google-chrome",
    "/usr/bin/google-chrome-stable",
)

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
        fig.add_trace(
            go.Heatmap(
                z=z,
                text=text,
                hovertemplate="%{text}: %{z:.4f}<extra></extra>",
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
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    models = [m for m in results if "atlas" in results[m]]
    if not models:
        return None
    fig = make_subplots(rows=1, cols=len(models), subplot_titles=models)
    for i, model in enumerate(models, start=1):
        df = results[model]["atlas"]
        for label, part in df.groupby("cluster_label", sort=True):
            fig.add_trace(
                go.Scatter(
                    x=part["x"],
                    y=part["y"],
                    mode="markers",
                    name=f"{model}: {label}" if len(models) > 1 else str(label),
                    text=part["head_id"],
                    hovertemplate="%{text}<extra>" + html.escape(str(label)) + "</extra>",
                ),
                row=1,
                col=i,
            )
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


def _table(df: pd.DataFrame, cls: str = "tbl") -> str:
    return df.to_html(index=False, classes=cls, border=0, float_format=lambda v: f"{v:.4g}")


def _div(fig, div_id: str) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id)


STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1500px}
h1{font-size:22px} h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}
.tbl{border-collapse:collapse;font-size:12px;margin:8px 0}
.tbl td,.tbl th{padding:2px 8px;border-bottom:1px solid #eee;text-align:right}
.row{display:flex;flex-wrap:wrap;gap:8px} pre{font-size:11px;background:#f6f6f6;padding:8px}
"""


def render_html(
    path: Path,
    results: Results,
    causal: pd.DataFrame,
    examples: Sequence[Mapping[str, Any]],
    summary: Mapping[str, Any],
    top_n: int = 10,
) -> dict[str, Any]:
    """Write the self-contained report; returns the main figures by name (for PNGs)."""
    from plotly.offline import get_plotlyjs

    from workbench.charts import causal_grid_figure  # plotly is an optional extra

    analyzers = list(dict.fromkeys(a for frames in results.values() for a in frames))
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
        "<h2 id='grids'>Layer x head grids</h2>",
        "<div class='row'>",
    ]
    for analyzer in analyzers:
        fig = grid_figure(analyzer, results)
        figures[f"grid_{analyzer}"] = fig
        parts.append(f"<section class='grid' data-analyzer='{html.escape(analyzer)}'>")
        parts.append(_div(fig, f"grid-{analyzer}"))
        parts.append("</section>")
    parts.append("</div>")
    atlas = atlas_figure(results)
    if atlas is not None:
        figures["atlas"] = atlas
        parts += ["<h2 id='atlas'>Head atlas</h2>", _div(atlas, "atlas")]
    parts.append("<h2 id='causal'>Causal evidence</h2>")
    fig = causal_grid_figure(causal)
    if fig is not None:
        figures["causal"] = fig
        parts += [_div(fig, "causal-chart"), _table(causal)]
    else:
        parts.append("<p>No causal checks in this report.</p>")
    parts.append("<h2 id='top'>Top heads</h2>")
    for analyzer in analyzers:
        for model, frames in results.items():
            if analyzer not in frames:
                continue
            df = frames[analyzer]
            cols = [c for c in df.columns if c not in ("layer", "head")][:8]
            best = df.sort_values("score", ascending=False, kind="stable").head(top_n)[cols]
            parts.append(f"<h3>{html.escape(analyzer)} - {html.escape(model)}</h3>")
            parts.append(_table(best))
        maps = [e for e in examples if e["analyzer"] == analyzer]
        if maps:
            parts.append("<div class='row'>")
            for j, example in enumerate(maps):
                parts.append(_div(example_figure(example), f"map-{analyzer}-{j}"))
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


def find_chromium() -> str | None:
    """The browser kaleido should drive: ``$BROWSER_PATH``, else a system Chromium/Chrome."""
    env = os.environ.get("BROWSER_PATH")
    if env and Path(env).is_file():
        return env
    for candidate in CHROMIUM_CANDIDATES:
        if Path(candidate).is_file():
            return candidate
    return shutil.which("chromium") or shutil.which("google-chrome")


def write_pngs(folder: Path, figures: Mapping[str, Any]) -> dict[str, Any]:
    """PNG copies of ``figures`` via kaleido and the system Chromium (never downloaded).
    Returns ``{"written": [...]}`` or ``{"skipped": reason}``."""
    browser = find_chromium()
    if browser is None:
        return {"skipped": "no Chromium/Chrome found (set BROWSER_PATH)"}
    try:
        import kaleido  # noqa: F401
        import plotly.io as pio
    except ImportError:
        return {"skipped": "kaleido is not installed (pip install 'attention-workbench[report]')"}
    os.environ["BROWSER_PATH"] = browser
    folder.mkdir(parents=True, exist_ok=True)
    names = list(figures)
    tmp = [folder / f".{n}.tmp.png" for n in names]
    try:
        figs = [figures[n] for n in names]
        pio.write_images(  # each at its layout's size (kaleido's default is 700 x 500)
            figs,
            tmp,
            width=[f.layout.width or 900 for f in figs],
            height=[f.layout.height or 600 for f in figs],
        )
    except Exception as exc:  # kaleido / browser failures must not lose the tables
        for t in tmp:
            t.unlink(missing_ok=True)
        return {"skipped": f"kaleido failed with {browser}: {exc}"}
    for n, t in zip(names, tmp, strict=True):
        os.replace(t, folder / f"{n}.png")
    return {"written": [f"{n}.png" for n in names], "browser": browser}
