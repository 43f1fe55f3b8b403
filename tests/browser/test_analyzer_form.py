"""The atlas analyzer form built from the analyzer's signature, and the explorer's sink marks
and stale mark, in a real headless Chromium on the embedded model."""

from __future__ import annotations

import json

import pytest

from tests.browser.helpers import (
    WIDTHS,
    click,
    fits,
    free_port,
    open_tab,
    screenshot,
    set_value,
    severe_logs,
    text_of,
    type_into,
    wait_text,
    wait_until,
)

pytestmark = [pytest.mark.model, pytest.mark.slow]


def start(browser, app, width: int = 1280) -> None:
    browser.start_server(app, port=free_port())
    browser.driver.set_window_size(width, 1000)
    browser.wait_for_element("#run-forward", timeout=60)


def field_id(name: str) -> str:
    """The DOM id Dash gives the pattern-matching id of a generated field."""
    return json.dumps({"name": name, "type": "an-field"}, separators=(",", ":"))


def field(browser, name: str):
    """The generated field's element (None while it is not on the page)."""
    return browser.driver.execute_script(
        "return document.getElementById(arguments[0]);", field_id(name)
    )


def store_data(browser, store_id: str):
    return browser.driver.execute_script(
        "const s = window.store.getState(); let node = s.layout;"
        "for (const key of s.paths.strs[arguments[0]]) node = node[key];"
        "return node.props.data;",
        store_id,
    )


def test_the_form_follows_the_analyzers_signature(dash_duo, wb_app):
    start(dash_duo, wb_app)
    open_tab(dash_duo, "atlas")
    # sinks: its own parameters, with the signature's defaults and the checks' ranges
    wait_until(lambda: field(dash_duo, "prompt_tokens"), timeout=30, what="the sinks fields")
    assert field(dash_duo, "prompt_tokens").get_attribute("value") == "64"
    assert field(dash_duo, "min_queries").get_attribute("value") == "1"
    form = text_of(dash_duo, "#an-form")
    assert "2..8192" in form and "0..1" in form and "Not in the form: progress" in form
    assert dash_duo.driver.find_element("id", "an-nprompts").get_attribute("value") == "16"

    # a 4-digit value is shown whole, and refused by the analyzer's own check as it is typed
    set_value(dash_duo, "an-topk", "1686")
    assert fits(dash_duo, "an-topk") and fits(dash_duo, field_id("prompt_tokens"))
    wait_text(dash_duo, "#an-form-check", "top_k must be an integer in 1..135, got 1686", 30)
    set_value(dash_duo, field_id("prompt_tokens"), "")
    wait_text(dash_duo, "#an-form-check", "prompt_tokens is empty or not a number", 30)
    assert "None" not in text_of(dash_duo, "#an-form-check")
    screenshot(dash_duo, "atlas-form-errors", WIDTHS)

    # a run takes the fields' values
    set_value(dash_duo, "an-topk", "3")
    set_value(dash_duo, "an-nprompts", "4")
    set_value(dash_duo, field_id("prompt_tokens"), "24")
    set_value(dash_duo, field_id("draws"), "2")
    set_value(dash_duo, field_id("min_queries"), "20")
    wait_until(lambda: text_of(dash_duo, "#an-form-check") == "", 30, "the form to be good")
    click(dash_duo, "#an-run")
    wait_text(dash_duo, "#an-status", "heads scored")
    params = store_data(dash_duo, "atlas-results")["sinks"]["params"]
    assert params["prompt_tokens"] == 24 and params["draws"] == 2 and params["top_k"] == 3
    assert params["min_queries"] == 20 and params["n_prompts"] == 4 and params["quick"] is True
    assert text_of(dash_duo, "#an-error") == ""

    # retrieval: other fields, no prompts box (it has no n_prompts)
    dash_duo.select_dcc_dropdown("#an-name", value="retrieval")
    wait_until(lambda: field(dash_duo, "lengths"), timeout=30, what="the retrieval fields")
    assert field(dash_duo, "lengths").get_attribute("value") == "256, 512"
    assert field(dash_duo, "n_needles").get_attribute("value") == "2"  # its quick size
    assert not dash_duo.driver.find_element("id", "an-wrap-n-prompts").is_displayed()
    assert field(dash_duo, "prompt_tokens") is None
    # unticking quick shows the full task's sizes
    click(dash_duo, "#an-quick input")
    wait_until(lambda: field(dash_duo, "n_needles").get_attribute("value") == "8", 30, "sizes")
    screenshot(dash_duo, "atlas-form-retrieval", WIDTHS)
    assert severe_logs(dash_duo) == []


def bar_colours(browser) -> tuple[list, list, list]:
    """The sink strip of the head heatmap: key labels, sink scores and bar colours."""
    return browser.driver.execute_script(
        "const gd = document.querySelector('#head-graph .js-plotly-plot');"
        "const bar = gd.data.find(t => t.type === 'bar');"
        "const v = a => Array.from(a && a._inputArray !== undefined ? a._inputArray : a);"
        "return [v(bar.x), v(bar.y), v(bar.marker.color)];"
    )


def test_sink_marks_follow_the_sinks_rule_and_stale_runs_are_marked(dash_duo, wb_app):
    from app.views.explorer.figures import HIDDEN_COLOR, MUTED, SINK_COLOR, UNJUDGED

    start(dash_duo, wb_app)
    prompt = (
        "The committee met on Tuesday to review the budget, and after a long discussion "
        "about the new library, the park and the roads, it voted to delay the decision."
    )
    type_into(dash_duo, "prompt", prompt)
    click(dash_duo, "#run-forward")
    wait_text(dash_duo, "#run-status", "tokens ·")
    wait_until(lambda: bar_colours(dash_duo)[0], 60, "the sink strip")
    labels, sink, colours = bar_colours(dash_duo)
    n = len(labels)
    assert n > 20
    for j, (score, colour) in enumerate(zip(sink, colours, strict=True)):
        if n - j < 20:  # seen by fewer than 20 queries: never marked
            expected = UNJUDGED
        elif j == 0:
            expected = SINK_COLOR if score > 0.3 else MUTED
        else:
            expected = HIDDEN_COLOR if score > 0.1 else MUTED
        assert colour == expected, (j, score, colour)
    legend = text_of(dash_duo, "#head-help") + text_of(dash_duo, "#token-legend")
    assert "first-token sink" in legend and "hidden sink" in legend and "not judged" in legend
    assert not dash_duo.driver.find_element("id", "explorer-stale").is_displayed()

    # editing the prompt marks the views stale; running it again clears the mark
    type_into(dash_duo, "prompt", prompt + " Then")
    wait_text(dash_duo, "#explorer-stale", "stale: the prompt changed", 30)
    screenshot(dash_duo, "explorer-stale", WIDTHS)
    click(dash_duo, "#run-forward")
    wait_until(
        lambda: not dash_duo.driver.find_element("id", "explorer-stale").is_displayed(),
        120,
        "the stale mark to go",
    )
    assert severe_logs(dash_duo) == []
