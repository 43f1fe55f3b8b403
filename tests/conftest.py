"""Shared fixtures: the real embedded model, loaded once per test session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.manual_seed(0)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Kill any process a test left behind (an app job, a server), so the run always exits:
    a stuck child once kept CI waiting past its limit after every test had finished."""
    import psutil

    leftovers = psutil.Process().children(recursive=True)
    for child in leftovers:
        try:
            print(f"\nkilling a leftover child process: {child.pid} {child.name()}", flush=True)
            child.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(leftovers, timeout=5)


SHORT_PROMPT = "The quick brown fox jumps over the lazy dog. The quick brown fox"


@pytest.fixture(scope="session")
def lm():
    """SmolLM2-135M-Instruct through the workbench attention path (cached copy)."""
    import workbench

    return workbench.load_model()


@contextmanager
def attn_implementation(model: torch.nn.Module, name: str) -> Iterator[None]:
    """Temporarily run ``model`` with another attention implementation."""
    old = model.config._attn_implementation
    model.set_attn_implementation(name)
    try:
        yield
    finally:
        model.set_attn_implementation(old)


@pytest.fixture(scope="session")
def eager_maps(lm):
    """transformers' own eager ``output_attentions`` maps for SHORT_PROMPT: tuple of (1,H,L,L)."""
    enc = lm.encode(SHORT_PROMPT)
    with attn_implementation(lm.model, "eager"), torch.no_grad():
        out = lm.model(input_ids=enc.input_ids, output_attentions=True, use_cache=False)
    return enc, out.attentions, out.logits


def no_hooks_left(lm) -> bool:
    """True when no workbench hook is attached to any attention module of ``lm``."""
    from probes.hooks import HOOKS_ATTR

    return not any(hasattr(m, HOOKS_ATTR) for m in lm.layout.attention_modules)


class ForwardSpent(AssertionError):
    """A forward ran before a refusal (raised at once, so a broken check costs no scan)."""


@pytest.fixture
def forwards(lm):
    """Records, and stops with :class:`ForwardSpent`, any forward (embedding or attention
    module call) while the test runs: a refusal must come before any work."""
    calls: list[str] = []

    def spent(module, args):
        calls.append(type(module).__name__)
        raise ForwardSpent(f"a forward ran ({type(module).__name__}) before the refusal")

    modules = [lm.model.get_input_embeddings(), *lm.layout.attention_modules]
    handles = [m.register_forward_pre_hook(spent) for m in modules]
    yield calls
    for handle in handles:
        handle.remove()
