"""The one-prompt views' figures and lines from hand-made results (no model)."""

from __future__ import annotations

import math

import numpy as np

from app.views import contributions, lens, patching


def test_position_figure_keeps_the_strongest_positions_of_a_long_prompt():
    n = 300
    rows = np.zeros((2, n))
    rows[0, 7], rows[1, 250] = 2.0, -3.0  # the two positions that matter
    result = {
        "tokens": [f" t{i}" for i in range(n)],
        "by_position": rows.tolist(),
        "top": ["L1H2", "L3H0"],
    }
    trace = contributions.position_figure(result).data[0]
    assert len(trace.x) == contributions.MAX_COLUMNS
    assert "7 ␣t7" in trace.x and "250 ␣t250" in trace.x
    assert list(trace.x) == sorted(trace.x, key=lambda s: int(s.split()[0]))  # in prompt order
    assert (trace.zmin, trace.zmax) == (-3.0, 3.0)


def test_stale_and_progress_lines():
    result = {"prompt": "a b", "chat": False}
    assert not contributions.is_stale(result, "a b", [])
    assert contributions.is_stale(result, "a b c", [])
    assert contributions.is_stale(result, "a b", ["chat"])
    assert not contributions.is_stale(None, "x", [])


def test_patch_summary_says_when_there_is_nothing_to_restore():
    base = {"metric": "logit_diff", "answer": " Mary", "foil": " John", "n_tokens": 5}
    nan = {**base, "clean": 1.0, "corrupted_metric": 1.0, "normalized": [[math.nan] * 2] * 2}
    assert "nothing to restore" in patching.summary({**nan, "seconds": 1.0}, False)
    some = {**base, "clean": 2.0, "corrupted_metric": 0.0, "normalized": [[0.1, 0.7], [0.2, -0.4]]}
    text = patching.summary({**some, "seconds": 1.0}, True)
    assert "most restored by L0H1 (+0.70)" in text and "stale" in text


def test_lens_figure_values_per_mode():
    result = {
        "tokens": ["a", " b"],
        "positions": [0, 1],
        "layers": ["embed", "L0"],
        "fixed_target": False,
        "top_tokens": [[["x"] * 5, ["y"] * 5], [["z"] * 5, [" b"] * 5]],
        "top_probs": [[[0.5] * 5, [0.4] * 5], [[0.3] * 5, [0.9] * 5]],
        "targets": [" b", " c"],
        "target_probs": [[0.1, 0.2], [0.3, 0.9]],
        "target_ranks": [[100, 10], [1, 1]],
    }
    prob = lens.lens_figure(result, "prob").data[0]
    assert [list(r) for r in prob.z] == [[0.1, 0.2], [0.3, 0.9]]
    rank = lens.lens_figure(result, "rank").data[0]
    assert [list(r) for r in rank.z] == [[2.0, 1.0], [0.0, 0.0]]  # log10 of the ranks
    top = lens.lens_figure(result, "top").data[0]
    assert [list(r) for r in top.z] == [[0.5, 0.4], [0.3, 0.9]]
    assert list(prob.y) == ["embed", "L0"] and list(prob.x) == ["0 a", "1 ␣b"]
