"""Print-size static figures (workbench.figure_export, workbench.print_layout): each format's
file, its size on paper, the fonts in it, the report's figure files and the app's download.

Expected sizes are worked out here from the definitions (25.4 mm to the inch, 72 pt to the
inch, 96 CSS px to the inch), not read from the code. Tests that draw need Debian's Chromium
and kaleido and skip without them; the layout and argument tests run everywhere.
"""

from __future__ import annotations

import base64
import re
import struct
import xml.etree.ElementTree as ET

import pandas as pd
import plotly.graph_objects as go
import pytest

from probes.errors import WorkbenchError
from workbench import figure_export
from workbench.charts import causal_figure, causal_grid_figure
from workbench.figure_export import (
    ExportError,
    export_figure,
    figure_bytes,
    figure_formats,
    print_layout,
)

SEVEN_PT_PX = 7 * 96 / 72  # 9.333 px
CAUSAL = {
    "metric": "mean log-prob of the repeated token",
    "higher_is_better": True,
    "mode": "mean",
    "k": 5,
    "draws": 3,
    "base": -1.234,
    "top_k": -2.91,
    "random_k_mean": -1.31,
    "random_k": [-1.25, -1.36, -1.32],
}


def heatmap_figure() -> go.Figure:
    """A token heatmap like the app's: category labels, small tick fonts, a <sup> title."""
    tokens = [f"{i} tok{i}" for i in range(12)]
    z = [[1.0 / (1 + abs(i - j)) for j in range(12)] for i in range(12)]
    fig = go.Figure(go.Heatmap(z=z, x=tokens, y=tokens, colorscale="Blues"))
    fig.update_xaxes(tickfont={"size": 6}, title_text="key token")
    fig.update_yaxes(tickfont={"size": 6}, autorange="reversed", title_text="query token")
    fig.update_layout(title="L3H5<br><sup>attention of each query to each key</sup>", width=900)
    return fig


def need_browser() -> None:
    reason = figure_export.unavailable_reason()
    if reason is not None:
        pytest.skip(f"static export cannot draw here: {reason}")


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def pdf_page_pt(data: bytes) -> tuple[float, float]:
    m = re.search(rb"/MediaBox\s*\[\s*([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s*\]", data)
    assert m, "no /MediaBox in the PDF"
    x0, y0, x1, y1 = (float(v) for v in m.groups())
    return x1 - x0, y1 - y0


def svg_font_sizes(data: bytes) -> list[tuple[float, str]]:
    """(drawn size in px, text) of every text run, with relative sizes (``70%`` of a
    ``<sup>``) applied to the size they inherit."""
    out: list[tuple[float, str]] = []

    def walk(el: ET.Element, inherited: float | None) -> None:
        size = inherited
        m = re.search(r"font-size:\s*([\d.]+)(px|%)", el.get("style") or "")
        if m:
            value = float(m.group(1))
            size = value if m.group(2) == "px" else (inherited or 0.0) * value / 100
        text = (el.text or "").replace("\u200b", "").strip()
        if text and el.tag.endswith(("text", "tspan")):
            assert size is not None, f"text {text!r} without a font size"
            out.append((size, text))
        for child in el:
            walk(child, size)

    walk(ET.fromstring(data), None)
    return out


# -- layout and arguments (no browser) -------------------------------------------------------
def test_print_layout_sets_width_fonts_and_background_on_a_copy():
    fig = heatmap_figure()
    laid = print_layout(fig, width_mm=89, font_pt=8)
    layout = laid["layout"]
    assert layout["width"] == pytest.approx(89 / 25.4 * 96, abs=0.01)  # 336.38 px
    assert layout["font"]["size"] == pytest.approx(8 * 96 / 72, abs=0.01)
    assert layout["xaxis"]["tickfont"]["size"] >= SEVEN_PT_PX  # 6 px lifted to 7 pt
    # the <sup> line is drawn at 70 %: its title must be >= 7 pt / 0.7
    assert 0.7 * layout["title"]["font"]["size"] >= SEVEN_PT_PX
    assert layout["paper_bgcolor"] == "white"
    assert layout["xaxis"]["automargin"] and layout["yaxis"]["automargin"]
    assert fig.layout.width == 900 and fig.layout.xaxis.tickfont.size == 6  # untouched


def test_print_layout_keeps_the_aspect_of_a_fixed_size_figure():
    fig = go.Figure(go.Scatter(x=[0, 1], y=[0, 1]))
    fig.update_layout(width=800, height=400)
    layout = print_layout(fig, width_mm=183)["layout"]
    assert layout["height"] == pytest.approx(183 / 25.4 * 96 / 2, abs=0.01)
    layout = print_layout(fig, width_mm=183, height_mm=50)["layout"]
    assert layout["height"] == pytest.approx(50 / 25.4 * 96, abs=0.01)


def test_long_titles_and_category_labels_wrap_without_losing_words():
    title = " ".join(f"word{i}" for i in range(40))
    fig = causal_figure({**CAUSAL, "metric": title})
    layout = print_layout(fig, width_mm=89)["layout"]
    wrapped = layout["title"]["text"]
    first = re.split(r"<br>", wrapped)[0]
    assert first != title and len(re.split(r"<br>", wrapped)) >= 3
    words = re.sub(r"<[^>]+>", " ", wrapped).split()
    assert words[: 40 + 2] == ["Causal", "check:", *title.split()]
    # the bars' category labels go onto lines instead of being tilted into the next panel
    assert layout["xaxis"]["tickangle"] == 0
    assert any("<br>" in t for t in layout["xaxis"]["ticktext"])


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: print_layout(heatmap_figure(), width_mm="89"), "width_mm"),
        (lambda: print_layout(heatmap_figure(), font_pt=6), "font_pt must be .*>= 7"),
        (lambda: print_layout("not a figure"), "fig must be a plotly Figure"),
        (lambda: figure_bytes(heatmap_figure(), "jpg"), "fmt must be one of 'png', 'svg'"),
        (lambda: figure_bytes(heatmap_figure(), "png", dpi=10), "dpi must be an integer"),
        (lambda: figure_bytes(heatmap_figure(), "png", widht_mm=89), "did you mean 'width_mm'"),
        (lambda: export_figure(heatmap_figure(), "fig.jpg"), "must end in .png, .svg or .pdf"),
        (lambda: figure_formats("png,tiff"), "figure format must be one of"),
        (lambda: figure_formats(3), "figures must be a comma-separated list"),
        (lambda: causal_grid_figure(pd.DataFrame(), per_row=0), "per_row must be an integer"),
    ],
)
def test_bad_arguments_are_named(call, match):
    with pytest.raises(WorkbenchError, match=match):
        call()


def test_figure_formats():
    assert figure_formats("PNG, svg,png,") == ("png", "svg")
    assert figure_formats(["pdf"]) == ("pdf",)
    assert figure_formats("none") == () and figure_formats("") == ()


def test_without_a_browser_export_fails_with_the_reason_and_the_report_skips(monkeypatch, tmp_path):
    from workbench.report import render

    monkeypatch.setattr(figure_export, "find_chromium", lambda: None)
    with pytest.raises(ExportError, match="no Chromium"):
        export_figure(heatmap_figure(), tmp_path / "h.png")
    out = render.write_figures(tmp_path / "figures", {"h": heatmap_figure()}, "png,pdf")
    assert "no Chromium" in out["skipped"]
    assert not (tmp_path / "figures").exists() or not any((tmp_path / "figures").iterdir())


# -- drawn files (Chromium + kaleido) --------------------------------------------------------
@pytest.mark.parametrize(
    ("width_mm", "dpi", "pixels"),
    [(89, 300, 1051), (183, 300, 2161), (183, 150, 1081)],  # round(mm / 25.4 * dpi)
)
def test_png_is_the_width_at_the_dpi(tmp_path, width_mm, dpi, pixels):
    need_browser()
    path = export_figure(heatmap_figure(), tmp_path / "h.png", width_mm=width_mm, dpi=dpi)
    width, height = png_size(path.read_bytes())
    assert width == pixels and height > 100


def test_svg_and_pdf_are_the_width_on_paper_with_fonts_of_at_least_7pt(tmp_path):
    need_browser()
    for fig in (heatmap_figure(), causal_figure(CAUSAL)):
        svg = export_figure(fig, tmp_path / "f.svg", width_mm=89).read_bytes()
        assert svg.lstrip().startswith(b"<svg")
        root = ET.fromstring(svg)
        assert float(root.get("width")) == pytest.approx(89 / 25.4 * 96, abs=0.05)
        sizes = svg_font_sizes(svg)
        assert len(sizes) > 10
        smallest = min(sizes)
        assert smallest[0] * 72 / 96 >= 7.0, f"{smallest[1]!r} drawn at {smallest[0]:.2f} px"
        pdf = export_figure(fig, tmp_path / "f.pdf", width_mm=89).read_bytes()
        assert pdf[:5] == b"%PDF-"
        width_pt, height_pt = pdf_page_pt(pdf)
        assert width_pt == pytest.approx(89 / 25.4 * 72, abs=1.0)  # 252.3 pt
        assert height_pt > 50


def test_report_writes_each_figure_in_each_format(tmp_path):
    need_browser()
    from workbench.report import render

    table = pd.DataFrame(
        [
            {"model": "m", "analyzer": a, **CAUSAL, "random_k": "-1.25,-1.36"}
            for a in ("sinks", "previous_token", "induction")
        ]
    )
    figures = {"causal": causal_grid_figure(table, per_row=2), "map_x_0": heatmap_figure()}
    out = render.write_figures(tmp_path / "figures", figures, "png,svg,pdf")
    assert out.get("formats") == ["png", "svg", "pdf"], out
    magic = {"png": b"\x89PNG", "svg": b"<svg", "pdf": b"%PDF"}
    names = sorted(p.name for p in (tmp_path / "figures").iterdir())
    assert names == sorted(f"{n}.{f}" for n in figures for f in magic)  # no temporary files
    for name in names:
        data = (tmp_path / "figures" / name).read_bytes()
        assert data.startswith(magic[name.rsplit(".", 1)[1]]) and len(data) > 1000


def test_app_download_draws_the_shown_figure_on_the_server():
    from app.views.export import figure_download

    shown = causal_figure(CAUSAL).to_dict()  # what a dcc.Graph holds
    page = figure_download(shown, "causal-graph", "html")
    assert page["filename"] == "causal-graph.html" and "<html" in page["content"]
    with pytest.raises(WorkbenchError, match="empty"):
        figure_download({"data": [], "layout": {}}, "causal-graph", "png")
    with pytest.raises(WorkbenchError, match="width must be one of"):
        figure_download(shown, "causal-graph", "png", "triple")
    need_browser()
    got = figure_download(shown, "causal-graph", "pdf", "single")
    assert got["filename"] == "causal-graph.pdf" and got["base64"]
    pdf = base64.b64decode(got["content"])
    assert pdf[:5] == b"%PDF-"
    assert pdf_page_pt(pdf)[0] == pytest.approx(89 / 25.4 * 72, abs=1.0)


def test_every_graph_of_the_app_downloads_a_print_svg_and_is_in_the_export_view():
    from types import SimpleNamespace

    from dash import dcc

    from app import ids, views

    info = SimpleNamespace(n_layers=4, n_heads=3, name="m", max_positions=2048)
    wb = SimpleNamespace(info=info, analyzers=[("sinks", "s"), ("previous_token", "p")], lm=None)
    graphs: list[dcc.Graph] = []

    def walk(component) -> None:
        if isinstance(component, dcc.Graph):
            graphs.append(component)
        children = getattr(component, "children", None)
        for child in children if isinstance(children, (list, tuple)) else [children]:
            if child is not None and not isinstance(child, (str, int, float)):
                walk(child)

    for view in views.TABS:
        walk(view.layout(wb))
    assert {g.id for g in graphs} == set(ids.FIGURES)
    double_column_px = round(183 / 25.4 * 96)  # 692
    for graph in graphs:
        assert graph.config["toImageButtonOptions"] == {
            "format": "svg",
            "width": double_column_px,
            "height": None,
        }, graph.id
        assert graph.config.get("displayModeBar", True) is not False, graph.id
        buttons = graph.config.get("modeBarButtons")
        assert buttons is None or ["toImage"] in buttons, graph.id
