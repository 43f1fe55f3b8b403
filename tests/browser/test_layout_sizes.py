"""The layout at realistic sizes (issue 18, item 7), in a real headless Chromium on the embedded
model, at 1,280 and 1,920 px wide: a 100-head intervention, then an 8,180-token prompt (the
all-heads mosaic, one head's pooled overview with 4-digit row numbers, and its exact rows).

What must hold at both widths: nothing runs off the page (no horizontal scroll, no card title
wider than its card), number boxes show their 4-digit values whole, and the exact-rows heatmap
of a long prompt keeps columns several pixels wide (its keys are windowed: the first keys and
the rows' own neighbourhood one by one, the rest summed in one column). Screenshots go to
test-artifacts/screenshots/ (``layout-*-1280.png``, ``layout-*-1920.png``); each view's time is
printed (``pytest -s``).
"""

from __future__ import annotations

import time

import pytest

from tests.browser.helpers import (
    WIDTHS,
    click,
    fits,
    free_port,
    open_tab,
    plot_data,
    screenshot,
    set_value,
    severe_logs,
    text_of,
    type_into,
    wait_text,
    wait_until,
)
from workbench import maps

pytestmark = [pytest.mark.model, pytest.mark.slow]

N_TOKENS = 8180  # the embedded model's context is 8,192 positions
N_LAYERS, N_HEADS = 30, 9
#: 11 whole layers and one more head: 100 heads.
HUNDRED_HEADS = ", ".join(f"L{layer}H*" for layer in range(11)) + ", L11H0"


def long_prompt(lm) -> str:
    """Varied English text of exactly :data:`N_TOKENS` tokens (checked, not assumed)."""
    text = " ".join(
        f"Report {i}: the {('red', 'blue', 'green')[i % 3]} train left station {i % 17} at "
        f"{i % 12 + 1} o'clock carrying {i * 7 % 50} passengers."
        for i in range(700)
    )
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"][:N_TOKENS]
    prompt = lm.tokenizer.decode(ids)
    assert len(lm.tokenizer(prompt, add_special_tokens=False)["input_ids"]) == N_TOKENS
    return prompt


def page_fits(browser) -> bool:
    """No horizontal scrolling: the page is no wider than the window."""
    return browser.driver.execute_script(
        "return document.documentElement.scrollWidth <= window.innerWidth;"
    )


def at_widths(browser, name: str, check) -> None:
    """Resize to each of :data:`WIDTHS`, let the page re-lay out, run ``check`` (asserts on
    the layout at that width), and take the screenshots."""
    for width in WIDTHS:
        browser.driver.set_window_size(width, 1000)
        time.sleep(1.0)
        assert page_fits(browser), f"{name}: the page scrolls sideways at {width} px"
        check(width)
    screenshot(browser, f"layout-{name}", WIDTHS)


def timed(what: str, start: float) -> None:
    print(f"{what}: {time.perf_counter() - start:.1f} s")


def column_pixels(browser) -> tuple[int, float]:
    """(columns, pixels per column) of the head heatmap's key axis as drawn."""
    return browser.driver.execute_script(
        "const gd = document.querySelector('#head-graph .js-plotly-plot');"
        "const t = gd.data.find(d => d.type === 'heatmap');"
        "const n = t.x.length;"
        "return [n, gd._fullLayout.xaxis2._length / n];"
    )


def titles_fit(browser) -> bool:
    """Every comparison card's title stays inside its card."""
    return browser.driver.execute_script(
        "return Array.from(document.querySelectorAll('.compare-title')).every("
        "  el => el.scrollWidth <= el.clientWidth"
        "    && el.getBoundingClientRect().right <= window.innerWidth);"
    )


def test_layout_holds_with_100_heads_and_8k_tokens(dash_duo, wb_app, lm):
    prompt = long_prompt(lm)
    dash_duo.start_server(wb_app, port=free_port())
    dash_duo.driver.set_window_size(1280, 1000)
    dash_duo.wait_for_element("#run-forward", timeout=60)

    # -- a 100-head intervention on the default prompt -------------------------------------
    open_tab(dash_duo, "intervene")
    type_into(dash_duo, "iv-heads", HUNDRED_HEADS)
    info = wait_text(dash_duo, "#iv-heads-info", "100 heads", timeout=30)
    assert info == "100 heads: " + HUNDRED_HEADS, info  # 12 items: whole layers as L5H*
    set_value(dash_duo, "iv-n", "3")
    t0 = time.perf_counter()
    click(dash_duo, "#iv-run")
    wait_until(lambda: dash_duo.driver.find_elements("id", "iv-new-text"), what="the comparison")
    timed("intervention, 100 heads, 3 new tokens", t0)
    title = text_of(dash_duo, "#iv-compare .intervened .compare-title")
    assert title.startswith("ZeroAblation of 100 heads: L0H*, L1H*"), title
    assert title.endswith("L10H*, L11H0"), title
    at_widths(dash_duo, "intervene-100-heads", lambda w: titles_fit(dash_duo))

    # -- an 8,180-token prompt --------------------------------------------------------------
    open_tab(dash_duo, "explorer")
    set_value(dash_duo, "prompt", prompt)
    t0 = time.perf_counter()
    click(dash_duo, "#run-forward")
    wait_text(dash_duo, "#run-status", f"{N_TOKENS} tokens ·", timeout=900)
    timed(f"explorer forward, {N_TOKENS} tokens", t0)
    grid = wait_until(
        lambda: [t for t in plot_data(dash_duo, "grid-graph") if t["type"] == "heatmap"],
        what="the all-heads grid",
    )[0]
    # 64 overview blocks merged in pairs: 32 cells a tile side, gaps between tiles
    assert len(grid["x"]) == N_LAYERS * 32 + N_LAYERS - 1
    assert len(grid["y"]) == N_HEADS * 32 + N_HEADS - 1
    at_widths(dash_duo, "explorer-8k", lambda w: None)

    # one head's pooled overview: the exact-rows boxes hold 4-digit rows, shown whole
    type_into(dash_duo, "sel-layer-in", "3")
    type_into(dash_duo, "sel-head-in", "4")
    click(dash_duo, "#open-head")
    wait_until(
        lambda: "block-pooled overview" in text_of(dash_duo, "#head-graph .gtitle"),
        what="the head's overview",
    )
    start = wait_until(
        lambda: dash_duo.driver.find_element("id", "win-start").get_attribute("value"),
        what="the window rows",
    )
    assert start == str(N_TOKENS - 64)
    at_widths(dash_duo, "head-overview-8k", lambda w: fits(dash_duo, "win-start"))

    # its exact rows: the last 64 queries against the first keys, their neighbourhood, a sum
    t0 = time.perf_counter()
    click(dash_duo, "#win-show")
    wait_until(
        lambda: "exact attention of query rows" in text_of(dash_duo, "#head-graph .gtitle"),
        timeout=900,
        what="the exact rows",
    )
    timed("exact rows 8116-8179 of one head", t0)
    assert "Σ column = keys 4–8051 summed" in text_of(dash_duo, "#head-graph .gtitle")
    cols, _ = column_pixels(dash_duo)
    assert cols == maps.WINDOW_FIRST_KEYS + 1 + maps.WINDOW_KEY_MARGIN + 64

    def wide_columns(width: int) -> None:
        _, pixels = column_pixels(dash_duo)
        assert pixels >= 4, f"{pixels:.1f}-pixel columns at {width} px"

    at_widths(dash_duo, "head-rows-8k", wide_columns)
    assert severe_logs(dash_duo) == []
