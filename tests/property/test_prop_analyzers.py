"""Every analyzer of the registry under generated parameters and prompts (``analyze``, the
Python API): a value its parameter does not allow, an unknown parameter name or a bad prompt set
ends in a WorkbenchError naming it, before any forward (the ``forwards`` fixture stops the first
one) and with no hook left."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import no_hooks_left
from tests.property import strategies as gen
from tests.property.analyzer_values import KINDS, MISSING, bad
from tests.property.support import cases, count_case, elements, is_good_prompt, refused
from workbench.analyzers import ANALYZERS, analyze

pytestmark = [pytest.mark.model, pytest.mark.timeout(600)]

PAIRS = [(name, param) for name in sorted(ANALYZERS) for param in ANALYZERS[name].parameters()]


def test_every_parameter_has_a_kind():
    count_case()
    missing = sorted({param for _, param in PAIRS} - set(KINDS))
    assert not missing, f"say what {missing} allow in tests/property/analyzer_values.py KINDS"


@pytest.mark.parametrize(("name", "param"), PAIRS, ids=[f"{n}-{p}" for n, p in PAIRS])
@cases(12)
@given(data=st.data())
def test_bad_parameter_refused_before_any_forward(
    lm, forwards, tmp_path, monkeypatch, name, param, data
):
    count_case(forwards)
    monkeypatch.chdir(tmp_path)  # a relative path names nothing here
    value = data.draw(bad(param, model=True), label=param)
    message = refused(lambda: analyze(name, lm, **{"progress": False, param: value}))
    assert param in message, message
    assert not forwards and no_hooks_left(lm)


names = st.from_regex(r"[a-z][a-z_]{0,14}", fullmatch=True)


@pytest.mark.parametrize("name", sorted(ANALYZERS))
@cases(15)
@given(key=names, value=gen.scalars)
def test_unknown_parameter_refused_by_name(lm, forwards, name, key, value):
    count_case(forwards)
    if key in ANALYZERS[name].parameters():
        return
    message = refused(lambda: analyze(name, lm, progress=False, **{key: value}))
    assert repr(key) in message, message
    assert not forwards and no_hooks_left(lm)


def _looks_like_a_file(text: str) -> bool:
    word = text.strip()
    return not any(c.isspace() for c in word) and word.lower().endswith((".txt", ".jsonl"))


def prompts_ok(value) -> bool:
    """None, a prompt string (not one that looks like a file name), or a non-empty list of
    prompt strings and dicts with a 'prompt' string."""
    if value is None:
        return True
    if isinstance(value, Path):
        return value.is_file()
    if isinstance(value, str):
        return is_good_prompt(value) and not _looks_like_a_file(value)
    if isinstance(value, (bytes, Mapping)):
        return False
    items = elements(value)
    return bool(items) and all(
        is_good_prompt(item.get("prompt") if isinstance(item, Mapping) else item) for item in items
    )


bad_prompts = st.one_of(
    st.lists(st.one_of(gen.texts, gen.surrogate_text, gen.scalars), min_size=1, max_size=3),
    st.lists(st.dictionaries(st.sampled_from(["prompt", "text"]), gen.scalars), min_size=1),
    st.sampled_from(["prompts.txt", "data/set.jsonl", " a.TXT "]),
    gen.texts.map(lambda t: Path(MISSING) / f"{t}.txt"),
    gen.anything(),
).filter(lambda v: not prompts_ok(v))


@pytest.mark.parametrize("name", sorted(ANALYZERS))
@cases(20)
@given(prompts=bad_prompts)
def test_bad_prompts_refused_before_any_forward(lm, forwards, name, prompts):
    count_case(forwards)
    refused(lambda: analyze(name, lm, prompts, progress=False))
    assert not forwards and no_hooks_left(lm)
