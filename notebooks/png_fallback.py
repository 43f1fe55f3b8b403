"""Plotly figures in the notebooks: interactive in Jupyter, plus a static PNG copy that renders
where no JavaScript runs (a GitHub repository page, nbviewer).

The first code cell of each notebook that draws plotly figures calls :func:`enable`. It makes
plotly's default renderer ``plotly_mimetype+workbench_png``: JupyterLab / Notebook 7 / VS Code
show the interactive figure, pages that cannot run it show the PNG. The PNG is drawn by kaleido
driving the system Chromium (``$BROWSER_PATH``, else /usr/bin/chromium and friends; never a
downloaded browser) at the figure's layout size, ``PNG_WIDTH`` px wide unless the figure sets a
width, scale 1. Without kaleido or Chromium, or when drawing fails, figures stay interactive
only and one note is printed.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import plotly.io as pio
from plotly.io.base_renderers import PngRenderer

from workbench.report.render import find_chromium

RENDERER = "workbench_png"
PNG_WIDTH = 900
PNG_HEIGHT = 500
INSTALL_HINT = "install Chromium (`make browser`, or set BROWSER_PATH) and kaleido"


class FallbackPngRenderer(PngRenderer):
    """A PNG copy of each figure at its layout size; after the first failure, none (one note)."""

    def __init__(self) -> None:
        super().__init__(width=None, height=None, scale=1)
        self.failure: str | None = None

    def to_mimebundle(self, fig_dict: dict[str, Any]) -> dict[str, str]:
        """``{"image/png": base64}`` for ``fig_dict``, or ``{}`` once PNG drawing has failed."""
        if self.failure is not None:
            return {}
        layout = fig_dict.get("layout", {})
        self.width = layout.get("width") or PNG_WIDTH
        self.height = layout.get("height") or PNG_HEIGHT
        try:
            return super().to_mimebundle(fig_dict)
        except Exception as exc:  # any kaleido/browser failure: keep the interactive figure
            self.failure = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            print(
                f"note: plotly figures are interactive only, no PNG copy ({self.failure}); "
                f"{INSTALL_HINT}."
            )
            return {}


def unavailable_reason() -> str | None:
    """Why no PNG copy can be drawn here (``None`` when kaleido and a Chromium are present)."""
    if importlib.util.find_spec("kaleido") is None:
        return "kaleido is not installed"
    if find_chromium() is None:
        return "no Chromium/Chrome found"
    return None


def enable() -> None:
    """Make plotly's default renderer the interactive figure plus a PNG copy.

    Where PNG drawing is impossible, the environment's default (interactive) renderer is kept
    and a note printed; the notebooks run either way."""
    reason = unavailable_reason()
    if reason is not None:
        print(f"note: plotly figures are interactive only, no PNG copy ({reason}); {INSTALL_HINT}.")
        return
    os.environ["BROWSER_PATH"] = str(find_chromium())  # the one the report's PNGs use too
    pio.renderers[RENDERER] = FallbackPngRenderer()
    pio.renderers.default = f"plotly_mimetype+{RENDERER}"
