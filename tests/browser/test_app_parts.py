"""The app's pure pieces, without a browser or a model: pooled-map arithmetic, labels, figures,
the tqdm progress parser and the session store."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from app import figures
from app.state import SessionStore
from app.views.explorer import figures as explorer_figures
from workbench import charts, maps


def causal_attention(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(n, n))
    scores[np.triu_indices(n, 1)] = -np.inf
    a = np.exp(scores - scores.max(-1, keepdims=True))
    return a / a.sum(-1, keepdims=True)


def kernel_pooled(a: np.ndarray, b: int) -> np.ndarray:
    """What the kernels return: the mean over each b x b tile's cells (edge tiles smaller)."""
    n = a.shape[0]
    m = -(-n // b)
    out = np.zeros((m, m))
    for i in range(m):
        for j in range(m):
            out[i, j] = a[i * b : (i + 1) * b, j * b : (j + 1) * b].mean()
    return out


@pytest.mark.parametrize(("n", "b", "factor"), [(10, 1, 3), (37, 2, 4), (64, 4, 2), (50, 3, 5)])
def test_pooled_mass_rows_sum_to_one_and_regroup_is_exact(n, b, factor):
    a = causal_attention(n)
    mass = maps.pooled_to_mass(kernel_pooled(a, b), n, b)
    np.testing.assert_allclose(mass.sum(-1), 1.0, atol=1e-9)
    merged = maps.regroup_mass(mass, n, b, factor)
    direct = maps.pooled_to_mass(kernel_pooled(a, b * factor), n, b * factor)
    np.testing.assert_allclose(merged, direct, atol=1e-6)


def test_token_labels_are_unique_and_show_whitespace():
    labels = figures.token_labels(["The", " cat", " cat", "\n", ""])
    assert labels == ["0 The", "1 ␣cat", "2 ␣cat", "3 ⏎", "4 ∅"]
    assert len(set(labels)) == len(labels)
    assert figures.token_text("a" * 30).endswith("…")


def test_thumbnail_grid_maps_clicks_to_heads():
    thumbs = np.random.default_rng(0).random((4, 3, 5, 5)).astype(np.float32)
    fig = explorer_figures.thumbnail_grid_figure(thumbs)
    trace = fig.data[0]
    xs, ys = np.asarray(trace.x), np.asarray(trace.y)
    z = np.asarray(trace.z, dtype=float)
    # every finite cell lies within 0.45 of its head's integer coordinates
    for (r, c), v in np.ndenumerate(z):
        if np.isfinite(v):
            layer, head = round(xs[c]), round(ys[r])
            assert abs(xs[c] - layer) < 0.46 and abs(ys[r] - head) < 0.46
    assert np.isfinite(z).sum() == thumbs.size


def test_score_grid_uses_a_diverging_scale_for_signed_scores():
    df = pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], "score": [-1.0, 0.5, 2.0, 0.1]})
    vals = figures.score_grid_values(df, 2, 2)
    assert vals["colorscale"] == figures.DIVERGING_SCALE
    assert vals["zmin"] == -vals["zmax"] == -2.0
    assert vals["z"] == [[-1.0, 2.0], [0.5, 0.1]]


def test_causal_figure_shows_changes_from_the_unablated_value():
    causal = {"metric": "loss", "k": 3, "base": 2.0, "top_k": 2.5, "random_k": [2.1, 1.9],
              "random_k_mean": 2.0, "mode": "zero", "higher_is_better": False}  # fmt: skip
    fig = charts.causal_figure(causal)
    assert list(fig.data[0].y) == pytest.approx([0.5, 0.0])
    assert list(fig.data[1].y) == pytest.approx([0.1, -0.1])


def test_scan_reports_progress_to_a_callback_and_keeps_finished_items_on_interrupt():
    from workbench.analyzers import Scan

    seen = []
    with Scan([1, 2, 3, 4], "sinks", lambda *item: seen.append(item)) as scan:
        for item in scan:
            if item == 3:
                raise KeyboardInterrupt
    assert seen == [("sinks", 0, 4), ("sinks", 1, 4), ("sinks", 2, 4)]
    assert scan.done == 2 and scan.interrupted


def test_session_store_keeps_sessions_and_runs_apart(tmp_path):
    store = SessionStore(str(tmp_path / "s"))
    store.put("sessA", "run1", "thumbs", np.ones(3))
    store.put("sessB", "run1", "thumbs", np.zeros(3))
    assert store.get("sessA", "run1", "thumbs").sum() == 3
    assert store.get("sessB", "run1", "thumbs").sum() == 0
    store.drop_run("sessA", "run1")
    assert store.get("sessA", "run1", "thumbs") is None
    assert store.get("sessB", "run1", "thumbs") is not None
    assert store.get("../etc", "run1", "x", "default") == "default"
    with pytest.raises(ValueError):
        store.put("a/b", "run1", "x", 1)


def test_causal_chart_bars_start_at_the_unablated_value():
    causal = {"metric": "acc", "k": 2, "base": 0.8, "top_k": 0.3, "random_k": [0.7, 0.9],
              "random_k_mean": 0.8}  # fmt: skip
    fig = charts.causal_figure(causal)
    bars = fig.data[0]
    assert list(bars.base) == pytest.approx([0.8, 0.8])
    assert [b + d for b, d in zip(bars.base, bars.y, strict=True)] == pytest.approx([0.3, 0.8])
    lo, hi = fig.layout.yaxis.range
    lo2, hi2 = fig.layout.yaxis2.range  # the "change" axis is the metric axis shifted by base
    assert (lo - lo2, hi - hi2) == pytest.approx((0.8, 0.8))


def test_causal_chart_title_wraps_the_verdict_for_a_narrow_panel():
    verdict = "no evidence: top-5 hurts no more than random-5 (p = 0.76, and 20 draws cannot reach)"
    causal = {"metric": "acc", "k": 5, "base": 0.8, "top_k": 0.7, "random_k": [0.7, 0.75],
              "verdict": verdict, "effect_top_lo": -0.25, "effect_top_hi": 0.5}  # fmt: skip
    title = charts.causal_figure(causal).layout.title.text
    lines = [part.removeprefix("<sup>").removesuffix("</sup>") for part in title.split("<br>")]
    verdict_lines = lines[2:]
    assert all(len(line) <= charts.TITLE_CHARS for line in verdict_lines)
    assert " ".join(verdict_lines) == verdict + " top-k effect 95% CI [-0.25, 0.5]"


def test_sink_mask_and_block_geometry():
    sink = np.array([0.25, 0.15, 0.05, 0.35])
    assert maps.sink_mask(sink).tolist() == [False, True, False, True]
    assert maps.sink_mask(np.array([0.35]), offset=0).tolist() == [True]
    assert maps.block_max(np.array([1.0, 3.0, 2.0]), 2, 2).tolist() == [3.0, 2.0]
    vis = maps.block_visibility(3, 4, 10)  # blocks 0-3, 4-7, 8-9
    assert vis.tolist() == [[True, False, False], [True, True, False], [True, True, True]]
