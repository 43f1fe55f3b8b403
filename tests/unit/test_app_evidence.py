"""The atlas view's evidence pieces without a browser or a model: what of an analyzer result
goes to the browser, the causal panel's verdict and interval, the stability and interval
lines, the quick warning, the form's parameters and the table headers.

Every input is a hand-written ``attrs``/``causal`` dict; the expected text is worked out by
hand from it."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from app import jobs
from app.views import atlas, evidence
from workbench.errors import WorkbenchError

#: A measured check: 4 items, 3 random draws, higher is better (accuracy).
CAUSAL = {
    "metric": "NIAH accuracy on 4 tests",
    "higher_is_better": True,
    "mode": "uniform",
    "k": 2,
    "draws": 3,
    "base": 1.0,
    "top_k": 0.25,
    "random_k": [1.0, 0.75, 1.0],
    "random_k_mean": 11 / 12,
    "top_heads": ["L18H6", "L17H3"],
    "random_heads": [["L18H0", "L17H1"], ["L18H2", "L17H5"], ["L18H4", "L17H8"]],
    "items": 4,
    "effect_top": 0.75,
    "effect_random": 1 / 12,
    "ratio": 9.0,
    "effect_top_lo": 0.5,
    "effect_top_hi": 1.0,
    "level": 0.95,
    "p_value": 0.25,
    "p_min": 0.25,
    "significant": False,
    "verdict": "no evidence: top-2 hurts no more than random-2 (p = 0.25, and 3 draws cannot "
    "reach p < 0.05)",
}


def test_browser_attrs_leave_the_per_item_arrays_on_the_server():
    per_item = [[[0.1, 0.2], [0.3, float("nan")]]] * 50
    causal = {**CAUSAL, "base_items": [1, 1, 1, 1], "top_k_items": [0, 1, 0, 0],
              "random_k_items": [[1, 1, 1, 1]] * 3, "ratio": float("nan")}  # fmt: skip
    attrs = {
        "per_item": per_item,
        "causal": causal,
        "causal_sources": {"sinks": dict(causal)},
        "stability": {"spearman": float("nan"), "splits": 0},
        "sink_rate": 0.5,
    }
    out = jobs.browser_attrs(attrs)
    assert "per_item" not in out
    for c in (out["causal"], out["causal_sources"]["sinks"]):
        assert not {"base_items", "top_k_items", "random_k_items"} & set(c)
        assert c["verdict"] == CAUSAL["verdict"] and c["effect_top_lo"] == 0.5
        assert c["ratio"] is None  # NaN cannot go to a browser's JSON.parse
    assert out["stability"] == {"spearman": None, "splits": 0} and out["sink_rate"] == 0.5
    json.dumps(out, allow_nan=False)
    # the caller's attrs are untouched
    assert "per_item" in attrs and "base_items" in attrs["causal"]
    assert math.isnan(attrs["causal"]["ratio"])


def test_run_analyzer_result_has_no_per_item_values(monkeypatch):
    df = pd.DataFrame({"layer": [0, 0], "head": [0, 1], "head_id": ["L0H0", "L0H1"],
                       "score": [0.5, 0.25], "score_lo": [0.4, 0.1],
                       "score_hi": [0.6, 0.4]})  # fmt: skip
    df.attrs = {"per_item": [[[0.5, 0.25]]] * 1000, "causal": {"skipped": "test"}}
    monkeypatch.setattr(jobs.analyzers, "analyze", lambda name, lm, progress, **kw: df)
    result = jobs.run_analyzer(None, "sinks", {"quick": True}, lambda *a: None)
    assert "per_item" not in result["attrs"]
    assert result["attrs"]["causal"] == {"skipped": "test"}
    assert [r["score_lo"] for r in result["records"]] == [0.4, 0.1]
    assert len(json.dumps(result)) < 2000


def test_causal_panel_leads_with_the_verdict_and_the_top_k_interval():
    lines = evidence.causal_lines(CAUSAL)
    assert lines[0] == CAUSAL["verdict"] + "; top-k effect 95% CI [0.5, 1]"
    assert "top-2 +0.75, random-2 +0.0833 (mean of 3 draws), ratio 9x" in lines[1]
    assert lines[2].startswith("p = 0.25:") and "3 draws allow p >= 0.25" in lines[2]
    assert lines[3] == (
        "Metric: NIAH accuracy on 4 tests (higher is better, 4 items, uniform ablation)"
    )
    assert lines[4] == "Unablated 1; top-2 ablated 0.25 (-0.75); random-2 ablated 0.9167 (-0.0833)"
    assert lines[5] == "Top heads: L18H6, L17H3"
    assert lines[6] == "Random heads: L18H0, L17H1; L18H2, L17H5; L18H4, L17H8"
    _fig, children = evidence.causal_view(CAUSAL)
    assert children[0].children == lines[0] and "no" in children[0].className.split()


def test_causal_panel_hides_a_negative_ratio_and_counts_long_random_lists():
    causal = {**CAUSAL, "effect_top": -0.1, "ratio": -1.2,
              "random_heads": [["L1H1"]] * 39}  # fmt: skip
    lines = evidence.causal_lines(causal)
    assert "ratio" not in lines[1] and "top-2 -0.1" in lines[1]
    assert lines[-1] == "Random heads: L1H1; L1H1; L1H1; … (39 sets)"


@pytest.mark.parametrize(
    ("causal", "expected"),
    [
        (None, evidence.NO_CAUSAL),
        ({}, evidence.NO_CAUSAL),
        ({"skipped": "no NIAH test passed"}, "No causal check in this result: no NIAH test passed"),
        ({"metric": None, "top_k": None, "k": None}, evidence.NO_CAUSAL),
    ],
)
def test_no_causal_check_says_so_instead_of_a_placeholder(causal, expected):
    assert evidence.causal_lines(causal) == [expected]
    fig, children = evidence.causal_view(causal)
    assert [c.children for c in children] == [expected]
    assert "None" not in fig.layout.annotations[0].text


def test_stability_line_judges_the_split_half_spearman():
    st = {"k": 10, "items_per_half": 8, "spearman": 0.934, "spearman_min": 0.871,
          "top_k_overlap": 0.8, "splits": 20}  # fmt: skip
    assert evidence.stability_text({"stability": st}) == (
        "Ranking stability (stable): split-half Spearman 0.93 (min 0.87 over 20 splits of 8 "
        "items per half), top-10 overlap 80%"
    )
    shaky = evidence.stability_text({"stability": {**st, "spearman": 0.61}})
    assert shaky.startswith("Ranking stability (unstable: the ranking depends on the prompts)")
    few = {"k": 10, "items_per_half": 1, "spearman": None, "splits": 0}
    assert "too few items" in evidence.stability_text({"stability": few})
    assert evidence.stability_text({}) is None
    atlas_attrs = {"feature_stability": {"sinks": {"spearman": 0.95}, "induction": None}}
    assert evidence.stability_text(atlas_attrs) == (
        "Features' split-half Spearman: sinks 0.95, induction n/a"
    )


def test_interval_and_quick_lines():
    unc = {"level": 0.9, "resamples": 500, "items": 12, "method": "percentile bootstrap"}
    assert evidence.interval_text({"uncertainty": unc}) == (
        "score_lo / score_hi: 90% interval, percentile bootstrap (12 items, 500 resamples)"
    )
    assert evidence.interval_text({"uncertainty": {"none": "not a mean"}}) == (
        "No score intervals: not a mean"
    )
    assert evidence.quick_text({"quick": False, "note": "x"}) is None
    assert evidence.quick_text({"quick": True, "note": "quick mode: weak"}) == "quick mode: weak"
    lines = evidence.evidence_view({"quick": True, "uncertainty": unc})
    assert lines[0].className == "weak" and len(lines) == 2
    assert evidence.evidence_view(None) == []


def test_form_passes_quick_and_leaves_an_empty_prompts_box_to_the_analyzer():
    assert atlas.form_values(None, ["causal"], 5, ["quick"]) == {
        "causal": True, "top_k": 5, "quick": True}  # fmt: skip
    assert atlas.form_values("3", [], "2", []) == {
        "causal": False, "top_k": 2, "quick": False, "n_prompts": 3}  # fmt: skip
    with pytest.raises(WorkbenchError, match=r"prompts must be in 1\.\.inf, got 0"):
        atlas.form_values(0, [], 5, [])
    params = atlas.analyzer_params("sinks", atlas.form_values(None, ["causal"], 3, ["quick"]),
                                   '{"prompt_tokens": 24}', None)  # fmt: skip
    assert params == {"causal": True, "top_k": 3, "quick": True, "prompt_tokens": 24}


def test_a_prompts_box_the_analyzer_cannot_use_is_refused():
    with pytest.raises(WorkbenchError, match=r"prompts: retrieval takes no number of prompts, "
                       r"got 4; leave the box empty and set n_needles"):  # fmt: skip
        atlas.analyzer_params("retrieval", atlas.form_values(4, [], 5, []), "", None)


def test_score_table_names_the_interval_columns_with_their_level():
    df = pd.DataFrame({"head_id": ["L0H0"], "score": [0.5], "score_lo": [0.4],
                       "score_hi": [0.6]})  # fmt: skip
    result = {"columns": list(df.columns), "attrs": {"uncertainty": {"level": 0.95}}}
    cols = {c["id"]: c["name"] for c in atlas.table_columns(result, df)}
    assert cols == {"head_id": "head_id", "score": "score",
                    "score_lo": "score_lo (95% CI)", "score_hi": "score_hi (95% CI)"}  # fmt: skip
