"""The head atlas map in the app: running the atlas analyzer shows its 2-D map (one trace per
cluster, named by the cluster's label, every head a point), hidden for other analyzers; a
click on a point opens that head in the explorer."""

from __future__ import annotations

import time

import pytest

from tests.browser.helpers import (
    click,
    free_port,
    open_tab,
    screenshot,
    severe_logs,
    type_into,
    wait_text,
    wait_until,
)

pytestmark = [pytest.mark.model, pytest.mark.slow]


def pick_analyzer(browser, name: str) -> None:
    """Pick ``name`` in the analyzer dropdown once it is on screen (not under the tab bar)."""
    from selenium.webdriver.common.keys import Keys

    el = browser.wait_for_element("#an-name", timeout=30)
    browser.driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", el)
    time.sleep(0.5)
    el.click()
    search = browser.wait_for_element(
        "#an-name input.dash-dropdown-search, input.dash-dropdown-search"
    )
    search.send_keys(name)
    time.sleep(0.3)
    search.send_keys(Keys.ENTER)
    wait_until(lambda: name in el.text, timeout=10, what=f"{name} picked")


def map_traces(browser) -> list:
    return browser.driver.execute_script(
        "const gd = document.querySelector('#atlas-map .js-plotly-plot');"
        "return gd && gd.data ? gd.data.map(t => ({name: t.name,"
        "  ids: Array.from(t.customdata)})) : [];"
    )


def test_atlas_map_shows_clusters_and_opens_a_head(dash_duo, wb_app):
    dash_duo.start_server(wb_app, port=free_port())
    dash_duo.driver.set_window_size(1400, 1000)
    dash_duo.wait_for_element("#run-forward", timeout=60)
    open_tab(dash_duo, "atlas")
    pick_analyzer(dash_duo, "atlas")
    type_into(dash_duo, "an-params", '{"n_prompts": 2, "n_clusters": 4, "prompt_tokens": 24}')
    click(dash_duo, "#an-run")
    wait_text(dash_duo, "#an-status", "heads scored")
    traces = wait_until(lambda: map_traces(dash_duo), timeout=60, what="the atlas map")
    assert len(traces) == 4  # one trace per cluster
    assert all(t["name"].startswith("high ") or t["name"] for t in traces)
    heads = [h for t in traces for h in t["ids"]]
    assert len(heads) == 30 * 9 and len(set(heads)) == 30 * 9
    assert dash_duo.driver.find_element("id", "atlas-map-wrap").is_displayed()
    screenshot(dash_duo, "atlas-map")
    # a click on a point opens its head: click the first point of the smallest cluster
    smallest = min(traces, key=lambda t: len(t["ids"]))
    head = smallest["ids"][0]
    dash_duo.driver.execute_script(
        "const gd = document.querySelector('#atlas-map .js-plotly-plot');"
        "const i = gd.data.findIndex(t => t.name === arguments[0]);"
        "gd.emit('plotly_click', {points: [{curveNumber: i, pointNumber: 0,"
        "  customdata: gd.data[i].customdata[0], x: gd.data[i].x[0], y: gd.data[i].y[0]}]});",
        smallest["name"],
    )
    wait_text(dash_duo, "#head-title", head, timeout=60)
    # another analyzer's result hides the map
    open_tab(dash_duo, "atlas")
    pick_analyzer(dash_duo, "sinks")
    wait_until(
        lambda: not dash_duo.driver.find_element("id", "atlas-map-wrap").is_displayed(),
        timeout=30,
        what="the map hidden for sinks",
    )
    assert severe_logs(dash_duo) == []
