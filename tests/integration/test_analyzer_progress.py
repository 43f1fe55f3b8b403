"""Progress covers every phase of an analyzer run: the prompt loop and then the causal check's
forwards (nothing ablated, top-k, each random set), reported to the same callback."""

from __future__ import annotations

import pytest

from workbench.analyzers import analyze


@pytest.mark.model
def test_causal_check_reports_each_of_its_runs(lm):
    calls: list[tuple[str, int, int]] = []
    df = analyze(
        "previous_token",
        lm,
        ["The cat sat on the mat.", "One two three four five six."],
        progress=lambda desc, done, total: calls.append((desc, done, total)),
        draws=3,
        top_k=2,
    )
    causal = [c for c in calls if c[0] == "causal check"]
    assert causal == [("causal check", i, 5) for i in range(6)]  # 3 draws + nothing + top-k
    first_causal = calls.index(causal[0])
    prompt_loop = calls[:first_causal]
    assert prompt_loop[-1][1] == prompt_loop[-1][2] == 2  # the prompts finished first
    assert len(df.attrs["causal"]["random_k"]) == 3


@pytest.mark.model
def test_no_callback_no_causal_reports_and_no_leak_between_runs(lm):
    calls: list[tuple[str, int, int]] = []
    analyze(
        "previous_token", lm, ["a b c d e f"], progress=lambda *a: calls.append(a), causal=False
    )
    assert calls and all(c[0] != "causal check" for c in calls)
    # a later run without a callback must not report to the earlier run's callback
    n = len(calls)
    analyze("previous_token", lm, ["a b c d e f"], progress=False, draws=1, top_k=1)
    assert len(calls) == n
