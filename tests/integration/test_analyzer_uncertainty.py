"""Uncertainty on every head score and every causal check (issue 15, items 1-3).

Every analyzer whose score is a mean over prompts (or test items) keeps each item's value of
every head (``attrs["per_item"]``), and its table has ``score_lo``/``score_hi`` (bootstrap over
items) with ``attrs["uncertainty"]`` and ``attrs["stability"]``. The per-item values are checked
against one-prompt runs, the interval against a percentile bootstrap written here, the causal
p-value against the per-item lists the check returns, and the losses behind them against a
cross-entropy computed here.
"""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch

from workbench.analyzers import ANALYZERS, analyze, causal_evidence, get_analyzer
from workbench.analyzers.base import QUICK_NOTE, AnalyzerError
from workbench.analyzers.frames import head_frame
from workbench.analyzers.function_vector import icl_data, icl_prompts, split_pairs
from workbench.analyzers.ioi import DEFAULT_TASK, ioi_task
from workbench.analyzers.mdqa import make_items
from workbench.analyzers.niah import make_niah_tasks
from workbench.analyzers.receiver import TEXTS as RECEIVER_TEXTS
from workbench.analyzers.refusal import harmful_prompts

pytestmark = pytest.mark.model

#: Analyzers whose score is no mean over prompts (they say so in attrs["uncertainty"]).
NOT_A_MEAN = {"atlas"}
#: Analyzers whose items are vocabulary tokens or ordinal pairs, not prompts: a one-prompt run
#: cannot reproduce one per-item value (their intervals are tested in tests/*/test_ov_heads.py).
ITEMS_NOT_PROMPTS = {"copy_suppression", "successor"}

PROMPTS = [
    "alpha beta gamma delta epsilon alpha beta gamma delta epsilon",
    "The cat sat on the mat. The cat sat on the mat again.",
    "one two three four five one two three four five six",
    "Red green blue, red green blue, and red again.",
]
#: Per analyzer: a small explicit task (prompts, parameters) and whether a one-prompt run's
#: score is the prompt's per-item value ("same") or its absolute value ("abs").
NIAH = {"lengths": (128,), "depths": (0.2, 0.8), "n_needles": 3, "seed": 0}
SMALL: dict[str, tuple] = {
    "sinks": (PROMPTS, {}, "same"),
    "previous_token": (PROMPTS, {}, "same"),
    "duplicate_token": (PROMPTS, {}, "same"),
    "induction": (PROMPTS, {}, "same"),
    "attribution": ([dict(x) for x in DEFAULT_TASK[:4]], {}, "abs"),
    "safety": ("harmful", {"layers": [29], "sahara": False, "max_new_tokens": 2}, "same"),
    "contextual": ("mdqa", {"answer": "gold", "focus": False, "max_new_tokens": 4}, "same"),
    "qr_retrieval": ("mdqa", {}, "same"),
    # one prompt a forward for these two: kurtosis (receiver) and differences of float32
    # probabilities (function_vector) carry the rounding of other batch shapes past 1e-6
    "receiver": (list(RECEIVER_TEXTS[:4]), {"batch_size": 1}, "same"),
    "function_vector": (
        "icl",
        {"tasks": ["antonyms"], "n_mean": 3, "n_zero_shot": 1, "batch_size": 1},
        "same",
    ),
    "retrieval": ("niah", {"max_new_tokens": 12}, "same"),
}


def small_task(lm, name: str) -> tuple[list, dict]:
    prompts, params, _ = SMALL[name]
    if prompts == "harmful":
        prompts = harmful_prompts()[:4]
    elif prompts == "mdqa":
        prompts = make_items(4, 3, seed=0)
    elif prompts == "icl":  # shuffled-label antonym prompts, as the analyzer builds them
        data = icl_data()
        pairs = data["tasks"]["antonyms"]["pairs"]
        prompts = icl_prompts(
            "antonyms", *split_pairs("antonyms", pairs, 0), data["template"],
            n=4, n_shots=5, seed=7, shuffle=True,
        )  # fmt: skip
    elif prompts == "niah":
        prompts = make_niah_tasks(lm, **NIAH)
    return prompts, params


@pytest.fixture(scope="module")
def runs(lm):
    """Each mean-type analyzer once on its small task (no causal check), computed on demand."""
    cache: dict[str, object] = {}

    def run(name: str):
        if name not in cache:
            prompts, params = small_task(lm, name)
            cache[name] = analyze(name, lm, prompts, progress=False, causal=False, **params)
        return cache[name]

    return run


def bootstrap(per_item: np.ndarray, seed: int, resamples: int, level: float):
    """Percentile bootstrap of the mean over items (Efron & Tibshirani, ch. 13), written here."""
    rng = np.random.default_rng(seed)
    n = per_item.shape[0]
    idx = rng.integers(0, n, size=(resamples, n))
    means = np.stack([per_item[i].mean(0) for i in idx])
    tail = (1 - level) / 2
    return np.quantile(means, tail, axis=0), np.quantile(means, 1 - tail, axis=0)


def test_every_analyzer_is_classified():
    """A new analyzer needs a small task here, or a place in NOT_A_MEAN / ITEMS_NOT_PROMPTS."""
    assert set(ANALYZERS) == set(SMALL) | NOT_A_MEAN | ITEMS_NOT_PROMPTS


@pytest.mark.parametrize("name", sorted(SMALL))
def test_interval_columns_and_score_is_mean_of_per_item(runs, lm, name):
    df = runs(name)
    cols = list(df.columns)
    assert cols[3:6] == ["score", "score_lo", "score_hi"]
    items = np.asarray(df.attrs["per_item"], dtype=np.float64)
    n = df.attrs["uncertainty"]["items"]
    assert items.shape == (n, lm.info.n_layers, lm.info.n_heads) and n >= 2
    ok = np.isfinite(df["score"].to_numpy())
    mean = items.reshape(n, -1)[:, ok].mean(axis=0)
    assert np.allclose(mean, df["score"].to_numpy()[ok], rtol=1e-9, atol=1e-12)
    assert np.isnan(items.reshape(n, -1)[:, ~ok]).all()  # heads not scored: no item value
    score, lo, hi = (df[c].to_numpy()[ok] for c in ("score", "score_lo", "score_hi"))
    assert np.all(lo <= score + 1e-9) and np.all(score <= hi + 1e-9)
    assert df.attrs["uncertainty"]["level"] == 0.95
    assert {"spearman", "spearman_min", "top_k_overlap", "k", "splits", "items_per_half"} <= set(
        df.attrs["stability"]
    )


@pytest.mark.parametrize("name", sorted(SMALL))
def test_per_item_values_equal_one_prompt_runs_and_interval_is_their_bootstrap(runs, lm, name):
    df = runs(name)
    prompts, params = small_task(lm, name)
    mode = SMALL[name][2]
    scored = list(range(len(prompts)))
    if name == "retrieval":  # the score averages the tests the model passes
        scored = [i for i, t in enumerate(df.attrs["tests"]) if t["passed"]]
    singles = []
    for i in scored:
        one = analyze(name, lm, [prompts[i]], progress=False, causal=False, **params)
        singles.append(one["score"].to_numpy().reshape(lm.info.n_layers, lm.info.n_heads))
    singles = np.stack(singles)
    items = np.asarray(df.attrs["per_item"], dtype=np.float64)
    got = np.abs(items) if mode == "abs" else items
    ok = np.isfinite(singles)
    assert np.array_equal(ok, np.isfinite(got))
    assert np.allclose(got[ok], singles[ok], rtol=1e-4, atol=1e-6)

    u = df.attrs["uncertainty"]
    finite = ok.all(axis=0).reshape(-1)
    lo, hi = bootstrap(items.reshape(len(items), -1)[:, finite], u["seed"], u["resamples"], 0.95)
    assert np.allclose(df["score_lo"].to_numpy()[finite], lo, rtol=1e-9, atol=1e-12)
    assert np.allclose(df["score_hi"].to_numpy()[finite], hi, rtol=1e-9, atol=1e-12)


def test_atlas_says_why_it_has_no_interval(lm, runs):
    frames = {name: runs(name) for name in ("sinks", "previous_token")}
    df = analyze("atlas", lm, progress=False, frames=frames, compute_missing=False)
    assert "score_lo" not in df.columns and "none" in df.attrs["uncertainty"]
    assert df.attrs["feature_stability"]["sink"] == frames["sinks"].attrs["stability"]


def test_split_half_stability_of_a_ranking(lm):
    """Eight prompts: two halves of four; the stability is a number and the interval narrows
    where the prompts agree."""
    df = analyze("previous_token", lm, PROMPTS * 2, progress=False, causal=False)
    stab = df.attrs["stability"]
    assert stab["items_per_half"] == 4 and stab["splits"] == 20
    assert -1 <= stab["spearman_min"] <= stab["spearman"] <= 1
    assert 0 <= stab["top_k_overlap"] <= 1


def test_head_frame_refuses_a_score_that_is_not_the_mean(lm):
    items = np.random.default_rng(0).random((3, lm.info.n_layers, lm.info.n_heads))
    head_frame(lm, items.mean(0), per_item=items)
    with pytest.raises(ValueError, match="not the mean of per_item"):
        head_frame(lm, items.mean(0) + 0.01, per_item=items)


# -- report shards ------------------------------------------------------------------------------
def test_merged_shards_have_the_interval_of_one_run(lm):
    # one prompt per forward on both sides: merging must be exact, and batches of other
    # shapes round float32 matmuls differently (batching is tested in test_batching.py)
    kw = {"progress": False, "causal": False, "batch_size": 1}
    whole = analyze("sinks", lm, PROMPTS, **kw)
    shards = [analyze("sinks", lm, PROMPTS[a:b], **kw) for a, b in ((0, 1), (1, 4))]
    merged = get_analyzer("sinks").merge(shards)
    for col in ("score", "score_lo", "score_hi"):
        assert np.allclose(merged[col], whole[col], rtol=1e-12, atol=1e-15), col
    assert merged.attrs["per_item"] == whole.attrs["per_item"]
    assert merged.attrs["stability"] == whole.attrs["stability"]
    assert merged.attrs["uncertainty"]["shards"] == 2
    assert (merged["is_sink_head"] == whole["is_sink_head"]).all()

    old = shards[1].copy()
    old.attrs = {k: v for k, v in shards[1].attrs.items() if k != "per_item"}
    merged = get_analyzer("sinks").merge([shards[0], old])
    assert "score_lo" not in merged.columns and "stability" not in merged.attrs
    assert "per-item" in merged.attrs["uncertainty"]["merged"]


# -- causal checks ------------------------------------------------------------------------------
def repeated_half_loss(lm, prompt: str) -> float:
    """Mean cross-entropy of the tokens of the second half, written here."""
    enc = lm.encode(prompt)
    with torch.no_grad():
        logits = lm.model(input_ids=enc.input_ids).logits[0, :-1].double()
    targets = enc.input_ids[0, 1:]
    nll = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    return float(nll[enc.n_tokens // 2 - 1 :].mean())


def test_causal_check_reports_effects_p_value_and_verdict(lm):
    draws = 6
    df = analyze("induction", lm, progress=False, n_prompts=3, n_words=10, draws=draws, top_k=3)
    c = df.attrs["causal"]
    old = {"base", "top_k", "random_k", "random_k_mean", "top_heads", "random_heads", "metric"}
    new = {"effect_top", "effect_random", "ratio", "effect_top_lo", "effect_top_hi"}
    new |= {"difference_lo", "difference_hi", "p_value", "p_min", "significant", "verdict"}
    assert old | new | {"k", "draws", "mode", "higher_is_better"} <= set(c)
    assert c["items"] == 3 and c["draws"] == draws and len(c["random_k_items"]) == draws

    prompts = [item["prompt"] for item in get_analyzer("induction").default_items(
        lm, n_prompts=3, n_words=10)]  # fmt: skip
    expected = [repeated_half_loss(lm, p) for p in prompts]
    assert np.allclose(c["base_items"], expected, rtol=1e-5)
    assert math.isclose(c["base"], float(np.mean(expected)), rel_tol=1e-5)

    base = np.array(c["base_items"])
    top = np.mean(np.array(c["top_k_items"]) - base)  # a loss: higher is worse
    rand = [np.mean(np.array(r) - base) for r in c["random_k_items"]]
    assert math.isclose(c["effect_top"], top, rel_tol=1e-9, abs_tol=1e-12)
    assert np.allclose(c["random_k"], [np.mean(r) for r in c["random_k_items"]])
    p = (1 + sum(e >= top for e in rand)) / (draws + 1)
    assert c["p_value"] == pytest.approx(p) and c["p_min"] == pytest.approx(1 / (draws + 1))
    assert c["effect_top_lo"] <= top <= c["effect_top_hi"]
    assert c["verdict"].startswith(("top-3", "no evidence"))


def test_causal_check_with_a_one_number_metric_has_no_item_interval(lm):
    calls = []
    enc = lm.encode(PROMPTS[0])

    def metric(model):
        model.forward(enc)  # the ablation must see a forward
        calls.append(1)
        return 2.0 - 0.1 * len(calls)  # every run hurts a bit more than the previous one

    c = causal_evidence(lm, [(3, 1), (5, 2)], metric, metric_name="toy", k=2, draws=4)
    assert c["items"] is None and c["base_items"] is None and "interval_note" in c
    assert math.isnan(c["effect_top_lo"]) and math.isnan(c["difference_hi"])
    assert c["effect_top"] == pytest.approx(0.1)  # higher is better: base 1.9 -> top 1.8
    assert c["p_value"] == pytest.approx(5 / 5)  # every random draw hurt more


def test_causal_metric_with_changing_item_count_is_refused(lm):
    sizes = iter([3, 3, 2])
    enc = lm.encode(PROMPTS[0])

    def metric(model):
        model.forward(enc)
        return [0.0] * next(sizes)

    with pytest.raises(AnalyzerError, match="different number of items"):
        causal_evidence(lm, [(3, 1)], metric, metric_name="toy", k=1, draws=1)


def test_default_draws_can_reach_p_below_005():
    for name, cls in ANALYZERS.items():
        params = inspect.signature(cls.run).parameters
        if "draws" in params:
            draws = params["draws"].default
            assert 1 / (draws + 1) < 0.05, (name, draws)
            assert cls.quick_params.get("draws") == 3, name


# -- quick mode ---------------------------------------------------------------------------------
def test_quick_parameters_are_valid_and_smaller():
    for name, cls in ANALYZERS.items():
        assert "quick" in cls.parameters(), name
        checked = get_analyzer(name).check_params(None, dict(cls.quick_params))
        assert checked == dict(cls.quick_params), name
        defaults = {k: p.default for k, p in inspect.signature(cls.run).parameters.items()}
        smaller = [k for k, v in cls.quick_params.items() if isinstance(defaults.get(k), int)]
        assert all(cls.quick_params[k] <= defaults[k] for k in smaller), name
        assert any(cls.quick_params[k] < defaults[k] for k in smaller) or name == "atlas", name


def test_quick_mode_keeps_the_small_task_and_says_so(lm):
    df = analyze("previous_token", lm, progress=False, quick=True, causal=False)
    assert df.attrs["quick"] is True and df.attrs["note"] == QUICK_NOTE
    assert df.attrs["prompts_used"] == 8  # the task before the measured defaults
    df = analyze("previous_token", lm, progress=False, quick=True, n_prompts=2, draws=2, top_k=2)
    assert df.attrs["prompts_used"] == 2 and df.attrs["causal"]["draws"] == 2  # given wins
    assert df.attrs["causal"]["items"] == 2
    df = analyze("previous_token", lm, PROMPTS[:2], progress=False, causal=False)
    assert df.attrs["quick"] is False and "note" not in df.attrs


def test_ioi_task_starts_with_the_hand_written_prompts(lm):
    task = ioi_task(40, seed=0)
    assert task[:6] == [dict(x) for x in DEFAULT_TASK] and len({t["prompt"] for t in task}) == 40
    for item in task:
        assert item["target"] != item["foil"]
        n = len(lm.encode(item["prompt"]).input_ids[0])
        assert len(lm.encode(item["corrupt"]).input_ids[0]) == n  # same length: patchable
        assert item["prompt"].count(item["foil"].strip()) == 2
        assert item["prompt"].count(item["target"].strip()) == 1


def test_batched_causal_metrics_equal_one_item_runs(lm):
    """The generation metrics of the causal checks decode in batches; each item's outcome is
    the one of its own greedy decode."""
    from workbench.analyzers.contextual_runs import (
        answer_logprobs,
        greedy_ids,
        qa_hits,
        with_answer,
    )
    from workbench.analyzers.mdqa import answer_rows, encode_item, is_correct
    from workbench.analyzers.niah_runs import niah_passes, run_niah_test
    from workbench.analyzers.retrieval_rule import answered

    eitems = [encode_item(lm, item) for item in make_items(3, 3, seed=1)]
    single = [
        float(is_correct(lm.tokenizer.decode(greedy_ids(lm, e.enc, 8)), e.item)) for e in eitems
    ]
    assert qa_hits(lm, eitems, 8) == single
    logprobs = [
        float(
            torch.log_softmax(lm.forward(with_answer(e, e.answer_ids))[0].double(), -1)[
                answer_rows(e.n_prompt, len(e.answer_ids)), e.answer_ids
            ].mean()
        )
        for e in eitems
    ]  # the gold answer's mean log-prob, one prompt per forward
    assert np.allclose(answer_logprobs(lm, eitems), logprobs, rtol=1e-4)
    tests = make_niah_tasks(lm, **NIAH)
    runs = [run_niah_test(lm, t, max_new_tokens=12, record=False) for t in tests]
    single = [float(answered(t["answer"], r.response)) for t, r in zip(tests, runs, strict=True)]
    assert niah_passes(lm, tests, max_new_tokens=12) == single
    assert 0 < sum(single) < len(single)  # both outcomes occur


def test_batched_logit_differences_equal_one_prompt_forwards(lm):
    from workbench.analyzers.logit_attribution import logit_diff, metric_value, metric_values

    items = ioi_task(9, seed=3)  # prompts of several lengths in one batch

    def first(text: str) -> int:
        return lm.tokenizer(text, add_special_tokens=False)["input_ids"][0]

    inputs = [lm.encode(item["prompt"]).input_ids for item in items]
    fns = [logit_diff(first(item["target"]), first(item["foil"])) for item in items]
    assert len({x.shape[-1] for x in inputs}) > 1
    single = [metric_value(lm, x, f) for x, f in zip(inputs, fns, strict=True)]
    assert np.allclose(metric_values(lm, inputs, fns), single, rtol=1e-4, atol=1e-4)


def test_length_batches_keep_similar_lengths_together():
    from workbench.batching import length_batches

    lengths = [512, 256, 260, 515, 256, 600, 700, 1000]
    batches = length_batches(lengths, 3)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(len(b) <= 3 for b in batches)
    assert all(max(lengths[i] for i in b) <= 1.25 * min(lengths[i] for i in b) for b in batches)
    assert batches[0] == [1, 4, 2]  # shortest first
