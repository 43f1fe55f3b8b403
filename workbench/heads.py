"""Head ids: ``L{layer}H{head}``, 0-based query heads, everywhere (tables, app, reports, CLI).

Layer and head numbers are integers (Python or NumPy), never coerced: ``head_id(3.5, 2)`` and
``Head(True, 3)`` are refused instead of giving ``"L3.5H2"`` or ablating ``L1H3``. Ranges
against a model are checked by :meth:`workbench.LoadedModel.head_id` and the layout.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, NamedTuple

from probes.checks import ArgumentError, describe, integer, optional
from workbench.errors import HeadOutOfRangeError, LayerOutOfRangeError, WorkbenchError

_HEAD_RE = re.compile(r"^\s*L(\d+)H(\d+)\s*$", re.IGNORECASE)
_LAYER_ALL_RE = re.compile(r"^\s*L(\d+)H\*\s*$", re.IGNORECASE)


def _layer(value: Any) -> int:
    return integer("layer", value, minimum=0, error=LayerOutOfRangeError)


def _head(value: Any) -> int:
    return integer("head", value, minimum=0, error=HeadOutOfRangeError)


class _HeadFields(NamedTuple):
    layer: int
    head: int


class Head(_HeadFields):
    """One query head of one layer: two non-negative integers (NumPy integers become ``int``;
    floats, strings and booleans raise :class:`LayerOutOfRangeError` /
    :class:`HeadOutOfRangeError`)."""

    __slots__ = ()

    def __new__(cls, layer: int, head: int) -> Head:
        return super().__new__(cls, _layer(layer), _head(head))

    @property
    def id(self) -> str:
        return f"L{self.layer}H{self.head}"


def head_id(layer: int, head: int) -> str:
    """``head_id(5, 3) == "L5H3"``; both must be non-negative integers."""
    return Head(layer, head).id


def parse_head(text: str) -> Head:
    """``"L5H3"`` -> ``Head(5, 3)``; a clear error for anything else."""
    if not isinstance(text, str):
        raise ArgumentError(f"a head id must be a string such as 'L5H3', got {describe(text)}")
    m = _HEAD_RE.match(text)
    if not m:
        hint = " (L<layer>H* needs the model's head count)" if _LAYER_ALL_RE.match(text) else ""
        raise WorkbenchError(
            f"bad head id {text!r}{hint}: write heads as L<layer>H<head>, e.g. L5H3"
        )
    return Head(int(m.group(1)), int(m.group(2)))


def parse_heads(text: str, n_heads: int | None = None) -> list[Head]:
    """``"L5H3,L7H1"`` -> ``[Head(5, 3), Head(7, 1)]`` (commas, semicolons or spaces separate
    ids; repeats are dropped, order kept). With ``n_heads``, ``L5H*`` means every head of
    layer 5."""
    n_heads = optional(integer, "n_heads", n_heads, minimum=1)
    if text is not None and not isinstance(text, str):
        raise ArgumentError(f"heads must be a string such as 'L5H3,L7H1', got {describe(text)}")
    parts = [p for p in re.split(r"[,;\s]+", text or "") if p]
    if not parts:
        raise WorkbenchError("no heads given: write e.g. L5H3,L7H1")
    out: list[Head] = []
    for part in parts:
        m = _LAYER_ALL_RE.match(part)
        if m and n_heads is not None:
            heads = [Head(int(m.group(1)), h) for h in range(n_heads)]
        else:
            heads = [parse_head(part)]
        out.extend(h for h in heads if h not in out)
    return out


def format_heads(heads: Sequence[tuple[int, int]], n_heads: int | None = None) -> str:
    """``[(5, 3), (7, 1)]`` -> ``"L5H3, L7H1"``: the ids in order, comma-separated (so long
    lists wrap), readable back by :func:`parse_heads`. With ``n_heads``, a layer whose heads
    are all listed is written ``L5H*`` where its first head stands."""
    n_heads = optional(integer, "n_heads", n_heads, minimum=1)
    heads = [Head(layer, head) for layer, head in heads]
    per_layer: dict[int, set[int]] = {}
    for h in heads:
        per_layer.setdefault(h.layer, set()).add(h.head)
    full = {layer for layer, hs in per_layer.items() if n_heads is not None and len(hs) >= n_heads}
    out: list[str] = []
    for h in heads:
        if h.layer not in full:
            out.append(h.id)
        elif f"L{h.layer}H*" not in out:
            out.append(f"L{h.layer}H*")
    return ", ".join(out)
