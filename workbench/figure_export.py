"""Print-quality static figures as PNG, SVG and PDF, drawn by kaleido in the system Chromium.

Every figure of the app, the report and the notebooks goes through :func:`export_figure` (one
file), :func:`export_figures` (a batch in one browser session) or :func:`figure_bytes` (a
download). Each lays the figure out for print first (:func:`workbench.print_layout.print_layout`:
column width in mm, fonts in points, none below 7 pt, white background) and draws it with
kaleido driving the Chromium that :func:`find_chromium` finds, never a downloaded browser, and
without MathJax (kaleido's default fetches it from a CDN; this works offline).

Sizes: SVG and PDF are drawn at scale 1, so they are ``width_mm`` wide (a layout pixel is 1/96
inch); the PNG is the same layout rasterised at ``dpi``, ``round(width_mm / 25.4 * dpi)``
pixels wide.

Example::

    from workbench.figure_export import export_figure
    export_figure(fig, "causal.pdf", width_mm=89)      # a single-column PDF
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from probes.checks import ArgumentError, choice, describe, integer, unknown_keywords
from probes.errors import WorkbenchError
from workbench.print_layout import (
    COLUMN_MM,
    DEFAULT_FONT_PT,
    MIN_FONT_PT,
    mm_to_px,
    print_layout,
)

__all__ = [
    "COLUMN_MM",
    "DEFAULT_DPI",
    "FORMATS",
    "MIN_FONT_PT",
    "ExportError",
    "export_figure",
    "export_figures",
    "figure_bytes",
    "figure_formats",
    "find_chromium",
    "print_layout",
    "unavailable_reason",
]

FORMATS = ("png", "svg", "pdf")
DEFAULT_DPI = 300
OPTIONS = ("width_mm", "height_mm", "font_pt", "dpi")
CHROMIUM_CANDIDATES = (
    "/usr/bin/chromium",
    "/usr/bin/chromium-browser",
    "/usr/bin/google-chrome",
    "/usr/bin/google-chrome-stable",
)


class ExportError(WorkbenchError):
    """A static figure cannot be drawn: no Chromium or kaleido here, or the drawing failed."""


def find_chromium() -> str | None:
    """The browser kaleido should drive: ``$BROWSER_PATH``, else a system Chromium/Chrome."""
    env = os.environ.get("BROWSER_PATH")
    if env and Path(env).is_file():
        return env
    for candidate in CHROMIUM_CANDIDATES:
        if Path(candidate).is_file():
            return candidate
    return shutil.which("chromium") or shutil.which("google-chrome")


def unavailable_reason() -> str | None:
    """Why static figures cannot be drawn here (no Chromium, no kaleido), or None."""
    if find_chromium() is None:
        return "no Chromium/Chrome found (install Debian's chromium, or set BROWSER_PATH)"
    try:
        import kaleido  # noqa: F401
    except ImportError:
        return "kaleido is not installed (pip install 'attention-workbench[report]')"
    return None


def figure_formats(value: Any) -> tuple[str, ...]:
    """The formats of a ``--figures png,svg,pdf`` option: a comma-separated string or a list
    of names from :data:`FORMATS` (any case, repeats dropped); ``""`` or ``"none"``: none."""
    if isinstance(value, str):
        items: list[Any] = [] if value.strip().lower() == "none" else value.split(",")
    elif isinstance(value, Iterable) and not isinstance(value, (bytes, Mapping)):
        items = list(value)
    else:
        raise ArgumentError(
            f"figures must be a comma-separated list of {', '.join(FORMATS)} (or 'none'), "
            f"got {describe(value)}"
        )
    out: list[str] = []
    for item in items:
        name = item.strip().lower() if isinstance(item, str) else item
        if name == "":
            continue
        fmt = choice("figure format", name, FORMATS)
        if fmt not in out:
            out.append(fmt)
    return tuple(out)


def _render_spec(
    fig: Any,
    fmt: str,
    width_mm: float = COLUMN_MM["double"],
    height_mm: float | None = None,
    font_pt: float = DEFAULT_FONT_PT,
    dpi: int = DEFAULT_DPI,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The print-laid-out figure and kaleido's options for one output file."""
    fmt = choice("fmt", fmt, FORMATS)
    dpi = integer("dpi", dpi, minimum=72, maximum=1200)
    laid = print_layout(fig, width_mm=width_mm, height_mm=height_mm, font_pt=font_pt)
    width, height = laid["layout"]["width"], laid["layout"]["height"]
    # vector formats at scale 1 (a layout px is 1/96 in); the PNG exactly width_mm at dpi
    scale = round(mm_to_px(width_mm, dpi)) / width if fmt == "png" else 1.0
    return laid, {"format": fmt, "width": width, "height": height, "scale": scale}


def _twice(draw: Callable[[], Any]) -> Any:
    """``draw()``, once more when it fails: kaleido 1.x can call into a page whose scripts
    have not loaded yet when Chromium is slow to start (``kaleido_scopes is not defined``)."""
    try:
        return draw()
    except Exception:  # the second failure is the one reported
        return draw()


def _kaleido_options() -> dict[str, Any]:
    reason = unavailable_reason()
    if reason is not None:
        raise ExportError(f"cannot draw static figures: {reason}")
    return {"path": find_chromium(), "mathjax": False}


def figure_bytes(fig: Any, fmt: str, **options: Any) -> bytes:
    """``fig`` drawn at print size as ``fmt`` (``png``, ``svg`` or ``pdf``).

    ``options``: ``width_mm`` (default 183, a double column; 89 is a single one),
    ``height_mm``, ``font_pt`` (default 8), ``dpi`` (PNG only, default 300); see
    :func:`workbench.print_layout.print_layout`.
    """
    unknown_keywords("figure_bytes", options, OPTIONS)
    laid, opts = _render_spec(fig, fmt, **options)
    kopts = _kaleido_options()
    import kaleido

    try:
        return _twice(lambda: kaleido.calc_fig_sync(laid, opts=opts, kopts=kopts))
    except Exception as exc:  # browser start-up or plotly.js errors, as one readable line
        raise ExportError(f"drawing the {fmt} figure failed in {kopts['path']}: {exc}") from exc


def export_figure(fig: Any, path: str | Path, fmt: str | None = None, **options: Any) -> Path:
    """Write ``fig`` at print size to ``path`` as ``fmt`` (default: the path's suffix).

    ``options`` as for :func:`figure_bytes`. The file appears whole (written under a
    temporary name, then renamed). Returns the path.
    """
    path = Path(path)
    if fmt is None:
        fmt = path.suffix[1:].lower()
        if fmt not in FORMATS:
            raise ArgumentError(
                f"path {str(path)!r} must end in .png, .svg or .pdf, or give fmt= "
                f"(one of {', '.join(FORMATS)})"
            )
    data = figure_bytes(fig, fmt, **options)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def export_figures(
    folder: str | Path,
    figures: Mapping[str, Any],
    formats: Iterable[str] | str = ("png",),
    **options: Any,
) -> list[Path]:
    """Write ``folder/<name>.<fmt>`` for every figure and format, in one browser session.

    ``options`` as for :func:`figure_bytes`, the same for every figure. Files appear whole.
    Returns the paths written; raises :class:`ExportError` when nothing can draw here.
    """
    unknown_keywords("export_figures", options, OPTIONS)
    formats = figure_formats(formats)
    folder = Path(folder)
    jobs = []
    for name, fig in figures.items():
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]*", name):
            raise ArgumentError(f"figure names must be plain file names, got {describe(name)}")
        for fmt in formats:
            laid, opts = _render_spec(fig, fmt, **options)
            jobs.append((laid, opts, folder / f"{name}.{fmt}"))
    if not jobs:
        return []
    kopts = _kaleido_options()
    import kaleido

    folder.mkdir(parents=True, exist_ok=True)
    tmp = [path.with_name(f".{path.stem}.tmp.{path.suffix[1:]}") for _, _, path in jobs]
    specs = [
        {"fig": laid, "path": str(t), "opts": opts}
        for (laid, opts, _), t in zip(jobs, tmp, strict=True)
    ]
    try:
        _twice(lambda: kaleido.write_fig_from_object_sync(specs, kopts=kopts, cancel_on_error=True))
    except Exception as exc:
        for t in tmp:
            t.unlink(missing_ok=True)
        raise ExportError(f"drawing the figures failed in {kopts['path']}: {exc}") from exc
    for (_, _, path), t in zip(jobs, tmp, strict=True):
        os.replace(t, path)
    return [path for _, _, path in jobs]
