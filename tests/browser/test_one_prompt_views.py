"""The one-prompt views (head contributions, logit lens, clean vs corrupted patching) in a real
headless Chromium on the embedded model: each view computes on the default IOI prompt, its
figure shows sensible numbers, a top head opens its attention map in the explorer, and every
view is photographed at 1,280 and 1,920 px wide (test-artifacts/screenshots/)."""

from __future__ import annotations

import math

import pytest

from tests.browser.helpers import (
    WIDTHS,
    click,
    free_port,
    open_tab,
    plot_data,
    screenshot,
    severe_logs,
    text_of,
    type_into,
    wait_text,
    wait_until,
)

pytestmark = [pytest.mark.model, pytest.mark.slow]

N_LAYERS, N_HEADS = 30, 9
CORRUPTED = "When Mary and John went to the store, Mary gave a drink to"
N_TOKENS = 14  # the default prompt: "When Mary and John went to the store, John gave a drink to"


def heatmaps(browser, graph_id: str) -> list[dict]:
    return wait_until(
        lambda: [t for t in plot_data(browser, graph_id) if t["type"] == "heatmap" and t["z"]],
        what=f"a heatmap in #{graph_id}",
    )


def values(trace: dict) -> list[float]:
    return [v for row in trace["z"] for v in row if v is not None]


def test_contributions_lens_and_patching(dash_duo, wb_app):
    dash_duo.start_server(wb_app, port=free_port())
    dash_duo.driver.set_window_size(1280, 1000)
    dash_duo.wait_for_element("#run-forward", timeout=60)

    # (a) contributions to the model's next token (' Mary')
    open_tab(dash_duo, "contributions")
    click(dash_duo, "#contrib-run")
    wait_text(dash_duo, "#contrib-status", "done in")
    wait_text(dash_duo, "#contrib-summary", "logit[' Mary']")
    grid = heatmaps(dash_duo, "contrib-graph")[0]
    assert len(grid["z"]) == N_HEADS and len(grid["z"][0]) == N_LAYERS
    dla = values(grid)
    assert len(dla) == N_LAYERS * N_HEADS and max(abs(v) for v in dla) > 0.5
    by_pos = heatmaps(dash_duo, "contrib-pos-graph")[0]
    assert len(by_pos["z"]) == 12 and len(by_pos["x"]) == N_TOKENS
    assert by_pos["x"][1] == "1 ␣Mary"
    first = dash_duo.find_element("#contrib-top button")
    hid = first.text
    screenshot(dash_duo, "contributions", WIDTHS)

    # a top head opens its attention map in the explorer (the prompt is run for it)
    first.click()
    wait_text(dash_duo, "#head-title", hid)
    wait_text(dash_duo, "#run-status", "tokens ·")
    wait_until(lambda: plot_data(dash_duo, "head-graph"), what="the head's attention map")

    # (b) the logit lens of every position: the last row is the model's own output
    open_tab(dash_duo, "lens")
    click(dash_duo, "#lens-run")
    wait_text(dash_duo, "#lens-status", "done in")
    wait_text(dash_duo, "#lens-summary", "first the top token at")
    lens = heatmaps(dash_duo, "lens-graph")[0]
    assert lens["y"][0] == "embed" and lens["y"][-1] == "L29" and len(lens["y"]) == 31
    assert len(lens["x"]) == N_TOKENS
    probs = values(lens)
    assert all(0 <= p <= 1 for p in probs)
    assert 0.8 < lens["z"][-1][-1] < 1  # p(' Mary') at the output: 0.92
    assert lens["z"][0][-1] < 0.01  # nothing of it at the embeddings
    click(dash_duo, "#lens-show input[value='rank']")
    wait_until(
        lambda: heatmaps(dash_duo, "lens-graph")[0]["z"][-1][-1] == 0,  # log10(rank 1)
        what="the rank view",
    )
    screenshot(dash_duo, "lens", WIDTHS)

    # (c) clean vs corrupted patching; a corrupted prompt of another length is refused
    open_tab(dash_duo, "patching")
    wait_text(dash_duo, "#patch-tokens", "14 tokens each")
    type_into(dash_duo, "patch-corrupt", "When Mary and John went to the store, Mary gave")
    wait_text(dash_duo, "#patch-tokens", "corrupted prompt 11")
    click(dash_duo, "#patch-run")
    wait_text(dash_duo, "#patch-error", "same token count")
    type_into(
        dash_duo, "patch-corrupt", "When Mary and John went to the store, Mary gave a drink to"
    )
    wait_text(dash_duo, "#patch-tokens", "14 tokens each")
    click(dash_duo, "#patch-run")
    wait_text(dash_duo, "#patch-status", "patched layer")  # progress by layer, with an estimate
    wait_text(dash_duo, "#patch-status", "done in")
    assert text_of(dash_duo, "#patch-error") == ""
    wait_text(dash_duo, "#patch-summary", "logit[' Mary'] − logit[' John']")
    patch = heatmaps(dash_duo, "patch-graph")[0]
    assert len(patch["z"]) == N_HEADS and len(patch["z"][0]) == N_LAYERS
    restored = values(patch)
    assert all(math.isfinite(v) for v in restored)
    assert patch["z"][3][23] > 0.3  # L23H3 restores most of the logit difference alone
    screenshot(dash_duo, "patching", WIDTHS)

    # a result computed for another prompt says so
    type_into(dash_duo, "prompt", "The cat sat on the mat.")
    wait_text(dash_duo, "#patch-summary", "stale: the prompt changed")

    assert severe_logs(dash_duo) == []
