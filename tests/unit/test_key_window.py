"""The key axis of an exact-rows window (workbench.maps.window_key_columns) and compact head
lists (workbench.format_heads), on hand-worked examples."""

from __future__ import annotations

import numpy as np
import pytest

import workbench
from workbench import maps
from workbench.errors import WorkbenchError


def test_window_far_from_the_start_sums_the_middle_keys():
    # rows 100..102 of a long prompt, first 2 keys and a margin of 3 keys shown one by one:
    # columns 0, 1, Σ 2..96, 97..102 -> 2 + 1 + 6 = 9 columns
    cols = maps.window_key_columns(100, 103, first=2, margin=3)
    assert (cols.first, cols.lo, cols.end, cols.summed) == (2, 97, 103, True)
    assert cols.starts.tolist() == [0, 1, 2, 97, 98, 99, 100, 101, 102]
    rows = np.zeros((3, 120))
    rows[0, 0], rows[0, 50], rows[0, 60], rows[0, 99] = 0.5, 0.1, 0.15, 0.25
    rows[1, 1], rows[1, 2], rows[1, 96], rows[1, 101] = 0.2, 0.3, 0.1, 0.4
    rows[2, 102] = 1.0
    w = cols.weights(rows)
    assert w.shape == (3, 9)
    np.testing.assert_allclose(w[0], [0.5, 0, 0.25, 0, 0, 0.25, 0, 0, 0])
    np.testing.assert_allclose(w[1], [0, 0.2, 0.4, 0, 0, 0, 0, 0.4, 0])
    np.testing.assert_allclose(w[2], [0, 0, 0, 0, 0, 0, 0, 0, 1.0])
    np.testing.assert_allclose(w.sum(-1), 1.0)  # each row keeps all its attention
    vis = cols.visibility(np.arange(100, 103))
    assert vis[0].tolist() == [True] * 7 + [False, False]  # row 100 sees keys up to 100
    assert vis[2].all()
    labels = cols.labels([f"{i} t" for i in range(120)])
    assert labels == ["0 t", "1 t", "Σ 2–96", "97 t", "98 t", "99 t", "100 t", "101 t", "102 t"]


def test_window_sink_strip_takes_the_strongest_key_of_the_sum():
    cols = maps.window_key_columns(100, 102, first=1, margin=2)  # 0, Σ 1..97, 98..101
    sink = np.zeros(110)
    sink[0], sink[40], sink[99] = 0.9, 0.3, 0.05
    np.testing.assert_allclose(cols.sink_scores(sink), [0.9, 0.3, 0, 0.05, 0, 0])
    rules = np.full(110, maps.NO_SINK, dtype=np.int8)
    rules[0], rules[40] = maps.FIRST_TOKEN_SINK, maps.HIDDEN_SINK
    out = cols.sink_rules(rules)
    assert out.tolist() == [maps.FIRST_TOKEN_SINK, maps.HIDDEN_SINK] + [maps.NO_SINK] * 4


def test_window_near_the_start_shows_every_key():
    cols = maps.window_key_columns(3, 10, first=4, margin=64)
    assert not cols.summed
    assert cols.starts.tolist() == list(range(10))
    rows = np.random.default_rng(0).random((7, 12))
    np.testing.assert_array_equal(cols.weights(rows), rows[:, :10])
    # a gap of one key is shown as it is, not summed into a column of its own
    one_gap = maps.window_key_columns(70, 72, first=4, margin=65)
    assert not one_gap.summed and one_gap.starts.tolist() == list(range(72))


def test_window_refuses_an_empty_range():
    with pytest.raises(WorkbenchError, match="end"):
        maps.window_key_columns(5, 5)


def test_format_heads_writes_whole_layers_as_stars_and_reads_back():
    heads = [(5, 3), (2, 0), (2, 1), (2, 2), (7, 1)]
    assert workbench.format_heads(heads) == "L5H3, L2H0, L2H1, L2H2, L7H1"
    text = workbench.format_heads(heads, n_heads=3)
    assert text == "L5H3, L2H*, L7H1"
    assert workbench.parse_heads(text, n_heads=3) == [(5, 3), (2, 0), (2, 1), (2, 2), (7, 1)]
    assert workbench.format_heads([]) == ""
    with pytest.raises(WorkbenchError, match="n_heads"):
        workbench.format_heads(heads, n_heads=0)
