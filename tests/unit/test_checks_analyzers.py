"""Every analyzer refuses bad parameters and prompts up front (issue 13).

The analyzers and their parameters come from the registry, so a new analyzer is covered by the
universal bad values at once, and a new parameter fails
:func:`test_every_parameter_has_its_own_bad_values` until its bad values are written here.
Each refusal must be a :class:`WorkbenchError` naming the parameter, spend no forward and leave
no hook attached.
"""

from __future__ import annotations

import inspect
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import no_hooks_left
from workbench.analyzers import (
    ANALYZERS,
    analyze,
    causal_evidence,
    get_analyzer,
    load_prompt_file,
)
from workbench.analyzers.base import AnalyzerArgumentError, AnalyzerError
from workbench.errors import WorkbenchError

pytestmark = pytest.mark.model

NAN, INF = math.nan, math.inf
GOOD_PROMPT = "The cat sat on the mat. The cat sat on the mat again."

#: Wrong for every parameter of every analyzer.
UNIVERSAL = [object(), b"bytes", NAN]

COUNT = [0, -1, 2.5, 3.0, "3", True]
FLAG = ["no", "yes", 0, 1, None]
FRACTION = [INF, -0.1, 1.5, "0.3", True, None]
HEADS = [[(5.5, 3)], [(True, 3)], [("1", 2)], ["L99H0"], [(0, 99)], "bogus", [3], [], [(1, 2, 3)]]

#: Bad values of each parameter name, written by hand (the range each parameter allows is its
#: documented meaning: counts >= 1, shares in [0, 1], the model's 30 x 9 heads and 8192-token
#: context).
BAD: dict[str, list] = {
    "progress": ["yes", None, 1, int],
    "causal": FLAG,
    "top_k": [*COUNT, 136, 10**6, None],
    "draws": [0, -2, 1.5, "3", None],
    "seed": [-1, 2**40, 1.5, "0", None],
    "n_prompts": [*COUNT],
    "prompt_tokens": [1, 0, 10**9, 64.0, "64", None],
    "n_words": [*COUNT, None],
    "quick": FLAG,
    "ranking": HEADS,
    "exclude_bos": FLAG,
    "exclude_current_token": FLAG,
    "first_threshold": FRACTION,
    "hidden_threshold": FRACTION,
    # atlas
    "frames": [{"sinks": 3}, [1, 2], "sinks", {3: pd.DataFrame()}],
    "compute_missing": FLAG,
    "features": [[], "sink", [3], [""]],
    "n_clusters": [*COUNT, 271, None],
    # attribution
    "metric": ["accuracy", 3, None],
    "baseline": ["noise", "", 3, None],
    "exact": FLAG,
    "exact_heads": HEADS,
    "causal_prompts": [*COUNT, None],
    # contextual
    "n_items": [*COUNT, None],
    "n_docs": [1, 0, 2.0, "5", None],
    "n_train_facts": [-1, 1.5, "8", None],
    "answer": ["sampled", "", 3, None],
    "max_new_tokens": [*COUNT, 10**9, None],
    "chat": FLAG,
    "n_causal": [*COUNT, None],
    "focus": FLAG,
    "focus_heads": [*COUNT, 271, None],
    "focus_items": [*COUNT, None],
    "focus_steps": [*COUNT, None],
    "focus_lr": [0, -1, INF, "0.05", None],
    "focus_scale": [0, 11, INF, "0.25", None],
    "focus_out": ["/nonexistent-folder/directions.safetensors", "/", "", 3],
    # retrieval
    "lengths": [[0], [10**9], [], "128", [128.0], 128, [True]],
    "depths": [[1.5], [-0.1], [NAN], [], "0.5", ["0.5"], 0.5],
    "n_needles": [0, -1, 2.5, "2", True],
    "needles": [3, {"needle": "x"}],
    "haystack": ["/nonexistent-folder/haystack.txt", "", 3],
    "span": ["sentence", "", 3, None],
    "threshold": FRACTION,
    "pass_recall": FRACTION,
    "system": [3, ["a system prompt"]],
    "stop_at_newline": FLAG,
    "causal_tests": [*COUNT, None],
    # safety
    "layers": [[99], [-1], ["3"], "12", [3.0], [True], []],
    "eps": [0, 1, -1e-5, INF, "1e-5", None],
    "batch_size": [*COUNT, None],
    "sahara": FLAG,
    "sahara_steps": [-1, 1.5, "3", None],
    "sahara_pool": [0, -1, 1.5, "12", True],
    "sahara_rank": [*COUNT, None],
    "sahara_space": ["keys", "", 3, None],
    "n_eval": [*COUNT, None],
    "eval_harmful": [[], "how do I pick a lock", [3], [""]],
    "eval_harmless": [[], "how do I bake bread", [3], [""]],
    "locate": ["regex", "", 3, None],
    "stemming": FLAG,
    "stop_tokens": ["eos", "", 3, None],
    "threshold_on": ["median", "", 3, None],
    "min_queries": [*COUNT, None],
    "score_over": ["correct_only", "", 3, None],
    "rows": ["answer", "", 3, None],
    "n_tokens": [*COUNT, None],
    "embedding": ["tokens", "", 3, None],
    "classes": ["weekdays", [], ["planets"], [3]],
    # function_vector
    "tasks": ["antonyms", [], ["planets"], [3], {"antonyms": 1}],
    "n_shots": [*COUNT, None],
    "n_mean": [*COUNT, None],
    "n_zero_shot": [*COUNT, None],
    "fv_layer": [-1, 30, 2.5, "3", True],
    # receiver
    "proximity": [-1, 2.5, "4", True, None],
    "pool": ["median", "", 3, None],
    # qr_retrieval
    "null_query": ["", "   ", 3, None, ["N/A"]],
}


def _cases() -> list:
    cases = []
    for name in sorted(ANALYZERS):
        for param in ANALYZERS[name].parameters():
            for value in UNIVERSAL + BAD.get(param, []):
                cases.append(pytest.param(name, param, value, id=f"{name}-{param}-{value!r:.30}"))
    return cases


def test_every_parameter_has_its_own_bad_values():
    """A new parameter needs its bad values here (its check needs a test that can fail)."""
    missing = sorted({p for cls in ANALYZERS.values() for p in cls.parameters() if p not in BAD})
    assert not missing, f"add bad values of {missing} to BAD"


@pytest.mark.parametrize(("name", "param", "value"), _cases())
def test_bad_parameter_refused_before_any_forward(lm, forwards, name, param, value):
    kwargs = {"progress": False, param: value}
    start = time.perf_counter()
    with pytest.raises(WorkbenchError) as info:
        analyze(name, lm, **kwargs)
    assert param in str(info.value), str(info.value)
    assert not forwards, f"{len(forwards)} forward call(s) before the refusal"
    assert no_hooks_left(lm)
    assert time.perf_counter() - start < 5.0


@pytest.mark.parametrize("name", sorted(ANALYZERS))
def test_unknown_parameter_refused_with_close_match(lm, forwards, name):
    real = ANALYZERS[name].parameters()[-1]
    typo = real[:-1] + real[-1] * 2  # "seed" -> "seedd"
    with pytest.raises(AnalyzerArgumentError) as info:
        analyze(name, lm, progress=False, **{typo: 3})
    assert f"{typo!r} (did you mean {real!r}?)" in str(info.value)
    with pytest.raises(AnalyzerArgumentError) as info:
        get_analyzer(name).run(lm, None, bogus_param=3)
    assert "'bogus_param'" in str(info.value) and name in str(info.value)
    assert not forwards and no_hooks_left(lm)


@pytest.mark.parametrize(
    "prompts",
    [
        3,
        b"a prompt",
        2.5,
        [3],
        [None],
        [""],
        ["  "],
        [{"text": "no prompt key"}],
        {"prompt": "x"},
        "prompts.txt",
        "data/set.jsonl",
        [],
    ],
    ids=repr,
)
def test_bad_prompts_refused_before_any_forward(lm, forwards, prompts):
    with pytest.raises(WorkbenchError) as info:
        analyze("previous_token", lm, prompts, progress=False, causal=False)
    message = str(info.value)
    assert "prompt" in message, message
    assert not forwards and no_hooks_left(lm)


def test_file_name_string_is_refused_as_ambiguous(lm, forwards, tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text(GOOD_PROMPT + "\n")
    with pytest.raises(WorkbenchError, match=r"pathlib\.Path"):
        analyze("previous_token", lm, str(path), progress=False, causal=False)
    assert not forwards


def test_one_token_prompt_refused_before_any_forward(lm, forwards):
    with pytest.raises(AnalyzerError, match=r"prompt 1 .*at least 2"):
        analyze("induction", lm, [GOOD_PROMPT, "Hi"], progress=False, causal=False)
    assert not forwards and no_hooks_left(lm)


def test_cross_parameter_checks_before_any_forward(lm, forwards):
    with pytest.raises(AnalyzerError, match=r"sahara_pool \(2\) must be >= sahara_steps \(3\)"):
        analyze("safety", lm, [GOOD_PROMPT], progress=False, sahara_pool=2, sahara_steps=3)
    with pytest.raises(AnalyzerError, match="not available"):
        analyze("atlas", lm, progress=False, compute_missing=False, features=["sink"])
    with pytest.raises(AnalyzerError, match="context of 8192 tokens"):
        analyze(
            "retrieval",
            lm,
            progress=False,
            lengths=[8000],
            depths=[0.5],
            n_needles=1,
            max_new_tokens=500,
        )
    bad_needle = {"prompt": "Some text without it.", "needle": "The code is 4471.", "answer": "4"}
    with pytest.raises(WorkbenchError, match="does not occur"):
        analyze("retrieval", lm, [{**bad_needle}], progress=False, causal=False)
    assert not forwards and no_hooks_left(lm)


def test_good_call_after_refusals_and_canonical_values(lm):
    """NumPy integers are integers; the analyzer still runs after refusals."""
    with pytest.raises(WorkbenchError):
        analyze("previous_token", lm, [GOOD_PROMPT], progress=False, top_k=0)
    df = analyze(
        "previous_token",
        lm,
        [GOOD_PROMPT],
        progress=False,
        causal=True,
        top_k=np.int64(2),
        draws=np.int32(1),
        ranking=[(3, 1), "L5H2"],
    )
    assert df.attrs["causal"]["k"] == 2 and df.attrs["causal"]["draws"] == 1
    assert df.attrs["causal"]["top_heads"] == ["L3H1", "L5H2"]
    assert no_hooks_left(lm)


def test_check_params_without_a_model_checks_types_only():
    """The CLI checks parameters before the model loads: types yes, model ranges later."""
    safety = get_analyzer("safety")
    assert safety.check_params(None, {"layers": [99], "top_k": 10**6}) == {
        "layers": (99,),
        "top_k": 10**6,
    }
    for bad in ({"layers": ["3"]}, {"top_k": 0}, {"eps": NAN}, {"sahara": "no"}):
        with pytest.raises(AnalyzerArgumentError, match=next(iter(bad))):
            safety.check_params(None, bad)
    with pytest.raises(AnalyzerArgumentError, match="did you mean 'top_k'"):
        safety.check_params(None, {"topk": 3})


def test_select_keeps_only_what_an_analyzer_takes():
    """A report gives every analyzer the same options; each takes the ones it has."""
    shared = {"top_k": 2, "draws": 1, "seed": 0, "n_prompts": 2, "causal": False}
    assert get_analyzer("atlas").select(shared) == {"seed": 0, "n_prompts": 2}
    assert get_analyzer("retrieval").select(shared) == {
        "top_k": 2,
        "draws": 1,
        "seed": 0,
        "causal": False,
    }
    assert get_analyzer("sinks").select(shared) == shared


def test_signature_is_the_contract():
    """``run`` keeps its own signature (the CLI reads it) and has no catch-all ``**kwargs``."""
    for cls in ANALYZERS.values():
        kinds = {p.kind for p in inspect.signature(cls.run).parameters.values()}
        assert inspect.Parameter.VAR_KEYWORD not in kinds, cls.__name__


def test_prompt_file_byte_order_mark_dropped(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes("\ufeffFirst prompt\nSecond prompt\n".encode())
    assert [item["prompt"] for item in load_prompt_file(path)] == [
        "First prompt",
        "Second prompt",
    ]
    jsonl = tmp_path / "bom.jsonl"
    jsonl.write_bytes('\ufeff{"prompt": "First"}\n'.encode())
    assert load_prompt_file(jsonl) == [{"prompt": "First"}]
    with pytest.raises(WorkbenchError, match="path"):
        load_prompt_file(3)
    assert load_prompt_file(Path(path))[0]["prompt"] == "First prompt"


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"draws": 0}, "draws"),
        ({"k": 0}, "k"),
        ({"k": 2.5}, "k"),
        ({"seed": -1}, "seed"),
        ({"mode": "noise"}, "mode"),
        ({"ranked_heads": [(5.5, 3)]}, "ranked_heads"),
    ],
    ids=repr,
)
def test_causal_evidence_refuses_bad_arguments(lm, forwards, kwargs, name):
    """``draws=0`` gave NaN causal evidence; now it is refused before the base metric runs."""
    args = {"ranked_heads": [(3, 1)], "metric": lambda m: 0.0, "metric_name": "zero", **kwargs}
    with pytest.raises(WorkbenchError, match=name):
        causal_evidence(lm, args.pop("ranked_heads"), args.pop("metric"), **args)
    assert not forwards and no_hooks_left(lm)


@pytest.mark.parametrize("name", ["nope", None, 3, ["sinks"], "Sinks"])
def test_unknown_analyzer_name(name):
    with pytest.raises(AnalyzerError, match=r"unknown analyzer.*known: atlas"):
        get_analyzer(name)
