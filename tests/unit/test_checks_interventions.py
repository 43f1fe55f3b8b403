"""Every intervention refuses bad arguments when it is built, before any forward (issue 13).

Interventions come from the registries (:data:`workbench.interventions.INTERVENTIONS`, the
recipes of :data:`workbench.interventions.recipes.RECIPES`): a new intervention fails
:func:`test_every_intervention_and_parameter_is_covered` until its good arguments and its
parameters' bad values are written here. Refusals must be :class:`WorkbenchError` naming the
argument, spend no forward, leave no hook attached and leave the model's logits unchanged.
"""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch

from tests.conftest import no_hooks_left
from workbench import interventions as iv
from workbench.errors import WorkbenchError
from workbench.heads import Head
from workbench.interventions.recipes import RECIPES, Options, build

pytestmark = pytest.mark.model

NAN, INF = math.nan, math.inf
PROMPT = "The capital of France is"
L, H, D = 30, 9, 64  # SmolLM2-135M: layers, query heads, head_dim


def _means(values: torch.Tensor) -> iv.HeadMeans:
    return iv.HeadMeans(values, n_prompts=1, n_tokens=1)


def _directions(dq: torch.Tensor) -> iv.FocusDirectionSet:
    return iv.FocusDirectionSet({Head(3, 1): (dq, dq)})


def _z(shape=(1, 4, H, D), fill=0.0) -> list[torch.Tensor]:
    return [torch.full(shape, fill) for _ in range(L)]


#: Good arguments of each registered intervention (besides ``lm``).
GOOD = {
    "zero": lambda: {"heads": ["L3H1"]},
    "mean": lambda: {"heads": ["L3H1"], "means": _means(torch.zeros(L, H, D))},
    "uniform": lambda: {"heads": ["L3H1"], "eps": 1e-5},
    "scale": lambda: {"heads": ["L3H1"], "factor": 0.5},
    "pasta": lambda: {"heads": ["L3H1"], "spans": [(1, 3)], "n_prompt_tokens": 5, "alpha": 0.01},
    "act": lambda: {"heads": ["L3H1"], "beta": 0.4, "threshold": 0.1, "sinks": None},
    "focus": lambda: {"directions": _directions(torch.zeros(D)), "scale": 0.25},
    "temperature": lambda: {"heads": ["L3H1"], "temperature": 2.0},
    "patch": lambda: {"heads": ["L3H1"], "z_source": _z()},
    "function_vector": lambda: {"vector": torch.zeros(H * D), "layer": 10},
}

HEADS = [
    [(5.5, 3)],
    [(True, 3)],
    (True, 3),
    [("1", 2)],
    [(np.float64(1.0), 2)],
    ["L99H0"],
    [(0, 99)],
    [(-1, 0)],
    "bogus",
    "L3H",
    [3],
    [],
    None,
    5,
    [(1, 2, 3)],
    {"L1H1": 1},
]

#: Bad values of each constructor parameter, written by hand.
BAD: dict[str, list] = {
    "heads": HEADS,
    "vector": [
        None,
        "vector",
        torch.zeros(H * D + 1),
        torch.zeros(1, H * D),
        torch.full((H * D,), NAN),
        torch.zeros(H * D, dtype=torch.bool),
    ],
    "layer": [-1, 30, 2.5, "10", None, True],
    "factor": [NAN, INF, "0.5", None, True],
    "eps": ["0.1", None, -0.1, 1, NAN, True],
    "means": [
        None,
        "means",
        torch.zeros(L, H, D),
        _means(torch.full((L, H, D), NAN)),
        _means(torch.full((L, H, D), INF)),
        _means(torch.zeros(L, H, D + 1)),
    ],
    "spans": [[(1.5, 3)], [(True, 3)], "0,3", [(3, 1)], [(0, 99)], [], [(0, 3), (2, 5)], [(0,)]],
    "n_prompt_tokens": [0, 2.5, "10", None, True, 10**9],
    "alpha": [0, -1, NAN, INF, "0.01", None, True],
    "beta": [-0.1, 1.5, NAN, "0.4", None],
    "threshold": [0, 1, NAN, "0.1", None],
    "sinks": [
        "sinks",
        {(0, 0): "x"},
        {(0, 0): [torch.tensor([0.5])]},
        {(0, 0): [torch.tensor([0])]},
        {(99, 0): [torch.tensor([1])]},
        {"L1H*": [torch.tensor([1])]},
    ],
    "directions": [
        None,
        "directions.safetensors",
        iv.FocusDirectionSet({}),
        _directions(torch.full((D,), NAN)),
        _directions(torch.zeros(D + 1)),
    ],
    "scale": [NAN, INF, "0.25", None, True],
    "temperature": [0, -1, NAN, INF, "2", None],
    "z_source": [None, "z", [], _z(fill=NAN), _z(shape=(1, 4, H, D + 1)), _z(shape=(4, H, D))],
}


def _parameters(name: str) -> list[str]:
    init = inspect.signature(iv.INTERVENTIONS[name].__init__).parameters
    return [p for p in init if p not in ("self", "lm")]


def _cases() -> list:
    cases = []
    for name in sorted(iv.INTERVENTIONS):
        for param in _parameters(name):
            for i, value in enumerate(BAD.get(param, [])):
                cases.append(pytest.param(name, param, value, id=f"{name}-{param}-{i}"))
    return cases


@pytest.fixture(scope="module")
def base_logits(lm):
    return lm.forward(lm.encode(PROMPT))


def test_every_intervention_and_parameter_is_covered():
    assert set(RECIPES) <= set(iv.INTERVENTIONS)
    assert sorted(GOOD) == sorted(iv.INTERVENTIONS), "add good arguments of new interventions"
    missing = sorted({p for n in iv.INTERVENTIONS for p in _parameters(n) if p not in BAD})
    assert not missing, f"add bad values of {missing} to BAD"


@pytest.mark.parametrize("name", sorted(iv.INTERVENTIONS))
def test_good_arguments_build_and_run(lm, base_logits, name):
    """The baseline the bad-value cases start from is itself accepted (and does something)."""
    intervention = iv.make(name, lm, **GOOD[name]())
    if name == "patch":  # a source of the prompt's own length
        n = lm.encode(PROMPT).n_tokens
        intervention = iv.make(name, lm, heads=["L3H1"], z_source=_z(shape=(1, n, H, D)))
    with intervention:
        logits = lm.forward(lm.encode(PROMPT))
    assert torch.isfinite(logits).all()
    assert no_hooks_left(lm)


@pytest.mark.parametrize(("name", "param", "value"), _cases())
def test_bad_argument_refused_before_any_forward(lm, forwards, base_logits, name, param, value):
    kwargs = {**GOOD[name](), param: value}
    with pytest.raises(WorkbenchError) as info:
        iv.make(name, lm, **kwargs)
    message = str(info.value)
    assert param in message or (param == "heads" and "head" in message), message
    with pytest.raises(WorkbenchError):
        iv.INTERVENTIONS[name](lm, **kwargs)  # the class itself, not only make()
    assert not forwards and no_hooks_left(lm)


def test_issue_examples(lm, forwards):
    """``ZeroAblation([(True, 3)])`` no longer ablates L1H3; the messages say why."""
    with pytest.raises(WorkbenchError, match=r"heads\[0\].*True \(bool\)"):
        iv.ZeroAblation(lm, [(True, 3)])
    with pytest.raises(WorkbenchError, match=r"heads\[0\].*5\.5 \(float\)"):
        iv.ZeroAblation(lm, [(5.5, 3)])
    with pytest.raises(WorkbenchError, match=r"alpha.*None"):
        iv.Pasta(lm, ["L1H1"], [(1, 2)], 10, alpha=None)
    with pytest.raises(WorkbenchError, match=r"eps.*'0\.1' \(str\)"):
        iv.UniformAblation(lm, ["L1H1"], eps="0.1")
    with pytest.raises(WorkbenchError, match=r"means.*NaN"):
        iv.MeanAblation(lm, ["L1H1"], means=_means(torch.full((L, H, D), NAN)))
    with pytest.raises(WorkbenchError, match="layer 99 of L99H0 is out of range"):
        iv.ZeroAblation(lm, ["L99H0"])
    with pytest.raises(WorkbenchError, match=r"lm must be a LoadedModel"):
        iv.ZeroAblation(None, ["L1H1"])
    assert not forwards and no_hooks_left(lm)


def test_heads_forms_accepted(lm):
    assert iv.ZeroAblation(lm, "L5H*").heads == {5: tuple(range(H))}
    assert iv.ZeroAblation(lm, (np.int64(5), np.int32(3))).heads == {5: (3,)}
    assert iv.ZeroAblation(lm, ["L7H1,L5H3", [2, 0]]).heads == {2: (0,), 5: (3,), 7: (1,)}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"bogus": 1}, "'bogus'"),
        ({"heads": ["L1H1"], "factr": 2.0}, r"'factr' \(did you mean 'factor'\?\)"),
        ({}, "needs parameter"),
    ],
)
def test_make_refuses_unknown_and_missing_parameters(lm, forwards, kwargs, match):
    with pytest.raises(WorkbenchError, match=match):
        iv.make("scale", lm, **kwargs)
    assert not forwards


@pytest.mark.parametrize("name", ["nope", None, 3])
def test_make_refuses_unknown_names(lm, name):
    with pytest.raises(WorkbenchError, match="unknown intervention"):
        iv.make(name, lm, heads=["L1H1"])


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"intervention": None}, "intervention"),
        ({"intervention": "zero"}, "intervention"),
        ({"prompts": 3}, "prompts"),
        ({"prompts": []}, "prompts"),
        ({"prompts": [PROMPT, None]}, "prompt"),
        ({"prompts": [PROMPT, ""]}, "prompt"),
        ({"targets": " Paris"}, "targets"),
        ({"targets": [3]}, "targets"),
        ({"targets": [""]}, "targets"),
        ({"max_new_tokens": -1}, "max_new_tokens"),
        ({"max_new_tokens": 2.5}, "max_new_tokens"),
        ({"max_new_tokens": "3"}, "max_new_tokens"),
        ({"max_new_tokens": True}, "max_new_tokens"),
        ({"max_new_tokens": 10**9}, "max_new_tokens"),
        ({"max_new_tokens": 8190}, "max_new_tokens"),
        ({"chat": "no"}, "chat"),
    ],
    ids=repr,
)
def test_measure_effects_refuses_bad_arguments(lm, forwards, kwargs, name):
    args = {"prompts": PROMPT, "intervention": iv.ZeroAblation(lm, ["L3H1"]), **kwargs}
    with pytest.raises(WorkbenchError) as info:
        iv.measure_effects(lm, args.pop("prompts"), args.pop("intervention"), **args)
    assert name in str(info.value), str(info.value)
    assert not forwards and no_hooks_left(lm)


def test_measure_effects_refuses_an_active_or_foreign_intervention(lm, forwards):
    ablation = iv.ZeroAblation(lm, ["L3H1"])
    with pytest.raises(WorkbenchError, match="LoadedModel"):
        iv.measure_effects(None, PROMPT, ablation)
    with pytest.raises(WorkbenchError, match="already active"), ablation:
        iv.measure_effects(lm, PROMPT, ablation)
    other = iv.ZeroAblation(lm, ["L3H1"])
    other.lm = object()  # built for another model
    with pytest.raises(WorkbenchError, match="another model"):
        iv.measure_effects(lm, PROMPT, other)
    assert not forwards and no_hooks_left(lm)


@pytest.mark.parametrize(
    ("mode", "heads", "options", "name"),
    [
        ("nope", ["L1H1"], None, "mode"),
        (None, ["L1H1"], None, "mode"),
        ("zero", [(True, 1)], None, "heads"),
        ("zero", "bogus", None, "head"),
        ("scale", ["L1H1"], Options(factor=NAN), "factor"),
        ("scale", ["L1H1"], Options(factor="0.5"), "factor"),
        ("act", ["L1H1"], Options(beta=INF), "beta"),
        ("pasta", ["L1H1"], Options(prompt=PROMPT, emphasize="France", alpha="0.1"), "alpha"),
        ("pasta", ["L1H1"], Options(prompt=PROMPT, emphasize=3), "emphasize"),
        ("pasta", ["L1H1"], Options(prompt=PROMPT, emphasize="France", chat="no"), "chat"),
        ("mean", ["L1H1"], Options(reference="one prompt"), "reference"),
        ("mean", ["L1H1"], Options(reference=[PROMPT, 3]), "reference"),
        ("focus", [], Options(focus_path=3), "focus_path"),
        ("zero", ["L1H1"], {"factor": 2.0}, "options"),
    ],
    ids=repr,
)
def test_recipes_refuse_bad_options(lm, forwards, mode, heads, options, name):
    with pytest.raises(WorkbenchError) as info:
        build(lm, mode, heads, options)
    assert name in str(info.value), str(info.value)
    assert not forwards and no_hooks_left(lm)


def test_head_means_checks_every_prompt_first(lm, forwards):
    for prompts in ([], "one prompt", [PROMPT, 3], [PROMPT, ""]):
        with pytest.raises(WorkbenchError):
            iv.head_means(lm, prompts)
    with pytest.raises(WorkbenchError, match="chat"):
        iv.head_means(lm, [PROMPT], chat="yes")
    assert not forwards and no_hooks_left(lm)


def test_logits_unchanged_after_refusals(lm, base_logits):
    for value in (HEADS[0], HEADS[1], HEADS[5]):
        with pytest.raises(WorkbenchError):
            iv.ZeroAblation(lm, value)
    assert torch.equal(lm.forward(lm.encode(PROMPT)), base_logits)
    with iv.ZeroAblation(lm, [(1, 3)]):
        ablated = lm.forward(lm.encode(PROMPT))
    assert not torch.equal(ablated, base_logits)  # the good call still does its job
    assert no_hooks_left(lm)
