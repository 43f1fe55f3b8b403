"""The report's HTML opens offline: loaded from a file:// URL in Debian's headless Chromium
with the network cut off, it logs no console error and draws every plot.

No model: the report is rendered from small made-up analyzer tables. A control page that
loads plotly.js from a CDN must log an error under the same conditions, so a report that
needed the network could not pass.
"""

from __future__ import annotations

import re
import time

import numpy as np
import pandas as pd
import pytest

from tests.browser.conftest import CHROME_ARGS, CHROMIUM, browser_available

pytestmark = pytest.mark.skipif(
    not browser_available(),
    reason=f"no browser: {CHROMIUM} and chromedriver are needed (run `make browser`)",
)

LAYERS, HEADS = 4, 3


def analyzer_frame(seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        [
            {"layer": layer, "head": head, "head_id": f"L{layer}H{head}"}
            for layer in range(LAYERS)
            for head in range(HEADS)
        ]
    )
    df["score"] = rng.random(len(df))
    df.attrs["causal"] = {
        "metric": "mean log-prob",
        "higher_is_better": True,
        "mode": "mean",
        "k": 2,
        "draws": 2,
        "base": -1.0,
        "top_k": -2.0,
        "random_k_mean": -1.1,
        "random_k": [-1.05, -1.15],
        "top_heads": ["L1H2", "L3H0"],
        "random_heads": [["L1H0", "L3H1"], ["L1H1", "L3H2"]],
    }
    return df


@pytest.fixture(scope="module")
def report_html(tmp_path_factory):
    from workbench.report import assemble, render

    results = {"tiny": {"sinks": analyzer_frame(0), "previous_token": analyzer_frame(1)}}
    atlas = results["tiny"]["sinks"][["layer", "head", "head_id"]].copy()
    atlas["x"], atlas["y"] = np.arange(len(atlas)), np.arange(len(atlas)) % 5
    atlas["cluster"] = (atlas["head"] == 0).astype(int)
    atlas["cluster_label"] = np.where(atlas["head"] == 0, "sink", "other")
    atlas["score"] = np.linspace(0, 1, len(atlas))
    results["tiny"]["atlas"] = atlas
    tokens = ["The", " cat", " sat", " on", " the", " mat"]
    examples = [
        {
            "model": "tiny",
            "analyzer": "sinks",
            "head_id": "L1H2",
            "tokens": tokens,
            "map": np.tril(np.ones((6, 6))) / np.arange(1, 7)[:, None],
        }
    ]
    causal = assemble.causal_table({"tiny": {a: results["tiny"][a] for a in ("sinks",)}})
    path = tmp_path_factory.mktemp("report") / "report.html"
    render.render_html(path, results, causal, examples, {"params": {"seed": 0}, "versions": {}})
    return path


@pytest.fixture
def offline_chromium():
    """Headless Chromium with its console log kept and no network at all (DevTools offline
    emulation, plus a proxy that refuses every connection)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options

    options = Options()
    options.binary_location = CHROMIUM
    for arg in CHROME_ARGS:
        options.add_argument(arg)
    options.add_argument("--proxy-server=http://127.0.0.1:9")
    options.add_argument("--proxy-bypass-list=<-loopback>")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options)
    try:
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd(
            "Network.emulateNetworkConditions",
            {"offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1},
        )
        yield driver
    finally:
        driver.quit()


def severe(driver) -> list[dict]:
    return [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def wait_for(check, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s")


def test_a_page_that_needs_the_network_logs_an_error(offline_chromium, tmp_path):
    page = tmp_path / "cdn.html"
    page.write_text(
        "<!DOCTYPE html><html><head>"
        "<script src='https://cdn.plot.ly/plotly-2.35.2.min.js'></script>"
        "</head><body>needs the network</body></html>",
        encoding="utf-8",
    )
    offline_chromium.get(page.as_uri())
    entries = wait_for(lambda: severe(offline_chromium), timeout=20)
    assert any("plotly" in e["message"] for e in entries), entries


def test_report_html_opens_offline_without_console_errors(offline_chromium, report_html):
    html = report_html.read_text(encoding="utf-8")
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", html)  # nothing fetched
    n_plots = html.count('class="plotly-graph-div"')
    assert n_plots >= 5  # two grids, the atlas, the causal chart, an example map

    offline_chromium.get(report_html.as_uri())
    drawn = "return document.querySelectorAll('.plot-container svg.main-svg').length"
    plots = "return document.querySelectorAll('.plot-container').length"
    wait_for(lambda: offline_chromium.execute_script(plots) == n_plots)
    assert offline_chromium.execute_script(drawn) >= n_plots
    assert offline_chromium.execute_script("return typeof window.Plotly") == "object"
    # every plot has drawn its data (a heatmap image, bars or points), not only empty axes
    empty = offline_chromium.execute_script(
        "return Array.from(document.querySelectorAll('.js-plotly-plot'))"
        ".filter(p => !p.querySelector('.heatmaplayer image, .bars path, .scatterlayer path'))"
        ".map(p => p.id)"
    )
    assert empty == []
    assert severe(offline_chromium) == []
