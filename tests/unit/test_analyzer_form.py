"""The atlas analyzer form is built from each analyzer's signature: exactly its parameters, its
defaults, and the ranges its own checks enforce (probed on the checks, not read from the
form's table)."""

from __future__ import annotations

import inspect

import pytest

from app import ids
from app.views import analyzer_form as form
from app.views.atlas import fixed_fields
from probes.checks import ArgumentError
from workbench.analyzers import ANALYZERS
from workbench.analyzers.params import COMMON
from workbench.errors import WorkbenchError

#: Parameters no form can hold: a progress callable (the app sets it) and DataFrames.
NOT_IN_A_FORM = {"progress", "frames"}
NAMES = sorted(ANALYZERS)


def _components(node):
    """Every Dash component in a layout tree."""
    if node is None or isinstance(node, (str, int, float)):
        return
    if isinstance(node, (list, tuple)):
        for child in node:
            yield from _components(child)
        return
    yield node
    yield from _components(getattr(node, "children", None))


def rendered(name: str, quick: bool, lm=None) -> dict[str, object]:
    """``{parameter: the component holding it}`` of the whole form (fixed + generated), the
    fixed ones only where shown."""
    out = {}
    for c in _components(form.form_children(name, quick, lm)):
        cid = getattr(c, "id", None)
        if isinstance(cid, dict) and cid.get("type") == form.FIELD:
            out[cid["name"]] = c
    fixed = {v: k for k, v in form.FIXED.items()}
    for wrap in fixed_fields(name, lm, quick):
        if wrap.style["display"] == "none":
            continue
        for c in _components(wrap.children):
            if getattr(c, "id", None) in fixed:
                out[fixed[c.id]] = c
    return out


@pytest.mark.parametrize("name", NAMES)
def test_the_form_has_exactly_the_analyzers_parameters(name):
    keywords = [
        p.name
        for p in inspect.signature(ANALYZERS[name].run).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    expected = set(keywords) - NOT_IN_A_FORM
    assert set(rendered(name, quick=False)) == expected
    assert [f.name for f in form.form_fields(name)] == [k for k in keywords if k in expected]


def _sent(name: str, param: str, component) -> object:
    """What the form sends for an untouched field (the job's path: fields_params, or the fixed
    fields through form_values)."""
    value = component.value
    if param in form.FIXED:
        return {
            "n_prompts": value,
            "top_k": value,
            "causal": bool(value),
            "quick": bool(value),
        }[param]
    return form.fields_params(name, {param: value}).get(param, "omitted")


@pytest.mark.parametrize("name", NAMES)
def test_untouched_fields_send_the_signatures_defaults(name):
    signature = inspect.signature(ANALYZERS[name].run).parameters
    quick_sizes = ANALYZERS[name].quick_params
    for quick in (False, True):
        for param, component in rendered(name, quick).items():
            default = signature[param].default
            if param == "quick":
                default = quick  # the app starts with it ticked (form.APP_DEFAULTS)
            elif quick and param in quick_sizes:
                default = quick_sizes[param]
            if isinstance(default, tuple):
                default = list(default)
            sent = _sent(name, param, component)
            if sent == "omitted":
                assert default is None, (name, param)  # an empty JSON field: the default
                continue
            assert sent == default, (name, param, quick, sent, default)


def _probe_integer(check, param, lm, lo, hi):
    if lo is not None:
        check(param, int(lo), lm)
        with pytest.raises(ArgumentError, match=param):
            check(param, int(lo) - 1, lm)
    if hi is not None:
        check(param, int(hi), lm)
        with pytest.raises(ArgumentError, match=param):
            check(param, int(hi) + 1, lm)
    else:
        check(param, 10**12, lm)


def _probe_number(check, param, lm, spec, lo, hi):
    tiny = 1e-9
    for bound, inside, outside in (
        (lo, lambda b: b, lambda b: b - tiny),
        (hi, lambda b: b, lambda b: b + tiny),
        (spec.above, lambda b: b + tiny, lambda b: b),
        (spec.below, lambda b: b - tiny, lambda b: b),
    ):
        if bound is None:
            continue
        check(param, inside(bound), lm)
        with pytest.raises(ArgumentError, match=param):
            check(param, outside(bound), lm)


@pytest.mark.model
def test_ranges_equal_what_the_checks_accept(lm):
    probed = 0
    for name in NAMES:
        checks = {**COMMON, **ANALYZERS[name].checks}
        for field in form.form_fields(name, lm):
            check, spec = checks[field.name], field.spec
            if spec.kind == "integer":
                _probe_integer(check, field.name, lm, field.minimum, field.maximum)
                probed += 1
            elif spec.kind == "number":
                _probe_number(check, field.name, lm, spec, field.minimum, field.maximum)
                probed += 1
            elif spec.kind == "choice":
                for option in spec.choices:
                    check(field.name, option, lm)
                with pytest.raises(ArgumentError):
                    check(field.name, "no-such-option", lm)
                probed += 1
    assert probed > 50
    top_k = {f.name: f for f in form.form_fields("sinks", lm)}["top_k"]
    assert (top_k.minimum, top_k.maximum) == (1, 135)  # half of 30 x 9 heads
    assert form.range_hint(top_k) == "1..135"


def test_lists_files_and_text_are_read_into_their_types():
    params = form.fields_params(
        "retrieval",
        {"lengths": "256, 1024", "depths": "0.1,0.5", "needles": "", "haystack": "", "system": ""},
    )
    assert params == {
        "lengths": [256, 1024],
        "depths": [0.1, 0.5],
        "needles": None,
        "haystack": None,
        "system": None,
    }
    eval_prompts = form.fields_params("safety", {"eval_harmful": "How do I x?\nWhy, y?\n"})
    assert eval_prompts == {"eval_harmful": ["How do I x?", "Why, y?"]}
    assert form.fields_params("sinks", {"batch_size": "4"}) == {"batch_size": 4}
    assert form.fields_params("sinks", {"ranking": "L5H3, L6H0"}) == {"ranking": ["L5H3", "L6H0"]}


def test_bad_values_are_refused_naming_field_value_and_range():
    with pytest.raises(WorkbenchError) as exc:
        form.fields_params("sinks", {"prompt_tokens": None})
    text = str(exc.value)
    assert "prompt_tokens is empty" in text and ">= 2" in text and "None" not in text
    fields = form.fields_params("sinks", {"prompt_tokens": 1, "first_threshold": 1.5})
    with pytest.raises(WorkbenchError) as exc:
        form.analyzer_params("sinks", {"quick": True}, "", None, fields)
    assert "prompt_tokens must be an integer" in str(exc.value) and "got 1" in str(exc.value)
    with pytest.raises(WorkbenchError, match=r"first_threshold must be .*<= 1, got 1.5"):
        form.analyzer_params("sinks", {}, "", None, {"first_threshold": 1.5})
    with pytest.raises(WorkbenchError, match=r"lengths\[1\] must be an integer"):
        form.analyzer_params("retrieval", {}, "", None, form.fields_params(
            "retrieval", {"lengths": "256, x"}))  # fmt: skip
    # the box still wins over a field
    got = form.analyzer_params("sinks", {}, '{"draws": 2}', None, {"draws": 5, "seed": 3})
    assert got == {"draws": 2, "seed": 3}


def test_fixed_fields_follow_the_analyzer():
    assert set(form.fixed_state("retrieval", True)) == {"causal", "top_k", "quick"}
    assert form.fixed_state("sinks", True)["n_prompts"] == 16
    assert form.fixed_state("induction", True)["n_prompts"] == 8  # its quick size
    assert form.fixed_state("induction", False)["n_prompts"] == 12  # its signature's
    assert form.wrap_id("n_prompts") == "an-wrap-n-prompts"
    assert form.FIXED["top_k"] == ids.AN_TOPK
