"""Permalinks: the address bar follows the view (``?view=<token>``), and opening that link -
after a reload, or in another browser - puts back the prompt, the selected head, the tab and
the analyzer results (not computed again), and runs the prompt again; a link the server does
not know says so in the page."""

from __future__ import annotations

from urllib.parse import parse_qs, urlparse

import pytest

from tests.browser.helpers import (
    click,
    click_grid_cell,
    free_port,
    open_tab,
    set_value,
    severe_logs,
    text_of,
    type_into,
    wait_text,
    wait_until,
)

pytestmark = [pytest.mark.model, pytest.mark.slow]

PROMPT = "The cat sat on the mat. The cat sat on the"


def token(browser) -> str | None:
    values = parse_qs(urlparse(browser.driver.current_url).query).get("view") or [None]
    return values[0]


def store_data(browser, store_id: str):
    return browser.driver.execute_script(
        "const s = window.store.getState(); let node = s.layout;"
        "for (const key of s.paths.strs[arguments[0]]) node = node[key];"
        "return node.props.data;",
        store_id,
    )


def stable_token(browser) -> str:
    """The view token once the address bar stops changing."""
    last = {"t": None, "n": 0}

    def settled():
        now = token(browser)
        last["n"] = last["n"] + 1 if now and now == last["t"] else 0
        last["t"] = now
        return now if last["n"] >= 8 else None  # the same token for 2 s

    return wait_until(settled, timeout=60, what="a stable view link")


def check_restored(browser, link: str) -> None:
    browser.driver.get(link)
    wait_text(browser, "#permalink", "Restored view", timeout=60)
    wait_text(browser, "#run-status", "tokens ·")  # the prompt ran again
    assert browser.driver.find_element("id", "prompt").get_attribute("value") == PROMPT
    wait_text(browser, "#head-title", "L18H8", timeout=60)
    results = store_data(browser, "atlas-results")
    assert sorted(results) == ["sinks"] and results["sinks"]["params"]["n_prompts"] == 2
    assert stable_token(browser) == urlparse(link).query.split("=")[1]  # same view, same link
    open_tab(browser, "atlas")
    wait_text(browser, "#score-table", "L", timeout=60)  # drawn from the restored results
    assert text_of(browser, "#an-status") == ""  # no analyzer job ran


def test_a_view_link_survives_a_reload_and_opens_in_another_browser(
    dash_duo, second_browser, wb_app
):
    dash_duo.start_server(wb_app, port=free_port())
    dash_duo.driver.set_window_size(1400, 1000)
    dash_duo.wait_for_element("#run-forward", timeout=60)
    assert token(dash_duo) is None  # nothing has run: no link yet
    set_value(dash_duo, "prompt", PROMPT)
    click(dash_duo, "#run-forward")
    wait_text(dash_duo, "#run-status", "tokens ·")
    first = stable_token(dash_duo)
    assert first in text_of(dash_duo, "#permalink")
    # an analyzer result and a head opened from its grid change the view, hence the link
    open_tab(dash_duo, "atlas")
    set_value(dash_duo, "an-nprompts", "2")
    type_into(dash_duo, "an-params", '{"prompt_tokens": 24, "causal": false}')
    click(dash_duo, "#an-run")
    wait_text(dash_duo, "#an-status", "heads scored")
    click_grid_cell(dash_duo, "score-graph", 18, 8, 30, 9)
    wait_text(dash_duo, "#head-title", "L18H8", timeout=60)
    link = dash_duo.driver.current_url
    view = stable_token(dash_duo)
    assert view != first
    link = link.split("?")[0] + f"?view={view}"

    check_restored(dash_duo, link)  # a reload of the page
    second_browser.driver.set_window_size(1400, 1000)
    check_restored(second_browser, link)  # another browser, its own session
    assert severe_logs(dash_duo) == []

    # a link this server does not know
    dash_duo.driver.get(link.split("?")[0] + "?view=0123456789abcdef")
    wait_text(dash_duo, "#permalink", "not on this server", timeout=60)
