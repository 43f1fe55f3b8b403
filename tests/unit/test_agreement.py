"""`workbench.analyzers.agreement`: a hand-worked example of three families on six heads.

Heads in order L0H0, L0H1, L0H2, L1H0, L1H1, L1H2; scores (k = 3):

    A = 0.9 0.1 0.5 0.3 0.7 0.2   top-3 {L0H0, L1H1, L0H2}
    B = 0.8 0.2 0.1 0.4 0.6 0.3   top-3 {L0H0, L1H1, L1H0}
    C = 0.0 0.0 0.9 0.0 0.5 0.0   3rd and 4th tie at 0 -> top set {L0H2, L1H1}, one tied out

Overlaps: A/B {L0H0, L1H1} = 2 of a union of 4 (Jaccard 0.5); A/C {L0H2, L1H1} = 2 of 3
(2/3); B/C {L1H1} = 1 of 4 (0.25). Labels: L1H1 in all three, L0H0 in A and B, L0H2 in A and C.

Spearman by hand: ranks A = 6 1 4 3 5 2, B = 6 2 1 4 5 3, d^2 = 0 1 9 1 0 1 = 12, rho(A, B) =
1 - 6 * 12 / (6 * 35) = 23/35. C has a four-way tie (average rank 2.5): ranks 2.5 2.5 6 2.5 5
2.5; Pearson of the ranks: centred A . centred C = 5.5, B . C = -5.0, |A|^2 = 17.5, |C|^2 =
12.5, so rho(A, C) = 5.5 / sqrt(218.75), rho(B, C) = -5 / sqrt(218.75). scipy.stats.spearmanr
is the independent reference for these and the exact permutation p-value (all 720 orders).
"""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from workbench.analyzers import AnalyzerArgumentError, agreement
from workbench.errors import WorkbenchError

SCORES = {
    "A": [0.9, 0.1, 0.5, 0.3, 0.7, 0.2],
    "B": [0.8, 0.2, 0.1, 0.4, 0.6, 0.3],
    "C": [0.0, 0.0, 0.9, 0.0, 0.5, 0.0],
}
HEADS = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]


def frame(scores, model="tiny", order=None) -> pd.DataFrame:
    rows = [
        {"layer": a, "head": b, "head_id": f"L{a}H{b}", "score": s}
        for (a, b), s in zip(HEADS, scores, strict=True)
    ]
    df = pd.DataFrame(rows if order is None else [rows[i] for i in order])
    df.attrs["model"] = model
    return df


def frames(**changes) -> dict[str, pd.DataFrame]:
    return {name: changes.get(name, frame(s)) for name, s in SCORES.items()}


def pair(result, a, b) -> pd.Series:
    rows = result.pairs[(result.pairs.family_a == a) & (result.pairs.family_b == b)]
    assert len(rows) == 1
    return rows.iloc[0]


def exact_p(x, y) -> float:
    """Two-sided exact permutation p-value of Spearman's rho (all n! orders of y)."""
    observed = abs(spearmanr(x, y).statistic)
    stats = [
        abs(spearmanr(x, [y[i] for i in p]).statistic) for p in itertools.permutations(range(6))
    ]
    return float(np.mean(np.array(stats) >= observed - 1e-12))


def test_hand_worked_overlaps_and_labels():
    result = agreement(frames(), k=3)
    assert list(zip(result.pairs.family_a, result.pairs.family_b, strict=True)) == [
        ("A", "B"),
        ("A", "C"),
        ("B", "C"),
    ]
    ab, ac, bc = pair(result, "A", "B"), pair(result, "A", "C"), pair(result, "B", "C")
    assert (ab.top_a, ab.top_b, ab.overlap, ab.shared) == (3, 3, 2, "L0H0,L1H1")
    assert ab.jaccard == pytest.approx(0.5)
    assert (ac.top_a, ac.top_b, ac.overlap, ac.shared) == (3, 2, 2, "L0H2,L1H1")
    assert ac.jaccard == pytest.approx(2 / 3)
    assert (bc.overlap, bc.shared) == (1, "L1H1")
    assert bc.jaccard == pytest.approx(0.25)
    assert result.top == {
        "A": ["L0H0", "L1H1", "L0H2"],
        "B": ["L0H0", "L1H1", "L1H0"],
        "C": ["L0H2", "L1H1"],
    }
    assert result.tied_out == {"A": 0, "B": 0, "C": 1}
    assert result.labels[["head_id", "n_labels", "families"]].values.tolist() == [
        ["L1H1", 3, "A,B,C"],
        ["L0H0", 2, "A,B"],
        ["L0H2", 2, "A,C"],
    ]
    assert result.model == "tiny" and result.k == 3


def test_hand_worked_spearman_and_scipy():
    result = agreement(frames(), k=3)
    by_hand = {
        ("A", "B"): 23 / 35,
        ("A", "C"): 5.5 / math.sqrt(218.75),
        ("B", "C"): -5 / math.sqrt(218.75),
    }
    for (a, b), rho in by_hand.items():
        row = pair(result, a, b)
        assert row.spearman == pytest.approx(rho, abs=1e-12)
        assert row.spearman == pytest.approx(spearmanr(SCORES[a], SCORES[b]).statistic, abs=1e-12)
        assert row.n_heads == 6
        # Monte Carlo permutation p (10,000 shuffles) vs the exact one: 4 standard errors
        assert row.p_value == pytest.approx(exact_p(SCORES[a], SCORES[b]), abs=0.02)


def test_nan_scores_are_left_out_of_both_measures():
    b = list(SCORES["B"])
    b[0] = float("nan")  # L0H0 has no B score
    result = agreement(frames(B=frame(b)), k=2)
    ab = pair(result, "A", "B")
    assert ab.n_heads == 5
    keep = [1, 2, 3, 4, 5]
    expected = spearmanr([SCORES["A"][i] for i in keep], [b[i] for i in keep]).statistic
    assert ab.spearman == pytest.approx(expected, abs=1e-12)
    assert result.top["B"] == ["L1H1", "L1H0"]  # 0.6, 0.4: the NaN head never counts


def test_row_order_and_matrix_and_markdown():
    shuffled = frames(B=frame(SCORES["B"], order=[5, 3, 1, 0, 2, 4]))
    a, b = agreement(frames(), k=3), agreement(shuffled, k=3)
    pd.testing.assert_frame_equal(a.pairs, b.pairs)
    rho = a.matrix("spearman")
    assert rho.loc["A", "A"] == 1.0 and rho.loc["B", "A"] == pytest.approx(23 / 35)
    assert a.matrix("overlap").loc["C", "C"] == 2
    text = a.to_markdown()
    assert "| A / B | 2 of 3/3 | 0.50 | L0H0,L1H1 | 0.66 |" in text
    assert "| L1H1 | 3 | A,B,C |" in text
    with pytest.raises(AnalyzerArgumentError, match="column must be one of"):
        a.matrix("shared")


def test_constant_family_has_no_correlation():
    result = agreement(frames(C=frame([0.5] * 6)), k=2)
    ac = pair(result, "A", "C")
    assert math.isnan(ac.spearman) and math.isnan(ac.p_value)
    assert result.top["C"] == [] and result.tied_out["C"] == 2


@pytest.mark.parametrize(
    ("given", "k", "message"),
    [
        ({}, 2, "two or more families"),
        ({"A": frame(SCORES["A"])}, 2, r"only \['A'\]"),
        (None, 2, "two or more families"),
        ([frame(SCORES["A"])], 2, "must be a dict"),
        ({"A": frame(SCORES["A"]), "B": [1, 2]}, 2, r"frames\['B'\] must be a DataFrame"),
        (frames(B=frame(SCORES["B"]).drop(columns="score")), 2, "lacks column"),
        (frames(B=frame(SCORES["B"], model="other")), 2, "model 'other'"),
        (frames(B=frame(SCORES["B"]).iloc[:5]), 2, "covers other heads"),
        (frames(B=frame(SCORES["B"]).assign(head=[0, 1, 2, 0, 1, 3])), 2, "other heads"),
        (frames(B=frame(SCORES["B"]).assign(head=[0, 1, 1, 0, 1, 2])), 2, "a head twice"),
        (frames(B=frame(SCORES["B"]).assign(score="x")), 2, "score must be numbers"),
        (frames(B=frame(SCORES["B"]).assign(score=True)), 2, "score must be numbers"),
        (frames(B=frame([np.inf, *SCORES["B"][1:]])), 2, "infinite at L0H0"),
        (frames(B=frame(SCORES["B"]).assign(layer=-1)), 2, "layer must be an integer >= 0"),
        (frames(), 0, r"k must be an integer in 1\.\.6, got 0"),
        (frames(), 7, r"k must be an integer in 1\.\.6, got 7"),
        (frames(), 2.0, "k must be an integer"),
        (frames(), True, "k must be an integer"),
    ],
)
def test_bad_input_is_refused_clearly(given, k, message):
    with pytest.raises(AnalyzerArgumentError, match=message) as info:
        agreement(given, k=k)
    assert isinstance(info.value, WorkbenchError)


def test_bad_permutations_and_seed():
    with pytest.raises(AnalyzerArgumentError, match="permutations must be an integer >= 1"):
        agreement(frames(), k=2, permutations=0)
    with pytest.raises(AnalyzerArgumentError, match="seed must be an integer >= 0"):
        agreement(frames(), k=2, seed=-1)


# -- the figure and the app's section (no browser) ----------------------------------------------
def session_results(**extra) -> dict:
    """The atlas store's shape: ``{analyzer: {"records": [...], "attrs": {...}}}``."""
    out = {}
    for name, scores in SCORES.items():
        records = json.loads(frame(scores).to_json(orient="records"))
        out[name] = {"records": records, "attrs": {"model": "tiny"}, "columns": list(records[0])}
    return {**out, **extra}


def test_figure_holds_the_hand_worked_numbers():
    from workbench.agreement_charts import agreement_figure

    fig = agreement_figure(agreement(frames(), k=3))
    rho, jac = fig.data
    assert list(rho.x) == ["A", "B", "C"] and list(rho.y) == ["A", "B", "C"]
    assert rho.z[0][1] == pytest.approx(23 / 35) and rho.z[1][0] == pytest.approx(23 / 35)
    assert rho.z[2][1] == pytest.approx(-5 / math.sqrt(218.75)) and rho.z[1][1] == 1.0
    assert jac.z[0][2] == pytest.approx(2 / 3) and jac.z[1][2] == pytest.approx(0.25)
    assert jac.text[0][1] == "2<br>0.50" and jac.text[2][2] == "2<br>1.00"
    assert "L0H0,L1H1" in jac.customdata[0][1]


def test_app_section_from_session_results():
    from app.views.agreement import agreement_view

    atlas = {"records": [{"layer": 0, "head": 0, "score": 1.0}], "attrs": {}}
    results = session_results(atlas=atlas)  # the atlas' cluster distances are no family
    results["C"]["records"][0]["score"] = None  # a JSON null: no score for L0H0
    view = agreement_view(results, 3)
    assert view["error"] == ""
    rows = {(r["family_a"], r["family_b"]): r for r in view["pairs"]}
    assert set(rows) == {("A", "B"), ("A", "C"), ("B", "C")}
    ab = rows[("A", "B")]
    assert (ab["overlap"], ab["shared"], ab["n_heads"]) == (2, "L0H0,L1H1", 6)
    assert ab["spearman"] == pytest.approx(23 / 35) and ab["jaccard"] == pytest.approx(0.5)
    c = [float("nan"), *SCORES["C"][1:]]
    assert rows[("A", "C")]["n_heads"] == 5
    expected = spearmanr(SCORES["A"][1:], c[1:]).statistic
    assert rows[("A", "C")]["spearman"] == pytest.approx(expected, abs=1e-12)
    assert [r["head_id"] for r in view["labels"]] == ["L1H1", "L0H0", "L0H2"]
    assert "3 families, top-3" in view["note"]
    assert len(view["figure"].data) == 2


def test_app_section_needs_two_families_and_a_good_k():
    from app.views.agreement import agreement_view

    one = {"A": session_results()["A"]}
    view = agreement_view(one, 3)
    assert view["pairs"] == [] and "run so far: A" in view["note"]
    bad = agreement_view(session_results(), 9)
    assert bad["pairs"] == [] and "top-k must be in 1..6, got 9" in bad["error"]
    assert "whole number" in agreement_view(session_results(), "x")["error"]


def test_app_section_wires_to_its_own_layout():
    import dash
    from dash import dcc, html

    from app import ids
    from app.views import agreement as view

    app = dash.Dash(__name__)
    page = html.Div([dcc.Store(id=ids.ATLAS_RESULTS, data={}), view.layout(None)])
    view.register(app, None)
    present = set()

    def walk(node):
        if getattr(node, "id", None):
            present.add(node.id)
        children = getattr(node, "children", None)
        for child in children if isinstance(children, list) else [children]:
            if child is not None and not isinstance(child, str):
                walk(child)

    walk(page)
    ((outputs, callback),) = app.callback_map.items()
    assert {d["id"] for d in callback["inputs"]} == {ids.ATLAS_RESULTS, view.AG_K} <= present
    for out in (view.AG_GRAPH, view.AG_PAIRS, view.AG_LABELS, view.AG_NOTE, view.AG_ERROR):
        assert f"{out}." in outputs and out in present
