"""The Dash app in a real headless Chromium (dash[testing]), on the embedded model.

Each test starts the app on the shared test model, drives it like a user, checks what the
page shows, saves screenshots under test-artifacts/screenshots/, and asserts the browser
console has no errors. Jobs are kept small (short prompts, one analyzer prompt, a few new
tokens) so the file runs in a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import os

import pytest

from tests.browser.helpers import (
    click,
    click_grid_cell,
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

pytestmark = [pytest.mark.model, pytest.mark.slow]

N_LAYERS, N_HEADS = 30, 9


def start(browser, app=None):
    if app is not None:
        browser.start_server(app, port=free_port())
    browser.driver.set_window_size(1400, 1000)
    browser.wait_for_element("#run-forward", timeout=60)


def run_prompt(browser, prompt: str) -> None:
    type_into(browser, "prompt", prompt)
    click(browser, "#run-forward")
    wait_text(browser, "#run-status", "tokens ·")


def heatmap(browser, graph_id: str = "head-graph") -> dict:
    traces = wait_until(
        lambda: [t for t in plot_data(browser, graph_id) if t["type"] == "heatmap"],
        what=f"a heatmap in #{graph_id}",
    )
    return traces[0]


def downloaded(browser, suffix: str) -> bool:
    return any(f.endswith(suffix) for f in os.listdir(browser.download_path))


def test_explorer_run_click_head_heatmap_and_export(dash_duo, wb_app):
    start(dash_duo, wb_app)
    run_prompt(dash_duo, "The cat sat on the mat. The cat")
    wait_until(lambda: plot_data(dash_duo, "grid-graph"), what="the all-heads grid")

    # click head L3H5 in the all-heads grid -> its heatmap with token labels on both axes
    click_grid_cell(dash_duo, "grid-graph", 3, 5, N_LAYERS, N_HEADS)
    wait_text(dash_duo, "#head-title", "L3H5", timeout=60)
    wait_until(lambda: "L3H5" in str(dash_duo.driver.find_element("id", "head-graph").text))
    heat = heatmap(dash_duo)
    assert len(heat["z"]) == len(heat["y"]) == len(heat["x"]) == 9
    assert heat["x"][1] == "1 ␣cat" and heat["y"][0] == "0 The"
    row_sums = [sum(v for v in row if v is not None) for row in heat["z"]]
    assert all(abs(s - 1) < 0.02 for s in row_sums), row_sums

    # token view: click token 3 to make it the query
    wait_until(lambda: dash_duo.driver.find_elements("css selector", "#token-view .tok"))
    click(dash_duo, "#token-view .tok:nth-of-type(4)")
    wait_text(dash_duo, "#tokens-title", "from query 3", timeout=60)
    screenshot(dash_duo, "explorer")

    # export: attention map as CSV, the heatmap as standalone HTML and as PNG
    open_tab(dash_duo, "export")
    dash_duo.select_dcc_dropdown("#ex-table", index=3)
    click(dash_duo, "#ex-table-btn")
    wait_until(lambda: downloaded(dash_duo, ".csv"), timeout=60, what="the CSV download")
    click(dash_duo, "#ex-fig-format label:nth-of-type(3)")  # HTML
    click(dash_duo, "#ex-fig-btn")
    wait_until(lambda: downloaded(dash_duo, ".html"), timeout=60, what="the HTML download")
    click(dash_duo, "#ex-fig-format label:nth-of-type(1)")  # PNG, drawn by the browser
    click(dash_duo, "#ex-fig-btn")
    wait_until(lambda: downloaded(dash_duo, ".png"), timeout=60, what="the PNG download")
    screenshot(dash_duo, "export")
    assert text_of(dash_duo, "#ex-error") == ""
    assert severe_logs(dash_duo) == []


def store_data(browser, store_id: str):
    """The data of a ``dcc.Store`` as the page holds it (from Dash's redux store)."""
    return browser.driver.execute_script(
        "const s = window.store.getState(); let node = s.layout;"
        "for (const key of s.paths.strs[arguments[0]]) node = node[key];"
        "return node.props.data;",
        store_id,
    )


def test_atlas_job_fills_grid_and_opens_head(dash_duo, wb_app):
    start(dash_duo, wb_app)
    open_tab(dash_duo, "atlas")
    assert dash_duo.driver.find_element("css selector", "#an-quick input").is_selected()
    set_value(dash_duo, "an-nprompts", "4")
    set_value(dash_duo, "an-topk", "3")
    type_into(dash_duo, "an-params", '{"prompt_tokens": 24, "draws": 2}')
    click(dash_duo, "#an-run")
    # progress is reported while the job runs, then the grid and table fill
    wait_text(dash_duo, "#an-status", " elapsed", timeout=120)  # sinks: 2/4 · 3 s elapsed…
    wait_text(dash_duo, "#an-status", "heads scored")

    def filled():
        z = plot_data(dash_duo, "score-graph")[0]["z"]
        return sum(v is not None for row in z for v in row) == N_LAYERS * N_HEADS

    wait_until(filled, timeout=60, what="the score grid to fill")
    wait_text(dash_duo, "#score-table", "L")
    assert "top-3 heads ablated" in dash_duo.driver.find_element("id", "causal-graph").text
    assert "prompt_tokens=24" in text_of(dash_duo, "#an-attrs")
    # the evidence: quick warning, split-half stability and intervals next to the ranking,
    # the verdict with the top-k effect's interval and p-value in the causal panel
    evidence = text_of(dash_duo, "#an-evidence")
    assert "quick mode: weak evidence" in evidence
    assert "split-half Spearman" in evidence and "2 items per half" in evidence
    assert "score_lo / score_hi: 95% interval" in evidence
    verdict = text_of(dash_duo, "#causal-info .verdict")
    assert "top-3" in verdict and "p = " in verdict and "top-k effect 95% CI [" in verdict
    assert "None" not in text_of(dash_duo, "#causal-info")
    header = text_of(dash_duo, "#score-table")
    assert "score_lo (95% CI)" in header and "score_hi (95% CI)" in header
    # what the browser holds: no per-item arrays
    result = store_data(dash_duo, "atlas-results")["sinks"]
    assert "per_item" not in result["attrs"] and "random_k_items" not in result["attrs"]["causal"]
    assert result["attrs"]["quick"] is True and result["attrs"]["params"]["n_prompts"] == 4
    screenshot(dash_duo, "atlas")

    # clicking a head in the score grid opens it in the explorer
    click_grid_cell(dash_duo, "score-graph", 18, 8, N_LAYERS, N_HEADS)
    wait_text(dash_duo, "#head-title", "L18H8", timeout=60)

    # a second job, long enough to be cancelled: the page says so and stays usable
    open_tab(dash_duo, "atlas")
    set_value(dash_duo, "an-nprompts", "200")
    type_into(dash_duo, "an-params", '{"prompt_tokens": 256}')
    click(dash_duo, "#an-run")
    wait_until(
        lambda: dash_duo.driver.find_element("id", "an-cancel").is_enabled(),
        timeout=60,
        what="the cancel button",
    )
    click(dash_duo, "#an-cancel")
    wait_text(dash_duo, "#an-error", "cancelled", timeout=120)
    wait_text(dash_duo, "#an-status", "Stopped.", timeout=30)  # not the last progress line
    assert dash_duo.driver.find_element("id", "an-run").is_enabled()

    # the next job (some seconds) clears that message as it starts; without the causal
    # check the panel says so (no placeholder numbers)
    set_value(dash_duo, "an-nprompts", "48")
    type_into(dash_duo, "an-params", '{"prompt_tokens": 128}')
    click(dash_duo, "#an-causal input")
    click(dash_duo, "#an-run")
    wait_until(
        lambda: (
            text_of(dash_duo, "#an-error") == ""
            and dash_duo.driver.find_element("id", "an-cancel").is_enabled()
        ),
        timeout=60,
        what="the old error cleared while the new job runs",
    )
    wait_until(
        lambda: not dash_duo.driver.find_element("id", "an-cancel").is_enabled(),
        what="the job without causal check to end",
    )
    wait_text(dash_duo, "#causal-info", "No causal check run", timeout=60)
    assert text_of(dash_duo, "#an-error") == ""
    assert severe_logs(dash_duo) == []


def test_ablation_changes_the_continuation(dash_duo, wb_app):
    start(dash_duo, wb_app)
    type_into(dash_duo, "prompt", "The capital of France is")
    open_tab(dash_duo, "intervene")
    type_into(dash_duo, "iv-heads", "L0H*, L1H*")
    wait_text(dash_duo, "#iv-heads-info", "18 heads", timeout=30)
    type_into(dash_duo, "iv-targets", " Paris")
    set_value(dash_duo, "iv-n", "5")
    click(dash_duo, "#iv-run")
    wait_until(
        lambda: dash_duo.driver.find_elements("id", "iv-new-text"),
        what="the side-by-side continuations",
    )
    base, new = text_of(dash_duo, "#iv-base-text"), text_of(dash_duo, "#iv-new-text")
    assert base and new and base != new
    assert "ZeroAblation of 18 heads: L0H*, L1H*" in text_of(dash_duo, "#iv-compare")
    traces = plot_data(dash_duo, "kl-graph")
    assert traces and traces[0]["type"] == "bar" and len(traces[0]["x"]) == 5
    screenshot(dash_duo, "intervene")
    assert severe_logs(dash_duo) == []


def test_errors_are_shown_in_the_page(dash_duo, wb_app):
    start(dash_duo, wb_app)
    # empty prompt
    type_into(dash_duo, "prompt", " ")
    click(dash_duo, "#run-forward")
    wait_text(dash_duo, "#prompt-error", "prompt is empty")
    # prompt longer than the model's context
    set_value(dash_duo, "prompt", "hello " * 9000)
    click(dash_duo, "#run-forward")
    wait_text(dash_duo, "#prompt-error", "context of 8192 tokens")
    # out-of-range head in the explorer
    set_value(dash_duo, "sel-layer-in", "40")
    click(dash_duo, "#open-head")
    wait_text(dash_duo, "#explorer-error", "layer 40 is out of range", timeout=30)
    screenshot(dash_duo, "error_prompt_and_head")

    # out-of-range head in the intervene view: flagged while typing and when applied
    set_value(dash_duo, "prompt", "The capital of France is")
    open_tab(dash_duo, "intervene")
    type_into(dash_duo, "iv-heads", "L3H12")
    wait_text(dash_duo, "#iv-heads-info", "head 12 is out of range", timeout=30)
    set_value(dash_duo, "iv-n", "2")
    click(dash_duo, "#iv-run")
    wait_text(dash_duo, "#iv-error", "head 12 is out of range")
    screenshot(dash_duo, "error_intervene")

    # a failed job: the analyzer rejects its parameters inside the background job
    open_tab(dash_duo, "atlas")
    type_into(dash_duo, "an-params", '{"prompt_tokens": 1}')
    click(dash_duo, "#an-run")
    wait_text(dash_duo, "#an-error", "The sinks job failed")
    assert "prompt_tokens" in text_of(dash_duo, "#an-error")
    screenshot(dash_duo, "error_job")
    type_into(dash_duo, "an-params", "{oops")
    click(dash_duo, "#an-run")
    wait_text(dash_duo, "#an-error", "must be JSON")

    # the app keeps serving: a good prompt runs after all of that
    open_tab(dash_duo, "explorer")
    run_prompt(dash_duo, "Hello world")
    wait_until(lambda: plot_data(dash_duo, "grid-graph"), what="the grid after the errors")
    assert text_of(dash_duo, "#prompt-error") == ""
    assert severe_logs(dash_duo) == []


def test_two_sessions_do_not_share_state(dash_duo, second_browser, wb_app):
    start(dash_duo, wb_app)
    run_prompt(dash_duo, "Alpha beta gamma")
    assert "1 ␣beta" in heatmap(dash_duo)["x"]

    # a second browser (its own profile and storage) on the same server
    second_browser.server_url = dash_duo.server_url
    start(second_browser)
    assert text_of(second_browser, "#run-status") == ""
    assert plot_data(second_browser, "grid-graph") == []  # no run in this session
    run_prompt(second_browser, "Delta epsilon")
    assert "1 ␣epsilon" in heatmap(second_browser)["x"]

    # the first session still reads its own run (server-side arrays keyed by session)
    set_value(dash_duo, "sel-layer-in", "2")
    click(dash_duo, "#open-head")
    wait_text(dash_duo, "#head-title", "L2H0", timeout=60)
    wait_until(lambda: "L2H0" in dash_duo.driver.find_element("id", "head-graph").text)
    x = heatmap(dash_duo)["x"]
    assert "1 ␣beta" in x and not any("epsilon" in label for label in x)
    screenshot(second_browser, "second_session")
    assert severe_logs(dash_duo) == [] and severe_logs(second_browser) == []
