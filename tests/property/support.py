"""What the property suite shares: its Hypothesis settings, the case counter, and the oracles
that say what a generated value stands for.

The oracles restate the documented rules of :mod:`probes.checks` (an integer is a Python,
NumPy or 0-d torch integer, never a bool, float or string; a list of indices is one integer or
a list-like of them; ...) without calling the code under test, so each property compares the
workbench's answer with an expectation of its own.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings

from workbench.errors import WorkbenchError

#: Generated cases run by this session (every call of a property's body), printed at the end.
CASES = {"run": 0}

#: SmolLM2-135M-Instruct: layers, query heads per layer, context (tokens), head_dim.
N_LAYERS, N_HEADS, CONTEXT, HEAD_DIM = 30, 9, 8192, 64

#: The prompt whose logits must be the same before and after every property test.
LOGITS_PROMPT = "The quick brown fox jumps over the lazy dog."
#: A good prompt for calls whose other arguments are bad (10 tokens with SmolLM2).
GOOD_PROMPT = "The cat sat on the mat. The cat sat on the mat again."
#: Its length in tokens: more than ``CONTEXT - GOOD_PROMPT_TOKENS`` new tokens do not fit.
GOOD_PROMPT_TOKENS = 15


def cases(max_examples: int) -> settings:
    """Hypothesis settings of this suite: the same examples on every run (``derandomize``),
    no deadline (a shared CI core is slow), no example database written into the repository.
    Function-scoped fixtures (``forwards``, ``tmp_path``) are shared by a test's examples on
    purpose: they hold no per-example state."""
    return settings(
        max_examples=max_examples,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.filter_too_much,
        ],
    )


def count_case(*spent: list) -> None:
    """Count one generated case (called first in every property's body) and empty the
    ``spent`` records (the ``forwards`` fixture's list), which a test's examples share."""
    CASES["run"] += 1
    for record in spent:
        record.clear()


def refused(call: Callable[[], Any], error: type[Exception] = WorkbenchError) -> str:
    """``call()`` must raise ``error`` (a WorkbenchError subclass); any other exception
    propagates and fails the property. Returns the message."""
    assert issubclass(error, WorkbenchError)
    with pytest.raises(error) as info:
        call()
    return str(info.value)


# -- oracles -----------------------------------------------------------------------------------
def is_good_prompt(value: Any) -> bool:
    """A prompt is a non-blank string that can be written as UTF-8 (no lone surrogate)."""
    if not isinstance(value, str) or not value.strip():
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def as_index(value: Any) -> int | None:
    """The integer ``value`` stands for, or None: Python ints, NumPy integers and 0-d integer
    arrays/tensors are integers; booleans, floats, strings and anything with a shape are not."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iu":
        return int(value)
    if isinstance(value, torch.Tensor) and value.dim() == 0:
        dtype = value.dtype
        if not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool):
            return int(value)
    return None


def elements(value: Any) -> list[Any] | None:
    """The elements of a list-like value (list, tuple, set, range, 1-D array or tensor)."""
    if isinstance(value, (list, tuple, set, frozenset, range)):
        return list(value)
    if isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim == 1:
        return list(value)
    return None


def as_index_list(value: Any, size: int) -> tuple[int, ...] | None:
    """Sorted unique indices in ``range(size)`` that ``value`` stands for (one index or a
    non-empty list-like of them), or None."""
    one = as_index(value)
    items = [one] if one is not None else elements(value)
    if not items:
        return None
    indices = [as_index(v) for v in items]
    if any(i is None or not 0 <= i < size for i in indices):
        return None
    return tuple(sorted(set(indices)))


def as_span(value: Any, maximum: int | None = None) -> tuple[int, int] | None:
    """``(start, end)`` for a list-like of two integers with ``0 <= start < end`` (``<=
    maximum``), else None."""
    items = None if isinstance(value, (set, frozenset)) else elements(value)
    if items is None or len(items) != 2:
        return None
    start, end = (as_index(v) for v in items)
    if start is None or end is None or not 0 <= start < end:
        return None
    if maximum is not None and end > maximum:
        return None
    return start, end


def as_span_list(value: Any, maximum: int | None = None) -> list[tuple[int, int]] | None:
    """The spans of a collection of ``(start, end)`` pairs (a list, tuple, set, or an array or
    tensor of rows; empty means none), else None."""
    if isinstance(value, (np.ndarray, torch.Tensor)):
        items = list(value) if value.ndim >= 1 else None
    elif isinstance(value, (list, tuple, set, frozenset, range, dict)):
        items = list(value)
    else:
        items = None
    if items is None:
        return None
    spans = [as_span(item, maximum) for item in items]
    return None if None in spans else spans


def as_flag(value: Any) -> bool | None:
    """``True``/``False`` (NumPy booleans too), else None: never ``bool("no")``."""
    return bool(value) if isinstance(value, (bool, np.bool_)) else None


def device_is_usable(value: Any) -> bool | None:
    """True: a device this machine has (``"cpu"``, ``"cuda"`` with CUDA); False: not a device
    or one without values (``"meta"``) or absent here; None: cannot tell (another backend)."""
    if not isinstance(value, (str, torch.device)):
        return False
    try:
        device = torch.device(value)
    except (RuntimeError, ValueError, TypeError):
        return False
    if device.type == "cpu":
        return True
    if device.type == "meta":
        return False
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return count > 0 and (device.index is None or device.index < count)
    return None


#: A head id as documented: ``L<layer>H<head>`` (any case, decimal numbers).
HEAD_ID = re.compile(r"[lL](\d+)[hH](\d+)")
#: Every head of a layer: ``L<layer>H*`` (needs the model's head count).
LAYER_HEADS = re.compile(r"[lL](\d+)[hH]\*")
#: What separates head ids in a list: commas, semicolons, whitespace.
HEAD_SEPARATORS = re.compile(r"[,;\s]+")


def as_head(text: Any) -> tuple[int, int] | None:
    """``(layer, head)`` of one head id (surrounding whitespace allowed), else None."""
    if not isinstance(text, str):
        return None
    m = HEAD_ID.fullmatch(text.strip())
    return (int(m.group(1)), int(m.group(2))) if m else None


def as_heads(text: Any, n_heads: int | None) -> list[tuple[int, int]] | None:
    """The heads a head list names, repeats dropped, order kept; ``L5H*`` only with
    ``n_heads``; None for anything else."""
    if not isinstance(text, str):
        return None
    parts = [p for p in HEAD_SEPARATORS.split(text) if p]
    out: list[tuple[int, int]] = []
    for part in parts:
        every = LAYER_HEADS.fullmatch(part)
        if every and n_heads is not None:
            heads = [(int(every.group(1)), h) for h in range(n_heads)]
        elif as_head(part) is not None:
            heads = [as_head(part)]
        else:
            return None
        out.extend(h for h in heads if h not in out)
    return out or None
