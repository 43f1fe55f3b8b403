"""Every intervention of the registry, and ``measure_effects``, under generated arguments: a
bad value ends in a WorkbenchError naming the parameter when the intervention is built (or
measured), before any forward; good head sets build exactly the heads they name."""

from __future__ import annotations

import inspect
import math
from itertools import pairwise

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import no_hooks_left
from tests.property import strategies as gen
from tests.property.support import (
    CONTEXT,
    HEAD_DIM,
    N_HEADS,
    N_LAYERS,
    as_index,
    cases,
    count_case,
    is_good_prompt,
    refused,
)
from workbench import interventions as iv
from workbench.heads import Head

pytestmark = [pytest.mark.model, pytest.mark.timeout(300)]

L, H, D = N_LAYERS, N_HEADS, HEAD_DIM
PROMPT = "The capital of France is"  # 5 tokens


def _means(values) -> iv.HeadMeans:
    return iv.HeadMeans(values, n_prompts=1, n_tokens=1)


def _directions(dq, dk=None, head=None) -> iv.FocusDirectionSet:
    head = Head(3, 1) if head is None else head
    return iv.FocusDirectionSet({head: (dq, torch.zeros(D) if dk is None else dk)})


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
    "patch": lambda: {"heads": ["L3H1"], "z_source": [torch.zeros(1, 4, H, D)] * L},
    "function_vector": lambda: {"vector": torch.zeros(H * D), "layer": 10, "scale": 1.0},
}


def with_one(value: float, shape=(L, H, D), dtype=torch.float32) -> torch.Tensor:
    """Zeros of ``shape`` with one element set to ``value`` (NaN, inf)."""
    out = torch.zeros(shape, dtype=dtype)
    out.view(-1)[7] = value
    return out


non_finite = st.sampled_from([math.nan, math.inf, -math.inf])
not_number_dtypes = st.sampled_from([torch.bool, torch.complex64])


def pasta_spans_ok(value, n_tokens: int = 5) -> bool:
    """A list or tuple of disjoint ``(start, end)`` pairs of integers within the prompt."""
    if not isinstance(value, (list, tuple)) or not value:
        return False
    spans = []
    for item in value:
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            return False
        start, end = as_index(item[0]), as_index(item[1])
        if start is None or end is None or not 0 <= start < end <= n_tokens:
            return False
        spans.append((start, end))
    spans.sort()
    return all(b0 <= a1 for (_, b0), (a1, _) in pairwise(spans))


def sink_list_ok(value) -> bool:
    """Per batch item, a 1-D tensor of integer key indices >= 1."""
    if not isinstance(value, (list, tuple)):
        return False
    for idx in value:
        if not isinstance(idx, torch.Tensor) or idx.dim() != 1:
            return False
        if idx.dtype.is_floating_point or idx.dtype.is_complex or idx.dtype == torch.bool:
            return False
        if idx.numel() and int(idx.min()) < 1:
            return False
    return True


good_sink_lists = st.lists(st.lists(st.integers(1, 9), max_size=3).map(torch.tensor), max_size=2)
bad_sinks = st.one_of(
    gen.anything().filter(lambda v: v is not None and not isinstance(v, dict)),
    st.dictionaries(gen.bad_heads(), good_sink_lists, min_size=1, max_size=2),
    st.dictionaries(
        st.just((3, 1)),
        st.one_of(gen.anything(), st.lists(gen.tensors(), min_size=1, max_size=2)),
        min_size=1,
    ).filter(lambda d: not sink_list_ok(d[(3, 1)])),
)

#: Bad values of each constructor parameter: invalid by construction.
BAD = {
    "heads": gen.bad_heads(),
    "vector": st.one_of(
        gen.anything().filter(lambda v: getattr(v, "shape", None) != (H * D,)),
        non_finite.map(lambda x: with_one(x, (H * D,))),
        not_number_dtypes.map(lambda dt: torch.zeros(H * D, dtype=dt)),
        st.sampled_from([(H * D - 1,), (1, H * D), (H * D + 1,), ()]).map(torch.zeros),
    ),
    "layer": gen.not_index(minimum=0, maximum=L - 1),
    "factor": gen.not_number(),
    "eps": gen.not_number(minimum=0, below=1),
    "means": st.one_of(
        gen.anything(),
        gen.tensors().map(_means),
        non_finite.map(lambda x: _means(with_one(x))),
        not_number_dtypes.map(lambda dt: _means(torch.zeros(L, H, D, dtype=dt))),
        st.sampled_from([(L, H, D + 1), (H, D), (L - 1, H, D)]).map(
            lambda s: _means(torch.zeros(s))
        ),
    ),
    "spans": st.one_of(
        st.lists(st.tuples(st.integers(-2, 8), st.integers(-2, 8)), max_size=3),
        st.lists(st.tuples(gen.index_impostors, st.integers(1, 5)), min_size=1, max_size=2),
        gen.anything(),
    ).filter(lambda v: not pasta_spans_ok(v)),
    "n_prompt_tokens": gen.not_index(minimum=1, maximum=CONTEXT),
    "alpha": gen.not_number(above=0),
    "beta": gen.not_number(minimum=0, maximum=1),
    "threshold": gen.not_number(above=0, below=1),
    "sinks": bad_sinks,
    "directions": st.one_of(
        gen.anything(),
        st.just(iv.FocusDirectionSet({})),
        gen.tensors().map(_directions),
        non_finite.map(lambda x: _directions(with_one(x, (D,)))),
        non_finite.map(lambda x: _directions(torch.zeros(D), with_one(x, (D,)))),
        not_number_dtypes.map(lambda dt: _directions(torch.zeros(D, dtype=dt))),
        st.sampled_from([Head(L, 0), Head(0, H), Head(99, 99)]).map(
            lambda h: _directions(torch.zeros(D), head=h)
        ),
        # keys that are not Head values, values that are not (d_q, d_k) pairs of tensors
        st.one_of(gen.texts, st.tuples(st.integers(0, 5), st.integers(0, 5)), gen.scalars).map(
            lambda key: iv.FocusDirectionSet({key: (torch.zeros(D), torch.zeros(D))})
        ),
        gen.anything().map(lambda value: iv.FocusDirectionSet({Head(3, 1): value})),
    ),
    "scale": gen.not_number(),
    "temperature": gen.not_number(above=0),
    "z_source": st.one_of(
        gen.anything(),
        gen.tensors().map(lambda t: [t] * L),
        non_finite.map(lambda x: [with_one(x, (1, 4, H, D))] * L),
        not_number_dtypes.map(lambda dt: [torch.zeros(1, 4, H, D, dtype=dt)] * L),
        st.sampled_from([(1, 4, H, D + 1), (4, H, D), (1, 4, H - 1, D)]).map(
            lambda s: [torch.zeros(s)] * L
        ),
        st.integers(0, 3).map(lambda n: [torch.zeros(1, 4, H, D)] * n),
    ),
}


def _parameters(name: str) -> list[str]:
    init = inspect.signature(iv.INTERVENTIONS[name].__init__).parameters
    return [p for p in init if p not in ("self", "lm")]


PAIRS = [(name, param) for name in sorted(iv.INTERVENTIONS) for param in _parameters(name)]


def test_every_intervention_and_parameter_has_generators():
    count_case()
    assert sorted(GOOD) == sorted(iv.INTERVENTIONS), "add good arguments of new interventions"
    missing = sorted({param for _, param in PAIRS} - set(BAD))
    assert not missing, f"add a strategy of bad values of {missing} to BAD"


@pytest.mark.parametrize(("name", "param"), PAIRS, ids=[f"{n}-{p}" for n, p in PAIRS])
@cases(25)
@given(data=st.data())
def test_bad_argument_refused_when_built(lm, forwards, name, param, data):
    count_case(forwards)
    kwargs = {**GOOD[name](), param: data.draw(BAD[param], label=param)}
    message = refused(lambda: iv.make(name, lm, **kwargs))
    assert param in message, message
    message = refused(lambda: iv.INTERVENTIONS[name](lm, **kwargs))
    assert param in message, message
    assert not forwards and no_hooks_left(lm)


@cases(200)
@given(heads=gen.head_like())
def test_good_head_sets_build_exactly_their_heads(lm, heads):
    count_case()
    want = gen.as_head_pairs(heads)
    if want is None:
        refused(lambda: iv.ZeroAblation(lm, heads))
        return
    by_layer: dict[int, set[int]] = {}
    for layer, head in want:
        by_layer.setdefault(layer, set()).add(head)
    built = iv.ZeroAblation(lm, heads)
    assert built.heads == {layer: tuple(sorted(hs)) for layer, hs in sorted(by_layer.items())}


@cases(100)
@given(
    name=st.one_of(gen.texts, gen.anything()).filter(
        lambda v: not (isinstance(v, str) and v in iv.INTERVENTIONS)
    ),
    extra=st.dictionaries(st.from_regex(r"[a-z_]{1,12}", fullmatch=True), gen.scalars, max_size=2),
)
def test_make_refuses_unknown_names_and_parameters(lm, forwards, name, extra):
    count_case(forwards)
    refused(lambda: iv.make(name, lm, heads=["L3H1"]))
    unknown = {k: v for k, v in extra.items() if k not in ("heads", "factor")}
    if unknown:
        message = refused(lambda: iv.make("scale", lm, heads=["L3H1"], **unknown))
        assert all(key in message for key in unknown), message
    assert not forwards and no_hooks_left(lm)


def prompts_ok(value) -> bool:
    """One good prompt string, or a non-empty list or tuple of them."""
    if isinstance(value, str):
        return is_good_prompt(value)
    return isinstance(value, (list, tuple)) and bool(value) and all(map(is_good_prompt, value))


def targets_ok(value) -> bool:
    """A list or tuple of good (non-blank, UTF-8) strings."""
    return isinstance(value, (list, tuple)) and all(map(is_good_prompt, value))


@cases(200)
@given(
    which=st.sampled_from(["lm", "prompts", "intervention", "targets", "max_new_tokens", "chat"]),
    data=st.data(),
)
def test_measure_effects_refuses_before_any_forward(lm, forwards, which, data):
    count_case(forwards)
    bad = {
        "lm": gen.anything(),
        "prompts": st.one_of(
            gen.texts, st.lists(st.one_of(gen.texts, gen.surrogate_text)), gen.anything()
        ).filter(lambda v: not prompts_ok(v)),
        "intervention": st.one_of(gen.anything(), st.just(iv.ZeroAblation)),
        "targets": st.one_of(
            gen.texts, st.lists(st.one_of(gen.texts, gen.surrogate_text)), gen.anything()
        ).filter(lambda v: not targets_ok(v)),
        "max_new_tokens": st.one_of(
            gen.not_index(minimum=0, maximum=CONTEXT), st.integers(CONTEXT - 4, CONTEXT)
        ),
        "chat": gen.not_flag(),
    }[which]
    args = {"lm": lm, "prompts": [PROMPT], "intervention": iv.ZeroAblation(lm, ["L3H1"])}
    kwargs = {"targets": [" Paris"], "max_new_tokens": 2, "chat": False}
    value = data.draw(bad, label=which)
    (args if which in args else kwargs)[which] = value
    refused(lambda: iv.measure_effects(args["lm"], args["prompts"], args["intervention"], **kwargs))
    assert not forwards and no_hooks_left(lm)
