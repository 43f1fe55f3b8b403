"""The print layout of a plotly figure: journal column width, fonts in points, white
background, and titles, axis titles and category labels that fit (no clipping, no overlap).

plotly lays figures out in CSS pixels, 96 to the inch. A figure ``width_mm`` wide is laid out
``width_mm / 25.4 * 96`` px wide, so where it prints at that width a font of ``s`` px is
``0.75 * s`` pt. :func:`print_layout` returns the laid-out copy as a figure dict;
:mod:`workbench.figure_export` draws it as PNG, SVG or PDF.

Fitting text is estimated, not measured (the browser measures only when it draws): a
character is :data:`CHAR_WIDTH` font sizes wide on average and a line 1.3 font sizes high
(plotly.js's line spacing), which errs on the safe side for the sans-serif fonts in use.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Mapping
from typing import Any

from probes.checks import ArgumentError, describe, number, optional

#: Journal column widths in mm (Nature, Science and Cell are within a few mm of these).
COLUMN_MM = {"single": 89.0, "double": 183.0}
CSS_DPI = 96.0
MIN_FONT_PT = 7.0
DEFAULT_FONT_PT = 8.0
MAX_HEIGHT_MM = 240.0
#: plotly.js draws ``<sup>``/``<sub>`` text at 70 % of its line's size.
SCRIPT_SCALE = 0.7
CHAR_WIDTH = 0.6
LINE_HEIGHT = 1.3
PLOTLY_FONT_PX = 12.0
PLOTLY_MARGIN = {"l": 80, "r": 80, "t": 100, "b": 80}
FONT_KEYS = ("font", "tickfont", "textfont", "insidetextfont", "outsidetextfont")
TEXT_TRACES = {"bar", "funnel", "waterfall", "pie", "funnelarea", "sunburst", "treemap"}
BR = re.compile(r"<br\s*/?>", re.I)
AXIS = re.compile(r"([xy])axis(\d*)")


def mm_to_px(mm: float, dpi: float = CSS_DPI) -> float:
    """Millimetres as pixels at ``dpi`` (CSS pixels by default)."""
    return mm / 25.4 * dpi


def pt_to_px(pt: float) -> float:
    """Points (1/72 inch) as CSS pixels (1/96 inch)."""
    return pt * CSS_DPI / 72.0


def _up(px: float) -> float:
    """A font size rounded up to 0.01 px (rounding never takes a size below a minimum)."""
    return math.ceil(px * 100 - 1e-6) / 100


#: The plotly.js mode bar's camera button as a print download (``toImageButtonOptions``): an
#: SVG a double column wide at 96 px per inch, so 12 px text prints at 9 pt; the height
#: stays the one on screen (``None``) and plotly.js names the file after the figure's title.
SVG_BUTTON = {"format": "svg", "width": round(COLUMN_MM["double"] / 25.4 * CSS_DPI), "height": None}


def figure_dict(fig: Any) -> dict[str, Any]:
    """A deep copy of ``fig`` (a plotly Figure, or its dict as a dcc.Graph holds it)."""
    if hasattr(fig, "to_dict"):
        return fig.to_dict()
    if isinstance(fig, Mapping) and isinstance(fig.get("data", []), list):
        return copy.deepcopy(dict(fig))
    raise ArgumentError(f"fig must be a plotly Figure or a figure dict, got {describe(fig)}")


def wrap_text(text: str, width_px: float, size_px: float) -> str:
    """``text`` (plotly's pseudo-HTML) with ``<br>`` breaks so no line is wider than
    ``width_px`` at ``size_px``. A line wholly inside ``<sup>``/``<sub>``/``<b>``/``<i>``
    wraps inside its tag; a line with other markup, or a single long word, stays whole."""
    out: list[str] = []
    for line in BR.split(text):
        m = re.fullmatch(r"<(sup|sub|b|i)>(.*)</\1>", line.strip(), flags=re.I | re.S)
        tag, inner = (m.group(1), m.group(2)) if m else ("", line)
        size = size_px * (SCRIPT_SCALE if tag.lower() in ("sup", "sub") else 1.0)
        limit = max(4, int(width_px / (CHAR_WIDTH * size)))
        if "<" in inner or len(inner) <= limit:
            out.append(line)
            continue
        pieces, current = [], ""
        for word in inner.split(" "):
            if current and len(current) + 1 + len(word) > limit:
                pieces.append(current)
                current = word
            else:
                current = f"{current} {word}" if current else word
        pieces.append(current)
        out += [f"<{tag}>{p}</{tag}>" if tag else p for p in pieces]
    return "<br>".join(out)


def text_height(text: str, size_px: float) -> float:
    """Estimated height of a (multi-line) text block."""
    return len(BR.split(text)) * LINE_HEIGHT * size_px


def _scale_fonts(node: Any, ratio: float, min_px: float) -> None:
    """Multiply every explicit font size under ``node`` by ``ratio``, never below ``min_px``."""
    if isinstance(node, list):
        for item in node:
            _scale_fonts(item, ratio, min_px)
        return
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        if key == "template":
            continue
        if key in FONT_KEYS and isinstance(value, dict) and "size" in value:
            size = value["size"]
            if isinstance(size, (int, float)) and not isinstance(size, bool):
                value["size"] = _up(max(size * ratio, min_px))
            elif isinstance(size, list):
                value["size"] = [_up(max(s * ratio, min_px)) for s in size]
        _scale_fonts(value, ratio, min_px)


def _has_script(text: Any) -> bool:
    return isinstance(text, str) and bool(re.search(r"<su[pb]>", text, re.I))


def _default_size(key: str, body_px: float) -> float:
    """plotly.js's default size of a text named ``key``: figure title 1.4 x, axis and colour
    bar titles 1.2 x (its ``bigFont``) the body text."""
    return body_px * (1.4 if key == "figure-title" else 1.2 if key == "title" else 1.0)


def _lift_scripts(node: Any, body_px: float, min_px: float, key: str = "") -> None:
    """Text with ``<sup>``/``<sub>`` parts gets a size whose 70 % is still ``min_px``."""
    if isinstance(node, list):
        for item in node:
            _lift_scripts(item, body_px, min_px, key)
        return
    if not isinstance(node, dict):
        return
    if _has_script(node.get("text")):
        font = node.setdefault("font", {})
        current = font.get("size") or _default_size(key, body_px)
        font["size"] = _up(max(current, min_px / SCRIPT_SCALE))
    for child, value in node.items():
        if child != "template":
            _lift_scripts(value, body_px, min_px, child)


def _size(node: Mapping[str, Any], key: str, body_px: float) -> float:
    return (node.get("font") or {}).get("size") or _default_size(key, body_px)


def _axes(layout: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """``(letter, ref, axis)`` of every cartesian axis: ``("x", "x2", layout["xaxis2"])``."""
    out = []
    for key, axis in layout.items():
        m = AXIS.fullmatch(key)
        if m and isinstance(axis, dict):
            out.append((m.group(1), m.group(1) + m.group(2), axis))
    return out


def _plot_size(layout: dict[str, Any]) -> tuple[float, float]:
    m = layout["margin"]
    return layout["width"] - m["l"] - m["r"], layout["height"] - m["t"] - m["b"]


def _wrap_titles(layout: dict[str, Any], body_px: float) -> None:
    """Wrap the figure title to the figure, subplot titles to their subplot, axis titles to
    their axis."""
    plot_w, plot_h = _plot_size(layout)
    title = layout.get("title")
    if isinstance(title, dict) and isinstance(title.get("text"), str):
        size = _size(title, "figure-title", body_px)
        title["text"] = wrap_text(title["text"], 0.96 * layout["width"], size)
    x_domains = [a.get("domain", [0, 1]) for letter, _, a in _axes(layout) if letter == "x"]
    for ann in layout.get("annotations") or []:
        if not isinstance(ann.get("text"), str) or ann.get("xref", "paper") != "paper":
            continue
        x = ann.get("x", 0.5)
        spans = [d[1] - d[0] for d in x_domains if d[0] - 1e-6 <= x <= d[1] + 1e-6]
        ann["text"] = wrap_text(ann["text"], min(spans or [1.0]) * plot_w, _size(ann, "", body_px))
    for letter, _, axis in _axes(layout):
        t = axis.get("title")
        if isinstance(t, dict) and isinstance(t.get("text"), str):
            lo, hi = axis.get("domain", [0, 1])
            length = (hi - lo) * (plot_w if letter == "x" else plot_h)
            t["text"] = wrap_text(t["text"], 0.95 * length, _size(t, "title", body_px))


def _categories(values: Any) -> list[str]:
    """The distinct labels of a categorical coordinate array ([] when it is numeric)."""
    if values is None or isinstance(values, (str, bytes, dict)):
        return []
    items = list(values)
    if not items or any(isinstance(v, (list, tuple)) for v in items):
        return []
    labels = list(dict.fromkeys(str(v) for v in items))
    try:
        [float(v) for v in labels]
    except ValueError:
        return labels
    return []


def _wrap_category_ticks(fig: dict[str, Any], body_px: float) -> None:
    """Break long category labels of x axes onto several lines when they are wider than
    their slot (plotly would tilt them into the panel below)."""
    layout = fig["layout"]
    plot_w, _ = _plot_size(layout)
    for letter, ref, axis in _axes(layout):
        if letter != "x" or axis.get("showticklabels") is False:
            continue
        if "tickvals" in axis or "tickangle" in axis:
            continue
        labels: list[str] = []
        for trace in fig.get("data", []):
            if trace.get("xaxis", "x") == ref and trace.get("orientation") != "h":
                labels += _categories(trace.get("x"))
        labels = list(dict.fromkeys(labels))
        if not labels or len(labels) > 8:  # a few long labels (bars); plotly tilts many
            continue
        lo, hi = axis.get("domain", [0, 1])
        slot = 0.85 * (hi - lo) * plot_w / len(labels)
        size = (axis.get("tickfont") or {}).get("size") or body_px
        if max(len(t) for t in labels) * CHAR_WIDTH * size <= slot:
            continue
        axis.update(tickvals=labels, ticktext=[wrap_text(t, slot, size) for t in labels])
        axis["tickangle"] = 0


def _legend_rows(fig: dict[str, Any], body_px: float) -> int:
    """Rows of a horizontal legend as plotly.js wraps it in the plot width: all entries in
    one row when they fit, else as many of the widest entry as fit in each row."""
    layout = fig["layout"]
    names = [
        str(t["name"])
        for t in fig.get("data", [])
        if t.get("name") and t.get("showlegend", t.get("type") not in ("heatmap", "histogram2d"))
    ]
    if not names or layout.get("showlegend") is False:
        return 0
    size = (layout["legend"].get("font") or {}).get("size") or body_px
    widths = [len(n) * CHAR_WIDTH * size + 50 for n in names]  # symbol, gaps
    plot_w, _ = _plot_size(layout)
    if sum(widths) <= plot_w:
        return 1
    per_row = max(1, int(plot_w // max(widths)))
    return math.ceil(len(names) / per_row)


def _place_title(layout: dict[str, Any], body_px: float) -> None:
    """The title block at the top of the figure, and the top margin made just tall enough
    for it and for the subplot titles above the top row.

    plotly.js sets a multi-line title's first baseline at ``y`` and the other lines below it
    (with ``yanchor="bottom"`` and no automargin), so ``y`` is that baseline: one font size
    under a small gap from the top edge."""
    title = layout.get("title")
    if not (isinstance(title, dict) and isinstance(title.get("text"), str) and title["text"]):
        return
    gap, size = 0.6 * body_px, _size(title, "figure-title", body_px)
    block = text_height(title["text"], size)
    y_tops = [a.get("domain", [0, 1])[1] for letter, _, a in _axes(layout) if letter == "y"]
    top = max(y_tops or [1.0])
    above = [
        text_height(a["text"], _size(a, "", body_px))
        for a in layout.get("annotations") or []
        if isinstance(a.get("text"), str)
        and a.get("yref", "paper") == "paper"
        and a.get("y", 0) >= top - 1e-6
    ]
    margin = layout["margin"]
    margin["t"] = math.ceil(2 * gap + block + max(above or [0.0]) + gap)
    title.update(yref="container", yanchor="bottom", automargin=False, pad={"t": 0, "b": 0})
    title["y"] = 1 - (gap + size) / layout["height"]


def print_layout(
    fig: Any,
    *,
    width_mm: float = COLUMN_MM["double"],
    height_mm: float | None = None,
    font_pt: float = DEFAULT_FONT_PT,
) -> dict[str, Any]:
    """A copy of ``fig`` (as a figure dict) laid out for print.

    Args:
        fig: a plotly Figure or its dict.
        width_mm: printed width (:data:`COLUMN_MM`: 89 single column, 183 double).
        height_mm: printed height; default: the figure's aspect ratio when it has a fixed
            width, else its height times the fonts' scale; at most :data:`MAX_HEIGHT_MM`.
        font_pt: body text (tick labels, legends) in points. Explicit sizes (titles, small
            tick labels) scale with it and none ends below :data:`MIN_FONT_PT`, counting
            ``<sup>`` text at its drawn 70 %.
    """
    width_mm = number("width_mm", width_mm, minimum=20, maximum=600)
    height_mm = optional(number, "height_mm", height_mm, minimum=20, maximum=600)
    font_pt = number("font_pt", font_pt, minimum=MIN_FONT_PT, maximum=36)
    out = figure_dict(fig)
    layout: dict[str, Any] = out.setdefault("layout", {})
    if isinstance(layout.get("title"), str):
        layout["title"] = {"text": layout["title"]}
    font = layout.setdefault("font", {})
    body_px, min_px = pt_to_px(font_pt), pt_to_px(MIN_FONT_PT)
    ratio = body_px / (font.get("size") or PLOTLY_FONT_PX)
    width = mm_to_px(width_mm)
    old_w, old_h = layout.get("width"), layout.get("height") or 450
    if height_mm is not None:
        height = mm_to_px(height_mm)
    else:
        height = old_h * width / old_w if old_w else old_h * ratio
        height = min(max(height, 120.0), mm_to_px(MAX_HEIGHT_MM))
    for part in (out.get("data", []), layout):
        _scale_fonts(part, ratio, min_px)
    font["size"] = _up(body_px)
    title = layout.get("title")
    if isinstance(title, dict):
        _lift_scripts(title, body_px, min_px, "title")  # 1.2 x: the safe side of 1.4 x
    _lift_scripts({k: v for k, v in layout.items() if k != "title"}, body_px, min_px)
    _lift_scripts(out.get("data", []), body_px, min_px)
    margin = {**PLOTLY_MARGIN, **(layout.get("margin") or {})}
    layout["margin"] = {
        k: (max(4, round(v * ratio)) if k in PLOTLY_MARGIN else v) for k, v in margin.items()
    }
    layout.update(width=round(width, 3), height=round(height, 3), autosize=False)
    for _, _, axis in _axes(layout):
        axis["automargin"] = True
    legend = layout.get("legend")
    if isinstance(legend, dict) and legend.get("orientation") == "h":
        # a horizontal legend goes under the figure, where it covers no title or panel
        legend.update(yref="container", y=0.0, yanchor="bottom")
        legend.update(xref="container", x=0.0, xanchor="left")
        rows = _legend_rows(out, body_px)
        if rows > 1 and height_mm is None:  # keep the plot's height: the legend adds rows
            height = min(height + (rows - 1) * LINE_HEIGHT * body_px, mm_to_px(MAX_HEIGHT_MM))
            layout["height"] = round(height, 3)
    if any(t.get("type") in TEXT_TRACES and t.get("text") is not None for t in out["data"]):
        layout["uniformtext"] = {"minsize": _up(min_px), "mode": "show"}
    _wrap_titles(layout, body_px)
    _wrap_category_ticks(out, body_px)
    _place_title(layout, body_px)
    import plotly.io as pio

    layout["template"] = pio.templates["plotly_white"].to_plotly_json()
    layout["paper_bgcolor"] = "white"
    layout.setdefault("plot_bgcolor", "white")
    return out
