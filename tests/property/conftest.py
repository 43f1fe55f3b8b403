"""Fixtures of the property suite: the model's logits checked after every model test, a guard
that fails a test when a model would load, and the count of generated cases in the summary."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from tests.conftest import no_hooks_left
from tests.property.support import CASES, LOGITS_PROMPT


@pytest.fixture(scope="session")
def reference_logits(lm) -> torch.Tensor:
    """Logits of LOGITS_PROMPT before any property test ran."""
    return lm.forward(LOGITS_PROMPT)


@pytest.fixture(autouse=True)
def model_unchanged(request) -> Iterator[None]:
    """After each test marked ``model`` (once per test function, not per example): no hook
    left on the model and the same logits on the fixed prompt as before the suite."""
    if request.node.get_closest_marker("model") is None:
        yield
        return
    lm = request.getfixturevalue("lm")
    reference = request.getfixturevalue("reference_logits")
    yield
    assert no_hooks_left(lm), "a workbench hook is still attached"
    after = lm.forward(LOGITS_PROMPT)
    assert torch.equal(after, reference), "the model's logits changed"


class ModelLoaded(AssertionError):
    """A model was about to load (weights read or the embedded cache built) before the bad
    input was refused."""


@pytest.fixture
def no_model_load(monkeypatch) -> None:
    """Any model load fails the test: ``load_model`` still checks its arguments and resolves
    names of folders and cached ids (cheap, no weights), but the embedded model is never
    built and no weights are read."""
    import workbench.lm
    from workbench import model_files

    real_resolve = workbench.lm.resolve_source

    def resolve(name):
        text = model_files.model_name(name)
        if text is None or text.lower() in model_files.EMBEDDED_ALIASES:
            return model_files.EMBEDDED_NAME, "<embedded model: not built in this test>"
        return real_resolve(name)

    def load_hf(*args, **kwargs):
        raise ModelLoaded("a model was loaded before the bad input was refused")

    monkeypatch.setattr(workbench.lm, "resolve_source", resolve)
    monkeypatch.setattr(workbench.lm, "load_hf", load_hf)


# -- the number of generated cases, in the terminal summary (xdist workers add theirs) ---------
def pytest_sessionfinish(session) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["property_cases"] = CASES["run"]


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    CASES["run"] += getattr(node, "workeroutput", {}).get("property_cases", 0)


def pytest_terminal_summary(terminalreporter) -> None:
    if CASES["run"]:
        terminalreporter.write_line(f"property suite: {CASES['run']} generated cases run")
